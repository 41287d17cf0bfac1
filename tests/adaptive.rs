//! Automatic (E, d): lossless on every model, and the choices it makes where
//! the answer is known (perfect shallow exits; hopeless exits).

mod common;

use common::{load, prompts, write_random_llama, FIXTURES};
use layerskip::{generate, AutoSpec, GenerateOptions, Mode, Model, Session};
use std::sync::Arc;

/// A cost model where a layer over r rows costs 1 + 0.05 (r - 1) and the head 0.3 + 0.02 (r - 1).
fn memory_bound(layers: usize) -> layerskip::adaptive::CostModel {
    let layer = (1..=9).map(|r| 1.0 + 0.05 * (r - 1) as f64).collect();
    let head = (1..=9).map(|r| 0.3 + 0.02 * (r - 1) as f64).collect();
    layerskip::adaptive::CostModel::from_tables(layers, layer, head)
}

fn run(model: &Arc<Model>, prompt: &[u32], mode: Mode, n: usize) -> layerskip::GenerateOutput {
    let opts = GenerateOptions {
        max_new_tokens: n,
        mode,
        ignore_eos: true,
        ..Default::default()
    };
    let mut s = Session::new(model.clone(), 0).unwrap();
    generate(&mut s, prompt, &opts, |_, _| true).unwrap()
}

fn autos(n_layers: usize) -> Vec<AutoSpec> {
    vec![
        AutoSpec::default(),
        AutoSpec {
            exit: Some(1),
            draft_len: None,
        },
        AutoSpec {
            exit: None,
            draft_len: Some(3),
        },
        AutoSpec {
            exit: Some(n_layers - 1),
            draft_len: Some(2),
        },
    ]
}

