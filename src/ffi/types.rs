//! Options and output structs. Each starts with `struct_size`; fields are only
//! ever appended, never reordered.

use super::error::{lsk_result, FfiError, FfiResult};
use crate::sampling::SamplingParams;
use std::ffi::c_char;

/// Structs versioned by their leading `struct_size` (the ABI rules are in
/// the header's preamble): fields are only ever appended; the library reads
/// and writes the first `min(struct_size, its own size)` bytes, so a caller
/// built against an older header keeps working, and fields its struct
/// lacks take their defaults.
pub(crate) trait Versioned: Copy {
    /// The struct's size in ABI 1.0, the smallest `struct_size` accepted.
    const MIN_SIZE: usize;
    fn defaults() -> Self;
}

/// The caller's `struct_size` at `ptr`, checked against the 1.0 size.
unsafe fn caller_size<T: Versioned>(ptr: *const T, what: &str) -> FfiResult<usize> {
    // SAFETY: a non-NULL struct pointer points to a struct that starts with
    // `struct_size` (documented); read that field alone first.
    let size = unsafe { (ptr as *const usize).read_unaligned() };
    if size < T::MIN_SIZE {
        return Err(FfiError::new(
            lsk_result::LSK_ERR_STRUCT_SIZE,
            format!(
                "{what}.struct_size is {size}, expected at least {} (set it with its lsk_*_init)",
                T::MIN_SIZE
            ),
        ));
    }
    Ok(size)
}

/// Read an options struct: NULL gives the defaults; otherwise the caller's
/// `min(struct_size, ours)` bytes over the defaults.
pub(crate) unsafe fn read_options<T: Versioned>(ptr: *const T, what: &str) -> FfiResult<T> {
    if ptr.is_null() {
        return Ok(T::defaults());
    }
    let size = unsafe { caller_size(ptr, what) }?;
    let mut v = T::defaults();
    let n = size.min(std::mem::size_of::<T>());
    // SAFETY: the caller's struct holds `size >= n` readable bytes, ours `n`.
    unsafe { std::ptr::copy_nonoverlapping(ptr as *const u8, &mut v as *mut T as *mut u8, n) };
    set_size(&mut v, std::mem::size_of::<T>());
    Ok(v)
}

/// Check an output struct that may be NULL before the work whose result
/// it receives: a bad `struct_size` then fails before anything happens.
pub(crate) unsafe fn check_output<T: Versioned>(ptr: *mut T, what: &str) -> FfiResult {
    if !ptr.is_null() {
        unsafe { caller_size(ptr as *const T, what) }?;
    }
    Ok(())
}

/// Write an output struct: the first `min(struct_size, ours)` bytes of `v`,
/// keeping the caller's `struct_size`.
pub(crate) unsafe fn write_output<T: Versioned>(ptr: *mut T, mut v: T, what: &str) -> FfiResult {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    let size = unsafe { caller_size(ptr, what) }?;
    set_size(&mut v, size);
    let n = size.min(std::mem::size_of::<T>());
    // SAFETY: the caller's struct holds `size >= n` writable bytes (documented).
    unsafe { std::ptr::copy_nonoverlapping(&v as *const T as *const u8, ptr as *mut u8, n) };
    Ok(())
}

fn set_size<T: Versioned>(v: &mut T, size: usize) {
    // SAFETY: every Versioned struct is repr(C) with `struct_size: usize` first.
    unsafe { *(v as *mut T as *mut usize) = size };
}

/// `versioned!(type, defaults, size in ABI 1.0)`. The 1.0 size never
/// changes; `tests/abi.rs` checks it against the frozen 1.0 header.
macro_rules! versioned {
    ($t:ty, $defaults:expr, $min:expr) => {
        impl Versioned for $t {
            const MIN_SIZE: usize = $min;
            fn defaults() -> Self {
                $defaults
            }
        }
    };
}
pub(crate) use versioned;

/// Which device a model runs on.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum lsk_device {
    LSK_DEVICE_CPU = 0,
    LSK_DEVICE_CUDA = 1,
}

