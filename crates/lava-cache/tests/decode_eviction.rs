//! Decode-time eviction (`CompressedCache::with_decode_budget`): the kept sets
//! after each eviction against an independent re-scoring, when evictions
//! happen (slack), the window and absolute positions, and memory bounds over a
//! long decode.

mod common;
mod independent;

use common::{random_values, tensor3, Rng, B};
use independent::HostLayer;
use lava_cache::{CacheShape, CompressedCache, HeadAllocation, KvCache, PolicyConfig, PolicyName, Pooling};

fn shape(layers: usize, hq: usize, hkv: usize, d: usize) -> CacheShape {
    CacheShape { layers, query_heads: hq, kv_heads: hkv, head_dim: d }
}

/// Appends `t` random tokens to `layer` of `cache` and to its host mirror.
fn step(cache: &mut CompressedCache<B>, host: &mut HostLayer, layer: usize, rng: &mut Rng, t: usize, scale: f64) -> Vec<f32> {
    let (hq, hkv, d) = (host.hq, host.hkv, host.d);
    let q = random_values(rng, hq * t * d, scale);
    let k = random_values(rng, hkv * t * d, scale);
    let v = random_values(rng, hkv * t * d, 1.0);
    host.push(&q, &k, &v, t);
    let out = cache
        .attend(layer, tensor3(q, [hq, t, d]), tensor3(k, [hkv, t, d]), tensor3(v, [hkv, t, d]))
        .unwrap();
    common::to_vec3(out)
}

/// Evictable (pre-window) tokens of each head.
fn prefix_counts(kept: &[Vec<usize>], boundary: usize) -> Vec<usize> {
    kept.iter().map(|h| h.iter().filter(|&&p| p < boundary).count()).collect()
}

/// Decodes token by token and checks, at every step and layer, that the cache
/// either just appended (no head over its budget plus the slack) or kept
/// exactly what the independent re-scoring selects.
fn decode_matches_independent_rescoring(config: PolicyConfig, n_tok: usize, slack: usize, seed: u64) -> usize {
    let (layers, hq, hkv, d) = (2, 4, 2, 8);
    let mut rng = Rng::new(seed);
    let mut cache = CompressedCache::<B>::new(shape(layers, hq, hkv, d), config.clone(), 10_000, &common::device())
        .unwrap()
        .with_decode_budget(slack)
        .with_decode_headroom(1);
    let mut hosts: Vec<HostLayer> = (0..layers).map(|_| HostLayer::new(hq, hkv, d)).collect();
    for (l, host) in hosts.iter_mut().enumerate() {
        step(&mut cache, host, l, &mut rng, n_tok, 1.5);
    }
    let w = config.window;
    let mut evictions = 0;
    for _ in 0..40 {
        for (l, host) in hosts.iter_mut().enumerate() {
            let before = cache.kept_positions(l).unwrap();
            let caps = cache.head_budgets(l);
            let budget = cache.layer_budget(l).unwrap();
            let a = host.len() + 1;
            let boundary = a - w.min(a);
            let with_new: Vec<Vec<usize>> = before.iter().map(|h| h.iter().copied().chain([a - 1]).collect()).collect();
            let base = config.budget_beyond_window();
            let limits = caps.clone().unwrap_or_else(|| vec![base; hkv]);
            let over = prefix_counts(&with_new, boundary).iter().zip(&limits).any(|(&n, &c)| n > c + slack);
            step(&mut cache, host, l, &mut rng, 1, 1.5);
            let got = cache.kept_positions(l).unwrap();
            if over {
                // A layer first compressed at decode gets its static budget (uniform here).
                let budget = if caps.is_some() { budget } else { base };
                let want = independent::rescore(host, &with_new, &config, budget);
                assert_eq!(got, want.kept, "{} layer {l} at {a} tokens", config.policy);
                assert_eq!(cache.head_budgets(l), Some(want.caps.clone()), "{} layer {l}", config.policy);
                assert_eq!(cache.layer_budget(l), Some(budget));
                evictions += 1;
            } else {
                assert_eq!(got, with_new, "{} layer {l} at {a} tokens: nothing to evict", config.policy);
            }
            // The most recent w tokens are always there.
            for head in &got {
                assert!(head.ends_with(&(boundary..a).collect::<Vec<_>>()));
            }
        }
    }
    assert_eq!(cache.rescores(), evictions);
    assert_eq!(cache.next_position(), n_tok + 40);
    evictions
}

