//! The head floor rules (`lava-algorithm.md` §4) and CAKE (§6): hand-checked
//! values, and the memory the rules spend on a synthetic SmolLM2-shaped model.

mod common;

use common::{RandomLayer, Rng};
use lava_cache::policy::layer_budget;
use lava_cache::policy::scorer::{cake_preference, cake_scores, ScoreMatrix};
use lava_cache::policy::head_budget;
use lava_cache::{select_positions, FloorRule, PolicyConfig, PolicyName};

// ---------------------------------------------------------------- floor rules by hand

#[test]
fn floor_rules_by_hand() {
    // alpha = 0.2, B = 128, w = 32, B_l = 50.
    assert_eq!(FloorRule::Reference.floor(0.2, 128, 32, 50), 25); // int(25.6)
    assert_eq!(FloorRule::Matched.floor(0.2, 128, 32, 50), 19); // int(19.2)
    assert_eq!(FloorRule::Layer.floor(0.2, 128, 32, 50), 10);
    // B = 64: 12 / 6 / floor(0.2 * 7) = 1.
    assert_eq!(FloorRule::Reference.floor(0.2, 64, 32, 7), 12);
    assert_eq!(FloorRule::Matched.floor(0.2, 64, 32, 7), 6);
    assert_eq!(FloorRule::Layer.floor(0.2, 64, 32, 7), 1);
    assert_eq!("matched".parse::<FloorRule>().unwrap(), FloorRule::Matched);
    assert!("layers".parse::<FloorRule>().is_err());
}

#[test]
fn policy_default_floor_rules() {
    let rule = |p| PolicyConfig::new(p, 128).effective_floor_rule();
    assert_eq!(rule(PolicyName::Lava), FloorRule::Reference);
    assert_eq!(rule(PolicyName::LavaNoLayer), FloorRule::Reference);
    assert_eq!(rule(PolicyName::LavaNoHead), FloorRule::Reference);
    assert_eq!(rule(PolicyName::LavaMatched), FloorRule::Matched);
    assert_eq!(rule(PolicyName::AdaSnapKv), FloorRule::Layer);
    assert_eq!(rule(PolicyName::AdaPyramidKv), FloorRule::Layer);
    let explicit = PolicyConfig { floor_rule: Some(FloorRule::Layer), ..PolicyConfig::new(PolicyName::Lava, 128) };
    assert_eq!(explicit.effective_floor_rule(), FloorRule::Layer);
    // lava-matched is lava with the matched floor.
    assert_eq!(PolicyName::LavaMatched.composition(), PolicyName::Lava.composition());
}

#[test]
fn adaptive_allocation_with_each_floor_by_hand() {
    let sorted = ScoreMatrix::new(2, 5, vec![0.9, 0.8, 0.1, 0.05, 0.01, 0.7, 0.6, 0.5, 0.4, 0.3]).unwrap();
    // B_l = 3, pool of 6: counts [2, 4]; alpha 0.2: 1.6 + f, 3.2 + f.
    assert_eq!(head_budget::adaptive_with_floor(&sorted, 3, 0.2, 0), vec![2, 3]);
    // f = 1 (e.g. int(0.2 * 8) with B = 8): round(2.6) = 3, round(4.2) = 4.
    assert_eq!(head_budget::adaptive_with_floor(&sorted, 3, 0.2, 1), vec![3, 4]);
    // A large floor is capped at n = 5.
    assert_eq!(head_budget::adaptive_with_floor(&sorted, 3, 0.2, 4), vec![5, 5]);
}

// ---------------------------------------------------------------- memory on a 30-layer, 3-KV-head model

fn smollm_like(seed: u64, n_tok: usize) -> Vec<lava_cache::LayerQkv<common::B>> {
    let mut rng = Rng::new(seed);
    (0..30).map(|_| RandomLayer::new(&mut rng, 9, 3, n_tok, 16, 2.0).qkv()).collect()
}

