//! The CPU engine's K/V cache, per layer, in one of two layouts
//! ([`KvLayout`]). Appending and truncating change lengths only; elements
//! are f32 or bf16 ([`crate::KvDtype`]), and a layer's K and V share one
//! type.

use super::attention::KvElem;
use crate::engine::options::KvDtype;
use half::bf16;

/// Positions per block of K.
pub(crate) const KEY_BLOCK: usize = 16;
/// Positions per block of V in [`KvLayout::Tiles`] (an AMX tile's pairs).
pub(crate) const VALUE_BLOCK: usize = 32;

/// How a layer's K and V sit in memory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum KvLayout {
    /// K in blocks of [`KEY_BLOCK`] positions, each dimension-major
    /// (`kv_dim x 16`), so a vector load takes one dimension of 16
    /// positions; V position-major (`len x kv_dim`).
    Blocks,
    /// The B-tile layouts of AMX attention (bf16 caches only): K in blocks
    /// of 16 positions of pairs of dimensions (`kv_dim / 2 x 16 x 2`), V in
    /// pairs of positions (`len / 2 x kv_dim x 2`) held in whole blocks of
    /// [`VALUE_BLOCK`] positions, zeros past the length.
    Tiles,
}

impl KvLayout {
    /// Where element `j` (of `kvd`) of position `t`'s key sits in K.
    #[inline(always)]
    pub(crate) fn key_at(self, t: usize, j: usize, kvd: usize) -> usize {
        let block = (t / KEY_BLOCK) * KEY_BLOCK * kvd;
        match self {
            KvLayout::Blocks => block + j * KEY_BLOCK + t % KEY_BLOCK,
            KvLayout::Tiles => block + (j / 2) * 2 * KEY_BLOCK + (t % KEY_BLOCK) * 2 + j % 2,
        }
    }

    /// Where element `j` of position `t`'s value sits in V.
    #[inline(always)]
    pub(crate) fn value_at(self, t: usize, j: usize, kvd: usize) -> usize {
        match self {
            KvLayout::Blocks => t * kvd + j,
            KvLayout::Tiles => (t / 2) * 2 * kvd + j * 2 + t % 2,
        }
    }

    /// Elements of V held for `positions`.
    fn values(self, positions: usize, kvd: usize) -> usize {
        match self {
            KvLayout::Blocks => positions * kvd,
            KvLayout::Tiles => positions.next_multiple_of(VALUE_BLOCK) * kvd,
        }
    }
}

/// One layer's K and V.
pub(crate) struct KvPair<T> {
    /// Whole blocks of [`KEY_BLOCK`] positions; the lanes of the last block
    /// past `positions` hold stale values that nothing reads as a result.
    pub k: Vec<T>,
    pub v: Vec<T>,
    pub layout: KvLayout,
    kvd: usize,
    positions: usize,
}

impl<T: KvElem> KvPair<T> {
    pub(super) fn new(kvd: usize, layout: KvLayout) -> Self {
        KvPair {
            k: Vec::new(),
            v: Vec::new(),
            layout,
            kvd,
            positions: 0,
        }
    }

    pub(super) fn truncate(&mut self, positions: usize) {
        let (kvd, layout) = (self.kvd, self.layout);
        self.positions = positions;
        self.k
            .truncate(positions.div_ceil(KEY_BLOCK) * KEY_BLOCK * kvd);
        self.v.truncate(layout.values(positions, kvd));
        if layout == KvLayout::Tiles {
            // Past the length V reads as zeros (an AMX tile of weights
            // multiplies them by zero).
            let zero = T::from_f32(0.0);
            for t in positions..positions.next_multiple_of(VALUE_BLOCK) {
                for j in 0..kvd {
                    self.v[layout.value_at(t, j, kvd)] = zero;
                }
            }
        }
    }

    /// Appends rows of K and V, rounded to the element type.
    pub(super) fn extend(&mut self, k: &[f32], v: &[f32]) {
        let (kvd, layout, t0) = (self.kvd, self.layout, self.positions);
        let end = t0 + k.len() / kvd;
        let zero = T::from_f32(0.0);
        self.k
            .resize(end.div_ceil(KEY_BLOCK) * KEY_BLOCK * kvd, zero);
        self.v.resize(layout.values(end, kvd), zero);
        for (t, (kr, vr)) in (t0..).zip(k.chunks_exact(kvd).zip(v.chunks_exact(kvd))) {
            for (j, (&x, &y)) in kr.iter().zip(vr).enumerate() {
                self.k[layout.key_at(t, j, kvd)] = T::from_f32(x);
                self.v[layout.value_at(t, j, kvd)] = T::from_f32(y);
            }
        }
        self.positions = end;
    }

