//! CompressedCache: equivalence with FullCache when nothing is evicted, the LAVa
//! cascade against the direct selection, attention over unequal head lengths,
//! the window, and memory accounting.

mod common;

use common::{random_values, tensor3, to_vec3, RandomLayer, Rng, B};
use lava_cache::{
    select_positions, CacheError, CacheShape, CompressedCache, FullCache, KvCache, PolicyConfig, PolicyName,
};

fn shape(layers: usize, hq: usize, hkv: usize, d: usize) -> CacheShape {
    CacheShape { layers, query_heads: hq, kv_heads: hkv, head_dim: d }
}

fn config(policy: PolicyName, budget: usize, window: usize) -> PolicyConfig {
    PolicyConfig { window, ..PolicyConfig::new(policy, budget) }
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(worst <= tol, "{what}: max difference {worst}");
}

/// Random `[h, t, d]` tensor and its host copy.
fn random3(rng: &mut Rng, h: usize, t: usize, d: usize) -> (Vec<f32>, burn::tensor::Tensor<B, 3>) {
    let data = random_values(rng, h * t * d, 1.0);
    (data.clone(), tensor3(data, [h, t, d]))
}

#[test]
fn with_budget_covering_the_prompt_outputs_equal_full_cache() {
    for (hq, hkv) in [(4, 4), (4, 2), (8, 1)] {
        for policy in [PolicyName::Lava, PolicyName::AdaSnapKv, PolicyName::Streaming, PolicyName::H2o, PolicyName::Full] {
            let (layers, d, n_tok) = (2, 8, 20);
            let s = shape(layers, hq, hkv, d);
            let dev = common::device();
            let mut full = FullCache::<B>::new(s, 64, &dev).unwrap();
            let mut comp = CompressedCache::<B>::new(s, config(policy, 40, 8), 64, &dev).unwrap().with_decode_headroom(2);
            let mut rng = Rng::new(hq as u64 * 31 + hkv as u64);
            for (step, t) in [n_tok, 1, 1, 3, 1, 1, 1, 2, 1].into_iter().enumerate() {
                for l in 0..layers {
                    let (_, q) = random3(&mut rng, hq, t, d);
                    let (_, k) = random3(&mut rng, hkv, t, d);
                    let (_, v) = random3(&mut rng, hkv, t, d);
                    let a = full.attend(l, q.clone(), k.clone(), v.clone()).unwrap();
                    let b = comp.attend(l, q, k, v).unwrap();
                    close(&to_vec3(a), &to_vec3(b), 1e-5, &format!("{policy} G={} step {step} layer {l}", hq / hkv));
                }
            }
            assert_eq!(comp.next_position(), full.next_position());
            assert_eq!(comp.retained_tokens(), full.retained_tokens());
            assert_eq!(comp.full_bytes(), full.full_bytes());
        }
    }
}

/// Prefills `cache` with `layers` and returns the direct selection for comparison.
fn prefill(cache: &mut CompressedCache<B>, layers: &[RandomLayer]) {
    for (l, layer) in layers.iter().enumerate() {
        let qkv = layer.qkv();
        cache.attend(l, qkv.q, qkv.k, qkv.v).unwrap();
    }
}

#[test]
fn prefill_keeps_what_select_positions_selects_including_the_lava_cascade() {
    let (n_layers, hq, hkv, d, n_tok) = (4, 8, 2, 8, 100);
    for seed in 0..3 {
        let mut rng = Rng::new(100 + seed);
        let layers: Vec<RandomLayer> = (0..n_layers).map(|_| RandomLayer::new(&mut rng, hq, hkv, n_tok, d, 2.0)).collect();
        let qkv: Vec<_> = layers.iter().map(|l| l.qkv()).collect();
        for policy in PolicyName::ALL {
            for budget in [12, 24, 40] {
                let c = PolicyConfig { sinks: 2, ..config(policy, budget, 8) };
                let want = select_positions(&qkv, &c).unwrap();
                let mut cache = CompressedCache::<B>::new(shape(n_layers, hq, hkv, d), c, 1000, &common::device()).unwrap();
                let mut after_first_layer = None;
                for (l, layer) in qkv.iter().enumerate() {
                    cache.attend(l, layer.q.clone(), layer.k.clone(), layer.v.clone()).unwrap();
                    if l == 0 {
                        after_first_layer = Some(cache.kept_positions(0).unwrap());
                    }
                }
                for (l, sel) in want.layers.iter().enumerate() {
                    assert_eq!(cache.kept_positions(l).unwrap(), sel.heads, "seed {seed} {policy} B={budget} layer {l}");
                    assert_eq!(cache.layer_budget(l), Some(sel.budget), "seed {seed} {policy} B={budget} layer {l}");
                }
                assert_eq!(cache.retained_tokens(), want.retained_tokens());
                if policy == PolicyName::Lava {
                    // The cascade did shrink layer 0 after its prefill.
                    let first: usize = after_first_layer.unwrap().iter().map(Vec::len).sum();
                    let last: usize = want.layers[0].heads.iter().map(Vec::len).sum();
                    assert!(first > last, "seed {seed} B={budget}: {first} then {last}");
                }
            }
        }
    }
}

