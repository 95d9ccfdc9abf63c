//! Hugging Face `config.json` text: parsing, validation, the derived parameter
//! shapes, and the `to_hf_json` round trip that `export-hf` relies on.
#![no_main]

use lava_llama::hf::expected_shape;
use lava_llama::LlamaConfig;
use libfuzzer_sys::fuzz_target;

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(cfg) = LlamaConfig::from_hf_json(&text) else { return };

    // Every parameter shape of the first and last layers (what loading and export ask for).
    let last = cfg.num_hidden_layers - 1;
    for name in ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] {
        let _ = expected_shape(&cfg, name);
    }
    for l in [0, last] {
        for p in [
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.o_proj.weight",
            "self_attn.q_proj.bias",
            "self_attn.k_proj.bias",
            "mlp.gate_proj.weight",
            "mlp.down_proj.weight",
            "input_layernorm.weight",
        ] {
            let _ = expected_shape(&cfg, &format!("model.layers.{l}.{p}"));
        }
    }

    // What export-hf writes must load back as the same configuration.
    let written = cfg.to_hf_json().to_string();
    let back = LlamaConfig::from_hf_json(&written)
        .unwrap_or_else(|e| panic!("to_hf_json output does not parse back: {e}\n{written}"));
    let floats = |c: &LlamaConfig| (c.rms_norm_eps, c.rope_theta, c.rope_scaling);
    let (mut a, mut b) = (cfg.clone(), back.clone());
    (a.rms_norm_eps, a.rope_theta, a.rope_scaling) = (0.0, 0.0, None);
    (b.rms_norm_eps, b.rope_theta, b.rope_scaling) = (0.0, 0.0, None);
    assert_eq!(a, b, "config changed in the to_hf_json round trip");
    let ((e1, t1, s1), (e2, t2, s2)) = (floats(&cfg), floats(&back));
    assert!(close(e1, e2) && close(t1, t2), "rms_norm_eps/rope_theta changed: {e1} {t1} vs {e2} {t2}");
    match (s1, s2) {
        (None, None) => {}
        (Some(x), Some(y)) => assert!(
            close(x.factor, y.factor)
                && close(x.low_freq_factor, y.low_freq_factor)
                && close(x.high_freq_factor, y.high_freq_factor)
                && x.original_max_position_embeddings == y.original_max_position_embeddings,
            "rope_scaling changed: {x:?} vs {y:?}"
        ),
        (x, y) => panic!("rope_scaling changed: {x:?} vs {y:?}"),
    }
});
