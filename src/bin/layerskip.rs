//! The `layerskip` command line: generate, info, bench.

use clap::{Args, Parser, Subcommand, ValueEnum};
use layerskip::{generate, AutoSpec, GenerateOptions, Mode, Model, SamplingParams, Session};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "layerskip",
    version,
    about = "LayerSkip early exit and self-speculative decoding"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a prompt.
    Generate(GenerateArgs),
    /// Full depth against every (E, d) pair: tokens/s, speedup, acceptance.
    Bench(BenchArgs),
    /// Time one layer and the exit head by row count (the cost model that
    /// automatic (E, d) uses), then full-depth steps and self-speculative
    /// rounds as decoding runs them, against the model's predictions.
    Costs {
        #[command(flatten)]
        model: ModelArgs,
        /// Rounds to time, as E:D (default: E = L/4, L/2, 3L/4 with D = 1, 2, 4, 8).
        #[arg(long, value_delimiter = ',', value_parser = parse_round)]
        rounds: Vec<(usize, usize)>,
        /// Timed repetitions of each round (the median is shown).
        #[arg(long, default_value_t = 30)]
        repeat: usize,
    },
    /// Teacher-forced perplexity and top-1 accuracy on a text file; with
    /// `--quantize`, also the agreement of top-1 tokens with the unquantized model.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        /// Text to evaluate (UTF-8).
        #[arg(long)]
        file: PathBuf,
        /// Positions per window.
        #[arg(long, default_value_t = 256)]
        seq: usize,
        /// Most windows to evaluate.
        #[arg(long, default_value_t = 96)]
        windows: usize,
        #[arg(long)]
        json: bool,
    },
    /// Print what a checkpoint holds.
    Info {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum QuantizeArg {
    None,
    Int8,
    Bf16,
}

/// Which model, and how to hold its weights.
#[derive(Args)]
struct ModelArgs {
    /// Checkpoint directory (default: the bundled model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Quantize at load: `int8` weight-only per output channel; `bf16`
    /// matrix products with bf16 weights and inputs, f32 sums (llama.cpp's
    /// bf16 arithmetic; fast multi-row products with AVX512_BF16).
    #[arg(long, value_enum, default_value_t = QuantizeArg::None)]
    quantize: QuantizeArg,
    /// Where to run: `cpu`, `cuda` (GPU 0) or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: layerskip::Device,
    /// K/V cache elements: `bf16` halves its memory and the bytes attention
    /// reads (CPU engine).
    #[arg(long, value_enum, default_value_t = KvDtypeArg::F32)]
    kv_dtype: KvDtypeArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum KvDtypeArg {
    F32,
    Bf16,
}

impl ModelArgs {
    fn quantize_name(&self) -> &'static str {
        match self.quantize {
            QuantizeArg::None => "none",
            QuantizeArg::Int8 => "int8",
            QuantizeArg::Bf16 => "bf16",
        }
    }

    fn load(&self) -> layerskip::Result<std::sync::Arc<Model>> {
        let options = layerskip::LoadOptions {
            quantize: match self.quantize {
                QuantizeArg::None => layerskip::Quantize::None,
                QuantizeArg::Int8 => layerskip::Quantize::Int8,
                QuantizeArg::Bf16 => layerskip::Quantize::Bf16,
            },
            device: self.device,
            kv_dtype: match self.kv_dtype {
                KvDtypeArg::F32 => layerskip::KvDtype::F32,
                KvDtypeArg::Bf16 => layerskip::KvDtype::Bf16,
            },
            ..Default::default()
        };
        Model::load_with(self.model.clone().unwrap_or_else(default_model), &options)
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Full,
    EarlyExit,
    SelfSpeculative,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text, encoded with the tokenizer's special-token rules.
    #[arg(
        long,
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
    prompt: Option<String>,
    /// Prompt token ids, used exactly as given (comma-separated).
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    #[arg(long, value_enum, default_value_t = ModeArg::Full)]
    mode: ModeArg,
    /// Exit layer E for early-exit and self-speculative modes (default: half
    /// the layers); `auto` (self-speculative) chooses it every round.
    #[arg(long, value_parser = parse_setting)]
    exit_layer: Option<Setting>,
    /// Draft length d for self-speculative mode; `auto` chooses it every round.
    #[arg(long, value_parser = parse_setting, default_value = "4")]
    draft_len: Setting,
    /// Sampling temperature; 0 is greedy. The default samples, as
    /// llama.cpp's CLI does: a small model's greedy text falls into loops.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Keep the K most probable tokens; 0 keeps all.
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the most probable tokens up to this total probability.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Random seed: the same seed and settings give the same text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Greedy decoding (the most probable token every step): the same as
    /// `--temperature 0`; overrides the sampling options.
    #[arg(long)]
    greedy: bool,
    /// Keep generating past EOS.
    #[arg(long)]
    ignore_eos: bool,
    /// Self-speculative: stop drafting when the draft's top probability is below this.
    #[arg(long, default_value_t = 0.0)]
    confidence_threshold: f32,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (repeatable).
    #[arg(long)]
    prompt: Vec<String>,
    /// A file with one prompt per non-empty line.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Exit layers to try (default: every layer 1..L-1).
    #[arg(long, value_delimiter = ',')]
    exit_layers: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "2,4,6,8")]
    draft_lens: Vec<usize>,
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Leave out the automatic (E, d) row.
    #[arg(long)]
    no_auto: bool,
    /// After the sweep, run full depth, the best fixed (E, d) and automatic
    /// again this many rounds over the prompts, side by side (the best of
    /// many noisy rows is partly luck).
    #[arg(long, default_value_t = 0)]
    confirm: usize,
    /// Instead of the (E, d) sweep: these numbers of concurrent greedy
    /// generations, advanced together (batched) and one after another, at
    /// full depth and self-speculatively with the first --exit-layers and
    /// --draft-lens values (default L/2 and 4).
    #[arg(long, value_delimiter = ',')]
    sessions: Vec<usize>,
    #[arg(long)]
    json: bool,
}

