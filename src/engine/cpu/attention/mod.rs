//! Causal attention of new rows over one layer's K/V cache, per (block of
//! rows, KV head). Every score and output element has one fixed arithmetic
//! order (the batch, the thread split and the instruction set change none
//! of it), which keeps batching and self-speculation bit-exact:
//! - a score is one fused chain over the head's dimensions in order, then
//!   times the scale; K's block layout ([`super::kv`]) puts 16 positions
//!   side by side, so the kernels take positions as lanes and never reduce
//!   across them;
//! - the softmax is [`crate::softmax::softmax_in_place`];
//! - an output element is one fused chain over positions in order.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod x86;

use super::kv::{KvLayout, KEY_BLOCK};
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

/// One layer's K/V cache as attention reads it, in `layout`.
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
    /// `Tiles` (bf16) runs on AMX tiles, in bf16: a cache is laid out so
    /// only where [`amx_usable`] holds and AMX runs the bf16 products.
    pub layout: KvLayout,
}

/// Whether attention with heads of `hd` dimensions can run on AMX tiles
/// where AMX runs the bf16 products.
pub(super) fn amx_usable(hd: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return amx::usable(hd);
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The queries of one call: rows `rows` of `q`, one every `stride` floats,
/// and of each the `group` query heads of KV head `kvh`.
pub(super) struct Queries<'a> {
    pub q: &'a [f32],
    pub stride: usize,
    pub rows: std::ops::Range<usize>,
    pub kvh: usize,
}

impl Queries<'_> {
    /// Row `r`'s query heads of the KV head, `group x hd` values.
    fn group_of(&self, r: usize, group: usize, hd: usize) -> &[f32] {
        &self.q[r * self.stride + self.kvh * group * hd..][..group * hd]
    }

    /// Head `i` of the call: row `rows.start + i / group`, its query head
    /// `i % group` of the KV head.
    fn head(&self, i: usize, group: usize, hd: usize) -> &[f32] {
        let g = self.group_of(self.rows.start + i / group, group, hd);
        &g[(i % group) * hd..][..hd]
    }
}

