//! Hugging Face directories in f16 and bf16, sharded with an index, and
//! Llama-3.1 RoPE scaling.

use std::collections::BTreeMap;
use std::path::Path;

use burn_ndarray::NdArray;
use lava_cache::FullCache;
use lava_llama::gguf::GgmlType;
use lava_llama::tiny::{tiny_config, RandomWeights};
use lava_llama::{load_model, Llama, Llama3RopeScaling, LlamaConfig, Logits, Rope};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

type B = NdArray<f32>;

fn logits(model: &Llama<B>) -> Vec<f32> {
    let mut cache = FullCache::new(model.cache_shape(), 64, model.device()).expect("cache");
    model.forward(&[1, 7, 33, 60, 2], &mut cache, Logits::All).expect("forward").into_data().to_vec::<f32>().expect("f32")
}

/// Rewrites `dir/model.safetensors` as `shards` files in `dtype`, with an index.
fn reshard(dir: &Path, dtype: Dtype, shards: usize) {
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("read");
    let st = SafeTensors::deserialize(&bytes).expect("parse");
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let convert = |data: &[u8]| -> Vec<u8> {
        data.chunks_exact(4)
            .flat_map(|b| {
                let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                match dtype {
                    Dtype::F16 => half::f16::from_f32(x).to_le_bytes().to_vec(),
                    Dtype::BF16 => half::bf16::from_f32(x).to_le_bytes().to_vec(),
                    _ => x.to_le_bytes().to_vec(),
                }
            })
            .collect()
    };
    let mut weight_map = BTreeMap::new();
    let per = names.len().div_ceil(shards);
    for (i, chunk) in names.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = chunk
            .iter()
            .map(|n| {
                let t = st.tensor(n).expect("tensor");
                (n.clone(), t.shape().to_vec(), convert(t.data()))
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> =
            data.iter().map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).expect("view"))).collect();
        std::fs::write(dir.join(&file), safetensors::serialize(views, None).expect("serialize")).expect("write");
        for n in chunk {
            weight_map.insert(n.clone(), file.clone());
        }
    }
    std::fs::remove_file(dir.join("model.safetensors")).expect("rm");
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).expect("index");
}

#[test]
fn f16_bf16_and_sharded_directories_load() {
    let device = Default::default();
    let cfg = tiny_config(6, 2, false, true);
    let w = RandomWeights { config: cfg.clone(), seed: 9 };
    let tmp = tempfile::tempdir().expect("tempdir");
    let gguf = tmp.path().join("m.gguf");
    std::fs::write(&gguf, w.to_gguf(GgmlType::F32)).expect("write");
    let (reference, _) = load_model::<B>(&gguf, &device).expect("gguf");
    let want = logits(&reference);
    for (name, dtype, shards, tol) in [("f32x3", Dtype::F32, 3, 1e-5), ("f16x2", Dtype::F16, 2, 2e-2), ("bf16x1", Dtype::BF16, 1, 1e-1)] {
        let dir = tmp.path().join(name);
        lava_llama::export_gguf_to_hf(&gguf, &dir).expect("export");
        reshard(&dir, dtype, shards);
        let (model, _) = load_model::<B>(&dir, &device).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = logits(&model);
        let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < tol, "{name}: max logit error {err}");
    }
}

#[test]
fn llama3_rope_scaling_matches_hand_values() {
    // Llama 3.1: theta 500000, factor 8, low 1, high 4, original context 8192, D = 128.
    let mut cfg: LlamaConfig = tiny_config(2, 1, true, false);
    cfg.head_dim = 128;
    cfg.rope_theta = 500000.0;
    cfg.rope_scaling = Some(Llama3RopeScaling { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 8192 });
    let rope = Rope::new(&cfg);
    let (cos, sin) = rope.tables::<B>(1000, 1, &Default::default());
    let cos = cos.into_data().to_vec::<f32>().expect("f32");
    let sin = sin.into_data().to_vec::<f32>().expect("f32");
    let angle = |i: usize| sin[i].atan2(cos[i]) as f64;
    let inv = |i: usize| 1.0 / 500000f64.powf(2.0 * i as f64 / 128.0);
    let wrap = |a: f64| (a + std::f64::consts::PI).rem_euclid(2.0 * std::f64::consts::PI) - std::f64::consts::PI;
    // i = 0: wavelength 2*pi < 8192/4, unscaled.
    assert!((angle(0) - wrap(1000.0 * inv(0))).abs() < 1e-4);
    // i = 60: wavelength 2*pi/inv(60) > 8192 -> divided by 8.
    let w60 = 2.0 * std::f64::consts::PI / inv(60);
    assert!(w60 > 8192.0);
    assert!((angle(60) - wrap(1000.0 * inv(60) / 8.0)).abs() < 1e-4);
    // A frequency between the two: smooth interpolation.
    let i = (0..64).find(|&i| {
        let w = 2.0 * std::f64::consts::PI / inv(i);
        w > 2048.0 && w < 8192.0
    });
    let i = i.expect("a mid frequency exists");
    let w = 2.0 * std::f64::consts::PI / inv(i);
    let smooth = (8192.0 / w - 1.0) / (4.0 - 1.0);
    let f = (1.0 - smooth) * inv(i) / 8.0 + smooth * inv(i);
    assert!((angle(i) - wrap(1000.0 * f)).abs() < 1e-4, "pair {i}");
}