#[test]
fn matched_floor_spends_the_nominal_budget_and_the_reference_floor_overspends() {
    let n_tok = 700;
    let layers = smollm_like(5, n_tok);
    let (heads, depth, w, alpha) = (3usize, 30usize, 32usize, 0.2f64);
    for budget in [64usize, 128, 256] {
        let n = n_tok - w;
        let nominal = depth * heads * (budget - w);
        let prefix_tokens = |sel: &lava_cache::Selection| -> usize { sel.layers.iter().flat_map(|l| &l.head_budgets).sum() };
        let budgets = |s: &lava_cache::Selection| s.layers.iter().map(|l| l.budget).collect::<Vec<_>>();
        let matched = select_positions(&layers, &PolicyConfig::new(PolicyName::LavaMatched, budget)).unwrap();
        let floor = (alpha * (budget - w) as f64) as usize;
        // Per layer: the pool's (1 - alpha) H B_l plus H floors, up to each head's rounding.
        for (l, layer) in matched.layers.iter().enumerate() {
            if layer.budget >= n {
                continue;
            }
            let total = layer.head_budgets.iter().sum::<usize>() as f64;
            let want = (1.0 - alpha) * (heads * layer.budget) as f64 + (heads * floor) as f64;
            assert!((total - want).abs() <= heads as f64 / 2.0 + 1e-9, "B={budget} layer {l}: {total} kept, {want} by the rule");
        }
        // The model: the nominal L H (B - w) up to rounding: the layer shares are
        // floored (under a token per layer and head) and so is alpha (B - w).
        let got = prefix_tokens(&matched);
        let frac = alpha * (budget - w) as f64 - floor as f64;
        let slack = (depth * heads) as f64 * (1.0 + frac);
        assert!(got <= nominal + depth * heads / 2 && (nominal as f64 - got as f64) <= slack, "B={budget}: {got} for nominal {nominal}");
        if budget >= 128 {
            assert!(got.abs_diff(nominal) * 100 <= nominal, "B={budget}: lava-matched keeps {got} for nominal {nominal}");
        }
        // lava (reference floor int(alpha B)): same layer budgets, about alpha * w
        // more per head and layer than matched.
        let reference = select_positions(&layers, &PolicyConfig::new(PolicyName::Lava, budget)).unwrap();
        assert_eq!(budgets(&reference), budgets(&matched), "B={budget}: the floor does not move layer budgets");
        let over = prefix_tokens(&reference) as f64 - got as f64;
        let expected = (1.0 - 0.0) * ((alpha * budget as f64) as usize - floor) as f64 * (depth * heads) as f64;
        assert!((over - expected).abs() <= (depth * heads) as f64 / 2.0, "B={budget}: reference keeps {over} more than matched, {expected} expected");
        // The layer rule (the Ada-KV floor, the crate's former LAVa floor): same
        // layer budgets, other heads.
        let layer_rule = select_positions(
            &layers,
            &PolicyConfig { floor_rule: Some(FloorRule::Layer), ..PolicyConfig::new(PolicyName::Lava, budget) },
        )
        .unwrap();
        assert_eq!(budgets(&layer_rule), budgets(&matched));
        let differ = reference.layers.iter().zip(&layer_rule.layers).filter(|(a, b)| a.heads != b.heads).count();
        assert!(differ > 0, "B={budget}: the reference and layer floors keep the same tokens");
    }
}

// ---------------------------------------------------------------- CAKE by hand

#[test]
fn cake_scores_by_hand() {
    // One query head, one KV head, r = 2 window queries, n = 3 prefix tokens.
    // A = [[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]] (rows: queries).
    let attn = [0.5f32, 0.3, 0.2, 0.1, 0.1, 0.8];
    let (scores, pref) = cake_scores(&attn, 1, 2, 1).unwrap();
    // mean = [0.3, 0.2, 0.5]; unbiased var = [0.08, 0.02, 0.18];
    // m + 200 v = [16.3, 4.2, 36.5]; avgpool 5 (pad 2, / 5): [20.5 / 5 * ... ].
    let token = [16.3f64, 4.2, 36.5];
    let want = [(token[0] + token[1] + token[2]) / 5.0, (token[0] + token[1] + token[2]) / 5.0, (token[0] + token[1] + token[2]) / 5.0];
    for (g, w) in scores.data().iter().zip(want) {
        assert!((*g as f64 - w).abs() < 1e-4, "{g} vs {w}");
    }
    // H = -sum A ln(A + 1e-10), V = 0.08 + 0.02 + 0.18 = 0.28.
    let h: f64 = attn.iter().map(|&a| -(a as f64) * ((a as f64) + 1e-10).ln()).sum();
    assert!((pref - h * 0.28).abs() < 1e-6, "{pref} vs {}", h * 0.28);
    assert!((cake_preference(2.0, 0.5) - 1.0).abs() < 1e-12);
}

