//! The generation loop shared by every mode: budget, EOS ids, stop strings and
//! UTF-8-safe streaming.

use crate::adaptive::{AutoSpec, Choice, Policy};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::sampling::{argmax, sample, Rng64, SamplingParams};
use crate::session::{Logits, Probe, Session};
use crate::speculative::{DraftLimits, Drafts};
use crate::tokenizer::StreamDecoder;
use std::time::Instant;

/// How tokens are produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every layer, every token.
    Full,
    /// Layers `0..exit` only (the model truncated at `exit`).
    EarlyExit { exit: usize },
    /// Draft `draft_len` tokens with layers `0..exit`, verify with the rest.
    SelfSpeculative { exit: usize, draft_len: usize },
    /// Self-speculative with E and/or d chosen every round to maximise the
    /// expected tokens per second (falling back to full depth when nothing
    /// is predicted to win). See [`crate::adaptive`].
    Auto(AutoSpec),
}

/// Consecutive rounds that used the same (E, d).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChoiceSpan {
    /// Index of the first generated token these rounds produced.
    pub first_token: usize,
    /// `num_layers` with `draft_len == 0`: full-depth steps.
    pub exit_layer: usize,
    /// 0: plain steps (no drafting).
    pub draft_len: usize,
    pub rounds: u64,
    /// Tokens these rounds produced.
    pub tokens: usize,
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub mode: Mode,
    pub sampling: SamplingParams,
    /// Keep going past EOS ids.
    pub ignore_eos: bool,
    /// Stop when the text contains any of these (the stop string is not emitted).
    pub stop_strings: Vec<String>,
    /// Self-speculative only: stop drafting when the draft's top probability
    /// is below this (0 disables).
    pub confidence_threshold: f32,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 64,
            mode: Mode::Full,
            sampling: SamplingParams::default(),
            ignore_eos: false,
            stop_strings: Vec::new(),
            confidence_threshold: 0.0,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub drafted: u64,
    pub accepted: u64,
    pub rounds: u64,
    pub acceptance_rate: f64,
    pub draft_seconds: f64,
    pub verify_seconds: f64,
    /// The (E, d) used over time, one span per change.
    pub choices: Vec<ChoiceSpan>,
}

impl GenerateStats {
    /// The (E, d) that produced the most tokens.
    pub fn main_choice(&self) -> Option<(usize, usize)> {
        let mut by: Vec<((usize, usize), usize)> = Vec::new();
        for c in &self.choices {
            let key = (c.exit_layer, c.draft_len);
            match by.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += c.tokens,
                None => by.push((key, c.tokens)),
            }
        }
        by.into_iter().max_by_key(|&(_, n)| n).map(|(k, _)| k)
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StopReason {
    #[default]
    MaxTokens,
    Eos,
    StopString,
    /// The token callback asked to stop.
    Callback,
    /// The session's context is full.
    ContextFull,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::MaxTokens => "max_tokens",
            StopReason::Eos => "eos",
            StopReason::StopString => "stop_string",
            StopReason::Callback => "callback",
            StopReason::ContextFull => "context_full",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct GenerateOutput {
    pub tokens: Vec<u32>,
    pub text: String,
    pub stats: GenerateStats,
    pub stop_reason: StopReason,
}

/// Collects tokens, streams their text and decides when to stop.
struct Sink<'a, F: FnMut(u32, &str) -> bool> {
    stream: StreamDecoder,
    text: String,
    /// Bytes of `text` already handed to the callback.
    emitted: usize,
    tokens: Vec<u32>,
    budget: usize,
    eos: Vec<u32>,
    stops: &'a [String],
    on_token: F,
    done: bool,
    /// What ends generation when the budget runs out.
    budget_reason: StopReason,
    reason: StopReason,
}

impl<F: FnMut(u32, &str) -> bool> Sink<'_, F> {
    fn stop(&mut self, reason: StopReason) {
        self.done = true;
        self.reason = reason;
    }

