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
//!
//! # Where things live
//!
//! - the policy, [`policy`]: `scorer` (each scorer once, [`policy::scorer::head_scores`],
//!   for the prefill and for re-scoring), `layer_budget` and `head_budget` (the
//!   allocations), `plan` (rankings and budgets into kept positions);
//! - the storage, `compressed/storage.rs`: one layer's ragged slots, their growth,
//!   append, retain and the masked slot attention; the state machine (prefill,
//!   cascade, decode-time eviction, chunked prefill) in `compressed/mod.rs`,
//!   re-scoring in `compressed/rescore.rs`; [`FullCache`] in `full.rs`;
//! - the CPU fast path: the `flex` feature routes attention and the scorers'
//!   inputs to the `lava-flex` host kernels when the backend is `burn-flex`
//!   (`fast_path.rs`, the one switch); without it, or on any other backend, the
//!   generic tensor-op code runs, and it is the reference the tests compare with.
//!
//! # Caches and entry points
//!
//! - [`FullCache`]: keeps everything.
//! - [`CompressedCache`]: at each layer's prefill, keeps per KV head the tokens a
//!   policy selects; decoding appends. Storage is flat per layer (one row per
//!   kept (KV head, token) slot plus each slot's head and position), so heads of
//!   different lengths cost no padding, and attention masks other heads' slots
//!   with `-inf`: a constant number of tensor ops per layer. See its module docs.
//!   Two options go beyond the reference (below): decode-time eviction and
//!   chunked prefill.
//! - [`select_positions`]: for researchers and verification, runs a policy on one
//!   sequence's per-layer `q`, `k`, `v` and returns each layer's budget and each
//!   KV head's kept positions. The cache makes the same selection.
//!
//! # Policies
//!
//! A policy is a [`Scorer`], a [`LayerAllocation`] and a [`HeadAllocation`]
//! (module [`policy`], math in `lava-algorithm.md`). `B` is the budget in tokens
//! per KV head per layer, window `w` included; `B_l` a layer's budget beyond the
//! window.
//!
//! | name            | scorer            | layer budgets        | head budgets     |
//! |-----------------|-------------------|----------------------|------------------|
//! | `full`          | none              | everything           | everything       |
//! | `streaming`     | sinks + recency   | uniform `B - w`      | uniform          |
//! | `h2o`           | cumulative attn.  | uniform              | uniform          |
//! | `snapkv`        | window, group mean| uniform              | uniform          |
//! | `pyramidkv`     | window, group mean| pyramid (`beta`)     | uniform          |
//! | `ada-snapkv`    | window, group mean| uniform              | adaptive (`alpha`)|
//! | `ada-pyramidkv` | window, group mean| pyramid              | adaptive         |
//! | `lava`          | LAVa (value-norm, group max) | entropy   | adaptive         |
//! | `lava-no-layer` | LAVa              | uniform              | adaptive         |
//! | `lava-no-head`  | LAVa              | entropy              | uniform          |
//! | `lava-matched`  | LAVa              | entropy              | adaptive, matched floor |
//! | `cake`          | CAKE (mean + 200 var, avgpool 5) | preference (entropy x variance) | uniform |
//!
//! Any other composition is a policy too, [`PolicyName::Custom`], parsed from
//! `scorer+layers+heads` (`"lava+pyramid+uniform".parse::<PolicyName>()`): a new
//! policy is a new composition, and the cache runs it with no other change.
//!
//! Defaults ([`PolicyConfig::new`]): window 32, kernel 7, maxpool, alpha 0.2,
//! beta 20, 4 sinks; the head floor rule is the policy's own
//! ([`PolicyName::default_floor_rule`], overridden by [`PolicyConfig::floor_rule`]).
//! CAKE uses the cakekv defaults (`tau1 = tau2 = 1`, `gamma = 200`, average
//! pooling of kernel 5, module [`policy::scorer::cake`]) whatever the pooling
//! parameters say.
//!
//! # Conventions where the reference code is silent or differs
//!
//! The selections match the public reference code (MGDDestiny/Lava, built on
//! Ada-KV) exactly, as an independent re-implementation in the tests checks,
//! except for these documented choices:
//!
//! 1. **Head floor** ([`FloorRule`], `lava-algorithm.md` §4). `lava`,
//!    `lava-no-layer` and `lava-no-head` follow the published LAVa code as run:
//!    `int(alpha * B)` with the whole budget `B` (window included), the same in
//!    every layer (its per-layer update writes a misspelled attribute that is
//!    never read); this is a per-layer minimum and keeps about `alpha * w` tokens
//!    per head above the nominal budget (+16% at `B = 64`, +5% at 128).
//!    `ada-snapkv` and `ada-pyramidkv` follow the Ada-KV code, `floor(alpha *
//!    B_l)`. `lava-matched` is `lava` with `int(alpha * (B - w))`: the same kind
//!    of per-layer minimum at a total equal to the nominal `L * H_kv * (B - w)`
//!    up to rounding, so LAVa can be compared with the baselines at equal
//!    memory. `--floor-rule` / [`PolicyConfig::floor_rule`] picks any rule for
//!    any adaptive policy.
//! 2. **Ties** go to the lower index: lower position in a head; lower head, then
//!    lower rank, in the adaptive pool. PyTorch leaves them unspecified, and max
//!    pooling makes them common.
//! 3. **Nothing is evicted** when `n = N - w <= B - w`, for every policy, and a
//!    layer whose budget reaches `n` keeps its whole prefix (the Ada-KV code
//!    compresses at `B_l == n`, which can round a head to `n - 1`).
//! 4. **GQA order for SnapKV-family scores**: the group mean is taken *before*
//!    pooling, as the reference code does; with max pooling this differs from
//!    reading `lava-algorithm.md` §1–2 literally (pool each query head, then
//!    average). LAVa pools each query head, scales, then takes the group max, as
//!    both the document and the code say.
//! 5. **Rounding**: Ada-KV capacities are rounded half to even in `f32`, like
//!    the reference's `torch.round` on float32 tensors.
//! 6. **Totality**: entropies (CAKE: preferences) summing to 0 fall back to
//!    uniform layer budgets; PyramidKV with a single layer gives it `B - w`;
//!    where the reference would divide by zero. CAKE with a single window query
//!    takes the variance as 0 (PyTorch's unbiased variance of one value is NaN).
//! 8. **CAKE's cascade** keeps, per layer, the smallest budget the cascade gave
//!    it (cakekv's `adjust_budgets` can hand a layer one token more once later
//!    layers are seen, and evicted tokens cannot come back); nothing is
//!    compressed while `N <= B + w`, as in the cakekv code.
//! 7. **Compression happens once** by default, at prefill (the first `attend` of
//!    a layer); decode tokens are appended and never evicted, as in the
//!    reference. The two options below change this.
//!
//! # Beyond the reference: eviction after prefill
//!
//! The reference implementations compress once, after a one-shot prefill, for
//! batch 1. [`CompressedCache`] can also keep compressing afterwards; both
//! options re-score a layer with the same policy on what it holds, using a
//! rolling device buffer of the layer's last `w` RoPE-rotated queries
//! (`[H_q, w, D]`) as the new observation window. The last `w` tokens are
//! always kept, tokens keep their absolute positions (RoPE phases are never
//! touched) and [`KvCache::next_position`] counts every token ever appended.
//! Everything runs on the backend except the selection on the small `[H, n]`
//! score rows; kept K/V rows are gathered on the device with `select`.
//!
//! - **Decode-time eviction**,
//!   [`with_decode_budget(slack)`](CompressedCache::with_decode_budget): when
//!   generation grows some KV head of a layer past its head budget plus `slack`
//!   evictable tokens, the layer is re-scored and every head evicted back to
//!   its budget (so one re-scoring per `slack + 1` tokens). The layer budget
//!   `B_l` stays the one set at prefill; the head budgets are re-derived by the
//!   policy's head allocation from the new scores (a layer's total is
//!   preserved, and a layer cannot get back evicted tokens, so moving budget
//!   between layers mid-generation would not help).
//! - **Chunked prefill**,
//!   [`with_chunked_prefill(true)`](CompressedCache::with_chunked_prefill):
//!   every multi-token `attend` after a layer's first (each prompt chunk)
//!   attends over the kept tokens plus the chunk (causal inside it), then
//!   re-scores with the chunk's last `w` queries and evicts back to the budget,
//!   so a prompt of any length in chunks of `T` tokens holds at most the
//!   budget plus `T` tokens per head, and never needs the whole prompt's KV.
//!   Layer budgets are re-derived per chunk (uniform, pyramid at the current
//!   prefix length); LAVa's entropy cascade runs inside each chunk's forward
//!   pass over the latest entropy of every layer. A first chunk as long as the
//!   prompt is exactly the one-shot prefill.
//!
//! # Sliding-window (local) layers
//!
//! [`SlidingWindowCache`] serves models whose layers do not all attend to
//! the whole context (Gemma 3's five local layers per global one, Mistral
//! v0.1's window). A local layer keeps a ring of its last `w` positions and
//! nothing else: no eviction, no budget, `2 * H_kv * w * D` f32 values at
//! most, whatever the context. The global layers get an inner cache built
//! for them alone, so for LAVa and every other policy:
//!
//! - the layer allocation (uniform, pyramid, LAVa's entropy cascade, CAKE's
//!   preferences) runs over the global layers only, `L` in its formulas is
//!   their count, and the whole budget (`L_global * H_kv * B` tokens beyond
//!   the windows' rings) is spent on them: LAVa's dynamic layer budgets move
//!   budget between global layers only, and a local layer never takes part
//!   in the entropy normalisation;
//! - a budget `B` therefore bounds the global layers' cache; the local
//!   layers add their rings on top, independently of `B`;
//! - the accounting ([`KvCache::stats`]) counts what each layer really
//!   holds: the inner cache's tokens plus `min(N, w)` positions per KV head
//!   of each local layer (`full_bytes` counts all `N` positions of every
//!   layer, as a full cache without windows would hold).
//!
//! The exact semantics (how re-scoring pools over evicted positions, the H2O
//! and StreamingLLM variants, budgets of layers whose prefill kept everything,
//! and the memory bounds) are in the `CompressedCache` module docs.

