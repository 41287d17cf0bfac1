//! AVX-512F tiles: a panel's sixteen outputs fill one 512-bit register, the
//! input value is broadcast straight from memory into the FMA, and 32
//! registers hold up to 28 accumulators (rows x panels).
use super::int8::{Quad, BLOCK_QUADS};
use super::{groups, Bf16Pair, Job, Weight, PANEL};
use half::f16;
use std::arch::x86_64::*;

pub trait Load16: Weight {
    /// A panel's sixteen elements at one position.
    unsafe fn load16(p: *const Self) -> __m512;
    /// Their weights at step `s` (see [`Weight::STEPS`]) as f32 lanes.
    #[inline(always)]
    unsafe fn widen(v: __m512, _s: usize) -> __m512 {
        v
    }
}
impl Load16 for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> __m512 {
        _mm512_loadu_ps(p)
    }
}
impl Load16 for Bf16Pair {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> __m512 {
        _mm512_loadu_ps(p as *const f32)
    }
    #[inline(always)]
    unsafe fn widen(v: __m512, s: usize) -> __m512 {
        let v = _mm512_castps_si512(v);
        _mm512_castsi512_ps(if s == 0 {
            _mm512_slli_epi32(v, 16)
        } else {
            _mm512_and_si512(v, _mm512_set1_epi32(0xFFFF_0000u32 as i32))
        })
    }
}
impl Load16 for f16 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}

/// How far ahead in a panel's weights [`tile`] prefetches. The hardware
/// prefetcher alone leaves a core short of the bandwidth it can draw: 1,024
/// bytes ahead made the 100M model's layer products 1.1-1.25x faster with
/// int8 weights (1-16 rows) and 1.05-1.5x with bf16 ones (f32 products),
/// on a Xeon with AMX, one thread; 512 and 2,048 did no better.
const PREFETCH: usize = 1024;

