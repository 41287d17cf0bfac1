//! Sessions: prefill, step, logits, draft, verify, rewind, generate, stats.

use super::cast::{into_handle, release, share, ArcHandle};
use super::error::{boundary, lsk_error, lsk_result, FfiError, FfiResult};
use super::model::{lsk_model, model_ref};
use super::types::*;
use super::{c_str, need, need_list, put, put_list, slice, token_ids};
use crate::generate::{
    generate, ChoiceSpan, GenerateOptions, Mode, ModeKind, RoundState, Setting, StopReason,
};
use crate::sampling::{sample, Rng64};
use crate::session::{Logits, Session};
use crate::speculative::{DraftLimits, Drafts};
use parking_lot::Mutex;
use std::ffi::c_void;
use std::sync::Arc;

/// A decoding session (opaque): one KV cache over a shared model. One call at
/// a time: a concurrent call fails with `LSK_ERR_BUSY`.
pub struct lsk_session {
    _private: [u8; 0],
}

pub(crate) struct State {
    /// `None` while the session is lent to an `lsk_batch` generation.
    pub(crate) session: Option<Session>,
    /// The random stream and automatic policy that rounds and
    /// step/draft/verify carry from call to call.
    pub(crate) round: RoundState,
    /// The last drafts `lsk_session_draft` made, with their distributions,
    /// so that a following verify of the same tokens can use them.
    drafts: Drafts,
    /// The (E, d) spans of the last generation.
    pub(crate) choices: Vec<ChoiceSpan>,
}

/// A locked session that is not lent out.
pub(crate) struct Live<'a> {
    pub(crate) session: &'a mut Session,
    pub(crate) rng: &'a mut Rng64,
    drafts: &'a mut Drafts,
    choices: &'a mut Vec<ChoiceSpan>,
}

pub(crate) struct Handle {
    pub(crate) state: Mutex<State>,
}

impl ArcHandle for lsk_session {
    type Rust = Handle;
}

fn busy(why: &str) -> FfiError {
    FfiError::new(
        lsk_result::LSK_ERR_BUSY,
        format!("the session is in use by {why}"),
    )
}

/// A reference to the handle behind a session pointer, held for the call.
pub(crate) fn handle(s: *mut lsk_session) -> FfiResult<Arc<Handle>> {
    // SAFETY: a live handle from lsk_session_new (documented).
    unsafe { share(s, "session") }
}

/// Run `f` on a locked, present session, or fail with `LSK_ERR_BUSY`.
pub(crate) fn with_live<T>(
    st: &mut State,
    f: impl FnOnce(&mut Live) -> FfiResult<T>,
) -> FfiResult<T> {
    let session = st
        .session
        .as_mut()
        .ok_or_else(|| busy("a batch generation"))?;
    f(&mut Live {
        session,
        rng: &mut st.round.rng,
        drafts: &mut st.drafts,
        choices: &mut st.choices,
    })
}

/// Lock the session for one call, or fail with `LSK_ERR_BUSY`.
fn with_session<T>(s: *mut lsk_session, f: impl FnOnce(&mut Live) -> FfiResult<T>) -> FfiResult<T> {
    let h = handle(s)?;
    let mut guard = h.state.try_lock().ok_or_else(|| busy("another call"))?;
    with_live(&mut guard, f)
}

pub(crate) fn exit_or_full(exit: u32, n_layers: usize) -> usize {
    if exit == 0 {
        n_layers
    } else {
        exit as usize
    }
}

fn one_token(t: i32, vocab: usize) -> FfiResult<u32> {
    Ok(token_ids(&[t], vocab)?[0])
}

/// Open a session on `model` (which it keeps alive). `options` may be NULL.
/// Free with `lsk_session_free`.
#[no_mangle]
pub extern "C" fn lsk_session_new(
    model: *const lsk_model,
    options: *const lsk_session_options,
    out: *mut *mut lsk_session,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        let m = model_ref(model)?;
        let o = unsafe { read_options(options, "options") }?;
        need(out, "out")?;
        let session = Session::new(m, o.context_length as usize)?;
        let state = State {
            session: Some(session),
            round: RoundState::new(o.seed),
            drafts: Drafts::default(),
            choices: Vec::new(),
        };
        let h = into_handle(Arc::new(Handle {
            state: Mutex::new(state),
        }));
        unsafe { put(out, h, "out") }
    })
}

