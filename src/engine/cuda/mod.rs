//! The CUDA engine (cudarc): weights on the GPU in their stored dtype, f32
//! activations, NVRTC kernels ([`compile`]), batch-invariant matrix-vector
//! products, and cuBLAS for a session segment of more than
//! [`MATVEC_MAX_ROWS`] rows (a long prompt).
//!
//! The engine's trait methods cannot return errors, so a CUDA failure in the
//! middle of a pass (a lost device, an out-of-memory allocation) panics with
//! a [`DeviceFailure`] naming the call, which the C API turns back into
//! `LSK_ERR_DEVICE` or `LSK_ERR_OUT_OF_MEMORY`. What
//! can be checked up front (the driver, NVRTC, the headers, the shapes) is
//! checked when the model loads, with clear errors.

pub mod compile;
mod launch;
use launch::{grid, rows_cfg};
mod memory;
mod weights;

use compile::Kernels;
use memory::{kv_grown, scratch, Buf, Workspace};
pub use memory::{CudaKv, DeviceActs};
use weights::{DevMat, LayerWeights, Matrix};

use super::llama::{self, LayerNames};
use super::{rope, Engine, HeadOutput, Segment};
use crate::config::ModelConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::sampling::{Pick, PickRule};
use crate::weights::WeightStore;
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{
    sys as drv, CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr,
    DevicePtrMut, DriverError, LaunchConfig, PushKernelArg,
};
use parking_lot::Mutex;
use std::sync::Arc;

/// The largest session segment that takes the batch-invariant matvec kernel
/// (16 rows a launch). A segment of more rows, a long prompt, goes to cuBLAS
/// on its own (`launch::route`); cuBLAS may round a row differently with the
/// row count, but the rule depends only on the session's own rows, so a
/// session gets the same bits whatever else shares the pass. The exit head
/// always takes the matvec kernel. `LAYERSKIP_CUDA_MATVEC_MAX_ROWS`, read
/// when a model loads, moves the crossover (for tuning, and for the test of
/// the cuBLAS path).
pub const MATVEC_MAX_ROWS: usize = 128;

/// A tuning knob from the environment, or its default.
fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
const MATVEC_ROWS: usize = 16;
/// Positions per block of split attention, at most `ATTN_MAX_CHUNK` in
/// kernels.cu. `LAYERSKIP_CUDA_ATTN_CHUNK`, read when a model loads, changes
/// it (the split path's GPU test runs the small fixtures with chunks of 16).
pub const ATTN_CHUNK: usize = 256;
/// Bound on split attention's partial results: long prompts go through it
/// in slices of rows.
const ATTN_PARTIALS_BYTES: usize = 64 << 20;
const MATVEC_WARPS: u32 = 8;

/// Whether the CUDA driver library can be loaded (checked before touching
/// cudarc, whose loader panics when libcuda is missing).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { drv::is_culib_present() }
}

/// Steps allocate their buffers from the device's stream-ordered pool. Its
/// default release threshold (0) hands memory back to the driver at every
/// synchronisation, so each step would map it again: keep it instead.
fn keep_pool_memory(ctx: &CudaContext) -> Result<()> {
    ctx.bind_to_thread()
        .map_err(|e| cuda_err("binding the context", e))?;
    let mut pool: drv::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    // SAFETY: plain driver calls on the current context's device, with
    // pointers to locals that outlive them.
    unsafe {
        drv::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
            .result()
            .map_err(|e| cuda_err("the memory pool", e))?;
        drv::cuMemPoolSetAttribute(
            pool,
            drv::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
        .result()
        .map_err(|e| cuda_err("the memory pool's release threshold", e))
    }
}

/// Whether cuBLAS can be loaded.
pub fn cublas_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { blas_sys::is_culib_present() }
}

