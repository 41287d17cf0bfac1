//! Causal attention of new rows over one layer's K/V cache, per (row, KV
//! head). Every score and output element has one fixed arithmetic order
//! (the batch, the thread split and the instruction set change none of it),
//! which keeps batching and self-speculation bit-exact.

use super::scratch;
use half::bf16;

/// An element of the K/V cache: f32, or bf16 (half the memory and the
/// bytes read per position; widened exactly to f32 before any arithmetic,
/// so the order of operations is the same for both).
pub(crate) trait KvElem: Copy + Send + Sync + 'static {
    fn f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
    /// Eight consecutive elements as f32 lanes.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
    /// Sixteen (AVX-512F).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl KvElem for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
}

impl KvElem for bf16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    /// Round to nearest even (what transformers stores for a bf16 model).
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
}

/// One layer's K/V cache (`len x kvd`, position-major) as attention reads it.
pub(super) struct CacheView<'a, T: KvElem> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub hd: usize,
    /// Query heads per KV head.
    pub group: usize,
    pub kvd: usize,
    pub scale: f32,
    /// Position of the first new row.
    pub pos0: usize,
}

impl<T: KvElem> CacheView<'_, T> {
    /// Attention of rows `rows` into `o` (`rows.len() x group x hd`), for
    /// the query heads of KV head `kvh`: row `r`'s are `group x hd` values
    /// at `q[r * q_stride + kvh * group * hd..]`. Each head's arithmetic
    /// (scores, softmax, weighted sum in order of position) is the same
    /// whatever the batch and however rows are grouped, so results are too;
    /// AVX2 (and AVX-512 for the weighted sum) only widens the vectors and
    /// blocks the positions; every multiply-add is fused, as `mul_add` is,
    /// so they change no result (a unit test checks it).
    pub fn attend_rows(
        &self,
        q: &[f32],
        q_stride: usize,
        rows: std::ops::Range<usize>,
        kvh: usize,
        o: &mut [f32],
    ) {
        let (hd, group) = (self.hd, self.group);
        #[cfg(target_arch = "x86_64")]
        if hd.is_multiple_of(8)
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            let n_max = self.pos0 + rows.end;
            return scratch::with([rows.len() * group * n_max], |[scores]| {
                // SAFETY: the CPU has AVX2 and FMA (and AVX-512F for the
                // wide one), and the head size is whole vectors.
                unsafe {
                    if is_x86_feature_detected!("avx512f") {
                        self.attend_rows_avx2::<true>(q, q_stride, rows, kvh, o, scores)
                    } else {
                        self.attend_rows_avx2::<false>(q, q_stride, rows, kvh, o, scores)
                    }
                }
            });
        }
        for (i, r) in rows.enumerate() {
            let n = self.pos0 + r + 1;
            let qg = &q[r * q_stride + kvh * group * hd..][..group * hd];
            let og = &mut o[i * group * hd..][..group * hd];
            scratch::with([group * n], |[scores]| {
                self.attend_lanes(qg, n, kvh, og, scores)
            });
        }
    }

    /// The definition (and the kernel where AVX2 is missing), over `n`
    /// positions, with `group x n` floats of scratch for the scores. The
    /// group's heads go through each K row together: a row is loaded once
    /// for all of them, and their dot products are independent chains (a
    /// head's own arithmetic is unchanged).
    #[inline(always)]
    fn attend_lanes(&self, qg: &[f32], n: usize, kvh: usize, o: &mut [f32], scores: &mut [f32]) {
        let (hd, group) = (self.hd, self.group);
        // Where position t's vector for this KV head starts in K and V.
        let at = |t: usize| t * self.kvd + kvh * hd;
        for t in 0..n {
            let kt = &self.k[at(t)..][..hd];
            let mut g = 0;
            while g < group {
                let take = match group - g {
                    1 => 1,
                    2 | 3 => 2,
                    _ => 4,
                };
                let qs = &qg[g * hd..(g + take) * hd];
                let mut s = [0.0f32; 4];
                match take {
                    4 => s = dots::<4, T>(qs, kt),
                    2 => s[..2].copy_from_slice(&dots::<2, T>(qs, kt)),
                    _ => s[0] = dots::<1, T>(qs, kt)[0],
                }
                for (j, &v) in s[..take].iter().enumerate() {
                    scores[(g + j) * n + t] = v * self.scale;
                }
                g += take;
            }
        }
        // Head by head and 32 dimensions at a time, so the sums stay in
        // registers across positions (each a sum over t in order from 0).
        const BLOCK: usize = 32;
        for (og, p) in o.chunks_exact_mut(hd).zip(scores.chunks_exact_mut(n)) {
            crate::softmax::softmax_in_place(p);
            let mut d0 = 0;
            while d0 + BLOCK <= hd {
                let mut acc = [0f32; BLOCK];
                for (t, &pt) in p.iter().enumerate() {
                    let vt = &self.v[at(t) + d0..][..BLOCK];
                    for i in 0..BLOCK {
                        acc[i] = pt.mul_add(vt[i].f32(), acc[i]);
                    }
                }
                og[d0..d0 + BLOCK].copy_from_slice(&acc);
                d0 += BLOCK;
            }
            for (d, o) in og.iter_mut().enumerate().skip(d0) {
                *o = p
                    .iter()
                    .enumerate()
                    .fold(0.0, |a, (t, &pt)| pt.mul_add(self.v[at(t) + d].f32(), a));
            }
        }
    }
}

