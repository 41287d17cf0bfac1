//! Where a generation's tokens go: budget, EOS ids, stop strings and
//! UTF-8-safe streaming to the caller's callback.

use super::*;

/// The token callback: `(token, text that became final) -> keep going`.
pub type OnToken<'cb> = Box<dyn FnMut(u32, &str) -> bool + 'cb>;

/// Collects tokens, streams their text and decides when to stop.
pub(super) struct Sink<'cb> {
    pub(super) stream: StreamDecoder,
    pub(super) text: String,
    /// Bytes of `text` already handed to the callback.
    pub(super) emitted: usize,
    pub(super) tokens: Vec<u32>,
    pub(super) budget: usize,
    pub(super) eos: Vec<u32>,
    pub(super) stops: Vec<String>,
    pub(super) on_token: OnToken<'cb>,
    /// Tokens only: no text, no stop strings (host-driven rounds).
    pub(super) text_off: bool,
    pub(super) done: bool,
    /// What ends generation when the budget runs out.
    pub(super) budget_reason: StopReason,
    pub(super) reason: StopReason,
}

impl Sink<'_> {
    pub(super) fn stop(&mut self, reason: StopReason) {
        self.done = true;
        self.reason = reason;
        if reason == StopReason::Callback {
            // Text held back for stop strings never reached the caller.
            self.text.truncate(self.emitted);
        }
    }

    /// End the text before the first stop string in it, if any.
    fn cut_at_stop(&mut self) {
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

    /// Take one token; returns false once generation must stop.
    pub(super) fn push<E: Engine>(&mut self, session: &Session<E>, tok: u32) -> Result<bool> {
        if self.done {
            return Ok(false);
        }
        let tokenizer = &session.model().tokenizer;
        self.tokens.push(tok);
        if self.eos.contains(&tok) {
            self.stop(StopReason::Eos);
        } else if !self.text_off {
            let piece = self.stream.push(tokenizer, tok)?;
            self.text.push_str(&piece);
            self.cut_at_stop();
        }
        if !self.done && self.tokens.len() >= self.budget {
            self.stop(self.budget_reason);
        }
        if self.done && self.reason != StopReason::StopString && !self.text_off {
            // Whatever the detokenizer still holds (an incomplete character).
            let rest = self.stream.finish(tokenizer)?;
            self.text.push_str(&rest);
            self.cut_at_stop();
        }
        let piece = self.final_range();
        if !(self.on_token)(tok, &self.text[piece]) && !self.done {
            self.stop(StopReason::Callback);
        }
        Ok(!self.done)
    }

    /// Text that can no longer become part of a stop string, not yet emitted.
    pub(super) fn final_range(&mut self) -> std::ops::Range<usize> {
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
