//! Admission by KV memory: the ledger of reservations against `--kv-memory`.
//!
//! What a request reserves is [`lava_run::bytes::KvBytes::reservation`]: per
//! KV head of every layer, the tokens its cache can hold at the end of its
//! generation, in bytes of K and V as the server stores them (`--kv-dtype`).
//!
//! A model with sliding-window layers (Gemma 3) holds, in each local layer, a
//! ring of its last `w` positions whatever the policy, allocated whole (in
//! f32) at the layer's first token: such a layer reserves its `w` positions,
//! and the counts above apply to the global layers only.
//!
//! While a compressing cache prefills one chunk of `T` tokens it holds up to
//! `B + T` tokens per head; only one sequence prefills at a time, and
//! `/metrics` reports the caches' real allocated bytes next to the reserved
//! ones.

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
    use lava_cache::{CacheShape, KvDtype, PolicyConfig, PolicyName};

    #[test]
    fn the_ledger_admits_up_to_its_limit() {
        let full = 46_080 * 4160;
        let mut l = Ledger::new(3 * full);
        assert!(l.try_reserve(full) && l.try_reserve(full) && l.try_reserve(full));
        assert!(!l.try_reserve(1));
        l.release(full);
        assert!(l.fits(full) && !l.fits(full + 1));
        assert_eq!((l.limit(), l.reserved()), (3 * full, 2 * full));
    }

    /// A Gemma-shaped model: 6 layers, layers 0-4 local with a window of 8,
    /// layer 5 global; 2 KV heads of dimension 4. Bytes by hand: a position of
    /// one layer is 2 heads * 2 (K, V) * 4 values * 4 bytes = 64 bytes in f32.
    fn reservation(shape: CacheShape, windows: &[Option<usize>], kv_dtype: KvDtype, policy: &PolicyConfig, prompt: usize, max_tokens: usize) -> u64 {
        lava_run::KvBytes::new(shape, kv_dtype).with_windows(windows.to_vec()).reservation(policy, prompt, max_tokens)
    }

    #[test]
    fn a_local_layer_reserves_its_ring_not_the_whole_sequence() {
        let shape = CacheShape { layers: 6, query_heads: 4, kv_heads: 2, head_dim: 4 };
        let windows = [Some(8), Some(8), Some(8), Some(8), Some(8), None];
        let full = PolicyConfig::new(PolicyName::Full, 128);
        // 100 prompt tokens + 20 generated: 5 rings of 8 positions, one global layer of 120.
        assert_eq!(reservation(shape, &windows, KvDtype::F32, &full, 100, 20), 5 * 8 * 64 + 120 * 64);
        // Shorter than the window: each ring is allocated whole at its first token.
        assert_eq!(reservation(shape, &windows, KvDtype::F32, &full, 3, 2), 5 * 8 * 64 + 5 * 64);
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
