//! Batching: several sessions of one model advance in one forward pass per
//! layer. `lsk_sessions_step` steps sessions directly; `lsk_batch_*` runs
//! whole generations (every mode) as a continuous batch that requests join
//! and leave between steps.

use super::cast::{into_handle, release, share, ArcHandle};
use super::error::{boundary, lsk_error, lsk_result, FfiError, FfiResult};
use super::model::{lsk_model, model_ref};
use super::session::{
    exit_or_full, generate_options, generate_result, handle, lsk_session, with_live, Callback,
    Handle,
};
use super::types::*;
use super::{need, need_list, put, put_list, slice, token_ids};
use crate::generate::{step_all, Generation};
use crate::model::Model;
use crate::sampling::sample;
use crate::session::{forward_batch, BatchItem, Logits, Session};
use parking_lot::Mutex;
use std::ffi::c_void;
use std::sync::Arc;

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
pub extern "C" fn lsk_sessions_step(
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

        // A reference to every session for the call, then a lock on each; a
        // busy, lent or repeated one fails alone.
        let owners: Vec<FfiResult<Arc<Handle>>> = handles.iter().map(|&h| handle(h)).collect();
        let mut guards = Vec::with_capacity(n);
        let mut ids: Vec<Vec<u32>> = Vec::with_capacity(n);
        let mut index = Vec::with_capacity(n); // batch position -> caller position
        for (i, owner) in owners.iter().enumerate() {
            let locked = owner.as_ref().map_err(|e| e.clone()).and_then(|h| {
                h.state
                    .try_lock()
                    .ok_or_else(|| FfiError::new(lsk_result::LSK_ERR_BUSY, "session busy"))
            });
            let mut guard = match locked {
                Ok(g) => g,
                Err(e) => {
                    res_out[i] = e.code;
                    continue;
                }
            };
            let parsed = with_live(&mut guard, |st| {
                let vocab = st.session.model().config.vocab_size;
                token_ids(
                    unsafe { slice(token_ptrs[i], counts[i], "tokens[i]") }?,
                    vocab,
                )
            });
            match parsed {
                Ok(t) => {
                    guards.push(guard);
                    ids.push(t);
                    index.push(i);
                }
                Err(e) => res_out[i] = e.code,
            }
        }
        let mut items: Vec<BatchItem<'_>> = guards
            .iter_mut()
            .zip(&ids)
            .zip(&index)
            .map(|((g, t), &i)| {
                let session = g.session.as_mut().expect("checked by with_live");
                let l = session.model().num_layers();
                let exit = exits.map_or(l, |e| exit_or_full(e[i], l));
                BatchItem {
                    session,
                    tokens: t,
                    exit,
                    logits: Logits::Last,
                    // Callers may read the logits after a batched step.
                    pick: None,
                }
            })
            .collect();
        let outcome = forward_batch(&mut items);
        drop(items);
        for (((g, r), &i), t) in guards.iter_mut().zip(outcome).zip(&index).zip(&ids) {
            match r {
                Ok(_) if !t.is_empty() => {
                    let st = &mut **g;
                    let s = st.session.as_ref().expect("checked by with_live");
                    next_out[i] = sample(s.last_logits(), &params, &mut st.round.rng) as i32;
                }
                Ok(_) => {}
                Err(e) => res_out[i] = FfiError::from(e).code,
            }
        }
        Ok(())
    })
}

/// A continuous batch of generations over one model (opaque).
pub struct lsk_batch {
    _private: [u8; 0],
}

/// A generation in a batch, running on a session lent by its handle.
struct Running {
    id: u64,
    /// The session's handle: a reference, so the handle outlives the loan
    /// even when its caller frees it meanwhile.
    owner: Arc<Handle>,
    gen: Generation<'static, crate::engine::backend::Backend, Session>,
}

/// How a generation ended, kept until `lsk_batch_result` collects it.
struct Finished {
    id: u64,
    result: lsk_generate_result,
    error: Option<(lsk_result, String)>,
}

struct Batch {
    model: Arc<Model>,
    running: Vec<Running>,
    finished: Vec<Finished>,
    next_id: u64,
}

