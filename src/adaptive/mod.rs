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

pub use acceptance::{AcceptanceTracker, Probe, SharedAcceptance, BINS};
pub use correction::Corrections;
pub use cost::{CostModel, RoundTiming};
pub use policy::{Choice, Policy};

use std::sync::Arc;

/// What automatic (E, d) learns from a model's sessions and shares among
/// them: corrections of the cost model's predictions per (E, d), and the
/// per-exit agreement and confidence calibration that a new session starts
/// from. Sharing is deliberate: a session predicts well from its first round
/// instead of after a few dozen. A server whose tenants use the model for
/// unlike text can [`PolicyState::reset`] it, or keep one model per tenant.
#[derive(Debug, Default)]
pub struct PolicyState {
    pub(crate) corrections: Arc<Corrections>,
    pub(crate) acceptance: Arc<SharedAcceptance>,
}

impl PolicyState {
    /// Forget everything learnt; sessions open now keep their own estimates.
    pub fn reset(&self) {
        self.corrections.reset();
        self.acceptance.reset();
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_forgets_what_the_sessions_taught() {
        let state = PolicyState::default();
        let c = Choice {
            exit: 2,
            draft_len: 3,
        };
        for _ in 0..8 {
            state.corrections.observe(c, 2.0, 1.0, 3.0, 1.0);
        }
        let mut session = AcceptanceTracker::with_shared(4, state.acceptance.clone());
        for _ in 0..20 {
            session.observe(2, true);
        }
        assert!(state.acceptance.rate(2).is_some());
        assert!(state.corrections.snapshot().measured(c));
        state.reset();
        assert_eq!(state.acceptance.rate(2), None);
        assert!(!state.corrections.snapshot().measured(c));
        assert_eq!(state.corrections.factor(c), 1.0);
    }
}
