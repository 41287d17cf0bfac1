//! Hostile checkpoints, generated here from good fixtures: each must fail with
//! a clear error (the right kind, naming the file and the problem) through
//! the Rust API, the C API and the CLI, without a panic, an abort or an
//! allocation of absurd size. `cargo test --release --test hostile_files --
//! --nocapture` prints the table.

mod common;
use common::*;
use layerskip::ffi::error::{lsk_error_free, lsk_error_message};
use layerskip::ffi::{lsk_model_free, lsk_model_load, lsk_result};
use layerskip::{ErrorKind, Model};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::path::Path;

/// A writable copy of a fixture, in `model/` of a temporary directory.
fn copy_fixture(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    for e in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    (tmp, dir)
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(p, v.to_string()).unwrap();
}

type TensorMap = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

/// Rewrite model.safetensors through `f`, which edits (name -> (dtype, shape, bytes)).
fn edit_tensors(dir: &Path, f: impl FnOnce(&mut TensorMap)) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut map: TensorMap = st
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

/// Replace model.safetensors with a file whose header is `header` (raw JSON
/// bytes) followed by `data_len` bytes.
fn raw_safetensors(dir: &Path, header: &[u8], data_len: usize) {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header);
    b.resize(b.len() + data_len, 0);
    std::fs::write(dir.join("model.safetensors"), b).unwrap();
}

fn header_with(tensors: Value) -> Vec<u8> {
    tensors.to_string().into_bytes()
}

struct Case {
    name: &'static str,
    fixture: &'static str,
    build: Box<dyn Fn(&Path)>,
    kind: ErrorKind,
    needles: &'static [&'static str],
}

fn case(
    name: &'static str,
    kind: ErrorKind,
    needles: &'static [&'static str],
    build: impl Fn(&Path) + 'static,
) -> Case {
    Case {
        name,
        fixture: "mha-f32",
        build: Box::new(build),
        kind,
        needles,
    }
}

fn sharded(mut c: Case) -> Case {
    c.fixture = "gqa-bf16-tied-llama3-sharded";
    c
}

fn config_case(
    name: &'static str,
    needles: &'static [&'static str],
    f: impl Fn(&mut serde_json::Map<String, Value>) + 'static,
) -> Case {
    case(name, ErrorKind::Config, needles, move |d| {
        edit_config(d, &f)
    })
}

