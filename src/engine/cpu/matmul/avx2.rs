//! AVX2 + FMA + F16C tiles of R input rows by P panels (16 P outputs).
use super::int8::{Quad, BLOCK_QUADS};
use super::{groups, Bf16Pair, HighFirst, Job, Weight, PANEL};
use half::f16;
use std::arch::x86_64::*;

/// How far ahead of its current element (bytes) a tile of several rows
/// prefetches its panel. Several rows consume a panel's weights slowly
/// enough that the hardware prefetcher falls behind: 4096 bytes ahead made
/// the 100M model's 3-9-row layer products 1.1-1.25x faster, the
/// Llama-3.2-1B shape's 5-row products 1.25x (Zen 3, 2 threads). One row
/// streams fast enough without it.
const PREFETCH: usize = 4096;

pub trait Load16: Weight {
    /// Outputs 0..8 and 8..16 of a panel's elements at one position.
    unsafe fn load16(p: *const Self) -> (__m256, __m256);
    /// Their weights at step `s` (see [`Weight::STEPS`]) as f32 lanes.
    #[inline(always)]
    unsafe fn widen(v: (__m256, __m256), _s: usize) -> (__m256, __m256) {
        v
    }
}
impl Load16 for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> (__m256, __m256) {
        (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
    }
}
/// Step `s` of eight [`Bf16Pair`]s (see [`Bf16Pair::at`]) as f32 lanes.
#[inline(always)]
unsafe fn widen(v: __m256, s: usize) -> __m256 {
    let v = _mm256_castps_si256(v);
    _mm256_castsi256_ps(if s == 0 {
        _mm256_slli_epi32(v, 16)
    } else {
        _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF_0000u32 as i32))
    })
}
impl Load16 for Bf16Pair {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> (__m256, __m256) {
        let p = p as *const f32;
        (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
    }
    #[inline(always)]
    unsafe fn widen(v: (__m256, __m256), s: usize) -> (__m256, __m256) {
        (widen(v.0, s), widen(v.1, s))
    }
}
impl Load16 for HighFirst {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> (__m256, __m256) {
        Bf16Pair::load16(p as *const Bf16Pair)
    }
    #[inline(always)]
    unsafe fn widen(v: (__m256, __m256), s: usize) -> (__m256, __m256) {
        Bf16Pair::widen(v, 1 - s)
    }
}
impl Load16 for f16 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> (__m256, __m256) {
        let lo = _mm_loadu_si128(p as *const __m128i);
        let hi = _mm_loadu_si128(p.add(8) as *const __m128i);
        (_mm256_cvtph_ps(lo), _mm256_cvtph_ps(hi))
    }
}
/// Writes a tile's sums (outputs 0..8 and 8..16 of each panel).
#[inline(always)]
unsafe fn store<W, X, const R: usize, const P: usize>(
    j: &Job<W, X>,
    r0: usize,
    p0: usize,
    acc: &[[[__m256; 2]; P]; R],
) {
    for (r, row) in acc.iter().enumerate() {
        for (p, a) in row.iter().enumerate() {
            let mut tmp = [0f32; PANEL];
            _mm256_storeu_ps(tmp.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(tmp.as_mut_ptr().add(8), a[1]);
            j.store(r0 + r, p0 + p, &tmp);
        }
    }
}

/// Rows `r0..r0+R` against panels `p0..p0+P`.
#[inline(always)]
unsafe fn tile<W: Load16, const R: usize, const P: usize>(j: &Job<W>, r0: usize, p0: usize) {
    let cols = j.cols;
    let elems = cols.div_ceil(W::STEPS);
    let mut acc = [[[_mm256_setzero_ps(); 2]; P]; R];
    let w = j.w.as_ptr().add(p0 * PANEL * elems);
    let x = j.x.as_ptr().add(r0 * cols);
    // The first `steps` steps of element `e` (columns e * STEPS + s), each
    // panel's element loaded once for all of them; a macro because closures
    // do not inherit the caller's target features.
    macro_rules! step {
        ($e:expr, $steps:expr) => {
            for p in 0..P {
                let at = w.add((p * elems + $e) * PANEL);
                if R > 1 {
                    // Past the matrix's end this is a harmless hint, hence wrapping.
                    _mm_prefetch::<_MM_HINT_T0>((at as *const i8).wrapping_add(PREFETCH));
                }
                let v = W::load16(at);
                for s in 0..$steps {
                    let (lo, hi) = W::widen(v, s);
                    let k = $e * W::STEPS + s;
                    for (r, row) in acc.iter_mut().enumerate() {
                        let b = _mm256_broadcast_ss(&*x.add(k * R + r));
                        row[p][0] = _mm256_fmadd_ps(lo, b, row[p][0]);
                        row[p][1] = _mm256_fmadd_ps(hi, b, row[p][1]);
                    }
                }
            }
        };
    }
    let full = cols / W::STEPS;
    for e in 0..full {
        step!(e, W::STEPS);
    }
    if cols > full * W::STEPS {
        step!(full, cols - full * W::STEPS);
    }
    store(j, r0, p0, &acc);
}

/// Panels `ps` of the product for every input row, in groups of at most
/// [`super::AVX2_GROUP`] rows. A tile keeps `2 * R * P` accumulators, the
/// two weight vectors of a panel, a broadcast and the zero that widening
/// bf16 takes in 16 registers: R x P of 1 x 4, 2 x 2 or up to 5 x 1. Larger
/// tiles (6 x 1, 2 x 3) spilled accumulators to the stack, which made
/// 2-64-row products 1.3-1.7x slower.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn block<W: Load16>(j: &Job<W>, ps: std::ops::Range<usize>) {
    // One panel (or a tile's few) at a time for every group, so that with
    // several groups the panel's weights come from memory once and the
    // later groups find them in cache while the next panel streams in (the
    // 100M model's layers at 9 rows, 2 threads: 16.6 against 17.8 ms,
    // medians of five alternating runs). One or two rows are one group,
    // which takes 4 or 2 panels a tile.
    let mut p = ps.start;
    while p < ps.end {
        let left = ps.end - p;
        let width = match j.rows {
            1 if left >= 4 => 4,
            2 if left >= 2 => 2,
            _ => 1,
        };
        for (r0, rr) in groups(j.rows, j.group) {
            match (rr, width) {
                (1, 4) => tile::<W, 1, 4>(j, r0, p),
                (2, 2) => tile::<W, 2, 2>(j, r0, p),
                (1, _) => tile::<W, 1, 1>(j, r0, p),
                (2, _) => tile::<W, 2, 1>(j, r0, p),
                (3, _) => tile::<W, 3, 1>(j, r0, p),
                (4, _) => tile::<W, 4, 1>(j, r0, p),
                _ => tile::<W, 5, 1>(j, r0, p),
            }
        }
        p += width;
    }
}

