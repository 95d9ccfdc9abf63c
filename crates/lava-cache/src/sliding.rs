//! Sliding-window layers: [`SlidingWindowCache`].
//!
//! A model whose layers do not all attend to the whole context (Gemma 3: five
//! local layers of window 512, then one global layer; Mistral v0.1: every
//! layer local) gets one cache for both kinds. A local layer's query at
//! position `p` sees positions `p - w + 1 ..= p` only, so the layer keeps a
//! ring of its last `w` positions and nothing else: no full-length buffer,
//! no eviction, no budget. The global layers go to an inner cache
//! ([`FullCache`](crate::FullCache) or [`CompressedCache`](crate::CompressedCache))
//! built over them alone: its policy's layer allocation (uniform, pyramid,
//! LAVa's entropy cascade, CAKE's preferences) runs over the global layers
//! and spends the whole budget there.
//!
//! The rings hold f32 keys and values whatever the inner cache's
//! [`KvDtype`](crate::KvDtype), and attend with tensor ops (no flex host
//! kernel yet): at most `w` positions per query.

use burn::tensor::{activation::softmax, backend::Backend, Bool, Tensor, TensorData};

use crate::snapshot::{CacheSnapshot, LayerSnapshot, SnapshotKind, StoredRows};
use crate::{CacheError, CacheShape, CacheStats, KvCache, KvDtype};

/// Bytes of K and V a [`SlidingWindowCache`] for a model of `shape` with
/// these `windows` holds after `positions` positions when each global layer
/// keeps `global_positions` of them per KV head, stored as `global_dtype`: a
/// local layer's ring holds `min(positions, w)` positions (in f32), a global
/// layer `global_positions`. The arithmetic of [`KvCache::stats`]'s
/// `retained_bytes` from the shape alone (no cache built), for what `lava
/// serve` reserves and the eval report's nominal bytes; with no local layer,
/// `layers * kv_heads * global_positions * 2 * row bytes`.
pub fn held_kv_bytes(shape: CacheShape, windows: &[Option<usize>], positions: usize, global_positions: usize, global_dtype: KvDtype) -> usize {
    let rows = |positions: usize, dtype: KvDtype| shape.kv_heads.saturating_mul(positions).saturating_mul(2 * dtype.row_bytes(shape.head_dim));
    let globals = shape.layers.saturating_sub(windows.iter().filter(|w| w.is_some()).count());
    let rings = windows.iter().flatten().fold(0usize, |acc, &w| acc.saturating_add(rows(positions.min(w), KvDtype::F32)));
    rings.saturating_add(globals.saturating_mul(rows(global_positions, global_dtype)))
}

/// One local layer's ring: slot `p % w` holds position `p`'s key and value.
#[derive(Debug, Clone)]
struct Ring<B: Backend> {
    /// `[H_kv, w, D]`
    k: Tensor<B, 3>,
    /// `[H_kv, w, D]`
    v: Tensor<B, 3>,
    /// The position each slot holds, `None` while it is empty.
    positions: Vec<Option<usize>>,
}

/// A cache for models with sliding-window (local) layers: a ring of the last
/// `window` positions per local layer, and an inner cache over the global
/// layers only (module docs).
///
/// Layer indices are the model's; the inner cache sees its global layers
/// renumbered `0..` in order. Positions are absolute and counted per layer.
pub struct SlidingWindowCache<B: Backend> {
    shape: CacheShape,
    device: B::Device,
    /// Per model layer: its window, `None` for a global layer.
    windows: Vec<Option<usize>>,
    /// Per model layer: its index in the inner cache (global layers).
    inner_index: Vec<Option<usize>>,
    /// The global layers' cache; `None` when every layer is local.
    inner: Option<Box<dyn KvCache<B>>>,
    /// Per model layer: the ring of a local layer, once it holds tokens.
    rings: Vec<Option<Ring<B>>>,
    /// Tokens appended to each layer.
    appended: Vec<usize>,
}

