//! Small, hand-checkable cases of every policy part, on the ndarray backend.

mod common;

use common::{tensor3, RandomLayer, Rng};
use lava_cache::policy::scorer::{
    cumulative_attention, h2o_scores, lava_scores, pool, snapkv_scores, streaming_scores, value_norm_max,
    window_attention, ScoreMatrix,
};
use lava_cache::policy::{head_budget, layer_budget};
use lava_cache::{
    select_positions, CacheError, HeadAllocation, LayerAllocation, LayerQkv, PolicyConfig, PolicyName, Pooling, Scorer,
};

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

fn matrix(rows: usize, cols: usize, data: &[f32]) -> ScoreMatrix {
    ScoreMatrix::new(rows, cols, data.to_vec()).unwrap()
}

// ---------------------------------------------------------------- pooling

#[test]
fn maxpool_pads_with_negative_infinity() {
    let row = [1.0, 5.0, 2.0, 0.0, 3.0];
    assert_eq!(pool(&row, 3, Pooling::MaxPool), vec![5.0, 5.0, 5.0, 3.0, 3.0]);
    assert_eq!(pool(&row, 5, Pooling::MaxPool), vec![5.0, 5.0, 5.0, 5.0, 3.0]);
    assert_eq!(pool(&row, 1, Pooling::MaxPool), row.to_vec());
    // Negative values: zero padding would win at the edges, -inf padding does not.
    assert_eq!(pool(&[-1.0, -2.0, -3.0], 3, Pooling::MaxPool), vec![-1.0, -1.0, -2.0]);
}

#[test]
fn avgpool_counts_the_zero_padding() {
    let row = [1.0, 5.0, 2.0, 0.0, 3.0];
    close(&pool(&row, 3, Pooling::AvgPool), &[2.0, 8.0 / 3.0, 7.0 / 3.0, 5.0 / 3.0, 1.0], 1e-6);
    // Edges divide by the kernel size, not by the number of real tokens.
    close(&pool(&[-1.0, -2.0, -3.0], 3, Pooling::AvgPool), &[-1.0, -2.0, -5.0 / 3.0], 1e-6);
}

#[test]
fn pooling_rows_shorter_than_the_kernel() {
    assert_eq!(pool(&[2.0, 4.0], 7, Pooling::MaxPool), vec![4.0, 4.0]);
    close(&pool(&[2.0, 4.0], 7, Pooling::AvgPool), &[6.0 / 7.0, 6.0 / 7.0], 1e-6);
    assert_eq!(pool(&[3.0], 7, Pooling::MaxPool), vec![3.0]);
    close(&pool(&[3.0], 7, Pooling::AvgPool), &[3.0 / 7.0], 1e-6);
    assert!(pool(&[], 7, Pooling::MaxPool).is_empty());
}

// ---------------------------------------------------------------- window attention

#[test]
fn window_attention_is_causal_inside_the_window() {
    // Zero queries attend uniformly to every visible key.
    // N = 4, w = 2: window queries at positions 2 and 3 see 3 and 4 keys.
    let q = tensor3(vec![0.0; 4 * 2], [1, 4, 2]);
    let k = tensor3((0..8).map(|x| x as f32).collect(), [1, 4, 2]);
    let s = window_attention(&q, &k, 2).unwrap();
    assert_eq!((s.rows(), s.cols()), (1, 2));
    close(s.data(), &[7.0 / 24.0, 7.0 / 24.0], 1e-6);
    // N = 5, w = 3: (1/3 + 1/4 + 1/5) / 3.
    let q = tensor3(vec![0.0; 5], [1, 5, 1]);
    let k = tensor3(vec![1.0; 5], [1, 5, 1]);
    let s = window_attention(&q, &k, 3).unwrap();
    close(s.data(), &[47.0 / 180.0, 47.0 / 180.0], 1e-6);
    // Window of the whole sequence: nothing to score.
    assert_eq!(window_attention(&q, &k, 5).unwrap().cols(), 0);
    assert!(matches!(window_attention(&q, &k, 0), Err(CacheError::InvalidParameters(_))));
    assert!(matches!(window_attention(&q, &k, 6), Err(CacheError::InvalidParameters(_))));
}