/// Rows `r0..r0+R` against panels `p0..p0+P`.
#[inline(always)]
unsafe fn tile<W: Load16, const R: usize, const P: usize>(j: &Job<W>, r0: usize, p0: usize) {
    let cols = j.cols;
    let elems = cols.div_ceil(W::STEPS);
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    let w = j.w.as_ptr().add(p0 * PANEL * elems);
    let x = j.x.as_ptr().add(r0 * cols);
    // Panel p's weights `wv` at column k times every row. Macros, not
    // closures: closures do not inherit the caller's target features,
    // and intrinsics outside them are calls.
    macro_rules! fma_rows {
        ($wv:expr, $k:expr, $p:expr) => {
            for (r, row) in acc.iter_mut().enumerate() {
                row[$p] = _mm512_fmadd_ps($wv, _mm512_set1_ps(*x.add($k * R + r)), row[$p]);
            }
        };
    }
    // Element `e` of panel `p`, prefetched `PREFETCH` bytes ahead once per
    // cache line.
    macro_rules! at {
        ($p:expr, $e:expr) => {{
            let at = w.add(($p * elems + $e) * PANEL);
            if ($e * PANEL * size_of::<W>()) % 64 == 0 {
                _mm_prefetch::<_MM_HINT_T0>((at as *const i8).wrapping_add(PREFETCH));
            }
            at
        }};
    }
    // The first `steps` steps of element `e` (columns e * STEPS + s).
    macro_rules! step {
        ($e:expr, $steps:expr) => {
            if R * P <= 16 {
                // Few accumulators: load each element once for its steps.
                for p in 0..P {
                    let v = W::load16(at!(p, $e));
                    for s in 0..$steps {
                        fma_rows!(W::widen(v, s), $e * W::STEPS + s, p);
                    }
                }
            } else {
                // Many: load again per step (from L1) rather than keep
                // every panel's element in a register.
                for s in 0..$steps {
                    for p in 0..P {
                        let at = if s == 0 {
                            at!(p, $e)
                        } else {
                            w.add((p * elems + $e) * PANEL)
                        };
                        let wv = W::widen(W::load16(at), s);
                        fma_rows!(wv, $e * W::STEPS + s, p);
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

/// Writes a tile's sums.
#[inline(always)]
unsafe fn store<W, X, const R: usize, const P: usize>(
    j: &Job<W, X>,
    r0: usize,
    p0: usize,
    acc: &[[__m512; P]; R],
) {
    for (r, row) in acc.iter().enumerate() {
        for (p, a) in row.iter().enumerate() {
            let mut tmp = [0f32; PANEL];
            _mm512_storeu_ps(tmp.as_mut_ptr(), *a);
            j.store(r0 + r, p0 + p, &tmp);
        }
    }
}

/// [`tile`] for bf16 pairs: one `VDPBF16PS` adds a k pair's two products
/// to sixteen sums, twice the multiply-adds of an FMA.
#[inline(always)]
unsafe fn tile_pairs<const R: usize, const P: usize>(j: &Job<u32, u32>, r0: usize, p0: usize) {
    let kps = j.cols;
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    let w = j.w.as_ptr().add(p0 * PANEL * kps);
    let x = j.x.as_ptr().add(r0 * kps);
    for kp in 0..kps {
        for p in 0..P {
            let wv: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(w.add((p * kps + kp) * PANEL) as _));
            for (r, row) in acc.iter_mut().enumerate() {
                let xv: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*x.add(kp * R + r) as i32));
                row[p] = _mm512_dpbf16_ps(row[p], wv, xv);
            }
        }
    }
    store(j, r0, p0, &acc);
}

/// How far ahead in a panel's weights [`tile_int8`] prefetches: a tile of
/// 9 rows reads one panel at a time, slowly enough for a stream, so it
/// looks further ahead than [`PREFETCH`]: 4,096 bytes made the 100M
/// model's 9-row int8 products 1.1-1.2x faster than 1,024, one row no
/// slower (Xeon with AMX, one thread).
const PREFETCH_INT8: usize = 4096;

/// int8 tile (see `int8.rs`): per block of 32 columns, `VPDPBUSD` adds
/// four columns' products of sixteen outputs, the weights (offset by 128,
/// the unsigned side) times an input word broadcast from memory, to sums
/// that start from the block's offset; then one FMA by the block's scale.
#[inline(always)]
unsafe fn tile_int8<const R: usize, const P: usize>(j: &Job<Quad, u32>, r0: usize, p0: usize) {
    let kq = j.cols;
    let nb = kq / BLOCK_QUADS;
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    let w = j.w.as_ptr().add(p0 * PANEL * kq);
    let x = j.x.as_ptr().add(r0 * kq);
    let block = |r: usize, b: usize| j.x_blocks[(r0 + r) * nb + b];
    for b in 0..nb {
        let mut sums = [[_mm512_setzero_si512(); P]; R];
        for (r, row) in sums.iter_mut().enumerate() {
            *row = [_mm512_set1_epi32(block(r, b).offset); P];
        }
        for e in b * BLOCK_QUADS..(b + 1) * BLOCK_QUADS {
            for p in 0..P {
                let at = w.add((p * kq + e) * PANEL);
                _mm_prefetch::<_MM_HINT_T0>((at as *const i8).wrapping_add(PREFETCH_INT8));
                let wv = _mm512_loadu_si512(at as *const _);
                for (r, row) in sums.iter_mut().enumerate() {
                    let xv = _mm512_set1_epi32(*x.add(e * R + r) as i32);
                    row[p] = _mm512_dpbusd_epi32(row[p], wv, xv);
                }
            }
        }
        for (r, (row, sums)) in acc.iter_mut().zip(&sums).enumerate() {
            let scale = _mm512_set1_ps(block(r, b).scale);
            for (a, &s) in row.iter_mut().zip(sums) {
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, *a);
            }
        }
    }
    store(j, r0, p0, &acc);
}

/// The tile kernels of one kind of product.
trait Tiles {
    /// Rows `r0..r0+R` against panels `p0..p0+P`.
    unsafe fn tile<const R: usize, const P: usize>(&self, r0: usize, p0: usize);
}
impl<W: Load16> Tiles for Job<'_, W> {
    #[inline(always)]
    unsafe fn tile<const R: usize, const P: usize>(&self, r0: usize, p0: usize) {
        tile::<W, R, P>(self, r0, p0)
    }
}
impl Tiles for Job<'_, u32, u32> {
    #[inline(always)]
    unsafe fn tile<const R: usize, const P: usize>(&self, r0: usize, p0: usize) {
        tile_pairs::<R, P>(self, r0, p0)
    }
}

impl Tiles for Job<'_, Quad, u32> {
    #[inline(always)]
    unsafe fn tile<const R: usize, const P: usize>(&self, r0: usize, p0: usize) {
        tile_int8::<R, P>(self, r0, p0)
    }
}

trait EmulatedTiles {
    unsafe fn tile_emulated<const R: usize, const P: usize>(&self, r0: usize, p0: usize);
}
impl EmulatedTiles for Job<'_, u32, u32> {
    /// [`tile_pairs`] by FMAs: the high halves, then the low ones.
    #[inline(always)]
    unsafe fn tile_emulated<const R: usize, const P: usize>(&self, r0: usize, p0: usize) {
        let (j, kps) = (self, self.cols);
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        let w = j.w.as_ptr().add(p0 * PANEL * kps);
        let x = j.x.as_ptr().add(r0 * kps);
        for kp in 0..kps {
            let mut xh = [_mm512_setzero_ps(); R];
            let mut xl = [_mm512_setzero_ps(); R];
            for r in 0..R {
                let v = Bf16Pair(*x.add(kp * R + r));
                xh[r] = _mm512_set1_ps(v.at(1));
                xl[r] = _mm512_set1_ps(v.at(0));
            }
            for p in 0..P {
                let v = Bf16Pair::load16(w.add((p * kps + kp) * PANEL) as *const Bf16Pair);
                let (wh, wl) = (Bf16Pair::widen(v, 1), Bf16Pair::widen(v, 0));
                for (r, row) in acc.iter_mut().enumerate() {
                    row[p] = _mm512_fmadd_ps(wh, xh[r], row[p]);
                    row[p] = _mm512_fmadd_ps(wl, xl[r], row[p]);
                }
            }
        }
        store(j, r0, p0, &acc);
    }
}

