//! The generation loop: streaming, stop strings, EOS, callbacks, budgets.

mod common;
use common::*;
use layerskip::{generate, GenerateOptions, Mode, Session, StopReason};
use std::sync::Arc;

const NAME: &str = "mqa-f16-linear";

fn run(
    model: &Arc<layerskip::Model>,
    opts: &GenerateOptions,
) -> (layerskip::GenerateOutput, String, usize) {
    let mut s = Session::new(model.clone(), 0).unwrap();
    let mut streamed = String::new();
    let mut calls = 0;
    let out = generate(&mut s, &prompts(NAME)[1], opts, |_, piece| {
        streamed.push_str(piece);
        calls += 1;
        true
    })
    .unwrap();
    (out, streamed, calls)
}

#[test]
fn streamed_pieces_add_up_to_the_text_in_every_mode() {
    let model = load(NAME);
    for mode in [
        Mode::Full,
        Mode::EarlyExit { exit: 2 },
        Mode::SelfSpeculative {
            exit: 1,
            draft_len: 3,
        },
    ] {
        let opts = GenerateOptions {
            max_new_tokens: 40,
            mode,
            ignore_eos: true,
            ..Default::default()
        };
        let (out, streamed, calls) = run(&model, &opts);
        assert_eq!(streamed, out.text);
        assert_eq!(calls, out.tokens.len());
        assert_eq!(out.text, model.tokenizer.decode(&out.tokens, true).unwrap());
        assert_eq!(out.stop_reason, StopReason::MaxTokens);
    }
}

#[test]
fn a_stop_string_ends_generation_and_is_not_emitted() {
    let model = load(NAME);
    let base = GenerateOptions {
        max_new_tokens: 40,
        ignore_eos: true,
        ..Default::default()
    };
    let (full, _, _) = run(&model, &base);
    let cut = full
        .text
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| i >= full.text.len() / 2)
        .unwrap();
    let stop: String = full.text[cut..].chars().take(3).collect();
    let first = full.text.find(&stop).unwrap();
    for mode in [
        Mode::Full,
        Mode::SelfSpeculative {
            exit: 2,
            draft_len: 4,
        },
    ] {
        let opts = GenerateOptions {
            stop_strings: vec![stop.clone()],
            mode,
            ..base.clone()
        };
        let (out, streamed, _) = run(&model, &opts);
        assert_eq!(out.stop_reason, StopReason::StopString);
        assert_eq!(out.text, full.text[..first]);
        assert_eq!(streamed, out.text);
        assert!(out.tokens.len() < full.tokens.len());
    }
}

#[test]
fn eos_and_callback_stop_generation() {
    let mut model = Model::load(fixture_dir(NAME)).unwrap();
    let base = GenerateOptions {
        max_new_tokens: 30,
        ignore_eos: true,
        ..Default::default()
    };
    let (full, _, _) = run(&model, &base);
    // Make the 6th generated token an EOS id.
    Arc::get_mut(&mut model).unwrap().config.eos_token_ids = vec![full.tokens[5]];
    let first = full
        .tokens
        .iter()
        .position(|&t| t == full.tokens[5])
        .unwrap();
    for mode in [
        Mode::Full,
        Mode::SelfSpeculative {
            exit: 1,
            draft_len: 8,
        },
    ] {
        let opts = GenerateOptions {
            ignore_eos: false,
            mode,
            ..base.clone()
        };
        let (out, _, _) = run(&model, &opts);
        assert_eq!(out.stop_reason, StopReason::Eos);
        assert_eq!(out.tokens, full.tokens[..=first]);
    }
    let mut s = Session::new(model.clone(), 0).unwrap();
    let mut n = 0;
    let out = generate(&mut s, &prompts(NAME)[1], &base, |_, _| {
        n += 1;
        n < 3
    })
    .unwrap();
    assert_eq!(out.tokens.len(), 3);
    assert_eq!(out.stop_reason, StopReason::Callback);
    // With a stop string, text is held back from the callback; the text of
    // a callback stop is what the callback got.
    let mut streamed = String::new();
    let mut n = 0;
    let opts = GenerateOptions {
        stop_strings: vec!["\u{1}never\u{1}".into()],
        ..base.clone()
    };
    let out = generate(&mut s, &prompts(NAME)[1], &opts, |_, piece| {
        streamed.push_str(piece);
        n += 1;
        n < 6
    })
    .unwrap();
    assert_eq!(out.stop_reason, StopReason::Callback);
    assert_eq!(out.text, streamed);
    let whole = model.tokenizer.decode(&out.tokens, true).unwrap();
    assert!(
        whole.starts_with(&out.text) && whole.len() > out.text.len(),
        "{whole:?}"
    );
}

