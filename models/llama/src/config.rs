//! Model hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// Llama-3.1 style RoPE frequency scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    /// Scale factor (8 for Llama 3.1).
    pub factor: f64,
    /// Low-frequency factor (1).
    pub low_freq_factor: f64,
    /// High-frequency factor (4).
    pub high_freq_factor: f64,
    /// Context length the model was pre-trained at (8192).
    pub original_max_position_embeddings: usize,
}

/// Architecture of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2` (as Hugging Face's `model_type`).
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width `d_model`.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Decoder layers `L`.
    pub num_hidden_layers: usize,
    /// Query heads `H_q`.
    pub num_attention_heads: usize,
    /// Key/value heads `H_kv`.
    pub num_key_value_heads: usize,
    /// Head dimension `D` (default `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Optional Llama-3.1 RoPE scaling.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Maximum context length.
    pub max_position_embeddings: usize,
    /// Output projection shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Q/K/V projections carry a bias (Qwen2).
    pub attention_bias: bool,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (generation stops at any of them).
    pub eos_token_ids: Vec<u32>,
}

impl LlamaConfig {
    /// Checks the dimensions are consistent.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return bad(format!("vocab_size, hidden_size and num_hidden_layers must be positive: {self:?}"));
        }
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 || self.head_dim == 0 {
            return bad("attention heads, KV heads and head_dim must be positive".into());
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return bad(format!("head_dim ({}) must be even for RoPE", self.head_dim));
        }
        // The weights' sizes are products of these fields: reject dimensions
        // whose f32 weights could not even be addressed, so that no product
        // made later (shapes, allocations) can overflow.
        if self.weight_bytes().is_none_or(|b| b > isize::MAX as usize) {
            return bad(format!(
                "dimensions too large: the f32 weights of vocab_size {}, hidden_size {}, intermediate_size {}, \
                 {} layers, {} heads and {} KV heads of dimension {} do not fit in memory",
                self.vocab_size,
                self.hidden_size,
                self.intermediate_size,
                self.num_hidden_layers,
                self.num_attention_heads,
                self.num_key_value_heads,
                self.head_dim
            ));
        }
        Ok(())
    }

    /// Bytes of all f32 weights (biases and an untied output counted), or `None` on overflow.
    fn weight_bytes(&self) -> Option<usize> {
        let (d, ff) = (self.hidden_size, self.intermediate_size);
        let q = self.num_attention_heads.checked_mul(self.head_dim)?;
        let kv = self.num_key_value_heads.checked_mul(self.head_dim)?;
        // q, o: [q, d]; k, v: [kv, d]; gate, up, down: [ff, d]; biases; two norms.
        let layer = [q, q, kv, kv, ff, ff, ff]
            .iter()
            .try_fold(0usize, |acc, &rows| acc.checked_add(rows.checked_mul(d)?))?
            .checked_add(q.checked_add(kv.checked_mul(2)?)?)?
            .checked_add(d.checked_mul(2)?)?;
        // Embedding, output projection, final norm.
        let rest = self.vocab_size.checked_mul(d)?.checked_mul(2)?.checked_add(d)?;
        layer.checked_mul(self.num_hidden_layers)?.checked_add(rest)?.checked_mul(4)
    }

    /// Parses a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self, ModelError> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ModelError::Config(format!("config.json does not parse: {e}")))?;
        let model_type = v.get("model_type").and_then(|x| x.as_str()).unwrap_or("").to_string();
        let archs: Vec<String> = v
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default();
        const TYPES: [&str; 3] = ["llama", "mistral", "qwen2"];
        if !TYPES.contains(&model_type.as_str()) {
            return Err(ModelError::Unsupported(format!(
                "model_type {model_type:?} (architectures {archs:?}); supported: llama, mistral, qwen2"
            )));
        }
        let req = |k: &str| -> Result<usize, ModelError> {
            v.get(k)
                .and_then(|x| x.as_u64())
                .map(|x| x as usize)
                .ok_or_else(|| ModelError::Config(format!("config.json: {k} is missing or not a positive integer")))
        };
        let heads = req("num_attention_heads")?;
        let hidden = req("hidden_size")?;
        let head_dim = match v.get("head_dim").and_then(|x| x.as_u64()) {
            Some(d) => d as usize,
            None => hidden / heads.max(1),
        };
        let rope_scaling = match v.get("rope_scaling") {
            Some(rs) if !rs.is_null() => {
                let ty = rs.get("rope_type").or_else(|| rs.get("type")).and_then(|x| x.as_str()).unwrap_or("");
                if ty != "llama3" {
                    return Err(ModelError::Unsupported(format!(
                        "rope_scaling type {ty:?}; supported: none or \"llama3\""
                    )));
                }
                Some(serde_json::from_value(rs.clone()).map_err(|e| {
                    ModelError::Config(format!("config.json: rope_scaling is not a llama3 scaling: {e}"))
                })?)
            }
            _ => None,
        };
        let ids = |k: &str| -> Vec<u32> {
            match v.get(k) {
                Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect(),
                _ => vec![],
            }
        };
        let cfg = Self {
            attention_bias: v
                .get("attention_bias")
                .and_then(|x| x.as_bool())
                .unwrap_or(model_type == "qwen2"),
            model_type,
            vocab_size: req("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: req("intermediate_size")?,
            num_hidden_layers: req("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: v.get("num_key_value_heads").and_then(|x| x.as_u64()).map_or(heads, |x| x as usize),
            head_dim,
            rms_norm_eps: v.get("rms_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-6),
            rope_theta: v.get("rope_theta").and_then(|x| x.as_f64()).unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: v.get("max_position_embeddings").and_then(|x| x.as_u64()).unwrap_or(4096)
                as usize,
            tie_word_embeddings: v.get("tie_word_embeddings").and_then(|x| x.as_bool()).unwrap_or(false),
            bos_token_id: ids("bos_token_id").first().copied(),
            eos_token_ids: ids("eos_token_id"),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Writes a Hugging Face `config.json` for this configuration.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let arch = match self.model_type.as_str() {
            "mistral" => "MistralForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            _ => "LlamaForCausalLM",
        };
        let mut v = serde_json::json!({
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if let Some(rs) = &self.rope_scaling {
            let mut r = serde_json::to_value(rs).unwrap_or_default();
            r["rope_type"] = "llama3".into();
            v["rope_scaling"] = r;
        }
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = b.into();
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => v["eos_token_id"] = (*one).into(),
            many => v["eos_token_id"] = many.to_vec().into(),
        }
        v
    }
}
