//! The pieces that decide self-speculation's speed: one decode step, the deep
//! pass of a verify over d+1 rows (against one row), and the exit head.
//!
//!   cargo bench --bench decode                                  # bundled model
//!   LAYERSKIP_BENCH_MODEL=/tmp/rand100m cargo bench --bench decode
//!   LAYERSKIP_BENCH_QUANTIZE=bf16 cargo bench --bench decode    # or int8
//!   LAYERSKIP_BENCH_DEVICE=cuda cargo bench --bench decode      # the CUDA engine
//!   LAYERSKIP_BENCH_KV=bf16 cargo bench --bench decode          # a bf16 K/V cache

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use layerskip::engine::Engine;
use layerskip::sampling::PickRule;
use layerskip::{KvDtype, LoadOptions, Logits, Model, Quantize, Session};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn model() -> Arc<Model> {
    let dir = std::env::var("LAYERSKIP_BENCH_MODEL").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/assets/layerskip-pycode-8l").to_string()
    });
    let quantize = match std::env::var("LAYERSKIP_BENCH_QUANTIZE").as_deref() {
        Ok("bf16") => Quantize::Bf16,
        Ok("int8") => Quantize::Int8,
        _ => Quantize::None,
    };
    let device = std::env::var("LAYERSKIP_BENCH_DEVICE")
        .map(|d| {
            d.parse()
                .expect("LAYERSKIP_BENCH_DEVICE: cpu, cuda or cuda:N")
        })
        .unwrap_or_default();
    let kv_dtype = match std::env::var("LAYERSKIP_BENCH_KV").as_deref() {
        Ok("bf16") => KvDtype::Bf16,
        _ => KvDtype::F32,
    };
    let options = LoadOptions {
        quantize,
        device,
        kv_dtype,
        ..Default::default()
    };
    Model::load_with(&dir, &options).unwrap_or_else(|e| panic!("{dir}: {e}"))
}

fn prompt(m: &Model, n: usize) -> Vec<u32> {
    (0..n)
        .map(|i| (i * 7919 % (m.config.vocab_size - 2) + 2) as u32)
        .collect()
}

fn benches(c: &mut Criterion) {
    let m = model();
    let l = m.num_layers();
    let e = (l / 2).max(1);
    let ctx = prompt(&m, 64);

    // One full-depth decode step at context 64.
    let mut s = Session::new(m.clone(), 0).unwrap();
    s.prefill(&ctx).unwrap();
    c.bench_function("decode_step_full", |b| {
        b.iter(|| {
            s.step(5, l).unwrap();
            s.rewind(ctx.len()).unwrap();
        })
    });
    c.bench_function("decode_step_exit_half", |b| {
        b.iter(|| {
            s.step(5, e).unwrap();
            s.rewind(ctx.len()).unwrap();
        })
    });

    // A full-depth step at a long context (attention's share grows with it).
    let long = prompt(&m, (m.max_context() - 16).min(2048));
    let mut s_long = Session::new(m.clone(), 0).unwrap();
    s_long.prefill(&long).unwrap();
    c.bench_function(&format!("decode_step_full_ctx{}", long.len()), |b| {
        b.iter(|| {
            s_long.step(5, l).unwrap();
            s_long.rewind(long.len()).unwrap();
        })
    });
    drop(s_long);

    // The deep part of a verify: layers E..L plus the head on `rows` pending rows.
    let mut g = c.benchmark_group("verify_deep_pass");
    for rows in [1usize, 2, 3, 5, 6, 7, 8, 9] {
        g.bench_with_input(BenchmarkId::from_parameter(rows), &rows, |b, &rows| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    s.forward(&ctx[..rows], e, Logits::None).unwrap();
                    // A GPU may still be running the shallow pass.
                    m.engine.synchronize();
                    let t = Instant::now();
                    // As greedy verification runs it: each row's token is
                    // picked where the logits are (a GPU copies 12 bytes a
                    // row, not rows x vocab floats).
                    s.forward_head(&[], l, Logits::All, Some(PickRule::Greedy))
                        .unwrap();
                    total += t.elapsed();
                    s.rewind(ctx.len()).unwrap();
                }
                total
            })
        });
    }
    g.finish();

    // The exit head (final norm + LM head) on one row.
    let x = m.engine.embed(&ctx[..1]);
    let mut out = Vec::new();
    c.bench_function("exit_head", |b| b.iter(|| m.engine.head(&x, 0, &mut out)));
}

criterion_group! {
    name = decode;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(decode);
