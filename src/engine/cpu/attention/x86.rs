//! The AVX2 and AVX-512F kernels of [`CacheView::attend_rows`]: the
//! definition's arithmetic, bit for bit, with the work blocked so that each
//! load feeds several fused multiply-adds. Scores take positions as lanes
//! (K's blocks put 16 side by side) for up to four heads at once; the
//! weighted sum takes dimensions as lanes, for up to four heads at once,
//! each V row loaded once for all of them.

use super::{CacheView, KvElem, Queries};
use crate::engine::cpu::kv::{KvLayout, KEY_BLOCK};
use std::arch::x86_64::{__m256, __m512};

/// Runs `$e` with the const `$n` equal to `$h` (1 to 4): a block of heads
/// as const-sized arrays of pointers.
macro_rules! up_to_4 {
    ($h:expr, $n:ident => $e:expr) => {
        match $h {
            4 => {
                const $n: usize = 4;
                $e
            }
            3 => {
                const $n: usize = 3;
                $e
            }
            2 => {
                const $n: usize = 2;
                $e
            }
            _ => {
                const $n: usize = 1;
                $e
            }
        }
    };
}

/// `[f(0), .., f(N - 1)]` in a plain loop (`array::from_fn` would not
/// inline into the caller's instruction set).
#[inline(always)]
fn each<P: Copy, const N: usize>(f: impl Fn(usize) -> P) -> [P; N] {
    let mut a = [f(0); N];
    for (j, x) in a.iter_mut().enumerate().skip(1) {
        *x = f(j);
    }
    a
}

