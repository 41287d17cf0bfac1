//! Choosing (E, d): expected tokens per second from the cost model and the
//! acceptance estimates, with hysteresis, a margin before leaving full depth,
//! and a bounded time budget for probing other exits.

use super::correction::Factors;
use super::{AcceptanceTracker, AutoSpec, Corrections, CostModel, MAX_DRAFT};
use std::sync::Arc;

/// A choice for one round. `draft_len == 0` is a plain step at depth `exit`
/// (`exit == num_layers`: full depth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub exit: usize,
    pub draft_len: usize,
}

impl Choice {
    pub fn full(n_layers: usize) -> Choice {
        Choice {
            exit: n_layers,
            draft_len: 0,
        }
    }
    pub fn is_step(&self) -> bool {
        self.draft_len == 0
    }
}

/// Self-speculation must be predicted this much faster than full depth.
const MIN_SPEEDUP: f64 = 1.03;
/// An automatic exit must be able to beat full depth by this much when
/// every draft is accepted (by the cost model). Round times move 10-20%
/// against the model's with the machine's state (`layerskip costs`), so an
/// exit whose best case is within that of full depth wins or loses by
/// chance, and its probes cost time too: on the hopeless 100M model (12
/// layers), exit 11 (best case 1.05x, yet 75% agreement) made 14% of auto's
/// tokens and auto ran 0.96x full depth; without it, 0.99x.
const MIN_CEILING: f64 = 1.1;
/// A new choice must be predicted this much faster than the current one.
const SWITCH_GAIN: f64 = 1.03;
/// Share of generation time that probing other exits may take.
const PROBE_SHARE: f64 = 0.02;
/// Every this many rounds, a choice that has not run yet may be tried.
const EXPLORE_EVERY: usize = 16;
/// ...for this many rounds (enough for its own correction),
const EXPLORE_ROUNDS: usize = 4;
/// ...if its corrected prediction is at least this fraction of the best's:
/// at most 4 rounds in 20 at >= 0.9 of the best costs at most 2%.
const EXPLORE_FLOOR: f64 = 0.9;
/// Share of the predicted generation time the prompt probe may take.
const PROMPT_PROBE_SHARE: f64 = 0.02;
/// Shared evidence (observations, faded) above which an exit counts as known.
const WELL_KNOWN: f64 = 16.0;

