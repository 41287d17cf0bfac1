//! The CUDA engine's cuBLAS path (passes of many rows: prompts). Its own
//! process, because it moves the matvec/cuBLAS crossover for every model it
//! loads. Skips, saying why, without a GPU.

mod common;
use common::gpu::{gpu_vs_cpu_error, skip_gpu};
use common::*;
use layerskip::engine::cuda::driver_present;
use layerskip::{Device, LoadOptions, Model};

#[test]
fn prompts_through_cublas_match_the_cpu_engine() {
    if !driver_present() {
        return skip_gpu("cuBLAS path", "no CUDA driver on this machine");
    }
    // Every pass of more than 4 rows goes to cuBLAS.
    std::env::set_var("LAYERSKIP_CUDA_MATVEC_MAX_ROWS", "4");
    let options = LoadOptions {
        device: Device::Cuda(0),
        ..Default::default()
    };
    for name in FIXTURES {
        let gpu = Model::load_with(fixture_dir(name), &options).unwrap();
        let cpu = load(name);
        // f32 weights: f32 products. f16/bf16 weights: cuBLAS takes the
        // inputs rounded to the weights' dtype.
        let tol = if cpu.dtype == layerskip::weights::DType::F32 {
            1e-4
        } else {
            3e-2
        };
        let prompt: Vec<u32> = prompts(name).concat().into_iter().take(40).collect();
        for exit in [1, cpu.num_layers()] {
            let err = gpu_vs_cpu_error(&gpu, &cpu, &prompt, exit);
            println!(
                "{name} exit {exit}, {} rows through cuBLAS: relative error {err:e}",
                prompt.len()
            );
            assert!(
                err < tol,
                "{name} exit {exit}: relative error {err:e} >= {tol:e}"
            );
        }
    }
}
