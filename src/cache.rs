//! The shared-activation KV cache: one K/V store per layer with its own length
//! (the frontiers), plus the exit activations of positions that shallow layers
//! have processed and deeper layers have not.
//!
//! Invariant: `lens` never increases with depth, and for every layer `b >= 1`
//! with `lens[b] < lens[b-1]`, `pending[b]` holds the hidden states that left
//! layer `b-1` for positions `lens[b]..lens[b-1]`, in order.

use crate::engine::{Engine, Rows};

pub struct KvCache<E: Engine> {
    pub(crate) kv: E::Kv,
    lens: Vec<usize>,
    pending: Vec<Option<E::Acts>>,
}

impl<E: Engine> KvCache<E> {
    pub fn new(engine: &E, capacity: usize) -> Self {
        let n = engine.config().num_layers;
        KvCache {
            kv: engine.new_kv(capacity),
            lens: vec![0; n],
            pending: (0..=n).map(|_| None).collect(),
        }
    }

    /// Positions held by each layer.
    pub fn layer_lens(&self) -> &[usize] {
        &self.lens
    }

    /// Rows waiting at the boundary before `layer` (the exit activations of exit `layer`).
    pub fn pending_rows(&self, layer: usize) -> usize {
        self.pending[layer].as_ref().map_or(0, Rows::rows)
    }

    pub(crate) fn take_pending(&mut self, layer: usize) -> Option<E::Acts> {
        self.pending[layer].take()
    }

    pub(crate) fn pending(&self, layer: usize) -> Option<&E::Acts> {
        self.pending[layer].as_ref()
    }

    pub(crate) fn push_pending(&mut self, layer: usize, rows: E::Acts) {
        match &mut self.pending[layer] {
            Some(p) => p.append(rows),
            slot @ None => *slot = Some(rows),
        }
    }

    pub(crate) fn grow(&mut self, layer: usize, rows: usize) {
        self.lens[layer] += rows;
    }

    /// Forget every position `>= len` in every layer and in the exit
    /// activations. A length change: nothing is copied.
    pub fn truncate(&mut self, engine: &E, len: usize) {
        for b in (1..self.lens.len()).rev() {
            let (lo, hi) = (self.lens[b], self.lens[b - 1]);
            let keep = hi.min(len).saturating_sub(lo);
            if keep == 0 {
                self.pending[b] = None;
            } else if let Some(p) = &mut self.pending[b] {
                p.truncate(keep);
            }
        }
        for (l, n) in self.lens.iter_mut().enumerate() {
            if *n > len {
                *n = len;
                engine.truncate_kv(&mut self.kv, l, len);
            }
        }
    }
}
