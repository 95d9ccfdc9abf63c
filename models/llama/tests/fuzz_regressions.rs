//! Bad-input robustness of the GGUF and Hugging Face readers: inputs found by
//! the fuzzers in `fuzz/` (kept as regression tests), and a bounded,
//! deterministic mutation loop over valid tiny GGUF images that runs in the
//! normal suite. None of these may panic: bad input must give an error.
//!
//! With `LAVA_FUZZ_CORPUS=<dir>` set (a relative `<dir>` is taken from the
//! workspace root), `write_fuzz_seeds` also writes the seed corpus of the
//! `gguf`, `hf_config` and `safetensors` fuzz targets under `<dir>/<target>/`
//! (see `fuzz/README.md`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use lava_llama::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use lava_llama::hf::expected_shape;
use lava_llama::tiny::{tiny_config, RandomWeights};
use lava_llama::{
    config_from_gguf, tokenizer_json_from_gguf, GgufSource, LlamaConfig, ModelError, Tokenizer, WeightSource,
};

/// Same bound as the `gguf` fuzz target: bigger tensors are OOM by design.
const MAX_ELEMENTS: u64 = 1 << 22;

fn tiny_gguf(kind: GgmlType) -> Vec<u8> {
    RandomWeights { config: tiny_config(3, 1, true, false), seed: 1 }.to_gguf(kind)
}

/// How far an input got through [`exercise_gguf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Rejected,
    Parsed,
    Configured,
}

/// What the `gguf` fuzz target does: parse, dequantise every (bounded) tensor,
/// build the config and the tokenizer, read the weights under their Hugging
/// Face names. Errors are fine; panics are not.
fn exercise_gguf(bytes: Vec<u8>) -> Stage {
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf", bytes) else { return Stage::Rejected };
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
    let Ok(config) = config_from_gguf(&file) else { return Stage::Parsed };
    let Ok(src) = GgufSource::new(&file, config.clone()) else { return Stage::Parsed };
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
    Stage::Configured
}

/// Found by hand while fuzzing `hf_config`: a `config.json` whose head count
/// times head dimension overflows passed `validate`, then `expected_shape`
/// panicked ("attempt to multiply with overflow", debug builds) or produced
/// wrapped shapes (release builds).
#[test]
fn hf_config_with_overflowing_dimensions_is_rejected() {
    let base = serde_json::to_string(&tiny_config(3, 1, true, false).to_hf_json()).expect("json");
    let cases = [
        ("num_attention_heads", "4611686018427387904"), // 2^62 heads x head_dim 8
        ("head_dim", "4611686018427387904"),
        ("vocab_size", "18446744073709551615"),
        ("intermediate_size", "9223372036854775807"),
        ("num_hidden_layers", "4611686018427387904"),
    ];
    for (key, value) in cases {
        let mut v: serde_json::Value = serde_json::from_str(&base).expect("parse");
        v[key] = serde_json::from_str(value).expect("number");
        if key == "num_attention_heads" {
            v["num_key_value_heads"] = 1.into();
        }
        let text = v.to_string();
        let result = catch_unwind(|| {
            LlamaConfig::from_hf_json(&text).map(|c| expected_shape(&c, "model.layers.0.self_attn.q_proj.weight"))
        });
        match result {
            Ok(Err(ModelError::Config(m))) => assert!(m.contains("too large"), "{key}: {m}"),
            other => panic!("{key} = {value}: expected a Config error, got {other:?}"),
        }
    }
    // Large but addressable dimensions are still accepted.
    let mut v: serde_json::Value = serde_json::from_str(&base).expect("parse");
    v["vocab_size"] = 262144.into();
    v["num_hidden_layers"] = 128.into();
    LlamaConfig::from_hf_json(&v.to_string()).expect("big but valid");
}

