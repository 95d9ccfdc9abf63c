use burn::tensor::{backend::Backend, Tensor};

use crate::fast_path::Segment;
use crate::kv_dtype::{decode_attention_stored, KvRows};
use crate::snapshot::{CacheSnapshot, LayerSnapshot, SnapshotKind};
use crate::{attention::causal_attention, CacheError, CacheShape, CacheStats, KvCache, KvDtype};

/// The uncompressed cache: every token of every head is kept.
///
/// The first allocation holds the prompt exactly, plus the decode headroom
/// ([`FullCache::with_decode_headroom`]); later growth adds at least 10% (and
/// at least the headroom), so appending a token is amortised O(1) in copies
/// while the allocation stays within 10% (or the headroom) of what is kept.
///
/// Cloning is cheap (tensors are shared) and the clones are independent: an
/// append to one never shows in the other.
#[derive(Debug)]
pub struct FullCache<B: Backend> {
    shape: CacheShape,
    device: B::Device,
    /// Per layer: `(k, v)` buffers `[H_kv, capacity, D]` in the KV dtype, filled up to `len`.
    layers: Vec<Option<(KvRows<B, 3>, KvRows<B, 3>)>>,
    lens: Vec<usize>,
    max_tokens: usize,
    headroom: usize,
    kv_dtype: KvDtype,
}

impl<B: Backend> Clone for FullCache<B> {
    fn clone(&self) -> Self {
        Self {
            shape: self.shape,
            device: self.device.clone(),
            layers: self.layers.clone(),
            lens: self.lens.clone(),
            max_tokens: self.max_tokens,
            headroom: self.headroom,
            kv_dtype: self.kv_dtype,
        }
    }
}

impl<B: Backend> FullCache<B> {
    /// A full cache for `shape`, refusing sequences longer than `max_tokens`.
    pub fn new(shape: CacheShape, max_tokens: usize, device: &B::Device) -> Result<Self, CacheError> {
        shape.validate()?;
        Ok(Self {
            shape,
            device: device.clone(),
            layers: (0..shape.layers).map(|_| None).collect(),
            lens: vec![0; shape.layers],
            max_tokens,
            headroom: 0,
            kv_dtype: KvDtype::F32,
        })
    }

    /// Reserves room for `tokens` more tokens whenever the storage grows (the
    /// prefill's allocation included), so that a generation of known length
    /// allocates once: `lava generate` passes `--max-new-tokens`.
    pub fn with_decode_headroom(mut self, tokens: usize) -> Self {
        self.headroom = tokens;
        self
    }

    /// The shape this cache serves.
    pub fn shape(&self) -> CacheShape {
        self.shape
    }

    /// Stores keys and values as `dtype` (module [`crate::KvDtype`]: a
    /// layer's first `attend` attends over its tokens as computed, later ones
    /// over what is stored). Set it before the first `attend`. Errors if the
    /// backend or the head dimension cannot store it.
    pub fn with_kv_dtype(mut self, dtype: KvDtype) -> Result<Self, CacheError> {
        dtype.check::<B>(self.shape.head_dim, &self.device)?;
        if self.lens.iter().any(|&l| l > 0) {
            return Err(CacheError::InvalidParameters("the kv dtype must be set before the cache holds tokens".into()));
        }
        self.kv_dtype = dtype;
        Ok(self)
    }

    /// The cache as a prefill whose layers computed `kv` would leave it (per layer `(k, v)`,
    /// `[H_kv, T, D]` as computed, the same `T` in every layer): each layer stores its keys
    /// and values in the cache's KV dtype, as its first [`attend`](KvCache::attend) does,
    /// without computing that call's attention (whose output the caller already has).
    /// Errors on an empty-handed or already filled cache, a layer count or shape that is not
    /// the cache's, or more tokens than it holds.
    pub fn filled_from(mut self, kv: &[(Tensor<B, 3>, Tensor<B, 3>)]) -> Result<Self, CacheError> {
        if kv.len() != self.shape.layers {
            return Err(CacheError::InvalidParameters(format!("{} layers of keys and values for a cache of {} layers", kv.len(), self.shape.layers)));
        }
        if self.lens.iter().any(|&l| l > 0) {
            return Err(CacheError::InvalidParameters("filled_from needs an empty cache".into()));
        }
        let t = kv.first().map_or(0, |(k, _)| k.dims()[1]);
        if t > self.max_tokens {
            return Err(CacheError::CapacityExceeded { needed: t, capacity: self.max_tokens });
        }
        let want = [self.shape.kv_heads, t, self.shape.head_dim];
        for (l, (k, v)) in kv.iter().enumerate() {
            if k.dims() != want || v.dims() != want {
                return Err(CacheError::InvalidParameters(format!(
                    "layer {l}: keys {:?} and values {:?}, expected {want:?} (every layer the same tokens)",
                    k.dims(),
                    v.dims()
                )));
            }
            self.append(l, k.clone(), v.clone())?;
        }
        Ok(self)
    }

