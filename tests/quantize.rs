//! int8 products, bf16 products and a bf16 K/V cache: self-speculation
//! stays lossless with each, and predictions stay close to the plain model's
//! on Python code (the bundled model's domain).

use layerskip::engine::Engine;
use layerskip::{
    generate, Device, ErrorKind, GenerateOptions, KvDtype, LoadOptions, Mode, Model, Quantize,
    Session,
};
use std::path::PathBuf;
use std::sync::Arc;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bundled(options: LoadOptions) -> Arc<Model> {
    Model::load_with(root().join("assets/layerskip-pycode-8l"), &options).unwrap()
}

fn quantized(quantize: Quantize) -> LoadOptions {
    LoadOptions {
        quantize,
        ..Default::default()
    }
}

fn bf16_kv() -> LoadOptions {
    LoadOptions {
        kv_dtype: KvDtype::Bf16,
        ..Default::default()
    }
}

fn self_speculation_equals_full_depth(options: LoadOptions) {
    let model = bundled(options);
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
            "{options:?} E={exit} d={draft_len}"
        );
    }
}

#[test]
fn int8_self_speculation_equals_int8_full_depth() {
    self_speculation_equals_full_depth(quantized(Quantize::Int8));
}

#[test]
fn bf16_self_speculation_equals_bf16_full_depth() {
    self_speculation_equals_full_depth(quantized(Quantize::Bf16));
}

#[test]
fn bf16_kv_self_speculation_equals_its_full_depth() {
    self_speculation_equals_full_depth(bf16_kv());
}

/// bf16 products over a bf16 cache (what bf16 mode always holds where
/// attention runs on AMX: there, in the tiles' layouts, truncated after
/// every rejected draft).
#[test]
fn bf16_products_over_a_bf16_kv_self_speculation_equals_its_full_depth() {
    self_speculation_equals_full_depth(LoadOptions {
        quantize: Quantize::Bf16,
        ..bf16_kv()
    });
}

/// Top-1 agreement with the unquantized model and the loss difference on
/// Python code the model never saw in training: this repository's tools,
/// through `layerskip eval --quantize`.
fn predictions_stay_close(holding: &[&str], min_agreement: f64, max_loss_diff: f64) {
    let text = [
        "tools/make_fixtures.py",
        "tools/train/train.py",
        "tools/make_random_model.py",
    ]
    .iter()
    .map(|p| std::fs::read_to_string(root().join(p)).unwrap())
    .collect::<String>();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("code.py");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_layerskip"))
        .args(["eval", "--seq", "128", "--windows", "24", "--json"])
        .args(holding)
        .arg("--file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (q, base) = (&v["eval"], &v["unquantized"]);
    let positions = base["positions"].as_u64().unwrap();
    assert!(positions >= 1000, "{positions} positions");
    let agree = v["top1_agreement_with_unquantized"].as_f64().unwrap();
    let loss = |e: &serde_json::Value| e["loss"].as_f64().unwrap();
    println!(
        "{holding:?} vs plain on {positions} positions: top-1 agreement {:.2}%, perplexity {} vs {}",
        100.0 * agree,
        q["perplexity"],
        base["perplexity"]
    );
    assert!(agree >= min_agreement, "top-1 agreement {agree}");
    assert!(
        (loss(q) - loss(base)).abs() < max_loss_diff,
        "loss {} vs {}",
        loss(q),
        loss(base)
    );
}

#[test]
fn int8_predictions_stay_close_to_bf16_on_code() {
    predictions_stay_close(&["--quantize", "int8"], 0.97, 0.02);
}

#[test]
fn bf16_products_predictions_stay_close_to_f32_products_on_code() {
    predictions_stay_close(&["--quantize", "bf16"], 0.98, 0.01);
}

#[test]
fn bf16_kv_predictions_stay_close_to_f32_kv_on_code_at_half_the_memory() {
    predictions_stay_close(&["--kv-dtype", "bf16"], 0.98, 0.01);
    let (plain, half) = (bundled(LoadOptions::default()), bundled(bf16_kv()));
    assert_eq!(
        2 * half.engine.kv_bytes_per_position(),
        plain.engine.kv_bytes_per_position()
    );
    // The same K/V, rounded: the cache reads back within bf16's precision.
    let prompt = plain.encode_prompt("import os\nimport sys\n").unwrap();
    let (mut a, mut b) = (
        Session::new(plain.clone(), 0).unwrap(),
        Session::new(half.clone(), 0).unwrap(),
    );
    a.prefill(&prompt).unwrap();
    b.prefill(&prompt).unwrap();
    for l in 0..plain.num_layers() {
        let (k32, v32) = plain.engine.read_kv(a.kv(), l, prompt.len());
        let (k16, v16) = half.engine.read_kv(b.kv(), l, prompt.len());
        if l == 0 {
            // Layer 0 sees the same inputs: exactly the rounded f32 cache.
            let round = |x: &[f32]| -> Vec<f32> {
                x.iter()
                    .map(|&v| half::bf16::from_f32(v).to_f32())
                    .collect()
            };
            assert_eq!(k16, round(&k32));
            assert_eq!(v16, round(&v32));
        }
        for (x, y) in k32.iter().chain(&v32).zip(k16.iter().chain(&v16)) {
            assert!(
                (x - y).abs() <= 0.02 * x.abs().max(1.0),
                "layer {l}: {x} vs {y}"
            );
        }
    }
}

#[test]
fn a_bf16_kv_cache_on_the_gpu_is_a_clear_error() {
    let options = LoadOptions {
        device: Device::Cuda(0),
        ..bf16_kv()
    };
    let Err(err) = Model::load_with(root().join("assets/layerskip-pycode-8l"), &options) else {
        panic!("loaded a bf16 K/V cache onto the CUDA engine");
    };
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("--kv-dtype"), "{err}");
}
