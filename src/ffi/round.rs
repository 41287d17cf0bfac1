//! `lsk_sessions_round`: the host's scheduler advances the sessions it
//! chooses by one round each, every session in its own mode.

use super::error::{boundary, lsk_error, lsk_result, store, FfiError, FfiResult};
use super::session::{check_confidence, handle, resolve_mode, with_live, Handle, State};
use super::types::*;
use super::{need, slice, token_ids};
use crate::generate::{round_all, RoundOptions, RoundOutcome, RoundRequest};
use crate::model::Model;
use crate::speculative::Drafts;
use parking_lot::MutexGuard;
use std::sync::Arc;

/// One session's round for `lsk_sessions_round`: what to do (set by the
/// caller) and what it did (written by the call). Fill it with
/// `lsk_round_init(&r, sizeof r)`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct lsk_round {
    pub struct_size: usize,
    pub session: *mut super::session::lsk_session,
    /// Tokens to feed first: the token the session's last round committed
    /// last (it is not in the cache yet), or more, such as a prompt or a
    /// new turn. More than one token makes the round one pass over them at
    /// the mode's depth, committing one token.
    pub input: *const i32,
    pub n_input: usize,
    /// An `lsk_mode` value; `exit_layer` and `draft_len` as in
    /// `lsk_generate_options` (`LSK_AUTO` included).
    pub mode: u32,
    pub exit_layer: u32,
    pub draft_len: u32,
    /// Most tokens the round may commit, and the size of `tokens` (at least
    /// 1): the host's budget. A speculative round drafts at most
    /// `max_tokens - 1`.
    pub max_tokens: u32,
    /// Receives the committed tokens.
    pub tokens: *mut i32,
    /// How tokens are chosen (NULL: greedy). Its seed is ignored: draws come
    /// from the session's own generator (`lsk_session_options.seed`).
    pub sampling: *const lsk_sampling,
    /// The round ends after committing any of these (EOS ids, say);
    /// drafting stops at them, and tokens accepted after one are dropped.
    pub stop_ids: *const i32,
    pub n_stop_ids: usize,
    /// Self-speculative: stop drafting below this top probability (0: never).
    pub confidence_threshold: f32,
    /// Another drafter's `n_drafts` tokens to verify at full depth instead
    /// of drafting (mode `LSK_MODE_FULL`, or self-speculative with fixed E
    /// and d, which are then unused), after exactly one input token.
    pub drafts: *const i32,
    pub n_drafts: usize,
    /// NULL, or `n_drafts` rows of `vocab_size` probabilities: the
    /// distribution each draft was drawn from, for exact speculative
    /// sampling. NULL: each draft was its drafter's only candidate.
    pub draft_probs: *const f32,
    /// When not NULL, receives this round's error (free it with
    /// `lsk_error_free`).
    pub err: *mut *mut lsk_error,
    /// Written by the call: this round's result code.
    pub result: lsk_result,
    /// Written by the call: tokens committed to `tokens`.
    pub n_tokens: u32,
    /// Written by the call: drafts verified, and how many were accepted.
    pub drafted: u32,
    pub accepted: u32,
    /// Written by the call: the (E, d) the round ran; (number of layers, 0)
    /// for a full-depth step.
    pub ran_exit_layer: u32,
    pub ran_draft_len: u32,
}
versioned!(
    lsk_round,
    lsk_round {
        struct_size: std::mem::size_of::<Self>(),
        session: std::ptr::null_mut(),
        input: std::ptr::null(),
        n_input: 0,
        mode: 0,
        exit_layer: 0,
        draft_len: 4,
        max_tokens: 0,
        tokens: std::ptr::null_mut(),
        sampling: std::ptr::null(),
        stop_ids: std::ptr::null(),
        n_stop_ids: 0,
        confidence_threshold: 0.0,
        drafts: std::ptr::null(),
        n_drafts: 0,
        draft_probs: std::ptr::null(),
        err: std::ptr::null_mut(),
        result: lsk_result::LSK_OK,
        n_tokens: 0,
        drafted: 0,
        accepted: 0,
        ran_exit_layer: 0,
        ran_draft_len: 0,
    },
    // Added in 1.2.
    std::mem::size_of::<lsk_round>()
);

