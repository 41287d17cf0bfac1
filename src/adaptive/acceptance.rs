//! Online estimates of how often each exit layer's greedy token equals the
//! full model's: from verify outcomes at the current exit and from probes of
//! other exits. Old evidence fades so the estimates follow the text. A
//! session starts from what the model's earlier sessions saw
//! ([`SharedAcceptance`]) instead of from nothing, so a short generation does
//! not spend its first rounds relearning that the exits agree.

use parking_lot::Mutex;
use std::sync::Arc;

/// Confidence bins for calibrating drafts' top probabilities.
pub const BINS: usize = 10;

/// Evidence kept per round: an exit not observed for ~70 rounds has half its weight.
const FADE: f64 = 0.99;
/// Weight of the shared rate in a session's estimate, in observations: the
/// session's own evidence outweighs it after a few rounds.
const PRIOR_WEIGHT: f64 = 4.0;
/// Evidence the shared counts keep per observation of an exit (a window of
/// ~200 observations, so they follow what the model is being used for).
const SHARED_FADE: f64 = 0.995;

/// Faded (hits, misses) of drafts per confidence bin, for one exit.
type Bins = [(f64, f64); BINS];

/// Agreement counts per exit over all sessions of a model (faded), and how
/// drafts' confidence maps to acceptance per exit: a session's confidence
/// stop is calibrated from its first round instead of after a few dozen.
#[derive(Debug, Default)]
pub struct SharedAcceptance {
    counts: Mutex<Vec<(f64, f64)>>,
    bins: Mutex<Vec<Bins>>,
}

impl SharedAcceptance {
    /// Forget everything seen.
    pub fn reset(&self) {
        self.counts.lock().clear();
        self.bins.lock().clear();
    }

    fn observe_bin(&self, exit: usize, bin: usize, agreed: bool) {
        let mut b = self.bins.lock();
        if b.len() <= exit {
            b.resize(exit + 1, [(0.0, 0.0); BINS]);
        }
        for (h, m) in b[exit].iter_mut() {
            *h *= SHARED_FADE;
            *m *= SHARED_FADE;
        }
        let (h, m) = &mut b[exit][bin];
        *h += f64::from(agreed);
        *m += f64::from(!agreed);
    }

    fn observe(&self, exit: usize, agreed: bool, weight: f64) {
        let mut c = self.counts.lock();
        if c.len() <= exit {
            c.resize(exit + 1, (0.0, 0.0));
        }
        let (h, m) = &mut c[exit];
        let fade = SHARED_FADE.powf(weight);
        *h = *h * fade + weight * f64::from(agreed);
        *m = *m * fade + weight * f64::from(!agreed);
    }

    /// The agreement rate of `exit` over all sessions, if any observed it.
    pub fn rate(&self, exit: usize) -> Option<f64> {
        self.counts.lock().get(exit).and_then(|&c| rate_of(c))
    }

    /// Every exit's counts and bins at once.
    fn snapshot(&self) -> (Vec<(f64, f64)>, Vec<Bins>) {
        (self.counts.lock().clone(), self.bins.lock().clone())
    }
}

/// `hits / (hits + misses)`, if there is any evidence.
fn rate_of((h, m): (f64, f64)) -> Option<f64> {
    (h + m > 1e-9).then(|| h / (h + m))
}

/// The greedy token an intermediate exit predicted for one position during a
/// pass (see `Session::set_probes`): the argmax of the exit head on the
/// hidden state that left layer `exit - 1` at position `pos`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub exit: usize,
    pub pos: usize,
    pub token: u32,
}

#[derive(Debug, Clone)]
pub struct AcceptanceTracker {
    /// Faded counts of agreements and disagreements, indexed by exit layer.
    hits: Vec<f64>,
    misses: Vec<f64>,
    /// Per exit and bin of the draft's top probability: faded (hits, misses).
    by_confidence: Vec<[(f64, f64); BINS]>,
    /// The model's counts, fed by this session's observations.
    shared: Option<Arc<SharedAcceptance>>,
    /// This session's prior: the model's counts as of the start of the
    /// round ([`AcceptanceTracker::fade`]), so estimating every (E, d) of a
    /// round takes no lock.
    prior: Vec<(f64, f64)>,
    /// The model's confidence bins, taken with `prior`.
    prior_bins: Vec<Bins>,
}

fn bin(top: f32) -> usize {
    ((top.clamp(0.0, 1.0) * BINS as f32) as usize).min(BINS - 1)
}

