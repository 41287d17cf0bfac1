//! The device boundary. Everything above this module (frontiers, sessions,
//! speculation, generation) is written once against [`Engine`]; only the
//! engines know where tensors live.

pub mod cpu;
pub mod rope;

use crate::config::ModelConfig;

/// Rows of hidden states (one row per position), wherever an engine keeps them.
pub trait Rows: Send + Sized {
    fn rows(&self) -> usize;
    /// Append `other`'s rows after this one's.
    fn append(&mut self, other: Self);
    /// Keep only the first `rows` rows.
    fn truncate(&mut self, rows: usize);
}

/// A compute backend for one loaded model. Implementations must be
/// batch-invariant: a row's outputs may not depend on which other rows were
/// computed in the same call.
pub trait Engine: Send + Sync + 'static {
    /// Hidden states, `rows x hidden_size`.
    type Acts: Rows;
    /// One session's K/V storage for every layer.
    type Kv: Send;

    fn config(&self) -> &ModelConfig;
    /// Bytes of K/V storage one position takes in every layer.
    fn kv_bytes_per_position(&self) -> usize;
    /// Empty K/V storage; it grows on demand up to `capacity` positions.
    fn new_kv(&self, capacity: usize) -> Self::Kv;
    /// Forget positions `len..` of `layer` (a length change, not a copy).
    fn truncate_kv(&self, kv: &mut Self::Kv, layer: usize, len: usize);
    /// Token embeddings. Ids must already be validated against the vocabulary.
    fn embed(&self, tokens: &[u32]) -> Self::Acts;
    /// Run decoder layer `layer` on `x` (positions `pos0..pos0+rows`), appending
    /// their K/V to that layer's cache (which must hold exactly `pos0` positions).
    fn run_layer(&self, layer: usize, kv: &mut Self::Kv, pos0: usize, x: &mut Self::Acts);
    /// Exit head (final norm + LM head) on rows `from..` of `x`; writes
    /// `(rows - from) x vocab` logits into `out`.
    fn head(&self, x: &Self::Acts, from: usize, out: &mut Vec<f32>);
}
