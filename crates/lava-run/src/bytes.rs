//! The KV byte arithmetic, in one place: what a model's cache takes per
//! token, holding `t` tokens in full, keeping a budget, and what a request
//! reserves for admission, for every [`KvDtype`] and for sliding-window layers.
//!
//! A global layer stores, per KV head and token, a key row and a value row of
//! [`KvDtype::row_bytes`]`(D)` bytes each (f32: `4 D`; f16: `2 D`; q8_0:
//! `D + 2 D / 32`). A local (sliding-window) layer of window `w` keeps a ring
//! of `w` positions in f32 whatever the dtype, allocated whole once it holds
//! a token ([`lava_cache::SlidingWindowCache`]).
//!
//! The reservation of a request (`lava serve --kv-memory`) counts, per KV head
//! of every layer, the tokens its cache can hold at the end of its generation:
//!
//! - full cache: the whole prompt plus `max_tokens`;
//! - a compressing policy with budget `B` and window `w`: `min(prompt, B + w)`
//!   plus `max_tokens`. `B` already counts the window; the extra `w` covers
//!   what adaptive allocations keep above the nominal budget (the published
//!   LAVa head floor keeps about `alpha * w` tokens per head more, pyramid
//!   rounding a few), so the reservation is an upper bound of what stays.

use burn::tensor::backend::Backend;
use lava_cache::{CacheShape, KvDtype, PolicyConfig, PolicyName};
use lava_llama::Llama;

/// The byte arithmetic of one model's KV cache stored as one [`KvDtype`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvBytes {
    shape: CacheShape,
    kv_dtype: KvDtype,
    /// Per layer: its sliding window, `None` for a global layer (empty: all global).
    windows: Vec<Option<usize>>,
}

impl KvBytes {
    /// A cache of `shape` whose layers are all global, K/V stored as `kv_dtype`.
    pub fn new(shape: CacheShape, kv_dtype: KvDtype) -> Self {
        Self { shape, kv_dtype, windows: Vec::new() }
    }

    /// The same with layer `l` local of window `windows[l]` (`None`: global),
    /// as [`Llama::layer_windows`] gives them.
    pub fn with_windows(mut self, windows: Vec<Option<usize>>) -> Self {
        self.windows = windows;
        self
    }

    /// `model`'s cache, its sliding-window layers included.
    pub fn for_model<B: Backend>(model: &Llama<B>, kv_dtype: KvDtype) -> Self {
        Self::new(model.cache_shape(), kv_dtype).with_windows(model.layer_windows())
    }

    /// Global layers.
    fn global_layers(&self) -> u64 {
        (self.shape.layers - self.local_windows().count()) as u64
    }

