//! The generation loop shared by every mode: budget, EOS ids, stop strings and
//! UTF-8-safe streaming.

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::sampling::{sample, Rng64, SamplingParams};
use crate::session::{Logits, Session};
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
    let exit = match opts.mode {
        Mode::Full => n_layers,
        Mode::EarlyExit { exit } | Mode::SelfSpeculative { exit, .. } => exit,
    };
    if exit == 0 || exit > n_layers {
        return Err(Error::invalid(format!(
            "exit layer {exit} is out of range (1..={n_layers})"
        )));
    }
    if prompt.is_empty() {
        return Err(Error::invalid("the prompt is empty"));
    }
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
    let prompt_exit = if let Mode::EarlyExit { exit } = opts.mode {
        exit
    } else {
        n_layers
    };
    session.forward(prompt, prompt_exit, Logits::Last)?;
    let mut next = sample(session.last_logits(), &opts.sampling, &mut rng);

    while sink.push(session, next)? {
        match opts.mode {
            Mode::Full | Mode::EarlyExit { .. } => {
                session.step(next, exit)?;
                next = sample(session.last_logits(), &opts.sampling, &mut rng);
            }
            Mode::SelfSpeculative { draft_len, .. } => {
                // A round yields accepted drafts + 1 tokens: never draft past the budget.
                let room = sink.budget - sink.tokens.len();
                let limits = DraftLimits {
                    max_drafts: draft_len.min(room - 1),
                    stop_ids: &eos,
                    confidence: opts.confidence_threshold,
                };
                let drafts = if exit < n_layers {
                    session.draft(next, exit, limits, &opts.sampling, &mut rng)?
                } else {
                    Drafts::default()
                };
                let verdict = session.verify(next, &drafts, &opts.sampling, &mut rng)?;
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
        }
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
    };
    Ok(GenerateOutput {
        tokens: sink.tokens,
        text: sink.text,
        stats,
        stop_reason: sink.reason,
    })
}
