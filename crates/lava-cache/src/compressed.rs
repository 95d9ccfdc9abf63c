//! The compressed KV cache: a policy chooses, at prefill, which tokens each KV
//! head keeps; decoding appends and attends over unequal head lengths.
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
//! Later calls (decode, or a further chunk of `T > 1` tokens) only append.

use burn::tensor::{activation::softmax, backend::Backend, Int, Tensor, TensorData};

use crate::attention::causal_attention;
use crate::error::dims_str;
use crate::policy::plan::{head_caps, kept_positions, static_layer_budgets, RankedLayer};
use crate::policy::{layer_budget, scorer::score_layer, Composition, LayerAllocation, PolicyConfig};
use crate::{CacheError, CacheShape, KvCache};

/// Bytes per stored element (K and V are accounted as `f32`, as in [`KvCache`]).
const ELEM_BYTES: usize = 4;

/// Device buffers of one layer.
#[derive(Debug, Clone)]
struct Buffers<B: Backend> {
    /// `[capacity, D]`.
    keys: Tensor<B, 2>,
    /// `[capacity, D]`.
    values: Tensor<B, 2>,
    /// `[capacity]`: KV head of each slot.
    heads: Tensor<B, 1, Int>,
    /// `[capacity]`: absolute position of each slot.
    positions: Tensor<B, 1, Int>,
    capacity: usize,
}

/// A layer's scores kept between its prefill and the end of the LAVa cascade.
#[derive(Debug, Clone)]
struct Pending {
    ranked: RankedLayer,
    /// Prefix length of the layer's prompt.
    n: usize,
    /// Current prefix tokens kept per KV head.
    caps: Vec<usize>,
}

#[derive(Debug, Clone)]
struct LayerStore<B: Backend> {
    buffers: Option<Buffers<B>>,
    /// Host mirror of the live slots: `(kv_head, position)`.
    slots: Vec<(usize, usize)>,
    /// Tokens ever appended to this layer.
    appended: usize,
    /// Layer budget `B_l` chosen at prefill (updated by the cascade).
    budget: Option<usize>,
    /// Normalised entropy, for the LAVa cascade.
    entropy: Option<f64>,
    pending: Option<Pending>,
}

impl<B: Backend> LayerStore<B> {
    fn empty() -> Self {
        Self { buffers: None, slots: Vec::new(), appended: 0, budget: None, entropy: None, pending: None }
    }
}

/// A KV cache that keeps, per layer and KV head, the tokens a policy selects
/// (see the module docs for the layout and the LAVa prefill cascade).
#[derive(Debug)]
pub struct CompressedCache<B: Backend> {
    shape: CacheShape,
    config: PolicyConfig,
    composition: Option<Composition>,
    device: B::Device,
    max_tokens: usize,
    headroom: usize,
    layers: Vec<LayerStore<B>>,
}

