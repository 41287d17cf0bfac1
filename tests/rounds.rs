//! Host-driven rounds: each session advances one round of its own mode per
//! call, in shared passes, and gives the tokens `generate` gives.

use layerskip::speculative::Drafts;
use layerskip::{
    generate, round_all, AutoSpec, ErrorKind, GenerateOptions, Mode, Model, RoundOptions,
    RoundRequest, RoundState, SamplingParams, Session,
};
use std::path::PathBuf;
use std::sync::Arc;

fn bundled() -> Arc<Model> {
    Model::load(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/layerskip-pycode-8l"))
        .unwrap()
}

fn prompt(model: &Model, text: &str) -> Vec<u32> {
    model.tokenizer.encode(text, true).unwrap()
}

const MODES: [Mode; 5] = [
    Mode::Full,
    Mode::EarlyExit { exit: 5 },
    Mode::SelfSpeculative {
        exit: 3,
        draft_len: 4,
    },
    Mode::SelfSpeculative {
        exit: 6,
        draft_len: 2,
    },
    Mode::Auto(AutoSpec {
        exit: None,
        draft_len: None,
    }),
];

fn sampled(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        seed,
    }
}

/// One request of a host loop: its session, state, options and tokens so far.
struct Request {
    session: Session,
    state: RoundState,
    opts: RoundOptions,
    input: Vec<u32>,
    out: Vec<u32>,
    budget: usize,
}

impl Request {
    fn new(model: &Arc<Model>, prompt: Vec<u32>, mode: Mode, sampling: SamplingParams) -> Self {
        Request {
            session: Session::new(model.clone(), 0).unwrap(),
            state: RoundState::new(sampling.seed),
            opts: RoundOptions {
                mode,
                sampling,
                ..Default::default()
            },
            input: prompt,
            out: Vec::new(),
            budget: 40,
        }
    }

    fn running(&self) -> bool {
        self.out.len() < self.budget
    }
}

/// Advance the running requests by one round each, together.
fn round(reqs: &mut [&mut Request]) {
    let mut running: Vec<&mut &mut Request> = reqs.iter_mut().filter(|r| r.running()).collect();
    for r in running.iter_mut() {
        r.opts.max_tokens = r.budget - r.out.len();
    }
    let calls = running
        .iter_mut()
        .map(|r| {
            let r: &mut Request = r;
            RoundRequest {
                session: &mut r.session,
                state: &mut r.state,
                input: &r.input,
                opts: &r.opts,
            }
        })
        .collect();
    let outcomes = round_all(calls);
    for (r, o) in running.into_iter().zip(outcomes) {
        let o = o.unwrap();
        assert!(!o.tokens.is_empty() && o.tokens.len() <= r.opts.max_tokens);
        r.input = vec![*o.tokens.last().unwrap()];
        r.out.extend(o.tokens);
    }
}

fn run_alone(r: &mut Request) {
    while r.running() {
        round(&mut [r]);
    }
}

fn generated(model: &Arc<Model>, prompt: &[u32], mode: Mode, sampling: SamplingParams) -> Vec<u32> {
    let mut s = Session::new(model.clone(), 0).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 40,
        mode,
        sampling,
        ignore_eos: true,
        ..Default::default()
    };
    generate(&mut s, prompt, &opts, |_, _| true).unwrap().tokens
}

#[test]
fn rounds_give_what_generate_gives_in_every_mode() {
    let model = bundled();
    let p = prompt(&model, "def fibonacci(n):");
    let full = generated(&model, &p, Mode::Full, SamplingParams::default());
    for mode in MODES {
        for sampling in [SamplingParams::default(), sampled(7)] {
            let mut r = Request::new(&model, p.clone(), mode, sampling);
            run_alone(&mut r);
            // Automatic (E, d) chooses from measured times, so which draws a
            // sampled generation makes varies from run to run.
            let timed = matches!(mode, Mode::Auto(_)) && !sampling.is_greedy();
            assert!(
                timed || r.out == generated(&model, &p, mode, sampling),
                "{mode:?} {sampling:?}"
            );
            if sampling.is_greedy() && !matches!(mode, Mode::EarlyExit { .. }) {
                assert_eq!(r.out, full, "{mode:?}: greedy speculation is lossless");
            }
            // The cache holds the prompt and every token but the last.
            assert_eq!(r.session.shallow_len(), p.len() + r.out.len() - 1);
        }
    }
}

