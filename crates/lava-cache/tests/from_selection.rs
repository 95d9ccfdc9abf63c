//! A cache built from a recorded prefill and `select_positions` equals the
//! cache the policy builds live, for every policy.

mod common;

use burn::tensor::{Distribution, Tensor};
use common::B;
use lava_cache::{select_positions, CacheShape, CompressedCache, KvCache, LayerQkv, PolicyConfig, PolicyName};

/// `layers` layers of random `q [h_q, n, 8]`, `k`, `v [h_kv, n, 8]`.
fn random_layers(layers: usize, h_q: usize, h_kv: usize, n: usize) -> Vec<LayerQkv<B>> {
    let device = common::device();
    (0..layers)
        .map(|_| {
            LayerQkv::new(
                Tensor::random([h_q, n, 8], Distribution::Normal(0.0, 1.0), &device),
                Tensor::random([h_kv, n, 8], Distribution::Normal(0.0, 1.0), &device),
                Tensor::random([h_kv, n, 8], Distribution::Normal(0.0, 1.0), &device),
            )
        })
        .collect()
}


#[test]
fn from_selection_equals_the_live_policy() {
    let device = common::device();
    let shape = CacheShape { layers: 3, query_heads: 6, kv_heads: 2, head_dim: 8 };
    let n = 60;
    let layers = random_layers(shape.layers, 6, 2, n);
    let q1: Vec<Tensor<B, 3>> = (0..shape.layers).map(|_| Tensor::random([6, 1, 8], Distribution::Normal(0.0, 1.0), &device)).collect();
    let kv1: Vec<Tensor<B, 3>> = (0..shape.layers).map(|_| Tensor::random([2, 1, 8], Distribution::Normal(0.0, 1.0), &device)).collect();
    for policy in PolicyName::ALL {
        if policy == PolicyName::Full {
            continue;
        }
        let mut config = PolicyConfig::new(policy, 24);
        config.window = 8;
        config.kernel_size = 3;
        let mut live = CompressedCache::<B>::new(shape, config.clone(), 128, &device).expect("cache");
        for (l, x) in layers.iter().enumerate() {
            live.attend(l, x.q.clone(), x.k.clone(), x.v.clone()).expect("prefill");
        }
        let sel = select_positions(&layers, &config).expect("select");
        let kv: Vec<_> = layers.iter().map(|x| (x.k.clone(), x.v.clone())).collect();
        let mut built = CompressedCache::<B>::from_selection(shape, config, 128, &device, &kv, &sel).expect("from_selection");
        assert_eq!(built.retained_tokens(), live.retained_tokens(), "{policy}");
        for l in 0..shape.layers {
            let mut a = live.kept_positions(l).expect("live");
            let mut b = built.kept_positions(l).expect("built");
            a.iter_mut().for_each(|h| h.sort_unstable());
            b.iter_mut().for_each(|h| h.sort_unstable());
            assert_eq!(a, b, "{policy} layer {l}");
            let oa = live.attend(l, q1[l].clone(), kv1[l].clone(), kv1[l].clone()).expect("decode").into_data().to_vec::<f32>().expect("f32");
            let ob = built.attend(l, q1[l].clone(), kv1[l].clone(), kv1[l].clone()).expect("decode").into_data().to_vec::<f32>().expect("f32");
            let err = oa.iter().zip(&ob).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(err < 1e-5, "{policy} layer {l}: decode outputs differ by {err}");
        }
        assert_eq!(built.next_position(), live.next_position());
    }
}

#[test]
fn prompt_scores_select_equals_select_positions_for_every_budget() {
    use lava_cache::PromptScores;
    let n = 50;
    let layers = random_layers(4, 6, 2, n);
    let config = |policy, budget| {
        let mut c = PolicyConfig::new(policy, budget);
        c.window = 6;
        c.kernel_size = 3;
        c
    };
    let mut shared: Vec<PromptScores> = Vec::new();
    for policy in PolicyName::ALL.into_iter().filter(|&p| p != PolicyName::Full) {
        // Budgets below the prompt and at/above it (keep-all).
        for budget in [10, 20, 40, 56, 80] {
            let c = config(policy, budget);
            let scores = match shared.iter().position(|s| s.serves(&c)) {
                Some(i) => &shared[i],
                None => {
                    shared.push(PromptScores::new(&layers, &c).expect("scores"));
                    shared.last().expect("pushed")
                }
            };
            assert_eq!(scores.select(&c).expect("select"), select_positions(&layers, &c).expect("direct"), "{policy} B={budget}");
        }
    }
    // One set of scores per scorer (snapkv family, lava family, h2o, streaming, cake).
    assert_eq!(shared.len(), 5);
    // Scores of one scorer refuse a policy of another, and other parameters.
    let lava = PromptScores::new(&layers, &config(PolicyName::Lava, 20)).expect("scores");
    assert!(lava.select(&config(PolicyName::SnapKv, 20)).is_err());
    let mut other_kernel = config(PolicyName::Lava, 20);
    other_kernel.kernel_size = 5;
    assert!(lava.select(&other_kernel).is_err());
    assert!(PromptScores::new(&layers, &config(PolicyName::Full, 20)).is_err());
}

#[test]
fn filled_from_selection_uses_the_configured_headroom() {
    let device = common::device();
    let shape = CacheShape { layers: 2, query_heads: 4, kv_heads: 2, head_dim: 8 };
    let n = 300;
    let layers = random_layers(shape.layers, 4, 2, n);
    let config = PolicyConfig::new(PolicyName::SnapKv, 128);
    let sel = select_positions(&layers, &config).expect("select");
    let kv: Vec<_> = layers.iter().map(|x| (x.k.clone(), x.v.clone())).collect();
    let cache = CompressedCache::<B>::new(shape, config.clone(), 512, &device)
        .expect("cache")
        .with_decode_headroom(1)
        .filled_from_selection(&kv, &sel)
        .expect("filled");
    // 2 layers x 2 heads x 128 tokens x 8 dims x K,V x 4 bytes; +10% growth room (> 1 token per head).
    assert_eq!(cache.retained_bytes(), 2 * 2 * 128 * 8 * 2 * 4);
    assert_eq!(cache.allocated_bytes(), 2 * (256 + 25) * 8 * 2 * 4);
    // Filling twice is refused.
    assert!(cache.filled_from_selection(&kv, &sel).is_err());
}
