//! One layer's ragged slot storage (module docs of [`super`], "Storage
//! layout"): flat K/V rows, one per kept (KV head, token) slot, each slot's KV
//! head and absolute position, growth, append, retain, and attention over the
//! slots with the one mask that hides other heads' (and future) slots.
//!
//! The storage knows nothing of policies: what to keep is decided by the
//! caller ([`super::CompressedCache`]).

use std::collections::HashSet;

use burn::tensor::{activation::softmax, backend::Backend, Bool, FloatDType, Int, Tensor, TensorData};

use crate::fast_path::{chunk_attention, window_attention_slots, write_ints_in_place, Segment};
use crate::host::to_host;
use crate::kv_dtype::{decode_attention_stored, KvDtype, KvRows};
use crate::CacheError;

/// Device buffers of one layer.
#[derive(Debug, Clone)]
struct Buffers<B: Backend> {
    /// `[capacity, D]`, in the cache's KV dtype.
    keys: KvRows<B, 2>,
    /// `[capacity, D]`, in the cache's KV dtype.
    values: KvRows<B, 2>,
    /// `[capacity]`: KV head of each slot.
    heads: Tensor<B, 1, Int>,
    /// `[capacity]`: absolute position of each slot.
    positions: Tensor<B, 1, Int>,
    capacity: usize,
}

/// Where a layer's storage lives and how it grows: `reserve` free slots (at
/// least; 10% of the live ones if more) are left at each (re)allocation.
#[derive(Debug, Clone)]
pub(super) struct Room<B: Backend> {
    /// The device of the buffers.
    pub device: B::Device,
    /// KV heads `H_kv`.
    pub kv_heads: usize,
    /// Head dimension `D`.
    pub head_dim: usize,
    /// Minimum free slots per (re)allocation (`H_kv` times the headroom in tokens).
    pub reserve: usize,
    /// How K and V rows are stored.
    pub kv_dtype: KvDtype,
}

impl<B: Backend> Room<B> {
    /// Capacity for `live` slots: live plus `max(10%, reserve)`.
    fn capacity_for(&self, live: usize) -> usize {
        live.saturating_add((live / 10).max(self.reserve))
    }

    fn int_tensor(&self, values: impl Iterator<Item = usize>) -> Tensor<B, 1, Int> {
        int_tensor(values, &self.device)
    }

    /// Fresh buffers holding `keys`/`values` (`[R, D]`, stored rows) for
    /// `slots`, plus room.
    fn buffers(&self, keys: KvRows<B, 2>, values: KvRows<B, 2>, slots: &[(usize, usize)]) -> Result<Buffers<B>, CacheError> {
        let live = slots.len();
        let capacity = self.capacity_for(live);
        let d = self.head_dim;
        let pad = capacity - live;
        let keys = keys.cat(KvRows::zeros([pad, d], self.kv_dtype, &self.device))?;
        let values = values.cat(KvRows::zeros([pad, d], self.kv_dtype, &self.device))?;
        let fill = std::iter::repeat_n(0, pad);
        let heads = self.int_tensor(slots.iter().map(|s| s.0).chain(fill.clone()));
        let positions = self.int_tensor(slots.iter().map(|s| s.1).chain(fill));
        Ok(Buffers { keys, values, heads, positions, capacity })
    }
}

/// `values` as a 1-D integer tensor on `device`.
fn int_tensor<B: Backend>(values: impl Iterator<Item = usize>, device: &B::Device) -> Tensor<B, 1, Int> {
    let data: Vec<i64> = values.map(|x| x as i64).collect();
    let len = data.len();
    Tensor::from_data(TensorData::new(data, [len]), device)
}

/// What [`LayerSlots::window_attention`] returns per query head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WindowRows {
    /// The mean over the window queries.
    Mean,
    /// The sum over the window queries (H2O's cumulative attention).
    Sum,
    /// Every window query's row (CAKE).
    Each,
}

/// One layer's kept tokens.
#[derive(Debug, Clone)]
pub(super) struct LayerSlots<B: Backend> {
    buffers: Option<Buffers<B>>,
    /// Host mirror of the live slots: `(kv_head, position)`, in storage order.
    slots: Vec<(usize, usize)>,
    /// `slots` as runs of one KV head ([`segments`]), kept in step with them:
    /// decode attention reads them every step.
    runs: Vec<Segment>,
    /// Tokens ever appended to this layer.
    appended: usize,
}

impl<B: Backend> LayerSlots<B> {
    /// No storage yet (before the layer's prefill).
    pub fn empty() -> Self {
        Self { buffers: None, slots: Vec::new(), runs: Vec::new(), appended: 0 }
    }

