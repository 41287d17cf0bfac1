//! The CPU engine's K/V cache: per layer, position-major (`len x kv_dim`),
//! so appending and truncating are plain length changes. Elements are f32
//! or bf16 ([`crate::KvDtype`]).

use super::attention::KvElem;
use crate::model::KvDtype;
use half::bf16;

/// One layer's K or V rows.
pub enum KvRows {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
}

impl KvRows {
    pub fn new(dtype: KvDtype) -> Self {
        match dtype {
            KvDtype::F32 => KvRows::F32(Vec::new()),
            KvDtype::Bf16 => KvRows::Bf16(Vec::new()),
        }
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        match self {
            KvRows::F32(v) => v.len(),
            KvRows::Bf16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn truncate(&mut self, len: usize) {
        match self {
            KvRows::F32(v) => v.truncate(len),
            KvRows::Bf16(v) => v.truncate(len),
        }
    }

    /// Appends `rows`, rounded to the cache's element type.
    pub fn extend(&mut self, rows: &[f32]) {
        fn push<T: KvElem>(v: &mut Vec<T>, rows: &[f32]) {
            v.extend(rows.iter().map(|&x| T::from_f32(x)));
        }
        match self {
            KvRows::F32(v) => v.extend_from_slice(rows),
            KvRows::Bf16(v) => push(v, rows),
        }
    }

    /// The first `len` elements as f32.
    pub fn to_f32(&self, len: usize) -> Vec<f32> {
        match self {
            KvRows::F32(v) => v[..len].to_vec(),
            KvRows::Bf16(v) => v[..len].iter().map(|x| x.f32()).collect(),
        }
    }
}

/// Every layer's K and V.
pub struct CpuKv {
    pub k: Vec<KvRows>,
    pub v: Vec<KvRows>,
}

impl CpuKv {
    pub fn new(layers: usize, dtype: KvDtype) -> Self {
        CpuKv {
            k: (0..layers).map(|_| KvRows::new(dtype)).collect(),
            v: (0..layers).map(|_| KvRows::new(dtype)).collect(),
        }
    }
}