    /// The windows of the local layers.
    fn local_windows(&self) -> impl Iterator<Item = usize> + '_ {
        self.windows.iter().take(self.shape.layers).flatten().copied()
    }

    /// Bytes of K and V of one token in one layer (every KV head).
    fn layer_token_bytes(&self) -> u64 {
        (self.shape.kv_heads as u64) * 2 * self.kv_dtype.row_bytes(self.shape.head_dim) as u64
    }

    /// Bytes of the rings of the local layers once they hold a token (f32, whole windows).
    fn ring_bytes(&self, tokens: usize) -> u64 {
        if tokens == 0 {
            return 0;
        }
        let per_position = (self.shape.kv_heads as u64) * 2 * KvDtype::F32.row_bytes(self.shape.head_dim) as u64;
        self.local_windows().fold(0u64, |acc, w| acc.saturating_add(per_position.saturating_mul(w as u64)))
    }

    /// Bytes one more token takes in the global layers (all layers of a model without local ones).
    pub fn per_token(&self) -> u64 {
        self.global_layers().saturating_mul(self.layer_token_bytes())
    }

    /// Bytes of a full cache holding `tokens` tokens (rings included).
    pub fn full(&self, tokens: usize) -> u64 {
        self.per_token().saturating_mul(tokens as u64).saturating_add(self.ring_bytes(tokens))
    }

    /// Bytes kept by a compressing cache holding `budget` tokens per KV head
    /// of every global layer after a prompt of `tokens` (its nominal size:
    /// `L * H_kv * min(budget, tokens) * 2 * row_bytes`), rings included.
    pub fn at_budget(&self, budget: usize, tokens: usize) -> u64 {
        self.per_token().saturating_mul(budget.min(tokens) as u64).saturating_add(self.ring_bytes(tokens))
    }

    /// The bytes a request reserves: a prompt of `prompt_tokens` and up to
    /// `max_tokens` generated under `policy` (module docs), rings included.
    pub fn reservation(&self, policy: &PolicyConfig, prompt_tokens: usize, max_tokens: usize) -> u64 {
        let kept = if policy.policy == PolicyName::Full {
            prompt_tokens
        } else {
            prompt_tokens.min(policy.budget.saturating_add(policy.window))
        };
        let total = kept.saturating_add(max_tokens);
        self.per_token().saturating_mul(total as u64).saturating_add(self.ring_bytes(prompt_tokens.saturating_add(max_tokens)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M: 30 layers, 3 KV heads of 64.
    const SMOLLM2: CacheShape = CacheShape { layers: 30, query_heads: 9, kv_heads: 3, head_dim: 64 };

    #[test]
    fn per_token_bytes_by_hand_for_every_dtype() {
        // 30 layers * 3 heads * (K + V) * 64 values * 4 bytes.
        assert_eq!(KvBytes::new(SMOLLM2, KvDtype::F32).per_token(), 30 * 3 * 2 * 256);
        assert_eq!(KvBytes::new(SMOLLM2, KvDtype::F32).per_token(), 46_080);
        // f16: 2 bytes a value.
        assert_eq!(KvBytes::new(SMOLLM2, KvDtype::F16).per_token(), 30 * 3 * 2 * 128);
        // q8_0: 64 one-byte codes and two f16 scales (blocks of 32) per row = 68 bytes.
        assert_eq!(KvBytes::new(SMOLLM2, KvDtype::Q8_0).per_token(), 30 * 3 * 2 * 68);
        assert_eq!(KvBytes::new(SMOLLM2, KvDtype::Q8_0).full(1000), 12_240_000);
        assert_eq!(KvBytes::new(SMOLLM2, KvDtype::F16).full(0), 0);
    }

    #[test]
    fn budget_bytes_are_the_nominal_size() {
        let f32 = KvBytes::new(SMOLLM2, KvDtype::F32);
        assert_eq!(f32.at_budget(128, 4096), 46_080 * 128);
        // A prompt shorter than the budget keeps all of it.
        assert_eq!(f32.at_budget(128, 100), 46_080 * 100);
        assert_eq!(KvBytes::new(SMOLLM2, KvDtype::Q8_0).at_budget(128, 512), 30 * 3 * 128 * 2 * 68);
    }

    #[test]
    fn smollm2_reservation_holds_about_five_full_4k_conversations_per_gib() {
        let f32 = KvBytes::new(SMOLLM2, KvDtype::F32);
        let full = f32.reservation(&PolicyConfig::new(PolicyName::Full, 128), 4096, 64);
        let lava = f32.reservation(&PolicyConfig::new(PolicyName::Lava, 128), 4096, 64);
        assert_eq!(full, 46_080 * 4160);
        // Budget 128 plus the window of 32 plus the 64 generated.
        assert_eq!(lava, 46_080 * (128 + 32 + 64));
        assert_eq!((1u64 << 30) / full, 5);
        assert!((1u64 << 30) / lava >= 16);
        // A short prompt reserves only what it has.
        assert_eq!(f32.reservation(&PolicyConfig::new(PolicyName::Lava, 128), 10, 5), 46_080 * 15);
        let q8 = KvBytes::new(SMOLLM2, KvDtype::Q8_0);
        assert_eq!(q8.reservation(&PolicyConfig::new(PolicyName::Full, 128), 100, 28), 30 * 3 * 2 * 68 * 128);
    }

    #[test]
    fn sliding_window_layers_count_their_f32_rings() {
        // Six layers, 2 KV heads of 32: layers 0..5 local of window 8, layer 5 global.
        let shape = CacheShape { layers: 6, query_heads: 4, kv_heads: 2, head_dim: 32 };
        let windows = vec![Some(8), Some(8), Some(8), Some(8), Some(8), None];
        let q8 = KvBytes::new(shape, KvDtype::Q8_0).with_windows(windows.clone());
        // One global layer: 2 heads * (K + V) * (32 + 2) bytes a token.
        assert_eq!(q8.per_token(), 2 * 2 * 34);
        // Each ring: 2 heads * (K + V) * 8 positions * 32 f32 values = 4096 bytes.
        let rings = 5 * 2 * 2 * 8 * 32 * 4;
        assert_eq!(rings, 20_480);
        assert_eq!(q8.full(100), 136 * 100 + 20_480);
        assert_eq!(q8.full(0), 0);
        // The compressing budget applies to the global layer only.
        assert_eq!(q8.at_budget(16, 100), 136 * 16 + 20_480);
        assert_eq!(q8.reservation(&PolicyConfig::new(PolicyName::Full, 64), 50, 10), 136 * 60 + 20_480);
        // Without the windows every layer counts as global.
        assert_eq!(KvBytes::new(shape, KvDtype::F32).per_token(), 6 * 2 * 2 * 128);
        let f32 = KvBytes::new(shape, KvDtype::F32).with_windows(windows);
        assert_eq!(f32.full(3), 3 * 2 * 2 * 128 + 20_480);
    }
}
