//! The generation loop shared by every mode: budget, EOS ids, stop strings and
//! UTF-8-safe streaming.

use crate::adaptive::{AutoSpec, Choice, CostModel, Policy};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::sampling::{PickRule, Rng64, SamplingParams};
use crate::session::{forward_batch, BatchItem, Logits, Session};
use crate::spec_state::SpecStats;
use crate::speculative::{greedy_pick, DraftLimits, Drafter};
use crate::tokenizer::StreamDecoder;
use std::borrow::BorrowMut;
use std::marker::PhantomData;
use std::time::Instant;

mod generation;
mod options;
mod round;
mod scheduler;
mod sink;

pub use generation::Generation;
use generation::Plan;
use options::check_options;
pub use options::{
    ChoiceSpan, GenerateOptions, GenerateOutput, GenerateStats, Mode, ModeKind, Setting, StopReason,
};
pub use round::{round_all, RoundOptions, RoundOutcome, RoundRequest, RoundState};
pub use scheduler::step_all;
pub use sink::OnToken;
use sink::Sink;

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
    let mut g = Generation::new(session, prompt, opts.clone(), Box::new(on_token))?;
    while !g.is_done() {
        step_all(&mut [&mut g]);
    }
    g.finish()
}
