// The CUDA engine's kernels, compiled at first use by NVRTC (one module per
// process). Activations are f32; weights stay in their stored dtype (f32,
// f16 or bf16) and are converted in registers.
//
// Batch invariance: every kernel computes a row's values from that row's
// data only, with a reduction order fixed by the shapes (hidden size, head
// dim, position count), never by how many rows are in the launch. So a token
// decoded alone and the same token inside a verify pass of d + 1 rows get
// bit-identical results, and greedy self-speculation stays lossless.

#include <cuda_fp16.h>
#include <cuda_bf16.h>

#define WARP 32
// NVRTC has no math.h: the largest negative float, for max-reductions.
#define NEG_INF __int_as_float(0xff800000)
// Rows one matvec launch takes (accumulators per lane).
#define MATVEC_ROWS 16
// Outputs per matvec block: one warp each.
#define MATVEC_WARPS 8
// Weight chunks a lane loads ahead (memory-level parallelism at one row).
#define MATVEC_UNROLL 4

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

struct Sum {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct Max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Reduction over a warp in a fixed butterfly order.
template <typename Op>
__device__ __forceinline__ float warp_reduce(float v, Op op) {
    for (int o = WARP / 2; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) { return warp_reduce(v, Sum()); }

// Reduction over the block (blockDim.x a multiple of 32, at most 1024) in a
// fixed order; every thread gets the result. `scratch` holds 32 floats;
// `identity` pads the lanes past the block's warps.
template <typename Op>
__device__ float block_reduce(float v, float* scratch, Op op, float identity) {
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    v = warp_reduce(v, op);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = blockDim.x / WARP;
    v = threadIdx.x < warps ? scratch[threadIdx.x] : identity;
    if (warp == 0) v = warp_reduce(v, op);
    if (threadIdx.x == 0) scratch[0] = v;
    __syncthreads();
    v = scratch[0];
    __syncthreads();
    return v;
}

// Eight consecutive weights as f32 (16-byte aligned for f16/bf16, 32 for f32).
__device__ __forceinline__ void load8(const float* p, float* w) {
    const float4 a = *reinterpret_cast<const float4*>(p);
    const float4 b = *reinterpret_cast<const float4*>(p + 4);
    w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
    w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
}
__device__ __forceinline__ void load8(const __half* p, float* w) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const __half2* h = reinterpret_cast<const __half2*>(&u);
    for (int i = 0; i < 4; i++) {
        const float2 f = __half22float2(h[i]);
        w[2 * i] = f.x; w[2 * i + 1] = f.y;
    }
}
__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* w) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
    for (int i = 0; i < 4; i++) {
        const float2 f = __bfloat1622float2(h[i]);
        w[2 * i] = f.x; w[2 * i + 1] = f.y;
    }
}

// acc[r] += the chunk of 8 weights at kk times row r's inputs there, in order.
__device__ __forceinline__ void matvec_chunk(const float* __restrict__ x, int k, int kk, int rows,
                                             const float* wv, float* acc) {
#pragma unroll
    for (int r = 0; r < MATVEC_ROWS; r++) {
        if (r < rows) {
            float xv[8];
            load8(x + (size_t)r * k + kk, xv);
            float s = acc[r];
#pragma unroll
            for (int i = 0; i < 8; i++) s = fmaf(wv[i], xv[i], s);
            acc[r] = s;
        }
    }
}

