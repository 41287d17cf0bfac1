//! What a round costs: one decoder layer and the exit head, timed by row count
//! on the model's own engine. Llama layers all have the same shape, so layer 0
//! stands for every layer.

use super::MAX_DRAFT;
use crate::engine::{Engine, Rows};
use crate::error::{Error, Result};
use std::time::Instant;

/// Rows a verify pass can have (drafts + 1).
pub const MAX_ROWS: usize = MAX_DRAFT + 1;
/// Positions already in the cache while timing (attention has something to read).
const CONTEXT: usize = 64;

/// Seconds per call, index `rows - 1`, for `rows = 1..=MAX_ROWS`.
#[derive(Debug, Clone, PartialEq)]
pub struct CostModel {
    pub n_layers: usize,
    pub layer: Vec<f64>,
    pub head: Vec<f64>,
    /// The draft head (the exit head over the draft shortlist; the exit head
    /// itself when the model has none).
    pub draft_head: Vec<f64>,
    /// Wall time the measurement took.
    pub measure_seconds: f64,
}

fn at(table: &[f64], rows: usize) -> f64 {
    match rows {
        0 => 0.0,
        r if r <= table.len() => table[r - 1],
        // Beyond the table: the last measured per-row increment.
        r => {
            let n = table.len();
            let step = if n > 1 {
                table[n - 1] - table[n - 2]
            } else {
                table[0]
            };
            table[n - 1] + step * (r - n) as f64
        }
    }
}

/// `n` token ids for timing (any ids do: the cost does not depend on them).
fn tokens<E: Engine>(engine: &E, n: usize, salt: usize) -> Vec<u32> {
    let vocab = engine.config().vocab_size as u32;
    (0..n)
        .map(|i| ((i * 7 + salt * 13) as u32) % vocab)
        .collect()
}

/// A K/V cache holding [`CONTEXT`] positions in every layer, with room for
/// [`MAX_ROWS`] more.
fn primed_kv<E: Engine>(engine: &E) -> E::Kv {
    let mut kv = engine.new_kv(CONTEXT + MAX_ROWS);
    let mut x = engine.embed(&tokens(engine, CONTEXT, 0));
    for l in 0..engine.config().num_layers {
        engine.run_layer(l, &mut kv, 0, &mut x);
    }
    kv
}

/// A full-depth step (`drafts == 0`, `exit` = the number of layers) or a
/// self-speculative round, timed the way decoding runs it, next to what the
/// cost model predicts for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundTiming {
    pub exit: usize,
    pub drafts: usize,
    /// Median seconds over the repetitions.
    pub measured: f64,
    pub predicted: f64,
}

/// Later entries never cheaper than earlier ones (timing noise would otherwise
/// make a longer verify look free).
fn monotone(mut t: Vec<f64>) -> Vec<f64> {
    for i in 1..t.len() {
        t[i] = t[i].max(t[i - 1]);
    }
    t
}

impl CostModel {
    /// Time a layer and the exit head for 1..=MAX_ROWS rows (the fastest of a
    /// few repetitions each, row counts interleaved). A repetition runs every layer once and takes
    /// the mean, so weights come from memory as in decoding rather than from
    /// a cache warmed by the previous repetition; it runs inside
    /// [`Engine::enter`], as decoding does. The draft head scores `extra`
    /// on every row besides its shortlist, as it scores a session's own
    /// tokens in decoding.
    pub fn measure<E: Engine>(engine: &E, extra: &[u32]) -> CostModel {
        engine.enter(|| Self::measure_in(engine, extra))
    }

