//! One error type for the whole crate. Every variant carries a message that
//! names the file, tensor or argument at fault; `kind()` gives the stable
//! category the C API maps to its result codes.

use std::path::Path;

/// Stable error categories (the C API freezes their numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A file could not be opened or read.
    Io,
    /// `config.json` / `generation_config.json` is missing, malformed or unsupported.
    Config,
    /// A weight file is missing, corrupt, or a tensor has the wrong name/shape/dtype.
    Weights,
    /// `tokenizer.json` is missing or invalid, or decoding failed.
    Tokenizer,
    /// A caller argument is out of range (token id, exit layer, option value).
    InvalidArgument,
    /// The session's context is full.
    ContextOverflow,
    /// A feature that is recognised but not implemented.
    Unsupported,
    /// A configured resource limit (context per session, KV-cache memory per
    /// model) would be exceeded.
    ResourceLimit,
    /// A device (GPU) call failed: a lost device, a failed launch.
    Device,
    /// The device ran out of memory.
    OutOfMemory,
    /// The session's abort callback asked to stop; the pass left nothing behind.
    Aborted,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
    pub fn weights(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Weights, message)
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    pub fn io(path: &Path, err: std::io::Error) -> Self {
        Self::new(ErrorKind::Io, format!("{}: {err}", path.display()))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
