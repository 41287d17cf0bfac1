//! The `layerskip` command line: one module per subcommand. The benchmark
//! harness lives here, not in the library that C programs link.

mod batch;
mod bench;
mod costs;
mod eval;
mod frequencies;
mod generate;
mod info;

use clap::{Args, Parser, Subcommand, ValueEnum};
use layerskip::{Model, Setting};
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
        #[arg(long, value_delimiter = ',', value_parser = costs::parse_round)]
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
    /// Count the tokens of text files with the model's tokenizer and write
    /// the ranking that `--draft-shortlist` reads (by default to
    /// `token_frequencies.json` in the checkpoint directory).
    Frequencies {
        #[command(flatten)]
        model: ModelArgs,
        /// Where to write (default: the checkpoint's `token_frequencies.json`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Text files to count (UTF-8).
        #[arg(required = true)]
        files: Vec<PathBuf>,
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
    /// Quantize at load: `int8` products (weights per output channel,
    /// inputs per block of 32, as llama.cpp's q8_0; VNNI where present); `bf16`
    /// matrix products with bf16 weights and inputs, f32 sums (llama.cpp's
    /// bf16 arithmetic; fast multi-row products with AVX512_BF16 or AMX,
    /// where attention runs in bf16 too).
    #[arg(long, value_enum, default_value_t = QuantizeArg::None)]
    quantize: QuantizeArg,
    /// Where to run: `cpu`, `cuda` (GPU 0) or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    device: layerskip::Device,
    /// K/V cache elements: `bf16` halves its memory and the bytes attention
    /// reads (CPU engine; `--quantize bf16` on AMX holds bf16 either way).
    #[arg(long, value_enum, default_value_t = KvDtypeArg::F32)]
    kv_dtype: KvDtypeArg,
    /// CPU worker threads (0: `RAYON_NUM_THREADS`, default one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Drafts score only the K most frequent tokens (`token_frequencies.json`
    /// beside the checkpoint, else the lowest ids) and the session's own
    /// recent tokens; 0: the full head; `auto`: vocab / 8 where the exit
    /// head costs at least half a layer, else the full head.
    #[arg(long, default_value = "0", value_parser = parse_shortlist)]
    draft_shortlist: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum KvDtypeArg {
    F32,
    Bf16,
}

impl ModelArgs {
    /// How the weights and the cache are held, e.g. `int8` or `none, kv bf16`.
    fn holding(&self) -> String {
        match self.kv_dtype {
            KvDtypeArg::F32 => self.quantize_name().to_string(),
            KvDtypeArg::Bf16 => format!("{}, kv bf16", self.quantize_name()),
        }
    }

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
            threads: self.threads,
            draft_shortlist: self.draft_shortlist,
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
    #[arg(long, value_parser = parse_setting)]
    draft_len: Option<Setting>,
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

fn parse_setting(s: &str) -> Result<Setting, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(Setting::Auto);
    }
    s.parse()
        .map(Setting::Fixed)
        .map_err(|_| format!("expected a number or `auto`, got `{s}`"))
}

fn parse_shortlist(s: &str) -> Result<usize, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(layerskip::shortlist::AUTO);
    }
    s.parse()
        .map_err(|_| format!("expected a number or `auto`, got `{s}`"))
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
        Cmd::Generate(a) => generate::run_generate(a),
        Cmd::Bench(a) => bench::run_bench(a),
        Cmd::Info { model, json } => info::run_info(model, json),
        Cmd::Frequencies { model, out, files } => frequencies::run_frequencies(model, out, &files),
        Cmd::Costs {
            model,
            rounds,
            repeat,
        } => costs::run_costs(model, rounds, repeat),
        Cmd::Eval {
            model,
            file,
            seq,
            windows,
            json,
        } => eval::run_eval(model, &file, seq, windows, json),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