impl<B: Backend> CompressedCache<B> {
    /// Default decode headroom, in tokens per KV head.
    pub const DEFAULT_HEADROOM: usize = 32;

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
            layers: (0..shape.layers).map(|_| LayerStore::empty()).collect(),
        })
    }

    /// Sets the decode headroom: free slots per KV head reserved after prefill
    /// and added at each growth (at least 1).
    pub fn with_decode_headroom(mut self, tokens_per_head: usize) -> Self {
        self.headroom = tokens_per_head.max(1);
        self
    }

    /// The shape this cache serves.
    pub fn shape(&self) -> CacheShape {
        self.shape
    }

    /// The policy and its parameters.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The budget `B_l` (tokens beyond the window) that `layer` was given at
    /// prefill, as in [`LayerSelection::budget`](crate::LayerSelection);
    /// `None` before its prefill.
    pub fn layer_budget(&self, layer: usize) -> Option<usize> {
        self.layers.get(layer).and_then(|l| l.budget)
    }

    /// The positions each KV head of `layer` keeps, ascending.
    pub fn kept_positions(&self, layer: usize) -> Result<Vec<Vec<usize>>, CacheError> {
        let store = self.store(layer)?;
        let mut heads = vec![Vec::new(); self.shape.kv_heads];
        for &(g, p) in &store.slots {
            heads[g].push(p);
        }
        heads.iter_mut().for_each(|h| h.sort_unstable());
        Ok(heads)
    }

    /// Bytes of the per-slot bookkeeping on the device (KV head and position,
    /// one integer each, counted as 8 bytes; 4 on backends with 32-bit
    /// integers), not included in [`KvCache::allocated_bytes`].
    pub fn index_bytes(&self) -> usize {
        self.layers.iter().filter_map(|l| l.buffers.as_ref()).map(|b| b.capacity * 2 * 8).sum()
    }

    fn store(&self, layer: usize) -> Result<&LayerStore<B>, CacheError> {
        self.layers.get(layer).ok_or(CacheError::LayerOutOfRange { layer, layers: self.shape.layers })
    }

    fn check_inputs(&self, layer: usize, q: &Tensor<B, 3>, k: &Tensor<B, 3>, v: &Tensor<B, 3>) -> Result<usize, CacheError> {
        let s = self.shape;
        if layer >= s.layers {
            return Err(CacheError::LayerOutOfRange { layer, layers: s.layers });
        }
        let [hq, t, dq] = q.dims();
        if hq != s.query_heads || dq != s.head_dim || t == 0 {
            return Err(CacheError::ShapeMismatch {
                what: "queries",
                expected: format!("[{}, T>0, {}]", s.query_heads, s.head_dim),
                found: dims_str(&q.dims()),
            });
        }
        for (what, x) in [("keys", k), ("values", v)] {
            if x.dims() != [s.kv_heads, t, s.head_dim] {
                return Err(CacheError::ShapeMismatch {
                    what,
                    expected: dims_str(&[s.kv_heads, t, s.head_dim]),
                    found: dims_str(&x.dims()),
                });
            }
        }
        let needed = self.layers[layer].appended + t;
        if needed > self.max_tokens {
            return Err(CacheError::CapacityExceeded { needed, capacity: self.max_tokens });
        }
        Ok(t)
    }

    /// Capacity for `live` slots: live plus `max(10%, H_kv * headroom)`.
    fn capacity_for(&self, live: usize) -> usize {
        live + (live / 10).max(self.shape.kv_heads * self.headroom)
    }

    fn int_tensor(&self, values: impl Iterator<Item = usize>) -> Tensor<B, 1, Int> {
        let data: Vec<i64> = values.map(|x| x as i64).collect();
        let len = data.len();
        Tensor::from_data(TensorData::new(data, [len]), &self.device)
    }

    /// Fresh buffers holding `rows` of `keys`/`values` (`[R, D]`), for `slots`.
    fn build_buffers(&self, keys: Tensor<B, 2>, values: Tensor<B, 2>, slots: &[(usize, usize)]) -> Buffers<B> {
        let live = slots.len();
        let capacity = self.capacity_for(live);
        let d = self.shape.head_dim;
        let (kd, vd) = (keys.dtype(), values.dtype());
        let pad = capacity - live;
        let keys = Tensor::cat(vec![keys, Tensor::zeros([pad, d], (&self.device, kd))], 0);
        let values = Tensor::cat(vec![values, Tensor::zeros([pad, d], (&self.device, vd))], 0);
        let fill = std::iter::repeat_n(0, pad);
        let heads = self.int_tensor(slots.iter().map(|s| s.0).chain(fill.clone()));
        let positions = self.int_tensor(slots.iter().map(|s| s.1).chain(fill));
        Buffers { keys, values, heads, positions, capacity }
    }

    /// Prefill of `layer`: full causal attention, then selection.
    fn prefill(&mut self, layer: usize, q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>) -> Result<Tensor<B, 3>, CacheError> {
        let [h_kv, n_tok, d] = k.dims();
        let window = self.config.window.min(n_tok);
        let n = n_tok - window;
        let compressing = self.composition.filter(|_| n > self.config.budget_beyond_window());
        let kept: Vec<Vec<usize>> = match compressing {
            None => {
                self.layers[layer].budget = Some(n);
                vec![(0..n_tok).collect(); h_kv]
            }
            Some(comp) => {
                let ranked = RankedLayer::new(&score_layer(&q, &k, &v, &self.config, comp.scorer)?);
                match static_layer_budgets(comp.layers, &self.config, self.shape.layers, n) {
                    Some(budgets) => {
                        let budget = budgets.get(layer).copied().unwrap_or(n);
                        let caps = head_caps(comp.heads, &ranked, budget, self.config.floor_alpha);
                        self.layers[layer].budget = Some(budget);
                        kept_positions(&ranked.order, &caps, n, n_tok)
                    }
                    None => {
                        debug_assert_eq!(comp.layers, LayerAllocation::Entropy);
                        let store = &mut self.layers[layer];
                        store.entropy = Some(ranked.entropy);
                        store.pending = Some(Pending { ranked, n, caps: vec![n; h_kv] });
                        self.cascade(comp)?;
                        match &self.layers[layer].pending {
                            Some(p) => kept_positions(&p.ranked.order, &p.caps, n, n_tok),
                            None => vec![(0..n_tok).collect(); h_kv],
                        }
                    }
                }
            }
        };
        let slots: Vec<(usize, usize)> = kept.iter().enumerate().flat_map(|(g, ps)| ps.iter().map(move |&p| (g, p))).collect();
        let rows = self.int_tensor(slots.iter().map(|&(g, p)| g * n_tok + p));
        let keys = k.clone().reshape([h_kv * n_tok, d]).select(0, rows.clone());
        let values = v.clone().reshape([h_kv * n_tok, d]).select(0, rows);
        let buffers = self.build_buffers(keys, values, &slots);
        let store = &mut self.layers[layer];
        store.buffers = Some(buffers);
        store.slots = slots;
        store.appended = n_tok;
        if self.layers.iter().all(|l| l.entropy.is_some()) {
            // The cascade is over: its scores are no longer needed.
            self.layers.iter_mut().for_each(|l| l.pending = None);
        }
        Ok(causal_attention(q, k, v))
    }

    /// LAVa cascade: recompute the entropy shares over the layers prefilled so
    /// far and shrink every one of them to its new budget.
    fn cascade(&mut self, comp: Composition) -> Result<(), CacheError> {
        let seen: Vec<usize> = (0..self.layers.len()).filter(|&l| self.layers[l].entropy.is_some()).collect();
        let entropies: Vec<f64> = seen.iter().filter_map(|&l| self.layers[l].entropy).collect();
        let budgets = layer_budget::entropy(&entropies, self.shape.layers, self.config.budget_beyond_window());
        for (&l, budget) in seen.iter().zip(budgets) {
            let Some(pending) = self.layers[l].pending.as_mut() else { continue };
            let new_caps = head_caps(comp.heads, &pending.ranked, budget, self.config.floor_alpha);
            // Shares only shrink, so this is a prefix truncation; `min` keeps it one.
            let caps: Vec<usize> = pending.caps.iter().zip(&new_caps).map(|(&a, &b)| a.min(b)).collect();
            let changed = caps != pending.caps;
            pending.caps = caps;
            self.layers[l].budget = Some(budget);
            if changed && self.layers[l].buffers.is_some() {
                self.prune(l)?;
            }
        }
        Ok(())
    }

    /// Drops from `layer`'s storage the prefix tokens beyond its pending caps.
    fn prune(&mut self, layer: usize) -> Result<(), CacheError> {
        let store = &self.layers[layer];
        let (Some(pending), Some(buffers)) = (&store.pending, &store.buffers) else {
            return Ok(());
        };
        let n = pending.n;
        let mut keep = vec![vec![false; n]; self.shape.kv_heads];
        for (g, (order, &cap)) in pending.ranked.order.iter().zip(&pending.caps).enumerate() {
            order.iter().take(cap).for_each(|&p| keep[g][p] = true);
        }
        let kept: Vec<usize> = (0..store.slots.len())
            .filter(|&s| {
                let (g, p) = store.slots[s];
                p >= n || keep[g][p]
            })
            .collect();
        let slots: Vec<(usize, usize)> = kept.iter().map(|&s| store.slots[s]).collect();
        let idx = self.int_tensor(kept.iter().copied());
        let keys = buffers.keys.clone().select(0, idx.clone());
        let values = buffers.values.clone().select(0, idx);
        let rebuilt = self.build_buffers(keys, values, &slots);
        let store = &mut self.layers[layer];
        store.buffers = Some(rebuilt);
        store.slots = slots;
        Ok(())
    }

    /// Appends `T` tokens to a filled layer and attends over its slots.
    fn extend(&mut self, layer: usize, q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>) -> Result<Tensor<B, 3>, CacheError> {
        let CacheShape { query_heads: h_q, kv_heads: h_kv, head_dim: d, .. } = self.shape;
        let t = k.dims()[1];
        let first = self.layers[layer].appended;
        let live = self.layers[layer].slots.len();
        let needed = live + h_kv * t;
        let Some(mut buf) = self.layers[layer].buffers.take() else {
            return Err(CacheError::InvalidShape(format!("layer {layer} has no storage")));
        };
        if needed > buf.capacity {
            let capacity = self.capacity_for(needed);
            let grow = |x: Tensor<B, 2>| {
                let dtype = x.dtype();
                Tensor::zeros([capacity, d], (&self.device, dtype)).slice_assign([0..live, 0..d], x.slice([0..live, 0..d]))
            };
            let grow_int =
                |x: Tensor<B, 1, Int>| Tensor::<B, 1, Int>::zeros([capacity], &self.device).slice_assign([0..live], x.slice([0..live]));
            buf = Buffers {
                keys: grow(buf.keys),
                values: grow(buf.values),
                heads: grow_int(buf.heads),
                positions: grow_int(buf.positions),
                capacity,
            };
        }
        let new_slots: Vec<(usize, usize)> = (0..h_kv).flat_map(|g| (0..t).map(move |i| (g, first + i))).collect();
        buf.keys = buf.keys.slice_assign([live..needed, 0..d], k.reshape([h_kv * t, d]));
        buf.values = buf.values.slice_assign([live..needed, 0..d], v.reshape([h_kv * t, d]));
        buf.heads = buf.heads.slice_assign([live..needed], self.int_tensor(new_slots.iter().map(|s| s.0)));
        buf.positions = buf.positions.slice_assign([live..needed], self.int_tensor(new_slots.iter().map(|s| s.1)));

        let keys = buf.keys.clone().slice([0..needed, 0..d]);
        let values = buf.values.clone().slice([0..needed, 0..d]);
        let rows = h_q * t;
        let group = h_q / h_kv;
        let scale = 1.0 / (d as f64).sqrt();
        let logits = q.reshape([rows, d]).matmul(keys.transpose()).mul_scalar(scale); // [H_q*T, S]
        // Query row r = h*T + i reads KV head h / G and sees positions <= first + i.
        let row_head = self.int_tensor((0..rows).map(|r| r / t / group)).reshape([rows, 1]).expand([rows, needed]);
        let slot_head = buf.heads.clone().slice([0..needed]).reshape([1, needed]).expand([rows, needed]);
        let mut hidden = slot_head.equal(row_head).bool_not();
        if t > 1 {
            let row_pos = self.int_tensor((0..rows).map(|r| first + r % t)).reshape([rows, 1]).expand([rows, needed]);
            let slot_pos = buf.positions.clone().slice([0..needed]).reshape([1, needed]).expand([rows, needed]);
            hidden = hidden.bool_or(slot_pos.greater(row_pos));
        }
        let probs = softmax(logits.mask_fill(hidden, f32::NEG_INFINITY), 1);
        let out = probs.matmul(values).reshape([h_q, t, d]);

        let store = &mut self.layers[layer];
        store.buffers = Some(buf);
        store.slots.extend(new_slots);
        store.appended = first + t;
        Ok(out)
    }
}

