//! Reading a Llama-family model out of a GGUF file.

use std::path::PathBuf;

use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::gguf::{GgufError, GgufFile};
use crate::weights::WeightSource;

/// Architectures (GGUF `general.architecture`) lava reads.
pub const GGUF_ARCHITECTURES: [&str; 5] = ["llama", "mistral", "qwen2", "qwen3", "gemma3"];

/// Whether llama.cpp's converter permuted the Q/K rows of architecture `arch`
/// for interleaved RoPE (`llama`, `mistral`): the Qwen and Gemma ones are written in
/// Hugging Face's rotate-half order, as is.
pub(crate) fn permuted_qk(arch: &str) -> bool {
    !matches!(arch, "qwen2" | "qwen3" | "gemma3")
}

/// Builds the model configuration from GGUF metadata.
pub fn config_from_gguf(g: &GgufFile) -> Result<LlamaConfig, ModelError> {
    let arch = g.get_str("general.architecture")?.to_string();
    if !GGUF_ARCHITECTURES.contains(&arch.as_str()) {
        return Err(ModelError::Unsupported(format!(
            "{}: GGUF architecture {arch:?}; supported: {}",
            g.path().display(),
            GGUF_ARCHITECTURES.join(", ")
        )));
    }
    let k = |s: &str| format!("{arch}.{s}");
    let u = |s: &str| g.get_u64(&k(s)).map(|v| v as usize);
    // Optional keys: absent gives the default, present with the wrong type is
    // an error (never a silent default).
    let opt_u = |key: &str| -> Result<Option<usize>, ModelError> {
        match g.get(key) {
            None => Ok(None),
            Some(_) => Ok(Some(g.get_u64(key)? as usize)),
        }
    };
    let opt_f = |key: &str, default: f64| -> Result<f64, ModelError> {
        match g.get(key) {
            None => Ok(default),
            Some(_) => Ok(g.get_f64(key)?),
        }
    };
    let token_id = |key: &str| -> Result<Option<u32>, ModelError> {
        match opt_u(key)? {
            None => Ok(None),
            Some(id) => u32::try_from(id).map(Some).map_err(|_| {
                ModelError::Config(format!("{}: {key} {id} is not a token id (it must be below 2^32)", g.path().display()))
            }),
        }
    };
    let heads = u("attention.head_count")?;
    let hidden = u("embedding_length")?;
    let embd = g.tensor("token_embd.weight")?;
    let vocab = match opt_u(&k("vocab_size"))? {
        Some(v) => v,
        None => embd.shape().first().copied().unwrap_or(0),
    };
    let head_dim = match opt_u(&k("attention.key_length"))? {
        Some(v) => v,
        None => hidden / heads.max(1),
    };
    // lava's attention has one head dimension for keys and values.
    if let Some(v) = opt_u(&k("attention.value_length"))?.filter(|&v| v != head_dim) {
        return Err(ModelError::Unsupported(format!(
            "{}: {arch}.attention.value_length {v} differs from the key head dimension {head_dim}; \
             lava needs keys and values of one head dimension",
            g.path().display()
        )));
    }
    let mut eos: Vec<u32> = token_id("tokenizer.ggml.eos_token_id")?.into_iter().collect();
    let gemma3 = arch == "gemma3";
    if gemma3 {
        if let Some(s) = g.get(&k("rope.scaling.type")).and_then(|v| v.as_str()).filter(|s| *s != "none") {
            return Err(ModelError::Unsupported(format!(
                "{}: gemma3.rope.scaling.type {s:?}; lava runs Gemma 3 files without RoPE scaling (the 270M and 1B)",
                g.path().display()
            )));
        }
        // A Gemma chat turn ends with <end_of_turn>, not with the file's EOS (<eos>):
        // generation stops at either, as llama.cpp's end-of-generation set does.
        if let Some(id) = token_id_of(g, "<end_of_turn>") {
            if !eos.contains(&id) {
                eos.push(id);
            }
        }
    }
    let block_count = u("block_count")?;
    let cfg = LlamaConfig {
        model_type: if matches!(arch.as_str(), "qwen2" | "qwen3" | "gemma3") { arch.clone() } else { "llama".into() },
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: u("feed_forward_length")?,
        num_hidden_layers: block_count,
        num_attention_heads: heads,
        num_key_value_heads: opt_u(&k("attention.head_count_kv"))?.unwrap_or(heads),
        head_dim,
        rms_norm_eps: opt_f(&k("attention.layer_norm_rms_epsilon"), 1e-5)?,
        rope_theta: opt_f(&k("rope.freq_base"), 10000.0)?,
        rope_scaling: None,
        max_position_embeddings: opt_u(&k("context_length"))?.unwrap_or(4096),
        tie_word_embeddings: !g.tensors.contains_key("output.weight"),
        attention_bias: g.tensors.contains_key("blk.0.attn_q.bias"),
        qk_norm: arch == "qwen3" || gemma3,
        bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_ids: eos,
        sliding_window: opt_u(&k("attention.sliding_window"))?,
        // Gemma 3 (llama.cpp's gemma3 graph): five local layers then one
        // global, local RoPE base 10000, embeddings scaled by sqrt(hidden),
        // post-attention and post-MLP norms, q/k norms, GeGLU. GGUF stores the
        // norms' gains as Gemma's `1 + weight` already (the converter adds
        // the 1), so every norm multiplies by the stored gain. The attention
        // scale is `1/sqrt(head_dim)` except for the 27B (62 layers), whose
        // `query_pre_attn_scalar` is hidden / heads.
        sliding_window_pattern: match gemma3 {
            true => Some(opt_u(&k("attention.sliding_window_pattern"))?.unwrap_or(6)),
            false => None,
        },
        rope_local_base_freq: match gemma3 {
            true => Some(opt_f(&k("rope.freq_base_swa"), 10_000.0)?),
            false => None,
        },
        scale_embeddings: gemma3,
        post_norms: gemma3,
        hidden_act: if gemma3 { crate::config::Activation::GeluTanh } else { crate::config::Activation::Silu },
        query_pre_attn_scalar: (gemma3 && block_count == 62).then(|| (hidden / heads.max(1)) as f64),
    };
    cfg.validate().map_err(|e| match e {
        ModelError::Config(m) => ModelError::Config(format!("{}: {m}", g.path().display())),
        other => other,
    })?;
    Ok(cfg)
}

