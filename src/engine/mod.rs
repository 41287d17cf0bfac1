//! The device boundary. Everything above this module (frontiers, sessions,
//! speculation, generation) is written once against [`Engine`]; only the
//! engines know where tensors live.

pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod head_output;
pub mod llama;
pub mod options;
pub mod rope;

use crate::config::ModelConfig;
pub use head_output::HeadOutput;

/// Rows of hidden states (one row per position), wherever an engine keeps them.
pub trait Rows: Send + Sized {
    fn rows(&self) -> usize;
    /// Append `other`'s rows after this one's.
    fn append(&mut self, other: Self);
    /// Keep only the first `rows` rows.
    fn truncate(&mut self, rows: usize);
    /// Split off rows `at..` (this keeps `..at`).
    fn split_off(&mut self, at: usize) -> Self;
    /// A copy of rows `from..`.
    fn tail(&self, from: usize) -> Self;
}

/// One session's part of a batched layer call: its K/V storage, the position
/// of its first row, and how many consecutive rows of the batch are its own.
pub struct Segment<'a, K> {
    pub kv: &'a mut K,
    pub pos0: usize,
    pub rows: usize,
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
    /// Layer `layer`'s first `len` K and V rows (`len x kv_dim` each), on the
    /// host: for tests and inspection, not the decode path.
    fn read_kv(&self, kv: &Self::Kv, layer: usize, len: usize) -> (Vec<f32>, Vec<f32>);
    /// Token embeddings. Ids must already be validated against the vocabulary.
    fn embed(&self, tokens: &[u32]) -> Self::Acts;
    /// Run decoder layer `layer` on `x`, whose rows belong to `segments` in
    /// order: each segment's rows are positions `pos0..pos0+rows` of its own
    /// session, attend only to that session's cache (which must hold exactly
    /// `pos0` positions) and append their K/V to it. A row's result does not
    /// depend on the other rows of the batch.
    fn run_layer_batch(
        &self,
        layer: usize,
        segments: &mut [Segment<'_, Self::Kv>],
        x: &mut Self::Acts,
    );
    /// [`Engine::run_layer_batch`] for one session.
    fn run_layer(&self, layer: usize, kv: &mut Self::Kv, pos0: usize, x: &mut Self::Acts) {
        let rows = x.rows();
        self.run_layer_batch(layer, &mut [Segment { kv, pos0, rows }], x);
    }
    /// Exit head (final norm + LM head) on rows `from..` of `x`: sizes
    /// `out` to `(rows - from) x vocab` and writes every logit (it may hold
    /// an earlier pass's).
    fn head(&self, x: &Self::Acts, from: usize, out: &mut Vec<f32>);
    /// The exit head on rows `from..` when only each row's token is needed,
    /// chosen by `rules[i]` (one per row; a sampled row's uniform is drawn
    /// already): fills `out` with the rows' logits, each row's
    /// [`crate::sampling::Pick`] under its rule, or both. A GPU engine
    /// hands back picks alone, computed where the logits are, so that only
    /// ids and a probability cross to the host; the CPU engine keeps the
    /// logits and adds picks where the rows are many enough to pick on all
    /// its threads. Where there are no picks, [`HeadOutput::chosen`]
    /// applies the rules to the logits.
    fn head_pick(
        &self,
        x: &Self::Acts,
        from: usize,
        rules: &[crate::sampling::PickRule],
        out: &mut HeadOutput,
    ) {
        let _ = rules;
        out.fill_logits(|logits| self.head(x, from, logits));
    }
    /// Give the draft head ([`Engine::draft_head`]) only the tokens `ids`
    /// (a shortlist of frequent tokens): in drafts, every other token's logit
    /// is -inf. Returns false when this engine has no draft head of its own
    /// (drafts then use the full exit head).
    fn set_draft_shortlist(&mut self, ids: &[u32]) -> crate::error::Result<bool> {
        let _ = ids;
        Ok(false)
    }
    /// The exit head of draft passes: [`Engine::head`] restricted to the
    /// draft shortlist, if one is set, and for the `i`-th row (of rows
    /// `from..`) to the tokens `extra[i]` as well (a session's own tokens
    /// that the shortlist leaves out; rows past the end of `extra`: none).
    /// Rows are `vocab` wide either way.
    fn draft_head(&self, x: &Self::Acts, from: usize, extra: &[&[u32]], out: &mut Vec<f32>) {
        let _ = extra;
        self.head(x, from, out)
    }
    /// [`Engine::head_pick`] through the draft head.
    fn draft_head_pick(
        &self,
        x: &Self::Acts,
        from: usize,
        extra: &[&[u32]],
        rules: &[crate::sampling::PickRule],
        out: &mut HeadOutput,
    ) {
        let _ = extra;
        self.head_pick(x, from, rules, out)
    }
    /// Bytes of weights one full-depth decode step reads (every layer's
    /// matrices and the LM head): the numerator of a roofline.
    fn weight_bytes_per_token(&self) -> usize;
    /// Waits until all work issued so far has finished (a GPU engine's
    /// launches return before their kernels run). For timing.
    fn synchronize(&self) {}
    /// Memory bandwidth in GB/s as measured on this machine, for rooflines.
    fn memory_bandwidth(&self) -> f64;
    /// The kernels in use (for reports).
    fn kernel_name(&self) -> String;
    /// Longest context the engine's kernels handle (sessions are capped there).
    fn max_positions(&self) -> usize {
        usize::MAX
    }
    /// Run `f` where this engine's parallel work is cheapest to start (the
    /// CPU engine: on one of its worker threads, so the caller's thread does
    /// not compete with the workers for cores).
    fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }
}
