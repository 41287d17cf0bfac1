use super::*;
use crate::weights::DType;

fn tensor(dtype: DType, rows: usize, cols: usize) -> Tensor {
    let vals = (0..rows * cols).map(|i| {
        let h = (i as u32).wrapping_mul(2654435761).rotate_left(13);
        (h >> 8) as f32 / (1 << 24) as f32 - 0.5
    });
    let bytes: Vec<u8> = match dtype {
        DType::F32 => vals.flat_map(f32::to_le_bytes).collect(),
        DType::BF16 => vals.flat_map(|v| bf16::from_f32(v).to_le_bytes()).collect(),
        DType::F16 => vals.flat_map(|v| f16::from_f32(v).to_le_bytes()).collect(),
    };
    Tensor::from_bytes(dtype, vec![rows, cols], &bytes)
}

/// The product by the definition: one `mul_add` chain per output.
fn reference(m: &Tensor, x: &[f32], rows: usize) -> Vec<f32> {
    let w = m.to_f32();
    let (n, cols) = (m.shape[0], m.shape[1]);
    let mut out = vec![0f32; rows * n];
    for r in 0..rows {
        for j in 0..n {
            out[r * n + j] =
                (0..cols).fold(0f32, |a, k| w[j * cols + k].mul_add(x[r * cols + k], a));
        }
    }
    out
}

/// Deterministic inputs: `rows x cols`, mixed signs.
fn input(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
        .collect()
}

/// `m`'s whole product over `x` with one kernel.
fn product(m: &Mat, x: &[f32], rows: usize, isa: Isa) -> Vec<f32> {
    let mut out = vec![f32::NAN; rows * m.rows];
    let ptr = OutPtr(out.as_mut_ptr());
    Inputs::with(m, x, rows, isa, |x| {
        run_block(m, x, rows, 0..m.rows.div_ceil(PANEL), ptr, isa)
    });
    out
}

#[test]
fn every_kernel_row_count_and_dtype_matches_the_definition_bit_for_bit() {
    // 37 outputs: two full panels and a padded one; 45 columns: no multiple of 8.
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let (n, cols) = (37, 45);
        let t = tensor(dtype, n, cols);
        let m = Mat::new(&t);
        for rows in 1..=17 {
            let x = input(rows, cols);
            let want = reference(&t, &x, rows);
            for isa in supported() {
                let out = product(&m, &x, rows, isa);
                assert!(
                    out.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{dtype:?} rows {rows} {isa:?}"
                );
            }
        }
    }
}

/// One output of a product checked by [`each_output`].
struct Output<'a> {
    /// The row's inputs, and the output's index.
    x: &'a [f32],
    j: usize,
    /// What the kernel computed, and the exact (f32 definition) product.
    got: f32,
    exact: f32,
    isa: Isa,
    what: String,
}

/// Every output of `m` (packed from `t`) on every kernel and row count in
/// `row_counts`, for `check`.
fn each_output(t: &Tensor, m: &Mat, row_counts: &[usize], check: impl Fn(Output)) {
    let (n, cols) = (t.shape[0], t.shape[1]);
    for &rows in row_counts {
        let x = input(rows, cols);
        let exact = reference(t, &x, rows);
        for isa in supported() {
            let out = product(m, &x, rows, isa);
            for r in 0..rows {
                for j in 0..n {
                    check(Output {
                        x: &x[r * cols..][..cols],
                        j,
                        got: out[r * n + j],
                        exact: exact[r * n + j],
                        isa,
                        what: format!("{:?} {isa:?} rows {rows}", t.dtype),
                    });
                }
            }
        }
    }
}

