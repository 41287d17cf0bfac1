//! Decoding on an engine that hands back picks instead of logits (as the
//! CUDA engine does, so that only ids and a probability cross to the host):
//! every mode gives the tokens the CPU engine gives, greedy generation and
//! plain sampling ask it for no logits at all, and speculative sampling
//! still reads them. The CPU engine itself picks the rows of a large pass.

mod common;
use common::*;
use layerskip::engine::{Engine, HeadOutput, Segment};
use layerskip::sampling::{Pick, PickRule, Rng64};
use layerskip::speculative::DraftLimits;
use layerskip::{generate, AutoSpec, GenerateOptions, Mode, Model, SamplingParams, Session};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// The wrapped engine, except that `head_pick` returns picks, and the logit
/// rows it is asked for are counted.
struct PicksOnly<E> {
    inner: E,
    logit_rows: AtomicUsize,
    pick_rows: AtomicUsize,
}

impl<E: Engine> Engine for PicksOnly<E> {
    type Acts = E::Acts;
    type Kv = E::Kv;
    fn config(&self) -> &layerskip::config::ModelConfig {
        self.inner.config()
    }
    fn kv_bytes_per_position(&self) -> usize {
        self.inner.kv_bytes_per_position()
    }
    fn new_kv(&self, capacity: usize) -> E::Kv {
        self.inner.new_kv(capacity)
    }
    fn truncate_kv(&self, kv: &mut E::Kv, layer: usize, len: usize) {
        self.inner.truncate_kv(kv, layer, len)
    }
    fn read_kv(&self, kv: &E::Kv, layer: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
        self.inner.read_kv(kv, layer, len)
    }
    fn embed(&self, tokens: &[u32]) -> E::Acts {
        self.inner.embed(tokens)
    }
    fn run_layer_batch(&self, layer: usize, segments: &mut [Segment<'_, E::Kv>], x: &mut E::Acts) {
        self.inner.run_layer_batch(layer, segments, x)
    }
    fn head(&self, x: &E::Acts, from: usize, out: &mut Vec<f32>) {
        self.inner.head(x, from, out);
        self.logit_rows
            .fetch_add(out.len() / self.config().vocab_size, Relaxed);
    }
    fn head_pick(&self, x: &E::Acts, from: usize, rules: &[PickRule], out: &mut HeadOutput) {
        let mut logits = Vec::new();
        self.inner.head(x, from, &mut logits);
        let vocab = self.config().vocab_size;
        let rows = logits.chunks_exact(vocab).zip(rules);
        out.fill_picks(|p| p.extend(rows.map(|(row, rule)| Pick::of(row, rule))));
        self.pick_rows.fetch_add(out.rows(), Relaxed);
    }
    fn weight_bytes_per_token(&self) -> usize {
        self.inner.weight_bytes_per_token()
    }
    fn memory_bandwidth(&self) -> f64 {
        self.inner.memory_bandwidth()
    }
    fn kernel_name(&self) -> String {
        self.inner.kernel_name()
    }
    fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.inner.enter(f)
    }
}

fn picks_only(name: &str) -> Arc<Model<PicksOnly<layerskip::engine::backend::Backend>>> {
    let model = Arc::try_unwrap(load(name)).ok().expect("a fresh model");
    Arc::new(model.map_engine(|inner| PicksOnly {
        inner,
        logit_rows: AtomicUsize::new(0),
        pick_rows: AtomicUsize::new(0),
    }))
}

fn opts(mode: Mode, sampling: SamplingParams) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: 24,
        mode,
        sampling,
        ignore_eos: true,
        ..Default::default()
    }
}

#[test]
fn greedy_decoding_from_picks_equals_decoding_from_logits_and_reads_no_logits() {
    for name in FIXTURES {
        let plain = load(name);
        let picks = picks_only(name);
        let l = plain.num_layers();
        // Automatic (E, d) times the head once per model through `head`.
        picks.cost_model();
        picks.engine.logit_rows.store(0, Relaxed);
        let modes = [
            Mode::Full,
            Mode::EarlyExit { exit: l / 2 },
            Mode::SelfSpeculative {
                exit: 1,
                draft_len: 3,
            },
            Mode::SelfSpeculative {
                exit: l - 1,
                draft_len: 2,
            },
            Mode::Auto(AutoSpec::default()),
        ];
        for prompt in &prompts(name)[..2] {
            for mode in modes {
                let greedy = opts(mode, SamplingParams::greedy());
                let mut a = Session::new(plain.clone(), 0).unwrap();
                let want = generate(&mut a, prompt, &greedy, |_, _| true).unwrap();
                let before = picks.engine.pick_rows.load(Relaxed);
                let mut b = Session::new(picks.clone(), 0).unwrap();
                let got = generate(&mut b, prompt, &greedy, |_, _| true).unwrap();
                assert_eq!(got.tokens, want.tokens, "{name} {mode:?}");
                if !matches!(mode, Mode::Auto(_)) {
                    // Automatic choices follow measured times, so may differ.
                    assert_eq!(got.stats.accepted, want.stats.accepted, "{name} {mode:?}");
                }
                assert!(picks.engine.pick_rows.load(Relaxed) > before, "{name}");
                assert_eq!(picks.engine.logit_rows.load(Relaxed), 0, "{name} {mode:?}");
            }
        }
    }
}

