//! LayerSkip early-exit inference and self-speculative decoding for Hugging
//! Face Llama checkpoints.
//!
//! Modules depend on each other one way (`docs/design.md` draws the map):
//! files are loaded onto an [`engine`] by [`Model`]; a [`Session`] runs
//! passes over its cache; [`speculative`] drafts and verifies on a session;
//! [`generate`] schedules generations. The decode logic is written once
//! against [`engine::Engine`].

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
pub mod shortlist;
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
    generate, round_all, step_all, ChoiceSpan, GenerateOptions, GenerateOutput, GenerateStats,
    Generation, Mode, ModeKind, OnToken, RoundOptions, RoundOutcome, RoundRequest, RoundState,
    Setting, StopReason,
};
pub use model::{LoadOptions, Model};
pub use sampling::SamplingParams;
pub use session::{forward_batch, BatchItem, Logits, Session};