/// Ok when cuBLAS can be loaded; otherwise an error naming every library
/// name cudarc tries (its loader panics when none is found).
pub fn check_cublas() -> Result<()> {
    if cublas_present() {
        return Ok(());
    }
    let tried = cudarc::get_lib_name_candidates("cublas").join(", ");
    Err(Error::new(
        ErrorKind::Unsupported,
        format!(
            "device cuda: cuBLAS not found (tried {tried}). Install cuBLAS (the CUDA \
             toolkit or the nvidia-cublas-cu12 wheel) and put its directory on \
             LD_LIBRARY_PATH; a CUDA 13 cuBLAS must also be linked as libcublas.so"
        ),
    ))
}

/// A failure of a CUDA library, as this crate's error kinds see it.
pub(crate) trait CudaFailure {
    /// Whether the device ran out of memory.
    fn out_of_memory(&self) -> bool;
    /// The failure's name, without calling into the driver (which may be
    /// what failed).
    fn name(&self) -> String;
}

impl CudaFailure for DriverError {
    fn out_of_memory(&self) -> bool {
        self.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
    }
    fn name(&self) -> String {
        format!("{:?}", self.0)
    }
}

impl CudaFailure for cudarc::cublas::result::CublasError {
    fn out_of_memory(&self) -> bool {
        self.0 == blas_sys::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED
    }
    fn name(&self) -> String {
        format!("{:?}", self.0)
    }
}

/// A CUDA failure while `what` as an error: `OutOfMemory` or `Device`.
pub(crate) fn cuda_err(what: &str, e: impl CudaFailure) -> Error {
    let kind = if e.out_of_memory() {
        ErrorKind::OutOfMemory
    } else {
        ErrorKind::Device
    };
    Error::new(kind, format!("CUDA: {what}: {}", e.name()))
}

/// What a CUDA failure inside a pass panics with (the engine's passes cannot
/// return errors): the C API's panic boundary turns it back into its error
/// (`LSK_ERR_DEVICE`, `LSK_ERR_OUT_OF_MEMORY`), not `LSK_ERR_PANIC`.
#[derive(Debug)]
pub struct DeviceFailure(pub Error);

/// Unwraps a CUDA call made inside a pass (see the module comment).
#[track_caller]
pub(crate) fn ok<T>(r: std::result::Result<T, DriverError>) -> T {
    r.unwrap_or_else(|e| {
        let at = std::panic::Location::caller();
        std::panic::panic_any(DeviceFailure(cuda_err(&format!("a pass ({at})"), e)))
    })
}

pub struct CudaEngine {
    cfg: ModelConfig,
    stream: Arc<CudaStream>,
    /// cuBLAS handles are not safe to use from two threads at once.
    blas: Mutex<CudaBlas>,
    /// Held for a whole layer or head pass: passes from several threads run
    /// on the one stream in turn anyway.
    ws: Mutex<Workspace>,
    k: Kernels,
    embed: Matrix,
    /// None when tied to the embedding (one copy on the device).
    lm_head: Option<Matrix>,
    norm: CudaSlice<f32>,
    layers: Vec<LayerWeights>,
    inv_freq: CudaSlice<f32>,
    /// Passes of more rows than this go to cuBLAS ([`MATVEC_MAX_ROWS`]).
    matvec_max_rows: usize,
    /// Positions per block of split attention ([`ATTN_CHUNK`]).
    attn_chunk: usize,
    name: String,
    /// The virtual architecture the kernels were compiled for.
    arch: String,
}

