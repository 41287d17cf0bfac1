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
//! self-speculation bit-exact. The one exception to "which instruction set":
//! bf16 products on AMX (`amx.rs`) sum in AMX's own order, so where AMX
//! runs it runs them all, and they are still independent of the rows and
//! threads that share a call.

use super::huge::{HugeBuf, Plain};
use crate::weights::{Tensor, TensorData};
use half::{bf16, f16};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod dispatch;
mod int8;
mod pack;
mod portable;
#[cfg(test)]
mod tests;

use dispatch::*;
pub use dispatch::{bf16_on_amx, kernel_name};
use int8::{BlockScale, Quad};
pub use pack::Mat;
use pack::*;
use portable::*;

/// Outputs per panel: two 8-lane f32 vectors.
pub const PANEL: usize = 16;

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
    /// Per input row and block of an int8 product (empty otherwise), row by
    /// row.
    x_blocks: &'a [BlockScale],
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

/// A scratch buffer of f32 as the words that packed inputs are made of.
fn words(buf: &mut [f32]) -> &mut [u32] {
    // SAFETY: u32 and f32 have one size and alignment, and every bit
    // pattern is valid for both.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u32, buf.len()) }
}

/// Input rows regrouped for the kernels of one kind of matrix.
enum Inputs<'a> {
    /// f32 ([`pack_rows`]; for bf16 pairs where [`pairs_as_f32`],
    /// [`pack_rows_high_first`]).
    F32(&'a [f32]),
    /// bf16 pairs ([`pack_row_pairs`]) for [`Packed::Bf16Pairs`].
    Pairs(&'a [u32]),
    /// int8 words and their blocks ([`int8::quantize_inputs`]) for
    /// [`Packed::I8`].
    Int8(&'a [u32], &'a [BlockScale]),
}

impl Inputs<'_> {
    /// Runs `f` with `x` packed for `m` and `isa`. One row needs no packing
    /// (its k-major layout is itself); packed rows go into a reused
    /// per-thread buffer.
    fn with<R>(m: &Mat, x: &[f32], rows: usize, isa: Isa, f: impl FnOnce(&Inputs) -> R) -> R {
        let group = group_rows(isa, m);
        if let Packed::I8 { .. } = m.packed {
            let kq = int8::quads(m.cols);
            let nb = rows * kq / int8::BLOCK_QUADS;
            return super::scratch::with([rows * kq, 2 * nb], |[buf, blocks]| {
                // SAFETY: a BlockScale is an f32 and an i32 (`repr(C)`, 2 * nb
                // words), and every bit pattern is valid for both.
                let blocks = unsafe {
                    std::slice::from_raw_parts_mut(blocks.as_mut_ptr() as *mut BlockScale, nb)
                };
                let words = words(buf);
                int8::quantize_inputs(x, rows, m.cols, group, words, blocks);
                f(&Inputs::Int8(words, blocks))
            });
        }
        if m.pairs() && pairs_as_f32(isa) {
            let n = rows * 2 * m.cols.div_ceil(2);
            super::scratch::with([n, n], |[tmp, buf]| {
                pack_rows_high_first(x, rows, m.cols, group, tmp, buf);
                f(&Inputs::F32(buf))
            })
        } else if m.pairs() {
            super::scratch::with([rows * m.cols.div_ceil(2)], |[buf]| {
                let words = words(buf);
                #[cfg(target_arch = "x86_64")]
                if isa == Isa::Amx {
                    pack_row_pair_tiles(x, rows, m.cols, words);
                    return f(&Inputs::Pairs(words));
                }
                pack_row_pairs(x, rows, m.cols, group, words);
                f(&Inputs::Pairs(words))
            })
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
                x_blocks: &[],
                w: $w,
                cols: $cols,
                n_out: m.rows,
                x: $x,
                rows,
                group: group_rows(isa, m),
                out,
            }
        };
    }
    match (&m.packed, x) {
        (Packed::F32(w), Inputs::F32(x)) => run_typed(&job!(w, x), ps, isa),
        (Packed::BF16(w), Inputs::F32(x)) => run_typed(&job!(w, x), ps, isa),
        (Packed::F16(w), Inputs::F32(x)) => run_typed(&job!(w, x), ps, isa),
        (Packed::I8 { q, scale }, Inputs::Int8(x, blocks)) => {
            let j = Job {
                x_blocks: blocks,
                ..job!(q, x, int8::quads(m.cols), scale)
            };
            run_int8(&j, ps, isa)
        }
        (Packed::Bf16Pairs(w), Inputs::F32(x)) => {
            let cols = 2 * m.cols.div_ceil(2);
            run_high_first(&job!(high_first(w), x, cols, &[]), ps, isa)
        }
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

/// The rows that size a product's tasks: on AMX a tile of 16 rows streams
/// its weights once and costs about what one row does, so rows count by
/// tiles there. Sized by rows, a 16-row task had a sixteenth of one row's
/// weights, and the 100M model's layer products over 16 rows took
/// 5.3-5.8 ms against 4.7-4.9 ms sized by tiles (Xeon with AMX,
/// `benches/matmul.rs`, two threads).
fn task_rows(isa: Isa, m: &Mat, rows: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Amx && m.pairs() {
        return rows.div_ceil(amx::TILE_ROWS);
    }
    let _ = (isa, m);
    rows
}

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
        sizes[i] = (65536 / (PANEL * m.cols * task_rows(isa, m, rows)).max(1))
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
        super::team::for_each(tasks, work, run);
    });
}