#[test]
fn cake_scores_average_the_group_and_pool_each_position() {
    // Two query heads sharing one KV head, r = 2, n = 7: the pooled scores of
    // the two heads are averaged.
    let mut rng = Rng::new(3);
    let attn: Vec<f32> = (0..2 * 2 * 7).map(|_| rng.unit() as f32).collect();
    let (scores, _) = cake_scores(&attn, 2, 2, 1).unwrap();
    let token = |h: usize, j: usize| {
        let (a, b) = (attn[h * 14 + j] as f64, attn[h * 14 + 7 + j] as f64);
        let m = (a + b) / 2.0;
        m + 200.0 * ((a - m).powi(2) + (b - m).powi(2))
    };
    for j in 0..7usize {
        let pooled = |h: usize| (j.saturating_sub(2)..(j + 3).min(7)).map(|t| token(h, t)).sum::<f64>() / 5.0;
        let want = (pooled(0) + pooled(1)) / 2.0;
        assert!((scores.data()[j] as f64 - want).abs() < 1e-3 * want.max(1.0), "j {j}: {} vs {want}", scores.data()[j]);
    }
    // A single window query has no variance.
    let (one, _) = cake_scores(&[0.2, 0.8], 1, 1, 1).unwrap();
    assert!((one.data()[0] - 0.2).abs() < 1e-6);
}

#[test]
fn cake_layer_budgets_by_hand() {
    // Preferences 1 : 2 : 1 of L (B - w) = 3 * 10 = 30: 7, 15, 7 (floor), then the
    // remainder 1 to the first layer below n: 8, 15, 7.
    assert_eq!(layer_budget::preference(&[1.0, 2.0, 1.0], 3, 10, 100), vec![8, 15, 7]);
    // n = 12 caps the second layer: its excess 3 goes to the two others (1
    // each, the remainder 1 to the first): 9, 12, 8 = 29; the 1 short of 30
    // goes to the first layer below n: 10, 12, 8.
    assert_eq!(layer_budget::preference(&[1.0, 2.0, 1.0], 3, 10, 12), vec![10, 12, 8]);
    // Every layer capped: nothing to spread.
    assert_eq!(layer_budget::adjust_to_prefix(vec![20, 20], 40, 5), vec![5, 5]);
    // Too many tokens: removed from the layers above 1.
    assert_eq!(layer_budget::adjust_to_prefix(vec![6, 6, 1], 10, 100), vec![4, 5, 1]);
    // Zero preferences: uniform.
    assert_eq!(layer_budget::preference(&[0.0, 0.0], 2, 10, 100), vec![10, 10]);
}

#[test]
fn cake_keeps_prompts_up_to_b_plus_w_whole() {
    let mut rng = Rng::new(9);
    // B = 24, w = 8: N = 32 = B + w is kept whole (n = 24 = B); other policies compress it.
    let layers: Vec<_> = (0..2).map(|_| RandomLayer::new(&mut rng, 4, 2, 32, 8, 1.5).qkv()).collect();
    let cake = PolicyConfig { window: 8, ..PolicyConfig::new(PolicyName::Cake, 24) };
    let sel = select_positions(&layers, &cake).unwrap();
    assert_eq!(sel.retained_tokens(), 2 * 2 * 32);
    let snap = PolicyConfig { window: 8, ..PolicyConfig::new(PolicyName::SnapKv, 24) };
    assert_eq!(select_positions(&layers, &snap).unwrap().retained_tokens(), 2 * 2 * 24);
    // One token more and CAKE compresses to about the budget.
    let layers: Vec<_> = (0..2).map(|_| RandomLayer::new(&mut rng, 4, 2, 33, 8, 1.5).qkv()).collect();
    let sel = select_positions(&layers, &cake).unwrap();
    assert!(sel.retained_tokens() <= 2 * 2 * 24, "{}", sel.retained_tokens());
}
