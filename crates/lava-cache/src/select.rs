//! The research entry point: which prompt tokens a policy keeps, per layer and
//! KV head, given every layer's queries, keys and values.

use burn::tensor::{backend::Backend, Tensor};

use crate::error::dims_str;
use crate::policy::plan::{head_caps, kept_positions, static_layer_budgets, RankedLayer};
use crate::policy::{layer_budget, scorer::score_layer, LayerAllocation, PolicyConfig};
use crate::CacheError;

/// One layer's attention inputs for one sequence, RoPE already applied:
/// `q [H_q, N, D]`, `k [H_kv, N, D]`, `v [H_kv, N, D]`.
#[derive(Debug, Clone)]
pub struct LayerQkv<B: Backend> {
    /// Queries `[H_q, N, D]`.
    pub q: Tensor<B, 3>,
    /// Keys `[H_kv, N, D]`.
    pub k: Tensor<B, 3>,
    /// Values `[H_kv, N, D]`.
    pub v: Tensor<B, 3>,
}

impl<B: Backend> LayerQkv<B> {
    /// Bundles one layer's `q`, `k`, `v`.
    pub fn new(q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>) -> Self {
        Self { q, k, v }
    }
}

/// What one layer keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSelection {
    /// The layer budget `B_l`: prefix tokens per KV head granted by the layer
    /// allocation, **window excluded** (`B - w` for uniform layers; the
    /// pyramid or entropy formula otherwise, uncapped, so a value `>= n` means
    /// the layer keeps its whole prefix). When no allocation is made, because
    /// the policy is `full` or the whole prefix fits (`n <= B - w`), it is `n`.
    pub budget: usize,
    /// Per KV head: prefix tokens kept (window excluded), `<= n`; the head
    /// allocation's result.
    pub head_budgets: Vec<usize>,
    /// Per KV head: the kept positions, ascending, the window's `w` positions
    /// `N - w .. N` included (so `heads[g].len() == head_budgets[g] + w`).
    pub heads: Vec<Vec<usize>>,
}

/// What a policy keeps of one sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Prompt length `N`.
    pub prompt_len: usize,
    /// Effective window, `min(w, N)`.
    pub window: usize,
    /// One entry per layer, in layer order.
    pub layers: Vec<LayerSelection>,
}

impl Selection {
    /// Prefix length `n = N - window`: the evictable tokens.
    pub fn prefix_len(&self) -> usize {
        self.prompt_len - self.window
    }

    /// Tokens kept, summed over layers and KV heads.
    pub fn retained_tokens(&self) -> usize {
        self.layers.iter().flat_map(|l| &l.heads).map(Vec::len).sum()
    }
}

/// Checks one layer's shapes; returns `(H_q, H_kv, N, D)`.
pub(crate) fn check_qkv<B: Backend>(q: &Tensor<B, 3>, k: &Tensor<B, 3>, v: &Tensor<B, 3>) -> Result<[usize; 4], CacheError> {
    let [h_q, n_tok, d] = q.dims();
    let [h_kv, _, _] = k.dims();
    if h_q == 0 || h_kv == 0 || d == 0 || h_q % h_kv != 0 {
        return Err(CacheError::InvalidShape(format!(
            "queries {} and keys {}: heads and head dimension must be non-zero, and query heads a multiple of KV heads",
            dims_str(&q.dims()),
            dims_str(&k.dims())
        )));
    }
    for (what, x) in [("keys", k), ("values", v)] {
        if x.dims() != [h_kv, n_tok, d] {
            return Err(CacheError::ShapeMismatch {
                what,
                expected: dims_str(&[h_kv, n_tok, d]),
                found: dims_str(&x.dims()),
            });
        }
    }
    Ok([h_q, h_kv, n_tok, d])
}

/// Runs a policy on one sequence: per layer, its budget and per KV head the
/// kept positions (see [`LayerSelection`] for what `budget` reports).
///
/// `layers` holds every layer's RoPE-rotated `q`, `k`, `v`, all with the same
/// shapes. The selection is the one [`CompressedCache`](crate::CompressedCache)
/// makes at prefill; for LAVa's entropy allocation it computes every layer's
/// scores first and the final budgets directly (the cache reaches the same
/// result by its cascade).
///
/// When `N - w <= B - w`, or the policy is `full`, every token is kept and no
/// attention is computed.
pub fn select_positions<B: Backend>(layers: &[LayerQkv<B>], config: &PolicyConfig) -> Result<Selection, CacheError> {
    config.validate()?;
    let first = layers
        .first()
        .ok_or_else(|| CacheError::InvalidShape("select_positions needs at least one layer".into()))?;
    let dims = check_qkv(&first.q, &first.k, &first.v)?;
    for l in layers {
        let d = check_qkv(&l.q, &l.k, &l.v)?;
        if d != dims {
            return Err(CacheError::ShapeMismatch {
                what: "layer queries",
                expected: dims_str(&first.q.dims()),
                found: dims_str(&l.q.dims()),
            });
        }
    }
    let [_, h_kv, n_tok, _] = dims;
    let window = config.window.min(n_tok);
    let n = n_tok - window;
    let compressing = config.composition().filter(|_| n > config.budget_beyond_window());
    let Some(comp) = compressing else {
        let all: Vec<usize> = (0..n_tok).collect();
        let layer = LayerSelection { budget: n, head_budgets: vec![n; h_kv], heads: vec![all; h_kv] };
        return Ok(Selection { prompt_len: n_tok, window, layers: vec![layer; layers.len()] });
    };
    let ranked = layers
        .iter()
        .map(|l| score_layer(&l.q, &l.k, &l.v, config, comp.scorer).map(|s| RankedLayer::new(&s)))
        .collect::<Result<Vec<_>, _>>()?;
    let budgets = match static_layer_budgets(comp.layers, config, layers.len(), n) {
        Some(b) => b,
        None => {
            debug_assert_eq!(comp.layers, LayerAllocation::Entropy);
            let entropies: Vec<f64> = ranked.iter().map(|r| r.entropy).collect();
            layer_budget::entropy(&entropies, layers.len(), config.budget_beyond_window())
        }
    };
    let layers = ranked
        .iter()
        .zip(budgets)
        .map(|(r, budget)| {
            let head_budgets = head_caps(comp.heads, r, budget, config.floor_alpha);
            let heads = kept_positions(&r.order, &head_budgets, n, n_tok);
            LayerSelection { budget, head_budgets, heads }
        })
        .collect();
    Ok(Selection { prompt_len: n_tok, window, layers })
}
