use std::path::PathBuf;

use lava_cache::CacheError;
use lava_llama::ModelError;

/// Errors of the `lava` command, each mapped to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or input values.
    #[error("{0}")]
    Usage(String),
    /// Model or data problems (missing file, corrupt GGUF, download failure).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Cache/policy problems.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// lava's cached copy of a known model does not load (truncated or corrupted on disk).
    #[error("{source}; this is lava's cached copy of a known model: delete {} and run again to fetch it afresh", path.display())]
    CachedModel {
        /// The cached file.
        path: PathBuf,
        /// Why it does not load.
        source: ModelError,
    },
    /// A known model could not be fetched (the message starts with which one).
    #[error("could not fetch {0}")]
    Fetch(String),
    /// A computation failed at run time (reading back a result, an evaluation step).
    #[error("{0}")]
    Runtime(String),
    /// The requested backend cannot run here.
    #[error("{0}")]
    Backend(String),
}

impl From<lava_run::RunError> for CliError {
    fn from(e: lava_run::RunError) -> Self {
        match e {
            lava_run::RunError::Model(m) => CliError::Model(m),
            lava_run::RunError::Cache(c) => CliError::Cache(c),
        }
    }
}

impl CliError {
    /// Exit code: 2 usage, 3 model/data, 4 backend.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Model(ModelError::Input(_)) => 2,
            CliError::Cache(CacheError::InvalidParameters(_)) => 2,
            CliError::Backend(_) => 4,
            _ => 3,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CliError::Io { path: path.into(), source }
    }
}
