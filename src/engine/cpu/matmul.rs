//! Matrix products `out[r][j] = Σ_k x[r][k] · W[j][k]` over weights kept in
//! their stored dtype (f32/bf16/f16), converted in registers.
//!
//! Weights are repacked at load into panels of [`PANEL`] output rows stored
//! k-major (`panel[k][0..16]`; bf16 as [`Bf16Pair`]s, two k per element), so
//! one vector load gives sixteen outputs' weights for one k (or two) and each
//! broadcast input value feeds them all. Every output is a
//! single fused multiply-add chain over k in order: a row's result does not
//! depend on how many rows share the call, how outputs are tiled, how the work
//! is split across threads, or which instruction set ran it (the portable path
//! uses the same `mul_add` chain). That is what makes batching and
//! self-speculation bit-exact.

use super::huge::{HugeBuf, Plain};
use crate::weights::{Tensor, TensorData};
use half::{bf16, f16};
use rayon::prelude::*;

/// Outputs per panel: two 8-lane f32 vectors.
pub const PANEL: usize = 16;

/// Weight element types the kernels read. An element holds `STEPS`
/// consecutive k of one output (in its low bits first).
pub(crate) trait Weight: Plain + Default {
    const STEPS: usize = 1;
    /// The weight of step `s` (0..STEPS).
    fn at(self, s: usize) -> f32;
}
impl Weight for f32 {
    #[inline(always)]
    fn at(self, _: usize) -> f32 {
        self
    }
}
/// Two bf16 weights of one output, `W[o][2e]` in the low half and
/// `W[o][2e + 1]` in the high half: one 512-bit load then holds sixteen
/// outputs at two k, and a shift and a mask turn them into f32 lanes without
/// a shuffle (widening each k on its own took a shuffle and a shift per
/// sixteen weights, which competed with the FMAs: 1-4 row products in cache
/// ran 1.1-1.4x slower).
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub(crate) struct Bf16Pair(u32);
// SAFETY: a plain u32.
unsafe impl Plain for Bf16Pair {}
impl Weight for Bf16Pair {
    const STEPS: usize = 2;
    #[inline(always)]
    fn at(self, s: usize) -> f32 {
        f32::from_bits(if s == 0 {
            self.0 << 16
        } else {
            self.0 & 0xFFFF_0000
        })
    }
}
impl Weight for f16 {
    #[inline(always)]
    fn at(self, _: usize) -> f32 {
        self.to_f32()
    }
}
impl Weight for i8 {
    #[inline(always)]
    fn at(self, _: usize) -> f32 {
        self as f32
    }
}

/// Panels of one matrix: `panels * cols * PANEL` elements, zero-padded past
/// the last output row.
/// Panels live in [`HugeBuf`]s: decoding streams them once per token.
enum Packed {
    F32(HugeBuf<f32>),
    BF16(HugeBuf<Bf16Pair>),
    F16(HugeBuf<f16>),
    /// Weight-only int8: `W[j][k] ≈ q[j][k] * scale[j]`.
    I8 {
        q: HugeBuf<i8>,
        scale: Vec<f32>,
    },
    /// bf16 weights for bf16 dot products (inputs rounded to bf16 too):
    /// `panel[kp][o]` holds `W[o][2kp]` in its low half and `W[o][2kp+1]` in
    /// its high half, the operand layout of AVX512_BF16's `VDPBF16PS`.
    Bf16Pairs(HugeBuf<u32>),
}

/// A `rows x cols` weight matrix (`rows` outputs), packed for the kernels.
pub struct Mat {
    packed: Packed,
    pub rows: usize,
    pub cols: usize,
}

/// Panels of a `rows`-output matrix whose output `j` is `elems` elements
/// `elem(j, e)`: `panel[e * PANEL + o]`.
fn pack_panels<W: Plain + Default>(
    rows: usize,
    elems: usize,
    elem: impl Fn(usize, usize) -> W + Sync,
) -> HugeBuf<W> {
    let mut out = HugeBuf::zeroed(rows.div_ceil(PANEL) * PANEL * elems);
    out.par_chunks_mut(PANEL * elems)
        .enumerate()
        .for_each(|(p, panel)| {
            for o in 0..PANEL.min(rows - p * PANEL) {
                for e in 0..elems {
                    panel[e * PANEL + o] = elem(p * PANEL + o, e);
                }
            }
        });
    out
}

fn pack<W: Weight>(w: &[W], rows: usize, cols: usize) -> HugeBuf<W> {
    pack_panels(rows, cols, |j, k| w[j * cols + k])
}

