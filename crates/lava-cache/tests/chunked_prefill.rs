//! Chunked prefill (`CompressedCache::with_chunked_prefill`): equivalence with
//! FullCache when the budget covers everything, with the one-shot prefill when
//! one chunk holds the prompt, chunk outputs over the kept tokens, the kept
//! sets after each chunk against an independent re-scoring, the LAVa cascade
//! across chunks, and memory bounds for long prompts.

mod common;
mod independent;

use common::{random_values, tensor3, to_vec3, RandomLayer, Rng, B};
use independent::HostLayer;
use lava_cache::{CacheShape, CompressedCache, FullCache, KvCache, LayerAllocation, PolicyConfig, PolicyName, Pooling};

fn shape(layers: usize, hq: usize, hkv: usize, d: usize) -> CacheShape {
    CacheShape { layers, query_heads: hq, kv_heads: hkv, head_dim: d }
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst <= tol, "{what}: max difference {worst}");
}

/// Random `q`, `k`, `v` host data for `t` tokens.
fn random_qkv(rng: &mut Rng, hq: usize, hkv: usize, t: usize, d: usize, scale: f64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    (
        random_values(rng, hq * t * d, scale),
        random_values(rng, hkv * t * d, scale),
        random_values(rng, hkv * t * d, 1.0),
    )
}

fn attend(cache: &mut impl KvCache<B>, layer: usize, qkv: &(Vec<f32>, Vec<f32>, Vec<f32>), hq: usize, hkv: usize, t: usize, d: usize) -> Vec<f32> {
    let out = cache
        .attend(
            layer,
            tensor3(qkv.0.clone(), [hq, t, d]),
            tensor3(qkv.1.clone(), [hkv, t, d]),
            tensor3(qkv.2.clone(), [hkv, t, d]),
        )
        .unwrap();
    to_vec3(out)
}

const ALL_COMPRESSING: [PolicyName; 11] = [
    PolicyName::Lava,
    PolicyName::LavaMatched,
    PolicyName::Cake,
    PolicyName::LavaNoLayer,
    PolicyName::LavaNoHead,
    PolicyName::SnapKv,
    PolicyName::PyramidKv,
    PolicyName::AdaSnapKv,
    PolicyName::AdaPyramidKv,
    PolicyName::H2o,
    PolicyName::Streaming,
];

#[test]
fn with_a_budget_covering_everything_chunked_prefill_and_decode_eviction_equal_full_cache() {
    for (hq, hkv) in [(4, 4), (4, 2), (6, 1)] {
        for policy in ALL_COMPRESSING.into_iter().chain([PolicyName::Full]) {
            let (layers, d) = (2, 8);
            let s = shape(layers, hq, hkv, d);
            let dev = common::device();
            let mut full = FullCache::<B>::new(s, 256, &dev).unwrap();
            let config = PolicyConfig { window: 6, ..PolicyConfig::new(policy, 100) };
            let mut comp = CompressedCache::<B>::new(s, config, 256, &dev)
                .unwrap()
                .with_chunked_prefill(true)
                .with_decode_budget(1)
                .with_decode_headroom(2);
            let mut rng = Rng::new(hq as u64 * 13 + hkv as u64);
            // A 40-token prompt in chunks, then decoding (and a further chunk).
            for (i, t) in [9, 9, 9, 9, 4, 1, 1, 1, 3, 1, 1, 1, 1].into_iter().enumerate() {
                for l in 0..layers {
                    let qkv = random_qkv(&mut rng, hq, hkv, t, d, 1.5);
                    let a = attend(&mut full, l, &qkv, hq, hkv, t, d);
                    let b = attend(&mut comp, l, &qkv, hq, hkv, t, d);
                    close(&a, &b, 1e-5, &format!("{policy} G={} call {i} layer {l}", hq / hkv));
                }
            }
            assert_eq!(comp.next_position(), full.next_position());
            assert_eq!(comp.retained_tokens(), full.retained_tokens());
            assert_eq!(comp.full_bytes(), full.full_bytes());
        }
    }
}