impl<T: KvElem> CacheView<'_, T> {
    /// Attention of the rows of `qs` into `o` (`rows x group x hd`). Each head's arithmetic is
    /// the definition's ([`CacheView::attend_definition`]) whatever the
    /// batch and however rows are grouped, so results are too; the AVX2 and
    /// AVX-512F kernels only widen the vectors and block the work (a unit
    /// test checks them bit for bit).
    pub fn attend_rows(&self, qs: &Queries, o: &mut [f32]) {
        let (hd, group, rows) = (self.hd, self.group, qs.rows.clone());
        if self.layout == KvLayout::Tiles {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a cache is laid out in tiles only where AMX runs this
            // process's bf16 products and `amx_usable(hd)` holds.
            return unsafe { self.attend_amx(qs, o) };
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("tile layouts are made only where AMX runs the products");
        }
        #[cfg(target_arch = "x86_64")]
        if hd.is_multiple_of(8)
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            let stride = (self.pos0 + rows.end).next_multiple_of(KEY_BLOCK);
            return scratch::with([rows.len() * group * stride], |[scores]| {
                // SAFETY: the CPU has AVX2 and FMA (and AVX-512F for the
                // wide one), and the head size is whole vectors.
                unsafe {
                    if is_x86_feature_detected!("avx512f") {
                        self.attend_avx512(qs, o, scores)
                    } else {
                        self.attend_avx2(qs, o, scores)
                    }
                }
            });
        }
        for (i, r) in rows.enumerate() {
            let n = self.pos0 + r + 1;
            let og = &mut o[i * group * hd..][..group * hd];
            scratch::with([group * n], |[scores]| {
                self.attend_definition(qs.group_of(r, group, hd), n, qs.kvh, og, scores)
            });
        }
    }

    /// The definition (and the kernel where AVX2 is missing): the `group`
    /// query heads `qg` over `n` positions, with `group x n` floats of
    /// scratch for the scores. Scores go 16 positions at a time down K's
    /// blocks (lanes a compiler can vectorize).
    #[inline(always)]
    fn attend_definition(
        &self,
        qg: &[f32],
        n: usize,
        kvh: usize,
        o: &mut [f32],
        scores: &mut [f32],
    ) {
        let (hd, kvd) = (self.hd, self.kvd);
        for (qh, s) in qg.chunks_exact(hd).zip(scores.chunks_exact_mut(n)) {
            for t0 in (0..n).step_by(KEY_BLOCK) {
                let mut acc = [0f32; KEY_BLOCK];
                for (d, &x) in qh.iter().enumerate() {
                    let kd = &self.k[KvLayout::Blocks.key_at(t0, kvh * hd + d, kvd)..][..KEY_BLOCK];
                    for (a, k) in acc.iter_mut().zip(kd) {
                        *a = x.mul_add(k.f32(), *a);
                    }
                }
                for (st, a) in s[t0..].iter_mut().zip(acc) {
                    *st = a * self.scale;
                }
            }
        }
        // Where position t's V for this KV head starts.
        let at = |t: usize| t * kvd + kvh * hd;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::kv::KvPair;

    fn values(seed: u32, n: usize) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                (((i.wrapping_mul(2654435761)) ^ seed).rotate_left(11) >> 8) as f32 / 16777216.0
                    - 0.5
            })
            .collect()
    }

    /// K of `n` positions (`n x kvd`, position-major) in blocks, with the
    /// lanes past `n` NaN: nothing may read them into a result.
    fn key_blocks<T: KvElem>(k: &[f32], kvd: usize) -> Vec<T> {
        let n = k.len() / kvd;
        let mut out = vec![T::from_f32(f32::NAN); n.next_multiple_of(KEY_BLOCK) * kvd];
        for (e, &x) in k.iter().enumerate() {
            out[KvLayout::Blocks.key_at(e / kvd, e % kvd, kvd)] = T::from_f32(x);
        }
        out
    }

    #[test]
    fn the_definition_is_softmax_attention() {
        let (hd, group, kv_heads, n) = (24, 2, 3, 37);
        let kvd = hd * kv_heads;
        let (k, v, q) = (
            values(3, n * kvd),
            values(4, n * kvd),
            values(5, group * hd),
        );
        let view = CacheView {
            k: &key_blocks::<f32>(&k, kvd),
            v: &v,
            hd,
            group,
            kvd,
            scale: 0.3,
            pos0: n - 1,
            layout: KvLayout::Blocks,
        };
        let kvh = 1;
        let mut o = vec![0f32; group * hd];
        view.attend_definition(&q, n, kvh, &mut o, &mut vec![0f32; group * n]);
        for g in 0..group {
            let qh = &q[g * hd..][..hd];
            let at = |t: usize, d: usize| t * kvd + kvh * hd + d;
            let s: Vec<f64> = (0..n)
                .map(|t| 0.3 * (0..hd).map(|d| (qh[d] * k[at(t, d)]) as f64).sum::<f64>())
                .collect();
            let max = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|x| (x - max).exp()).sum();
            for d in 0..hd {
                let want: f64 = (0..n)
                    .map(|t| (s[t] - max).exp() / z * v[at(t, d)] as f64)
                    .sum();
                let got = o[g * hd + d] as f64;
                assert!(
                    (got - want).abs() < 1e-5,
                    "head {g} dim {d}: {got} vs {want}"
                );
            }
        }
    }

    /// The AVX2 and AVX-512F kernels against the definition on K/V of
    /// element type `T`, for head shapes with and without whole vectors of
    /// dimensions, rows in one block, split after the first, and one by one.
    #[cfg(target_arch = "x86_64")]
    fn kernels_match_definition<T: KvElem>() {
        for (hd, group, kv_heads) in [(64, 3, 4), (128, 4, 2), (8, 1, 1), (24, 2, 3), (80, 2, 1)] {
            let kvd = hd * kv_heads;
            // `n` positions in all, the last `rows` of them new.
            for (n, rows) in [
                (1, 1),
                (7, 1),
                (8, 2),
                (9, 9),
                (17, 3),
                (70, 5),
                (150, 9),
                (203, 17),
            ] {
                let k = values(3, n * kvd);
                let kb = key_blocks::<T>(&k, kvd);
                let vv: Vec<T> = values(4, n * kvd).into_iter().map(T::from_f32).collect();
                let view = CacheView {
                    k: &kb,
                    v: &vv,
                    hd,
                    group,
                    kvd,
                    scale: 0.125,
                    pos0: n - rows,
                    layout: KvLayout::Blocks,
                };
                let q_stride = kv_heads * group * hd;
                let q = values(5, rows * q_stride);
                let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                for kvh in 0..kv_heads {
                    let mut want = vec![0f32; rows * group * hd];
                    for (r, w) in want.chunks_mut(group * hd).enumerate() {
                        let qg = &q[r * q_stride + kvh * group * hd..][..group * hd];
                        let m = n - rows + r + 1;
                        view.attend_definition(qg, m, kvh, w, &mut vec![0f32; group * m]);
                    }
                    let splits: Vec<Vec<usize>> = vec![
                        vec![0, rows],
                        vec![0, 1.min(rows), rows],
                        (0..=rows).collect(),
                    ];
                    for wide in [false, is_x86_feature_detected!("avx512f")] {
                        for cuts in &splits {
                            let mut got = vec![f32::NAN; rows * group * hd];
                            for w in cuts.windows(2) {
                                let part = w[0]..w[1];
                                let qs = Queries {
                                    q: &q,
                                    stride: q_stride,
                                    rows: part.clone(),
                                    kvh,
                                };
                                let o = &mut got[w[0] * group * hd..w[1] * group * hd];
                                let stride = (n - rows + w[1]).next_multiple_of(KEY_BLOCK);
                                let mut s = vec![f32::NAN; part.len() * group * stride];
                                // SAFETY: the caller checked AVX2 and FMA,
                                // `wide` AVX-512F; hd is a multiple of 8.
                                unsafe {
                                    if wide {
                                        view.attend_avx512(&qs, o, &mut s)
                                    } else {
                                        view.attend_avx2(&qs, o, &mut s)
                                    }
                                }
                            }
                            assert_eq!(
                                bits(&got),
                                bits(&want),
                                "hd {hd} group {group} n {n} rows {rows} kvh {kvh} cuts {cuts:?} wide {wide}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// AMX attention over a bf16 cache in the tile layouts: each row alone,
    /// all rows in one unit, and split after the first give the same bits;
    /// and the result is within bf16's rounding of attention over
    /// bf16-rounded queries, keys and values.
    #[cfg(target_arch = "x86_64")]
    fn amx_is_batch_invariant() {
        let round = |x: f32| half::bf16::from_f32(x).to_f32();
        for (hd, group, kv_heads) in [(64, 3, 4), (128, 4, 2), (32, 1, 1), (64, 8, 1)] {
            let kvd = hd * kv_heads;
            for (n, rows) in [
                (1, 1),
                (7, 1),
                (9, 9),
                (17, 3),
                (70, 5),
                (150, 9),
                (203, 17),
                (40, 40),
            ] {
                let (k, v) = (values(3, n * kvd), values(4, n * kvd));
                // Nine more positions, truncated: stale keys past the length.
                let mut cache = KvPair::<half::bf16>::new(kvd, KvLayout::Tiles);
                let more = |x: &[f32], seed| [x, &values(seed, 9 * kvd)].concat();
                cache.extend(&more(&k, 6), &more(&v, 7));
                cache.truncate(n);
                let view = CacheView {
                    k: &cache.k,
                    v: &cache.v,
                    hd,
                    group,
                    kvd,
                    scale: 1.0 / (hd as f32).sqrt(),
                    pos0: n - rows,
                    layout: KvLayout::Tiles,
                };
                let q_stride = kv_heads * group * hd;
                let q = values(5, rows * q_stride);
                let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                for kvh in 0..kv_heads {
                    let run = |cuts: &[usize]| {
                        let mut o = vec![f32::NAN; rows * group * hd];
                        for w in cuts.windows(2) {
                            let out = &mut o[w[0] * group * hd..w[1] * group * hd];
                            let qs = Queries {
                                q: &q,
                                stride: q_stride,
                                rows: w[0]..w[1],
                                kvh,
                            };
                            view.attend_rows(&qs, out);
                        }
                        o
                    };
                    let alone = run(&(0..=rows).collect::<Vec<_>>());
                    for cuts in [vec![0, rows], vec![0, 1.min(rows), rows]] {
                        let got = run(&cuts);
                        let what = format!(
                            "hd {hd} group {group} n {n} rows {rows} kvh {kvh} cuts {cuts:?}"
                        );
                        assert_eq!(bits(&got), bits(&alone), "{what}");
                    }
                    for (i, out) in alone.chunks(hd).enumerate() {
                        let (r, g) = (i / group, i % group);
                        let qh = &q[r * q_stride + (kvh * group + g) * hd..][..hd];
                        let seen = n - rows + r + 1;
                        let at = |t: usize, d: usize| t * kvd + kvh * hd + d;
                        let s: Vec<f64> = (0..seen)
                            .map(|t| {
                                let dot: f64 = (0..hd)
                                    .map(|d| round(qh[d]) as f64 * round(k[at(t, d)]) as f64)
                                    .sum();
                                dot * view.scale as f64
                            })
                            .collect();
                        let max = s.iter().cloned().fold(f64::MIN, f64::max);
                        let z: f64 = s.iter().map(|x| (x - max).exp()).sum();
                        for (d, &got) in out.iter().enumerate() {
                            let want: f64 = (0..seen)
                                .map(|t| (s[t] - max).exp() / z * round(v[at(t, d)]) as f64)
                                .sum();
                            assert!(
                                (got as f64 - want).abs() < 4e-3,
                                "hd {hd} n {n} row {r} head {g} dim {d}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn amx_attention_is_batch_invariant_and_close_to_bf16_attention() {
        #[cfg(target_arch = "x86_64")]
        if crate::engine::cpu::bf16_on_amx() && amx::usable(64) {
            amx_is_batch_invariant();
            return;
        }
        assert!(
            std::env::var("LAYERSKIP_REQUIRE_AMX").as_deref() != Ok("1"),
            "LAYERSKIP_REQUIRE_AMX=1, but bf16 products do not run on AMX here"
        );
        println!("skipped: bf16 products do not run on AMX on this CPU");
    }

    #[test]
    fn the_x86_kernels_equal_the_definition_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            kernels_match_definition::<f32>();
            kernels_match_definition::<half::bf16>();
            return;
        }
        println!("skipped: this CPU has no AVX2 with FMA");
    }
}
