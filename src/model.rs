//! A loaded model: config + weights on an engine + tokenizer. Immutable and
//! shared (`Arc`) by any number of sessions on any threads.

use crate::adaptive::{CostModel, PolicyState};
use crate::config::ModelConfig;
use crate::engine::backend::Backend;
use crate::engine::head_output::HeadOutput;
use crate::engine::options::{Device, EngineOptions, KvDtype, Quantize};
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::shortlist;
use crate::tokenizer::Tokenizer;
use crate::weights::{DType, WeightStore};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Limits and choices a serving process sets when it loads a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Longest context a session may ask for; 0 = the model's
    /// `max_position_embeddings` (a larger value is capped there).
    pub max_context: usize,
    /// KV-cache memory that all open sessions together may reserve, in bytes;
    /// 0 = unlimited. A session reserves `context length x
    /// kv_bytes_per_position` when it is created and releases it when dropped.
    pub kv_budget_bytes: u64,
    /// Quantize weights at load.
    pub quantize: Quantize,
    /// The engine: the CPU (default) or a CUDA GPU.
    pub device: Device,
    /// K/V cache element type (CPU engine).
    pub kv_dtype: KvDtype,
    /// CPU worker threads of the model's own pool; 0 (default) shares the
    /// process's pool. At most [`crate::engine::cpu::MAX_THREADS`].
    pub threads: usize,
    /// Tokens the draft head scores (see [`crate::shortlist`]); 0 (default)
    /// or the vocabulary size or more: the full head; [`shortlist::AUTO`]:
    /// chosen from the model's shape ([`shortlist::auto_size`]).
    pub draft_shortlist: usize,
}

/// Most tokens of its own context a session's drafts score beyond the
/// draft shortlist ([`Model::draft_extras`]).
pub const SESSION_DRAFT_TOKENS: usize = 64;
/// How many of a session's newest positions [`Model::draft_extras`] reads.
pub const SESSION_DRAFT_WINDOW: usize = 1024;

pub struct Model<E: Engine = Backend> {
    pub config: ModelConfig,
    pub engine: E,
    pub tokenizer: Tokenizer,
    pub dir: PathBuf,
    /// The dtype most weights are stored in.
    pub dtype: DType,
    /// Layer and exit-head timings for automatic (E, d), measured on first use.
    cost: OnceLock<CostModel>,
    /// What automatic (E, d) learns from this model's sessions.
    policy: PolicyState,
    limits: LoadOptions,
    /// KV-cache bytes reserved by open sessions.
    kv_reserved: AtomicU64,
    /// Which tokens the engine's draft shortlist holds (empty: none, the
    /// draft head is the full head).
    shortlisted: Vec<bool>,
    /// The exit head's output of a batched pass before each session takes
    /// its rows, kept between passes: allocated and zeroed anew, 16 rows of
    /// a 32,000-token vocabulary were 2 MB per step on the one thread that
    /// every other waits for.
    batch_head: parking_lot::Mutex<HeadOutput>,
}

impl LoadOptions {
    /// The part of these options that the engine takes.
    pub fn engine(&self) -> EngineOptions {
        EngineOptions {
            device: self.device,
            quantize: self.quantize,
            kv_dtype: self.kv_dtype,
            threads: self.threads,
        }
    }
}

impl Model<Backend> {
    /// Load a Hugging Face Llama checkpoint directory onto the CPU engine.
    pub fn load(dir: impl AsRef<Path>) -> Result<Arc<Self>> {
        Self::load_with(dir, &LoadOptions::default())
    }

