//! The GPU checks, shared by `tests/cuda.rs` and the test binaries that run
//! them again with other kernel settings (each in its own process, because
//! the settings are read from the environment when a model loads).

use super::*;
use layerskip::engine::cuda::driver_present;
use layerskip::engine::Engine;
use layerskip::{generate, Device, GenerateOptions, LoadOptions, Logits, Mode};

/// Skips a GPU test without a GPU (a failure with `LAYERSKIP_REQUIRE_GPU=1`).
pub fn skip_gpu(test: &str, why: &str) {
    skip(Some(REQUIRE_GPU), test, why);
}

/// The model in `dir` on GPU 0, or None (with the reason printed) without one.
pub fn gpu_model_at(dir: &std::path::Path, test: &str) -> Option<Arc<Model>> {
    if !driver_present() {
        skip_gpu(test, "no CUDA driver on this machine");
        return None;
    }
    let options = LoadOptions {
        device: Device::Cuda(0),
        ..Default::default()
    };
    match Model::load_with(dir, &options) {
        Ok(m) => Some(m),
        Err(e) if e.to_string().contains("CUDA device(s)") => {
            skip_gpu(test, &e.to_string());
            None
        }
        Err(e) => panic!("loading {} on cuda:0: {e}", dir.display()),
    }
}

/// The fixture `name` on GPU 0, or None (with the reason printed).
pub fn gpu_model(name: &str, test: &str) -> Option<Arc<Model>> {
    gpu_model_at(&fixture_dir(name), test)
}

/// Relative error of `gpu`'s logits against `cpu`'s for every position of
/// `prompt` at `exit` (fresh sessions).
pub fn gpu_vs_cpu_error(gpu: &Arc<Model>, cpu: &Arc<Model>, prompt: &[u32], exit: usize) -> f32 {
    let mut a = Session::new(gpu.clone(), 0).unwrap();
    let mut b = Session::new(cpu.clone(), 0).unwrap();
    a.forward(prompt, exit, Logits::All).unwrap();
    b.forward(prompt, exit, Logits::All).unwrap();
    assert_eq!(a.logits().len(), b.logits().len());
    relative_error(a.logits(), b.logits())
}

/// Logits within 1e-4 (f32 weights) or 1e-3 (f16/bf16) of the CPU engine's
/// for every prompt at every exit, then transformers' greedy continuations.
pub fn check_parity(name: &str, gpu: &Arc<Model>) {
    let cpu = load(name);
    let tol = if cpu.dtype == layerskip::weights::DType::F32 {
        1e-4
    } else {
        1e-3
    };
    for prompt in prompts(name).iter() {
        for exit in 1..=cpu.num_layers() {
            let err = gpu_vs_cpu_error(gpu, &cpu, prompt, exit);
            println!(
                "{name} exit {exit}, {} positions: GPU vs CPU relative error {err:e}",
                prompt.len()
            );
            assert!(
                err < tol,
                "{name} exit {exit}: relative error {err:e} >= {tol:e}"
            );
        }
    }
    assert_greedy_cases(gpu, name);
}

/// The first `rows` positions of `prompt` in one pass give every row the
/// same bits as feeding them one at a time.
pub fn check_batch_invariance(name: &str, model: &Arc<Model>, prompt: &[u32]) {
    let vocab = model.config.vocab_size;
    let l = model.num_layers();
    let mut batch = Session::new(model.clone(), 0).unwrap();
    batch.forward(prompt, l, Logits::All).unwrap();
    let mut single = Session::new(model.clone(), 0).unwrap();
    for (i, &t) in prompt.iter().enumerate() {
        single.forward(&[t], l, Logits::Last).unwrap();
        let a = &batch.logits()[i * vocab..(i + 1) * vocab];
        assert!(
            same_bits(a, single.last_logits()),
            "{name}: row {i} differs between a batch of {} and a batch of 1 on the GPU",
            prompt.len()
        );
    }
}

/// Greedy self-speculation gives full depth's tokens and leaves full
/// decoding's K/V bits in the cache.
pub fn check_lossless(name: &str, model: &Arc<Model>, prompt: &[u32]) {
    let opts = |mode| GenerateOptions {
        max_new_tokens: 40,
        mode,
        ignore_eos: true,
        ..Default::default()
    };
    let mut s = Session::new(model.clone(), 0).unwrap();
    let full = generate(&mut s, prompt, &opts(Mode::Full), |_, _| true).unwrap();
    for (exit, draft_len) in [(1, 2), (1, 4), (model.num_layers() - 1, 3)] {
        let mut s = Session::new(model.clone(), 0).unwrap();
        let mode = Mode::SelfSpeculative { exit, draft_len };
        let spec = generate(&mut s, prompt, &opts(mode), |_, _| true).unwrap();
        assert_eq!(
            spec.tokens, full.tokens,
            "{name}: E={exit} d={draft_len} differs from full depth on the GPU"
        );
        // Nothing computed twice: the cache equals full decoding's.
        let n = (*s.layer_lens().iter().min().unwrap()).min(prompt.len() + 30);
        let mut f = Session::new(model.clone(), 0).unwrap();
        f.prefill(prompt).unwrap();
        for &t in &full.tokens[..30] {
            f.step(t, model.num_layers()).unwrap();
        }
        for l in 0..model.num_layers() {
            let (a, _) = model.engine.read_kv(s.kv(), l, n);
            let (b, _) = model.engine.read_kv(f.kv(), l, n);
            assert!(
                same_bits(&a, &b),
                "{name}: layer {l} K differs between speculative and full decoding on the GPU"
            );
        }
    }
}
