//! C handles over reference-counted Rust objects, after rustls-ffi's
//! `Castable` with `OwnershipArc`: the pointer a C caller holds is one strong
//! reference; every call on a handle takes another for as long as it runs;
//! a batch holds one for each session it runs; `*_free` drops the caller's.
//! An object therefore lives until its last user is done: freeing a handle
//! while another thread's call runs on it, or while a batch has it lent,
//! cannot make the library touch freed memory. (Using a pointer after its
//! last reference is gone is, as with any C API, the caller's bug.)

use super::error::{FfiError, FfiResult};
use std::sync::Arc;

/// A C handle type whose pointer is an `Arc<Self::Rust>`.
pub(crate) trait ArcHandle {
    type Rust;
}

/// Hands `v` to C as a handle (one reference).
pub(crate) fn into_handle<C: ArcHandle>(v: Arc<C::Rust>) -> *mut C {
    Arc::into_raw(v) as *mut C
}

/// A new reference to the object behind `ptr`, held for the caller's call;
/// NULL is an error naming `what`.
///
/// # Safety
/// `ptr` is NULL or a handle made by [`into_handle`] for `C` whose caller's
/// reference has not been freed.
pub(crate) unsafe fn share<C: ArcHandle>(ptr: *const C, what: &str) -> FfiResult<Arc<C::Rust>> {
    if ptr.is_null() {
        return Err(FfiError::null(what));
    }
    let raw = ptr as *const C::Rust;
    // SAFETY: `raw` came from Arc::into_raw and the caller's reference is
    // alive (the function's contract), so the count is at least one.
    unsafe {
        Arc::increment_strong_count(raw);
        Ok(Arc::from_raw(raw))
    }
}

/// Drops the caller's reference (NULL is ignored).
///
/// # Safety
/// As [`share`]; the caller's reference is given up.
pub(crate) unsafe fn release<C: ArcHandle>(ptr: *mut C) {
    if !ptr.is_null() {
        // SAFETY: the caller's reference, given up once (the contract).
        drop(unsafe { Arc::from_raw(ptr as *const C::Rust) });
    }
}
