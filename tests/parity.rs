//! Numerics against transformers (fixtures from tools/make_fixtures.py).

mod common;
use common::*;
use layerskip::{generate, GenerateOptions, Logits, Mode, Session};

/// max |ours - ref| relative to the logit scale (max |ref|, at least 1).
fn rel_err(ours: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(ours.len(), reference.len());
    let scale = reference.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    ours.iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
        / scale
}

#[test]
fn logits_match_transformers_at_every_position_and_exit() {
    for name in FIXTURES {
        let model = load(name);
        let l = model.num_layers();
        for (i, prompt) in prompts(name).iter().enumerate().take(2) {
            for exit in 1..=l {
                let key = if exit == l {
                    format!("logits_full_p{i}")
                } else {
                    format!("logits_exit{exit}_p{i}")
                };
                let (rows, reference) = ref_logits(name, &key);
                let mut s = Session::new(model.clone(), 0).unwrap();
                let n = s.forward(prompt, exit, Logits::All).unwrap();
                assert_eq!(n, rows, "{name} {key}: logit rows");
                assert_eq!(s.logits_pos0(), 0);
                let err = rel_err(s.logits(), &reference);
                assert!(err < 1e-4, "{name} {key}: relative error {err:e}");
            }
        }
    }
}

#[test]
fn greedy_continuations_match_transformers() {
    for name in FIXTURES {
        let model = load(name);
        let prompts = prompts(name);
        let l = model.num_layers();
        for case in reference(name)["greedy"].as_array().unwrap() {
            let prompt = &prompts[case["prompt"].as_u64().unwrap() as usize];
            let exit = case["exit"].as_u64().unwrap() as usize;
            let want = ids(&case["tokens"]);
            let mode = if exit == l {
                Mode::Full
            } else {
                Mode::EarlyExit { exit }
            };
            let opts = GenerateOptions {
                max_new_tokens: want.len(),
                mode,
                ignore_eos: true,
                ..Default::default()
            };
            let mut s = Session::new(model.clone(), 0).unwrap();
            let got = generate(&mut s, prompt, &opts, |_, _| true).unwrap().tokens;
            assert_eq!(
                got, want,
                "{name}: greedy at exit {exit}, prompt {}",
                case["prompt"]
            );
        }
    }
}

#[test]
fn tokenizer_round_trips_match_python_tokenizers() {
    for name in FIXTURES {
        let model = load(name);
        for case in reference(name)["tokenizer"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want = ids(&case["ids"]);
            assert_eq!(
                model.tokenizer.encode(text, true).unwrap(),
                want,
                "{name}: encode {text:?}"
            );
            let decoded = model.tokenizer.decode(&want, true).unwrap();
            assert_eq!(
                decoded,
                case["decoded"].as_str().unwrap(),
                "{name}: decode {text:?}"
            );
        }
    }
}
