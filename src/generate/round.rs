//! Rounds driven by the host's scheduler: each of many sessions advances by
//! one round of its own mode (a plain step, an early-exit step, or draft then
//! verify, with the session's own or another drafter's drafts) in the
//! batched passes of [`step_all`], and the host keeps the stop rules and
//! budgets. A round is a one-round [`Generation`], so rounds and whole
//! generations are one mechanism and give the same tokens.

use super::*;
use crate::error::ErrorKind;
use crate::speculative::Drafts;
use std::time::Duration;

/// What one round of one session is asked to do.
#[derive(Debug, Clone)]
pub struct RoundOptions {
    pub mode: Mode,
    /// How tokens are chosen; draws come from the session's [`RoundState`].
    pub sampling: SamplingParams,
    /// Most tokens the round may commit (at least 1); a speculative round
    /// drafts at most `max_tokens - 1`.
    pub max_tokens: usize,
    /// The round ends after committing any of these (drafting stops at
    /// them too); tokens accepted after one are dropped.
    pub stop_ids: Vec<u32>,
    /// Stop drafting when the draft's top probability is below this (0 disables).
    pub confidence_threshold: f32,
    /// Another drafter's tokens to verify at full depth instead of drafting,
    /// with the distributions they were drawn from (`probs`: one row of
    /// `vocab_size` per draft, or empty when each draft was the drafter's
    /// only candidate). Full or fixed self-speculative mode only.
    pub drafts: Option<Drafts>,
}

impl Default for RoundOptions {
    fn default() -> Self {
        RoundOptions {
            mode: Mode::Full,
            sampling: SamplingParams::default(),
            max_tokens: 1,
            stop_ids: Vec::new(),
            confidence_threshold: 0.0,
            drafts: None,
        }
    }
}

/// What a session carries from one round to the next: its random stream and
/// the automatic policy's state.
#[derive(Debug, Clone)]
pub struct RoundState {
    pub rng: Rng64,
    auto: Option<AutoCarry>,
}

#[derive(Debug, Clone)]
struct AutoCarry {
    spec: AutoSpec,
    policy: Policy,
    cost: CostModel,
    /// Time the rounds themselves took: the probe budget's base, which the
    /// host's time between rounds must not grow.
    busy: Duration,
}

impl RoundState {
    pub fn new(seed: u64) -> RoundState {
        RoundState {
            rng: Rng64::new(seed),
            auto: None,
        }
    }
}

/// One session's round: `input` is what to feed first (the token the last
/// round committed last, or new tokens such as a prompt).
pub struct RoundRequest<'a, E: Engine> {
    pub session: &'a mut Session<E>,
    pub state: &'a mut RoundState,
    pub input: &'a [u32],
    pub opts: &'a RoundOptions,
}

/// What a round committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundOutcome {
    /// The committed tokens; all but the last are in the session's cache.
    pub tokens: Vec<u32>,
    pub drafted: usize,
    pub accepted: usize,
    /// The (E, d) the round ran: `(num_layers, 0)` for a full-depth step.
    pub exit_layer: usize,
    pub draft_len: usize,
}

/// Check one round's options against its session.
fn validate<E: Engine>(r: &RoundRequest<'_, E>, gen_opts: &GenerateOptions) -> Result<()> {
    Generation::<E, &mut Session<E>>::validate(r.session, r.input, gen_opts)?;
    if r.opts.max_tokens == 0 {
        return Err(Error::invalid("a round's token limit must be at least 1"));
    }
    let Some(d) = &r.opts.drafts else {
        return Ok(());
    };
    if !matches!(r.opts.mode, Mode::Full | Mode::SelfSpeculative { .. }) {
        return Err(Error::invalid(
            "given drafts need full-depth or fixed self-speculative mode",
        ));
    }
    if r.input.len() != 1 {
        return Err(Error::invalid(
            "given drafts follow one input token (the last one committed)",
        ));
    }
    let vocab = r.session.model().config.vocab_size;
    if !d.probs.is_empty() {
        if d.probs.len() != d.tokens.len() * vocab {
            return Err(Error::invalid(format!(
                "draft probabilities need {} x {vocab} values, got {}",
                d.tokens.len(),
                d.probs.len()
            )));
        }
        if d.probs.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err(Error::invalid(
                "draft probabilities must be finite and non-negative",
            ));
        }
    }
    Ok(())
}

