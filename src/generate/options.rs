//! What a generation is asked to do (mode, budget, sampling, stops) and
//! what it reports.

use super::*;

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

/// A decoding mode before its exit layer and draft length are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeKind {
    Full,
    EarlyExit,
    SelfSpeculative,
}

/// An exit layer or a draft length as a caller gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// The default: half the layers for an exit, [`Mode::DEFAULT_DRAFT_LEN`]
    /// for a draft length.
    Default,
    /// Chosen every round (self-speculative mode only).
    Auto,
    Fixed(usize),
}

impl Mode {
    /// Drafts per round when the caller names no number.
    pub const DEFAULT_DRAFT_LEN: usize = 4;

    /// The layers a plain step of this mode runs (a prompt's pass).
    pub fn step_exit(self, n_layers: usize) -> usize {
        match self {
            Mode::EarlyExit { exit } => exit,
            _ => n_layers,
        }
    }

    /// The exit layer when the caller names none: half the layers.
    pub fn default_exit(n_layers: usize) -> usize {
        (n_layers / 2).max(1)
    }

    /// The mode of `kind` with `exit` and `draft_len` on an `n_layers`-layer
    /// model: the one place where defaults are filled in and `Auto` becomes
    /// automatic (E, d). The CLI, the C API and the server all go through it.
    pub fn resolve(
        kind: ModeKind,
        exit: Setting,
        draft_len: Setting,
        n_layers: usize,
    ) -> Result<Mode> {
        let exit = match exit {
            Setting::Default => Some(Self::default_exit(n_layers)),
            Setting::Auto => None,
            Setting::Fixed(e) => Some(e),
        };
        let draft_len = match draft_len {
            Setting::Default => Some(Self::DEFAULT_DRAFT_LEN),
            Setting::Auto => None,
            // Only a drafting mode uses (and so checks) a draft length.
            Setting::Fixed(0) if kind == ModeKind::SelfSpeculative => {
                return Err(Error::invalid("draft length must be at least 1"))
            }
            Setting::Fixed(d) => Some(d),
        };
        let mode = match (kind, exit, draft_len) {
            (ModeKind::Full, _, _) => Mode::Full,
            (ModeKind::EarlyExit, Some(exit), _) => Mode::EarlyExit { exit },
            (ModeKind::EarlyExit, None, _) => {
                return Err(Error::invalid(
                    "an automatic exit layer needs self-speculative mode",
                ))
            }
            (ModeKind::SelfSpeculative, Some(exit), Some(draft_len)) => {
                Mode::SelfSpeculative { exit, draft_len }
            }
            (ModeKind::SelfSpeculative, exit, draft_len) => {
                Mode::Auto(AutoSpec { exit, draft_len })
            }
        };
        check_mode(mode, n_layers)?;
        Ok(mode)
    }
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
    /// The whole generation: prompt and decoding.
    pub seconds: f64,
    /// `generated_tokens / seconds`.
    pub tokens_per_second: f64,
    /// The prompt's pass, which also yields the first token.
    pub prompt_seconds: f64,
    /// `prompt_tokens / prompt_seconds` (prefill speed, llama.cpp's "pp").
    pub prompt_tokens_per_second: f64,
    /// Tokens after the first over the time after the prompt (decode speed
    /// alone, llama.cpp's "tg"); 0 with fewer than two tokens.
    pub decode_tokens_per_second: f64,
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

/// The options' own rules: an exit inside the model (below its last layer
/// when it drafts), drafts of at least one token, no empty stop string.
pub(super) fn check_options(opts: &GenerateOptions, n_layers: usize) -> Result<()> {
    if opts.stop_strings.iter().any(String::is_empty) {
        return Err(Error::invalid("a stop string is empty"));
    }
    check_mode(opts.mode, n_layers)
}

fn check_mode(mode: Mode, n_layers: usize) -> Result<()> {
    let (exit, draft_len, drafts) = match mode {
        Mode::Full => return Ok(()),
        Mode::EarlyExit { exit } => (Some(exit), None, false),
        Mode::SelfSpeculative { exit, draft_len } => (Some(exit), Some(draft_len), true),
        Mode::Auto(spec) => (spec.exit, spec.draft_len, true),
    };
    // A drafting exit must leave layers to verify with.
    let top = if drafts { n_layers - 1 } else { n_layers };
    if top == 0 {
        return Err(Error::invalid(format!(
            "a {n_layers}-layer model has no exit layer to draft with"
        )));
    }
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
