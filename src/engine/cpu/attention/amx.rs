//! Attention on AMX tiles, where bf16 products run on AMX: queries, keys,
//! values and the softmax weights are rounded to bf16 (RNE) and every
//! product of a unit is a `TDPBF16PS` with f32 sums, as in a bf16 model's
//! attention in transformers. AMX sums a tile in its own order, so this
//! mode runs every attention on it, one row included; a head's result
//! depends neither on the heads beside it in a tile nor on the tile's
//! extent (unit test): a score is the dimensions' tiles summed in order,
//! an output the position blocks' tiles in order from the first, and a
//! head's weights past its own positions are zeros, which add nothing. The
//! cache is bf16 in the B-tiles' layouts ([`KvLayout::Tiles`]: pairs of
//! dimensions for K, pairs of positions for V), so tiles load straight
//! from it.

use super::{CacheView, KvElem, Queries};
use crate::engine::cpu::kv::{KvLayout, KEY_BLOCK};
use crate::engine::cpu::scratch;
use crate::engine::cpu::tiles::{self, TileConfig};
use std::arch::asm;
use std::arch::x86_64::*;

/// Query heads per tile (rows of the A and C tiles), and bf16 pairs per
/// tile row (64 bytes).
const TILE: usize = 16;
/// Positions per block of the weighted sum: the k of one A tile of
/// weights (16 pairs of positions).
const POSITION_PAIRS: usize = 32;

/// Whether a model with heads of `hd` dimensions can run attention here
/// (given that AMX runs its products): whole tiles of 32 dimensions, and
/// the instruction sets that round queries and weights into tiles.
pub(super) fn usable(hd: usize) -> bool {
    hd.is_multiple_of(32)
        && is_x86_feature_detected!("avx512bf16")
        && is_x86_feature_detected!("avx512bw")
}

/// Tiles 0-3 accumulate `heads` rows, 4 takes `heads` rows of queries or
/// weights, 5 and 6 take 16 rows of keys or values in turn (tiles are not
/// renamed); every row 64 bytes.
fn config(heads: usize) -> TileConfig {
    let (h, b) = ((heads, 64), (TILE, 64));
    TileConfig::new(&[h, h, h, h, h, b, b])
}

/// 32 values rounded to bf16, in order.
#[inline(always)]
unsafe fn bf16x32(lo: __m512, hi: __m512) -> __m512i {
    std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo))
}

/// Accumulator `$c` += tile 4 times the tile at `$p` (rows `$s` bytes
/// apart) loaded into `$b`.
macro_rules! product {
    ($c:literal, $b:literal, $p:expr, $s:expr) => {
        asm!(
            concat!("tileloadd tmm", $b, ", [{p} + {s}*1]"),
            concat!("tdpbf16ps tmm", $c, ", tmm4, tmm", $b),
            p = in(reg) $p, s = in(reg) $s,
            options(nostack, readonly)
        )
    };
}

/// A B tile in memory: its first row, and the bytes between rows.
type Tile = (*const u32, usize);

/// Accumulator `j` (0-3) += tile 4 times tile `b`.
#[inline(always)]
unsafe fn product(j: usize, b: Tile) {
    let (p, s) = b;
    match j {
        0 => product!(0, 5, p, s),
        1 => product!(1, 6, p, s),
        2 => product!(2, 5, p, s),
        _ => product!(3, 6, p, s),
    }
}

/// Accumulator `j` (0-3) to `p`, rows `stride` bytes apart.
#[inline(always)]
unsafe fn store(j: usize, p: *mut f32, stride: usize) {
    macro_rules! st {
        ($c:literal) => {
            asm!(concat!("tilestored [{p} + {s}*1], tmm", $c), p = in(reg) p, s = in(reg) stride, options(nostack))
        };
    }
    match j {
        0 => st!(0),
        1 => st!(1),
        2 => st!(2),
        _ => st!(3),
    }
}

/// Accumulators `j < g` (at most 4) = Σ over `steps` in order of the A
/// tile `a(step)` (rows 64 bytes apart) times the B tile `b(step, j)`,
/// then stored to `out(j)` (rows `out_stride` bytes apart).
#[inline(always)]
unsafe fn tile_products(
    g: usize,
    steps: usize,
    a: impl Fn(usize) -> *const u32,
    b: impl Fn(usize, usize) -> Tile,
    out: impl Fn(usize) -> *mut f32,
    out_stride: usize,
) {
    tiles::zero_accumulators();
    for step in 0..steps {
        let p = a(step);
        asm!("tileloadd tmm4, [{p} + {s}*1]", p = in(reg) p, s = in(reg) 64usize, options(nostack, readonly));
        for j in 0..g {
            product(j, b(step, j));
        }
    }
    for j in 0..g {
        store(j, out(j), out_stride);
    }
}