impl AcceptanceTracker {
    /// A tracker on its own evidence only.
    pub fn new(n_layers: usize) -> Self {
        AcceptanceTracker {
            hits: vec![0.0; n_layers + 1],
            misses: vec![0.0; n_layers + 1],
            by_confidence: vec![[(0.0, 0.0); BINS]; n_layers + 1],
            shared: None,
            prior: Vec::new(),
            prior_bins: Vec::new(),
        }
    }

    /// A tracker that starts from, and adds to, the model's shared counts.
    pub fn with_shared(n_layers: usize, shared: Arc<SharedAcceptance>) -> Self {
        let (prior, prior_bins) = shared.snapshot();
        AcceptanceTracker {
            prior,
            prior_bins,
            shared: Some(shared),
            ..Self::new(n_layers)
        }
    }

    /// One comparison of exit `exit`'s token with the full model's.
    pub fn observe(&mut self, exit: usize, agreed: bool) {
        self.observe_weighted(exit, agreed, 1.0);
    }

    /// Compare probed exits' tokens with the full model's greedy tokens
    /// `full[i]` at positions `pos0 + i`; each comparison counts as `weight`
    /// observations.
    pub fn score_probes(&mut self, probes: &[Probe], pos0: usize, full: &[u32], weight: f64) {
        for p in probes {
            if let Some(&t) = p.pos.checked_sub(pos0).and_then(|i| full.get(i)) {
                self.observe_weighted(p.exit, p.token == t, weight);
            }
        }
    }

    /// A comparison that counts as `weight` observations (less than one for
    /// weaker evidence).
    pub fn observe_weighted(&mut self, exit: usize, agreed: bool, weight: f64) {
        if exit < self.hits.len() {
            if agreed {
                self.hits[exit] += weight;
            } else {
                self.misses[exit] += weight;
            }
            if let Some(s) = &self.shared {
                s.observe(exit, agreed, weight);
            }
        }
    }

    /// A verify round at `exit`: `accepted` of `drafted` drafts accepted. The
    /// drafts after the first rejection say nothing.
    pub fn observe_round(&mut self, exit: usize, drafted: usize, accepted: usize) {
        for _ in 0..accepted {
            self.observe(exit, true);
        }
        if accepted < drafted {
            self.observe(exit, false);
        }
    }

    /// Like [`AcceptanceTracker::observe_round`], also learning how the
    /// drafts' top probabilities `confidence` map to acceptance.
    pub fn observe_drafts(&mut self, exit: usize, confidence: &[f32], accepted: usize) {
        self.observe_round(exit, confidence.len(), accepted);
        let Some(bins) = self.by_confidence.get_mut(exit) else {
            return;
        };
        for (i, &c) in confidence.iter().enumerate().take(accepted + 1) {
            let b = &mut bins[bin(c)];
            if i < accepted {
                b.0 += 1.0;
            } else {
                b.1 += 1.0;
            }
            if let Some(s) = &self.shared {
                s.observe_bin(exit, bin(c), i < accepted);
            }
        }
    }

    /// Estimated acceptance probability of a draft from `exit` by its top
    /// probability, one entry per bin: this session's evidence in the bin,
    /// with the model's rate for the bin (or, where the model has little
    /// evidence there, the exit's overall rate) counting as
    /// [`PRIOR_WEIGHT`] observations.
    pub fn calibration(&self, exit: usize) -> [f32; BINS] {
        let overall = self.rate(exit);
        let none = [(0.0, 0.0); BINS];
        let own = self.by_confidence.get(exit).unwrap_or(&none);
        let model = self.prior_bins.get(exit).unwrap_or(&none);
        let mut out = [0.0; BINS];
        for ((o, &(h, m)), &(hs, ms)) in out.iter_mut().zip(own).zip(model) {
            let prior = if hs + ms >= 2.0 {
                hs / (hs + ms)
            } else {
                overall
            };
            *o = ((h + PRIOR_WEIGHT * prior) / (h + m + PRIOR_WEIGHT)) as f32;
        }
        out
    }

    /// Let all evidence fade by one round, and take a fresh copy of the
    /// model's counts as the prior.
    pub fn fade(&mut self) {
        if let Some(s) = &self.shared {
            (self.prior, self.prior_bins) = s.snapshot();
        }
        self.hits.iter_mut().for_each(|h| *h *= FADE);
        self.misses.iter_mut().for_each(|m| *m *= FADE);
        for b in self.by_confidence.iter_mut().flatten() {
            b.0 *= FADE;
            b.1 *= FADE;
        }
    }

    /// How much evidence the model's earlier sessions left about `exit`.
    pub fn shared_evidence(&self, exit: usize) -> f64 {
        self.prior.get(exit).map_or(0.0, |(h, m)| h + m)
    }

