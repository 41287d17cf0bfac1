//! The engine a model runs on, chosen when it loads ([`Device`]). Sessions,
//! frontiers, speculation and batching are written once against [`Engine`];
//! this enum only forwards each call to the CPU or the CUDA engine.

use super::cpu::{CpuEngine, CpuKv, HostActs};
use super::cuda::{CudaEngine, CudaKv, DeviceActs};
use super::options::{Device, EngineOptions, KvDtype, Quantize};
use super::{Engine, HeadOutput, Rows, Segment};
use crate::config::ModelConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::sampling::PickRule;
use crate::weights::WeightStore;

/// One model's engine (never moved once loaded, so the size difference of
/// the variants costs nothing).
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    Cpu(CpuEngine),
    Cuda(CudaEngine),
}

pub enum BackendActs {
    Cpu(HostActs),
    Cuda(DeviceActs),
}

pub enum BackendKv {
    Cpu(CpuKv),
    Cuda(CudaKv),
}

impl Backend {
    /// Load `store`'s weights onto the engine `options` names, with that
    /// engine's own checks.
    pub fn load(
        config: &ModelConfig,
        store: &WeightStore,
        options: &EngineOptions,
    ) -> Result<Self> {
        match options.device {
            Device::Cpu => Ok(Backend::Cpu(CpuEngine::load(
                config,
                store,
                options.quantize,
                options.kv_dtype,
                options.threads,
            )?)),
            Device::Cuda(ordinal) => {
                if options.quantize != Quantize::None {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        "the CUDA engine keeps weights in their stored dtype; --quantize is CPU-only",
                    ));
                }
                if options.kv_dtype != KvDtype::F32 {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        "the CUDA engine keeps its K/V cache in f32; --kv-dtype is CPU-only",
                    ));
                }
                Ok(Backend::Cuda(CudaEngine::load(config, store, ordinal)?))
            }
        }
    }
}

const MIXED: &str = "activations and caches of one model share its engine";

impl Rows for BackendActs {
    fn rows(&self) -> usize {
        match self {
            BackendActs::Cpu(a) => a.rows(),
            BackendActs::Cuda(a) => a.rows(),
        }
    }
    fn append(&mut self, other: Self) {
        match (self, other) {
            (BackendActs::Cpu(a), BackendActs::Cpu(b)) => a.append(b),
            (BackendActs::Cuda(a), BackendActs::Cuda(b)) => a.append(b),
            _ => unreachable!("{MIXED}"),
        }
    }
    fn truncate(&mut self, rows: usize) {
        match self {
            BackendActs::Cpu(a) => a.truncate(rows),
            BackendActs::Cuda(a) => a.truncate(rows),
        }
    }
    fn split_off(&mut self, at: usize) -> Self {
        match self {
            BackendActs::Cpu(a) => BackendActs::Cpu(a.split_off(at)),
            BackendActs::Cuda(a) => BackendActs::Cuda(a.split_off(at)),
        }
    }
    fn tail(&self, from: usize) -> Self {
        match self {
            BackendActs::Cpu(a) => BackendActs::Cpu(a.tail(from)),
            BackendActs::Cuda(a) => BackendActs::Cuda(a.tail(from)),
        }
    }
}

