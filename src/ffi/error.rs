//! Result codes, the error object, and the panic boundary every export runs in.

use crate::engine::cuda::DeviceFailure;
use crate::error::{Error, ErrorKind};
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Result of every fallible call. The numbers are frozen: new codes are only
/// ever appended.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum lsk_result {
    LSK_OK = 0,
    /// A required pointer argument was NULL.
    LSK_ERR_NULL_POINTER = 1,
    /// An argument is out of range (token id, exit layer, enum value, option).
    LSK_ERR_INVALID_ARGUMENT = 2,
    /// A file could not be opened or read.
    LSK_ERR_IO = 3,
    /// config.json / generation_config.json is invalid or unsupported.
    LSK_ERR_CONFIG = 4,
    /// A weight file is missing or corrupt, or a tensor is wrong.
    LSK_ERR_WEIGHTS = 5,
    /// tokenizer.json is invalid, or encoding/decoding failed.
    LSK_ERR_TOKENIZER = 6,
    /// The session's context is full.
    LSK_ERR_CONTEXT_OVERFLOW = 7,
    /// The feature is recognised but not supported.
    LSK_ERR_UNSUPPORTED = 8,
    /// An output buffer is too small; the needed size was written.
    LSK_ERR_BUFFER_TOO_SMALL = 9,
    /// The session is in use by another call (another thread, or a callback).
    LSK_ERR_BUSY = 10,
    /// An internal panic was caught; the handle may be left in an unspecified
    /// (but memory-safe) state.
    LSK_ERR_PANIC = 11,
    /// An options/output struct's `struct_size` is smaller than this library's version of it.
    LSK_ERR_STRUCT_SIZE = 12,
    /// A string argument is not valid UTF-8.
    LSK_ERR_UTF8 = 13,
    /// A limit set in `lsk_model_options` (context per session, KV-cache
    /// memory) would be exceeded.
    LSK_ERR_RESOURCE_LIMIT = 14,
    /// A device (GPU) call failed: a lost device, a failed launch.
    LSK_ERR_DEVICE = 15,
    /// The device ran out of memory.
    LSK_ERR_OUT_OF_MEMORY = 16,
    /// The session's abort callback stopped the call; the session is as it
    /// was before it.
    LSK_ERR_ABORTED = 17,
}

use lsk_result::*;

/// Error details: a code and a message. Free with `lsk_error_free`.
pub struct lsk_error {
    code: lsk_result,
    message: CString,
}

/// What an export returns on failure, before it crosses the boundary.
#[derive(Debug, Clone)]
pub struct FfiError {
    pub code: lsk_result,
    pub message: String,
}

impl FfiError {
    pub fn new(code: lsk_result, message: impl Into<String>) -> Self {
        FfiError {
            code,
            message: message.into(),
        }
    }
    pub fn null(what: &str) -> Self {
        Self::new(LSK_ERR_NULL_POINTER, format!("`{what}` must not be NULL"))
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(LSK_ERR_INVALID_ARGUMENT, message)
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> Self {
        let code = match e.kind() {
            ErrorKind::Io => LSK_ERR_IO,
            ErrorKind::Config => LSK_ERR_CONFIG,
            ErrorKind::Weights => LSK_ERR_WEIGHTS,
            ErrorKind::Tokenizer => LSK_ERR_TOKENIZER,
            ErrorKind::InvalidArgument => LSK_ERR_INVALID_ARGUMENT,
            ErrorKind::ContextOverflow => LSK_ERR_CONTEXT_OVERFLOW,
            ErrorKind::Unsupported => LSK_ERR_UNSUPPORTED,
            ErrorKind::ResourceLimit => LSK_ERR_RESOURCE_LIMIT,
            ErrorKind::Device => LSK_ERR_DEVICE,
            ErrorKind::OutOfMemory => LSK_ERR_OUT_OF_MEMORY,
            ErrorKind::Aborted => LSK_ERR_ABORTED,
        };
        FfiError::new(code, e.message())
    }
}

pub type FfiResult<T = ()> = Result<T, FfiError>;

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Run `f`, turning errors and panics into a result code and, when `err` is
/// not NULL, an error object stored in `*err`.
pub fn boundary(err: *mut *mut lsk_error, f: impl FnOnce() -> FfiResult) -> lsk_result {
    let e = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return LSK_OK,
        Ok(Err(e)) => e,
        Err(p) => match p.downcast::<DeviceFailure>() {
            // A device failure inside a pass is an error of its own kind.
            Ok(failure) => FfiError::from(failure.0),
            Err(p) => FfiError::new(
                LSK_ERR_PANIC,
                format!("internal panic: {}", panic_message(&*p)),
            ),
        },
    };
    store(err, &e);
    e.code
}