// y[r, o] = sum_k x[r, k] * W[o, k] for up to MATVEC_ROWS rows: one warp per
// output reads W's row once for all rows. Lane l sums k in chunks of 8 at
// l*8, l*8 + 256, ...; the warp then adds its lanes in a fixed order. k must
// be a multiple of 8 (checked at load).
template <typename T>
__device__ void matvec(const T* __restrict__ w, const float* __restrict__ x,
                       float* __restrict__ y, int n_out, int k, int rows) {
    const int lane = threadIdx.x % WARP;
    const int o = blockIdx.x * MATVEC_WARPS + threadIdx.x / WARP;
    if (o >= n_out) return;
    float acc[MATVEC_ROWS];
#pragma unroll
    for (int r = 0; r < MATVEC_ROWS; r++) acc[r] = 0.0f;
    const T* wr = w + (size_t)o * k;
    // Each lane's chunks in ascending order; MATVEC_UNROLL of them are
    // loaded before any is used, so several loads per lane are in flight.
    int kk = lane * 8;
    for (; kk + (MATVEC_UNROLL - 1) * WARP * 8 < k; kk += MATVEC_UNROLL * WARP * 8) {
        float wv[MATVEC_UNROLL][8];
#pragma unroll
        for (int u = 0; u < MATVEC_UNROLL; u++) load8(wr + kk + u * WARP * 8, wv[u]);
#pragma unroll
        for (int u = 0; u < MATVEC_UNROLL; u++) matvec_chunk(x, k, kk + u * WARP * 8, rows, wv[u], acc);
    }
    for (; kk < k; kk += WARP * 8) {
        float wv[8];
        load8(wr + kk, wv);
        matvec_chunk(x, k, kk, rows, wv, acc);
    }
#pragma unroll
    for (int r = 0; r < MATVEC_ROWS; r++) {
        if (r < rows) {
            const float s = warp_sum(acc[r]);
            if (lane == 0) y[(size_t)r * n_out + o] = s;
        }
    }
}

extern "C" __global__ void matvec_f32(const float* w, const float* x, float* y, int n_out, int k, int rows) {
    matvec(w, x, y, n_out, k, rows);
}
extern "C" __global__ void matvec_f16(const __half* w, const float* x, float* y, int n_out, int k, int rows) {
    matvec(w, x, y, n_out, k, rows);
}
extern "C" __global__ void matvec_bf16(const __nv_bfloat16* w, const float* x, float* y, int n_out, int k, int rows) {
    matvec(w, x, y, n_out, k, rows);
}

// f32 activations in the weights' dtype, for cuBLAS products of a long
// prompt, whose operands must share a dtype: `low == 0` gives the rounded
// value (the high part), `low == 1` what that rounding left (the low part),
// so that W·x = W·high + W·low to about 2^-16 instead of 2^-8.
extern "C" __global__ void f32_to_f16(const float* x, __half* y, int n, int low) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const __half hi = __float2half_rn(x[i]);
        y[i] = low ? __float2half_rn(x[i] - __half2float(hi)) : hi;
    }
}
extern "C" __global__ void f32_to_bf16(const float* x, __nv_bfloat16* y, int n, int low) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const __nv_bfloat16 hi = __float2bfloat16_rn(x[i]);
        y[i] = low ? __float2bfloat16_rn(x[i] - __bfloat162float(hi)) : hi;
    }
}

// out[r, :] = table[tokens[r], :] as f32. One block per row.
template <typename T>
__device__ void embed(const T* table, const unsigned* tokens, float* out, int hidden) {
    const T* src = table + (size_t)tokens[blockIdx.x] * hidden;
    float* dst = out + (size_t)blockIdx.x * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = to_f32(src[i]);
}
extern "C" __global__ void embed_f32(const float* t, const unsigned* tok, float* out, int h) { embed(t, tok, out, h); }
extern "C" __global__ void embed_f16(const __half* t, const unsigned* tok, float* out, int h) { embed(t, tok, out, h); }
extern "C" __global__ void embed_bf16(const __nv_bfloat16* t, const unsigned* tok, float* out, int h) { embed(t, tok, out, h); }

