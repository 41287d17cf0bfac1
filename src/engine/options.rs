//! How a model is held on an engine: the device, the weights' precision and
//! the K/V cache's element type, chosen when it loads.

use crate::error::{Error, Result};

/// Where a model's weights live and its passes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = Error;
    /// `cpu`, `cuda` (GPU 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "unknown device {s:?} (expected cpu, cuda or cuda:N)"
                    ))
                }),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How weights are held for compute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Quantize {
    /// As stored (f32, bf16 or f16).
    #[default]
    None,
    /// int8 products: weights symmetric per output channel, each product's
    /// inputs quantized per block of 32 columns (llama.cpp's q8_0 scheme),
    /// exact integer sums per block, f32 across blocks.
    /// Embeddings are looked up from the checkpoint as stored.
    Int8,
    /// bf16 matrix products: weights in bf16 (f32/f16 checkpoints are
    /// rounded), each product's input rows rounded to bf16, products summed
    /// in f32 (llama.cpp's bf16 arithmetic). Multi-row products (verify,
    /// batches) run about twice as fast on CPUs with AVX512_BF16; elsewhere
    /// FMAs give the same bits at about the speed of f32 products. Norms
    /// and the residual stream stay f32, and so does attention, except on
    /// CPUs where AMX runs the products: there attention runs on AMX too
    /// (queries, keys, values and softmax weights in bf16, f32 sums) and
    /// the K/V cache holds bf16 whatever [`KvDtype`] says.
    Bf16,
}

/// How the K/V cache stores its elements (the CPU engine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// f32: the reference.
    #[default]
    F32,
    /// bf16, rounded to nearest even as K and V are computed (transformers
    /// keeps a bf16 model's cache the same way): half the memory per
    /// position, so twice the context or sessions in a KV budget, and half
    /// the bytes attention reads at long contexts. Attention arithmetic
    /// stays f32 (except in [`Quantize::Bf16`] on AMX, which holds a bf16
    /// cache either way).
    Bf16,
}

/// Everything an engine needs to know to load a checkpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineOptions {
    pub device: Device,
    pub quantize: Quantize,
    pub kv_dtype: KvDtype,
    /// CPU worker threads of this model's own pool; 0 shares the process's
    /// pool (`RAYON_NUM_THREADS`, default one per core).
    pub threads: usize,
}

impl KvDtype {
    /// Bytes one cached element takes.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::Bf16 => 2,
        }
    }
}
