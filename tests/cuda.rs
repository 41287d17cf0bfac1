//! The CUDA engine. The kernel compile check needs only NVRTC
//! (`tools/test.sh` installs it from PyPI and sets `LAYERSKIP_REQUIRE_NVRTC=1`,
//! so there it cannot skip); the rest needs a GPU and skips, saying why, on
//! machines without one (a failure with `LAYERSKIP_REQUIRE_GPU=1`).

mod common;
use common::gpu::*;
use common::*;
use layerskip::engine::cuda::{compile, driver_present};
use layerskip::engine::Engine;
use layerskip::{
    generate, Device, ErrorKind, GenerateOptions, LoadOptions, Logits, Model, Session,
};

#[test]
fn every_kernel_compiles_to_ptx_for_sm80_and_sm90() {
    let missing = if !compile::nvrtc_present() {
        Some("libnvrtc.so.12 is not on the library path")
    } else if compile::include_dir().is_none() {
        Some("no CUDA include directory with cuda_bf16.h (set LAYERSKIP_CUDA_INCLUDE)")
    } else {
        None
    };
    if let Some(why) = missing {
        return skip(Some(REQUIRE_NVRTC), "kernel compile check", why);
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
            None,
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

#[test]
fn gpu_logits_match_the_cpu_engine_at_every_exit() {
    for name in FIXTURES {
        let Some(gpu) = gpu_model(name, "GPU parity") else {
            return;
        };
        check_parity(name, &gpu);
    }
}

#[test]
fn gpu_rows_are_bit_identical_alone_or_in_a_batch_of_nine() {
    for name in FIXTURES {
        let Some(model) = gpu_model(name, "GPU batch invariance") else {
            return;
        };
        check_batch_invariance(name, &model, &prompts(name)[2][..9]);
    }
}

#[test]
fn gpu_greedy_self_speculation_equals_full_depth() {
    for name in FIXTURES {
        let Some(model) = gpu_model(name, "GPU lossless speculation") else {
            return;
        };
        check_lossless(name, &model, &prompts(name)[0]);
    }
}

#[test]
fn gpu_long_context_matches_the_cpu_engine() {
    // 480 positions and more: two chunks of split attention.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/layerskip-pycode-8l");
    let Some(gpu) = gpu_model_at(&dir, "GPU long context") else {
        return;
    };
    let cpu = Model::load(&dir).unwrap();
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/generate.rs")).unwrap();
    let mut prompt = cpu.encode_prompt(&text).unwrap();
    prompt.truncate(480);
    let mut a = Session::new(gpu.clone(), 0).unwrap();
    let mut b = Session::new(cpu.clone(), 0).unwrap();
    a.forward(&prompt, cpu.num_layers(), Logits::Tail(8))
        .unwrap();
    b.forward(&prompt, cpu.num_layers(), Logits::Tail(8))
        .unwrap();
    let err = relative_error(a.logits(), b.logits());
    println!(
        "bundled model, {} positions: GPU vs CPU relative error {err:e}",
        prompt.len()
    );
    assert!(err < 1e-3, "relative error {err:e}");
    let opts = GenerateOptions {
        max_new_tokens: 12,
        ignore_eos: true,
        ..Default::default()
    };
    let mut a = Session::new(gpu, 0).unwrap();
    let mut b = Session::new(cpu, 0).unwrap();
    let ga = generate(&mut a, &prompt, &opts, |_, _| true).unwrap();
    let gb = generate(&mut b, &prompt, &opts, |_, _| true).unwrap();
    assert_eq!(ga.tokens, gb.tokens, "greedy tokens past position 480");
}

#[test]
fn gpu_picks_on_the_device_equal_picks_of_the_copied_logits() {
    use layerskip::sampling::{Pick, PickRule};
    for name in FIXTURES {
        let Some(model) = gpu_model(name, "GPU picks") else {
            return;
        };
        let e = &model.engine;
        let vocab = model.config.vocab_size;
        let prompt = &prompts(name)[2];
        let mut kv = e.new_kv(prompt.len());
        let mut x = e.embed(prompt);
        for l in 0..model.num_layers() {
            e.run_layer(l, &mut kv, 0, &mut x);
        }
        let mut logits = Vec::new();
        e.head(&x, 0, &mut logits);
        // Greedy rows, then draws at several temperatures and cuts.
        let sample = |temperature, top_k, top_p, u| PickRule::Sample {
            params: layerskip::SamplingParams {
                temperature,
                top_k,
                top_p,
                seed: 0,
            },
            u,
        };
        let rules: Vec<PickRule> = (0..prompt.len())
            .map(|i| match i % 6 {
                0 | 1 => PickRule::Greedy,
                2 => sample(1.0, 0, 1.0, (i as f32 * 0.37) % 1.0),
                3 => sample(0.7, 5, 1.0, (i as f32 * 0.61) % 1.0),
                4 => sample(1.3, 0, 0.8, (i as f32 * 0.29) % 1.0),
                // top-k and top-p together.
                _ => sample(0.9, 8, 0.7, (i as f32 * 0.43) % 1.0),
            })
            .collect();
        let mut out = layerskip::engine::HeadOutput::new(vocab);
        e.head_pick(&x, 0, &rules, &mut out);
        assert!(out.logits().is_empty(), "{name}: only picks cross");
        let mut differ = 0;
        for (i, (row, rule)) in logits.chunks_exact(vocab).zip(&rules).enumerate() {
            let want = Pick::of(row, rule);
            assert_eq!(out.token(i), want.argmax, "{name} row {i}: argmax");
            let err = (out.top_prob(i) - want.top_prob).abs() / want.top_prob;
            assert!(err < 1e-4, "{name} row {i}: top probability {err:e}");
            // A draw may land on a neighbour where rounding moves the
            // cumulative sums; it must still be a token the cut keeps.
            let got = out.chosen(i, rule);
            if got != want.token {
                differ += 1;
                if let PickRule::Sample { params, .. } = rule {
                    let p = layerskip::sampling::distribution(row, params);
                    assert!(p[got as usize] > 0.0, "{name} row {i}: drew a cut token");
                }
            }
        }
        println!(
            "{name}: {differ} of {} device draws differ from the host's",
            rules.len()
        );
        assert!(differ * 10 <= rules.len(), "{name}: {differ} draws differ");
    }
}

/// Several sessions in one pass (segments, row offsets, several caches):
/// each session's logits are the bits it gets alone.
#[test]
fn gpu_sessions_in_one_pass_get_the_bits_they_get_alone() {
    use layerskip::{forward_batch, BatchItem};
    for name in FIXTURES {
        let Some(model) = gpu_model(name, "GPU sessions in one pass") else {
            return;
        };
        let p = prompts(name);
        let feeds: Vec<&[u32]> = vec![&p[0][..], &p[1][..3], &p[2][..1]];
        let alone: Vec<Vec<f32>> = feeds
            .iter()
            .map(|t| {
                let mut s = Session::new(model.clone(), 0).unwrap();
                s.forward(t, model.num_layers(), Logits::All).unwrap();
                s.logits().to_vec()
            })
            .collect();
        let mut sessions: Vec<Session> = (0..feeds.len())
            .map(|_| Session::new(model.clone(), 0).unwrap())
            .collect();
        let mut items: Vec<BatchItem> = sessions
            .iter_mut()
            .zip(&feeds)
            .map(|(s, t)| BatchItem {
                session: s,
                tokens: t,
                exit: model.num_layers(),
                logits: Logits::All,
                pick: None,
            })
            .collect();
        for r in forward_batch(&mut items) {
            r.unwrap();
        }
        drop(items);
        for (i, s) in sessions.iter().enumerate() {
            assert!(
                s.logits() == &alone[i][..],
                "{name}: session {i} differs in a batch"
            );
        }
    }
}
