//! Turning one row of logits into a token: greedy, and temperature with
//! top-k / top-p, at the bundled model's vocabulary (4096) and Llama 3's
//! (128256); and the softmax that attention takes of a row of scores.
//!
//!   cargo bench --bench sampling

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use layerskip::sampling::{sample, top_probability, Rng64, SamplingParams};
use layerskip::softmax::softmax_in_place;

/// Logits shaped like a language model's: roughly normal (sd 2.5) with a
/// few strong candidates on top. The 4096 row could be the bundled model's;
/// 128256 is Llama 3's vocabulary.
fn logits(n: usize) -> Vec<f32> {
    let mut rng = Rng64::new(11);
    let mut row: Vec<f32> = (0..n)
        .map(|_| {
            // Irwin-Hall(12) - 6: near-normal with sd 1.
            let z: f32 = (0..12).map(|_| rng.uniform()).sum::<f32>() - 6.0;
            2.5 * z
        })
        .collect();
    for (i, boost) in [(17usize, 9.0f32), (401, 8.0), (2001, 7.0)] {
        row[i % n] += boost;
    }
    row
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("softmax_in_place");
    for n in [1024, 4096] {
        let row = logits(n);
        let mut x = row.clone();
        g.bench_with_input(BenchmarkId::from_parameter(n), &row, |b, row| {
            b.iter(|| {
                x.copy_from_slice(row);
                softmax_in_place(&mut x)
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("sample");
    for vocab in [4096, 128_256] {
        let row = logits(vocab);
        // A draft's confidence (automatic (E, d) reads it on every draft).
        g.bench_with_input(
            BenchmarkId::new("top_probability", vocab),
            &row,
            |b, row| b.iter(|| top_probability(row)),
        );
        let cases = [
            ("greedy", SamplingParams::greedy()),
            (
                "t0.8",
                SamplingParams {
                    temperature: 0.8,
                    ..Default::default()
                },
            ),
            (
                "t0.8_top_k40",
                SamplingParams {
                    temperature: 0.8,
                    top_k: 40,
                    ..Default::default()
                },
            ),
            (
                "t0.8_top_p0.9",
                SamplingParams {
                    temperature: 0.8,
                    top_p: 0.9,
                    ..Default::default()
                },
            ),
        ];
        for (name, p) in cases {
            let mut rng = Rng64::new(1);
            g.bench_with_input(BenchmarkId::new(name, vocab), &row, |b, row| {
                b.iter(|| sample(row, &p, &mut rng))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = sampling;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(300)).measurement_time(std::time::Duration::from_secs(1));
    targets = benches
}
criterion_main!(sampling);
