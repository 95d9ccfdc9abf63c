//! The recorded prefill's cache for models with sliding-window (local) layers.
//!
//! A local layer keeps a ring of its last `w` positions whatever the policy,
//! so the rings a recorded prefill fills are every policy's rings: a policy's
//! cache is those rings around a cache of the global layers alone, built from
//! the global layers' recorded keys and values (the layers a policy's budget
//! goes to, renumbered `0..` as [`SlidingWindowCache`] numbers them), which
//! is what `lava generate` builds live.

use burn::tensor::backend::Backend;
use lava_cache::{CacheShape, FullCache, KvCache, SlidingWindowCache};
use lava_llama::Llama;

use crate::error::RunError;

type Result<T> = std::result::Result<T, RunError>;

/// The full cache a prefill runs through: a [`FullCache`], or for a model
/// with local layers a [`SlidingWindowCache`] whose global layers are one.
pub(crate) enum FullPrefill<B: Backend> {
    /// Every layer global.
    Plain(FullCache<B>),
    /// Rings for the local layers, a full cache for the global ones.
    Sliding(SlidingWindowCache<B>),
}

fn cache_err(e: lava_cache::CacheError) -> RunError {
    RunError::Cache(e)
}

fn uncopyable() -> RunError {
    RunError::Cache(lava_cache::CacheError::Internal("the prefill's cache could not be copied".into()))
}

impl<B: Backend> FullPrefill<B> {
    /// An empty full cache for `model`, room for `max_tokens` positions.
    pub(crate) fn new(model: &Llama<B>, max_tokens: usize) -> Result<Self> {
        let windows = model.layer_windows();
        if windows.iter().all(Option::is_none) {
            return Ok(Self::Plain(FullCache::new(model.cache_shape(), max_tokens, model.device()).map_err(cache_err)?));
        }
        let cache = SlidingWindowCache::new(model.cache_shape(), windows, model.device(), |shape| {
            Ok(Box::new(FullCache::new(shape, max_tokens, model.device())?))
        })
        .map_err(cache_err)?;
        Ok(Self::Sliding(cache))
    }

    /// The cache itself.
    pub(crate) fn cache(&mut self) -> &mut dyn KvCache<B> {
        match self {
            Self::Plain(c) => c,
            Self::Sliding(c) => c,
        }
    }

    /// The cache itself, read-only.
    pub(crate) fn cache_ref(&self) -> &dyn KvCache<B> {
        match self {
            Self::Plain(c) => c,
            Self::Sliding(c) => c,
        }
    }

    /// An independent copy.
    pub(crate) fn copy(&self) -> Result<Self> {
        Ok(match self {
            Self::Plain(c) => Self::Plain(c.clone()),
            Self::Sliding(c) => Self::Sliding(c.try_clone().ok_or_else(uncopyable)?),
        })
    }

    /// An independent copy, boxed.
    pub(crate) fn boxed(&self) -> Result<Box<dyn KvCache<B>>> {
        Ok(match self.copy()? {
            Self::Plain(c) => Box::new(c),
            Self::Sliding(c) => Box::new(c),
        })
    }

    /// `global`, a cache of the global layers built from this prefill's
    /// records, with this prefill's rings around it (as itself for a model
    /// without local layers).
    pub(crate) fn around(&self, global: Box<dyn KvCache<B>>) -> Result<Box<dyn KvCache<B>>> {
        Ok(match self {
            Self::Plain(_) => global,
            Self::Sliding(c) => Box::new(c.with_global_cache(Some(global)).map_err(cache_err)?),
        })
    }
}

/// The shape of the cache a policy compresses for `model`: its global
/// layers alone. Errors for a model whose layers are all local (no layer
/// for a budget).
pub(crate) fn global_shape<B: Backend>(model: &Llama<B>) -> Result<CacheShape> {
    SlidingWindowCache::<B>::global_shape(model.cache_shape(), &model.layer_windows()).ok_or_else(|| {
        RunError::Cache(lava_cache::CacheError::InvalidParameters(
            "every layer of this model attends within a sliding window: no global layer holds a budget, so there is nothing to compress; \
             evaluate a model with global layers"
                .into(),
        ))
    })
}

/// Per model layer: its index among the global layers, `None` for a local one.
pub(crate) fn global_index<B: Backend>(model: &Llama<B>) -> Vec<Option<usize>> {
    let mut next = 0;
    model
        .layer_windows()
        .iter()
        .map(|w| {
            w.is_none().then(|| {
                next += 1;
                next - 1
            })
        })
        .collect()
}
