//! Measured speed against predicted speed for every (E, d) that has run,
//! shared by all sessions of a model. The policy multiplies its predictions
//! by these ratios, so systematic errors of the cost and acceptance models
//! (multi-row passes that cost more inside a round than timed alone, drafts
//! whose acceptances are not independent, a confidence stop that ends drafts
//! early) stop steering the choice. Choices that have not run yet borrow the
//! mean ratio of those that have, so the policy tries one only when even the
//! corrected prediction says it may be faster: exploration stays bounded.

use super::Choice;
use parking_lot::Mutex;
use std::collections::HashMap;

/// Weight kept by the old sums at each new round of any choice (a window of
/// ~50 rounds).
const DECAY: f64 = 0.98;
/// Rounds of a choice before its own ratio replaces the mean.
const MIN_ROUNDS: f64 = 3.0;
/// Evidence below which a choice's entry is dropped.
const FORGOTTEN: f64 = 0.01;

/// Decayed sums of one choice's rounds.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    tokens: f64,
    seconds: f64,
    predicted_tokens: f64,
    predicted_seconds: f64,
    rounds: f64,
}

impl Sums {
    fn add(&mut self, o: &Sums, decay: f64) {
        self.tokens = self.tokens * decay + o.tokens;
        self.seconds = self.seconds * decay + o.seconds;
        self.predicted_tokens = self.predicted_tokens * decay + o.predicted_tokens;
        self.predicted_seconds = self.predicted_seconds * decay + o.predicted_seconds;
        self.rounds = self.rounds * decay + o.rounds;
    }

    /// Measured tokens/s over predicted tokens/s.
    fn ratio(&self) -> f64 {
        (self.tokens / self.predicted_tokens) * (self.predicted_seconds / self.seconds)
    }
}

#[derive(Debug, Default)]
pub struct Corrections {
    by_choice: Mutex<HashMap<(usize, usize), Sums>>,
}

impl Corrections {
    /// Forget every correction.
    pub fn reset(&self) {
        self.by_choice.lock().clear();
    }

    /// A round of `c` produced `tokens` in `seconds`; the policy predicted
    /// `predicted_tokens` in `predicted_seconds`.
    pub fn observe(
        &self,
        c: Choice,
        tokens: f64,
        seconds: f64,
        predicted_tokens: f64,
        predicted_seconds: f64,
    ) {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !(ok(tokens) && ok(seconds) && ok(predicted_tokens) && ok(predicted_seconds)) {
            return;
        }
        let round = Sums {
            tokens,
            seconds,
            predicted_tokens,
            predicted_seconds,
            rounds: 1.0,
        };
        let mut map = self.by_choice.lock();
        // Every choice's evidence fades with every round, run or not: a
        // choice judged on a few early rounds (cold caches, a busy spell)
        // becomes untried again after a while instead of being shut out for
        // good, and is then retried if its prediction still says it pays.
        map.values_mut()
            .for_each(|s| s.add(&Sums::default(), DECAY));
        map.retain(|_, s| s.rounds >= FORGOTTEN);
        map.entry((c.exit, c.draft_len))
            .or_default()
            .add(&round, 1.0);
    }

    /// The factors as they stand, read under one lock (a policy consults
    /// them for every candidate of a round).
    pub fn snapshot(&self) -> Factors {
        let map = self.by_choice.lock();
        let mut all = Sums::default();
        for s in map.values() {
            all.add(s, 1.0);
        }
        Factors {
            own: map
                .iter()
                .filter(|(_, s)| s.rounds >= MIN_ROUNDS)
                .map(|(k, s)| (*k, s.ratio().clamp(0.25, 4.0)))
                .collect(),
            mean: if all.rounds >= MIN_ROUNDS {
                all.ratio().clamp(0.25, 4.0)
            } else {
                1.0
            },
        }
    }

    /// [`Factors::factor`] of a fresh snapshot.
    pub fn factor(&self, c: Choice) -> f64 {
        self.snapshot().factor(c)
    }
}

/// Measured-over-predicted factors at one moment.
#[derive(Debug, Clone)]
pub struct Factors {
    /// Choices that have run enough rounds for their own ratio.
    own: HashMap<(usize, usize), f64>,
    /// The ratio over every measured round (1 before there are any).
    mean: f64,
}

impl Factors {
    /// Whether `c` has run enough rounds to have its own ratio.
    pub fn measured(&self, c: Choice) -> bool {
        self.own.contains_key(&(c.exit, c.draft_len))
    }

    /// The factor for `c`: its own ratio once it has run a few rounds,
    /// otherwise the mean over every choice that has (so an unmeasured choice
    /// keeps its uncorrected rank against the measured ones), otherwise 1.
    pub fn factor(&self, c: Choice) -> f64 {
        self.own
            .get(&(c.exit, c.draft_len))
            .copied()
            .unwrap_or(self.mean)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_ratio_after_a_few_rounds_and_the_mean_before() {
        let c = Corrections::default();
        let a = Choice {
            exit: 3,
            draft_len: 4,
        };
        let b = Choice {
            exit: 5,
            draft_len: 2,
        };
        assert_eq!(c.factor(a), 1.0);
        // `a` runs at half the predicted speed (same tokens, twice the time).
        for _ in 0..5 {
            c.observe(a, 3.0, 2.0, 3.0, 1.0);
        }
        assert!((c.factor(a) - 0.5).abs() < 1e-9);
        // `b` and full depth have not run: they borrow the mean.
        assert!((c.factor(b) - 0.5).abs() < 1e-9);
        assert!((c.factor(Choice::full(8)) - 0.5).abs() < 1e-9);
        // Bad measurements are ignored.
        c.observe(b, f64::NAN, 1.0, 1.0, 1.0);
        c.observe(b, 1.0, 0.0, 1.0, 1.0);
        assert!((c.factor(b) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn a_choice_judged_on_early_rounds_is_forgotten_while_others_run() {
        let c = Corrections::default();
        let (slow, full) = (
            Choice {
                exit: 5,
                draft_len: 2,
            },
            Choice::full(8),
        );
        // A few rounds of `slow` at a third of its predicted speed (cold start).
        for _ in 0..5 {
            c.observe(slow, 3.0, 3.0, 3.0, 1.0);
        }
        assert!(c.snapshot().measured(slow));
        assert!((c.factor(slow) - 1.0 / 3.0).abs() < 1e-9);
        // Full depth then runs as predicted for a while: the old verdict on
        // `slow` fades until it is untried again and borrows the mean.
        for _ in 0..200 {
            c.observe(full, 1.0, 1.0, 1.0, 1.0);
        }
        let f = c.snapshot();
        assert!(!f.measured(slow), "stale evidence no longer counts");
        assert!(
            (f.factor(slow) - f.factor(full)).abs() < 0.02,
            "{}",
            f.factor(slow)
        );
    }
}