    fn measure_in<E: Engine>(engine: &E, extra: &[u32]) -> CostModel {
        let t0 = Instant::now();
        let cfg = engine.config();
        let n_layers = cfg.num_layers;
        let tokens = |n, salt| tokens(engine, n, salt);
        let mut kv = primed_kv(engine);
        let mut logits = Vec::new();
        let mut layer = vec![f64::INFINITY; MAX_ROWS];
        let mut head = vec![f64::INFINITY; MAX_ROWS];
        let mut draft_head = vec![f64::INFINITY; MAX_ROWS];
        // Row counts take turns within each repetition, so a burst of noise
        // from a busy machine lands on one repetition of several row counts
        // rather than on every repetition of one (the minimum then drops it).
        let mut reps = 5;
        let mut rep = 0;
        while rep <= reps {
            for rows in 1..=MAX_ROWS {
                let extras = vec![extra; rows];
                let mut x = engine.embed(&tokens(rows, rep));
                engine.synchronize();
                let t = Instant::now();
                for l in 0..n_layers {
                    engine.run_layer(l, &mut kv, CONTEXT, &mut x);
                }
                engine.synchronize();
                let tl = t.elapsed().as_secs_f64() / n_layers as f64;
                for l in 0..n_layers {
                    engine.truncate_kv(&mut kv, l, CONTEXT);
                }
                let t = Instant::now();
                engine.head(&x, 0, &mut logits);
                let th = t.elapsed().as_secs_f64();
                let t = Instant::now();
                engine.draft_head(&x, 0, &extras, &mut logits);
                let td = t.elapsed().as_secs_f64();
                // Repetition 0 is the untimed warm-up.
                if rep > 0 {
                    layer[rows - 1] = layer[rows - 1].min(tl);
                    head[rows - 1] = head[rows - 1].min(th);
                    draft_head[rows - 1] = draft_head[rows - 1].min(td);
                }
            }
            // Big models: fewer repetitions keep the measurement under a second or two.
            if rep == 1 && n_layers as f64 * layer[0] + head[0] > 0.02 {
                reps = 2;
            }
            rep += 1;
        }
        CostModel {
            n_layers: cfg.num_layers,
            layer: monotone(layer),
            head: monotone(head),
            draft_head: monotone(draft_head),
            measure_seconds: t0.elapsed().as_secs_f64(),
        }
    }

    /// One decoder layer over `rows` rows.
    pub fn layer(&self, rows: usize) -> f64 {
        at(&self.layer, rows)
    }

    /// The exit head over `rows` rows.
    pub fn head(&self, rows: usize) -> f64 {
        at(&self.head, rows)
    }

    /// The draft head over `rows` rows.
    pub fn draft_head(&self, rows: usize) -> f64 {
        at(&self.draft_head, rows)
    }

    /// One token at full depth.
    pub fn full_token(&self) -> f64 {
        self.n_layers as f64 * self.layer(1) + self.head(1)
    }

    /// One draft step at exit `exit`: the shallow layers and the draft head on one row.
    pub fn draft_step(&self, exit: usize) -> f64 {
        exit as f64 * self.layer(1) + self.draft_head(1)
    }

    /// A self-speculative round with `drafts` drafts at exit `exit`: the draft
    /// steps, the last draft through the shallow layers, and the deep layers
    /// and head over `drafts + 1` rows.
    pub fn round(&self, exit: usize, drafts: usize) -> f64 {
        let deep = (self.n_layers - exit) as f64;
        drafts as f64 * self.draft_step(exit)
            + exit as f64 * self.layer(1)
            + deep * self.layer(drafts + 1)
            + self.head(drafts + 1)
    }

    /// What the model predicts for `drafts` drafts at `exit` (0: a full-depth step).
    fn pattern(&self, exit: usize, drafts: usize) -> f64 {
        if drafts == 0 {
            self.full_token()
        } else {
            self.round(exit, drafts)
        }
    }

