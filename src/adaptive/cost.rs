//! What a round costs: one decoder layer and the exit head, timed by row count
//! on the model's own engine. Llama layers all have the same shape, so layer 0
//! stands for every layer.

use super::MAX_DRAFT;
use crate::engine::Engine;
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
    /// [`Engine::enter`], as decoding does.
    pub fn measure<E: Engine>(engine: &E) -> CostModel {
        engine.enter(|| Self::measure_in(engine))
    }

    fn measure_in<E: Engine>(engine: &E) -> CostModel {
        let t0 = Instant::now();
        let cfg = engine.config();
        let n_layers = cfg.num_layers;
        let vocab = cfg.vocab_size as u32;
        let tokens = |n: usize, salt: usize| -> Vec<u32> {
            (0..n)
                .map(|i| ((i * 7 + salt * 13) as u32) % vocab)
                .collect()
        };
        let mut kv = engine.new_kv(CONTEXT + MAX_ROWS);
        let mut x = engine.embed(&tokens(CONTEXT, 0));
        for l in 0..n_layers {
            engine.run_layer(l, &mut kv, 0, &mut x);
        }
        let mut logits = Vec::new();
        let mut layer = vec![f64::INFINITY; MAX_ROWS];
        let mut head = vec![f64::INFINITY; MAX_ROWS];
        // Row counts take turns within each repetition, so a burst of noise
        // from a busy machine lands on one repetition of several row counts
        // rather than on every repetition of one (the minimum then drops it).
        let mut reps = 5;
        let mut rep = 0;
        while rep <= reps {
            for rows in 1..=MAX_ROWS {
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
                // Repetition 0 is the untimed warm-up.
                if rep > 0 {
                    layer[rows - 1] = layer[rows - 1].min(tl);
                    head[rows - 1] = head[rows - 1].min(th);
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

    /// One token at full depth.
    pub fn full_token(&self) -> f64 {
        self.n_layers as f64 * self.layer(1) + self.head(1)
    }

    /// One draft step at exit `exit`: the shallow layers and the exit head on one row.
    pub fn draft_step(&self, exit: usize) -> f64 {
        exit as f64 * self.layer(1) + self.head(1)
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

    /// A cost model with given per-row-count times (tests, what-if analysis).
    pub fn from_tables(n_layers: usize, layer: Vec<f64>, head: Vec<f64>) -> CostModel {
        CostModel {
            n_layers,
            layer: monotone(layer),
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
}
