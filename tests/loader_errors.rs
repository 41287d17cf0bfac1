//! Every loader failure is a clear error that names the file and the problem.
//! Broken checkpoints are generated here from a good fixture.

mod common;
use common::*;
use layerskip::{ErrorKind, Model};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// A writable copy of a fixture.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

fn load_err(dir: &Path) -> layerskip::Error {
    match Model::load(dir) {
        Ok(_) => panic!("{} loaded but should not have", dir.display()),
        Err(e) => e,
    }
}

fn assert_err(dir: &Path, kind: ErrorKind, needles: &[&str]) {
    let e = load_err(dir);
    let msg = e.to_string();
    assert_eq!(e.kind(), kind, "{msg}");
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} should mention {n:?}");
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(p, v.to_string()).unwrap();
}

/// Rewrite model.safetensors through `f`, which edits (name -> (dtype, shape, bytes)).
fn edit_tensors(dir: &Path, f: impl FnOnce(&mut BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut map: BTreeMap<_, _> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, (t.dtype(), t.shape().to_vec(), t.data().to_vec())))
        .collect();
    f(&mut map);
    let views: Vec<(String, TensorView)> = map
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn missing_directory_and_files() {
    let e = load_err(Path::new("/nonexistent/model"));
    assert!(e.to_string().contains("/nonexistent/model"), "{e}");

    let d = copy_fixture("mha-f32");
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    assert_err(d.path(), ErrorKind::Io, &["config.json"]);

    let d = copy_fixture("mha-f32");
    std::fs::remove_file(d.path().join("tokenizer.json")).unwrap();
    assert_err(
        d.path(),
        ErrorKind::Tokenizer,
        &["tokenizer.json", "not found"],
    );

    let d = copy_fixture("mha-f32");
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    assert_err(d.path(), ErrorKind::Weights, &["model.safetensors"]);
}

type ConfigEdit = Box<dyn Fn(&mut serde_json::Map<String, Value>)>;

#[test]
fn bad_configs() {
    let cases: Vec<(&str, ConfigEdit, &[&str])> = vec![
        (
            "missing field",
            Box::new(|c| {
                c.remove("hidden_size");
            }),
            &["hidden_size"],
        ),
        (
            "attention bias",
            Box::new(|c| {
                c.insert("attention_bias".into(), true.into());
            }),
            &["attention_bias"],
        ),
        (
            "mlp bias",
            Box::new(|c| {
                c.insert("mlp_bias".into(), true.into());
            }),
            &["mlp_bias"],
        ),
        (
            "rope type",
            Box::new(|c| {
                c.insert(
                    "rope_scaling".into(),
                    serde_json::json!({"rope_type": "yarn", "factor": 2.0}),
                );
            }),
            &["yarn"],
        ),
        (
            "heads",
            Box::new(|c| {
                c.insert("num_attention_heads".into(), 5.into());
                c.insert("num_key_value_heads".into(), 5.into());
            }),
            &["not divisible"],
        ),
        (
            "kv heads",
            Box::new(|c| {
                c.insert("num_key_value_heads".into(), 3.into());
            }),
            &["num_key_value_heads"],
        ),
        (
            "vocab 0",
            Box::new(|c| {
                c.insert("vocab_size".into(), 0.into());
            }),
            &["vocab_size", "out of range"],
        ),
        (
            "layers 0",
            Box::new(|c| {
                c.insert("num_hidden_layers".into(), 0.into());
            }),
            &["num_hidden_layers"],
        ),
        (
            "huge context",
            Box::new(|c| {
                c.insert(
                    "max_position_embeddings".into(),
                    1_000_000_000_000u64.into(),
                );
            }),
            &["max_position_embeddings"],
        ),
        (
            "not llama",
            Box::new(|c| {
                c.insert("model_type".into(), "gpt2".into());
                c.insert(
                    "architectures".into(),
                    serde_json::json!(["GPT2LMHeadModel"]),
                );
            }),
            &["not a Llama"],
        ),
        (
            "eos out of vocab",
            Box::new(|c| {
                c.insert("eos_token_id".into(), 100000.into());
            }),
            &["100000"],
        ),
    ];
    for (what, f, needles) in cases {
        let d = copy_fixture("mha-f32");
        edit_config(d.path(), f);
        let e = load_err(d.path());
        for n in needles {
            assert!(e.to_string().contains(n), "{what}: {e} should mention {n}");
        }
        assert!(
            e.to_string().contains("config.json"),
            "{what}: {e} should name the file"
        );
    }
    let d = copy_fixture("mha-f32");
    std::fs::write(d.path().join("config.json"), "{ not json").unwrap();
    assert_err(
        d.path(),
        ErrorKind::Config,
        &["config.json", "invalid JSON"],
    );
}

