//! Self-speculative decoding: lossless, nothing recomputed, exact rollback,
//! external drafts, and distribution-preserving sampling.

mod common;
use common::*;
use layerskip::engine::Engine;
use layerskip::sampling::{distribution, Rng64};
use layerskip::speculative::{accept_sampled, DraftLimits, Drafts};
use layerskip::{generate, GenerateOptions, Mode, SamplingParams, Session};

fn greedy_opts(mode: Mode, n: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: n,
        mode,
        ignore_eos: true,
        ..Default::default()
    }
}

/// Drafts of at most `d` tokens, nothing else limiting them.
fn limits(d: usize) -> DraftLimits<'static> {
    DraftLimits {
        cumulative: 0.0,
        calibration: &[],
        max_drafts: d,
        stop_ids: &[],
        confidence: 0.0,
    }
}

#[test]
fn greedy_self_speculation_equals_full_depth_for_every_exit_and_draft_length() {
    for (name, quantize) in FIXTURES.iter().flat_map(|n| QUANTIZE.map(|q| (*n, q))) {
        let model = load_quantized(name, quantize);
        let l = model.num_layers();
        let p = prompts(name);
        for prompt in [&p[0], &p[2]] {
            assert!(prompt.len() == 1 || prompt.len() == 40);
            let mut s = Session::new(model.clone(), 0).unwrap();
            let full = generate(&mut s, prompt, &greedy_opts(Mode::Full, 64), |_, _| true)
                .unwrap()
                .tokens;
            for exit in 1..l {
                for d in [1, 2, 3, 5, 8] {
                    let mut s = Session::new(model.clone(), 0).unwrap();
                    let mode = Mode::SelfSpeculative { exit, draft_len: d };
                    let out =
                        generate(&mut s, prompt, &greedy_opts(mode, 64), |_, _| true).unwrap();
                    assert_eq!(
                        out.tokens,
                        full,
                        "{name} {quantize:?}: E={exit} d={d} prompt len {}",
                        prompt.len()
                    );
                    let st = out.stats;
                    assert!(st.drafted > 0 && st.accepted <= st.drafted);
                    // Nothing recomputed: every layer processed each kept
                    // position once, plus the rejected drafts.
                    let rejected = st.drafted - st.accepted;
                    let kept = s.shallow_len() as u64;
                    assert_eq!(s.deep_len() as u64, kept);
                    for (layer, &rows) in s.layer_rows().iter().enumerate() {
                        assert_eq!(
                            rows,
                            kept + rejected,
                            "{name}: E={exit} d={d} layer {layer}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn speculative_cache_is_bit_identical_to_full_decoding() {
    let name = "gqa-bf16-tied-llama3-sharded";
    let model = load(name);
    let prompt = &prompts(name)[1];
    let mut spec = Session::new(model.clone(), 0).unwrap();
    let mode = Mode::SelfSpeculative {
        exit: 2,
        draft_len: 4,
    };
    let out = generate(&mut spec, prompt, &greedy_opts(mode, 30), |_, _| true).unwrap();
    let mut full = Session::new(model.clone(), 0).unwrap();
    full.prefill(prompt).unwrap();
    for &t in &out.tokens[..out.tokens.len() - 1] {
        full.step(t, model.num_layers()).unwrap();
    }
    // The speculative session may hold fewer positions (last round's tail); compare the common prefix.
    let n = spec.shallow_len().min(full.shallow_len());
    assert!(n >= prompt.len() + 20);
    for l in 0..model.num_layers() {
        let (sk, sv) = model.engine.read_kv(spec.kv(), l, n);
        let (fk, fv) = model.engine.read_kv(full.kv(), l, n);
        assert!(same_bits(&sk, &fk), "layer {l} K differs");
        assert!(same_bits(&sv, &fv), "layer {l} V differs");
    }
}

#[test]
fn rollback_after_rejection_leaves_exactly_the_accepted_length() {
    let name = "mha-f32";
    let model = load(name);
    let l = model.num_layers();
    let prompt = &prompts(name)[2];
    let greedy = SamplingParams::greedy();
    let mut rng = Rng64::new(0);
    let mut s = Session::new(model.clone(), 0).unwrap();
    s.prefill(prompt).unwrap();
    let mut next = layerskip::sampling::argmax(s.last_logits());
    let mut rejections = 0;
    for _ in 0..12 {
        let base = s.deep_len();
        let drafts = s.draft(next, 1, limits(5), &greedy, &mut rng).unwrap();
        assert_eq!(s.shallow_len(), base + drafts.tokens.len());
        assert_eq!(s.pending_rows(1), drafts.tokens.len());
        let v = s.verify(next, &drafts, &greedy, &mut rng).unwrap();
        if v.accepted < drafts.tokens.len() {
            rejections += 1;
        }
        let want = base + 1 + v.accepted;
        assert!(
            s.layer_lens().iter().all(|&n| n == want),
            "{:?} vs {want}",
            s.layer_lens()
        );
        assert!((1..=l).all(|e| s.pending_rows(e) == 0));
        assert_eq!(s.tokens().len(), want);
        next = v.token_after;
    }
    assert!(rejections > 0, "the test needs at least one rejection");
    // Later tokens still match full-depth decoding.
    let mut reference = Session::new(model.clone(), 0).unwrap();
    let all: Vec<u32> = s.tokens().to_vec();
    let full = greedy_steps(&mut reference, prompt, l, all.len() - prompt.len() + 1);
    assert_eq!(&all[prompt.len()..], &full[..all.len() - prompt.len()]);
    assert_eq!(next, full[all.len() - prompt.len()]);
}

#[test]
fn external_drafts_verify_to_full_depth_greedy() {
    for name in FIXTURES {
        let model = load(name);
        let l = model.num_layers();
        let prompt = &prompts(name)[1];
        let mut reference = Session::new(model.clone(), 0).unwrap();
        let full = greedy_steps(&mut reference, prompt, l, 40);
        let greedy = SamplingParams::greedy();
        let mut rng = Rng64::new(1);
        let mut s = Session::new(model.clone(), 0).unwrap();
        s.prefill(prompt).unwrap();
        let mut out = vec![layerskip::sampling::argmax(s.last_logits())];
        let mut round = 0;
        while out.len() < 40 {
            // Proposals: the true continuation, corrupted in some rounds.
            let at = out.len();
            let mut tokens: Vec<u32> = full[at..(at + 4).min(full.len())].to_vec();
            if round % 3 == 1 && tokens.len() > 1 {
                tokens[1] = (tokens[1] + 1) % model.config.vocab_size as u32;
            }
            if round % 5 == 4 {
                tokens.clear();
            }
            round += 1;
            let v = s
                .verify(
                    *out.last().unwrap(),
                    &Drafts {
                        tokens: tokens.clone(),
                        ..Default::default()
                    },
                    &greedy,
                    &mut rng,
                )
                .unwrap();
            out.extend_from_slice(&tokens[..v.accepted]);
            out.push(v.token_after);
        }
        assert_eq!(&out[..40], &full[..40], "{name}");
    }
}

#[test]
fn speculative_sampling_preserves_the_full_model_distribution() {
    let name = "mqa-f16-linear";
    let model = load(name);
    let l = model.num_layers();
    let prompt = &prompts(name)[1];
    let params = SamplingParams {
        temperature: 1.5,
        top_k: 6,
        top_p: 1.0,
        seed: 0,
    };
    let t0 = prompt[0];
    let mut s = Session::new(model.clone(), 0).unwrap();
    s.prefill(prompt).unwrap();
    let base = s.shallow_len();
    // The exact distributions of the next token after t0.
    s.step(t0, l).unwrap();
    let p_full = distribution(s.last_logits(), &params);
    s.rewind(base).unwrap();
    s.step(t0, 1).unwrap();
    let p_draft = distribution(s.last_logits(), &params);
    s.rewind(base).unwrap();
    assert!(
        tv(&p_full, &p_draft) > 0.2,
        "draft must differ from the full model for this test to mean anything"
    );

    let trials = 6000;
    let (empirical, _) = first_token_distribution(&mut s, t0, 1, &params, trials);
    let d = tv(&empirical, &p_full);
    // 6 outcomes, 6000 draws: the expected TV from sampling noise is ~0.01.
    assert!(
        d < 0.04,
        "TV(empirical, p_full) = {d}; TV(p_draft, p_full) = {}",
        tv(&p_draft, &p_full)
    );
    assert!(tv(&empirical, &p_draft) > 0.1);
}

#[test]
fn a_draft_the_full_model_gives_zero_probability_is_never_accepted() {
    let mut rng = Rng64::new(3);
    let p_full = [0.5, 0.5, 0.0, 0.0];
    let p_draft = [0.0, 0.0, 1.0, 0.0];
    for _ in 0..2000 {
        let r = accept_sampled(2, &p_full, Some(&p_draft), &mut rng);
        assert!(matches!(r, Some(0) | Some(1)), "{r:?}");
        let r = accept_sampled(3, &p_full, None, &mut rng);
        assert!(matches!(r, Some(0) | Some(1)), "{r:?}");
    }
    // Through verify: top-k 2 zeroes every other token, so an external draft outside it is rejected.
    let model = load("mha-f32");
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 2,
        top_p: 1.0,
        seed: 0,
    };
    let prompt = &prompts("mha-f32")[1];
    let mut s = Session::new(model.clone(), 0).unwrap();
    s.prefill(prompt).unwrap();
    let base = s.shallow_len();
    s.step(prompt[0], model.num_layers()).unwrap();
    let p = distribution(s.last_logits(), &params);
    s.rewind(base).unwrap();
    let outside = p.iter().position(|&x| x == 0.0).unwrap() as u32;
    for seed in 0..200 {
        let mut rng = Rng64::new(seed);
        let v = s
            .verify(
                prompt[0],
                &Drafts {
                    tokens: vec![outside],
                    ..Default::default()
                },
                &params,
                &mut rng,
            )
            .unwrap();
        assert_eq!(v.accepted, 0);
        assert!(p[v.token_after as usize] > 0.0);
        s.rewind(base).unwrap();
    }
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let model = load("mqa-f16-linear");
    let prompt = &prompts("mqa-f16-linear")[1];
    let run = |seed: u64, mode: Mode| {
        let opts = GenerateOptions {
            max_new_tokens: 32,
            mode,
            sampling: SamplingParams {
                temperature: 1.5,
                top_k: 40,
                top_p: 0.95,
                seed,
            },
            ignore_eos: true,
            ..Default::default()
        };
        let mut s = Session::new(model.clone(), 0).unwrap();
        generate(&mut s, prompt, &opts, |_, _| true).unwrap().tokens
    };
    for mode in [
        Mode::Full,
        Mode::SelfSpeculative {
            exit: 2,
            draft_len: 3,
        },
    ] {
        assert_eq!(run(7, mode), run(7, mode));
        assert_ne!(run(7, mode), run(8, mode));
    }
}

#[test]
fn the_exit_layer_may_change_between_rounds() {
    for name in FIXTURES {
        let model = load(name);
        let l = model.num_layers();
        let prompt = &prompts(name)[2];
        let mut reference = Session::new(model.clone(), 0).unwrap();
        let full = greedy_steps(&mut reference, prompt, l, 48);
        let greedy = SamplingParams::greedy();
        let mut rng = Rng64::new(0);
        let mut s = Session::new(model.clone(), 0).unwrap();
        s.prefill(prompt).unwrap();
        let mut out = vec![layerskip::sampling::argmax(s.last_logits())];
        let mut round = 0;
        while out.len() < 48 {
            let exit = 1 + round % (l - 1);
            let d = 1 + round % 4;
            round += 1;
            let next = *out.last().unwrap();
            let drafts = s.draft(next, exit, limits(d), &greedy, &mut rng).unwrap();
            let v = s.verify(next, &drafts, &greedy, &mut rng).unwrap();
            out.extend_from_slice(&drafts.tokens[..v.accepted]);
            out.push(v.token_after);
        }
        assert_eq!(&out[..48], &full[..48], "{name}");
    }
}

#[test]
fn adaptive_drafting_stops_at_low_confidence_and_stays_lossless() {
    let name = "mqa-f16-linear";
    let model = load(name);
    let prompt = &prompts(name)[1];
    let run = |threshold: f32| {
        let opts = GenerateOptions {
            max_new_tokens: 40,
            mode: Mode::SelfSpeculative {
                exit: 1,
                draft_len: 6,
            },
            ignore_eos: true,
            confidence_threshold: threshold,
            ..Default::default()
        };
        let mut s = Session::new(model.clone(), 0).unwrap();
        generate(&mut s, prompt, &opts, |_, _| true).unwrap()
    };
    let (eager, picky, never) = (run(0.0), run(0.5), run(1.0));
    assert_eq!(eager.tokens, picky.tokens);
    assert_eq!(eager.tokens, never.tokens);
    assert!(
        eager.stats.drafted > picky.stats.drafted,
        "{} vs {}",
        eager.stats.drafted,
        picky.stats.drafted
    );
    assert_eq!(never.stats.drafted, 0);
}

#[test]
fn verification_after_early_exit_steps_keeps_them_and_matches_full_depth() {
    for name in FIXTURES {
        let model = load(name);
        let l = model.num_layers();
        let prompt = &prompts(name)[0];
        let greedy = SamplingParams::greedy();
        // Early-exit steps below, then above, the draft exit: the deep
        // layers lag behind by those positions when verification starts.
        for (step_exit, draft_exit) in [(1, l - 1), (l - 1, 1)] {
            let mut rng = Rng64::new(0);
            let mut s = Session::new(model.clone(), 0).unwrap();
            s.prefill(prompt).unwrap();
            let mut context = prompt.clone();
            let mut next = layerskip::sampling::argmax(s.last_logits());
            for _ in 0..2 {
                context.push(next);
                next = layerskip::sampling::argmax(s.step(next, step_exit).unwrap());
            }
            assert!(
                s.deep_len() < s.shallow_len(),
                "{name}: the deep layers lag"
            );
            let mut reference = Session::new(model.clone(), 0).unwrap();
            let mut ref_prompt = context.clone();
            ref_prompt.push(next);
            let full = greedy_steps(&mut reference, &ref_prompt, l, 12);
            let mut out = Vec::new();
            while out.len() < 12 {
                let at = s.context_len();
                let drafts = s
                    .draft(next, draft_exit, limits(3), &greedy, &mut rng)
                    .unwrap();
                let v = s.verify(next, &drafts, &greedy, &mut rng).unwrap();
                // The verify's logit rows: one per draft plus one, from `next`.
                assert_eq!(s.logits_pos0(), at);
                assert_eq!(s.head_output().rows(), drafts.tokens.len() + 1);
                out.extend_from_slice(&drafts.tokens[..v.accepted]);
                out.push(v.token_after);
                next = v.token_after;
            }
            assert_eq!(&out[..12], &full[..], "{name}, steps at exit {step_exit}");
            assert_eq!(&s.tokens()[..context.len()], &context[..], "{name}");
            assert_eq!(s.deep_len(), s.shallow_len(), "{name}: caught up");
        }
    }
}

#[test]
fn drafts_left_unverified_never_enter_the_context() {
    let name = "gqa-bf16-tied-llama3-sharded";
    let model = load(name);
    let l = model.num_layers();
    let prompt = &prompts(name)[1];
    let greedy = SamplingParams::greedy();
    let mut rng = Rng64::new(0);
    let mut reference = Session::new(model.clone(), 0).unwrap();
    reference.prefill(prompt).unwrap();
    let next = layerskip::sampling::argmax(reference.last_logits());
    let want = reference.step(next, l).unwrap().to_vec();

    // Drafted, then abandoned for a plain step.
    let mut s = Session::new(model.clone(), 0).unwrap();
    s.prefill(prompt).unwrap();
    let drafts = s.draft(next, 1, limits(4), &greedy, &mut rng).unwrap();
    assert_eq!(s.drafts_held(), drafts.tokens.len());
    let got = s.step(next, l).unwrap().to_vec();
    assert!(same_bits(&got, &want), "a step after abandoned drafts");
    assert_eq!(s.tokens(), reference.tokens());

    // A draft that fails on its second pass takes its first one with it.
    let mut s = Session::new(model.clone(), 0).unwrap();
    s.prefill(prompt).unwrap();
    let checks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = checks.clone();
    // A draft pass at exit 1 asks once: the second pass is aborted.
    s.set_abort(Some(Box::new(move || {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1
    })));
    let e = s.draft(next, 1, limits(4), &greedy, &mut rng).unwrap_err();
    assert_eq!(e.kind(), layerskip::ErrorKind::Aborted);
    assert_eq!(s.shallow_len(), prompt.len(), "the first draft went too");
    assert_eq!(s.drafts_held(), 0);
    s.set_abort(None);
    let got = s.step(next, l).unwrap().to_vec();
    assert!(same_bits(&got, &want), "a step after a failed draft");
}

#[test]
fn drafts_held_unverified_take_no_room_from_a_generation() {
    let name = "mha-f32";
    let model = load(name);
    let l = model.num_layers();
    let prompt = &prompts(name)[0];
    let greedy = SamplingParams::greedy();
    let mut rng = Rng64::new(0);
    // Room for the prompt and two more positions.
    let mut s = Session::new(model.clone(), prompt.len() + 2).unwrap();
    s.prefill(prompt).unwrap();
    let next = layerskip::sampling::argmax(s.last_logits());
    s.draft(next, 1, limits(4), &greedy, &mut rng).unwrap();
    assert_eq!(s.drafts_held(), 1);
    let opts = greedy_opts(Mode::Full, 10);
    let out = generate(&mut s, &[next], &opts, |_, _| true).unwrap();
    let mut reference = Session::new(model.clone(), 0).unwrap();
    let mut ref_prompt = prompt.clone();
    ref_prompt.push(next);
    let want = greedy_steps(&mut reference, &ref_prompt, l, 2);
    assert_eq!(out.tokens, want, "the context holds `next` and one more");
    assert_eq!(
        s.tokens(),
        &ref_prompt
            .iter()
            .chain(&want[..1])
            .copied()
            .collect::<Vec<_>>()[..]
    );
}
