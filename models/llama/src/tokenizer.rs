//! Tokenizer and chat template, from GGUF metadata or a Hugging Face directory.

use std::path::Path;

use serde_json::{json, Value as Json};
use tokenizers::Tokenizer as HfTokenizer;

use crate::error::ModelError;
use crate::gguf::GgufFile;

/// A byte-level BPE tokenizer plus the model's chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: HfTokenizer,
    json: String,
    chat_template: Option<String>,
    bos: Option<String>,
    eos: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("vocab", &self.inner.get_vocab_size(true)).finish()
    }
}

/// A chat message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Text.
    pub content: String,
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.json` text (and an optional chat template).
    pub fn from_json(json: &str, chat_template: Option<String>) -> Result<Self, ModelError> {
        let inner: HfTokenizer = json
            .parse()
            .map_err(|e| ModelError::Tokenizer(format!("tokenizer.json does not parse: {e}")))?;
        let mut t = Self { inner, json: json.to_string(), chat_template, bos: None, eos: None };
        t.bos = t.find_special(&["<|begin_of_text|>", "<s>", "<|im_start|>"]);
        t.eos = t.find_special(&["<|im_end|>", "<|eot_id|>", "</s>", "<|endoftext|>"]);
        Ok(t)
    }

    fn find_special(&self, candidates: &[&str]) -> Option<String> {
        candidates.iter().find(|c| self.inner.token_to_id(c).is_some()).map(|c| c.to_string())
    }

    /// Loads `tokenizer.json` (and the chat template of `tokenizer_config.json`) from a directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        let json = crate::memory::read_text_bounded(&path, crate::memory::MAX_TOKENIZER_BYTES)
            .map_err(|e| ModelError::io(&path, e))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let template = match crate::memory::read_text_bounded(&cfg_path, crate::memory::MAX_CONFIG_BYTES) {
            Ok(text) => {
                let v: Json = serde_json::from_str(&text).map_err(|e| {
                    ModelError::Tokenizer(format!("{} does not parse: {e}", cfg_path.display()))
                })?;
                v.get("chat_template").and_then(|t| t.as_str()).map(String::from)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ModelError::io(&cfg_path, e)),
        };
        Self::from_json(&json, template).map_err(|e| match e {
            ModelError::Tokenizer(m) => ModelError::Tokenizer(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Rebuilds the tokenizer from GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        let json = tokenizer_json_from_gguf(g)?;
        let template = g.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(String::from);
        Self::from_json(&json, template)
    }

    /// The `tokenizer.json` text this tokenizer was built from.
    pub fn to_json(&self) -> &str {
        &self.json
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Encodes text without adding special tokens (special tokens written in the text are recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self.inner.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text, dropping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner.decode(ids, true).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Id of a token string.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Renders the chat template for `messages`, ending with the assistant's turn prompt.
    pub fn apply_chat_template(&self, messages: &[Message]) -> Result<String, ModelError> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            ModelError::Tokenizer("this model has no chat template; run without --chat".into())
        })?;
        let mut env = minijinja::Environment::new();
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", template)
            .map_err(|e| ModelError::Tokenizer(format!("chat template does not parse: {e}")))?;
        let tmpl = env.get_template("chat").map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos.clone().unwrap_or_default(),
            eos_token => self.eos.clone().unwrap_or_default(),
        })
        .map_err(|e| ModelError::Tokenizer(format!("chat template failed: {e}")))
    }
}

/// The regex pre-tokenizers of the GGUF `tokenizer.ggml.pre` values lava knows.
fn pre_tokenizer(pre: &str) -> Result<Json, ModelError> {
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let split = |pattern: &str| {
        json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
    };
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Ok(match pre {
        // SmolLM / StarCoder: every digit its own token, then GPT-2 byte-level splitting.
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "gpt2" | "default" | "gpt-2" => byte_level(true),
        "llama-bpe" | "llama3" | "smaug-bpe" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3), byte_level(false)]})
        }
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(QWEN2), byte_level(false)]}),
        other => {
            return Err(ModelError::Unsupported(format!(
                "GGUF tokenizer pre-tokenizer {other:?}; supported: smollm, starcoder, gpt2, llama-bpe, qwen2 (or use a Hugging Face directory with tokenizer.json)"
            )))
        }
    })
}

/// Writes the Hugging Face `tokenizer.json` equivalent of a GGUF's `gpt2`-style BPE tokenizer.
pub fn tokenizer_json_from_gguf(g: &GgufFile) -> Result<String, ModelError> {
    let model = g.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(ModelError::Unsupported(format!(
            "GGUF tokenizer model {model:?}; lava reads byte-level BPE (\"gpt2\") tokenizers"
        )));
    }
    let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
    let merges = g.get_str_array("tokenizer.ggml.merges")?;
    let types: Vec<u64> = g
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().map(|x| x.as_u64().unwrap_or(1)).collect())
        .unwrap_or_default();
    let pre = g.get("tokenizer.ggml.pre").and_then(|v| v.as_str()).unwrap_or("gpt2");
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.to_string(), json!(id));
        // 3 = control, 4 = user-defined: matched verbatim, never split.
        let ty = types.get(id).copied().unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == 3}));
        }
    }
    let j = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre)?,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    });
    Ok(j.to_string())
}
