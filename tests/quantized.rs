//! Native quantized weights (`WeightFormat::Native`, flex) against the same
//! file dequantized to f32: tiny random models in each 32-element block type
//! and F16, tied and untied heads, q/k/v bias on and off.

use lava_cache::FullCache;
use lava_llama::gguf::GgmlType;
use lava_llama::tiny::{tiny_config, RandomWeights};
use lava_llama::{load_gguf_with, LlamaConfig, Logits, WeightFormat};

type B = burn_flex::Flex<f32>;

/// Tiny, with every matrix width a multiple of 32 (the block size).
fn config(tied: bool, bias: bool) -> LlamaConfig {
    let mut c = tiny_config(4, 2, tied, bias);
    c.intermediate_size = 64;
    c
}

fn logits(path: &std::path::Path, format: WeightFormat, tokens: &[u32], threads: usize) -> (Vec<f32>, bool) {
    let device = burn_flex::FlexDevice;
    let (model, _) = load_gguf_with::<B>(path, &device, format).expect("load");
    let model = model.with_matvec_split(threads);
    let mut cache = FullCache::new(model.cache_shape(), 256, &device).expect("cache");
    let out = model.forward(tokens, &mut cache, Logits::All).expect("forward");
    let mut v = out.into_data().to_vec::<f32>().expect("logits");
    // Then two decode steps.
    for &t in &tokens[..2] {
        v.extend(model.forward(&[t], &mut cache, Logits::Last).expect("decode").into_data().to_vec::<f32>().expect("logits"));
    }
    (v, model.is_quantized())
}

#[test]
fn native_weights_match_dequantized_f32() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens: Vec<u32> = (0..20).map(|i| (i * 7 + 3) % 64).collect();
    for kind in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::F16] {
        for (tied, bias) in [(true, false), (false, false), (true, true), (false, true)] {
            let path = dir.path().join(format!("{}-{tied}-{bias}.gguf", kind.name()));
            std::fs::write(&path, RandomWeights { config: config(tied, bias), seed: 5 }.to_gguf(kind)).expect("write");
            let (want, q0) = logits(&path, WeightFormat::F32, &tokens, 1);
            let (got, q1) = logits(&path, WeightFormat::Native, &tokens, 1);
            let (got3, _) = logits(&path, WeightFormat::Native, &tokens, 3);
            assert_eq!(got, got3, "{kind:?}: threads");
            assert!(!q0 && q1, "{kind:?}: formats");
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            eprintln!("{kind:?} tied={tied} bias={bias}: max |logit diff| {err} of scale {scale}");
            // F16 keeps f32 activations: only summation order differs. The
            // block types quantize the activations to 8 bits per block (as
            // llama.cpp does): on these random 2-layer models that moves the
            // logits by up to 6% of their largest magnitude.
            let tol = if kind == GgmlType::F16 { 1e-5 } else { 0.08 };
            assert!(err <= tol * scale, "{kind:?} tied={tied} bias={bias}: max |logit diff| {err} of scale {scale}");
        }
    }
}