/// A number, or `auto`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Setting {
    Auto,
    Fixed(usize),
}

fn parse_setting(s: &str) -> Result<Setting, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(Setting::Auto);
    }
    s.parse()
        .map(Setting::Fixed)
        .map_err(|_| format!("expected a number or `auto`, got `{s}`"))
}

impl Setting {
    fn fixed(self) -> Option<usize> {
        match self {
            Setting::Auto => None,
            Setting::Fixed(n) => Some(n),
        }
    }
}

/// The bundled model, found next to the sources (cargo run) or the working directory.
fn default_model() -> PathBuf {
    const BUNDLED: &str = "assets/layerskip-pycode-8l";
    let built = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(BUNDLED);
    if built.is_dir() {
        built
    } else {
        PathBuf::from(BUNDLED)
    }
}

fn run_generate(a: GenerateArgs) -> layerskip::Result<()> {
    let model = a.model.load()?;
    let n = model.num_layers();
    let exit = a.exit_layer.unwrap_or(Setting::Fixed((n / 2).max(1)));
    let mode = match (a.mode, exit.fixed(), a.draft_len.fixed()) {
        (ModeArg::Full, _, _) => Mode::Full,
        (ModeArg::EarlyExit, Some(exit), _) => Mode::EarlyExit { exit },
        (ModeArg::EarlyExit, None, _) => {
            return Err(layerskip::Error::invalid(
                "--exit-layer auto needs --mode self-speculative",
            ))
        }
        (ModeArg::SelfSpeculative, Some(exit), Some(draft_len)) => {
            Mode::SelfSpeculative { exit, draft_len }
        }
        (ModeArg::SelfSpeculative, exit, draft_len) => Mode::Auto(AutoSpec { exit, draft_len }),
    };
    let prompt = match (&a.prompt_ids, &a.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => model.encode_prompt(text)?,
        (None, None) => unreachable!("clap requires one"),
    };
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        mode,
        sampling: SamplingParams {
            temperature: if a.greedy { 0.0 } else { a.temperature },
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        ignore_eos: a.ignore_eos,
        stop_strings: a.stop,
        confidence_threshold: a.confidence_threshold,
    };
    let mut session = Session::new(model.clone(), 0)?;
    let stream = !a.json;
    if stream {
        if let Some(text) = &a.prompt {
            let mut out = std::io::stdout();
            let _ = write!(out, "{text}");
        }
    }
    // On one of the engine's workers: no hand-off between threads per token.
    let res = layerskip::engine::Engine::enter(&model.engine, || {
        generate(&mut session, &prompt, &opts, |_, piece| {
            if stream && !piece.is_empty() {
                let mut out = std::io::stdout();
                let _ = write!(out, "{piece}");
                let _ = out.flush();
            }
            true
        })
    })?;
    let mut out = std::io::stdout().lock();
    let s = &res.stats;
    if a.json {
        let v = json!({
            "tokens": res.tokens,
            "text": res.text,
            "stop_reason": res.stop_reason.as_str(),
            "stats": {
                "prompt_tokens": s.prompt_tokens,
                "generated_tokens": s.generated_tokens,
                "seconds": s.seconds,
                "tokens_per_second": s.tokens_per_second,
                "drafted": s.drafted,
                "accepted": s.accepted,
                "acceptance_rate": s.acceptance_rate,
                "rounds": s.rounds,
                "draft_seconds": s.draft_seconds,
                "verify_seconds": s.verify_seconds,
                "choices": s.choices.iter().map(|c| json!({
                    "first_token": c.first_token,
                    "exit_layer": c.exit_layer,
                    "draft_len": c.draft_len,
                    "rounds": c.rounds,
                    "tokens": c.tokens,
                })).collect::<Vec<_>>(),
            }
        });
        writeln!(out, "{v}").ok();
    } else {
        writeln!(out).ok();
        out.flush().ok();
        eprintln!(
            "[{} tokens in {:.2}s, {:.1} tokens/s{}]",
            s.generated_tokens,
            s.seconds,
            s.tokens_per_second,
            if s.drafted > 0 {
                format!(", acceptance {:.1}%", 100.0 * s.acceptance_rate)
            } else {
                String::new()
            }
        );
        if let (Mode::Auto(_), Some((e, d))) = (opts.mode, s.main_choice()) {
            eprintln!(
                "[auto: mostly E={e} d={d}; {} changes of (E, d)]",
                s.choices.len().saturating_sub(1)
            );
        }
    }
    Ok(())
}

