//! Weights on the device, in their stored dtype.

use super::cuda_err;
use crate::error::Result;
use crate::weights::{Tensor, TensorData};
use cudarc::driver::{CudaSlice, CudaStream};
use half::{bf16, f16};
use std::sync::Arc;

/// A weight matrix (`rows x cols`, row-major) in its stored dtype.
pub(crate) enum DevMat {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    Bf16(CudaSlice<bf16>),
}

pub(crate) struct Matrix {
    pub(crate) w: DevMat,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

impl Matrix {
    pub(crate) fn upload(stream: &Arc<CudaStream>, t: &Tensor) -> Result<Matrix> {
        let w = match t.data() {
            TensorData::F32(s) => {
                DevMat::F32(stream.clone_htod(s).map_err(|e| cuda_err("upload", e))?)
            }
            TensorData::F16(s) => {
                DevMat::F16(stream.clone_htod(s).map_err(|e| cuda_err("upload", e))?)
            }
            TensorData::BF16(s) => {
                DevMat::Bf16(stream.clone_htod(s).map_err(|e| cuda_err("upload", e))?)
            }
        };
        Ok(Matrix {
            w,
            rows: t.shape[0],
            cols: t.shape[1],
        })
    }

    /// Several matrices with the same columns, one under the other (the
    /// fused QKV and gate/up products: one launch instead of three or two).
    /// Mixed dtypes are stacked as f32.
    pub(crate) fn stack(stream: &Arc<CudaStream>, parts: &[Tensor]) -> Result<Matrix> {
        let cols = parts[0].shape[1];
        let rows = parts.iter().map(|t| t.shape[0]).sum();
        let up = |e| cuda_err("upload", e);
        macro_rules! concat {
            ($variant:ident, $ty:ty) => {{
                let mut v: Vec<$ty> = Vec::with_capacity(rows * cols);
                for t in parts {
                    match t.data() {
                        TensorData::$variant(s) => v.extend_from_slice(s),
                        _ => unreachable!("dtypes checked above"),
                    }
                }
                v
            }};
        }
        let same = parts.iter().all(|t| t.dtype == parts[0].dtype);
        let w = match (same, parts[0].data()) {
            (true, TensorData::F16(_)) => {
                DevMat::F16(stream.clone_htod(&concat!(F16, f16)).map_err(up)?)
            }
            (true, TensorData::BF16(_)) => {
                DevMat::Bf16(stream.clone_htod(&concat!(BF16, bf16)).map_err(up)?)
            }
            _ => {
                let v: Vec<f32> = parts.iter().flat_map(|t| t.to_f32()).collect();
                DevMat::F32(stream.clone_htod(&v).map_err(up)?)
            }
        };
        Ok(Matrix { w, rows, cols })
    }

    pub(crate) fn bytes(&self) -> usize {
        let size = match self.w {
            DevMat::F32(_) => 4,
            DevMat::F16(_) | DevMat::Bf16(_) => 2,
        };
        self.rows * self.cols * size
    }
}

pub(crate) struct LayerWeights {
    pub(crate) attn_norm: CudaSlice<f32>,
    pub(crate) mlp_norm: CudaSlice<f32>,
    /// Q, K and V stacked: `q_dim + 2 kv_dim` outputs.
    pub(crate) qkv: Matrix,
    pub(crate) o: Matrix,
    /// Gate and up stacked: `2 intermediate_size` outputs.
    pub(crate) gate_up: Matrix,
    pub(crate) down: Matrix,
}
