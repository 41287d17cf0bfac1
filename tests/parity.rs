//! Numerics against transformers (fixtures from tools/make_fixtures.py).

mod common;
use common::*;
use layerskip::{Logits, Session};

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
                assert_logits_close(s.logits(), &reference, &format!("{name} {key}"));
            }
        }
    }
}

#[test]
fn greedy_continuations_match_transformers() {
    for name in FIXTURES {
        assert_greedy_cases(&load(name), name);
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