/// The GGUF form of the same bug: `config_from_gguf` accepted 2^62 heads with
/// an explicit key length, then `GgufSource::tensor` overflowed computing
/// `heads * head_dim` for `attn_q`.
#[test]
fn gguf_with_overflowing_head_count_is_rejected() {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::Str("llama".into()));
    for (k, v) in [
        ("block_count", 1u64),
        ("embedding_length", 32),
        ("feed_forward_length", 32),
        ("attention.head_count", 1 << 62),
        ("attention.head_count_kv", 1),
        ("attention.key_length", 8),
    ] {
        w.kv(&format!("llama.{k}"), Value::U64(v));
    }
    w.tensor("token_embd.weight", &[4, 32], GgmlType::F32, &[0.5; 128]);
    w.tensor("blk.0.attn_q.weight", &[1, 32], GgmlType::F32, &[0.5; 32]);
    let bytes = w.to_bytes();
    let file = GgufFile::from_bytes("heads.gguf", bytes.clone()).expect("parse");
    match config_from_gguf(&file) {
        Err(ModelError::Config(m)) => assert!(m.contains("too large"), "{m}"),
        other => panic!("expected a Config error, got {other:?}"),
    }
    assert_eq!(exercise_gguf(bytes), Stage::Parsed);
}

/// The tiny model's Hugging Face export, with one weight rewritten as `dtype`.
fn hf_dir_with_dtype(dtype: safetensors::Dtype, elem_bytes: usize) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gguf = tmp.path().join("tiny.gguf");
    std::fs::write(&gguf, tiny_gguf(GgmlType::F32)).expect("write gguf");
    lava_llama::export_gguf_to_hf(&gguf, tmp.path()).expect("export");
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let target = "model.layers.0.mlp.down_proj.weight";
    let tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            if name == target {
                let n: usize = t.shape().iter().product();
                (name, dtype, t.shape().to_vec(), vec![1u8; n * elem_bytes])
            } else {
                (name, t.dtype(), t.shape().to_vec(), t.data().to_vec())
            }
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).expect("serialize")).expect("write");
    tmp
}

