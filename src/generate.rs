//! The generation loop shared by every mode: budget, EOS ids, stop strings and
//! UTF-8-safe streaming.

use crate::adaptive::{AutoSpec, Choice, CostModel, Policy};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::sampling::{PickRule, Rng64, SamplingParams};
use crate::session::{forward_batch, BatchItem, Logits, Probe, Session};
use crate::speculative::{greedy_pick, DraftLimits, Drafter, SpecStats};
use crate::tokenizer::StreamDecoder;
use std::borrow::BorrowMut;
use std::marker::PhantomData;
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

/// The token callback: `(token, text that became final) -> keep going`.
pub type OnToken<'cb> = Box<dyn FnMut(u32, &str) -> bool + 'cb>;

/// Collects tokens, streams their text and decides when to stop.
struct Sink<'cb> {
    stream: StreamDecoder,
    text: String,
    /// Bytes of `text` already handed to the callback.
    emitted: usize,
    tokens: Vec<u32>,
    budget: usize,
    eos: Vec<u32>,
    stops: Vec<String>,
    on_token: OnToken<'cb>,
    done: bool,
    /// What ends generation when the budget runs out.
    budget_reason: StopReason,
    reason: StopReason,
}

impl Sink<'_> {
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
    let mut g = Generation::new(session, prompt, opts.clone(), Box::new(on_token))?;
    while !g.is_done() {
        step_all(&mut [&mut g]);
    }
    g.finish()
}

/// One generation as a state machine, advanced one round at a time by
/// [`step_all`] together with any number of others (of the same model): the
/// unit a serving loop batches. `S` is the session, owned or borrowed.
pub struct Generation<'cb, E: Engine, S: BorrowMut<Session<E>> = Session<E>> {
    session: S,
    opts: GenerateOptions,
    sink: Sink<'cb>,
    rng: Rng64,
    auto: Option<(Policy, CostModel)>,
    /// The prompt, until its pass has run.
    prompt: Option<Vec<u32>>,
    prompt_len: usize,
    /// The newest token, emitted but not yet fed.
    next: u32,
    /// How the token after the pass in flight (a prompt or a step) is chosen.
    rule: PickRule,
    choices: Vec<ChoiceSpan>,
    start: Instant,
    spec0: SpecStats,
    error: Option<Error>,
    _engine: PhantomData<E>,
}

/// What a generation does in the current round.
enum Plan {
    Step(usize),
    Speculate(Drafter),
}

impl<'cb, E: Engine, S: BorrowMut<Session<E>>> Generation<'cb, E, S> {
    /// Validate and set up; nothing runs until [`step_all`].
    pub fn new(
        session: S,
        prompt: &[u32],
        opts: GenerateOptions,
        on_token: OnToken<'cb>,
    ) -> Result<Self> {
        Self::validate(session.borrow(), prompt, &opts)?;
        Ok(Self::build(session, prompt, opts, on_token))
    }

    /// What [`Generation::new`] checks, without taking the session.
    pub fn validate(session: &Session<E>, prompt: &[u32], opts: &GenerateOptions) -> Result<()> {
        opts.sampling.validate()?;
        check_mode(opts.mode, session.model().config.num_layers)?;
        if prompt.is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        Ok(())
    }

    /// Set up after [`Generation::validate`].
    pub(crate) fn build(
        mut session: S,
        prompt: &[u32],
        opts: GenerateOptions,
        on_token: OnToken<'cb>,
    ) -> Self {
        let s: &mut Session<E> = session.borrow_mut();
        let n_layers = s.model().config.num_layers;
        let model = s.model().clone();
        let auto = match opts.mode {
            Mode::Auto(spec) => Some((
                Policy::new(spec, n_layers, model.corrections.clone()),
                model.cost_model().clone(),
            )),
            _ => None,
        };
        // Every generated token but the last is fed back: the context bounds the budget.
        let free = s.capacity() - s.shallow_len();
        let fits = (free + 1).saturating_sub(prompt.len());
        let (budget, budget_reason) = if opts.max_new_tokens > fits {
            (fits, StopReason::ContextFull)
        } else {
            (opts.max_new_tokens, StopReason::MaxTokens)
        };
        let eos = if opts.ignore_eos {
            Vec::new()
        } else {
            model.config.eos_token_ids.clone()
        };
        let sink = Sink {
            stream: StreamDecoder::new(),
            text: String::new(),
            emitted: 0,
            tokens: Vec::new(),
            budget,
            eos,
            stops: opts.stop_strings.clone(),
            on_token,
            done: budget == 0,
            budget_reason,
            reason: budget_reason,
        };
        let spec0 = s.spec_stats();
        Generation {
            rng: Rng64::new(opts.sampling.seed),
            session,
            sink,
            auto,
            prompt: Some(prompt.to_vec()),
            prompt_len: prompt.len(),
            next: 0,
            rule: PickRule::Greedy,
            choices: Vec::new(),
            start: Instant::now(),
            spec0,
            error: None,
            opts,
            _engine: PhantomData,
        }
    }

