//! The CUDA engine. The kernel compile check needs only NVRTC (CI installs it
//! from PyPI and sets `LAYERSKIP_REQUIRE_NVRTC=1`, so there it cannot skip);
//! the rest needs a GPU and skips, saying why, on machines without one.

mod common;
use common::*;
use layerskip::engine::cuda::{compile, driver_present};
use layerskip::engine::Engine;
use layerskip::{
    generate, Device, ErrorKind, GenerateOptions, LoadOptions, Logits, Mode, Model, Session,
};
use std::sync::Arc;

fn skip(test: &str, why: &str) {
    println!("SKIPPED {test}: {why}");
}

#[test]
fn every_kernel_compiles_to_ptx_for_sm80_and_sm90() {
    let required = std::env::var("LAYERSKIP_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    let missing = if !compile::nvrtc_present() {
        Some("libnvrtc.so.12 is not on the library path")
    } else if compile::include_dir().is_none() {
        Some("no CUDA include directory with cuda_bf16.h (set LAYERSKIP_CUDA_INCLUDE)")
    } else {
        None
    };
    if let Some(why) = missing {
        assert!(!required, "LAYERSKIP_REQUIRE_NVRTC=1 but {why}");
        return skip("kernel compile check", why);
    }
    let names = compile::kernel_names();
    assert!(names.len() >= 10, "kernels found in the source: {names:?}");
    for arch in ["compute_80", "compute_90"] {
        let ptx = compile::compile_ptx(arch)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_src();
        for name in &names {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "{arch}: kernel {name} missing from the PTX"
            );
        }
        println!(
            "NVRTC compiled {} CUDA kernels for {arch} ({} bytes of PTX): {}",
            names.len(),
            ptx.len(),
            names.join(", ")
        );
    }
}

#[test]
fn selecting_cuda_without_a_driver_is_a_clear_error() {
    let options = LoadOptions {
        device: Device::Cuda(0),
        ..Default::default()
    };
    if driver_present() {
        return skip(
            "no-driver error",
            "this machine has a CUDA driver (the GPU tests below run instead)",
        );
    }
    let e = Model::load_with(fixture_dir("mha-f32"), &options)
        .err()
        .expect("loading on cuda without a driver must fail");
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("no CUDA driver"), "{e}");
}

#[test]
fn device_names_parse() {
    assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
    assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
    assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
    for bad in ["gpu", "cuda:", "cuda:x", "CUDA"] {
        let e = bad.parse::<Device>().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
    }
    assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
}

/// The fixture on GPU 0, or None (with the reason printed) without one.
fn gpu_model(name: &str, test: &str) -> Option<Arc<Model>> {
    if !driver_present() {
        skip(test, "no CUDA driver on this machine");
        return None;
    }
    let options = LoadOptions {
        device: Device::Cuda(0),
        ..Default::default()
    };
    match Model::load_with(fixture_dir(name), &options) {
        Ok(m) => Some(m),
        Err(e) if e.to_string().contains("CUDA device(s)") => {
            skip(test, &e.to_string());
            None
        }
        Err(e) => panic!("loading {name} on cuda:0: {e}"),
    }
}

#[test]
fn gpu_logits_match_the_cpu_engine_at_every_exit() {
    for name in FIXTURES {
        let Some(gpu) = gpu_model(name, "GPU parity") else {
            return;
        };
        let cpu = load(name);
        let tol = if cpu.dtype == layerskip::weights::DType::F32 {
            1e-4
        } else {
            1e-3
        };
        for prompt in prompts(name).iter().take(2) {
            for exit in 1..=cpu.num_layers() {
                let mut a = Session::new(gpu.clone(), 0).unwrap();
                let mut b = Session::new(cpu.clone(), 0).unwrap();
                a.forward(prompt, exit, Logits::All).unwrap();
                b.forward(prompt, exit, Logits::All).unwrap();
                assert_eq!(a.logits().len(), b.logits().len());
                let err = relative_error(a.logits(), b.logits());
                println!("{name} exit {exit}: GPU vs CPU relative error {err:e}");
                assert!(
                    err < tol,
                    "{name} exit {exit}: relative error {err:e} >= {tol:e}"
                );
            }
        }
        // And against transformers' own greedy continuations.
        assert_greedy_cases(&gpu, name);
    }
}

#[test]
fn gpu_rows_are_bit_identical_alone_or_in_a_batch_of_nine() {
    for name in FIXTURES {
        let Some(model) = gpu_model(name, "GPU batch invariance") else {
            return;
        };
        let prompt: Vec<u32> = prompts(name)[2][..9].to_vec();
        let vocab = model.config.vocab_size;
        let mut batch = Session::new(model.clone(), 0).unwrap();
        batch
            .forward(&prompt, model.num_layers(), Logits::All)
            .unwrap();
        let mut single = Session::new(model.clone(), 0).unwrap();
        for (i, &t) in prompt.iter().enumerate() {
            single
                .forward(&[t], model.num_layers(), Logits::Last)
                .unwrap();
            let a = &batch.logits()[i * vocab..(i + 1) * vocab];
            assert!(
                a.iter()
                    .zip(single.last_logits())
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: row {i} differs between a batch of 9 and a batch of 1 on the GPU"
            );
        }
    }
}

#[test]
fn gpu_greedy_self_speculation_equals_full_depth() {
    for name in FIXTURES {
        let Some(model) = gpu_model(name, "GPU lossless speculation") else {
            return;
        };
        let prompt = &prompts(name)[0];
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
                    a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{name}: layer {l} K differs between speculative and full decoding on the GPU"
                );
            }
        }
    }
}

#[test]
fn gpu_greedy_picks_on_the_device_equal_picks_of_the_copied_logits() {
    for name in FIXTURES {
        let Some(model) = gpu_model(name, "GPU greedy picks") else {
            return;
        };
        let e = &model.engine;
        let prompt = &prompts(name)[1];
        let mut kv = e.new_kv(prompt.len());
        let mut x = e.embed(prompt);
        for l in 0..model.num_layers() {
            e.run_layer(l, &mut kv, 0, &mut x);
        }
        let mut logits = Vec::new();
        e.head(&x, 1, &mut logits);
        let mut out = layerskip::engine::HeadOutput::new(model.config.vocab_size);
        e.head_greedy(&x, 1, &mut out);
        assert!(out.logits().is_empty(), "{name}: only picks cross");
        for (i, row) in logits.chunks_exact(model.config.vocab_size).enumerate() {
            let want = layerskip::sampling::Pick::of(row);
            assert_eq!(out.token(i), want.token, "{name} row {i}");
            let err = (out.top_prob(i) - want.top_prob).abs() / want.top_prob;
            assert!(
                err < 1e-4,
                "{name} row {i}: {} vs {}",
                out.top_prob(i),
                want.top_prob
            );
        }
    }
}
