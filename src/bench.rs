//! `layerskip bench`: full-depth decoding against every (E, d) pair on the
//! same prompts, runs interleaved so machine noise hits every row alike.

use crate::adaptive::AutoSpec;
use crate::engine::Engine;
use crate::error::Result;
use crate::generate::{generate, GenerateOptions, Mode};
use crate::model::Model;
use crate::session::Session;
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// "full" or "self-speculative".
    pub mode: &'static str,
    pub exit_layer: Option<usize>,
    pub draft_len: Option<usize>,
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub speedup: f64,
    pub acceptance_rate: f64,
    /// Tokens produced per verify round (accepted drafts + 1).
    pub tokens_per_round: f64,
    pub draft_share: f64,
    pub verify_share: f64,
    /// Greedy output identical to full-depth decoding.
    pub lossless: bool,
}

pub struct BenchConfig {
    pub prompts: Vec<Vec<u32>>,
    pub max_new_tokens: usize,
    pub exit_layers: Vec<usize>,
    pub draft_lens: Vec<usize>,
    pub repeat: usize,
    /// Add a row for automatic (E, d).
    pub auto: bool,
}

#[derive(Default, Clone)]
struct Totals {
    tokens: usize,
    seconds: f64,
    drafted: u64,
    accepted: u64,
    rounds: u64,
    /// Tokens per (E, d) chosen (automatic mode).
    choices: Vec<((usize, usize), usize)>,
    draft_s: f64,
    verify_s: f64,
    outputs: Vec<Vec<u32>>,
}

/// Run the benchmark; `progress(done, total)` is called after each run.
pub fn run<E: Engine>(
    model: &Arc<Model<E>>,
    cfg: &BenchConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<BenchRow>> {
    let mut modes = vec![Mode::Full];
    for &e in &cfg.exit_layers {
        for &d in &cfg.draft_lens {
            modes.push(Mode::SelfSpeculative {
                exit: e,
                draft_len: d,
            });
        }
    }
    if cfg.auto {
        modes.push(Mode::Auto(AutoSpec::default()));
        // Timed once per model, like loading: not part of any run.
        model.cost_model();
    }
    let mut totals = vec![Totals::default(); modes.len()];
    let total_runs = modes.len() * cfg.prompts.len() * cfg.repeat;
    let mut done = 0;
    for rep in 0..cfg.repeat {
        for (mode, t) in modes.iter().zip(totals.iter_mut()) {
            for prompt in &cfg.prompts {
                let opts = GenerateOptions {
                    max_new_tokens: cfg.max_new_tokens,
                    mode: *mode,
                    ignore_eos: true,
                    ..Default::default()
                };
                let mut s = Session::new(model.clone(), 0)?;
                let out = generate(&mut s, prompt, &opts, |_, _| true)?;
                let st = out.stats;
                t.tokens += st.generated_tokens;
                t.seconds += st.seconds;
                t.drafted += st.drafted;
                t.accepted += st.accepted;
                t.rounds += st.rounds;
                for c in &st.choices {
                    let key = (c.exit_layer, c.draft_len);
                    match t.choices.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, n)) => *n += c.tokens,
                        None => t.choices.push((key, c.tokens)),
                    }
                }
                t.draft_s += st.draft_seconds;
                t.verify_s += st.verify_seconds;
                if rep == 0 {
                    t.outputs.push(out.tokens);
                }
                done += 1;
                progress(done, total_runs);
            }
        }
    }
    let full_tps = totals[0].tokens as f64 / totals[0].seconds;
    let full_out = totals[0].outputs.clone();
    Ok(modes
        .iter()
        .zip(&totals)
        .map(|(mode, t)| {
            let tps = t.tokens as f64 / t.seconds;
            let (name, e, d) = match *mode {
                Mode::SelfSpeculative { exit, draft_len } => {
                    ("self-speculative", Some(exit), Some(draft_len))
                }
                Mode::Auto(_) => {
                    let main = t.choices.iter().max_by_key(|(_, n)| *n).map(|(k, _)| *k);
                    ("auto", main.map(|k| k.0), main.map(|k| k.1))
                }
                _ => ("full", None, None),
            };
            BenchRow {
                mode: name,
                exit_layer: e,
                draft_len: d,
                tokens: t.tokens,
                seconds: t.seconds,
                tokens_per_second: tps,
                speedup: tps / full_tps,
                acceptance_rate: if t.drafted > 0 {
                    t.accepted as f64 / t.drafted as f64
                } else {
                    0.0
                },
                tokens_per_round: if t.rounds > 0 {
                    t.tokens as f64 / t.rounds as f64
                } else {
                    1.0
                },
                draft_share: t.draft_s / t.seconds,
                verify_share: t.verify_s / t.seconds,
                lossless: t.outputs == full_out,
            }
        })
        .collect())
}