#[test]
fn bf16_pairs_match_vdpbf16ps_arithmetic_on_every_kernel_and_stay_close() {
    // Odd column count: the last pair is padded with zero.
    let (n, cols) = (37, 45);
    let round = |v: f32| bf16::from_f32(v).to_f32();
    // Every stored dtype: the packers read them without an f32 copy.
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let t = tensor(dtype, n, cols);
        let w = t.to_f32();
        let rows: Vec<usize> = (1..=17).collect();
        each_output(&t, &Mat::new_bf16(&t), &rows, |o| {
            // Per pair: sum + hi product, then + lo product, each rounded
            // once (the products are exact in f32).
            let wr = &w[o.j * cols..][..cols];
            let sum = (0..cols.div_ceil(2)).fold(0f32, |a, kp| {
                let p = |k: usize| match (wr.get(k), o.x.get(k)) {
                    (Some(&a), Some(&b)) => round(a) * round(b),
                    _ => 0.0,
                };
                (a + p(2 * kp + 1)) + p(2 * kp)
            });
            // AMX sums a tile in an order of its own (its own test below).
            if !sums_in_own_order(o.isa) {
                assert_eq!(o.got.to_bits(), sum.to_bits(), "{}", o.what);
            }
            // Two bf16 roundings (2^-8 relative each) per product.
            let bound = 2.0 / 256.0 * wr.iter().zip(o.x).map(|(a, b)| (a * b).abs()).sum::<f32>();
            assert!((o.got - o.exact).abs() <= bound + 1e-6, "{}", o.what);
        });
    }
}

/// Symmetric int8 of `v`: `(max|v| / 127, round(v * (127 / max)))`.
fn quantized(v: &[f32]) -> (f32, Vec<f32>) {
    let max = v.iter().fold(0f32, |m, v| m.max(v.abs()));
    let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
    let q = v.iter().map(|v| (v * inv).round().clamp(-127.0, 127.0));
    (max / 127.0, q.collect())
}

#[test]
fn int8_is_exact_block_sums_in_one_chain_on_every_kernel_and_close_to_the_product() {
    // 45 columns: a partial block of inputs.
    let (n, cols) = (37, 45);
    // Every stored dtype: the packers read them without an f32 copy.
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let t = tensor(dtype, n, cols);
        let w: Vec<(f32, Vec<f32>)> = t.to_f32().chunks(cols).map(quantized).collect();
        each_output(&t, &Mat::new_int8(&t), &[1, 2, 4, 5, 9, 17], |o| {
            let (ws, qw) = &w[o.j];
            // The definition: per block of 32 inputs, the integer sum times
            // the block's scale, added in order by fused multiply-adds; then
            // the weights' row scale.
            let (mut sum, mut bound) = (0f32, 0f32);
            for (b, xb) in o.x.chunks(int8::BLOCK).enumerate() {
                let (xs, qx) = quantized(xb);
                let qw = &qw[b * int8::BLOCK..];
                let dot: f32 = qw.iter().zip(&qx).map(|(a, b)| a * b).sum();
                sum = dot.mul_add(xs, sum);
                // Half a step of each weight and of each input.
                bound += qw
                    .iter()
                    .zip(&qx)
                    .map(|(a, b)| 0.5 * (ws * b.abs() + xs * a.abs() * ws))
                    .sum::<f32>();
            }
            assert_eq!(o.got.to_bits(), (sum * ws).to_bits(), "{}", o.what);
            let bound = bound + 0.25 * o.x.iter().map(|v| v.abs()).sum::<f32>() * ws / 127.0;
            assert!(
                (o.got - o.exact).abs() <= bound * 1.01 + 1e-6,
                "{}: {} vs {} (bound {bound})",
                o.what,
                o.got,
                o.exact
            );
        });
    }
}

#[test]
fn int8_inputs_carry_nan_and_zero_blocks_to_the_outputs() {
    let t = tensor(DType::F32, 20, 70);
    let m = Mat::new_int8(&t);
    let mut x = vec![0f32; 2 * 70];
    x[70 + 40] = f32::NAN;
    for isa in supported() {
        let out = product(&m, &x, 2, isa);
        assert!(out[..20].iter().all(|&v| v == 0.0), "{isa:?}: zeros");
        assert!(out[20..].iter().all(|v| v.is_nan()), "{isa:?}: NaN");
    }
}

