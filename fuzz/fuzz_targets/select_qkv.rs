//! `lava select` input: a safetensors image of per-layer q/k/v tensors, read by
//! `lava_cli::select::read_qkv`, then (when small) run through the LAVa policy
//! by `select_json`, checking the documented shape of the answer.
#![no_main]

use burn_ndarray::NdArray;
use lava_cache::{PolicyConfig, PolicyName};
use lava_cli::select::{read_qkv, select_json};
use libfuzzer_sys::fuzz_target;

/// Bound on the elements handed to the policy (the scorer is quadratic in N).
const MAX_ELEMENTS: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Ok(layers) = read_qkv("fuzz", data) else { return };
    let total: usize = layers.iter().flatten().map(|(_, v)| v.len()).sum();
    if total >= MAX_ELEMENTS {
        return;
    }
    let mut config = PolicyConfig::new(PolicyName::Lava, 8);
    config.window = 4;
    config.kernel_size = 3;
    let json = select_json::<NdArray<f32>>(&layers, &config, &Default::default())
        .unwrap_or_else(|e| panic!("read_qkv accepted the file but select failed: {e}"));

    let [h_kv, n_tok] = [layers[0][1].0[0], layers[0][1].0[1]];
    let window = json["window"].as_u64().expect("window") as usize;
    assert_eq!(json["prompt_len"].as_u64(), Some(n_tok as u64));
    assert_eq!(window, n_tok.min(4));
    let out = json["layers"].as_array().expect("layers");
    assert_eq!(out.len(), layers.len());
    for l in out {
        let heads = l["heads"].as_array().expect("heads");
        let budgets = l["head_budgets"].as_array().expect("head_budgets");
        assert_eq!(heads.len(), h_kv);
        assert_eq!(budgets.len(), h_kv);
        for (h, b) in heads.iter().zip(budgets) {
            let pos: Vec<u64> =
                h.as_array().expect("positions").iter().map(|p| p.as_u64().expect("position")).collect();
            assert_eq!(pos.len() as u64, b.as_u64().expect("budget") + window as u64, "{l}");
            assert!(pos.windows(2).all(|w| w[0] < w[1]), "positions not ascending: {pos:?}");
            assert!(pos.iter().all(|&p| (p as usize) < n_tok), "position out of range: {pos:?}");
        }
    }
});