/// Release the caller's reference to a session. NULL is ignored. A call
/// still running on it, or a batch it is lent to, keeps it alive until done;
/// its cache is freed then.
#[no_mangle]
pub extern "C" fn lsk_session_free(session: *mut lsk_session) {
    // SAFETY: the caller's reference, freed once (documented).
    boundary(std::ptr::null_mut(), || {
        unsafe { release(session) };
        Ok(())
    });
}

/// Feed `ids` through layers `0..exit`, then (when `next_token` is not NULL)
/// sample the next token from the newest logits with `sampling`.
fn feed(
    st: &mut Live,
    ids: &[u32],
    exit: usize,
    sampling: *const lsk_sampling,
    next_token: *mut i32,
) -> FfiResult {
    let p = unsafe { read_options(sampling, "sampling") }?.params()?;
    st.session.forward(ids, exit, Logits::Last)?;
    if !next_token.is_null() && !ids.is_empty() {
        let t = sample(st.session.last_logits(), &p, st.rng) as i32;
        unsafe { put(next_token, t, "next_token") }?;
    }
    Ok(())
}

/// Feed `n` prompt tokens at full depth. When `next_token` is not NULL it
/// receives the next token chosen with `sampling` (NULL = greedy). With
/// `n` = 0 nothing is fed (layers that lag catch up) and no token is written.
#[no_mangle]
pub extern "C" fn lsk_session_prefill(
    session: *mut lsk_session,
    tokens: *const i32,
    n: usize,
    sampling: *const lsk_sampling,
    next_token: *mut i32,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        with_session(session, |st| {
            let vocab = st.session.model().config.vocab_size;
            let ids = token_ids(unsafe { slice(tokens, n, "tokens") }?, vocab)?;
            let n_layers = st.session.model().num_layers();
            feed(st, &ids, n_layers, sampling, next_token)
        })
    })
}

/// Feed one token through layers `0..exit_layer` (0 = full depth; an early
/// exit lets the deeper layers catch up lazily later) and write the next token
/// chosen with `sampling` (NULL = greedy) to `*next_token` (may be NULL).
#[no_mangle]
pub extern "C" fn lsk_session_step(
    session: *mut lsk_session,
    token: i32,
    exit_layer: u32,
    sampling: *const lsk_sampling,
    next_token: *mut i32,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        with_session(session, |st| {
            let t = one_token(token, st.session.model().config.vocab_size)?;
            let exit = exit_or_full(exit_layer, st.session.model().num_layers());
            feed(st, &[t], exit, sampling, next_token)
        })
    })
}

/// The logits of the newest position from the last prefill/step (after a
/// verify: its last row, see `lsk_session_logits_ith`): `*logits` points to
/// `*n_vocab` floats owned by the session, valid until the next call on this
/// session. Fails when the last call produced no logits (after
/// `lsk_sessions_round` or a batch's `lsk_batch_step`, which choose tokens
/// where the logits are, a session may hold its tokens alone).
#[no_mangle]
pub extern "C" fn lsk_session_logits(
    session: *mut lsk_session,
    logits: *mut *const f32,
    n_vocab: *mut usize,
    err: *mut *mut lsk_error,
) -> lsk_result {
    lsk_session_logits_ith(session, -1, logits, n_vocab, err)
}

/// Asked between layers of every pass on a session; non-zero stops the call
/// (`LSK_ERR_ABORTED`), leaving the session as it was before it. Runs on the
/// decoding thread; it must not call into the session.
pub type lsk_abort_callback = Option<unsafe extern "C" fn(user_data: *mut c_void) -> i32>;

/// The C callback and its data, moved to the decoding threads.
struct AbortCallback {
    f: unsafe extern "C" fn(*mut c_void) -> i32,
    user_data: *mut c_void,
}
// SAFETY: the caller hands the callback and its data to the library for
// calls from the decoding thread (documented on lsk_session_set_abort).
unsafe impl Send for AbortCallback {}

impl AbortCallback {
    fn fired(&self) -> bool {
        // SAFETY: a C function pointer and the data it was given (documented).
        unsafe { (self.f)(self.user_data) != 0 }
    }
}