/// Found by the `safetensors` fuzzer (a weight's dtype flipped from F16 to
/// I16): burn's backend panicked "Expected float dtype, got I16" when
/// `load_hf_dir` handed integer data to a float parameter.
#[test]
fn safetensors_with_non_float_weights_is_an_error() {
    use safetensors::Dtype;
    type B = burn_ndarray::NdArray<f32>;
    for (dtype, size) in
        [(Dtype::I16, 2), (Dtype::I8, 1), (Dtype::U8, 1), (Dtype::I32, 4), (Dtype::I64, 8), (Dtype::BOOL, 1)]
    {
        let dir = hf_dir_with_dtype(dtype, size);
        let result = catch_unwind(|| lava_llama::hf::load_hf_dir::<B>(dir.path(), &Default::default()).map(|_| ()));
        match result {
            Ok(Err(ModelError::Weights { detail, .. })) => {
                assert!(detail.contains("down_proj") && detail.contains("lava reads F32"), "{dtype:?}: {detail}")
            }
            Ok(other) => panic!("{dtype:?}: expected a Weights error, got {other:?}"),
            Err(_) => panic!("{dtype:?}: load_hf_dir panicked"),
        }
    }
    // The float dtypes still load.
    for (dtype, size) in [(Dtype::F16, 2), (Dtype::BF16, 2), (Dtype::F64, 8)] {
        let dir = hf_dir_with_dtype(dtype, size);
        lava_llama::hf::load_hf_dir::<B>(dir.path(), &Default::default()).unwrap_or_else(|e| panic!("{dtype:?}: {e}"));
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
    let mut bases: Vec<Vec<u8>> =
        [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F32, GgmlType::F16].into_iter().map(tiny_gguf).collect();
    bases.push(full_featured_gguf());
    for base in &bases {
        assert_eq!(exercise_gguf(base.clone()), Stage::Configured);
    }
    let mut failures = Vec::new();
    let mut reached = [0usize; 3];
    for i in 0..2000u64 {
        let seed = 0x9e37_79b9_7f4a_7c15 ^ i.wrapping_mul(0x1000_0000_01b3);
        let mut rng = Rng(seed | 1);
        let base = &bases[i as usize % bases.len()];
        let bytes = mutate(&mut rng, base, 4096);
        match catch_unwind(AssertUnwindSafe(|| exercise_gguf(bytes))) {
            Ok(stage) => reached[stage as usize] += 1,
            Err(_) => failures.push((i, seed)),
        }
    }
    assert!(failures.is_empty(), "GGUF mutations that panicked (iteration, rng seed): {failures:?}");
    // The loop must exercise every stage, not only the header checks.
    eprintln!("GGUF mutations per stage (rejected, parsed, configured): {reached:?}");
    assert!(reached.iter().all(|&n| n >= 25), "inputs per stage (rejected, parsed, configured): {reached:?}");
}

/// A one-layer image using every optional key and tensor lava reads (explicit
/// key length, vocab size, alignment, token types, special ids, chat template,
/// merges, `rope_freqs`, q bias) and every tensor type, so the fuzzer starts
/// from code paths the `to_gguf` images never reach.
fn full_featured_gguf() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::Str("llama".into()));
    w.kv("general.alignment", Value::U64(32));
    for (k, v) in [
        ("block_count", 1),
        ("context_length", 128),
        ("embedding_length", 16),
        ("feed_forward_length", 32),
        ("attention.head_count", 2),
        ("attention.head_count_kv", 1),
        ("attention.key_length", 8),
        ("vocab_size", 32),
    ] {
        w.kv(&format!("llama.{k}"), Value::U64(v));
    }
    w.kv("llama.attention.layer_norm_rms_epsilon", Value::F64(1e-5));
    w.kv("llama.rope.freq_base", Value::F64(500000.0));
    w.kv("tokenizer.ggml.model", Value::Str("gpt2".into()));
    w.kv("tokenizer.ggml.pre", Value::Str("llama-bpe".into()));
    let mut tokens: Vec<String> = "abcdefghijklmnopqrstuvwxyz".chars().map(String::from).collect();
    tokens.extend(["ab", "abc", "\u{120}a", "\u{120}"].map(String::from));
    tokens.extend(["<|begin_of_text|>", "<|eot_id|>"].map(String::from));
    let types: Vec<Value> = (0..tokens.len()).map(|i| Value::U64(if i >= 30 { 3 } else { 1 })).collect();
    w.kv("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::Str).collect()));
    w.kv("tokenizer.ggml.token_type", Value::Array(types));
    w.kv("tokenizer.ggml.merges", Value::Array(["a b", "ab c", "\u{120} a"].map(|m| Value::Str(m.into())).to_vec()));
    w.kv("tokenizer.ggml.bos_token_id", Value::U64(30));
    w.kv("tokenizer.ggml.eos_token_id", Value::U64(31));
    w.kv(
        "tokenizer.chat_template",
        Value::Str("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}".into()),
    );
    let vals = |n: usize| -> Vec<f32> { (0..n).map(|i| ((i as f32) * 0.37).sin() * 0.3).collect() };
    w.tensor("token_embd.weight", &[32, 16], GgmlType::Q8_0, &vals(512));
    w.tensor("output.weight", &[32, 16], GgmlType::Q4_0, &vals(512));
    w.tensor("output_norm.weight", &[16], GgmlType::F32, &[1.0; 16]);
    w.tensor("rope_freqs.weight", &[4], GgmlType::F32, &[1.0, 1.0, 2.0, 8.0]);
    w.tensor("blk.0.attn_q.weight", &[16, 16], GgmlType::F16, &vals(256));
    w.tensor("blk.0.attn_q.bias", &[16], GgmlType::F32, &vals(16));
    w.tensor("blk.0.attn_k.weight", &[8, 16], GgmlType::BF16, &vals(128));
    w.tensor("blk.0.attn_v.weight", &[8, 16], GgmlType::Q4_1, &vals(128));
    w.tensor("blk.0.attn_output.weight", &[16, 16], GgmlType::F32, &vals(256));
    w.tensor("blk.0.ffn_gate.weight", &[32, 16], GgmlType::Q8_0, &vals(512));
    w.tensor("blk.0.ffn_up.weight", &[32, 16], GgmlType::Q4_0, &vals(512));
    w.tensor("blk.0.ffn_down.weight", &[16, 32], GgmlType::Q4_1, &vals(512));
    w.tensor("blk.0.attn_norm.weight", &[16], GgmlType::F32, &[1.0; 16]);
    w.tensor("blk.0.ffn_norm.weight", &[16], GgmlType::F32, &[1.0; 16]);
    w.to_bytes()
}