/// The id of the token spelled `text` in `tokenizer.ggml.tokens`, if any.
fn token_id_of(g: &GgufFile, text: &str) -> Option<u32> {
    let tokens = g.get("tokenizer.ggml.tokens")?.as_array()?;
    tokens.iter().position(|t| t.as_str() == Some(text)).and_then(|i| u32::try_from(i).ok())
}

/// Weights of a GGUF file under Hugging Face names and layout.
pub struct GgufSource<'a> {
    gguf: &'a GgufFile,
    config: LlamaConfig,
    /// llama.cpp's converter permutes Q/K rows of `llama` models for interleaved
    /// RoPE; we undo it to get the rotate-half layout.
    unpermute: bool,
}

impl<'a> GgufSource<'a> {
    /// Wraps a parsed file.
    pub fn new(gguf: &'a GgufFile, config: LlamaConfig) -> Result<Self, ModelError> {
        let arch = gguf.get_str("general.architecture")?;
        Ok(Self { unpermute: permuted_qk(arch), gguf, config })
    }

    /// The GGUF name of Hugging Face parameter `name`; `post_norms`: a Gemma
    /// file, whose `post_attention_layernorm` is the attention output's norm
    /// (GGUF `post_attention_norm`) and whose MLP input norm is
    /// `pre_feedforward_layernorm` (GGUF `ffn_norm`).
    pub(crate) fn gguf_name(name: &str, post_norms: bool) -> Option<String> {
        let name = name.strip_prefix("model.").unwrap_or(name);
        let fixed = match name {
            "embed_tokens.weight" => Some("token_embd.weight"),
            "norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(f) = fixed {
            return Some(f.to_string());
        }
        let rest = name.strip_prefix("layers.")?;
        let (layer, param) = rest.split_once('.')?;
        let mapped = match param {
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "self_attn.q_proj.bias" => "attn_q.bias",
            "self_attn.k_proj.bias" => "attn_k.bias",
            "self_attn.v_proj.bias" => "attn_v.bias",
            "self_attn.q_norm.weight" => "attn_q_norm.weight",
            "self_attn.k_norm.weight" => "attn_k_norm.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" if post_norms => "post_attention_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
            "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
            _ => return None,
        };
        Some(format!("blk.{layer}.{mapped}"))
    }

