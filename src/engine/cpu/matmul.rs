//! Matrix products `out[r][j] = dot(x[r], W[j])` over weights stored as
//! f32/bf16/f16, converted in registers. Each weight row is read once for all
//! input rows, and every (r, j) dot product uses the same fixed reduction order
//! whatever the row count: the products are batch-invariant.

use crate::weights::{Tensor, TensorData};
use half::{bf16, f16};
use rayon::prelude::*;

/// A row-major `rows x cols` weight matrix in its stored dtype.
pub struct Mat {
    pub tensor: Tensor,
    pub rows: usize,
    pub cols: usize,
}

impl Mat {
    pub fn new(tensor: Tensor) -> Self {
        let (rows, cols) = (tensor.shape[0], tensor.shape[1]);
        Mat { tensor, rows, cols }
    }

    /// Row `i` converted to f32 (embedding lookup).
    pub fn row_f32(&self, i: usize, out: &mut [f32]) {
        let r = i * self.cols..(i + 1) * self.cols;
        match self.tensor.data() {
            TensorData::F32(s) => out.copy_from_slice(&s[r]),
            TensorData::BF16(s) => out.iter_mut().zip(&s[r]).for_each(|(o, w)| *o = w.to_f32()),
            TensorData::F16(s) => out.iter_mut().zip(&s[r]).for_each(|(o, w)| *o = w.to_f32()),
        }
    }
}

const LANES: usize = 8;

/// Weight element types the kernels read.
pub(crate) trait Weight: Copy + Sync {
    fn f32(self) -> f32;
}
impl Weight for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
}
impl Weight for bf16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}
impl Weight for f16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self.to_f32()
    }
}

/// Dot product with 8 independent lanes and a fixed pairwise final reduction
/// (vectorised by the compiler; the order never depends on the batch).
#[inline(always)]
pub(crate) fn dot<W: Weight>(w: &[W], x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let n = w.len() / LANES * LANES;
    for (wc, xc) in w[..n].chunks_exact(LANES).zip(x[..n].chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += wc[i].f32() * xc[i];
        }
    }
    for i in n..w.len() {
        acc[i - n] += w[i].f32() * x[i];
    }
    let a = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (a[0] + a[2]) + (a[1] + a[3])
}

/// Weight types with a SIMD kernel.
#[cfg(target_arch = "x86_64")]
trait Kernel: avx2::Load8 {}
#[cfg(target_arch = "x86_64")]
impl<T: avx2::Load8> Kernel for T {}
#[cfg(not(target_arch = "x86_64"))]
trait Kernel: Weight {}
#[cfg(not(target_arch = "x86_64"))]
impl<T: Weight> Kernel for T {}

/// Products smaller than this many multiply-adds run on the calling thread.
pub(crate) const SERIAL_BELOW: usize = 1 << 17;

