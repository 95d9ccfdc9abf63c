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
//! While a compressing cache prefills one chunk of `T` tokens it holds up to
//! `B + T` tokens per head; only one sequence prefills at a time, and
//! `/metrics` reports the caches' real allocated bytes next to the reserved
//! ones.

use lava_cache::{CacheShape, KvDtype, PolicyConfig, PolicyName};

/// Bytes of K and V stored as `kv_dtype` for one token of every layer and KV head.
pub fn bytes_per_token(shape: CacheShape, kv_dtype: KvDtype) -> u64 {
    (shape.layers as u64) * (shape.kv_heads as u64) * 2 * kv_dtype.row_bytes(shape.head_dim) as u64
}

/// The bytes a request reserves (module docs).
pub fn reservation(shape: CacheShape, kv_dtype: KvDtype, policy: &PolicyConfig, prompt_tokens: usize, max_tokens: usize) -> u64 {
    let kept = if policy.policy == PolicyName::Full {
        prompt_tokens
    } else {
        prompt_tokens.min(policy.budget.saturating_add(policy.window))
    };
    bytes_per_token(shape, kv_dtype).saturating_mul(kept.saturating_add(max_tokens) as u64)
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
        let full = reservation(SMOLLM2, KvDtype::F32, &PolicyConfig::new(PolicyName::Full, 128), 4096, 64);
        let lava = reservation(SMOLLM2, KvDtype::F32, &PolicyConfig::new(PolicyName::Lava, 128), 4096, 64);
        assert_eq!(full, 46_080 * 4160);
        assert_eq!(lava, 46_080 * (128 + 32 + 64));
        assert_eq!((1u64 << 30) / full, 5);
        assert!((1u64 << 30) / lava >= 16);
        // A short prompt reserves only what it has.
        assert_eq!(reservation(SMOLLM2, KvDtype::F32, &PolicyConfig::new(PolicyName::Lava, 128), 10, 5), 46_080 * 15);
        let mut l = Ledger::new(3 * full);
        assert!(l.try_reserve(full) && l.try_reserve(full) && l.try_reserve(full));
        assert!(!l.try_reserve(1));
        l.release(full);
        assert!(l.fits(full) && !l.fits(full + 1));
    }
}