impl<B: Backend> std::fmt::Debug for SlidingWindowCache<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlidingWindowCache").field("shape", &self.shape).field("windows", &self.windows).finish()
    }
}

impl<B: Backend> SlidingWindowCache<B> {
    /// A cache for a model of `shape` whose layer `l` attends within
    /// `windows[l]` positions (`None`: the whole context). `global` builds the
    /// inner cache for the shape of the global layers alone (`shape` with
    /// `layers` = their count); it is not called when every layer is local.
    pub fn new(
        shape: CacheShape,
        windows: Vec<Option<usize>>,
        device: &B::Device,
        global: impl FnOnce(CacheShape) -> Result<Box<dyn KvCache<B>>, CacheError>,
    ) -> Result<Self, CacheError> {
        shape.validate()?;
        if windows.len() != shape.layers {
            return Err(CacheError::InvalidParameters(format!(
                "{} sliding windows given for a model of {} layers; give one per layer (None for a global layer)",
                windows.len(),
                shape.layers
            )));
        }
        if windows.contains(&Some(0)) {
            return Err(CacheError::InvalidParameters("a sliding window must hold at least one position".into()));
        }
        let mut inner_index = Vec::with_capacity(windows.len());
        let mut globals = 0;
        for w in &windows {
            inner_index.push(w.is_none().then(|| {
                globals += 1;
                globals - 1
            }));
        }
        let inner = match globals {
            0 => None,
            n => Some(global(CacheShape { layers: n, ..shape })?),
        };
        Ok(Self {
            shape,
            device: device.clone(),
            rings: windows.iter().map(|_| None).collect(),
            appended: vec![0; windows.len()],
            windows,
            inner_index,
            inner,
        })
    }

    /// The shape of the global layers' inner cache for a model of `shape`
    /// with these `windows` (`None` when every layer is local).
    pub fn global_shape(shape: CacheShape, windows: &[Option<usize>]) -> Option<CacheShape> {
        let n = windows.iter().filter(|w| w.is_none()).count();
        (n > 0).then_some(CacheShape { layers: n, ..shape })
    }

    /// The inner cache of the global layers, if the model has any.
    pub fn global_cache(&self) -> Option<&dyn KvCache<B>> {
        self.inner.as_deref()
    }

    /// A copy of this cache's rings (the local layers) with `global` in place
    /// of its global layers' cache: how a cache derived from a recorded
    /// prefill gets the rings that prefill filled (they do not depend on
    /// the policy). `global` must serve the global layers alone and stand at
    /// the same position; `None` only when every layer is local.
    pub fn with_global_cache(&self, global: Option<Box<dyn KvCache<B>>>) -> Result<Self, CacheError> {
        let at = self.inner_index.iter().position(Option::is_some).map(|l| self.appended[l]);
        match (&global, at) {
            (Some(g), Some(at)) if g.next_position() != at => {
                return Err(CacheError::InvalidParameters(format!(
                    "the global layers' cache stands at position {} but the rings at {at}; derive it from the same prefill",
                    g.next_position()
                )))
            }
            (Some(_), Some(_)) | (None, None) => {}
            (Some(_), None) => return Err(CacheError::InvalidParameters("a global layers' cache given for a model whose layers are all local".into())),
            (None, Some(_)) => return Err(CacheError::InvalidParameters("no global layers' cache given for a model with global layers".into())),
        }
        Ok(Self {
            shape: self.shape,
            device: self.device.clone(),
            windows: self.windows.clone(),
            inner_index: self.inner_index.clone(),
            inner: global,
            rings: self.rings.clone(),
            appended: self.appended.clone(),
        })
    }

    /// An independent copy (what [`KvCache::box_clone`] gives, as itself);
    /// `None` when the global layers' cache cannot be copied.
    pub fn try_clone(&self) -> Option<Self> {
        let global = match &self.inner {
            Some(c) => Some(c.box_clone()?),
            None => None,
        };
        self.with_global_cache(global).ok()
    }