#[test]
fn sampling_from_picks_equals_sampling_from_logits() {
    let sampling = SamplingParams {
        temperature: 0.8,
        top_k: 20,
        top_p: 0.9,
        seed: 7,
    };
    for name in FIXTURES {
        let (plain, picks) = (load(name), picks_only(name));
        let l = plain.num_layers();
        let prompt = &prompts(name)[2];
        let modes = [
            (Mode::Full, false),
            (Mode::EarlyExit { exit: l / 2 }, false),
            // Speculative sampling needs the draft and full distributions.
            (
                Mode::SelfSpeculative {
                    exit: 1,
                    draft_len: 3,
                },
                true,
            ),
        ];
        for (mode, needs_logits) in modes {
            picks.engine.logit_rows.store(0, Relaxed);
            let mut a = Session::new(plain.clone(), 0).unwrap();
            let mut b = Session::new(picks.clone(), 0).unwrap();
            let want = generate(&mut a, prompt, &opts(mode, sampling), |_, _| true).unwrap();
            let got = generate(&mut b, prompt, &opts(mode, sampling), |_, _| true).unwrap();
            assert_eq!(got.tokens, want.tokens, "{name} {mode:?}");
            let read = picks.engine.logit_rows.load(Relaxed);
            assert_eq!(read > 0, needs_logits, "{name} {mode:?}: {read} logit rows");
        }
    }
}

#[test]
fn session_draft_and_verify_work_from_picks() {
    for name in FIXTURES {
        let (plain, picks) = (load(name), picks_only(name));
        let prompt = &prompts(name)[2];
        let greedy = SamplingParams::greedy();
        let limits = DraftLimits {
            max_drafts: 4,
            stop_ids: &[],
            confidence: 0.01,
            cumulative: 0.0,
            calibration: &[],
        };
        let mut a = Session::new(plain, 0).unwrap();
        let mut b = Session::new(picks.clone(), 0).unwrap();
        a.prefill(&prompt[..prompt.len() - 1]).unwrap();
        b.prefill(&prompt[..prompt.len() - 1]).unwrap();
        let next = *prompt.last().unwrap();
        let logit_rows = picks.engine.logit_rows.load(Relaxed);
        let mut rng = Rng64::new(0);
        let da = a.draft(next, 1, limits, &greedy, &mut rng).unwrap();
        let db = b.draft(next, 1, limits, &greedy, &mut rng).unwrap();
        assert_eq!(da.tokens, db.tokens, "{name}");
        assert_eq!(da.confidence, db.confidence, "{name}");
        let va = a.verify(next, &da, &greedy, &mut rng).unwrap();
        let vb = b.verify(next, &db, &greedy, &mut rng).unwrap();
        assert_eq!(va, vb, "{name}");
        assert_eq!(a.layer_lens(), b.layer_lens(), "{name}");
        assert_eq!(picks.engine.logit_rows.load(Relaxed), logit_rows, "{name}");
    }
}

/// The bundled model: with its 4,096-token vocabulary, 16 rows are a head
/// pass large enough for the CPU engine to pick them on its threads.
fn bundled() -> Arc<Model> {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/layerskip-pycode-8l");
    Model::load(dir).unwrap()
}

#[test]
fn the_cpu_engine_picks_a_large_pass_and_keeps_its_logits() {
    let model = bundled();
    let (e, vocab) = (&model.engine, model.config.vocab_size);
    let tokens: Vec<u32> = (0..16).map(|i| 37 * i + 5).collect();
    let x = e.embed(&tokens);
    let rules: Vec<PickRule> = (0..16)
        .map(|i| match i % 2 {
            0 => PickRule::Greedy,
            _ => PickRule::Sample {
                params: SamplingParams {
                    temperature: 0.8,
                    ..Default::default()
                },
                u: i as f32 / 16.0,
            },
        })
        .collect();
    let mut out = HeadOutput::new(vocab);
    e.enter(|| e.head_pick(&x, 0, &rules, &mut out));
    let mut logits = Vec::new();
    e.head(&x, 0, &mut logits);
    assert!(same_bits(out.logits(), &logits), "the logits stay");
    let mut part = HeadOutput::new(vocab);
    for (i, (row, rule)) in logits.chunks_exact(vocab).zip(&rules).enumerate() {
        let want = Pick::of(row, rule);
        part.copy_rows(&out, i, 1);
        assert!(
            part.logits().is_empty(),
            "row {i}: its pick alone is handed on"
        );
        let got = (part.chosen(0, rule), part.token(0), part.top_prob(0));
        assert_eq!(got, (want.token, want.argmax, want.top_prob), "row {i}");
        assert_eq!(out.chosen(i, rule), want.token, "row {i}");
    }
}

#[test]
fn sixteen_batched_sessions_get_picks_alone_and_the_solo_tokens() {
    use layerskip::{forward_batch, BatchItem, Logits};
    let model = bundled();
    let prompts: Vec<Vec<u32>> = (0..16u32).map(|i| vec![5 + i, 40 + 3 * i, 7]).collect();
    let steps = 6;
    let solo: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut s = Session::new(model.clone(), 0).unwrap();
            greedy_steps(&mut s, p, model.num_layers(), steps)
        })
        .collect();
    let mut ss: Vec<Session> = (0..16)
        .map(|_| Session::new(model.clone(), 0).unwrap())
        .collect();
    let mut feed = prompts.clone();
    let mut got: Vec<Vec<u32>> = vec![Vec::new(); 16];
    for _ in 0..steps {
        let mut items: Vec<BatchItem> = ss
            .iter_mut()
            .zip(&feed)
            .map(|(s, t)| BatchItem {
                session: s,
                tokens: t,
                exit: model.num_layers(),
                logits: Logits::Last,
                pick: Some(PickRule::Greedy),
            })
            .collect();
        for r in forward_batch(&mut items) {
            r.unwrap();
        }
        for (i, s) in ss.iter().enumerate() {
            assert!(s.logits().is_empty(), "session {i}: picks alone");
            let t = s.head_output().token(0);
            got[i].push(t);
            feed[i] = vec![t];
        }
    }
    assert_eq!(got, solo);
}