#[test]
fn the_window_and_decoded_tokens_are_always_kept() {
    let (hq, hkv, d, n_tok, w) = (4, 2, 8, 64, 8);
    let mut rng = Rng::new(5);
    for policy in [PolicyName::Lava, PolicyName::SnapKv, PolicyName::PyramidKv, PolicyName::Streaming, PolicyName::H2o] {
        let layers: Vec<RandomLayer> = (0..3).map(|_| RandomLayer::new(&mut rng, hq, hkv, n_tok, d, 1.5)).collect();
        let mut cache = CompressedCache::<B>::new(shape(3, hq, hkv, d), config(policy, 16, w), 100, &common::device()).unwrap();
        prefill(&mut cache, &layers);
        for _ in 0..3 {
            for l in 0..3 {
                let (_, q) = random3(&mut rng, hq, 1, d);
                let (_, k) = random3(&mut rng, hkv, 1, d);
                let (_, v) = random3(&mut rng, hkv, 1, d);
                cache.attend(l, q, k, v).unwrap();
            }
        }
        for l in 0..3 {
            for head in cache.kept_positions(l).unwrap() {
                assert!(head.ends_with(&(n_tok - w..n_tok + 3).collect::<Vec<_>>()), "{policy} layer {l}: {head:?}");
            }
        }
        assert_eq!(cache.next_position(), n_tok + 3);
        assert!(cache.retained_tokens() < 3 * hkv * (n_tok + 3));
    }
}

/// Attention of `q` (`[hq, t, d]` host) over each head's kept prompt tokens plus
/// the new ones, by loops.
fn naive_attention(
    layer: &RandomLayer,
    kept: &[Vec<usize>],
    q: &[f32],
    k_new: &[f32],
    v_new: &[f32],
    t: usize,
) -> Vec<f32> {
    let (hq, hkv, n_tok, d) = (layer.hq, layer.hkv, layer.n, layer.d);
    let group = hq / hkv;
    let mut out = vec![0.0f32; hq * t * d];
    for h in 0..hq {
        let g = h / group;
        for i in 0..t {
            // (key, value) rows visible to query i.
            let mut rows: Vec<(Vec<f64>, Vec<f64>)> = Vec::new();
            for &p in &kept[g] {
                let at = (g * n_tok + p) * d;
                let kk = layer.k[at..at + d].iter().map(|&x| x as f64).collect();
                let vv = layer.v[at..at + d].iter().map(|&x| x as f64).collect();
                rows.push((kk, vv));
            }
            for j in 0..=i {
                let at = (g * t + j) * d;
                rows.push((
                    k_new[at..at + d].iter().map(|&x| x as f64).collect(),
                    v_new[at..at + d].iter().map(|&x| x as f64).collect(),
                ));
            }
            let qa = (h * t + i) * d;
            let logits: Vec<f64> = rows
                .iter()
                .map(|(kk, _)| (0..d).map(|e| q[qa + e] as f64 * kk[e]).sum::<f64>() / (d as f64).sqrt())
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logits.iter().map(|x| (x - m).exp()).sum();
            for e in 0..d {
                let val: f64 = rows.iter().zip(&logits).map(|((_, vv), x)| (x - m).exp() / z * vv[e]).sum();
                out[qa + e] = val as f32;
            }
        }
    }
    out
}