// Hugging Face LlamaRMSNorm: out = w * (x / sqrt(mean(x^2) + eps)). One block per row.
extern "C" __global__ void rms_norm(const float* x, const float* w, float* out, int hidden, float eps) {
    __shared__ float scratch[WARP];
    const float* xr = x + (size_t)blockIdx.x * hidden;
    float* o = out + (size_t)blockIdx.x * hidden;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
    ss = block_reduce(ss, scratch, Sum(), 0.0f);
    const float inv = 1.0f / sqrtf(ss / (float)hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = w[i] * (xr[i] * inv);
}

// Rotary embedding ("rotate_half" layout: pairs i and i + head_dim/2) of a
// row's query and key heads, and the row's K and V stored into the layer's
// cache at its position. qkv: rows of `stride` floats, each [q heads | k
// heads | v heads] (the fused QKV product); row r is position pos0 + r.
// Queries are rotated in place. One block per row.
extern "C" __global__ void rope_store(float* qkv, float* kc, float* vc, const float* inv_freq,
                                      int heads, int kv_heads, int head_dim, int pos0, int stride) {
    const int half = head_dim / 2;
    const int kv_dim = kv_heads * head_dim;
    float* q = qkv + (size_t)blockIdx.x * stride;
    const float* k = q + heads * head_dim;
    const float* v = k + kv_dim;
    float* kd = kc + (size_t)(pos0 + blockIdx.x) * kv_dim;
    float* vd = vc + (size_t)(pos0 + blockIdx.x) * kv_dim;
    const float pos = (float)(pos0 + blockIdx.x);
    for (int j = threadIdx.x; j < (heads + kv_heads) * half; j += blockDim.x) {
        const int h = j / half, i = j % half;
        float s, c;
        sincosf(pos * inv_freq[i], &s, &c);
        if (h < heads) {
            float* hp = q + h * head_dim;
            const float a = hp[i], b = hp[i + half];
            hp[i] = a * c - b * s;
            hp[i + half] = b * c + a * s;
        } else {
            const int o = (h - heads) * head_dim;
            const float a = k[o + i], b = k[o + i + half];
            kd[o + i] = a * c - b * s;
            kd[o + i + half] = b * c + a * s;
        }
    }
    for (int d = threadIdx.x; d < kv_dim; d += blockDim.x) vd[d] = v[d];
}

// Causal attention, split over the context ("flash-decoding"), so that a
// single decode row still spreads over many blocks and no context length is
// limited by shared memory. Positions are cut into chunks of `chunk` (at
// most ATTN_MAX_CHUNK) at fixed absolute boundaries, so how a row is split
// depends only on its own position: its result is the same whatever rows
// share the launch.
//
// Pass 1, attention_chunk: `rows` new queries (positions pos0..; row r's
// query heads at q + r * q_stride) over a layer's cache (position-major,
// `kv_dim` floats a position), which already holds their K/V. Grid: (query
// heads, rows, max_chunks); block: a multiple of 32 threads. A row with one
// chunk writes its output; otherwise each chunk writes to `part` (per row,
// head and chunk: head_dim unnormalised sums, then the chunk's max score and
// its sum of exp) for attention_combine.
#define ATTN_MAX_CHUNK 256
extern "C" __global__ void attention_chunk(const float* q, const float* kc, const float* vc,
                                           float* out, float* part, int heads, int kv_heads,
                                           int head_dim, int pos0, float scale, int q_stride,
                                           int chunk, int max_chunks) {
    __shared__ float scratch[WARP];
    __shared__ float p[ATTN_MAX_CHUNK];
    const int h = blockIdx.x, r = blockIdx.y, c = blockIdx.z;
    const int n = pos0 + r + 1;
    const int chunks = (n + chunk - 1) / chunk;
    if (c >= chunks) return;
    const int t0 = c * chunk, len = min(chunk, n - t0);
    const int kv_dim = kv_heads * head_dim;
    const int kvh = h / (heads / kv_heads);
    const float* qv = q + (size_t)r * q_stride + h * head_dim;
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
    // Scores: a warp per position, lanes over the head's dimensions.
    for (int t = warp; t < len; t += warps) {
        const float* kt = kc + (size_t)(t0 + t) * kv_dim + kvh * head_dim;
        float s = 0.0f;
        for (int d = lane; d < head_dim; d += WARP) s = fmaf(qv[d], kt[d], s);
        s = warp_sum(s);
        if (lane == 0) p[t] = s * scale;
    }
    __syncthreads();
    float m = NEG_INF;
    for (int t = threadIdx.x; t < len; t += blockDim.x) m = fmaxf(m, p[t]);
    m = block_reduce(m, scratch, Max(), NEG_INF);
    float sum = 0.0f;
    for (int t = threadIdx.x; t < len; t += blockDim.x) {
        const float e = expf(p[t] - m);
        p[t] = e;
        sum += e;
    }
    sum = block_reduce(sum, scratch, Sum(), 0.0f);
    // Weighted sum of V in order of position, a thread per dimension.
    const size_t slot = ((size_t)r * heads + h) * max_chunks + c;
    float* pc = part + slot * (head_dim + 2);
    float* o = out + ((size_t)r * heads + h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        const float* vd = vc + (size_t)t0 * kv_dim + kvh * head_dim + d;
        float acc = 0.0f;
        for (int t = 0; t < len; t++) acc = fmaf(p[t], vd[(size_t)t * kv_dim], acc);
        if (chunks == 1) {
            o[d] = acc * (1.0f / sum);
        } else {
            pc[d] = acc;
        }
    }
    if (chunks > 1 && threadIdx.x == 0) {
        pc[head_dim] = m;
        pc[head_dim + 1] = sum;
    }
}

// Pass 2: merge the chunks of every row that has more than one, in chunk
// order. Grid: (query heads, rows); block: any width.
extern "C" __global__ void attention_combine(const float* part, float* out, int heads,
                                             int head_dim, int pos0, int chunk, int max_chunks) {
    const int h = blockIdx.x, r = blockIdx.y;
    const int n = pos0 + r + 1;
    const int chunks = (n + chunk - 1) / chunk;
    if (chunks == 1) return;
    const int stride = head_dim + 2;
    const float* pr = part + ((size_t)r * heads + h) * max_chunks * stride;
    float mx = NEG_INF;
    for (int c = 0; c < chunks; c++) mx = fmaxf(mx, pr[c * stride + head_dim]);
    float total = 0.0f;
    for (int c = 0; c < chunks; c++)
        total = fmaf(pr[c * stride + head_dim + 1], expf(pr[c * stride + head_dim] - mx), total);
    const float inv = 1.0f / total;
    float* o = out + ((size_t)r * heads + h) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float acc = 0.0f;
        for (int c = 0; c < chunks; c++)
            acc = fmaf(pr[c * stride + d], expf(pr[c * stride + head_dim] - mx), acc);
        o[d] = acc * inv;
    }
}

