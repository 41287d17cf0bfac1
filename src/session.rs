//! A decoding session: one model, one shared-activation KV cache, and the
//! operations every decoding mode is built from.

use crate::adaptive::Probe;
use crate::cache::KvCache;
use crate::engine::backend::Backend;
use crate::engine::{Engine, HeadOutput, Rows, Segment};
use crate::error::{Error, ErrorKind, Result};
use crate::model::Model;
use crate::sampling::PickRule;
use crate::spec_state::{SpecState, SpecStats};
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
    /// The newest position, from the draft head (the exit head restricted
    /// to the model's draft shortlist, when it has one): drafting.
    Draft,
}

pub struct Session<E: Engine = Backend> {
    model: Arc<Model<E>>,
    cache: KvCache<E>,
    /// Token ids at positions `0..shallow_len()`.
    tokens: Vec<u32>,
    /// Positions `0..context` are the context; the shallow layers' positions
    /// past it are drafts awaiting verification ([`Session::drafts_held`]).
    context: usize,
    capacity: usize,
    /// The exit head's output of the last pass.
    head: HeadOutput,
    /// Rows each layer has processed in this session (for "nothing recomputed" checks).
    layer_rows: Vec<u64>,
    /// Speculation's per-session state (the session never reads it).
    spec: SpecState,
    /// Exits probed on the rows passing them, at most `probe_rows` newest rows per pass.
    probe_exits: Vec<usize>,
    probe_rows: usize,
    probes: Vec<Probe>,
    probe_out: HeadOutput,
    /// KV-cache bytes reserved against the model's budget.
    kv_reserved: u64,
    /// Asked between layers; `true` stops the pass ([`Session::set_abort`]).
    abort: Option<AbortFn>,
}

/// A session's abort check: `true` stops the pass in progress.
pub type AbortFn = Box<dyn Fn() -> bool + Send>;

impl<E: Engine> Drop for Session<E> {
    fn drop(&mut self) {
        self.model.release_kv(self.kv_reserved);
    }
}

/// The first of `rows` rows that `which` selects for logits (`rows` = none).
fn head_from(rows: usize, which: Logits) -> usize {
    match which {
        Logits::None => rows,
        Logits::Last | Logits::Draft => rows.saturating_sub(1),
        Logits::Tail(n) => rows.saturating_sub(n),
        Logits::All => 0,
    }
}

/// One session's part of [`forward_batch`]: what [`Session::forward`] takes.
pub struct BatchItem<'a, E: Engine = Backend> {
    pub session: &'a mut Session<E>,
    pub tokens: &'a [u32],
    pub exit: usize,
    pub logits: Logits,
    /// Set when only the selected rows' tokens are needed (not their
    /// logits): how the newest one's is chosen (the others greedily). The
    /// session may then get each row's [`crate::sampling::Pick`] instead
    /// of its logits ([`Engine::head_pick`]): from a GPU engine, and in a
    /// batch whose head pass the CPU engine picked on its threads.
    pub pick: Option<PickRule>,
}

/// Where a session's logit rows come from after the layers.
enum HeadSource<A> {
    /// The exit activations waiting at its exit layer.
    Pending,
    /// The rows the last layer just produced.
    Output(A),
}

