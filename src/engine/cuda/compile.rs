//! The kernels' CUDA C source, compiled by NVRTC at first use, and the
//! compiled kernels of one engine.

use super::cuda_err;
use crate::error::{Error, ErrorKind, Result};
use cudarc::driver::{CudaContext, CudaFunction};
use cudarc::nvrtc::{CompileOptions, Ptx};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The CUDA C source of every kernel.
pub const SOURCE: &str = include_str!("kernels.cu");

/// The kernels the engine loads by name: exactly the source's entry points
/// (a unit test keeps the two lists equal, so a renamed kernel fails here,
/// not on a GPU).
pub const KERNELS: [&str; 15] = [
    "matvec_f32",
    "matvec_f16",
    "matvec_bf16",
    "f32_to_f16",
    "f32_to_bf16",
    "embed_f32",
    "embed_f16",
    "embed_bf16",
    "rms_norm",
    "rope_store",
    "attention_chunk",
    "attention_combine",
    "swiglu",
    "add",
    "pick_rows",
];

/// The entry points of the source (every `extern "C" __global__`).
pub fn kernel_names() -> Vec<&'static str> {
    SOURCE
        .split("extern \"C\" __global__ void ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .collect()
}

/// Whether libnvrtc can be loaded (checked before cudarc touches it: its
/// loader panics when the library is missing).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Where `cuda_fp16.h` and `cuda_bf16.h` are: `LAYERSKIP_CUDA_INCLUDE`, then
/// `$CUDA_HOME/include` or `$CUDA_PATH/include`, then `/usr/local/cuda/include`.
/// (The PyPI wheel `nvidia-cuda-runtime-cu12` has them under
/// `site-packages/nvidia/cuda_runtime/include`.)
pub fn include_dir() -> Option<PathBuf> {
    let has_headers = |d: &Path| d.join("cuda_bf16.h").is_file() && d.join("cuda_fp16.h").is_file();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("LAYERSKIP_CUDA_INCLUDE") {
        candidates.push(d.into());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(d) = std::env::var(var) {
            candidates.push(Path::new(&d).join("include"));
        }
    }
    candidates.push("/usr/local/cuda/include".into());
    candidates.into_iter().find(|d| has_headers(d))
}

/// PTX of every kernel for a virtual architecture such as `compute_90`.
pub fn compile_ptx(arch: &'static str) -> Result<Ptx> {
    if !nvrtc_present() {
        return Err(Error::new(
            ErrorKind::Unsupported,
            "the CUDA engine needs NVRTC (libnvrtc.so.12), which was not found on the library path",
        ));
    }
    let include = include_dir().ok_or_else(|| {
        Error::new(
            ErrorKind::Unsupported,
            "the CUDA engine's kernels need cuda_fp16.h and cuda_bf16.h: set LAYERSKIP_CUDA_INCLUDE \
             (or CUDA_HOME) to a CUDA include directory",
        )
    })?;
    let options = CompileOptions {
        arch: Some(arch),
        include_paths: vec![include.display().to_string()],
        // Exact f32 arithmetic, as the CPU engine does (no fast math, no
        // contraction beyond the fmaf calls the source writes).
        fmad: Some(false),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(SOURCE, options).map_err(|e| {
        Error::new(
            ErrorKind::Unsupported,
            format!("NVRTC failed to compile the CUDA kernels for {arch}: {e}"),
        )
    })
}

/// The kernels of [`SOURCE`], loaded into one engine's context.
pub(crate) struct Kernels {
    pub(crate) matvec_f32: CudaFunction,
    pub(crate) matvec_f16: CudaFunction,
    pub(crate) matvec_bf16: CudaFunction,
    pub(crate) f32_to_f16: CudaFunction,
    pub(crate) f32_to_bf16: CudaFunction,
    pub(crate) embed_f32: CudaFunction,
    pub(crate) embed_f16: CudaFunction,
    pub(crate) embed_bf16: CudaFunction,
    pub(crate) rms_norm: CudaFunction,
    pub(crate) rope_store: CudaFunction,
    pub(crate) attention_chunk: CudaFunction,
    pub(crate) attention_combine: CudaFunction,
    pub(crate) swiglu: CudaFunction,
    pub(crate) add: CudaFunction,
    pub(crate) pick_rows: CudaFunction,
}

/// The PTX of the kernels for the device's architecture, compiled once per
/// process and architecture.
fn ptx_for(major: i32, minor: i32) -> Result<Ptx> {
    use std::collections::HashMap;
    static CACHE: std::sync::OnceLock<Mutex<HashMap<(i32, i32), Ptx>>> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().get(&(major, minor)) {
        return Ok(p.clone());
    }
    // NVRTC wants a 'static arch name; the few that exist are leaked once.
    let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
    let ptx = compile_ptx(arch)?;
    cache.lock().insert((major, minor), ptx.clone());
    Ok(ptx)
}

impl Kernels {
    pub(crate) fn load(ctx: &Arc<CudaContext>) -> Result<(Kernels, String)> {
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| cuda_err("compute capability", e))?;
        let module = ctx
            .load_module(ptx_for(major, minor)?)
            .map_err(|e| cuda_err("loading the kernels", e))?;
        let f = |name: &str| {
            debug_assert!(KERNELS.contains(&name), "{name} is not in KERNELS");
            module
                .load_function(name)
                .map_err(|e| cuda_err(&format!("kernel {name}"), e))
        };
        let kernels = Kernels {
            matvec_f32: f("matvec_f32")?,
            matvec_f16: f("matvec_f16")?,
            matvec_bf16: f("matvec_bf16")?,
            f32_to_f16: f("f32_to_f16")?,
            f32_to_bf16: f("f32_to_bf16")?,
            embed_f32: f("embed_f32")?,
            embed_f16: f("embed_f16")?,
            embed_bf16: f("embed_bf16")?,
            rms_norm: f("rms_norm")?,
            rope_store: f("rope_store")?,
            attention_chunk: f("attention_chunk")?,
            attention_combine: f("attention_combine")?,
            swiglu: f("swiglu")?,
            add: f("add")?,
            pick_rows: f("pick_rows")?,
        };
        Ok((kernels, format!("compute_{major}{minor}")))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_engine_loads_exactly_the_kernels_the_source_defines() {
        let mut source = super::kernel_names();
        let mut loaded = super::KERNELS.to_vec();
        source.sort();
        loaded.sort();
        assert_eq!(source, loaded);
    }
}