#[test]
fn int8_rounding_is_f32_round_then_clamp() {
    let below_half = 0.5f32.next_down();
    let mut xs = vec![
        0.0, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5, 127.0,
    ];
    xs.extend([below_half, -below_half, 127.00001, -127.00001, 1e30, -1e30]);
    xs.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
    xs.extend((0..20000).map(|i| (i as f32 - 10000.0) * 0.0127));
    for x in xs {
        let want = x.round().clamp(-127.0, 127.0) as i8;
        assert_eq!(pack::to_int8(x), want, "{x}");
    }
}

/// Whether `isa` sums bf16 pairs in an order of its own (AMX).
fn sums_in_own_order(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Amx {
        return true;
    }
    let _ = isa;
    false
}

/// Whether the AMX kernel runs here; `LAYERSKIP_REQUIRE_AMX=1` makes its
/// absence a failure.
#[cfg(target_arch = "x86_64")]
fn amx_here(test: &str) -> bool {
    let here = supported().contains(&Isa::Amx);
    if !here {
        assert!(
            std::env::var("LAYERSKIP_REQUIRE_AMX").as_deref() != Ok("1"),
            "LAYERSKIP_REQUIRE_AMX=1 but AMX-BF16 does not run (CPU, OS or LAYERSKIP_KERNEL)"
        );
        eprintln!("SKIPPED {test}: no AMX-BF16 here, or LAYERSKIP_KERNEL caps it");
    }
    here
}

#[test]
#[cfg(target_arch = "x86_64")]
fn amx_rows_are_batch_invariant_and_close_to_the_definition() {
    if !amx_here("amx_rows_are_batch_invariant_and_close_to_the_definition") {
        return;
    }
    // Pair counts: one tile and a tail, whole tiles, a tail only; 37
    // outputs: a block of two full panels and a padded one.
    for cols in [45, 64, 96, 20, 300] {
        let n = 37;
        let t = tensor(DType::BF16, n, cols);
        let m = Mat::new_bf16(&t);
        let w = t.to_f32();
        let panels = n.div_ceil(PANEL);
        let x = input(40, cols);
        let alone: Vec<Vec<f32>> = (0..40)
            .map(|r| product(&m, &x[r * cols..][..cols], 1, Isa::Amx))
            .collect();
        for rows in [2, 3, 9, 16, 17, 33, 40] {
            let x = &x[..rows * cols];
            let out = product(&m, x, rows, Isa::Amx);
            // The same panels split into tasks of one panel each.
            let mut split = vec![f32::NAN; rows * n];
            let ptr = OutPtr(split.as_mut_ptr());
            Inputs::with(&m, x, rows, Isa::Amx, |x| {
                (0..panels).for_each(|p| run_block(&m, x, rows, p..p + 1, ptr, Isa::Amx))
            });
            for r in 0..rows {
                let got = &out[r * n..][..n];
                let same =
                    |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same(got, &alone[r]), "cols {cols} rows {rows} row {r}");
                assert!(
                    same(got, &split[r * n..][..n]),
                    "cols {cols} rows {rows} row {r} split"
                );
                for (o, &g) in got.iter().enumerate() {
                    let xr = &x[r * cols..][..cols];
                    let wr = &w[o * cols..][..cols];
                    let exact: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let bound =
                        2.0 / 256.0 * wr.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum::<f32>();
                    assert!(
                        (g as f64 - exact).abs() <= bound as f64 + 1e-5,
                        "cols {cols} row {r} out {o}"
                    );
                }
            }
        }
    }
}

#[test]
fn bf16_bits_rounds_as_half_does() {
    let mut xs = vec![
        0.0,
        -0.0,
        f32::MAX,
        f32::MIN,
        f32::MIN_POSITIVE,
        1e-40,
        -1e-40,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7F80_0001),
        f32::from_bits(0x3F80_8000),
        f32::from_bits(0x3F81_8000),
    ];
    xs.extend((0..200_000u32).map(|i| f32::from_bits(i.wrapping_mul(2654435761))));
    for x in xs {
        assert_eq!(
            pack::bf16_bits(x),
            bf16::from_f32(x).to_bits() as u32,
            "{x:e} ({:#x})",
            x.to_bits()
        );
    }
}
