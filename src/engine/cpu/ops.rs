//! Row-wise elementwise kernels. Each works on one row at a time so results do
//! not depend on the batch.

/// `out = w * x / sqrt(mean(x²) + eps)` for one row (Hugging Face LlamaRMSNorm).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum();
    let inv = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = g * (v * inv);
    }
}

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
