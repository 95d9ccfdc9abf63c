//! Admission by KV memory: what a request reserves, and the ledger of
//! reservations against `--kv-memory`.
//!
//! A request reserves, per KV head of every layer, the tokens its cache can
//! hold at the end of its generation, in bytes of K and V as the server
//! stores them (`--kv-dtype`; f32: `layers * kv_heads * head_dim * 2 * 4` per
//! token, q8_0: `* 34/32` bytes per value instead of 4):
//!
//! - full cache: the whole prompt plus `max_tokens`;
//! - a compressing policy with budget `B` and window `w`: `min(prompt, B + w)`
//!   plus `max_tokens`. `B` already counts the window; the extra `w` covers
//!   what adaptive allocations keep above the nominal budget (the published
//!   LAVa head floor keeps about `alpha * w` tokens per head more, pyramid
//!   rounding a few), so the reservation is an upper bound of what stays.
//!
//! A model with sliding-window layers (Gemma 3) holds, in each local layer, a
//! ring of its last `w` positions whatever the policy: such a layer reserves
//! `min(prompt + max_tokens, w)` positions (f32, as the rings store them), and
//! the counts above apply to the global layers only
//! ([`lava_cache::held_kv_bytes`]).
//!
//! While a compressing cache prefills one chunk of `T` tokens it holds up to
//! `B + T` tokens per head; only one sequence prefills at a time, and
//! `/metrics` reports the caches' real allocated bytes next to the reserved
//! ones.

use lava_cache::{CacheShape, KvDtype, PolicyConfig, PolicyName};

/// Bytes of K and V stored as `kv_dtype` for one token of every layer and KV head.
pub fn bytes_per_token(shape: CacheShape, kv_dtype: KvDtype) -> u64 {
    (shape.layers as u64) * (shape.kv_heads as u64) * 2 * kv_dtype.row_bytes(shape.head_dim) as u64
}

/// The bytes a request reserves for a model of `shape` whose layer `l`
/// attends within `windows[l]` (`None`: a global layer; module docs).
pub fn reservation(
    shape: CacheShape,
    windows: &[Option<usize>],
    kv_dtype: KvDtype,
    policy: &PolicyConfig,
    prompt_tokens: usize,
    max_tokens: usize,
) -> u64 {
    let kept = if policy.policy == PolicyName::Full {
        prompt_tokens
    } else {
        prompt_tokens.min(policy.budget.saturating_add(policy.window))
    };
    let positions = prompt_tokens.saturating_add(max_tokens);
    lava_cache::held_kv_bytes(shape, windows, positions, kept.saturating_add(max_tokens), kv_dtype) as u64
}

/// The reservations held against the limit.
#[derive(Debug, Clone)]
pub struct Ledger {
    limit: u64,
    reserved: u64,
}

impl Ledger {
    /// An empty ledger with `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self { limit, reserved: 0 }
    }

    /// The limit, bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes reserved now.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Whether `bytes` more fit now.
    pub fn fits(&self, bytes: u64) -> bool {
        self.reserved.saturating_add(bytes) <= self.limit
    }

    /// Takes `bytes` if they fit.
    pub fn try_reserve(&mut self, bytes: u64) -> bool {
        let ok = self.fits(bytes);
        if ok {
            self.reserved += bytes;
        }
        ok
    }

    /// Gives `bytes` back.
    pub fn release(&mut self, bytes: u64) {
        self.reserved = self.reserved.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: CacheShape = CacheShape { layers: 30, query_heads: 9, kv_heads: 3, head_dim: 64 };

    #[test]
    fn smollm2_arithmetic_holds_about_five_full_4k_conversations_per_gib() {
        assert_eq!(bytes_per_token(SMOLLM2, KvDtype::F32), 46_080);
        assert_eq!(bytes_per_token(SMOLLM2, KvDtype::Q8_0), 30 * 3 * 2 * 68);
        let full = reservation(SMOLLM2, &[None; 30], KvDtype::F32, &PolicyConfig::new(PolicyName::Full, 128), 4096, 64);
        let lava = reservation(SMOLLM2, &[None; 30], KvDtype::F32, &PolicyConfig::new(PolicyName::Lava, 128), 4096, 64);
        assert_eq!(full, 46_080 * 4160);
        assert_eq!(lava, 46_080 * (128 + 32 + 64));
        assert_eq!((1u64 << 30) / full, 5);
        assert!((1u64 << 30) / lava >= 16);
        // A short prompt reserves only what it has.
        assert_eq!(reservation(SMOLLM2, &[None; 30], KvDtype::F32, &PolicyConfig::new(PolicyName::Lava, 128), 10, 5), 46_080 * 15);
        let mut l = Ledger::new(3 * full);
        assert!(l.try_reserve(full) && l.try_reserve(full) && l.try_reserve(full));
        assert!(!l.try_reserve(1));
        l.release(full);
        assert!(l.fits(full) && !l.fits(full + 1));
    }

    /// A Gemma-shaped model: 6 layers, layers 0-4 local with a window of 8,
    /// layer 5 global; 2 KV heads of dimension 4. Bytes by hand: a position of
    /// one layer is 2 heads * 2 (K, V) * 4 values * 4 bytes = 64 bytes in f32.
    #[test]
    fn a_local_layer_reserves_its_ring_not_the_whole_sequence() {
        let shape = CacheShape { layers: 6, query_heads: 4, kv_heads: 2, head_dim: 4 };
        let windows = [Some(8), Some(8), Some(8), Some(8), Some(8), None];
        let full = PolicyConfig::new(PolicyName::Full, 128);
        // 100 prompt tokens + 20 generated: 5 rings of 8 positions, one global layer of 120.
        assert_eq!(reservation(shape, &windows, KvDtype::F32, &full, 100, 20), 5 * 8 * 64 + 120 * 64);
        // Shorter than the window: each ring holds what there is (3 + 2 positions).
        assert_eq!(reservation(shape, &windows, KvDtype::F32, &full, 3, 2), 5 * 5 * 64 + 5 * 64);
        // A compressing policy bounds the global layer only: min(100, 16 + 4) + 20 = 40 positions.
        let mut lava = PolicyConfig::new(PolicyName::Lava, 16);
        lava.window = 4;
        assert_eq!(reservation(shape, &windows, KvDtype::F32, &lava, 100, 20), 5 * 8 * 64 + 40 * 64);
        // q8_0 stores the global layer's rows as 32 int8 values and one f16 scale per
        // 32-value block (head_dim 32); the rings stay f32.
        let shape32 = CacheShape { head_dim: 32, ..shape };
        let q8_row = 32 + 2; // 32 int8 values + one f16 scale
        assert_eq!(
            reservation(shape32, &windows, KvDtype::Q8_0, &full, 100, 20),
            (5 * 8 * 2 * 2 * 32 * 4 + 120 * 2 * 2 * q8_row) as u64
        );
        // Without local layers it is the old count: every layer holds every position.
        assert_eq!(reservation(shape, &[None; 6], KvDtype::F32, &full, 100, 20), 6 * 120 * 64);
    }
}
