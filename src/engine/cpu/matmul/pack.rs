//! Weights packed into panels at load, and input rows packed per call,
//! in the layouts the kernels read.

use super::*;

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
pub(crate) struct Bf16Pair(pub(super) u32);
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
/// A [`Packed::Bf16Pairs`] element read high half first, the order in
/// which `VDPBF16PS` adds a pair's products: kernels without it run bf16
/// pairs as two steps of f32 FMAs over inputs packed by
/// [`pack_rows_high_first`] (a product of two bf16 is exact in f32, so
/// each step rounds only the sum, as the instruction does).
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub(crate) struct HighFirst(pub(super) u32);
// SAFETY: a plain u32.
unsafe impl Plain for HighFirst {}
impl Weight for HighFirst {
    const STEPS: usize = 2;
    #[inline(always)]
    fn at(self, s: usize) -> f32 {
        Bf16Pair(self.0).at(1 - s)
    }
}

/// Packed bf16 pairs as [`HighFirst`] elements.
pub(super) fn high_first(w: &[u32]) -> &[HighFirst] {
    // SAFETY: HighFirst is a transparent u32.
    unsafe { std::slice::from_raw_parts(w.as_ptr() as *const HighFirst, w.len()) }
}

impl Weight for f16 {
    #[inline(always)]
    fn at(self, _: usize) -> f32 {
        self.to_f32()
    }
}

/// Panels of one matrix: `panels * cols * PANEL` elements, zero-padded past
/// the last output row.
/// Panels live in [`HugeBuf`]s: decoding streams them once per token.
pub(super) enum Packed {
    F32(HugeBuf<f32>),
    BF16(HugeBuf<Bf16Pair>),
    F16(HugeBuf<f16>),
    /// int8 ([`super::int8`]): `W[j][k] ≈ q[j][k] * scale[j]`.
    I8 {
        q: HugeBuf<Quad>,
        scale: Vec<f32>,
    },
    /// bf16 weights for bf16 dot products (inputs rounded to bf16 too):
    /// `panel[kp][o]` holds `W[o][2kp]` in its low half and `W[o][2kp+1]` in
    /// its high half, the operand layout of AVX512_BF16's `VDPBF16PS`.
    Bf16Pairs(HugeBuf<u32>),
}

