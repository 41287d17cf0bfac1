//! The portable kernels: the same fused multiply-add chains as the SIMD
//! tiles, in plain Rust.

use super::*;

/// Portable kernel: `step(acc, w, s, x)` adds step `s` of a panel's
/// elements `w` (one k; see [`Weight::STEPS`]) times input `x` to a row's
/// sixteen sums, in the same order as the SIMD kernels, so results are
/// identical on every machine.
pub(super) fn portable<W, X: Copy, const STEPS: usize>(
    j: &Job<W, X>,
    panels: std::ops::Range<usize>,
    step: impl Fn(&mut [f32; PANEL], &[W], usize, X),
) {
    let elems = j.cols.div_ceil(STEPS);
    for p in panels {
        let pw = &j.w[p * PANEL * elems..][..PANEL * elems];
        for (r0, rr) in groups(j.rows, j.group) {
            for r in r0..r0 + rr {
                let mut acc = [0f32; PANEL];
                for k in 0..j.cols {
                    step(
                        &mut acc,
                        &pw[k / STEPS * PANEL..][..PANEL],
                        k % STEPS,
                        j.x[r0 * j.cols + k * rr + r - r0],
                    );
                }
                j.store(r, p, &acc);
            }
        }
    }
}

pub(super) fn block_portable<W: Weight>(j: &Job<W>, panels: std::ops::Range<usize>) {
    fn run<W: Weight, const STEPS: usize>(j: &Job<W>, panels: std::ops::Range<usize>) {
        portable::<W, f32, STEPS>(j, panels, |acc, w, s, x| {
            for (a, &w) in acc.iter_mut().zip(w) {
                *a = w.at(s).mul_add(x, *a);
            }
        });
    }
    match W::STEPS {
        1 => run::<W, 1>(j, panels),
        _ => run::<W, 2>(j, panels),
    }
}

/// Portable bf16-pair kernel, bit-identical to `VDPBF16PS`: per pair, the
/// high product then the low one is added to the sum, each rounded once (a
/// product of two bf16 is exact in f32, so `mul_add` rounds only the sum).
pub(super) fn block_portable_pairs(j: &Job<u32, u32>, panels: std::ops::Range<usize>) {
    let hi = |v: u32| Bf16Pair(v).at(1);
    let lo = |v: u32| Bf16Pair(v).at(0);
    portable::<u32, u32, 1>(j, panels, |acc, w, _, x| {
        for (a, &wv) in acc.iter_mut().zip(w) {
            *a = hi(wv).mul_add(hi(x), *a);
            *a = lo(wv).mul_add(lo(x), *a);
        }
    });
}
