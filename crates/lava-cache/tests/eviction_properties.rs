//! Property tests of eviction after prefill: random shapes, policies, budgets,
//! chunk sizes, decode lengths, slack and options never break the invariants
//! and never panic.

mod common;

use common::{random_values, tensor3, Rng, B};
use lava_cache::{CacheShape, CompressedCache, HeadAllocation, KvCache, LayerAllocation, PolicyConfig, PolicyName, Pooling};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    hkv: usize,
    group: usize,
    d: usize,
    layers: usize,
    config: PolicyConfig,
    chunked: bool,
    slack: Option<usize>,
    headroom: usize,
    /// Tokens per forward pass: the prompt's chunks, then decoding (1s) and
    /// possibly further chunks.
    calls: Vec<usize>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        (any::<u64>(), 1usize..=3, 1usize..=3, prop::sample::select(vec![2usize, 4]), 1usize..=3),
        prop::sample::select(PolicyName::ALL.to_vec()),
        (1usize..=6, 1usize..=12, 0usize..=2, any::<bool>(), 0u32..=10, 1usize..=30, 0usize..=3),
        (any::<bool>(), prop::option::of(0usize..=4), 1usize..=4),
        (1usize..=30, prop::collection::vec(1usize..=12, 0..6), 0usize..=25, prop::collection::vec(1usize..=6, 0..3)),
    )
        .prop_map(
            |((seed, hkv, group, d, layers), policy, (window, extra, kernel, max, alpha, beta, sinks), (chunked, slack, headroom), (first, chunks, decode, tail))| {
                let config = PolicyConfig {
                    policy,
                    budget: window + extra,
                    window,
                    kernel_size: 2 * kernel + 1,
                    pooling: if max { Pooling::MaxPool } else { Pooling::AvgPool },
                    floor_alpha: alpha as f64 / 10.0,
                    pyramid_beta: beta,
                    sinks: sinks.min(extra),
                    floor_rule: None,
                };
                let mut calls = vec![first];
                calls.extend(chunks);
                calls.extend(std::iter::repeat_n(1, decode));
                calls.extend(tail);
                Scenario { seed, hkv, group, d, layers, config, chunked, slack, headroom, calls }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn eviction_after_prefill_keeps_every_invariant(s in scenario()) {
        let c = &s.config;
        prop_assert!(c.validate().is_ok());
        let hq = s.hkv * s.group;
        let shape = CacheShape { layers: s.layers, query_heads: hq, kv_heads: s.hkv, head_dim: s.d };
        let mut cache = CompressedCache::<B>::new(shape, c.clone(), 10_000, &common::device())
            .unwrap()
            .with_decode_headroom(s.headroom)
            .with_chunked_prefill(s.chunked);
        if let Some(slack) = s.slack {
            cache = cache.with_decode_budget(slack);
        }
        let comp = c.composition();
        let w = c.window;
        let base = c.budget - c.window;
        let mut rng = Rng::new(s.seed);
        let mut appended = vec![0usize; s.layers];
        // Tokens appended to a layer since it last compressed to its budget
        // (only grows when no eviction applies to its calls).
        let mut unbounded = vec![0usize; s.layers];
        let mut rescores = 0;
        for &t in &s.calls {
            for l in 0..s.layers {
                let q = tensor3(random_values(&mut rng, hq * t * s.d, 1.5), [hq, t, s.d]);
                let k = tensor3(random_values(&mut rng, s.hkv * t * s.d, 1.5), [s.hkv, t, s.d]);
                let v = tensor3(random_values(&mut rng, s.hkv * t * s.d, 1.0), [s.hkv, t, s.d]);
                let out = cache.attend(l, q, k, v).unwrap();
                prop_assert_eq!(out.dims(), [hq, t, s.d]);
                let out = common::to_vec3(out);
                prop_assert!(out.iter().all(|x| x.is_finite()));
                let first_call = appended[l] == 0;
                appended[l] += t;
                let evicting = first_call || (t > 1 && s.chunked) || s.slack.is_some();
                unbounded[l] = if evicting { 0 } else { unbounded[l] + t };
                prop_assert!(cache.rescores() >= rescores);
                rescores = cache.rescores();

                // Every layer, whether or not it was just called.
                let mut kept_total = 0;
                for k in 0..s.layers {
                    let a = appended[k];
                    let kept = cache.kept_positions(k).unwrap();
                    prop_assert_eq!(kept.len(), s.hkv);
                    kept_total += kept.iter().map(Vec::len).sum::<usize>();
                    if a == 0 {
                        prop_assert!(kept.iter().all(Vec::is_empty));
                        continue;
                    }
                    let boundary = a - w.min(a);
                    for head in &kept {
                        // Ascending (no duplicates), absolute positions below A, window kept.
                        prop_assert!(head.windows(2).all(|p| p[0] < p[1]));
                        prop_assert!(head.iter().all(|&p| p < a));
                        prop_assert!(head.ends_with(&(boundary..a).collect::<Vec<_>>()));
                    }
                    match cache.head_budgets(k) {
                        None => {
                            // Not compressed: everything kept.
                            prop_assert!(kept.iter().all(|h| h.len() == a));
                            if comp.is_some() && s.slack.is_some() && c.composition().unwrap().layers != LayerAllocation::Pyramid {
                                prop_assert!(boundary <= c.keep_all_prefix().max(base) + s.slack.unwrap(), "layer {} holds {} evictable", k, boundary);
                            }
                        }
                        Some(caps) => {
                            prop_assert!(comp.is_some());
                            prop_assert_eq!(caps.len(), s.hkv);
                            let b_l = cache.layer_budget(k).unwrap();
                            let heads = comp.unwrap().heads;
                            match heads {
                                HeadAllocation::Uniform => prop_assert!(caps.iter().all(|&x| x <= b_l)),
                                HeadAllocation::Adaptive => {
                                    // (1 - alpha) H b_l from the pool plus the rule's floor per head, rounded.
                                    let floor = c.head_floor(b_l);
                                    let bound = ((1.0 - c.floor_alpha) * (s.hkv * b_l) as f64).floor() as usize + s.hkv * (floor + 1);
                                    // (A layer whose budget covers its longest head reports `b_l` for every head.)
                                    let all_kept = caps.iter().all(|&x| x == b_l);
                                    prop_assert!(all_kept || caps.iter().sum::<usize>() <= bound, "caps {:?} b_l {} floor {} bound {}", caps, b_l, floor, bound)
                                }
                            }
                            let allowance = s.slack.unwrap_or(0) + unbounded[k];
                            for (g, head) in kept.iter().enumerate() {
                                let evictable = head.iter().filter(|&&p| p < boundary).count();
                                prop_assert!(
                                    evictable <= caps[g] + allowance,
                                    "layer {} head {}: {} evictable, cap {}, allowance {}", k, g, evictable, caps[g], allowance
                                );
                            }
                        }
                    }
                }
                // Memory accounting is exact and within the documented bound.
                let slot_bytes = s.d * 2 * 4;
                prop_assert_eq!(cache.retained_tokens(), kept_total);
                prop_assert_eq!(cache.retained_bytes(), kept_total * slot_bytes);
                let allocated = cache.allocated_bytes() / slot_bytes;
                prop_assert!(allocated >= kept_total);
                let headroom = s.slack.map_or(s.headroom, |x| s.headroom.max(x + 1));
                prop_assert!(allocated as f64 <= kept_total as f64 * 1.1 + (s.layers * s.hkv * headroom) as f64);
                prop_assert_eq!(cache.next_position(), appended[0]);
                prop_assert_eq!(cache.full_bytes(), appended.iter().sum::<usize>() * s.hkv * slot_bytes);
            }
        }
        if comp.is_none() {
            prop_assert_eq!(cache.rescores(), 0);
        }
        cache.reset();
        prop_assert_eq!((cache.retained_tokens(), cache.allocated_bytes(), cache.next_position(), cache.rescores()), (0, 0, 0, 0));
        prop_assert_eq!(cache.query_window_bytes(), 0);
    }
}
