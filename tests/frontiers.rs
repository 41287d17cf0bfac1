//! Batch invariance, lazy catch-up of the deep layers, rewind, and context limits.

mod common;
use common::*;
use layerskip::engine::Engine;
use layerskip::{ErrorKind, Logits, Session};

#[test]
fn a_row_is_bit_identical_alone_or_in_a_batch_of_nine() {
    for (name, quantize) in FIXTURES.iter().flat_map(|n| QUANTIZE.map(|q| (*n, q))) {
        let model = load_quantized(name, quantize);
        let prompt: Vec<u32> = prompts(name)[2][..9].to_vec();
        let vocab = model.config.vocab_size;
        for exit in [1, model.num_layers()] {
            let mut batch = Session::new(model.clone(), 0).unwrap();
            batch.forward(&prompt, exit, Logits::All).unwrap();
            let mut single = Session::new(model.clone(), 0).unwrap();
            for (i, &t) in prompt.iter().enumerate() {
                single.forward(&[t], exit, Logits::Last).unwrap();
                let a = &batch.logits()[i * vocab..(i + 1) * vocab];
                let b = single.last_logits();
                assert!(
                    same_bits(a, b),
                    "{name} {quantize:?}: row {i} differs between batch of 9 and batch of 1 (exit {exit})"
                );
            }
        }
    }
}

fn kv_bits(s: &Session) -> Vec<Vec<u32>> {
    let engine = &s.model().engine;
    let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect();
    (0..s.layer_lens().len())
        .flat_map(|l| {
            let (k, v) = engine.read_kv(s.kv(), l, s.layer_lens()[l]);
            [bits(k), bits(v)]
        })
        .collect()
}

#[test]
fn early_exit_steps_then_full_step_leave_the_cache_of_full_decoding() {
    for name in FIXTURES {
        let model = load(name);
        let l = model.num_layers();
        let p = prompts(name);
        let (prompt, more) = (&p[1], &p[2][..6]);
        for exit in 1..l {
            let mut lazy = Session::new(model.clone(), 0).unwrap();
            let mut full = Session::new(model.clone(), 0).unwrap();
            lazy.prefill(prompt).unwrap();
            full.prefill(prompt).unwrap();
            for &t in &more[..5] {
                lazy.step(t, exit).unwrap();
                full.step(t, l).unwrap();
            }
            assert_eq!(lazy.deep_len(), prompt.len(), "deep layers fell behind");
            assert_eq!(lazy.pending_rows(exit), 5);
            let a = lazy.step(more[5], l).unwrap().to_vec();
            let b = full.step(more[5], l).unwrap().to_vec();
            assert_eq!(lazy.layer_lens(), full.layer_lens());
            assert_eq!(lazy.pending_rows(exit), 0);
            assert!(
                kv_bits(&lazy) == kv_bits(&full),
                "{name}: KV differs after catch-up from exit {exit}"
            );
            assert!(same_bits(&a, &b));
            // Every layer processed every position exactly once.
            let n = (prompt.len() + 6) as u64;
            assert!(
                lazy.layer_rows().iter().all(|&r| r == n),
                "{:?}",
                lazy.layer_rows()
            );
        }
    }
}

#[test]
fn changing_exit_layers_between_steps_stays_exact() {
    let model = load("gqa-bf16-tied-llama3-sharded");
    let l = model.num_layers();
    let toks = prompts("gqa-bf16-tied-llama3-sharded")[2].clone();
    let mut mixed = Session::new(model.clone(), 0).unwrap();
    let mut full = Session::new(model.clone(), 0).unwrap();
    mixed.prefill(&toks[..4]).unwrap();
    full.prefill(&toks[..4]).unwrap();
    for (i, &t) in toks[4..12].iter().enumerate() {
        mixed.step(t, [3, 1, 4, 2, 2, 4, 1, 3][i]).unwrap();
        full.step(t, l).unwrap();
    }
    mixed.catch_up().unwrap();
    assert_eq!(mixed.layer_lens(), full.layer_lens());
    assert!(kv_bits(&mixed) == kv_bits(&full));
}

