//! The crate's selections equal those of an independent, naive re-implementation
//! of the reference behaviour (tests/reference/mod.rs) on random continuous inputs.

mod common;
mod reference;

use common::{RandomLayer, Rng};
use lava_cache::{select_positions, FloorRule, PolicyConfig, PolicyName, Pooling};
use reference::{reference_select, RefConfig, RefFloor, RefLayer, RefLayers, RefScorer};

fn ref_config(config: &PolicyConfig) -> RefConfig {
    let (scorer, layers, adaptive_heads) = match config.policy {
        PolicyName::SnapKv => (RefScorer::Snap, RefLayers::Uniform, false),
        PolicyName::PyramidKv => (RefScorer::Snap, RefLayers::Pyramid, false),
        PolicyName::AdaSnapKv => (RefScorer::Snap, RefLayers::Uniform, true),
        PolicyName::AdaPyramidKv => (RefScorer::Snap, RefLayers::Pyramid, true),
        PolicyName::Lava => (RefScorer::Lava, RefLayers::Entropy, true),
        PolicyName::LavaNoLayer => (RefScorer::Lava, RefLayers::Uniform, true),
        PolicyName::LavaNoHead => (RefScorer::Lava, RefLayers::Entropy, false),
        PolicyName::LavaMatched => (RefScorer::Lava, RefLayers::Entropy, true),
        PolicyName::Cake => (RefScorer::Cake, RefLayers::Cake, false),
        other => panic!("no reference for {other}"),
    };
    let floor = match config.effective_floor_rule() {
        FloorRule::Reference => RefFloor::Reference,
        FloorRule::Matched => RefFloor::Matched,
        FloorRule::Layer => RefFloor::Layer,
    };
    RefConfig {
        budget: config.budget,
        window: config.window,
        kernel: config.kernel_size,
        maxpool: config.pooling == Pooling::MaxPool,
        alpha: config.floor_alpha,
        beta: config.pyramid_beta,
        scorer,
        layers,
        adaptive_heads,
        floor,
    }
}

struct Case {
    hq: usize,
    hkv: usize,
    n_tok: usize,
    d: usize,
    layers: usize,
    window: usize,
    kernel: usize,
    qk_scale: f64,
}

const POLICIES: [PolicyName; 9] = [
    PolicyName::SnapKv,
    PolicyName::PyramidKv,
    PolicyName::AdaSnapKv,
    PolicyName::AdaPyramidKv,
    PolicyName::Lava,
    PolicyName::LavaNoLayer,
    PolicyName::LavaNoHead,
    PolicyName::LavaMatched,
    PolicyName::Cake,
];

/// Runs every policy, both poolings and the given budgets on one random model
/// state; returns how many layer selections were compared.
fn check_case(seed: u64, case: &Case, budgets: &[usize], alphas: &[f64]) -> usize {
    let mut rng = Rng::new(seed);
    let layers: Vec<RandomLayer> = (0..case.layers)
        .map(|_| RandomLayer::new(&mut rng, case.hq, case.hkv, case.n_tok, case.d, case.qk_scale))
        .collect();
    let qkv: Vec<_> = layers.iter().map(|l| l.qkv()).collect();
    let reference_layers: Vec<RefLayer> = layers
        .iter()
        .map(|l| RefLayer::from_flat(&l.q, &l.k, &l.v, l.hq, l.hkv, l.n, l.d))
        .collect();
    let mut compared = 0;
    for &policy in &POLICIES {
        for pooling in [Pooling::MaxPool, Pooling::AvgPool] {
            for &budget in budgets {
                for (&alpha, rule) in alphas.iter().flat_map(|a| [None, Some(FloorRule::Reference), Some(FloorRule::Matched), Some(FloorRule::Layer)].map(move |r| (a, r))) {
                    if rule.is_some() && config_is_uniform_heads(policy) {
                        continue;
                    }
                    let mut config = PolicyConfig::new(policy, budget);
                    config.window = case.window;
                    config.kernel_size = case.kernel;
                    config.pooling = pooling;
                    config.floor_alpha = alpha;
                    config.floor_rule = rule;
                    let got = select_positions(&qkv, &config).expect("selection");
                    let want = reference_select(&reference_layers, &ref_config(&config));
                    for (l, (g, w)) in got.layers.iter().zip(&want.kept).enumerate() {
                        assert_eq!(
                            &g.heads, w,
                            "seed {seed} policy {policy} {pooling} budget {budget} alpha {alpha} floor {rule:?} layer {l}"
                        );
                    }
                    let got_budgets: Vec<usize> = got.layers.iter().map(|l| l.budget).collect();
                    assert_eq!(got_budgets, want.budgets, "seed {seed} policy {policy} budget {budget} layer budgets");
                    compared += got.layers.len();
                }
            }
        }
    }
    compared
}

/// Policies whose heads are uniform: the floor rule does not apply.
fn config_is_uniform_heads(policy: PolicyName) -> bool {
    policy.composition().is_none_or(|c| c.heads == lava_cache::HeadAllocation::Uniform)
}

#[test]
fn matches_reference_mha() {
    // G = 1
    let case = Case { hq: 3, hkv: 3, n_tok: 96, d: 8, layers: 3, window: 8, kernel: 7, qk_scale: 1.5 };
    for seed in 0..3 {
        assert!(check_case(seed, &case, &[20, 40, 80], &[0.2]) > 0);
    }
}

#[test]
fn matches_reference_gqa_group_3() {
    let case = Case { hq: 6, hkv: 2, n_tok: 120, d: 8, layers: 4, window: 16, kernel: 5, qk_scale: 2.0 };
    for seed in 10..13 {
        check_case(seed, &case, &[24, 48, 100], &[0.2, 0.5]);
    }
}

#[test]
fn matches_reference_gqa_group_4() {
    let case = Case { hq: 8, hkv: 2, n_tok: 80, d: 16, layers: 3, window: 8, kernel: 7, qk_scale: 1.0 };
    for seed in 20..23 {
        check_case(seed, &case, &[16, 30, 60], &[0.2, 0.0, 1.0]);
    }
}

#[test]
fn matches_reference_gqa_group_8_single_kv_head() {
    let case = Case { hq: 8, hkv: 1, n_tok: 72, d: 8, layers: 3, window: 8, kernel: 3, qk_scale: 2.5 };
    for seed in 30..33 {
        check_case(seed, &case, &[12, 40], &[0.2]);
    }
}

#[test]
fn matches_reference_default_window_and_kernel() {
    // The reference setting: w = 32, kernel 7, maxpool / avgpool, alpha 0.2.
    let case = Case { hq: 4, hkv: 2, n_tok: 200, d: 8, layers: 4, window: 32, kernel: 7, qk_scale: 2.0 };
    for seed in 40..42 {
        check_case(seed, &case, &[48, 64, 128], &[0.2]);
    }
}
