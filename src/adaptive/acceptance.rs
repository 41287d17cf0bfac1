//! Online estimates of how often each exit layer's greedy token equals the
//! full model's: from verify outcomes at the current exit and from probes of
//! other exits. Old evidence fades so the estimates follow the text.

/// Confidence bins for calibrating drafts' top probabilities.
pub const BINS: usize = 10;

/// Evidence kept per round: an exit not observed for ~70 rounds has half its weight.
const FADE: f64 = 0.99;

#[derive(Debug, Clone, PartialEq)]
pub struct AcceptanceTracker {
    /// Faded counts of agreements and disagreements, indexed by exit layer.
    hits: Vec<f64>,
    misses: Vec<f64>,
    /// Per exit and bin of the draft's top probability: faded (hits, misses).
    by_confidence: Vec<[(f64, f64); BINS]>,
}

fn bin(top: f32) -> usize {
    ((top.clamp(0.0, 1.0) * BINS as f32) as usize).min(BINS - 1)
}

impl AcceptanceTracker {
    pub fn new(n_layers: usize) -> Self {
        AcceptanceTracker {
            hits: vec![0.0; n_layers + 1],
            misses: vec![0.0; n_layers + 1],
            by_confidence: vec![[(0.0, 0.0); BINS]; n_layers + 1],
        }
    }

    /// One comparison of exit `exit`'s token with the full model's.
    pub fn observe(&mut self, exit: usize, agreed: bool) {
        if exit < self.hits.len() {
            if agreed {
                self.hits[exit] += 1.0;
            } else {
                self.misses[exit] += 1.0;
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
        }
    }

    /// Estimated acceptance probability of a draft from `exit` by its top
    /// probability, one entry per bin (bins with little evidence use the
    /// exit's overall rate).
    pub fn calibration(&self, exit: usize) -> [f32; BINS] {
        let overall = self.rate(exit);
        let mut out = [overall as f32; BINS];
        if let Some(bins) = self.by_confidence.get(exit) {
            for (o, &(h, m)) in out.iter_mut().zip(bins) {
                if h + m >= 2.0 {
                    *o = (h / (h + m)) as f32;
                }
            }
        }
        out
    }

    /// Let all evidence fade by one round.
    pub fn fade(&mut self) {
        self.hits.iter_mut().for_each(|h| *h *= FADE);
        self.misses.iter_mut().for_each(|m| *m *= FADE);
        for b in self.by_confidence.iter_mut().flatten() {
            b.0 *= FADE;
            b.1 *= FADE;
        }
    }

    /// How much (faded) evidence exit `exit` has.
    pub fn evidence(&self, exit: usize) -> f64 {
        self.hits.get(exit).map_or(0.0, |h| h + self.misses[exit])
    }

    /// Estimated probability that a draft from exit `exit` is accepted. An exit
    /// never observed borrows the nearest observed shallower exit's estimate
    /// (agreement grows with depth, so that is conservative), or 0.
    pub fn rate(&self, exit: usize) -> f64 {
        (1..=exit.min(self.hits.len() - 1))
            .rev()
            .find(|&e| self.evidence(e) > 1e-9)
            .map_or(0.0, |e| self.hits[e] / self.evidence(e))
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
    fn calibration_learns_per_confidence_bin() {
        let mut t = AcceptanceTracker::new(8);
        for _ in 0..5 {
            // Confident drafts accepted, the unsure third rejected, the fourth unseen.
            t.observe_drafts(3, &[0.95, 0.9, 0.15, 0.05], 2);
        }
        let c = t.calibration(3);
        assert_eq!(c[9], 1.0);
        assert_eq!(c[1], 0.0);
        assert!(
            (c[5] - t.rate(3) as f32).abs() < 1e-6,
            "no evidence: overall rate"
        );
        assert!((t.rate(3) - 10.0 / 15.0).abs() < 1e-12);
    }
}