    /// Positions layer `layer` holds now, per KV head: `min(appended, w)`
    /// for a local layer; for a global layer, what the inner cache keeps
    /// (averaged over its layers, see [`KvCache::retained_tokens`]) is not
    /// split per layer, so `None`.
    pub fn local_positions(&self, layer: usize) -> Option<usize> {
        let w = (*self.windows.get(layer)?)?;
        Some(self.rings[layer].as_ref().map_or(0, |r| r.positions.iter().flatten().count()).min(w))
    }

    /// Layer `l`'s ring as a snapshot layer: per KV head, the ring's
    /// positions in slot order, f32 rows. A global layer is an empty layer
    /// with its count of appended tokens (the inner cache holds its tokens).
    fn ring_snapshot(&self, l: usize) -> Result<LayerSnapshot, CacheError> {
        let empty = LayerSnapshot { appended: self.appended[l], ..LayerSnapshot::empty(KvDtype::F32) };
        let Some(ring) = &self.rings[l] else { return Ok(empty) };
        let (h, w, d) = (self.shape.kv_heads, ring.positions.len(), self.shape.head_dim);
        let held: Vec<(usize, usize)> = ring.positions.iter().enumerate().filter_map(|(s, p)| p.map(|p| (s, p))).collect();
        let (k, v) = (crate::host::to_host(ring.k.clone())?, crate::host::to_host(ring.v.clone())?);
        let rows = |x: &[f32]| -> Vec<f32> { (0..h).flat_map(|g| held.iter().flat_map(move |&(s, _)| x[(g * w + s) * d..(g * w + s + 1) * d].to_vec())).collect() };
        Ok(LayerSnapshot {
            slots: (0..h).flat_map(|g| held.iter().map(move |&(_, p)| (g, p))).collect(),
            keys: StoredRows::F32(rows(&k)),
            values: StoredRows::F32(rows(&v)),
            ..empty
        })
    }

    /// Puts a snapshot layer into local layer `l` (window `w`): each row to
    /// its position's slot `p % w`.
    fn restore_ring(&mut self, l: usize, w: usize, s: &LayerSnapshot) -> Result<(), CacheError> {
        let (h, d) = (self.shape.kv_heads, self.shape.head_dim);
        self.appended[l] = s.appended;
        if s.slots.is_empty() {
            return Ok(());
        }
        let (StoredRows::F32(k), StoredRows::F32(v)) = (&s.keys, &s.values) else {
            return Err(CacheError::Snapshot(format!("layer {l}'s ring is not stored as f32")));
        };
        let mut ring_k = vec![0f32; h * w * d];
        let mut ring_v = vec![0f32; h * w * d];
        let mut positions = vec![None; w];
        for (i, &(g, p)) in s.slots.iter().enumerate() {
            if p + w < s.appended || positions[p % w].is_some_and(|q| q != p) {
                return Err(CacheError::Snapshot(format!("layer {l}'s ring of {w} holds position {p} of {}", s.appended)));
            }
            positions[p % w] = Some(p);
            let at = (g * w + p % w) * d;
            ring_k[at..at + d].copy_from_slice(&k[i * d..(i + 1) * d]);
            ring_v[at..at + d].copy_from_slice(&v[i * d..(i + 1) * d]);
        }
        let tensor = |x: Vec<f32>| Tensor::<B, 3>::from_data(TensorData::new(x, [h, w, d]), &self.device);
        self.rings[l] = Some(Ring { k: tensor(ring_k), v: tensor(ring_v), positions });
        Ok(())
    }

    /// Bytes the ring of a local layer allocates (`[H_kv, w, D]` keys and
    /// values in f32), once it holds a token.
    fn ring_bytes(&self, w: usize) -> usize {
        2 * self.shape.kv_heads * w * self.shape.head_dim * 4
    }

