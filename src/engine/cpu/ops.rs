//! Row-wise elementwise kernels. Each works on one row at a time so results do
//! not depend on the batch.

/// `out = w * x / sqrt(mean(x²) + eps)` for each row of `x` (rows as long
/// as `w`; Hugging Face LlamaRMSNorm). Compiled for the widest vectors the
/// CPU has: a batch's rows are normed on the thread the others wait for.
pub fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    crate::softmax::dispatch!(rms_norm_rows_lanes(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> ())
}

#[inline(always)]
fn rms_norm_rows_lanes(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (out, x) in out.chunks_exact_mut(w.len()).zip(x.chunks_exact(w.len())) {
        let inv = 1.0 / (sum_squares_lanes(x) / x.len() as f32 + eps).sqrt();
        for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
            *o = g * (v * inv);
        }
    }
}

/// `x += y`, element by element (a residual connection), compiled as
/// [`rms_norm_rows`] is.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    crate::softmax::dispatch!(add_in_place_lanes(x: &mut [f32], y: &[f32]) -> ())
}

#[inline(always)]
fn add_in_place_lanes(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Σ x² in lanes, one fixed order whatever the instruction set (a plain
/// sum is one chain of dependent adds, on the holding thread of every pass).
#[inline(always)]
fn sum_squares_lanes(x: &[f32]) -> f32 {
    crate::softmax::sum_lanes_of(x, |v| v * v)
}

/// What one element of [`swiglu`] costs, in multiply-adds (its exp is
/// most of it), for sharing work among threads.
pub const SWIGLU_WORK: usize = 16;

/// `gate = silu(gate) * up`, in place. silu(g) = g / (1 + e^-g), written
/// with e = e^-|g| so that one branch-free exp of a non-positive argument
/// serves both signs (and the loop vectorises).
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    crate::softmax::dispatch!(swiglu_lanes(gate: &mut [f32], up: &[f32]) -> ())
}

#[inline(always)]
fn swiglu_lanes(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let e = crate::softmax::exp_nonpositive(-g.abs());
        let s = if *g >= 0.0 {
            *g / (1.0 + e)
        } else {
            *g * e / (1.0 + e)
        };
        *g = s * u;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn residual_adds_give_the_bits_of_the_baseline_build() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let y: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.11).cos() * 1e-3).collect();
        let (mut a, mut b) = (x.clone(), x.clone());
        super::add_in_place(&mut a, &y);
        super::add_in_place_lanes(&mut b, &y);
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
        assert!(a.iter().zip(&x).zip(&y).all(|((a, x), y)| *a == x + y));
    }

    #[test]
    fn swiglu_gives_the_bits_of_the_baseline_build() {
        let gate: Vec<f32> = (-500..537).map(|i| i as f32 * 0.173).collect();
        let up: Vec<f32> = gate.iter().map(|g| 0.5 - g * 0.03).collect();
        let (mut a, mut b) = (gate.clone(), gate);
        super::swiglu(&mut a, &up);
        super::swiglu_lanes(&mut b, &up);
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
    }

    #[test]
    fn rms_norm_gives_the_bits_of_the_baseline_build_and_the_definition() {
        for n in [1, 15, 16, 17, 768, 1000] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.031)
                .collect();
            let w: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32 * 0.1).collect();
            // Two rows, the second the first times -2: each is normed alone,
            // so (without eps, and scaling by a power of two being exact)
            // the second comes out as the first negated, bit for bit.
            let rows: Vec<f32> = x
                .iter()
                .copied()
                .chain(x.iter().map(|v| -2.0 * v))
                .collect();
            let (mut all, mut base) = (vec![0.0; 2 * n], vec![1.0; 2 * n]);
            super::rms_norm_rows(&rows, &w, 1e-5, &mut all);
            super::rms_norm_rows_lanes(&rows, &w, 1e-5, &mut base);
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&all), bits(&base), "n {n}");
            let mut no_eps = vec![0.0; 2 * n];
            super::rms_norm_rows(&rows, &w, 0.0, &mut no_eps);
            let negated: Vec<f32> = no_eps[n..].iter().map(|v| -v).collect();
            assert_eq!(bits(&no_eps[..n]), bits(&negated), "n {n}");
            let out = &all[..n];
            let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64;
            for ((o, &v), &g) in out.iter().zip(&x).zip(&w) {
                let want = g as f64 * v as f64 / (ms + 1e-5).sqrt();
                assert!(
                    (*o as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3),
                    "n {n}"
                );
            }
        }
    }

    #[test]
    fn swiglu_matches_the_definition() {
        let gate: Vec<f32> = (-400..400).map(|i| i as f32 * 0.25).collect();
        let up: Vec<f32> = gate.iter().map(|g| 1.5 - g * 0.01).collect();
        let mut out = gate.clone();
        super::swiglu(&mut out, &up);
        for ((o, &g), &u) in out.iter().zip(&gate).zip(&up) {
            let want = g as f64 / (1.0 + (-g as f64).exp()) * u as f64;
            assert!(
                (*o as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "g {g}"
            );
        }
    }
}