/// [`Session::forward`] for several sessions of one model at once: every
/// layer runs once over the rows of all sessions that go through it (each
/// row attending to its own session's cache), and the exit head runs once
/// over every session's logit rows. Sessions may have different exits and
/// lagging layers. Kernels are batch-invariant, so each session's results are
/// bit-identical to running it alone. A session whose arguments are invalid
/// gets its error and is left unchanged; the others proceed.
pub fn forward_batch<E: Engine>(items: &mut [BatchItem<'_, E>]) -> Vec<Result<usize>> {
    let Some(model) = items.first().map(|it| it.session.model.clone()) else {
        return Vec::new();
    };
    model.engine.enter(|| forward_batch_in(items, &model))
}

fn forward_batch_in<E: Engine>(
    items: &mut [BatchItem<'_, E>],
    model: &Arc<Model<E>>,
) -> Vec<Result<usize>> {
    let engine = &model.engine;
    let n_layers = model.config.num_layers;
    let mut results: Vec<Result<usize>> = items
        .iter_mut()
        .map(|it| {
            if !Arc::ptr_eq(&it.session.model, model) {
                return Err(Error::invalid(
                    "all sessions of a batch must share one model",
                ));
            }
            // Any pass but a draft pass extends the context, so drafts that
            // were never verified go first (a failed or abandoned round's).
            let drafting = it.logits == Logits::Draft;
            let s = &mut *it.session;
            let held = if drafting { s.shallow_len() } else { s.context };
            s.check(it.tokens, it.exit, held)?;
            if !drafting {
                s.drop_drafts();
            }
            Ok(0)
        })
        .collect();
    let start_lens: Vec<usize> = items.iter().map(|it| it.session.shallow_len()).collect();
    let mut aborted = vec![false; items.len()];
    let mut xs: Vec<Option<E::Acts>> = items
        .iter_mut()
        .zip(&results)
        .map(|(it, r)| {
            r.is_ok().then(|| {
                it.session.tokens.extend_from_slice(it.tokens);
                engine.embed(it.tokens)
            })
        })
        .collect();
    let max_exit = items
        .iter()
        .zip(&xs)
        .filter(|(_, x)| x.is_some())
        .map(|(it, _)| it.exit)
        .max()
        .unwrap_or(0);

    for l in 0..max_exit {
        // A session whose abort check fires stops here: the rows that left
        // layer l - 1 wait at exit l, as after an early exit (lagging rows
        // caught up so far stay caught up), and its new positions go below.
        for (i, it) in items.iter_mut().enumerate() {
            if it.exit > l && xs[i].is_some() && it.session.abort.as_ref().is_some_and(|f| f()) {
                let x = xs[i].take().expect("checked");
                if l > 0 && x.rows() > 0 {
                    it.session.cache.push_pending(l, x);
                }
                aborted[i] = true;
            }
        }
        // Rows for layer l: per session, its lagging rows, then the new ones.
        let mut batch: Option<E::Acts> = None;
        let mut members: Vec<(usize, usize, usize)> = Vec::new(); // (item, pos0, rows)
        for (i, it) in items.iter_mut().enumerate() {
            if it.exit <= l {
                continue;
            }
            let Some(mut x) = xs[i].take() else { continue };
            if l > 0 {
                if let Some(mut lagging) = it.session.cache.take_pending(l) {
                    lagging.append(x);
                    x = lagging;
                }
            }
            let rows = x.rows();
            if rows > 0 {
                members.push((i, it.session.cache.layer_lens()[l], rows));
                match &mut batch {
                    Some(b) => b.append(x),
                    None => batch = Some(x),
                }
            } else {
                xs[i] = Some(x);
            }
        }
        let Some(mut batch) = batch else { continue };
        {
            let mut m = members.iter().peekable();
            let mut segments: Vec<Segment<'_, E::Kv>> = Vec::with_capacity(members.len());
            for (i, it) in items.iter_mut().enumerate() {
                if let Some(&(_, pos0, rows)) = m.next_if(|(j, _, _)| *j == i) {
                    segments.push(Segment {
                        kv: &mut it.session.cache.kv,
                        pos0,
                        rows,
                    });
                }
            }
            engine.run_layer_batch(l, &mut segments, &mut batch);
        }
        // Hand each session its rows back, last first.
        let mut end = batch.rows();
        for &(i, pos0, rows) in members.iter().rev() {
            end -= rows;
            let x = batch.split_off(end);
            let s = &mut *items[i].session;
            s.cache.grow(l, rows);
            s.layer_rows[l] += rows as u64;
            s.probe(l + 1, &x, pos0);
            xs[i] = Some(x);
        }
    }

    for (i, it) in items.iter_mut().enumerate() {
        if aborted[i] {
            it.session
                .rewind(start_lens[i])
                .expect("the positions before the pass are still there");
            results[i] = Err(Error::new(
                ErrorKind::Aborted,
                "aborted by the abort callback",
            ));
        } else if results[i].is_ok() && it.logits != Logits::Draft {
            it.session.context = it.session.shallow_len();
        }
    }

    // Exit: rows below the last layer join the exit activations; logits come
    // from one exit-head call over every session's selected rows.
    let mut jobs: Vec<HeadJob<E::Acts>> = Vec::new();
    for (i, it) in items.iter_mut().enumerate() {
        let Some(x) = xs[i].take() else { continue };
        let s = &mut *it.session;
        let (source, rows, pos0) = if it.exit < n_layers {
            if x.rows() > 0 {
                s.cache.push_pending(it.exit, x);
            }
            match s.cache.pending(it.exit) {
                Some(p) => (HeadSource::Pending, p.rows(), s.cache.layer_lens()[it.exit]),
                None => {
                    s.head.clear();
                    s.head.set_pos0(0);
                    results[i] = Ok(0);
                    continue;
                }
            }
        } else {
            let rows = x.rows();
            let pos0 = s.cache.layer_lens()[it.exit - 1] - rows;
            (HeadSource::Output(x), rows, pos0)
        };
        let from = head_from(rows, it.logits);
        s.head.set_pos0(pos0 + from);
        if from == rows {
            s.head.clear();
            results[i] = Ok(0);
        } else {
            jobs.push((i, source, from, rows - from));
        }
    }
    // Draft rows and the others go through their own heads.
    let (drafts, full): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .partition(|(i, ..)| items[*i].logits == Logits::Draft);
    run_heads(items, full, false, &mut results);
    run_heads(items, drafts, true, &mut results);
    results
}

type HeadJob<A> = (usize, HeadSource<A>, usize, usize); // (item, source, from, rows)

/// One exit-head call (the draft head when `draft`) over every job's rows:
/// picks if no job needs logits. A job's newest row is chosen by its rule,
/// the others greedily.
fn run_heads<E: Engine>(
    items: &mut [BatchItem<'_, E>],
    jobs: Vec<HeadJob<E::Acts>>,
    draft: bool,
    results: &mut [Result<usize>],
) {
    let Some(model) = jobs.first().map(|j| items[j.0].session.model.clone()) else {
        return;
    };
    let engine = &model.engine;
    // Draft rows also score their session's own recent tokens.
    let extras: Vec<Vec<u32>> = if draft {
        jobs.iter()
            .map(|(i, ..)| model.draft_extras(&items[*i].session.tokens))
            .collect()
    } else {
        Vec::new()
    };
    let extra: Vec<&[u32]> = jobs
        .iter()
        .zip(&extras)
        .flat_map(|((.., n), e)| std::iter::repeat_n(&e[..], *n))
        .collect();
    let rules: Option<Vec<PickRule>> = jobs
        .iter()
        .map(|(i, .., n)| {
            let rule = items[*i].pick?;
            Some((0..*n).map(move |r| if r + 1 == *n { rule } else { PickRule::Greedy }))
        })
        .collect::<Option<Vec<_>>>()
        .map(|per_job| per_job.into_iter().flatten().collect());
    let run_head = |x: &E::Acts, from: usize, out: &mut HeadOutput| match (&rules, draft) {
        (Some(rules), false) => engine.head_pick(x, from, rules, out),
        (Some(rules), true) => engine.draft_head_pick(x, from, &extra, rules, out),
        (None, false) => out.fill_logits(|logits| engine.head(x, from, logits)),
        (None, true) => out.fill_logits(|logits| engine.draft_head(x, from, &extra, logits)),
    };
    if let [(i, source, from, _)] = &jobs[..] {
        let s = &mut *items[*i].session;
        let mut out = std::mem::take(&mut s.head);
        match source {
            HeadSource::Output(x) => run_head(x, *from, &mut out),
            HeadSource::Pending => run_head(
                s.cache.pending(items[*i].exit).expect("pending rows"),
                *from,
                &mut out,
            ),
        }
        s.head = out;
        results[*i] = Ok(s.head.rows());
        return;
    }
    let mut all: Option<E::Acts> = None;
    for (i, source, from, _) in &jobs {
        let rows = match source {
            HeadSource::Output(x) => x.tail(*from),
            HeadSource::Pending => items[*i]
                .session
                .cache
                .pending(items[*i].exit)
                .expect("pending rows")
                .tail(*from),
        };
        match &mut all {
            Some(a) => a.append(rows),
            None => all = Some(rows),
        }
    }
    model.with_batch_head(|shared| {
        run_head(all.as_ref().expect("jobs"), 0, shared);
        let mut at = 0;
        for (i, _, _, rows) in &jobs {
            let (s, rows) = (&mut *items[*i].session, *rows);
            s.head.copy_rows(shared, at, rows);
            at += rows;
            results[*i] = Ok(rows);
        }
    });
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
        let vocab = model.config.vocab_size;
        let spec = SpecState::new(n, model.policy_state().acceptance.clone());
        Ok(Session {
            model,
            cache,
            tokens: Vec::new(),
            context: 0,
            capacity,
            head: HeadOutput::new(vocab),
            layer_rows: vec![0; n],
            spec,
            probe_exits: Vec::new(),
            probe_rows: 0,
            probes: Vec::new(),
            probe_out: HeadOutput::new(vocab),
            kv_reserved,
            abort: None,
        })
    }

    /// Drafted, accepted and verify-round counts over the session's life.
    pub fn spec_stats(&self) -> SpecStats {
        self.spec.stats
    }

    /// Check `f` between layers of every pass: when it returns true the pass
    /// stops, the session is left as it was before the pass, and the call
    /// fails with [`ErrorKind::Aborted`]. `None` removes the check.
    pub fn set_abort(&mut self, f: Option<AbortFn>) {
        self.abort = f;
    }

    pub(crate) fn spec(&self) -> &SpecState {
        &self.spec
    }

    pub(crate) fn spec_mut(&mut self) -> &mut SpecState {
        &mut self.spec
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
    /// position [`Session::logits_pos0`]. Empty after a pass with a pick
    /// rule that handed back picks alone (see [`BatchItem::pick`]).
    pub fn logits(&self) -> &[f32] {
        self.head.logits()
    }
    pub fn logits_pos0(&self) -> usize {
        self.head.pos0()
    }
    /// Logits of the newest row (empty when the last pass produced none).
    pub fn last_logits(&self) -> &[f32] {
        let logits = self.head.logits();
        let v = self.model.config.vocab_size;
        &logits[logits.len().saturating_sub(v)..]
    }
    /// Everything the exit head produced in the last pass: logits, each
    /// row's pick (see [`BatchItem::pick`]), or both.
    pub fn head_output(&self) -> &HeadOutput {
        &self.head
    }

    /// Keep the last pass's head rows from position `pos` on.
    pub(crate) fn head_from_position(&mut self, pos: usize) {
        self.head.start_at(pos);
    }

    /// Validate arguments of a forward pass before anything changes; `held`
    /// is how many of the cached positions the pass keeps.
    fn check(&self, tokens: &[u32], exit: usize, held: usize) -> Result<()> {
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
        let need = held + tokens.len();
        if need > self.capacity {
            return Err(Error::new(
                ErrorKind::ContextOverflow,
                format!(
                    "context overflow: {} cached + {} new positions exceed the context length {}",
                    held,
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
    /// Returns the number of logit rows. On error the context is as it was
    /// (a pass that is not a draft pass drops unverified drafts first).
    pub fn forward(&mut self, tokens: &[u32], exit: usize, which: Logits) -> Result<usize> {
        self.forward_head(tokens, exit, which, None)
    }

    /// [`Session::forward`]; with `pick`, the selected rows may come back
    /// as picks only ([`BatchItem::pick`]).
    pub fn forward_head(
        &mut self,
        tokens: &[u32],
        exit: usize,
        which: Logits,
        pick: Option<PickRule>,
    ) -> Result<usize> {
        let mut item = [BatchItem {
            session: self,
            tokens,
            exit,
            logits: which,
            pick,
        }];
        forward_batch(&mut item).pop().expect("one result per item")
    }

    /// Probe results for rows `x` (positions `pos0..`) leaving layer `exit - 1`.
    fn probe(&mut self, exit: usize, x: &E::Acts, pos0: usize) {
        if !self.probe_exits.contains(&exit) || exit >= self.model.config.num_layers {
            return;
        }
        let engine = &self.model.engine;
        let from = x.rows().saturating_sub(self.probe_rows);
        let rules = vec![PickRule::Greedy; x.rows() - from];
        engine.head_pick(x, from, &rules, &mut self.probe_out);
        for i in 0..self.probe_out.rows() {
            self.probes.push(Probe {
                exit,
                pos: pos0 + from + i,
                token: self.probe_out.token(i),
            });
        }
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
    /// [`Session::rewind`] that keeps the last pass's exit-head output: a
    /// verify's rows stay readable after the rejected drafts are cut.
    pub(crate) fn rewind_keeping_head(&mut self, len: usize) -> Result<()> {
        let head = std::mem::replace(&mut self.head, HeadOutput::new(0));
        let r = self.rewind(len);
        self.head = head;
        r
    }

    pub fn rewind(&mut self, len: usize) -> Result<()> {
        if len > self.shallow_len() {
            return Err(Error::invalid(format!(
                "cannot rewind to {len}: the session holds only {} positions",
                self.shallow_len()
            )));
        }
        self.cache.truncate(&self.model.engine, len);
        self.tokens.truncate(len);
        self.context = self.context.min(len);
        self.head.clear();
        Ok(())
    }

    /// Positions that are context: every fed token but the drafts that
    /// await verification ([`Session::drafts_held`] of them).
    pub fn context_len(&self) -> usize {
        self.context
    }

    /// Drafts in the shallow layers that no verification has accepted yet.
    pub fn drafts_held(&self) -> usize {
        self.shallow_len() - self.context
    }

    /// Forget the drafts no verification has accepted.
    pub(crate) fn drop_drafts(&mut self) {
        if self.drafts_held() > 0 {
            self.rewind(self.context)
                .expect("the context is inside the session");
        }
    }

    /// Let the held drafts into the context for a verify pass: a pass that
    /// is not a draft pass would drop them. The verification then cuts the
    /// context back to what it accepted.
    pub(crate) fn admit_drafts(&mut self) {
        self.context = self.shallow_len();
    }
}