    /// Whether the layer has storage (its prefill ran).
    pub fn is_filled(&self) -> bool {
        self.buffers.is_some()
    }

    /// The live slots `(kv_head, position)`, in storage order.
    pub fn slots(&self) -> &[(usize, usize)] {
        &self.slots
    }

    /// Tokens ever appended.
    pub fn appended(&self) -> usize {
        self.appended
    }

    /// Allocated slots (live plus room), 0 without storage.
    pub fn capacity(&self) -> usize {
        self.buffers.as_ref().map_or(0, |b| b.capacity)
    }

    /// Bytes of one slot as stored (its K row plus its V row), 0 without storage.
    pub fn slot_bytes(&self) -> usize {
        self.buffers.as_ref().map_or(0, |b| b.keys.row_bytes() + b.values.row_bytes())
    }

    /// The positions each of `kv_heads` heads keeps, ascending.
    pub fn kept_positions(&self, kv_heads: usize) -> Vec<Vec<usize>> {
        let mut heads = vec![Vec::new(); kv_heads];
        for &(g, p) in &self.slots {
            heads[g].push(p);
        }
        heads.iter_mut().for_each(|h| h.sort_unstable());
        heads
    }

    /// Per KV head: `(position, slot)` of the tokens it holds below
    /// `boundary` (its evictable tokens), by position.
    pub fn evictable(&self, kv_heads: usize, boundary: usize) -> Vec<Vec<(usize, usize)>> {
        let mut prefix: Vec<Vec<(usize, usize)>> = vec![Vec::new(); kv_heads];
        for (s, &(g, p)) in self.slots.iter().enumerate() {
            if p < boundary {
                prefix[g].push((p, s));
            }
        }
        prefix.iter_mut().for_each(|v| v.sort_unstable());
        prefix
    }

    /// The live rows as stored, keys and values `[live, D]` (`None` without storage).
    pub fn live_rows(&self) -> Option<(KvRows<B, 2>, KvRows<B, 2>)> {
        let b = self.buffers.as_ref()?;
        let (live, d) = (self.slots.len(), b.keys.dims()[1]);
        Some((b.keys.clone().slice([0..live, 0..d]), b.values.clone().slice([0..live, 0..d])))
    }

    /// Storage holding `keys`/`values` (`[R, D]`, stored rows) for `slots`
    /// (in storage order), `appended` tokens having been appended.
    pub fn restored(keys: KvRows<B, 2>, values: KvRows<B, 2>, slots: Vec<(usize, usize)>, appended: usize, room: &Room<B>) -> Result<Self, CacheError> {
        let buffers = room.buffers(keys, values, &slots)?;
        Ok(Self { buffers: Some(buffers), runs: segments(&slots), slots, appended })
    }

    /// Fresh storage holding, per KV head `g`, the positions `kept[g]` of a
    /// whole prompt's `k`, `v` (`[H_kv, N, D]`, f32), stored in the room's KV dtype.
    pub fn fill(&mut self, k: &Tensor<B, 3>, v: &Tensor<B, 3>, kept: &[Vec<usize>], room: &Room<B>) -> Result<(), CacheError> {
        let [h_kv, n_tok, d] = k.dims();
        let slots: Vec<(usize, usize)> = kept.iter().enumerate().flat_map(|(g, ps)| ps.iter().map(move |&p| (g, p))).collect();
        let rows = room.int_tensor(slots.iter().map(|&(g, p)| g * n_tok + p));
        let keys = k.clone().reshape([h_kv * n_tok, d]).select(0, rows.clone());
        let values = v.clone().reshape([h_kv * n_tok, d]).select(0, rows);
        let (keys, values) = (KvRows::encode(keys, room.kv_dtype)?, KvRows::encode(values, room.kv_dtype)?);
        self.buffers = Some(room.buffers(keys, values, &slots)?);
        self.runs = segments(&slots);
        self.slots = slots;
        self.appended = n_tok;
        Ok(())
    }

