//! `layerskip bench`: full-depth decoding against every (E, d) pair on the
//! same prompts, runs interleaved so machine noise hits every row alike.

use crate::{print_rows, BenchArgs};
use layerskip::adaptive::AutoSpec;
use layerskip::engine::Engine;
use layerskip::{generate, GenerateOptions, Mode, Model, Result, Session};
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct BenchRow {
    /// "sweep", or "confirm" for the confirmation runs (see [`run`]).
    pub phase: &'static str,
    /// "full", "self-speculative" or "auto".
    pub mode: &'static str,
    pub exit_layer: Option<usize>,
    pub draft_len: Option<usize>,
    pub tokens: usize,
    pub seconds: f64,
    /// Whole generations: prompts' prefill and decoding.
    pub tokens_per_second: f64,
    /// Prompt tokens per second of the prompts' passes (prefill alone).
    pub prompt_tokens_per_second: f64,
    /// Tokens after each generation's first per second after its prompt
    /// (decoding alone, as llama.cpp's "tg").
    pub decode_tokens_per_second: f64,
    /// Over full depth: the median, over prompts and repetitions, of this
    /// row's tokens/s over full depth's on the same prompt in the same
    /// repetition (the two ran back to back, so a busy spell of the machine
    /// hits both), with the quartiles of those ratios.
    pub speedup: f64,
    pub speedup_q1: f64,
    pub speedup_q3: f64,
    /// Tokens/s of each run, in (repetition, prompt) order: the same order
    /// in every row of a phase, so rows can be compared run by run.
    pub run_tokens_per_second: Vec<f64>,
    pub acceptance_rate: f64,
    /// Tokens produced per verify round (accepted drafts + 1).
    pub tokens_per_round: f64,
    pub draft_share: f64,
    pub verify_share: f64,
    /// Greedy output identical to full-depth decoding.
    pub lossless: bool,
    /// Automatic rows: the share of the tokens made at each exit layer
    /// (`drafts == false`: plain full-depth steps), largest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exit_shares: Vec<ExitShare>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct ExitShare {
    pub exit_layer: usize,
    pub drafts: bool,
    pub share: f64,
}

/// Tokens per (E, d) merged per exit (an automatic d labels its rounds by
/// the d it predicted; they all drafted at E), as shares of the total.
fn exit_shares(choices: &[((usize, usize), usize)]) -> Vec<ExitShare> {
    let total: usize = choices.iter().map(|(_, n)| n).sum();
    let mut out: Vec<ExitShare> = Vec::new();
    for &((exit_layer, d), n) in choices {
        let share = n as f64 / total.max(1) as f64;
        match out
            .iter_mut()
            .find(|x| (x.exit_layer, x.drafts) == (exit_layer, d > 0))
        {
            Some(x) => x.share += share,
            None => out.push(ExitShare {
                exit_layer,
                drafts: d > 0,
                share,
            }),
        }
    }
    out.sort_by(|a, b| b.share.total_cmp(&a.share));
    out
}

pub(crate) struct BenchConfig {
    pub prompts: Vec<Vec<u32>>,
    pub max_new_tokens: usize,
    pub exit_layers: Vec<usize>,
    pub draft_lens: Vec<usize>,
    pub repeat: usize,
    /// Add a row for automatic (E, d).
    pub auto: bool,
    /// Confirmation rounds over the prompts for full depth, the best fixed
    /// pair and automatic (0: none).
    pub confirm: usize,
}

#[derive(Default, Clone)]
struct Totals {
    tokens: usize,
    seconds: f64,
    prompt_tokens: usize,
    prompt_s: f64,
    drafted: u64,
    accepted: u64,
    rounds: u64,
    /// Tokens per (E, d) chosen (automatic mode).
    choices: Vec<((usize, usize), usize)>,
    draft_s: f64,
    verify_s: f64,
    outputs: Vec<Vec<u32>>,
    /// Tokens/s of every run, in (repetition, prompt) order.
    runs: Vec<f64>,
}

/// First quartile, median and third quartile (linear between ranks; NaN if
/// empty).
fn quartiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let x = (v.len() - 1) as f64 * q;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
    };
    (at(0.25), at(0.5), at(0.75))
}

/// [`quartiles`] of `runs[i] / base[i]`: each run against the baseline run
/// it was paired with.
fn paired_ratios(runs: &[f64], base: &[f64]) -> (f64, f64, f64) {
    quartiles(runs.iter().zip(base).map(|(r, b)| r / b).collect())
}

