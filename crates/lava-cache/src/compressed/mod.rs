//! The compressed KV cache: a policy chooses, at prefill, which tokens each KV
//! head keeps; decoding appends and attends over unequal head lengths.
//! Optionally the cache also evicts during decoding
//! ([`CompressedCache::with_decode_budget`]) and compresses a prompt that
//! arrives in chunks after every chunk ([`CompressedCache::with_chunked_prefill`]).
//!
//! Files: `storage.rs` holds one layer's slots (buffers, growth, append,
//! retain, slot attention and its mask); `rescore.rs` re-scores a layer with
//! the policy's own scorer functions; this file is the state machine (prefill,
//! cascade, decode-time eviction, chunked prefill).
//!
//! # Storage layout
//!
//! Each layer stores its kept tokens *flat*: `keys`, `values` `[capacity, D]`,
//! one row per (KV head, token) slot, plus two integer tensors `[capacity]`
//! naming each slot's KV head and absolute position. Only the first `used`
//! rows are live; the rest is decode headroom.
//!
//! - Memory is exact: heads of different lengths cost no padding, so the
//!   allocation is the retained tokens plus headroom (after growth at most 10%
//!   above the live slots plus `H_kv * headroom` slots).
//! - Appending `T` tokens writes `H_kv * T` rows at the end (order in storage is
//!   free: keys carry their RoPE phase); storage grows by at least 10%, so
//!   appending is amortised O(1) in copies.
//! - Attention is a constant number of tensor ops per layer: the `H_q * T` query
//!   rows are multiplied with all live slots at once, and slots of other KV
//!   heads (and, for `T > 1`, future positions) are masked with `-inf` before
//!   the softmax, contributing exactly zero. The price is compute: each query
//!   scores every slot of the layer, `H_kv` times the minimal work, which
//!   matters little for decode (memory-bound, and the compressed cache is small).
//!
//! A padded `[H_kv, max_len, D]` layout would let each query see only its own
//! head, but adaptive policies give heads very different lengths and the padding
//! would often exceed the retained tokens.
//!
//! # Prefill and the LAVa cascade
//!
//! The first `attend` call of a layer is its prefill: the output is full causal
//! attention (as [`FullCache`](crate::FullCache)), then the policy scores the
//! prompt and the layer keeps its selection. LAVa's entropy allocation needs
//! every layer's entropy; as the reference does, after each layer's prefill the
//! shares are recomputed over the layers seen so far and the earlier layers are
//! re-pruned by truncating each head's score-sorted list (shares only shrink).
//! After the last layer the kept sets equal [`select_positions`](crate::select_positions)'s.
//! Peak prefill memory is about the total budget plus one layer's full KV.
//! By default later calls (decode, or a further chunk of `T > 1` tokens) only
//! append; the two options below change that.
//!
//! # Re-scoring (both options)
//!
//! Eviction after prefill re-scores a layer with the same policy, on what the
//! layer holds. Let `A` be the tokens ever appended to the layer, `r = min(w, A)`;
//! the *window* is the last `r` positions `A - r .. A` (the new observation
//! window, always kept; every head holds all of it) and each head's
//! *evictable* tokens are the positions it holds below `A - r`.
//!
//! - **Queries**: a rolling buffer of the layer's last `r` RoPE-rotated queries,
//!   `[H_q, r, D]`, is kept on the device (decode rows are folded in lazily, so
//!   it holds fewer than `2w` rows; only when an option is on; see
//!   [`CompressedCache::query_window_bytes`]).
//! - **Attention**: window query `i` (position `A - r + i`) of query head `h`
//!   attends, softmax in `f32`, over the kept tokens of its KV head with
//!   position `<= A - r + i`; `s[h, j]` is the mean over the `r` queries
//!   (H2O: the sum, a cumulative attention over the window instead of over
//!   the whole prompt). Evicted tokens are simply absent.
//! - **Pooling** uses absolute positions ([`pool_at`](crate::policy::scorer::pool_at)):
//!   a token's neighbourhood is the evictable tokens of its head within
//!   `kernel / 2` positions; missing ones count as zero attention. With nothing
//!   evicted this is the prefill's pooling.
//! - **Scores** per KV head as at prefill: SnapKV family group mean then pool;
//!   LAVa pool, times the head's largest value L1 norm over its evictable
//!   tokens, group max; H2O group mean; StreamingLLM `+inf` for the first
//!   `sinks` positions, else the position.
//! - **Selection**: head budgets from the head allocation
//!   ([`HeadAllocation`](crate::HeadAllocation)) on these ragged score rows
//!   (adaptive: the pool runs on rows padded with `-inf`); each head keeps its
//!   top `min(cap_g, n_g)` evictable tokens (ties: lower position) and the
//!   window. Absolute positions are never changed: tokens keep their recorded
//!   positions and [`KvCache::next_position`] counts every token appended.
//!
//! # Decode-time eviction
//!
//! [`CompressedCache::with_decode_budget`]`(s)`: after an `attend` that is not
//! a chunk of a chunked prefill (below), if some KV head of the layer holds
//! more than `cap_g + s` evictable tokens (`cap_g` its head budget, see
//! [`CompressedCache::head_budgets`]), the layer is re-scored and every head
//! evicted back to its budget. With `s = 0` that re-scores at every token; with
//! slack `s` once every `s + 1` tokens (the heads of a layer grow together), at
//! the price of `s` extra tokens per head.
//!
//! **Budgets**: the layer budget `B_l` stays the one set at prefill; the head
//! budgets are re-derived from the re-scored matrix by the policy's head
//! allocation. Why: the head allocation lives inside one layer, needs only the
//! scores just computed, and keeps the layer's total at `H_kv * B_l` (up to
//! rounding), so memory stays bounded while each head's share follows what the
//! recent queries need (which is the point of Ada-KV and LAVa). The layer
//! allocation (pyramid, LAVa entropy) needs every layer's scores at the same
//! time, while layers are re-scored one at a time during a forward pass, and a
//! layer whose budget grew could not get back the tokens it has already
//! evicted: re-deriving it would move memory between layers without
//! restoring information. A layer whose prefill kept everything (prompt
//! within the budget) has no budget yet: it is compressed when its evictable
//! tokens exceed its static allocation plus `s` (uniform: `B - w`; pyramid:
//! the formula with the current prefix length; entropy: `B - w`, as its
//! cross-layer shares are unknown), and that budget is then kept.
//!
//! # Chunked prefill
//!
//! [`CompressedCache::with_chunked_prefill`]`(true)`: every `attend` of
//! `T > 1` tokens after the layer's first (each chunk of a prompt processed in
//! chunks) appends, computes the chunk's attention over the kept tokens plus
//! the chunk (causal inside the chunk, as always), then compresses: a layer
//! already compressed is re-scored with the chunk's window (its last `w`
//! queries, earlier ones from the rolling buffer when `T < w`) and a layer that
//! kept everything is compressed once its evictable tokens exceed `B - w` (the
//! prefill rule). After each chunk a head therefore holds at most its budget
//! plus the window; during the chunk, `T` more. The first chunk is an ordinary
//! prefill, so a chunk at least as long as the prompt is exactly the one-shot
//! prefill. A 1-token `attend` is always decode (a last chunk of one token is
//! compressed by the decode rule, if enabled).
//!
//! **Layer budgets per chunk**: uniform and pyramid budgets are recomputed
//! with the current prefix length `n = A - w` (what a one-shot prefill of the
//! prompt so far would give). LAVa's entropy allocation runs its cascade
//! inside every chunk's forward pass: when layer `l` has been re-scored its
//! entropy replaces its previous one, the shares are recomputed over the
//! latest entropy of every layer (this chunk's for layers `<= l`, the previous
//! chunk's for the others; in the first chunk only the layers seen so far, as
//! at prefill), and every layer whose budget shrank is truncated along its
//! latest ranking (a layer not yet re-scored in this chunk and which has
//! received tokens since its last ranking is re-scored first). Once every
//! layer has an entropy the shares sum to at most `L * (B - w)` at every
//! moment, so the total stays within the budget during the pass; in the first
//! pass that compresses, as in the one-shot cascade, the layers not yet scored
//! still hold everything they have (at most `B - w` evictable tokens per head,
//! by the prefill rule, plus the chunk once it arrives). A layer whose share
//! grows keeps what it has until its own re-scoring fills it. At the end of a
//! chunk the budgets are the entropy formula of that chunk's scores. Each
//! layer's latest ranking is kept on the host for this (about 12 bytes per
//! evictable token per KV head: for the first chunk, its whole prefix).
//!
//! # Memory bounds
//!
//! With head budgets `cap_g` ([`CompressedCache::head_budgets`]; for adaptive
//! heads `sum_g cap_g <= (1 - alpha) * H_kv * B_l + H_kv * (f + 1)`, `f` the
//! floor of the policy's [`FloorRule`](crate::FloorRule): `H_kv * (B_l + 1)`
//! with the layer rule), after every `attend` each head of
//! a compressed layer holds the window and at most `cap_g + s` evictable tokens
//! (`s` the decode slack; 0 right after a chunk); during an `attend`, `T` more.
//! Allocated slots stay within `1.1 * retained + L * H_kv * h`, where `h` is
//! the decode headroom, raised to `s + 1` with decode eviction so that a layer
//! reallocates once per eviction cycle at most.