#[test]
fn a_chunk_at_least_as_long_as_the_prompt_is_exactly_the_one_shot_prefill() {
    let (layers, hq, hkv, d, n_tok) = (3, 4, 2, 8, 70);
    for (seed, policy) in ALL_COMPRESSING.into_iter().enumerate() {
        let mut rng = Rng::new(seed as u64);
        let prompt: Vec<RandomLayer> = (0..layers).map(|_| RandomLayer::new(&mut rng, hq, hkv, n_tok, d, 2.0)).collect();
        let config = PolicyConfig { window: 8, sinks: 2, ..PolicyConfig::new(policy, 24) };
        let dev = common::device();
        let make = || CompressedCache::<B>::new(shape(layers, hq, hkv, d), config.clone(), 1000, &dev).unwrap();
        for decode in [None, Some(3)] {
            let mut one_shot = make();
            let mut chunked = make().with_chunked_prefill(true);
            if let Some(s) = decode {
                one_shot = one_shot.with_decode_budget(s);
                chunked = chunked.with_decode_budget(s);
            }
            for (l, layer) in prompt.iter().enumerate() {
                let qkv = (layer.q.clone(), layer.k.clone(), layer.v.clone());
                let a = attend(&mut one_shot, l, &qkv, hq, hkv, n_tok, d);
                let b = attend(&mut chunked, l, &qkv, hq, hkv, n_tok, d);
                assert_eq!(a, b, "{policy} layer {l}: outputs");
            }
            for l in 0..layers {
                assert_eq!(one_shot.kept_positions(l).unwrap(), chunked.kept_positions(l).unwrap(), "{policy} layer {l}");
                assert_eq!(one_shot.layer_budget(l), chunked.layer_budget(l), "{policy} layer {l}");
                assert_eq!(one_shot.head_budgets(l), chunked.head_budgets(l), "{policy} layer {l}");
            }
            assert_eq!(one_shot.retained_tokens(), chunked.retained_tokens());
            assert_eq!(one_shot.allocated_bytes(), chunked.allocated_bytes());
            // Decoding continues identically (1-token calls are decode in both).
            for i in 0..12 {
                for l in 0..layers {
                    let qkv = random_qkv(&mut rng, hq, hkv, 1, d, 2.0);
                    let a = attend(&mut one_shot, l, &qkv, hq, hkv, 1, d);
                    let b = attend(&mut chunked, l, &qkv, hq, hkv, 1, d);
                    assert_eq!(a, b, "{policy} decode {i} layer {l}");
                    assert_eq!(one_shot.kept_positions(l).unwrap(), chunked.kept_positions(l).unwrap());
                }
            }
            assert_eq!(one_shot.rescores(), chunked.rescores());
        }
    }
}

/// Feeds a prompt in chunks to a chunked cache, layer by layer, checking
/// after every layer's chunk: the output against loops over the kept tokens
/// plus the chunk, and (static layer allocations) the kept set against the
/// independent re-scoring.
fn chunks_match_independent(config: PolicyConfig, chunks: &[usize], seed: u64) -> CompressedCache<B> {
    let (layers, hq, hkv, d) = (3, 4, 2, 8);
    let mut rng = Rng::new(seed);
    let mut cache = CompressedCache::<B>::new(shape(layers, hq, hkv, d), config.clone(), 10_000, &common::device())
        .unwrap()
        .with_chunked_prefill(true);
    let mut hosts: Vec<HostLayer> = (0..layers).map(|_| HostLayer::new(hq, hkv, d)).collect();
    let comp = config.composition().unwrap();
    let base = config.budget_beyond_window();
    let w = config.window;
    for (c, &t) in chunks.iter().enumerate() {
        for (l, host) in hosts.iter_mut().enumerate() {
            let before = cache.kept_positions(l).unwrap();
            let compressed = cache.head_budgets(l).is_some();
            let qkv = random_qkv(&mut rng, hq, hkv, t, d, 1.5);
            host.push(&qkv.0, &qkv.1, &qkv.2, t);
            let out = attend(&mut cache, l, &qkv, hq, hkv, t, d);
            let a = host.len();
            let boundary = a - w.min(a);
            if c == 0 {
                continue; // the ordinary prefill, tested elsewhere
            }
            close(&out, &host.attention(&before, t), 1e-5, &format!("{} chunk {c} layer {l}", config.policy));
            let with_chunk: Vec<Vec<usize>> = before.iter().map(|h| h.iter().copied().chain(a - t..a).collect()).collect();
            let got = cache.kept_positions(l).unwrap();
            for head in &got {
                assert!(head.ends_with(&(boundary..a).collect::<Vec<_>>()), "window kept");
            }
            if comp.layers.is_dynamic() {
                continue;
            }
            if !compressed && boundary <= base {
                assert_eq!(got, with_chunk, "{} chunk {c} layer {l}: nothing to evict yet", config.policy);
                continue;
            }
            let budget = match comp.layers {
                LayerAllocation::Pyramid => independent::pyramid(layers, base, boundary, config.pyramid_beta)[l],
                _ => base,
            };
            let want = independent::rescore(host, &with_chunk, &config, budget);
            assert_eq!(got, want.kept, "{} chunk {c} layer {l}", config.policy);
            assert_eq!(cache.head_budgets(l), Some(want.caps), "{} chunk {c} layer {l}", config.policy);
            assert_eq!(cache.layer_budget(l), Some(budget));
        }
    }
    cache
}

