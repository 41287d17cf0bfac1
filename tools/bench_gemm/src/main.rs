//! The matrix products of 12 layers of the ~100M model (hidden 768,
//! intermediate 2048, 4 KV heads of 64) for 1..=9 input rows: our packed
//! kernels (bf16 weights; f32 products and bf16 products) against the `gemm`
//! crate (f32 and f16 weights: it has no bf16). Best of 7 passes each.
//!
//!   cargo run --release --manifest-path tools/bench_gemm/Cargo.toml

use gemm::{gemm, Parallelism};
use half::{bf16, f16};
use layerskip::engine::cpu::{matmul, Mat};
use layerskip::weights::{DType, Tensor};
use std::time::Instant;

const SHAPES: [(usize, usize); 7] = [
    (768, 768),  // q
    (256, 768),  // k
    (256, 768),  // v
    (768, 768),  // o
    (2048, 768), // gate
    (2048, 768), // up
    (768, 2048), // down
];
const LAYERS: usize = 12;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bf16::from_f32((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5).to_f32()
        })
        .collect()
}

fn best(mut f: impl FnMut()) -> f64 {
    f();
    (0..7)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// `out (rows x n) = x (rows x k) · wᵀ`, `w` row-major `n x k`.
fn gemm_product<T: 'static + Copy + Default>(
    x: &[T],
    rows: usize,
    w: &[T],
    n: usize,
    k: usize,
    out: &mut [T],
    one: T,
    zero: T,
) {
    // SAFETY: the strides describe the slices' row-major layouts.
    unsafe {
        gemm(
            rows,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            zero,
            one,
            false,
            false,
            false,
            Parallelism::Rayon(rayon::current_num_threads()),
        )
    }
}

fn main() {
    let weights: Vec<Vec<(Vec<f32>, usize, usize)>> = (0..LAYERS)
        .map(|l| {
            SHAPES
                .iter()
                .enumerate()
                .map(|(i, &(n, k))| (values(n * k, (l * 7 + i) as u64 + 1), n, k))
                .collect()
        })
        .collect();
    let tensor = |w: &[f32], n: usize, k: usize| {
        let bytes: Vec<u8> = w
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect();
        Tensor::from_bytes(DType::BF16, vec![n, k], &bytes)
    };
    let ours: Vec<Vec<Mat>> = weights
        .iter()
        .map(|l| {
            l.iter()
                .map(|(w, n, k)| Mat::new(&tensor(w, *n, *k)))
                .collect()
        })
        .collect();
    let ours_bf16: Vec<Vec<Mat>> = weights
        .iter()
        .map(|l| {
            l.iter()
                .map(|(w, n, k)| Mat::new_bf16(&tensor(w, *n, *k)))
                .collect()
        })
        .collect();
    let w16: Vec<Vec<Vec<f16>>> = weights
        .iter()
        .map(|l| {
            l.iter()
                .map(|(w, _, _)| w.iter().map(|v| f16::from_f32(*v)).collect())
                .collect()
        })
        .collect();

    println!("rows | ours bf16 weights, f32 products | ours bf16 products | gemm f32 weights | gemm f16 weights   (ms for 12 layers' products)");
    for rows in 1..=9usize {
        let x = values(rows * 2048, 99);
        let x16: Vec<f16> = x.iter().map(|v| f16::from_f32(*v)).collect();
        let mut out = vec![0f32; rows * 2048];
        let mut out16 = vec![f16::ZERO; rows * 2048];
        let run_ours = |mats: &Vec<Vec<Mat>>, out: &mut Vec<f32>| {
            for l in mats {
                for m in l {
                    matmul(&x[..rows * m.cols], rows, m, &mut out[..rows * m.rows]);
                }
            }
        };
        let a = best(|| run_ours(&ours, &mut out));
        let b = best(|| run_ours(&ours_bf16, &mut out));
        let c = best(|| {
            for l in &weights {
                for (w, n, k) in l {
                    gemm_product(
                        &x[..rows * k],
                        rows,
                        w,
                        *n,
                        *k,
                        &mut out[..rows * n],
                        1.0,
                        0.0,
                    );
                }
            }
        });
        let d = best(|| {
            for (l, l16) in weights.iter().zip(&w16) {
                for ((_, n, k), w) in l.iter().zip(l16) {
                    gemm_product(
                        &x16[..rows * k],
                        rows,
                        w,
                        *n,
                        *k,
                        &mut out16[..rows * n],
                        f16::ONE,
                        f16::ZERO,
                    );
                }
            }
        });
        println!(
            "{rows:4} | {:8.2} | {:8.2} | {:8.2} | {:8.2}",
            a * 1e3,
            b * 1e3,
            c * 1e3,
            d * 1e3
        );
    }
}