#[test]
fn full_featured_gguf_is_valid() {
    let file = GgufFile::from_bytes("full.gguf", full_featured_gguf()).expect("parse");
    let config = config_from_gguf(&file).expect("config");
    assert_eq!((config.head_dim, config.vocab_size, config.bos_token_id), (8, 32, Some(30)));
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    assert_eq!(tok.token_id("abc"), Some(27));
    for name in &file.tensor_order {
        file.dequantize(name).expect("dequantize");
    }
    let src = GgufSource::new(&file, config).expect("source");
    assert_eq!(src.rope_freq_factors().expect("rope_freqs").map(|f| f.len()), Some(4));
    assert_eq!(exercise_gguf(full_featured_gguf()), Stage::Configured);
}

/// `LAVA_FUZZ_CORPUS`, a relative path resolved from the workspace root (cargo
/// runs tests in the package directory).
fn corpus_root() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("LAVA_FUZZ_CORPUS")?);
    Some(if dir.is_relative() { Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(dir) } else { dir })
}

/// Writes the seed corpora when `LAVA_FUZZ_CORPUS` names a directory.
#[test]
fn write_fuzz_seeds() {
    let Some(root) = corpus_root() else { return };
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
    put("gguf", "full_featured_l1.gguf", &full_featured_gguf());

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

/// Found by hand (reasoning, not a fuzzer crash) while writing the `hf_model`
/// fuzz target, whose forward pass asserts finite logits: a config whose RoPE angles `position * inv_freq` overflow
/// over its context validated and gave NaN logits (exit 0, garbage text). A
/// rope_theta far below 1 with a large head_dim, or a Llama-3 factor near 0,
/// did it.
#[test]
fn hf_config_whose_rope_angles_overflow_is_rejected() {
    let base = tiny_config(3, 1, true, false).to_hf_json();
    let mut theta = base.clone();
    theta["rope_theta"] = 1e-300.into();
    theta["head_dim"] = 1024.into();
    theta["max_position_embeddings"] = 1_000_000_000_000_000u64.into();
    let mut factor = base.clone();
    factor["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 1e-307, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 128});
    for v in [theta, factor] {
        match LlamaConfig::from_hf_json(&v.to_string()) {
            Err(ModelError::Config(m)) => assert!(m.contains("RoPE angles that overflow"), "{m}"),
            other => panic!("expected a Config error, got {other:?}"),
        }
    }
}

/// What the `hf_model` target checks with libFuzzer's malloc limit: a config
/// whose dimensions disagree with the safetensors header is refused from the
/// header alone, before any weight is allocated (hidden_size 1e12 aborted,
/// intermediate_size 1e5 and vocab_size 4e6 built gigabytes of zeros).
#[test]
fn hf_config_disagreeing_with_the_weights_is_refused_before_allocating() {
    type B = burn_ndarray::NdArray<f32>;
    let tmp = tempfile::tempdir().expect("tempdir");
    let gguf = tmp.path().join("tiny.gguf");
    std::fs::write(&gguf, tiny_gguf(GgmlType::F32)).expect("write gguf");
    lava_llama::export_gguf_to_hf(&gguf, tmp.path()).expect("export");
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("config.json")).expect("read")).expect("json");
    for (key, value, expect) in [
        ("hidden_size", 1_000_000_000_000u64, "[64, 1000000000000]"),
        ("intermediate_size", 100_000, "[100000, 24]"),
        ("vocab_size", 4_000_000, "[4000000, 24]"),
        ("num_hidden_layers", 1 << 31, "layers need 19327352832 tensors but the file holds only 20"),
    ] {
        let mut v = base.clone();
        v[key] = value.into();
        std::fs::write(tmp.path().join("config.json"), v.to_string()).expect("write");
        match lava_llama::hf::load_hf_dir::<B>(tmp.path(), &Default::default()) {
            Err(ModelError::Weights { detail, .. }) => assert!(detail.contains(expect), "{key}: {detail}"),
            Err(e) => panic!("{key}: expected a Weights error, got {e}"),
            Ok(_) => panic!("{key}: loaded"),
        }
    }
}