/// bf16 weights as [`Bf16Pair`]s (an odd last column pairs with zero).
fn pack_bf16(w: &[bf16], rows: usize, cols: usize) -> HugeBuf<Bf16Pair> {
    pack_panels(rows, cols.div_ceil(2), |j, e| {
        let half = |k: usize| {
            if k < cols {
                w[j * cols + k].to_bits() as u32
            } else {
                0
            }
        };
        Bf16Pair(half(2 * e) | half(2 * e + 1) << 16)
    })
}

/// Two values rounded to bf16 (round to nearest even) in one word: the first
/// in the low half. A missing second value (odd `cols`) is zero.
#[inline(always)]
fn bf16_pair(v: &[f32]) -> u32 {
    let half = |x: f32| bf16::from_f32(x).to_bits() as u32;
    half(v.get(1).copied().unwrap_or(0.0)) << 16 | half(v[0])
}

/// [`Packed::Bf16Pairs`] panels of a row-major f32 matrix.
fn pack_pairs(w: &[f32], rows: usize, cols: usize) -> HugeBuf<u32> {
    pack_panels(rows, cols.div_ceil(2), |j, kp| {
        bf16_pair(&w[j * cols..(j + 1) * cols][2 * kp..(2 * kp + 2).min(cols)])
    })
}

/// Symmetric int8 per output row: `scale = max|w| / 127`, `q = round(w / scale)`.
fn quantize_rows(w: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = vec![0i8; rows * cols];
    let mut scale = vec![0f32; rows.div_ceil(PANEL) * PANEL];
    q.par_chunks_mut(cols)
        .zip(scale.par_iter_mut())
        .zip(w.par_chunks(cols))
        .for_each(|((q, s), w)| {
            let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            *s = max / 127.0;
            let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
            for (q, &v) in q.iter_mut().zip(w) {
                *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
            }
        });
    (q, scale)
}

impl Mat {
    /// The matrix quantized to int8 per output row (weight-only: activations
    /// stay f32).
    pub fn new_int8(tensor: &Tensor) -> Self {
        let (rows, cols) = (tensor.shape[0], tensor.shape[1]);
        let (q, scale) = quantize_rows(&tensor.to_f32(), rows, cols);
        Mat {
            packed: Packed::I8 {
                q: pack(&q, rows, cols),
                scale,
            },
            rows,
            cols,
        }
    }

    /// The matrix in bf16 (f32 and f16 weights are rounded) for bf16 dot
    /// products: each input row is rounded to bf16 too, products of two bf16
    /// are exact in f32, and they are summed in f32 pair by pair (the high
    /// element of a pair first, as `VDPBF16PS` does). llama.cpp computes bf16
    /// weights this way; it halves the instructions of multi-row products on
    /// CPUs with AVX512_BF16.
    pub fn new_bf16(tensor: &Tensor) -> Self {
        let (rows, cols) = (tensor.shape[0], tensor.shape[1]);
        Mat {
            packed: Packed::Bf16Pairs(pack_pairs(&tensor.to_f32(), rows, cols)),
            rows,
            cols,
        }
    }

    pub fn new(tensor: &Tensor) -> Self {
        let (rows, cols) = (tensor.shape[0], tensor.shape[1]);
        let packed = match tensor.data() {
            TensorData::F32(w) => Packed::F32(pack(w, rows, cols)),
            TensorData::BF16(w) => Packed::BF16(pack_bf16(w, rows, cols)),
            TensorData::F16(w) => Packed::F16(pack(w, rows, cols)),
        };
        Mat { packed, rows, cols }
    }

    /// Packed as bf16 pairs (inputs must be packed by [`pack_row_pairs`]).
    fn pairs(&self) -> bool {
        matches!(self.packed, Packed::Bf16Pairs(_))
    }

    /// Bytes the kernels read for one product (panels, padding included).
    pub fn bytes(&self) -> usize {
        match &self.packed {
            Packed::F32(w) => w.len() * 4,
            Packed::BF16(w) => w.len() * 4,
            Packed::F16(w) => w.len() * 2,
            Packed::I8 { q, scale } => q.len() + scale.len() * 4,
            Packed::Bf16Pairs(w) => w.len() * 4,
        }
    }
}

/// Products smaller than this many multiply-adds run on the calling thread.
pub(crate) const SERIAL_BELOW: usize = 1 << 17;

/// Output pointer shared by worker threads that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// One product's geometry: packed panels, input rows, output layout.
#[derive(Clone, Copy)]
struct Job<'a, W, X = f32> {
    w: &'a [W],
    /// Steps along k: the columns, or pairs of them for bf16 pairs.
    cols: usize,
    n_out: usize,
    /// Input rows in groups of at most `group` (see [`groups`]), each group
    /// stored k-major (`x[r0 * cols + k * rr + r]`) so that a tile's
    /// broadcasts read consecutive addresses instead of `rr` strided streams.
    x: &'a [X],
    rows: usize,
    group: usize,
    /// Per-output scales of an int8 matrix (empty otherwise), applied once
    /// to each finished sum.
    scale: &'a [f32],
    out: OutPtr,
}