/// Runs `f` on the segments with their caches as one engine's type (a
/// single segment, a decode step's case, without allocating).
fn with_segments<'s, 'a, K: 's, R>(
    segments: &'s mut [Segment<'a, BackendKv>],
    pick: impl Fn(&'s mut BackendKv) -> &'s mut K,
    f: impl FnOnce(&mut [Segment<'s, K>]) -> R,
) -> R {
    let convert = |s: &'s mut Segment<'a, BackendKv>| Segment {
        kv: pick(&mut *s.kv),
        pos0: s.pos0,
        rows: s.rows,
    };
    match segments {
        [one] => f(&mut [convert(one)]),
        many => f(&mut many.iter_mut().map(convert).collect::<Vec<_>>()),
    }
}

fn cpu_kv(kv: &mut BackendKv) -> &mut CpuKv {
    match kv {
        BackendKv::Cpu(k) => k,
        _ => unreachable!("{MIXED}"),
    }
}

fn cuda_kv(kv: &mut BackendKv) -> &mut CudaKv {
    match kv {
        BackendKv::Cuda(k) => k,
        _ => unreachable!("{MIXED}"),
    }
}

impl Engine for Backend {
    type Acts = BackendActs;
    type Kv = BackendKv;

    fn config(&self) -> &ModelConfig {
        match self {
            Backend::Cpu(e) => e.config(),
            Backend::Cuda(e) => e.config(),
        }
    }
    fn kv_bytes_per_position(&self) -> usize {
        match self {
            Backend::Cpu(e) => e.kv_bytes_per_position(),
            Backend::Cuda(e) => e.kv_bytes_per_position(),
        }
    }
    fn new_kv(&self, capacity: usize) -> BackendKv {
        match self {
            Backend::Cpu(e) => BackendKv::Cpu(e.new_kv(capacity)),
            Backend::Cuda(e) => BackendKv::Cuda(e.new_kv(capacity)),
        }
    }
    fn truncate_kv(&self, kv: &mut BackendKv, layer: usize, len: usize) {
        match (self, kv) {
            (Backend::Cpu(e), BackendKv::Cpu(kv)) => e.truncate_kv(kv, layer, len),
            (Backend::Cuda(e), BackendKv::Cuda(kv)) => e.truncate_kv(kv, layer, len),
            _ => unreachable!("{MIXED}"),
        }
    }
    fn read_kv(&self, kv: &BackendKv, layer: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
        match (self, kv) {
            (Backend::Cpu(e), BackendKv::Cpu(kv)) => e.read_kv(kv, layer, len),
            (Backend::Cuda(e), BackendKv::Cuda(kv)) => e.read_kv(kv, layer, len),
            _ => unreachable!("{MIXED}"),
        }
    }
    fn embed(&self, tokens: &[u32]) -> BackendActs {
        match self {
            Backend::Cpu(e) => BackendActs::Cpu(e.embed(tokens)),
            Backend::Cuda(e) => BackendActs::Cuda(e.embed(tokens)),
        }
    }
    fn run_layer_batch(
        &self,
        layer: usize,
        segments: &mut [Segment<'_, BackendKv>],
        x: &mut BackendActs,
    ) {
        match (self, x) {
            (Backend::Cpu(e), BackendActs::Cpu(x)) => {
                with_segments(segments, cpu_kv, |s| e.run_layer_batch(layer, s, x))
            }
            (Backend::Cuda(e), BackendActs::Cuda(x)) => {
                with_segments(segments, cuda_kv, |s| e.run_layer_batch(layer, s, x))
            }
            _ => unreachable!("{MIXED}"),
        }
    }
    fn head(&self, x: &BackendActs, from: usize, out: &mut Vec<f32>) {
        match (self, x) {
            (Backend::Cpu(e), BackendActs::Cpu(x)) => e.head(x, from, out),
            (Backend::Cuda(e), BackendActs::Cuda(x)) => e.head(x, from, out),
            _ => unreachable!("{MIXED}"),
        }
    }
    fn head_pick(&self, x: &BackendActs, from: usize, rules: &[PickRule], out: &mut HeadOutput) {
        match (self, x) {
            (Backend::Cpu(e), BackendActs::Cpu(x)) => e.head_pick(x, from, rules, out),
            (Backend::Cuda(e), BackendActs::Cuda(x)) => e.head_pick(x, from, rules, out),
            _ => unreachable!("{MIXED}"),
        }
    }
    fn set_draft_shortlist(&mut self, ids: &[u32]) -> Result<bool> {
        match self {
            Backend::Cpu(e) => e.set_draft_shortlist(ids),
            Backend::Cuda(e) => e.set_draft_shortlist(ids),
        }
    }
    fn draft_head(&self, x: &BackendActs, from: usize, extra: &[&[u32]], out: &mut Vec<f32>) {
        match (self, x) {
            (Backend::Cpu(e), BackendActs::Cpu(x)) => e.draft_head(x, from, extra, out),
            (Backend::Cuda(e), BackendActs::Cuda(x)) => e.draft_head(x, from, extra, out),
            _ => unreachable!("{MIXED}"),
        }
    }
    fn draft_head_pick(
        &self,
        x: &BackendActs,
        from: usize,
        extra: &[&[u32]],
        rules: &[PickRule],
        out: &mut HeadOutput,
    ) {
        match (self, x) {
            (Backend::Cpu(e), BackendActs::Cpu(x)) => e.draft_head_pick(x, from, extra, rules, out),
            (Backend::Cuda(e), BackendActs::Cuda(x)) => {
                e.draft_head_pick(x, from, extra, rules, out)
            }
            _ => unreachable!("{MIXED}"),
        }
    }
    fn weight_bytes_per_token(&self) -> usize {
        match self {
            Backend::Cpu(e) => e.weight_bytes_per_token(),
            Backend::Cuda(e) => e.weight_bytes_per_token(),
        }
    }
    fn synchronize(&self) {
        match self {
            Backend::Cpu(e) => e.synchronize(),
            Backend::Cuda(e) => e.synchronize(),
        }
    }
    fn memory_bandwidth(&self) -> f64 {
        match self {
            Backend::Cpu(e) => e.memory_bandwidth(),
            Backend::Cuda(e) => e.memory_bandwidth(),
        }
    }
    fn kernel_name(&self) -> String {
        match self {
            Backend::Cpu(e) => e.kernel_name(),
            Backend::Cuda(e) => e.kernel_name(),
        }
    }
    fn max_positions(&self) -> usize {
        match self {
            Backend::Cpu(e) => e.max_positions(),
            Backend::Cuda(e) => e.max_positions(),
        }
    }
    fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match self {
            Backend::Cpu(e) => e.enter(f),
            Backend::Cuda(e) => e.enter(f),
        }
    }
}
