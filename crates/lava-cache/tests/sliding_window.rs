//! Sliding-window (local) layers in [`SlidingWindowCache`]: a local layer
//! holds its last `w` positions and nothing else, its attention equals an
//! f64 windowed attention written here (no code of the crate), and the
//! global layers get exactly the cache a policy builds over them alone: the
//! whole budget goes to them, LAVa's layer allocation included.
//!
//! Model shape: 8 layers, Gemma 3's pattern of period 4 (layers 3 and 7
//! global, the others local with a window of 8), 4 query heads over 2 KV
//! heads of dimension 8; a 96-token prompt then 12 decode steps.

use burn::tensor::{Distribution, Tensor};
use burn_ndarray::NdArray;
use lava_cache::{CacheShape, CompressedCache, FullCache, KvCache, PolicyConfig, PolicyName, SlidingWindowCache};

type B = NdArray<f32>;

const LAYERS: usize = 8;
const HQ: usize = 4;
const HKV: usize = 2;
const D: usize = 8;
const W: usize = 8;
const PROMPT: usize = 96;
const DECODE: usize = 12;

fn shape() -> CacheShape {
    CacheShape { layers: LAYERS, query_heads: HQ, kv_heads: HKV, head_dim: D }
}

fn windows() -> Vec<Option<usize>> {
    (0..LAYERS).map(|l| ((l + 1) % 4 != 0).then_some(W)).collect()
}

fn host(t: &Tensor<B, 3>) -> Vec<f32> {
    t.clone().into_data().to_vec::<f32>().expect("f32")
}

/// Random `q [HQ, T, D]`, `k`, `v [HKV, T, D]` for each layer and each step
/// (the prompt, then one token per decode step).
fn inputs(seed: u64) -> Vec<Vec<(Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>)>> {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, seed);
    let steps: Vec<usize> = std::iter::once(PROMPT).chain(std::iter::repeat_n(1, DECODE)).collect();
    steps
        .iter()
        .map(|&t| {
            (0..LAYERS)
                .map(|_| {
                    let r = |h| Tensor::<B, 3>::random([h, t, D], Distribution::Normal(0.0, 1.0), &device);
                    (r(HQ), r(HKV), r(HKV))
                })
                .collect()
        })
        .collect()
}

/// f64 windowed causal attention of query `i` (absolute position) of head
/// `h` over all keys/values of the sequence so far (`ks`, `vs`: per position,
/// `[HKV * D]`), seeing positions `i - w + 1 ..= i`.
fn windowed(q: &[f32], h: usize, i: usize, ks: &[Vec<f32>], vs: &[Vec<f32>], w: usize) -> Vec<f64> {
    let g = h / (HQ / HKV);
    let first = (i + 1).saturating_sub(w);
    let scores: Vec<f64> = (first..=i)
        .map(|j| (0..D).map(|d| q[d] as f64 * ks[j][g * D + d] as f64).sum::<f64>() / (D as f64).sqrt())
        .collect();
    let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
    let z: f64 = e.iter().sum();
    let mut out = vec![0.0; D];
    for (e, j) in e.iter().zip(first..=i) {
        for d in 0..D {
            out[d] += e / z * vs[j][g * D + d] as f64;
        }
    }
    out
}