#[test]
fn after_each_chunk_the_kept_sets_are_the_policy_selection_on_the_rescored_matrix() {
    let policies = [
        PolicyName::SnapKv,
        PolicyName::AdaSnapKv,
        PolicyName::PyramidKv,
        PolicyName::AdaPyramidKv,
        PolicyName::LavaNoLayer,
        PolicyName::H2o,
        PolicyName::Streaming,
    ];
    for (i, policy) in policies.into_iter().enumerate() {
        for (pooling, chunks) in [(Pooling::MaxPool, vec![20, 7, 7, 7, 7, 12, 2]), (Pooling::AvgPool, vec![5, 3, 9, 16, 16])] {
            let config = PolicyConfig { window: 4, kernel_size: 3, pooling, sinks: 2, ..PolicyConfig::new(policy, 16) };
            let cache = chunks_match_independent(config, &chunks, 40 + i as u64);
            assert!(cache.rescores() > 0, "{policy}");
        }
    }
}

#[test]
fn lava_cascade_runs_inside_every_chunk_and_budgets_follow_the_chunk_entropies() {
    let (layers, hq, hkv, d, w, budget) = (4, 4, 2, 8, 4, 16);
    let base = budget - w;
    for policy in [PolicyName::Lava, PolicyName::LavaNoHead] {
        let config = PolicyConfig { window: w, kernel_size: 3, ..PolicyConfig::new(policy, budget) };
        let mut rng = Rng::new(77);
        let mut cache = CompressedCache::<B>::new(shape(layers, hq, hkv, d), config.clone(), 10_000, &common::device())
            .unwrap()
            .with_chunked_prefill(true);
        let mut hosts: Vec<HostLayer> = (0..layers).map(|_| HostLayer::new(hq, hkv, d)).collect();
        for (c, t) in [30usize, 10, 10, 10, 10, 6].into_iter().enumerate() {
            let mut entropies = Vec::new();
            for l in 0..layers {
                let before = cache.kept_positions(l).unwrap();
                let qkv = random_qkv(&mut rng, hq, hkv, t, d, 1.5);
                let host = &mut hosts[l];
                host.push(&qkv.0, &qkv.1, &qkv.2, t);
                let out = attend(&mut cache, l, &qkv, hq, hkv, t, d);
                if c > 0 {
                    close(&out, &host.attention(&before, t), 1e-5, "chunk output");
                    let with_chunk: Vec<Vec<usize>> = before.iter().map(|h| h.iter().copied().chain(host.len() - t..host.len()).collect()).collect();
                    // The layer budget only matters for the kept set, not the scores.
                    entropies.push(independent::rescore(host, &with_chunk, &config, 0).entropy());
                }
                // At every moment the layer budgets in force sum to at most L (B - w).
                let total: usize = (0..layers).filter_map(|k| cache.head_budgets(k).and(cache.layer_budget(k))).sum();
                assert!(total <= layers * base, "{policy} chunk {c} layer {l}: budgets sum to {total}");
                // Every compressed head holds at most its head budget beyond the window.
                for k in 0..layers {
                    let a = hosts[k].len();
                    let boundary = a - w.min(a);
                    if let Some(caps) = cache.head_budgets(k) {
                        for (g, head) in cache.kept_positions(k).unwrap().iter().enumerate() {
                            let evictable = head.iter().filter(|&&p| p < boundary).count();
                            assert!(evictable <= caps[g], "{policy} chunk {c} layer {l}: layer {k} head {g}");
                        }
                    }
                }
            }
            if c > 0 {
                // After the pass, B_l = floor(e_l / sum e * L * (B - w)) with this chunk's entropies.
                let sum: f64 = entropies.iter().sum();
                for (l, e) in entropies.iter().enumerate() {
                    let want = (e / sum * (layers * base) as f64).floor() as i64;
                    let got = cache.layer_budget(l).unwrap() as i64;
                    assert!((got - want).abs() <= 1, "{policy} chunk {c} layer {l}: {got} vs {want}");
                }
            }
        }
        assert!(cache.rescores() >= 5 * layers);
    }
}

