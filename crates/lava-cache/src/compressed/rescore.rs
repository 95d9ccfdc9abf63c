//! Re-scoring a layer after its prefill (module docs of [`super`],
//! "Re-scoring"): the policy's scorer over the tokens each head still holds,
//! with the layer's last `w` queries as the window. The scores are the
//! prefill's functions ([`head_scores`], [`cake_statistics`]) on ragged
//! heads: only the attention (over the slots) and the positions differ.

use burn::tensor::backend::Backend;

use super::storage::WindowRows;
use super::CompressedCache;
use crate::policy::plan::Ranking;
use crate::policy::scorer::{cake_preference, cake_statistics, head_scores, ScoreMatrix};
use crate::policy::{layer_budget, Scorer};
use crate::{CacheError, CacheShape};

impl<B: Backend> CompressedCache<B> {
    /// Re-scores `layer`: per KV head, its evictable tokens (positions below
    /// `boundary`) ranked by the policy's scorer over the window queries.
    pub(super) fn rescore(&self, layer: usize, scorer: Scorer, boundary: usize) -> Result<Ranking, CacheError> {
        let CacheShape { query_heads: h_q, kv_heads: h_kv, .. } = self.shape;
        let group = h_q / h_kv;
        let state = &self.layers[layer];
        let slots = &state.slots;
        // Per KV head: (position, slot) of its evictable tokens, by position.
        let prefix = slots.evictable(h_kv, boundary);
        let positions: Vec<Vec<usize>> = prefix.iter().map(|ps| ps.iter().map(|x| x.0).collect()).collect();
        let used = slots.slots().len();
        let window_q = || {
            state.queries.settled().ok_or_else(|| CacheError::Internal(format!("layer {layer} has no query window to re-score with")))
        };
        if scorer == Scorer::Cake {
            // The prefill's CAKE statistics per KV head over its evictable
            // slots; the preference sums the entropy and variance of all heads.
            let q = window_q()?;
            let r = q.dims()[1];
            let probs = slots.window_attention(layer, q, h_kv, WindowRows::Each)?;
            let (mut entropy, mut variance) = (0f64, 0f64);
            let mut rows = Vec::with_capacity(h_kv);
            for (g, ps) in prefix.iter().enumerate() {
                let mut attn = Vec::with_capacity(group * r * ps.len());
                for h in g * group..(g + 1) * group {
                    for i in 0..r {
                        attn.extend(ps.iter().map(|&(_, s)| probs[(h * r + i) * used + s]));
                    }
                }
                let (scores, e, v) = cake_statistics(&attn, group, r, 1, &positions[g])?;
                entropy += e;
                variance += v;
                rows.push(scores.data().to_vec());
            }
            return Ok(Ranking::new(&rows, &positions, cake_preference(entropy, variance)));
        }
        let attn = match scorer {
            Scorer::Streaming => Vec::new(),
            Scorer::H2o => slots.window_attention(layer, window_q()?, h_kv, WindowRows::Sum)?,
            _ => slots.window_attention(layer, window_q()?, h_kv, WindowRows::Mean)?,
        };
        // LAVa's value scale per head: the largest L1 norm of its evictable values.
        let norms = if scorer == Scorer::Lava { slots.value_norms()? } else { Vec::new() };
        let mut rows = Vec::with_capacity(h_kv);
        for (g, ps) in prefix.iter().enumerate() {
            let mut head_attn = Vec::new();
            if scorer != Scorer::Streaming {
                head_attn.reserve(group * ps.len());
                for h in g * group..(g + 1) * group {
                    head_attn.extend(ps.iter().map(|&(_, s)| attn[h * used + s]));
                }
            }
            let scale = match scorer {
                Scorer::Lava => ps.iter().map(|&(_, s)| norms.get(s).copied().unwrap_or(0.0)).fold(f32::NEG_INFINITY, f32::max),
                _ => 0.0,
            };
            rows.push(head_scores(scorer, &head_attn, group, &positions[g], scale, &self.config)?);
        }
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let weight = ScoreMatrix::new(1, flat.len(), flat).map(|m| layer_budget::normalized_entropy(&m)).unwrap_or(0.0);
        Ok(Ranking::new(&rows, &positions, weight))
    }
}