use burn::tensor::{backend::Backend, Tensor};

use crate::attention::causal_attention;
use crate::policy::plan::{dynamic_layer_budgets, kept_positions, ragged_head_caps, static_layer_budgets, Ranking};
use crate::policy::{scorer::score_layer_weighted, Composition, PolicyConfig, Scorer};
use crate::{CacheError, CacheShape, CacheStats, KvCache, KvDtype};

mod query_window;
mod rescore;
mod snapshot;
mod storage;

use query_window::QueryWindow;
use storage::{LayerSlots, Room};

/// Bytes per stored element (K and V are accounted as `f32`, as in [`KvCache`]).
const ELEM_BYTES: usize = 4;

/// A layer's latest ranking and the caps it is cut at, kept for the cascade
/// (and, with chunked prefill, for the cascades of later chunks).
#[derive(Debug, Clone)]
struct Pending {
    /// The ranking of the evictable positions (below `boundary`).
    ranking: Ranking,
    /// First position of the window the ranking was made with: positions at
    /// or after it are kept whatever the caps.
    boundary: usize,
    /// Prefix tokens allowed per KV head (a head keeps the first
    /// `min(cap, len)` of its ranking).
    caps: Vec<usize>,
}

impl Pending {
    /// Per KV head: the ranked positions kept under the current caps.
    fn selected(&self) -> Vec<Vec<usize>> {
        self.ranking.order.iter().zip(&self.caps).map(|(o, &c)| o[..c.min(o.len())].to_vec()).collect()
    }
}