    /// The first `positions` rows of K and V as f32, position-major.
    fn to_f32(&self, positions: usize) -> (Vec<f32>, Vec<f32>) {
        let (kvd, layout) = (self.kvd, self.layout);
        let read = |x: &[T], at: fn(KvLayout, usize, usize, usize) -> usize| {
            (0..positions * kvd)
                .map(|e| x[at(layout, e / kvd, e % kvd, kvd)].f32())
                .collect()
        };
        (
            read(&self.k, KvLayout::key_at),
            read(&self.v, KvLayout::value_at),
        )
    }
}

/// One layer's cache in its element type.
pub(crate) enum KvLayer {
    F32(KvPair<f32>),
    Bf16(KvPair<bf16>),
}

/// Runs `$body` with `$p` bound to the layer's [`KvPair`], whatever its type.
macro_rules! with_pair {
    ($layer:expr, $p:ident => $body:expr) => {
        match $layer {
            $crate::engine::cpu::kv::KvLayer::F32($p) => $body,
            $crate::engine::cpu::kv::KvLayer::Bf16($p) => $body,
        }
    };
}
pub(super) use with_pair;

impl KvLayer {
    fn new(dtype: KvDtype, kvd: usize, layout: KvLayout) -> Self {
        match dtype {
            KvDtype::F32 => KvLayer::F32(KvPair::new(kvd, layout)),
            KvDtype::Bf16 => KvLayer::Bf16(KvPair::new(kvd, layout)),
        }
    }

    /// Positions held.
    pub fn positions(&self) -> usize {
        with_pair!(self, p => p.positions)
    }

    pub fn truncate(&mut self, positions: usize) {
        with_pair!(self, p => p.truncate(positions))
    }

    pub fn extend(&mut self, k: &[f32], v: &[f32]) {
        with_pair!(self, p => p.extend(k, v))
    }

    pub fn to_f32(&self, positions: usize) -> (Vec<f32>, Vec<f32>) {
        with_pair!(self, p => p.to_f32(positions))
    }
}

/// Every layer's K and V.
pub struct CpuKv {
    pub(crate) layers: Vec<KvLayer>,
}

impl CpuKv {
    pub(crate) fn new(layers: usize, kvd: usize, dtype: KvDtype, layout: KvLayout) -> Self {
        CpuKv {
            layers: (0..layers)
                .map(|_| KvLayer::new(dtype, kvd, layout))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_and_v_read_back_position_major_after_truncation_and_appends() {
        let kvd = 6;
        // Distinct values, exact in bf16 (integers under 256).
        let keys = |ts: std::ops::Range<usize>| -> Vec<f32> {
            ts.flat_map(|t| (0..kvd).map(move |j| (t * kvd + j) as f32))
                .collect()
        };
        let values = |ts| -> Vec<f32> { keys(ts).into_iter().map(|x| 255.0 - x).collect() };
        let cases = [
            (KvDtype::F32, KvLayout::Blocks),
            (KvDtype::Bf16, KvLayout::Blocks),
            (KvDtype::Bf16, KvLayout::Tiles),
        ];
        for (dtype, layout) in cases {
            let mut layer = KvLayer::new(dtype, kvd, layout);
            layer.extend(&keys(0..20), &values(0..20));
            layer.truncate(13);
            layer.extend(&keys(13..40), &values(13..40));
            layer.truncate(37);
            assert_eq!(layer.positions(), 37, "{layout:?}");
            let (k, v) = layer.to_f32(37);
            assert_eq!(k, keys(0..37), "{dtype:?} {layout:?}");
            assert_eq!(v, values(0..37), "{dtype:?} {layout:?}");
            if let KvLayer::Bf16(p) = &layer {
                if layout == KvLayout::Tiles {
                    // Past the length, V is zeros up to its block's end.
                    let zeros = (37..64).flat_map(|t| (0..kvd).map(move |j| (t, j)));
                    assert!(zeros
                        .into_iter()
                        .all(|(t, j)| p.v[layout.value_at(t, j, kvd)].to_f32() == 0.0));
                }
            }
        }
    }
}