fn cases() -> Vec<Case> {
    use ErrorKind::*;
    let index = "model.safetensors.index.json";
    vec![
        // Missing pieces.
        case(
            "missing directory",
            Io,
            &["model directory not found"],
            |d| std::fs::remove_dir_all(d).unwrap(),
        ),
        case("missing config.json", Io, &["config.json"], |d| {
            std::fs::remove_file(d.join("config.json")).unwrap()
        }),
        case(
            "missing tokenizer.json",
            Tokenizer,
            &["tokenizer.json", "not found"],
            |d| std::fs::remove_file(d.join("tokenizer.json")).unwrap(),
        ),
        case("missing weights", Weights, &["no model.safetensors"], |d| {
            std::fs::remove_file(d.join("model.safetensors")).unwrap()
        }),
        // Safetensors headers that lie.
        case(
            "truncated data",
            Weights,
            &["model.safetensors", "corrupt"],
            |d| {
                let p = d.join("model.safetensors");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 1000]).unwrap();
            },
        ),
        case(
            "header length past EOF",
            Weights,
            &["model.safetensors", "corrupt"],
            |d| {
                let mut b = (u64::MAX / 2).to_le_bytes().to_vec();
                b.extend_from_slice(b"{}");
                std::fs::write(d.join("model.safetensors"), b).unwrap();
            },
        ),
        case(
            "file shorter than a header length",
            Weights,
            &["model.safetensors"],
            |d| std::fs::write(d.join("model.safetensors"), [1, 2, 3]).unwrap(),
        ),
        case(
            "non-UTF-8 header",
            Weights,
            &["model.safetensors", "corrupt"],
            |d| raw_safetensors(d, &[0xff, 0xfe, b'{', 0, 1, 2, 3, 4], 0),
        ),
        case(
            "offsets past the data",
            Weights,
            &["model.safetensors", "corrupt"],
            |d| {
                let h = header_with(
                    json!({"model.norm.weight": {"dtype": "F32", "shape": [64], "data_offsets": [0, 1_000_000]}}),
                );
                raw_safetensors(d, &h, 256);
            },
        ),
        case(
            "overlapping offsets",
            Weights,
            &["model.safetensors", "corrupt"],
            |d| {
                let h = header_with(json!({
                    "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                    "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}
                }));
                raw_safetensors(d, &h, 24);
            },
        ),
        case(
            "negative offset",
            Weights,
            &["model.safetensors", "corrupt"],
            |d| {
                let h = header_with(
                    json!({"a": {"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}}),
                );
                raw_safetensors(d, &h, 16);
            },
        ),
        case(
            "huge offsets and shape",
            Weights,
            &["model.safetensors", "corrupt"],
            |d| {
                let h = header_with(
                    json!({"a": {"dtype": "F32", "shape": [u64::MAX / 2, 4], "data_offsets": [0, u64::MAX]}}),
                );
                raw_safetensors(d, &h, 16);
            },
        ),
        case(
            "shape disagrees with byte length",
            Weights,
            &["model.safetensors", "corrupt"],
            |d| {
                let h = header_with(
                    json!({"a": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 8]}}),
                );
                raw_safetensors(d, &h, 8);
            },
        ),
        // Tensors that do not fit the config.
        case(
            "missing tensor",
            Weights,
            &["model.layers.2.mlp.up_proj.weight", "missing"],
            |d| {
                edit_tensors(d, |m| {
                    m.remove("model.layers.2.mlp.up_proj.weight");
                })
            },
        ),
        case(
            "wrong shape",
            Weights,
            &[
                "model.layers.1.self_attn.k_proj.weight",
                "shape",
                "model.safetensors",
            ],
            |d| {
                edit_tensors(d, |m| {
                    let t = m.get_mut("model.layers.1.self_attn.k_proj.weight").unwrap();
                    t.1 = vec![t.1[1], t.1[0] / 2];
                    t.2.truncate(t.2.len() / 2);
                })
            },
        ),
        case(
            "unsupported dtype",
            Weights,
            &["model.norm.weight", "dtype", "I32"],
            |d| {
                edit_tensors(d, |m| {
                    m.get_mut("model.norm.weight").unwrap().0 = Dtype::I32
                })
            },
        ),
        case(
            "NaN weight",
            Weights,
            &["model.layers.0.mlp.down_proj.weight", "NaN"],
            |d| {
                edit_tensors(d, |m| {
                    let t = m.get_mut("model.layers.0.mlp.down_proj.weight").unwrap();
                    t.2[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
                })
            },
        ),
        case(
            "infinite weight",
            Weights,
            &["model.embed_tokens.weight", "infinite"],
            |d| {
                edit_tensors(d, |m| {
                    let t = m.get_mut("model.embed_tokens.weight").unwrap();
                    t.2[0..4].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
                })
            },
        ),
        // Shards and index.
        sharded(case(
            "missing shard",
            Weights,
            &["model-00002-of-00002.safetensors", "missing"],
            |d| std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap(),
        )),
        sharded(case(
            "index not JSON",
            Weights,
            &["model.safetensors.index.json", "invalid JSON"],
            move |d| std::fs::write(d.join(index), "[1,2").unwrap(),
        )),
        sharded(case(
            "index names an absent tensor",
            Weights,
            &["model.layers.9.extra.weight"],
            move |d| {
                let p = d.join(index);
                let mut v: Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                v["weight_map"]["model.layers.9.extra.weight"] =
                    "model-00001-of-00002.safetensors".into();
                std::fs::write(&p, v.to_string()).unwrap();
            },
        )),
        sharded(case(
            "shard path escapes the directory",
            Weights,
            &["shard name"],
            move |d| {
                let p = d.join(index);
                let mut v: Value =
                    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
                v["weight_map"]["model.norm.weight"] = "../../etc/passwd".into();
                std::fs::write(&p, v.to_string()).unwrap();
            },
        )),
        // Configs.
        case(
            "config not JSON",
            Config,
            &["config.json", "invalid JSON"],
            |d| std::fs::write(d.join("config.json"), "{ not json").unwrap(),
        ),
        config_case("missing field", &["hidden_size"], |c| {
            c.remove("hidden_size");
        }),
        config_case("hidden 0", &["hidden_size", "out of range"], |c| {
            c.insert("hidden_size".into(), 0.into());
        }),
        config_case("heads not dividing hidden", &["not divisible"], |c| {
            c.insert("num_attention_heads".into(), 5.into());
            c.insert("num_key_value_heads".into(), 5.into());
        }),
        config_case(
            "kv heads not dividing heads",
            &["num_key_value_heads"],
            |c| {
                c.insert("num_key_value_heads".into(), 3.into());
            },
        ),
        config_case("vocab 0", &["vocab_size", "out of range"], |c| {
            c.insert("vocab_size".into(), 0.into());
        }),
        config_case("layers 0", &["num_hidden_layers"], |c| {
            c.insert("num_hidden_layers".into(), 0.into());
        }),
        config_case(
            "absurd sizes",
            &["intermediate_size", "out of range"],
            |c| {
                c.insert("intermediate_size".into(), 1_000_000_000_000u64.into());
            },
        ),
        config_case("10^12 context", &["max_position_embeddings"], |c| {
            c.insert(
                "max_position_embeddings".into(),
                1_000_000_000_000u64.into(),
            );
        }),
        config_case("eos out of vocab", &["100000"], |c| {
            c.insert("eos_token_id".into(), 100000.into());
        }),
        case("not a Llama", Unsupported, &["not a Llama"], |d| {
            edit_config(d, |c| {
                c.insert("model_type".into(), "gpt2".into());
                c.insert("architectures".into(), json!(["GPT2LMHeadModel"]));
            })
        }),
        case("attention bias", Unsupported, &["attention_bias"], |d| {
            edit_config(d, |c| {
                c.insert("attention_bias".into(), true.into());
            })
        }),
        case("rope type", Unsupported, &["yarn"], |d| {
            edit_config(d, |c| {
                c.insert(
                    "rope_scaling".into(),
                    json!({"rope_type": "yarn", "factor": 2.0}),
                );
            })
        }),
        // Tokenizers.
        case(
            "tokenizer not a tokenizer",
            Tokenizer,
            &["tokenizer.json", "invalid tokenizer"],
            |d| std::fs::write(d.join("tokenizer.json"), "{\"model\": 3}").unwrap(),
        ),
        case(
            "tokenizer larger than the vocab",
            Tokenizer,
            &["tokenizer.json", "vocab_size is 100"],
            |d| {
                edit_config(d, |c| {
                    c.insert("vocab_size".into(), 100.into());
                });
                edit_tensors(d, |m| {
                    for n in ["model.embed_tokens.weight", "lm_head.weight"] {
                        let t = m.get_mut(n).unwrap();
                        t.1[0] = 100;
                        t.2.truncate(100 * t.1[1] * 4);
                    }
                });
            },
        ),
    ]
}