#[test]
fn kept_sets_after_decode_eviction_are_the_policy_selection_on_the_rescored_matrix() {
    let policies = [
        PolicyName::Lava,
        PolicyName::AdaSnapKv,
        PolicyName::SnapKv,
        PolicyName::PyramidKv,
        PolicyName::AdaPyramidKv,
        PolicyName::LavaNoHead,
        PolicyName::LavaNoLayer,
        PolicyName::H2o,
        PolicyName::Streaming,
        PolicyName::LavaMatched,
        PolicyName::Cake,
    ];
    for (i, policy) in policies.into_iter().enumerate() {
        for (pooling, slack) in [(Pooling::MaxPool, 2), (Pooling::AvgPool, 0)] {
            let config = PolicyConfig {
                window: 4,
                kernel_size: 3,
                pooling,
                sinks: 2,
                floor_alpha: 0.25,
                ..PolicyConfig::new(policy, 14)
            };
            let evictions = decode_matches_independent_rescoring(config, 40, slack, 7 + i as u64);
            assert!(evictions > 0, "{policy}: no eviction in 40 steps");
        }
    }
}

#[test]
fn a_prompt_within_the_budget_is_compressed_once_decoding_outgrows_it() {
    for policy in [PolicyName::Lava, PolicyName::SnapKv, PolicyName::AdaSnapKv] {
        let config = PolicyConfig { window: 4, kernel_size: 3, ..PolicyConfig::new(policy, 14) };
        // 10 prompt tokens: 6 evictable <= B - w = 10, nothing compressed at prefill.
        let evictions = decode_matches_independent_rescoring(config, 10, 1, 99);
        assert!(evictions > 0);
    }
}

#[test]
fn slack_spaces_evictions_and_bounds_each_head() {
    let (layers, hq, hkv, d, n_tok, w, budget) = (2, 4, 2, 4, 50, 4, 12);
    for slack in [0usize, 1, 3, 7] {
        let config = PolicyConfig { window: w, ..PolicyConfig::new(PolicyName::SnapKv, budget) };
        let mut cache = CompressedCache::<B>::new(shape(layers, hq, hkv, d), config, 1000, &common::device())
            .unwrap()
            .with_decode_budget(slack);
        let mut rng = Rng::new(slack as u64);
        let mut hosts: Vec<HostLayer> = (0..layers).map(|_| HostLayer::new(hq, hkv, d)).collect();
        for (l, host) in hosts.iter_mut().enumerate() {
            step(&mut cache, host, l, &mut rng, n_tok, 1.0);
        }
        let steps = 33;
        for s in 1..=steps {
            for (l, host) in hosts.iter_mut().enumerate() {
                step(&mut cache, host, l, &mut rng, 1, 1.0);
                let a = n_tok + s;
                let kept = cache.kept_positions(l).unwrap();
                // Uniform heads: B - w evictable tokens after each eviction, then
                // one more per token until B - w + slack.
                let since = s % (slack + 1);
                for head in &kept {
                    assert_eq!(head.len(), budget - w + since + w, "slack {slack} step {s}");
                    assert!(head.ends_with(&(a - w..a).collect::<Vec<_>>()));
                }
            }
        }
        assert_eq!(cache.rescores(), layers * (steps / (slack + 1)), "slack {slack}");
        assert_eq!(cache.decode_slack(), Some(slack));
    }
}