/// Set (or, with NULL, remove) the session's abort callback: checked
/// between layers of every pass, so a long prefill can be stopped. A call it
/// stops fails with `LSK_ERR_ABORTED` and leaves the session as it was
/// before that call. It runs on the thread that decodes and must not call
/// into the session.
#[no_mangle]
pub extern "C" fn lsk_session_set_abort(
    session: *mut lsk_session,
    callback: lsk_abort_callback,
    user_data: *mut c_void,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        with_session(session, |st| {
            let abort = callback.map(|f| {
                let cb = AbortCallback { f, user_data };
                Box::new(move || cb.fired()) as crate::session::AbortFn
            });
            st.session.set_abort(abort);
            Ok(())
        })
    })
}

/// Row `i` of the logits the last call produced: a verify one row per draft
/// plus one (row k scores the token after draft k), a prefill or step the
/// newest position. Negative `i` counts from the end (-1 is the newest row,
/// as `lsk_session_logits`). `*logits` points to `*n_vocab` floats owned by
/// the session, valid until the next call on it.
#[no_mangle]
pub extern "C" fn lsk_session_logits_ith(
    session: *mut lsk_session,
    i: i32,
    logits: *mut *const f32,
    n_vocab: *mut usize,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        with_session(session, |st| {
            need(logits, "logits")?;
            need(n_vocab, "n_vocab")?;
            let vocab = st.session.model().config.vocab_size;
            let all = st.session.logits();
            let rows = all.len() / vocab;
            if rows == 0 {
                return Err(FfiError::invalid(
                    "no logits: call lsk_session_prefill, lsk_session_step or lsk_session_verify first",
                ));
            }
            let row = if i < 0 {
                rows.checked_sub(i.unsigned_abs() as usize)
            } else {
                Some(i as usize).filter(|&r| r < rows)
            }
            .ok_or_else(|| {
                FfiError::invalid(format!(
                    "logits row {i} is out of range: the last call produced {rows} rows"
                ))
            })?;
            let row = &all[row * vocab..][..vocab];
            unsafe { put(logits, row.as_ptr(), "logits") }?;
            unsafe { put(n_vocab, vocab, "n_vocab") }
        })
    })
}

/// Draft up to `max_drafts` tokens with layers `0..exit_layer` (1 <= E < L),
/// starting from `next_token` (the last accepted token, not yet fed). Drafts
/// go to `drafts` (`capacity` >= `max_drafts` elements), their count to
/// `*n_drafts`. Drafting stops early at an EOS id or the context's end.
/// Follow with `lsk_session_verify` on the same `next_token` and drafts.
/// Drafts never enter the context unverified: any other call that feeds
/// tokens (step, prefill, generate, a round, another draft) drops them
/// first, and a draft that fails leaves none.
#[no_mangle]
pub extern "C" fn lsk_session_draft(
    session: *mut lsk_session,
    next_token: i32,
    exit_layer: u32,
    max_drafts: u32,
    sampling: *const lsk_sampling,
    drafts: *mut i32,
    capacity: usize,
    n_drafts: *mut usize,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        with_session(session, |st| {
            let m = st.session.model().clone();
            let t = one_token(next_token, m.config.vocab_size)?;
            let p = unsafe { read_options(sampling, "sampling") }?.params()?;
            if max_drafts == 0 {
                return Err(FfiError::invalid("max_drafts must be at least 1"));
            }
            if (max_drafts as usize) > capacity {
                return Err(FfiError::new(
                    lsk_result::LSK_ERR_BUFFER_TOO_SMALL,
                    format!("capacity {capacity} is smaller than max_drafts {max_drafts}"),
                ));
            }
            need(drafts, "drafts")?;
            need(n_drafts, "n_drafts")?;
            let limits = DraftLimits {
                cumulative: 0.0,
                calibration: &[],
                max_drafts: max_drafts as usize,
                stop_ids: &m.config.eos_token_ids,
                confidence: 0.0,
            };
            let d = st
                .session
                .draft(t, exit_layer as usize, limits, &p, st.rng)?;
            for (i, &x) in d.tokens.iter().enumerate() {
                // SAFETY: d.tokens.len() <= max_drafts <= capacity.
                unsafe { drafts.add(i).write(x as i32) };
            }
            let n = d.tokens.len();
            *st.drafts = d;
            unsafe { put(n_drafts, n, "n_drafts") }
        })
    })
}