/// One layer: its slots and the policy state that decides what they keep.
#[derive(Debug, Clone)]
struct LayerState<B: Backend> {
    slots: LayerSlots<B>,
    /// Layer budget `B_l` in force (prefill, cascade, chunk or first decode eviction).
    budget: Option<usize>,
    /// Head budgets in force (prefix tokens per KV head); `None` while the
    /// layer keeps everything.
    caps: Option<Vec<usize>>,
    /// Latest weight in a dynamic layer allocation (LAVa entropy, CAKE
    /// preference), for the cascade.
    weight: Option<f64>,
    pending: Option<Pending>,
    /// The last `min(w, appended)` queries `[H_q, r, D]` (only with eviction after prefill).
    queries: QueryWindow<B>,
}

impl<B: Backend> LayerState<B> {
    fn empty() -> Self {
        Self { slots: LayerSlots::empty(), budget: None, caps: None, weight: None, pending: None, queries: QueryWindow::default() }
    }

    /// Window start `A - min(w, A)`.
    fn boundary(&self, window: usize) -> usize {
        let appended = self.slots.appended();
        appended - window.min(appended)
    }
}

/// A KV cache that keeps, per layer and KV head, the tokens a policy selects
/// (see the module docs for the layout, the LAVa prefill cascade, and the
/// optional decode-time eviction and chunked prefill). A clone is an
/// independent copy of the cache (tensors are shared until either writes).
#[derive(Debug, Clone)]
pub struct CompressedCache<B: Backend> {
    shape: CacheShape,
    config: PolicyConfig,
    composition: Option<Composition>,
    device: B::Device,
    max_tokens: usize,
    headroom: usize,
    decode_slack: Option<usize>,
    chunked: bool,
    kv_dtype: KvDtype,
    rescores: usize,
    compression_time: std::time::Duration,
    layers: Vec<LayerState<B>>,
}

impl<B: Backend> CompressedCache<B> {
    /// Default decode headroom, in tokens per KV head.
    pub const DEFAULT_HEADROOM: usize = 32;

    /// At most this many free slots per KV head are reserved up front for the
    /// decode-eviction slack ([`with_decode_budget`](Self::with_decode_budget));
    /// a larger slack is reached by the usual 10% growth.
    pub const MAX_SLACK_RESERVE: usize = 256;

    /// A cache for `shape` applying `config`, refusing sequences longer than
    /// `max_tokens`. Errors if the shape or the parameters are invalid.
    pub fn new(shape: CacheShape, config: PolicyConfig, max_tokens: usize, device: &B::Device) -> Result<Self, CacheError> {
        shape.validate()?;
        config.validate()?;
        Ok(Self {
            shape,
            composition: config.composition(),
            config,
            device: device.clone(),
            max_tokens,
            headroom: Self::DEFAULT_HEADROOM,
            decode_slack: None,
            chunked: false,
            kv_dtype: KvDtype::F32,
            rescores: 0,
            compression_time: std::time::Duration::ZERO,
            layers: (0..shape.layers).map(|_| LayerState::empty()).collect(),
        })
    }

    /// Sets the decode headroom: free slots per KV head reserved after prefill
    /// and added at each growth (at least 1).
    pub fn with_decode_headroom(mut self, tokens_per_head: usize) -> Self {
        self.headroom = tokens_per_head.max(1);
        self
    }

