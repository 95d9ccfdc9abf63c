//! Model hyper-parameters, read from GGUF metadata or a Hugging Face `config.json`.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// A float for a message: as written when short, else in scientific notation.
fn num(x: f64) -> String {
    let plain = x.to_string();
    if plain.len() <= 24 {
        plain
    } else {
        format!("{x:e}")
    }
}

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
    /// `llama`, `mistral`, `qwen2`, `qwen3` or `gemma3` (as Hugging Face's `model_type`).
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
    /// Each head's query and key vectors go through an RMS norm of its own
    /// (`self_attn.q_norm` / `k_norm`, gains `[head_dim]`) after the
    /// projection and before RoPE (Qwen3).
    #[serde(default)]
    pub qk_norm: bool,
    /// Beginning-of-sequence token id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (generation stops at any of them).
    pub eos_token_ids: Vec<u32>,
    /// Sliding-window attention span: a local layer's query at position `p`
    /// attends to positions `p - window + 1 ..= p` only (Gemma 3's local
    /// layers, Mistral's `sliding_window`). Which layers are local:
    /// [`sliding_window_pattern`](Self::sliding_window_pattern).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// With a `sliding_window`: every `n`-th layer (layers `n-1, 2n-1, ...`)
    /// attends to the whole context (a global layer) and the others within
    /// the window (Gemma 3: 6, five local layers then one global). `None`:
    /// every layer is local (Mistral).
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    /// RoPE base of the local layers (Gemma 3's `rope_local_base_freq`,
    /// 10000); `None`: `rope_theta`, as the global layers.
    #[serde(default)]
    pub rope_local_base_freq: Option<f64>,
    /// Gemma: the embedding rows are multiplied by `sqrt(hidden_size)`.
    #[serde(default)]
    pub scale_embeddings: bool,
    /// Gemma 2/3's extra RMS norms: one on the attention output and one on
    /// the MLP output, each before its residual add
    /// (`post_attention_norm` / `post_ffw_norm` in GGUF).
    #[serde(default)]
    pub post_norms: bool,
    /// The MLP's gate activation.
    #[serde(default)]
    pub hidden_act: Activation,
    /// Attention scores are scaled by `1 / sqrt(query_pre_attn_scalar)`
    /// (Gemma); `None`: `1 / sqrt(head_dim)`.
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
}

/// The gate activation of the gated MLP `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `x * sigmoid(x)` (SwiGLU: Llama, Mistral, Qwen).
    #[default]
    Silu,
    /// GELU, tanh approximation: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`
    /// (GeGLU: Gemma).
    GeluTanh,
}