impl<T: KvElem> CacheView<'_, T> {
    /// [`CacheView::attend_rows`] on 8 lanes, with `heads x stride` floats
    /// of scratch for the scores (`stride`: the block's positions rounded up
    /// to whole blocks of K).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend_avx2(&self, qs: &Queries, o: &mut [f32], scores: &mut [f32]) {
        // 16 ymm registers: 2 x 4 score chains, 2 heads x 4 vectors of sums.
        self.attend::<__m256, 2, 2>(qs, o, scores)
    }

    /// [`CacheView::attend_rows`] on 16 lanes.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn attend_avx512(&self, qs: &Queries, o: &mut [f32], scores: &mut [f32]) {
        // 32 zmm registers: 4 x 4 score chains, 4 heads x 4 vectors of sums.
        self.attend::<__m512, 4, 4>(qs, o, scores)
    }

    /// The kernel on vectors `V`: scores in tiles of up to 4 heads x `B`
    /// vectors of positions, then softmax, then the weighted sum for up to
    /// `WH` heads at a time.
    #[inline(always)]
    unsafe fn attend<V: Lanes, const B: usize, const WH: usize>(
        &self,
        qs: &Queries,
        o: &mut [f32],
        scores: &mut [f32],
    ) {
        let (rows, kvh) = (qs.rows.clone(), qs.kvh);
        let (hd, kvd, group) = (self.hd, self.kvd, self.group);
        let n_max = self.pos0 + rows.end;
        let stride = n_max.next_multiple_of(KEY_BLOCK);
        let heads = rows.len() * group;
        assert!(hd.is_multiple_of(8) && o.len() == heads * hd);
        assert!(scores.len() >= heads * stride);
        assert!(self.k.len() >= stride * kvd && self.v.len() >= n_max * kvd);
        // Head `i` of the block: row `rows.start + i / group`, which sees
        // `positions(i)` positions (never fewer than head i - 1).
        let base = self.pos0 + rows.start + 1;
        let positions = |i: usize| base + i / group;
        let first_seeing = |t: usize| (t + 1).saturating_sub(base) * group;
        let query = |i: usize| qs.head(i, group, hd).as_ptr();
        let sp = scores.as_mut_ptr();
        let score_row = |i: usize| sp.add(i * stride);

        let span = B * V::LANES;
        for t0 in (0..n_max).step_by(span) {
            let mut i = first_seeing(t0);
            while i < heads {
                let h = 4.min(heads - i);
                let vectors = (positions(i + h - 1) - t0).div_ceil(V::LANES);
                up_to_4!(h, H => {
                    let (qh, out) = (each::<_, H>(|j| query(i + j)), each::<_, H>(|j| score_row(i + j)));
                    if vectors >= B {
                        self.score_tile::<V, H, B>(qh, t0, kvh, out);
                    } else {
                        for b in 0..vectors {
                            self.score_tile::<V, H, 1>(qh, t0 + b * V::LANES, kvh, out);
                        }
                    }
                });
                i += h;
            }
        }
        for i in 0..heads {
            crate::softmax::softmax_in_place(&mut scores[i * stride..][..positions(i)]);
        }

        o.fill(0.0);
        let (scores, out) = (scores.as_ptr(), o.as_mut_ptr());
        for t0 in (0..n_max).step_by(POSITIONS) {
            let end = |i: usize| (t0 + POSITIONS).min(positions(i));
            let mut i = first_seeing(t0);
            while i < heads {
                let h = WH.min(heads - i);
                // Every head of the group to the first's end, then each on.
                let t1 = end(i);
                up_to_4!(h, H => {
                    let ps = each::<_, H>(|j| scores.add((i + j) * stride + t0));
                    self.weigh_heads::<V, H>(ps, each(|j| out.add((i + j) * hd)), t0..t1, kvh)
                });
                for j in i + 1..i + h {
                    if end(j) > t1 {
                        let (p, o) = (scores.add(j * stride + t1), out.add(j * hd));
                        self.weigh_heads::<V, 1>([p], [o], t1..end(j), kvh);
                    }
                }
                i += h;
            }
        }
    }

    /// Scores of `H` query heads (`qs`) against `B` vectors of positions
    /// from `t` (a multiple of the lanes), times the scale, into
    /// `out[h][t..]`: per lane one fused chain over the dimensions in order.
    #[inline(always)]
    unsafe fn score_tile<V: Lanes, const H: usize, const B: usize>(
        &self,
        qs: [*const f32; H],
        t: usize,
        kvh: usize,
        out: [*mut f32; H],
    ) {
        let (hd, kvd) = (self.hd, self.kvd);
        let mut keys = [self.k.as_ptr(); B];
        for (b, k) in keys.iter_mut().enumerate() {
            *k = k.add(KvLayout::Blocks.key_at(t + b * V::LANES, kvh * hd, kvd));
        }
        let mut acc = [[V::splat(0.0); B]; H];
        for d in 0..hd {
            let mut kd = [V::splat(0.0); B];
            for (x, k) in kd.iter_mut().zip(keys) {
                *x = V::load_kv(k.add(d * KEY_BLOCK));
            }
            for (a, q) in acc.iter_mut().zip(qs) {
                let qd = V::splat(*q.add(d));
                for (a, &k) in a.iter_mut().zip(&kd) {
                    *a = qd.mul_add(k, *a);
                }
            }
        }
        let scale = V::splat(self.scale);
        for (a, o) in acc.iter().zip(out) {
            for (b, a) in a.iter().enumerate() {
                a.mul(scale).store(o.add(t + b * V::LANES));
            }
        }
    }

    /// `os[h] += Σ_t ps[h][t - ts.start] · V[t]` over `ts` for `H` heads,
    /// all dimensions of KV head `kvh`.
    #[inline(always)]
    unsafe fn weigh_heads<V: Lanes, const H: usize>(
        &self,
        ps: [*const f32; H],
        os: [*mut f32; H],
        ts: std::ops::Range<usize>,
        kvh: usize,
    ) {
        let (hd, kvd) = (self.hd, self.kvd);
        let v = self.v.as_ptr().add(ts.start * kvd + kvh * hd);
        let n = ts.len();
        let mut d = 0;
        while hd - d >= 4 * V::LANES {
            weighted_sum::<V, H, 4, T>(ps, v.add(d), kvd, n, os.map(|o| o.add(d)));
            d += 4 * V::LANES;
        }
        while hd - d >= V::LANES {
            weighted_sum::<V, H, 1, T>(ps, v.add(d), kvd, n, os.map(|o| o.add(d)));
            d += V::LANES;
        }
        if d < hd {
            // The last 8 dimensions under 16 lanes (hd is a multiple of 8).
            weighted_sum::<__m256, H, 1, T>(ps, v.add(d), kvd, n, os.map(|o| o.add(d)));
        }
    }
}