/// A `rows x cols` weight matrix (`rows` outputs), packed for the kernels.
pub struct Mat {
    pub(super) packed: Packed,
    // Private outside the crate: the kernels trust them to describe `packed`.
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

/// Elements below which a matrix is packed on the calling thread (a small
/// model's draft-head rows for a session's own tokens: waking the workers
/// costs more than it saves).
const SERIAL_PACK_BELOW: usize = 1 << 16;

/// Panels of a `rows`-output matrix whose output `j` has `elems` elements,
/// which `fill(j, row)` writes into `row` (every element of it: the buffer
/// is reused from row to row): `panel[e * PANEL + o]`. Each row is
/// converted contiguously, where its arithmetic vectorizes, then scattered
/// into its panel.
pub(super) fn pack_panels<W: Plain + Default>(
    rows: usize,
    elems: usize,
    fill: impl Fn(usize, &mut [W]) + Sync,
) -> HugeBuf<W> {
    let mut out = HugeBuf::zeroed(rows.div_ceil(PANEL) * PANEL * elems);
    let panel = |row: &mut Vec<W>, (p, panel): (usize, &mut [W])| {
        for o in 0..PANEL.min(rows - p * PANEL) {
            fill(p * PANEL + o, row);
            for (dst, &v) in panel.chunks_exact_mut(PANEL).zip(row.iter()) {
                dst[o] = v;
            }
        }
    };
    let (chunk, row) = ((PANEL * elems).max(1), || vec![W::default(); elems]);
    if rows * elems < SERIAL_PACK_BELOW {
        let mut row = row();
        out.chunks_mut(chunk)
            .enumerate()
            .for_each(|c| panel(&mut row, c));
    } else {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each_init(row, panel);
    }
    out
}

/// Row `j` of a row-major `cols`-column matrix.
fn row_of<S>(w: &[S], cols: usize, j: usize) -> &[S] {
    &w[j * cols..(j + 1) * cols]
}

pub(super) fn pack<W: Weight>(w: &[W], rows: usize, cols: usize) -> HugeBuf<W> {
    pack_panels(rows, cols, |j, row| row.copy_from_slice(row_of(w, cols, j)))
}

/// Each pair of columns of a row as one element, `pair(first, second)`; an
/// odd last column has no second.
fn fill_pairs<S: Copy, W>(row: &mut [W], src: &[S], pair: impl Fn(S, Option<S>) -> W) {
    let pairs = src.chunks_exact(2);
    let last = pairs.remainder().first().map(|&a| pair(a, None));
    for (d, p) in row.iter_mut().zip(pairs) {
        *d = pair(p[0], Some(p[1]));
    }
    if let Some(v) = last {
        row[src.len() / 2] = v;
    }
}

/// bf16 weights as [`Bf16Pair`]s (an odd last column pairs with zero).
pub(super) fn pack_bf16(w: &[bf16], rows: usize, cols: usize) -> HugeBuf<Bf16Pair> {
    pack_panels(rows, cols.div_ceil(2), |j, row| {
        fill_pairs(row, row_of(w, cols, j), |a, b| {
            Bf16Pair(a.to_bits() as u32 | b.map_or(0, |b| b.to_bits() as u32) << 16)
        })
    })
}

/// Two values rounded to bf16 (round to nearest even) in one word: the first
/// in the low half. A missing second value (odd `cols`) is zero.
#[inline(always)]
pub(super) fn bf16_pair(first: f32, second: Option<f32>) -> u32 {
    second.map_or(0, bf16_bits) << 16 | bf16_bits(first)
}

/// `bf16::from_f32(x).to_bits()` without branches on finite values, so
/// that loops over rows vectorize: round to nearest even by adding below
/// the cut; NaN stays a quiet NaN.
#[inline(always)]
pub(super) fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    if x.is_nan() {
        (b >> 16) | 0x40
    } else {
        rounded
    }
}

/// [`Packed::Bf16Pairs`] panels of a row-major matrix of any stored element
/// type (read as f32 one element at a time: no f32 copy of the matrix).
pub(super) fn pack_pairs<S: Copy + Sync + Into<f32>>(
    w: &[S],
    rows: usize,
    cols: usize,
) -> HugeBuf<u32> {
    pack_panels(rows, cols.div_ceil(2), |j, row| {
        fill_pairs(row, row_of(w, cols, j), |a, b| {
            bf16_pair(a.into(), b.map(Into::into))
        })
    })
}

/// `x.round().clamp(-127.0, 127.0) as i8` (half away from zero) in
/// operations that vectorize: `f32::round` is a libm call per weight on
/// baseline x86-64, the slowest part of an int8 load. Clamped first, so an
/// infinite `x` (a row whose largest weight is below 127 / f32::MAX) is
/// ±127 as well.
#[inline(always)]
pub(crate) fn to_int8(x: f32) -> i8 {
    let x = x.clamp(-127.0, 127.0);
    let t = x as i32; // towards zero; NaN: 0
    let frac = x - t as f32; // exact
    (t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32) as i8
}