#[test]
fn batched_rounds_are_bit_identical_to_rounds_alone() {
    let model = bundled();
    let texts = [
        "def add(a, b):",
        "class Stack:",
        "import os\n",
        "for i in range(10):",
    ];
    let make = |k: usize| {
        let mode = MODES[k % MODES.len()];
        let sampling = if k.is_multiple_of(2) {
            SamplingParams::default()
        } else {
            sampled(k as u64)
        };
        let mut r = Request::new(
            &model,
            prompt(&model, texts[k % texts.len()]),
            mode,
            sampling,
        );
        r.budget = 12 + 5 * k;
        r
    };
    let mut alone: Vec<Request> = (0..8).map(make).collect();
    alone.iter_mut().for_each(run_alone);
    // Requests join over time: one more each round, until all have joined.
    let mut together: Vec<Request> = (0..8).map(make).collect();
    let mut joined = 1;
    while together.iter().any(Request::running) {
        let mut reqs: Vec<&mut Request> = together.iter_mut().take(joined).collect();
        round(&mut reqs);
        joined = (joined + 1).min(together.len());
    }
    for (k, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.out, t.out, "request {k}");
    }
}

#[test]
fn given_drafts_are_verified_at_full_depth() {
    let model = bundled();
    let p = prompt(&model, "def add(a, b):");
    let full = generated(&model, &p, Mode::Full, SamplingParams::default());
    let mut r = Request::new(&model, p.clone(), Mode::Full, SamplingParams::default());
    r.opts.max_tokens = 1;
    let first = round_all(vec![RoundRequest {
        session: &mut r.session,
        state: &mut r.state,
        input: &r.input,
        opts: &r.opts,
    }]);
    assert_eq!(first[0].as_ref().unwrap().tokens, [full[0]]);
    // Right drafts for three tokens, then a wrong one: three accepted, the
    // full model's own token after them.
    let mut wrong = full[4];
    wrong = (wrong + 1) % model.config.vocab_size as u32;
    r.opts.drafts = Some(Drafts {
        tokens: vec![full[1], full[2], full[3], wrong],
        ..Default::default()
    });
    r.opts.max_tokens = 10;
    let input = [full[0]];
    let o = round_all(vec![RoundRequest {
        session: &mut r.session,
        state: &mut r.state,
        input: &input,
        opts: &r.opts,
    }])
    .remove(0)
    .unwrap();
    assert_eq!(o.tokens, full[1..5]);
    assert_eq!((o.drafted, o.accepted), (4, 3));
    assert_eq!(r.session.shallow_len(), p.len() + 4);

    // Probabilities of the wrong length, and drafts in early-exit mode, are refused.
    let vocab = model.config.vocab_size;
    for (mode, probs) in [
        (Mode::Full, vec![0.5; vocab]),
        (Mode::EarlyExit { exit: 2 }, Vec::new()),
    ] {
        r.opts.mode = mode;
        r.opts.drafts = Some(Drafts {
            tokens: vec![1, 2],
            probs,
            ..Default::default()
        });
        let input = [full[4]];
        let e = round_all(vec![RoundRequest {
            session: &mut r.session,
            state: &mut r.state,
            input: &input,
            opts: &r.opts,
        }])
        .remove(0)
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert_eq!(
            r.session.shallow_len(),
            p.len() + 4,
            "a failed round changes nothing"
        );
    }
}

#[test]
fn a_stop_id_ends_the_round_and_later_accepted_tokens_go() {
    let model = bundled();
    let p = prompt(&model, "def fibonacci(n):");
    let full = generated(&model, &p, Mode::Full, SamplingParams::default());
    // Stop at the fourth token: a speculative round that accepted past it
    // keeps only the tokens up to it.
    let stop = full[3];
    let first = full.iter().position(|&t| t == stop).unwrap();
    let mut r = Request::new(
        &model,
        p.clone(),
        Mode::SelfSpeculative {
            exit: 6,
            draft_len: 8,
        },
        SamplingParams::default(),
    );
    r.opts.stop_ids = vec![stop];
    while !r.out.contains(&stop) {
        round(&mut [&mut r]);
    }
    assert_eq!(r.out, full[..=first]);
    assert_eq!(r.session.shallow_len(), p.len() + first);
}

