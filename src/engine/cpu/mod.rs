//! The CPU engine: f32 compute over weights kept in their stored dtype.

mod huge;
mod matmul;
mod ops;
mod scratch;

pub use matmul::{kernel_name, matmul, matmul_many, Mat};

use super::{rope, Engine, Rows, Segment};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::model::Quantize;
use crate::weights::{Tensor, WeightStore};
use rayon::prelude::*;

struct LayerWeights {
    attn_norm: Vec<f32>,
    mlp_norm: Vec<f32>,
    q: Mat,
    k: Mat,
    v: Mat,
    o: Mat,
    gate: Mat,
    up: Mat,
    down: Mat,
}

pub struct CpuEngine {
    cfg: ModelConfig,
    embed: Tensor,
    lm_head: Mat,
    norm: Vec<f32>,
    layers: Vec<LayerWeights>,
    inv_freq: Vec<f32>,
}

/// Host activations: `rows x hidden` f32, row-major.
pub struct HostActs {
    pub data: Vec<f32>,
    pub width: usize,
}

impl Rows for HostActs {
    fn rows(&self) -> usize {
        self.data.len() / self.width
    }
    fn append(&mut self, other: Self) {
        self.data.extend_from_slice(&other.data);
    }
    fn truncate(&mut self, rows: usize) {
        self.data.truncate(rows * self.width);
    }
    fn split_off(&mut self, at: usize) -> Self {
        HostActs {
            data: self.data.split_off(at * self.width),
            width: self.width,
        }
    }
    fn tail(&self, from: usize) -> Self {
        HostActs {
            data: self.data[from * self.width..].to_vec(),
            width: self.width,
        }
    }
}

