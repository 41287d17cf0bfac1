//! Softmax pieces over a vocabulary-sized row, written in 16 independent
//! lanes so the compiler vectorises them: the largest logit, and the terms
//! `exp((l - max) / T)` with their sum. A scalar libm `exp` costs ~5 ns, so
//! a 4096-token row took 20 µs (as long as a tenth of a draft on the bundled
//! model) and a 128k-token row 0.65 ms. Sums run in a fixed lane order, so
//! results do not depend on anything but the row.

const LANES: usize = 16;

/// Runs `f` compiled for AVX-512 or AVX2 where the CPU has it: the same
/// arithmetic (Rust fuses no multiply-add on its own, and the lanes are
/// fixed), so the same bits, in 16 or 8 lanes a register instead of 4.
macro_rules! dispatch {
    ($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn wide($($arg: $ty),*) -> $ret {
                $name($($arg),*)
            }
            #[target_feature(enable = "avx2")]
            unsafe fn avx2($($arg: $ty),*) -> $ret {
                $name($($arg),*)
            }
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F.
                return unsafe { wide($($arg),*) };
            }
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                return unsafe { avx2($($arg),*) };
            }
        }
        $name($($arg),*)
    }};
}
pub(crate) use dispatch;

/// The largest value of `row` (NaNs ignored; -inf for an empty row).
pub fn max(row: &[f32]) -> f32 {
    dispatch!(max_lanes(row: &[f32]) -> f32)
}

#[inline(always)]
fn max_lanes(row: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &v) in m.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    let mut best = rest.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in m {
        best = best.max(v);
    }
    best
}

/// e^x for the arguments softmax has (x <= 0): Cephes' `expf` polynomial
/// after reducing x to n ln 2 + r, |r| <= ln 2 / 2, within 2 ulp of libm;
/// exactly 0 below -87 (where f32 would go subnormal). Branch-free, so it
/// vectorises.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding 1.5 * 2^23 rounds to an integer, left in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.max(-87.0);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        y * scale
    }
}

/// Σ row, in 16 lanes.
pub fn sum(row: &[f32]) -> f32 {
    dispatch!(sum_lanes(row: &[f32]) -> f32)
}

#[inline(always)]
fn sum_lanes(row: &[f32]) -> f32 {
    sum_lanes_of(row, |v| v)
}

/// Σ f(v) over `row` in 16 lanes, then the lanes in order and the tail:
/// one fixed order, vectorized by whatever instruction set it inlines into.
#[inline(always)]
pub(crate) fn sum_lanes_of(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Σ exp((l - max) / t) over `row`; each term is written to `terms` when given
/// (same length as `row`).
pub fn exp_sum(row: &[f32], max: f32, t: f32, terms: Option<&mut [f32]>) -> f32 {
    dispatch!(exp_sum_lanes(row: &[f32], max: f32, t: f32, terms: Option<&mut [f32]>) -> f32)
}

#[inline(always)]
fn exp_sum_lanes(row: &[f32], max: f32, t: f32, mut terms: Option<&mut [f32]>) -> f32 {
    let inv = 1.0 / t;
    let mut acc = [0.0f32; LANES];
    let n = row.len() - row.len() % LANES;
    for (i, c) in row[..n].chunks_exact(LANES).enumerate() {
        let mut e = [0.0f32; LANES];
        for ((e, &l), a) in e.iter_mut().zip(c).zip(acc.iter_mut()) {
            *e = exp_nonpositive((l - max) * inv);
            *a += *e;
        }
        if let Some(out) = terms.as_deref_mut() {
            out[i * LANES..(i + 1) * LANES].copy_from_slice(&e);
        }
    }
    let mut sum = 0.0;
    for (j, &l) in row[n..].iter().enumerate() {
        let e = exp_nonpositive((l - max) * inv);
        sum += e;
        if let Some(out) = terms.as_deref_mut() {
            out[n + j] = e;
        }
    }
    acc.iter().sum::<f32>() + sum
}

/// Softmax of `x` in place (temperature 1).
pub fn softmax_in_place(x: &mut [f32]) {
    dispatch!(softmax_lanes(x: &mut [f32]) -> ())
}

#[inline(always)]
fn softmax_lanes(x: &mut [f32]) {
    let max = max_lanes(x);
    let mut acc = [0.0f32; LANES];
    let n = x.len() - x.len() % LANES;
    for c in x[..n].chunks_exact_mut(LANES) {
        for (v, a) in c.iter_mut().zip(acc.iter_mut()) {
            *v = exp_nonpositive(*v - max);
            *a += *v;
        }
    }
    let mut rest = 0.0;
    for v in x[n..].iter_mut() {
        *v = exp_nonpositive(*v - max);
        rest += *v;
    }
    let inv = 1.0 / (acc.iter().sum::<f32>() + rest);
    x.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm_and_zero_far_below() {
        let mut worst = 0.0f64;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (a, b) = (exp_nonpositive(x) as f64, x.exp() as f64);
            if b > 1e-37 {
                worst = worst.max((a - b).abs() / b);
            }
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-90.0), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn softmax_in_place_matches_the_terms_over_their_sum() {
        for n in [1, 7, 16, 100] {
            let row: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 6.0).collect();
            let mut x = row.clone();
            softmax_in_place(&mut x);
            let m = max(&row);
            let mut terms = vec![0.0; n];
            let z = exp_sum(&row, m, 1.0, Some(&mut terms));
            for (a, t) in x.iter().zip(&terms) {
                assert!((a - t / z).abs() <= 1e-6, "n {n}");
            }
            assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn max_and_sum_agree_with_plain_loops() {
        let row: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.01 - 5.0)
            .collect();
        for n in [0, 1, 15, 16, 17, 1000] {
            let r = &row[..n];
            let want = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(r), want, "n {n}");
            let mut terms = vec![0.0; n];
            let s = exp_sum(r, want, 0.7, Some(&mut terms));
            let plain: f64 = r.iter().map(|&l| ((l - want) as f64 / 0.7).exp()).sum();
            assert!((s as f64 - plain).abs() <= 1e-5 * plain.max(1.0), "n {n}");
            for (e, &l) in terms.iter().zip(r) {
                let x = ((l - want) / 0.7) as f64;
                assert!((*e as f64 - x.exp()).abs() <= 4e-6 * x.exp().max(1e-30));
            }
        }
    }

    #[test]
    fn the_wide_builds_give_the_bits_of_the_baseline_build() {
        // `dispatch!` runs AVX-512 or AVX2 builds of the same functions; the
        // `_lanes` functions called directly are the baseline build.
        let row: Vec<f32> = (0..1037)
            .map(|i| ((i * 7919) % 1013) as f32 * 0.031 - 17.0)
            .collect();
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for n in [0, 1, 7, 16, 33, 1037] {
            let r = &row[..n];
            assert_eq!(max(r).to_bits(), max_lanes(r).to_bits(), "n {n}");
            assert_eq!(sum(r).to_bits(), sum_lanes(r).to_bits(), "n {n}");
            let m = max_lanes(r);
            let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
            let (za, zb) = (
                exp_sum(r, m, 0.7, Some(&mut a)),
                exp_sum_lanes(r, m, 0.7, Some(&mut b)),
            );
            assert_eq!((za.to_bits(), bits(&a)), (zb.to_bits(), bits(&b)), "n {n}");
            let (mut a, mut b) = (r.to_vec(), r.to_vec());
            softmax_in_place(&mut a);
            softmax_lanes(&mut b);
            assert_eq!(bits(&a), bits(&b), "n {n}");
        }
    }
}
