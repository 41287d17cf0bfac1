//! Turning logits into tokens: greedy, temperature, top-k, top-p, seeded.

use crate::error::{Error, Result};
use crate::softmax;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How the next token is chosen. `temperature == 0` means greedy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: usize,
    /// 1.0 disables top-p.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self::default()
    }
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::invalid(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(format!(
                "top_p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// Index of the largest logit; the first one wins ties (as torch.argmax).
/// NaNs are ignored (0 for a row with no number).
pub fn argmax(logits: &[f32]) -> u32 {
    first_of(logits, softmax::max(logits))
}

/// The first id whose logit is `m` (0 if none is).
fn first_of(logits: &[f32], m: f32) -> u32 {
    logits.iter().position(|&v| v == m).unwrap_or(0) as u32
}

/// Largest probability of softmax(logits) (temperature 1): a draft's confidence.
pub fn top_probability(logits: &[f32]) -> f32 {
    top_probability_at(logits, softmax::max(logits))
}

/// [`top_probability`] of logits whose largest is `m`.
fn top_probability_at(logits: &[f32], m: f32) -> f32 {
    1.0 / softmax::exp_sum(logits, m, 1.0, None)
}

/// What decoding needs from one row of logits once its token is chosen: the
/// chosen token, the greedy token (argmax) and its probability at
/// temperature 1 (a draft's confidence). A GPU engine computes it where the
/// logits are, so only these cross to the host.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pick {
    /// The token the row's [`PickRule`] chose.
    pub token: u32,
    pub argmax: u32,
    pub top_prob: f32,
}

impl Pick {
    /// The pick of a row of logits under `rule`.
    pub fn of(logits: &[f32], rule: &PickRule) -> Pick {
        let m = softmax::max(logits);
        let argmax = first_of(logits, m);
        Pick {
            token: match rule {
                PickRule::Greedy => argmax,
                PickRule::Sample { .. } => rule.apply(logits),
            },
            argmax,
            top_prob: top_probability_at(logits, m),
        }
    }
}

/// The distribution sampling draws from: softmax(logits / T) restricted to
/// the top-k and then to the smallest top-p nucleus, renormalised.
pub fn distribution(logits: &[f32], p: &SamplingParams) -> Vec<f32> {
    distribution_cut_by(logits, p, nucleus)
}

/// [`distribution`] with the top-k / top-p cut made by `cut(probs, k,
/// top_p)`, which returns the ids to keep.
fn distribution_cut_by(
    logits: &[f32],
    p: &SamplingParams,
    cut: impl Fn(&[f32], usize, f32) -> Vec<u32>,
) -> Vec<f32> {
    let t = p.temperature.max(f32::MIN_POSITIVE);
    let mut probs = vec![0.0; logits.len()];
    softmax::exp_sum(logits, softmax::max(logits), t, Some(&mut probs));
    let k = if p.top_k == 0 {
        probs.len()
    } else {
        p.top_k.min(probs.len())
    };
    if k < probs.len() || p.top_p < 1.0 {
        let keep = cut(&probs, k, p.top_p);
        let mut kept = vec![0.0; probs.len()];
        for &i in &keep {
            kept[i as usize] = probs[i as usize];
        }
        probs = kept;
    }
    let sum = softmax::sum(&probs);
    probs.iter_mut().for_each(|x| *x /= sum);
    probs
}

/// The ids the top-k / top-p cut keeps: in decreasing order of probability
/// (ties in index order, as a stable sort), at most `k` of them, stopping at
/// the first whose cumulative mass reaches `top_p`. Only candidates above a
/// threshold are sorted (a 128k vocabulary holds a few hundred): the
/// threshold drops 16-fold until the cut falls among them.
fn nucleus(probs: &[f32], k: usize, top_p: f32) -> Vec<u32> {
    let total = softmax::sum(probs);
    let top = probs.iter().copied().fold(0.0f32, f32::max);
    let mut threshold = top / 64.0;
    let mut candidates: Vec<u32> = Vec::new();
    loop {
        candidates.clear();
        candidates.extend((0..probs.len() as u32).filter(|&i| probs[i as usize] >= threshold));
        candidates.sort_by(|&a, &b| {
            probs[b as usize]
                .total_cmp(&probs[a as usize])
                .then(a.cmp(&b))
        });
        let everything = candidates.len() == probs.len();
        let mut keep = 0;
        let mut mass = 0.0;
        let mut cut = false;
        for &i in candidates.iter().take(k) {
            keep += 1;
            mass += probs[i as usize] / total;
            if mass >= top_p {
                cut = true;
                break;
            }
        }
        if cut || keep == k || everything || threshold == 0.0 {
            candidates.truncate(keep);
            return candidates;
        }
        threshold /= 16.0;
        if threshold < f32::MIN_POSITIVE {
            threshold = 0.0;
        }
    }
}

/// A seeded random source; the same seed gives the same tokens.
#[derive(Debug, Clone)]
pub struct Rng64(ChaCha8Rng);

impl Rng64 {
    pub fn new(seed: u64) -> Self {
        Rng64(ChaCha8Rng::seed_from_u64(seed))
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0.random::<f32>()
    }
    /// Draw an index from a normalised distribution.
    pub fn categorical(&mut self, probs: &[f32]) -> u32 {
        categorical_at(self.uniform(), probs)
    }
}

/// The index a uniform draw `u` in [0, 1) selects from `probs`: the first
/// whose cumulative probability exceeds `u` times their sum.
pub fn categorical_at(u: f32, probs: &[f32]) -> u32 {
    let u = u * softmax::sum(probs);
    let mut acc = 0.0;
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            acc += p;
            last = i;
            if u < acc {
                return i as u32;
            }
        }
    }
    last as u32
}