/// Per-layer K/V, position-major (`len x kv_dim`), so appending and truncating
/// are plain length changes.
pub struct CpuKv {
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl CpuEngine {
    pub fn load(cfg: &ModelConfig, store: &WeightStore, quantize: Quantize) -> Result<Self> {
        let h = cfg.hidden_size;
        let (qd, kvd, inter) = (cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        let mat = |name: &str, rows: usize, cols: usize| -> Result<Mat> {
            let t = store.get(name, &[rows, cols])?;
            Ok(match quantize {
                Quantize::None => Mat::new(&t),
                Quantize::Int8 => Mat::new_int8(&t),
                Quantize::Bf16 => Mat::new_bf16(&t),
            })
        };
        let vec = |name: &str| -> Result<Vec<f32>> { Ok(store.get(name, &[h])?.to_f32()) };
        // Looked up by row, straight from the checkpoint (no packed copy).
        let embed = store.get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let lm_head = if cfg.tie_word_embeddings && !store.contains("lm_head.weight") {
            mat("model.embed_tokens.weight", cfg.vocab_size, h)?
        } else {
            mat("lm_head.weight", cfg.vocab_size, h)?
        };
        let layers = (0..cfg.num_layers)
            .map(|i| {
                let p = format!("model.layers.{i}");
                Ok(LayerWeights {
                    attn_norm: vec(&format!("{p}.input_layernorm.weight"))?,
                    mlp_norm: vec(&format!("{p}.post_attention_layernorm.weight"))?,
                    q: mat(&format!("{p}.self_attn.q_proj.weight"), qd, h)?,
                    k: mat(&format!("{p}.self_attn.k_proj.weight"), kvd, h)?,
                    v: mat(&format!("{p}.self_attn.v_proj.weight"), kvd, h)?,
                    o: mat(&format!("{p}.self_attn.o_proj.weight"), h, qd)?,
                    gate: mat(&format!("{p}.mlp.gate_proj.weight"), inter, h)?,
                    up: mat(&format!("{p}.mlp.up_proj.weight"), inter, h)?,
                    down: mat(&format!("{p}.mlp.down_proj.weight"), h, inter)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CpuEngine {
            cfg: cfg.clone(),
            embed,
            lm_head,
            norm: vec("model.norm.weight")?,
            layers,
            inv_freq: rope::inv_freq(cfg),
        })
    }

    /// Logits of rows `from..` of `x` into `out` (`rows x vocab`).
    fn head_into(&self, x: &HostActs, from: usize, out: &mut [f32]) {
        let h = self.cfg.hidden_size;
        let rows = x.rows() - from;
        scratch::with([rows * h], |[xn]| {
            norm_rows(
                &x.data[from * h..],
                &self.norm,
                self.cfg.rms_norm_eps,
                h,
                xn,
            );
            matmul(xn, rows, &self.lm_head, out);
        });
    }

    /// Causal attention of `rows` new queries (positions `pos0..`) over the
    /// layer's cache, which already holds their own K/V.
    fn attention(&self, q: &[f32], k: &[f32], v: &[f32], pos0: usize, out: &mut [f32]) {
        let cfg = &self.cfg;
        let (hd, nh, nkv) = (cfg.head_dim, cfg.num_heads, cfg.num_kv_heads);
        let group = nh / nkv;
        let cache = CacheView {
            k,
            v,
            hd,
            group,
            kvd: cfg.kv_dim(),
            scale: 1.0 / (hd as f32).sqrt(),
            pos0,
        };
        // One unit per (row, KV head): the query heads of a group are
        // consecutive, so their outputs are one contiguous chunk, and they
        // share every K/V row they read.
        let unit = |(idx, o): (usize, &mut [f32])| {
            let (r, kvh) = (idx / nkv, idx % nkv);
            let qg = &q[r * nh * hd + kvh * group * hd..][..group * hd];
            cache.attend(qg, r, kvh, o);
        };
        let rows = out.len() / (nh * hd);
        let work = rows * nh * (pos0 + rows) * hd * 2;
        if work < matmul::SERIAL_BELOW {
            out.chunks_mut(group * hd).enumerate().for_each(unit);
        } else {
            out.par_chunks_mut(group * hd).enumerate().for_each(unit);
        }
    }
}

/// One layer's K/V cache (`len x kvd`, position-major) as attention reads it.
struct CacheView<'a> {
    k: &'a [f32],
    v: &'a [f32],
    hd: usize,
    /// Query heads per KV head.
    group: usize,
    kvd: usize,
    scale: f32,
    /// Position of the first new row.
    pos0: usize,
}

impl CacheView<'_> {
    /// Attention of row `r`'s query heads of KV head `kvh` (`qg`: `group x
    /// hd`) into `o`. Each head's arithmetic (scores, softmax, weighted sum
    /// in order of position) is the same whatever the batch, so results are
    /// too; AVX2 only widens the vectors (Rust never fuses a multiply and an
    /// add on its own), it changes no result (a unit test checks it).
    fn attend(&self, qg: &[f32], r: usize, kvh: usize, o: &mut [f32]) {
        let n = self.pos0 + r + 1;
        scratch::with([self.group * n], |[scores]| {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                return unsafe { self.attend_avx2(qg, n, kvh, o, scores) };
            }
            self.attend_lanes(qg, n, kvh, o, scores)
        })
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn attend_avx2(
        &self,
        qg: &[f32],
        n: usize,
        kvh: usize,
        o: &mut [f32],
        scores: &mut [f32],
    ) {
        self.attend_lanes(qg, n, kvh, o, scores)
    }

    /// Over `n` positions, with `group x n` floats of scratch for the
    /// scores. The group's heads go through each K row together: a row is
    /// loaded once for all of them, and their dot products are independent
    /// chains (a head's own arithmetic is unchanged).
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
                    4 => s = dots::<4>(qs, kt),
                    2 => s[..2].copy_from_slice(&dots::<2>(qs, kt)),
                    _ => s[0] = dots::<1>(qs, kt)[0],
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
                        acc[i] += pt * vt[i];
                    }
                }
                og[d0..d0 + BLOCK].copy_from_slice(&acc);
                d0 += BLOCK;
            }
            for (d, o) in og.iter_mut().enumerate().skip(d0) {
                *o = p
                    .iter()
                    .enumerate()
                    .fold(0.0, |a, (t, &pt)| a + pt * self.v[at(t) + d]);
            }
        }
    }
}