/// Options for `lsk_model_load`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lsk_model_options {
    pub struct_size: usize,
    /// An `lsk_device` value (default `LSK_DEVICE_CPU`).
    pub device: u32,
    /// Device ordinal for GPU devices (default 0).
    pub device_index: u32,
    /// Longest context a session may ask for; 0 (default) = the model's
    /// context length. Added in 0.2 (older callers get the default).
    pub max_context: u32,
    /// KV-cache bytes all open sessions of this model may reserve together
    /// (each reserves its context length's worth when created); 0 (default)
    /// = unlimited. Exceeding it fails `lsk_session_new` with
    /// `LSK_ERR_RESOURCE_LIMIT`.
    pub kv_budget_bytes: u64,
    /// An `lsk_quantize` value (default `LSK_QUANTIZE_NONE`). Appended after
    /// `kv_budget_bytes` (older callers get the default).
    pub quantize: u32,
    /// An `lsk_kv_dtype` value (default `LSK_KV_F32`; CPU only). Appended
    /// after `quantize` (older callers get the default).
    pub kv_dtype: u32,
    /// CPU worker threads of this model's own pool; 0 (default) shares the
    /// process's pool (`RAYON_NUM_THREADS`, default one per core); at most
    /// 1024. Added in 1.1.
    pub threads: u32,
    /// Tokens the draft head scores: drafts choose among the K most
    /// frequent (`token_frequencies.json` beside the checkpoint, else the
    /// lowest ids) and the session's own recent tokens; verification keeps
    /// the full head, so greedy output is unchanged. 0 (default): the full
    /// head; `LSK_AUTO` (since 1.3; 1.2 takes it as the full head): chosen
    /// from the model's shape (vocab / 8 where the exit head costs at least
    /// half a layer, else the full head). Added in 1.2.
    pub draft_shortlist: u32,
}
versioned!(
    lsk_model_options,
    lsk_model_options {
        struct_size: std::mem::size_of::<Self>(),
        device: 0,
        device_index: 0,
        max_context: 0,
        kv_budget_bytes: 0,
        quantize: 0,
        kv_dtype: 0,
        threads: 0,
        draft_shortlist: 0,
    },
    // 1.0 ended before the fields added in 1.1.
    std::mem::offset_of!(lsk_model_options, threads)
);

/// How tokens are chosen. `temperature == 0` is greedy.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lsk_sampling {
    pub struct_size: usize,
    /// 0 (default) is greedy.
    pub temperature: f32,
    /// 0 (default) disables top-k.
    pub top_k: u32,
    /// 1.0 (default) disables top-p; must be in (0, 1].
    pub top_p: f32,
    /// Seed of the session's random generator for this call (generate) or,
    /// for step/draft/verify, ignored: they use the session's generator.
    pub seed: u64,
}
versioned!(
    lsk_sampling,
    lsk_sampling {
        struct_size: std::mem::size_of::<Self>(),
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0
    },
    std::mem::size_of::<lsk_sampling>()
);

impl lsk_sampling {
    pub(crate) fn params(&self) -> FfiResult<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k as usize,
            top_p: self.top_p,
            seed: self.seed,
        };
        p.validate()?;
        Ok(p)
    }
}

/// Options for `lsk_session_new`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lsk_session_options {
    pub struct_size: usize,
    /// Maximum positions the session holds; 0 (default) = the model's context length.
    pub context_length: u32,
    /// Seed of the session's random generator (used by step/draft/verify sampling).
    pub seed: u64,
}
versioned!(
    lsk_session_options,
    lsk_session_options {
        struct_size: std::mem::size_of::<Self>(),
        context_length: 0,
        seed: 0
    },
    std::mem::size_of::<lsk_session_options>()
);

/// Decoding modes of `lsk_generate_options.mode`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum lsk_mode {
    LSK_MODE_FULL = 0,
    LSK_MODE_EARLY_EXIT = 1,
    LSK_MODE_SELF_SPECULATIVE = 2,
}

/// `lsk_generate_options.exit_layer` / `.draft_len` value (with
/// `LSK_MODE_SELF_SPECULATIVE`): choose it every round from measured layer
/// costs and online acceptance estimates. Greedy output stays identical to
/// full depth. `lsk_session_choices` reports what was chosen.
pub const LSK_AUTO: u32 = 0xFFFF_FFFF;

/// Consecutive rounds of the last `lsk_session_generate` that used one (E, d).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lsk_choice_span {
    /// Index of the first generated token these rounds produced.
    pub first_token: u32,
    /// The number of layers with `draft_len == 0`: full-depth steps.
    pub exit_layer: u32,
    /// 0: plain steps without drafting.
    pub draft_len: u32,
    pub rounds: u64,
    /// Tokens these rounds produced.
    pub tokens: u64,
}