impl CudaEngine {
    /// Loads the weights onto GPU `ordinal`, one tensor at a time from the
    /// memory map (host memory stays near one tensor).
    pub fn load(cfg: &ModelConfig, store: &WeightStore, ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "device cuda: no CUDA driver (libcuda.so) on this machine; use the cpu device",
            ));
        }
        if !compile::nvrtc_present() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "device cuda: NVRTC (libnvrtc.so.12) was not found on the library path; the CUDA engine compiles its kernels with it",
            ));
        }
        let count = CudaContext::device_count().map_err(|e| cuda_err("counting devices", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::invalid(format!(
                "device cuda:{ordinal}: this machine has {count} CUDA device(s)"
            )));
        }
        let h = cfg.hidden_size;
        let (qd, kvd, inter) = (cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        for (what, n) in [
            ("hidden_size", h),
            ("q_dim", qd),
            ("intermediate_size", inter),
        ] {
            if n % 8 != 0 {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("device cuda: {what} = {n} is not a multiple of 8, which the matvec kernel needs"),
                ));
            }
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| cuda_err("creating a context", e))?;
        // SAFETY: everything runs on the context's one stream, so the
        // per-buffer events that order work across streams are not needed
        // (they would cost event records on every launch); nothing is
        // allocated yet.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        keep_pool_memory(&ctx)?;
        let (k, arch) = Kernels::load(&ctx)?;
        check_cublas()?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| cuda_err("cuBLAS", e))?;

        let mat = |name: &str, rows: usize, cols: usize| -> Result<Matrix> {
            Matrix::upload(&stream, &store.get(name, &[rows, cols])?)
        };
        let stacked = |names: &[(String, usize)], cols: usize| -> Result<Matrix> {
            let parts = names
                .iter()
                .map(|(n, rows)| store.get(n, &[*rows, cols]))
                .collect::<Result<Vec<_>>>()?;
            Matrix::stack(&stream, &parts)
        };
        let vec = |name: &str| -> Result<CudaSlice<f32>> {
            stream
                .clone_htod(&store.get(name, &[h])?.to_f32())
                .map_err(|e| cuda_err("upload", e))
        };
        let embed = mat(llama::EMBED, cfg.vocab_size, h)?;
        // A tied head shares the embedding's copy.
        let lm_head = match llama::lm_head(cfg, store) {
            llama::EMBED => None,
            name => Some(mat(name, cfg.vocab_size, h)?),
        };
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let n = LayerNames::new(i);
                let (q, k, v) = ((n.q, qd), (n.k, kvd), (n.v, kvd));
                Ok(LayerWeights {
                    attn_norm: vec(&n.attn_norm)?,
                    mlp_norm: vec(&n.mlp_norm)?,
                    qkv: stacked(&[q, k, v], h)?,
                    o: mat(&n.o, h, qd)?,
                    gate_up: stacked(&[(n.gate, inter), (n.up, inter)], h)?,
                    down: mat(&n.down, h, inter)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        Ok(CudaEngine {
            cfg: cfg.clone(),
            norm: vec(llama::FINAL_NORM)?,
            inv_freq: stream
                .clone_htod(&rope::inv_freq(cfg))
                .map_err(|e| cuda_err("upload", e))?,
            stream,
            blas: Mutex::new(blas),
            ws: Mutex::default(),
            k,
            embed,
            lm_head,
            layers,
            matvec_max_rows: env_usize("LAYERSKIP_CUDA_MATVEC_MAX_ROWS", MATVEC_MAX_ROWS),
            attn_chunk: env_usize("LAYERSKIP_CUDA_ATTN_CHUNK", ATTN_CHUNK).clamp(1, ATTN_CHUNK),
            name,
            arch,
        })
    }

    /// Makes `layer`'s K/V buffers of `kv` hold at least `positions`,
    /// copying what they hold into larger ones ([`kv_grown`]).
    fn grow_kv(&self, kv: &mut CudaKv, layer: usize, positions: usize) {
        let cur = kv.allocated[layer];
        let next = kv_grown(cur, positions, kv.capacity);
        if next == cur {
            return;
        }
        let kvd = self.cfg.kv_dim();
        for buf in [&mut kv.k[layer], &mut kv.v[layer]] {
            let mut bigger = ok(self.stream.alloc_zeros::<f32>(next * kvd));
            ok(self
                .stream
                .memcpy_dtod(&buf.slice(..cur * kvd), &mut bigger.slice_mut(..cur * kvd)));
            *buf = bigger;
        }
        kv.allocated[layer] = next;
    }

    fn head_matrix(&self) -> &Matrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

impl Engine for CudaEngine {
    type Acts = DeviceActs;
    type Kv = CudaKv;

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn kv_bytes_per_position(&self) -> usize {
        self.cfg.kv_bytes_per_position(std::mem::size_of::<f32>())
    }

    /// Device-to-device copies of 1 GiB, bytes read plus written over the
    /// time: the best of three.
    fn synchronize(&self) {
        ok(self.stream.synchronize());
    }

    fn memory_bandwidth(&self) -> f64 {
        let n = (1usize << 30) / 4;
        let src = ok(self.stream.alloc_zeros::<f32>(n));
        let mut dst = ok(self.stream.alloc_zeros::<f32>(n));
        (0..4)
            .map(|_| {
                ok(self.stream.synchronize());
                let t = std::time::Instant::now();
                ok(self.stream.memcpy_dtod(&src, &mut dst));
                ok(self.stream.synchronize());
                (2 * n * 4) as f64 / t.elapsed().as_secs_f64() / 1e9
            })
            .skip(1)
            .fold(0.0, f64::max)
    }

    fn kernel_name(&self) -> String {
        format!("cuda ({}, {})", self.name, self.arch)
    }

    fn new_kv(&self, capacity: usize) -> CudaKv {
        let first = kv_grown(0, 1, capacity.max(1));
        let n = first * self.cfg.kv_dim();
        let alloc = || ok(self.stream.alloc_zeros::<f32>(n));
        let layers = self.cfg.num_layers;
        CudaKv {
            k: (0..layers).map(|_| alloc()).collect(),
            v: (0..layers).map(|_| alloc()).collect(),
            allocated: vec![first; layers],
            capacity: capacity.max(1),
        }
    }

    fn truncate_kv(&self, _kv: &mut CudaKv, _layer: usize, _len: usize) {
        // Lengths live in the session's cache; positions past them are
        // overwritten by the next append.
    }

    fn read_kv(&self, kv: &CudaKv, layer: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
        let n = len * self.cfg.kv_dim();
        let read = |b: &CudaSlice<f32>| ok(self.stream.clone_dtoh(&b.slice(..n)));
        (read(&kv.k[layer]), read(&kv.v[layer]))
    }

    fn embed(&self, tokens: &[u32]) -> DeviceActs {
        let h = self.cfg.hidden_size;
        let mut x = DeviceActs::new(&self.stream, tokens.len(), h);
        if tokens.is_empty() {
            return x;
        }
        let ids = ok(self.stream.clone_htod(tokens));
        let hi = h as i32;
        let f = match self.embed.w {
            DevMat::F32(_) => &self.k.embed_f32,
            DevMat::F16(_) => &self.k.embed_f16,
            DevMat::Bf16(_) => &self.k.embed_bf16,
        };
        let mut b = self.stream.launch_builder(f);
        match &self.embed.w {
            DevMat::F32(w) => b.arg(w),
            DevMat::F16(w) => b.arg(w),
            DevMat::Bf16(w) => b.arg(w),
        };
        b.arg(&ids).arg(&mut x.buf).arg(&hi);
        // SAFETY: embed_*(const T*, const unsigned*, float*, int), a block per token.
        ok(unsafe { b.launch(rows_cfg(tokens.len(), 256)) }.map(|_| ()));
        x
    }

    fn run_layer_batch(
        &self,
        layer: usize,
        segments: &mut [Segment<'_, CudaKv>],
        x: &mut DeviceActs,
    ) {
        let cfg = &self.cfg;
        let w = &self.layers[layer];
        let rows = x.rows;
        if rows == 0 {
            return;
        }
        let (h, hd, qd, kvd) = (cfg.hidden_size, cfg.head_dim, cfg.q_dim(), cfg.kv_dim());
        let (nh, nkv) = (cfg.num_heads, cfg.num_kv_heads);

        let mut ws = self.ws.lock();
        let s = &self.stream;
        let inter = cfg.intermediate_size;
        let stride = qd + 2 * kvd;
        let mut xn = ws.take(s, Buf::Norm, rows * h);
        let mut qkv = ws.take(s, Buf::Qkv, rows * stride);
        let mut attn = ws.take(s, Buf::Attn, rows * qd);
        let mut out = ws.take(s, Buf::Out, rows * h);
        let mut gate_up = ws.take(s, Buf::GateUp, rows * 2 * inter);
        let mut act = ws.take(s, Buf::Act, rows * inter);

        // Rows per session: products route each session's rows alone.
        let seg_rows: Vec<usize> = segments.iter().map(|s| s.rows).collect();
        self.rms_norm(&x.view(), rows, &w.attn_norm, &mut xn);
        self.matmul(&xn.slice(..rows * h), &seg_rows, &w.qkv, &mut qkv);

        // Every row belongs to exactly one segment, so attention writes all of attn.
        let (ih, ikv, ihd) = (nh as i32, nkv as i32, hd as i32);
        let mut next = 0;
        for seg in segments.iter_mut() {
            // This segment's rows of the batch: r0..r0 + n.
            let (n, pos0, r0) = (seg.rows, seg.pos0, next);
            next += n;
            if n == 0 {
                continue;
            }
            self.grow_kv(seg.kv, layer, pos0 + n);
            let (ip, istride) = (pos0 as i32, stride as i32);
            let mut rows_qkv = qkv.slice_mut(r0 * stride..(r0 + n) * stride);
            let mut b = self.stream.launch_builder(&self.k.rope_store);
            b.arg(&mut rows_qkv)
                .arg(&mut seg.kv.k[layer])
                .arg(&mut seg.kv.v[layer])
                .arg(&self.inv_freq)
                .arg(&ih)
                .arg(&ikv)
                .arg(&ihd)
                .arg(&ip)
                .arg(&istride);
            let threads = ((nh + nkv) * hd / 2).next_multiple_of(32).min(1024) as u32;
            // SAFETY: rope_store(qkv, k cache, v cache, inv_freq, heads,
            // kv_heads, head_dim, pos0, stride), a block per row; the caches
            // hold pos0 + n positions (the session checked the capacity).
            ok(unsafe { b.launch(rows_cfg(n, threads)) }.map(|_| ()));

            let qs = qkv.slice(r0 * stride..(r0 + n) * stride);
            let mut os = attn.slice_mut(r0 * qd..(r0 + n) * qd);
            self.attention(&mut ws, layer, seg, &qs, &mut os, n);
        }
        self.matmul(&attn.slice(..rows * qd), &seg_rows, &w.o, &mut out);
        self.add(&mut x.buf, &out, rows * h);

        self.rms_norm(&x.view(), rows, &w.mlp_norm, &mut xn);
        self.matmul(&xn.slice(..rows * h), &seg_rows, &w.gate_up, &mut gate_up);
        let (ii, n) = (inter as i32, (rows * inter) as i32);
        let mut b = self.stream.launch_builder(&self.k.swiglu);
        b.arg(&gate_up).arg(&mut act).arg(&ii).arg(&n);
        // SAFETY: swiglu(const float* gate_up, float* out, int inter, int n), n = rows * inter.
        ok(unsafe { b.launch(grid(rows * inter, 256)) }.map(|_| ()));
        self.matmul(&act.slice(..rows * inter), &seg_rows, &w.down, &mut out);
        self.add(&mut x.buf, &out, rows * h);

        for (b, buf) in [
            (Buf::Norm, xn),
            (Buf::Qkv, qkv),
            (Buf::Attn, attn),
            (Buf::Out, out),
            (Buf::GateUp, gate_up),
            (Buf::Act, act),
        ] {
            ws.put(b, buf);
        }
    }

    fn head(&self, x: &DeviceActs, from: usize, out: &mut Vec<f32>) {
        out.clear();
        let vocab = self.cfg.vocab_size;
        self.device_logits(x, from, |logits, rows| {
            out.resize(rows * vocab, 0.0);
            ok(self
                .stream
                .memcpy_dtoh(&logits.slice(..rows * vocab), out.as_mut_slice()));
        });
    }

    fn head_pick(&self, x: &DeviceActs, from: usize, rules: &[PickRule], out: &mut HeadOutput) {
        let vocab = self.cfg.vocab_size as i32;
        // Per row: temperature (0: greedy), top-k, top-p, uniform.
        let packed: Vec<f32> = rules
            .iter()
            .flat_map(|r| match r {
                PickRule::Greedy => [0.0, 0.0, 1.0, 0.0],
                PickRule::Sample { params: p, u } => {
                    [p.temperature, p.top_k.min(1 << 24) as f32, p.top_p, *u]
                }
            })
            .collect();
        out.fill_picks(|picks| {
            self.device_logits(x, from, |logits, rows| {
                assert_eq!(rows, rules.len(), "one rule per row");
                let dev_rules = ok(self.stream.clone_htod(&packed));
                let mut words = scratch::<u32>(&self.stream, 3 * rows);
                let mut b = self.stream.launch_builder(&self.k.pick_rows);
                let irows = rows as i32;
                b.arg(logits)
                    .arg(&dev_rules)
                    .arg(&mut words)
                    .arg(&vocab)
                    .arg(&irows);
                // SAFETY: pick_rows(const float* logits, const float*
                // rules[4 * rows], unsigned* out[3 * rows], int vocab, int
                // rows), a block of 1024 threads per row.
                ok(unsafe { b.launch(rows_cfg(rows, 1024)) }.map(|_| ()));
                let mut host = vec![0u32; 3 * rows];
                ok(self
                    .stream
                    .memcpy_dtoh(&words.slice(..3 * rows), host.as_mut_slice()));
                picks.extend((0..rows).map(|i| Pick {
                    token: host[i],
                    argmax: host[rows + i],
                    top_prob: f32::from_bits(host[2 * rows + i]),
                }));
            })
        });
    }

    fn weight_bytes_per_token(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|w| {
                [&w.qkv, &w.o, &w.gate_up, &w.down]
                    .iter()
                    .map(|m| m.bytes())
                    .sum::<usize>()
            })
            .sum();
        layers + self.head_matrix().bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::driver::sys::CUresult;

    #[test]
    fn a_missing_cublas_is_an_error_naming_what_was_tried() {
        match check_cublas() {
            Ok(()) => assert!(cublas_present()),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unsupported);
                for name in ["libcublas.so", "libcublas.so.12"] {
                    assert!(e.message().contains(name), "{e}");
                }
            }
        }
    }

    #[test]
    fn cuda_failures_are_device_or_out_of_memory_errors() {
        let oom = cuda_err("alloc", DriverError(CUresult::CUDA_ERROR_OUT_OF_MEMORY));
        assert_eq!(oom.kind(), ErrorKind::OutOfMemory);
        assert!(oom.message().contains("CUDA_ERROR_OUT_OF_MEMORY"), "{oom}");
        let lost = cuda_err("launch", DriverError(CUresult::CUDA_ERROR_LAUNCH_FAILED));
        assert_eq!(lost.kind(), ErrorKind::Device);
        let blas = cuda_err(
            "cuBLAS",
            cudarc::cublas::result::CublasError(
                blas_sys::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED,
            ),
        );
        assert_eq!(blas.kind(), ErrorKind::OutOfMemory);
        let r = std::panic::catch_unwind(|| {
            ok::<()>(Err(DriverError(CUresult::CUDA_ERROR_LAUNCH_FAILED)))
        });
        let failure = r.unwrap_err().downcast::<DeviceFailure>().unwrap();
        assert_eq!(failure.0.kind(), ErrorKind::Device);
    }
}
