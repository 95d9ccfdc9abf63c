//! Property tests of `select_positions` over random shapes, parameters and inputs.

mod common;

use common::{RandomLayer, Rng};
use lava_cache::policy::{layer_budget, scorer::score_layer};
use lava_cache::{select_positions, HeadAllocation, LayerAllocation, PolicyConfig, PolicyName, Pooling};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Setup {
    seed: u64,
    hkv: usize,
    group: usize,
    n_tok: usize,
    d: usize,
    layers: usize,
    config: PolicyConfig,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        any::<u64>(),
        1usize..=3,
        prop::sample::select(vec![1usize, 2, 3, 4]),
        1usize..=90,
        prop::sample::select(vec![2usize, 4, 8]),
        1usize..=4,
        prop::sample::select(PolicyName::ALL.to_vec()),
        (1usize..=16, 1usize..=100, 0usize..=3, any::<bool>(), 0u32..=20, 1usize..=30, 0usize..=6),
    )
        .prop_map(|(seed, hkv, group, n_tok, d, layers, policy, (window, extra, kernel, max, alpha, beta, sinks))| {
            let budget = window + extra;
            let config = PolicyConfig {
                policy,
                budget,
                window,
                kernel_size: 2 * kernel + 1,
                pooling: if max { Pooling::MaxPool } else { Pooling::AvgPool },
                floor_alpha: alpha as f64 / 20.0,
                pyramid_beta: beta,
                sinks: sinks.min(extra),
                floor_rule: None,
            };
            Setup { seed, hkv, group, n_tok, d, layers, config }
        })
}

