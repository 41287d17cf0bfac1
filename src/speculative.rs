//! Self-speculative decoding on the shared-activation KV cache: draft with
//! layers `0..E`, verify with `E..L` in one batched pass, accept, roll back.

use crate::engine::{Engine, HeadOutput};
use crate::error::Result;
use crate::sampling::{distribution, PickRule, Rng64, SamplingParams};
use crate::session::{Logits, Session};
use std::time::Instant;

/// Draft tokens and, when sampling, the draft distribution each was drawn from.
#[derive(Debug, Clone, Default)]
pub struct Drafts {
    pub tokens: Vec<u32>,
    /// `tokens.len() x vocab` (empty for greedy or external drafts).
    pub probs: Vec<f32>,
    /// Each draft's top probability at temperature 1 (only when the limits
    /// look at confidence).
    pub confidence: Vec<f32>,
}

/// The outcome of verifying drafts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// How many drafts were accepted (a prefix).
    pub accepted: usize,
    /// The verifier's own token: the correction at the first mismatch, or the
    /// bonus after the last draft. It is not cached yet.
    pub token_after: u32,
}

/// When to stop drafting.
#[derive(Debug, Clone, Copy)]
pub struct DraftLimits<'a> {
    pub max_drafts: usize,
    /// Stop after drafting any of these ids.
    pub stop_ids: &'a [u32],
    /// Stop when the draft's top probability falls below this (0 disables).
    pub confidence: f32,
    /// Draft no further once the estimated probability that every draft so
    /// far is accepted falls below this (0 disables); the draft that crossed
    /// it is kept, since its exit head has run already and its verify row is
    /// the cheapest part of it. Each draft's acceptance is estimated from its
    /// top probability through `calibration` (bin `floor(top * len)`), or is
    /// the top probability itself when empty.
    pub cumulative: f32,
    pub calibration: &'a [f32],
}

/// Greedy drafting and verification need only each row's greedy pick;
/// speculative sampling needs the distributions themselves.
pub fn greedy_pick(sampling: &SamplingParams) -> Option<PickRule> {
    sampling.is_greedy().then_some(PickRule::Greedy)
}

/// Accept or reject one draft `x` given the full model's and the draft's
/// distributions (Leviathan et al. 2023). On rejection returns the token
/// drawn from the residual `max(0, p_full - p_draft)`.
pub fn accept_sampled(
    x: u32,
    p_full: &[f32],
    p_draft: Option<&[f32]>,
    rng: &mut Rng64,
) -> Option<u32> {
    let x = x as usize;
    let q = p_draft.map_or(1.0, |q| q[x]);
    let ratio = if q > 0.0 { p_full[x] / q } else { 0.0 };
    if p_full[x] > 0.0 && rng.uniform() < ratio.min(1.0) {
        return None;
    }
    let residual: Vec<f32> = match p_draft {
        Some(q) => p_full
            .iter()
            .zip(q)
            .map(|(p, q)| (p - q).max(0.0))
            .collect(),
        None => p_full
            .iter()
            .enumerate()
            .map(|(i, &p)| if i == x { 0.0 } else { p })
            .collect(),
    };
    if residual.iter().sum::<f32>() > 0.0 {
        Some(rng.categorical(&residual))
    } else {
        Some(rng.categorical(p_full))
    }
}

/// Drafting one token at a time, so that several sessions can draft in one
/// batched pass: `feed()` says what to run through the shallow layers next,
/// `take()` reads what that pass's exit head produced.
#[derive(Debug, Clone)]
pub struct Drafter {
    pub exit: usize,
    pub drafts: Drafts,
    max: usize,
    feed: Option<u32>,
    confidence: f32,
    cumulative: f32,
    calibration: Vec<f32>,
    stop_ids: Vec<u32>,
    all_accepted: f32,
}

