//! The matrix products of one decoder layer over 1..=9 rows (a verify of
//! d + 1 rows, or a batch of sessions), against one row. Shapes of the ~100M
//! random model by default (hidden 768, intermediate 2048, 4 KV heads of 64);
//! weights bf16, larger than the L2 cache in total, as in real decoding,
//! and run as decoding runs them: inside a pool of one thread per core
//! (`RAYON_NUM_THREADS`) whose workers are held as a team.
//!
//!   cargo bench --bench matmul
//!   LAYERSKIP_BENCH_SHAPE=256,704,64,128 cargo bench --bench matmul  # hidden,inter,kv_dim,layers
//!   LAYERSKIP_BENCH_QUANTIZE=bf16 cargo bench --bench matmul         # or int8
//!   LAYERSKIP_BENCH_ROWS=1,16,64 cargo bench --bench matmul          # row counts (default 1..=9)

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use layerskip::engine::cpu::{hold, matmul, matmul_many, LayerWeights, Mat};
use layerskip::weights::{DType, Tensor};
use std::time::Duration;

fn mat(rows: usize, cols: usize, seed: u64) -> Mat {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let bytes: Vec<u8> = (0..rows * cols)
        .flat_map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bf16::from_f32((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5).to_le_bytes()
        })
        .collect();
    let t = Tensor::from_bytes(DType::BF16, vec![rows, cols], &bytes);
    match std::env::var("LAYERSKIP_BENCH_QUANTIZE").as_deref() {
        Ok("bf16") => Mat::new_bf16(&t),
        Ok("int8") => Mat::new_int8(&t),
        _ => Mat::new(&t),
    }
}

fn shape() -> (usize, usize, usize, usize) {
    let v: Vec<usize> = std::env::var("LAYERSKIP_BENCH_SHAPE")
        .unwrap_or_else(|_| "768,2048,256,12".into())
        .split(',')
        .map(|x| {
            x.parse()
                .expect("LAYERSKIP_BENCH_SHAPE: hidden,inter,kv_dim,layers")
        })
        .collect();
    (v[0], v[1], v[2], v[3])
}

fn benches(c: &mut Criterion) {
    let (h, inter, kvd, n_layers) = shape();
    let layers: Vec<LayerWeights> = (0..n_layers as u64)
        .map(|i| LayerWeights {
            attn_norm: vec![1.0; h],
            mlp_norm: vec![1.0; h],
            q: mat(h, h, 7 * i + 1),
            k: mat(kvd, h, 7 * i + 2),
            v: mat(kvd, h, 7 * i + 3),
            o: mat(h, h, 7 * i + 4),
            gate: mat(inter, h, 7 * i + 5),
            up: mat(inter, h, 7 * i + 6),
            down: mat(h, inter, 7 * i + 7),
        })
        .collect();
    let params = n_layers * (2 * h * h + 2 * kvd * h + 3 * inter * h);
    let mut g = c.benchmark_group("layer_products");
    let row_counts: Vec<usize> = match std::env::var("LAYERSKIP_BENCH_ROWS") {
        Ok(v) => v
            .split(',')
            .map(|r| r.parse().expect("LAYERSKIP_BENCH_ROWS: row counts"))
            .collect(),
        Err(_) => (1..=9).collect(),
    };
    // One pool for every row count, as a process decodes on one.
    let pool = rayon::ThreadPoolBuilder::new().build().unwrap();
    for rows in row_counts {
        let x = vec![0.25f32; rows * inter.max(h)];
        let (mut q, mut k, mut v) = (
            vec![0.0; rows * h],
            vec![0.0; rows * kvd],
            vec![0.0; rows * kvd],
        );
        let (mut gate, mut up, mut o) = (
            vec![0.0; rows * inter],
            vec![0.0; rows * inter],
            vec![0.0; rows * h],
        );
        g.throughput(Throughput::Elements((params * rows) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(rows), &rows, |b, &rows| {
            pool.install(|| {
                hold(|| {
                    b.iter(|| {
                        for l in &layers {
                            let xh = &x[..rows * h];
                            matmul_many(
                                xh,
                                rows,
                                &mut [(&l.q, &mut q), (&l.k, &mut k), (&l.v, &mut v)],
                            );
                            matmul(xh, rows, &l.o, &mut o);
                            matmul_many(xh, rows, &mut [(&l.gate, &mut gate), (&l.up, &mut up)]);
                            matmul(&x[..rows * inter], rows, &l.down, &mut o);
                        }
                    })
                })
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = products;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = benches
}
criterion_main!(products);
