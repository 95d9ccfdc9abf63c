//! A policy is a composition: every preset, spelled as its parts
//! (`scorer+layers+heads`), keeps exactly what the preset keeps, and a
//! composition no preset names runs through the same cache.

mod common;

use common::{RandomLayer, Rng, B};
use lava_cache::{
    select_positions, CacheShape, Composition, CompressedCache, HeadAllocation, KvCache, LayerAllocation, PolicyConfig,
    PolicyName, Scorer,
};

#[test]
fn presets_spelled_as_compositions_keep_the_same_tokens() {
    let (n_layers, hq, hkv, d, n_tok) = (4, 8, 2, 8, 100);
    let shape = CacheShape { layers: n_layers, query_heads: hq, kv_heads: hkv, head_dim: d };
    let mut rng = Rng::new(7);
    let layers: Vec<RandomLayer> = (0..n_layers).map(|_| RandomLayer::new(&mut rng, hq, hkv, n_tok, d, 2.0)).collect();
    let qkv: Vec<_> = layers.iter().map(|l| l.qkv()).collect();
    let run = |config: &PolicyConfig| {
        let mut cache = CompressedCache::<B>::new(shape, config.clone(), 1000, &common::device()).unwrap();
        for (l, layer) in qkv.iter().enumerate() {
            cache.attend(l, layer.q.clone(), layer.k.clone(), layer.v.clone()).unwrap();
        }
        (0..n_layers).map(|l| (cache.kept_positions(l).unwrap(), cache.layer_budget(l))).collect::<Vec<_>>()
    };
    for preset in PolicyName::ALL.into_iter().filter(|p| *p != PolicyName::Full) {
        let parts = preset.composition().unwrap();
        let spelled: PolicyName = parts.to_string().parse().unwrap();
        assert_eq!(spelled, PolicyName::Custom(parts));
        for budget in [16, 40] {
            let want = PolicyConfig { window: 8, sinks: 2, ..PolicyConfig::new(preset, budget) };
            // The preset's own floor; everything else is the composition's.
            let custom = PolicyConfig { policy: spelled, floor_rule: Some(want.effective_floor_rule()), ..want.clone() };
            assert_eq!(run(&custom), run(&want), "{preset} as {spelled}, B={budget}");
        }
    }

    // A composition no preset names: LAVa scores with PyramidKV's layers and uniform heads.
    let new = Composition { scorer: Scorer::Lava, layers: LayerAllocation::Pyramid, heads: HeadAllocation::Uniform };
    let config = PolicyConfig { window: 8, ..PolicyConfig::new(PolicyName::Custom(new), 24) };
    config.validate().unwrap();
    assert_eq!(config.effective_floor_rule(), lava_cache::FloorRule::Layer);
    let kept = run(&config);
    let selected = select_positions(&qkv, &config).unwrap();
    for (l, sel) in selected.layers.iter().enumerate() {
        assert_eq!(kept[l].0, sel.heads, "layer {l}");
    }
    let pyramid = run(&PolicyConfig { window: 8, ..PolicyConfig::new(PolicyName::PyramidKv, 24) });
    let lava_no_head = run(&PolicyConfig { window: 8, ..PolicyConfig::new(PolicyName::LavaNoHead, 24) });
    // Pyramid budgets (PyramidKV's), LAVa's choice of tokens: neither preset's cache.
    for l in 0..n_layers {
        assert_eq!(kept[l].1, pyramid[l].1, "layer {l}: pyramid budgets");
    }
    assert_ne!(kept, pyramid);
    assert_ne!(kept, lava_no_head);
}

#[test]
fn compositions_parse_and_print() {
    let p: PolicyName = " LAVA+Pyramid+uniform ".parse().unwrap();
    assert_eq!(p.to_string(), "lava+pyramid+uniform");
    assert_eq!(p.as_str(), "custom");
    for (bad, expect) in [
        ("lava+pyramid", "not a composition"),
        ("lava+pyramid+uniform+x", "not a composition"),
        ("snap+uniform+uniform", "unknown scorer 'snap'"),
        ("lava+flat+uniform", "unknown layer allocation 'flat'"),
        ("lava+entropy+greedy", "unknown head allocation 'greedy'"),
    ] {
        let err = bad.parse::<PolicyName>().unwrap_err().to_string();
        assert!(err.contains(expect), "{bad}: {err}");
    }
    let err = "lavaa".parse::<PolicyName>().unwrap_err().to_string();
    assert!(err.contains("scorer+layers+heads"), "{err}");
    // The streaming scorer's sinks are checked whatever the composition.
    let streaming: PolicyName = "streaming+pyramid+adaptive".parse().unwrap();
    let c = PolicyConfig { sinks: 200, ..PolicyConfig::new(streaming, 64) };
    assert!(c.validate().unwrap_err().to_string().contains("sinks"));
}