/// Bench rows as pretty JSON, or as the text `table` makes.
fn print_rows<T: serde::Serialize>(rows: &T, json: bool, table: impl FnOnce() -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(rows).expect("rows serialize")
        );
    } else {
        print!("{}", table());
    }
}

fn run_bench(a: BenchArgs) -> layerskip::Result<()> {
    let model = a.model.load()?;
    let mut texts = a.prompt.clone();
    if let Some(f) = &a.prompt_file {
        let body = std::fs::read_to_string(f).map_err(|e| layerskip::Error::io(f, e))?;
        texts.extend(
            body.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.replace("\\n", "\n")),
        );
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
        let exit = a.exit_layers.first().copied().unwrap_or((l / 2).max(1));
        let draft_len = if a.draft_lens == [2, 4, 6, 8] {
            4
        } else {
            a.draft_lens[0]
        };
        let modes = [Mode::Full, Mode::SelfSpeculative { exit, draft_len }];
        let rows =
            layerskip::bench::run_batched(&model, &prompts, a.max_new_tokens, &a.sessions, &modes)?;
        print_rows(&rows, a.json, || {
            layerskip::bench::format_batch_table(&rows)
        });
        return Ok(());
    }
    let exit_layers = if a.exit_layers.is_empty() {
        (1..l).collect()
    } else {
        a.exit_layers
    };
    let cfg = layerskip::bench::BenchConfig {
        prompts,
        max_new_tokens: a.max_new_tokens,
        exit_layers,
        draft_lens: a.draft_lens,
        repeat: a.repeat.max(1),
        auto: !a.no_auto,
        confirm: a.confirm,
    };
    let rows = layerskip::bench::run(&model, &cfg, |done, total| {
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
    let roofline = layerskip::bench::Roofline::new(&model, full);
    let json = serde_json::json!({ "rows": rows, "roofline": roofline });
    print_rows(&json, a.json, || {
        layerskip::bench::format_table(&rows)
            + &layerskip::bench::format_summary(&rows)
            + &roofline.format()
    });
    Ok(())
}

fn parse_round(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("expected E:D (exit layer and draft length), got `{s}`");
    let (e, d) = s.split_once(':').ok_or_else(bad)?;
    Ok((e.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?))
}

fn run_costs(
    model: ModelArgs,
    rounds: Vec<(usize, usize)>,
    repeat: usize,
) -> layerskip::Result<()> {
    let model = model.load()?;
    let c = model.cost_model();
    println!("rows  layer_us  per_row  head_us  per_row");
    for r in 1..=c.layer.len() {
        println!(
            "{r:>4} {:>9.1} {:>8.2} {:>8.1} {:>8.2}",
            1e6 * c.layer(r),
            c.layer(r) / (r as f64 * c.layer(1)),
            1e6 * c.head(r),
            c.head(r) / (r as f64 * c.head(1)),
        );
    }
    println!(
        "full token {:.1} us ({} layers + head); measured in {:.0} ms",
        1e6 * c.full_token(),
        c.n_layers,
        1e3 * c.measure_seconds
    );
    let l = c.n_layers;
    let rounds = if rounds.is_empty() {
        let mut exits: Vec<usize> = [l / 4, l / 2, 3 * l / 4]
            .into_iter()
            .filter(|e| (1..l).contains(e))
            .collect();
        exits.dedup();
        exits
            .into_iter()
            .flat_map(|e| [1, 2, 4, 8].map(|d| (e, d)))
            .collect()
    } else {
        rounds
    };
    let repeat = repeat.max(1);
    let timed = c.time_rounds(&model.engine, &rounds, repeat)?;
    let full = timed[0];
    println!(
        "\nas decoding runs them (median of {repeat}); x full = seconds over a full-depth step's"
    );
    println!(
        "round       measured_us  predicted_us  measured/predicted  x full: measured  predicted"
    );
    for t in &timed {
        let name = if t.drafts == 0 {
            "full depth".to_string()
        } else {
            format!("E={} d={}", t.exit, t.drafts)
        };
        println!(
            "{name:<11} {:>11.1} {:>13.1} {:>19.2} {:>17.2} {:>10.2}",
            1e6 * t.measured,
            1e6 * t.predicted,
            t.measured / t.predicted,
            t.measured / full.measured,
            t.predicted / full.predicted,
        );
    }
    Ok(())
}

fn run_eval(
    args: ModelArgs,
    file: &std::path::Path,
    seq: usize,
    windows: usize,
    as_json: bool,
) -> layerskip::Result<()> {
    if seq == 0 {
        return Err(layerskip::Error::invalid("--seq must be at least 1"));
    }
    let text = std::fs::read_to_string(file).map_err(|e| layerskip::Error::io(file, e))?;
    let model = args.load()?;
    let tokens = model.tokenizer.encode(&text, false)?;
    if tokens.len() <= seq || windows == 0 {
        return Err(layerskip::Error::invalid(format!(
            "{}: {} tokens, too short for one window of --seq {seq} positions",
            file.display(),
            tokens.len()
        )));
    }
    let eval = layerskip::bench::evaluate(&model, &tokens, seq, windows)?;
    let mut v = json!({ "quantize": args.quantize_name(), "eval": eval });
    if !matches!(args.quantize, QuantizeArg::None) {
        let plain = ModelArgs {
            model: args.model.clone(),
            quantize: QuantizeArg::None,
            device: args.device,
            kv_dtype: args.kv_dtype,
        }
        .load()?;
        let base = layerskip::bench::evaluate(&plain, &tokens, seq, windows)?;
        let same = eval
            .argmax
            .iter()
            .zip(&base.argmax)
            .filter(|(a, b)| a == b)
            .count();
        v["unquantized"] = json!(base);
        v["top1_agreement_with_unquantized"] = json!(same as f64 / base.positions.max(1) as f64);
    }
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&v).expect("eval serializes")
        );
        return Ok(());
    }
    let line = |name: &str, e: &serde_json::Value| {
        println!(
            "{name}: {} positions, loss {:.4}, perplexity {:.3}, top-1 accuracy {:.1}%",
            e["positions"],
            e["loss"].as_f64().unwrap_or(0.0),
            e["perplexity"].as_f64().unwrap_or(0.0),
            100.0 * e["top1_accuracy"].as_f64().unwrap_or(0.0)
        )
    };
    line(args.quantize_name(), &v["eval"]);
    if let Some(agree) = v["top1_agreement_with_unquantized"].as_f64() {
        line("unquantized", &v["unquantized"]);
        println!("top-1 agreement with unquantized: {:.2}%", 100.0 * agree);
    }
    Ok(())
}

fn run_info(model: ModelArgs, as_json: bool) -> layerskip::Result<()> {
    let model = model.load()?;
    let c = &model.config;
    let v = json!({
        "path": model.dir.display().to_string(),
        "layers": c.num_layers,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "heads": c.num_heads,
        "kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "context_length": c.max_position_embeddings,
        "rope_theta": c.rope_theta,
        "rope_scaling": format!("{:?}", c.rope_scaling),
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_ids": c.eos_token_ids,
        "dtype": model.dtype.name(),
    });
    if as_json {
        println!("{v}");
    } else {
        for (k, val) in v.as_object().unwrap() {
            println!("{k:>20}: {val}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // Output piped into `head` and the like: end quietly when the reader
    // goes, as other command-line tools do (Rust ignores SIGPIPE, so the
    // next print would panic).
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any
    // other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Generate(a) => run_generate(a),
        Cmd::Bench(a) => run_bench(a),
        Cmd::Info { model, json } => run_info(model, json),
        Cmd::Costs {
            model,
            rounds,
            repeat,
        } => run_costs(model, rounds, repeat),
        Cmd::Eval {
            model,
            file,
            seq,
            windows,
            json,
        } => run_eval(model, &file, seq, windows, json),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
