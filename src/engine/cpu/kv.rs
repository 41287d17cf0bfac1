//! The CPU engine's K/V cache: per layer, position-major (`len x kv_dim`),
//! so appending and truncating are plain length changes. Elements are f32
//! or bf16 ([`crate::KvDtype`]); a layer's K and V share one type.

use super::attention::KvElem;
use crate::engine::options::KvDtype;
use half::bf16;

/// One layer's K and V rows.
pub(crate) struct KvPair<T> {
    pub k: Vec<T>,
    pub v: Vec<T>,
}

impl<T: KvElem> KvPair<T> {
    fn truncate(&mut self, len: usize) {
        self.k.truncate(len);
        self.v.truncate(len);
    }

    /// Appends rows of K and V, rounded to the element type.
    fn extend(&mut self, k: &[f32], v: &[f32]) {
        self.k.extend(k.iter().map(|&x| T::from_f32(x)));
        self.v.extend(v.iter().map(|&x| T::from_f32(x)));
    }

    /// The first `len` elements of K and V as f32.
    fn to_f32(&self, len: usize) -> (Vec<f32>, Vec<f32>) {
        let widen = |x: &[T]| x[..len].iter().map(|e| e.f32()).collect();
        (widen(&self.k), widen(&self.v))
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
    fn new(dtype: KvDtype) -> Self {
        match dtype {
            KvDtype::F32 => KvLayer::F32(KvPair {
                k: Vec::new(),
                v: Vec::new(),
            }),
            KvDtype::Bf16 => KvLayer::Bf16(KvPair {
                k: Vec::new(),
                v: Vec::new(),
            }),
        }
    }

    /// Elements of K held (V holds as many).
    pub fn len(&self) -> usize {
        with_pair!(self, p => p.k.len())
    }

    pub fn truncate(&mut self, len: usize) {
        with_pair!(self, p => p.truncate(len))
    }

    pub fn extend(&mut self, k: &[f32], v: &[f32]) {
        with_pair!(self, p => p.extend(k, v))
    }

    pub fn to_f32(&self, len: usize) -> (Vec<f32>, Vec<f32>) {
        with_pair!(self, p => p.to_f32(len))
    }
}

/// Every layer's K and V.
pub struct CpuKv {
    pub(crate) layers: Vec<KvLayer>,
}

impl CpuKv {
    pub fn new(layers: usize, dtype: KvDtype) -> Self {
        CpuKv {
            layers: (0..layers).map(|_| KvLayer::new(dtype)).collect(),
        }
    }
}
