//! int8 products: weights quantized per output row at load, inputs per
//! block of [`BLOCK`] columns of each row at every call (the scheme of
//! llama.cpp's q8_0 activations), multiplied as integers.
//!
//! `out[r][j] = wscale[j] · Σ_b xscale[r][b] · Σ_{k in b} qw[j][k] · qx[r][k]`:
//! each block's integer sum is exact (and the same on every kernel), and
//! the blocks are summed as one fused multiply-add chain in order, so a
//! row's result does not depend on the kernel, the rows beside it, or the
//! threads.
//!
//! Weights are stored offset by 128 (`qw + 128` as u8, four k of one
//! output per word): AVX512_VNNI's `VPDPBUSD` multiplies unsigned bytes by
//! signed ones, and with the weights as the unsigned side the inputs can be
//! broadcast straight from memory. The offset adds `128 · Σ qx` to each
//! block's sum, which the input packing computes once per row and block
//! ([`BlockScale::offset`]) and the kernels start from.

use super::pack::to_int8;
use super::{groups, HugeBuf, Job, Plain, PANEL};
use rayon::prelude::*;

/// Columns per input block (one scale each); weights and inputs are padded
/// with zeros to a whole number of blocks.
pub const BLOCK: usize = 32;
/// Words (four columns each) per block.
pub const BLOCK_QUADS: usize = BLOCK / 4;

/// Four int8 weights of one output, columns `4e..4e + 4` from the low byte
/// up, each offset by 128 (stored as `qw ^ 0x80`).
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub(crate) struct Quad(pub(super) u32);
// SAFETY: a plain u32.
unsafe impl Plain for Quad {}

/// One block of one input row: its scale, and what the weights' offset adds
/// to the block's integer sum, negated (`-128 · Σ qx`). Two 4-byte words,
/// so that per-thread f32 scratch can hold them.
#[derive(Clone, Copy, Default)]
#[repr(C)]
pub(crate) struct BlockScale {
    pub scale: f32,
    pub offset: i32,
}

/// Words per row of a `cols`-column matrix.
pub fn quads(cols: usize) -> usize {
    cols.next_multiple_of(BLOCK) / 4
}

/// Symmetric int8 per output row: `scale = max|w| / 127`,
/// `q = round(w * (127 / max))`, packed as [`Quad`]s.
pub(super) fn quantize_weights<S: Copy + Sync + Into<f32>>(
    w: &[S],
    rows: usize,
    cols: usize,
) -> (HugeBuf<Quad>, Vec<f32>) {
    let mut scale = vec![0f32; rows.div_ceil(PANEL) * PANEL];
    let mut inv = vec![0f32; rows];
    scale
        .par_iter_mut()
        .zip(inv.par_iter_mut())
        .zip(w.par_chunks(cols))
        .for_each(|((s, inv), w)| {
            let max = w.iter().fold(0f32, |m, v| m.max((*v).into().abs()));
            *s = max / 127.0;
            *inv = if max > 0.0 { 127.0 / max } else { 0.0 };
        });
    let q = super::pack::pack_panels(rows, quads(cols), |j, row| {
        let src = &w[j * cols..(j + 1) * cols];
        row.fill(Quad(0x8080_8080));
        for (d, four) in row.iter_mut().zip(src.chunks(4)) {
            let mut word = 0x8080_8080u32;
            for (i, &v) in four.iter().enumerate() {
                word ^= (to_int8(v.into() * inv[j]) as u8 as u32) << (8 * i);
            }
            *d = Quad(word);
        }
    });
    (q, scale)
}

/// Quantizes `x` (`rows x cols`) per block of [`BLOCK`] columns:
/// `scale = max|x| / 127`, `q = round(x * (127 / max))` (NaN in a block
/// makes its scale NaN, so it reaches the outputs as in float products).
/// The words go to `q` in the grouped k-major layout of [`Job::x`] (`rows *
/// quads(cols)`), the blocks to `blocks` row by row (`rows * quads(cols) /
/// BLOCK_QUADS`).
pub(super) fn quantize_inputs(
    x: &[f32],
    rows: usize,
    cols: usize,
    group: usize,
    q: &mut [u32],
    blocks: &mut [BlockScale],
) {
    let kq = quads(cols);
    let nb = kq / BLOCK_QUADS;
    for (r0, rr) in groups(rows, group) {
        let dst = &mut q[r0 * kq..(r0 + rr) * kq];
        for r in 0..rr {
            let row = &x[(r0 + r) * cols..][..cols];
            for b in 0..nb {
                // A whole block in fixed-size arrays, so that every step
                // vectorizes (zeros past the row's end).
                let mut v = [0f32; BLOCK];
                let src = &row[(b * BLOCK).min(cols)..((b + 1) * BLOCK).min(cols)];
                v[..src.len()].copy_from_slice(src);
                let max = v
                    .iter()
                    .fold(0f32, |m, v| if v.abs() > m { v.abs() } else { m });
                let nan = v.iter().fold(false, |n, v| n | v.is_nan());
                let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
                let qv: [i8; BLOCK] = std::array::from_fn(|i| to_int8(v[i] * inv));
                for (e, four) in qv.chunks_exact(4).enumerate() {
                    let word = u32::from_le_bytes([0, 1, 2, 3].map(|i| four[i] as u8));
                    dst[(b * BLOCK_QUADS + e) * rr + r] = word;
                }
                blocks[(r0 + r) * nb + b] = BlockScale {
                    scale: if nan { f32::NAN } else { max / 127.0 },
                    offset: -128 * qv.iter().map(|&q| q as i32).sum::<i32>(),
                };
            }
        }
    }
}

/// Portable int8 kernel: per block, the exact integer sum, then one fused
/// multiply-add by the block's scale, in block order.
pub(super) fn block_portable_int8(j: &Job<Quad, u32>, panels: std::ops::Range<usize>) {
    let kq = j.cols;
    let nb = kq / BLOCK_QUADS;
    for p in panels {
        let pw = &j.w[p * PANEL * kq..][..PANEL * kq];
        for (r0, rr) in groups(j.rows, j.group) {
            for r in r0..r0 + rr {
                let mut acc = [0f32; PANEL];
                for b in 0..nb {
                    let block = j.x_blocks[r * nb + b];
                    for (o, a) in acc.iter_mut().enumerate() {
                        let mut sum = 0i32;
                        for e in b * BLOCK_QUADS..(b + 1) * BLOCK_QUADS {
                            let (w, x) = (pw[e * PANEL + o].0, j.x[r0 * kq + e * rr + r - r0]);
                            for s in 0..4 {
                                let qw = ((w >> (8 * s)) as u8 ^ 0x80) as i8 as i32;
                                sum += qw * (x >> (8 * s)) as u8 as i8 as i32;
                            }
                        }
                        *a = (sum as f32).mul_add(block.scale, *a);
                    }
                }
                j.store(r, p, &acc);
            }
        }
    }
}