/// Run the benchmark; `progress(done, total)` is called after each run.
/// With `confirm > 0` and an automatic row, full depth, the sweep's best
/// fixed (E, d) and automatic run again `confirm` times (rows with phase
/// "confirm"): the best of many noisy sweep rows is partly luck, and the
/// confirmation measures the three side by side on equal terms.
pub(crate) fn run<E: Engine>(
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
    let confirming = cfg.auto && cfg.confirm > 0 && modes.len() > 2;
    let runs = |n_modes: usize, reps: usize| n_modes * cfg.prompts.len() * reps;
    let total = runs(modes.len(), cfg.repeat) + if confirming { runs(3, cfg.confirm) } else { 0 };
    let mut done = 0;
    let mut tick = || {
        done += 1;
        progress(done, total);
    };
    let mut rows = measure(model, cfg, &modes, cfg.repeat, "sweep", &mut tick)?;
    if confirming {
        let best = rows
            .iter()
            .zip(&modes)
            .filter(|(r, _)| r.mode == "self-speculative")
            .max_by(|a, b| a.0.speedup.total_cmp(&b.0.speedup))
            .map(|(_, m)| *m)
            .expect("the sweep has fixed pairs");
        let again = [Mode::Full, best, Mode::Auto(AutoSpec::default())];
        rows.extend(measure(
            model,
            cfg,
            &again,
            cfg.confirm,
            "confirm",
            &mut tick,
        )?);
    }
    Ok(rows)
}

/// `reps` rounds over the prompts; for each prompt every mode runs back to
/// back, so a slow spell of the machine hits all modes of that prompt alike.
fn measure<E: Engine>(
    model: &Arc<Model<E>>,
    cfg: &BenchConfig,
    modes: &[Mode],
    reps: usize,
    phase: &'static str,
    tick: &mut impl FnMut(),
) -> Result<Vec<BenchRow>> {
    let mut totals = vec![Totals::default(); modes.len()];
    for rep in 0..reps {
        for prompt in &cfg.prompts {
            for (mode, t) in modes.iter().zip(totals.iter_mut()) {
                let opts = GenerateOptions {
                    max_new_tokens: cfg.max_new_tokens,
                    mode: *mode,
                    ignore_eos: true,
                    ..Default::default()
                };
                let mut s = Session::new(model.clone(), 0)?;
                // As the CLI does: the loop runs on one of the engine's workers.
                let out = model
                    .engine
                    .enter(|| generate(&mut s, prompt, &opts, |_, _| true))?;
                let st = out.stats;
                t.tokens += st.generated_tokens;
                t.seconds += st.seconds;
                t.prompt_tokens += st.prompt_tokens;
                t.prompt_s += st.prompt_seconds;
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
                t.runs.push(st.tokens_per_second);
                if rep == 0 {
                    t.outputs.push(out.tokens);
                }
                tick();
            }
        }
    }
    let full_runs = totals[0].runs.clone();
    let full_out = totals[0].outputs.clone();
    Ok(modes
        .iter()
        .zip(&totals)
        .map(|(mode, t)| {
            let tps = t.tokens as f64 / t.seconds;
            let (q1, speedup, q3) = paired_ratios(&t.runs, &full_runs);
            let shares = if matches!(mode, Mode::Auto(_)) {
                exit_shares(&t.choices)
            } else {
                Vec::new()
            };
            let (name, e, d) = match *mode {
                Mode::SelfSpeculative { exit, draft_len } => {
                    ("self-speculative", Some(exit), Some(draft_len))
                }
                Mode::Auto(_) => {
                    // The exit that made the most tokens, with its most used d label.
                    let main = shares.first().and_then(|top| {
                        t.choices
                            .iter()
                            .filter(|((e, d), _)| (*e, *d > 0) == (top.exit_layer, top.drafts))
                            .max_by_key(|(_, n)| *n)
                            .map(|(k, _)| *k)
                    });
                    ("auto", main.map(|k| k.0), main.map(|k| k.1))
                }
                _ => ("full", None, None),
            };
            BenchRow {
                phase,
                mode: name,
                exit_layer: e,
                draft_len: d,
                tokens: t.tokens,
                seconds: t.seconds,
                tokens_per_second: tps,
                prompt_tokens_per_second: t.prompt_tokens as f64 / t.prompt_s.max(1e-9),
                // Every generation's first token comes with its prompt's pass.
                decode_tokens_per_second: t.tokens.saturating_sub(t.runs.len()) as f64
                    / (t.seconds - t.prompt_s).max(1e-9),
                speedup,
                speedup_q1: q1,
                speedup_q3: q3,
                run_tokens_per_second: t.runs.clone(),
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
                exit_shares: shares,
            }
        })
        .collect())
}

