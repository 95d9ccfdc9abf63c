//! A sequence's KV cache, built from a policy, a KV dtype and the model's
//! cache shape: a [`FullCache`] for `full`, else a [`CompressedCache`]; for a
//! model with sliding-window layers a [`SlidingWindowCache`] whose global
//! layers hold one of those.

use burn::tensor::backend::Backend;
use lava_cache::{CacheError, CacheShape, CompressedCache, FullCache, KvCache, KvDtype, PolicyConfig, PolicyName, SlidingWindowCache};
use lava_llama::Llama;

/// How a cache behaves beyond the prefill.
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

impl CacheOptions {
    /// The options `lava serve` builds every request's cache with: room for
    /// `decode_tokens`, K/V stored as `kv_dtype`, and a compressing policy
    /// compressing after every prefill chunk (its prompt is prefilled in chunks).
    pub fn serving(policy: &PolicyConfig, kv_dtype: KvDtype, decode_tokens: usize) -> Self {
        Self { decode_tokens, chunked_prefill: policy.policy != PolicyName::Full, kv_dtype, decode_slack: None }
    }
}

/// The cache `policy` asks for, for a sequence of at most `max_tokens`
/// tokens of `model` (module docs).
pub fn build_cache<B: Backend>(
    model: &Llama<B>,
    policy: &PolicyConfig,
    max_tokens: usize,
    options: CacheOptions,
    device: &B::Device,
) -> Result<Box<dyn KvCache<B>>, CacheError> {
    let build = |shape: CacheShape| -> Result<Box<dyn KvCache<B>>, CacheError> {
        Ok(if policy.policy == PolicyName::Full {
            Box::new(full_cache_for(shape, max_tokens, options, device)?)
        } else {
            Box::new(compressed_cache_for(shape, policy, max_tokens, options, device)?)
        })
    };
    let windows = model.layer_windows();
    if windows.iter().all(|w| w.is_none()) {
        return build(model.cache_shape());
    }
    // Sliding-window layers: rings for the local layers, the policy's cache for the global ones.
    Ok(Box::new(SlidingWindowCache::new(model.cache_shape(), windows, device, build)?))
}

/// A full cache for `model`: a [`FullCache`] (f32), or for a model with
/// sliding-window layers a [`SlidingWindowCache`] whose global layers are one.
pub fn full_cache<B: Backend>(model: &Llama<B>, max_tokens: usize, device: &B::Device) -> Result<Box<dyn KvCache<B>>, CacheError> {
    build_cache(model, &PolicyConfig::new(PolicyName::Full, 0), max_tokens, CacheOptions::default(), device)
}

/// The [`CompressedCache`] of [`build_cache`] for a compressing policy, as
/// itself (to read its kept positions), over all of the model's layers.
pub fn compressed_cache<B: Backend>(
    model: &Llama<B>,
    policy: &PolicyConfig,
    max_tokens: usize,
    options: CacheOptions,
    device: &B::Device,
) -> Result<CompressedCache<B>, CacheError> {
    compressed_cache_for(model.cache_shape(), policy, max_tokens, options, device)
}

/// The [`FullCache`] of [`build_cache`] for a cache of `shape` (all of a
/// model's layers, or its global layers alone): room for `max_tokens`, decode
/// headroom for `options.decode_tokens`, K/V stored as `options.kv_dtype`.
pub fn full_cache_for<B: Backend>(shape: CacheShape, max_tokens: usize, options: CacheOptions, device: &B::Device) -> Result<FullCache<B>, CacheError> {
    FullCache::<B>::new(shape, max_tokens, device)?.with_decode_headroom(options.decode_tokens).with_kv_dtype(options.kv_dtype)
}

/// [`compressed_cache`] for a cache of `shape` (all of a model's layers, or
/// its global layers alone).
pub fn compressed_cache_for<B: Backend>(
    shape: CacheShape,
    policy: &PolicyConfig,
    max_tokens: usize,
    options: CacheOptions,
    device: &B::Device,
) -> Result<CompressedCache<B>, CacheError> {
    let mut cache = CompressedCache::<B>::new(shape, policy.clone(), max_tokens, device)?
        .with_decode_room(options.decode_tokens)
        .with_chunked_prefill(options.chunked_prefill)
        .with_kv_dtype(options.kv_dtype)?;
    if let Some(slack) = options.decode_slack {
        cache = cache.with_decode_budget(slack);
    }
    Ok(cache)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_ndarray::NdArray;
    use lava_llama::tiny::{tiny_config, RandomWeights};
    use lava_llama::{Logits, Rope};

    use crate::bytes::KvBytes;

    type B = NdArray<f32>;

    #[test]
    fn the_policy_picks_the_cache_and_its_bytes_are_the_arithmetic() {
        let cfg = tiny_config(4, 2, false, false);
        let w = RandomWeights { config: cfg.clone(), seed: 3 };
        let dev = Default::default();
        let m = Llama::<B>::from_source(cfg.clone(), &w, Rope::new(&cfg), &dev).expect("model");
        let prompt: Vec<u32> = (0..40).map(|i| (i * 7 % 64) as u32).collect();
        // Full: every token kept, f32.
        let mut full = build_cache(&m, &PolicyConfig::new(PolicyName::Full, 0), 64, CacheOptions::default(), &dev).expect("full");
        m.forward(&prompt, full.as_mut(), Logits::Last).expect("forward");
        assert_eq!(full.retained_bytes() as u64, KvBytes::for_model(&m, KvDtype::F32).full(40));
        // 2 layers * 2 KV heads * (K + V) * 8 values * 4 bytes = 256 bytes a token.
        assert_eq!(full.retained_bytes(), 40 * 256);
        // A compressing policy keeps its budget per head after the prefill.
        let mut policy = PolicyConfig::new(PolicyName::SnapKv, 16);
        policy.window = 4;
        let mut lava = build_cache(&m, &policy, 64, CacheOptions { decode_tokens: 4, ..CacheOptions::default() }, &dev).expect("snapkv");
        m.forward(&prompt, lava.as_mut(), Logits::Last).expect("forward");
        assert_eq!(lava.retained_bytes() as u64, KvBytes::for_model(&m, KvDtype::F32).at_budget(16, 40));
        // Bad parameters are the cache's error.
        assert!(build_cache(&m, &PolicyConfig::new(PolicyName::Lava, 8), 64, CacheOptions::default(), &dev).is_err());
    }
}
