//! `layerskip bench --sessions`: concurrent generations advanced together
//! (batched) against the same generations one after another.

use layerskip::engine::Engine;
use layerskip::{generate, GenerateOptions, Mode, Model, Result, Session};
use serde::Serialize;
use std::sync::Arc;

/// Aggregate decoding speed of `sessions` concurrent greedy generations in
/// one mode: advanced together by [`layerskip::step_all`] (one batched pass per
/// layer), and the same generations run one after another.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BatchRow {
    pub mode: String,
    pub sessions: usize,
    pub tokens: usize,
    pub batched_tokens_per_second: f64,
    pub sequential_tokens_per_second: f64,
    /// Batched aggregate tokens/s over one generation's tokens/s at full depth alone.
    pub scaling: f64,
    /// Outputs of the batched and sequential runs are identical.
    pub identical: bool,
}

fn run_generations<E: Engine>(
    model: &Arc<Model<E>>,
    prompts: &[Vec<u32>],
    n: usize,
    opts: &GenerateOptions,
    batched: bool,
) -> Result<(f64, Vec<Vec<u32>>)> {
    let t = std::time::Instant::now();
    let mut out = Vec::with_capacity(n);
    if batched {
        let mut gens = (0..n)
            .map(|i| {
                let s = Session::new(model.clone(), 0)?;
                layerskip::Generation::new(
                    s,
                    &prompts[i % prompts.len()],
                    opts.clone(),
                    Box::new(|_, _| true),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        loop {
            let mut active: Vec<_> = gens.iter_mut().filter(|g| !g.is_done()).collect();
            if active.is_empty() {
                break;
            }
            layerskip::step_all(&mut active);
        }
        for g in gens {
            out.push(g.finish()?.tokens);
        }
    } else {
        for i in 0..n {
            let mut s = Session::new(model.clone(), 0)?;
            out.push(generate(&mut s, &prompts[i % prompts.len()], opts, |_, _| true)?.tokens);
        }
    }
    Ok((t.elapsed().as_secs_f64(), out))
}

pub(crate) fn run_batched<E: Engine>(
    model: &Arc<Model<E>>,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    counts: &[usize],
    modes: &[Mode],
) -> Result<Vec<BatchRow>> {
    let mut rows = Vec::new();
    let mut single = 0.0;
    for mode in modes {
        let opts = GenerateOptions {
            max_new_tokens,
            mode: *mode,
            ignore_eos: true,
            ..Default::default()
        };
        for &n in counts {
            let (tb, ob) = run_generations(model, prompts, n, &opts, true)?;
            let (ts, os) = run_generations(model, prompts, n, &opts, false)?;
            let tokens: usize = ob.iter().map(Vec::len).sum();
            if single == 0.0 {
                single = tokens as f64 / ts;
            }
            rows.push(BatchRow {
                mode: match mode {
                    Mode::SelfSpeculative { exit, draft_len } => {
                        format!("self-spec E={exit} d={draft_len}")
                    }
                    Mode::EarlyExit { exit } => format!("early exit E={exit}"),
                    Mode::Auto(_) => "auto".to_string(),
                    Mode::Full => "full".to_string(),
                },
                sessions: n,
                tokens,
                batched_tokens_per_second: tokens as f64 / tb,
                sequential_tokens_per_second: tokens as f64 / ts,
                scaling: tokens as f64 / tb / single,
                identical: ob == os,
            });
        }
    }
    Ok(rows)
}

pub(crate) fn format_batch_table(rows: &[BatchRow]) -> String {
    let mut s = String::from(
        "mode                sessions  batched tok/s  one-at-a-time tok/s  batched/one-at-a-time  vs 1 full  identical\n",
    );
    for r in rows {
        s += &format!(
            "{:<19} {:>8} {:>14.1} {:>20.1} {:>22.2}x {:>9.2}x  {}\n",
            r.mode,
            r.sessions,
            r.batched_tokens_per_second,
            r.sequential_tokens_per_second,
            r.batched_tokens_per_second / r.sequential_tokens_per_second,
            r.scaling,
            if r.identical { "yes" } else { "NO" }
        );
    }
    s
}