/// `H` dot products of `k` with the `H` consecutive vectors of `qs`, as
/// independent chains. Each is 8 lanes of fused multiply-adds over k in
/// order, the tail folded into the first lanes, then a fixed pairwise
/// reduction: its bits depend on neither `H` nor the instruction set
/// (attention scores; the order never depends on the batch).
#[inline(always)]
fn dots<const H: usize, T: KvElem>(qs: &[f32], k: &[T]) -> [f32; H] {
    let hd = k.len();
    let n = hd / 8 * 8;
    let mut acc = [[0f32; 8]; H];
    for c in (0..n).step_by(8) {
        let kc = &k[c..c + 8];
        for (h, a) in acc.iter_mut().enumerate() {
            let qc = &qs[h * hd + c..h * hd + c + 8];
            for i in 0..8 {
                a[i] = qc[i].mul_add(kc[i].f32(), a[i]);
            }
        }
    }
    // A plain loop: `array::from_fn` would not inline into the caller's
    // instruction set.
    let mut out = [0f32; H];
    for (h, (o, a)) in out.iter_mut().zip(acc.iter_mut()).enumerate() {
        for i in n..hd {
            a[i - n] = qs[h * hd + i].mul_add(k[i].f32(), a[i - n]);
        }
        let p = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
        *o = (p[0] + p[2]) + (p[1] + p[3]);
    }
    out
}

