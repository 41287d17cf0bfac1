//! Weight-only int8 and bf16 products: self-speculation stays lossless on the
//! quantized model, and its predictions stay close to the unquantized model's
//! on Python code (the bundled model's domain).

use layerskip::{generate, GenerateOptions, LoadOptions, Mode, Model, Quantize, Session};
use std::path::PathBuf;
use std::sync::Arc;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bundled(quantize: Quantize) -> Arc<Model> {
    let options = LoadOptions {
        quantize,
        ..Default::default()
    };
    Model::load_with(root().join("assets/layerskip-pycode-8l"), &options).unwrap()
}

fn self_speculation_equals_full_depth(quantize: Quantize) {
    let model = bundled(quantize);
    let l = model.num_layers();
    let prompt = model.encode_prompt("def fibonacci(n):").unwrap();
    let run = |mode| {
        let opts = GenerateOptions {
            max_new_tokens: 40,
            mode,
            ignore_eos: true,
            ..Default::default()
        };
        let mut s = Session::new(model.clone(), 0).unwrap();
        generate(&mut s, &prompt, &opts, |_, _| true)
            .unwrap()
            .tokens
    };
    let full = run(Mode::Full);
    assert_eq!(full.len(), 40);
    for (exit, draft_len) in [(1, 3), (l / 2, 4), (l - 1, 6)] {
        assert_eq!(
            run(Mode::SelfSpeculative { exit, draft_len }),
            full,
            "{quantize:?} E={exit} d={draft_len}"
        );
    }
}

#[test]
fn int8_self_speculation_equals_int8_full_depth() {
    self_speculation_equals_full_depth(Quantize::Int8);
}

#[test]
fn bf16_self_speculation_equals_bf16_full_depth() {
    self_speculation_equals_full_depth(Quantize::Bf16);
}

/// Top-1 agreement with the unquantized model and the loss difference on
/// Python code the model never saw in training: this repository's tools.
fn predictions_stay_close(quantize: Quantize, min_agreement: f64, max_loss_diff: f64) {
    let text = [
        "tools/make_fixtures.py",
        "tools/train/train.py",
        "tools/make_random_model.py",
    ]
    .iter()
    .map(|p| std::fs::read_to_string(root().join(p)).unwrap())
    .collect::<String>();
    let plain = bundled(Quantize::None);
    let tokens = plain.tokenizer.encode(&text, false).unwrap();
    let base = layerskip::bench::evaluate(&plain, &tokens, 128, 24).unwrap();
    let q = layerskip::bench::evaluate(&bundled(quantize), &tokens, 128, 24).unwrap();
    assert!(base.positions >= 1000, "{} positions", base.positions);
    let agree = q
        .argmax
        .iter()
        .zip(&base.argmax)
        .filter(|(a, b)| a == b)
        .count() as f64
        / base.positions as f64;
    println!(
        "{quantize:?} vs unquantized on {} positions: top-1 agreement {:.2}%, perplexity {:.3} vs {:.3}",
        base.positions,
        100.0 * agree,
        q.perplexity,
        base.perplexity
    );
    assert!(agree >= min_agreement, "top-1 agreement {agree}");
    assert!(
        (q.loss - base.loss).abs() < max_loss_diff,
        "loss {} vs {}",
        q.loss,
        base.loss
    );
}

#[test]
fn int8_predictions_stay_close_to_bf16_on_code() {
    predictions_stay_close(Quantize::Int8, 0.97, 0.02);
}

#[test]
fn bf16_products_predictions_stay_close_to_f32_products_on_code() {
    predictions_stay_close(Quantize::Bf16, 0.98, 0.01);
}
