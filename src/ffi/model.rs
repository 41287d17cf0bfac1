//! Models: load, free, info, tokenize, detokenize.

use super::cast::{into_handle, release, share, ArcHandle};
use super::error::{boundary, lsk_error, lsk_result, FfiError, FfiResult};
use super::types::*;
use super::{c_str, need, put, slice, token_ids};
use crate::model::Model;
use crate::weights::DType;
use std::ffi::c_char;
use std::sync::Arc;

/// A loaded model (opaque). Thread-safe: share it across threads freely.
/// Sessions keep it alive, so it may be freed while sessions still use it.
pub struct lsk_model {
    _private: [u8; 0],
}

impl ArcHandle for lsk_model {
    type Rust = Model;
}

/// A reference to the model behind a handle, held for the call.
pub(crate) fn model_ref(m: *const lsk_model) -> FfiResult<Arc<Model>> {
    // SAFETY: a live handle from lsk_model_load (documented).
    unsafe { share(m, "model") }
}

/// Load a Hugging Face Llama checkpoint directory (`config.json`, safetensors,
/// `tokenizer.json`). `options` may be NULL. On success `*out` owns a new
/// model; free it with `lsk_model_free`.
#[no_mangle]
pub extern "C" fn lsk_model_load(
    path: *const c_char,
    options: *const lsk_model_options,
    out: *mut *mut lsk_model,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        // SAFETY: see each helper's contract.
        let path = unsafe { c_str(path, "path") }?;
        let opts = unsafe { read_options(options, "options") }?;
        need(out, "out")?;
        let device = match opts.device {
            0 => crate::Device::Cpu,
            1 => crate::Device::Cuda(opts.device_index as usize),
            d => return Err(FfiError::invalid(format!("unknown device {d}"))),
        };
        let quantize = match opts.quantize {
            0 => crate::engine::options::Quantize::None,
            1 => crate::engine::options::Quantize::Int8,
            2 => crate::engine::options::Quantize::Bf16,
            q => return Err(FfiError::invalid(format!("unknown quantize value {q}"))),
        };
        let kv_dtype = match opts.kv_dtype {
            0 => crate::engine::options::KvDtype::F32,
            1 => crate::engine::options::KvDtype::Bf16,
            k => return Err(FfiError::invalid(format!("unknown kv_dtype value {k}"))),
        };
        let limits = crate::model::LoadOptions {
            max_context: opts.max_context as usize,
            kv_budget_bytes: opts.kv_budget_bytes,
            quantize,
            device,
            kv_dtype,
            threads: opts.threads as usize,
            draft_shortlist: match opts.draft_shortlist {
                LSK_AUTO => crate::shortlist::AUTO,
                k => k as usize,
            },
        };
        let model = Model::load_with(path, &limits)?;
        unsafe { put(out, into_handle(model), "out") }
    })
}

/// Release the caller's reference. Sessions made from it stay valid. NULL is ignored.
#[no_mangle]
pub extern "C" fn lsk_model_free(model: *mut lsk_model) {
    // SAFETY: the caller's reference, freed once (documented).
    boundary(std::ptr::null_mut(), || {
        unsafe { release(model) };
        Ok(())
    });
}

/// Describe the model. Set `out->struct_size` first (`lsk_model_summary_init`).
#[no_mangle]
pub extern "C" fn lsk_model_info(
    model: *const lsk_model,
    out: *mut lsk_model_summary,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        let m = model_ref(model)?;
        let c = &m.config;
        let mut eos = [0i32; LSK_MAX_EOS_IDS];
        for (d, s) in eos.iter_mut().zip(&c.eos_token_ids) {
            *d = *s as i32;
        }
        let info = lsk_model_summary {
            struct_size: 0,
            n_layers: c.num_layers as u32,
            vocab_size: c.vocab_size as u32,
            hidden_size: c.hidden_size as u32,
            n_heads: c.num_heads as u32,
            n_kv_heads: c.num_kv_heads as u32,
            context_length: c.max_position_embeddings as u32,
            bos_token_id: c.bos_token_id.map_or(-1, |b| b as i32),
            n_eos_token_ids: c.eos_token_ids.len().min(LSK_MAX_EOS_IDS) as u32,
            eos_token_ids: eos,
            dtype: match m.dtype {
                DType::F32 => lsk_dtype::LSK_DTYPE_F32,
                DType::BF16 => lsk_dtype::LSK_DTYPE_BF16,
                DType::F16 => lsk_dtype::LSK_DTYPE_F16,
            } as u32,
        };
        unsafe { write_output(out, info, "out") }
    })
}