#[test]
fn memory_never_exceeds_the_documented_bound_during_a_long_decode() {
    let (layers, hq, hkv, d, n_tok, w, budget, slack, headroom) = (3, 4, 2, 8, 120, 8, 24, 5, 2);
    for policy in [PolicyName::Lava, PolicyName::AdaPyramidKv, PolicyName::H2o] {
        let config = PolicyConfig { window: w, ..PolicyConfig::new(policy, budget) };
        let mut cache = CompressedCache::<B>::new(shape(layers, hq, hkv, d), config.clone(), 10_000, &common::device())
            .unwrap()
            .with_decode_headroom(headroom)
            .with_decode_budget(slack);
        let mut rng = Rng::new(3);
        let mut hosts: Vec<HostLayer> = (0..layers).map(|_| HostLayer::new(hq, hkv, d)).collect();
        for (l, host) in hosts.iter_mut().enumerate() {
            step(&mut cache, host, l, &mut rng, n_tok, 1.5);
        }
        let slot_bytes = d * 2 * 4;
        let base = budget - w;
        // sum_l B_l <= L (B - w) (entropy: floors; pyramid: about it), heads
        // within H_kv (B_l + 1), plus window and slack per head.
        let budgets: Vec<usize> = (0..layers).map(|l| cache.layer_budget(l).unwrap()).collect();
        let total_budget: usize = budgets.iter().sum();
        assert!(total_budget <= layers * base + layers, "{policy}: {budgets:?}");
        let bound_tokens = hkv * (total_budget + layers * (1 + w + slack));
        let mut peak = 0;
        for s in 1..=300 {
            for (l, host) in hosts.iter_mut().enumerate() {
                step(&mut cache, host, l, &mut rng, 1, 1.5);
            }
            let a = n_tok + s;
            let mut kept_total = 0;
            for l in 0..layers {
                let kept = cache.kept_positions(l).unwrap();
                let caps = cache.head_budgets(l).unwrap();
                let b_l = cache.layer_budget(l).unwrap();
                assert_eq!(b_l, budgets[l], "{policy}: the layer budget stays the one set at prefill");
                assert!(caps.iter().sum::<usize>() <= hkv * (b_l + 1), "{policy} layer {l}: {caps:?} for B_l {b_l}");
                for (g, head) in kept.iter().enumerate() {
                    assert!(head.windows(2).all(|p| p[0] < p[1]), "no duplicates");
                    assert!(head.ends_with(&(a - w..a).collect::<Vec<_>>()), "window kept");
                    let evictable = head.len() - w;
                    assert!(evictable <= caps[g] + slack, "{policy} layer {l} head {g}: {evictable} > {} + {slack}", caps[g]);
                }
                kept_total += kept.iter().map(Vec::len).sum::<usize>();
            }
            assert_eq!(cache.retained_tokens(), kept_total);
            assert_eq!(cache.retained_bytes(), kept_total * slot_bytes);
            assert!(kept_total <= bound_tokens, "{policy} step {s}: {kept_total} > {bound_tokens}");
            let allocated = cache.allocated_bytes() / slot_bytes;
            assert!(allocated >= kept_total);
            let bound = kept_total as f64 * 1.1 + (layers * hkv * headroom.max(slack + 1)) as f64;
            assert!(allocated as f64 <= bound, "{policy} step {s}: {allocated} slots for {kept_total} kept");
            assert_eq!(cache.next_position(), a);
            assert_eq!(cache.full_bytes(), layers * a * hkv * slot_bytes);
            peak = peak.max(cache.allocated_bytes());
        }
        // 300 generated tokens cost no more than the prompt's compressed cache plus slack.
        assert!(peak < cache.full_bytes() / 3, "{policy}: peak {peak} vs full {}", cache.full_bytes());
        // The window's `w` rows plus fewer than `w` decode rows not yet folded in.
        let qbytes = cache.query_window_bytes();
        let row = layers * hq * d * 4;
        assert!(qbytes >= w * row && qbytes < 2 * w * row, "{policy}: query window {qbytes} bytes");
    }
}

#[test]
fn decode_eviction_keeps_outputs_exact_over_the_kept_tokens() {
    // After evictions, each decode step's output is attention over exactly the
    // kept tokens (checked by loops over the host mirror).
    let (layers, hq, hkv, d, n_tok, w) = (1, 6, 3, 8, 60, 6);
    let config = PolicyConfig { window: w, ..PolicyConfig::new(PolicyName::Lava, 20) };
    let mut cache = CompressedCache::<B>::new(shape(layers, hq, hkv, d), config, 1000, &common::device())
        .unwrap()
        .with_decode_budget(2);
    let mut rng = Rng::new(21);
    let mut host = HostLayer::new(hq, hkv, d);
    step(&mut cache, &mut host, 0, &mut rng, n_tok, 2.0);
    for _ in 0..30 {
        let before = cache.kept_positions(0).unwrap();
        let out = step(&mut cache, &mut host, 0, &mut rng, 1, 2.0);
        let want = host.attention(&before, 1);
        let worst = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "max difference {worst}");
    }
    assert!(cache.rescores() > 0);
    assert_eq!(cache.config().composition().unwrap().heads, HeadAllocation::Adaptive);
}

#[test]
fn the_full_policy_and_the_default_cache_never_evict_after_prefill() {
    let (hq, hkv, d) = (2, 1, 4);
    let mut rng = Rng::new(4);
    let full = PolicyConfig { window: 2, ..PolicyConfig::new(PolicyName::Full, 4) };
    let snap = PolicyConfig { window: 2, ..PolicyConfig::new(PolicyName::SnapKv, 4) };
    for (config, evict) in [(full, true), (snap, false)] {
        let mut cache = CompressedCache::<B>::new(shape(1, hq, hkv, d), config, 100, &common::device()).unwrap();
        if evict {
            cache = cache.with_decode_budget(0).with_chunked_prefill(true);
        }
        let mut host = HostLayer::new(hq, hkv, d);
        step(&mut cache, &mut host, 0, &mut rng, 3, 1.0);
        for _ in 0..20 {
            step(&mut cache, &mut host, 0, &mut rng, 1, 1.0);
        }
        step(&mut cache, &mut host, 0, &mut rng, 5, 1.0);
        assert_eq!(cache.retained_tokens(), 28);
        assert_eq!(cache.rescores(), 0);
        assert_eq!(cache.query_window_bytes(), 0);
    }
}