/// The table as text.
pub fn format_table(rows: &[BenchRow]) -> String {
    let mut s = String::from(
        "mode              E   d   tokens/s  speedup  accept  tok/round  draft%  verify%  lossless\n",
    );
    for r in rows {
        let opt = |v: Option<usize>| v.map_or("-".to_string(), |x| x.to_string());
        s += &format!(
            "{:<16} {:>2} {:>3} {:>10.1} {:>7.2}x {:>6.1}% {:>10.2} {:>6.1}% {:>7.1}%  {}\n",
            r.mode,
            opt(r.exit_layer),
            opt(r.draft_len),
            r.tokens_per_second,
            r.speedup,
            100.0 * r.acceptance_rate,
            r.tokens_per_round,
            100.0 * r.draft_share,
            100.0 * r.verify_share,
            if r.lossless { "yes" } else { "NO" },
        );
    }
    s
}

/// Best and median fixed (E, d) against automatic, as text.
pub fn format_summary(rows: &[BenchRow]) -> String {
    let mut fixed: Vec<&BenchRow> = rows
        .iter()
        .filter(|r| r.mode == "self-speculative")
        .collect();
    let Some(auto) = rows.iter().find(|r| r.mode == "auto") else {
        return String::new();
    };
    if fixed.is_empty() {
        return String::new();
    }
    fixed.sort_by(|a, b| a.tokens_per_second.total_cmp(&b.tokens_per_second));
    let best = fixed[fixed.len() - 1];
    let median = fixed[fixed.len() / 2];
    format!(
        "best fixed E={} d={}: {:.2}x; median fixed: {:.2}x; auto: {:.2}x ({:.2} of best, {:.2}x median)\n",
        best.exit_layer.unwrap_or(0),
        best.draft_len.unwrap_or(0),
        best.speedup,
        median.speedup,
        auto.speedup,
        auto.tokens_per_second / best.tokens_per_second,
        auto.tokens_per_second / median.tokens_per_second,
    )
}

/// Aggregate decoding speed of `sessions` concurrent greedy sessions at exit
/// `exit` (full depth when `exit == num_layers`): stepped together in one
/// batched forward per token, and the same sessions stepped one at a time.
#[derive(Debug, Clone, Serialize)]
pub struct BatchRow {
    pub sessions: usize,
    pub tokens: usize,
    pub batched_tokens_per_second: f64,
    pub sequential_tokens_per_second: f64,
    /// Batched aggregate tokens/s over one session's tokens/s (sequential, 1 session).
    pub scaling: f64,
    /// Outputs of the batched and sequential runs are identical.
    pub identical: bool,
}

/// Decode `max_new_tokens` greedy tokens for each of `n` sessions; returns
/// (seconds spent decoding, outputs).
fn decode_sessions<E: Engine>(
    model: &Arc<Model<E>>,
    prompts: &[Vec<u32>],
    n: usize,
    exit: usize,
    max_new_tokens: usize,
    batched: bool,
) -> Result<(f64, Vec<Vec<u32>>)> {
    use crate::sampling::argmax;
    use crate::session::{forward_batch, BatchItem, Logits};
    let mut ss = (0..n)
        .map(|_| Session::new(model.clone(), 0))
        .collect::<Result<Vec<_>>>()?;
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut feed: Vec<Vec<u32>> = (0..n).map(|i| prompts[i % prompts.len()].clone()).collect();
    let mut t = std::time::Instant::now();
    for step in 0..=max_new_tokens {
        if step == 1 {
            // Time decoding only, not the prompts.
            t = std::time::Instant::now();
        }
        if batched {
            let mut items: Vec<BatchItem<'_, E>> = ss
                .iter_mut()
                .zip(&feed)
                .map(|(s, f)| BatchItem {
                    session: s,
                    tokens: f,
                    exit,
                    logits: Logits::Last,
                })
                .collect();
            for r in forward_batch(&mut items) {
                r?;
            }
        } else {
            for (s, f) in ss.iter_mut().zip(&feed) {
                s.forward(f, exit, Logits::Last)?;
            }
        }
        if step < max_new_tokens {
            for i in 0..n {
                let tok = argmax(ss[i].last_logits());
                out[i].push(tok);
                feed[i] = vec![tok];
            }
        }
    }
    Ok((t.elapsed().as_secs_f64(), out))
}

pub fn run_batched<E: Engine>(
    model: &Arc<Model<E>>,
    prompts: &[Vec<u32>],
    max_new_tokens: usize,
    counts: &[usize],
    exit: usize,
) -> Result<Vec<BatchRow>> {
    let mut rows = Vec::new();
    let mut single = 0.0;
    for &n in counts {
        let (tb, ob) = decode_sessions(model, prompts, n, exit, max_new_tokens, true)?;
        let (ts, os) = decode_sessions(model, prompts, n, exit, max_new_tokens, false)?;
        let tokens = n * max_new_tokens;
        let seq = tokens as f64 / ts;
        if single == 0.0 {
            single = max_new_tokens as f64 / (ts / n as f64);
        }
        rows.push(BatchRow {
            sessions: n,
            tokens,
            batched_tokens_per_second: tokens as f64 / tb,
            sequential_tokens_per_second: seq,
            scaling: tokens as f64 / tb / single,
            identical: ob == os,
        });
    }
    Ok(rows)
}

pub fn format_batch_table(rows: &[BatchRow]) -> String {
    let mut s = String::from("sessions  batched tok/s  one-at-a-time tok/s  batched/one-at-a-time  scaling vs 1  identical\n");
    for r in rows {
        s += &format!(
            "{:>8} {:>14.1} {:>20.1} {:>22.2}x {:>12.2}x  {}\n",
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
