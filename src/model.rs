//! A loaded model: config + weights on an engine + tokenizer. Immutable and
//! shared (`Arc`) by any number of sessions on any threads.

use crate::adaptive::CostModel;
use crate::config::ModelConfig;
use crate::engine::cpu::CpuEngine;
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::tokenizer::Tokenizer;
use crate::weights::{DType, WeightStore};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub struct Model<E: Engine = CpuEngine> {
    pub config: ModelConfig,
    pub engine: E,
    pub tokenizer: Tokenizer,
    pub dir: PathBuf,
    /// The dtype most weights are stored in.
    pub dtype: DType,
    /// Layer and exit-head timings for automatic (E, d), measured on first use.
    cost: OnceLock<CostModel>,
}

impl Model<CpuEngine> {
    /// Load a Hugging Face Llama checkpoint directory onto the CPU engine.
    pub fn load(dir: impl AsRef<Path>) -> Result<Arc<Self>> {
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
        let engine = CpuEngine::load(&config, &store)?;
        Ok(Arc::new(Model {
            config,
            engine,
            tokenizer,
            dir: dir.to_path_buf(),
            dtype,
            cost: OnceLock::new(),
        }))
    }
}

impl<E: Engine> Model<E> {
    pub fn num_layers(&self) -> usize {
        self.config.num_layers
    }

    /// What a layer and the exit head cost on this engine, by row count
    /// (timed once, on first use, in a few milliseconds to ~a second).
    pub fn cost_model(&self) -> &CostModel {
        self.cost.get_or_init(|| CostModel::measure(&self.engine))
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.config.eos_token_ids.contains(&id)
    }

    /// Encode a prompt with the tokenizer's own special-token rules (e.g. BOS).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, true)
    }
}