/// Fill `*out` with the defaults; `struct_size` is `sizeof *out`.
#[no_mangle]
pub extern "C" fn lsk_round_init(out: *mut lsk_round, struct_size: usize) -> lsk_result {
    init(out, struct_size)
}

/// A round's request, read from its C struct.
struct Parsed {
    input: Vec<u32>,
    opts: RoundOptions,
}

fn parse(r: &lsk_round, st: &mut State) -> FfiResult<Parsed> {
    with_live(st, |live| {
        let cfg = &live.session.model().config;
        let vocab = cfg.vocab_size;
        let ids = |p: *const i32, n: usize, what: &str| -> FfiResult<Vec<u32>> {
            token_ids(unsafe { slice(p, n, what) }?, vocab)
        };
        if r.max_tokens == 0 {
            return Err(FfiError::invalid(
                "max_tokens must be at least 1 (the size of tokens)",
            ));
        }
        need(r.tokens, "tokens")?;
        check_confidence(r.confidence_threshold)?;
        let sampling = unsafe { read_options(r.sampling, "sampling") }?.params()?;
        let drafts = if r.drafts.is_null() && r.n_drafts == 0 {
            None
        } else {
            let tokens = ids(r.drafts, r.n_drafts, "drafts")?;
            let probs = if r.draft_probs.is_null() {
                Vec::new()
            } else {
                unsafe { slice(r.draft_probs, r.n_drafts * vocab, "draft_probs") }?.to_vec()
            };
            Some(Drafts {
                tokens,
                probs,
                confidence: Vec::new(),
            })
        };
        Ok(Parsed {
            input: ids(r.input, r.n_input, "input")?,
            opts: RoundOptions {
                mode: resolve_mode(r.mode, r.exit_layer, r.draft_len, cfg.num_layers)?,
                sampling,
                max_tokens: r.max_tokens as usize,
                stop_ids: ids(r.stop_ids, r.n_stop_ids, "stop_ids")?,
                confidence_threshold: r.confidence_threshold,
                drafts,
            },
        })
    })
}

/// Write round `r`'s outcome to its struct (and its error, when asked).
unsafe fn report(ptr: *mut lsk_round, mut r: lsk_round, outcome: FfiResult<RoundOutcome>) {
    r.n_tokens = 0;
    r.drafted = 0;
    r.accepted = 0;
    match outcome {
        Ok(o) => {
            for (i, &t) in o.tokens.iter().enumerate() {
                // SAFETY: at most max_tokens tokens, the size of `tokens`.
                unsafe { r.tokens.add(i).write(t as i32) };
            }
            r.result = lsk_result::LSK_OK;
            r.n_tokens = o.tokens.len() as u32;
            r.drafted = o.drafted as u32;
            r.accepted = o.accepted as u32;
            r.ran_exit_layer = o.exit_layer as u32;
            r.ran_draft_len = o.draft_len as u32;
        }
        Err(e) => {
            r.result = e.code;
            store(r.err, &e);
        }
    }
    // The struct was read from `ptr` with this size: writing it back is in bounds.
    let _ = unsafe { write_output(ptr, r, "round") };
}