#[test]
fn automatic_greedy_equals_full_depth_on_every_fixture() {
    for name in FIXTURES {
        let model = load(name);
        let l = model.num_layers();
        for prompt in prompts(name) {
            let full = run(&model, &prompt, Mode::Full, 24);
            for spec in autos(l) {
                let out = run(&model, &prompt, Mode::Auto(spec), 24);
                assert_eq!(out.tokens, full.tokens, "{name}: {spec:?}");
                let st = &out.stats;
                // The prompt pass produced token 0; rounds produce the rest.
                assert_eq!(st.choices[0].first_token, 1);
                let rounds: u64 = st.choices.iter().map(|c| c.rounds).sum();
                assert!(rounds >= 1 && rounds as usize <= out.tokens.len());
                let tokens: usize = st.choices.iter().map(|c| c.tokens).sum();
                assert_eq!(
                    tokens,
                    out.tokens.len() - 1,
                    "every token after the prompt pass's"
                );
                for c in &st.choices {
                    if c.draft_len == 0 {
                        assert_eq!(c.exit_layer, l, "plain steps are full depth");
                    } else {
                        assert!(
                            spec.exit.is_none_or(|e| e == c.exit_layer),
                            "{spec:?}: {c:?}"
                        );
                        assert!(
                            spec.draft_len.is_none_or(|d| d == c.draft_len),
                            "{spec:?}: {c:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn automatic_greedy_equals_full_depth_on_the_bundled_model() {
    let model = Model::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/layerskip-pycode-8l"
    ))
    .unwrap();
    let prompt = model
        .encode_prompt("import os\n\ndef walk(root):\n")
        .unwrap();
    let full = run(&model, &prompt, Mode::Full, 96);
    // One session over several generations: estimates carry over and stay lossless.
    let mut s = Session::new(model.clone(), 0).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 96,
        mode: Mode::Auto(AutoSpec::default()),
        ignore_eos: true,
        ..Default::default()
    };
    let out = generate(&mut s, &prompt, &opts, |_, _| true).unwrap();
    assert_eq!(out.tokens, full.tokens);
    assert!(
        out.stats.accepted > 0,
        "a trained model's exits are worth drafting from"
    );
    // Later sessions start from the model's shared estimates; once every exit
    // is well known they skip the prompt probes (a path that once lost the
    // prompt pass's logits).
    for i in 0..12 {
        let again = run(&model, &prompt, Mode::Auto(AutoSpec::default()), 96);
        assert_eq!(again.tokens, full.tokens, "session {i}");
    }
}

#[test]
fn invalid_automatic_settings_are_errors() {
    let model = load("mha-f32");
    let l = model.num_layers();
    let mut s = Session::new(model.clone(), 0).unwrap();
    for spec in [
        AutoSpec {
            exit: Some(0),
            draft_len: None,
        },
        AutoSpec {
            exit: Some(l),
            draft_len: None,
        },
        AutoSpec {
            exit: None,
            draft_len: Some(0),
        },
    ] {
        let opts = GenerateOptions {
            mode: Mode::Auto(spec),
            ..Default::default()
        };
        let err = generate(&mut s, &[1, 2], &opts, |_, _| true).unwrap_err();
        assert_eq!(
            err.kind(),
            layerskip::ErrorKind::InvalidArgument,
            "{spec:?}"
        );
    }
    assert_eq!(s.shallow_len(), 0, "a rejected call changes nothing");
}

#[test]
fn perfect_shallow_exits_get_a_small_exit_and_drafts() {
    let dir = tempfile::tempdir().unwrap();
    let (layers, zero_from) = (8, 2);
    write_random_llama(dir.path(), layers, Some(zero_from), 7);
    let model = Model::load(dir.path()).unwrap();
    // Costs of a memory-bound model (extra verify rows are cheap), fixed so
    // the choice does not depend on this machine's timing.
    model.set_cost_model(memory_bound(layers)).unwrap();
    let prompt: Vec<u32> = (0..24).map(|i| (i * 37 % 300) as u32 + 3).collect();
    let full = run(&model, &prompt, Mode::Full, 160);
    let out = run(&model, &prompt, Mode::Auto(AutoSpec::default()), 160);
    assert_eq!(out.tokens, full.tokens);
    let (e, d) = out.stats.main_choice().unwrap();
    println!(
        "zeroed from {zero_from}: main choice E={e} d={d}, {:?}",
        out.stats.choices
    );
    assert!(e <= zero_from + 1 && d >= 6, "E={e} d={d}");
    assert!(out.stats.acceptance_rate > 0.95);
}

#[test]
fn hopeless_exits_fall_back_to_full_depth() {
    let dir = tempfile::tempdir().unwrap();
    write_random_llama(dir.path(), 8, None, 11);
    let model = Model::load(dir.path()).unwrap();
    let e = model.set_cost_model(memory_bound(6)).unwrap_err();
    assert!(e.message().contains("6 layers for a 8-layer"), "{e}");
    let mut empty = memory_bound(8);
    empty.head.clear();
    assert!(model.set_cost_model(empty).is_err(), "empty table");
    model.set_cost_model(memory_bound(8)).unwrap();
    assert!(model.set_cost_model(memory_bound(8)).is_err(), "set once");
    let prompt: Vec<u32> = (0..24).map(|i| (i * 53 % 300) as u32 + 3).collect();
    let full = run(&model, &prompt, Mode::Full, 160);
    let out = run(&model, &prompt, Mode::Auto(AutoSpec::default()), 160);
    assert_eq!(out.tokens, full.tokens);
    let st = &out.stats;
    println!(
        "random: {:?}, drafted {} accepted {}",
        st.choices, st.drafted, st.accepted
    );
    assert_eq!(st.main_choice(), Some((8, 0)), "{:?}", st.choices);
    let full_rounds: u64 = st
        .choices
        .iter()
        .filter(|c| c.draft_len == 0)
        .map(|c| c.rounds)
        .sum();
    let all: u64 = st.choices.iter().map(|c| c.rounds).sum();
    assert!(
        full_rounds * 10 >= all * 9,
        "{full_rounds} of {all} rounds at full depth"
    );
}

#[test]
fn round_timings_pair_live_times_with_the_models_predictions() {
    let model = load(FIXTURES[0]);
    let layers = model.num_layers();
    let cost = memory_bound(layers);
    let exit = layers / 2;
    let prompt = &prompts(FIXTURES[0])[0];
    let before = run(&model, prompt, Mode::Full, 8);
    let timed = cost
        .time_rounds(&model.engine, &[], &[(exit, 2), (1, 8)], 3)
        .unwrap();
    // A full-depth step first, then the rounds asked for, in order.
    let shapes: Vec<_> = timed.iter().map(|t| (t.exit, t.drafts)).collect();
    assert_eq!(shapes, [(layers, 0), (exit, 2), (1, 8)]);
    assert_eq!(timed[0].predicted, cost.full_token());
    assert_eq!(timed[1].predicted, cost.round(exit, 2));
    assert_eq!(timed[2].predicted, cost.round(1, 8));
    assert!(timed
        .iter()
        .all(|t| t.measured.is_finite() && t.measured > 0.0));
    // Rounds the policy could never run, and a model for another depth: errors.
    for bad in [(0, 2), (layers, 2), (exit, 0), (exit, 9)] {
        let e = cost.time_rounds(&model.engine, &[], &[bad], 1).unwrap_err();
        assert!(e.to_string().contains("must be in"), "{bad:?}: {e}");
    }
    let other = memory_bound(layers + 1);
    assert!(other.time_rounds(&model.engine, &[], &[], 1).is_err());
    // The timing uses its own cache: the model decodes as before.
    assert_eq!(run(&model, prompt, Mode::Full, 8).tokens, before.tokens);
}