    /// Attention of a local layer: the new tokens against the ring and
    /// themselves, each query masked to its window; then the ring keeps the
    /// last `w` positions.
    fn attend_local(&mut self, layer: usize, w: usize, q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>) -> Result<Tensor<B, 3>, CacheError> {
        let [hq, t, d] = q.dims();
        let hkv = self.shape.kv_heads;
        let g = hq / hkv;
        let start = self.appended[layer];
        // The ring's live slots (positions that a new query can still see).
        let (ring_k, ring_v, ring_pos) = match &self.rings[layer] {
            Some(r) => {
                let live: Vec<(usize, usize)> =
                    r.positions.iter().enumerate().filter_map(|(s, p)| p.filter(|&p| p + w > start).map(|p| (s, p))).collect();
                if live.is_empty() {
                    (None, None, vec![])
                } else {
                    let idx: Vec<i64> = live.iter().map(|&(s, _)| s as i64).collect();
                    let idx = Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(idx, [live.len()]), &self.device);
                    (Some(r.k.clone().select(1, idx.clone())), Some(r.v.clone().select(1, idx)), live.iter().map(|&(_, p)| p).collect())
                }
            }
            None => (None, None, vec![]),
        };
        let scale = 1.0 / (d as f64).sqrt();
        let mut outs = Vec::new();
        // Query blocks bound the score matrix; each block sees the ring and
        // the new keys from its first query's window start to its last query.
        const BLOCK: usize = 256;
        let mut s0 = 0;
        while s0 < t {
            let s1 = (s0 + BLOCK).min(t);
            let first = s0.saturating_sub(w - 1);
            let mut keys_pos: Vec<usize> = ring_pos.clone();
            keys_pos.extend((first..s1).map(|i| start + i));
            let new_k = k.clone().slice([0..hkv, first..s1, 0..d]);
            let new_v = v.clone().slice([0..hkv, first..s1, 0..d]);
            let (keys, values) = match (&ring_k, &ring_v) {
                (Some(rk), Some(rv)) => (Tensor::cat(vec![rk.clone(), new_k], 1), Tensor::cat(vec![rv.clone(), new_v], 1)),
                _ => (new_k, new_v),
            };
            let s = keys_pos.len();
            let rows = s1 - s0;
            let mut mask = Vec::with_capacity(g * rows * s);
            for _ in 0..g {
                for i in s0..s1 {
                    let p = start + i;
                    mask.extend(keys_pos.iter().map(|&kp| kp > p || kp + w <= p));
                }
            }
            let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [g * rows, s]), &self.device);
            let qb = q.clone().slice([0..hq, s0..s1, 0..d]).reshape([hkv, g * rows, d]);
            let scores = qb.matmul(keys.swap_dims(1, 2)).mul_scalar(scale);
            let scores = scores.mask_fill(mask.unsqueeze_dim::<3>(0).expand([hkv, g * rows, s]), f32::NEG_INFINITY);
            outs.push(softmax(scores, 2).matmul(values).reshape([hq, rows, d]));
            s0 = s1;
        }
        let out = if outs.len() == 1 { outs.pop().unwrap_or_else(|| q.clone()) } else { Tensor::cat(outs, 1) };
        // The ring keeps the last min(t, w) new positions, slot p % w.
        let ring = self.rings[layer].get_or_insert_with(|| Ring {
            k: Tensor::zeros([hkv, w, d], &self.device),
            v: Tensor::zeros([hkv, w, d], &self.device),
            positions: vec![None; w],
        });
        let keep = t.min(w);
        let mut i = t - keep;
        while i < t {
            let slot = (start + i) % w;
            let run = (w - slot).min(t - i);
            ring.k = ring.k.clone().slice_assign([0..hkv, slot..slot + run, 0..d], k.clone().slice([0..hkv, i..i + run, 0..d]));
            ring.v = ring.v.clone().slice_assign([0..hkv, slot..slot + run, 0..d], v.clone().slice([0..hkv, i..i + run, 0..d]));
            for j in 0..run {
                ring.positions[slot + j] = Some(start + i + j);
            }
            i += run;
        }
        self.appended[layer] = start + t;
        Ok(out)
    }
}