impl Drafter {
    /// Drafting from `next`, after the context (drafts an earlier round
    /// left unverified go).
    pub fn start<E: Engine>(
        session: &mut Session<E>,
        next: u32,
        exit: usize,
        limits: &DraftLimits,
    ) -> Result<Drafter> {
        let n_layers = session.model().config.num_layers;
        if exit == 0 || exit >= n_layers {
            return Err(crate::Error::invalid(format!(
                "draft exit layer {exit} is out of range (1..{n_layers}: drafting needs layers left to verify)"
            )));
        }
        session.drop_drafts();
        let room = session.capacity().saturating_sub(session.shallow_len() + 1);
        let max = limits.max_drafts.min(room);
        Ok(Drafter {
            exit,
            drafts: Drafts::default(),
            max,
            feed: (max > 0).then_some(next),
            confidence: limits.confidence,
            cumulative: limits.cumulative,
            calibration: limits.calibration.to_vec(),
            stop_ids: limits.stop_ids.to_vec(),
            all_accepted: 1.0,
        })
    }

    /// A drafter that drafts nothing.
    pub fn none(exit: usize) -> Drafter {
        Self::given(exit, Drafts::default())
    }

    /// A drafter whose drafts are already made (by another drafter).
    pub fn given(exit: usize, drafts: Drafts) -> Drafter {
        Drafter {
            exit,
            drafts,
            max: 0,
            feed: None,
            confidence: 0.0,
            cumulative: 0.0,
            calibration: Vec::new(),
            stop_ids: Vec::new(),
            all_accepted: 1.0,
        }
    }

    /// The token to run through layers `0..exit` next, if drafting goes on.
    pub fn feed(&self) -> Option<u32> {
        self.feed
    }

    /// The exit head's output for the token just fed (the newest row of
    /// `head`; logits unless greedy): draft from it or stop.
    pub fn take(&mut self, head: &HeadOutput, sampling: &SamplingParams, rng: &mut Rng64) {
        self.feed = None;
        let row = head.rows() - 1;
        if self.confidence > 0.0 || self.cumulative > 0.0 {
            let top = head.top_prob(row);
            let n = self.calibration.len();
            self.all_accepted *= if n > 0 {
                self.calibration[((top * n as f32) as usize).min(n - 1)]
            } else {
                top
            };
            if top < self.confidence {
                return;
            }
            self.drafts.confidence.push(top);
        }
        let tok = if sampling.is_greedy() {
            head.token(row)
        } else {
            let logits = head.row_logits(row).expect("sampling passes bring logits");
            let p = distribution(logits, sampling);
            let t = rng.categorical(&p);
            self.drafts.probs.extend_from_slice(&p);
            t
        };
        self.drafts.tokens.push(tok);
        let likely = self.all_accepted >= self.cumulative;
        if self.drafts.tokens.len() < self.max && !self.stop_ids.contains(&tok) && likely {
            self.feed = Some(tok);
        }
    }
}

impl<E: Engine> Session<E> {
    /// Draft up to `limits.max_drafts` tokens with layers `0..exit`, starting
    /// from `next` (the last accepted token, not cached yet). Every token fed
    /// keeps its K/V in the shallow layers and its exit activation; the last
    /// draft is not fed (verification feeds it).
    pub fn draft(
        &mut self,
        next: u32,
        exit: usize,
        limits: DraftLimits,
        sampling: &SamplingParams,
        rng: &mut Rng64,
    ) -> Result<Drafts> {
        let t0 = Instant::now();
        let mut d = Drafter::start(self, next, exit, &limits)?;
        while let Some(feed) = d.feed() {
            if let Err(e) = self.forward_head(&[feed], exit, Logits::Draft, greedy_pick(sampling)) {
                self.drop_drafts();
                return Err(e);
            }
            d.take(self.head_output(), sampling, rng);
        }
        self.spec_mut().stats.draft_seconds += t0.elapsed().as_secs_f64();
        Ok(d.drafts)
    }

