//! Building prompts and caches the way every command does.

use burn::tensor::backend::Backend;
use lava_cache::{CacheShape, CompressedCache, FullCache, KvCache, KvDtype, PolicyConfig, PolicyName, SlidingWindowCache};
use lava_llama::{Llama, Prompt, Tokenizer};

use crate::error::CliError;

/// Tokenises a prompt into prefill segments.
///
/// - `question = None`: one segment, the whole prompt (question-aware compression:
///   the observation window holds the end of the prompt).
/// - `question = Some(q)`: question-agnostic; the context is one segment and the
///   question (with whatever the chat template puts after it) a second one,
///   prefilled after the context has been compressed.
///
/// Control tokens written in the text are plain text unless `allow_special`.
pub fn prompt_segments(
    tok: &Tokenizer,
    chat: bool,
    allow_special: bool,
    context: &str,
    question: Option<&str>,
) -> Result<Vec<Vec<u32>>, CliError> {
    let joined = match question {
        Some(q) => format!("{context}\n\n{q}"),
        None => context.to_string(),
    };
    let tokens = tok.encode_prompt(&Prompt { user: &joined, chat, question, allow_special, ..Prompt::default() })?;
    Ok(match question {
        None => vec![tokens.context],
        Some(_) => vec![tokens.context, tokens.suffix],
    })
}

/// How a compressing cache behaves beyond the prefill.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheOptions {
    /// Generated tokens to reserve room for.
    pub decode_tokens: usize,
    /// Compress after every prefill chunk, not only the first.
    pub chunked_prefill: bool,
    /// Decode-time eviction slack (`None`: never evict during decode).
    pub decode_slack: Option<usize>,
    /// How keys and values are stored.
    pub kv_dtype: KvDtype,
}

/// The cache a policy asks for: [`FullCache`] for `full`, else a [`CompressedCache`].
pub fn make_cache<B: Backend>(
    model: &Llama<B>,
    policy: &PolicyConfig,
    max_tokens: usize,
    options: CacheOptions,
    device: &B::Device,
) -> Result<Box<dyn KvCache<B>>, CliError> {
    let build = |shape: CacheShape| -> Result<Box<dyn KvCache<B>>, CliError> {
        Ok(if policy.policy == PolicyName::Full {
            Box::new(FullCache::<B>::new(shape, max_tokens, device)?.with_decode_headroom(options.decode_tokens).with_kv_dtype(options.kv_dtype)?)
        } else {
            Box::new(compressed_cache_for(shape, policy, max_tokens, options, device)?)
        })
    };
    let windows = model.layer_windows();
    if windows.iter().all(|w| w.is_none()) {
        return build(model.cache_shape());
    }
    // Sliding-window layers: rings for the local layers, the policy's cache for the global ones.
    let mut failure = None;
    let cache = SlidingWindowCache::new(model.cache_shape(), windows, device, |shape| {
        build(shape).map_err(|e| {
            let msg = e.to_string();
            failure = Some(e);
            lava_cache::CacheError::InvalidParameters(msg)
        })
    });
    match (cache, failure) {
        (Ok(c), _) => Ok(Box::new(c)),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(e.into()),
    }
}

/// A full cache for `model`: a [`FullCache`], or for a model with
/// sliding-window layers a [`SlidingWindowCache`] whose global layers are one.
pub fn full_cache<B: Backend>(model: &Llama<B>, max_tokens: usize, device: &B::Device) -> Result<Box<dyn KvCache<B>>, CliError> {
    make_cache(model, &PolicyConfig::new(PolicyName::Full, 0), max_tokens, CacheOptions::default(), device)
}

/// The [`CompressedCache`] of [`make_cache`] for a compressing policy.
pub fn compressed_cache<B: Backend>(
    model: &Llama<B>,
    policy: &PolicyConfig,
    max_tokens: usize,
    options: CacheOptions,
    device: &B::Device,
) -> Result<CompressedCache<B>, CliError> {
    compressed_cache_for(model.cache_shape(), policy, max_tokens, options, device)
}

/// [`compressed_cache`] for a cache of `shape` (all of a model's layers, or
/// its global layers alone).
fn compressed_cache_for<B: Backend>(
    shape: CacheShape,
    policy: &PolicyConfig,
    max_tokens: usize,
    options: CacheOptions,
    device: &B::Device,
) -> Result<CompressedCache<B>, CliError> {
    let mut cache = CompressedCache::<B>::new(shape, policy.clone(), max_tokens, device)?
        .with_decode_room(options.decode_tokens)
        .with_chunked_prefill(options.chunked_prefill)
        .with_kv_dtype(options.kv_dtype)?;
    if let Some(slack) = options.decode_slack {
        cache = cache.with_decode_budget(slack);
    }
    Ok(cache)
}