/// Options for `lsk_session_generate`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lsk_generate_options {
    pub struct_size: usize,
    /// Token budget (default 64).
    pub max_new_tokens: u32,
    /// An `lsk_mode` value (default `LSK_MODE_FULL`).
    pub mode: u32,
    /// Exit layer E for early-exit and self-speculative modes; 0 (default) =
    /// L/2; `LSK_AUTO` (self-speculative) = chosen every round.
    pub exit_layer: u32,
    /// Draft length d for self-speculative mode (default 4); `LSK_AUTO` =
    /// chosen every round.
    pub draft_len: u32,
    /// How tokens are chosen; NULL (default) is greedy. A pointer, so that
    /// `lsk_sampling` can grow on its own.
    pub sampling: *const lsk_sampling,
    /// Non-zero: keep generating past EOS ids.
    pub ignore_eos: u8,
    /// `n_stop_strings` NUL-terminated UTF-8 strings; generation stops when the
    /// text contains one (it is not emitted). May be NULL when the count is 0.
    pub stop_strings: *const *const c_char,
    pub n_stop_strings: usize,
    /// Self-speculative: stop drafting when the draft's top probability is below
    /// this (0, the default, disables).
    pub confidence_threshold: f32,
}
versioned!(
    lsk_generate_options,
    lsk_generate_options {
        struct_size: std::mem::size_of::<Self>(),
        max_new_tokens: 64,
        mode: 0,
        exit_layer: 0,
        draft_len: crate::generate::Mode::DEFAULT_DRAFT_LEN as u32,
        sampling: std::ptr::null(),
        ignore_eos: 0,
        stop_strings: std::ptr::null(),
        n_stop_strings: 0,
        confidence_threshold: 0.0,
    },
    std::mem::size_of::<lsk_generate_options>()
);

/// `lsk_model_options.quantize` values.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum lsk_quantize {
    /// Weights as stored.
    LSK_QUANTIZE_NONE = 0,
    /// int8 products: weights per output channel, inputs per block of 32
    /// columns (llama.cpp's q8_0 scheme).
    LSK_QUANTIZE_INT8 = 1,
    /// bf16 matrix products: bf16 weights and inputs, f32 sums (fastest
    /// multi-row products on CPUs with AMX or AVX512_BF16). With AMX,
    /// attention runs on it too, in bf16 with f32 sums, over a bf16 K/V
    /// cache whatever `kv_dtype` says.
    LSK_QUANTIZE_BF16 = 2,
}

/// `lsk_model_options.kv_dtype` values.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum lsk_kv_dtype {
    /// f32 K/V cache.
    LSK_KV_F32 = 0,
    /// bf16 K/V cache: half the memory per position (CPU engine; what
    /// `LSK_QUANTIZE_BF16` holds on CPUs with AMX either way).
    LSK_KV_BF16 = 1,
}

/// Storage dtypes reported by `lsk_model_info`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum lsk_dtype {
    LSK_DTYPE_F32 = 0,
    LSK_DTYPE_BF16 = 1,
    LSK_DTYPE_F16 = 2,
}

/// Maximum EOS ids reported by `lsk_model_info`.
pub const LSK_MAX_EOS_IDS: usize = 8;

/// What `lsk_model_info` reports. Set `struct_size` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lsk_model_summary {
    pub struct_size: usize,
    pub n_layers: u32,
    pub vocab_size: u32,
    pub hidden_size: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub context_length: u32,
    /// -1 when the model has none.
    pub bos_token_id: i32,
    pub n_eos_token_ids: u32,
    pub eos_token_ids: [i32; LSK_MAX_EOS_IDS],
    /// An `lsk_dtype` value: how most weights are stored.
    pub dtype: u32,
}
versioned!(
    lsk_model_summary,
    lsk_model_summary {
        struct_size: std::mem::size_of::<Self>(),
        n_layers: 0,
        vocab_size: 0,
        hidden_size: 0,
        n_heads: 0,
        n_kv_heads: 0,
        context_length: 0,
        bos_token_id: -1,
        n_eos_token_ids: 0,
        eos_token_ids: [0; LSK_MAX_EOS_IDS],
        dtype: 0,
    },
    std::mem::size_of::<lsk_model_summary>()
);

/// Why `lsk_session_generate` stopped.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum lsk_stop_reason {
    LSK_STOP_MAX_TOKENS = 0,
    LSK_STOP_EOS = 1,
    LSK_STOP_STRING = 2,
    LSK_STOP_CALLBACK = 3,
    LSK_STOP_CONTEXT_FULL = 4,
}

/// What `lsk_session_generate` reports. Set `struct_size` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lsk_generate_result {
    pub struct_size: usize,
    pub n_tokens: u32,
    /// An `lsk_stop_reason` value.
    pub stop_reason: u32,
    pub prompt_tokens: u32,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub drafted: u64,
    pub accepted: u64,
    pub rounds: u64,
    /// Seconds of the prompt's pass, which also yields the first token.
    /// Added in 1.1.
    pub prompt_seconds: f64,
    /// Prompt tokens per second of that pass (prefill speed). Added in 1.1.
    pub prompt_tokens_per_second: f64,
    /// Tokens after the first per second after the prompt (decode speed
    /// alone; 0 with fewer than two tokens). Added in 1.1.
    pub decode_tokens_per_second: f64,
}
versioned!(
    lsk_generate_result,
    lsk_generate_result {
        struct_size: std::mem::size_of::<Self>(),
        n_tokens: 0,
        stop_reason: 0,
        prompt_tokens: 0,
        seconds: 0.0,
        tokens_per_second: 0.0,
        drafted: 0,
        accepted: 0,
        rounds: 0,
        prompt_seconds: 0.0,
        prompt_tokens_per_second: 0.0,
        decode_tokens_per_second: 0.0,
    },
    // 1.0 ended before the fields added in 1.1.
    std::mem::offset_of!(lsk_generate_result, prompt_seconds)
);