/// Advance `n` sessions of one model by one round each: `rounds[i]` says
/// what session `i` does, each in its own mode (a plain step, an early-exit
/// step, or draft then verify, with its own or another drafter's drafts),
/// with its own sampling and limits, and receives the tokens it committed.
/// Every pass runs once over the rows of all sessions that take part in it
/// (prompts, then each draft position, then all verifications and plain
/// steps). Each round's tokens are bit-identical to running it alone, and a
/// session's rounds give the tokens `lsk_session_generate` gives in the same
/// mode when the session's seed is the generation's. The session then holds
/// everything it was given and every committed token but the last, which is
/// the next round's input.
///
/// The host owns everything else: budgets (`max_tokens`), stop rules
/// (`stop_ids`, anything else between rounds), sessions joining and
/// leaving. The automatic (E, d) policy of `LSK_AUTO` knows how many
/// sessions share the passes and backs off from speculation when verify
/// rows stop being nearly free.
///
/// `rounds` is an array of `n` structs of one `struct_size`. A failed round
/// (bad input, a full context, a session busy, lent to a batch, of another
/// model than `rounds[0]`'s or named twice) fails alone and leaves its
/// session as it was: its `result` says why. The call returns `LSK_OK`
/// unless its own arguments are bad.
#[no_mangle]
pub extern "C" fn lsk_sessions_round(
    rounds: *mut lsk_round,
    n: usize,
    err: *mut *mut lsk_error,
) -> lsk_result {
    boundary(err, || {
        if n == 0 {
            return Ok(());
        }
        need(rounds, "rounds")?;
        // Every element has the caller's struct size, read from the first.
        let stride = unsafe { (rounds as *const usize).read_unaligned() };
        let ptrs: Vec<*mut lsk_round> = (0..n)
            .map(|i| unsafe { (rounds as *mut u8).add(i * stride) as *mut lsk_round })
            .collect();
        let mut structs = Vec::with_capacity(n);
        for (i, &p) in ptrs.iter().enumerate() {
            let size = unsafe { (p as *const usize).read_unaligned() };
            if size != stride {
                return Err(FfiError::invalid(format!(
                    "rounds[{i}].struct_size is {size}, rounds[0]'s is {stride}"
                )));
            }
            structs.push(unsafe { read_options(p as *const lsk_round, "rounds[i]") }?);
        }

        // A reference to every session and a lock on each; a round that
        // cannot have its session, or whose request is bad, fails alone.
        let owners: Vec<FfiResult<Arc<Handle>>> =
            structs.iter().map(|r| handle(r.session)).collect();
        let mut model: Option<Arc<Model>> = None;
        let mut taken: Vec<(usize, MutexGuard<State>, Parsed)> = Vec::with_capacity(n);
        let mut failed: Vec<(usize, FfiError)> = Vec::new();
        for (i, owner) in owners.iter().enumerate() {
            let got =
                owner.as_ref().map_err(Clone::clone).and_then(|h| {
                    let mut st = h.state.try_lock().ok_or_else(|| {
                        FfiError::new(
                            lsk_result::LSK_ERR_BUSY,
                            "the session is in use by another call",
                        )
                    })?;
                    let parsed = parse(&structs[i], &mut st)?;
                    let own = st.session.as_ref().expect("checked by parse").model();
                    match &model {
                        Some(m) if !Arc::ptr_eq(m, own) => return Err(FfiError::invalid(
                            "the session belongs to another model than the round's first session",
                        )),
                        Some(_) => {}
                        None => model = Some(own.clone()),
                    }
                    Ok((st, parsed))
                });
            match got {
                Ok((st, parsed)) => taken.push((i, st, parsed)),
                Err(e) => failed.push((i, e)),
            }
        }
        let requests = taken
            .iter_mut()
            .map(|(_, st, p)| {
                let st: &mut State = st;
                RoundRequest {
                    session: st.session.as_mut().expect("checked by parse"),
                    state: &mut st.round,
                    input: &p.input,
                    opts: &p.opts,
                }
            })
            .collect();
        let outcomes = round_all(requests);
        for ((i, _, _), o) in taken.iter().zip(outcomes) {
            unsafe { report(ptrs[*i], structs[*i], o.map_err(FfiError::from)) };
        }
        for (i, e) in failed {
            unsafe { report(ptrs[i], structs[i], Err(e)) };
        }
        Ok(())
    })
}
