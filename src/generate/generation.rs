//! One generation as a state machine, advanced a round at a time.

use super::*;

/// One generation as a state machine, advanced one round at a time by
/// [`step_all`] together with any number of others (of the same model): the
/// unit a serving loop batches. `S` is the session, owned or borrowed.
pub struct Generation<'cb, E: Engine, S: BorrowMut<Session<E>> = Session<E>> {
    pub(super) session: S,
    pub(super) opts: GenerateOptions,
    pub(super) sink: Sink<'cb>,
    pub(super) rng: Rng64,
    pub(super) auto: Option<(Policy, CostModel)>,
    /// The prompt, until its pass has run.
    pub(super) prompt: Option<Vec<u32>>,
    pub(super) prompt_len: usize,
    /// Positions the session held before the prompt.
    pub(super) start_len: usize,
    /// The newest token, emitted but not yet fed.
    pub(super) next: u32,
    /// How the token after the pass in flight (a prompt or a step) is chosen.
    pub(super) rule: PickRule,
    pub(super) choices: Vec<ChoiceSpan>,
    pub(super) start: Instant,
    /// When the prompt's pass ended (the first token), from `start`.
    pub(super) prompt_seconds: f64,
    pub(super) spec0: SpecStats,
    pub(super) error: Option<Error>,
    /// Another drafter's drafts for the next round, verified instead of drafting.
    pub(super) external: Option<crate::speculative::Drafts>,
    pub(super) _engine: PhantomData<E>,
}