/// Hand `e` to the caller through `err` when it is not NULL.
pub(crate) fn store(err: *mut *mut lsk_error, e: &FfiError) {
    if !err.is_null() {
        let message = CString::new(e.message.replace('\0', "\\0")).unwrap_or_default();
        let boxed = Box::new(lsk_error {
            code: e.code,
            message,
        });
        // SAFETY: the caller passed a writable `lsk_error **` (documented).
        unsafe { *err = Box::into_raw(boxed) };
    }
}

/// The error's code.
///
/// Returns `LSK_ERR_NULL_POINTER` when `err` is NULL.
#[no_mangle]
pub extern "C" fn lsk_error_code(err: *const lsk_error) -> lsk_result {
    // SAFETY: a non-NULL `err` came from this library and is not freed (documented).
    unsafe { err.as_ref() }.map_or(LSK_ERR_NULL_POINTER, |e| e.code)
}

/// The error's message, NUL-terminated UTF-8, owned by `err` (valid until
/// `lsk_error_free`). Returns "" when `err` is NULL.
#[no_mangle]
pub extern "C" fn lsk_error_message(err: *const lsk_error) -> *const c_char {
    // SAFETY: as in lsk_error_code.
    match unsafe { err.as_ref() } {
        Some(e) => e.message.as_ptr(),
        None => c"".as_ptr(),
    }
}

/// Free an error. NULL is ignored.
#[no_mangle]
pub extern "C" fn lsk_error_free(err: *mut lsk_error) {
    boundary(std::ptr::null_mut(), || {
        if !err.is_null() {
            // SAFETY: `err` came from Box::into_raw in `boundary` and is freed once (documented).
            drop(unsafe { Box::from_raw(err) });
        }
        Ok(())
    });
}

/// A short, static description of a result code ("ok", "null pointer", ...).
#[no_mangle]
pub extern "C" fn lsk_result_name(code: u32) -> *const c_char {
    let s: &'static std::ffi::CStr = match code {
        0 => c"ok",
        1 => c"null pointer",
        2 => c"invalid argument",
        3 => c"i/o error",
        4 => c"bad config",
        5 => c"bad weights",
        6 => c"tokenizer error",
        7 => c"context overflow",
        8 => c"unsupported",
        9 => c"buffer too small",
        10 => c"session busy",
        11 => c"internal panic",
        12 => c"struct size mismatch",
        13 => c"invalid utf-8",
        14 => c"resource limit",
        15 => c"device failure",
        16 => c"out of device memory",
        17 => c"aborted",
        _ => c"unknown result code",
    };
    s.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_failure_inside_a_pass_is_its_own_code_not_a_panic() {
        for (kind, code) in [
            (ErrorKind::Device, LSK_ERR_DEVICE),
            (ErrorKind::OutOfMemory, LSK_ERR_OUT_OF_MEMORY),
        ] {
            let mut err: *mut lsk_error = std::ptr::null_mut();
            let r = boundary(&mut err, || {
                std::panic::panic_any(DeviceFailure(Error::new(kind, "CUDA: a pass: X")))
            });
            assert_eq!(r, code);
            assert_eq!(lsk_error_code(err), code);
            // SAFETY: the message of the error just made.
            let msg = unsafe { std::ffi::CStr::from_ptr(lsk_error_message(err)) };
            assert_eq!(msg.to_str().unwrap(), "CUDA: a pass: X");
            lsk_error_free(err);
        }
        assert_eq!(
            boundary(std::ptr::null_mut(), || panic!("x")),
            LSK_ERR_PANIC
        );
    }
}