#[cfg(target_arch = "x86_64")]
impl<T: KvElem> CacheView<'_, T> {
    /// [`CacheView::attend_lanes`] for a block of rows with explicit 8-lane
    /// vectors, bit for bit: each score is the same 8 lane sums over k in
    /// order and the same pairwise reduction, and each output element the
    /// same sum over positions in order. What changes is the order of
    /// independent work: eight positions' scores at a time (eight chains
    /// instead of one, and no shuffles or bounds checks in the loop), the
    /// weighted sum of V over up to 64 dimensions at a time (2x faster with
    /// K/V in cache: one unit of 3 heads x 64 over 496 positions, 11.0
    /// against 21.2 µs), and positions in blocks of [`POSITIONS`] that every
    /// row of the block uses while they are in L1, each output's partial
    /// sum waiting in `o` between blocks. Without the blocks a long prompt
    /// read each layer's whole K/V from L3 once per row. With `WIDE` the
    /// weighted sum runs on 16 lanes (AVX-512F). Fused multiply-adds and the
    /// 16-lane sum took a 2,047-token bf16 prefill of the 100M model on AMX
    /// from 711-717 to 864-933 tokens/s (one thread, Xeon).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_rows_avx2<const WIDE: bool>(
        &self,
        q: &[f32],
        q_stride: usize,
        rows: std::ops::Range<usize>,
        kvh: usize,
        o: &mut [f32],
        scores: &mut [f32],
    ) {
        let (hd, kvd, group) = (self.hd, self.kvd, self.group);
        let n_max = self.pos0 + rows.end;
        let heads = rows.len() * group;
        assert!(hd.is_multiple_of(8) && o.len() == heads * hd);
        assert!(scores.len() >= heads * n_max);
        assert!(self.k.len() >= n_max * kvd && self.v.len() >= n_max * kvd);
        assert!(rows.is_empty() || q.len() >= (rows.end - 1) * q_stride + (kvh + 1) * group * hd);
        let k = self.k.as_ptr().add(kvh * hd);
        // Head `i` of the block: row `rows.start + i / group`, which sees
        // `positions(i)` positions, its query and its scores.
        let positions = |i: usize| self.pos0 + rows.start + i / group + 1;
        let query = |i: usize| {
            q.as_ptr()
                .add((rows.start + i / group) * q_stride + (kvh * group + i % group) * hd)
        };
        for t0 in (0..n_max).step_by(POSITIONS) {
            for i in 0..heads {
                let t1 = (t0 + POSITIONS).min(positions(i));
                let s = &mut scores[i * n_max..(i + 1) * n_max];
                let mut t = t0;
                // Scores of positions t.. for head i, `$n` at a time (a macro:
                // closures do not inherit the target features).
                macro_rules! scores {
                    ($n:literal) => {
                        let kt = k.add(t * kvd);
                        scores_block::<$n, T>(query(i), kt, kvd, hd, self.scale, &mut s[t..]);
                        t += $n;
                    };
                }
                while t + 8 <= t1 {
                    scores!(8);
                }
                while t < t1 {
                    scores!(1);
                }
            }
        }
        for i in 0..heads {
            crate::softmax::softmax_in_place(&mut scores[i * n_max..][..positions(i)]);
        }
        o.fill(0.0);
        if WIDE {
            self.weigh_avx512(scores, n_max, heads, positions, kvh, o);
        } else {
            self.weigh::<false>(scores, n_max, heads, positions, kvh, o);
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl<T: KvElem> CacheView<'_, T> {
    /// `o[i] += Σ_t scores[i][t] · V[t]` for each of `heads` heads of KV
    /// head `kvh` (head `i` sees `positions(i)` positions, its scores
    /// `n_max` apart), in blocks of [`POSITIONS`] positions; each output
    /// element one fused chain over t in order, so 16 lanes give the bits
    /// of 8.
    #[inline(always)]
    unsafe fn weigh<const WIDE: bool>(
        &self,
        scores: &[f32],
        n_max: usize,
        heads: usize,
        positions: impl Fn(usize) -> usize,
        kvh: usize,
        o: &mut [f32],
    ) {
        let (hd, kvd) = (self.hd, self.kvd);
        let v = self.v.as_ptr().add(kvh * hd);
        for t0 in (0..n_max).step_by(POSITIONS) {
            for i in 0..heads {
                let t1 = (t0 + POSITIONS).min(positions(i));
                if t1 <= t0 {
                    continue;
                }
                let p = &scores[i * n_max + t0..i * n_max + t1];
                let (og, vt) = (o[i * hd..].as_mut_ptr(), v.add(t0 * kvd));
                let mut d = 0;
                while d < hd {
                    let (og, vt) = (og.add(d), vt.add(d));
                    use std::arch::x86_64::{__m256, __m512};
                    d += match (WIDE, (hd - d) / 8) {
                        (true, 8..) => weighted_sum::<__m512, 4, T>(p, vt, kvd, og),
                        (true, 4..=7) => weighted_sum::<__m512, 2, T>(p, vt, kvd, og),
                        (true, 2 | 3) => weighted_sum::<__m512, 1, T>(p, vt, kvd, og),
                        (false, 8..) => weighted_sum::<__m256, 8, T>(p, vt, kvd, og),
                        (false, 4..=7) => weighted_sum::<__m256, 4, T>(p, vt, kvd, og),
                        (false, 2 | 3) => weighted_sum::<__m256, 2, T>(p, vt, kvd, og),
                        _ => weighted_sum::<__m256, 1, T>(p, vt, kvd, og),
                    };
                }
            }
        }
    }

    /// [`CacheView::weigh`] on 16 lanes (the 8-lane one inlines into
    /// `attend_rows_avx2`, which has its instruction sets).
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn weigh_avx512(
        &self,
        scores: &[f32],
        n_max: usize,
        heads: usize,
        positions: impl Fn(usize) -> usize,
        kvh: usize,
        o: &mut [f32],
    ) {
        self.weigh::<true>(scores, n_max, heads, positions, kvh, o)
    }
}

/// Positions per block of [`CacheView::attend_rows`]: one KV head's K (or
/// V) rows of a block stay in L1 while every row of the block uses them.
/// The rows are `kvd` values apart, so they map to few L1 sets (at a 1 KiB
/// stride, 16 of 64): blocks of 64 positions overflowed those sets' 8 ways,
/// and attention took 1.2x as long (a 2,047-token prefill of the 100M
/// model, against its products).
#[cfg(target_arch = "x86_64")]
const POSITIONS: usize = 16;

/// Scores of `T` consecutive positions (K rows `kvd` apart from `k`) against
/// one query head `q` of `hd` values, times `scale`, into `out[..T]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn scores_block<const T: usize, E: KvElem>(
    q: *const f32,
    k: *const E,
    kvd: usize,
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); T];
    for c in (0..hd).step_by(8) {
        let qc = _mm256_loadu_ps(q.add(c));
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(qc, E::load8(k.add(j * kvd + c)), *a);
        }
    }
    if T == 8 {
        let sums = reduce8([
            acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7],
        ]);
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_mul_ps(sums, _mm256_set1_ps(scale)));
        return;
    }
    for (o, a) in out[..T].iter_mut().zip(acc) {
        // [a0+a4, a1+a5, a2+a6, a3+a7], then (p0+p2) + (p1+p3).
        let p = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
        let p = _mm_add_ps(p, _mm_movehl_ps(p, p));
        *o = _mm_cvtss_f32(_mm_add_ss(p, _mm_shuffle_ps::<1>(p, p))) * scale;
    }
}