impl<T: KvElem> CacheView<'_, T> {
    /// [`CacheView::attend_rows`] on AMX tiles.
    ///
    /// # Safety
    /// AMX runs this process's bf16 products (tile data permitted), and
    /// [`usable`] holds for `self.hd`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn attend_amx(&self, qs: &Queries, o: &mut [f32]) {
        let (rows, kvh) = (qs.rows.clone(), qs.kvh);
        let (hd, kvd, group) = (self.hd, self.kvd, self.group);
        let n_max = self.pos0 + rows.end;
        let heads = rows.len() * group;
        let tiles = heads.div_ceil(TILE);
        // Scores and weights per head: whole blocks of the weighted sum.
        let stride = n_max.next_multiple_of(POSITION_PAIRS);
        let (chunks, key_blocks) = (hd / 32, n_max.div_ceil(KEY_BLOCK));
        let (blocks, vchunks) = (stride / POSITION_PAIRS, hd / 16);
        assert!(hd.is_multiple_of(32) && o.len() == heads * hd);
        assert!(self.layout == KvLayout::Tiles && std::mem::size_of::<T>() == 2);
        // Whole blocks of K, and of V (zeros past the length).
        assert!(self.k.len() >= key_blocks * KEY_BLOCK * kvd);
        assert!(self.v.len() >= blocks * POSITION_PAIRS * kvd);
        // Head `i`: row `rows.start + i / group`, seeing `positions(i)`
        // positions; `reach(qt)`: the most any head of tile qt sees.
        let base = self.pos0 + rows.start + 1;
        let positions = |i: usize| base + i / group;
        let reach = |qt: usize| positions(((qt + 1) * TILE).min(heads) - 1);
        let query = |i: usize| qs.head(i, group, hd).as_ptr();
        const W: usize = TILE * TILE; // 32-bit words per tile
        let lens = [
            tiles * chunks * W,
            tiles * TILE * stride,
            tiles * blocks * W,
            tiles * TILE * hd,
        ];
        scratch::with(lens, |[qa, sc, pa, ot]| {
            let word = |b: &mut [f32], at: usize| b.as_mut_ptr().add(at) as *mut __m512i;
            // Queries: A tiles of up to 16 heads x 32 dimensions.
            for i in 0..heads {
                let (qt, r) = (i / TILE, i % TILE);
                for c in 0..chunks {
                    let x = query(i).add(c * 32);
                    let v = bf16x32(_mm512_loadu_ps(x), _mm512_loadu_ps(x.add(16)));
                    _mm512_storeu_si512(word(qa, (qt * chunks + c) * W + r * TILE), v);
                }
            }
            // The tile of heads `qt`, its height configured.
            let mut configured = 0;
            let mut configure = |qt: usize| {
                let h = TILE.min(heads - qt * TILE);
                if h != configured {
                    config(h).load();
                    configured = h;
                }
            };
            // Scores: per tile of heads, four blocks of positions at a
            // time, each the sum of the dimensions' tiles in order.
            let qa = qa.as_ptr() as *const u32;
            // The cache's key tile (block b of 16 positions, dimensions
            // c*32..) and value tile (block b of 32 positions, dimensions
            // j*16..), straight from its tile layouts.
            let (k, v) = (self.k.as_ptr() as *const u16, self.v.as_ptr() as *const u16);
            let key_tile = |b: usize, c: usize| -> Tile {
                let at = KvLayout::Tiles.key_at(b * KEY_BLOCK, kvh * hd + c * 32, kvd);
                (k.add(at) as *const u32, 64)
            };
            let value_tile = |b: usize, j: usize| -> Tile {
                let at = KvLayout::Tiles.value_at(b * POSITION_PAIRS, kvh * hd + j * 16, kvd);
                (v.add(at) as *const u32, 4 * kvd)
            };
            let scores = sc.as_mut_ptr();
            for qt in 0..tiles {
                configure(qt);
                let needed = reach(qt).div_ceil(KEY_BLOCK);
                for b0 in (0..needed).step_by(4) {
                    tile_products(
                        4.min(needed - b0),
                        chunks,
                        |c| qa.add((qt * chunks + c) * W),
                        |c, j| key_tile(b0 + j, c),
                        |j| scores.add(qt * TILE * stride + (b0 + j) * KEY_BLOCK),
                        stride * 4,
                    );
                }
            }
            // Softmax weights, then A tiles of 16 heads x 32 positions,
            // zeros past each head's own positions.
            for i in 0..heads {
                let s = &mut sc[i * stride..][..positions(i)];
                s.iter_mut().for_each(|x| *x *= self.scale);
                crate::softmax::softmax_in_place(s);
            }
            for i in 0..heads {
                let (qt, r, seen) = (i / TILE, i % TILE, positions(i));
                // Lanes of the 16 positions from `t` that head i sees.
                let mask = |t: usize| ((1u32 << seen.saturating_sub(t).min(16)) - 1) as u16;
                for b in 0..reach(qt).div_ceil(POSITION_PAIRS) {
                    let t = b * POSITION_PAIRS;
                    let p = sc.as_ptr().add(i * stride + t);
                    let lo = _mm512_maskz_loadu_ps(mask(t), p);
                    let hi = _mm512_maskz_loadu_ps(mask(t + 16), p.add(16));
                    let at = (qt * blocks + b) * W + r * TILE;
                    _mm512_storeu_si512(word(pa, at), bf16x32(lo, hi));
                }
            }
            // Weighted sums: per tile of heads, up to 64 dimensions at a
            // time, each the blocks of positions in order from the first.
            let pa = pa.as_ptr() as *const u32;
            let out = ot.as_mut_ptr();
            for qt in 0..tiles {
                configure(qt);
                let needed = reach(qt).div_ceil(POSITION_PAIRS);
                for j0 in (0..vchunks).step_by(4) {
                    tile_products(
                        4.min(vchunks - j0),
                        needed,
                        |b| pa.add((qt * blocks + b) * W),
                        |b, j| value_tile(b, j0 + j),
                        |j| out.add(qt * TILE * hd + (j0 + j) * 16),
                        hd * 4,
                    );
                }
            }
            tiles::release();
            o.copy_from_slice(&ot[..heads * hd]);
        })
    }
}
