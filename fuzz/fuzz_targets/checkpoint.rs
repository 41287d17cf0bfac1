//! The whole loader: the first byte picks which file of a good checkpoint the
//! rest of the input replaces (weights, config, shard index, tokenizer); the
//! load must succeed or fail with an error, never panic, abort or allocate
//! absurd amounts.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

/// Per-process copies of a single-file and a sharded fixture.
fn dirs() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("layerskip-fuzz-{}", std::process::id()));
        let copy = |name: &str| {
            let dst = root.join(name);
            std::fs::create_dir_all(&dst).unwrap();
            for e in std::fs::read_dir(Path::new(FIXTURES).join(name)).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
            }
            dst
        };
        (copy("mha-f32"), copy("gqa-bf16-tied-llama3-sharded"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let (single, sharded) = dirs();
    let (dir, file) = match which % 4 {
        0 => (single, "model.safetensors"),
        1 => (single, "config.json"),
        2 => (sharded, "model.safetensors.index.json"),
        _ => (single, "tokenizer.json"),
    };
    let path = dir.join(file);
    let original = std::fs::read(&path).unwrap();
    std::fs::write(&path, rest).unwrap();
    let _ = layerskip::Model::load(dir);
    std::fs::write(&path, original).unwrap();
});
