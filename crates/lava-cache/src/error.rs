use std::fmt;

/// Errors of the KV cache and its policies.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CacheError {
    /// The cache was built with an unusable shape.
    #[error("invalid cache shape: {0}")]
    InvalidShape(String),
    /// A tensor handed to the cache does not have the expected shape.
    #[error("tensor shape mismatch for {what}: expected {expected}, found {found}")]
    ShapeMismatch {
        /// Which tensor.
        what: &'static str,
        /// Expected shape, as text.
        expected: String,
        /// Found shape, as text.
        found: String,
    },
    /// A layer index beyond the cache's layers.
    #[error("layer {layer} out of range: the cache has {layers} layers")]
    LayerOutOfRange {
        /// Requested layer.
        layer: usize,
        /// Layers in the cache.
        layers: usize,
    },
    /// The cache would grow beyond the capacity it was created with.
    #[error("the sequence would reach {needed} tokens but the cache holds at most {capacity}; use a compressing policy or a shorter prompt")]
    CapacityExceeded {
        /// Tokens needed.
        needed: usize,
        /// Capacity.
        capacity: usize,
    },
    /// Invalid policy parameters (budget, window, kernel, alpha...).
    #[error("invalid policy parameters: {0}")]
    InvalidParameters(String),
    /// The backend failed to hand tensor data back to the host (scores and
    /// value norms are read back to choose the kept tokens).
    #[error("reading tensor data from the backend failed: {0}")]
    Backend(String),
    /// An invariant of the cache itself does not hold (a bug of this crate, not
    /// of the input): please report it with the message.
    #[error("internal error of the KV cache (a bug, please report it): {0}")]
    Internal(String),
    /// A snapshot that cannot be taken, read or restored (module
    /// [`snapshot`](crate::snapshot)): the message says which and why.
    #[error("KV snapshot refused: {0}")]
    Snapshot(String),
}

pub(crate) fn dims_str(dims: &[usize]) -> String {
    struct D<'a>(&'a [usize]);
    impl fmt::Display for D<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "[")?;
            for (i, d) in self.0.iter().enumerate() {
                if i > 0 {
                    write!(f, ", ")?;
                }
                write!(f, "{d}")?;
            }
            write!(f, "]")
        }
    }
    D(dims).to_string()
}