/// Positions per block of the weighted sum: every head of a block of rows
/// takes the block's V rows while they are in L1. The rows are `kvd`
/// values apart, so they map to few L1 sets (at a 1 KiB stride, 16 of 64):
/// blocks of 64 positions overflowed those sets' 8 ways, and attention took
/// 1.2x as long (a 2,047-token prefill of the 100M model).
const POSITIONS: usize = 16;

/// `out[h][..L * W] += Σ_t p[h][t] · V[t][..L * W]` over `n` positions (V
/// rows `kvd` apart from `v`) for `H` heads, each element's sum continued
/// over t in order, fused.
#[inline(always)]
unsafe fn weighted_sum<V: Lanes, const H: usize, const W: usize, E: KvElem>(
    p: [*const f32; H],
    v: *const E,
    kvd: usize,
    n: usize,
    out: [*mut f32; H],
) {
    let mut acc = [[V::splat(0.0); W]; H];
    for (a, o) in acc.iter_mut().zip(out) {
        for (j, a) in a.iter_mut().enumerate() {
            *a = V::load(o.add(V::LANES * j));
        }
    }
    for t in 0..n {
        let vt = v.add(t * kvd);
        let mut vv = [V::splat(0.0); W];
        for (j, x) in vv.iter_mut().enumerate() {
            *x = V::load_kv(vt.add(V::LANES * j));
        }
        for (a, p) in acc.iter_mut().zip(p) {
            let pt = V::splat(*p.add(t));
            for (a, &x) in a.iter_mut().zip(&vv) {
                *a = pt.mul_add(x, *a);
            }
        }
    }
    for (a, o) in acc.iter().zip(out) {
        for (j, a) in a.iter().enumerate() {
            a.store(o.add(V::LANES * j));
        }
    }
}

/// A vector of f32 lanes: AVX2's 8 or AVX-512F's 16. Its methods inline
/// into the caller's instruction set.
trait Lanes: Copy {
    const LANES: usize;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn splat(x: f32) -> Self;
    unsafe fn mul(self, b: Self) -> Self;
    /// `self * b + c`, rounded once.
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    unsafe fn load_kv<E: KvElem>(p: *const E) -> Self;
}

/// [`Lanes`] for one vector type from its intrinsics.
macro_rules! lanes {
    ($v:ident, $n:literal, $load:ident, $store:ident, $set1:ident, $mul:ident, $fmadd:ident, $kv:ident) => {
        impl Lanes for $v {
            const LANES: usize = $n;
            #[inline(always)]
            unsafe fn load(p: *const f32) -> Self {
                std::arch::x86_64::$load(p)
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut f32) {
                std::arch::x86_64::$store(p, self)
            }
            #[inline(always)]
            unsafe fn splat(x: f32) -> Self {
                std::arch::x86_64::$set1(x)
            }
            #[inline(always)]
            unsafe fn mul(self, b: Self) -> Self {
                std::arch::x86_64::$mul(self, b)
            }
            #[inline(always)]
            unsafe fn mul_add(self, b: Self, c: Self) -> Self {
                std::arch::x86_64::$fmadd(self, b, c)
            }
            #[inline(always)]
            unsafe fn load_kv<E: KvElem>(p: *const E) -> Self {
                E::$kv(p)
            }
        }
    };
}
lanes!(
    __m256,
    8,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_mul_ps,
    _mm256_fmadd_ps,
    load8
);
lanes!(
    __m512,
    16,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_mul_ps,
    _mm512_fmadd_ps,
    load16
);
