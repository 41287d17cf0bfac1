//! The draft shortlist: drafts choose among the K most frequent tokens,
//! verification keeps the full head, so greedy output stays that of full
//! depth and speculative sampling stays exact.

mod common;
use common::*;
use layerskip::sampling::{distribution, Rng64};
use layerskip::shortlist::{auto_size, shortlist, Frequencies, AUTO, FREQUENCIES_FILE};
use layerskip::speculative::DraftLimits;
use layerskip::{
    forward_batch, generate, AutoSpec, BatchItem, ErrorKind, GenerateOptions, LoadOptions, Logits,
    Mode, Model, SamplingParams, Session,
};
use std::path::PathBuf;
use std::sync::Arc;

fn bundled_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/layerskip-pycode-8l")
}

fn with_shortlist(dir: &std::path::Path, k: usize) -> Arc<Model> {
    let opts = LoadOptions {
        draft_shortlist: k,
        ..Default::default()
    };
    Model::load_with(dir, &opts).unwrap()
}

#[test]
fn greedy_self_speculation_with_a_shortlist_equals_full_depth() {
    let full_model = Model::load(bundled_dir()).unwrap();
    let prompt = full_model.encode_prompt("def fibonacci(n):").unwrap();
    let opts = |mode| GenerateOptions {
        max_new_tokens: 48,
        mode,
        ignore_eos: true,
        ..Default::default()
    };
    let mut s = Session::new(full_model.clone(), 0).unwrap();
    let full = generate(&mut s, &prompt, &opts(Mode::Full), |_, _| true)
        .unwrap()
        .tokens;
    for k in [64, 512, AUTO] {
        let model = with_shortlist(&bundled_dir(), k);
        let size = if k == AUTO {
            auto_size(&model.config)
        } else {
            k
        };
        let ids = shortlist(&bundled_dir(), &model.config, size).unwrap();
        assert!(size < model.config.vocab_size);
        assert!(
            !model.draft_extras(&prompt).is_empty(),
            "K={k}: a shortlist is set"
        );
        for mode in [
            Mode::SelfSpeculative {
                exit: 2,
                draft_len: 4,
            },
            Mode::SelfSpeculative {
                exit: 5,
                draft_len: 2,
            },
            Mode::Auto(AutoSpec::default()),
        ] {
            let mut s = Session::new(model.clone(), 0).unwrap();
            let out = generate(&mut s, &prompt, &opts(mode), |_, _| true).unwrap();
            assert_eq!(out.tokens, full, "K={k} {mode:?}");
        }
        let mut s = Session::new(model.clone(), 0).unwrap();
        s.prefill(&prompt).unwrap();
        let limits = DraftLimits {
            max_drafts: 16,
            stop_ids: &[],
            confidence: 0.0,
            cumulative: 0.0,
            calibration: &[],
        };
        let d = s
            .draft(
                full[0],
                3,
                limits,
                &SamplingParams::default(),
                &mut Rng64::new(0),
            )
            .unwrap();
        assert_eq!(d.tokens.len(), 16);
        // Every draft is a shortlisted token or one of the session's own.
        assert!(
            d.tokens
                .iter()
                .all(|t| ids.binary_search(t).is_ok() || s.tokens().contains(t)),
            "K={k}: {:?}",
            d.tokens
        );
    }
}

#[test]
fn sampling_with_a_shortlist_preserves_the_full_model_distribution() {
    let name = "mqa-f16-linear";
    let dir = fixture_dir(name);
    let plain = load(name);
    let l = plain.num_layers();
    let prompt = &prompts(name)[1];
    let params = SamplingParams {
        temperature: 1.5,
        top_k: 6,
        top_p: 1.0,
        seed: 0,
    };
    let t0 = prompt[0];
    // The full model's top tokens after t0; a shortlist that holds about half of them.
    let mut s = Session::new(plain.clone(), 0).unwrap();
    s.prefill(prompt).unwrap();
    s.step(t0, l).unwrap();
    let p_full = distribution(s.last_logits(), &params);
    let mut top: Vec<u32> = (0..p_full.len() as u32)
        .filter(|&i| p_full[i as usize] > 0.0)
        .collect();
    top.sort_unstable();
    let k = top[top.len() / 2] as usize + 1;
    let model = with_shortlist(&dir, k);
    let ids = shortlist(&dir, &model.config, k).unwrap();
    let inside = top.iter().filter(|t| ids.binary_search(t).is_ok()).count();
    assert!(
        inside > 0 && inside < top.len(),
        "the shortlist must hold some, not all, of the full model's candidates ({inside} of {})",
        top.len()
    );

    let mut s = Session::new(model.clone(), 0).unwrap();
    s.prefill(prompt).unwrap();
    let (empirical, drafted) = first_token_distribution(&mut s, t0, 1, &params, 6000);
    assert!(
        drafted
            .iter()
            .all(|t| ids.binary_search(t).is_ok() || prompt.contains(t) || *t == t0),
        "drafts come from the shortlist and the session's own tokens"
    );
    let d = tv(&empirical, &p_full);
    // 6 outcomes, 6000 draws: the expected TV from sampling noise is ~0.01.
    assert!(d < 0.04, "TV(empirical, p_full) = {d}");
    // Tokens outside the shortlist still come out, from the verifier.
    let outside_mass: f32 = top
        .iter()
        .filter(|t| ids.binary_search(t).is_err())
        .map(|&t| empirical[t as usize])
        .sum();
    assert!(outside_mass > 0.0);
}