    /// Sizes the decode headroom for `decode_tokens` generated tokens:
    /// that many free slots per KV head, at least 1 and at most
    /// [`DEFAULT_HEADROOM`](Self::DEFAULT_HEADROOM) (storage grows by 10% when
    /// a longer generation needs it), so short generations do not allocate
    /// room they never use.
    pub fn with_decode_room(self, decode_tokens: usize) -> Self {
        self.with_decode_headroom(decode_tokens.clamp(1, Self::DEFAULT_HEADROOM))
    }

    /// Enables decode-time eviction with slack `slack` (module docs,
    /// "Decode-time eviction"): after any `attend` that is not a chunk of a
    /// chunked prefill, a layer in which some KV head holds more than its head
    /// budget plus `slack` evictable tokens (tokens before the last `w`) is
    /// re-scored with its last `w` queries and every head evicted back to its
    /// budget. The layer budget stays the one set at prefill (or, if the
    /// prefill kept everything, the static allocation at the first eviction);
    /// head budgets are re-derived from the new scores. The most recent `w`
    /// tokens are always kept; positions stay absolute. The decode headroom is
    /// raised to at least `slack + 1`, up to
    /// [`MAX_SLACK_RESERVE`](Self::MAX_SLACK_RESERVE) (storage grows past it on demand). Set it before the first `attend` (the
    /// query buffer starts with it; eviction waits until it holds `w` queries).
    /// No effect with the `full` policy.
    pub fn with_decode_budget(mut self, slack: usize) -> Self {
        self.decode_slack = Some(slack);
        self
    }

    /// Enables (or disables) chunked prefill (module docs, "Chunked prefill"):
    /// every `attend` of more than one token after a layer's first re-scores
    /// the layer with the chunk's last `w` queries and evicts back to the
    /// budget, re-deriving layer budgets per chunk (LAVa: its cascade runs
    /// inside each chunk's forward pass). A prompt of any length processed in
    /// chunks of `T` tokens then holds at most the budget plus `T` tokens per
    /// head. Set it before the first `attend`. No effect with the `full` policy.
    pub fn with_chunked_prefill(mut self, enabled: bool) -> Self {
        self.chunked = enabled;
        self
    }

    /// Stores keys and values as `dtype` (module [`crate::KvDtype`]: the
    /// prefill scores and attends over the prompt's K/V as computed; later
    /// calls and re-scoring read what is stored). Set it before the first
    /// `attend`. Errors if the backend or the head dimension cannot store it.
    pub fn with_kv_dtype(mut self, dtype: KvDtype) -> Result<Self, CacheError> {
        dtype.check::<B>(self.shape.head_dim, &self.device)?;
        if self.layers.iter().any(|l| l.slots.is_filled()) {
            return Err(CacheError::InvalidParameters("the kv dtype must be set before the cache holds tokens".into()));
        }
        self.kv_dtype = dtype;
        Ok(self)
    }

    /// How keys and values are stored.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    /// The decode-eviction slack, `None` when decode-time eviction is off.
    pub fn decode_slack(&self) -> Option<usize> {
        self.decode_slack
    }

    /// Whether chunked prefill is on.
    pub fn chunked_prefill(&self) -> bool {
        self.chunked
    }

    /// The shape this cache serves.
    pub fn shape(&self) -> CacheShape {
        self.shape
    }

    /// The policy and its parameters.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The budget `B_l` (tokens beyond the window) in force for `layer`, as
    /// in [`LayerSelection::budget`](crate::LayerSelection): set at prefill
    /// (and by the LAVa cascade), re-derived at each chunk of a chunked
    /// prefill, or set at the first decode-time eviction of a layer whose
    /// prefill kept everything. While a layer keeps everything it is the
    /// prefix length of its prefill (or last chunk). `None` before its prefill.
    pub fn layer_budget(&self, layer: usize) -> Option<usize> {
        self.layers.get(layer).and_then(|l| l.budget)
    }

    /// The head budgets in force for `layer`: per KV head, the evictable
    /// (non-window) tokens it may keep after a compression; a head keeps
    /// `min(budget, available)`. `None` while the layer keeps everything (or
    /// before its prefill, or for an out-of-range layer).
    pub fn head_budgets(&self, layer: usize) -> Option<Vec<usize>> {
        self.layers.get(layer).and_then(|l| l.caps.clone())
    }

    /// Wall time spent scoring, selecting and gathering kept tokens since
    /// creation or the last [`reset`](KvCache::reset) (prefill compression,
    /// the LAVa cascade, decode-time and chunk eviction), excluding the
    /// attention itself. Host time: on asynchronous backends (CUDA) device
    /// work queued here may complete later, although reading the scores back
    /// for selection synchronises each scoring.
    pub fn compression_seconds(&self) -> f64 {
        self.compression_time.as_secs_f64()
    }

