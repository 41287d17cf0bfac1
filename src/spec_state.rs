//! What speculation keeps about a session across its generations: life-time
//! counters (reported by `lsk_session_stats`) and the automatic (E, d)
//! policy's acceptance estimates. The session carries it so that it lives
//! exactly as long as the session and its cache; the session itself never
//! reads it.

use crate::adaptive::{AcceptanceTracker, SharedAcceptance};
use std::sync::Arc;

/// Counters kept per session.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SpecStats {
    pub drafted: u64,
    pub accepted: u64,
    pub rounds: u64,
    pub draft_seconds: f64,
    pub verify_seconds: f64,
}

pub struct SpecState {
    pub stats: SpecStats,
    /// The full model's greedy tokens of the last verify pass (first
    /// position, tokens), kept while probing.
    pub(crate) verified: (usize, Vec<u32>),
    /// Acceptance estimates per exit layer.
    pub(crate) acceptance: AcceptanceTracker,
}

impl SpecState {
    /// Fresh state for a model of `layers` layers whose sessions share `shared`.
    pub fn new(layers: usize, shared: Arc<SharedAcceptance>) -> Self {
        SpecState {
            stats: SpecStats::default(),
            verified: (0, Vec::new()),
            acceptance: AcceptanceTracker::with_shared(layers, shared),
        }
    }
}