/// Advance every session of `rounds` (one model) by one round in batched
/// passes. Each result is bit-identical to running that round alone, and a
/// session's rounds give the tokens [`generate`] gives in the same mode from
/// the same seed. A failed round leaves its session as it was before it; the
/// others go on.
pub fn round_all<E: Engine>(rounds: Vec<RoundRequest<'_, E>>) -> Vec<Result<RoundOutcome>> {
    let mut out: Vec<Option<Result<RoundOutcome>>> = Vec::with_capacity(rounds.len());
    let mut gens = Vec::new();
    let mut states = Vec::new();
    for r in rounds {
        let gen_opts = GenerateOptions {
            max_new_tokens: r.opts.max_tokens,
            mode: r.opts.mode,
            sampling: r.opts.sampling,
            ignore_eos: true,
            stop_strings: Vec::new(),
            confidence_threshold: r.opts.confidence_threshold,
        };
        if let Err(e) = validate(&r, &gen_opts) {
            out.push(Some(Err(e)));
            continue;
        }
        let mut g = Generation::build(r.session, r.input, gen_opts, Box::new(|_, _| true));
        if g.sink.budget == 0 {
            out.push(Some(Err(Error::new(
                ErrorKind::ContextOverflow,
                format!("the context is full ({} positions)", g.session().capacity()),
            ))));
            continue;
        }
        g.sink.eos = r.opts.stop_ids.clone();
        g.sink.text_off = true;
        g.rng = r.state.rng.clone();
        g.external = r.opts.drafts.clone();
        if let Mode::Auto(spec) = r.opts.mode {
            match r.state.auto.take().filter(|a| a.spec == spec) {
                Some(a) => {
                    g.auto = Some((a.policy, a.cost));
                    g.start = Instant::now()
                        .checked_sub(a.busy)
                        .unwrap_or_else(Instant::now);
                }
                None => r.state.auto = None,
            }
        }
        if r.input.len() == 1 {
            // The last committed token: this round starts from it.
            g.next = r.input[0];
            g.prompt = None;
        }
        out.push(None);
        gens.push(g);
        states.push((r.state, r.opts.mode));
    }
    {
        let mut refs: Vec<_> = gens.iter_mut().collect();
        step_all(&mut refs);
    }
    let mut done = gens.into_iter().zip(states);
    out.into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                let (mut g, (state, mode)) = done.next().expect("one generation per round");
                let n_layers = g.session().model().config.num_layers;
                let (rng, auto, busy) = (
                    std::mem::replace(&mut g.rng, Rng64::new(0)),
                    g.auto.take(),
                    g.start.elapsed(),
                );
                // What the policy learnt stays, even from a failed round; the
                // random stream moves on only with the tokens it drew.
                if let (Mode::Auto(spec), Some((policy, cost))) = (mode, auto) {
                    state.auto = Some(AutoCarry {
                        spec,
                        policy,
                        cost,
                        busy,
                    });
                }
                let outcome = g.finish()?;
                state.rng = rng;
                // A prompt's pass runs no (E, d) span: it is a step at the mode's depth.
                let (exit_layer, draft_len) = outcome.stats.choices.last().map_or_else(
                    || (mode.step_exit(n_layers), 0),
                    |c| (c.exit_layer, c.draft_len),
                );
                Ok(RoundOutcome {
                    tokens: outcome.tokens,
                    drafted: outcome.stats.drafted as usize,
                    accepted: outcome.stats.accepted as usize,
                    exit_layer,
                    draft_len,
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adaptive::AutoSpec;
    use crate::Model;

    #[test]
    fn a_failed_automatic_round_keeps_what_the_policy_learnt() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/layerskip-pycode-8l");
        let model = Model::load(dir).unwrap();
        let mut session = Session::new(model.clone(), 0).unwrap();
        let mut state = RoundState::new(0);
        let opts = RoundOptions {
            mode: Mode::Auto(AutoSpec {
                exit: None,
                draft_len: None,
            }),
            max_tokens: 4,
            ..Default::default()
        };
        let prompt = model.encode_prompt("def f(x):").unwrap();
        let run = |session: &mut Session, state: &mut RoundState, input: &[u32]| {
            round_all(vec![RoundRequest {
                session,
                state,
                input,
                opts: &opts,
            }])
            .remove(0)
        };
        let t = Instant::now();
        let out = run(&mut session, &mut state, &prompt).unwrap();
        let mut rounds = t.elapsed();
        assert!(state.auto.is_some());
        // The host's time between rounds is not the generation's: it would
        // grow the probe budget.
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        let out = run(
            &mut session,
            &mut state,
            &out.tokens[out.tokens.len() - 1..],
        )
        .unwrap();
        rounds += t.elapsed();
        assert!(state.auto.as_ref().unwrap().busy <= rounds);
        session.set_abort(Some(Box::new(|| true)));
        let last = [*out.tokens.last().unwrap()];
        let e = run(&mut session, &mut state, &last).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Aborted);
        assert!(
            state.auto.is_some(),
            "the policy went with the failed round"
        );
    }
}