    /// Take one token; returns false once generation must stop.
    fn push<E: Engine>(&mut self, session: &Session<E>, tok: u32) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        let tokenizer = &session.model().tokenizer;
        self.tokens.push(tok);
        if self.eos.contains(&tok) {
            self.stop(StopReason::Eos);
        } else {
            let piece = self.stream.push(tokenizer, tok)?;
            self.text.push_str(&piece);
            let cut = self
                .stops
                .iter()
                .filter_map(|s| self.text.find(s.as_str()))
                .min();
            if let Some(cut) = cut {
                self.text.truncate(cut);
                self.stop(StopReason::StopString);
            }
        }
        if !self.done && self.tokens.len() >= self.budget {
            self.stop(self.budget_reason);
        }
        if self.done && self.reason != StopReason::StopString {
            // Whatever the detokenizer still holds (an incomplete character).
            let rest = self.stream.finish(tokenizer)?;
            self.text.push_str(&rest);
        }
        let piece = self.final_range();
        if !(self.on_token)(tok, &self.text[piece]) && !self.done {
            self.stop(StopReason::Callback);
        }
        Ok(!self.done)
    }

    /// Text that can no longer become part of a stop string, not yet emitted.
    fn final_range(&mut self) -> std::ops::Range<usize> {
        let hold = if self.done {
            0
        } else {
            self.stops
                .iter()
                .map(|s| s.len().saturating_sub(1))
                .max()
                .unwrap_or(0)
        };
        let mut end = self.text.len().saturating_sub(hold).max(self.emitted);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let start = std::mem::replace(&mut self.emitted, end);
        start..end
    }
}