#[test]
fn bad_tensors() {
    let d = copy_fixture("mha-f32");
    edit_tensors(d.path(), |m| {
        m.remove("model.layers.2.mlp.up_proj.weight");
    });
    assert_err(
        d.path(),
        ErrorKind::Weights,
        &["model.layers.2.mlp.up_proj.weight", "missing"],
    );

    let d = copy_fixture("mha-f32");
    edit_tensors(d.path(), |m| {
        let t = m.get_mut("model.layers.1.self_attn.k_proj.weight").unwrap();
        t.1 = vec![t.1[1], t.1[0] / 2];
        t.2.truncate(t.2.len() / 2);
    });
    assert_err(
        d.path(),
        ErrorKind::Weights,
        &[
            "model.layers.1.self_attn.k_proj.weight",
            "shape",
            "model.safetensors",
        ],
    );

    let d = copy_fixture("mha-f32");
    edit_tensors(d.path(), |m| {
        let t = m.get_mut("model.norm.weight").unwrap();
        t.0 = Dtype::I32;
    });
    assert_err(
        d.path(),
        ErrorKind::Weights,
        &["model.norm.weight", "dtype", "I32"],
    );

    let d = copy_fixture("mha-f32");
    edit_tensors(d.path(), |m| {
        let t = m.get_mut("model.layers.0.mlp.down_proj.weight").unwrap();
        t.2[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert_err(
        d.path(),
        ErrorKind::Weights,
        &["model.layers.0.mlp.down_proj.weight", "NaN"],
    );
}

#[test]
fn corrupt_files() {
    // Truncated: the header promises more data than the file has.
    let d = copy_fixture("mha-f32");
    let p = d.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 1000]).unwrap();
    assert_err(
        d.path(),
        ErrorKind::Weights,
        &["model.safetensors", "corrupt"],
    );

    // Header length past the end of the file.
    let mut b = (u64::MAX / 2).to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    std::fs::write(&p, &b).unwrap();
    assert_err(
        d.path(),
        ErrorKind::Weights,
        &["model.safetensors", "corrupt"],
    );

    // Not JSON in the header.
    let mut b = 8u64.to_le_bytes().to_vec();
    b.extend_from_slice(&[0xff, 0xfe, b'{', 0, 1, 2, 3, 4]);
    std::fs::write(&p, &b).unwrap();
    assert_err(
        d.path(),
        ErrorKind::Weights,
        &["model.safetensors", "corrupt"],
    );

    // Shorter than a header length.
    std::fs::write(&p, [1, 2, 3]).unwrap();
    assert_err(d.path(), ErrorKind::Weights, &["model.safetensors"]);
}

#[test]
fn broken_shards_and_index() {
    let name = "gqa-bf16-tied-llama3-sharded";
    let d = copy_fixture(name);
    std::fs::remove_file(d.path().join("model-00002-of-00002.safetensors")).unwrap();
    assert_err(
        d.path(),
        ErrorKind::Weights,
        &["model-00002-of-00002.safetensors", "missing"],
    );

    let d = copy_fixture(name);
    std::fs::write(d.path().join("model.safetensors.index.json"), "[1,2").unwrap();
    assert_err(
        d.path(),
        ErrorKind::Weights,
        &["model.safetensors.index.json", "invalid JSON"],
    );

    // The index names a tensor the shard does not hold.
    let d = copy_fixture(name);
    let p = d.path().join("model.safetensors.index.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["weight_map"]["model.layers.9.extra.weight"] = "model-00001-of-00002.safetensors".into();
    std::fs::write(&p, v.to_string()).unwrap();
    assert_err(
        d.path(),
        ErrorKind::Weights,
        &["model.layers.9.extra.weight"],
    );

    let d = copy_fixture(name);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["weight_map"]["model.norm.weight"] = "../../etc/passwd".into();
    std::fs::write(d.path().join("model.safetensors.index.json"), v.to_string()).unwrap();
    assert_err(d.path(), ErrorKind::Weights, &["shard name"]);
}

#[test]
fn bad_tokenizers() {
    let d = copy_fixture("mha-f32");
    std::fs::write(d.path().join("tokenizer.json"), "{\"model\": 3}").unwrap();
    assert_err(
        d.path(),
        ErrorKind::Tokenizer,
        &["tokenizer.json", "invalid tokenizer"],
    );

    // A tokenizer that produces ids the model has no embedding for.
    let d = copy_fixture("mha-f32");
    edit_config(d.path(), |c| {
        c.insert("vocab_size".into(), 100.into());
    });
    edit_tensors(d.path(), |m| {
        for n in ["model.embed_tokens.weight", "lm_head.weight"] {
            let t = m.get_mut(n).unwrap();
            t.1[0] = 100;
            t.2.truncate(100 * t.1[1] * 4);
        }
    });
    assert_err(
        d.path(),
        ErrorKind::Tokenizer,
        &["tokenizer.json", "vocab_size is 100"],
    );
}

#[test]
fn a_good_copy_still_loads() {
    let d = copy_fixture("mqa-f16-linear");
    Model::load(d.path()).unwrap();
}
