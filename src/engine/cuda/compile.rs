//! The kernels' CUDA C source, compiled by NVRTC at first use.

use crate::error::{Error, ErrorKind, Result};
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::path::{Path, PathBuf};

/// The CUDA C source of every kernel.
pub const SOURCE: &str = include_str!("kernels.cu");

/// The kernels the engine loads by name: exactly the source's entry points
/// (a unit test keeps the two lists equal, so a renamed kernel fails here,
/// not on a GPU).
pub const KERNELS: [&str; 14] = [
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
    "attention",
    "swiglu",
    "add",
    "argmax_rows",
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
