//! The C ABI, and the only place with `extern "C"`. Conventions (documented in
//! the generated header):
//! - Every fallible call returns `lsk_result` and takes an optional
//!   `lsk_error **err` that receives details on failure (free with
//!   `lsk_error_free`); outputs are written only on success.
//! - Options and result structs start with `struct_size`, are filled by
//!   their `lsk_*_init(&s, sizeof s)` and are read and written by prefix
//!   ([`types`]); NULL options mean defaults.
//! - A NULL pointer with length 0 is an empty array.
//! - `lsk_model` may be used from any number of threads at once. An
//!   `lsk_session` is used by one call at a time; a concurrent call fails with
//!   `LSK_ERR_BUSY` (never blocks, never races).
//! - Handles are reference-counted ([`cast`]): `*_free` drops the caller's
//!   reference, and a call in progress or a batch keeps the object alive.

#![allow(non_camel_case_types)]
// Every pointer argument is checked or documented; callers are C programs.
#![allow(clippy::missing_safety_doc, clippy::not_unsafe_ptr_arg_deref)]

mod batch;
mod cast;
pub mod error;
mod model;
mod round;
mod session;
mod types;

pub use batch::*;
pub use error::{lsk_error, lsk_result};
pub use model::*;
pub use round::*;
pub use session::*;
pub use types::*;

use error::{FfiError, FfiResult};
use std::ffi::c_char;

/// ABI version: changes only on an incompatible change to this API (the
/// rules are in the header's preamble). 2 is the ABI frozen at 1.0; 1 was
/// the API before it.
pub const LSK_ABI_VERSION: u32 = 2;

/// The ABI version of the loaded library (compare with `LSK_ABI_VERSION`).
#[no_mangle]
pub extern "C" fn lsk_abi_version() -> u32 {
    LSK_ABI_VERSION
}

/// The library version, e.g. "0.1.0" (static string).
#[no_mangle]
pub extern "C" fn lsk_version_string() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// `len` elements at `ptr`; NULL is allowed when `len == 0`.
pub(crate) unsafe fn slice<'a, T>(ptr: *const T, len: usize, what: &str) -> FfiResult<&'a [T]> {
    if len == 0 {
        Ok(&[])
    } else if ptr.is_null() {
        Err(FfiError::null(what))
    } else {
        // SAFETY: the caller guarantees `len` readable elements (documented).
        Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
    }
}

/// A NUL-terminated UTF-8 string argument.
pub(crate) unsafe fn c_str<'a>(ptr: *const c_char, what: &str) -> FfiResult<&'a str> {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: the caller passes a NUL-terminated string (documented).
    unsafe { std::ffi::CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| {
            FfiError::new(
                lsk_result::LSK_ERR_UTF8,
                format!("`{what}` is not valid UTF-8"),
            )
        })
}

/// Write an output value (only called on success).
pub(crate) unsafe fn put<T>(ptr: *mut T, v: T, what: &str) -> FfiResult {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    // SAFETY: non-NULL output pointers are writable (documented).
    unsafe { ptr.write(v) };
    Ok(())
}

/// Write up to `cap` of `items` to `out` and how many there are in all to
/// `*n` (the caller checked both pointers with [`need_list`]).
pub(crate) unsafe fn put_list<T>(
    out: *mut T,
    cap: usize,
    items: impl ExactSizeIterator<Item = T>,
    n: *mut usize,
) -> FfiResult {
    let total = items.len();
    for (i, v) in items.take(cap).enumerate() {
        // SAFETY: `out` holds `cap` writable elements (documented).
        unsafe { out.add(i).write(v) };
    }
    unsafe { put(n, total, "n") }
}

/// Check the pointers of a list output: `n` always, `out` when `cap > 0`.
pub(crate) fn need_list<T>(out: *const T, cap: usize, n: *const usize) -> FfiResult {
    need(n, "n")?;
    if cap > 0 {
        need(out, "out")?;
    }
    Ok(())
}

/// Check that a required output pointer is not NULL (before doing any work).
pub(crate) fn need<T>(ptr: *const T, what: &str) -> FfiResult {
    if ptr.is_null() {
        Err(FfiError::null(what))
    } else {
        Ok(())
    }
}

/// C token ids to validated model ids.
pub(crate) fn token_ids(ids: &[i32], vocab: usize) -> FfiResult<Vec<u32>> {
    ids.iter()
        .map(|&t| {
            if t < 0 || t as usize >= vocab {
                Err(FfiError::invalid(format!(
                    "token id {t} is out of range (vocab_size {vocab})"
                )))
            } else {
                Ok(t as u32)
            }
        })
        .collect()
}