/// The lane sums of eight vectors, each by the pairwise reduction of
/// [`scores_block`] (`p = [a0+a4, a1+a5, a2+a6, a3+a7]`, then
/// `(p0+p2) + (p1+p3)`), all eight at once: the same additions of the same
/// pairs (addition commutes bit for bit), in 15 shuffles and 7 vector adds
/// instead of 40 scalar steps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn reduce8(a: [std::arch::x86_64::__m256; 8]) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // Vector j / 2 holds p of vector j in half j % 2.
    let p = |x: __m256, y: __m256| {
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(x, y),
            _mm256_permute2f128_ps::<0x31>(x, y),
        )
    };
    let (p01, p23, p45, p67) = (p(a[0], a[1]), p(a[2], a[3]), p(a[4], a[5]), p(a[6], a[7]));
    // [p0+p2, p1+p3] of vectors (0, 2 | 1, 3), then (4, 6 | 5, 7).
    let t = |x: __m256, y: __m256| {
        _mm256_add_ps(
            _mm256_shuffle_ps::<0b01_00_01_00>(x, y),
            _mm256_shuffle_ps::<0b11_10_11_10>(x, y),
        )
    };
    let (t0, t1) = (t(p01, p23), t(p45, p67));
    // (p0+p2) + (p1+p3) of vectors (0, 2, 4, 6 | 1, 3, 5, 7).
    let f = _mm256_add_ps(
        _mm256_shuffle_ps::<0b10_00_10_00>(t0, t1),
        _mm256_shuffle_ps::<0b11_01_11_01>(t0, t1),
    );
    _mm256_permutevar8x32_ps(f, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// A vector of f32 lanes for [`weighted_sum`]: AVX2's 8 or AVX-512F's 16.
/// Its methods inline into the caller's instruction set.
#[cfg(target_arch = "x86_64")]
trait Lanes: Copy {
    const LANES: usize;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn splat(x: f32) -> Self;
    /// `self * b + c`, rounded once.
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    unsafe fn load_kv<E: KvElem>(p: *const E) -> Self;
}

/// [`Lanes`] for one vector type from its intrinsics.
#[cfg(target_arch = "x86_64")]
macro_rules! lanes {
    ($v:ident, $n:literal, $load:ident, $store:ident, $set1:ident, $fmadd:ident, $kv:ident) => {
        impl Lanes for std::arch::x86_64::$v {
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
#[cfg(target_arch = "x86_64")]
lanes!(
    __m256,
    8,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    load8
);
#[cfg(target_arch = "x86_64")]
lanes!(
    __m512,
    16,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    load16
);

/// `out[..L * W] += Σ_t p[t] · V[t][..L * W]` for vectors of `L` lanes
/// (V rows `kvd` apart from `v`), each element's sum continued over t in
/// order, fused; returns the dimensions done.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn weighted_sum<V: Lanes, const W: usize, E: KvElem>(
    p: &[f32],
    v: *const E,
    kvd: usize,
    out: *mut f32,
) -> usize {
    let mut acc = [V::splat(0.0); W];
    for (j, a) in acc.iter_mut().enumerate() {
        *a = V::load(out.add(V::LANES * j));
    }
    for (t, &pt) in p.iter().enumerate() {
        let pv = V::splat(pt);
        let vt = v.add(t * kvd);
        for (j, a) in acc.iter_mut().enumerate() {
            *a = pv.mul_add(V::load_kv(vt.add(V::LANES * j)), *a);
        }
    }
    for (j, a) in acc.iter().enumerate() {
        a.store(out.add(V::LANES * j));
    }
    V::LANES * W
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One head's dot product by the definition the kernels keep: 8 lanes
    /// over k in order, the tail in the first lanes, a pairwise reduction.
    fn reference(q: &[f32], k: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        for (i, (a, b)) in q.iter().zip(k).enumerate() {
            acc[i % 8] = a.mul_add(*b, acc[i % 8]);
        }
        let p = [
            acc[0] + acc[4],
            acc[1] + acc[5],
            acc[2] + acc[6],
            acc[3] + acc[7],
        ];
        (p[0] + p[2]) + (p[1] + p[3])
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots4_avx2(qs: &[f32], k: &[f32]) -> [f32; 4] {
        dots::<4, f32>(qs, k)
    }

    #[test]
    fn grouped_dots_equal_one_head_at_a_time_bit_for_bit() {
        for hd in [1, 7, 8, 13, 64, 80, 127] {
            let v = |seed: u32, n: usize| -> Vec<f32> {
                (0..n as u32)
                    .map(|i| {
                        (((i.wrapping_mul(2654435761)) ^ seed).rotate_left(7) >> 8) as f32
                            / 16777216.0
                            - 0.5
                    })
                    .collect()
            };
            let (qs, k) = (v(1, 4 * hd), v(2, hd));
            let want: Vec<u32> = qs.chunks(hd).map(|q| reference(q, &k).to_bits()).collect();
            let got = dots::<4, f32>(&qs, &k).map(f32::to_bits);
            assert_eq!(got.to_vec(), want, "hd {hd}");
            let two = dots::<2, f32>(&qs[..2 * hd], &k).map(f32::to_bits);
            assert_eq!(two.to_vec(), want[..2], "hd {hd}");
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA.
                let wide = unsafe { dots4_avx2(&qs, &k) }.map(f32::to_bits);
                assert_eq!(wide.to_vec(), want, "hd {hd}: AVX2");
            }
        }
    }

    /// `attend_avx2` against `attend_lanes` (the definition) on K/V of
    /// element type `T`, for head shapes with and without whole 64-dim blocks.
    #[cfg(target_arch = "x86_64")]
    fn avx2_matches_definition<T: KvElem>() {
        let v = |seed: u32, n: usize| -> Vec<f32> {
            (0..n as u32)
                .map(|i| {
                    (((i.wrapping_mul(2654435761)) ^ seed).rotate_left(11) >> 8) as f32 / 16777216.0
                        - 0.5
                })
                .collect()
        };
        let elems = |x: Vec<f32>| -> Vec<T> { x.into_iter().map(T::from_f32).collect() };
        for (hd, group, kv_heads) in [(64, 3, 4), (128, 4, 2), (8, 1, 1), (24, 2, 3), (80, 2, 1)] {
            let kvd = hd * kv_heads;
            // `n` positions in all, the last `rows` of them new.
            for (n, rows) in [(1, 1), (7, 1), (8, 2), (9, 9), (17, 3), (70, 5), (150, 9)] {
                let (k, vv) = (elems(v(3, n * kvd)), elems(v(4, n * kvd)));
                let view = CacheView {
                    k: &k,
                    v: &vv,
                    hd,
                    group,
                    kvd,
                    scale: 0.125,
                    pos0: n - rows,
                };
                let q_stride = kv_heads * group * hd;
                let q = v(5, rows * q_stride);
                let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                for kvh in 0..kv_heads {
                    let mut want = vec![0f32; rows * group * hd];
                    for (r, w) in want.chunks_mut(group * hd).enumerate() {
                        let qg = &q[r * q_stride + kvh * group * hd..][..group * hd];
                        let mut s = vec![0f32; group * (n - rows + r + 1)];
                        view.attend_lanes(qg, n - rows + r + 1, kvh, w, &mut s);
                    }
                    // All rows in one block, and split after the first;
                    // the weighted sum on 8 lanes and, where AVX-512F is, 16.
                    let wides = [false, is_x86_feature_detected!("avx512f")];
                    for (split, wide) in [0, 1.min(rows - 1)]
                        .into_iter()
                        .zip(wides)
                        .chain([(0, wides[1])])
                    {
                        let mut got = vec![f32::NAN; rows * group * hd];
                        let (a, b) = got.split_at_mut(split * group * hd);
                        for (part, o) in [(0..split, a), (split..rows, b)] {
                            let mut s = vec![f32::NAN; part.len() * group * n];
                            // SAFETY: the caller checked AVX2 and FMA, `wide` AVX-512F; hd is a multiple of 8.
                            unsafe {
                                if wide {
                                    view.attend_rows_avx2::<true>(
                                        &q, q_stride, part, kvh, o, &mut s,
                                    )
                                } else {
                                    view.attend_rows_avx2::<false>(
                                        &q, q_stride, part, kvh, o, &mut s,
                                    )
                                }
                            };
                        }
                        assert_eq!(
                            bits(&got),
                            bits(&want),
                            "hd {hd} group {group} n {n} rows {rows} kvh {kvh} split {split} wide {wide}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_avx2_kernel_equals_the_definition_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            avx2_matches_definition::<f32>();
            avx2_matches_definition::<half::bf16>();
        } else {
            println!("skipped: this CPU has no AVX2 with FMA");
        }
    }
}
