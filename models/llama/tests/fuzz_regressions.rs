//! Bad-input robustness of the GGUF and Hugging Face readers: inputs found by
//! the fuzzers in `fuzz/` (kept as regression tests), and a bounded,
//! deterministic mutation loop over valid tiny GGUF images that runs in the
//! normal suite. None of these may panic: bad input must give an error.
//!
//! With `LAVA_FUZZ_CORPUS=<dir>` set, `write_fuzz_seeds` also writes the seed
//! corpus of the `gguf`, `hf_config` and `safetensors` fuzz targets under
//! `<dir>/<target>/` (see `fuzz/README.md`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use lava_llama::gguf::{GgmlType, GgufFile};
use lava_llama::tiny::{tiny_config, RandomWeights};
use lava_llama::{config_from_gguf, tokenizer_json_from_gguf, GgufSource, LlamaConfig, Tokenizer, WeightSource};

/// Same bound as the `gguf` fuzz target: bigger tensors are OOM by design.
const MAX_ELEMENTS: u64 = 1 << 22;

fn tiny_gguf(kind: GgmlType) -> Vec<u8> {
    RandomWeights { config: tiny_config(3, 1, true, false), seed: 1 }.to_gguf(kind)
}

/// What the `gguf` fuzz target does: parse, dequantise every (bounded) tensor,
/// build the config and the tokenizer, read the weights under their Hugging
/// Face names. Errors are fine; panics are not.
fn exercise_gguf(bytes: Vec<u8>) {
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf", bytes) else { return };
    let small = |n: &str| file.tensors.get(n).is_some_and(|t| t.elements() <= MAX_ELEMENTS);
    for name in &file.tensor_order {
        if small(name) {
            if let Ok(v) = file.dequantize(name) {
                assert_eq!(v.len() as u64, file.tensors[name].elements(), "{name}");
            }
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
    let mut names = vec![
        ("model.embed_tokens.weight".to_string(), "token_embd.weight".to_string()),
        ("lm_head.weight".to_string(), "output.weight".to_string()),
    ];
    for l in 0..config.num_hidden_layers.min(2) {
        for (hf, gg) in [
            ("self_attn.q_proj.weight", "attn_q.weight"),
            ("self_attn.k_proj.weight", "attn_k.weight"),
            ("self_attn.q_proj.bias", "attn_q.bias"),
            ("mlp.down_proj.weight", "ffn_down.weight"),
        ] {
            names.push((format!("model.layers.{l}.{hf}"), format!("blk.{l}.{gg}")));
        }
    }
    for (hf, gg) in names {
        if small(&gg) {
            if let Ok(Some((shape, values))) = src.tensor(&hf) {
                assert_eq!(shape.iter().product::<usize>(), values.len(), "{hf}");
            }
        }
    }
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values that stress lengths, counts, dimensions, type ids and offsets.
const INTERESTING: [u64; 12] = [0, 1, 2, 3, 31, 32, 0xff, 1 << 31, 1 << 32, 1 << 40, 1 << 62, u64::MAX];

/// One to four random edits; most land in the first `hot` bytes (header,
/// metadata, tensor table), where the parser's decisions are made.
fn mutate(rng: &mut Rng, base: &[u8], hot: usize) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let span = if rng.below(4) == 0 { b.len() } else { hot.min(b.len()) };
        let at = rng.below(span.max(1));
        match rng.below(7) {
            0 | 1 => {
                if let Some(x) = b.get_mut(at) {
                    *x ^= 1 << rng.below(8);
                }
            }
            2 => {
                if let Some(x) = b.get_mut(at) {
                    *x = rng.next() as u8;
                }
            }
            3 => {
                let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                let w = if rng.below(2) == 0 { 8 } else { 4 };
                for (i, byte) in v.iter().take(w).enumerate() {
                    if let Some(x) = b.get_mut(at + i) {
                        *x = *byte;
                    }
                }
            }
            4 => b.truncate(at),
            5 => {
                let n = 1 + rng.below(16);
                let ins: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                let at = at.min(b.len());
                b.splice(at..at, ins);
            }
            _ => {
                let end = (at + 1 + rng.below(32)).min(b.len());
                if at < end {
                    b.drain(at..end);
                }
            }
        }
    }
    b
}

#[test]
fn random_mutations_of_tiny_gguf_never_panic() {
    let bases: Vec<Vec<u8>> = [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F32, GgmlType::F16]
        .into_iter()
        .map(tiny_gguf)
        .collect();
    for base in &bases {
        exercise_gguf(base.clone());
    }
    let mut failures = Vec::new();
    for i in 0..2000u64 {
        let seed = 0x9e37_79b9_7f4a_7c15 ^ i.wrapping_mul(0x1000_0000_01b3);
        let mut rng = Rng(seed | 1);
        let base = &bases[i as usize % bases.len()];
        let bytes = mutate(&mut rng, base, 4096);
        if catch_unwind(AssertUnwindSafe(|| exercise_gguf(bytes))).is_err() {
            failures.push((i, seed));
        }
    }
    assert!(failures.is_empty(), "GGUF mutations that panicked (iteration, rng seed): {failures:?}");
}

/// Writes the seed corpora when `LAVA_FUZZ_CORPUS` names a directory.
#[test]
fn write_fuzz_seeds() {
    let Some(root) = std::env::var_os("LAVA_FUZZ_CORPUS") else { return };
    let root = Path::new(&root);
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(name), bytes).expect("write seed");
    };
    let main = RandomWeights { config: tiny_config(3, 1, true, false), seed: 1 };
    for (kind, tag) in [
        (GgmlType::Q4_1, "q4_1"),
        (GgmlType::Q4_0, "q4_0"),
        (GgmlType::Q8_0, "q8_0"),
        (GgmlType::F16, "f16"),
        (GgmlType::BF16, "bf16"),
        (GgmlType::F32, "f32"),
    ] {
        put("gguf", &format!("tiny_h3_kv1_tied_{tag}.gguf"), &main.to_gguf(kind));
    }
    // Qwen2 layout: q/k/v biases, untied output, no Q/K row permutation.
    let qwen = RandomWeights { config: tiny_config(2, 2, false, true), seed: 2 };
    put("gguf", "tiny_qwen2_h2_kv2_bias_q8_0.gguf", &qwen.to_gguf(GgmlType::Q8_0));

    // The Hugging Face export of the main tiny model: the safetensors seed and
    // the config.json seed (the `safetensors` target exports the same directory).
    let tmp = tempfile::tempdir().expect("tempdir");
    let gguf = tmp.path().join("tiny.gguf");
    std::fs::write(&gguf, main.to_gguf(GgmlType::F32)).expect("write gguf");
    let hf = tmp.path().join("hf");
    lava_llama::export_gguf_to_hf(&gguf, &hf).expect("export");
    let weights = std::fs::read(hf.join("model.safetensors")).expect("read safetensors");
    put("safetensors", "tiny_h3_kv1_tied_f32.safetensors", &weights);
    let st = safetensors::SafeTensors::deserialize(&weights).expect("safetensors");
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    for (dtype, tag) in [(safetensors::Dtype::F16, "f16"), (safetensors::Dtype::BF16, "bf16")] {
        let converted: Vec<(String, Vec<usize>, Vec<u8>)> = names
            .iter()
            .map(|n| {
                let t = st.tensor(n).expect("tensor");
                let bytes = t
                    .data()
                    .chunks_exact(4)
                    .flat_map(|b| {
                        let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        match dtype {
                            safetensors::Dtype::F16 => half::f16::from_f32(v).to_le_bytes(),
                            _ => half::bf16::from_f32(v).to_le_bytes(),
                        }
                    })
                    .collect();
                (n.clone(), t.shape().to_vec(), bytes)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = converted
            .iter()
            .map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(dtype, s.clone(), b).expect("view")))
            .collect();
        let image = safetensors::serialize(views, None).expect("serialize");
        put("safetensors", &format!("tiny_h3_kv1_tied_{tag}.safetensors"), &image);
    }

    let config = std::fs::read(hf.join("config.json")).expect("config.json");
    put("hf_config", "tiny_llama.json", &config);
    let mut variants: Vec<(&str, LlamaConfig)> = Vec::new();
    variants.push(("tiny_qwen2_bias.json", tiny_config(2, 2, false, true)));
    let mut mistral = tiny_config(4, 2, false, false);
    mistral.model_type = "mistral".into();
    mistral.bos_token_id = Some(1);
    mistral.eos_token_ids = vec![2];
    variants.push(("tiny_mistral.json", mistral));
    let mut llama31 = tiny_config(2, 1, true, false);
    llama31.rope_scaling = Some(lava_llama::Llama3RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    });
    llama31.rope_theta = 500000.0;
    llama31.eos_token_ids = vec![128001, 128008, 128009];
    variants.push(("tiny_llama31_rope_scaling.json", llama31));
    for (name, c) in variants {
        let text = serde_json::to_string_pretty(&c.to_hf_json()).expect("json");
        assert_eq!(LlamaConfig::from_hf_json(&text).expect("valid"), c);
        put("hf_config", name, text.as_bytes());
    }
}