    /// [`Model::load`] with resource limits.
    pub fn load_with(dir: impl AsRef<Path>, options: &LoadOptions) -> Result<Arc<Self>> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            let what = if dir.exists() {
                "is not a directory (give the checkpoint's directory)"
            } else {
                "model directory not found"
            };
            return Err(Error::new(
                ErrorKind::Io,
                format!("{}: {what}", dir.display()),
            ));
        }
        let config = ModelConfig::from_dir(dir)?;
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        if let Some(max) = tokenizer.max_id() {
            if max as usize >= config.vocab_size {
                return Err(Error::new(
                    ErrorKind::Tokenizer,
                    format!(
                        "{}: tokenizer produces id {max}, but the model's vocab_size is {}",
                        dir.join("tokenizer.json").display(),
                        config.vocab_size
                    ),
                ));
            }
        }
        let store = WeightStore::from_dir(dir)?;
        let dtype = store.dominant_dtype().unwrap_or(DType::F32);
        let mut engine = Backend::load(&config, &store, &options.engine())?;
        let k = match options.draft_shortlist {
            shortlist::AUTO => shortlist::auto_size(&config),
            k => k,
        };
        let mut shortlisted = Vec::new();
        if k > 0 && k < config.vocab_size {
            let ids = shortlist::shortlist(dir, &config, k)?;
            if engine.set_draft_shortlist(&ids)? {
                shortlisted = vec![false; config.vocab_size];
                ids.iter().for_each(|&i| shortlisted[i as usize] = true);
            }
        }
        // The engine holds its own copy of every weight it computes with.
        store.release();
        warm_up(&engine);
        let batch_head = parking_lot::Mutex::new(HeadOutput::new(config.vocab_size));
        Ok(Arc::new(Model {
            config,
            engine,
            tokenizer,
            dir: dir.to_path_buf(),
            dtype,
            cost: OnceLock::new(),
            policy: PolicyState::default(),
            limits: *options,
            kv_reserved: AtomicU64::new(0),
            shortlisted,
            batch_head,
        }))
    }
}

/// One throwaway token through every layer and the exit head, on the
/// engine's own threads as decoding runs, so that the first generation does
/// not pay for first-touch page faults, empty per-thread buffers and cold
/// caches (its first tokens took twice as long as the next session's).
/// llama.cpp warms a model up the same way.
fn warm_up<E: Engine>(engine: &E) {
    engine.enter(|| {
        let mut kv = engine.new_kv(1);
        let mut x = engine.embed(&[0]);
        for l in 0..engine.config().num_layers {
            engine.run_layer(l, &mut kv, 0, &mut x);
        }
        let mut logits = Vec::new();
        engine.head(&x, 0, &mut logits);
        engine.synchronize();
    });
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}

impl<E: Engine> Model<E> {
    /// The same model on an engine made from this one's: a wrapper that
    /// instruments it or changes how it answers (tests run the decode logic
    /// this way on an engine that behaves like a GPU's).
    pub fn map_engine<F: Engine>(self, wrap: impl FnOnce(E) -> F) -> Model<F> {
        Model {
            config: self.config,
            engine: wrap(self.engine),
            tokenizer: self.tokenizer,
            dir: self.dir,
            dtype: self.dtype,
            cost: self.cost,
            policy: self.policy,
            limits: self.limits,
            kv_reserved: self.kv_reserved,
            shortlisted: self.shortlisted,
            batch_head: self.batch_head,
        }
    }

    /// `f` with the head output that batched passes share (a fresh one while
    /// another pass of this model holds it). What a large pass left in it
    /// (a long prompt's every row) is not kept.
    pub(crate) fn with_batch_head<R>(&self, f: impl FnOnce(&mut HeadOutput) -> R) -> R {
        const KEEP_BYTES: usize = 32 << 20;
        let Some(mut shared) = self.batch_head.try_lock() else {
            return f(&mut HeadOutput::new(self.config.vocab_size));
        };
        let r = f(&mut shared);
        if shared.bytes_held() > KEEP_BYTES {
            *shared = HeadOutput::new(self.config.vocab_size);
        }
        r
    }

    /// Up to [`SESSION_DRAFT_TOKENS`] distinct tokens of `context` that the
    /// draft shortlist leaves out, the newest first, from its last
    /// [`SESSION_DRAFT_WINDOW`] positions: drafts score them too, so that a
    /// rare token the prompt or the text so far uses (a name, an
    /// identifier) can still be drafted. None without a shortlist.
    pub fn draft_extras(&self, context: &[u32]) -> Vec<u32> {
        let mut extra = Vec::new();
        if self.shortlisted.is_empty() {
            return extra;
        }
        for &t in context.iter().rev().take(SESSION_DRAFT_WINDOW) {
            // Ids past the vocabulary (never in a session) are skipped.
            if self.shortlisted.get(t as usize) == Some(&false) && !extra.contains(&t) {
                extra.push(t);
                if extra.len() == SESSION_DRAFT_TOKENS {
                    break;
                }
            }
        }
        extra
    }

