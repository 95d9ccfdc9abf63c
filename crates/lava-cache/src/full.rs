use burn::tensor::{backend::Backend, Tensor};

use crate::fast_path::{decode_attention, write_in_place, Segment};
use crate::{attention::causal_attention, CacheError, CacheShape, CacheStats, KvCache};

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
    /// Per layer: `(k, v)` buffers `[H_kv, capacity, D]`, filled up to `len`.
    layers: Vec<Option<(Tensor<B, 3>, Tensor<B, 3>)>>,
    lens: Vec<usize>,
    max_tokens: usize,
    headroom: usize,
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

    fn capacity(&self, layer: usize) -> usize {
        self.layers[layer].as_ref().map_or(0, |(k, _)| k.dims()[1])
    }

    fn append(&mut self, layer: usize, k: Tensor<B, 3>, v: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [h, t, d] = k.dims();
        let len = self.lens[layer];
        let needed = len + t;
        let cap = self.capacity(layer);
        let (kb, vb) = if needed > cap {
            // The first allocation is exact (plus the headroom); later ones add 10%.
            let spare = if cap == 0 { self.headroom } else { self.headroom.max(needed / 10) };
            let new_cap = needed.saturating_add(spare).max(64).min(self.max_tokens.max(needed));
            let kb = Tensor::<B, 3>::zeros([h, new_cap, d], &self.device);
            let vb = Tensor::<B, 3>::zeros([h, new_cap, d], &self.device);
            match self.layers[layer].take() {
                Some((ok, ov)) if len > 0 => (
                    kb.slice_assign([0..h, 0..len, 0..d], ok.slice([0..h, 0..len, 0..d])),
                    vb.slice_assign([0..h, 0..len, 0..d], ov.slice([0..h, 0..len, 0..d])),
                ),
                _ => (kb, vb),
            }
        } else {
            match self.layers[layer].take() {
                Some(b) => b,
                None => unreachable_pair(&self.device, h, d),
            }
        };
        // Head g's new rows go to `g * capacity + len ..` of the buffer.
        let cap = kb.dims()[1];
        let runs: Vec<(usize, usize, usize)> = (0..h).map(|g| ((g * cap + len) * d, g * t * d, t * d)).collect();
        let kb = write_in_place(kb, &k, &runs).unwrap_or_else(|kb| kb.slice_assign([0..h, len..needed, 0..d], k));
        let vb = write_in_place(vb, &v, &runs).unwrap_or_else(|vb| vb.slice_assign([0..h, len..needed, 0..d], v));
        let keys = kb.clone().slice([0..h, 0..needed, 0..d]);
        let values = vb.clone().slice([0..h, 0..needed, 0..d]);
        self.layers[layer] = Some((kb, vb));
        self.lens[layer] = needed;
        (keys, values)
    }
}

// `needed > cap` is always true when a layer has no buffer (cap 0, t >= 1), so this
// is only reached for a zero-length append; an empty buffer is the right answer.
fn unreachable_pair<B: Backend>(device: &B::Device, h: usize, d: usize) -> (Tensor<B, 3>, Tensor<B, 3>) {
    (Tensor::zeros([h, 0, d], device), Tensor::zeros([h, 0, d], device))
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
        let (keys, values) = self.append(layer, k, v);
        if t == 1 {
            // Decode on flex: read the buffers in place (each head's rows are
            // `g * capacity .. g * capacity + needed`).
            if let Some((kb, vb)) = &self.layers[layer] {
                let cap = kb.dims()[1];
                let segments: Vec<Segment> =
                    (0..self.shape.kv_heads).map(|g| Segment { kv_head: g, rows: g * cap..g * cap + needed }).collect();
                if let Some(out) = decode_attention(&q, self.shape.kv_heads, kb, vb, &segments) {
                    return Ok(out);
                }
            }
        }
        Ok(causal_attention(q, keys, values))
    }

    fn next_position(&self) -> usize {
        self.lens.first().copied().unwrap_or(0)
    }

    fn stats(&self) -> CacheStats {
        let retained_tokens = self.lens.iter().sum::<usize>() * self.shape.kv_heads;
        let retained_bytes = retained_tokens * self.shape.head_dim * 2 * 4;
        let allocated_slots = (0..self.shape.layers).map(|l| self.capacity(l)).sum::<usize>() * self.shape.kv_heads;
        CacheStats { retained_tokens, retained_bytes, allocated_bytes: allocated_slots * self.shape.head_dim * 2 * 4, full_bytes: retained_bytes }
    }

    fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.lens.iter_mut().for_each(|l| *l = 0);
    }
}
