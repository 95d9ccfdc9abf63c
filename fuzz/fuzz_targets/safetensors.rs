//! `model.safetensors` of a Hugging Face directory, loaded through burn-store
//! by `lava_llama::hf::load_hf_dir`. The directory's `config.json` and
//! `tokenizer.json` are valid: the tiny model (3 query heads, 1 KV head, tied
//! embeddings) exported once at start-up; only the weights file is fuzzed.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use burn_ndarray::NdArray;
use lava_llama::gguf::GgmlType;
use lava_llama::tiny::{tiny_config, RandomWeights};
use libfuzzer_sys::fuzz_target;

fn model_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = tempfile::Builder::new().prefix("lava-fuzz-hf-").tempdir().expect("temp dir").keep();
        let gguf = tmp.join("tiny.gguf");
        let image = RandomWeights { config: tiny_config(3, 1, true, false), seed: 1 }.to_gguf(GgmlType::F32);
        std::fs::write(&gguf, image).expect("write tiny.gguf");
        let dir = tmp.join("hf");
        lava_llama::export_gguf_to_hf(&gguf, &dir).expect("export tiny model");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = model_dir();
    std::fs::write(dir.join("model.safetensors"), data).expect("write model.safetensors");
    let _ = lava_llama::hf::load_hf_dir::<NdArray<f32>>(dir, &Default::default());
});