/// Choose a token from logits with the given parameters.
pub fn sample(logits: &[f32], p: &SamplingParams, rng: &mut Rng64) -> u32 {
    if p.is_greedy() {
        argmax(logits)
    } else {
        categorical_at(rng.uniform(), &distribution(logits, p))
    }
}

/// How a row's token is chosen, decided before the pass that produces the
/// row, so that an engine can choose it where the logits are (a GPU engine:
/// only the token and its probability cross to the host).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PickRule {
    /// The argmax.
    Greedy,
    /// Drawn from [`distribution`] with the uniform `u` in [0, 1), already
    /// taken from the generation's random source.
    Sample { params: SamplingParams, u: f32 },
}

impl PickRule {
    /// The token `self` chooses from a row of logits, as a host engine does.
    pub fn apply(&self, logits: &[f32]) -> u32 {
        match self {
            PickRule::Greedy => argmax(logits),
            PickRule::Sample { params, u } => categorical_at(*u, &distribution(logits, params)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed: 0,
        }
    }

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn temperature_top_k_and_top_p_shape_the_distribution() {
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let p = distribution(&logits, &params(1.0, 0, 1.0));
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        for (pi, l) in p.iter().zip(logits) {
            assert!((pi - l.exp() / z).abs() < 1e-6);
        }
        // Higher temperature flattens.
        let hot = distribution(&logits, &params(4.0, 0, 1.0));
        assert!(hot[0] < p[0] && hot[3] > p[3]);
        // top-k keeps the k best.
        let k2 = distribution(&logits, &params(1.0, 2, 1.0));
        assert!(k2[2] == 0.0 && k2[3] == 0.0 && (k2[0] + k2[1] - 1.0).abs() < 1e-6);
        // top-p keeps the smallest prefix whose mass reaches p.
        let nucleus = distribution(&logits, &params(1.0, 0, 0.7));
        assert!(nucleus[0] > 0.0 && nucleus[1] > 0.0 && nucleus[2] == 0.0);
        let tiny = distribution(&logits, &params(1.0, 0, 0.01));
        assert_eq!(tiny, vec![1.0, 0.0, 0.0, 0.0]);
    }

    /// The cut by a full stable sort (what `nucleus` must equal).
    fn sorted_cut(probs: &[f32], k: usize, top_p: f32) -> Vec<u32> {
        let mut order: Vec<u32> = (0..probs.len() as u32).collect();
        order.sort_by(|&a, &b| probs[b as usize].total_cmp(&probs[a as usize]));
        let total = softmax::sum(probs);
        let (mut keep, mut mass) = (0, 0.0);
        for &i in order.iter().take(k) {
            keep += 1;
            mass += probs[i as usize] / total;
            if mass >= top_p {
                break;
            }
        }
        order.truncate(keep);
        order
    }

    #[test]
    fn the_thresholded_cut_equals_a_full_sort_bit_for_bit() {
        let mut rng = Rng64::new(3);
        for case in 0..300 {
            let n = [5, 64, 4096][case % 3];
            let spread = [0.5f32, 4.0, 30.0][(case / 3) % 3];
            // Some rows with many ties (rounded logits).
            let logits: Vec<f32> = (0..n)
                .map(|_| {
                    let v = (rng.uniform() - 0.5) * spread;
                    if case % 5 == 0 {
                        v.round()
                    } else {
                        v
                    }
                })
                .collect();
            let p = params(
                [0.3f32, 1.0, 2.0][case % 3],
                [0, 1, 3, 40, 5000][case % 5],
                [1.0f32, 0.9, 0.5, 0.999, 0.01][(case / 5) % 5],
            );
            let a = distribution(&logits, &p);
            let b = distribution_cut_by(&logits, &p, sorted_cut);
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "case {case}: n {n} {p:?}"
            );
        }
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_follows_the_distribution() {
        let probs = [0.1f32, 0.6, 0.3];
        let draw = |seed| {
            let mut r = Rng64::new(seed);
            (0..3000).map(|_| r.categorical(&probs)).collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
        let counts = draw(9).iter().fold([0f32; 3], |mut c, &t| {
            c[t as usize] += 1.0 / 3000.0;
            c
        });
        for (c, p) in counts.iter().zip(probs) {
            assert!((c - p).abs() < 0.03, "{counts:?}");
        }
    }

    #[test]
    fn invalid_parameters_are_rejected() {
        assert!(params(-1.0, 0, 1.0).validate().is_err());
        assert!(params(f32::NAN, 0, 1.0).validate().is_err());
        assert!(params(1.0, 0, 0.0).validate().is_err());
        assert!(params(1.0, 0, 1.5).validate().is_err());
        assert!(params(0.0, 0, 1.0).validate().is_ok());
    }
}
