//! The bundled LayerSkip-trained model loads, generates, and matches
//! transformers (reference from tools/make_fixtures.py).

mod common;
use common::*;
use layerskip::{generate, GenerateOptions, Logits, Mode, Model, Session};
use std::path::PathBuf;

const REF: &str = "bundled-reference";

fn bundled() -> std::sync::Arc<Model> {
    Model::load(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/layerskip-pycode-8l"))
        .unwrap()
}

#[test]
fn bundled_model_matches_transformers() {
    let model = bundled();
    let l = model.num_layers();
    let prompts = prompts(REF);
    // The exits tools/make_fixtures.py wrote references for: L/4, L/2, 3L/4, L.
    for exit in [l / 4, l / 2, 3 * l / 4, l] {
        let key = if exit == l {
            "logits_full_p0".to_string()
        } else {
            format!("logits_exit{exit}_p0")
        };
        let (rows, reference) = ref_logits(REF, &key);
        let mut s = Session::new(model.clone(), 0).unwrap();
        assert_eq!(s.forward(&prompts[0], exit, Logits::All).unwrap(), rows);
        let scale = reference.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let err = s
            .logits()
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
            / scale;
        assert!(err < 1e-4, "exit {exit}: relative error {err:e}");
    }
    for case in reference(REF)["tokenizer"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            model.tokenizer.encode(text, true).unwrap(),
            ids(&case["ids"]),
            "{text:?}"
        );
    }
}

#[test]
fn bundled_model_generates_text_and_speculates_losslessly() {
    let model = bundled();
    let prompt = model.encode_prompt("def fibonacci(n):").unwrap();
    let run = |mode| {
        let opts = GenerateOptions {
            max_new_tokens: 48,
            mode,
            ignore_eos: true,
            ..Default::default()
        };
        let mut s = Session::new(model.clone(), 0).unwrap();
        generate(&mut s, &prompt, &opts, |_, _| true).unwrap()
    };
    let full = run(Mode::Full);
    assert!(
        full.text.chars().filter(|c| c.is_alphabetic()).count() > 40,
        "{:?}",
        full.text
    );
    let spec = run(Mode::SelfSpeculative {
        exit: 5,
        draft_len: 2,
    });
    assert_eq!(spec.tokens, full.tokens);
    assert!(
        spec.stats.acceptance_rate > 0.5,
        "{}",
        spec.stats.acceptance_rate
    );
}