impl<B: Backend> KvCache<B> for SlidingWindowCache<B> {
    fn attend(&mut self, layer: usize, q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>) -> Result<Tensor<B, 3>, CacheError> {
        let t = self.shape.check_attend(layer, &q, &k, &v)?;
        match (self.windows[layer], self.inner_index[layer]) {
            (Some(w), _) => self.attend_local(layer, w, q, k, v),
            (None, Some(i)) => {
                let inner = self.inner.as_mut().ok_or_else(|| CacheError::Internal("a global layer without the global cache".into()))?;
                let out = inner.attend(i, q, k, v)?;
                self.appended[layer] += t;
                Ok(out)
            }
            (None, None) => Err(CacheError::Internal(format!("layer {layer} is neither local nor global"))),
        }
    }

    fn next_position(&self) -> usize {
        self.appended.first().copied().unwrap_or(0)
    }

    fn stats(&self) -> CacheStats {
        let mut s = self.inner.as_ref().map(|c| c.stats()).unwrap_or_default();
        let slot = 2 * self.shape.head_dim * 4;
        for (l, w) in self.windows.iter().enumerate() {
            let Some(w) = *w else { continue };
            let held = self.local_positions(l).unwrap_or(0) * self.shape.kv_heads;
            s.retained_tokens += held;
            s.retained_bytes += held * slot;
            // What a full cache would hold for this layer: every position appended.
            s.full_bytes += self.appended[l] * self.shape.kv_heads * slot;
            if self.rings[l].is_some() {
                s.allocated_bytes += self.ring_bytes(w);
            }
        }
        s
    }

    fn reset(&mut self) {
        if let Some(c) = self.inner.as_mut() {
            c.reset();
        }
        self.rings.iter_mut().for_each(|r| *r = None);
        self.appended.iter_mut().for_each(|a| *a = 0);
    }

    fn box_clone(&self) -> Option<Box<dyn KvCache<B>>> {
        Some(Box::new(self.try_clone()?))
    }

    fn sliding_window(&self, layer: usize) -> Option<usize> {
        self.windows.get(layer).copied().flatten()
    }

    fn snapshot(&self) -> Result<CacheSnapshot, CacheError> {
        let inner = match &self.inner {
            Some(c) => Some(Box::new(c.snapshot()?)),
            None => None,
        };
        let layers = (0..self.shape.layers).map(|l| self.ring_snapshot(l)).collect::<Result<_, _>>()?;
        Ok(CacheSnapshot { kind: SnapshotKind::Sliding { windows: self.windows.clone(), inner }, shape: self.shape, kv_dtype: KvDtype::F32, layers })
    }

    fn restore(&mut self, snapshot: &CacheSnapshot) -> Result<(), CacheError> {
        snapshot.check_fits(&SnapshotKind::Sliding { windows: self.windows.clone(), inner: None }, self.shape, KvDtype::F32)?;
        if self.appended.iter().any(|&a| a > 0) {
            return Err(CacheError::Snapshot("a snapshot goes into an empty cache, and this one holds tokens".into()));
        }
        let SnapshotKind::Sliding { inner: stored_inner, .. } = &snapshot.kind else {
            return Err(CacheError::Internal("a sliding snapshot of another kind".into()));
        };
        let result = (|| {
            match (self.inner.as_mut(), stored_inner) {
                (Some(c), Some(s)) => c.restore(s)?,
                (None, None) => {}
                _ => return Err(CacheError::Snapshot("its global layers do not match this model's".into())),
            }
            for (l, s) in snapshot.layers.iter().enumerate() {
                match self.windows[l] {
                    Some(w) => self.restore_ring(l, w, s)?,
                    None => self.appended[l] = s.appended,
                }
            }
            Ok(())
        })();
        if result.is_err() {
            self.reset();
        }
        result
    }

    fn compression_seconds(&self) -> f64 {
        self.inner.as_ref().map_or(0.0, |c| c.compression_seconds())
    }
}