/// Generate up to `opts.max_new_tokens` tokens after `prompt` in a fresh or
/// continuing session. `on_token(token, text)` is called for every token with
/// the text that became final with it (possibly empty: text is held back
/// while it may still turn into a stop string or half a character); return
/// false from it to stop.
pub fn generate<E: Engine>(
    session: &mut Session<E>,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_token: impl FnMut(u32, &str) -> bool,
) -> Result<GenerateOutput> {
    opts.sampling.validate()?;
    let n_layers = session.model().config.num_layers;
    check_mode(opts.mode, n_layers)?;
    if prompt.is_empty() {
        return Err(Error::invalid("the prompt is empty"));
    }
    let model = session.model().clone();
    let mut auto = match opts.mode {
        Mode::Auto(spec) => Some((Policy::new(spec, n_layers), model.cost_model())),
        _ => None,
    };
    let start = Instant::now();
    let spec0 = session.spec_stats();
    let mut rng = Rng64::new(opts.sampling.seed);
    // Every generated token but the last is fed back: the context bounds the budget.
    let free = session.capacity() - session.shallow_len();
    let fits = (free + 1).saturating_sub(prompt.len());
    let (budget, budget_reason) = if opts.max_new_tokens > fits {
        (fits, StopReason::ContextFull)
    } else {
        (opts.max_new_tokens, StopReason::MaxTokens)
    };
    let eos = if opts.ignore_eos {
        Vec::new()
    } else {
        session.model().config.eos_token_ids.clone()
    };
    let mut sink = Sink {
        stream: StreamDecoder::new(),
        text: String::new(),
        emitted: 0,
        tokens: Vec::new(),
        budget,
        eos: eos.clone(),
        stops: &opts.stop_strings,
        on_token,
        done: budget == 0,
        budget_reason,
        reason: budget_reason,
    };

    // The prompt runs through the layers the mode reads its tokens from.
    // Automatic mode also probes a few exits on its newest rows.
    let prompt_exit = if let Mode::EarlyExit { exit } = opts.mode {
        exit
    } else {
        n_layers
    };
    let mut which = Logits::Last;
    if let Some((policy, cost)) = &auto {
        let (exits, rows) = policy.prompt_probes(cost, prompt.len(), budget);
        session.set_probes(&exits, rows);
        which = Logits::Tail(rows);
    }
    let run = session.forward(prompt, prompt_exit, which);
    if auto.is_some() {
        score_step_probes(session);
    }
    run?;
    let mut next = sample(session.last_logits(), &opts.sampling, &mut rng);
    let mut choices: Vec<ChoiceSpan> = Vec::new();

    while sink.push(session, next)? {
        let choice = match (opts.mode, &mut auto) {
            (Mode::Full, _) => Choice::full(n_layers),
            (Mode::EarlyExit { exit }, _) => Choice { exit, draft_len: 0 },
            (Mode::SelfSpeculative { exit, draft_len }, _) => Choice { exit, draft_len },
            (Mode::Auto(_), Some((policy, cost))) => {
                session.acceptance.fade();
                let c = policy.choose(cost, &session.acceptance);
                let probe = policy.probe(cost, &session.acceptance, start.elapsed().as_secs_f64());
                let rows = if c.is_step() || probe.is_some_and(|e| e < c.exit) {
                    1
                } else {
                    c.draft_len + 1
                };
                session.set_probes(probe.as_slice(), rows);
                c
            }
            (Mode::Auto(_), None) => unreachable!("automatic mode has a policy"),
        };
        match choices.last_mut() {
            Some(span) if (span.exit_layer, span.draft_len) == (choice.exit, choice.draft_len) => {
                span.rounds += 1
            }
            _ => choices.push(ChoiceSpan {
                first_token: sink.tokens.len(),
                exit_layer: choice.exit,
                draft_len: choice.draft_len,
                rounds: 1,
                tokens: 0,
            }),
        }
        let round_start = Instant::now();
        if choice.is_step() {
            let run = session.step(next, choice.exit).map(|_| ());
            if let Some((policy, cost)) = &mut auto {
                policy.observe_time(cost, choice, 0, round_start.elapsed().as_secs_f64());
            }
            if auto.is_some() {
                score_step_probes(session);
            }
            run?;
            next = sample(session.last_logits(), &opts.sampling, &mut rng);
            continue;
        }
        let (exit, draft_len) = (choice.exit, choice.draft_len);
        // A round yields accepted drafts + 1 tokens: never draft past the budget.
        let room = sink.budget - sink.tokens.len();
        let calibration = session.acceptance.calibration(exit);
        let limits = DraftLimits {
            max_drafts: draft_len.min(room - 1),
            stop_ids: &eos,
            confidence: opts.confidence_threshold,
            cumulative: auto.as_ref().map_or(0.0, |(p, c)| p.stop_below(c, exit)),
            calibration: if auto.is_some() { &calibration } else { &[] },
        };
        let round = speculative_round(session, next, exit, limits, &opts.sampling, &mut rng);
        if auto.is_some() {
            let probes = session.take_probes();
            session.set_probes(&[], 0);
            if let Ok((drafts, verdict)) = &round {
                let (pos0, full) = std::mem::take(&mut session.verified);
                score_probes(&mut session.acceptance, &probes, pos0, &full);
                if drafts.confidence.len() == drafts.tokens.len() {
                    session
                        .acceptance
                        .observe_drafts(exit, &drafts.confidence, verdict.accepted);
                } else {
                    session
                        .acceptance
                        .observe_round(exit, drafts.tokens.len(), verdict.accepted);
                }
            }
        }
        let (drafts, verdict) = round?;
        if let Some((policy, cost)) = &mut auto {
            let seconds = round_start.elapsed().as_secs_f64();
            policy.observe_time(cost, choice, drafts.tokens.len(), seconds);
        }
        let mut going = true;
        for &t in &drafts.tokens[..verdict.accepted] {
            going = sink.push(session, t)?;
            if !going {
                break;
            }
        }
        if !going {
            break;
        }
        next = verdict.token_after;
    }
    session.set_probes(&[], 0);
    // Each span produced the tokens up to the next span's first one.
    let ends: Vec<usize> = choices
        .iter()
        .skip(1)
        .map(|c| c.first_token)
        .chain([sink.tokens.len()])
        .collect();
    for (c, end) in choices.iter_mut().zip(ends) {
        c.tokens = end.saturating_sub(c.first_token);
    }
    let seconds = start.elapsed().as_secs_f64();
    let spec = session.spec_stats();
    let (drafted, accepted) = (spec.drafted - spec0.drafted, spec.accepted - spec0.accepted);
    let stats = GenerateStats {
        prompt_tokens: prompt.len(),
        generated_tokens: sink.tokens.len(),
        seconds,
        tokens_per_second: sink.tokens.len() as f64 / seconds.max(1e-9),
        drafted,
        accepted,
        rounds: spec.rounds - spec0.rounds,
        acceptance_rate: if drafted > 0 {
            accepted as f64 / drafted as f64
        } else {
            0.0
        },
        draft_seconds: spec.draft_seconds - spec0.draft_seconds,
        verify_seconds: spec.verify_seconds - spec0.verify_seconds,
        choices,
    };
    Ok(GenerateOutput {
        tokens: sink.tokens,
        text: sink.text,
        stats,
        stop_reason: sink.reason,
    })
}