fn c_code(kind: ErrorKind) -> lsk_result {
    match kind {
        ErrorKind::Io => lsk_result::LSK_ERR_IO,
        ErrorKind::Config => lsk_result::LSK_ERR_CONFIG,
        ErrorKind::Weights => lsk_result::LSK_ERR_WEIGHTS,
        ErrorKind::Tokenizer => lsk_result::LSK_ERR_TOKENIZER,
        ErrorKind::Unsupported => lsk_result::LSK_ERR_UNSUPPORTED,
        other => panic!("no loader case expects {other:?}"),
    }
}

/// Load through the C API: the result code and the message.
fn load_via_c(dir: &Path) -> (lsk_result, String) {
    let path = CString::new(dir.to_str().unwrap()).unwrap();
    let mut model = std::ptr::null_mut();
    let mut err = std::ptr::null_mut();
    let code = lsk_model_load(path.as_ptr(), std::ptr::null(), &mut model, &mut err);
    // SAFETY: the message is a NUL-terminated string owned by `err`.
    let msg = unsafe { CStr::from_ptr(lsk_error_message(err)) }
        .to_string_lossy()
        .into_owned();
    lsk_error_free(err);
    lsk_model_free(model);
    (code, msg)
}

#[test]
fn every_hostile_checkpoint_is_a_clear_error_everywhere() {
    let cli = env!("CARGO_BIN_EXE_layerskip");
    println!("| case | Rust ErrorKind | C result | CLI exit | message |");
    println!("|---|---|---|---|---|");
    for c in cases() {
        let (_tmp, dir) = copy_fixture(c.fixture);
        (c.build)(&dir);

        let e = match Model::load(&dir) {
            Ok(_) => panic!("{}: loaded", c.name),
            Err(e) => e,
        };
        let msg = e.to_string();
        assert_eq!(e.kind(), c.kind, "{}: {msg}", c.name);
        for n in c.needles {
            assert!(msg.contains(n), "{}: {msg:?} should mention {n:?}", c.name);
        }

        let (code, c_msg) = load_via_c(&dir);
        assert_eq!(code, c_code(c.kind), "{}: {c_msg}", c.name);
        assert_eq!(c_msg, msg, "{}: the C message is the Rust message", c.name);

        let out = std::process::Command::new(cli)
            .args(["info", "--model"])
            .arg(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", c.name);
        assert!(
            stderr.starts_with("error: ") && stderr.contains(&msg),
            "{}: CLI said {stderr:?}",
            c.name
        );
        let shown = msg.replace(&*dir.to_string_lossy(), "DIR");
        println!(
            "| {} | {:?} | {:?} ({}) | 1 | {} |",
            c.name, c.kind, code, code as u32, shown
        );
    }
}

#[test]
fn a_good_copy_still_loads() {
    let (_tmp, dir) = copy_fixture("mqa-f16-linear");
    Model::load(&dir).unwrap();
}
