//! Concurrency soak: 8 threads keep 64 sessions of one model alive, freeing
//! and recreating them while they generate in mixed modes; every output must
//! equal its sequential reference and memory must stay flat.
//!
//! CI runs 2000 generations; `LAYERSKIP_SOAK_GENERATIONS=20000 cargo test
//! --release --test soak -- --nocapture` is the long run.

mod common;

use common::{fixture_dir, prompts};
use layerskip::{
    generate, AutoSpec, GenerateOptions, LoadOptions, Mode, Model, SamplingParams, Session,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const THREADS: usize = 8;
const SESSIONS_PER_THREAD: usize = 8;
const CONTEXT: usize = 96;
/// Allowed RSS growth from a quarter of the way in (caches full grown) to the end.
const RSS_BOUND_MIB: f64 = 48.0;

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

/// Every (prompt, options) pair the soak draws from.
fn configs(model: &Model) -> Vec<(Vec<u32>, GenerateOptions)> {
    let l = model.num_layers();
    let modes = [
        Mode::Full,
        Mode::EarlyExit { exit: 1 },
        Mode::EarlyExit { exit: l - 1 },
        Mode::SelfSpeculative {
            exit: 1,
            draft_len: 3,
        },
        Mode::SelfSpeculative {
            exit: l / 2,
            draft_len: 5,
        },
        Mode::Auto(AutoSpec::default()),
    ];
    let mut out = Vec::new();
    for (i, prompt) in prompts("mha-f32").into_iter().enumerate() {
        for (m, mode) in modes.iter().enumerate() {
            // Seeded sampling in the fixed modes (automatic choices depend on
            // timing, so only its greedy output is reproducible).
            let sampled = (i + m) % 2 == 1 && !matches!(mode, Mode::Auto(_));
            let sampling = if sampled {
                SamplingParams {
                    temperature: 0.8,
                    top_k: 40,
                    top_p: 0.95,
                    seed: (i * 100 + m) as u64,
                }
            } else {
                SamplingParams::default()
            };
            out.push((
                prompt.clone(),
                GenerateOptions {
                    max_new_tokens: 24 + 8 * (m % 3),
                    mode: *mode,
                    sampling,
                    ignore_eos: true,
                    ..Default::default()
                },
            ));
        }
    }
    out
}

fn run(model: &Arc<Model>, s: &mut Session, prompt: &[u32], opts: &GenerateOptions) -> Vec<u32> {
    let _ = model;
    generate(s, prompt, opts, |_, _| true).unwrap().tokens
}

#[test]
fn soak_many_sessions_many_threads() {
    let generations: usize = std::env::var("LAYERSKIP_SOAK_GENERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let probe = Model::load(fixture_dir("mha-f32")).unwrap();
    let per_session =
        CONTEXT as u64 * 2 * probe.num_layers() as u64 * probe.config.kv_dim() as u64 * 4;
    // Room for exactly the 64 sessions: one more must fail.
    let limits = LoadOptions {
        max_context: CONTEXT,
        kv_budget_bytes: per_session * (THREADS * SESSIONS_PER_THREAD) as u64,
        ..Default::default()
    };
    let model = Model::load_with(fixture_dir("mha-f32"), &limits).unwrap();
    let cfgs = configs(&model);
    let reference: Vec<Vec<u32>> = cfgs
        .iter()
        .map(|(p, o)| {
            let mut s = Session::new(model.clone(), CONTEXT).unwrap();
            run(&model, &mut s, p, o)
        })
        .collect();
    assert_eq!(
        model.kv_reserved_bytes(),
        0,
        "dropped sessions release their reservation"
    );

    let done = AtomicUsize::new(0);
    let mismatches = AtomicUsize::new(0);
    let mut rss_start = 0.0;
    std::thread::scope(|scope| {
        let barrier = Arc::new(std::sync::Barrier::new(THREADS + 1));
        for t in 0..THREADS {
            let (model, cfgs, reference, done, mismatches, barrier) = (
                &model,
                &cfgs,
                &reference,
                &done,
                &mismatches,
                barrier.clone(),
            );
            scope.spawn(move || {
                let mut sessions: Vec<Option<Session>> = (0..SESSIONS_PER_THREAD)
                    .map(|_| Some(Session::new(model.clone(), CONTEXT).unwrap()))
                    .collect();
                // All 64 sessions exist; then recreating sessions waits for
                // the over-budget check below (a slot freed meanwhile would
                // let that session through).
                barrier.wait();
                barrier.wait();
                let mut k = t;
                loop {
                    let n = done.fetch_add(1, Ordering::Relaxed);
                    if n >= generations {
                        break;
                    }
                    let slot = k % SESSIONS_PER_THREAD;
                    // Free and recreate: the reservation must be released at once.
                    drop(sessions[slot].take());
                    let s = sessions[slot].insert(Session::new(model.clone(), CONTEXT).unwrap());
                    let c = (k * 7 + n) % cfgs.len();
                    let got = run(model, s, &cfgs[c].0, &cfgs[c].1);
                    if got != reference[c] {
                        mismatches.fetch_add(1, Ordering::Relaxed);
                    }
                    k += 1;
                }
            });
        }
        barrier.wait();
        // All 64 sessions hold the whole budget: one more is refused cleanly.
        let err = Session::new(model.clone(), CONTEXT)
            .err()
            .expect("over budget");
        assert_eq!(err.kind(), layerskip::ErrorKind::ResourceLimit, "{err}");
        barrier.wait();
        // Start measuring once every cache has had time to reach its size.
        while done.load(Ordering::Relaxed) < generations / 4 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        rss_start = rss_mib();
    });
    let rss_end = rss_mib();
    let total = done.load(Ordering::Relaxed).min(generations);
    println!(
        "soak: {total} generations on {} threads x {} sessions, {} mismatches, RSS {rss_start:.1} -> {rss_end:.1} MiB",
        THREADS,
        SESSIONS_PER_THREAD,
        mismatches.load(Ordering::Relaxed)
    );
    assert_eq!(mismatches.load(Ordering::Relaxed), 0);
    assert_eq!(model.kv_reserved_bytes(), 0);
    assert!(
        rss_end - rss_start < RSS_BOUND_MIB,
        "RSS grew {rss_start:.1} -> {rss_end:.1} MiB"
    );
}

#[test]
fn limits_are_clear_errors_at_session_creation() {
    let model = Model::load_with(
        fixture_dir("mha-f32"),
        &LoadOptions {
            max_context: 64,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(model.max_context(), 64);
    let err = Session::new(model.clone(), 65).err().unwrap();
    assert_eq!(err.kind(), layerskip::ErrorKind::ResourceLimit);
    assert!(
        err.to_string().contains("maximum context per session"),
        "{err}"
    );
    let s = Session::new(model.clone(), 0).unwrap();
    assert_eq!(s.capacity(), 64, "the default context is the cap");

    let per_position = 2 * model.num_layers() * model.config.kv_dim() * 4;
    let budgeted = Model::load_with(
        fixture_dir("mha-f32"),
        &LoadOptions {
            kv_budget_bytes: (100 * per_position) as u64,
            ..Default::default()
        },
    )
    .unwrap();
    let a = Session::new(budgeted.clone(), 60).unwrap();
    let err = Session::new(budgeted.clone(), 41).err().unwrap();
    assert_eq!(err.kind(), layerskip::ErrorKind::ResourceLimit);
    assert!(err.to_string().contains("KV-cache budget"), "{err}");
    let b = Session::new(budgeted.clone(), 40).unwrap();
    assert_eq!(budgeted.kv_reserved_bytes(), (100 * per_position) as u64);
    drop(a);
    let _c = Session::new(budgeted.clone(), 60).unwrap();
    drop(b);
    assert_eq!(budgeted.kv_reserved_bytes(), (60 * per_position) as u64);
}
