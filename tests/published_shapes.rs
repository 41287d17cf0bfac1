//! The published LayerSkip checkpoints' configurations (Llama2 7B/13B/70B,
//! CodeLlama 7B/34B, Llama3 8B, Llama3.2 1B) at reduced depth and width:
//! every field that shapes the computation as published (vocabulary, head_dim,
//! GQA ratio, RoPE theta and scaling, tied or untied embeddings, max
//! positions), logits at every exit and the greedy continuation against
//! transformers (`tests/fixtures/published-shapes.json`, written by
//! `tools/make_shape_fixtures.py`), and lossless self-speculation.

mod common;
use common::fixture_dir;
use half::bf16;
use layerskip::{generate, GenerateOptions, Logits, Mode, Model, Session};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;
use std::path::Path;

fn splitmix64(x: u64) -> u64 {
    let x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let z = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The tool's formula, bit for bit: float32 arithmetic, then bf16.
fn values(seed: u64, index: u64, n: usize, scale: f32, offset: f32) -> Vec<u8> {
    (0..n as u64)
        .flat_map(|i| {
            let r = splitmix64((seed << 48) | (index << 40) | i);
            let u = (r >> 40) as f32 / (1u64 << 24) as f32;
            bf16::from_f32((u - 0.5) * scale + offset).to_le_bytes()
        })
        .collect()
}

/// Write the checkpoint an entry describes into `dir`.
fn write_checkpoint(entry: &Value, dir: &Path) {
    std::fs::write(dir.join("config.json"), entry["config"].to_string()).unwrap();
    std::fs::copy(
        fixture_dir("mha-f32").join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let seed = entry["seed"].as_u64().unwrap();
    let specs = entry["tensors"].as_array().unwrap();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = specs
        .iter()
        .enumerate()
        .map(|(index, t)| {
            let shape: Vec<usize> = t["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let n = shape.iter().product();
            let bytes = values(
                seed,
                index as u64,
                n,
                t["scale"].as_f64().unwrap() as f32,
                t["offset"].as_f64().unwrap() as f32,
            );
            (t["name"].as_str().unwrap().to_string(), shape, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(name, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(Dtype::BF16, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn logsumexp(row: &[f32]) -> f64 {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
}

#[test]
fn published_checkpoint_shapes_match_transformers() {
    let text = std::fs::read_to_string(fixture_dir("published-shapes.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let layers = fixture["layers"].as_u64().unwrap() as usize;
    let checkpoints = fixture["checkpoints"].as_array().unwrap();
    assert_eq!(checkpoints.len(), 7);
    for entry in checkpoints {
        let name = entry["name"].as_str().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        write_checkpoint(entry, tmp.path());
        let model = Model::load(tmp.path()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let cfg = &entry["config"];
        assert_eq!(
            model.config.vocab_size as u64,
            cfg["vocab_size"].as_u64().unwrap()
        );
        assert_eq!(
            model.config.head_dim as u64,
            cfg["head_dim"].as_u64().unwrap()
        );
        let prompt = ids(&entry["prompt"]);
        let vocab = model.config.vocab_size;
        let mut worst = 0f64;
        for exit in 1..=layers {
            let mut s = Session::new(model.clone(), 0).unwrap();
            s.forward(&prompt, exit, Logits::All).unwrap();
            let logits = s.logits();
            for r in entry["exits"][exit.to_string()].as_array().unwrap() {
                let pos = r["pos"].as_u64().unwrap() as usize;
                let row = &logits[pos * vocab..(pos + 1) * vocab];
                let want_ids = ids(&r["ids"]);
                let want: Vec<f64> = r["logits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                for (&id, &w) in want_ids.iter().zip(&want) {
                    let err = (row[id as usize] as f64 - w).abs() / w.abs().max(1.0);
                    worst = worst.max(err);
                    assert!(
                        err < 1e-3,
                        "{name} exit {exit} pos {pos} token {id}: {} vs {w}",
                        row[id as usize]
                    );
                }
                if want[0] - want[1] > 1e-3 {
                    assert_eq!(
                        layerskip::sampling::argmax(row),
                        want_ids[0],
                        "{name} exit {exit} pos {pos}"
                    );
                }
                let lse = r["logsumexp"].as_f64().unwrap();
                assert!(
                    (logsumexp(row) - lse).abs() < 1e-3 * lse.abs().max(1.0),
                    "{name} exit {exit} pos {pos}: logsumexp {} vs {lse}",
                    logsumexp(row)
                );
            }
        }
        let greedy = ids(&entry["greedy"]);
        let opts = |mode| GenerateOptions {
            max_new_tokens: greedy.len(),
            mode,
            ignore_eos: true,
            ..Default::default()
        };
        for mode in [
            Mode::Full,
            Mode::SelfSpeculative {
                exit: 1,
                draft_len: 3,
            },
        ] {
            let mut s = Session::new(model.clone(), 0).unwrap();
            let out = generate(&mut s, &prompt, &opts(mode), |_, _| true).unwrap();
            assert_eq!(out.tokens, greedy, "{name} {mode:?}");
        }
        println!("{name}: vocab {vocab}, worst relative logit error {worst:.2e}");
    }
}