    pub fn is_done(&self) -> bool {
        self.error.is_some() || (self.prompt.is_none() && self.sink.done)
    }

    /// Tokens generated so far.
    pub fn tokens(&self) -> &[u32] {
        &self.sink.tokens
    }

    pub fn session(&self) -> &Session<E> {
        self.session.borrow()
    }

    /// Stop early (as if the callback had asked to).
    pub fn cancel(&mut self) {
        if !self.sink.done {
            self.sink.stop(StopReason::Callback);
        }
        self.prompt = None;
    }

    fn fail(&mut self, e: Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// The rule for the token after a prompt or step pass: greedy, or a
    /// draw whose uniform is taken now (the engine may draw on the device).
    fn next_rule(&mut self) -> PickRule {
        self.rule = if self.opts.sampling.is_greedy() {
            PickRule::Greedy
        } else {
            PickRule::Sample {
                params: self.opts.sampling,
                u: self.rng.uniform(),
            }
        };
        self.rule
    }

    /// Choose the next token from the newest head output by the rule taken
    /// for its pass, and emit it.
    fn sample_next(&mut self) {
        let head = self.session.borrow().head_output();
        self.next = head.chosen(head.rows() - 1, &self.rule);
        let tok = self.next;
        self.emit(tok);
    }

    /// Emit a token; false once generation must stop.
    fn emit(&mut self, tok: u32) -> bool {
        match self.sink.push(self.session.borrow(), tok) {
            Ok(going) => going,
            Err(e) => {
                self.fail(e);
                false
            }
        }
    }

    /// The outcome: everything emitted, or the error that stopped it (tokens
    /// already delivered stay delivered, and the session stays usable).
    pub fn finish(self) -> Result<GenerateOutput> {
        self.finish_with_session().1
    }

    /// [`Generation::finish`], also handing back the session.
    pub fn finish_with_session(self) -> (S, Result<GenerateOutput>) {
        if let Some(e) = self.error {
            return (self.session, Err(e));
        }
        let mut choices = self.choices;
        // Each span produced the tokens up to the next span's first one.
        let ends: Vec<usize> = choices
            .iter()
            .skip(1)
            .map(|c| c.first_token)
            .chain([self.sink.tokens.len()])
            .collect();
        for (c, end) in choices.iter_mut().zip(ends) {
            c.tokens = end.saturating_sub(c.first_token);
        }
        let seconds = self.start.elapsed().as_secs_f64();
        let spec = self.session.borrow().spec_stats();
        let spec0 = self.spec0;
        let (drafted, accepted) = (spec.drafted - spec0.drafted, spec.accepted - spec0.accepted);
        let n = self.sink.tokens.len();
        let stats = GenerateStats {
            prompt_tokens: self.prompt_len,
            generated_tokens: n,
            seconds,
            tokens_per_second: n as f64 / seconds.max(1e-9),
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
        let out = GenerateOutput {
            tokens: self.sink.tokens,
            text: self.sink.text,
            stats,
            stop_reason: self.sink.reason,
        };
        (self.session, Ok(out))
    }

    /// Decide this round's plan (and the automatic policy's probes).
    fn plan(&mut self) -> Result<Plan> {
        let n_layers = self.session.borrow().model().config.num_layers;
        let choice = match (self.opts.mode, &mut self.auto) {
            (Mode::Full, _) => Choice::full(n_layers),
            (Mode::EarlyExit { exit }, _) => Choice { exit, draft_len: 0 },
            (Mode::SelfSpeculative { exit, draft_len }, _) => Choice { exit, draft_len },
            (Mode::Auto(_), Some((policy, cost))) => {
                let s: &mut Session<E> = self.session.borrow_mut();
                s.acceptance.fade();
                let c = policy.choose(cost, &s.acceptance);
                let probe = policy.probe(cost, &s.acceptance, self.start.elapsed().as_secs_f64());
                let rows = if c.is_step() || probe.is_some_and(|e| e < c.exit) {
                    1
                } else {
                    c.draft_len + 1
                };
                s.set_probes(probe.as_slice(), rows);
                c
            }
            (Mode::Auto(_), None) => unreachable!("automatic mode has a policy"),
        };
        match self.choices.last_mut() {
            Some(span) if (span.exit_layer, span.draft_len) == (choice.exit, choice.draft_len) => {
                span.rounds += 1
            }
            _ => self.choices.push(ChoiceSpan {
                first_token: self.sink.tokens.len(),
                exit_layer: choice.exit,
                draft_len: choice.draft_len,
                rounds: 1,
                tokens: 0,
            }),
        }
        if choice.is_step() {
            return Ok(Plan::Step(choice.exit));
        }
        let s: &Session<E> = self.session.borrow();
        let calibration = s.acceptance.calibration(choice.exit);
        // A round yields accepted drafts + 1 tokens: never draft past the budget.
        let room = self.sink.budget - self.sink.tokens.len();
        // With an automatic d, the draft length chosen is only the policy's
        // estimate: drafting goes on to the longest draft while the
        // calibrated confidence says the next draft still pays (stop_below).
        let auto_d = matches!(
            self.opts.mode,
            Mode::Auto(AutoSpec {
                draft_len: None,
                ..
            })
        );
        let max_drafts = if auto_d {
            crate::adaptive::MAX_DRAFT
        } else {
            choice.draft_len
        };
        let limits = DraftLimits {
            max_drafts: max_drafts.min(room - 1),
            stop_ids: &self.sink.eos,
            confidence: self.opts.confidence_threshold,
            // 0 (never stop early) unless d is automatic.
            cumulative: self
                .auto
                .as_ref()
                .map_or(0.0, |(p, c)| p.stop_below(c, &s.acceptance, choice)),
            calibration: if self.auto.is_some() {
                &calibration
            } else {
                &[]
            },
        };
        if choice.exit >= n_layers {
            // Nothing to draft with: the round verifies `next` alone.
            return Ok(Plan::Speculate(Drafter::none(n_layers)));
        }
        Ok(Plan::Speculate(Drafter::start(
            s,
            self.next,
            choice.exit,
            &limits,
        )?))
    }
}

/// A verification or a plain step of [`step_all`]'s last pass.
struct Work {
    gen: usize,
    tokens: Vec<u32>,
    exit: usize,
    logits: Logits,
    pick: Option<PickRule>,
    /// The deep frontier before a verification.
    base: usize,
}

/// One call of a batched pass: generation `gen` feeds `tokens` through
/// layers `0..exit`, its head output selected by `logits` and, when only
/// tokens are needed, picked by `pick`.
type Call<'t> = (usize, &'t [u32], usize, Logits, Option<PickRule>);

/// One batched pass over `calls` (ascending `gen`). Returns each call's result.
fn pass<E: Engine, S: BorrowMut<Session<E>>>(
    gens: &mut [&mut Generation<'_, E, S>],
    calls: &[Call<'_>],
) -> Vec<Result<usize>> {
    let mut want = calls.iter().peekable();
    let mut items: Vec<BatchItem<'_, E>> = Vec::with_capacity(calls.len());
    for (i, g) in gens.iter_mut().enumerate() {
        if let Some(&(_, tokens, exit, logits, pick)) = want.next_if(|c| c.0 == i) {
            items.push(BatchItem {
                session: g.session.borrow_mut(),
                tokens,
                exit,
                logits,
                pick,
            });
        }
    }
    forward_batch(&mut items)
}

/// Advance every generation by one round, batched: prompts in one pass; then
/// the drafts of all speculating generations one position per pass through
/// their shallow layers; then one pass with every verification and every
/// plain step. A generation that fails stops with its error; the others go on.
pub fn step_all<E: Engine, S: BorrowMut<Session<E>>>(gens: &mut [&mut Generation<'_, E, S>]) {
    // Prompts.
    let mut idx: Vec<usize> = Vec::new();
    let mut prompts: Vec<(Vec<u32>, usize, Logits, PickRule)> = Vec::new();
    for (i, g) in gens.iter_mut().enumerate() {
        if g.is_done() || g.prompt.is_none() {
            continue;
        }
        let s: &mut Session<E> = g.session.borrow_mut();
        let n_layers = s.model().config.num_layers;
        let exit = if let Mode::EarlyExit { exit } = g.opts.mode {
            exit
        } else {
            n_layers
        };
        let prompt = g.prompt.take().expect("checked");
        let mut which = Logits::Last;
        if let Some((policy, cost)) = &g.auto {
            let (exits, rows) =
                policy.prompt_probes(cost, &s.acceptance, prompt.len(), g.sink.budget);
            s.set_probes(&exits, rows);
            which = Logits::Tail(rows.max(1));
        }
        idx.push(i);
        let rule = g.next_rule();
        prompts.push((prompt, exit, which, rule));
    }
    if !idx.is_empty() {
        let calls: Vec<_> = idx
            .iter()
            .zip(&prompts)
            .map(|(&i, (p, exit, which, rule))| (i, &p[..], *exit, *which, Some(*rule)))
            .collect();
        let results = pass(gens, &calls);
        for (&i, r) in idx.iter().zip(results) {
            let g = &mut *gens[i];
            if g.auto.is_some() {
                score_step_probes(g.session.borrow_mut(), PROMPT_PROBE_WEIGHT);
            }
            match r {
                Ok(_) => g.sample_next(),
                Err(e) => g.fail(e),
            }
        }
        // Prompted generations start their rounds in the next call.
    }

    // Plans for the generations that are running.
    let mut plans: Vec<Option<Plan>> = Vec::with_capacity(gens.len());
    for (i, g) in gens.iter_mut().enumerate() {
        let running = !g.is_done() && !idx.contains(&i);
        plans.push(if running {
            match g.plan() {
                Ok(p) => Some(p),
                Err(e) => {
                    g.fail(e);
                    None
                }
            }
        } else {
            None
        });
    }
    let round_start = Instant::now();

    // Drafts: one position per pass for every generation still drafting.
    loop {
        let mut feeds: Vec<(usize, [u32; 1], usize)> = Vec::new();
        for (i, p) in plans.iter().enumerate() {
            if let Some(Plan::Speculate(d)) = p {
                if let Some(f) = d.feed() {
                    feeds.push((i, [f], d.exit));
                }
            }
        }
        if feeds.is_empty() {
            break;
        }
        let calls: Vec<_> = feeds
            .iter()
            .map(|(i, t, exit)| {
                let pick = greedy_pick(&gens[*i].opts.sampling);
                (*i, &t[..], *exit, Logits::Last, pick)
            })
            .collect();
        let results = pass(gens, &calls);
        for ((i, _, _), r) in feeds.iter().zip(results) {
            let g = &mut *gens[*i];
            let Some(Plan::Speculate(d)) = &mut plans[*i] else {
                unreachable!("drafting")
            };
            match r {
                Ok(_) => d.take(
                    g.session.borrow().head_output(),
                    &g.opts.sampling,
                    &mut g.rng,
                ),
                Err(e) => {
                    g.fail(e);
                    plans[*i] = None;
                }
            }
        }
    }
    let draft_seconds = round_start.elapsed().as_secs_f64();

    // Verifications and plain steps, in one pass.
    let mut work: Vec<Work> = Vec::new();
    for (i, p) in plans.iter_mut().enumerate() {
        let g = &mut *gens[i];
        match p {
            Some(Plan::Step(exit)) => {
                let rule = g.next_rule();
                work.push(Work {
                    gen: i,
                    tokens: vec![g.next],
                    exit: *exit,
                    logits: Logits::Last,
                    pick: Some(rule),
                    base: 0,
                })
            }
            Some(Plan::Speculate(d)) => {
                let n_layers = g.session.borrow().model().config.num_layers;
                match g.session.borrow_mut().verify_begin(g.next, &d.drafts) {
                    Ok((base, feed)) => work.push(Work {
                        gen: i,
                        tokens: feed,
                        exit: n_layers,
                        logits: Logits::All,
                        pick: greedy_pick(&g.opts.sampling),
                        base,
                    }),
                    Err(e) => {
                        g.fail(e);
                        *p = None;
                    }
                }
            }
            None => {}
        }
    }
    let verify_start = Instant::now();
    let calls: Vec<_> = work
        .iter()
        .map(|w| (w.gen, &w.tokens[..], w.exit, w.logits, w.pick))
        .collect();
    let results = pass(gens, &calls);
    let verify_seconds = verify_start.elapsed().as_secs_f64();
    let round_seconds = round_start.elapsed().as_secs_f64();

    for (Work { gen: i, base, .. }, r) in work.iter().zip(results) {
        let g = &mut *gens[*i];
        match plans[*i].take() {
            Some(Plan::Step(exit)) => {
                if g.auto.is_some() {
                    score_step_probes(g.session.borrow_mut(), 1.0);
                }
                if let Err(e) = r {
                    g.fail(e);
                    continue;
                }
                if let Some((policy, cost)) = &mut g.auto {
                    policy.observe_time(cost, Choice { exit, draft_len: 0 }, 0, 1, round_seconds);
                }
                g.sample_next();
            }
            Some(Plan::Speculate(d)) => {
                let s: &mut Session<E> = g.session.borrow_mut();
                let verdict =
                    r.and_then(|_| s.verify_end(*base, &d.drafts, &g.opts.sampling, &mut g.rng));
                s.spec.draft_seconds += draft_seconds;
                s.spec.verify_seconds += verify_seconds;
                let verdict = match verdict {
                    Ok(v) => v,
                    Err(e) => {
                        // Leave the session as it was before the speculative round.
                        let _ = s.rewind(*base);
                        s.set_probes(&[], 0);
                        g.fail(e);
                        continue;
                    }
                };
                if let Some((policy, cost)) = &mut g.auto {
                    let mut probes = s.take_probes();
                    s.set_probes(&[], 0);
                    // Rows past the first rejected draft read a token the
                    // model did not write: agreement there says nothing about
                    // drafting, where the current exit's own acceptance also
                    // stops counting.
                    probes.retain(|p| p.pos <= *base + verdict.accepted);
                    let (pos0, full) = std::mem::take(&mut s.verified);
                    score_probes(&mut s.acceptance, &probes, pos0, &full, 1.0);
                    if d.drafts.confidence.len() == d.drafts.tokens.len() {
                        s.acceptance
                            .observe_drafts(d.exit, &d.drafts.confidence, verdict.accepted);
                    } else {
                        s.acceptance
                            .observe_round(d.exit, d.drafts.tokens.len(), verdict.accepted);
                    }
                    let choice = Choice {
                        exit: d.exit,
                        draft_len: d.drafts.tokens.len().max(1),
                    };
                    policy.observe_time(
                        cost,
                        choice,
                        d.drafts.tokens.len(),
                        verdict.accepted + 1,
                        round_seconds,
                    );
                }
                let mut going = true;
                for &t in &d.drafts.tokens[..verdict.accepted] {
                    going = g.emit(t);
                    if !going {
                        break;
                    }
                }
                if going {
                    g.next = verdict.token_after;
                    g.emit(verdict.token_after);
                }
            }
            None => {}
        }
    }
    for g in gens.iter_mut() {
        if g.is_done() {
            g.session.borrow_mut().set_probes(&[], 0);
        }
    }
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

/// Compare probed exits' tokens with the full model's greedy tokens
/// `full[i]` at positions `pos0 + i`; each comparison counts as `weight`
/// observations.
fn score_probes(
    acc: &mut crate::adaptive::AcceptanceTracker,
    probes: &[Probe],
    pos0: usize,
    full: &[u32],
    weight: f64,
) {
    for p in probes {
        if let Some(&t) = p.pos.checked_sub(pos0).and_then(|i| full.get(i)) {
            acc.observe_weighted(p.exit, p.token == t, weight);
        }
    }
}

/// Weight of a probe on the prompt. The prompt is text the model did not
/// write: its exits agree with the full model there less often than on the
/// model's own continuation (on the bundled model's code prompts, ~0.67
/// against ~0.88 at exit 5), so prompt probes are a weak first guess. At
/// 0.25 they still pulled the model's shared estimates of exits 2-4 down to
/// 0.44-0.73 against 0.71-0.83 measured by drafting with them; at 0.05 the
/// estimates were 0.60-0.87.
const PROMPT_PROBE_WEIGHT: f64 = 0.05;

/// Score the probes of a full-depth pass against its own logits, then stop probing.
fn score_step_probes<E: Engine>(session: &mut Session<E>, weight: f64) {
    let probes = session.take_probes();
    session.set_probes(&[], 0);
    if probes.is_empty() {
        return;
    }
    let full = session.head_output().tokens();
    let pos0 = session.logits_pos0();
    score_probes(&mut session.acceptance, &probes, pos0, &full, weight);
}