    /// Time a full-depth step (the first entry) and a self-speculative round
    /// for each `(exit, drafts)` the way decoding runs them, `reps` times
    /// each (patterns in turn, so a busy spell hits all of them alike), and
    /// put each median next to this model's prediction. A round: `drafts`
    /// one-row passes through layers `0..exit`, each followed by the exit
    /// head, the last draft's pass through the same layers, then the deeper
    /// layers and the head over `drafts + 1` rows. The policy compares a
    /// round with a full-depth step, so what matters is that both columns
    /// agree on that ratio, not on absolute times (`layerskip costs`).
    /// Draft heads score `extra` too, as in [`CostModel::measure`].
    pub fn time_rounds<E: Engine>(
        &self,
        engine: &E,
        extra: &[u32],
        rounds: &[(usize, usize)],
        reps: usize,
    ) -> Result<Vec<RoundTiming>> {
        let n_layers = engine.config().num_layers;
        if n_layers != self.n_layers {
            return Err(Error::invalid(format!(
                "the cost model is for {} layers, the engine has {n_layers}",
                self.n_layers
            )));
        }
        for &(exit, drafts) in rounds {
            if !(1..n_layers).contains(&exit) || !(1..=MAX_DRAFT).contains(&drafts) {
                return Err(Error::invalid(format!(
                    "round E={exit} d={drafts}: E must be in 1..{n_layers} and d in 1..={MAX_DRAFT}"
                )));
            }
        }
        let patterns: Vec<(usize, usize)> = std::iter::once((n_layers, 0))
            .chain(rounds.iter().copied())
            .collect();
        let times = engine.enter(|| {
            let mut kv = primed_kv(engine);
            let mut logits = Vec::new();
            let mut times = vec![Vec::with_capacity(reps); patterns.len()];
            // Repetition 0 is the untimed warm-up.
            for rep in 0..=reps.max(1) {
                for (&(exit, drafts), t) in patterns.iter().zip(&mut times) {
                    // Twice, timing the second: a pass runs slower right
                    // after a larger one, and in decoding a round follows a
                    // round like it.
                    for timed in [false, rep > 0] {
                        let ids = tokens(engine, drafts + 1, rep);
                        engine.synchronize();
                        let start = Instant::now();
                        let mut rows = engine.embed(&[]);
                        for (k, &id) in ids.iter().enumerate() {
                            let mut x = engine.embed(&[id]);
                            for l in 0..exit {
                                engine.run_layer(l, &mut kv, CONTEXT + k, &mut x);
                            }
                            if k < drafts {
                                engine.draft_head(&x, 0, &[extra], &mut logits);
                            }
                            rows.append(x);
                        }
                        for l in exit..n_layers {
                            engine.run_layer(l, &mut kv, CONTEXT, &mut rows);
                        }
                        // A round's verify head, or a full-depth step's own.
                        engine.head(&rows, 0, &mut logits);
                        engine.synchronize();
                        if timed {
                            t.push(start.elapsed().as_secs_f64());
                        }
                        for l in 0..n_layers {
                            engine.truncate_kv(&mut kv, l, CONTEXT);
                        }
                    }
                }
            }
            times
        });
        Ok(patterns
            .iter()
            .zip(times)
            .map(|(&(exit, drafts), mut t)| {
                t.sort_by(f64::total_cmp);
                RoundTiming {
                    exit,
                    drafts,
                    measured: t[t.len() / 2],
                    predicted: self.pattern(exit, drafts),
                }
            })
            .collect())
    }

    /// The cost of one session's rows in passes that `others` rows of other
    /// sessions share: what its rows add to each pass (`others = 0` is the
    /// model itself). Where a pass is memory-bound a few more rows are
    /// nearly free, so verifying drafts costs little; once the shared pass
    /// is compute-bound every row costs its share, and speculation, which
    /// spends rows on drafts that may be rejected, stops paying. A draft
    /// pass is priced the same way, as if the others drafted too.
    pub fn shared(&self, others: usize) -> CostModel {
        if others == 0 {
            return self.clone();
        }
        let added = |t: &[f64]| -> Vec<f64> {
            let base = at(t, others);
            (1..=t.len())
                .map(|r| (at(t, others + r) - base).max(f64::MIN_POSITIVE))
                .collect()
        };
        CostModel {
            n_layers: self.n_layers,
            layer: monotone(added(&self.layer)),
            head: monotone(added(&self.head)),
            draft_head: monotone(added(&self.draft_head)),
            measure_seconds: self.measure_seconds,
        }
    }

    /// A cost model with given per-row-count times (tests, what-if analysis).
    pub fn from_tables(n_layers: usize, layer: Vec<f64>, head: Vec<f64>) -> CostModel {
        CostModel {
            n_layers,
            layer: monotone(layer),
            draft_head: monotone(head.clone()),
            head: monotone(head),
            measure_seconds: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_extrapolate_and_stay_monotone() {
        let c = CostModel::from_tables(4, vec![1.0, 1.5, 1.2], vec![0.5, 0.6, 0.7]);
        assert_eq!(c.layer(2), 1.5);
        assert_eq!(c.layer(3), 1.5, "noise may not make 3 rows cheaper than 2");
        assert!((c.head(5) - 0.9).abs() < 1e-12);
        assert_eq!(c.full_token(), 4.5);
        // Round at E=1, d=2: 2 draft steps (1 + 0.5), last draft shallow (1), 3 deep layers x 3 rows, head 3 rows.
        assert!((c.round(1, 2) - (3.0 + 1.0 + 4.5 + 0.7)).abs() < 1e-12);
    }

    #[test]
    fn shared_passes_price_what_the_rows_add() {
        let c = CostModel::from_tables(4, vec![1.0, 1.1, 1.2, 2.2, 3.2], vec![0.5; 5]);
        assert_eq!(c.shared(0), c);
        let s = c.shared(2);
        // One row after two others: 1.2 - 1.1; two rows: 2.2 - 1.1.
        assert!((s.layer(1) - 0.1).abs() < 1e-12);
        assert!((s.layer(2) - 1.1).abs() < 1e-12);
        // Past the table: the last increment per row.
        assert!((s.layer(4) - (3.2 + 1.0 - 1.1)).abs() < 1e-12);
        assert!(s.head(1) > 0.0, "a row is never free");
    }
}