    /// How many times a layer was re-scored after its prefill (decode-time
    /// eviction and chunked prefill), summed over layers, since creation or
    /// the last [`reset`](KvCache::reset).
    pub fn rescores(&self) -> usize {
        self.rescores
    }

    /// The positions each KV head of `layer` keeps, ascending.
    pub fn kept_positions(&self, layer: usize) -> Result<Vec<Vec<usize>>, CacheError> {
        Ok(self.state(layer)?.slots.kept_positions(self.shape.kv_heads))
    }

    /// Bytes of the per-slot bookkeeping on the device (KV head and position,
    /// one integer each, counted as 8 bytes; 4 on backends with 32-bit
    /// integers), not included in [`KvCache::allocated_bytes`].
    pub fn index_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.slots.capacity() * 2 * 8).sum()
    }

    /// Bytes of the rolling query buffers kept for re-scoring (fewer than
    /// `2w` rows per layer, the last `w` of them the window: at most
    /// `L * H_q * (2w - 1) * D` elements, counted as 4 bytes each; 0 unless
    /// decode-time eviction or chunked prefill is on), not included in
    /// [`KvCache::allocated_bytes`].
    pub fn query_window_bytes(&self) -> usize {
        let elems: usize = self.layers.iter().map(|l| l.queries.elems()).sum();
        elems * ELEM_BYTES
    }

    fn state(&self, layer: usize) -> Result<&LayerState<B>, CacheError> {
        self.layers.get(layer).ok_or(CacheError::LayerOutOfRange { layer, layers: self.shape.layers })
    }

    /// Whether later `attend` calls may evict (so the query window is needed).
    fn evicts_after_prefill(&self) -> bool {
        self.composition.is_some() && (self.chunked || self.decode_slack.is_some())
    }

    fn check_inputs(&self, layer: usize, q: &Tensor<B, 3>, k: &Tensor<B, 3>, v: &Tensor<B, 3>) -> Result<usize, CacheError> {
        let t = self.shape.check_attend(layer, q, k, v)?;
        let needed = self.layers[layer].slots.appended() + t;
        if needed > self.max_tokens {
            return Err(CacheError::CapacityExceeded { needed, capacity: self.max_tokens });
        }
        Ok(t)
    }

    /// Free slots per KV head reserved at each (re)allocation.
    /// The slack's share is reserved lazily: at most
    /// [`MAX_SLACK_RESERVE`](Self::MAX_SLACK_RESERVE) slots up front, so a
    /// large `--decode-budget` costs nothing until the tokens exist.
    fn headroom_tokens(&self) -> usize {
        match self.decode_slack {
            Some(s) => self.headroom.max(s.saturating_add(1).min(Self::MAX_SLACK_RESERVE)),
            None => self.headroom,
        }
    }

    /// Where and how layer storage (re)allocates: `H_kv` times the headroom
    /// free slots at least.
    fn room(&self) -> Room<B> {
        Room {
            device: self.device.clone(),
            kv_heads: self.shape.kv_heads,
            head_dim: self.shape.head_dim,
            reserve: self.shape.kv_heads.saturating_mul(self.headroom_tokens()),
            kv_dtype: self.kv_dtype,
        }
    }

    /// Layer budget of a static allocation (uniform, pyramid) for `layer` with
    /// `n` evictable tokens; `B - w` for the entropy allocation.
    fn static_budget(&self, layer: usize, comp: Composition, n: usize) -> usize {
        static_layer_budgets(comp.layers, &self.config, self.shape.layers, n)
            .and_then(|b| b.get(layer).copied())
            .unwrap_or(self.config.budget_beyond_window())
    }

    /// Prefill of `layer`: full causal attention, then selection.
    fn prefill(&mut self, layer: usize, q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>) -> Result<Tensor<B, 3>, CacheError> {
        let started = std::time::Instant::now();
        let [h_kv, n_tok, _] = k.dims();
        let window = self.config.window.min(n_tok);
        let n = n_tok - window;
        let compressing = self.composition.filter(|_| n > self.config.keep_all_prefix());
        let kept: Vec<Vec<usize>> = match compressing {
            None => {
                self.layers[layer].budget = Some(n);
                vec![(0..n_tok).collect(); h_kv]
            }
            Some(comp) => {
                let (scores, weight) = score_layer_weighted(&q, &k, &v, &self.config, comp.scorer)?;
                let pending = Pending { ranking: Ranking::of_prefill(&scores, weight), boundary: n, caps: vec![usize::MAX; h_kv] };
                match static_layer_budgets(comp.layers, &self.config, self.shape.layers, n) {
                    Some(budgets) => {
                        let budget = budgets.get(layer).copied().unwrap_or(n);
                        let caps = ragged_head_caps(comp.heads, &pending.ranking.sorted, budget, &self.config);
                        let kept = kept_positions(&pending.ranking.order, &caps, n, n_tok);
                        let store = &mut self.layers[layer];
                        store.budget = Some(budget);
                        store.caps = Some(caps.clone());
                        if self.chunked {
                            store.pending = Some(Pending { caps, ..pending });
                        }
                        kept
                    }
                    None => {
                        let store = &mut self.layers[layer];
                        store.weight = Some(weight);
                        store.pending = Some(pending);
                        self.cascade(comp, layer, n)?;
                        match &self.layers[layer].pending {
                            Some(p) => kept_positions(&p.ranking.order, &p.caps, n, n_tok),
                            None => vec![(0..n_tok).collect(); h_kv],
                        }
                    }
                }
            }
        };
        let room = self.room();
        self.layers[layer].slots.fill(&k, &v, &kept, &room)?;
        if !self.chunked && self.layers.iter().all(|l| l.weight.is_some()) {
            // The cascade is over: its scores are no longer needed (chunked
            // prefill keeps them for the cascades of later chunks).
            self.layers.iter_mut().for_each(|l| l.pending = None);
        }
        self.compression_time += started.elapsed();
        Ok(causal_attention(q, k, v))
    }

    /// Cascade of a dynamic layer allocation (LAVa entropy, CAKE preference):
    /// recompute the shares over the latest weight of every layer that has one
    /// and shrink each of them to its new budget (`current` is the layer just
    /// scored; any other layer whose ranking is older than its last append is
    /// re-scored before it is truncated).
    /// `n` is the current layer's evictable length (the prefix length of the
    /// allocation: CAKE caps every layer's budget at it).
    fn cascade(&mut self, comp: Composition, current: usize, n: usize) -> Result<(), CacheError> {
        let seen: Vec<usize> = (0..self.layers.len()).filter(|&l| self.layers[l].weight.is_some()).collect();
        let weights: Vec<f64> = seen.iter().filter_map(|&l| self.layers[l].weight).collect();
        let budgets = dynamic_layer_budgets(comp.layers, &self.config, &weights, self.shape.layers, n);
        for (&l, budget) in seen.iter().zip(budgets) {
            if l != current && self.layers[l].slots.is_filled() {
                self.refresh_ranking(l, comp)?;
            }
            let config = &self.config;
            let store = &mut self.layers[l];
            let Some(pending) = store.pending.as_mut() else { continue };
            // A one-shot prefill only truncates: the budget in force is the
            // smallest the layer was given (the CAKE preference can hand a
            // layer a token more once later layers are seen).
            let budget = match (self.chunked, store.budget) {
                (false, Some(b)) if store.caps.is_some() => b.min(budget),
                _ => budget,
            };
            let new_caps = ragged_head_caps(comp.heads, &pending.ranking.sorted, budget, config);
            // Shares of the layers already holding their ranking only shrink
            // within a pass; `min` keeps this a prefix truncation.
            let caps: Vec<usize> = pending.caps.iter().zip(&new_caps).map(|(&a, &b)| a.min(b)).collect();
            let changed = caps != pending.caps;
            pending.caps = caps.clone();
            store.budget = Some(budget);
            store.caps = Some(caps);
            if changed && store.slots.is_filled() {
                self.prune(l)?;
            }
        }
        Ok(())
    }

    /// Re-scores `layer` if tokens were appended to it after its latest
    /// ranking (its caps carry over); keeps the weight of that ranking.
    fn refresh_ranking(&mut self, layer: usize, comp: Composition) -> Result<(), CacheError> {
        let boundary = self.layers[layer].boundary(self.config.window);
        let stale = match &self.layers[layer].pending {
            Some(p) => p.boundary != boundary,
            None => false,
        };
        if !stale || !self.can_rescore(layer, comp.scorer) {
            return Ok(());
        }
        let rs = self.rescore(layer, comp.scorer, boundary)?;
        self.rescores += 1;
        let store = &mut self.layers[layer];
        let caps = store.pending.as_ref().map(|p| p.caps.clone()).unwrap_or_else(|| vec![usize::MAX; rs.order.len()]);
        store.pending = Some(Pending { ranking: rs, boundary, caps });
        self.prune(layer)
    }

    /// Drops from `layer`'s storage the ranked tokens beyond its pending caps.
    fn prune(&mut self, layer: usize) -> Result<(), CacheError> {
        let Some(pending) = &self.layers[layer].pending else {
            return Ok(());
        };
        let (selected, boundary) = (pending.selected(), pending.boundary);
        let room = self.room();
        self.layers[layer].slots.retain(&selected, boundary, &room)
    }

    /// Appends `q` to `layer`'s rolling window of the last `w` queries.
    fn push_queries(&mut self, layer: usize, q: Tensor<B, 3>) {
        self.layers[layer].queries.push(q, self.config.window);
    }

    /// Whether `layer` holds what re-scoring needs: the last `min(w, A)`
    /// queries (StreamingLLM needs none); settles the query window.
    fn can_rescore(&mut self, layer: usize, scorer: Scorer) -> bool {
        let w = self.config.window;
        let store = &mut self.layers[layer];
        if !store.slots.is_filled() {
            return false;
        }
        if scorer == Scorer::Streaming {
            return true;
        }
        let r = w.min(store.slots.appended());
        store.queries.settle(w);
        store.queries.settled().is_some_and(|q| q.dims()[1] == r)
    }

    /// After `T` tokens were appended to an already filled `layer`: chunked
    /// prefill or decode-time eviction, if enabled and due.
    fn compress_after_append(&mut self, layer: usize, t: usize) -> Result<(), CacheError> {
        let Some(comp) = self.composition else { return Ok(()) };
        let chunk = t > 1 && self.chunked;
        let slack = match (chunk, self.decode_slack) {
            (true, _) => 0,
            (false, Some(s)) => s,
            (false, None) => return Ok(()),
        };
        let h_kv = self.shape.kv_heads;
        let store = &self.layers[layer];
        let boundary = store.boundary(self.config.window);
        let due = match (&store.caps, chunk) {
            // A compressed layer is re-scored at every chunk.
            (Some(_), true) => true,
            // The prefill rule: compress once the evictable tokens exceed `B - w`.
            (None, true) => boundary > self.config.keep_all_prefix(),
            (caps, false) => {
                let limits = match caps {
                    Some(c) => c.clone(),
                    None => vec![self.static_budget(layer, comp, boundary); h_kv],
                };
                let mut held = vec![0usize; h_kv];
                store.slots.slots().iter().filter(|s| s.1 < boundary).for_each(|&(g, _)| held[g] += 1);
                held.iter().zip(&limits).any(|(&n, &c)| n > c.saturating_add(slack))
            }
        };
        if !due || !self.can_rescore(layer, comp.scorer) {
            if chunk && self.layers[layer].caps.is_none() {
                self.layers[layer].budget = Some(boundary);
            }
            return Ok(());
        }
        let rs = self.rescore(layer, comp.scorer, boundary)?;
        self.rescores += 1;
        if chunk && comp.layers.is_dynamic() {
            let store = &mut self.layers[layer];
            store.weight = Some(rs.weight);
            store.pending = Some(Pending { ranking: rs, boundary, caps: vec![usize::MAX; h_kv] });
            return self.cascade(comp, layer, boundary);
        }
        let budget = match (&self.layers[layer].caps, self.layers[layer].budget) {
            (Some(_), Some(b)) if !chunk => b,
            _ => self.static_budget(layer, comp, boundary),
        };
        let caps = ragged_head_caps(comp.heads, &rs.sorted, budget, &self.config);
        let pending = Pending { ranking: rs, boundary, caps: caps.clone() };
        let selected = pending.selected();
        let store = &mut self.layers[layer];
        store.budget = Some(budget);
        store.caps = Some(caps);
        if self.chunked {
            store.pending = Some(pending);
        }
        let room = self.room();
        self.layers[layer].slots.retain(&selected, boundary, &room)
    }
}