/// int8 tile (see `int8.rs`): per block of 32 columns, the exact integer
/// sums by `VPMADDUBSW` of |w| (once per panel, for every row) and x with
/// w's sign (at most 2 · 127 · 127 per pair of columns: nothing
/// saturates) and `VPMADDWD`, then one FMA by the block's scale.
#[inline(always)]
unsafe fn tile_int8<const R: usize, const P: usize>(j: &Job<Quad, u32>, r0: usize, p0: usize) {
    let kq = j.cols;
    let nb = kq / BLOCK_QUADS;
    let mut acc = [[[_mm256_setzero_ps(); 2]; P]; R];
    let w = j.w.as_ptr().add(p0 * PANEL * kq);
    let x = j.x.as_ptr().add(r0 * kq);
    let (flip, ones) = (_mm256_set1_epi8(-128), _mm256_set1_epi16(1));
    for b in 0..nb {
        let mut sums = [[[_mm256_setzero_si256(); 2]; P]; R];
        for e in b * BLOCK_QUADS..(b + 1) * BLOCK_QUADS {
            for p in 0..P {
                let at = w.add((p * kq + e) * PANEL) as *const __m256i;
                let wv = [0, 1].map(|h| _mm256_xor_si256(_mm256_loadu_si256(at.add(h)), flip));
                let wabs = wv.map(|v| _mm256_abs_epi8(v));
                for (r, row) in sums.iter_mut().enumerate() {
                    let xv = _mm256_set1_epi32(*x.add(e * R + r) as i32);
                    for ((s, &wh), &wa) in row[p].iter_mut().zip(&wv).zip(&wabs) {
                        let pairs = _mm256_maddubs_epi16(wa, _mm256_sign_epi8(xv, wh));
                        *s = _mm256_add_epi32(*s, _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
        }
        for (r, (row, sums)) in acc.iter_mut().zip(&sums).enumerate() {
            let scale = _mm256_set1_ps(j.x_blocks[(r0 + r) * nb + b].scale);
            for (a, s) in row.iter_mut().flatten().zip(sums.iter().flatten()) {
                *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*s), scale, *a);
            }
        }
    }
    store(j, r0, p0, &acc);
}

/// int8 products in groups of at most [`super::AVX2_INT8_GROUP`] rows: a
/// tile holds `4 * R * P` sums (integer and float, two halves of a panel),
/// so one row takes four panels and more rows one. Panels are the outer
/// loop, as in [`block`]: every group finds the panel in cache.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn block_int8(j: &Job<Quad, u32>, ps: std::ops::Range<usize>) {
    let mut p = ps.start;
    while p < ps.end {
        let width = match (j.rows, ps.end - p) {
            (1, 4..) => 4,
            (1, 2..) => 2,
            _ => 1,
        };
        for (r0, rr) in groups(j.rows, j.group) {
            match (rr, width) {
                (1, 4) => tile_int8::<1, 4>(j, r0, p),
                (1, 2) => tile_int8::<1, 2>(j, r0, p),
                (1, _) => tile_int8::<1, 1>(j, r0, p),
                (2, _) => tile_int8::<2, 1>(j, r0, p),
                (3, _) => tile_int8::<3, 1>(j, r0, p),
                _ => tile_int8::<4, 1>(j, r0, p),
            }
        }
        p += width;
    }
}