/// `H` dot products of `k` with the `H` consecutive vectors of `qs`, as
/// independent chains. Each is 8 lanes of multiplies then adds over k in
/// order, the tail folded into the first lanes, then a fixed pairwise
/// reduction: its bits depend on neither `H` nor the instruction set
/// (attention scores; the order never depends on the batch).
#[inline(always)]
fn dots<const H: usize>(qs: &[f32], k: &[f32]) -> [f32; H] {
    let hd = k.len();
    let n = hd / 8 * 8;
    let mut acc = [[0f32; 8]; H];
    for c in (0..n).step_by(8) {
        let kc = &k[c..c + 8];
        for (h, a) in acc.iter_mut().enumerate() {
            let qc = &qs[h * hd + c..h * hd + c + 8];
            for i in 0..8 {
                a[i] += qc[i] * kc[i];
            }
        }
    }
    // A plain loop: `array::from_fn` would not inline into the caller's
    // instruction set.
    let mut out = [0f32; H];
    for (h, (o, a)) in out.iter_mut().zip(acc.iter_mut()).enumerate() {
        for i in n..hd {
            a[i - n] += qs[h * hd + i] * k[i];
        }
        let p = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
        *o = (p[0] + p[2]) + (p[1] + p[3]);
    }
    out
}

/// The CPU engine's worker threads (`RAYON_NUM_THREADS`, default one per
/// core). Decoding runs inside it ([`Engine::enter`]): a thread outside the
/// pool that starts parallel work sleeps while the workers run and wakes
/// after, and its serial work between products competes with spinning
/// workers for the cores; from inside, the caller is one of the workers.
fn pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("layerskip-{i}"))
            .build()
            .expect("the CPU engine needs worker threads")
    })
}

/// Host memory read bandwidth in GB/s with the engine's worker threads: the
/// best of a few passes summing a 256 MiB buffer (far larger than any cache),
/// the denominator of a roofline.
pub fn read_bandwidth() -> f64 {
    const WORDS: usize = 256 << 17; // 256 MiB of u64
    let buf: Vec<u64> = (0..WORDS as u64).collect();
    pool().install(|| {
        (0..4)
            .map(|_| {
                let t = std::time::Instant::now();
                let sum: u64 = buf
                    .par_chunks(1 << 16)
                    .map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
                    .reduce(|| 0, u64::wrapping_add);
                std::hint::black_box(sum);
                (WORDS * 8) as f64 / t.elapsed().as_secs_f64() / 1e9
            })
            .fold(0.0, f64::max)
    })
}

fn norm_rows(x: &[f32], w: &[f32], eps: f32, width: usize, out: &mut [f32]) {
    for (o, r) in out.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
        ops::rms_norm(r, w, eps, o);
    }
}

impl Engine for CpuEngine {
    type Acts = HostActs;
    type Kv = CpuKv;

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn kv_bytes_per_position(&self) -> usize {
        // K and V, f32, every layer.
        2 * self.cfg.num_layers * self.cfg.kv_dim() * std::mem::size_of::<f32>()
    }

    fn new_kv(&self, _capacity: usize) -> CpuKv {
        let n = self.cfg.num_layers;
        CpuKv {
            k: vec![Vec::new(); n],
            v: vec![Vec::new(); n],
        }
    }

    fn truncate_kv(&self, kv: &mut CpuKv, layer: usize, len: usize) {
        let kvd = self.cfg.kv_dim();
        kv.k[layer].truncate(len * kvd);
        kv.v[layer].truncate(len * kvd);
    }

    fn read_kv(&self, kv: &CpuKv, layer: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
        let n = len * self.cfg.kv_dim();
        (kv.k[layer][..n].to_vec(), kv.v[layer][..n].to_vec())
    }

    fn embed(&self, tokens: &[u32]) -> HostActs {
        let h = self.cfg.hidden_size;
        let mut data = vec![0.0; tokens.len() * h];
        for (row, &t) in data.chunks_exact_mut(h).zip(tokens) {
            self.embed.row_f32(t as usize, row);
        }
        HostActs { data, width: h }
    }