impl<B: Backend> KvCache<B> for CompressedCache<B> {
    fn attend(&mut self, layer: usize, q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>) -> Result<Tensor<B, 3>, CacheError> {
        let t = self.check_inputs(layer, &q, &k, &v)?;
        let window_q = self.evicts_after_prefill().then(|| q.clone());
        if !self.layers[layer].slots.is_filled() {
            // The query window must hold the prompt's last queries before the
            // cascade may re-score a layer.
            if let Some(wq) = window_q {
                self.push_queries(layer, wq);
            }
            let out = self.prefill(layer, q, k, v);
            if out.is_err() {
                self.layers[layer].queries.clear();
            }
            out
        } else {
            let room = self.room();
            let out = self.layers[layer].slots.append_and_attend(layer, q, k, v, &room)?;
            if let Some(wq) = window_q {
                self.push_queries(layer, wq);
            }
            let started = std::time::Instant::now();
            let compressed = self.compress_after_append(layer, t);
            self.compression_time += started.elapsed();
            compressed?;
            Ok(out)
        }
    }

    fn next_position(&self) -> usize {
        self.layers.first().map_or(0, |l| l.slots.appended())
    }

    fn stats(&self) -> CacheStats {
        let retained_tokens: usize = self.layers.iter().map(|l| l.slots.slots().len()).sum();
        let allocated_slots: usize = self.layers.iter().map(|l| l.slots.capacity()).sum();
        let appended: usize = self.layers.iter().map(|l| l.slots.appended()).sum();
        // Bytes per slot as stored (K row + V row); the nominal layout of the
        // format before any layer holds storage.
        let slot_bytes = self.layers.iter().map(|l| l.slots.slot_bytes()).find(|&b| b > 0).unwrap_or(2 * self.kv_dtype.row_bytes(self.shape.head_dim));
        CacheStats {
            retained_tokens,
            retained_bytes: retained_tokens * slot_bytes,
            allocated_bytes: allocated_slots * slot_bytes,
            full_bytes: appended * self.shape.kv_heads * slot_bytes,
        }
    }

    fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = LayerState::empty());
        self.rescores = 0;
        self.compression_time = std::time::Duration::ZERO;
    }

    fn box_clone(&self) -> Option<Box<dyn KvCache<B>>> {
        Some(Box::new(self.clone()))
    }

    fn snapshot(&self) -> Result<crate::CacheSnapshot, CacheError> {
        self.take_snapshot()
    }

    fn restore(&mut self, snapshot: &crate::CacheSnapshot) -> Result<(), CacheError> {
        self.restore_snapshot(snapshot)
    }

    fn compression_seconds(&self) -> f64 {
        CompressedCache::compression_seconds(self)
    }
}

impl<B: Backend> CompressedCache<B> {
    /// The cache `config` would hold after a prefill whose per-layer full keys and
    /// values (`[H_kv, N, D]`, RoPE applied) are `kv`, given the policy's
    /// [`Selection`](crate::Selection) of that prefill (from
    /// [`select_positions`](crate::select_positions) on the same tensors).
    ///
    /// Every policy computes the prefill's attention over the full prompt and
    /// evicts afterwards, so the prefill is policy-independent: an evaluation can
    /// run it once and build each policy's cache from it. The result equals the
    /// state after running the policy live (decode appends as usual); decode-time
    /// eviction and chunked prefill are not available on a cache built this way.
    pub fn from_selection(
        shape: CacheShape,
        config: PolicyConfig,
        max_tokens: usize,
        device: &B::Device,
        kv: &[(Tensor<B, 3>, Tensor<B, 3>)],
        selection: &crate::Selection,
    ) -> Result<Self, CacheError> {
        Self::new(shape, config, max_tokens, device)?.filled_from_selection(kv, selection)
    }