impl<W, X> Job<'_, W, X> {
    /// Final value of output `j` from its sum over k.
    #[inline(always)]
    fn finish(&self, j: usize, sum: f32) -> f32 {
        if self.scale.is_empty() {
            sum
        } else {
            sum * self.scale[j]
        }
    }

    /// Writes row `r`'s finished sums of panel `p`.
    #[inline(always)]
    fn store(&self, r: usize, p: usize, acc: &[f32; PANEL]) {
        let j0 = p * PANEL;
        for (o, &sum) in acc.iter().enumerate().take(self.n_out - j0) {
            let v = self.finish(j0 + o, sum);
            // SAFETY: each (r, output) is written by exactly one task; out has rows*n_out elements.
            unsafe { *self.out.0.add(r * self.n_out + j0 + o) = v };
        }
    }
}

/// Splits `rows` into near-equal groups of at most `max` rows: `(r0, rr)`.
#[inline(always)]
fn groups(rows: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let n = rows.div_ceil(max);
    (0..n).map(move |g| (g * rows / n, (g + 1) * rows / n - g * rows / n))
}

/// `x` (`rows x cols`, row-major) in the grouped k-major layout of
/// [`Job::x`], into `out` (as long as `x`).
fn pack_rows(x: &[f32], rows: usize, cols: usize, group: usize, out: &mut [f32]) {
    for (r0, rr) in groups(rows, group) {
        let dst = &mut out[r0 * cols..(r0 + rr) * cols];
        for r in 0..rr {
            for (k, &v) in x[(r0 + r) * cols..][..cols].iter().enumerate() {
                dst[k * rr + r] = v;
            }
        }
    }
}

/// `x` as bf16 pairs ([`bf16_pair`]) in the grouped k-major layout of
/// [`Job::x`], one word per pair of columns.
fn pack_row_pairs(x: &[f32], rows: usize, cols: usize, group: usize) -> Vec<u32> {
    let kps = cols.div_ceil(2);
    let mut out = vec![0u32; rows * kps];
    for (r0, rr) in groups(rows, group) {
        let dst = &mut out[r0 * kps..(r0 + rr) * kps];
        for r in 0..rr {
            for (kp, pair) in x[(r0 + r) * cols..][..cols].chunks(2).enumerate() {
                dst[kp * rr + r] = bf16_pair(pair);
            }
        }
    }
    out
}

