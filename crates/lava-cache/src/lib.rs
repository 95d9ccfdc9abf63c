//! # lava-cache
//!
//! A backend-generic KV cache for Burn decoder models, with the LAVa eviction
//! policy (arXiv 2509.09754) and the baselines it is measured against.
//!
//! A model hands each attention layer's RoPE-rotated queries, keys and values to
//! a [`KvCache`]; the cache stores what it keeps and returns the attention output.
//! Because the cache computes attention itself, it sees the window queries it
//! needs to score tokens and can keep a different number of tokens per head.
//!
//! Shapes are written `[heads, tokens, head_dim]` (batch 1).

mod attention;
mod error;
mod full;
mod host;
pub mod policy;
mod select;

pub use attention::causal_attention;
pub use error::CacheError;
pub use full::FullCache;
pub use policy::{Composition, HeadAllocation, LayerAllocation, PolicyConfig, PolicyName, Pooling, Scorer};
pub use select::{select_positions, LayerQkv, LayerSelection, Selection};

use burn::tensor::{backend::Backend, Tensor};

/// Static description of the attention layers a cache serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    /// Number of attention layers `L`.
    pub layers: usize,
    /// Query heads per layer `H_q`.
    pub query_heads: usize,
    /// Key/value heads per layer `H_kv` (GQA: `H_q` is a multiple of it).
    pub kv_heads: usize,
    /// Head dimension `D`.
    pub head_dim: usize,
}

impl CacheShape {
    /// Query heads served by each KV head, `G = H_q / H_kv`.
    pub fn group_size(&self) -> usize {
        self.query_heads / self.kv_heads.max(1)
    }

    /// Checks that the shape is usable (non-zero, `H_q` a multiple of `H_kv`).
    pub fn validate(&self) -> Result<(), CacheError> {
        if self.layers == 0 || self.query_heads == 0 || self.kv_heads == 0 || self.head_dim == 0 {
            return Err(CacheError::InvalidShape(format!(
                "every dimension must be non-zero, got {self:?}"
            )));
        }
        if self.query_heads % self.kv_heads != 0 {
            return Err(CacheError::InvalidShape(format!(
                "query heads ({}) must be a multiple of KV heads ({})",
                self.query_heads, self.kv_heads
            )));
        }
        Ok(())
    }
}

/// The cache interface a model's attention layers call.
///
/// For each forward pass the model calls [`KvCache::attend`] once per layer, in
/// layer order, with the new tokens' RoPE-rotated projections. The cache appends
/// them, computes causal attention of the new queries over everything it keeps
/// (the new tokens included), may evict, and returns the attention output.
pub trait KvCache<B: Backend> {
    /// Appends `k`, `v` (`[H_kv, T, D]`) to layer `layer` and returns the
    /// attention output of `q` (`[H_q, T, D]`) as `[H_q, T, D]`.
    ///
    /// The new tokens sit at the end of the sequence: query `t` sees every kept
    /// token plus new tokens `0..=t`.
    fn attend(
        &mut self,
        layer: usize,
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
    ) -> Result<Tensor<B, 3>, CacheError>;

    /// Absolute position of the next token: tokens ever appended to layer 0,
    /// whether or not they are still kept.
    fn next_position(&self) -> usize;

    /// Tokens currently kept, summed over layers and KV heads.
    fn retained_tokens(&self) -> usize;

    /// Bytes of K and V currently kept (`retained_tokens * D * 2 * 4`).
    fn retained_bytes(&self) -> usize;

    /// Bytes of K and V storage currently allocated (kept plus headroom).
    fn allocated_bytes(&self) -> usize;

    /// Bytes the same tokens would take in a full, uncompressed cache.
    fn full_bytes(&self) -> usize;

    /// Forgets every token, keeping the shape.
    fn reset(&mut self);
}