/// Expected tokens of a round with `d` drafts when each is accepted with
/// probability `alpha` independently: the accepted prefix plus the
/// verifier's own token: `1 + alpha + ... + alpha^d`, in closed form so that
/// a caller's huge fixed d costs nothing.
pub fn expected_tokens(alpha: f64, d: usize) -> f64 {
    if alpha >= 1.0 {
        (d + 1) as f64
    } else {
        (1.0 - alpha.powf((d + 1) as f64)) / (1.0 - alpha)
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    spec: AutoSpec,
    n_layers: usize,
    pub current: Choice,
    /// Predicted seconds spent on probes so far.
    probe_seconds: f64,
    /// Predicted seconds of the probe in the round in flight: taken off the
    /// round's measured time, so that probes (which run mostly during
    /// full-depth steps) do not make the rounds that carry them look slow.
    round_probe: f64,
    /// Seconds that a plain step and a speculative round cost beyond the
    /// isolated timings of the cost model (sampling, emitting, pass and
    /// cache bookkeeping, the verify's acceptance), learned from measured
    /// rounds: a fixed cost per round favours longer drafts.
    overhead: Overhead,
    /// Measured over predicted speed per choice, shared by the model's sessions.
    corrections: Arc<Corrections>,
    /// The prediction for the round in flight: (choice, tokens, seconds).
    predicted: Option<(Choice, f64, f64)>,
    /// Rounds since the last exploration, and the one in progress (choice,
    /// rounds left).
    since_explore: usize,
    exploring: Option<(Choice, usize)>,
}

/// Weight of the newest timing in the overheads' moving averages.
const TIMING_WEIGHT: f64 = 0.1;

/// Per-round costs beyond the cost model: [plain step, speculative round].
#[derive(Debug, Clone, Copy, Default)]
struct Overhead([f64; 2]);

impl Overhead {
    fn kind(c: Choice) -> usize {
        usize::from(!c.is_step())
    }
    fn of(&self, c: Choice) -> f64 {
        self.0[Self::kind(c)]
    }
    fn learn(&mut self, c: Choice, extra: f64) {
        let o = &mut self.0[Self::kind(c)];
        *o += TIMING_WEIGHT * (extra.max(0.0) - *o);
    }
}

impl Policy {
    pub fn new(spec: AutoSpec, n_layers: usize, corrections: Arc<Corrections>) -> Policy {
        Policy {
            spec,
            n_layers,
            current: Choice::full(n_layers),
            probe_seconds: 0.0,
            round_probe: 0.0,
            overhead: Overhead::default(),
            corrections,
            predicted: None,
            since_explore: 0,
            exploring: None,
        }
    }

    /// Exits that may be chosen (and so are worth probing): the one given,
    /// or those that could beat full depth by [`MIN_CEILING`] if every
    /// draft were accepted.
    fn exits(&self, cost: &CostModel) -> Vec<usize> {
        match self.spec.exit {
            Some(e) => vec![e],
            None => (1..self.n_layers)
                .filter(|&e| self.ceiling(cost, e) >= MIN_CEILING)
                .collect(),
        }
    }

    /// The cost model's speedup of exit `e` over full depth with every draft
    /// accepted, at its best draft length.
    fn ceiling(&self, cost: &CostModel, e: usize) -> f64 {
        self.drafts()
            .into_iter()
            .map(|d| (d + 1) as f64 * cost.full_token() / cost.round(e, d))
            .fold(0.0, f64::max)
    }

    fn drafts(&self) -> Vec<usize> {
        match self.spec.draft_len {
            Some(d) => vec![d],
            None => (1..=MAX_DRAFT).collect(),
        }
    }

    /// Predicted seconds of a full-depth token.
    fn full_seconds(&self, cost: &CostModel) -> f64 {
        self.seconds(cost, Choice::full(self.n_layers), 0)
    }

    /// What the cost model alone predicts for a round that runs `c` with `k` drafts.
    fn compute(&self, cost: &CostModel, c: Choice, k: usize) -> f64 {
        if c.is_step() {
            c.exit as f64 * cost.layer(1) + cost.head(1)
        } else {
            cost.round(c.exit, k)
        }
    }

    /// Predicted seconds of a round that runs `c` with `k` drafts.
    fn seconds(&self, cost: &CostModel, c: Choice, k: usize) -> f64 {
        self.compute(cost, c, k) + self.overhead.of(c)
    }

    /// Predicted tokens and seconds of a round of `c`.
    fn predict(&self, cost: &CostModel, acc: &AcceptanceTracker, c: Choice) -> (f64, f64) {
        let tokens = if c.is_step() {
            1.0
        } else {
            expected_tokens(acc.rate(c.exit), c.draft_len)
        };
        (tokens, self.seconds(cost, c, c.draft_len))
    }

    /// The entry of `c` in the corrections. With an automatic draft length
    /// every round at exit E runs the same way (drafting until the
    /// confidence stop or the longest draft), whatever d its prediction
    /// used, so all of them share one entry per exit and its evidence
    /// gathers eight times as fast.
    fn key(&self, c: Choice) -> Choice {
        if self.spec.draft_len.is_none() && !c.is_step() {
            Choice {
                exit: c.exit,
                draft_len: 0,
            }
        } else {
            c
        }
    }

    /// Predicted speed of `c` relative to full depth, corrected by what
    /// rounds of `c` (or of its kind) measured against their predictions.
    pub fn speedup(&self, cost: &CostModel, acc: &AcceptanceTracker, c: Choice) -> f64 {
        self.speedup_with(&self.corrections.snapshot(), cost, acc, c)
    }

    fn speedup_with(
        &self,
        factors: &Factors,
        cost: &CostModel,
        acc: &AcceptanceTracker,
        c: Choice,
    ) -> f64 {
        let (tokens, seconds) = self.predict(cost, acc, c);
        let full = Choice::full(self.n_layers);
        tokens * self.full_seconds(cost) / seconds * factors.factor(self.key(c))
            / factors.factor(full)
    }

    /// Learn from the measured time of a round that ran `c` with `drafted`
    /// drafts (0 for a step) and produced `tokens`: the per-round overhead
    /// beyond the isolated timings, and the correction of the prediction made
    /// when `c` was chosen.
    pub fn observe_time(
        &mut self,
        cost: &CostModel,
        c: Choice,
        drafted: usize,
        tokens: usize,
        seconds: f64,
    ) {
        let seconds = seconds - std::mem::take(&mut self.round_probe);
        if !seconds.is_finite() || seconds <= 0.0 {
            return;
        }
        if let Some((planned, pt, ps)) = self.predicted.take() {
            self.corrections
                .observe(self.key(planned), tokens as f64, seconds, pt, ps);
        }
        self.overhead
            .learn(c, seconds - self.compute(cost, c, drafted));
    }

    /// The choice for the next round.
    pub fn choose(&mut self, cost: &CostModel, acc: &AcceptanceTracker) -> Choice {
        self.round_probe = 0.0;
        let factors = self.corrections.snapshot();
        let mut best = (Choice::full(self.n_layers), MIN_SPEEDUP);
        // Choices that have not run enough rounds to have their own correction.
        let mut untried: Vec<(Choice, f64)> = Vec::new();
        for e in self.exits(cost) {
            // With an automatic d, an exit is one candidate: its best d by
            // prediction (the label of its rounds; drafting itself stops by
            // confidence).
            let scored = self.drafts().into_iter().map(|d| {
                let c = Choice {
                    exit: e,
                    draft_len: d,
                };
                (c, self.speedup_with(&factors, cost, acc, c))
            });
            let at_exit: Vec<(Choice, f64)> = if self.spec.draft_len.is_none() {
                scored
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .into_iter()
                    .collect()
            } else {
                scored.collect()
            };
            for (c, s) in at_exit {
                // The current choice takes its exit's new label.
                if self.key(c) == self.key(self.current) {
                    self.current = c;
                }
                if s > best.1 {
                    best = (c, s);
                }
                if !factors.measured(self.key(c)) {
                    untried.push((c, s));
                }
            }
        }
        let kept = self.speedup_with(&factors, cost, acc, self.current);
        let current_allowed = self.current.is_step() || kept >= MIN_SPEEDUP;
        if !current_allowed || best.1 > kept * SWITCH_GAIN {
            self.current = if best.0.is_step() {
                Choice::full(self.n_layers)
            } else {
                best.0
            };
        }
        // Bounded exploration: the predictions are only models, so now and
        // then a close contender runs a few rounds and earns its own
        // correction (shared with the model's other sessions).
        self.since_explore += 1;
        if self.exploring.is_none() && self.since_explore >= EXPLORE_EVERY {
            let reference = best.1.max(kept).max(1.0);
            // Only contenders predicted to beat full depth: never explore
            // on a model whose exits are hopeless.
            let worth = |s: f64| s >= MIN_SPEEDUP && s >= EXPLORE_FLOOR * reference;
            let contender = untried
                .into_iter()
                .filter(|(c, s)| *c != self.current && worth(*s))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((c, _)) = contender {
                self.exploring = Some((c, EXPLORE_ROUNDS));
            }
            self.since_explore = 0;
        }
        let choice = match &mut self.exploring {
            Some((c, left)) => {
                let c = *c;
                *left -= 1;
                if *left == 0 {
                    self.exploring = None;
                }
                c
            }
            None => self.current,
        };
        let (t, sec) = self.predict(cost, acc, choice);
        self.predicted = Some((choice, t, sec));
        choice
    }

    /// With an automatic draft length, drafting goes on while one more
    /// draft is expected to pay for itself at the round's own rate: the
    /// probability that every draft so far and the next are accepted (the
    /// calibrated probabilities so far times the exit's rate) must reach
    /// what one more draft costs (its draft step and its verify row; on a
    /// small model in cache rows are far from free) times the tokens per
    /// second predicted for `c`. Returned as the bound on the drafts so far.
    /// 0 (never stop) with a fixed draft length.
    pub fn stop_below(&self, cost: &CostModel, acc: &AcceptanceTracker, c: Choice) -> f32 {
        if self.spec.draft_len.is_some() || c.is_step() {
            return 0.0;
        }
        let n = MAX_DRAFT + 1;
        let deep = self.n_layers.saturating_sub(c.exit) as f64;
        let verify_row =
            (deep * (cost.layer(n) - cost.layer(1)) + cost.head(n) - cost.head(1)) / (n - 1) as f64;
        let (tokens, seconds) = self.predict(cost, acc, c);
        let next = acc.rate(c.exit).max(1e-3);
        ((cost.draft_step(c.exit) + verify_row) * tokens / seconds / next).min(1.0) as f32
    }

    /// Rows a probe on a round's verify rows covers: all of them, which with
    /// an automatic d may be up to [`MAX_DRAFT`] drafts + 1.
    pub fn verify_probe_rows(&self, c: Choice) -> usize {
        match self.spec.draft_len {
            Some(_) => c.draft_len + 1,
            None => MAX_DRAFT + 1,
        }
    }

    /// The round's prediction will not be compared with what it yields (its
    /// drafts were cut short by the generation's budget, not by its exit).
    pub fn forget_prediction(&mut self) {
        self.predicted = None;
    }

    /// The exit to probe in the next round, if the probe budget allows one:
    /// the candidate with the least evidence. Exits shallower than a draft
    /// exit are probed on the draft rows, deeper ones on the verify rows.
    pub fn probe(
        &mut self,
        cost: &CostModel,
        acc: &AcceptanceTracker,
        elapsed: f64,
    ) -> Option<usize> {
        // The round's own choice (an exploring round runs another than `current`).
        let c = self.predicted.map_or(self.current, |p| p.0);
        let exit = self
            .exits(cost)
            .into_iter()
            .filter(|&e| c.is_step() || e != c.exit)
            .min_by(|&a, &b| acc.evidence(a).total_cmp(&acc.evidence(b)))?;
        let price = if c.is_step() {
            cost.head(1)
        } else if exit < c.exit {
            c.draft_len as f64 * cost.head(1)
        } else {
            cost.head(self.verify_probe_rows(c))
        };
        // Exits that the model's earlier sessions have measured need probing
        // only to follow the text, not to learn them.
        let share = if acc.shared_evidence(exit) >= WELL_KNOWN {
            PROBE_SHARE / 4.0
        } else {
            PROBE_SHARE
        };
        if self.probe_seconds + price > share * elapsed {
            return None;
        }
        self.probe_seconds += price;
        self.round_probe = price;
        Some(exit)
    }

    /// Exits to probe on the prompt's newest rows, and how many rows, within
    /// a share of the predicted generation time of `max_new_tokens` tokens.
    /// Exits the model's earlier sessions have measured are left out.
    pub fn prompt_probes(
        &self,
        cost: &CostModel,
        acc: &AcceptanceTracker,
        prompt_len: usize,
        max_new_tokens: usize,
    ) -> (Vec<usize>, usize) {
        let exits: Vec<usize> = self
            .exits(cost)
            .into_iter()
            .filter(|&e| acc.shared_evidence(e) < WELL_KNOWN)
            .collect();
        if exits.is_empty() {
            return (exits, 0);
        }
        let budget = PROMPT_PROBE_SHARE * max_new_tokens as f64 * cost.full_token();
        let want = exits.len().min(4);
        let mut plan = (Vec::new(), 0);
        for rows in [16, 8, 4, 2, 1] {
            let rows = rows.min(prompt_len.max(1));
            // The final head runs on the same rows to compare against.
            let left = budget - (cost.head(rows) - cost.head(1));
            let n = ((left / cost.head(rows)).max(0.0) as usize).min(exits.len());
            plan = (spread(&exits, n), rows);
            if n >= want {
                break;
            }
        }
        plan
    }
}

/// `n` of `items`, evenly spaced.
fn spread(items: &[usize], n: usize) -> Vec<usize> {
    (0..n)
        .map(|i| items[(2 * i + 1) * items.len() / (2 * n)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 8 layers, each 1.0 per row, multi-row passes cheap: 1 + 0.1 per extra row; head 0.5.
    fn cost() -> CostModel {
        let layer = (1..=9).map(|r| 1.0 + 0.1 * (r - 1) as f64).collect();
        let head = (1..=9).map(|r| 0.5 + 0.05 * (r - 1) as f64).collect();
        CostModel::from_tables(8, layer, head)
    }

    fn tracker(rates: &[(usize, f64)]) -> AcceptanceTracker {
        let mut t = AcceptanceTracker::new(8);
        for &(e, r) in rates {
            let hits = (r * 100.0).round() as usize;
            (0..hits).for_each(|_| t.observe(e, true));
            (hits..100).for_each(|_| t.observe(e, false));
        }
        t
    }

    /// Two good exits, shared corrections, and a policy's first choice
    /// (speculative).
    fn first_speculative_choice() -> (AcceptanceTracker, Arc<Corrections>, Policy, Choice) {
        let acc = tracker(&[(2, 0.9), (6, 0.95)]);
        let shared = Arc::new(Corrections::default());
        let mut p = Policy::new(AutoSpec::default(), 8, shared.clone());
        let first = p.choose(&cost(), &acc);
        assert!(!first.is_step());
        (acc, shared, p, first)
    }

    #[test]
    fn expected_tokens_counts_the_bonus() {
        assert_eq!(expected_tokens(0.0, 4), 1.0);
        assert_eq!(expected_tokens(1.0, 4), 5.0);
        assert!((expected_tokens(0.5, 2) - 1.75).abs() < 1e-12);
        let sum = |a: f64, d: usize| (0..=d).map(|k| a.powi(k as i32)).sum::<f64>();
        for a in [0.1, 0.5, 0.9, 0.99] {
            for d in [1, 2, 4, 8] {
                assert!((expected_tokens(a, d) - sum(a, d)).abs() < 1e-9, "{a} {d}");
            }
        }
        // A caller's huge d: at once, and finite.
        assert!((expected_tokens(0.5, usize::MAX / 2) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn an_exploring_round_never_probes_its_own_exit() {
        let (acc, _, mut p, first) = first_speculative_choice();
        let other = Choice {
            exit: if first.exit == 2 { 6 } else { 2 },
            draft_len: first.draft_len,
        };
        p.exploring = Some((other, 2));
        assert_eq!(p.choose(&cost(), &acc), other);
        assert_eq!(p.current, first);
        // The exploring exit has the least evidence but the current one's.
        let mut thin = AcceptanceTracker::new(8);
        for e in 1..8 {
            let n = if e == first.exit {
                10
            } else if e == other.exit {
                20
            } else {
                100
            };
            (0..n).for_each(|_| thin.observe(e, true));
        }
        let probe = p.probe(&cost(), &thin, 1e6);
        assert!(probe.is_some() && probe != Some(other.exit), "{probe:?}");
    }

    #[test]
    fn probes_on_verify_rows_cover_every_row_an_automatic_d_may_draft() {
        let c = Choice {
            exit: 4,
            draft_len: 2,
        };
        let auto = Policy::new(AutoSpec::default(), 8, Arc::default());
        assert_eq!(auto.verify_probe_rows(c), MAX_DRAFT + 1);
        let fixed = AutoSpec {
            exit: None,
            draft_len: Some(2),
        };
        assert_eq!(
            Policy::new(fixed, 8, Arc::default()).verify_probe_rows(c),
            3
        );
    }

    #[test]
    fn a_round_cut_short_by_the_budget_corrects_nothing() {
        let (acc, shared, mut p, first) = first_speculative_choice();
        let c = cost();
        for _ in 0..10 {
            let round = p.choose(&c, &acc);
            p.forget_prediction();
            // One token in ten times the predicted time: a correction would
            // shut the choice out, for every session of the model.
            p.observe_time(
                &c,
                round,
                0,
                1,
                10.0 * p.seconds(&c, round, round.draft_len),
            );
        }
        for choice in [first, Choice::full(8)] {
            assert!(!shared.snapshot().measured(p.key(choice)));
            assert_eq!(shared.factor(p.key(choice)), 1.0);
        }
    }

    #[test]
    fn perfect_shallow_exit_gets_small_e_and_long_drafts() {
        let acc = tracker(
            &(1..8)
                .map(|e| (e, if e >= 2 { 1.0 } else { 0.0 }))
                .collect::<Vec<_>>(),
        );
        let mut p = Policy::new(AutoSpec::default(), 8, Arc::default());
        let c = p.choose(&cost(), &acc);
        assert_eq!(
            c,
            Choice {
                exit: 2,
                draft_len: MAX_DRAFT
            }
        );
    }

    #[test]
    fn speculation_backs_off_when_many_sessions_share_the_passes() {
        // Passes are memory-bound up to 8 rows, and every row past them costs
        // as much as a lone row did.
        let table = |one: f64| -> Vec<f64> {
            let mut t: Vec<f64> = (0..8).map(|r| one * (1.0 + 0.02 * r as f64)).collect();
            t.push(t[7] + one);
            t
        };
        let cost = CostModel::from_tables(8, table(1.0), table(0.5));
        let acc = tracker(&(1..8).map(|e| (e, 0.9)).collect::<Vec<_>>());
        let mut alone = Policy::new(AutoSpec::default(), 8, Arc::default());
        assert!(!alone.choose(&cost, &acc).is_step());
        let mut crowded = Policy::new(AutoSpec::default(), 8, Arc::default());
        assert_eq!(crowded.choose(&cost.shared(8), &acc), Choice::full(8));
    }

    #[test]
    fn hopeless_exits_fall_back_to_full_depth() {
        let acc = tracker(&(1..8).map(|e| (e, 0.05)).collect::<Vec<_>>());
        let mut p = Policy::new(AutoSpec::default(), 8, Arc::default());
        assert_eq!(p.choose(&cost(), &acc), Choice::full(8));
        // Having chosen speculation, collapsing acceptance brings it back.
        let good = tracker(&[(4, 0.95)]);
        assert!(!p.choose(&cost(), &good).is_step());
        assert_eq!(p.choose(&cost(), &acc), Choice::full(8));
    }

    #[test]
    fn fixed_parts_are_respected_and_hysteresis_holds() {
        let acc = tracker(&[(3, 0.8), (5, 0.9)]);
        let mut p = Policy::new(
            AutoSpec {
                exit: Some(5),
                draft_len: None,
            },
            8,
            Arc::default(),
        );
        let c = p.choose(&cost(), &acc);
        assert_eq!(c.exit, 5);
        let mut q = Policy::new(
            AutoSpec {
                exit: None,
                draft_len: Some(3),
            },
            8,
            Arc::default(),
        );
        assert_eq!(q.choose(&cost(), &acc).draft_len, 3);
        // A marginally better estimate elsewhere does not flip the choice.
        let first = q.current;
        let mut acc2 = acc.clone();
        acc2.observe(5, false);
        assert_eq!(q.choose(&cost(), &acc2), first);
    }

    #[test]
    fn measured_round_overheads_change_the_choice() {
        let flat = CostModel::from_tables(8, vec![1.0; 9], vec![0.5; 9]);
        let acc = tracker(&[(4, 0.6)]);
        let spec = Choice {
            exit: 4,
            draft_len: 2,
        };
        let fixed = AutoSpec {
            exit: Some(4),
            draft_len: Some(2),
        };
        let mut p = Policy::new(fixed, 8, Arc::default());
        let before = p.speedup(&flat, &acc, spec);
        // Full-depth steps turn out to cost 2 more than the cost model says:
        // a round that makes several tokens pays that once, so speculation
        // gains.
        for _ in 0..100 {
            p.observe_time(&flat, Choice::full(8), 0, 1, 8.5 + 2.0);
        }
        assert!((p.overhead.0[0] - 2.0).abs() < 1e-3, "{:?}", p.overhead);
        let cheaper_full = p.speedup(&flat, &acc, spec);
        assert!(cheaper_full > before, "{before} -> {cheaper_full}");
        // Speculative rounds that cost 6 more: speculation pays less.
        let mut q = Policy::new(fixed, 8, Arc::default());
        let t = q.seconds(&flat, spec, 2);
        for _ in 0..100 {
            q.observe_time(&flat, spec, 2, 2, t + 6.0);
        }
        assert!((q.overhead.0[1] - 6.0).abs() < 1e-3, "{:?}", q.overhead);
        assert!(q.speedup(&flat, &acc, spec) < before);
        // Rounds that match the prediction (including the overhead) change nothing.
        let t = q.seconds(&flat, spec, 2);
        q.observe_time(&flat, spec, 2, 3, t);
        assert!((q.overhead.0[1] - 6.0).abs() < 1e-3);
    }

    #[test]
    fn automatic_d_has_one_candidate_and_one_correction_per_exit() {
        let (acc, shared, mut p, first) = first_speculative_choice();
        // Rounds at the same exit under any d label feed one entry.
        for d in 1..=4 {
            let c = Choice {
                exit: first.exit,
                draft_len: d,
            };
            let (t, sec) = p.predict(&cost(), &acc, c);
            p.predicted = Some((c, t, sec));
            p.observe_time(&cost(), c, d, t.round() as usize, sec);
        }
        assert!(shared.snapshot().measured(p.key(first)));
        assert_eq!(p.key(first).draft_len, 0);
        // A full-depth step keeps its own entry.
        assert_eq!(p.key(Choice::full(8)), Choice::full(8));
    }

    #[test]
    fn drafting_goes_on_while_the_next_draft_pays_at_the_rounds_rate() {
        let c = cost();
        let spec = Choice {
            exit: 4,
            draft_len: 2,
        };
        let p = Policy::new(AutoSpec::default(), 8, Arc::default());
        let sure = p.stop_below(&c, &tracker(&[(4, 0.99)]), spec);
        let unsure = p.stop_below(&c, &tracker(&[(4, 0.6)]), spec);
        assert!(sure > 0.0 && sure < 1.0, "{sure}");
        // A worse exit makes the next draft less likely, so the drafts so
        // far must be surer before drafting on.
        assert!(unsure > sure, "{unsure} vs {sure}");
        let fixed = Policy::new(
            AutoSpec {
                exit: None,
                draft_len: Some(3),
            },
            8,
            Arc::default(),
        );
        assert_eq!(fixed.stop_below(&c, &tracker(&[(4, 0.9)]), spec), 0.0);
    }

    #[test]
    fn probes_do_not_make_the_rounds_that_carry_them_look_slow() {
        // Full-depth steps that take exactly their prediction, plus the
        // probes the policy scheduled in them: neither the per-call overhead
        // nor full depth's correction may move (a full depth that looks slow
        // would flatter every speculative choice, and full depth would not
        // run again to correct it).
        let c = cost();
        let acc = tracker(&[(4, 0.5)]);
        let mut p = Policy::new(AutoSpec::default(), 8, Arc::default());
        let full = Choice::full(8);
        let mut probed = 0;
        for round in 0..200 {
            assert_eq!(p.choose(&c, &acc), full);
            let probe = p.probe(&c, &acc, 100.0 + round as f64);
            probed += usize::from(probe.is_some());
            let price = probe.map_or(0.0, |_| c.head(1));
            p.observe_time(&c, full, 0, 1, p.seconds(&c, full, 0) + price);
        }
        assert!(probed > 10, "{probed} probes");
        assert!(p.overhead.0[0].abs() < 1e-9, "overhead {:?}", p.overhead);
        let f = p.corrections.snapshot().factor(full);
        assert!((f - 1.0).abs() < 1e-9, "full depth's factor {f}");
    }

    #[test]
    fn measured_corrections_steer_the_choice_across_sessions() {
        let (acc, shared, mut p, first) = first_speculative_choice();
        // Rounds of the first choice deliver a third of the predicted speed
        // (same tokens, three times the time). Alone, that moves nothing:
        // unmeasured choices borrow the same correction.
        for _ in 0..5 {
            let (t, sec) = p.predict(&cost(), &acc, first);
            shared.observe(p.key(first), t, 3.0 * sec, t, sec);
        }
        assert_eq!(p.choose(&cost(), &acc), first);
        // Another choice measured at its predicted speed now wins, in this
        // session and in a new session of the same model.
        let other = Choice {
            exit: if first.exit == 6 { 2 } else { 6 },
            draft_len: 2,
        };
        for _ in 0..5 {
            let (t, sec) = p.predict(&cost(), &acc, other);
            shared.observe(p.key(other), t, sec, t, sec);
        }
        assert_ne!(p.choose(&cost(), &acc), first);
        let mut q = Policy::new(AutoSpec::default(), 8, shared);
        assert_ne!(q.choose(&cost(), &acc), first);
    }

    #[test]
    fn exploration_is_bounded_and_never_tries_hopeless_choices() {
        // Hopeless exits: 200 rounds stay at full depth, no exploration.
        let hopeless = tracker(&(1..8).map(|e| (e, 0.05)).collect::<Vec<_>>());
        let mut p = Policy::new(AutoSpec::default(), 8, Arc::default());
        assert!((0..200).all(|_| p.choose(&cost(), &hopeless).is_step()));
        // Good exits: now and then an untried contender runs EXPLORE_ROUNDS
        // rounds; everything else is the policy's own choice.
        let good = tracker(&[(2, 0.9), (3, 0.97), (4, 0.98), (6, 0.99)]);
        let mut q = Policy::new(AutoSpec::default(), 8, Arc::default());
        let rounds = 20 * EXPLORE_EVERY;
        let mut explored = 0;
        for _ in 0..rounds {
            let c = q.choose(&cost(), &good);
            if c != q.current {
                explored += 1;
                let (t, sec) = q.predict(&cost(), &good, c);
                q.observe_time(&cost(), c, c.draft_len, t.round() as usize, sec);
                q.overhead = Overhead::default();
            }
        }
        assert!(explored > 0);
        assert!(
            explored <= rounds * EXPLORE_ROUNDS / EXPLORE_EVERY,
            "{explored}"
        );
    }

    #[test]
    fn exits_whose_best_case_is_close_to_full_depth_are_left_out() {
        // With cost(), exit 7 of 8 is at best 1.097x full depth (d = 8,
        // every draft accepted); exit 6 reaches 1.22x.
        let c = cost();
        let auto = Policy::new(AutoSpec::default(), 8, Arc::default());
        assert!(auto.ceiling(&c, 7) < MIN_CEILING && auto.ceiling(&c, 6) >= MIN_CEILING);
        // Only exit 7 agrees with the full model, and perfectly: its
        // prediction beats MIN_SPEEDUP, but it is neither chosen nor probed.
        let mut rates: Vec<(usize, f64)> = (1..7).map(|e| (e, 0.0)).collect();
        rates.push((7, 1.0));
        let acc = tracker(&rates);
        let e7 = Choice {
            exit: 7,
            draft_len: 8,
        };
        assert!(auto.speedup(&c, &acc, e7) > MIN_SPEEDUP);
        let mut p = auto;
        for round in 0..200 {
            assert!(p.choose(&c, &acc).is_step());
            assert_ne!(p.probe(&c, &acc, 1e3 * (1 + round) as f64), Some(7));
        }
        // An exit the caller fixes is used whatever its best case.
        let fixed = AutoSpec {
            exit: Some(7),
            draft_len: None,
        };
        let mut q = Policy::new(fixed, 8, Arc::default());
        assert_eq!(q.choose(&c, &acc).exit, 7);
    }

    #[test]
    fn probing_stays_within_budget() {
        let acc = tracker(&[(4, 0.9)]);
        let c = cost();
        let mut p = Policy::new(AutoSpec::default(), 8, Arc::default());
        assert_eq!(
            p.probe(&c, &acc, 0.0),
            None,
            "no time spent, nothing to spend"
        );
        let elapsed = 1000.0;
        let mut spent = 0;
        while p.probe(&c, &acc, elapsed).is_some() {
            spent += 1;
        }
        // Full depth: each probe costs head(1) = 0.5; 2% of 1000 = 20.
        assert_eq!(spent, 40);
        let (exits, rows) = p.prompt_probes(&c, &AcceptanceTracker::new(8), 100, 128);
        assert_eq!(rows, 16);
        assert!(!exits.is_empty() && exits.iter().all(|&e| (1..8).contains(&e)));
    }
}