impl<B: Backend> KvCache<B> for CompressedCache<B> {
    fn attend(&mut self, layer: usize, q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>) -> Result<Tensor<B, 3>, CacheError> {
        self.check_inputs(layer, &q, &k, &v)?;
        if self.layers[layer].buffers.is_none() {
            self.prefill(layer, q, k, v)
        } else {
            self.extend(layer, q, k, v)
        }
    }

    fn next_position(&self) -> usize {
        self.layers.first().map_or(0, |l| l.appended)
    }

    fn retained_tokens(&self) -> usize {
        self.layers.iter().map(|l| l.slots.len()).sum()
    }

    fn retained_bytes(&self) -> usize {
        self.retained_tokens() * self.shape.head_dim * 2 * ELEM_BYTES
    }

    fn allocated_bytes(&self) -> usize {
        let slots: usize = self.layers.iter().filter_map(|l| l.buffers.as_ref()).map(|b| b.capacity).sum();
        slots * self.shape.head_dim * 2 * ELEM_BYTES
    }

    fn full_bytes(&self) -> usize {
        let tokens: usize = self.layers.iter().map(|l| l.appended).sum();
        tokens * self.shape.kv_heads * self.shape.head_dim * 2 * ELEM_BYTES
    }

    fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = LayerStore::empty());
    }
}