#![warn(missing_docs)]

mod attention;
mod compressed;
mod error;
mod fast_path;
mod full;
mod host;
mod kv_dtype;
pub mod policy;
mod select;
mod sliding;
pub mod snapshot;

pub use attention::causal_attention;
pub use compressed::CompressedCache;
pub use error::CacheError;
pub use full::FullCache;
pub use kv_dtype::{KvDtype, Q8_0_BLOCK};
pub use policy::{Composition, FloorRule, HeadAllocation, LayerAllocation, PolicyConfig, PolicyField, PolicyFault, PolicyName, Pooling, Scorer};
pub use select::{select_positions, LayerQkv, LayerSelection, PromptScores, Selection};
pub use sliding::{held_kv_bytes, SlidingWindowCache};
pub use snapshot::{CacheSnapshot, LayerSnapshot, RankingSnapshot, SnapshotKind, StoredRows};

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

impl CacheShape {
    /// Checks one `attend` call against this shape: `layer` in range, `q`
    /// `[H_q, T>0, D]`, `k` and `v` `[H_kv, T, D]`. Returns `T`.
    pub(crate) fn check_attend<B: Backend>(
        &self,
        layer: usize,
        q: &Tensor<B, 3>,
        k: &Tensor<B, 3>,
        v: &Tensor<B, 3>,
    ) -> Result<usize, CacheError> {
        if layer >= self.layers {
            return Err(CacheError::LayerOutOfRange { layer, layers: self.layers });
        }
        let [hq, t, dq] = q.dims();
        if hq != self.query_heads || dq != self.head_dim || t == 0 {
            return Err(CacheError::ShapeMismatch {
                what: "queries",
                expected: format!("[{}, T>0, {}]", self.query_heads, self.head_dim),
                found: error::dims_str(&q.dims()),
            });
        }
        let expected = [self.kv_heads, t, self.head_dim];
        if k.dims() != expected {
            return Err(CacheError::ShapeMismatch {
                what: "keys",
                expected: error::dims_str(&expected),
                found: error::dims_str(&k.dims()),
            });
        }
        check_qkv(q, k, Some(v))?;
        Ok(t)
    }
}

