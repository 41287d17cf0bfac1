//! The CPU engine: f32 compute over weights kept in their stored dtype.

mod attention;
mod huge;
mod kv;
mod matmul;
mod ops;
mod scratch;
mod team;
#[cfg(target_arch = "x86_64")]
mod tiles;

pub use matmul::{bf16_on_amx, kernel_name, matmul, matmul_many, Mat};
pub use team::hold;

use super::llama::{self, LayerNames};
use super::HeadOutput;
use super::{rope, Engine, Rows, Segment};
use crate::config::ModelConfig;
use crate::engine::options::{KvDtype, Quantize};
use crate::error::Result;
use crate::sampling::{Pick, PickRule};
use crate::weights::{Tensor, WeightStore};
use attention::{CacheView, KvElem, Queries};
pub use kv::CpuKv;
use kv::{with_pair, KvLayer, KvLayout, KvPair};
use parking_lot::Mutex;
use rayon::prelude::*;

/// One decoder layer's weights, packed (benches build them too).
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub mlp_norm: Vec<f32>,
    pub q: Mat,
    pub k: Mat,
    pub v: Mat,
    pub o: Mat,
    pub gate: Mat,
    pub up: Mat,
    pub down: Mat,
}

pub struct CpuEngine {
    cfg: ModelConfig,
    embed: Tensor,
    lm_head: Mat,
    /// The LM head as stored (mapped), for packing a draft shortlist.
    lm_head_tensor: Tensor,
    /// The LM head's rows for the draft shortlist, with their token ids.
    draft: Option<(Vec<u32>, Mat)>,
    /// How the weights are held (the draft head is packed the same way).
    quantize: Quantize,
    norm: Vec<f32>,
    layers: Vec<LayerWeights>,
    inv_freq: Vec<f32>,
    kv_dtype: KvDtype,
    /// `Tiles` where attention runs on AMX (in bf16, where bf16 products
    /// run on AMX), else `Blocks`.
    kv_layout: KvLayout,
    /// The model's own workers, or None for the process's shared pool.
    own_pool: Option<rayon::ThreadPool>,
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

/// A weight matrix packed for this engine's products in `quantize`'s precision.
fn pack(t: &Tensor, quantize: Quantize) -> Mat {
    match quantize {
        Quantize::None => Mat::new(t),
        Quantize::Int8 => Mat::new_int8(t),
        Quantize::Bf16 => Mat::new_bf16(t),
    }
}

impl CpuEngine {
    pub fn load(
        cfg: &ModelConfig,
        store: &WeightStore,
        quantize: Quantize,
        kv_dtype: KvDtype,
        threads: usize,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let (qd, kvd, inter) = (cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
        // Each matrix is packed and its mapped pages released before the
        // next one is read, so loading holds the packed weights plus about
        // one matrix per worker, and a loaded model holds its weights once.
        let mat = |name: &str, rows: usize, cols: usize| -> Result<Mat> {
            let t = store.get(name, &[rows, cols])?;
            let m = pack(&t, quantize);
            t.release();
            Ok(m)
        };
        let vec = |name: &str| -> Result<Vec<f32>> {
            let t = store.get(name, &[h])?;
            let v = t.to_f32();
            t.release();
            Ok(v)
        };
        let own_pool = (threads > 0).then(|| new_pool(threads)).transpose()?;
        let workers = own_pool.as_ref().unwrap_or_else(|| pool());
        // Looked up by row, straight from the checkpoint (no packed copy).
        let embed = store.get(llama::EMBED, &[cfg.vocab_size, h])?;
        let lm_head_tensor = match llama::lm_head(cfg, store) {
            llama::EMBED => embed.clone(), // tied: read and checked once
            name => {
                embed.release();
                store.get(name, &[cfg.vocab_size, h])?
            }
        };
        let lm_head = workers.install(|| pack(&lm_head_tensor, quantize));
        lm_head_tensor.release();
        // Collected per layer first, so that the error reported is the
        // first layer's, whichever thread finished first.
        let layers: Vec<Result<LayerWeights>> = workers.install(|| {
            (0..cfg.num_layers)
                .into_par_iter()
                .map(|i| {
                    let n = LayerNames::new(i);
                    Ok(LayerWeights {
                        attn_norm: vec(&n.attn_norm)?,
                        mlp_norm: vec(&n.mlp_norm)?,
                        q: mat(&n.q, qd, h)?,
                        k: mat(&n.k, kvd, h)?,
                        v: mat(&n.v, kvd, h)?,
                        o: mat(&n.o, h, qd)?,
                        gate: mat(&n.gate, inter, h)?,
                        up: mat(&n.up, inter, h)?,
                        down: mat(&n.down, h, inter)?,
                    })
                })
                .collect()
        });
        let layers = layers.into_iter().collect::<Result<Vec<_>>>()?;
        // Attention on AMX multiplies bf16 keys and values: an f32 cache
        // would only be rounded at every use, so the cache holds bf16, in
        // the tiles' layouts (half the memory, no conversion per pass).
        let amx =
            quantize == Quantize::Bf16 && bf16_on_amx() && attention::amx_usable(cfg.head_dim);
        let (kv_dtype, kv_layout) = if amx {
            (KvDtype::Bf16, KvLayout::Tiles)
        } else {
            (kv_dtype, KvLayout::Blocks)
        };
        Ok(CpuEngine {
            cfg: cfg.clone(),
            embed,
            lm_head,
            lm_head_tensor,
            draft: None,
            quantize,
            norm: vec(llama::FINAL_NORM)?,
            layers,
            inv_freq: rope::inv_freq(cfg),
            kv_dtype,
            kv_layout,
            own_pool,
        })
    }

    /// `f` of rows `from..` of `x` through the final norm, and their count.
    fn normed<R>(&self, x: &HostActs, from: usize, f: impl FnOnce(&[f32], usize) -> R) -> R {
        let h = self.cfg.hidden_size;
        let rows = x.rows() - from;
        scratch::with([rows * h], |[xn]| {
            ops::rms_norm_rows(&x.data[from * h..], &self.norm, self.cfg.rms_norm_eps, xn);
            f(xn, rows)
        })
    }

    /// Adds to `out`'s logits each row's pick under its rule, made on the
    /// team, where the rows are many enough to share (16 batched sessions
    /// of a 4,096-token vocabulary are): a batch then hands each session its
    /// picks instead of a copy of its logits, which one thread made while
    /// the others waited (2 MB per step for 16 sessions of a 32,000-token
    /// vocabulary), and picked from alone. Fewer rows keep logits only, and
    /// the caller picks what it needs from them.
    fn pick_on_team(&self, rules: &[PickRule], out: &mut HeadOutput) {
        let vocab = self.cfg.vocab_size;
        let work = rules.len() * vocab * PICK_WORK;
        if team::serial(rules.len(), work) {
            return;
        }
        out.add_picks(|logits, picks| {
            picks.resize(rules.len(), Pick::default());
            team::for_each_chunk(picks, 1, work, |i, p| {
                p[0] = Pick::of(&logits[i * vocab..][..vocab], &rules[i])
            });
        });
    }

    /// Multiply-adds of the attention of `rows` new positions after `pos0`.
    fn attention_work(&self, rows: usize, pos0: usize) -> usize {
        rows * self.cfg.num_heads * (pos0 + rows) * self.cfg.head_dim * 2
    }

    /// Causal attention of `rows` new queries (positions `pos0..`) over the
    /// layer's cache, which already holds their own K/V.
    fn attention<T: KvElem>(&self, p: &KvPair<T>, q: &[f32], pos0: usize, out: &mut [f32]) {
        let (k, v, layout) = (&p.k[..], &p.v[..], p.layout);
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
            layout,
        };
        // One unit per (block of rows, KV head): the query heads of a
        // group are consecutive and share every K/V row they read, and the
        // rows of a block share each block of positions while it is in L1.
        // Blocks are as large as leaves four units per worker thread, and
        // as keeps a unit's scores within [`UNIT_SCORES`].
        let rows = out.len() / (nh * hd);
        let threads = rayon::current_num_threads();
        let rb = ROW_BLOCK
            .min(rows.div_ceil((4 * threads).div_ceil(nkv)))
            .min(UNIT_SCORES / (group * (pos0 + rows)))
            .max(1);
        let blocks = rows.div_ceil(rb);
        let dst = OutRows(out.as_mut_ptr());
        let unit = |u: usize| {
            let (b, kvh) = (u / nkv, u % nkv);
            let rs = b * rb..((b + 1) * rb).min(rows);
            scratch::with([rs.len() * group * hd], |[o]| {
                let qs = Queries {
                    q,
                    stride: nh * hd,
                    rows: rs.clone(),
                    kvh,
                };
                cache.attend_rows(&qs, o);
                for (r, src) in rs.zip(o.chunks_exact(group * hd)) {
                    // SAFETY: unit (b, kvh) alone writes these elements of
                    // `out` (rows of block b, heads of KV head kvh).
                    unsafe { dst.write(r * nh * hd + kvh * group * hd, src) };
                }
            })
        };
        team::for_each(blocks * nkv, self.attention_work(rows, pos0), unit);
    }
}

/// Multiply-adds that picking from one logit counts as for the team's
/// threshold: two passes for the greedy token, one of exponentials for its
/// probability.
const PICK_WORK: usize = 4;

/// Most rows per unit of attention (see [`CpuEngine::attention`]).
const ROW_BLOCK: usize = 16;

/// Most scores (floats, 1 MiB) a unit of attention holds when it takes
/// several rows: at a long context a block of 16 rows would otherwise take
/// tens of MiB of scratch per thread.
const UNIT_SCORES: usize = 1 << 18;

/// `out` of [`CpuEngine::attention`], shared by units that write disjoint
/// elements of it.
#[derive(Clone, Copy)]
struct OutRows(*mut f32);
// SAFETY: units write disjoint elements (see the unit's comment).
unsafe impl Send for OutRows {}
unsafe impl Sync for OutRows {}

impl OutRows {
    /// Copies `src` to elements `at..` of `out`.
    ///
    /// # Safety
    /// They are in bounds, and no other thread touches them meanwhile.
    unsafe fn write(self, at: usize, src: &[f32]) {
        std::ptr::copy_nonoverlapping(src.as_ptr(), self.0.add(at), src.len());
    }
}

/// One session's share of a batched layer: its layer cache, its first new
/// position, and its rows of the queries, keys, values and attention output.
struct SessionPart<'a> {
    kv: &'a mut KvLayer,
    pos0: usize,
    q: &'a mut [f32],
    k: &'a mut [f32],
    v: &'a [f32],
    out: &'a mut [f32],
}