/// What a generation does in the current round.
pub(super) enum Plan {
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
        check_options(opts, session.model().config.num_layers)?;
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
                Policy::new(spec, n_layers, model.policy_state().corrections.clone()),
                model.cost_model().clone(),
            )),
            _ => None,
        };
        // Every generated token but the last is fed back: the context bounds
        // the budget. Drafts the session holds unverified are not context.
        let free = s.capacity() - s.context_len();
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
        // The text follows the context and the prompt: the stream starts after them.
        let context = &s.tokens()[..s.context_len()];
        let mut recent: Vec<u32> = context
            .iter()
            .chain(prompt)
            .rev()
            .take(8)
            .copied()
            .collect();
        recent.reverse();
        let sink = Sink {
            stream: StreamDecoder::after(&model.tokenizer, &recent),
            text: String::new(),
            emitted: 0,
            tokens: Vec::new(),
            budget,
            eos,
            stops: opts.stop_strings.clone(),
            on_token,
            text_off: false,
            done: budget == 0,
            budget_reason,
            reason: budget_reason,
        };
        let spec0 = s.spec_stats();
        let start_len = s.context_len();
        Generation {
            rng: Rng64::new(opts.sampling.seed),
            session,
            sink,
            auto,
            prompt: Some(prompt.to_vec()),
            prompt_len: prompt.len(),
            start_len,
            next: 0,
            rule: PickRule::Greedy,
            choices: Vec::new(),
            start: Instant::now(),
            prompt_seconds: 0.0,
            spec0,
            error: None,
            external: None,
            opts,
            _engine: PhantomData,
        }
    }

    /// However generation ended, the session holds the prompt and every
    /// generated token but the last, which is not fed: generating again
    /// with the last token as the prompt continues the stream exactly as if
    /// it had not stopped, in every mode. (A speculative round may have
    /// cached accepted tokens that were never delivered; they go.)
    fn settle_context(&mut self) {
        let n = self.sink.tokens.len();
        if n == 0 || self.prompt.is_some() {
            return;
        }
        let keep = self.start_len + self.prompt_len + n - 1;
        let s: &mut Session<E> = self.session.borrow_mut();
        if s.shallow_len() > keep && s.rewind(keep).is_err() {
            // Cannot happen: `keep` is inside the session.
            self.fail(Error::invalid("the context could not be settled"));
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

    pub(super) fn fail(&mut self, e: Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    /// The rule for the token after a prompt or step pass: greedy, or a
    /// draw whose uniform is taken now (the engine may draw on the device).
    pub(super) fn next_rule(&mut self) -> PickRule {
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
    pub(super) fn sample_next(&mut self) {
        let head = self.session.borrow().head_output();
        self.next = head.chosen(head.rows() - 1, &self.rule);
        let tok = self.next;
        self.emit(tok);
    }

    /// Emit a token; false once generation must stop.
    pub(super) fn emit(&mut self, tok: u32) -> bool {
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
    pub fn finish_with_session(mut self) -> (S, Result<GenerateOutput>) {
        self.settle_context();
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
        let prompt_seconds = self.prompt_seconds;
        let decode_seconds = seconds - prompt_seconds;
        let stats = GenerateStats {
            prompt_tokens: self.prompt_len,
            generated_tokens: n,
            seconds,
            tokens_per_second: n as f64 / seconds.max(1e-9),
            prompt_seconds,
            prompt_tokens_per_second: self.prompt_len as f64 / prompt_seconds.max(1e-9),
            decode_tokens_per_second: if n > 1 {
                (n - 1) as f64 / decode_seconds.max(1e-9)
            } else {
                0.0
            },
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

    /// Decide this round's plan (and the automatic policy's probes) when
    /// `others` other generations share the round's passes.
    pub(super) fn plan(&mut self, others: usize) -> Result<Plan> {
        let n_layers = self.session.borrow().model().config.num_layers;
        // The automatic policy prices rows by what they add to the shared passes.
        let shared_cost = self.auto.as_ref().map(|(_, c)| c.shared(others));
        let choice = match (self.opts.mode, &mut self.auto) {
            (Mode::Full, _) => Choice::full(n_layers),
            (Mode::EarlyExit { exit }, _) => Choice { exit, draft_len: 0 },
            (Mode::SelfSpeculative { exit, draft_len }, _) => Choice { exit, draft_len },
            (Mode::Auto(_), Some((policy, _))) => {
                let cost = shared_cost
                    .as_ref()
                    .expect("automatic mode has a cost model");
                let s: &mut Session<E> = self.session.borrow_mut();
                s.spec_mut().acceptance.fade();
                let c = policy.choose(cost, &s.spec().acceptance);
                let probe = policy.probe(
                    cost,
                    &s.spec().acceptance,
                    self.start.elapsed().as_secs_f64(),
                );
                let rows = if c.is_step() || probe.is_some_and(|e| e < c.exit) {
                    1
                } else {
                    policy.verify_probe_rows(c)
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
        if let Some(mut drafts) = self.external.take() {
            let room = self.sink.budget - self.sink.tokens.len();
            let keep = drafts.tokens.len().min(room - 1);
            let vocab = self.session.borrow().model().config.vocab_size;
            drafts.tokens.truncate(keep);
            drafts.probs.truncate(keep * vocab);
            return Ok(Plan::Speculate(Drafter::given(n_layers, drafts)));
        }
        if choice.is_step() {
            return Ok(Plan::Step(choice.exit));
        }
        let s: &Session<E> = self.session.borrow();
        let calibration = s.spec().acceptance.calibration(choice.exit);
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
                .zip(shared_cost.as_ref())
                .map_or(0.0, |((p, _), c)| {
                    p.stop_below(c, &s.spec().acceptance, choice)
                }),
            calibration: if self.auto.is_some() {
                &calibration
            } else {
                &[]
            },
        };
        if limits.max_drafts < choice.draft_len {
            if let Some((policy, _)) = self.auto.as_mut() {
                policy.forget_prediction();
            }
        }
        if choice.exit >= n_layers {
            // Nothing to draft with: the round verifies `next` alone.
            return Ok(Plan::Speculate(Drafter::none(n_layers)));
        }
        Ok(Plan::Speculate(Drafter::start(
            self.session.borrow_mut(),
            self.next,
            choice.exit,
            &limits,
        )?))
    }
}
