//! GGUF images: header, metadata, tensor table, dequantisation, the model
//! configuration, the tokenizer and the GGUF-to-Hugging-Face weight mapping
//! (what `lava_llama::load_gguf` and `export_gguf_to_hf` do before allocating
//! the model).
#![no_main]

use lava_llama::gguf::GgufFile;
use lava_llama::{config_from_gguf, tokenizer_json_from_gguf, GgufSource, Tokenizer, WeightSource};
use libfuzzer_sys::fuzz_target;

/// Tensors larger than this are skipped: a 16 MiB f32 buffer per tensor is
/// what a tiny input may legitimately ask for; more is OOM by design.
const MAX_ELEMENTS: u64 = 1 << 22;

/// Hugging Face parameter names of layer `l` and their GGUF names.
const LAYER_PARAMS: [(&str, &str); 12] = [
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
];

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else { return };
    let small = |gguf_name: &str| file.tensors.get(gguf_name).is_some_and(|t| t.elements() <= MAX_ELEMENTS);

    for name in &file.tensor_order {
        if !small(name) {
            continue;
        }
        if let Ok(values) = file.dequantize(name) {
            assert_eq!(values.len() as u64, file.tensors[name].elements(), "tensor {name}");
        }
    }

    let _ = tokenizer_json_from_gguf(&file);
    if let Ok(tok) = Tokenizer::from_gguf(&file) {
        if let Ok(ids) = tok.encode("Hello, world! 123") {
            let _ = tok.decode(&ids);
        }
    }

    let Ok(config) = config_from_gguf(&file) else { return };
    let Ok(src) = GgufSource::new(&file, config.clone()) else { return };
    if small("rope_freqs.weight") {
        let _ = src.rope_freq_factors();
    }
    let mut names = vec![
        ("model.embed_tokens.weight".to_string(), "token_embd.weight".to_string()),
        ("model.norm.weight".to_string(), "output_norm.weight".to_string()),
        ("lm_head.weight".to_string(), "output.weight".to_string()),
    ];
    for l in 0..config.num_hidden_layers.min(4) {
        for (hf, gg) in LAYER_PARAMS {
            names.push((format!("model.layers.{l}.{hf}"), format!("blk.{l}.{gg}")));
        }
    }
    for (hf, gg) in names {
        if !small(&gg) {
            continue;
        }
        if let Ok(Some((shape, values))) = src.tensor(&hf) {
            assert_eq!(shape.iter().product::<usize>(), values.len(), "tensor {hf}");
        }
    }
});