/// The table as text (confirmation rows after a line of their own).
pub(crate) fn format_table(rows: &[BenchRow]) -> String {
    let mut s = String::from(
        "mode              E   d   tokens/s  decode/s  speedup  quartiles  accept  tok/round  draft%  verify%  lossless\n",
    );
    let mut phase = rows.first().map_or("sweep", |r| r.phase);
    for r in rows {
        if r.phase != phase {
            phase = r.phase;
            s += &format!("-- {phase}\n");
        }
        let opt = |v: Option<usize>| v.map_or("-".to_string(), |x| x.to_string());
        s += &format!(
            "{:<16} {:>2} {:>3} {:>10.1} {:>9.1} {:>7.2}x  {:>4.2}-{:<4.2} {:>6.1}% {:>10.2} {:>6.1}% {:>7.1}%  {}\n",
            r.mode,
            opt(r.exit_layer),
            opt(r.draft_len),
            r.tokens_per_second,
            r.decode_tokens_per_second,
            r.speedup,
            r.speedup_q1,
            r.speedup_q3,
            100.0 * r.acceptance_rate,
            r.tokens_per_round,
            100.0 * r.draft_share,
            100.0 * r.verify_share,
            if r.lossless { "yes" } else { "NO" },
        );
    }
    s
}

/// Best and median fixed (E, d) against automatic, as text; with
/// confirmation rows, also the best pair against automatic in those.
pub(crate) fn format_summary(rows: &[BenchRow]) -> String {
    let in_phase = |phase: &str, mode: &str| {
        rows.iter()
            .filter(move |r| r.phase == phase && r.mode == mode)
            .collect::<Vec<_>>()
    };
    let mut fixed = in_phase("sweep", "self-speculative");
    let Some(auto) = in_phase("sweep", "auto").pop() else {
        return String::new();
    };
    if fixed.is_empty() {
        return String::new();
    }
    fixed.sort_by(|a, b| a.speedup.total_cmp(&b.speedup));
    // Rows of one phase ran the same prompts back to back: compare them run by run.
    let paired = |a: &BenchRow, b: &BenchRow| {
        paired_ratios(&a.run_tokens_per_second, &b.run_tokens_per_second).1
    };
    let best = fixed[fixed.len() - 1];
    let median = fixed[fixed.len() / 2];
    let mut s = format!(
        "best fixed E={} d={}: {:.2}x; median fixed: {:.2}x; auto: {:.2}x ({:.2} of best, {:.2}x median)\n",
        best.exit_layer.unwrap_or(0),
        best.draft_len.unwrap_or(0),
        best.speedup,
        median.speedup,
        auto.speedup,
        paired(auto, best),
        paired(auto, median),
    );
    if !auto.exit_shares.is_empty() {
        let shares: Vec<String> = auto
            .exit_shares
            .iter()
            .map(|x| {
                let at = if x.drafts {
                    format!("E={}", x.exit_layer)
                } else {
                    "full depth".to_string()
                };
                format!("{at} {:.0}%", 100.0 * x.share)
            })
            .collect();
        s += &format!("auto's tokens by exit (sweep): {}\n", shares.join(", "));
    }
    if let (Some(b), Some(a)) = (
        in_phase("confirm", "self-speculative").pop(),
        in_phase("confirm", "auto").pop(),
    ) {
        s += &format!(
            "confirmation: best fixed E={} d={}: {:.2}x; auto: {:.2}x ({:.2} of best, {:.2}x the sweep's median)\n",
            b.exit_layer.unwrap_or(0),
            b.draft_len.unwrap_or(0),
            b.speedup,
            a.speedup,
            paired(a, b),
            a.speedup / median.speedup,
        );
    }
    s
}

/// Full-depth decoding against the memory bandwidth: batch-1 decoding reads
/// every weight once per token, so bytes per token x tokens/s cannot exceed
/// what the memory delivers.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Roofline {
    pub weight_bytes_per_token: usize,
    pub tokens_per_second: f64,
    /// weight_bytes_per_token x tokens_per_second.
    pub achieved_gb_per_s: f64,
    /// The engine's memory bandwidth probe (host reads on the CPU,
    /// device-to-device copies on a GPU).
    pub measured_gb_per_s: f64,
    pub kernel: String,
}

impl Roofline {
    pub fn new<E: Engine>(model: &Model<E>, full_tokens_per_second: f64) -> Roofline {
        let bytes = model.engine.weight_bytes_per_token();
        Roofline {
            weight_bytes_per_token: bytes,
            tokens_per_second: full_tokens_per_second,
            achieved_gb_per_s: bytes as f64 * full_tokens_per_second / 1e9,
            measured_gb_per_s: model.engine.memory_bandwidth(),
            kernel: model.engine.kernel_name(),
        }
    }