/// Session counters for `lsk_session_stats`. Set `struct_size` before the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lsk_stats {
    pub struct_size: usize,
    /// Draft tokens proposed / accepted, and verify rounds, over the session's life.
    pub drafted: u64,
    pub accepted: u64,
    pub rounds: u64,
    pub draft_seconds: f64,
    pub verify_seconds: f64,
    /// Positions held by the first layer and by the last layer.
    pub shallow_len: u32,
    pub deep_len: u32,
    pub context_length: u32,
}
versioned!(
    lsk_stats,
    lsk_stats {
        struct_size: std::mem::size_of::<Self>(),
        drafted: 0,
        accepted: 0,
        rounds: 0,
        draft_seconds: 0.0,
        verify_seconds: 0.0,
        shallow_len: 0,
        deep_len: 0,
        context_length: 0,
    },
    std::mem::size_of::<lsk_stats>()
);

/// Called for every generated token with the text that became final with it
/// (`text` is NUL-terminated, `text_len` bytes, valid only during the call;
/// it may be empty). Return 0 to continue, non-zero to stop. The callback
/// must not unwind (no C++ exceptions, no Go panics) and must not call into
/// the same session (that call fails with `LSK_ERR_BUSY`).
pub type lsk_token_callback = Option<
    unsafe extern "C" fn(
        user_data: *mut std::ffi::c_void,
        token: i32,
        text: *const c_char,
        text_len: usize,
    ) -> i32,
>;

/// Write `T::defaults()` to a caller's struct.
/// Fill the caller's struct (of `struct_size` bytes, its `sizeof`) with the
/// defaults: `min(struct_size, ours)` bytes, `struct_size` recorded.
pub(crate) fn init<T: Versioned>(out: *mut T, struct_size: usize) -> lsk_result {
    if out.is_null() {
        return lsk_result::LSK_ERR_NULL_POINTER;
    }
    if struct_size < T::MIN_SIZE {
        return lsk_result::LSK_ERR_STRUCT_SIZE;
    }
    let mut v = T::defaults();
    set_size(&mut v, struct_size);
    let n = struct_size.min(std::mem::size_of::<T>());
    // SAFETY: the caller's struct holds `struct_size >= n` writable bytes (documented).
    unsafe { std::ptr::copy_nonoverlapping(&v as *const T as *const u8, out as *mut u8, n) };
    lsk_result::LSK_OK
}

// cbindgen reads these signatures, so they are written out, not macro-made.
// Each fills a struct with its defaults; pass `sizeof` of your struct:
// `lsk_generate_options o; lsk_generate_options_init(&o, sizeof o);`.

/// Fill `*out` with the defaults; `struct_size` is `sizeof *out`.
#[no_mangle]
pub extern "C" fn lsk_model_options_init(
    out: *mut lsk_model_options,
    struct_size: usize,
) -> lsk_result {
    init(out, struct_size)
}

/// Fill `*out` with the defaults; `struct_size` is `sizeof *out`.
#[no_mangle]
pub extern "C" fn lsk_sampling_init(out: *mut lsk_sampling, struct_size: usize) -> lsk_result {
    init(out, struct_size)
}

/// Fill `*out` with the defaults; `struct_size` is `sizeof *out`.
#[no_mangle]
pub extern "C" fn lsk_session_options_init(
    out: *mut lsk_session_options,
    struct_size: usize,
) -> lsk_result {
    init(out, struct_size)
}

/// Fill `*out` with the defaults; `struct_size` is `sizeof *out`.
#[no_mangle]
pub extern "C" fn lsk_generate_options_init(
    out: *mut lsk_generate_options,
    struct_size: usize,
) -> lsk_result {
    init(out, struct_size)
}

/// Fill `*out` with the defaults; `struct_size` is `sizeof *out`.
#[no_mangle]
pub extern "C" fn lsk_model_summary_init(
    out: *mut lsk_model_summary,
    struct_size: usize,
) -> lsk_result {
    init(out, struct_size)
}

/// Fill `*out` with the defaults; `struct_size` is `sizeof *out`.
#[no_mangle]
pub extern "C" fn lsk_generate_result_init(
    out: *mut lsk_generate_result,
    struct_size: usize,
) -> lsk_result {
    init(out, struct_size)
}

/// Fill `*out` with the defaults; `struct_size` is `sizeof *out`.
#[no_mangle]
pub extern "C" fn lsk_stats_init(out: *mut lsk_stats, struct_size: usize) -> lsk_result {
    init(out, struct_size)
}