#[test]
fn rewind_truncates_every_layer_and_the_exit_activations() {
    let model = load("mha-f32");
    let l = model.num_layers();
    let toks = prompts("mha-f32")[2].clone();
    let mut s = Session::new(model.clone(), 0).unwrap();
    s.prefill(&toks[..10]).unwrap();
    for &t in &toks[10..16] {
        s.step(t, 2).unwrap();
    }
    s.rewind(13).unwrap();
    assert_eq!(s.layer_lens(), &[13, 13, 10, 10][..l]);
    assert_eq!(s.pending_rows(2), 3);
    s.rewind(8).unwrap();
    assert_eq!(s.layer_lens(), &[8; 4][..l]);
    assert_eq!(s.pending_rows(2), 0);
    // Decoding after the rewind equals decoding from scratch.
    let a = s.step(toks[8], l).unwrap().to_vec();
    let mut fresh = Session::new(model, 0).unwrap();
    fresh.prefill(&toks[..9]).unwrap();
    assert!(same_bits(&a, fresh.last_logits()));
    assert!(s.rewind(100).is_err());
}

#[test]
fn context_overflow_is_an_error_that_keeps_the_session() {
    let model = load("mha-f32");
    let toks = prompts("mha-f32")[2].clone();
    let mut s = Session::new(model.clone(), 12).unwrap();
    s.prefill(&toks[..10]).unwrap();
    let before = s.last_logits().to_vec();
    let err = s.forward(&toks[10..13], 4, Logits::Last).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ContextOverflow);
    assert!(err.to_string().contains("context"), "{err}");
    assert_eq!(s.shallow_len(), 10);
    assert_eq!(s.tokens(), &toks[..10]);
    assert_eq!(s.last_logits(), &before[..]);
    s.forward(&toks[10..12], 4, Logits::Last).unwrap();
    assert_eq!(s.shallow_len(), 12);
    assert!(Session::new(model, 1 << 20).is_err());
}

#[test]
fn bad_token_ids_and_exit_layers_are_clear_errors() {
    let model = load("mqa-f16-linear");
    let mut s = Session::new(model.clone(), 0).unwrap();
    let e = s.forward(&[1, 999_999], 3, Logits::Last).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("999999"), "{e}");
    for exit in [0, 4] {
        let e = s.forward(&[1], exit, Logits::Last).unwrap_err();
        assert!(e.to_string().contains("exit layer"), "{e}");
    }
    assert_eq!(s.shallow_len(), 0);
}

/// A pass stopped by the abort check leaves the session as it was: rows
/// that were catching up stay consistent, the new positions go, and the
/// same pass run again gives what a session never aborted gives.
#[test]
fn an_aborted_pass_leaves_the_session_as_it_was() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let name = "mha-f32";
    let model = load(name);
    let l = model.num_layers();
    let p: Vec<u32> = prompts(name).concat();
    assert!(p.len() >= 8, "{} prompt tokens", p.len());
    let (head, more) = (&p[..4], &p[4..]);
    // Both sessions: a prompt, then two early-exit steps (lagging rows).
    let prepare = || {
        let mut s = layerskip::Session::new(model.clone(), 0).unwrap();
        s.forward(head, l, Logits::None).unwrap();
        s.forward(&more[..1], 1, Logits::None).unwrap();
        s.forward(&more[1..2], 1, Logits::None).unwrap();
        s
    };
    let mut plain = prepare();
    let mut aborted = prepare();
    for stop_before in 0..l {
        let calls = std::sync::Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        aborted.set_abort(Some(Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst) >= stop_before
        })));
        let before = (aborted.tokens().to_vec(), aborted.layer_lens().to_vec());
        let err = aborted.forward(&more[2..], l, Logits::All).unwrap_err();
        assert_eq!(err.kind(), layerskip::ErrorKind::Aborted, "{err}");
        assert_eq!(
            aborted.tokens(),
            &before.0[..],
            "stopped before layer {stop_before}"
        );
        assert!(aborted.shallow_len() == before.1[0]);
        // Lagging layers may have caught up on old positions; none holds a
        // new one.
        for (b, &now) in aborted.layer_lens().iter().enumerate() {
            assert!(now <= before.1[0], "layer {b} holds a new position");
        }
    }
    aborted.set_abort(None);
    plain.forward(&more[2..], l, Logits::All).unwrap();
    aborted.forward(&more[2..], l, Logits::All).unwrap();
    assert!(
        aborted.logits() == plain.logits(),
        "after aborts, the pass differs"
    );
    assert_eq!(aborted.layer_lens(), plain.layer_lens());
}