#[test]
fn a_long_prompt_in_chunks_never_holds_more_than_the_budget_plus_a_chunk() {
    let (layers, hq, hkv, d, w, budget, chunk, n_tok) = (2, 8, 2, 8, 8, 32, 24, 1200);
    for policy in [PolicyName::Lava, PolicyName::AdaSnapKv, PolicyName::SnapKv] {
        let config = PolicyConfig { window: w, ..PolicyConfig::new(policy, budget) };
        let headroom = 4;
        let mut cache = CompressedCache::<B>::new(shape(layers, hq, hkv, d), config, 100_000, &common::device())
            .unwrap()
            .with_decode_headroom(headroom)
            .with_chunked_prefill(true);
        let mut rng = Rng::new(5);
        let slot_bytes = d * 2 * 4;
        let mut done = 0;
        while done < n_tok {
            let t = chunk.min(n_tok - done);
            for l in 0..layers {
                let qkv = random_qkv(&mut rng, hq, hkv, t, d, 1.5);
                attend(&mut cache, l, &qkv, hq, hkv, t, d);
                let kept = cache.retained_tokens();
                // Budgets: entropy shares sum to L (B - w); heads within H_kv (B_l + 1).
                let bound = layers * hkv * (budget + 1);
                assert!(kept <= bound + hkv * (t + w), "{policy} at {done}: {kept} kept");
                let allocated = cache.allocated_bytes() / slot_bytes;
                assert!(allocated as f64 <= kept as f64 * 1.1 + (layers * hkv * headroom) as f64);
                for k in 0..=l {
                    if let Some(caps) = cache.head_budgets(k) {
                        for (g, head) in cache.kept_positions(k).unwrap().iter().enumerate() {
                            assert!(head.len() <= caps[g] + w, "{policy}: layer {k} head {g} holds {}", head.len());
                            assert!(head.windows(2).all(|p| p[0] < p[1]));
                        }
                    }
                }
            }
            done += t;
            assert_eq!(cache.next_position(), done);
            if policy == PolicyName::SnapKv && done > budget {
                // Uniform: exactly B per head after every chunk.
                for l in 0..layers {
                    assert!(cache.kept_positions(l).unwrap().iter().all(|h| h.len() == budget));
                }
            }
        }
        assert!(cache.retained_tokens() <= layers * hkv * (budget + 1));
        assert_eq!(cache.full_bytes(), layers * n_tok * hkv * slot_bytes);
        assert!(cache.allocated_bytes() * 10 < cache.full_bytes(), "{policy}");
    }
}

#[test]
fn a_one_token_last_chunk_is_decode() {
    // Prompt of 41 in chunks of 20: the last 1-token call follows the decode rule.
    let (hq, hkv, d) = (2, 1, 4);
    let config = PolicyConfig { window: 4, ..PolicyConfig::new(PolicyName::SnapKv, 12) };
    let mut rng = Rng::new(8);
    for decode in [None, Some(0)] {
        let mut cache = CompressedCache::<B>::new(shape(1, hq, hkv, d), config.clone(), 100, &common::device())
            .unwrap()
            .with_chunked_prefill(true);
        if let Some(s) = decode {
            cache = cache.with_decode_budget(s);
        }
        for t in [20, 20, 1] {
            let qkv = random_qkv(&mut rng, hq, hkv, t, d, 1.0);
            attend(&mut cache, 0, &qkv, hq, hkv, t, d);
        }
        let len = cache.kept_positions(0).unwrap()[0].len();
        assert_eq!(len, if decode.is_some() { 12 } else { 13 });
        assert!(cache.chunked_prefill());
    }
}

#[test]
fn a_chunk_after_decoding_reranks_layers_before_the_cascade_truncates_them() {
    // LAVa, chunked: prompt in chunks, a few decode tokens (no decode-time
    // eviction, so the tokens pile up), then a chunk. Layer 0's cascade step
    // truncates the other layers; their rankings predate the decode tokens, so
    // they are re-scored first and end within their head budgets (no slack).
    let (layers, hq, hkv, d, w) = (3, 4, 2, 8, 4);
    let config = PolicyConfig { window: w, kernel_size: 3, ..PolicyConfig::new(PolicyName::Lava, 16) };
    for seed in 0..4 {
        let mut rng = Rng::new(300 + seed);
        let mut cache = CompressedCache::<B>::new(shape(layers, hq, hkv, d), config.clone(), 10_000, &common::device())
            .unwrap()
            .with_chunked_prefill(true);
        let mut appended = [0usize; 3];
        let calls = [24, 12, 12, 1, 1, 1, 1, 1, 1, 8];
        let last = calls.len() - 1;
        for (i, t) in calls.into_iter().enumerate() {
            for l in 0..layers {
                let qkv = random_qkv(&mut rng, hq, hkv, t, d, 1.5);
                attend(&mut cache, l, &qkv, hq, hkv, t, d);
                appended[l] += t;
                if i == last && l == 0 {
                    let before = cache.rescores();
                    for k in 1..layers {
                        let boundary = appended[k] - w;
                        let caps = cache.head_budgets(k).unwrap();
                        for (g, head) in cache.kept_positions(k).unwrap().iter().enumerate() {
                            let evictable = head.iter().filter(|&&p| p < boundary).count();
                            assert!(evictable <= caps[g], "seed {seed} layer {k} head {g}: {evictable} > {}", caps[g]);
                        }
                    }
                    assert!(before >= 2 * layers + layers, "the stale layers were re-scored");
                }
            }
        }
    }
}
