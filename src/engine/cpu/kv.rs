//! The CPU engine's K/V cache, per layer. V is position-major
//! (`len x kv_dim`). K is stored in blocks of [`KEY_BLOCK`] positions, each
//! block dimension-major (`kv_dim x KEY_BLOCK`), so that attention's scores
//! take 16 positions per vector with no reduction across lanes. Appending
//! and truncating change lengths only; elements are f32 or bf16
//! ([`crate::KvDtype`]), and a layer's K and V share one type.

use super::attention::KvElem;
use crate::engine::options::KvDtype;
use half::bf16;

/// Positions per block of K.
pub(crate) const KEY_BLOCK: usize = 16;

/// Where element `j` (of `kvd`) of position `t`'s key sits in K.
#[inline(always)]
pub(crate) fn key_at(t: usize, j: usize, kvd: usize) -> usize {
    (t / KEY_BLOCK) * KEY_BLOCK * kvd + j * KEY_BLOCK + t % KEY_BLOCK
}

/// One layer's K and V.
pub(crate) struct KvPair<T> {
    /// Whole blocks of [`KEY_BLOCK`] positions; the lanes of the last block
    /// past `positions()` hold stale values that nothing reads as a result.
    pub k: Vec<T>,
    pub v: Vec<T>,
    kvd: usize,
}

impl<T: KvElem> KvPair<T> {
    fn new(kvd: usize) -> Self {
        KvPair {
            k: Vec::new(),
            v: Vec::new(),
            kvd,
        }
    }

    fn positions(&self) -> usize {
        self.v.len() / self.kvd
    }

    fn truncate(&mut self, positions: usize) {
        let blocks = positions.div_ceil(KEY_BLOCK);
        self.k.truncate(blocks * KEY_BLOCK * self.kvd);
        self.v.truncate(positions * self.kvd);
    }

    /// Appends rows of K and V, rounded to the element type.
    fn extend(&mut self, k: &[f32], v: &[f32]) {
        let (kvd, t0) = (self.kvd, self.positions());
        let end = t0 + k.len() / kvd;
        let zero = T::from_f32(0.0);
        self.k
            .resize(end.div_ceil(KEY_BLOCK) * KEY_BLOCK * kvd, zero);
        for (t, row) in (t0..).zip(k.chunks_exact(kvd)) {
            for (j, &x) in row.iter().enumerate() {
                self.k[key_at(t, j, kvd)] = T::from_f32(x);
            }
        }
        self.v.extend(v.iter().map(|&x| T::from_f32(x)));
    }

    /// The first `positions` rows of K and V as f32, position-major.
    fn to_f32(&self, positions: usize) -> (Vec<f32>, Vec<f32>) {
        let kvd = self.kvd;
        let k = (0..positions * kvd)
            .map(|e| self.k[key_at(e / kvd, e % kvd, kvd)].f32())
            .collect();
        let v = self.v[..positions * kvd].iter().map(|e| e.f32()).collect();
        (k, v)
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
    fn new(dtype: KvDtype, kvd: usize) -> Self {
        match dtype {
            KvDtype::F32 => KvLayer::F32(KvPair::new(kvd)),
            KvDtype::Bf16 => KvLayer::Bf16(KvPair::new(kvd)),
        }
    }

    /// Positions held.
    pub fn positions(&self) -> usize {
        with_pair!(self, p => p.positions())
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
    pub fn new(layers: usize, kvd: usize, dtype: KvDtype) -> Self {
        CpuKv {
            layers: (0..layers).map(|_| KvLayer::new(dtype, kvd)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_position_major_after_truncation_and_appends() {
        let kvd = 6;
        let row = |t: usize| -> Vec<f32> { (0..kvd).map(|j| (t * 10 + j) as f32).collect() };
        let rows = |ts: std::ops::Range<usize>| -> Vec<f32> { ts.flat_map(row).collect() };
        let mut layer = KvLayer::new(KvDtype::F32, kvd);
        layer.extend(&rows(0..20), &rows(0..20));
        layer.truncate(13);
        layer.extend(&rows(13..40), &rows(13..40));
        assert_eq!(layer.positions(), 40);
        let (k, v) = layer.to_f32(40);
        assert_eq!(k, rows(0..40));
        assert_eq!(v, rows(0..40));
    }
}