macro_rules! dispatch {
    ($j:expr, $tile:ident, $r0:expr, $p:expr, $left:expr, $rr:expr, [$(($r:literal, $pp:literal)),*]) => {
        match $rr {
            $($r if $left >= $pp => { $j.$tile::<$r, $pp>($r0, $p); $pp })*
            $($r => { $j.$tile::<$r, 1>($r0, $p); 1 })*
            _ => unreachable!("no tile for a group of this many rows"),
        }
    };
}

/// Panels `ps` of the product for every input row, with tile shapes
/// `(rows, panels)` for each row count of a group.
macro_rules! blocks {
    ($j:expr, $tile:ident, $ps:expr, $shapes:tt) => {
        for (r0, rr) in groups($j.rows, $j.group) {
            let mut p = $ps.start;
            while p < $ps.end {
                let left = $ps.end - p;
                p += dispatch!($j, $tile, r0, p, left, rr, $shapes);
            }
        }
    };
}

/// Groups of at most [`super::AVX512_GROUP`] rows. Up to 28 of the 32
/// registers hold accumulators: 4 panels up to 7 rows, 3 for 8-9 (tried: 2
/// panels for 5-8 rows was 1.4x slower). A verify of 9 rows is then one
/// pass over the weights instead of two: 9.3 against 10.1 ms for the 100M
/// model's layer products, alternating runs on a busy machine (Zen 4).
/// Larger groups (1-2 panels for 10-16 rows) cost more per row than two
/// groups of 5-8 on a Xeon with AMX: 16 rows 30.0 against 15.7-16.2 ms,
/// 8 rows 11.5 ms (100M layer products, f32 products, 2 threads).
/// [`Bf16Pair`] weights keep at most 20 accumulators from 6 rows on: with
/// the widened weights of two steps live, 7-8 rows on 3-4 panels ran at
/// half speed (100M verify pass, 7 rows 10-11 ms against 6 ms).
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[rustfmt::skip]
pub unsafe fn block<W: Load16>(j: &Job<W>, ps: std::ops::Range<usize>) {
    if W::STEPS == 1 {
        blocks!(j, tile, ps, [(1, 4), (2, 4), (3, 4), (4, 4), (5, 4), (6, 4), (7, 4), (8, 3),
            (9, 3)])
    } else {
        blocks!(j, tile, ps, [(1, 4), (2, 4), (3, 4), (4, 4), (5, 4), (6, 3), (7, 2), (8, 2),
            (9, 2)])
    }
}

/// [`block`] for bf16 pairs, in groups of up to [`super::PAIR_GROUP`] rows:
/// at half the instructions per multiply-add, 9 rows are still cheaper in
/// one pass over the weights than in two. 9 rows take 3 panels (27
/// accumulators) like 8: with 2 they cost ~1.2x 8 rows, with 3 about the
/// same (100M layer products, three alternating runs: 7.2-8.0 against
/// 7.5-8.7 ms, Zen 4), which puts a 9-row verify at ~1.3x one row. Groups
/// of 10-16 rows (1-2 panels) cost more per row than two smaller groups
/// (Xeon: 16 rows 39.9 against 22.3 ms).
#[target_feature(enable = "avx512f,avx512bf16")]
#[rustfmt::skip]
pub unsafe fn block_pairs(j: &Job<u32, u32>, ps: std::ops::Range<usize>) {
    blocks!(j, tile, ps, [(1, 4), (2, 4), (3, 4), (4, 4), (5, 4), (6, 4), (7, 4), (8, 3),
        (9, 3)])
}

/// [`block_pairs`] without AVX512_BF16: each pair's two products by two
/// FMAs, high then low (bit-identical; groups of at most
/// [`super::EMULATED_PAIR_GROUP_512`] rows: two broadcasts per row).
#[target_feature(enable = "avx512f")]
#[rustfmt::skip]
pub unsafe fn block_pairs_emulated(j: &Job<u32, u32>, ps: std::ops::Range<usize>) {
    blocks!(j, tile_emulated, ps, [(1, 4), (2, 4), (3, 4), (4, 3), (5, 2), (6, 2)])
}

/// int8 products on AVX512_VNNI, in groups of up to [`super::AVX512_GROUP`]
/// rows: a tile holds `2 * R * P` sums (integer and float).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[rustfmt::skip]
pub unsafe fn block_int8(j: &Job<Quad, u32>, ps: std::ops::Range<usize>) {
    blocks!(j, tile, ps, [(1, 4), (2, 4), (3, 4), (4, 3), (5, 2), (6, 2), (7, 2), (8, 1),
        (9, 1)])
}