#[test]
fn window_attention_maps_query_heads_to_kv_heads_in_repeat_kv_order() {
    // H_q = 4, H_kv = 2 (G = 2): query heads 2 and 3 read KV head 1.
    // KV head 1 has a large key at position 0; KV head 0 has zero keys.
    let (n_tok, d) = (3, 2);
    let mut k = vec![0.0; 2 * n_tok * d];
    k[n_tok * d] = 10.0; // head 1, position 0, dim 0
    let mut q = vec![0.0; 4 * n_tok * d];
    for h in 0..4 {
        q[(h * n_tok + 2) * d] = 1.0; // window query (position 2), dim 0
    }
    let s = window_attention(&tensor3(q, [4, n_tok, d]), &tensor3(k, [2, n_tok, d]), 1).unwrap();
    for h in 0..2 {
        close(&s.data()[h * 2..h * 2 + 2], &[1.0 / 3.0, 1.0 / 3.0], 1e-6);
    }
    let peak = (10.0f32 / 2f32.sqrt()).exp();
    for h in 2..4 {
        close(&s.data()[h * 2..h * 2 + 2], &[peak / (peak + 2.0), 1.0 / (peak + 2.0)], 1e-6);
    }
}

/// Straight loops: s[h][j] = mean over window queries of the causal softmax.
fn naive_window_attention(l: &RandomLayer, w: usize) -> Vec<f32> {
    let (n_tok, d, group) = (l.n, l.d, l.hq / l.hkv);
    let n = n_tok - w;
    let mut out = vec![0.0f64; l.hq * n];
    for h in 0..l.hq {
        let g = h / group;
        for i in 0..w {
            let qp = n + i;
            let logits: Vec<f64> = (0..=qp)
                .map(|j| {
                    (0..d).map(|e| l.q[(h * n_tok + qp) * d + e] as f64 * l.k[(g * n_tok + j) * d + e] as f64).sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logits.iter().map(|x| (x - m).exp()).sum();
            for j in 0..n {
                out[h * n + j] += (logits[j] - m).exp() / z / w as f64;
            }
        }
    }
    out.into_iter().map(|x| x as f32).collect()
}

#[test]
fn window_attention_matches_loops_for_gqa_groups_1_3_4_8() {
    let mut rng = Rng::new(7);
    for (hq, hkv) in [(2, 2), (6, 2), (8, 2), (8, 1)] {
        let l = RandomLayer::new(&mut rng, hq, hkv, 23, 4, 1.5);
        let qkv = l.qkv();
        for w in [1, 5, 23] {
            let s = window_attention(&qkv.q, &qkv.k, w).unwrap();
            close(s.data(), &naive_window_attention(&l, w), 1e-5);
        }
    }
}

// ---------------------------------------------------------------- scores per KV head

#[test]
fn snapkv_scores_average_the_group_then_pool() {
    let attn = matrix(2, 3, &[1.0, 0.0, 0.0, 0.0, 0.0, 3.0]);
    assert_eq!(snapkv_scores(&attn, 1, 1, Pooling::MaxPool).unwrap().data(), &[0.5, 0.0, 1.5]);
    // Mean first ([0.5, 0, 1.5]) then maxpool; pooling first would give [0.5, 2, 1.5].
    assert_eq!(snapkv_scores(&attn, 1, 3, Pooling::MaxPool).unwrap().data(), &[0.5, 1.5, 1.5]);
    close(snapkv_scores(&attn, 1, 3, Pooling::AvgPool).unwrap().data(), &[0.5 / 3.0, 2.0 / 3.0, 0.5], 1e-6);
    // G = 1: one row per KV head, untouched by the mean.
    assert_eq!(snapkv_scores(&attn, 2, 1, Pooling::MaxPool).unwrap().data(), attn.data());
    assert!(snapkv_scores(&attn, 3, 1, Pooling::MaxPool).is_err());
}

#[test]
fn lava_scores_scale_by_the_value_norm_and_take_the_group_max() {
    let attn = matrix(2, 3, &[1.0, 0.0, 0.0, 0.0, 0.0, 3.0]);
    assert_eq!(lava_scores(&attn, &[2.0], 1, Pooling::MaxPool).unwrap().data(), &[2.0, 0.0, 6.0]);
    assert_eq!(lava_scores(&attn, &[2.0], 3, Pooling::MaxPool).unwrap().data(), &[2.0, 6.0, 6.0]);
    // Avgpool per query head, then the max: [1/3,1/3,0]*2 and [0,1,1]*2.
    close(lava_scores(&attn, &[2.0], 3, Pooling::AvgPool).unwrap().data(), &[2.0 / 3.0, 2.0, 2.0], 1e-6);
    // G = 1, two KV heads with their own scales.
    assert_eq!(lava_scores(&attn, &[2.0, 0.5], 1, Pooling::MaxPool).unwrap().data(), &[2.0, 0.0, 0.0, 0.0, 0.0, 1.5]);
}

#[test]
fn value_norm_max_is_the_largest_prefix_l1_norm() {
    let v = tensor3(vec![1.0, -2.0, 0.5, 0.5, -3.0, 9.0], [1, 3, 2]);
    assert_eq!(value_norm_max(&v, 2).unwrap(), vec![3.0]);
    assert_eq!(value_norm_max(&v, 3).unwrap(), vec![12.0]);
    assert_eq!(value_norm_max(&v, 0).unwrap(), vec![0.0]);
    assert!(value_norm_max(&v, 4).is_err());
}

#[test]
fn cumulative_attention_sums_every_prompt_query() {
    // Zero queries: query t spreads 1/(t+1) over keys 0..=t.
    let q = tensor3(vec![0.0; 3], [1, 3, 1]);
    let k = tensor3(vec![1.0, 2.0, 3.0], [1, 3, 1]);
    let c = cumulative_attention(&q, &k, 2).unwrap();
    close(c.data(), &[11.0 / 6.0, 5.0 / 6.0], 1e-6);
    let h = h2o_scores(&matrix(2, 2, &[1.0, 2.0, 3.0, 6.0]), 1).unwrap();
    assert_eq!(h.data(), &[2.0, 4.0]);
}

#[test]
fn streaming_scores_rank_sinks_then_recency() {
    let s = streaming_scores(1, 6, 2);
    assert_eq!(head_budget::rank_descending(s.data()), vec![0, 1, 5, 4, 3, 2]);
}

// ---------------------------------------------------------------- ranking and head budgets

#[test]
fn ties_go_to_the_lower_index() {
    assert_eq!(head_budget::rank_descending(&[1.0, 3.0, 3.0, 2.0, 3.0]), vec![1, 2, 4, 3, 0]);
    assert_eq!(head_budget::rank_descending(&[0.0, -0.0, 0.0]), vec![0, 1, 2]);
    // NaN does not panic.
    assert_eq!(head_budget::rank_descending(&[1.0, f32::NAN, 2.0]).len(), 3);
}

#[test]
fn adaptive_head_budgets_by_hand() {
    let sorted = matrix(2, 5, &[0.9, 0.8, 0.1, 0.05, 0.01, 0.7, 0.6, 0.5, 0.4, 0.3]);
    // Pool of 6: counts [2, 4]; floor(0.6) = 0; round(1.6) = 2, round(3.2) = 3.
    assert_eq!(head_budget::adaptive(&sorted, 3, 0.2), vec![2, 3]);
    // Pool of 8: counts [3, 5]; floor(2.0) = 2; 3.5 -> 4 and 4.5 -> 4 (half to even).
    assert_eq!(head_budget::adaptive(&sorted, 4, 0.5), vec![4, 4]);
    // alpha = 1: the floor alone; alpha = 0: the counts alone.
    assert_eq!(head_budget::adaptive(&sorted, 4, 1.0), vec![4, 4]);
    assert_eq!(head_budget::adaptive(&sorted, 4, 0.0), vec![3, 5]);
    // Never above n.
    assert_eq!(head_budget::adaptive(&sorted, 5, 0.0), vec![5, 5]);
    assert_eq!(head_budget::uniform(3, 7, 5), vec![5, 5, 5]);
}

#[test]
fn adaptive_pool_ties_go_to_the_lower_head() {
    let sorted = matrix(2, 3, &[0.5, 0.5, 0.1, 0.5, 0.2, 0.1]);
    assert_eq!(head_budget::adaptive(&sorted, 1, 0.0), vec![2, 0]);
}

// ---------------------------------------------------------------- layer budgets

#[test]
fn pyramid_budgets_by_hand() {
    // B = 128, w = 32: base 96, min 4, max 188, step 184 / 3 = 61.
    assert_eq!(layer_budget::pyramid(4, 96, 1000, 20), vec![188, 127, 66, 5]);
    // max >= n: max = 150, min = 192 - 150 = 42, step 36.
    assert_eq!(layer_budget::pyramid(4, 96, 150, 20), vec![150, 114, 78, 42]);
    assert_eq!(layer_budget::pyramid(2, 96, 100, 20), vec![100, 92]);
    assert_eq!(layer_budget::pyramid(1, 96, 1000, 20), vec![96]);
    assert_eq!(layer_budget::uniform(3, 96), vec![96, 96, 96]);
}

#[test]
fn entropy_budgets_by_hand() {
    assert_eq!(layer_budget::entropy(&[1.0, 3.0], 2, 10), vec![5, 15]);
    assert_eq!(layer_budget::entropy(&[1.0, 1.0, 1.0], 3, 10), vec![10, 10, 10]);
    assert_eq!(layer_budget::entropy(&[1.0, 2.0], 2, 10), vec![6, 13]);
    // The cascade's first step: one layer seen of three gets the whole total.
    assert_eq!(layer_budget::entropy(&[0.7], 3, 10), vec![30]);
    // All zero: uniform fallback.
    assert_eq!(layer_budget::entropy(&[0.0, 0.0], 2, 10), vec![10, 10]);
}

#[test]
fn normalized_entropy_by_hand() {
    let uniform = matrix(2, 4, &[1.0; 8]);
    assert!((layer_budget::normalized_entropy(&uniform) - 1.0).abs() < 1e-12);
    let one_hot = matrix(2, 2, &[0.0, 0.0, 5.0, 0.0]);
    assert!(layer_budget::normalized_entropy(&one_hot).abs() < 1e-12);
    // P = [1/4, 3/4]: -(1/4 ln 1/4 + 3/4 ln 3/4) / ln 2.
    let two = matrix(1, 2, &[1.0, 3.0]);
    let want = -(0.25f64 * 0.25f64.ln() + 0.75 * 0.75f64.ln()) / 2f64.ln();
    assert!((layer_budget::normalized_entropy(&two) - want).abs() < 1e-9);
    assert_eq!(layer_budget::normalized_entropy(&matrix(1, 1, &[1.0])), 0.0);
}

// ---------------------------------------------------------------- names and parameters

#[test]
fn policy_names_round_trip() {
    for p in PolicyName::ALL {
        assert_eq!(p.to_string().parse::<PolicyName>().unwrap(), p);
    }
    assert_eq!("LAVA".parse::<PolicyName>().unwrap(), PolicyName::Lava);
    assert_eq!("ada_snapkv".parse::<PolicyName>().unwrap(), PolicyName::AdaSnapKv);
    let err = "snap".parse::<PolicyName>().unwrap_err();
    assert!(matches!(&err, CacheError::InvalidParameters(m) if m.contains("lava-no-head")), "{err}");
    assert_eq!("avgpool".parse::<Pooling>().unwrap(), Pooling::AvgPool);
    assert!("minpool".parse::<Pooling>().is_err());
}

#[test]
fn compositions_follow_the_paper() {
    let c = PolicyName::Lava.composition().unwrap();
    assert_eq!((c.scorer, c.layers, c.heads), (Scorer::Lava, LayerAllocation::Entropy, HeadAllocation::Adaptive));
    let c = PolicyName::LavaNoLayer.composition().unwrap();
    assert_eq!((c.scorer, c.layers, c.heads), (Scorer::Lava, LayerAllocation::Uniform, HeadAllocation::Adaptive));
    let c = PolicyName::LavaNoHead.composition().unwrap();
    assert_eq!((c.scorer, c.layers, c.heads), (Scorer::Lava, LayerAllocation::Entropy, HeadAllocation::Uniform));
    let c = PolicyName::AdaPyramidKv.composition().unwrap();
    assert_eq!((c.scorer, c.layers, c.heads), (Scorer::SnapKv, LayerAllocation::Pyramid, HeadAllocation::Adaptive));
    assert!(PolicyName::Full.composition().is_none());
}

#[test]
fn defaults_are_the_reference_ones() {
    let c = PolicyConfig::new(PolicyName::SnapKv, 256);
    assert_eq!((c.budget, c.window, c.kernel_size, c.pooling), (256, 32, 7, Pooling::MaxPool));
    assert_eq!((c.floor_alpha, c.pyramid_beta, c.sinks), (0.2, 20, 4));
    assert!(c.validate().is_ok());
    assert!(PolicyConfig::default().validate().is_ok());
}

#[test]
fn invalid_parameters_are_errors() {
    let base = PolicyConfig::new(PolicyName::Lava, 128);
    let cases: Vec<(&str, PolicyConfig)> = vec![
        ("budget 0", PolicyConfig { budget: 0, ..base.clone() }),
        ("budget = window", PolicyConfig { budget: 32, ..base.clone() }),
        ("budget < window", PolicyConfig { budget: 10, ..base.clone() }),
        ("window 0", PolicyConfig { window: 0, ..base.clone() }),
        ("kernel 0", PolicyConfig { kernel_size: 0, ..base.clone() }),
        ("kernel even", PolicyConfig { kernel_size: 6, ..base.clone() }),
        ("alpha < 0", PolicyConfig { floor_alpha: -0.1, ..base.clone() }),
        ("alpha > 1", PolicyConfig { floor_alpha: 1.5, ..base.clone() }),
        ("alpha NaN", PolicyConfig { floor_alpha: f64::NAN, ..base.clone() }),
        ("beta 0", PolicyConfig { pyramid_beta: 0, ..base.clone() }),
        ("sinks", PolicyConfig { policy: PolicyName::Streaming, budget: 35, ..base.clone() }),
    ];
    for (what, c) in cases {
        match c.validate() {
            Err(CacheError::InvalidParameters(msg)) => assert!(!msg.is_empty(), "{what}"),
            other => panic!("{what}: expected InvalidParameters, got {other:?}"),
        }
    }
    // `full` ignores the budget.
    assert!(PolicyConfig { policy: PolicyName::Full, budget: 0, ..base.clone() }.validate().is_ok());
    assert!(PolicyConfig { policy: PolicyName::Streaming, budget: 36, ..base }.validate().is_ok());
}

// ---------------------------------------------------------------- select_positions

fn layers(seed: u64, count: usize, hq: usize, hkv: usize, n_tok: usize, d: usize) -> Vec<LayerQkv<common::B>> {
    let mut rng = Rng::new(seed);
    (0..count).map(|_| RandomLayer::new(&mut rng, hq, hkv, n_tok, d, 1.0).qkv()).collect()
}

fn config(policy: PolicyName, budget: usize, window: usize) -> PolicyConfig {
    PolicyConfig { window, ..PolicyConfig::new(policy, budget) }
}

#[test]
fn short_prompts_are_kept_whole() {
    for n_tok in [1, 5, 8, 9, 12] {
        let l = layers(1, 2, 4, 2, n_tok, 4);
        for policy in PolicyName::ALL {
            let sel = select_positions(&l, &config(policy, 12, 8)).unwrap();
            assert_eq!(sel.window, n_tok.min(8));
            for layer in &sel.layers {
                assert_eq!(layer.budget, n_tok - sel.window);
                for head in &layer.heads {
                    assert_eq!(head, &(0..n_tok).collect::<Vec<_>>(), "{policy} N={n_tok}");
                }
            }
        }
    }
}

#[test]
fn streaming_keeps_sinks_and_the_most_recent_tokens() {
    let l = layers(2, 2, 2, 1, 20, 4);
    let c = PolicyConfig { sinks: 2, ..config(PolicyName::Streaming, 10, 4) };
    let sel = select_positions(&l, &c).unwrap();
    let want: Vec<usize> = [0, 1].into_iter().chain(12..20).collect();
    for layer in &sel.layers {
        assert_eq!(layer.budget, 6);
        assert_eq!(layer.heads, vec![want.clone()]);
    }
}

#[test]
fn h2o_with_uniform_attention_keeps_the_earliest_tokens() {
    // Zero queries: earlier tokens collect more cumulative attention.
    let q = tensor3(vec![0.0; 2 * 10 * 2], [2, 10, 2]);
    let k = tensor3((0..20).map(|x| x as f32).collect(), [1, 10, 2]);
    let l = vec![LayerQkv::new(q, k.clone(), k)];
    let sel = select_positions(&l, &config(PolicyName::H2o, 5, 2)).unwrap();
    assert_eq!(sel.layers[0].heads, vec![vec![0, 1, 2, 8, 9]]);
}

#[test]
fn snapkv_keeps_what_the_window_attends_to() {
    // One head; the window query (position 9) points at keys 2 and 6.
    let (n_tok, d) = (10, 2);
    let mut k = vec![0.0; n_tok * d];
    k[2 * d] = 8.0;
    k[6 * d + 1] = 6.0;
    let mut q = vec![0.0; n_tok * d];
    q[9 * d] = 1.0;
    q[9 * d + 1] = 1.0;
    let l = vec![LayerQkv::new(tensor3(q, [1, n_tok, d]), tensor3(k.clone(), [1, n_tok, d]), tensor3(k, [1, n_tok, d]))];
    let c = PolicyConfig { kernel_size: 1, ..config(PolicyName::SnapKv, 3, 1) };
    let sel = select_positions(&l, &c).unwrap();
    assert_eq!(sel.layers[0].heads, vec![vec![2, 6, 9]]);
    assert_eq!(sel.layers[0].head_budgets, vec![2]);
}

#[test]
fn full_keeps_everything() {
    let l = layers(3, 3, 4, 2, 50, 4);
    let sel = select_positions(&l, &PolicyConfig::new(PolicyName::Full, 0)).unwrap();
    assert_eq!(sel.retained_tokens(), 3 * 2 * 50);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let c = PolicyConfig::new(PolicyName::Lava, 64);
    let empty: Vec<LayerQkv<common::B>> = Vec::new();
    assert!(matches!(select_positions(&empty, &c), Err(CacheError::InvalidShape(_))));
    // Query heads not a multiple of KV heads.
    let bad = layers(4, 1, 3, 2, 40, 4);
    assert!(matches!(select_positions(&bad, &c), Err(CacheError::InvalidShape(_))));
    // Layers of different lengths.
    let mut mixed = layers(5, 1, 4, 2, 40, 4);
    mixed.extend(layers(6, 1, 4, 2, 41, 4));
    assert!(matches!(select_positions(&mixed, &c), Err(CacheError::ShapeMismatch { .. })));
    // Values of the wrong shape.
    let mut l = layers(7, 1, 4, 2, 40, 4);
    l[0].v = tensor3(vec![0.0; 2 * 39 * 4], [2, 39, 4]);
    assert!(matches!(select_positions(&l, &c), Err(CacheError::ShapeMismatch { .. })));
    // Invalid parameters.
    let l = layers(8, 1, 4, 2, 40, 4);
    assert!(matches!(
        select_positions(&l, &PolicyConfig { kernel_size: 4, ..c }),
        Err(CacheError::InvalidParameters(_))
    ));
}
