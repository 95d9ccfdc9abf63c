//! Taking and restoring snapshots of a [`CompressedCache`] (module
//! [`crate::snapshot`]): per layer its kept slots in storage order, their K/V
//! rows as stored, the layer and head budgets and the layer weight in force,
//! the query window kept for re-scoring, and the ranking a chunked prefill
//! keeps for its next chunk.

use burn::tensor::{backend::Backend, Tensor, TensorData};

use super::{CompressedCache, LayerSlots, LayerState, Pending, QueryWindow};
use crate::policy::plan::Ranking;
use crate::kv_dtype::KvRows;
use crate::snapshot::{CacheSnapshot, LayerSnapshot, RankingSnapshot, SnapshotKind};
use crate::{CacheError, KvCache};

impl<B: Backend> CompressedCache<B> {
    /// What this cache's snapshots say it is.
    fn snapshot_kind(&self) -> SnapshotKind {
        SnapshotKind::Compressed { policy: self.config.clone(), decode_slack: self.decode_slack, chunked_prefill: self.chunked }
    }

    pub(super) fn take_snapshot(&self) -> Result<CacheSnapshot, CacheError> {
        let layers = self.layers.iter().map(|l| self.layer_snapshot(l)).collect::<Result<_, _>>()?;
        Ok(CacheSnapshot { kind: self.snapshot_kind(), shape: self.shape, kv_dtype: self.kv_dtype, layers })
    }

    fn layer_snapshot(&self, l: &LayerState<B>) -> Result<LayerSnapshot, CacheError> {
        let Some((keys, values)) = l.slots.live_rows() else {
            return Ok(LayerSnapshot { appended: l.slots.appended(), ..LayerSnapshot::empty(self.kv_dtype) });
        };
        let mut window = l.queries.clone();
        window.settle(self.config.window);
        let queries = match window.settled() {
            Some(q) => Some((q.dims()[1], crate::host::to_host(q.clone())?)),
            None => None,
        };
        Ok(LayerSnapshot {
            appended: l.slots.appended(),
            slots: l.slots.slots().to_vec(),
            keys: keys.to_stored()?,
            values: values.to_stored()?,
            budget: l.budget,
            caps: l.caps.clone(),
            weight: l.weight,
            queries,
            ranking: l.pending.as_ref().map(|p| RankingSnapshot {
                order: p.ranking.order.clone(),
                scores: p.ranking.sorted.clone(),
                weight: p.ranking.weight,
                boundary: p.boundary,
                caps: p.caps.clone(),
            }),
        })
    }

    pub(super) fn restore_snapshot(&mut self, snapshot: &CacheSnapshot) -> Result<(), CacheError> {
        snapshot.check_fits(&self.snapshot_kind(), self.shape, self.kv_dtype)?;
        if self.layers.iter().any(|l| l.slots.is_filled() || l.slots.appended() > 0) {
            return Err(CacheError::Snapshot("a snapshot goes into an empty cache, and this one holds tokens".into()));
        }
        let result = snapshot.layers.iter().enumerate().try_for_each(|(l, s)| {
            let state = self.restored_layer(l, s)?;
            self.layers[l] = state;
            Ok(())
        });
        if result.is_err() {
            self.reset();
        }
        result
    }

    fn restored_layer(&self, l: usize, s: &LayerSnapshot) -> Result<LayerState<B>, CacheError> {
        if s.appended > self.max_tokens {
            return Err(CacheError::CapacityExceeded { needed: s.appended, capacity: self.max_tokens });
        }
        let mut state = LayerState::empty();
        if s.slots.is_empty() {
            if s.appended > 0 {
                return Err(CacheError::Snapshot(format!("layer {l} has {} tokens appended and keeps none of them", s.appended)));
            }
            return Ok(state);
        }
        let (rows, d) = (s.slots.len(), self.shape.head_dim);
        let keys = KvRows::<B, 2>::from_stored(&s.keys, rows, d, &self.device)?;
        let values = KvRows::<B, 2>::from_stored(&s.values, rows, d, &self.device)?;
        state.slots = LayerSlots::restored(keys, values, s.slots.clone(), s.appended, &self.room())?;
        state.budget = s.budget;
        state.caps = s.caps.clone();
        state.weight = s.weight;
        if let Some(rk) = &s.ranking {
            let ranking = Ranking { order: rk.order.clone(), sorted: rk.scores.clone(), weight: rk.weight };
            state.pending = Some(Pending { ranking, boundary: rk.boundary, caps: rk.caps.clone() });
        }
        if let Some((r, q)) = &s.queries {
            if *r > self.config.window || q.len() != self.shape.query_heads * r * d {
                return Err(CacheError::Snapshot(format!("layer {l} keeps {r} window queries for a window of {}", self.config.window)));
            }
            let q = Tensor::<B, 3>::from_data(TensorData::new(q.clone(), [self.shape.query_heads, *r, d]), &self.device);
            state.queries = QueryWindow::of(q);
        }
        Ok(state)
    }
}