#[test]
fn a_frequency_file_ranks_the_shortlist() {
    let name = "mha-f32";
    let model = load(name);
    let cfg = &model.config;
    let tmp = tempfile::tempdir().unwrap();
    // Without a file: the EOS ids, then the lowest ids.
    let k = 8;
    let plain = shortlist(tmp.path(), cfg, k).unwrap();
    let mut want: Vec<u32> = cfg.eos_token_ids.clone();
    want.extend(
        (0..)
            .filter(|i| !cfg.eos_token_ids.contains(i))
            .take(k - want.len()),
    );
    want.sort_unstable();
    assert_eq!(plain, want);
    // With one: the EOS ids, then the most frequent.
    let hot = [cfg.vocab_size as u32 - 1, 300, 200];
    let f = Frequencies::count(
        [hot.iter().flat_map(|&t| vec![t; 5]).chain([7]).collect()],
        cfg.vocab_size,
        "t",
    );
    std::fs::write(
        tmp.path().join(FREQUENCIES_FILE),
        serde_json::to_string(&f).unwrap(),
    )
    .unwrap();
    let ranked = shortlist(tmp.path(), cfg, cfg.eos_token_ids.len() + 4).unwrap();
    for t in hot.iter().chain(&[7]).chain(&cfg.eos_token_ids) {
        assert!(ranked.contains(t), "{t} in {ranked:?}");
    }
    assert_eq!(
        shortlist(tmp.path(), cfg, 1 << 30).unwrap().len(),
        cfg.vocab_size
    );
    // A bad file is an error naming it.
    std::fs::write(
        tmp.path().join(FREQUENCIES_FILE),
        format!(
            r#"{{"source": "x", "total": 1, "counts": [[{}, 1]]}}"#,
            cfg.vocab_size
        ),
    )
    .unwrap();
    let e = shortlist(tmp.path(), cfg, 4).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains(FREQUENCIES_FILE), "{e}");
}

#[test]
fn drafts_also_score_the_sessions_own_tokens() {
    let dir = bundled_dir();
    let (k, exit) = (64, 5);
    let model = with_shortlist(&dir, k);
    let plain = Model::load(&dir).unwrap();
    let ids = shortlist(&dir, &model.config, k).unwrap();
    let prompt = model
        .encode_prompt("def parse_header(buffer, offset):\n    header = buffer[offset:")
        .unwrap();
    let own: Vec<u32> = prompt
        .iter()
        .copied()
        .filter(|t| ids.binary_search(t).is_err())
        .collect();
    assert!(own.len() >= 4, "the prompt has rare tokens: {own:?}");
    assert_eq!(model.draft_extras(&prompt).len(), {
        let mut d = own.clone();
        d.sort_unstable();
        d.dedup();
        d.len()
    });
    // One draft position after the prompt, with and without a shortlist.
    let logits = |model: &Arc<Model>, which| {
        let mut s = Session::new(model.clone(), 0).unwrap();
        s.prefill(&prompt[..prompt.len() - 1]).unwrap();
        s.forward(&prompt[prompt.len() - 1..], exit, which).unwrap();
        s.last_logits().to_vec()
    };
    let draft = logits(&model, Logits::Draft);
    let full = logits(&plain, Logits::Last);
    for t in 0..model.config.vocab_size as u32 {
        let (d, f) = (draft[t as usize], full[t as usize]);
        if ids.binary_search(&t).is_ok() || own.contains(&t) {
            // The same packed rows and products as the full head.
            assert_eq!(d.to_bits(), f.to_bits(), "token {t}");
        } else {
            assert_eq!(
                d,
                f32::NEG_INFINITY,
                "token {t} is neither listed nor the session's"
            );
        }
    }
}

#[test]
fn the_cost_model_times_draft_heads_with_a_sessions_worth_of_own_tokens() {
    let dir = bundled_dir();
    let model = with_shortlist(&dir, 64);
    let ids = shortlist(&dir, &model.config, 64).unwrap();
    let extra = model.timing_extras();
    assert_eq!(extra.len(), layerskip::model::SESSION_DRAFT_TOKENS);
    for t in &extra {
        assert!(ids.binary_search(t).is_err(), "{t} is on the shortlist");
        assert!((*t as usize) < model.config.vocab_size);
    }
    assert!(Model::load(&dir).unwrap().timing_extras().is_empty());
}

#[test]
fn a_draft_row_is_the_same_alone_and_batched_with_other_sessions() {
    let model = with_shortlist(&bundled_dir(), 64);
    let prompts = [
        "def parse_header(buffer):",
        "class Widget(Base):\n    size =",
    ]
    .map(|p| model.encode_prompt(p).unwrap());
    let ready = |p: &[u32]| {
        let mut s = Session::new(model.clone(), 0).unwrap();
        s.prefill(&p[..p.len() - 1]).unwrap();
        s
    };
    let mut alone = Vec::new();
    for p in &prompts {
        let mut s = ready(p);
        s.forward(&p[p.len() - 1..], 4, Logits::Draft).unwrap();
        alone.push(s.last_logits().to_vec());
    }
    let mut sessions: Vec<Session> = prompts.iter().map(|p| ready(p)).collect();
    let mut items: Vec<BatchItem> = sessions
        .iter_mut()
        .zip(&prompts)
        .map(|(session, p)| BatchItem {
            session,
            tokens: &p[p.len() - 1..],
            exit: 4,
            logits: Logits::Draft,
            pick: None,
        })
        .collect();
    for r in forward_batch(&mut items) {
        r.unwrap();
    }
    for (s, want) in sessions.iter().zip(&alone) {
        assert!(same_bits(s.last_logits(), want));
    }
    assert_ne!(
        model.draft_extras(&prompts[0]),
        model.draft_extras(&prompts[1]),
        "the two rows score different tokens of their own"
    );
}