/// Verify `n` drafts proposed after `next_token`: from `lsk_session_draft`, or
/// from anywhere else (n-gram lookup, another model, the caller). The deep
/// layers run once over all pending positions (earlier early-exit steps'
/// included: they stay in the context); the longest agreeing prefix is
/// accepted (`*accepted`), the cache is truncated to it, and `*token_after`
/// receives the verifier's own next token (not yet fed: pass it as the next
/// round's `next_token`). Greedy (`sampling` NULL) is lossless.
#[no_mangle]
pub extern "C" fn lsk_session_verify(
    session: *mut lsk_session,
    next_token: i32,
    drafts: *const i32,
    n: usize,
    sampling: *const lsk_sampling,
    accepted: *mut usize,
    token_after: *mut i32,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        with_session(session, |st| {
            let vocab = st.session.model().config.vocab_size;
            let t = one_token(next_token, vocab)?;
            let ids = token_ids(unsafe { slice(drafts, n, "drafts") }?, vocab)?;
            let p = unsafe { read_options(sampling, "sampling") }?.params()?;
            need(accepted, "accepted")?;
            need(token_after, "token_after")?;
            let own = std::mem::take(st.drafts);
            let d = if own.tokens == ids {
                own
            } else {
                Drafts {
                    tokens: ids,
                    ..Default::default()
                }
            };
            let v = match st.session.verify(t, &d, &p, st.rng) {
                Ok(v) => v,
                Err(e) => {
                    // A retry verifies the same drafts with their probabilities.
                    *st.drafts = d;
                    return Err(e.into());
                }
            };
            unsafe { put(accepted, v.accepted, "accepted") }?;
            unsafe { put(token_after, v.token_after as i32, "token_after") }
        })
    })
}

/// Keep only the first `len` positions in every layer (a length change).
/// Fails if the session holds fewer than `len`.
#[no_mangle]
pub extern "C" fn lsk_session_rewind(
    session: *mut lsk_session,
    len: usize,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        with_session(session, |st| Ok(st.session.rewind(len)?))
    })
}

pub(crate) struct Callback {
    pub(crate) f: lsk_token_callback,
    pub(crate) user_data: *mut c_void,
    pub(crate) text: Vec<u8>,
}

impl Callback {
    pub(crate) fn call(&mut self, token: u32, piece: &str) -> bool {
        let Some(f) = self.f else { return true };
        self.text.clear();
        self.text.extend_from_slice(piece.as_bytes());
        self.text.push(0);
        // SAFETY: the caller's callback contract (documented on lsk_token_callback).
        unsafe {
            f(
                self.user_data,
                token as i32,
                self.text.as_ptr() as *const _,
                piece.len(),
            ) == 0
        }
    }
}

/// Feed `prompt` (`n` >= 1 tokens) and generate after it with `options`
/// (NULL = defaults: full depth, greedy, 64 tokens), calling `callback` (may
/// be NULL) for every token. A session may generate again: the new prompt
/// continues its context.
/// `result` (may be NULL) receives counts and timings. Tokens delivered
/// before a failure stay delivered; the session stays usable.
#[no_mangle]
pub extern "C" fn lsk_session_generate(
    session: *mut lsk_session,
    prompt: *const i32,
    n: usize,
    options: *const lsk_generate_options,
    callback: lsk_token_callback,
    user_data: *mut c_void,
    result: *mut lsk_generate_result,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        with_session(session, |st| {
            let m = st.session.model().clone();
            let ids = token_ids(unsafe { slice(prompt, n, "prompt") }?, m.config.vocab_size)?;
            let opts = unsafe { generate_options(options, m.num_layers()) }?;
            unsafe { check_output(result, "result") }?;
            let mut cb = Callback {
                f: callback,
                user_data,
                text: Vec::new(),
            };
            st.choices.clear();
            let out = generate(st.session, &ids, &opts, |t, piece| cb.call(t, piece))?;
            st.choices.clone_from(&out.stats.choices);
            if !result.is_null() {
                unsafe { write_output(result, generate_result(&out), "result") }?;
            }
            Ok(())
        })
    })
}

/// `lsk_generate_options` (NULL = defaults) as [`GenerateOptions`].
/// The mode of an `lsk_mode` value with an exit layer and a draft length
/// as the C structs give them (0: the default exit; `LSK_AUTO`: automatic).
pub(crate) fn resolve_mode(
    mode: u32,
    exit_layer: u32,
    draft_len: u32,
    n_layers: usize,
) -> FfiResult<Mode> {
    let kind = match mode {
        0 => ModeKind::Full,
        1 => ModeKind::EarlyExit,
        2 => ModeKind::SelfSpeculative,
        other => return Err(FfiError::invalid(format!("unknown mode {other}"))),
    };
    let setting = |v: u32| match v {
        LSK_AUTO => Setting::Auto,
        v => Setting::Fixed(v as usize),
    };
    let exit = match exit_layer {
        0 => Setting::Default,
        e => setting(e),
    };
    Ok(Mode::resolve(kind, exit, setting(draft_len), n_layers)?)
}