/// Forget what automatic (E, d) has learnt from this model's sessions (the
/// corrections of its cost predictions and the acceptance estimates new
/// sessions start from). Sessions open now keep their own estimates. For a
/// server whose tenants use one model for unlike text.
#[no_mangle]
pub extern "C" fn lsk_model_reset_policy(
    model: *const lsk_model,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        model_ref(model)?.policy_state().reset();
        Ok(())
    })
}

/// Encode `text_len` bytes of UTF-8 `text` into token ids. With
/// `add_special` non-zero the tokenizer's own special-token rules apply (e.g.
/// a BOS). `*n_tokens` receives the count. When `capacity` is too small the
/// call fails with `LSK_ERR_BUFFER_TOO_SMALL` and `*n_tokens` receives the
/// needed capacity (the one output written on that failure).
#[no_mangle]
pub extern "C" fn lsk_tokenize(
    model: *const lsk_model,
    text: *const c_char,
    text_len: usize,
    add_special: u8,
    tokens: *mut i32,
    capacity: usize,
    n_tokens: *mut usize,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        let m = model_ref(model)?;
        let bytes = unsafe { slice(text as *const u8, text_len, "text") }?;
        let text = std::str::from_utf8(bytes)
            .map_err(|_| FfiError::new(lsk_result::LSK_ERR_UTF8, "`text` is not valid UTF-8"))?;
        need(n_tokens, "n_tokens")?;
        if capacity > 0 {
            need(tokens, "tokens")?;
        }
        let ids = m.tokenizer.encode(text, add_special != 0)?;
        if ids.len() > capacity {
            unsafe { put(n_tokens, ids.len(), "n_tokens") }?;
            return Err(FfiError::new(
                lsk_result::LSK_ERR_BUFFER_TOO_SMALL,
                format!("{} tokens do not fit in a buffer of {capacity}", ids.len()),
            ));
        }
        for (i, &t) in ids.iter().enumerate() {
            // SAFETY: i < ids.len() <= capacity, and tokens is non-NULL when capacity > 0.
            unsafe { tokens.add(i).write(t as i32) };
        }
        unsafe { put(n_tokens, ids.len(), "n_tokens") }
    })
}

/// Decode `n` token ids into UTF-8 text, written NUL-terminated into `buf`
/// (`capacity` bytes including the NUL). `*len` receives the text length
/// without the NUL. With `skip_special` non-zero, special tokens are dropped.
/// When `capacity` is too small the call fails with
/// `LSK_ERR_BUFFER_TOO_SMALL` and `*len` receives the needed capacity
/// (text length + 1).
#[no_mangle]
pub extern "C" fn lsk_detokenize(
    model: *const lsk_model,
    ids: *const i32,
    n: usize,
    skip_special: u8,
    buf: *mut c_char,
    capacity: usize,
    len: *mut usize,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        let m = model_ref(model)?;
        let ids = token_ids(unsafe { slice(ids, n, "ids") }?, m.config.vocab_size)?;
        need(len, "len")?;
        if capacity > 0 {
            need(buf, "buf")?;
        }
        let text = m.tokenizer.decode(&ids, skip_special != 0)?;
        if text.len() + 1 > capacity {
            unsafe { put(len, text.len() + 1, "len") }?;
            return Err(FfiError::new(
                lsk_result::LSK_ERR_BUFFER_TOO_SMALL,
                format!(
                    "{} bytes of text (+1 for the NUL) do not fit in {capacity}",
                    text.len()
                ),
            ));
        }
        // SAFETY: buf has capacity >= text.len() + 1 bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buf as *mut u8, text.len());
            buf.add(text.len()).write(0);
        }
        unsafe { put(len, text.len(), "len") }
    })
}
