//! Batched stepping: several sessions of one model advance in one forward
//! pass per layer (continuous batching: any set of sessions, any call).

use super::error::{boundary, lsk_error, lsk_result, FfiError, FfiResult};
use super::session::{exit_or_full, lsk_session, Handle};
use super::types::*;
use super::{slice, token_ids};
use crate::sampling::sample;
use crate::session::{forward_batch, BatchItem, Logits};

/// Advance `n` sessions of one model together: session `i` takes
/// `n_tokens[i]` tokens from `tokens[i]` (a prompt, or the one token it
/// sampled last) through layers `0..exit_layers[i]` (`exit_layers` may be
/// NULL: full depth; 0 = full depth), and `next_tokens[i]` receives its next
/// token chosen with `sampling` (NULL = greedy) from the session's own random
/// stream. Every layer runs once over the rows of all sessions; each
/// session's result is bit-identical to stepping it alone.
///
/// A failure in one session (a bad token, a full context, the session busy in
/// another call, the same session twice) fails that session only:
/// `results[i]` receives each session's code and `next_tokens[i]` is -1 for
/// a failed one. The call itself returns `LSK_OK` unless its own arguments
/// are bad (NULL arrays, a bad `sampling`).
#[no_mangle]
pub extern "C" fn lsk_batch_step(
    sessions: *const *mut lsk_session,
    n: usize,
    tokens: *const *const i32,
    n_tokens: *const usize,
    exit_layers: *const u32,
    sampling: *const lsk_sampling,
    next_tokens: *mut i32,
    results: *mut lsk_result,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        let handles = unsafe { slice(sessions, n, "sessions") }?;
        let token_ptrs = unsafe { slice(tokens, n, "tokens") }?;
        let counts = unsafe { slice(n_tokens, n, "n_tokens") }?;
        let exits: Option<&[u32]> = if exit_layers.is_null() {
            None
        } else {
            Some(unsafe { slice(exit_layers, n, "exit_layers") }?)
        };
        if n > 0 && (next_tokens.is_null() || results.is_null()) {
            return Err(FfiError::null(if next_tokens.is_null() {
                "next_tokens"
            } else {
                "results"
            }));
        }
        let params = unsafe { read_options(sampling, "sampling") }?.params()?;
        // SAFETY: both output arrays hold `n` elements (documented).
        let next_out = unsafe { std::slice::from_raw_parts_mut(next_tokens, n) };
        let res_out = unsafe { std::slice::from_raw_parts_mut(results, n) };
        next_out.fill(-1);
        res_out.fill(lsk_result::LSK_OK);

        // Lock every session for the call; a busy or repeated one fails alone.
        let mut guards = Vec::with_capacity(n);
        let mut ids: Vec<Vec<u32>> = Vec::with_capacity(n);
        let mut index = Vec::with_capacity(n); // batch position -> caller position
        for (i, &h) in handles.iter().enumerate() {
            let fail = |code: lsk_result, out: &mut [lsk_result]| out[i] = code;
            // SAFETY: handles come from lsk_session_new and are not freed (documented).
            let Some(handle) = (unsafe { (h as *const Handle).as_ref() }) else {
                fail(lsk_result::LSK_ERR_NULL_POINTER, res_out);
                continue;
            };
            let Some(guard) = handle.state.try_lock() else {
                fail(lsk_result::LSK_ERR_BUSY, res_out);
                continue;
            };
            let vocab = guard.session.model().config.vocab_size;
            let parsed: FfiResult<Vec<u32>> =
                unsafe { slice(token_ptrs[i], counts[i], "tokens[i]") }
                    .and_then(|t| token_ids(t, vocab));
            match parsed {
                Ok(t) => {
                    guards.push(guard);
                    ids.push(t);
                    index.push(i);
                }
                Err(e) => fail(e.code, res_out),
            }
        }
        let mut items: Vec<BatchItem<'_>> = guards
            .iter_mut()
            .zip(&ids)
            .zip(&index)
            .map(|((g, t), &i)| {
                let l = g.session.model().num_layers();
                let exit = exits.map_or(l, |e| exit_or_full(e[i], l));
                BatchItem {
                    session: &mut g.session,
                    tokens: t,
                    exit,
                    logits: Logits::Last,
                }
            })
            .collect();
        let outcome = forward_batch(&mut items);
        drop(items);
        for (((g, r), &i), t) in guards.iter_mut().zip(outcome).zip(&index).zip(&ids) {
            match r {
                Ok(_) if !t.is_empty() => {
                    let st = &mut **g;
                    next_out[i] = sample(st.session.last_logits(), &params, &mut st.rng) as i32;
                }
                Ok(_) => {}
                Err(e) => res_out[i] = FfiError::from(e).code,
            }
        }
        Ok(())
    })
}