    /// Verify `drafts` proposed after `next` (the last accepted token). Drafts
    /// made by [`Session::draft`] are already in the shallow layers; any other
    /// drafts (n-gram, another model, the caller) go through them now. The deep
    /// layers then run once over all `drafts + 1` pending rows. The cache is
    /// truncated to the accepted length; `token_after` is not cached.
    pub fn verify(
        &mut self,
        next: u32,
        drafts: &Drafts,
        sampling: &SamplingParams,
        rng: &mut Rng64,
    ) -> Result<Verdict> {
        let t0 = Instant::now();
        let n_layers = self.model().config.num_layers;
        let (base, feed) = self.verify_begin(next, drafts)?;
        let pass = self.forward_head(&feed, n_layers, Logits::All, greedy_pick(sampling));
        let v = self.verify_end(base, pass, drafts, sampling, rng);
        self.spec_mut().stats.verify_seconds += t0.elapsed().as_secs_f64();
        v
    }

    /// First half of [`Session::verify`]: make the shallow layers hold exactly
    /// the context, `next` and the drafts' prefix, and return the position
    /// of `next` and the tokens still to feed at full depth (with logits for
    /// every row). Positions that only went through the shallow layers
    /// before (early-exit steps) are caught up in the same pass.
    pub fn verify_begin(&mut self, next: u32, drafts: &Drafts) -> Result<(usize, Vec<u32>)> {
        let base = self.context_len();
        let mut seq = Vec::with_capacity(drafts.tokens.len() + 1);
        seq.push(next);
        seq.extend_from_slice(&drafts.tokens);
        // The drafts held must be exactly our prefix.
        let held = self.drafts_held();
        if held > seq.len() || self.tokens()[base..] != seq[..held] {
            self.drop_drafts();
        }
        let held = self.drafts_held();
        self.admit_drafts();
        Ok((base, seq.split_off(held)))
    }

    /// Second half of [`Session::verify`], after the full-depth pass whose
    /// result is `pass`: accept a prefix of the drafts and truncate the cache
    /// to it, or, when the pass or the acceptance failed, leave the session
    /// as it was before the round (its context, `base` positions).
    pub fn verify_end(
        &mut self,
        base: usize,
        pass: Result<usize>,
        drafts: &Drafts,
        sampling: &SamplingParams,
        rng: &mut Rng64,
    ) -> Result<Verdict> {
        let verdict = pass.and_then(|_| self.accept(base, drafts, sampling, rng));
        if verdict.is_err() {
            let _ = self.rewind(base);
        }
        verdict
    }

    /// Accept a prefix of the drafts by the full pass's rows and truncate
    /// the cache to it.
    fn accept(
        &mut self,
        base: usize,
        drafts: &Drafts,
        sampling: &SamplingParams,
        rng: &mut Rng64,
    ) -> Result<Verdict> {
        let vocab = self.model().config.vocab_size;
        if self.probing() {
            // The full model's greedy token for every row, to score the probes.
            let head = self.head_output();
            let verified = (head.pos0(), head.tokens());
            self.spec_mut().verified = verified;
        }
        // The pass's rows start where the deep layers stood, which is below
        // `base` when they had early-exit positions to catch up on.
        self.head_from_position(base);
        let head = self.head_output();
        let k = drafts.tokens.len();
        let mut accepted = 0;
        let mut token_after = None;
        for i in 0..=k {
            if sampling.is_greedy() {
                let best = head.token(i);
                if i < k && best == drafts.tokens[i] {
                    accepted += 1;
                    continue;
                }
                token_after = Some(best);
            } else {
                let row = head.row_logits(i).expect("sampling passes bring logits");
                let p_full = distribution(row, sampling);
                if i == k {
                    token_after = Some(rng.categorical(&p_full));
                } else {
                    let q = (!drafts.probs.is_empty())
                        .then(|| &drafts.probs[i * vocab..(i + 1) * vocab]);
                    match accept_sampled(drafts.tokens[i], &p_full, q, rng) {
                        None => {
                            accepted += 1;
                            continue;
                        }
                        Some(t) => token_after = Some(t),
                    }
                }
            }
            break;
        }
        self.rewind_keeping_head(base + 1 + accepted)?;
        let stats = &mut self.spec_mut().stats;
        stats.drafted += k as u64;
        stats.accepted += accepted as u64;
        stats.rounds += 1;
        Ok(Verdict {
            accepted,
            token_after: token_after.expect("loop always decides"),
        })
    }
}
