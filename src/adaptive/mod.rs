//! Automatic exit layer and draft length: pick (E, d) for every
//! self-speculative round from a measured cost model and online acceptance
//! estimates, falling back to full depth when no choice is predicted to win.
//!
//! - [`cost`]: per-layer and exit-head time by row count, measured once per
//!   model and engine.
//! - [`acceptance`]: per-exit agreement with the full model, updated from every
//!   verify and from cheap probes of other exits, starting from what the
//!   model's earlier sessions saw.
//! - [`correction`]: measured over predicted speed per (E, d), shared by all
//!   sessions of a model.
//! - [`policy`]: the expected tokens per second of each (E, d), the choice, and
//!   which exit to probe next within a time budget.

pub mod acceptance;
pub mod correction;
pub mod cost;
pub mod policy;

pub use acceptance::{AcceptanceTracker, SharedAcceptance, BINS};
pub use correction::Corrections;
pub use cost::{CostModel, RoundTiming};
pub use policy::{Choice, Policy};

/// Longest draft the automatic policy considers.
pub const MAX_DRAFT: usize = 8;

/// What the caller fixes and what is chosen automatically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AutoSpec {
    /// Exit layer E; `None` = automatic.
    pub exit: Option<usize>,
    /// Draft length d; `None` = automatic (up to [`MAX_DRAFT`], and drafting
    /// stops early when the drafts' confidence says the next one is unlikely
    /// to be accepted).
    pub draft_len: Option<usize>,
}
