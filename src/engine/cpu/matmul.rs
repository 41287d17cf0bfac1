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
trait Weight: Copy + Sync {
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

/// Dot product with 8 independent lanes and a fixed pairwise final reduction.
#[inline(always)]
fn dot<W: Weight>(w: &[W], x: &[f32]) -> f32 {
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

/// The same block compiled for AVX2. Rust never fuses a multiply and an add on
/// its own, so this gives bit-identical results to the portable path, only
/// with wider registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<W: Weight>(
    w: &[W],
    cols: usize,
    n_out: usize,
    x: &[f32],
    rows: usize,
    js: std::ops::Range<usize>,
    out: OutPtr,
) {
    block(w, cols, n_out, x, rows, js, out)
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn matmul_typed<W: Weight>(
    w: &[W],
    cols: usize,
    n_out: usize,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
) {
    let ptr = OutPtr(out.as_mut_ptr());
    let avx2 = has_avx2();
    // Enough work per task to amortise scheduling (~32k multiply-adds).
    let size = (32768 / (cols * rows).max(1)).clamp(4, 512);
    (0..n_out.div_ceil(size)).into_par_iter().for_each(|b| {
        let js = b * size..((b + 1) * size).min(n_out);
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU supports AVX2 and FMA (checked above).
            return unsafe { block_avx2(w, cols, n_out, x, rows, js, ptr) };
        }
        let _ = avx2;
        block(w, cols, n_out, x, rows, js, ptr)
    });
}

/// `out (rows x m.rows) = x (rows x m.cols) · mᵀ`.
pub fn matmul(x: &[f32], rows: usize, m: &Mat, out: &mut [f32]) {
    assert_eq!(x.len(), rows * m.cols);
    assert_eq!(out.len(), rows * m.rows);
    match m.tensor.data() {
        TensorData::F32(w) => matmul_typed(w, m.cols, m.rows, x, rows, out),
        TensorData::BF16(w) => matmul_typed(w, m.cols, m.rows, x, rows, out),
        TensorData::F16(w) => matmul_typed(w, m.cols, m.rows, x, rows, out),
    }
}