/// Portable kernel: `step(acc, w, s, x)` adds step `s` of a panel's
/// elements `w` (one k; see [`Weight::STEPS`]) times input `x` to a row's
/// sixteen sums, in the same order as the SIMD kernels, so results are
/// identical on every machine.
fn portable<W, X: Copy, const STEPS: usize>(
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

fn block_portable<W: Weight>(j: &Job<W>, panels: std::ops::Range<usize>) {
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
fn block_portable_pairs(j: &Job<u32, u32>, panels: std::ops::Range<usize>) {
    let hi = |v: u32| Bf16Pair(v).at(1);
    let lo = |v: u32| Bf16Pair(v).at(0);
    portable::<u32, u32, 1>(j, panels, |acc, w, _, x| {
        for (a, &wv) in acc.iter_mut().zip(w) {
            *a = hi(wv).mul_add(hi(x), *a);
            *a = lo(wv).mul_add(lo(x), *a);
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! AVX2 + FMA + F16C tiles of R input rows by P panels (16 P outputs).
    use super::{groups, Bf16Pair, Job, Weight, PANEL};
    use half::f16;
    use std::arch::x86_64::*;

    pub trait Load16: Weight {
        /// Outputs 0..8 and 8..16 of a panel at step `s` of its elements, as
        /// f32 lanes.
        unsafe fn load16(p: *const Self, s: usize) -> (__m256, __m256);
    }
    impl Load16 for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const Self, _: usize) -> (__m256, __m256) {
            (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
        }
    }
    /// Step `s` of eight [`Bf16Pair`]s (see [`Bf16Pair::at`]) as f32 lanes.
    #[inline(always)]
    unsafe fn widen(v: __m256i, s: usize) -> __m256 {
        _mm256_castsi256_ps(if s == 0 {
            _mm256_slli_epi32(v, 16)
        } else {
            _mm256_and_si256(v, _mm256_set1_epi32(0xFFFF_0000u32 as i32))
        })
    }
    impl Load16 for Bf16Pair {
        #[inline(always)]
        unsafe fn load16(p: *const Self, s: usize) -> (__m256, __m256) {
            let p = p as *const __m256i;
            (
                widen(_mm256_loadu_si256(p), s),
                widen(_mm256_loadu_si256(p.add(1)), s),
            )
        }
    }
    impl Load16 for f16 {
        #[inline(always)]
        unsafe fn load16(p: *const Self, _: usize) -> (__m256, __m256) {
            let lo = _mm_loadu_si128(p as *const __m128i);
            let hi = _mm_loadu_si128(p.add(8) as *const __m128i);
            (_mm256_cvtph_ps(lo), _mm256_cvtph_ps(hi))
        }
    }
    impl Load16 for i8 {
        #[inline(always)]
        unsafe fn load16(p: *const Self, _: usize) -> (__m256, __m256) {
            let v = _mm_loadu_si128(p as *const __m128i);
            let lo = _mm256_cvtepi8_epi32(v);
            let hi = _mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v));
            (_mm256_cvtepi32_ps(lo), _mm256_cvtepi32_ps(hi))
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
        // Step `s` of element `e` (column k = e * STEPS + s); a macro because
        // closures do not inherit the caller's target features.
        macro_rules! step {
            ($e:expr, $s:expr) => {
                let k = $e * W::STEPS + $s;
                let mut xb = [_mm256_setzero_ps(); R];
                for (r, b) in xb.iter_mut().enumerate() {
                    *b = _mm256_broadcast_ss(&*x.add(k * R + r));
                }
                for p in 0..P {
                    let (lo, hi) = W::load16(w.add((p * elems + $e) * PANEL), $s);
                    for (row, b) in acc.iter_mut().zip(&xb) {
                        row[p][0] = _mm256_fmadd_ps(lo, *b, row[p][0]);
                        row[p][1] = _mm256_fmadd_ps(hi, *b, row[p][1]);
                    }
                }
            };
        }
        let full = cols / W::STEPS;
        for e in 0..full {
            for s in 0..W::STEPS {
                step!(e, s);
            }
        }
        for s in 0..cols - full * W::STEPS {
            step!(full, s);
        }
        store(j, r0, p0, &acc);
    }

    /// bf16 pairs without AVX512_BF16, rows `r0..r0+R` against panels
    /// `p0..p0+P`: each pair's two products by two FMAs, high then low
    /// (bit-identical to `VDPBF16PS`).
    #[inline(always)]
    unsafe fn tile_pairs<const R: usize, const P: usize>(j: &Job<u32, u32>, r0: usize, p0: usize) {
        let kps = j.cols;
        let mut acc = [[[_mm256_setzero_ps(); 2]; P]; R];
        let w = j.w.as_ptr().add(p0 * PANEL * kps);
        let x = j.x.as_ptr().add(r0 * kps);
        for kp in 0..kps {
            let mut xh = [_mm256_setzero_ps(); R];
            let mut xl = [_mm256_setzero_ps(); R];
            for r in 0..R {
                let v = Bf16Pair(*x.add(kp * R + r));
                xh[r] = _mm256_set1_ps(v.at(1));
                xl[r] = _mm256_set1_ps(v.at(0));
            }
            for p in 0..P {
                let base = w.add((p * kps + kp) * PANEL) as *const __m256i;
                for half in 0..2 {
                    let v = _mm256_loadu_si256(base.add(half));
                    let (wh, wl) = (widen(v, 1), widen(v, 0));
                    for (r, row) in acc.iter_mut().enumerate() {
                        row[p][half] = _mm256_fmadd_ps(wh, xh[r], row[p][half]);
                        row[p][half] = _mm256_fmadd_ps(wl, xl[r], row[p][half]);
                    }
                }
            }
        }
        store(j, r0, p0, &acc);
    }

    /// Panels `ps` of a bf16-pair product for every input row, in groups of
    /// at most [`super::EMULATED_PAIR_GROUP_AVX2`] rows (two broadcasts per
    /// row and two accumulators per panel in 16 registers).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn block_pairs(j: &Job<u32, u32>, ps: std::ops::Range<usize>) {
        for (r0, rr) in groups(j.rows, j.group) {
            let mut p = ps.start;
            while p < ps.end {
                let left = ps.end - p;
                p += match rr {
                    1 if left >= 4 => {
                        tile_pairs::<1, 4>(j, r0, p);
                        4
                    }
                    2 if left >= 2 => {
                        tile_pairs::<2, 2>(j, r0, p);
                        2
                    }
                    1 => {
                        tile_pairs::<1, 1>(j, r0, p);
                        1
                    }
                    2 => {
                        tile_pairs::<2, 1>(j, r0, p);
                        1
                    }
                    _ => {
                        tile_pairs::<3, 1>(j, r0, p);
                        1
                    }
                };
            }
        }
    }

    /// Panels `ps` of the product for every input row (groups of at most 6
    /// rows; at most 12 accumulators in 16 registers).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn block<W: Load16>(j: &Job<W>, ps: std::ops::Range<usize>) {
        for (r0, rr) in groups(j.rows, j.group) {
            let mut p = ps.start;
            while p < ps.end {
                let left = ps.end - p;
                p += match rr {
                    1 if left >= 4 => {
                        tile::<W, 1, 4>(j, r0, p);
                        4
                    }
                    2 if left >= 3 => {
                        tile::<W, 2, 3>(j, r0, p);
                        3
                    }
                    1 => {
                        tile::<W, 1, 1>(j, r0, p);
                        1
                    }
                    2 => {
                        tile::<W, 2, 1>(j, r0, p);
                        1
                    }
                    3 => {
                        tile::<W, 3, 1>(j, r0, p);
                        1
                    }
                    4 => {
                        tile::<W, 4, 1>(j, r0, p);
                        1
                    }
                    5 => {
                        tile::<W, 5, 1>(j, r0, p);
                        1
                    }
                    _ => {
                        tile::<W, 6, 1>(j, r0, p);
                        1
                    }
                };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd512 {
    //! AVX-512F tiles: a panel's sixteen outputs fill one 512-bit register, the
    //! input value is broadcast straight from memory into the FMA, and 32
    //! registers hold up to 28 accumulators (rows x panels).
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
    impl Load16 for i8 {
        #[inline(always)]
        unsafe fn load16(p: *const Self) -> __m512 {
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
        }
    }

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
        // The first `steps` steps of element `e` (columns e * STEPS + s).
        macro_rules! step {
            ($e:expr, $steps:expr) => {
                if R * P <= 16 {
                    // Few accumulators: load each element once for its steps.
                    for p in 0..P {
                        let v = W::load16(w.add((p * elems + $e) * PANEL));
                        for s in 0..$steps {
                            fma_rows!(W::widen(v, s), $e * W::STEPS + s, p);
                        }
                    }
                } else {
                    // Many: load again per step (from L1) rather than keep
                    // every panel's element in a register.
                    for s in 0..$steps {
                        for p in 0..P {
                            let wv = W::widen(W::load16(w.add((p * elems + $e) * PANEL)), s);
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

    /// Groups of at most 16 rows. Up to 28 of the 32 registers hold
    /// accumulators: 4 panels up to 7 rows, 3 for 8-9, 2 for 10-12, 1 beyond
    /// (tried: 2 panels for 5-8 rows was 1.4x slower). A verify of 9 rows is
    /// then one pass over the weights instead of two: 9.3 against 10.1 ms for
    /// the 100M model's layer products, alternating runs on a busy machine.
    /// [`Bf16Pair`] weights keep at most 20 accumulators from 6 rows on: with
    /// the widened weights of two steps live, 7-8 rows on 3-4 panels ran at
    /// half speed (100M verify pass, 7 rows 10-11 ms against 6 ms).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[rustfmt::skip]
    pub unsafe fn block<W: Load16>(j: &Job<W>, ps: std::ops::Range<usize>) {
        if W::STEPS == 1 {
            blocks!(j, tile, ps, [(1, 4), (2, 4), (3, 4), (4, 4), (5, 4), (6, 4), (7, 4), (8, 3),
                (9, 3), (10, 2), (11, 2), (12, 2), (13, 1), (14, 1), (15, 1), (16, 1)])
        } else {
            blocks!(j, tile, ps, [(1, 4), (2, 4), (3, 4), (4, 4), (5, 4), (6, 3), (7, 2), (8, 2),
                (9, 2), (10, 2), (11, 1), (12, 1), (13, 1), (14, 1), (15, 1), (16, 1)])
        }
    }

    /// [`block`] for bf16 pairs, in groups of up to [`super::PAIR_GROUP`] rows: at
    /// half the instructions per multiply-add, 9-16 rows are still cheaper
    /// in one pass over the weights than in two. 9 rows take 3 panels (27
    /// accumulators) like 8: with 2 they cost ~1.2x 8 rows, with 3 about the
    /// same (100M layer products, three alternating runs: 7.2-8.0 against
    /// 7.5-8.7 ms), which puts a 9-row verify at ~1.3x one row.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[rustfmt::skip]
    pub unsafe fn block_pairs(j: &Job<u32, u32>, ps: std::ops::Range<usize>) {
        blocks!(j, tile, ps, [(1, 4), (2, 4), (3, 4), (4, 4), (5, 4), (6, 4), (7, 4), (8, 3),
            (9, 3), (10, 2), (11, 2), (12, 2), (13, 1), (14, 1), (15, 1), (16, 1)])
    }

    /// [`block_pairs`] without AVX512_BF16: each pair's two products by two
    /// FMAs, high then low (bit-identical; groups of at most
    /// [`super::EMULATED_PAIR_GROUP_512`] rows: two broadcasts per row).
    #[target_feature(enable = "avx512f")]
    #[rustfmt::skip]
    pub unsafe fn block_pairs_emulated(j: &Job<u32, u32>, ps: std::ops::Range<usize>) {
        blocks!(j, tile_emulated, ps, [(1, 4), (2, 4), (3, 4), (4, 3), (5, 2), (6, 2)])
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512 with AVX512_BF16: bf16 pairs run on `VDPBF16PS`, everything
    /// else as [`Isa::Avx512`].
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
}

/// Kernels this CPU runs, best last.
fn supported() -> Vec<Isa> {
    #[allow(unused_mut)]
    let mut v = vec![Isa::Portable];
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        v.push(Isa::Avx2);
        if is_x86_feature_detected!("avx512f") {
            v.push(Isa::Avx512);
            if is_x86_feature_detected!("avx512bf16") {
                v.push(Isa::Avx512Bf16);
            }
        }
    }
    v
}

/// The best kernel this CPU runs; `LAYERSKIP_KERNEL=portable|avx2|avx512` caps it
/// (results are identical either way, only speed differs).
fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        let all = supported();
        let cap = std::env::var("LAYERSKIP_KERNEL").unwrap_or_default();
        let capped = all.iter().rev().find(|i| kernel_name_of(**i) == cap);
        *capped.unwrap_or(all.last().expect("portable is always supported"))
    })
}

/// Name of the kernel in use (for bench reports).
pub fn kernel_name() -> &'static str {
    kernel_name_of(isa())
}

fn kernel_name_of(isa: Isa) -> &'static str {
    match isa {
        Isa::Portable => "portable",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => "avx2",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => "avx512",
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 => "avx512bf16",
    }
}

#[cfg(target_arch = "x86_64")]
trait Kernel: simd::Load16 + simd512::Load16 {}
#[cfg(target_arch = "x86_64")]
impl<T: simd::Load16 + simd512::Load16> Kernel for T {}
#[cfg(not(target_arch = "x86_64"))]
trait Kernel: Weight {}
#[cfg(not(target_arch = "x86_64"))]
impl<T: Weight> Kernel for T {}

/// Rows per group of the bf16-pair kernel on AVX512_BF16, and of its
/// emulations with AVX-512F and with AVX2.
const PAIR_GROUP: usize = 16;
const EMULATED_PAIR_GROUP_512: usize = 6;
const EMULATED_PAIR_GROUP_AVX2: usize = 3;

/// Rows per tile group: as many accumulators as the registers hold (the
/// layout of packed inputs; results do not depend on it).
fn group_rows(isa: Isa, pairs: bool) -> usize {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 if pairs => PAIR_GROUP,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if pairs => EMULATED_PAIR_GROUP_512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if pairs => EMULATED_PAIR_GROUP_AVX2,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => 6,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => 16,
        Isa::Portable => 8,
    }
}

fn run_typed<W: Kernel>(j: &Job<W>, ps: std::ops::Range<usize>, isa: Isa) {
    // SAFETY: `isa()` checked that the CPU has the features of each kernel.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { simd::block(j, ps) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Bf16 => unsafe { simd512::block(j, ps) },
        Isa::Portable => block_portable(j, ps),
    }
}

fn run_pairs(j: &Job<u32, u32>, ps: std::ops::Range<usize>, isa: Isa) {
    // SAFETY: `isa()` checked that the CPU has the features of each kernel.
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Bf16 => unsafe { simd512::block_pairs(j, ps) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { simd512::block_pairs_emulated(j, ps) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { simd::block_pairs(j, ps) },
        Isa::Portable => block_portable_pairs(j, ps),
    }
}

/// Input rows regrouped for the kernels of one kind of matrix.
enum Inputs<'a> {
    /// f32 ([`pack_rows`]).
    F32(&'a [f32]),
    /// bf16 pairs ([`pack_row_pairs`]) for [`Packed::Bf16Pairs`].
    Pairs(&'a [u32]),
}

impl Inputs<'_> {
    /// Runs `f` with `x` packed for `m` and `isa`. One row needs no packing
    /// (its k-major layout is itself); f32 rows are packed into a reused
    /// per-thread buffer.
    fn with<R>(m: &Mat, x: &[f32], rows: usize, isa: Isa, f: impl FnOnce(&Inputs) -> R) -> R {
        let group = group_rows(isa, m.pairs());
        if m.pairs() {
            f(&Inputs::Pairs(&pack_row_pairs(x, rows, m.cols, group)))
        } else if rows == 1 {
            f(&Inputs::F32(x))
        } else {
            super::scratch::with([x.len()], |[buf]| {
                pack_rows(x, rows, m.cols, group, buf);
                f(&Inputs::F32(buf))
            })
        }
    }
}

/// Panels `ps` of `m` for every input row, with the kernel for its dtype.
/// `x` is packed by [`Inputs::with`] for `m` and `isa`.
fn run_block(m: &Mat, x: &Inputs, rows: usize, ps: std::ops::Range<usize>, out: OutPtr, isa: Isa) {
    macro_rules! job {
        ($w:expr, $x:expr) => {
            job!($w, $x, m.cols, &[])
        };
        ($w:expr, $x:expr, $cols:expr, $scale:expr) => {
            Job {
                scale: $scale,
                w: $w,
                cols: $cols,
                n_out: m.rows,
                x: $x,
                rows,
                group: group_rows(isa, m.pairs()),
                out,
            }
        };
    }
    match (&m.packed, x) {
        (Packed::F32(w), Inputs::F32(x)) => run_typed(&job!(w, x), ps, isa),
        (Packed::BF16(w), Inputs::F32(x)) => run_typed(&job!(w, x), ps, isa),
        (Packed::F16(w), Inputs::F32(x)) => run_typed(&job!(w, x), ps, isa),
        (Packed::I8 { q, scale }, Inputs::F32(x)) => run_typed(&job!(q, x, m.cols, scale), ps, isa),
        (Packed::Bf16Pairs(w), Inputs::Pairs(x)) => {
            run_pairs(&job!(w, x, m.cols.div_ceil(2), &[]), ps, isa)
        }
        _ => unreachable!("inputs are packed for the matrix's kind"),
    }
}

/// `out (rows x m.rows) = x (rows x m.cols) · mᵀ`.
pub fn matmul(x: &[f32], rows: usize, m: &Mat, out: &mut [f32]) {
    matmul_many(x, rows, &mut [(m, out)]);
}

/// Most products [`matmul_many`] takes at once (Q, K and V).
const MAX_JOBS: usize = 3;

/// Several products of the same input (e.g. Q, K and V; gate and up) in one
/// parallel region: one wake-up of the worker threads instead of one per
/// matrix. Each product is computed exactly as by [`matmul`]. Nothing is
/// allocated for one input row (a decode step).
pub fn matmul_many(x: &[f32], rows: usize, jobs: &mut [(&Mat, &mut [f32])]) {
    assert!(
        jobs.len() <= MAX_JOBS,
        "at most {MAX_JOBS} products at once"
    );
    let isa = isa();
    let Some(first) = jobs.first().map(|(m, _)| *m) else {
        return;
    };
    // Per product: its matrix, output, panels per task, and first task index.
    let mut mats: [Option<&Mat>; MAX_JOBS] = [None; MAX_JOBS];
    let mut outs = [OutPtr(std::ptr::null_mut()); MAX_JOBS];
    let mut sizes = [0usize; MAX_JOBS];
    let mut starts = [0usize; MAX_JOBS + 1];
    let mut work = 0;
    for (i, (m, out)) in jobs.iter_mut().enumerate() {
        assert_eq!(x.len(), rows * m.cols);
        assert_eq!(m.pairs(), first.pairs());
        assert_eq!(out.len(), rows * m.rows);
        mats[i] = Some(*m);
        outs[i] = OutPtr(out.as_mut_ptr());
        // Enough work per task to amortise scheduling (~64k multiply-adds),
        // in whole 4-panel tiles.
        sizes[i] = (65536 / (PANEL * m.cols * rows).max(1))
            .clamp(1, 64)
            .next_multiple_of(4);
        starts[i + 1] = starts[i] + m.rows.div_ceil(PANEL).div_ceil(sizes[i]);
        work += m.rows * m.cols * rows;
    }
    let tasks = starts[jobs.len()];
    // One engine packs every matrix alike, so one packing of x serves all.
    Inputs::with(first, x, rows, isa, |packed_x| {
        let run = |t: usize| {
            let i = (0..jobs.len())
                .rfind(|&i| starts[i] <= t)
                .expect("task 0 is job 0's");
            let m = mats[i].expect("set above");
            let panels = m.rows.div_ceil(PANEL);
            let b = t - starts[i];
            let ps = b * sizes[i]..((b + 1) * sizes[i]).min(panels);
            run_block(m, packed_x, rows, ps, outs[i], isa)
        };
        if tasks == 1 || work < SERIAL_BELOW {
            // Waking worker threads costs more than small products save.
            (0..tasks).for_each(run);
        } else {
            (0..tasks).into_par_iter().for_each(run);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::DType;

    fn tensor(dtype: DType, rows: usize, cols: usize) -> Tensor {
        let vals = (0..rows * cols).map(|i| {
            let h = (i as u32).wrapping_mul(2654435761).rotate_left(13);
            (h >> 8) as f32 / (1 << 24) as f32 - 0.5
        });
        let bytes: Vec<u8> = match dtype {
            DType::F32 => vals.flat_map(f32::to_le_bytes).collect(),
            DType::BF16 => vals.flat_map(|v| bf16::from_f32(v).to_le_bytes()).collect(),
            DType::F16 => vals.flat_map(|v| f16::from_f32(v).to_le_bytes()).collect(),
        };
        Tensor::from_bytes(dtype, vec![rows, cols], &bytes)
    }

    /// The product by the definition: one `mul_add` chain per output.
    fn reference(m: &Tensor, x: &[f32], rows: usize) -> Vec<f32> {
        let w = m.to_f32();
        let (n, cols) = (m.shape[0], m.shape[1]);
        let mut out = vec![0f32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                out[r * n + j] =
                    (0..cols).fold(0f32, |a, k| w[j * cols + k].mul_add(x[r * cols + k], a));
            }
        }
        out
    }

    /// Deterministic inputs: `rows x cols`, mixed signs.
    fn input(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
            .collect()
    }

    /// `m`'s whole product over `x` with one kernel.
    fn product(m: &Mat, x: &[f32], rows: usize, isa: Isa) -> Vec<f32> {
        let mut out = vec![f32::NAN; rows * m.rows];
        let ptr = OutPtr(out.as_mut_ptr());
        Inputs::with(m, x, rows, isa, |x| {
            run_block(m, x, rows, 0..m.rows.div_ceil(PANEL), ptr, isa)
        });
        out
    }

    #[test]
    fn every_kernel_row_count_and_dtype_matches_the_definition_bit_for_bit() {
        // 37 outputs: two full panels and a padded one; 45 columns: no multiple of 8.
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let (n, cols) = (37, 45);
            let t = tensor(dtype, n, cols);
            let m = Mat::new(&t);
            for rows in 1..=17 {
                let x = input(rows, cols);
                let want = reference(&t, &x, rows);
                for isa in supported() {
                    let out = product(&m, &x, rows, isa);
                    assert!(
                        out.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{dtype:?} rows {rows} {isa:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn bf16_pairs_match_vdpbf16ps_arithmetic_on_every_kernel_and_stay_close() {
        // Odd column count: the last pair is padded with zero.
        let (n, cols) = (37, 45);
        let t = tensor(DType::F32, n, cols);
        let m = Mat::new_bf16(&t);
        let w = t.to_f32();
        let round = |v: f32| bf16::from_f32(v).to_f32();
        for rows in 1..=17 {
            let x = input(rows, cols);
            let exact = reference(&t, &x, rows);
            for isa in supported() {
                let out = product(&m, &x, rows, isa);
                for r in 0..rows {
                    for j in 0..n {
                        // Per pair: sum + hi product, then + lo product, each
                        // rounded once (the products are exact in f32).
                        let (wr, xr) = (&w[j * cols..][..cols], &x[r * cols..][..cols]);
                        let sum = (0..cols.div_ceil(2)).fold(0f32, |a, kp| {
                            let p = |k: usize| match (wr.get(k), xr.get(k)) {
                                (Some(&a), Some(&b)) => round(a) * round(b),
                                _ => 0.0,
                            };
                            (a + p(2 * kp + 1)) + p(2 * kp)
                        });
                        let got = out[r * n + j];
                        assert_eq!(got.to_bits(), sum.to_bits(), "{isa:?} rows {rows}");
                        // Two bf16 roundings (2^-8 relative each) per product.
                        let bound = 2.0 / 256.0
                            * wr.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum::<f32>();
                        assert!((got - exact[r * n + j]).abs() <= bound + 1e-6);
                    }
                }
            }
        }
    }

    #[test]
    fn int8_is_one_chain_then_the_row_scale_on_every_kernel_and_close_to_the_weights() {
        let (n, cols) = (37, 45);
        let t = tensor(DType::F32, n, cols);
        let m = Mat::new_int8(&t);
        let w = t.to_f32();
        let (q, scale) = quantize_rows(&w, n, cols);
        for rows in [1, 2, 5, 9, 17] {
            let x = input(rows, cols);
            let exact = reference(&t, &x, rows);
            for isa in supported() {
                let out = product(&m, &x, rows, isa);
                for r in 0..rows {
                    for j in 0..n {
                        let sum = (0..cols).fold(0f32, |a, k| {
                            (q[j * cols + k] as f32).mul_add(x[r * cols + k], a)
                        });
                        let got = out[r * n + j];
                        assert_eq!(
                            got.to_bits(),
                            (sum * scale[j]).to_bits(),
                            "{isa:?} rows {rows}"
                        );
                        // Rounding error of at most half a step per weight.
                        let bound = 0.5
                            * scale[j]
                            * x[r * cols..][..cols].iter().map(|v| v.abs()).sum::<f32>();
                        assert!((got - exact[r * n + j]).abs() <= bound * 1.001 + 1e-6);
                    }
                }
            }
        }
    }
}
