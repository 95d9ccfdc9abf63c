//! Tiny random-weight models built in code, for fast tests and examples.

use std::path::PathBuf;

use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::gguf::{GgmlType, GgufWriter, Value};
use crate::weights::{parameter_shape, parameters, WeightSource};

/// A small configuration: `vocab` 64, width 32, 2 layers, `heads` query heads,
/// `kv_heads` KV heads, head dim 8.
pub fn tiny_config(heads: usize, kv_heads: usize, tied: bool, bias: bool) -> LlamaConfig {
    LlamaConfig {
        model_type: if bias { "qwen2".into() } else { "llama".into() },
        vocab_size: 64,
        hidden_size: heads * 8,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim: 8,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: 256,
        tie_word_embeddings: tied,
        attention_bias: bias,
        qk_norm: false,
        bos_token_id: None,
        eos_token_ids: vec![],
        sliding_window: None,
        ..LlamaConfig::default_extras()
    }
}

/// [`tiny_config`] shaped as Gemma 3: `layers` layers of which every
/// `pattern`-th is global and the others attend within `window` positions
/// (local RoPE base 10000), scaled embeddings, q/k norms, the four norms of a
/// Gemma layer, GeGLU; 4 query heads over 2 KV heads of dimension 8, tied
/// embeddings. What [`RandomWeights::to_gguf`] writes as a `gemma3` file.
pub fn tiny_gemma3_config(layers: usize, window: usize, pattern: usize) -> LlamaConfig {
    LlamaConfig {
        model_type: "gemma3".into(),
        num_hidden_layers: layers,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        qk_norm: true,
        sliding_window: Some(window),
        sliding_window_pattern: Some(pattern),
        rope_local_base_freq: Some(10_000.0),
        scale_embeddings: true,
        post_norms: true,
        hidden_act: crate::config::Activation::GeluTanh,
        ..tiny_config(4, 2, true, false)
    }
}

/// Deterministic pseudo-random weights (uniform in `[-scale, scale]`, norms near 1).
#[derive(Debug, Clone)]
pub struct RandomWeights {
    /// The configuration the weights are for.
    pub config: LlamaConfig,
    /// Seed.
    pub seed: u64,
}

