//! Greedy self-speculative generation from Rust.
//!   cargo run --release --example generate -- assets/layerskip-pycode-8l "def fibonacci(n):" 64

use layerskip::{generate, GenerateOptions, Mode, Model, Session};
use std::io::Write;

fn main() -> layerskip::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .map_or("assets/layerskip-pycode-8l", String::as_str);
    let prompt = args.get(2).map_or("def fibonacci(n):", String::as_str);
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(64);
    let model = Model::load(path)?;
    let mut session = Session::new(model.clone(), 0)?;
    let exit = Mode::default_exit(model.num_layers());
    let opts = GenerateOptions {
        max_new_tokens: n,
        mode: Mode::SelfSpeculative { exit, draft_len: 4 },
        ..Default::default()
    };
    let mut out = std::io::stdout().lock();
    write!(out, "{prompt}").ok();
    generate(
        &mut session,
        &model.encode_prompt(prompt)?,
        &opts,
        |_, text| {
            write!(out, "{text}").ok();
            out.flush().ok();
            true
        },
    )?;
    writeln!(out).ok();
    Ok(())
}
