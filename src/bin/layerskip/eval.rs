//! `layerskip eval`: teacher-forced perplexity and top-1 accuracy on a text
//! file, and the agreement of a quantized model with the unquantized one.

use crate::{KvDtypeArg, ModelArgs, QuantizeArg};
use layerskip::engine::Engine;
use layerskip::{Logits, Model, Result, Session};
use serde::Serialize;
use serde_json::json;
use std::sync::Arc;

/// Teacher-forced quality of a model on a token stream: windows of `seq`
/// positions, each predicting the next token at full depth.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Eval {
    pub positions: usize,
    /// Mean negative log-likelihood (nats).
    pub loss: f64,
    pub perplexity: f64,
    /// Share of positions whose top-1 token is the next token.
    pub top1_accuracy: f64,
    /// Top-1 token at every position (for agreement between two models).
    #[serde(skip)]
    pub argmax: Vec<u32>,
}

pub(crate) fn evaluate<E: Engine>(
    model: &Arc<Model<E>>,
    tokens: &[u32],
    seq: usize,
    windows: usize,
) -> Result<Eval> {
    let vocab = model.config.vocab_size;
    let l = model.num_layers();
    let (mut nll, mut correct, mut argmax) = (0f64, 0usize, Vec::new());
    for chunk in tokens.chunks_exact(seq + 1).take(windows) {
        let mut s = Session::new(model.clone(), seq)?;
        s.forward(&chunk[..seq], l, Logits::All)?;
        for (row, &next) in s.logits().chunks_exact(vocab).zip(&chunk[1..]) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max as f64
                + row
                    .iter()
                    .map(|&v| ((v - max) as f64).exp())
                    .sum::<f64>()
                    .ln();
            nll += lse - row[next as usize] as f64;
            let top = layerskip::sampling::argmax(row);
            correct += usize::from(top == next);
            argmax.push(top);
        }
    }
    let n = argmax.len().max(1);
    Ok(Eval {
        positions: argmax.len(),
        loss: nll / n as f64,
        perplexity: (nll / n as f64).exp(),
        top1_accuracy: correct as f64 / n as f64,
        argmax,
    })
}

pub(crate) fn run_eval(
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
    let eval = evaluate(&model, &tokens, seq, windows)?;
    let mut v = json!({ "quantize": args.quantize_name(), "eval": eval });
    // Anything but the reference arithmetic is compared with it.
    let plain = ModelArgs {
        model: args.model.clone(),
        quantize: QuantizeArg::None,
        device: args.device,
        kv_dtype: KvDtypeArg::F32,
        threads: args.threads,
        draft_shortlist: 0,
    };
    if plain.holding() != args.holding() {
        let plain = plain.load()?;
        let base = evaluate(&plain, &tokens, seq, windows)?;
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
    line(&args.holding(), &v["eval"]);
    if let Some(agree) = v["top1_agreement_with_unquantized"].as_f64() {
        line("reference", &v["unquantized"]);
        println!("top-1 agreement with the reference: {:.2}%", 100.0 * agree);
    }
    Ok(())
}
