//! What can go wrong while running a sequence.

use lava_cache::CacheError;
use lava_llama::ModelError;

/// An error of building a sequence's cache or running the model over it.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The model failed (bad input, backend, a read-back of its logits).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The cache or its policy failed (bad parameters, capacity).
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl RunError {
    /// A backend failure reading tensor data back to the host.
    pub(crate) fn read_back(e: impl std::fmt::Debug) -> Self {
        RunError::Model(ModelError::Backend(format!("{e:?}")))
    }
}

impl From<RunError> for ModelError {
    /// The model's error for one of running: a cache error as the model
    /// reports one (its forward pass wraps them the same way).
    fn from(e: RunError) -> Self {
        match e {
            RunError::Model(m) => m,
            RunError::Cache(c) => ModelError::from(c),
        }
    }
}