// out = silu(gate) * up, from the fused gate/up product: rows of
// [gate (inter) | up (inter)]; out: rows x inter.
extern "C" __global__ void swiglu(const float* gate_up, float* out, int inter, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        const int r = i / inter, c = i % inter;
        const float g = gate_up[(size_t)r * 2 * inter + c];
        const float u = gate_up[(size_t)r * 2 * inter + inter + c];
        out[i] = g / (1.0f + expf(-g)) * u;
    }
}

// x += y.
extern "C" __global__ void add(float* x, const float* y, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

// The pick of each row of logits (rows x vocab), by the row's rule
// rules[4r..4r+4] = (temperature, top_k, top_p, u): with temperature 0 the
// argmax; otherwise the token drawn with the uniform u from softmax(l / T)
// cut to the top-k and then to the top-p nucleus (the first index, in index
// order, whose cumulative kept weight exceeds u times the kept mass). Out:
// out[r] the chosen token, out[rows + r] the argmax (the first index of the
// largest value, as the CPU's argmax), out[2 rows + r] the bits of the
// argmax's probability at temperature 1. One block of PICK_THREADS per row;
// only these 12 bytes a row go to the host.
//
// The cut keeps every weight at or above a threshold found by binary search
// over the threshold's bits (the largest that still keeps k ids, or top_p of
// the mass), so ids tied at the cut are all kept, where the CPU keeps them
// in index order up to the cut.
#define PICK_THREADS 1024
__device__ __forceinline__ float pick_weight(float l, float mx, float inv) {
    return expf((l - mx) * inv);
}
extern "C" __global__ void pick_rows(const float* logits, const float* rules, unsigned* out,
                                     int vocab, int rows) {
    __shared__ float best_v[PICK_THREADS];
    __shared__ int best_i[PICK_THREADS];
    __shared__ float scratch[WARP];
    __shared__ int found, last_kept;
    const int r = blockIdx.x, tid = threadIdx.x;
    const float* row = logits + (size_t)r * vocab;
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for (int i = tid; i < vocab; i += PICK_THREADS) {
        const float v = row[i];
        if (v > bv) { bv = v; bi = i; }
    }
    best_v[tid] = bv;
    best_i[tid] = bi;
    __syncthreads();
    for (int s = PICK_THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) {
            const float v = best_v[tid + s];
            const int i = best_i[tid + s];
            if (v > best_v[tid] || (v == best_v[tid] && i < best_i[tid])) {
                best_v[tid] = v;
                best_i[tid] = i;
            }
        }
        __syncthreads();
    }
    const float mx = best_v[0];
    const unsigned am = best_i[0] == 0x7fffffff ? 0u : (unsigned)best_i[0];
    __syncthreads();
    float sum = 0.0f;
    for (int i = tid; i < vocab; i += PICK_THREADS) sum += expf(row[i] - mx);
    sum = block_reduce(sum, scratch, Sum(), 0.0f);

    const float temp = rules[4 * r], top_p = rules[4 * r + 2], u = rules[4 * r + 3];
    const int top_k = (int)rules[4 * r + 1];
    unsigned token = am;
    if (temp > 0.0f) {
        const float inv = 1.0f / temp;
        float z = 0.0f;
        for (int i = tid; i < vocab; i += PICK_THREADS) z += pick_weight(row[i], mx, inv);
        z = block_reduce(z, scratch, Sum(), 0.0f);
        float tau = 0.0f;  // kept: weights >= tau
        if (top_k > 0 && top_k < vocab) {
            unsigned lo = 0u, hi = 0x3f800000u;  // weights lie in [0, 1]
            while (lo < hi) {
                const unsigned mid = lo + (hi - lo + 1u) / 2u;
                const float t = __uint_as_float(mid);
                float c = 0.0f;
                for (int i = tid; i < vocab; i += PICK_THREADS)
                    c += pick_weight(row[i], mx, inv) >= t ? 1.0f : 0.0f;
                c = block_reduce(c, scratch, Sum(), 0.0f);
                if (c >= (float)top_k) lo = mid; else hi = mid - 1u;
            }
            tau = __uint_as_float(lo);
        }
        if (top_p < 1.0f) {
            unsigned lo = 0u, hi = 0x3f800000u;
            while (lo < hi) {
                const unsigned mid = lo + (hi - lo + 1u) / 2u;
                const float t = __uint_as_float(mid);
                float m = 0.0f;
                for (int i = tid; i < vocab; i += PICK_THREADS) {
                    const float w = pick_weight(row[i], mx, inv);
                    m += w >= t ? w : 0.0f;
                }
                m = block_reduce(m, scratch, Sum(), 0.0f);
                if (m >= top_p * z) lo = mid; else hi = mid - 1u;
            }
            tau = fmaxf(tau, __uint_as_float(lo));
        }
        // Each thread a contiguous run of ids; prefix sums of the runs' kept
        // weight in thread order (best_v is free again), then the thread
        // whose run holds the draw walks it.
        const int run = (vocab + PICK_THREADS - 1) / PICK_THREADS;
        const int begin = min(tid * run, vocab), end = min(begin + run, vocab);
        float local = 0.0f;
        int last = -1;
        for (int i = begin; i < end; i++) {
            const float w = pick_weight(row[i], mx, inv);
            if (w >= tau && w > 0.0f) { local += w; last = i; }
        }
        if (tid == 0) { found = 0x7fffffff; last_kept = -1; }
        best_v[tid] = local;
        __syncthreads();
        if (tid == 0) {
            float acc = 0.0f;
            for (int t = 0; t < PICK_THREADS; t++) {
                const float v = best_v[t];
                best_v[t] = acc;
                acc += v;
            }
            scratch[0] = acc;
        }
        if (last >= 0) atomicMax(&last_kept, last);
        __syncthreads();
        const float target = u * scratch[0], before = best_v[tid];
        if (local > 0.0f && target >= before && target < before + local) {
            // Summing again in this order may round short of `target`: then
            // the draw is this run's last kept id, not another run's.
            float acc = before;
            int pick = last;
            for (int i = begin; i < end; i++) {
                const float w = pick_weight(row[i], mx, inv);
                if (w >= tau && w > 0.0f) {
                    acc += w;
                    if (target < acc) { pick = i; break; }
                }
            }
            atomicMin(&found, pick);
        }
        __syncthreads();
        token = found != 0x7fffffff ? (unsigned)found : (last_kept >= 0 ? (unsigned)last_kept : am);
    }
    if (tid == 0) {
        out[r] = token;
        out[rows + r] = am;
        out[2 * rows + r] = __float_as_uint(1.0f / sum);
    }
}
