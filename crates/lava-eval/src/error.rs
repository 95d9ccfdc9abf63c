//! The error type of the crate.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while loading evaluation data, generating prompts,
/// scoring or writing results. Errors about files carry the path (and line, for
/// line-oriented formats) so that a bad input can be found quickly.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The model or the cache failed during an evaluation (the typed error is the source).
    #[error("model: {0}")]
    Model(#[from] lava_llama::ModelError),
    /// An invariant of the evaluation code itself does not hold (a bug, not a
    /// problem with the input): please report it with the message.
    #[error("internal error of the evaluation (a bug, please report it): {0}")]
    Internal(String),
    /// Reading or writing a file or directory failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A JSON document (or one line of a JSONL file) did not parse.
    #[error("{}{}: invalid JSON: {source}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Json {
        /// The file involved.
        path: PathBuf,
        /// 1-based line number for JSONL files; `None` for whole-file JSON documents.
        line: Option<usize>,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// A file parsed but its content is not what was expected.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    InvalidData {
        /// The file involved.
        path: PathBuf,
        /// 1-based line number, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },

    /// A dataset / task name that this crate does not know.
    #[error("unknown dataset or task `{0}`")]
    UnknownDataset(String),

    /// A metric could not be computed for the given inputs (for example a passage-retrieval
    /// ground truth without `Paragraph N`, or a classification task without `all_classes`).
    /// The Python reference would raise in these cases.
    #[error("metric {metric} for dataset `{dataset}`: {message}")]
    Metric {
        /// The dataset being scored.
        dataset: String,
        /// The metric's name.
        metric: &'static str,
        /// What is wrong.
        message: String,
    },

    /// A prompt template references an unknown field or is malformed.
    #[error("template error: {0}")]
    Template(String),

    /// A synthetic prompt cannot be made short enough for the requested length.
    #[error(
        "task {task}: even the smallest prompt needs {min_tokens} tokens (incl. {tokens_to_generate} to generate), \
         more than max_seq_length = {max_seq_length}"
    )]
    DoesNotFit {
        /// The task.
        task: String,
        /// The requested total length.
        max_seq_length: usize,
        /// Tokens the smallest prompt needs, including the generation budget.
        min_tokens: usize,
        /// The task's generation budget.
        tokens_to_generate: usize,
    },

    /// A caller-supplied argument is out of range or inconsistent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Drawing or encoding the heatmap failed.
    #[error("plot {}: {message}", path.display())]
    Plot {
        /// The output file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

impl EvalError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        EvalError::Io { path: path.as_ref().to_path_buf(), source }
    }

    /// Wraps a JSON error with the path (and optional 1-based line) it happened on.
    pub fn json(path: impl AsRef<Path>, line: Option<usize>, source: serde_json::Error) -> Self {
        EvalError::Json { path: path.as_ref().to_path_buf(), line, source }
    }

    /// An [`EvalError::InvalidData`] for `path` (and optional 1-based line).
    pub fn invalid(path: impl AsRef<Path>, line: Option<usize>, message: impl Into<String>) -> Self {
        EvalError::InvalidData { path: path.as_ref().to_path_buf(), line, message: message.into() }
    }
}

/// Result alias of the crate.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;

impl From<lava_run::RunError> for EvalError {
    /// A failure of running the model over a cache, as the model reports it.
    fn from(e: lava_run::RunError) -> Self {
        EvalError::Model(e.into())
    }
}