#[test]
fn local_layers_hold_their_window_and_attend_within_it() {
    let device = Default::default();
    let mut cache = SlidingWindowCache::<B>::new(shape(), windows(), &device, |s| {
        assert_eq!(s.layers, 2, "the inner cache serves the two global layers");
        Ok(Box::new(FullCache::<B>::new(s, 1024, &device)?))
    })
    .expect("cache");
    let steps = inputs(3);
    // Per layer: every key and value so far, per position `[HKV * D]`.
    let mut ks: Vec<Vec<Vec<f32>>> = vec![vec![]; LAYERS];
    let mut vs: Vec<Vec<Vec<f32>>> = vec![vec![]; LAYERS];
    let mut worst = 0f64;
    for step in &steps {
        for (l, (q, k, v)) in step.iter().enumerate() {
            let t = q.dims()[1];
            let start = ks[l].len();
            let (kh, vh) = (host(k), host(v));
            for i in 0..t {
                ks[l].push((0..HKV).flat_map(|g| kh[(g * t + i) * D..(g * t + i + 1) * D].to_vec()).collect());
                vs[l].push((0..HKV).flat_map(|g| vh[(g * t + i) * D..(g * t + i + 1) * D].to_vec()).collect());
            }
            let out = host(&cache.attend(l, q.clone(), k.clone(), v.clone()).expect("attend"));
            let qh = host(q);
            let w = windows()[l].unwrap_or(usize::MAX);
            for h in 0..HQ {
                for i in 0..t {
                    let want = windowed(&qh[(h * t + i) * D..(h * t + i + 1) * D], h, start + i, &ks[l], &vs[l], w);
                    for d in 0..D {
                        worst = worst.max((out[(h * t + i) * D + d] as f64 - want[d]).abs());
                    }
                }
            }
            if let Some(w) = windows()[l] {
                assert_eq!(cache.local_positions(l), Some(w.min(start + t)), "layer {l}: a local layer holds its last {w} positions");
            }
        }
    }
    assert!(worst < 1e-5, "attention differs from the f64 windowed reference by {worst}");
    // Memory: 6 local layers of W positions, 2 global layers of every position.
    let n = PROMPT + DECODE;
    let stats = cache.stats();
    assert_eq!(stats.retained_tokens, (6 * W + 2 * n) * HKV);
    assert_eq!(stats.retained_bytes, stats.retained_tokens * 2 * D * 4);
    assert_eq!(stats.full_bytes, LAYERS * n * HKV * 2 * D * 4);
    assert_eq!(cache.next_position(), n);
    // A copy goes on independently.
    let mut copy = cache.box_clone().expect("clonable");
    let (q, k, v) = &steps[1][0];
    copy.attend(0, q.clone(), k.clone(), v.clone()).expect("attend");
    assert_eq!(cache.stats(), stats);
    cache.reset();
    assert_eq!(cache.stats().retained_tokens, 0);
    assert_eq!(cache.local_positions(0), Some(0));
}

/// For each policy, the global layers of a `SlidingWindowCache` hold exactly
/// what the same policy's `CompressedCache` over those layers alone holds
/// (same attention outputs, same kept tokens): every layer budget is
/// allocated among the global layers and the whole budget is spent there.
#[test]
fn the_budget_goes_to_the_global_layers_only() {
    let device = Default::default();
    let steps = inputs(5);
    let global: Vec<usize> = (0..LAYERS).filter(|l| windows()[*l].is_none()).collect();
    let budget = 24;
    for policy in [PolicyName::Lava, PolicyName::SnapKv, PolicyName::PyramidKv, PolicyName::Cake] {
        let config = PolicyConfig { window: 4, ..PolicyConfig::new(policy, budget) };
        let mut cache = SlidingWindowCache::<B>::new(shape(), windows(), &device, |s| {
            Ok(Box::new(CompressedCache::<B>::new(s, config.clone(), 1024, &device)?))
        })
        .expect("cache");
        let alone_shape = CacheShape { layers: global.len(), ..shape() };
        let mut alone = CompressedCache::<B>::new(alone_shape, config.clone(), 1024, &device).expect("cache");
        for step in &steps {
            for (l, (q, k, v)) in step.iter().enumerate() {
                let out = host(&cache.attend(l, q.clone(), k.clone(), v.clone()).expect("attend"));
                if let Some(i) = global.iter().position(|&g| g == l) {
                    let want = host(&alone.attend(i, q.clone(), k.clone(), v.clone()).expect("attend"));
                    assert_eq!(out, want, "{policy:?}: global layer {l}");
                }
            }
        }
        let (s, a) = (cache.stats(), alone.stats());
        let local = 6 * W * HKV;
        assert_eq!(s.retained_tokens, a.retained_tokens + local, "{policy:?}");
        assert_eq!(cache.global_cache().map(|c| c.retained_tokens()), Some(a.retained_tokens));
        // The global layers were compressed (the prompt is longer than the
        // budget) and hold at least the budget per KV head and layer, the
        // decode tokens on top: nothing of it went to the local layers.
        let floor = global.len() * HKV * budget;
        assert!(a.retained_tokens >= floor && a.retained_tokens < global.len() * HKV * (PROMPT + DECODE), "{policy:?}: {}", a.retained_tokens);
        eprintln!("{policy:?}: global layers keep {} tokens (budget {floor} + decode), local rings {local}", a.retained_tokens);
    }
}