#[test]
fn bad_rounds_fail_alone() {
    let model = bundled();
    let p = prompt(&model, "x = 1");
    let mut good = Request::new(&model, p.clone(), Mode::Full, SamplingParams::default());
    let mut bad = Request::new(&model, p.clone(), Mode::Full, SamplingParams::default());
    good.opts.max_tokens = 1;
    bad.opts.max_tokens = 0;
    let empty: [u32; 0] = [];
    let mut out = round_all(vec![
        RoundRequest {
            session: &mut bad.session,
            state: &mut bad.state,
            input: &bad.input,
            opts: &bad.opts,
        },
        RoundRequest {
            session: &mut good.session,
            state: &mut good.state,
            input: &good.input,
            opts: &good.opts,
        },
    ]);
    assert!(out[0]
        .as_ref()
        .unwrap_err()
        .message()
        .contains("at least 1"));
    assert_eq!(out.remove(1).unwrap().tokens.len(), 1);
    bad.opts.max_tokens = 1;
    let e = round_all(vec![RoundRequest {
        session: &mut bad.session,
        state: &mut bad.state,
        input: &empty,
        opts: &bad.opts,
    }])
    .remove(0)
    .unwrap_err();
    assert!(e.message().contains("empty"), "{e}");
    assert_eq!(bad.session.shallow_len(), 0);
}

/// One round of `r` alone.
fn round_alone(r: &mut Request) -> layerskip::Result<layerskip::RoundOutcome> {
    r.opts.max_tokens = r.budget - r.out.len();
    round_all(vec![RoundRequest {
        session: &mut r.session,
        state: &mut r.state,
        input: &r.input,
        opts: &r.opts,
    }])
    .remove(0)
}

#[test]
fn a_round_that_fails_while_drafting_leaves_its_session_as_before() {
    let model = bundled();
    let p = prompt(&model, "def add(a, b):");
    let want = generated(&model, &p, Mode::Full, SamplingParams::default());
    let mut r = Request::new(&model, p, Mode::Full, SamplingParams::default());
    r.budget = 1;
    run_alone(&mut r);
    let before = r.session.tokens().to_vec();
    // A draft pass at exit 3 asks three times: the second pass is aborted.
    let checks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = checks.clone();
    r.session.set_abort(Some(Box::new(move || {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 3
    })));
    r.opts.mode = Mode::SelfSpeculative {
        exit: 3,
        draft_len: 4,
    };
    r.budget = 40;
    let e = round_alone(&mut r).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Aborted, "{e}");
    assert_eq!(r.session.tokens(), &before[..]);
    assert_eq!(r.session.shallow_len(), before.len());
    r.session.set_abort(None);
    r.opts.mode = Mode::Full;
    run_alone(&mut r);
    assert_eq!(r.out, want);
}

#[test]
fn speculative_rounds_after_early_exit_rounds_match_full_depth() {
    let model = bundled();
    let l = model.num_layers();
    let p = prompt(&model, "class Stack:");
    let mut r = Request::new(
        &model,
        p.clone(),
        Mode::EarlyExit { exit: 2 },
        SamplingParams::default(),
    );
    r.budget = 3;
    run_alone(&mut r);
    assert!(r.session.deep_len() < r.session.shallow_len());
    // Full depth from the same context, for the rounds that follow.
    let mut context = p;
    context.extend_from_slice(&r.out);
    let mut reference = Session::new(model.clone(), 0).unwrap();
    reference.prefill(&context).unwrap();
    let mut want = Vec::new();
    let mut logits = reference.last_logits().to_vec();
    for _ in 0..20 {
        let t = layerskip::sampling::argmax(&logits);
        want.push(t);
        logits = reference.step(t, l).unwrap().to_vec();
    }
    r.opts.mode = Mode::SelfSpeculative {
        exit: 4,
        draft_len: 3,
    };
    r.budget = 23;
    run_alone(&mut r);
    assert_eq!(&r.out[3..], &want[..]);
}