impl Batch {
    /// End generation `k`: give the session back to its handle, keep the outcome.
    fn retire(&mut self, k: usize) {
        let r = self.running.swap_remove(k);
        let (session, out) = r.gen.finish_with_session();
        {
            let mut st = r.owner.state.lock();
            st.choices = out
                .as_ref()
                .map(|o| o.stats.choices.clone())
                .unwrap_or_default();
            st.session = Some(session);
        }
        let (result, error) = match out {
            Ok(o) => (generate_result(&o), None),
            Err(e) => {
                let e = FfiError::from(e);
                (
                    lsk_generate_result {
                        struct_size: 0,
                        ..lsk_generate_result::defaults()
                    },
                    Some((e.code, e.message)),
                )
            }
        };
        self.finished.push(Finished {
            id: r.id,
            result,
            error,
        });
    }
}

impl Drop for Batch {
    /// The last reference is gone: running generations stop and their
    /// sessions return to their handles.
    fn drop(&mut self) {
        while !self.running.is_empty() {
            self.running[0].gen.cancel();
            self.retire(0);
        }
    }
}

pub(crate) struct BatchHandle {
    state: Mutex<Batch>,
}

// SAFETY: a batch's only non-Send parts are its generations' C callbacks and
// `user_data`, which the API documents as called from whichever thread calls
// `lsk_batch_step` (and `lsk_batch_free`, which may end generations); the
// mutex makes those calls one at a time. Everything else is Send.
unsafe impl Send for Batch {}

impl ArcHandle for lsk_batch {
    type Rust = BatchHandle;
}

fn with_batch<T>(b: *mut lsk_batch, f: impl FnOnce(&mut Batch) -> FfiResult<T>) -> FfiResult<T> {
    // SAFETY: a live handle from lsk_batch_new (documented).
    let h = unsafe { share(b, "batch") }?;
    let mut guard = h.state.try_lock().ok_or_else(|| {
        FfiError::new(
            lsk_result::LSK_ERR_BUSY,
            "the batch is in use by another call",
        )
    })?;
    f(&mut guard)
}

/// A new, empty batch for generations on sessions of `model`. Free with
/// `lsk_batch_free`.
#[no_mangle]
pub extern "C" fn lsk_batch_new(
    model: *const lsk_model,
    out: *mut *mut lsk_batch,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        let m = model_ref(model)?;
        need(out, "out")?;
        let b = Arc::new(BatchHandle {
            state: Mutex::new(Batch {
                model: m,
                running: Vec::new(),
                finished: Vec::new(),
                next_id: 1,
            }),
        });
        unsafe { put(out, into_handle(b), "out") }
    })
}

/// Release the caller's reference to a batch. NULL is ignored. When the last
/// reference goes (at once, or when a call still running on it returns),
/// running generations stop and their sessions return to their handles.
#[no_mangle]
pub extern "C" fn lsk_batch_free(batch: *mut lsk_batch) {
    // SAFETY: the caller's reference, freed once (documented).
    boundary(std::ptr::null_mut(), || {
        unsafe { release(batch) };
        Ok(())
    });
}

/// Add a generation: `session` (of the batch's model) is lent to the batch
/// until the generation finishes (its other calls fail with `LSK_ERR_BUSY`
/// meanwhile; the batch holds a reference, so freeing it is safe), then it continues from the generated
/// text as after `lsk_session_generate`. `prompt`, `options` and `callback`
/// are as for `lsk_session_generate`; the callback runs inside
/// `lsk_batch_step`. `*id` receives the generation's id.
#[no_mangle]
pub extern "C" fn lsk_batch_add(
    batch: *mut lsk_batch,
    session: *mut lsk_session,
    prompt: *const i32,
    n: usize,
    options: *const lsk_generate_options,
    callback: lsk_token_callback,
    user_data: *mut c_void,
    id: *mut u64,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        need(id, "id")?;
        with_batch(batch, |b| {
            let owner = handle(session)?;
            let mut st = owner.state.try_lock().ok_or_else(|| {
                FfiError::new(
                    lsk_result::LSK_ERR_BUSY,
                    "the session is in use by another call",
                )
            })?;
            let (ids, opts) = with_live(&mut st, |live| {
                if !Arc::ptr_eq(live.session.model(), &b.model) {
                    return Err(FfiError::invalid(
                        "the session belongs to another model than the batch",
                    ));
                }
                let m = live.session.model();
                let ids = token_ids(unsafe { slice(prompt, n, "prompt") }?, m.config.vocab_size)?;
                let opts = unsafe { generate_options(options, m.num_layers()) }?;
                Generation::<_, Session>::validate(live.session, &ids, &opts)?;
                Ok((ids, opts))
            })?;
            let s = st.session.take().expect("checked by with_live");
            let mut cb = Callback {
                f: callback,
                user_data,
                text: Vec::new(),
            };
            let gen = Generation::build(s, &ids, opts, Box::new(move |t, piece| cb.call(t, piece)));
            let gid = b.next_id;
            b.next_id += 1;
            drop(st);
            b.running.push(Running {
                id: gid,
                owner,
                gen,
            });
            unsafe { put(id, gid, "id") }
        })
    })
}