/// Output pointer shared by worker threads that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Output rows `js` of the product for every input row.
#[inline(always)]
fn block<W: Weight>(
    w: &[W],
    cols: usize,
    n_out: usize,
    x: &[f32],
    rows: usize,
    js: std::ops::Range<usize>,
    out: OutPtr,
) {
    for j in js {
        let wj = &w[j * cols..(j + 1) * cols];
        for r in 0..rows {
            let v = dot(wj, &x[r * cols..(r + 1) * cols]);
            // SAFETY: each (r, j) is written by exactly one task; out has rows*n_out elements.
            unsafe { *out.0.add(r * n_out + j) = v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 + FMA + F16C kernel: each 8-wide weight chunk is converted once and
    //! multiplied into up to four input rows' accumulators. A row's result uses
    //! the same sequence of FMAs and the same final reduction however many rows
    //! share the call, so it stays batch-invariant.
    use super::{OutPtr, Weight};
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    pub trait Load8: Weight {
        /// Eight consecutive weights at `p` as f32 lanes.
        unsafe fn load8(p: *const Self) -> __m256;
    }
    impl Load8 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            _mm256_loadu_ps(p)
        }
    }
    impl Load8 for bf16 {
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        }
    }
    impl Load8 for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const Self) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
        }
    }

    /// Same pairwise reduction as the portable `dot`, in registers:
    /// (a0+a4, a1+a5, a2+a6, a3+a7) = b, then (b0+b2) + (b1+b3).
    #[inline(always)]
    unsafe fn reduce(v: __m256) -> f32 {
        let b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
        _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)))
    }

    /// Dot products of `J` consecutive weight rows (`w` starts at the first)
    /// with `R` input rows (`x` starts at the first): `out[r][j]`. Each (r, j)
    /// has its own single accumulator fed in column order, so its value does
    /// not depend on R or J; several independent chains hide the FMA latency.
    #[inline(always)]
    unsafe fn tile<W: Load8, const R: usize, const J: usize>(
        w: &[W],
        x: &[f32],
        cols: usize,
        out: &mut [[f32; 4]; 4],
    ) {
        let n = cols / 8 * 8;
        let mut acc = [[_mm256_setzero_ps(); J]; R];
        let mut c = 0;
        while c < n {
            let mut wv = [_mm256_setzero_ps(); J];
            for (j, v) in wv.iter_mut().enumerate() {
                *v = W::load8(w.as_ptr().add(j * cols + c));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.as_ptr().add(r * cols + c));
                for (a, v) in row.iter_mut().zip(&wv) {
                    *a = _mm256_fmadd_ps(*v, xv, *a);
                }
            }
            c += 8;
        }
        for r in 0..R {
            for j in 0..J {
                let mut v = reduce(acc[r][j]);
                for i in n..cols {
                    v = w[j * cols + i].f32().mul_add(x[r * cols + i], v);
                }
                out[r][j] = v;
            }
        }
    }

    /// One tile of `rr` rows by `jj` outputs (1..=4 each).
    #[inline(always)]
    unsafe fn tile_dyn<W: Load8>(
        w: &[W],
        x: &[f32],
        cols: usize,
        rr: usize,
        jj: usize,
        out: &mut [[f32; 4]; 4],
    ) {
        match (rr, jj) {
            (1, 4) => tile::<W, 1, 4>(w, x, cols, out),
            (2, 4) => tile::<W, 2, 4>(w, x, cols, out),
            (3, 2) => tile::<W, 3, 2>(w, x, cols, out),
            (4, 2) => tile::<W, 4, 2>(w, x, cols, out),
            (1, _) => tile::<W, 1, 1>(w, x, cols, out),
            (2, _) => tile::<W, 2, 1>(w, x, cols, out),
            (3, _) => tile::<W, 3, 1>(w, x, cols, out),
            _ => tile::<W, 4, 1>(w, x, cols, out),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn block<W: Load8>(
        w: &[W],
        cols: usize,
        n_out: usize,
        x: &[f32],
        rows: usize,
        js: std::ops::Range<usize>,
        out: OutPtr,
    ) {
        let mut res = [[0f32; 4]; 4];
        let mut r0 = 0;
        while r0 < rows {
            let rr = (rows - r0).min(4);
            // Up to 12 accumulators: 4 outputs for 1-2 rows, 2 for 3-4 rows.
            let width = if rr <= 2 { 4 } else { 2 };
            let xr = &x[r0 * cols..];
            let mut j = js.start;
            while j < js.end {
                let jj = if js.end - j >= width { width } else { 1 };
                tile_dyn(&w[j * cols..], xr, cols, rr, jj, &mut res);
                for (r, row) in res[..rr].iter().enumerate() {
                    for (k, &v) in row[..jj].iter().enumerate() {
                        *out.0.add((r0 + r) * n_out + j + k) = v;
                    }
                }
                j += jj;
            }
            r0 += rr;
        }
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Output rows `js` of `m` for every input row, with the kernel for its dtype.
fn run_block(m: &Mat, x: &[f32], rows: usize, js: std::ops::Range<usize>, out: OutPtr, avx2: bool) {
    fn typed<W: Kernel>(
        w: &[W],
        m: &Mat,
        x: &[f32],
        rows: usize,
        js: std::ops::Range<usize>,
        out: OutPtr,
        avx2: bool,
    ) {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked by the caller).
            return unsafe { avx2::block(w, m.cols, m.rows, x, rows, js, out) };
        }
        let _ = avx2;
        block(w, m.cols, m.rows, x, rows, js, out)
    }
    match m.tensor.data() {
        TensorData::F32(w) => typed(w, m, x, rows, js, out, avx2),
        TensorData::BF16(w) => typed(w, m, x, rows, js, out, avx2),
        TensorData::F16(w) => typed(w, m, x, rows, js, out, avx2),
    }
}

/// `out (rows x m.rows) = x (rows x m.cols) · mᵀ`.
pub fn matmul(x: &[f32], rows: usize, m: &Mat, out: &mut [f32]) {
    matmul_many(x, rows, &mut [(m, out)]);
}

/// Several products of the same input (e.g. Q, K and V; gate and up) in one
/// parallel region: one wake-up of the worker threads instead of one per
/// matrix. Each product is computed exactly as by [`matmul`].
pub fn matmul_many(x: &[f32], rows: usize, jobs: &mut [(&Mat, &mut [f32])]) {
    let avx2 = has_avx2();
    let mut blocks: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
    let mut outs = Vec::with_capacity(jobs.len());
    let mut work = 0;
    for (i, (m, out)) in jobs.iter_mut().enumerate() {
        assert_eq!(x.len(), rows * m.cols);
        assert_eq!(out.len(), rows * m.rows);
        outs.push(OutPtr(out.as_mut_ptr()));
        // Enough work per task to amortise scheduling (~32k multiply-adds).
        let size = (32768 / (m.cols * rows).max(1)).clamp(4, 512) / 4 * 4;
        blocks.extend(
            (0..m.rows.div_ceil(size)).map(|b| (i, b * size..((b + 1) * size).min(m.rows))),
        );
        work += m.rows * m.cols * rows;
    }
    let mats: Vec<&Mat> = jobs.iter().map(|(m, _)| *m).collect();
    let run = |(i, js): &(usize, std::ops::Range<usize>)| {
        run_block(mats[*i], x, rows, js.clone(), outs[*i], avx2)
    };
    if blocks.len() == 1 || work < SERIAL_BELOW {
        // Waking worker threads costs more than small products save.
        blocks.iter().for_each(run);
    } else {
        blocks.par_iter().for_each(run);
    }
}