#[test]
fn drafting_never_passes_the_budget() {
    let model = load(NAME);
    for budget in [1, 2, 5, 9] {
        let opts = GenerateOptions {
            max_new_tokens: budget,
            mode: Mode::SelfSpeculative {
                exit: 1,
                draft_len: 8,
            },
            ignore_eos: true,
            ..Default::default()
        };
        let mut s = Session::new(model.clone(), 0).unwrap();
        let out = generate(&mut s, &prompts(NAME)[1], &opts, |_, _| true).unwrap();
        assert_eq!(out.tokens.len(), budget);
        // Every generated token but the last is cached; nothing beyond the budget is.
        assert!(s.shallow_len() < prompts(NAME)[1].len() + budget);
    }
}

use layerskip::Model;

#[test]
fn streaming_never_emits_half_a_character() {
    let model = load("mha-f32");
    let text = "unicode: héllo wörld — ✓ 日本語 🙂 done";
    let ids = model.tokenizer.encode(text, false).unwrap();
    // Byte-level BPE with a small vocabulary splits multi-byte characters over tokens.
    assert!(ids.iter().any(|&i| model
        .tokenizer
        .decode(&[i], true)
        .unwrap()
        .contains('\u{FFFD}')));
    let mut stream = layerskip::tokenizer::StreamDecoder::new();
    let mut out = String::new();
    for &i in &ids {
        let piece = stream.push(&model.tokenizer, i).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
        out.push_str(&piece);
    }
    out.push_str(&stream.finish(&model.tokenizer).unwrap());
    assert_eq!(out, text);
}

/// However a generation stops, generating again on the same session with
/// the last token it delivered continues the stream token for token, in
/// every mode (a speculative round may have cached accepted tokens that the
/// callback never saw: they must not stay in the context).
#[test]
fn generating_again_after_a_stop_continues_the_stream_in_every_mode() {
    let model = load(NAME);
    let l = model.num_layers();
    let prompt = &prompts(NAME)[1];
    let n = 20;
    for mode in [
        Mode::Full,
        Mode::EarlyExit { exit: 2 },
        Mode::SelfSpeculative {
            exit: 1,
            draft_len: 8,
        },
        Mode::SelfSpeculative {
            exit: l - 1,
            draft_len: 3,
        },
        Mode::Auto(layerskip::AutoSpec {
            exit: None,
            draft_len: None,
        }),
    ] {
        let opts = |max_new_tokens| GenerateOptions {
            max_new_tokens,
            mode,
            ignore_eos: true,
            ..Default::default()
        };
        let mut s = Session::new(model.clone(), 0).unwrap();
        let whole = generate(&mut s, prompt, &opts(n), |_, _| true)
            .unwrap()
            .tokens;
        for k in 1..=12 {
            let mut s = Session::new(model.clone(), 0).unwrap();
            let mut seen = Vec::new();
            let first = generate(&mut s, prompt, &opts(n), |t, _| {
                seen.push(t);
                seen.len() < k
            })
            .unwrap();
            assert_eq!(first.stop_reason, StopReason::Callback, "{mode:?} k={k}");
            assert_eq!(seen, first.tokens, "{mode:?} k={k}");
            assert_eq!(s.shallow_len(), prompt.len() + k - 1, "{mode:?} k={k}");
            let rest = generate(&mut s, &seen[k - 1..], &opts(n - k), |_, _| true)
                .unwrap()
                .tokens;
            let joined = [seen, rest].concat();
            assert_eq!(joined, whole, "{mode:?}: stopped after {k} tokens");
        }
    }
}

/// A model with its own pool decodes on that many threads, to the same bits.
#[test]
fn a_model_with_its_own_threads_decodes_the_same() {
    use layerskip::engine::Engine;
    let shared = load(NAME);
    let options = layerskip::LoadOptions {
        threads: 1,
        ..Default::default()
    };
    let own = layerskip::Model::load_with(fixture_dir(NAME), &options).unwrap();
    assert_eq!(own.engine.enter(rayon::current_num_threads), 1);
    let opts = GenerateOptions {
        max_new_tokens: 16,
        ignore_eos: true,
        ..Default::default()
    };
    assert_eq!(run(&own, &opts).0.tokens, run(&shared, &opts).0.tokens);
    // A thread count no machine has fails at once, spawning nothing.
    let options = layerskip::LoadOptions {
        threads: u32::MAX as usize,
        ..Default::default()
    };
    let Err(e) = layerskip::Model::load_with(fixture_dir(NAME), &options) else {
        panic!("a model with {} threads loaded", options.threads);
    };
    assert_eq!(e.kind(), layerskip::ErrorKind::InvalidArgument, "{e}");
    assert!(e.message().contains("at most 1024"), "{e}");
}