    /// How keys and values are stored.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    /// Layer `l` of a snapshot: every head's positions `0..len` in order.
    fn layer_snapshot(&self, l: usize) -> Result<LayerSnapshot, CacheError> {
        let (h, d, len) = (self.shape.kv_heads, self.shape.head_dim, self.lens[l]);
        let Some((kb, vb)) = self.layers[l].as_ref().filter(|_| len > 0) else {
            return Ok(LayerSnapshot::empty(self.kv_dtype));
        };
        let rows = |x: &KvRows<B, 3>| x.clone().slice([0..h, 0..len, 0..d]).reshape([h * len, d]).to_stored();
        Ok(LayerSnapshot {
            appended: len,
            slots: (0..h).flat_map(|g| (0..len).map(move |p| (g, p))).collect(),
            keys: rows(kb)?,
            values: rows(vb)?,
            ..LayerSnapshot::empty(self.kv_dtype)
        })
    }

    /// Puts layer `l` of a snapshot into this (empty) layer.
    fn restore_layer(&mut self, l: usize, s: &LayerSnapshot) -> Result<(), CacheError> {
        let (h, d, len) = (self.shape.kv_heads, self.shape.head_dim, s.appended);
        let in_order = s.slots.len() == h * len && s.slots.iter().enumerate().all(|(i, &(g, p))| g == i / len && p == i % len);
        if !in_order {
            return Err(CacheError::Snapshot(format!("layer {l} does not hold every position of every head in order, as a full cache does")));
        }
        if len == 0 {
            return Ok(());
        }
        if len > self.max_tokens {
            return Err(CacheError::CapacityExceeded { needed: len, capacity: self.max_tokens });
        }
        let cap = len.saturating_add(self.headroom).max(64).min(self.max_tokens.max(len));
        let live = [0..h, 0..len, 0..d];
        let buffer = |x| -> Result<KvRows<B, 3>, CacheError> {
            let rows = KvRows::<B, 2>::from_stored(x, h * len, d, &self.device)?.reshape([h, len, d]);
            KvRows::zeros([h, cap, d], self.kv_dtype, &self.device).slice_assign(live.clone(), rows)
        };
        self.layers[l] = Some((buffer(&s.keys)?, buffer(&s.values)?));
        self.lens[l] = len;
        Ok(())
    }


    fn capacity(&self, layer: usize) -> usize {
        self.layers[layer].as_ref().map_or(0, |(k, _)| k.dims()[1])
    }

    /// Appends `k`, `v` (`[H_kv, T, D]`, f32) to `layer`'s buffers.
    fn append(&mut self, layer: usize, k: Tensor<B, 3>, v: Tensor<B, 3>) -> Result<(), CacheError> {
        let [h, t, d] = k.dims();
        let len = self.lens[layer];
        let needed = len + t;
        let cap = self.capacity(layer);
        let dtype = self.kv_dtype;
        let (kb, vb) = match self.layers[layer].take() {
            Some(b) if needed <= cap => b,
            old => {
                // The first allocation is exact (plus the headroom); later ones add 10%.
                let spare = if cap == 0 { self.headroom } else { self.headroom.max(needed / 10) };
                let new_cap = needed.saturating_add(spare).max(64).min(self.max_tokens.max(needed));
                let kb = KvRows::zeros([h, new_cap, d], dtype, &self.device);
                let vb = KvRows::zeros([h, new_cap, d], dtype, &self.device);
                match old {
                    Some((ok, ov)) if len > 0 => {
                        let live = [0..h, 0..len, 0..d];
                        (kb.slice_assign(live.clone(), ok.slice(live.clone()))?, vb.slice_assign(live.clone(), ov.slice(live))?)
                    }
                    _ => (kb, vb),
                }
            }
        };
        // Head g's new rows go to `g * capacity + len ..` of the buffer.
        let cap = kb.dims()[1];
        let runs: Vec<(usize, usize, usize)> = (0..h).map(|g| ((g * cap + len) * d, g * t * d, t * d)).collect();
        let kb = kb.write([0..h, len..needed, 0..d], k, &runs)?;
        let vb = vb.write([0..h, len..needed, 0..d], v, &runs)?;
        self.layers[layer] = Some((kb, vb));
        self.lens[layer] = needed;
        Ok(())
    }
}