impl LlamaConfig {
    /// Checks every value the forward pass uses: dimensions positive and
    /// consistent, sizes addressable, RoPE and RMSNorm parameters finite and in
    /// range, token ids inside the vocabulary. Both loaders (GGUF and Hugging
    /// Face) call it; each error is one sentence naming the field.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 || self.intermediate_size == 0 {
            return bad(format!(
                "vocab_size ({}), hidden_size ({}), intermediate_size ({}) and num_hidden_layers ({}) must all be positive",
                self.vocab_size, self.hidden_size, self.intermediate_size, self.num_hidden_layers
            ));
        }
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 || self.head_dim == 0 {
            return bad(format!(
                "num_attention_heads ({}), num_key_value_heads ({}) and head_dim ({}) must all be positive",
                self.num_attention_heads, self.num_key_value_heads, self.head_dim
            ));
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
        if self.weight_bytes().is_none_or(|b| b > isize::MAX as u64) {
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
        if self.max_position_embeddings == 0 {
            return bad("max_position_embeddings (the context length) must be positive".into());
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("rope_theta must be a positive finite number, got {}", num(self.rope_theta)));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return bad(format!("rms_norm_eps must be a finite number >= 0, got {}", num(self.rms_norm_eps)));
        }
        if let Some(s) = &self.rope_scaling {
            let positive = |x: f64| x.is_finite() && x > 0.0;
            if !positive(s.factor) {
                return bad(format!("rope_scaling.factor must be a positive finite number, got {}", num(s.factor)));
            }
            if !(positive(s.low_freq_factor) && positive(s.high_freq_factor) && s.high_freq_factor > s.low_freq_factor) {
                return bad(format!(
                    "rope_scaling needs positive finite low_freq_factor < high_freq_factor, got {} and {}",
                    num(s.low_freq_factor),
                    num(s.high_freq_factor)
                ));
            }
            if s.original_max_position_embeddings == 0 {
                return bad("rope_scaling.original_max_position_embeddings must be positive".into());
            }
        }
        // RoPE angles are `position * inv_freq`: the largest frequency (the
        // last pair's when rope_theta < 1, else the first's, 1), divided by a
        // scaling factor below 1, times the context must stay finite, or the
        // rotation is NaN. Closed form: nothing is allocated for head_dim.
        let d = self.head_dim as f64;
        let last = self.rope_theta.powf(-(d - 2.0) / d);
        let factor = self.rope_scaling.map_or(1.0, |s| s.factor.min(1.0));
        if !(last.max(1.0) / factor * self.max_position_embeddings as f64).is_finite() {
            return bad(format!(
                "rope_theta {} with head_dim {} gives RoPE angles that overflow over a context of {} tokens",
                num(self.rope_theta),
                self.head_dim,
                self.max_position_embeddings
            ));
        }
        let vocab = self.vocab_size as u64;
        if let Some(b) = self.bos_token_id.filter(|&b| b as u64 >= vocab) {
            return bad(format!("bos_token_id {b} is outside the vocabulary of {vocab} tokens"));
        }
        if let Some(e) = self.eos_token_ids.iter().find(|&&e| e as u64 >= vocab) {
            return bad(format!("eos_token_id {e} is outside the vocabulary of {vocab} tokens"));
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window must be positive (or absent)".into());
        }
        if self.sliding_window_pattern == Some(0) {
            return bad("sliding_window_pattern must be positive (or absent)".into());
        }
        if let Some(b) = self.rope_local_base_freq.filter(|b| !(b.is_finite() && *b > 0.0)) {
            return bad(format!("rope_local_base_freq must be a positive finite number, got {}", num(b)));
        }
        if let Some(s) = self.query_pre_attn_scalar.filter(|s| !(s.is_finite() && *s > 0.0)) {
            return bad(format!("query_pre_attn_scalar must be a positive finite number, got {}", num(s)));
        }
        Ok(())
    }

    /// The sliding window of layer `layer`, `None` for a layer that attends
    /// to the whole context (a global layer). A window as long as the context
    /// changes nothing, and counts as global.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        let w = self.sliding_window.filter(|&w| w < self.max_position_embeddings)?;
        match self.sliding_window_pattern {
            Some(n) if (layer + 1) % n == 0 => None,
            _ => Some(w),
        }
    }

    /// [`layer_window`](Self::layer_window) of every layer.
    pub fn layer_windows(&self) -> Vec<Option<usize>> {
        (0..self.num_hidden_layers).map(|l| self.layer_window(l)).collect()
    }

    /// Bytes of all f32 weights (biases and an untied output counted), or
    /// `None` on overflow. What loading the model needs at least.
    pub fn f32_weight_bytes(&self) -> Option<u64> {
        self.weight_bytes()
    }

    /// Bytes of all f32 weights (biases and an untied output counted), or `None` on overflow.
    fn weight_bytes(&self) -> Option<u64> {
        let (d, ff) = (self.hidden_size as u64, self.intermediate_size as u64);
        let q = (self.num_attention_heads as u64).checked_mul(self.head_dim as u64)?;
        let kv = (self.num_key_value_heads as u64).checked_mul(self.head_dim as u64)?;
        // q, o: [q, d]; k, v: [kv, d]; gate, up, down: [ff, d]; biases; two
        // norms; the per-head q/k norms.
        let layer = [q, q, kv, kv, ff, ff, ff]
            .iter()
            .try_fold(0u64, |acc, &rows| acc.checked_add(rows.checked_mul(d)?))?
            .checked_add(q.checked_add(kv.checked_mul(2)?)?)?
            .checked_add(d.checked_mul(2)?)?
            .checked_add(if self.qk_norm { (self.head_dim as u64).checked_mul(2)? } else { 0 })?
            .checked_add(if self.post_norms { d.checked_mul(2)? } else { 0 })?;
        // Embedding, output projection, final norm.
        let rest = (self.vocab_size as u64).checked_mul(d)?.checked_mul(2)?.checked_add(d)?;
        layer.checked_mul(self.num_hidden_layers as u64)?.checked_add(rest)?.checked_mul(4)
    }

    /// The fields beyond the Llama family's, at their Llama values (no
    /// sliding-window pattern, no local RoPE base, unscaled embeddings, no
    /// post norms, SiLU, `1/sqrt(head_dim)`), for struct literals:
    /// `LlamaConfig { ..., ..LlamaConfig::default_extras() }`. Its other
    /// fields are placeholders to be overwritten.
    pub fn default_extras() -> Self {
        Self {
            model_type: String::new(),
            vocab_size: 0,
            hidden_size: 0,
            intermediate_size: 0,
            num_hidden_layers: 0,
            num_attention_heads: 0,
            num_key_value_heads: 0,
            head_dim: 0,
            rms_norm_eps: 0.0,
            rope_theta: 0.0,
            rope_scaling: None,
            max_position_embeddings: 0,
            tie_word_embeddings: false,
            attention_bias: false,
            qk_norm: false,
            bos_token_id: None,
            eos_token_ids: vec![],
            sliding_window: None,
            sliding_window_pattern: None,
            rope_local_base_freq: None,
            scale_embeddings: false,
            post_norms: false,
            hidden_act: Activation::Silu,
            query_pre_attn_scalar: None,
        }
    }

    /// Parses a Hugging Face `config.json`.
    pub fn from_hf_json(text: &str) -> Result<Self, ModelError> {
        let mut v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ModelError::Config(format!("config.json does not parse: {e}")))?;
        // Gemma 3's multimodal configs keep the language model's fields in `text_config`.
        if let Some(text) = v.get("text_config").filter(|t| t.is_object()).cloned() {
            let archs = v.get("architectures").cloned();
            v = text;
            if let Some(a) = archs.filter(|_| v.get("architectures").is_none()) {
                v["architectures"] = a;
            }
        }
        let model_type = match v.get("model_type").and_then(|x| x.as_str()).unwrap_or("") {
            "gemma3_text" => "gemma3".to_string(),
            t => t.to_string(),
        };
        let archs: Vec<String> = v
            .get("architectures")
            .and_then(|a| a.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default();
        const TYPES: [&str; 5] = ["llama", "mistral", "qwen2", "qwen3", "gemma3"];
        if !TYPES.contains(&model_type.as_str()) {
            return Err(ModelError::Unsupported(format!(
                "model_type {model_type:?} (architectures {archs:?}); supported: llama, mistral, qwen2, qwen3, gemma3 (gemma3_text)"
            )));
        }
        let bad = |k: &str, what: &str| ModelError::Config(format!("config.json: {k} {what}"));
        // An optional key: absent (or, for `nullable` keys, null) gives `None`;
        // present with the wrong type is an error, never a silent default.
        let opt_u = |k: &str, nullable: bool| -> Result<Option<usize>, ModelError> {
            match v.get(k) {
                None => Ok(None),
                Some(serde_json::Value::Null) if nullable => Ok(None),
                Some(x) => x
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .map(Some)
                    .ok_or_else(|| bad(k, &format!("must be a non-negative integer, got {x}"))),
            }
        };
        let req = |k: &str| -> Result<usize, ModelError> {
            opt_u(k, false)?.ok_or_else(|| bad(k, "is missing or not a positive integer"))
        };
        let opt_f = |k: &str, default: f64| -> Result<f64, ModelError> {
            match v.get(k) {
                None => Ok(default),
                Some(x) => x.as_f64().ok_or_else(|| bad(k, &format!("must be a number, got {x}"))),
            }
        };
        let opt_b = |k: &str, default: bool| -> Result<bool, ModelError> {
            match v.get(k) {
                None => Ok(default),
                Some(x) => x.as_bool().ok_or_else(|| bad(k, &format!("must be true or false, got {x}"))),
            }
        };
        let heads = req("num_attention_heads")?;
        let hidden = req("hidden_size")?;
        let head_dim = match opt_u("head_dim", true)? {
            Some(d) => d,
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
        let ids = |k: &str| -> Result<Vec<u32>, ModelError> {
            let id = |x: &serde_json::Value| {
                x.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad(k, &format!("must be a token id (an integer below 2^32), got {x}")))
            };
            match v.get(k) {
                None | Some(serde_json::Value::Null) => Ok(vec![]),
                Some(serde_json::Value::Array(a)) => a.iter().map(id).collect(),
                Some(x) => Ok(vec![id(x)?]),
            }
        };
        // Qwen2 and Qwen3 configs carry a `sliding_window` they do not use unless
        // `use_sliding_window` is true; Mistral's applies whenever it is set.
        let sliding_window = match (model_type.as_str(), opt_b("use_sliding_window", false)?) {
            ("qwen2" | "qwen3", false) => None,
            _ => opt_u("sliding_window", true)?,
        };
        let gemma3 = model_type == "gemma3";
        let gemma = if gemma3 { Some(gemma3_fields(&v, &opt_f)?) } else { None };
        let cfg = Self {
            attention_bias: opt_b("attention_bias", model_type == "qwen2")?,
            qk_norm: model_type == "qwen3" || gemma3,
            model_type,
            vocab_size: req("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: req("intermediate_size")?,
            num_hidden_layers: req("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: opt_u("num_key_value_heads", true)?.unwrap_or(heads),
            head_dim,
            rms_norm_eps: opt_f("rms_norm_eps", 1e-6)?,
            rope_theta: opt_f("rope_theta", 10000.0)?,
            rope_scaling,
            max_position_embeddings: opt_u("max_position_embeddings", false)?.unwrap_or(4096),
            tie_word_embeddings: opt_b("tie_word_embeddings", gemma3)?,
            bos_token_id: ids("bos_token_id")?.first().copied(),
            eos_token_ids: ids("eos_token_id")?,
            sliding_window,
            ..Self::default_extras()
        };
        let cfg = match gemma {
            Some(g) => Self {
                sliding_window_pattern: g.pattern,
                rope_local_base_freq: Some(g.rope_local_base_freq),
                query_pre_attn_scalar: g.query_pre_attn_scalar,
                scale_embeddings: true,
                post_norms: true,
                hidden_act: Activation::GeluTanh,
                ..cfg
            },
            None => cfg,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Writes a Hugging Face `config.json` for this configuration.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let arch = match self.model_type.as_str() {
            "mistral" => "MistralForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            "qwen3" => "Qwen3ForCausalLM",
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
        if let Some(w) = self.sliding_window {
            v["sliding_window"] = w.into();
            if matches!(self.model_type.as_str(), "qwen2" | "qwen3") {
                v["use_sliding_window"] = true.into();
            }
        }
        v
    }
}

/// The fields of a Gemma 3 `config.json` beyond the Llama ones.
struct Gemma3Fields {
    pattern: Option<usize>,
    rope_local_base_freq: f64,
    query_pre_attn_scalar: Option<f64>,
}

/// Reads Gemma 3's own `config.json` fields, as the GGUF path reads their GGUF keys: which
/// layers are local (`layer_types`, or the older `sliding_window_pattern`; default 6),
/// `rope_local_base_freq` (default 10000), `query_pre_attn_scalar`, and the activation
/// (`hidden_activation`, which must be `gelu_pytorch_tanh`).
fn gemma3_fields(v: &serde_json::Value, opt_f: &dyn Fn(&str, f64) -> Result<f64, ModelError>) -> Result<Gemma3Fields, ModelError> {
    let bad = |m: String| ModelError::Config(format!("config.json: {m}"));
    let act = v.get("hidden_activation").or_else(|| v.get("hidden_act")).and_then(|a| a.as_str()).unwrap_or("gelu_pytorch_tanh");
    if act != "gelu_pytorch_tanh" {
        return Err(ModelError::Unsupported(format!("Gemma 3 hidden_activation {act:?}; lava runs gelu_pytorch_tanh (GeGLU)")));
    }
    if v.get("rope_scaling").is_some_and(|r| !r.is_null()) {
        return Err(ModelError::Unsupported(
            "Gemma 3 rope_scaling; lava runs Gemma 3 without RoPE scaling (the 270M and 1B)".into(),
        ));
    }
    let pattern = match v.get("layer_types").and_then(|t| t.as_array()) {
        Some(types) => {
            let global: Vec<bool> = types
                .iter()
                .map(|t| match t.as_str() {
                    Some("full_attention") => Ok(true),
                    Some("sliding_attention") => Ok(false),
                    _ => Err(bad(format!("layer_types holds {t}, not \"full_attention\" or \"sliding_attention\""))),
                })
                .collect::<Result<_, _>>()?;
            match global.iter().position(|&g| g) {
                None => None,
                Some(first) => {
                    let n = first + 1;
                    if global.iter().enumerate().any(|(l, &g)| g != ((l + 1) % n == 0)) {
                        return Err(ModelError::Unsupported(format!(
                            "layer_types: lava runs a global layer every n-th layer (layers n-1, 2n-1, ...), and these are not every {n}-th"
                        )));
                    }
                    Some(n)
                }
            }
        }
        None => match v.get("sliding_window_pattern") {
            None => Some(6),
            Some(p) => Some(p.as_u64().and_then(|p| usize::try_from(p).ok()).ok_or_else(|| bad(format!("sliding_window_pattern must be a positive integer, got {p}")))?),
        },
    };
    let query_pre_attn_scalar = match v.get("query_pre_attn_scalar") {
        None | Some(serde_json::Value::Null) => None,
        Some(_) => Some(opt_f("query_pre_attn_scalar", 0.0)?),
    };
    Ok(Gemma3Fields { pattern, rope_local_base_freq: opt_f("rope_local_base_freq", 10_000.0)?, query_pre_attn_scalar })
}
