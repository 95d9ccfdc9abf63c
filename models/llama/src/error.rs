use std::path::PathBuf;

use lava_cache::CacheError;

use crate::gguf::GgufError;

/// Errors of the model crate: loading, tokenising, running.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A GGUF problem.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The KV cache refused an operation.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Inconsistent or invalid configuration.
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// An architecture or feature lava does not support.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A weight is missing or has the wrong shape or type.
    #[error("{path}: {detail}")]
    Weights {
        /// File or directory.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The tokenizer could not be built or failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Invalid input to the model (empty prompt, too long...).
    #[error("{0}")]
    Input(String),
    /// A size read from a file or an argument needs more memory than this
    /// process can get (see `crate::memory`).
    #[error("not enough memory: {what} needs {} but only {} is available (free memory and the address-space limit); use a smaller model or input, or free memory", crate::memory::human_bytes(*needed), crate::memory::human_bytes(*available))]
    OutOfMemory {
        /// What the memory is for.
        what: String,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// The backend failed to hand tensor data back to the host (logits,
    /// sampled ids, attention outputs read for the host path).
    #[error("reading tensor data from the backend failed: {0}")]
    Backend(String),
    /// An invariant of the model code itself does not hold (a bug, not a
    /// problem with the input): please report it with the message.
    #[error("internal error of the model (a bug, please report it): {0}")]
    Internal(String),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