/// PyramidKV budgets recomputed from lava-algorithm.md §3, independently of the crate.
fn pyramid_formula(layers: usize, base: i64, n: i64, beta: i64) -> Vec<usize> {
    if layers == 1 {
        return vec![base as usize];
    }
    let mut min = base / beta;
    let mut max = 2 * base - min;
    if max >= n {
        max = n;
        min = 2 * base - max;
    }
    let diff = max - min;
    let div = layers as i64 - 1;
    let step = if diff >= 0 { diff / div } else { -((-diff + div - 1) / div) };
    (0..layers as i64).map(|l| (max - l * step) as usize).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn selections_are_well_formed(s in setup()) {
        let mut rng = Rng::new(s.seed);
        let hq = s.hkv * s.group;
        let layers: Vec<_> = (0..s.layers)
            .map(|_| RandomLayer::new(&mut rng, hq, s.hkv, s.n_tok, s.d, 1.5).qkv())
            .collect();
        let c = &s.config;
        prop_assert!(c.validate().is_ok());
        let sel = select_positions(&layers, c).unwrap();
        let w = c.window.min(s.n_tok);
        let n = s.n_tok - w;
        let base = c.budget - c.window;
        prop_assert_eq!(sel.window, w);
        prop_assert_eq!(sel.layers.len(), s.layers);
        let everything = c.policy == PolicyName::Full || n <= c.keep_all_prefix();
        for layer in &sel.layers {
            prop_assert_eq!(layer.heads.len(), s.hkv);
            prop_assert_eq!(layer.head_budgets.len(), s.hkv);
            for (head, &cap) in layer.heads.iter().zip(&layer.head_budgets) {
                // Ascending, no duplicates, in range.
                prop_assert!(head.windows(2).all(|p| p[0] < p[1]));
                prop_assert!(head.iter().all(|&p| p < s.n_tok));
                // The window is always kept.
                prop_assert!(head.ends_with(&(n..s.n_tok).collect::<Vec<_>>()));
                // Counts match head budgets.
                prop_assert!(cap <= n);
                prop_assert_eq!(head.len(), cap + w);
                if everything {
                    prop_assert_eq!(head.len(), s.n_tok);
                }
            }
            if everything {
                prop_assert_eq!(layer.budget, n);
            }
        }
        if everything {
            return Ok(());
        }
        let comp = c.composition().unwrap();
        // Layer budgets follow the documented formulas.
        let budgets: Vec<usize> = sel.layers.iter().map(|l| l.budget).collect();
        match comp.layers {
            LayerAllocation::Uniform => prop_assert!(budgets.iter().all(|&b| b == base)),
            LayerAllocation::Pyramid => prop_assert_eq!(
                budgets.clone(),
                pyramid_formula(s.layers, base as i64, n as i64, c.pyramid_beta as i64)
            ),
            LayerAllocation::Entropy => {
                let entropies: Vec<f64> = layers
                    .iter()
                    .map(|l| layer_budget::normalized_entropy(&score_layer(&l.q, &l.k, &l.v, c, comp.scorer).unwrap()))
                    .collect();
                let sum: f64 = entropies.iter().sum();
                if sum > 0.0 {
                    for (b, e) in budgets.iter().zip(&entropies) {
                        let want = (e / sum * (s.layers * base) as f64).floor() as usize;
                        prop_assert_eq!(*b, want);
                    }
                    let total: usize = budgets.iter().sum();
                    prop_assert!(total <= s.layers * base && total + s.layers >= s.layers * base);
                } else {
                    prop_assert!(budgets.iter().all(|&b| b == base));
                }
            }
            LayerAllocation::Preference => {
                // CAKE: the shares of L (B - w), adjusted to the prefix, never
                // add up to more than the total.
                let total: usize = budgets.iter().sum();
                prop_assert!(total <= s.layers * base, "CAKE budgets {:?} sum above {}", budgets, s.layers * base);
            }
        }
        // Head budgets.
        for layer in &sel.layers {
            let b = layer.budget;
            if b >= n {
                prop_assert!(layer.head_budgets.iter().all(|&h| h == n));
                continue;
            }
            match comp.heads {
                HeadAllocation::Uniform => prop_assert!(layer.head_budgets.iter().all(|&h| h == b)),
                HeadAllocation::Adaptive => {
                    // The floor of the policy's rule (lava-algorithm.md §4).
                    let floor_of = match c.effective_floor_rule() {
                        lava_cache::FloorRule::Reference => c.budget,
                        lava_cache::FloorRule::Matched => c.budget - c.window,
                        lava_cache::FloorRule::Layer => b,
                    };
                    let floor = (c.floor_alpha * floor_of as f64) as usize;
                    prop_assert!(layer.head_budgets.iter().all(|&h| h >= floor.min(n)));
                    let total: usize = layer.head_budgets.iter().sum();
                    let bound = ((1.0 - c.floor_alpha) * (s.hkv * b) as f64 + (s.hkv * floor) as f64).floor() as usize + s.hkv;
                    prop_assert!(total <= bound, "total {} for {} heads of budget {} (floor {})", total, s.hkv, b, floor);
                }
            }
        }
        if c.policy == PolicyName::Streaming {
            let keep: Vec<usize> = (0..c.sinks).chain(n - (base - c.sinks)..s.n_tok).collect();
            for layer in &sel.layers {
                prop_assert!(layer.heads.iter().all(|h| h == &keep));
            }
        }
    }

    #[test]
    fn larger_uniform_budgets_keep_supersets(seed in any::<u64>(), n_tok in 20usize..80, extra in 1usize..30) {
        let mut rng = Rng::new(seed);
        let layers: Vec<_> = (0..2).map(|_| RandomLayer::new(&mut rng, 4, 2, n_tok, 4, 1.5).qkv()).collect();
        for policy in [PolicyName::SnapKv, PolicyName::H2o, PolicyName::Streaming, PolicyName::LavaNoHead] {
            let small = PolicyConfig { window: 8, sinks: extra.min(4), ..PolicyConfig::new(policy, 8 + extra) };
            let large = PolicyConfig { budget: small.budget + 5, ..small.clone() };
            let a = select_positions(&layers, &small).unwrap();
            let b = select_positions(&layers, &large).unwrap();
            if policy == PolicyName::LavaNoHead {
                // Same scores, layer shares scale with the budget: each layer's
                // budget grows or stays, and so does what it keeps.
                for (la, lb) in a.layers.iter().zip(&b.layers) {
                    if lb.budget >= la.budget {
                        for (ha, hb) in la.heads.iter().zip(&lb.heads) {
                            prop_assert!(ha.iter().all(|p| hb.contains(p)));
                        }
                    }
                }
                continue;
            }
            for (la, lb) in a.layers.iter().zip(&b.layers) {
                for (ha, hb) in la.heads.iter().zip(&lb.heads) {
                    prop_assert!(ha.iter().all(|p| hb.contains(p)), "{}", policy);
                }
            }
        }
    }
}