pub(crate) fn check_confidence(c: f32) -> FfiResult {
    if !(c.is_finite() && (0.0..=1.0).contains(&c)) {
        return Err(FfiError::invalid("confidence_threshold must be in [0, 1]"));
    }
    Ok(())
}

pub(crate) unsafe fn generate_options(
    options: *const lsk_generate_options,
    n_layers: usize,
) -> FfiResult<GenerateOptions> {
    let o = unsafe { read_options(options, "options") }?;
    let sampling = o.sampling;
    let sampling = unsafe { read_options(sampling, "options.sampling") }?.params()?;
    let mode = resolve_mode(o.mode, o.exit_layer, o.draft_len, n_layers)?;
    let stops = unsafe { slice(o.stop_strings, o.n_stop_strings, "stop_strings") }?
        .iter()
        .map(|&p| unsafe { c_str(p, "stop_strings[i]") }.map(str::to_string))
        .collect::<FfiResult<Vec<_>>>()?;
    check_confidence(o.confidence_threshold)?;
    Ok(GenerateOptions {
        max_new_tokens: o.max_new_tokens as usize,
        mode,
        sampling,
        ignore_eos: o.ignore_eos != 0,
        stop_strings: stops,
        confidence_threshold: o.confidence_threshold,
    })
}

/// What `lsk_session_generate` reports about a finished generation.
pub(crate) fn generate_result(out: &crate::generate::GenerateOutput) -> lsk_generate_result {
    let s = &out.stats;
    lsk_generate_result {
        struct_size: 0,
        n_tokens: out.tokens.len() as u32,
        stop_reason: match out.stop_reason {
            StopReason::MaxTokens => lsk_stop_reason::LSK_STOP_MAX_TOKENS,
            StopReason::Eos => lsk_stop_reason::LSK_STOP_EOS,
            StopReason::StopString => lsk_stop_reason::LSK_STOP_STRING,
            StopReason::Callback => lsk_stop_reason::LSK_STOP_CALLBACK,
            StopReason::ContextFull => lsk_stop_reason::LSK_STOP_CONTEXT_FULL,
        } as u32,
        prompt_tokens: s.prompt_tokens as u32,
        seconds: s.seconds,
        tokens_per_second: s.tokens_per_second,
        drafted: s.drafted,
        accepted: s.accepted,
        rounds: s.rounds,
        prompt_seconds: s.prompt_seconds,
        prompt_tokens_per_second: s.prompt_tokens_per_second,
        decode_tokens_per_second: s.decode_tokens_per_second,
    }
}

/// The (E, d) choices of the session's last `lsk_session_generate`, one span
/// per change: up to `cap` spans are written to `out` (may be NULL when `cap`
/// is 0) and `*n_out` receives how many there are in all.
#[no_mangle]
pub extern "C" fn lsk_session_choices(
    session: *mut lsk_session,
    out: *mut lsk_choice_span,
    cap: usize,
    n_out: *mut usize,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        need_list(out, cap, n_out)?;
        with_session(session, |st| {
            let spans = st.choices.iter().map(|c| lsk_choice_span {
                first_token: c.first_token as u32,
                exit_layer: c.exit_layer as u32,
                draft_len: c.draft_len as u32,
                rounds: c.rounds,
                tokens: c.tokens as u64,
            });
            unsafe { put_list(out, cap, spans, n_out) }
        })
    })
}

/// Session counters and frontiers. Set `out->struct_size` first (`lsk_stats_init`).
#[no_mangle]
pub extern "C" fn lsk_session_stats(
    session: *mut lsk_session,
    out: *mut lsk_stats,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        with_session(session, |st| {
            let s = st.session.spec_stats();
            let v = lsk_stats {
                struct_size: 0,
                drafted: s.drafted,
                accepted: s.accepted,
                rounds: s.rounds,
                draft_seconds: s.draft_seconds,
                verify_seconds: s.verify_seconds,
                shallow_len: st.session.shallow_len() as u32,
                deep_len: st.session.deep_len() as u32,
                context_length: st.session.capacity() as u32,
            };
            unsafe { write_output(out, v, "out") }
        })
    })
}
