//! Row-wise elementwise kernels. Each works on one row at a time so results do
//! not depend on the batch.

/// `out = w * x / sqrt(mean(x²) + eps)` for one row (Hugging Face LlamaRMSNorm).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let inv = 1.0 / (sum_squares(x) / x.len() as f32 + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = g * (v * inv);
    }
}

/// Σ x² in lanes, one fixed order whatever the instruction set (a plain
/// sum is one chain of dependent adds, on the holding thread of every pass).
fn sum_squares(x: &[f32]) -> f32 {
    crate::softmax::dispatch!(sum_squares_lanes(x: &[f32]) -> f32)
}

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
            assert_eq!(
                super::sum_squares(&x).to_bits(),
                super::sum_squares_lanes(&x).to_bits()
            );
            let mut out = vec![0.0; n];
            super::rms_norm(&x, &w, 1e-5, &mut out);
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