    pub fn format(&self) -> String {
        format!(
            "roofline: full depth reads {:.1} MB of weights per token; {:.1} tok/s = {:.1} GB/s = {:.0}% of measured read bandwidth ({:.1} GB/s; kernel {})\n",
            self.weight_bytes_per_token as f64 / 1e6,
            self.tokens_per_second,
            self.achieved_gb_per_s,
            100.0 * self.achieved_gb_per_s / self.measured_gb_per_s,
            self.measured_gb_per_s,
            self.kernel
        )
    }
}

pub(crate) fn run_bench(a: BenchArgs) -> layerskip::Result<()> {
    let model = a.model.load()?;
    let mut texts = a.prompt.clone();
    if let Some(f) = &a.prompt_file {
        let body = std::fs::read_to_string(f).map_err(|e| layerskip::Error::io(f, e))?;
        let before = texts.len();
        texts.extend(
            body.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.replace("\\n", "\n")),
        );
        if texts.len() == before {
            return Err(layerskip::Error::invalid(format!(
                "{}: no prompts (one per line)",
                f.display()
            )));
        }
    }
    if texts.is_empty() {
        texts.push("def fibonacci(n):".to_string());
    }
    let prompts = texts
        .iter()
        .map(|t| model.encode_prompt(t))
        .collect::<layerskip::Result<Vec<_>>>()?;
    let l = model.num_layers();
    if !a.sessions.is_empty() {
        let exit = a
            .exit_layers
            .first()
            .copied()
            .unwrap_or(Mode::default_exit(l));
        let draft_len = if a.draft_lens == [2, 4, 6, 8] {
            4
        } else {
            a.draft_lens[0]
        };
        let modes = [Mode::Full, Mode::SelfSpeculative { exit, draft_len }];
        let rows =
            crate::batch::run_batched(&model, &prompts, a.max_new_tokens, &a.sessions, &modes)?;
        print_rows(&rows, a.json, || crate::batch::format_batch_table(&rows));
        return Ok(());
    }
    let exit_layers = if a.exit_layers.is_empty() {
        (1..l).collect()
    } else {
        a.exit_layers
    };
    let cfg = BenchConfig {
        prompts,
        max_new_tokens: a.max_new_tokens,
        exit_layers,
        draft_lens: a.draft_lens,
        repeat: a.repeat.max(1),
        auto: !a.no_auto,
        confirm: a.confirm,
    };
    let rows = run(&model, &cfg, |done, total| {
        let width = 30;
        let filled = done * width / total;
        eprint!(
            "\r[{}{}] {done}/{total} runs",
            "#".repeat(filled),
            " ".repeat(width - filled)
        );
        if done == total {
            eprintln!();
        }
    })?;
    let full = rows
        .iter()
        .find(|r| r.mode == "full" && r.phase == "sweep")
        .map_or(0.0, |r| r.tokens_per_second);
    let roofline = Roofline::new(&model, full);
    let json = serde_json::json!({ "rows": rows, "roofline": roofline });
    print_rows(&json, a.json, || {
        format_table(&rows) + &format_summary(&rows) + &roofline.format()
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_shares_merge_draft_labels_per_exit() {
        // E=5 labelled d=2 and d=4 is one exit; full-depth steps are apart
        // from an exit's drafts even at the same layer index.
        let shares = exit_shares(&[((5, 2), 30), ((8, 0), 20), ((5, 4), 40), ((2, 1), 10)]);
        let got: Vec<_> = shares
            .iter()
            .map(|x| (x.exit_layer, x.drafts, (100.0 * x.share).round()))
            .collect();
        assert_eq!(got, [(5, true, 70.0), (8, false, 20.0), (2, true, 10.0)]);
        assert!(exit_shares(&[]).is_empty());
    }

    #[test]
    fn paired_ratios_resist_a_busy_spell() {
        assert_eq!(quartiles(vec![3.0, 1.0, 2.0]), (1.5, 2.0, 2.5));
        assert!(quartiles(Vec::new()).1.is_nan());
        // The second pair ran while the machine was busy (both halves slow),
        // the third had a burst of noise on the baseline only.
        let full = [100.0, 50.0, 60.0, 100.0, 100.0];
        let spec = [120.0, 60.0, 120.0, 118.0, 121.0];
        let (q1, med, q3) = paired_ratios(&spec, &full);
        assert!((med - 1.2).abs() < 1e-12, "{med}");
        assert!(q1 <= med && med <= q3 && q3 == 1.21);
        let totals = spec.iter().sum::<f64>() / full.iter().sum::<f64>();
        assert!(
            totals > 1.3,
            "the ratio of totals is pulled by the burst: {totals}"
        );
    }
}