/// One round for every running generation of the batch, in one batched pass
/// per phase (prompts; drafts; verifications and plain steps). Token
/// callbacks run from here. Generations that end (budget, EOS, stop string,
/// callback, error) return their sessions and wait for `lsk_batch_result`.
/// `*n_running` (may be NULL) receives how many are still running.
#[no_mangle]
pub extern "C" fn lsk_batch_step(
    batch: *mut lsk_batch,
    n_running: *mut usize,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        with_batch(batch, |b| {
            {
                let mut gens: Vec<_> = b.running.iter_mut().map(|r| &mut r.gen).collect();
                step_all(&mut gens);
            }
            let mut k = 0;
            while k < b.running.len() {
                if b.running[k].gen.is_done() {
                    b.retire(k);
                } else {
                    k += 1;
                }
            }
            if !n_running.is_null() {
                unsafe { put(n_running, b.running.len(), "n_running") }?;
            }
            Ok(())
        })
    })
}

/// Stop generation `id` now (its tokens so far stay delivered; its stop
/// reason is `LSK_STOP_CALLBACK`) and return its session. Unknown or already
/// finished ids are `LSK_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn lsk_batch_cancel(
    batch: *mut lsk_batch,
    id: u64,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        with_batch(batch, |b| {
            let k = b
                .running
                .iter()
                .position(|r| r.id == id)
                .ok_or_else(|| FfiError::invalid(format!("no running generation {id}")))?;
            b.running[k].gen.cancel();
            b.retire(k);
            Ok(())
        })
    })
}

/// Ids of finished generations not yet collected by `lsk_batch_result`:
/// up to `cap` go to `ids` (may be NULL when `cap` is 0); `*n` receives how
/// many there are.
#[no_mangle]
pub extern "C" fn lsk_batch_finished(
    batch: *mut lsk_batch,
    ids: *mut u64,
    cap: usize,
    n: *mut usize,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        need_list(ids, cap, n)?;
        with_batch(batch, |b| unsafe {
            put_list(ids, cap, b.finished.iter().map(|f| f.id), n)
        })
    })
}

/// Collect finished generation `id`: `*result` (may be NULL) receives its
/// counts as from `lsk_session_generate`, and the call returns the
/// generation's own result code (its error message in `*err`). Each finished
/// generation is collected once. A running one gives `LSK_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn lsk_batch_result(
    batch: *mut lsk_batch,
    id: u64,
    result: *mut lsk_generate_result,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        with_batch(batch, |b| {
            if b.running.iter().any(|r| r.id == id) {
                return Err(FfiError::new(
                    lsk_result::LSK_ERR_BUSY,
                    format!("generation {id} is still running"),
                ));
            }
            let k = b
                .finished
                .iter()
                .position(|f| f.id == id)
                .ok_or_else(|| FfiError::invalid(format!("no finished generation {id}")))?;
            unsafe { check_output(result, "result") }?;
            let f = b.finished.swap_remove(k);
            if !result.is_null() {
                unsafe { write_output(result, f.result, "result") }?;
            }
            match f.error {
                Some((code, message)) => Err(FfiError::new(code, message)),
                None => Ok(()),
            }
        })
    })
}