/// Checks one layer's `q [H_q, N, D]` against `k [H_kv, N, D]` and, when
/// given, `v` (shaped as `k`): heads and head dimension non-zero, `H_q` a
/// multiple of `H_kv`. Returns `[H_q, H_kv, N, D]`. The one shape check of the
/// cache, the scorers and [`select_positions`].
pub(crate) fn check_qkv<B: Backend>(
    q: &Tensor<B, 3>,
    k: &Tensor<B, 3>,
    v: Option<&Tensor<B, 3>>,
) -> Result<[usize; 4], CacheError> {
    let [h_q, n_tok, d] = q.dims();
    let h_kv = k.dims()[0];
    if h_q == 0 || h_kv == 0 || d == 0 || h_q % h_kv != 0 {
        return Err(CacheError::InvalidShape(format!(
            "queries {} and keys {}: heads and head dimension must be non-zero, and query heads a multiple of KV heads",
            error::dims_str(&q.dims()),
            error::dims_str(&k.dims())
        )));
    }
    for (what, x) in [("keys", Some(k)), ("values", v)] {
        let Some(x) = x else { continue };
        if x.dims() != [h_kv, n_tok, d] {
            return Err(CacheError::ShapeMismatch {
                what,
                expected: error::dims_str(&[h_kv, n_tok, d]),
                found: error::dims_str(&x.dims()),
            });
        }
    }
    Ok([h_q, h_kv, n_tok, d])
}

