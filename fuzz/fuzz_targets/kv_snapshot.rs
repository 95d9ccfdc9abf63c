//! A KV snapshot file (`lava generate --save-context`, the server's context
//! cache on disk): `CacheSnapshot::from_bytes`, then, for snapshots of at
//! most 2^16 stored values, a restore into a cache of the kind, shape, policy
//! and KV dtype the file names, one decode step, a second snapshot that must
//! equal the first, and its file image read back equal.
#![no_main]

use burn::tensor::Tensor;
use burn_ndarray::NdArray;
use lava_cache::{CacheSnapshot, CompressedCache, FullCache, KvCache, SlidingWindowCache, SnapshotKind};
use libfuzzer_sys::fuzz_target;

type B = NdArray<f32>;

const MAX_VALUES: usize = 1 << 16;

fn cache_for(s: &CacheSnapshot) -> Option<Box<dyn KvCache<B>>> {
    let device = Default::default();
    Some(match &s.kind {
        SnapshotKind::Full => Box::new(FullCache::<B>::new(s.shape, 1 << 20, &device).ok()?.with_kv_dtype(s.kv_dtype).ok()?),
        SnapshotKind::Compressed { policy, decode_slack, chunked_prefill } => {
            let mut c = CompressedCache::<B>::new(s.shape, policy.clone(), 1 << 20, &device).ok()?.with_kv_dtype(s.kv_dtype).ok()?.with_chunked_prefill(*chunked_prefill);
            if let Some(slack) = decode_slack {
                c = c.with_decode_budget(*slack);
            }
            Box::new(c)
        }
        SnapshotKind::Sliding { windows, inner } => {
            let inner = inner.clone();
            Box::new(
                SlidingWindowCache::<B>::new(s.shape, windows.clone(), &device, move |_shape| {
                    let i = inner.ok_or_else(|| lava_cache::CacheError::Snapshot("no inner".into()))?;
                    cache_for(&i).ok_or_else(|| lava_cache::CacheError::Snapshot("inner".into()))
                })
                .ok()?,
            )
        }
    })
}

fn values(s: &CacheSnapshot) -> usize {
    let own: usize = s.layers.iter().map(|l| l.keys.values() + l.values.values() + l.queries.as_ref().map_or(0, |q| q.1.len())).sum();
    match &s.kind {
        SnapshotKind::Sliding { inner: Some(i), .. } => own + values(i),
        _ => own,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok((snapshot, meta)) = CacheSnapshot::from_bytes(data) else { return };
    let again = snapshot.to_bytes(&meta).expect("a snapshot that was read can be written");
    let (reread, _) = CacheSnapshot::from_bytes(&again).expect("what was written reads back");
    // Compared as file images (bit for bit, whatever the values).
    assert_eq!(reread.to_bytes(&meta).expect("written again"), again);
    let s = snapshot.shape;
    if values(&snapshot) > MAX_VALUES || s.layers * s.query_heads * s.head_dim > MAX_VALUES {
        return;
    }
    let Some(mut cache) = cache_for(&snapshot) else { return };
    if cache.restore(&snapshot).is_err() {
        assert_eq!(cache.next_position(), 0, "a refused restore leaves the cache empty");
        return;
    }
    let taken = cache.snapshot().expect("a restored cache can be saved");
    assert_eq!(taken.layers.len(), snapshot.layers.len());
    let device = Default::default();
    for l in 0..s.layers {
        let q = Tensor::<B, 3>::zeros([s.query_heads, 1, s.head_dim], &device);
        let kv = Tensor::<B, 3>::zeros([s.kv_heads, 1, s.head_dim], &device);
        if cache.attend(l, q, kv.clone(), kv).is_err() {
            return;
        }
    }
});