impl<B: Backend> KvCache<B> for FullCache<B> {
    fn attend(
        &mut self,
        layer: usize,
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
    ) -> Result<Tensor<B, 3>, CacheError> {
        let t = self.shape.check_attend(layer, &q, &k, &v)?;
        let needed = self.lens[layer] + t;
        if needed > self.max_tokens {
            return Err(CacheError::CapacityExceeded { needed, capacity: self.max_tokens });
        }
        let first = self.lens[layer] == 0;
        let prompt = first.then(|| (k.clone(), v.clone()));
        self.append(layer, k, v)?;
        if let Some((k, v)) = prompt {
            // A layer's first call attends over its tokens as computed.
            return Ok(causal_attention(q, k, v));
        }
        let Some((kb, vb)) = &self.layers[layer] else {
            return Err(CacheError::Internal(format!("layer {layer} has no storage after an append")));
        };
        if t == 1 {
            // Decode on flex: read the buffers in place (each head's rows are
            // `g * capacity .. g * capacity + needed`).
            let cap = kb.dims()[1];
            let segments: Vec<Segment> = (0..self.shape.kv_heads).map(|g| Segment { kv_head: g, rows: g * cap..g * cap + needed }).collect();
            if let Some(out) = decode_attention_stored(&q, self.shape.kv_heads, kb, vb, &segments) {
                return Ok(out);
            }
        }
        let (h, d) = (self.shape.kv_heads, self.shape.head_dim);
        let keys = kb.clone().slice([0..h, 0..needed, 0..d]).decode();
        let values = vb.clone().slice([0..h, 0..needed, 0..d]).decode();
        Ok(causal_attention(q, keys, values))
    }

    fn next_position(&self) -> usize {
        self.lens.first().copied().unwrap_or(0)
    }

    fn stats(&self) -> CacheStats {
        let retained_tokens = self.lens.iter().sum::<usize>() * self.shape.kv_heads;
        let slot_bytes = self.layers.iter().flatten().map(|(k, v)| k.row_bytes() + v.row_bytes()).next().unwrap_or(2 * self.kv_dtype.row_bytes(self.shape.head_dim));
        let retained_bytes = retained_tokens * slot_bytes;
        let allocated_slots = (0..self.shape.layers).map(|l| self.capacity(l)).sum::<usize>() * self.shape.kv_heads;
        CacheStats { retained_tokens, retained_bytes, allocated_bytes: allocated_slots * slot_bytes, full_bytes: retained_bytes }
    }

    fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.lens.iter_mut().for_each(|l| *l = 0);
    }

    fn box_clone(&self) -> Option<Box<dyn KvCache<B>>> {
        Some(Box::new(self.clone()))
    }

    fn snapshot(&self) -> Result<CacheSnapshot, CacheError> {
        let layers = (0..self.shape.layers).map(|l| self.layer_snapshot(l)).collect::<Result<_, _>>()?;
        Ok(CacheSnapshot { kind: SnapshotKind::Full, shape: self.shape, kv_dtype: self.kv_dtype, layers })
    }

    fn restore(&mut self, snapshot: &CacheSnapshot) -> Result<(), CacheError> {
        snapshot.check_fits(&SnapshotKind::Full, self.shape, self.kv_dtype)?;
        if self.lens.iter().any(|&l| l > 0) {
            return Err(CacheError::Snapshot("a snapshot goes into an empty cache, and this one holds tokens".into()));
        }
        let result = snapshot.layers.iter().enumerate().try_for_each(|(l, s)| self.restore_layer(l, s));
        if result.is_err() {
            self.reset();
        }
        result
    }
}