    /// Appends `T` tokens (`k`, `v` `[H_kv, T, D]`) to filled storage and
    /// returns the attention of `q` (`[H_q, T, D]`) over every live slot
    /// (new ones included; causal among the new tokens), `[H_q, T, D]`.
    pub fn append_and_attend(
        &mut self,
        layer: usize,
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        room: &Room<B>,
    ) -> Result<Tensor<B, 3>, CacheError> {
        let (h_kv, d) = (room.kv_heads, room.head_dim);
        let [h_q, t, _] = q.dims();
        let first = self.appended;
        let live = self.slots.len();
        let needed = live + h_kv * t;
        let Some(mut buf) = self.buffers.take() else {
            return Err(CacheError::Internal(format!("layer {layer} has no storage to append to")));
        };
        if needed > buf.capacity {
            let capacity = room.capacity_for(needed);
            let grow = |x: KvRows<B, 2>| KvRows::zeros([capacity, d], room.kv_dtype, &room.device).slice_assign([0..live, 0..d], x.slice([0..live, 0..d]));
            let grow_int =
                |x: Tensor<B, 1, Int>| Tensor::<B, 1, Int>::zeros([capacity], &room.device).slice_assign([0..live], x.slice([0..live]));
            buf = Buffers {
                keys: grow(buf.keys)?,
                values: grow(buf.values)?,
                heads: grow_int(buf.heads),
                positions: grow_int(buf.positions),
                capacity,
            };
        }
        let new_slots: Vec<(usize, usize)> = (0..h_kv).flat_map(|g| (0..t).map(move |i| (g, first + i))).collect();
        buf.keys = write_rows(buf.keys, live, k)?;
        buf.values = write_rows(buf.values, live, v)?;
        let (heads, positions): (Vec<usize>, Vec<usize>) = new_slots.iter().copied().unzip();
        buf.heads = write_ints_in_place(buf.heads, live, &heads)
            .unwrap_or_else(|b| b.slice_assign([live..needed], room.int_tensor(heads.iter().copied())));
        buf.positions = write_ints_in_place(buf.positions, live, &positions)
            .unwrap_or_else(|b| b.slice_assign([live..needed], room.int_tensor(positions.iter().copied())));
        extend_runs(&mut self.runs, live, &new_slots);
        self.slots.extend(new_slots);
        self.appended = first + t;
        let fast = match (&buf.keys, &buf.values) {
            // Decode on flex: attend over the slots in place, one segment per
            // run of consecutive slots of one KV head.
            _ if t == 1 => decode_attention_stored(&q, h_kv, &buf.keys, &buf.values, &self.runs),
            // A chunk on flex: flash attention over each KV head's slots.
            (KvRows::F32(k), KvRows::F32(v)) => chunk_attention(&q, h_kv, k, v, &self.slots, first),
            _ => None,
        };
        if let Some(out) = fast {
            self.buffers = Some(buf);
            return Ok(out);
        }

        let keys = buf.keys.clone().slice([0..needed, 0..d]).decode();
        let values = buf.values.clone().slice([0..needed, 0..d]).decode();
        let rows = h_q * t;
        let scale = 1.0 / (d as f64).sqrt();
        let logits = q.reshape([rows, d]).matmul(keys.transpose()).mul_scalar(scale); // [H_q*T, S]
        let hidden = hidden_slots(&buf, needed, [h_q, t], h_q / h_kv, first, t > 1, &room.device);
        let probs = softmax(logits.mask_fill(hidden, f32::NEG_INFINITY), 1);
        let out = probs.matmul(values).reshape([h_q, t, d]);
        self.buffers = Some(buf);
        Ok(out)
    }

    /// Attention of the last `r` queries `q` (`[H_q, r, D]`, positions
    /// `A - r .. A`) over the live slots, softmax in `f32`, query `i` seeing
    /// its KV head's slots at positions `<= A - r + i`: aggregated over the
    /// queries (`[H_q * used]`, mean or sum) or, with [`WindowRows::Each`],
    /// every query's row (`[H_q * r * used]`).
    pub fn window_attention(&self, layer: usize, q: &Tensor<B, 3>, kv_heads: usize, rows_out: WindowRows) -> Result<Vec<f32>, CacheError> {
        let Some(buf) = &self.buffers else {
            return Err(CacheError::Internal(format!("layer {layer} has no storage to score")));
        };
        let [h_q, r, d] = q.dims();
        let used = self.slots.len();
        let first = self.appended - r;
        if let KvRows::F32(keys) = &buf.keys {
            let weight = match rows_out {
                WindowRows::Mean => Some(1.0 / r.max(1) as f32),
                WindowRows::Sum => Some(1.0),
                WindowRows::Each => None,
            };
            if let Some(p) = window_attention_slots(q, kv_heads, keys, &self.slots, first, weight) {
                return Ok(p);
            }
        }
        let rows = h_q * r;
        let scale = 1.0 / (d as f64).sqrt();
        let keys = buf.keys.clone().slice([0..used, 0..d]).decode();
        let logits = q.clone().reshape([rows, d]).matmul(keys.transpose()).mul_scalar(scale).cast(FloatDType::F32);
        let hidden = hidden_slots(buf, used, [h_q, r], h_q / kv_heads, first, true, &q.device());
        let probs = softmax(logits.mask_fill(hidden, f32::NEG_INFINITY), 1).reshape([h_q, r, used]);
        match rows_out {
            WindowRows::Mean => to_host(probs.mean_dim(1)),
            WindowRows::Sum => to_host(probs.sum_dim(1)),
            WindowRows::Each => to_host(probs),
        }
    }

