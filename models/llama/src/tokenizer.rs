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
    /// `inner` with control tokens encoded as the plain text they spell.
    plain: HfTokenizer,
    /// The control tokens' spellings (`<|im_start|>`...).
    specials: Vec<String>,
    json: String,
    chat_template: Option<String>,
    bos: Option<String>,
    eos: Option<String>,
    /// Whether the model wants its BOS token at the start of every prompt.
    add_bos: bool,
}

/// Instructions a chat template may run per rendering (minijinja fuel): the
/// templates of real models use a few hundred per message.
pub const TEMPLATE_FUEL: u64 = 2_000_000;

/// Bytes a chat template may write per rendering, message texts not counted
/// (the template renders placeholders for them; see [`crate::Prompt`]).
pub const TEMPLATE_OUTPUT_LIMIT: usize = 1 << 20;

/// The largest single allocation (a string the template builds, say) while a
/// chat template renders: 256 MiB. Fuel does not bound memory (a template
/// can double a string each instruction); an allocator that enforces
/// [`crate::memory::allocation_cap`] (the `lava` binary's) ends such a
/// rendering with one sentence instead of exhausting memory.
pub const TEMPLATE_ALLOCATION_LIMIT: usize = 256 << 20;

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
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        let specials =
            inner.get_added_tokens_decoder().values().filter(|t| t.special && !t.content.is_empty()).map(|t| t.content.clone()).collect();
        let mut t =
            Self { inner, plain, specials, json: json.to_string(), chat_template, bos: None, eos: None, add_bos: false };
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
        let (template, add_bos, bos) = match crate::memory::read_text_bounded(&cfg_path, crate::memory::MAX_CONFIG_BYTES) {
            Ok(text) => {
                let v: Json = serde_json::from_str(&text).map_err(|e| {
                    ModelError::Tokenizer(format!("{} does not parse: {e}", cfg_path.display()))
                })?;
                let bos = match v.get("bos_token") {
                    Some(Json::String(s)) => Some(s.clone()),
                    Some(Json::Object(o)) => o.get("content").and_then(|c| c.as_str()).map(String::from),
                    _ => None,
                };
                (
                    v.get("chat_template").and_then(|t| t.as_str()).map(String::from),
                    v.get("add_bos_token").and_then(|b| b.as_bool()).unwrap_or(false),
                    bos,
                )
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, false, None),
            Err(e) => return Err(ModelError::io(&cfg_path, e)),
        };
        let mut t = Self::from_json(&json, template).map_err(|e| match e {
            ModelError::Tokenizer(m) => ModelError::Tokenizer(format!("{}: {m}", path.display())),
            other => other,
        })?;
        if let Some(bos) = bos.filter(|b| t.inner.token_to_id(b).is_some()) {
            t.bos = Some(bos);
        }
        t.add_bos = add_bos;
        if t.add_bos && t.bos.is_none() {
            return Err(ModelError::Tokenizer(format!(
                "{} sets add_bos_token but names no BOS token of the vocabulary; fix bos_token there",
                cfg_path.display()
            )));
        }
        Ok(t)
    }

    /// Rebuilds the tokenizer from GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        let json = tokenizer_json_from_gguf(g)?;
        let template = g.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(String::from);
        let mut t = Self::from_json(&json, template)?;
        if let Some(id) = g.get("tokenizer.ggml.bos_token_id").and_then(|v| v.as_u64()) {
            let token = u32::try_from(id).ok().and_then(|id| t.inner.id_to_token(id));
            match token {
                Some(token) => t.bos = Some(token),
                None => {
                    return Err(ModelError::Tokenizer(format!(
                        "tokenizer.ggml.bos_token_id {id} is not in the vocabulary of {} tokens; the GGUF file is inconsistent",
                        t.vocab_size()
                    )))
                }
            }
        }
        t.add_bos = g.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);
        if t.add_bos && t.bos.is_none() {
            return Err(ModelError::Tokenizer(
                "the GGUF file sets tokenizer.ggml.add_bos_token but names no BOS token".into(),
            ));
        }
        Ok(t)
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

    /// Encodes text with control tokens written in it taken as the plain text
    /// they spell (what message text gets, see [`crate::Prompt`]).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self.plain.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The spellings of the control tokens.
    pub fn special_tokens(&self) -> &[String] {
        &self.specials
    }

    /// Whether the model wants its BOS token at the start of every prompt
    /// (GGUF `tokenizer.ggml.add_bos_token`, Hugging Face `add_bos_token`).
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// The BOS id [`Tokenizer::encode_prompt`] puts first, if the model asks for one.
    pub(crate) fn bos_to_add(&self) -> Option<u32> {
        if !self.add_bos {
            return None;
        }
        self.bos.as_deref().and_then(|b| self.inner.token_to_id(b))
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

    /// Renders the chat template for `messages`, ending with the assistant's
    /// turn prompt, within [`TEMPLATE_FUEL`] instructions and
    /// [`TEMPLATE_OUTPUT_LIMIT`] bytes.
    pub fn apply_chat_template(&self, messages: &[Message]) -> Result<String, ModelError> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            ModelError::Tokenizer("this model has no chat template; run without --chat".into())
        })?;
        let mut env = minijinja::Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", template)
            .map_err(|e| ModelError::Tokenizer(format!("the chat template does not parse: {}", one_line(&e))))?;
        let tmpl = env.get_template("chat").map_err(|e| ModelError::Tokenizer(one_line(&e)))?;
        let mut out = LimitedWriter { bytes: Vec::new(), limit: TEMPLATE_OUTPUT_LIMIT, over: false };
        let context = minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos.clone().unwrap_or_default(),
            eos_token => self.eos.clone().unwrap_or_default(),
        };
        let cap = crate::memory::AllocationCap {
            bytes: TEMPLATE_ALLOCATION_LIMIT,
            what: "the chat template",
            fix: "the template is broken or hostile: fix it, or run without --chat",
        };
        let rendered = crate::memory::with_allocation_cap(cap, || {
            tmpl.render_captured_to(context, &mut out)
        });
        if out.over {
            return Err(ModelError::Tokenizer(format!(
                "the chat template wrote more than its limit of {TEMPLATE_OUTPUT_LIMIT} bytes (message texts not counted); the template is broken or hostile: fix it, or run without --chat"
            )));
        }
        if let Err(e) = rendered {
            if e.kind() == minijinja::ErrorKind::OutOfFuel {
                return Err(ModelError::Tokenizer(format!(
                    "the chat template ran past its limit of {TEMPLATE_FUEL} instructions; the template is broken or hostile: fix it, or run without --chat"
                )));
            }
            return Err(ModelError::Tokenizer(format!("the chat template failed: {}", one_line(&e))));
        }
        String::from_utf8(out.bytes)
            .map_err(|_| ModelError::Tokenizer("the chat template wrote text that is not UTF-8".into()))
    }
}

/// A minijinja error in one line (its debug form spans many).
fn one_line(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    if let Some(detail) = e.detail() {
        if !s.contains(detail) {
            s = format!("{s}: {detail}");
        }
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A writer that refuses to grow past `limit` bytes.
struct LimitedWriter {
    bytes: Vec<u8>,
    limit: usize,
    over: bool,
}

impl std::io::Write for LimitedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len().saturating_add(buf.len()) > self.limit {
            self.over = true;
            return Err(std::io::Error::other("chat template output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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
