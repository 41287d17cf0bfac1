//! A loaded model: config + weights on an engine + tokenizer. Immutable and
//! shared (`Arc`) by any number of sessions on any threads.

use crate::adaptive::CostModel;
use crate::config::ModelConfig;
use crate::engine::backend::{Backend, Device};
use crate::engine::cpu::CpuEngine;
use crate::engine::cuda::CudaEngine;
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::tokenizer::Tokenizer;
use crate::weights::{DType, WeightStore};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// How weights are held for compute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Quantize {
    /// As stored (f32, bf16 or f16).
    #[default]
    None,
    /// Weight-only int8, symmetric per output channel (activations stay f32).
    /// Embeddings are looked up from the checkpoint as stored.
    Int8,
    /// bf16 matrix products: weights in bf16 (f32/f16 checkpoints are
    /// rounded), each product's input rows rounded to bf16, products summed
    /// in f32 (llama.cpp's bf16 arithmetic). Multi-row products (verify,
    /// batches) run about twice as fast on CPUs with AVX512_BF16; elsewhere
    /// FMAs give the same bits at about the speed of f32 products. Norms,
    /// attention and the residual stream stay f32.
    Bf16,
}

/// How the K/V cache stores its elements (the CPU engine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// f32: the reference.
    #[default]
    F32,
    /// bf16, rounded to nearest even as K and V are computed (transformers
    /// keeps a bf16 model's cache the same way): half the memory per
    /// position, so twice the context or sessions in a KV budget, and half
    /// the bytes attention reads at long contexts. Attention arithmetic
    /// stays f32.
    Bf16,
}

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
}

pub struct Model<E: Engine = Backend> {
    pub config: ModelConfig,
    pub engine: E,
    pub tokenizer: Tokenizer,
    pub dir: PathBuf,
    /// The dtype most weights are stored in.
    pub dtype: DType,
    /// Layer and exit-head timings for automatic (E, d), measured on first use.
    cost: OnceLock<CostModel>,
    /// What automatic (E, d) has measured against its predictions, shared
    /// by every session of this model.
    pub(crate) corrections: Arc<crate::adaptive::Corrections>,
    /// Exit agreement seen by automatic (E, d) in all sessions: where a new
    /// session's estimates start.
    pub(crate) acceptance: Arc<crate::adaptive::SharedAcceptance>,
    limits: LoadOptions,
    /// KV-cache bytes reserved by open sessions.
    kv_reserved: AtomicU64,
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
            return Err(Error::new(
                ErrorKind::Io,
                format!("{}: model directory not found", dir.display()),
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
        let engine = match options.device {
            Device::Cpu => Backend::Cpu(CpuEngine::load(
                &config,
                &store,
                options.quantize,
                options.kv_dtype,
            )?),
            Device::Cuda(ordinal) => {
                if options.quantize != Quantize::None {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        "the CUDA engine keeps weights in their stored dtype; --quantize is CPU-only",
                    ));
                }
                if options.kv_dtype != KvDtype::F32 {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        "the CUDA engine keeps its K/V cache in f32; --kv-dtype is CPU-only",
                    ));
                }
                Backend::Cuda(CudaEngine::load(&config, &store, ordinal)?)
            }
        };
        warm_up(&engine);
        Ok(Arc::new(Model {
            config,
            engine,
            tokenizer,
            dir: dir.to_path_buf(),
            dtype,
            cost: OnceLock::new(),
            corrections: Arc::default(),
            acceptance: Arc::default(),
            limits: *options,
            kv_reserved: AtomicU64::new(0),
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
            corrections: self.corrections,
            acceptance: self.acceptance,
            limits: self.limits,
            kv_reserved: self.kv_reserved,
        }
    }

    pub fn num_layers(&self) -> usize {
        self.config.num_layers
    }

    /// What a layer and the exit head cost on this engine, by row count
    /// (timed once, on first use, in a few milliseconds to ~a second).
    pub fn cost_model(&self) -> &CostModel {
        self.cost.get_or_init(|| CostModel::measure(&self.engine))
    }

    /// The longest context a session may have.
    /// Use `cost` instead of timing this machine (e.g. costs measured once and
    /// stored by a serving process, or a what-if analysis). Fails once the
    /// cost model has been measured or set.
    pub fn set_cost_model(&self, cost: CostModel) -> Result<()> {
        self.cost
            .set(cost)
            .map_err(|_| Error::invalid("the cost model is already measured or set"))
    }

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

    pub fn is_eos(&self, id: u32) -> bool {
        self.config.eos_token_ids.contains(&id)
    }

    /// Encode a prompt with the tokenizer's own special-token rules (e.g. BOS).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, true)
    }
}
