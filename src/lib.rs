//! LayerSkip early-exit inference and self-speculative decoding for Hugging
//! Face Llama checkpoints.
//!
//! Data flows one way: files → [`Model`] → [`engine`] → [`Session`] →
//! [`generate`]. The decode logic is written once against [`engine::Engine`].

pub mod adaptive;
pub mod cache;
pub mod config;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod generate;
pub mod model;
pub mod sampling;
pub mod session;
pub mod softmax;
pub mod spec_state;
pub mod speculative;
pub mod tokenizer;
pub mod weights;

pub use adaptive::{AutoSpec, PolicyState, Probe};
pub use config::{ModelConfig, RopeScaling};
pub use engine::options::{Device, EngineOptions, KvDtype, Quantize};
pub use error::{Error, ErrorKind, Result};
pub use generate::{
    generate, step_all, ChoiceSpan, GenerateOptions, GenerateOutput, GenerateStats, Generation,
    Mode, ModeKind, OnToken, Setting, StopReason,
};
pub use model::{LoadOptions, Model};
pub use sampling::SamplingParams;
pub use session::{forward_batch, BatchItem, Logits, Session};