    /// The L1 norm of every live slot's value row, `[used]`.
    pub fn value_norms(&self) -> Result<Vec<f32>, CacheError> {
        match &self.buffers {
            Some(buf) => {
                let d = buf.values.dims()[1];
                to_host(buf.values.clone().slice([0..self.slots.len(), 0..d]).decode().abs().sum_dim(1))
            }
            None => Ok(Vec::new()),
        }
    }

    /// Keeps the slots at or after `boundary` and, per KV head, the positions
    /// in `selected`; gathers them into fresh buffers on the device.
    pub fn retain(&mut self, selected: &[Vec<usize>], boundary: usize, room: &Room<B>) -> Result<(), CacheError> {
        let Some(buffers) = &self.buffers else {
            return Ok(());
        };
        let keep: HashSet<(usize, usize)> =
            selected.iter().enumerate().flat_map(|(g, ps)| ps.iter().map(move |&p| (g, p))).collect();
        let kept: Vec<usize> = (0..self.slots.len())
            .filter(|&s| {
                let (g, p) = self.slots[s];
                p >= boundary || keep.contains(&(g, p))
            })
            .collect();
        if kept.len() == self.slots.len() {
            return Ok(());
        }
        let slots: Vec<(usize, usize)> = kept.iter().map(|&s| self.slots[s]).collect();
        let idx = room.int_tensor(kept.iter().copied());
        let keys = buffers.keys.clone().select(idx.clone());
        let values = buffers.values.clone().select(idx);
        self.buffers = Some(room.buffers(keys, values, &slots)?);
        self.runs = segments(&slots);
        self.slots = slots;
        Ok(())
    }
}

/// `x` (`[H_kv, T, D]`, f32) written to rows `at .. at + H_kv * T` of `rows`
/// (in place on flex).
fn write_rows<B: Backend>(rows: KvRows<B, 2>, at: usize, x: Tensor<B, 3>) -> Result<KvRows<B, 2>, CacheError> {
    let [h, t, d] = x.dims();
    rows.write([at..at + h * t, 0..d], x.reshape([h * t, d]), &[(at * d, 0, h * t * d)])
}

/// The slots each query row may not see, `[H_q * T, used]`: row `x = h*T + i`
/// (query head `h`, its query `i` at position `first + i`) reads only the
/// slots of KV head `h / group` and, when `causal`, only positions
/// `<= first + i`. The one mask of slot attention (decode, chunks, re-scoring).
fn hidden_slots<B: Backend>(
    buf: &Buffers<B>,
    used: usize,
    [query_heads, t]: [usize; 2],
    group: usize,
    first: usize,
    causal: bool,
    device: &B::Device,
) -> Tensor<B, 2, Bool> {
    let rows = query_heads * t;
    let row_head = int_tensor::<B>((0..rows).map(|x| x / t / group), device).reshape([rows, 1]).expand([rows, used]);
    let slot_head = buf.heads.clone().slice([0..used]).reshape([1, used]).expand([rows, used]);
    let hidden = slot_head.equal(row_head).bool_not();
    if !causal {
        return hidden;
    }
    let row_pos = int_tensor::<B>((0..rows).map(|x| first + x % t), device).reshape([rows, 1]).expand([rows, used]);
    let slot_pos = buf.positions.clone().slice([0..used]).reshape([1, used]).expand([rows, used]);
    hidden.bool_or(slot_pos.greater(row_pos))
}

/// Runs of consecutive slots of one KV head, as row segments of the storage.
fn segments(slots: &[(usize, usize)]) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    extend_runs(&mut out, 0, slots);
    out
}

/// Extends `runs` (the segments of the storage's first `at` rows) with the
/// slots `new` stored from row `at` on.
fn extend_runs(runs: &mut Vec<Segment>, at: usize, new: &[(usize, usize)]) {
    for (row, &(head, _)) in (at..).zip(new) {
        match runs.last_mut() {
            Some(s) if s.kv_head == head && s.rows.end == row => s.rows.end += 1,
            _ => runs.push(Segment { kv_head: head, rows: row..row + 1 }),
        }
    }
}