fn hash(s: &str, seed: u64) -> u64 {
    // FNV-1a, then mixed with the seed.
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl RandomWeights {
    /// Values of parameter `name` (Hugging Face layout).
    pub fn values(&self, name: &str, n: usize) -> Vec<f32> {
        let mut state = hash(name, self.seed);
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        if name.ends_with("norm.weight") {
            (0..n).map(|_| (0.8 + 0.4 * next()) as f32).collect()
        } else {
            let scale = if name.ends_with("bias") { 0.1 } else { 0.3 };
            (0..n).map(|_| ((next() * 2.0 - 1.0) * scale) as f32).collect()
        }
    }

    /// Writes these weights as a GGUF image (llama.cpp layout: Q/K rows permuted
    /// for `llama` models, not `qwen2`/`qwen3`/`gemma3` ones; a `gemma3` file's
    /// window, pattern and local RoPE base, and its norms under llama.cpp's
    /// Gemma names), with a trivial byte-level tokenizer, in `kind`.
    pub fn to_gguf(&self, kind: GgmlType) -> Vec<u8> {
        let c = &self.config;
        let arch = match c.model_type.as_str() {
            "qwen2" | "qwen3" | "gemma3" => c.model_type.as_str(),
            _ => "llama",
        };
        let mut w = GgufWriter::new();
        w.kv("general.architecture", Value::Str(arch.into()));
        write_sizes(&mut w, arch, c);
        if arch == "gemma3" {
            if let Some(win) = c.sliding_window {
                w.kv("gemma3.attention.sliding_window", Value::U64(win as u64));
            }
            if let Some(p) = c.sliding_window_pattern {
                w.kv("gemma3.attention.sliding_window_pattern", Value::U64(p as u64));
            }
            if let Some(b) = c.rope_local_base_freq {
                w.kv("gemma3.rope.freq_base_swa", Value::F64(b));
            }
        }
        w.kv("tokenizer.ggml.model", Value::Str("gpt2".into()));
        w.kv("tokenizer.ggml.pre", Value::Str("gpt2".into()));
        let tokens: Vec<Value> = (0..c.vocab_size).map(|i| Value::Str(byte_token(i as u8))).collect();
        w.kv("tokenizer.ggml.tokens", Value::Array(tokens));
        w.kv("tokenizer.ggml.merges", Value::Array(vec![]));
        for p in parameters(c) {
            let (name, shape) = (p.name, p.shape);
            let n: usize = shape.iter().product();
            let mut v = self.values(&name, n);
            let gname = match arch {
                "gemma3" => crate::gguf_source::GgufSource::gguf_name(&name, true).unwrap_or_else(|| gguf_name(&name)),
                _ => gguf_name(&name),
            };
            if arch == "llama" {
                let heads = if name.contains("q_proj") {
                    Some(c.num_attention_heads)
                } else if name.contains("k_proj") {
                    Some(c.num_key_value_heads)
                } else {
                    None
                };
                if let Some(h) = heads {
                    v = permute_rows(&v, h, c.head_dim, n / shape[0]);
                }
            }
            let t = if shape.len() == 1 { GgmlType::F32 } else { kind };
            w.tensor(&gname, &shape, t, &v);
        }
        w.to_bytes()
    }
}

/// Writes the `{arch}.*` size keys a loader reads (layers, widths, heads, head dimension,
/// epsilon, RoPE base) for `c` (the tiny models' and the synthetic ones').
pub(crate) fn write_sizes(w: &mut GgufWriter, arch: &str, c: &LlamaConfig) {
    let k = |s: &str| format!("{arch}.{s}");
        w.kv(&k("block_count"), Value::U64(c.num_hidden_layers as u64));
        w.kv(&k("context_length"), Value::U64(c.max_position_embeddings as u64));
        w.kv(&k("embedding_length"), Value::U64(c.hidden_size as u64));
        w.kv(&k("feed_forward_length"), Value::U64(c.intermediate_size as u64));
        w.kv(&k("attention.head_count"), Value::U64(c.num_attention_heads as u64));
        w.kv(&k("attention.head_count_kv"), Value::U64(c.num_key_value_heads as u64));
        w.kv(&k("attention.key_length"), Value::U64(c.head_dim as u64));
        w.kv(&k("attention.value_length"), Value::U64(c.head_dim as u64));
        w.kv(&k("attention.layer_norm_rms_epsilon"), Value::F64(c.rms_norm_eps));
        w.kv(&k("rope.freq_base"), Value::F64(c.rope_theta));
}

/// A printable token for byte `b` (GPT-2 byte-level alphabet for the printable range).
fn byte_token(b: u8) -> String {
    let c = if (b'!'..=b'~').contains(&b) { b as char } else { char::from_u32(0x100 + b as u32).unwrap_or('?') };
    c.to_string()
}

/// The GGUF name of a Hugging Face parameter name (the tensors the tiny models have).
pub fn gguf_name(hf: &str) -> String {
    let n = hf.strip_prefix("model.").unwrap_or(hf);
    match n {
        "embed_tokens.weight" => return "token_embd.weight".into(),
        "norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let n = n.replacen("layers.", "blk.", 1);
    n.replace("self_attn.q_proj", "attn_q")
        .replace("self_attn.k_proj", "attn_k")
        .replace("self_attn.v_proj", "attn_v")
        .replace("self_attn.o_proj", "attn_output")
        .replace("self_attn.q_norm", "attn_q_norm")
        .replace("self_attn.k_norm", "attn_k_norm")
        .replace("mlp.gate_proj", "ffn_gate")
        .replace("mlp.up_proj", "ffn_up")
        .replace("mlp.down_proj", "ffn_down")
        .replace("post_attention_layernorm", "ffn_norm")
        .replace("input_layernorm", "attn_norm")
}

/// llama.cpp's permutation (the inverse of [`crate::unpermute_rows`]).
fn permute_rows(v: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0f32; v.len()];
    for h in 0..heads {
        for i in 0..half {
            for p in 0..2 {
                let dst = (h * head_dim + 2 * i + p) * cols;
                let src = (h * head_dim + p * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&v[src..src + cols]);
            }
        }
    }
    out
}

impl WeightSource for RandomWeights {
    fn tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>, ModelError> {
        Ok(parameter_shape(&self.config, name).map(|s| {
            let n = s.iter().product();
            (s, self.values(name, n))
        }))
    }
    fn origin(&self) -> PathBuf {
        "<random weights>".into()
    }
    fn shape(&self, name: &str) -> Result<Option<Vec<usize>>, ModelError> {
        Ok(parameter_shape(&self.config, name))
    }
}
