//! Sequences of C API calls on a few sessions of one model, with arguments
//! drawn from the input: bad ids, bad exits, NULLs, rewinds past the end,
//! automatic modes. Every call must return a result code (never
//! `LSK_ERR_PANIC`, never a crash), and sessions stay usable after errors.
#![no_main]
use layerskip::ffi::error::{lsk_error_free, lsk_error_message};
use layerskip::ffi::*;
use libfuzzer_sys::fuzz_target;
use std::ffi::c_char;
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/mha-f32\0");

struct Model(*mut lsk_model);
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

fn model() -> *mut lsk_model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let mut m = null_mut();
        let r = lsk_model_load(MODEL.as_ptr() as *const c_char, null(), &mut m, null_mut());
        assert_eq!(r, lsk_result::LSK_OK);
        Model(m)
    })
    .0
}

struct Input<'a>(&'a [u8]);
impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    /// A token id, sometimes out of range or negative.
    fn token(&mut self) -> i32 {
        match self.byte() {
            255 => -1,
            254 => 100_000,
            b => (b as i32) * 5 % 330,
        }
    }
    fn tokens(&mut self) -> Vec<i32> {
        let n = (self.byte() % 12) as usize;
        (0..n).map(|_| self.token()).collect()
    }
    fn exit(&mut self) -> u32 {
        match self.byte() % 8 {
            7 => LSK_AUTO,
            e => e as u32,
        }
    }
}

/// Check a call's result: an error is fine, a caught panic is a bug.
fn ok(r: lsk_result, err: &mut *mut layerskip::ffi::lsk_error) -> bool {
    if r == lsk_result::LSK_ERR_PANIC {
        let msg = unsafe { std::ffi::CStr::from_ptr(lsk_error_message(*err)) };
        panic!("panic crossed into the C API: {msg:?}");
    }
    // An error is set only by a failing call; take it so it is freed once.
    lsk_error_free(std::mem::replace(err, null_mut()));
    r == lsk_result::LSK_OK
}