/// Splits the batch's rows of `[q, k, out]` (row widths `[qd, kvd]`, `out`
/// as `q`) and `v` among `segments`, each part behind its own (uncontended)
/// lock so that a task can take its part mutably.
fn session_parts<'a>(
    segments: &'a mut [Segment<'_, CpuKv>],
    layer: usize,
    [mut q, mut k, mut out]: [&'a mut [f32]; 3],
    mut v: &'a [f32],
    [qd, kvd]: [usize; 2],
) -> Vec<Mutex<SessionPart<'a>>> {
    let mut parts = Vec::with_capacity(segments.len());
    for seg in segments.iter_mut() {
        let n = seg.rows;
        let (q0, q1) = std::mem::take(&mut q).split_at_mut(n * qd);
        let (k0, k1) = std::mem::take(&mut k).split_at_mut(n * kvd);
        let (o0, o1) = std::mem::take(&mut out).split_at_mut(n * qd);
        let (v0, v1) = v.split_at(n * kvd);
        (q, k, out, v) = (q1, k1, o1, v1);
        parts.push(Mutex::new(SessionPart {
            kv: &mut seg.kv.layers[layer],
            pos0: seg.pos0,
            q: q0,
            k: k0,
            v: v0,
            out: o0,
        }));
    }
    parts
}