#[test]
fn attention_over_unequal_head_lengths_matches_loops() {
    let (hq, hkv, d, n_tok) = (6, 3, 8, 80);
    let mut rng = Rng::new(9);
    let layer = RandomLayer::new(&mut rng, hq, hkv, n_tok, d, 2.5);
    let c = PolicyConfig { floor_alpha: 0.0, ..config(PolicyName::AdaSnapKv, 24, 8) };
    for t in [1, 3] {
        let mut cache = CompressedCache::<B>::new(shape(1, hq, hkv, d), c.clone(), 100, &common::device()).unwrap();
        prefill(&mut cache, std::slice::from_ref(&layer));
        let kept = cache.kept_positions(0).unwrap();
        let lens: Vec<usize> = kept.iter().map(Vec::len).collect();
        assert!(lens.iter().any(|&x| x != lens[0]), "heads should differ: {lens:?}");
        let (qh, q) = random3(&mut rng, hq, t, d);
        let (kh, k) = random3(&mut rng, hkv, t, d);
        let (vh, v) = random3(&mut rng, hkv, t, d);
        let out = to_vec3(cache.attend(0, q, k, v).unwrap());
        close(&out, &naive_attention(&layer, &kept, &qh, &kh, &vh, t), 1e-5, &format!("T={t}"));
    }
}

#[test]
fn memory_is_reported_truthfully_and_stays_within_bounds() {
    let (n_layers, hq, hkv, d, n_tok, headroom) = (3, 4, 2, 8, 90, 4);
    let mut rng = Rng::new(11);
    let layers: Vec<RandomLayer> = (0..n_layers).map(|_| RandomLayer::new(&mut rng, hq, hkv, n_tok, d, 1.5)).collect();
    let mut cache = CompressedCache::<B>::new(shape(n_layers, hq, hkv, d), config(PolicyName::Lava, 24, 8), 1000, &common::device())
        .unwrap()
        .with_decode_headroom(headroom);
    prefill(&mut cache, &layers);
    let check = |cache: &CompressedCache<B>, tokens: usize| {
        let kept: usize = (0..n_layers).map(|l| cache.kept_positions(l).unwrap().iter().map(Vec::len).sum::<usize>()).sum();
        assert_eq!(cache.retained_tokens(), kept);
        let slot_bytes = d * 2 * 4;
        assert_eq!(cache.retained_bytes(), kept * slot_bytes);
        let allocated_slots = cache.allocated_bytes() / slot_bytes;
        assert!(allocated_slots >= kept);
        let bound = kept as f64 * 1.1 + (n_layers * hkv * headroom) as f64;
        assert!(allocated_slots as f64 <= bound, "{allocated_slots} slots for {kept} kept");
        assert_eq!(cache.full_bytes(), n_layers * tokens * hkv * slot_bytes);
        assert_eq!(cache.next_position(), tokens);
    };
    check(&cache, n_tok);
    let after_prefill = cache.allocated_bytes();
    for step in 1..=60 {
        for l in 0..n_layers {
            let (_, q) = random3(&mut rng, hq, 1, d);
            let (_, k) = random3(&mut rng, hkv, 1, d);
            let (_, v) = random3(&mut rng, hkv, 1, d);
            cache.attend(l, q, k, v).unwrap();
        }
        check(&cache, n_tok + step);
    }
    assert!(cache.allocated_bytes() > after_prefill, "storage grew");
    cache.reset();
    assert_eq!((cache.retained_tokens(), cache.allocated_bytes(), cache.next_position()), (0, 0, 0));
}

#[test]
fn misuse_is_an_error() {
    let dev = common::device();
    let s = shape(2, 4, 2, 8);
    assert!(matches!(
        CompressedCache::<B>::new(s, config(PolicyName::Lava, 8, 8), 10, &dev),
        Err(CacheError::InvalidParameters(_))
    ));
    assert!(matches!(
        CompressedCache::<B>::new(shape(2, 3, 2, 8), config(PolicyName::Lava, 16, 8), 10, &dev),
        Err(CacheError::InvalidShape(_))
    ));
    let mut cache = CompressedCache::<B>::new(s, config(PolicyName::Lava, 16, 8), 10, &dev).unwrap();
    let mut rng = Rng::new(1);
    let (_, q) = random3(&mut rng, 4, 6, 8);
    let (_, k) = random3(&mut rng, 2, 6, 8);
    let (_, v) = random3(&mut rng, 2, 6, 8);
    assert!(matches!(cache.attend(2, q.clone(), k.clone(), v.clone()), Err(CacheError::LayerOutOfRange { .. })));
    let (_, bad) = random3(&mut rng, 2, 6, 4);
    assert!(matches!(cache.attend(0, q.clone(), bad, v.clone()), Err(CacheError::ShapeMismatch { .. })));
    cache.attend(0, q.clone(), k.clone(), v.clone()).unwrap();
    assert!(matches!(cache.attend(0, q, k, v), Err(CacheError::CapacityExceeded { .. })));
    assert!(cache.kept_positions(5).is_err());
}
