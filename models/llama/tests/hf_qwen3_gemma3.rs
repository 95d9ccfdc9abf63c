//! Hugging Face directories of Qwen3 and Gemma 3: a tiny directory written here
//! (`config.json` with each family's own fields, as its `transformers` config spells them;
//! `model.safetensors` of random weights under Hugging Face names, Gemma's norm gains stored
//! as `weight` for its `1 + weight`; a `tokenizer.json`) gives the same logits as the tiny
//! GGUF file of the same weights (`lava_llama::tiny`, which stores Gemma's gains as the sum,
//! as llama.cpp's converter does). The Gemma prompt is longer than its window of 4, so its
//! local layers mask.

use std::path::Path;

use burn_ndarray::NdArray;
use lava_cache::{FullCache, KvCache, SlidingWindowCache};
use lava_llama::gguf::GgmlType;
use lava_llama::tiny::{tiny_config, tiny_gemma3_config, RandomWeights};
use lava_llama::{load_model, Llama, LlamaConfig, Logits};
use safetensors::{tensor::TensorView, Dtype};

type B = NdArray<f32>;

const PROMPT: [u32; 10] = [1, 7, 33, 60, 2, 9, 41, 13, 5, 22];

fn logits(model: &Llama<B>) -> Vec<f32> {
    let device = model.device().clone();
    let windows = model.layer_windows();
    let mut cache: Box<dyn KvCache<B>> = if windows.iter().all(Option::is_none) {
        Box::new(FullCache::new(model.cache_shape(), 64, &device).expect("cache"))
    } else {
        Box::new(
            SlidingWindowCache::new(model.cache_shape(), windows, &device, |s| Ok(Box::new(FullCache::new(s, 64, &device)?))).expect("cache"),
        )
    };
    model.forward(&PROMPT, cache.as_mut(), Logits::All).expect("forward").into_data().to_vec::<f32>().expect("f32")
}

/// Writes the GGUF of `w` and the Hugging Face directory of the same weights with
/// `config_json`; returns the largest logit difference between the two loaded models.
fn compare(w: &RandomWeights, config_json: serde_json::Value, gemma_norms: bool) -> f32 {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gguf = tmp.path().join("m.gguf");
    std::fs::write(&gguf, w.to_gguf(GgmlType::F32)).expect("write gguf");
    let device = Default::default();
    let (reference, tok) = load_model::<B>(&gguf, &device).expect("gguf loads");
    let dir = tmp.path().join("hf");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("config.json"), config_json.to_string()).expect("config");
    std::fs::write(dir.join("tokenizer.json"), tok.to_json()).expect("tokenizer");
    write_weights(&dir, &w.config, w, gemma_norms);
    let (model, _) = load_model::<B>(&dir, &device).unwrap_or_else(|e| panic!("the directory does not load: {e}"));
    assert_eq!(model.config.layer_windows(), reference.config.layer_windows());
    let (a, b) = (logits(&reference), logits(&model));
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// `model.safetensors`: every parameter under its Hugging Face name, f32; with `gemma_norms`
/// a norm's gain `g` is stored as `g - 1`.
fn write_weights(dir: &Path, c: &LlamaConfig, w: &RandomWeights, gemma_norms: bool) {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = lava_llama::hf::parameter_names(c)
        .into_iter()
        .map(|name| {
            let shape = lava_llama::hf::expected_shape(c, &name).expect("shape");
            let mut v = w.values(&name, shape.iter().product());
            if gemma_norms && name.ends_with("norm.weight") {
                v.iter_mut().for_each(|x| *x -= 1.0);
            }
            (name, shape, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> =
        data.iter().map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).expect("view"))).collect();
    std::fs::write(dir.join("model.safetensors"), safetensors::serialize(views, None).expect("serialize")).expect("write");
}

#[test]
fn a_qwen3_directory_computes_its_gguf() {
    let config = LlamaConfig { model_type: "qwen3".into(), qk_norm: true, ..tiny_config(4, 2, false, false) };
    let w = RandomWeights { config: config.clone(), seed: 21 };
    let json = serde_json::json!({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 8, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
        "tie_word_embeddings": false, "attention_bias": false, "hidden_act": "silu",
        "sliding_window": 4, "use_sliding_window": false,
    });
    let err = compare(&w, json, false);
    assert!(err < 1e-4, "max logit difference {err}");
}

#[test]
fn a_gemma3_directory_computes_its_gguf() {
    let config = tiny_gemma3_config(4, 4, 2);
    let w = RandomWeights { config, seed: 22 };
    // transformers' Gemma3TextConfig fields; layer_types: every 2nd layer global.
    let json = serde_json::json!({
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 8, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
        "max_position_embeddings": 256, "sliding_window": 4, "query_pre_attn_scalar": 8,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        "hidden_activation": "gelu_pytorch_tanh", "rope_scaling": null,
    });
    let err = compare(&w, json.clone(), true);
    assert!(err < 1e-4, "max logit difference {err}");
    // The older spelling of the pattern, and a multimodal config's text_config, read the same.
    let mut older = json.clone();
    older.as_object_mut().unwrap().remove("layer_types");
    older["sliding_window_pattern"] = 2.into();
    let wrapped = serde_json::json!({"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "text_config": older});
    assert!(compare(&w, wrapped, true) < 1e-4);
    // A pattern lava cannot run is refused in a sentence naming it.
    let mut odd = json;
    odd["layer_types"] = serde_json::json!(["full_attention", "sliding_attention", "sliding_attention", "full_attention"]);
    let e = LlamaConfig::from_hf_json(&odd.to_string()).expect_err("irregular layer_types");
    assert!(e.to_string().contains("layer_types"), "{e}");
}