    fn run_layer_batch(&self, layer: usize, segments: &mut [Segment<'_, CpuKv>], x: &mut HostActs) {
        let cfg = &self.cfg;
        let w = &self.layers[layer];
        let rows = x.rows();
        debug_assert_eq!(rows, segments.iter().map(|s| s.rows).sum::<usize>());
        let (h, hd, qd, kvd) = (cfg.hidden_size, cfg.head_dim, cfg.q_dim(), cfg.kv_dim());

        let inter = cfg.intermediate_size;
        let lens = [
            rows * h,
            rows * qd,
            rows * kvd,
            rows * kvd,
            rows * qd,
            rows * h,
            rows * inter,
            rows * inter,
        ];
        scratch::with(lens, |[xn, q, k, v, attn, o, gate, up]| {
            // Projections over every row of the batch: weights are read once.
            norm_rows(&x.data, &w.attn_norm, cfg.rms_norm_eps, h, xn);
            matmul_many(
                xn,
                rows,
                &mut [(&w.q, &mut **q), (&w.k, &mut **k), (&w.v, &mut **v)],
            );

            // Attention per session, over its own cache.
            let mut r0 = 0;
            for seg in segments.iter_mut() {
                let (n, pos0) = (seg.rows, seg.pos0);
                debug_assert_eq!(seg.kv.k[layer].len(), pos0 * kvd);
                for r in r0..r0 + n {
                    let pos = pos0 + r - r0;
                    rope::apply(&mut q[r * qd..(r + 1) * qd], hd, pos, &self.inv_freq);
                    rope::apply(&mut k[r * kvd..(r + 1) * kvd], hd, pos, &self.inv_freq);
                }
                seg.kv.k[layer].extend_from_slice(&k[r0 * kvd..(r0 + n) * kvd]);
                seg.kv.v[layer].extend_from_slice(&v[r0 * kvd..(r0 + n) * kvd]);
                self.attention(
                    &q[r0 * qd..(r0 + n) * qd],
                    &seg.kv.k[layer],
                    &seg.kv.v[layer],
                    pos0,
                    &mut attn[r0 * qd..(r0 + n) * qd],
                );
                r0 += n;
            }
            matmul(attn, rows, &w.o, o);
            x.data.iter_mut().zip(o.iter()).for_each(|(a, b)| *a += b);

            norm_rows(&x.data, &w.mlp_norm, cfg.rms_norm_eps, h, xn);
            matmul_many(xn, rows, &mut [(&w.gate, &mut **gate), (&w.up, &mut **up)]);
            ops::swiglu(gate, up);
            matmul(gate, rows, &w.down, o);
            x.data.iter_mut().zip(o.iter()).for_each(|(a, b)| *a += b);
        });
    }

    fn weight_bytes_per_token(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|w| {
                [&w.q, &w.k, &w.v, &w.o, &w.gate, &w.up, &w.down]
                    .iter()
                    .map(|m| m.bytes())
                    .sum::<usize>()
            })
            .sum();
        layers + self.lm_head.bytes()
    }

    fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        pool().install(f)
    }

    fn memory_bandwidth(&self) -> f64 {
        read_bandwidth()
    }

    fn kernel_name(&self) -> String {
        kernel_name().to_string()
    }

    fn head(&self, x: &HostActs, from: usize, out: &mut Vec<f32>) {
        out.resize((x.rows() - from) * self.cfg.vocab_size, 0.0);
        self.head_into(x, from, out);
    }
}

#[cfg(test)]
mod tests {
    use super::dots;

    /// One head's dot product by the definition the kernels keep: 8 lanes
    /// over k in order, the tail in the first lanes, a pairwise reduction.
    fn reference(q: &[f32], k: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        for (i, (a, b)) in q.iter().zip(k).enumerate() {
            acc[i % 8] += a * b;
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
    #[target_feature(enable = "avx2")]
    unsafe fn dots4_avx2(qs: &[f32], k: &[f32]) -> [f32; 4] {
        dots::<4>(qs, k)
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
            let got = dots::<4>(&qs, &k).map(f32::to_bits);
            assert_eq!(got.to_vec(), want, "hd {hd}");
            let two = dots::<2>(&qs[..2 * hd], &k).map(f32::to_bits);
            assert_eq!(two.to_vec(), want[..2], "hd {hd}");
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                let wide = unsafe { dots4_avx2(&qs, &k) }.map(f32::to_bits);
                assert_eq!(wide.to_vec(), want, "hd {hd}: AVX2");
            }
        }
    }
}