fn check_mode(mode: Mode, n_layers: usize) -> Result<()> {
    let (exit, draft_len, draft_exit) = match mode {
        Mode::Full => return Ok(()),
        Mode::EarlyExit { exit } => (Some(exit), None, false),
        Mode::SelfSpeculative { exit, draft_len } => (Some(exit), Some(draft_len), false),
        Mode::Auto(spec) => (spec.exit, spec.draft_len, true),
    };
    // A fixed automatic exit must leave layers to verify with.
    let top = if draft_exit { n_layers - 1 } else { n_layers };
    if let Some(exit) = exit {
        if exit == 0 || exit > top {
            return Err(Error::invalid(format!(
                "exit layer {exit} is out of range (1..={top} for this {n_layers}-layer model)"
            )));
        }
    }
    if draft_len == Some(0) {
        return Err(Error::invalid("draft length must be at least 1"));
    }
    Ok(())
}

/// Draft up to `limits.max_drafts` tokens at `exit` after `next` and verify them.
fn speculative_round<E: Engine>(
    session: &mut Session<E>,
    next: u32,
    exit: usize,
    limits: DraftLimits,
    sampling: &SamplingParams,
    rng: &mut Rng64,
) -> Result<(Drafts, crate::speculative::Verdict)> {
    let drafts = if exit < session.model().config.num_layers {
        session.draft(next, exit, limits, sampling, rng)?
    } else {
        Drafts::default()
    };
    let verdict = session.verify(next, &drafts, sampling, rng)?;
    Ok((drafts, verdict))
}

/// Compare probed exits' tokens with the full model's greedy tokens
/// `full[i]` at positions `pos0 + i`.
fn score_probes(
    acc: &mut crate::adaptive::AcceptanceTracker,
    probes: &[Probe],
    pos0: usize,
    full: &[u32],
) {
    for p in probes {
        if let Some(&t) = p.pos.checked_sub(pos0).and_then(|i| full.get(i)) {
            acc.observe(p.exit, p.token == t);
        }
    }
}

/// Score the probes of a full-depth pass against its own logits, then stop probing.
fn score_step_probes<E: Engine>(session: &mut Session<E>) {
    let probes = session.take_probes();
    session.set_probes(&[], 0);
    if probes.is_empty() {
        return;
    }
    let vocab = session.model().config.vocab_size;
    let full: Vec<u32> = session.logits().chunks_exact(vocab).map(argmax).collect();
    let pos0 = session.logits_pos0();
    score_probes(&mut session.acceptance, &probes, pos0, &full);
}