/// What a cache holds at one moment, K and V counted in the bytes their
/// [`KvDtype`] stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Tokens kept, summed over layers and KV heads.
    pub retained_tokens: usize,
    /// Bytes of K and V kept (`retained_tokens * 2 * row bytes`; f32:
    /// `retained_tokens * D * 2 * 4`).
    pub retained_bytes: usize,
    /// Bytes of K and V storage allocated (kept plus headroom).
    pub allocated_bytes: usize,
    /// Bytes the same tokens would take in a full, uncompressed cache of the
    /// same KV dtype.
    pub full_bytes: usize,
}

/// The cache interface a model's attention layers call.
///
/// For each forward pass the model calls [`KvCache::attend`] once per layer, in
/// layer order, with the new tokens' RoPE-rotated projections. The cache appends
/// them, computes causal attention of the new queries over everything it keeps
/// (the new tokens included), may evict, and returns the attention output.
/// Caches are `Send`: a batched step attends different sequences' caches on
/// different threads.
pub trait KvCache<B: Backend>: Send {
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

    /// What the cache holds now: kept tokens and the bytes they take.
    fn stats(&self) -> CacheStats;

    /// Tokens currently kept, summed over layers and KV heads.
    fn retained_tokens(&self) -> usize {
        self.stats().retained_tokens
    }

    /// Bytes of K and V currently kept, as stored.
    fn retained_bytes(&self) -> usize {
        self.stats().retained_bytes
    }

    /// Bytes of K and V storage currently allocated (kept plus headroom).
    fn allocated_bytes(&self) -> usize {
        self.stats().allocated_bytes
    }

    /// Bytes the same tokens would take in a full, uncompressed cache.
    fn full_bytes(&self) -> usize {
        self.stats().full_bytes
    }

    /// Forgets every token, keeping the shape.
    fn reset(&mut self);

    /// An independent copy of this cache (what it holds and how it goes on),
    /// for forking one prefilled prompt into several generations; `None` for a
    /// cache that cannot be copied (the default). The copies share their
    /// tensors until either writes, so a copy costs no K/V memory until then.
    fn box_clone(&self) -> Option<Box<dyn KvCache<B>>> {
        None
    }

    /// The sliding window layer `layer` attends within (its query at
    /// position `p` sees `p - w + 1 ..= p`), `None` for a layer that attends
    /// to everything it keeps (the default). A model checks these against
    /// its own layers before a forward pass; [`SlidingWindowCache`] is the
    /// cache with local layers.
    fn sliding_window(&self, _layer: usize) -> Option<usize> {
        None
    }

    /// What the cache holds, copied to the host (module [`crate::snapshot`]): its
    /// kept slots, K/V rows as stored and the policy state that decides what
    /// later calls keep. Errors for a cache that cannot be saved (the
    /// default).
    fn snapshot(&self) -> Result<CacheSnapshot, CacheError> {
        Err(CacheError::Snapshot("this cache cannot be saved".into()))
    }

    /// Puts `snapshot` into this cache, which must be empty and built for
    /// the same kind, shape, policy (every parameter) and KV dtype; it then
    /// goes on exactly as the cache the snapshot was taken from. On error
    /// the cache is left empty.
    fn restore(&mut self, _snapshot: &CacheSnapshot) -> Result<(), CacheError> {
        Err(CacheError::Snapshot("this cache cannot be restored from a snapshot".into()))
    }

    /// Seconds spent scoring, selecting and gathering since creation or the
    /// last [`reset`](KvCache::reset) (`CompressedCache::compression_seconds`;
    /// a cache that holds a compressing one reports its time), 0 for a cache
    /// that never evicts (the default).
    fn compression_seconds(&self) -> f64 {
        0.0
    }
}