    /// How much (faded) evidence exit `exit` has.
    pub fn evidence(&self, exit: usize) -> f64 {
        self.hits.get(exit).map_or(0.0, |h| h + self.misses[exit])
    }

    /// Estimated probability that a draft from exit `exit` is accepted: this
    /// session's evidence, with the model's shared rate counting as
    /// [`PRIOR_WEIGHT`] observations. An exit neither has observed borrows
    /// the nearest observed shallower exit's estimate (agreement grows with
    /// depth, so that is conservative), or 0.
    pub fn rate(&self, exit: usize) -> f64 {
        let prior = |e: usize| self.prior.get(e).and_then(|&c| rate_of(c));
        (1..=exit.min(self.hits.len() - 1))
            .rev()
            .find_map(|e| match (prior(e), self.evidence(e)) {
                (Some(p), n) => Some((self.hits[e] + PRIOR_WEIGHT * p) / (n + PRIOR_WEIGHT)),
                (None, n) if n > 1e-9 => Some(self.hits[e] / n),
                _ => None,
            })
            .unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_follow_observations_and_borrow_conservatively() {
        let mut t = AcceptanceTracker::new(8);
        assert_eq!(t.rate(4), 0.0);
        t.observe_round(2, 4, 1);
        assert_eq!(t.rate(2), 0.5);
        assert_eq!(
            t.rate(5),
            0.5,
            "unobserved exits borrow from shallower ones"
        );
        assert_eq!(t.rate(1), 0.0);
        t.observe_round(2, 3, 3);
        assert_eq!(t.rate(2), 0.8);
        t.fade();
        assert!((t.rate(2) - 0.8).abs() < 1e-12, "fading keeps the rate");
        assert!(t.evidence(2) < 5.0);
    }

    #[test]
    fn a_new_session_starts_from_the_models_shared_rate() {
        let shared = Arc::new(SharedAcceptance::default());
        let mut first = AcceptanceTracker::with_shared(8, shared.clone());
        for i in 0..40 {
            first.observe(5, i % 10 != 0); // 90% at exit 5
        }
        assert!((shared.rate(5).unwrap() - 0.9).abs() < 0.02);
        assert_eq!(shared.rate(3), None);
        let mut next = AcceptanceTracker::with_shared(8, shared.clone());
        assert!((next.rate(5) - shared.rate(5).unwrap()).abs() < 1e-12);
        assert!(
            (next.rate(7) - next.rate(5)).abs() < 1e-12,
            "borrows shallower"
        );
        assert_eq!(next.rate(3), 0.0);
        // Its own evidence soon outweighs the prior.
        for _ in 0..20 {
            next.observe(5, false);
        }
        assert!(next.rate(5) < 0.2, "{}", next.rate(5));
        assert_eq!(
            AcceptanceTracker::new(8).rate(5),
            0.0,
            "no sharing without it"
        );
    }

    #[test]
    fn calibration_learns_per_confidence_bin() {
        let mut t = AcceptanceTracker::new(8);
        for _ in 0..5 {
            // Confident drafts accepted, the unsure third rejected, the fourth unseen.
            t.observe_drafts(3, &[0.95, 0.9, 0.15, 0.05], 2);
        }
        let c = t.calibration(3);
        let overall = t.rate(3) as f32;
        assert!((t.rate(3) - 10.0 / 15.0).abs() < 1e-12);
        // Ten accepted drafts in bin 9 against a prior of 4 at the overall rate.
        let want = (10.0 + 4.0 * overall) / 14.0;
        assert!((c[9] - want).abs() < 1e-6, "{} vs {want}", c[9]);
        assert!(c[1] < 0.5 * overall, "{}", c[1]);
        assert!((c[5] - overall).abs() < 1e-6, "no evidence: overall rate");
    }

    #[test]
    fn a_new_session_starts_from_the_models_calibration() {
        let shared = Arc::new(SharedAcceptance::default());
        let mut first = AcceptanceTracker::with_shared(8, shared.clone());
        for _ in 0..30 {
            first.observe_drafts(5, &[0.95, 0.35], 1);
        }
        let fresh = AcceptanceTracker::with_shared(8, shared.clone());
        let c = fresh.calibration(5);
        // No evidence of its own: the model's bins, not the overall rate.
        assert!(c[9] > 0.9, "{}", c[9]);
        assert!(c[3] < 0.1, "{}", c[3]);
        let alone = AcceptanceTracker::new(8).calibration(5);
        assert!(
            alone.iter().all(|&p| p == alone[0]),
            "no sharing without it"
        );
    }
}