/// The CPU engine's worker threads (`RAYON_NUM_THREADS`, default one per
/// core). Decoding runs inside it ([`Engine::enter`]): a thread outside the
/// pool that starts parallel work sleeps while the workers run and wakes
/// after, and its serial work between products competes with spinning
/// workers for the cores; from inside, the caller is one of the workers.
fn pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| new_pool(0).expect("the CPU engine needs worker threads"))
}

/// The most worker threads a model's own pool may ask for: far more than
/// any machine's cores, and few enough that a wrong number fails at once
/// instead of spawning threads until the system refuses.
pub const MAX_THREADS: usize = 1024;

/// A pool of `threads` workers (0: rayon's default, `RAYON_NUM_THREADS` or
/// one per core).
fn new_pool(threads: usize) -> Result<rayon::ThreadPool> {
    if threads > MAX_THREADS {
        return Err(crate::Error::invalid(format!(
            "{threads} worker threads asked for; at most {MAX_THREADS}"
        )));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("layerskip-{i}"))
        .build()
        .map_err(|e| {
            crate::Error::new(
                crate::ErrorKind::ResourceLimit,
                format!("cannot start {threads} worker threads: {e}"),
            )
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

impl Engine for CpuEngine {
    type Acts = HostActs;
    type Kv = CpuKv;

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn kv_bytes_per_position(&self) -> usize {
        self.cfg.kv_bytes_per_position(self.kv_dtype.bytes())
    }

    fn new_kv(&self, _capacity: usize) -> CpuKv {
        CpuKv::new(
            self.cfg.num_layers,
            self.cfg.kv_dim(),
            self.kv_dtype,
            self.kv_layout,
        )
    }

    fn truncate_kv(&self, kv: &mut CpuKv, layer: usize, len: usize) {
        kv.layers[layer].truncate(len);
    }

    fn read_kv(&self, kv: &CpuKv, layer: usize, len: usize) -> (Vec<f32>, Vec<f32>) {
        kv.layers[layer].to_f32(len)
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
            ops::rms_norm_rows(&x.data, &w.attn_norm, cfg.rms_norm_eps, xn);
            matmul_many(
                xn,
                rows,
                &mut [(&w.q, &mut **q), (&w.k, &mut **k), (&w.v, &mut **v)],
            );

            // Per session: its new positions rotated and appended to its
            // own cache, then their attention over that cache, in one task.
            // One decoding row's work is too small to share among threads
            // by itself, so the sessions of a batch run side by side (and
            // the cache lines that the append brings in serve the
            // attention's reads on the same core).
            let work = segments
                .iter()
                .map(|s| self.attention_work(s.rows, s.pos0))
                .sum();
            let parts = session_parts(segments, layer, [q, k, attn], v, [qd, kvd]);
            team::for_each(parts.len(), work, |i| {
                let mut part = parts[i].lock();
                let SessionPart {
                    kv,
                    pos0,
                    q,
                    k,
                    v,
                    out,
                } = &mut *part;
                debug_assert_eq!(kv.positions(), *pos0);
                for (r, (qr, kr)) in q
                    .chunks_exact_mut(qd)
                    .zip(k.chunks_exact_mut(kvd))
                    .enumerate()
                {
                    rope::apply(qr, kr, hd, *pos0 + r, &self.inv_freq);
                }
                kv.extend(k, v);
                with_pair!(&**kv, p => self.attention(p, q, *pos0, out))
            });
            matmul(attn, rows, &w.o, o);
            ops::add_in_place(&mut x.data, o);

            ops::rms_norm_rows(&x.data, &w.mlp_norm, cfg.rms_norm_eps, xn);
            matmul_many(xn, rows, &mut [(&w.gate, &mut **gate), (&w.up, &mut **up)]);
            // Element by element, so chunks share the work without
            // changing a bit; one decoding row's is too little to share.
            const CHUNK: usize = 4096;
            let work = gate.len() * ops::SWIGLU_WORK;
            team::for_each_chunk(gate, CHUNK, work, |i, g| {
                ops::swiglu(g, &up[i * CHUNK..][..g.len()])
            });
            matmul(gate, rows, &w.down, o);
            ops::add_in_place(&mut x.data, o);
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
        self.own_pool
            .as_ref()
            .unwrap_or_else(|| pool())
            .install(|| team::hold(f))
    }

    fn memory_bandwidth(&self) -> f64 {
        read_bandwidth()
    }

    fn kernel_name(&self) -> String {
        kernel_name(self.quantize == Quantize::Bf16).to_string()
    }

    fn head(&self, x: &HostActs, from: usize, out: &mut Vec<f32>) {
        out.resize((x.rows() - from) * self.cfg.vocab_size, 0.0);
        self.normed(x, from, |xn, rows| matmul(xn, rows, &self.lm_head, out));
    }

    fn set_draft_shortlist(&mut self, ids: &[u32]) -> Result<bool> {
        let vocab = self.cfg.vocab_size;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(crate::error::Error::invalid(format!(
                "draft shortlist token {bad} is out of range (vocab_size {vocab})"
            )));
        }
        let m = pack(&self.lm_head_tensor.gather_rows(ids), self.quantize);
        self.draft = Some((ids.to_vec(), m));
        Ok(true)
    }

    fn draft_head(&self, x: &HostActs, from: usize, extra: &[&[u32]], out: &mut Vec<f32>) {
        let Some((ids, m)) = &self.draft else {
            return self.head(x, from, out);
        };
        let (vocab, k, h) = (self.cfg.vocab_size, ids.len(), x.width);
        out.clear();
        out.resize((x.rows() - from) * vocab, f32::NEG_INFINITY);
        let scatter = |row: &mut [f32], ids: &[u32], logits: &[f32]| {
            for (&id, &v) in ids.iter().zip(logits) {
                row[id as usize] = v;
            }
        };
        self.normed(x, from, |xn, rows| {
            scratch::with([rows * k], |[short]| {
                matmul(xn, rows, m, short);
                for (r, row) in out.chunks_exact_mut(vocab).enumerate() {
                    scatter(row, ids, &short[r * k..(r + 1) * k]);
                    // A row's own tokens: their LM-head rows packed as the
                    // shortlist's are, so their logits are what the shortlist
                    // would give them.
                    let Some(extra) = extra.get(r).filter(|e| !e.is_empty()) else {
                        continue;
                    };
                    let m = pack(&self.lm_head_tensor.gather_rows(extra), self.quantize);
                    let mut logits = vec![0f32; extra.len()];
                    matmul(&xn[r * h..(r + 1) * h], 1, &m, &mut logits);
                    scatter(row, extra, &logits);
                }
            })
        });
    }

    fn head_pick(&self, x: &HostActs, from: usize, rules: &[PickRule], out: &mut HeadOutput) {
        out.fill_logits(|logits| self.head(x, from, logits));
        self.pick_on_team(rules, out);
    }

    fn draft_head_pick(
        &self,
        x: &HostActs,
        from: usize,
        extra: &[&[u32]],
        rules: &[PickRule],
        out: &mut HeadOutput,
    ) {
        out.fill_logits(|logits| self.draft_head(x, from, extra, logits));
        self.pick_on_team(rules, out);
    }
}
