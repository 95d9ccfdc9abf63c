//! The research entry point: which prompt tokens a policy keeps, per layer and
//! KV head, given every layer's queries, keys and values.

use burn::tensor::{backend::Backend, Tensor};

use crate::error::dims_str;
use crate::policy::plan::{cascade_layer_budgets, head_caps, kept_positions, static_layer_budgets, Ranking};
use crate::policy::{scorer::score_layer_weighted, PolicyConfig, Pooling, Scorer};
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
/// attention is computed. To select for several budgets or policies that share
/// a scorer, score once with [`PromptScores::new`] and call
/// [`PromptScores::select`] for each.
pub fn select_positions<B: Backend>(layers: &[LayerQkv<B>], config: &PolicyConfig) -> Result<Selection, CacheError> {
    config.validate()?;
    let [_, h_kv, n_tok, _] = check_layers(layers)?;
    if let Some(all) = keep_all(config, layers.len(), h_kv, n_tok) {
        return Ok(all);
    }
    PromptScores::new(layers, config)?.select(config)
}

/// Checks that all layers share valid shapes; returns `(H_q, H_kv, N, D)`.
fn check_layers<B: Backend>(layers: &[LayerQkv<B>]) -> Result<[usize; 4], CacheError> {
    let first = layers
        .first()
        .ok_or_else(|| CacheError::InvalidShape("select_positions needs at least one layer".into()))?;
    let dims = crate::check_qkv(&first.q, &first.k, Some(&first.v))?;
    for l in layers {
        let d = crate::check_qkv(&l.q, &l.k, Some(&l.v))?;
        if d != dims {
            return Err(CacheError::ShapeMismatch {
                what: "layer queries",
                expected: dims_str(&first.q.dims()),
                found: dims_str(&l.q.dims()),
            });
        }
    }
    Ok(dims)
}

/// The everything-kept selection, when `config` keeps every token of an
/// `n_tok`-token prompt (policy `full`, or `N - w <= B - w`; for `cake`,
/// `N - w <= B`: see [`PolicyConfig::keep_all_prefix`]).
fn keep_all(config: &PolicyConfig, layers: usize, h_kv: usize, n_tok: usize) -> Option<Selection> {
    let window = config.window.min(n_tok);
    let n = n_tok - window;
    if config.composition().is_some() && n > config.keep_all_prefix() {
        return None;
    }
    let all: Vec<usize> = (0..n_tok).collect();
    let layer = LayerSelection { budget: n, head_budgets: vec![n; h_kv], heads: vec![all; h_kv] };
    Some(Selection { prompt_len: n_tok, window, layers: vec![layer; layers] })
}

/// Every layer's scores of one sequence under one scorer, ranked: the part of
/// a selection that does not depend on the budget or on the layer and head
/// allocations. Score a prompt once, then [`select`](Self::select) for every
/// budget and every policy with the same scorer and scoring parameters
/// (window, kernel, pooling, sinks).
#[derive(Debug, Clone)]
pub struct PromptScores {
    scorer: Scorer,
    window: usize,
    kernel_size: usize,
    pooling: Pooling,
    sinks: usize,
    kv_heads: usize,
    prompt_len: usize,
    layers: Vec<Ranking>,
}

impl PromptScores {
    /// Scores every layer of `layers` with `config`'s scorer and parameters
    /// (its budget and allocations are not used). Errors for `full`.
    pub fn new<B: Backend>(layers: &[LayerQkv<B>], config: &PolicyConfig) -> Result<Self, CacheError> {
        config.validate()?;
        let [_, kv_heads, prompt_len, _] = check_layers(layers)?;
        let comp = config
            .composition()
            .ok_or_else(|| CacheError::InvalidParameters("policy 'full' has no scorer: it keeps every token".into()))?;
        let ranked = layers
            .iter()
            .map(|l| score_layer_weighted(&l.q, &l.k, &l.v, config, comp.scorer).map(|(s, w)| Ranking::of_prefill(&s, w)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            scorer: comp.scorer,
            window: config.window,
            kernel_size: config.kernel_size,
            pooling: config.pooling,
            sinks: config.sinks,
            kv_heads,
            prompt_len,
            layers: ranked,
        })
    }

    /// Whether these scores serve `config`: same scorer and window, and the
    /// parameters that scorer reads (kernel and pooling for the window scorers,
    /// sinks for StreamingLLM; CAKE's pooling is fixed) (`full` is served by any
    /// scores).
    pub fn serves(&self, config: &PolicyConfig) -> bool {
        config.composition().is_none_or(|c| {
            c.scorer == self.scorer
                && config.window == self.window
                && match c.scorer {
                    Scorer::SnapKv | Scorer::Lava => config.kernel_size == self.kernel_size && config.pooling == self.pooling,
                    Scorer::Streaming => config.sinks == self.sinks,
                    Scorer::H2o | Scorer::Cake => true,
                }
        })
    }

    /// What `config` keeps: exactly [`select_positions`] on the scored layers.
    /// Errors if the scores do not [`serve`](Self::serves) `config`.
    pub fn select(&self, config: &PolicyConfig) -> Result<Selection, CacheError> {
        config.validate()?;
        if !self.serves(config) {
            return Err(CacheError::InvalidParameters(format!(
                "policy '{}' needs other scores than these ({:?} scorer, window {}, kernel {}, {:?}, {} sinks)",
                config.policy, self.scorer, self.window, self.kernel_size, self.pooling, self.sinks
            )));
        }
        let (n_tok, layer_count) = (self.prompt_len, self.layers.len());
        if let Some(all) = keep_all(config, layer_count, self.kv_heads, n_tok) {
            return Ok(all);
        }
        let Some(comp) = config.composition() else {
            return Err(CacheError::InvalidParameters("policy 'full' keeps every token".into()));
        };
        let window = config.window.min(n_tok);
        let n = n_tok - window;
        let budgets = match static_layer_budgets(comp.layers, config, layer_count, n) {
            Some(b) => b,
            None => {
                let weights: Vec<f64> = self.layers.iter().map(|r| r.weight).collect();
                cascade_layer_budgets(comp.layers, config, &weights, n)
            }
        };
        let layers = self
            .layers
            .iter()
            .zip(budgets)
            .map(|(r, budget)| {
                let head_budgets = head_caps(comp.heads, r, budget, config);
                let heads = kept_positions(&r.order, &head_budgets, n, n_tok);
                LayerSelection { budget, head_budgets, heads }
            })
            .collect();
        Ok(Selection { prompt_len: n_tok, window, layers })
    }
}
