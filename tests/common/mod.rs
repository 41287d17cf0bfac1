//! Shared helpers for integration tests: fixture paths and reference data.
#![allow(dead_code)]

use layerskip::{Model, Session};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

pub const FIXTURES: [&str; 3] = ["mha-f32", "gqa-bf16-tied-llama3-sharded", "mqa-f16-linear"];

pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn load(name: &str) -> Arc<Model> {
    Model::load(fixture_dir(name)).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

pub fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture_dir(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The reference prompts of a fixture.
pub fn prompts(name: &str) -> Vec<Vec<u32>> {
    reference(name)["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect()
}

/// Reference logits tensor `key` as (rows, data).
pub fn ref_logits(name: &str, key: &str) -> (usize, Vec<f32>) {
    let bytes = std::fs::read(fixture_dir(name).join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .tensor(key)
        .unwrap_or_else(|_| panic!("{name}: no reference {key}"));
    let data: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (t.shape()[0], data)
}

/// Greedy decoding one token at a time at exit `exit` (full depth when exit == L).
pub fn greedy_steps(session: &mut Session, prompt: &[u32], exit: usize, n: usize) -> Vec<u32> {
    let mut logits = session
        .forward(prompt, exit, layerskip::Logits::Last)
        .map(|_| session.last_logits().to_vec())
        .unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let t = layerskip::sampling::argmax(&logits);
        out.push(t);
        logits = session.step(t, exit).unwrap().to_vec();
    }
    out
}