impl Mat {
    /// Outputs.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The matrix quantized to int8 per output row, for int8 products
    /// (inputs are quantized per block of 32 columns; see [`super::int8`]).
    pub fn new_int8(tensor: &Tensor) -> Self {
        let (rows, cols) = (tensor.shape[0], tensor.shape[1]);
        let (q, scale) = match tensor.data() {
            TensorData::F32(w) => int8::quantize_weights(w, rows, cols),
            TensorData::BF16(w) => int8::quantize_weights(w, rows, cols),
            TensorData::F16(w) => int8::quantize_weights(w, rows, cols),
        };
        Mat {
            packed: Packed::I8 { q, scale },
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
            packed: Packed::Bf16Pairs(match tensor.data() {
                TensorData::F32(w) => pack_pairs(w, rows, cols),
                TensorData::BF16(w) => pack_pairs(w, rows, cols),
                TensorData::F16(w) => pack_pairs(w, rows, cols),
            }),
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
    pub(super) fn pairs(&self) -> bool {
        matches!(self.packed, Packed::Bf16Pairs(_))
    }

    /// Bytes the kernels read for one product (panels, padding included).
    pub fn bytes(&self) -> usize {
        match &self.packed {
            Packed::F32(w) => w.len() * 4,
            Packed::BF16(w) => w.len() * 4,
            Packed::F16(w) => w.len() * 2,
            Packed::I8 { q, scale } => q.len() * 4 + scale.len() * 4,
            Packed::Bf16Pairs(w) => w.len() * 4,
        }
    }
}

/// `x` (`rows x cols`, row-major) in the grouped k-major layout of
/// [`Job::x`], into `out` (as long as `x`).
pub(super) fn pack_rows(x: &[f32], rows: usize, cols: usize, group: usize, out: &mut [f32]) {
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
/// [`Job::x`], one word per pair of columns, into `out` (`rows *
/// cols.div_ceil(2)` words).
pub(super) fn pack_row_pairs(x: &[f32], rows: usize, cols: usize, group: usize, out: &mut [u32]) {
    let kps = cols.div_ceil(2);
    for (r0, rr) in groups(rows, group) {
        let dst = &mut out[r0 * kps..(r0 + rr) * kps];
        for r in 0..rr {
            let row = &x[(r0 + r) * cols..][..cols];
            for (kp, pair) in row.chunks(2).enumerate() {
                dst[kp * rr + r] = bf16_pair(pair[0], pair.get(1).copied());
            }
        }
    }
}

/// `x` as bf16 pairs ([`bf16_pair`]) for AMX tiles, into `out` (`rows *
/// cols.div_ceil(2)` words): groups of at most 16 rows ([`groups`]), each
/// stored tile after tile, a tile being the group's rows' 16 pairs from
/// `16 * kb` on, one row after another; the last `kps % 16` pairs likewise.
/// Compiled for the widest vectors the CPU has (the same integer rounding,
/// so the same bits): a batch of 16 decoding rows packs ~70k inputs a
/// layer, on the thread that holds the others waiting.
#[cfg(target_arch = "x86_64")]
pub(super) fn pack_row_pair_tiles(x: &[f32], rows: usize, cols: usize, out: &mut [u32]) {
    crate::softmax::dispatch!(pack_row_pair_tiles_lanes(
        x: &[f32],
        rows: usize,
        cols: usize,
        out: &mut [u32]
    ) -> ())
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn pack_row_pair_tiles_lanes(x: &[f32], rows: usize, cols: usize, out: &mut [u32]) {
    use super::amx::{TILE_PAIRS, TILE_ROWS};
    let kps = cols.div_ceil(2);
    for (r0, rr) in groups(rows, TILE_ROWS) {
        let group = &mut out[r0 * kps..(r0 + rr) * kps];
        for r in 0..rr {
            let row = &x[(r0 + r) * cols..][..cols];
            for (kb, src) in row.chunks(2 * TILE_PAIRS).enumerate() {
                let width = src.len().div_ceil(2);
                let dst = &mut group[kb * rr * TILE_PAIRS + r * width..][..width];
                fill_pairs(dst, src, bf16_pair);
            }
        }
    }
}

/// `x` rounded to bf16 (RNE) as f32, each pair of columns high first and an
/// odd last column paired with zero (`rows x 2 * cols.div_ceil(2)`), in the
/// grouped k-major layout of [`Job::x`]: the inputs of [`HighFirst`]
/// weights. `tmp` and `out` are as long as the result.
pub(super) fn pack_rows_high_first(
    x: &[f32],
    rows: usize,
    cols: usize,
    group: usize,
    tmp: &mut [f32],
    out: &mut [f32],
) {
    let width = 2 * cols.div_ceil(2);
    let round = |v: f32| bf16::from_f32(v).to_f32();
    for (t, xr) in tmp.chunks_exact_mut(width).zip(x.chunks_exact(cols)) {
        for (tp, xp) in t.chunks_exact_mut(2).zip(xr.chunks(2)) {
            tp[0] = xp.get(1).copied().map_or(0.0, round);
            tp[1] = round(xp[0]);
        }
    }
    pack_rows(tmp, rows, width, group, out);
}