    /// [`from_selection`](Self::from_selection) on a cache already configured
    /// (e.g. [`with_decode_headroom`](Self::with_decode_headroom), which sizes
    /// the buffers built here): fills every layer from `kv` and `selection`.
    /// Errors if the cache already holds tokens or the inputs do not fit it.
    pub fn filled_from_selection(self, kv: &[(Tensor<B, 3>, Tensor<B, 3>)], selection: &crate::Selection) -> Result<Self, CacheError> {
        let mut cache = self;
        let shape = cache.shape;
        if cache.layers.iter().any(|l| l.slots.is_filled()) {
            return Err(CacheError::InvalidParameters("from_selection: the cache already holds tokens; reset it first".into()));
        }
        if kv.len() != shape.layers || selection.layers.len() != shape.layers {
            return Err(CacheError::InvalidShape(format!(
                "from_selection: {} layers of keys/values and {} of selection for a {}-layer cache",
                kv.len(),
                selection.layers.len(),
                shape.layers
            )));
        }
        for (layer, ((k, v), sel)) in kv.iter().zip(&selection.layers).enumerate() {
            let [h_kv, n_tok, d] = k.dims();
            if h_kv != shape.kv_heads || d != shape.head_dim || v.dims() != k.dims() || n_tok != selection.prompt_len {
                return Err(CacheError::ShapeMismatch {
                    what: "keys/values",
                    expected: format!("[{}, {}, {}]", shape.kv_heads, selection.prompt_len, shape.head_dim),
                    found: crate::error::dims_str(&k.dims()),
                });
            }
            if sel.heads.len() != h_kv || sel.heads.iter().flatten().any(|&p| p >= n_tok) {
                return Err(CacheError::InvalidShape(format!("from_selection: layer {layer}'s selection does not fit {h_kv} heads of {n_tok} tokens")));
            }
            let room = cache.room();
            cache.layers[layer].slots.fill(k, v, &sel.heads, &room)?;
            let store = &mut cache.layers[layer];
            // A layer that kept its whole prefix has no head budgets in force,
            // as after a live prefill that did not compress it.
            let prefix = selection.prefix_len();
            let kept_all = sel.head_budgets.iter().all(|&c| c >= prefix);
            store.budget = Some(sel.budget);
            store.caps = if kept_all { None } else { Some(sel.head_budgets.clone()) };
        }
        Ok(cache)
    }
}
