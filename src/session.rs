//! A decoding session: one model, one shared-activation KV cache, and the
//! operations every decoding mode is built from.

use crate::cache::KvCache;
use crate::engine::cpu::CpuEngine;
use crate::engine::{Engine, Rows};
use crate::error::{Error, ErrorKind, Result};
use crate::model::Model;
use std::sync::Arc;

/// Which rows of a forward pass get logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the newest position.
    Last,
    /// Every position that left the exit layer's boundary in this pass
    /// (for the full model: every position the deep layers just caught up on).
    All,
    /// No logits.
    None,
    /// The newest `n` positions (fewer if the pass has fewer rows).
    Tail(usize),
}

/// The greedy token an intermediate exit predicted for one position during a
/// pass (see [`Session::set_probes`]): the argmax of the exit head on the
/// hidden state that left layer `exit - 1` at position `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub exit: usize,
    pub pos: usize,
    pub token: u32,
}

pub struct Session<E: Engine = CpuEngine> {
    model: Arc<Model<E>>,
    cache: KvCache<E>,
    /// Token ids at positions `0..shallow_len()`.
    tokens: Vec<u32>,
    capacity: usize,
    logits: Vec<f32>,
    logits_pos0: usize,
    /// Rows each layer has processed in this session (for "nothing recomputed" checks).
    layer_rows: Vec<u64>,
    pub(crate) spec: crate::speculative::SpecStats,
    /// Exits probed on the rows passing them, at most `probe_rows` newest rows per pass.
    probe_exits: Vec<usize>,
    probe_rows: usize,
    probes: Vec<Probe>,
    probe_logits: Vec<f32>,
    /// The full model's greedy tokens of the last verify pass (first position,
    /// tokens), kept while probing.
    pub(crate) verified: (usize, Vec<u32>),
    /// Acceptance estimates per exit layer, kept across generations.
    pub(crate) acceptance: crate::adaptive::AcceptanceTracker,
    /// KV-cache bytes reserved against the model's budget.
    kv_reserved: u64,
}

impl<E: Engine> Drop for Session<E> {
    fn drop(&mut self) {
        self.model.release_kv(self.kv_reserved);
    }
}

/// Exit-head logits for the rows of `x` that `which` selects (`x`'s first row
/// is at position `pos0`); returns the position of the first logit row.
fn head_rows<E: Engine>(
    engine: &E,
    x: &E::Acts,
    pos0: usize,
    which: Logits,
    out: &mut Vec<f32>,
) -> usize {
    let rows = x.rows();
    let from = match which {
        Logits::None => {
            out.clear();
            return pos0 + rows;
        }
        Logits::Last => rows.saturating_sub(1),
        Logits::Tail(n) => rows.saturating_sub(n),
        Logits::All => 0,
    };
    if from == rows {
        out.clear();
    } else {
        engine.head(x, from, out);
    }
    pos0 + from
}

impl<E: Engine> Session<E> {
    /// A session whose context holds at most `capacity` positions (0 = the
    /// model's maximum context). Its KV-cache memory is reserved against the
    /// model's budget ([`crate::LoadOptions`]) until it is dropped.
    pub fn new(model: Arc<Model<E>>, capacity: usize) -> Result<Self> {
        let model_max = model.config.max_position_embeddings;
        if capacity > model_max {
            return Err(Error::invalid(format!(
                "context length {capacity} exceeds the model's max_position_embeddings ({model_max})"
            )));
        }
        let max = model.max_context();
        if capacity > max {
            return Err(Error::new(
                ErrorKind::ResourceLimit,
                format!(
                    "context length {capacity} exceeds the maximum context per session set when the model was loaded ({max})"
                ),
            ));
        }
        let capacity = if capacity == 0 { max } else { capacity };
        let kv_reserved = model.reserve_kv(capacity)?;
        let cache = KvCache::new(&model.engine, capacity);
        let n = model.config.num_layers;
        Ok(Session {
            model,
            cache,
            tokens: Vec::new(),
            capacity,
            logits: Vec::new(),
            logits_pos0: 0,
            layer_rows: vec![0; n],
            spec: Default::default(),
            probe_exits: Vec::new(),
            probe_rows: 0,
            probes: Vec::new(),
            probe_logits: Vec::new(),
            verified: (0, Vec::new()),
            acceptance: crate::adaptive::AcceptanceTracker::new(n),
            kv_reserved,
        })
    }