    /// RoPE frequency factors (`rope_freqs.weight`), if the file has them.
    /// They must be `head_dim / 2` positive finite numbers.
    pub fn rope_freq_factors(&self) -> Result<Option<Vec<f32>>, ModelError> {
        let Some(info) = self.gguf.tensors.get("rope_freqs.weight") else { return Ok(None) };
        let half = self.config.head_dim / 2;
        if info.elements() != half as u64 {
            return Err(ModelError::Weights {
                path: self.origin(),
                detail: format!("tensor rope_freqs.weight has {} values, expected head_dim / 2 = {half}", info.elements()),
            });
        }
        let f = self.gguf.dequantize("rope_freqs.weight")?;
        if let Some(bad) = f.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
            return Err(ModelError::Weights {
                path: self.origin(),
                detail: format!("tensor rope_freqs.weight holds {bad}; RoPE frequency factors must be positive finite numbers"),
            });
        }
        Ok(Some(f))
    }
}

/// Undoes llama.cpp's Q/K row permutation: GGUF row `h*D + 2i + p` holds
/// Hugging Face row `h*D + p*D/2 + i`. Works on weights (`cols = d_in`), biases (`cols = 1`)
/// and rows of quantized blocks (bytes, `cols` = bytes per row).
pub fn unpermute_rows<T: Copy + Default>(v: &[T], heads: usize, head_dim: usize, cols: usize) -> Vec<T> {
    let half = head_dim / 2;
    let mut out = vec![T::default(); v.len()];
    for h in 0..heads {
        for i in 0..half {
            for p in 0..2 {
                let src = (h * head_dim + 2 * i + p) * cols;
                let dst = (h * head_dim + p * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&v[src..src + cols]);
            }
        }
    }
    out
}

impl WeightSource for GgufSource<'_> {
    fn tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>, ModelError> {
        let Some(gname) = Self::gguf_name(name, self.config.post_norms) else { return Ok(None) };
        let info = match self.gguf.tensors.get(&gname) {
            Some(i) => i,
            None => return Ok(None),
        };
        let shape = info.shape();
        let mut values = self.gguf.dequantize(&gname)?;
        if values.len() != shape.iter().product::<usize>() {
            return Err(GgufError::Corrupt {
                path: self.gguf.path().to_path_buf(),
                section: "tensor data",
                detail: format!("tensor {gname} dequantised to {} values for shape {shape:?}", values.len()),
            }
            .into());
        }
        if self.unpermute {
            let heads = if gname.ends_with("attn_q.weight") || gname.ends_with("attn_q.bias") {
                Some(self.config.num_attention_heads)
            } else if gname.ends_with("attn_k.weight") || gname.ends_with("attn_k.bias") {
                Some(self.config.num_key_value_heads)
            } else {
                None
            };
            if let Some(h) = heads {
                let rows = shape.first().copied().unwrap_or(0);
                if rows != h * self.config.head_dim {
                    return Err(ModelError::Weights {
                        path: self.origin(),
                        detail: format!(
                            "tensor {gname} has {rows} rows, expected heads*head_dim = {}",
                            h * self.config.head_dim
                        ),
                    });
                }
                let cols = values.len() / rows.max(1);
                values = unpermute_rows(&values, h, self.config.head_dim, cols);
            }
        }
        Ok(Some((shape, values)))
    }

    fn origin(&self) -> PathBuf {
        self.gguf.path().to_path_buf()
    }

    fn shape(&self, name: &str) -> Result<Option<Vec<usize>>, ModelError> {
        Ok(Self::gguf_name(name, self.config.post_norms).and_then(|g| self.gguf.tensors.get(&g)).map(|i| i.shape()))
    }

    fn tensor_count(&self) -> Option<usize> {
        Some(self.gguf.tensors.len())
    }
}
