//! The kernels' launches: products (matvec or cuBLAS), norms, attention,
//! the exit head's logits, residual adds.

use super::*;

pub(super) fn grid(n: usize, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(block).max(1), 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn rows_cfg(rows: usize, block: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaEngine {
    /// `y (rows x m.rows) = x (rows x m.cols) · mᵀ` for a pass whose rows
    /// are `segments` (rows per session, in order), each routed by
    /// [`route`]; `y` may be longer.
    pub(super) fn matmul(
        &self,
        x: &CudaView<'_, f32>,
        segments: &[usize],
        m: &Matrix,
        y: &mut CudaSlice<f32>,
    ) {
        for (r0, rows, gemm) in route(segments, self.matvec_max_rows) {
            let xs = x.slice(r0 * m.cols..(r0 + rows) * m.cols);
            let mut ys = y.slice_mut(r0 * m.rows..(r0 + rows) * m.rows);
            if gemm {
                self.gemm(&xs, rows, m, &mut ys);
            } else {
                self.matvec(&xs, rows, m, &mut ys);
            }
        }
    }

    pub(super) fn matvec(
        &self,
        x: &CudaView<'_, f32>,
        rows: usize,
        m: &Matrix,
        y: &mut CudaViewMut<'_, f32>,
    ) {
        let f = match m.w {
            DevMat::F32(_) => &self.k.matvec_f32,
            DevMat::F16(_) => &self.k.matvec_f16,
            DevMat::Bf16(_) => &self.k.matvec_bf16,
        };
        let cfg = LaunchConfig {
            grid_dim: ((m.rows as u32).div_ceil(MATVEC_WARPS), 1, 1),
            block_dim: (32 * MATVEC_WARPS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n_out, k) = (m.rows as i32, m.cols as i32);
        for r0 in (0..rows).step_by(MATVEC_ROWS) {
            let rr = (rows - r0).min(MATVEC_ROWS);
            let xs = x.slice(r0 * m.cols..(r0 + rr) * m.cols);
            let mut ys = y.slice_mut(r0 * m.rows..(r0 + rr) * m.rows);
            let n = rr as i32;
            let mut b = self.stream.launch_builder(f);
            match &m.w {
                DevMat::F32(w) => b.arg(w),
                DevMat::F16(w) => b.arg(w),
                DevMat::Bf16(w) => b.arg(w),
            };
            b.arg(&xs).arg(&mut ys).arg(&n_out).arg(&k).arg(&n);
            // SAFETY: the kernel's signature matches these arguments; the
            // buffers hold rr rows of m.cols inputs and m.rows outputs.
            ok(unsafe { b.launch(cfg) }.map(|_| ()));
        }
    }

    /// cuBLAS product for many rows. Row-major `y = x · wᵀ` is column-major
    /// `yᵀ = w · xᵀ` with `w` read transposed: m = n_out, n = rows, k = cols.
    /// f16/bf16 weights take inputs rounded to their dtype (cuBLAS wants one
    /// input dtype); sums are f32.
    pub(super) fn gemm(
        &self,
        x: &CudaView<'_, f32>,
        rows: usize,
        m: &Matrix,
        y: &mut CudaViewMut<'_, f32>,
    ) {
        use blas_sys::cudaDataType_t as T;
        let n = rows * m.cols;
        // The high (`low` 0) or low (1) half-precision part of x.
        let half_x = |f: &CudaFunction, low: i32| -> CudaSlice<u16> {
            let mut out = scratch::<u16>(&self.stream, n);
            let len = n as i32;
            let mut b = self.stream.launch_builder(f);
            b.arg(x).arg(&mut out).arg(&len).arg(&low);
            // SAFETY: f32_to_{f16,bf16}(const float*, half*, int, int) over n elements.
            ok(unsafe { b.launch(grid(n, 256)) }.map(|_| ()));
            out
        };
        let blas = self.blas.lock();
        let alpha = 1.0f32;
        let (mm, nn, kk) = (m.rows as i32, rows as i32, m.cols as i32);
        // y = W·x (beta 0), or y += W·x (beta 1).
        let mut run = |w: u64, wt: T, xp: u64, xt: T, beta: f32| {
            let (yp, _sync) = y.device_ptr_mut(&self.stream);
            // SAFETY: pointers are live device buffers of the stated dtypes and sizes.
            unsafe {
                blas::gemm_ex(
                    *blas.handle(),
                    blas_sys::cublasOperation_t::CUBLAS_OP_T,
                    blas_sys::cublasOperation_t::CUBLAS_OP_N,
                    mm,
                    nn,
                    kk,
                    &alpha as *const f32 as *const _,
                    w as *const _,
                    wt,
                    kk,
                    xp as *const _,
                    xt,
                    kk,
                    &beta as *const f32 as *const _,
                    yp as *mut _,
                    T::CUDA_R_32F,
                    mm,
                    blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .unwrap_or_else(|e| std::panic::panic_any(DeviceFailure(cuda_err("cuBLAS GemmEx", e))));
        };
        // Half-precision weights: x as a high and a low part, two products
        // summed in f32 (activations rounded once would err by ~2^-8).
        let ((wp, _a), dtype, to_half) = match &m.w {
            DevMat::F32(w) => {
                let (wp, _a) = w.device_ptr(&self.stream);
                let (xp, _b) = x.device_ptr(&self.stream);
                run(wp, T::CUDA_R_32F, xp, T::CUDA_R_32F, 0.0);
                return;
            }
            DevMat::F16(w) => (
                w.device_ptr(&self.stream),
                T::CUDA_R_16F,
                &self.k.f32_to_f16,
            ),
            DevMat::Bf16(w) => (
                w.device_ptr(&self.stream),
                T::CUDA_R_16BF,
                &self.k.f32_to_bf16,
            ),
        };
        for (low, beta) in [(0, 0.0), (1, 1.0)] {
            let part = half_x(to_half, low);
            let (xp, _b) = part.device_ptr(&self.stream);
            run(wp, dtype, xp, dtype, beta);
        }
    }

    /// RMSNorm of `rows` rows of `x` into `out`.
    pub(super) fn rms_norm(
        &self,
        x: &CudaView<'_, f32>,
        rows: usize,
        w: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) {
        let h = self.cfg.hidden_size;
        let (hi, eps) = (h as i32, self.cfg.rms_norm_eps);
        let mut b = self.stream.launch_builder(&self.k.rms_norm);
        b.arg(x).arg(w).arg(out).arg(&hi).arg(&eps);
        // SAFETY: rms_norm(const float* x, const float* w, float* out, int, float), rows blocks.
        ok(unsafe { b.launch(rows_cfg(rows, 256)) }.map(|_| ()));
    }

    /// The head's logits of rows `from..` of `x`, on the device, handed to
    /// `read` (with the row count) to copy out what the caller needs.
    pub(super) fn device_logits(
        &self,
        x: &DeviceActs,
        from: usize,
        read: impl FnOnce(&CudaSlice<f32>, usize),
    ) {
        let (h, vocab) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let rows = x.rows - from;
        if rows == 0 {
            return;
        }
        let mut ws = self.ws.lock();
        let mut xn = ws.take(&self.stream, Buf::Norm, rows * h);
        let mut logits = ws.take(&self.stream, Buf::Logits, rows * vocab);
        let xs = x.buf.slice(from * h..x.rows * h);
        self.rms_norm(&xs, rows, &self.norm, &mut xn);
        // Always the matvec kernel: a row's logits never depend on how many
        // rows (sessions) share the head.
        self.matvec(
            &xn.slice(..rows * h),
            rows,
            self.head_matrix(),
            &mut logits.slice_mut(..),
        );
        read(&logits, rows);
        ok(self.stream.synchronize());
        ws.put(Buf::Norm, xn);
        ws.put(Buf::Logits, logits);
    }

    /// Causal attention of a segment's `n` rows (their Q in `q`, K/V
    /// already stored) into `out`, split over the context: `attention_chunk`
    /// then, for rows of more than one chunk, `attention_combine`. Rows go in
    /// slices whose partial results fit `ATTN_PARTIALS_BYTES`.
    pub(super) fn attention(
        &self,
        ws: &mut Workspace,
        layer: usize,
        seg: &mut Segment<'_, CudaKv>,
        q: &CudaView<'_, f32>,
        out: &mut CudaViewMut<'_, f32>,
        n: usize,
    ) {
        let cfg = &self.cfg;
        let (nh, hd) = (cfg.num_heads, cfg.head_dim);
        let (qd, stride) = (cfg.q_dim(), cfg.q_dim() + 2 * cfg.kv_dim());
        let chunk = self.attn_chunk;
        let max_chunks = (seg.pos0 + n).div_ceil(chunk);
        let per_row = nh * max_chunks * (hd + 2);
        // Rows a launch (the grid's y dimension is at most 65535), and
        // partials only when rows span several chunks.
        let slice = if max_chunks == 1 {
            n
        } else {
            (ATTN_PARTIALS_BYTES / 4 / per_row).clamp(1, n)
        }
        .min(65535);
        let part_len = if max_chunks == 1 { 1 } else { slice * per_row };
        let mut part = ws.take(&self.stream, Buf::Partials, part_len);
        let (ih, ikv, ihd) = (nh as i32, cfg.num_kv_heads as i32, hd as i32);
        let (istride, ichunk, ichunks) = (stride as i32, chunk as i32, max_chunks as i32);
        let scale = 1.0 / (hd as f32).sqrt();
        for r0 in (0..n).step_by(slice) {
            let rows = slice.min(n - r0);
            let ip = (seg.pos0 + r0) as i32;
            let qs = q.slice(r0 * stride..(r0 + rows) * stride);
            let mut os = out.slice_mut(r0 * qd..(r0 + rows) * qd);
            let mut b = self.stream.launch_builder(&self.k.attention_chunk);
            b.arg(&qs)
                .arg(&seg.kv.k[layer])
                .arg(&seg.kv.v[layer])
                .arg(&mut os)
                .arg(&mut part)
                .arg(&ih)
                .arg(&ikv)
                .arg(&ihd)
                .arg(&ip)
                .arg(&scale)
                .arg(&istride)
                .arg(&ichunk)
                .arg(&ichunks);
            let cfg_chunk = LaunchConfig {
                grid_dim: (nh as u32, rows as u32, max_chunks as u32),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: attention_chunk(q, k cache, v cache, out, part, heads,
            // kv_heads, head_dim, pos0, scale, q_stride, chunk, max_chunks); the
            // caches hold pos0 + rows positions, part holds rows x heads x
            // max_chunks x (head_dim + 2) floats.
            ok(unsafe { b.launch(cfg_chunk) }.map(|_| ()));
            if max_chunks > 1 {
                let mut b = self.stream.launch_builder(&self.k.attention_combine);
                b.arg(&part)
                    .arg(&mut os)
                    .arg(&ih)
                    .arg(&ihd)
                    .arg(&ip)
                    .arg(&ichunk)
                    .arg(&ichunks);
                let cfg_combine = LaunchConfig {
                    grid_dim: (nh as u32, rows as u32, 1),
                    block_dim: (hd.next_multiple_of(32).min(1024) as u32, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: attention_combine(part, out, heads, head_dim, pos0,
                // chunk, max_chunks) over the partials the launch above wrote.
                ok(unsafe { b.launch(cfg_combine) }.map(|_| ()));
            }
        }
        ws.put(Buf::Partials, part);
    }

    /// `a += b` over `n` elements.
    pub(super) fn add(&self, a: &mut CudaSlice<f32>, b_in: &CudaSlice<f32>, n: usize) {
        let len = n as i32;
        let mut b = self.stream.launch_builder(&self.k.add);
        b.arg(a).arg(b_in).arg(&len);
        // SAFETY: (float*, const float*, int) over n elements of both.
        ok(unsafe { b.launch(grid(n, 256)) }.map(|_| ()));
    }
}

/// How a pass's rows go through a product, segment by segment (a segment is
/// one session's rows): `(first row, rows, through cuBLAS)`. A segment of
/// more than `max` rows (a long prompt) goes to cuBLAS on its own; every
/// other row takes the batch-invariant matvec kernel, consecutive segments
/// in one launch. So a session's rows take the same arithmetic whatever
/// else shares the pass.
pub(super) fn route(segments: &[usize], max: usize) -> Vec<(usize, usize, bool)> {
    let mut out: Vec<(usize, usize, bool)> = Vec::new();
    let mut r0 = 0;
    for &rows in segments.iter().filter(|&&r| r > 0) {
        let gemm = rows > max;
        match out.last_mut() {
            Some((start, n, false)) if !gemm && *start + *n == r0 => *n += rows,
            _ => out.push((r0, rows, gemm)),
        }
        r0 += rows;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::route;
    use half::bf16;

    /// The cuBLAS path's numerics, emulated: bf16 weights times f32
    /// activations that cuBLAS must take in bf16. Rounding the activations
    /// once errs by ~2^-9 of a product's size; a high and a low bf16 part
    /// (two products summed in f32) by ~2^-17, so a long prompt's logits
    /// stay within the GPU tests' 1e-3 of the CPU engine's exact f32 sums.
    #[test]
    fn a_high_and_a_low_part_make_bf16_products_nearly_exact() {
        let (k, outs) = (2048, 64);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut rand = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let w: Vec<f32> = (0..outs * k)
            .map(|_| bf16::from_f32(rand()).to_f32())
            .collect();
        let x: Vec<f32> = (0..k).map(|_| rand() * 3.0).collect();
        let round = |v: f32| bf16::from_f32(v).to_f32();
        let hi: Vec<f32> = x.iter().map(|&v| round(v)).collect();
        let lo: Vec<f32> = x.iter().zip(&hi).map(|(&v, &h)| round(v - h)).collect();
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0f32, |s, (p, q)| p.mul_add(*q, s));
        let (mut err_once, mut err_split, mut norm) = (0f64, 0f64, 0f64);
        for row in w.chunks(k) {
            let exact = row
                .iter()
                .zip(&x)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>();
            let once = dot(row, &hi) as f64;
            let split = (dot(row, &hi) + dot(row, &lo)) as f64;
            err_once += (once - exact).powi(2);
            err_split += (split - exact).powi(2);
            norm += exact.powi(2);
        }
        let (once, split) = ((err_once / norm).sqrt(), (err_split / norm).sqrt());
        assert!(once > 5e-4, "rounding once: relative error {once:e}");
        assert!(split < 1e-5, "high and low parts: relative error {split:e}");
    }

    #[test]
    fn each_session_takes_its_own_path_whatever_shares_the_pass() {
        // 16 sessions verifying 9 rows each: 144 rows, all matvec.
        assert_eq!(route(&[9; 16], 128), vec![(0, 144, false)]);
        // Alone, a 9-row verify is matvec too: the same path.
        assert_eq!(route(&[9], 128), vec![(0, 9, false)]);
        // A long prompt beside decode steps: only the prompt goes to cuBLAS.
        assert_eq!(
            route(&[1, 200, 1, 1, 300, 0, 5], 128),
            vec![
                (0, 1, false),
                (1, 200, true),
                (201, 2, false),
                (203, 300, true),
                (503, 5, false)
            ]
        );
        // Two long prompts: each its own cuBLAS call.
        assert_eq!(
            route(&[129, 129], 128),
            vec![(0, 129, true), (129, 129, true)]
        );
        assert_eq!(route(&[], 128), vec![]);
    }
}