    pub fn model(&self) -> &Arc<Model<E>> {
        &self.model
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Positions the first layer holds (the shallow frontier).
    pub fn shallow_len(&self) -> usize {
        self.cache.layer_lens()[0]
    }
    /// Positions the last layer holds (the deep frontier).
    pub fn deep_len(&self) -> usize {
        *self.cache.layer_lens().last().unwrap()
    }
    pub fn layer_lens(&self) -> &[usize] {
        self.cache.layer_lens()
    }
    /// Exit activations waiting before layer `exit`.
    pub fn pending_rows(&self, exit: usize) -> usize {
        self.cache.pending_rows(exit)
    }
    /// Cached token ids (positions `0..shallow_len()`).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
    pub fn layer_rows(&self) -> &[u64] {
        &self.layer_rows
    }
    pub fn kv(&self) -> &E::Kv {
        &self.cache.kv
    }

    /// Logits of the last forward pass: `rows x vocab`, the first row at
    /// position [`Session::logits_pos0`].
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
    pub fn logits_pos0(&self) -> usize {
        self.logits_pos0
    }
    pub fn logits_rows(&self) -> usize {
        self.logits.len() / self.model.config.vocab_size
    }
    /// Logits of the newest row.
    pub fn last_logits(&self) -> &[f32] {
        let v = self.model.config.vocab_size;
        &self.logits[self.logits.len().saturating_sub(v)..]
    }

    /// Validate arguments of a forward pass before anything changes.
    fn check(&self, tokens: &[u32], exit: usize) -> Result<()> {
        let cfg = &self.model.config;
        if exit == 0 || exit > cfg.num_layers {
            return Err(Error::invalid(format!(
                "exit layer {exit} is out of range (1..={} for this {}-layer model)",
                cfg.num_layers, cfg.num_layers
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(Error::invalid(format!(
                "token id {bad} is out of range (vocab_size {})",
                cfg.vocab_size
            )));
        }
        let need = self.shallow_len() + tokens.len();
        if need > self.capacity {
            return Err(Error::new(
                ErrorKind::ContextOverflow,
                format!(
                    "context overflow: {} cached + {} new positions exceed the context length {}",
                    self.shallow_len(),
                    tokens.len(),
                    self.capacity
                ),
            ));
        }
        Ok(())
    }

    /// Append `tokens` and run layers `0..exit` so that every layer below
    /// `exit` holds every position. Layers that lag behind first catch up on
    /// their exit activations, in the same batch as the new rows, so no layer
    /// ever processes a position twice. With `exit == num_layers` this is a
    /// full-depth pass; below it, the new rows' outputs join the exit
    /// activations of `exit`. Logits come from the exit head.
    ///
    /// Returns the number of logit rows. On error nothing changes.
    pub fn forward(&mut self, tokens: &[u32], exit: usize, which: Logits) -> Result<usize> {
        self.check(tokens, exit)?;
        let engine = &self.model.engine;
        let n_layers = self.model.config.num_layers;
        let mut x = engine.embed(tokens);
        self.tokens.extend_from_slice(tokens);
        for l in 0..exit {
            if l > 0 {
                if let Some(mut lagging) = self.cache.take_pending(l) {
                    lagging.append(x);
                    x = lagging;
                }
            }
            let rows = x.rows();
            if rows == 0 {
                continue;
            }
            let pos0 = self.cache.layer_lens()[l];
            engine.run_layer(l, &mut self.cache.kv, pos0, &mut x);
            self.cache.grow(l, rows);
            self.layer_rows[l] += rows as u64;
            if self.probe_exits.contains(&(l + 1)) && l + 1 < n_layers {
                let from = rows.saturating_sub(self.probe_rows);
                engine.head(&x, from, &mut self.probe_logits);
                let vocab = self.model.config.vocab_size;
                for (i, row) in self.probe_logits.chunks_exact(vocab).enumerate() {
                    self.probes.push(Probe {
                        exit: l + 1,
                        pos: pos0 + from + i,
                        token: crate::sampling::argmax(row),
                    });
                }
            }
        }
        // Rows leaving layer exit-1 for positions lens[exit].. (or the rows the
        // last layer just produced, for a full-depth pass).
        let (out, pos0) = if exit < n_layers {
            if x.rows() > 0 {
                self.cache.push_pending(exit, x);
            }
            match self.cache.pending(exit) {
                Some(p) => (p, self.cache.layer_lens()[exit]),
                None => return Ok(self.set_logits(Vec::new(), 0)),
            }
        } else {
            let pos0 = self.cache.layer_lens()[exit - 1] - x.rows();
            let mut logits = std::mem::take(&mut self.logits);
            let p = head_rows(engine, &x, pos0, which, &mut logits);
            return Ok(self.set_logits(logits, p));
        };
        let mut logits = std::mem::take(&mut self.logits);
        let p = head_rows(engine, out, pos0, which, &mut logits);
        Ok(self.set_logits(logits, p))
    }

    fn set_logits(&mut self, logits: Vec<f32>, pos0: usize) -> usize {
        self.logits = logits;
        self.logits_pos0 = pos0;
        self.logits_rows()
    }

    /// Probe `exits` (each below the last layer) in the following passes: the
    /// exit head runs on at most `max_rows` of the newest rows that leave each
    /// of them, and their greedy tokens are collected for
    /// [`Session::take_probes`]. Probing costs exit-head time and changes
    /// nothing else. An empty list stops probing.
    pub fn set_probes(&mut self, exits: &[usize], max_rows: usize) {
        self.probe_exits.clear();
        self.probe_exits.extend_from_slice(exits);
        self.probe_rows = max_rows;
    }

    pub fn probing(&self) -> bool {
        !self.probe_exits.is_empty()
    }

    /// Probe results collected since the last call.
    pub fn take_probes(&mut self) -> Vec<Probe> {
        std::mem::take(&mut self.probes)
    }

    /// Feed tokens at full depth (prompt processing); logits of the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.forward(tokens, self.model.config.num_layers, Logits::Last)?;
        Ok(self.last_logits())
    }

    /// One token through layers `0..exit` (`exit == num_layers` is full depth);
    /// returns the next-token logits from that exit.
    pub fn step(&mut self, token: u32, exit: usize) -> Result<&[f32]> {
        self.forward(&[token], exit, Logits::Last)?;
        Ok(self.last_logits())
    }

    /// Let every layer catch up on the pending exit activations (no new token).
    pub fn catch_up(&mut self) -> Result<()> {
        self.forward(&[], self.model.config.num_layers, Logits::None)
            .map(|_| ())
    }

    /// Keep only the first `len` positions of every layer.
    pub fn rewind(&mut self, len: usize) -> Result<()> {
        if len > self.shallow_len() {
            return Err(Error::invalid(format!(
                "cannot rewind to {len}: the session holds only {} positions",
                self.shallow_len()
            )));
        }
        self.cache.truncate(&self.model.engine, len);
        self.tokens.truncate(len);
        self.logits.clear();
        Ok(())
    }
}