    /// What automatic (E, d) has learnt from this model's sessions, shared
    /// by all of them (see [`PolicyState`]).
    pub fn policy_state(&self) -> &PolicyState {
        &self.policy
    }

    pub fn num_layers(&self) -> usize {
        self.config.num_layers
    }

    /// What a layer and the exit head cost on this engine, by row count
    /// (timed once, on first use, in a few milliseconds to ~a second).
    pub fn cost_model(&self) -> &CostModel {
        self.cost
            .get_or_init(|| CostModel::measure(&self.engine, &self.timing_extras()))
    }

    /// The tokens besides the shortlist that timing a draft head scores: as
    /// many as a session's own tokens can add ([`SESSION_DRAFT_TOKENS`]),
    /// the highest ids that the shortlist leaves out. None without a
    /// shortlist.
    pub fn timing_extras(&self) -> Vec<u32> {
        (0..self.shortlisted.len() as u32)
            .rev()
            .filter(|&t| !self.shortlisted[t as usize])
            .take(SESSION_DRAFT_TOKENS)
            .collect()
    }

    /// Use `cost` instead of timing this machine (e.g. costs measured once and
    /// stored by a serving process, or a what-if analysis). Fails once the
    /// cost model has been measured or set.
    pub fn set_cost_model(&self, cost: CostModel) -> Result<()> {
        let n = self.config.num_layers;
        if cost.n_layers != n {
            return Err(Error::invalid(format!(
                "a cost model of {} layers for a {n}-layer model",
                cost.n_layers
            )));
        }
        let tables = [&cost.layer, &cost.head, &cost.draft_head];
        if tables
            .iter()
            .any(|t| t.is_empty() || t.iter().any(|x| !x.is_finite() || *x < 0.0))
        {
            return Err(Error::invalid(
                "a cost model needs non-empty tables of finite, non-negative seconds",
            ));
        }
        self.cost
            .set(cost)
            .map_err(|_| Error::invalid("the cost model is already measured or set"))
    }

    /// The longest context a session may have.
    pub fn max_context(&self) -> usize {
        let max = self
            .config
            .max_position_embeddings
            .min(self.engine.max_positions());
        match self.limits.max_context {
            0 => max,
            n => n.min(max),
        }
    }

    pub fn limits(&self) -> LoadOptions {
        self.limits
    }

    /// KV-cache bytes reserved by open sessions now.
    pub fn kv_reserved_bytes(&self) -> u64 {
        self.kv_reserved.load(Ordering::Relaxed)
    }

    /// Reserve KV-cache memory for a session of `positions` positions.
    pub(crate) fn reserve_kv(&self, positions: usize) -> Result<u64> {
        let need = positions as u64 * self.engine.kv_bytes_per_position() as u64;
        let budget = self.limits.kv_budget_bytes;
        let mut cur = self.kv_reserved.load(Ordering::Relaxed);
        loop {
            if budget > 0 && cur.saturating_add(need) > budget {
                return Err(Error::new(
                    ErrorKind::ResourceLimit,
                    format!(
                        "KV-cache budget exceeded: a session of {positions} positions needs {}, \
                         open sessions hold {} of the model's {}",
                        human_bytes(need),
                        human_bytes(cur),
                        human_bytes(budget)
                    ),
                ));
            }
            match self.kv_reserved.compare_exchange_weak(
                cur,
                cur + need,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(need),
                Err(now) => cur = now,
            }
        }
    }

    pub(crate) fn release_kv(&self, bytes: u64) {
        self.kv_reserved.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Encode a prompt with the tokenizer's own special-token rules (e.g. BOS).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, true)
    }
}
