//! Hugging Face `config.json` text through everything that builds a model
//! from it: parsing and validation (`LlamaConfig::from_hf_json`), the HF
//! loader (`hf::load_hf_dir`, whose shape checks against the safetensors
//! header must refuse a mismatching config before allocating anything), and,
//! for configs whose f32 weights are at most `MAX_WEIGHT_BYTES`, model
//! construction with random weights of the config's own shapes and a
//! three-token forward pass whose logits must be finite: a config that
//! validates must not give silent garbage.
//!
//! Run with `-malloc_limit_mb=512 -rss_limit_mb=1024`: a config whose sizes
//! reach an allocation before being checked against the file is a crash.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use burn_ndarray::NdArray;
use lava_cache::FullCache;
use lava_llama::gguf::GgmlType;
use lava_llama::tiny::{tiny_config, RandomWeights};
use lava_llama::{Llama, LlamaConfig, Logits, Rope};
use libfuzzer_sys::fuzz_target;

type B = NdArray<f32>;

/// Random-weight models are built only up to this size (1M f32 values).
const MAX_WEIGHT_BYTES: u64 = 4 << 20;

/// The tiny model (3 query heads, 1 KV head, tied) exported once: its
/// `model.safetensors` and `tokenizer.json` stay; `config.json` is fuzzed.
fn model_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = tempfile::Builder::new().prefix("lava-fuzz-hf-model-").tempdir().expect("temp dir").keep();
        let gguf = tmp.join("tiny.gguf");
        let image = RandomWeights { config: tiny_config(3, 1, true, false), seed: 1 }.to_gguf(GgmlType::F32);
        std::fs::write(&gguf, image).expect("write tiny.gguf");
        let dir = tmp.join("hf");
        lava_llama::export_gguf_to_hf(&gguf, &dir).expect("export tiny model");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let dir = model_dir();
    std::fs::write(dir.join("config.json"), text.as_bytes()).expect("write config.json");
    let _ = lava_llama::hf::load_hf_dir::<B>(dir, &Default::default());

    let Ok(cfg) = LlamaConfig::from_hf_json(&text) else { return };
    if cfg.f32_weight_bytes().is_none_or(|b| b > MAX_WEIGHT_BYTES) {
        return;
    }
    let device = Default::default();
    let src = RandomWeights { config: cfg.clone(), seed: 7 };
    let model = Llama::<B>::from_source(cfg.clone(), &src, Rope::new(&cfg), &device)
        .unwrap_or_else(|e| panic!("a validated config did not build: {e}\n{text}"));
    let n = cfg.max_position_embeddings.min(3);
    let ids: Vec<u32> = (0..n as u32).map(|i| i % cfg.vocab_size as u32).collect();
    let mut cache = FullCache::<B>::new(model.cache_shape(), n, &device).expect("cache");
    let logits = model.forward(&ids, &mut cache, Logits::Last).unwrap_or_else(|e| panic!("forward failed: {e}\n{text}"));
    let values = logits.into_data().to_vec::<f32>().expect("logits");
    assert!(values.iter().all(|v| v.is_finite()), "non-finite logits from a validated config:\n{text}");
});