fuzz_target!(|data: &[u8]| {
    let m = model();
    let mut input = Input(data);
    let mut sessions: Vec<*mut lsk_session> = Vec::new();
    let mut err = null_mut();
    let mut batch = null_mut();
    assert_eq!(lsk_batch_new(m, &mut batch, null_mut()), lsk_result::LSK_OK);
    let mut batch_ids: Vec<u64> = Vec::new();
    for _ in 0..64 {
        if input.0.is_empty() {
            break;
        }
        let op = input.byte() % 16;
        let pick = input.byte() as usize;
        // Sometimes NULL, usually one of the live sessions.
        let s = if sessions.is_empty() || pick == 255 {
            null_mut()
        } else {
            sessions[pick % sessions.len()]
        };
        let mut sampling = lsk_sampling {
            struct_size: std::mem::size_of::<lsk_sampling>(),
            temperature: [0.0, 0.7, 1.5, -1.0][input.byte() as usize % 4],
            top_k: input.byte() as u32 % 50,
            top_p: [1.0, 0.9, 0.0, 2.0][input.byte() as usize % 4],
            seed: input.byte() as u64,
        };
        if input.byte() == 0 {
            sampling.struct_size = 3;
        }
        match op {
            0 if sessions.len() < 4 => {
                let mut so = lsk_session_options {
                    struct_size: std::mem::size_of::<lsk_session_options>(),
                    context_length: [0, 1, 8, 40, 129, 4_000_000_000][input.byte() as usize % 6],
                    seed: 1,
                };
                let mut out = null_mut();
                if ok(lsk_session_new(m, &mut so, &mut out, &mut err), &mut err) {
                    sessions.push(out);
                }
            }
            1 if !sessions.is_empty() => {
                // Freeing a session lent to the batch is safe: the batch holds
                // a reference until its generation ends.
                lsk_session_free(sessions.swap_remove(pick % sessions.len()));
            }
            12 => {
                let t = input.tokens();
                let mut o: lsk_generate_options = unsafe { std::mem::zeroed() };
                lsk_generate_options_init(&mut o, std::mem::size_of::<lsk_generate_options>());
                o.max_new_tokens = input.byte() as u32 % 12;
                o.mode = input.byte() as u32 % 3;
                o.exit_layer = input.exit();
                o.draft_len = [1, 3, LSK_AUTO][input.byte() as usize % 3];
                o.sampling = &sampling;
                let mut id = 0;
                if ok(
                    lsk_batch_add(
                        batch,
                        s,
                        t.as_ptr(),
                        t.len(),
                        &o,
                        None,
                        null_mut(),
                        &mut id,
                        &mut err,
                    ),
                    &mut err,
                ) {
                    batch_ids.push(id);
                }
            }
            13 => {
                let mut n = 0;
                ok(lsk_batch_step(batch, &mut n, &mut err), &mut err);
            }
            14 => {
                let id = batch_ids
                    .get(pick % batch_ids.len().max(1))
                    .copied()
                    .unwrap_or(pick as u64);
                ok(lsk_batch_cancel(batch, id, &mut err), &mut err);
            }
            15 => {
                let id = batch_ids
                    .get(pick % batch_ids.len().max(1))
                    .copied()
                    .unwrap_or(pick as u64);
                let mut r: lsk_generate_result = unsafe { std::mem::zeroed() };
                lsk_generate_result_init(&mut r, std::mem::size_of::<lsk_generate_result>());
                ok(lsk_batch_result(batch, id, &mut r, &mut err), &mut err);
                let mut ids = [0u64; 4];
                let mut n = 0;
                ok(
                    lsk_batch_finished(batch, ids.as_mut_ptr(), 4, &mut n, &mut err),
                    &mut err,
                );
            }
            2 => {
                let t = input.tokens();
                let mut next = 0;
                ok(
                    lsk_session_prefill(s, t.as_ptr(), t.len(), &sampling, &mut next, &mut err),
                    &mut err,
                );
            }
            3 => {
                let (t, e) = (input.token(), input.exit());
                let mut next = 0;
                ok(
                    lsk_session_step(s, t, e, &sampling, &mut next, &mut err),
                    &mut err,
                );
            }
            4 => {
                let (t, e) = (input.token(), input.exit());
                let mut drafts = [0i32; 8];
                let cap = input.byte() as usize % 9;
                let mut n = 0;
                let max = input.byte() as u32 % 10;
                ok(
                    lsk_session_draft(
                        s,
                        t,
                        e,
                        max,
                        &sampling,
                        drafts.as_mut_ptr(),
                        cap,
                        &mut n,
                        &mut err,
                    ),
                    &mut err,
                );
            }
            5 => {
                let t = input.token();
                let d = input.tokens();
                let (mut acc, mut after) = (0, 0);
                ok(
                    lsk_session_verify(
                        s,
                        t,
                        d.as_ptr(),
                        d.len(),
                        &sampling,
                        &mut acc,
                        &mut after,
                        &mut err,
                    ),
                    &mut err,
                );
            }
            6 => {
                ok(
                    lsk_session_rewind(s, input.byte() as usize, &mut err),
                    &mut err,
                );
            }
            7 => {
                let t = input.tokens();
                let mut o = lsk_generate_options {
                    struct_size: std::mem::size_of::<lsk_generate_options>(),
                    max_new_tokens: input.byte() as u32 % 24,
                    mode: input.byte() as u32 % 4,
                    exit_layer: input.exit(),
                    draft_len: [0, 1, 3, 8, LSK_AUTO][input.byte() as usize % 5],
                    sampling: &sampling,
                    ignore_eos: input.byte() % 2,
                    stop_strings: null(),
                    n_stop_strings: 0,
                    confidence_threshold: [0.0, 0.5, 2.0][input.byte() as usize % 3],
                };
                let stop = c"e".as_ptr();
                let stops = [stop];
                if input.byte() % 2 == 1 {
                    o.stop_strings = stops.as_ptr();
                    o.n_stop_strings = 1;
                }
                ok(
                    lsk_session_generate(
                        s,
                        t.as_ptr(),
                        t.len(),
                        &o,
                        None,
                        null_mut(),
                        null_mut(),
                        &mut err,
                    ),
                    &mut err,
                );
            }
            8 => {
                let (mut p, mut n) = (null(), 0);
                ok(lsk_session_logits(s, &mut p, &mut n, &mut err), &mut err);
            }
            9 => {
                let mut st: lsk_stats = unsafe { std::mem::zeroed() };
                lsk_stats_init(&mut st, std::mem::size_of::<lsk_stats>());
                ok(lsk_session_stats(s, &mut st, &mut err), &mut err);
                let mut spans = [lsk_choice_span {
                    first_token: 0,
                    exit_layer: 0,
                    draft_len: 0,
                    rounds: 0,
                    tokens: 0,
                }; 4];
                let mut n = 0;
                ok(
                    lsk_session_choices(
                        s,
                        spans.as_mut_ptr(),
                        input.byte() as usize % 5,
                        &mut n,
                        &mut err,
                    ),
                    &mut err,
                );
            }
            10 => {
                // Arbitrary bytes, maybe not UTF-8.
                let n = input.byte() as usize % 16;
                let text: Vec<u8> = (0..n).map(|_| input.byte()).collect();
                let mut ids = [0i32; 8];
                let mut count = 0;
                let (special, cap) = (input.byte() % 2, input.byte() as usize % 9);
                ok(
                    lsk_tokenize(
                        m,
                        text.as_ptr() as *const c_char,
                        n,
                        special,
                        ids.as_mut_ptr(),
                        cap,
                        &mut count,
                        &mut err,
                    ),
                    &mut err,
                );
            }
            _ => {
                let t = input.tokens();
                let mut buf = [0u8; 16];
                let mut len = 0;
                let (skip, cap) = (input.byte() % 2, input.byte() as usize % 17);
                ok(
                    lsk_detokenize(
                        m,
                        t.as_ptr(),
                        t.len(),
                        skip,
                        buf.as_mut_ptr() as *mut c_char,
                        cap,
                        &mut len,
                        &mut err,
                    ),
                    &mut err,
                );
            }
        }
    }
    // Freeing the batch hands every lent session back before they are freed.
    lsk_batch_free(batch);
    for s in sessions {
        lsk_session_free(s);
    }
});
