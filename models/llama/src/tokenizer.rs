//! Tokenizer and chat template, from GGUF metadata or a Hugging Face directory.

use std::path::Path;

use serde_json::{json, Value as Json};
use tokenizers::Tokenizer as HfTokenizer;

use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::spm::{self, Spm};

/// A tokenizer (byte-level BPE through the `tokenizers` crate, or
/// SentencePiece BPE) plus the model's chat template.
#[derive(Clone)]
pub struct Tokenizer {
    /// For a SentencePiece vocabulary, its Hugging Face equivalent (what
    /// [`Tokenizer::to_json`] gives); `spm` encodes and decodes.
    inner: HfTokenizer,
    /// A SentencePiece vocabulary (GGUF `tokenizer.ggml.model` `llama`).
    spm: Option<std::sync::Arc<Spm>>,
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
    /// Whether the model wants its EOS token at the end of every prompt.
    add_eos: bool,
    /// The `tokenizers` crate's Metaspace pre-tokenizer prepends its U+2581
    /// only to text that does not start with one already (a space, once
    /// replaced), unlike sentencepiece: such text gets one more space in front.
    metaspace_prefix: bool,
    /// Whether the decoder is byte-level (GPT-2's byte-to-character map).
    byte_level: bool,
}

/// Gemma's chat format, for Gemma 3 GGUF files that carry no
/// `tokenizer.chat_template`: `<start_of_turn>user\n...<end_of_turn>\n`
/// per turn (the assistant's role is `model`), a system message prepended to
/// the first user turn with a blank line, BOS first; the generation prompt is
/// `<start_of_turn>model\n` (llama.cpp's built-in `gemma` template).
pub const GEMMA_CHAT_TEMPLATE: &str = "{{ bos_token }}\
{%- set ns = namespace(prefix='') -%}\
{%- for m in messages -%}\
{%- if m.role == 'system' -%}{%- set ns.prefix = ns.prefix + (m.content | trim) + '\n\n' -%}\
{%- else -%}\
{{ '<start_of_turn>' + ('model' if m.role == 'assistant' else m.role) + '\n' + ns.prefix + (m.content | trim) + '<end_of_turn>\n' }}\
{%- set ns.prefix = '' -%}\
{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}";

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

/// The byte a character of GPT-2's byte-level alphabet stands for: the
/// printable bytes (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) are themselves, the other
/// 68 bytes are U+0100 onwards in byte order.
fn gpt2_byte(c: char) -> Option<u8> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let c = c as u32;
    if printable(c) {
        return u8::try_from(c).ok();
    }
    let n = c.checked_sub(256)?;
    (0..=255u32).filter(|&b| !printable(b)).nth(n as usize).and_then(|b| u8::try_from(b).ok())
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
        let mut t = Self {
            inner,
            spm: None,
            plain,
            specials,
            json: json.to_string(),
            chat_template,
            bos: None,
            eos: None,
            add_bos: false,
            add_eos: false,
            metaspace_prefix: false,
            byte_level: false,
        };
        let parsed: Json = serde_json::from_str(json).unwrap_or(Json::Null);
        let pre = &parsed["pre_tokenizer"];
        let metaspace = |p: &Json| {
            p["type"] == "Metaspace"
                && p.get("prepend_scheme").and_then(|s| s.as_str()).map_or(
                    p.get("add_prefix_space").and_then(|a| a.as_bool()).unwrap_or(true),
                    |s| s != "never",
                )
        };
        t.metaspace_prefix = metaspace(pre)
            || pre["type"] == "Sequence"
                && pre["pretokenizers"].as_array().is_some_and(|a| a.first().is_some_and(metaspace));
        let dec = &parsed["decoder"];
        t.byte_level = dec["type"] == "ByteLevel"
            || dec["type"] == "Sequence" && dec["decoders"].as_array().is_some_and(|a| a.iter().any(|d| d["type"] == "ByteLevel"));
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
        let mut cfg = HfTokenizerConfig::default();
        match crate::memory::read_text_bounded(&cfg_path, crate::memory::MAX_CONFIG_BYTES) {
            Ok(text) => {
                let v: Json = serde_json::from_str(&text).map_err(|e| {
                    ModelError::Tokenizer(format!("{} does not parse: {e}", cfg_path.display()))
                })?;
                let token = |key: &str| match v.get(key) {
                    Some(Json::String(s)) => Some(s.clone()),
                    Some(Json::Object(o)) => o.get("content").and_then(|c| c.as_str()).map(String::from),
                    _ => None,
                };
                cfg = HfTokenizerConfig {
                    template: v.get("chat_template").and_then(|t| t.as_str()).map(String::from),
                    add_bos: v.get("add_bos_token").and_then(|b| b.as_bool()).unwrap_or(false),
                    add_eos: v.get("add_eos_token").and_then(|b| b.as_bool()).unwrap_or(false),
                    bos: token("bos_token"),
                    eos: token("eos_token"),
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ModelError::io(&cfg_path, e)),
        };
        let mut t = Self::from_json(&json, cfg.template).map_err(|e| match e {
            ModelError::Tokenizer(m) => ModelError::Tokenizer(format!("{}: {m}", path.display())),
            other => other,
        })?;
        if let Some(bos) = cfg.bos.filter(|b| t.inner.token_to_id(b).is_some()) {
            t.bos = Some(bos);
        }
        if let Some(eos) = cfg.eos.filter(|b| t.inner.token_to_id(b).is_some()) {
            t.eos = Some(eos);
        }
        t.add_bos = cfg.add_bos;
        t.add_eos = cfg.add_eos;
        if t.add_bos && t.bos.is_none() {
            return Err(ModelError::Tokenizer(format!(
                "{} sets add_bos_token but names no BOS token of the vocabulary; fix bos_token there",
                cfg_path.display()
            )));
        }
        if t.add_eos && t.eos.is_none() {
            return Err(ModelError::Tokenizer(format!(
                "{} sets add_eos_token but names no EOS token of the vocabulary; fix eos_token there",
                cfg_path.display()
            )));
        }
        Ok(t)
    }

    /// Rebuilds the tokenizer from GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        let spm = match g.get_str("tokenizer.ggml.model")? {
            "llama" => Some(std::sync::Arc::new(spm_from_gguf(g)?)),
            _ => None,
        };
        let json = match &spm {
            Some(spm) => spm_tokenizer_json(spm),
            None => tokenizer_json_from_gguf(g)?,
        };
        let template = g.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(String::from);
        // Gemma 3 files converted without their template still chat in Gemma's turns.
        let template = template.or_else(|| (g.get_str("general.architecture").ok() == Some("gemma3")).then(|| GEMMA_CHAT_TEMPLATE.to_string()));
        let mut t = Self::from_json(&json, template)?;
        t.spm = spm;
        let is_spm = t.spm.is_some();
        let token_of = |key: &str| -> Option<(u64, Option<String>)> {
            let id = g.get(key).and_then(|v| v.as_u64())?;
            Some((id, u32::try_from(id).ok().and_then(|id| t.id_to_token(id))))
        };
        let bos = token_of("tokenizer.ggml.bos_token_id");
        // An EOS id outside the vocabulary leaves the usual spellings' guess.
        let eos = token_of("tokenizer.ggml.eos_token_id").and_then(|(_, token)| token);
        match bos {
            Some((_, Some(token))) => t.bos = Some(token),
            Some((id, None)) => {
                return Err(ModelError::Tokenizer(format!(
                    "tokenizer.ggml.bos_token_id {id} is not in the vocabulary of {} tokens; the GGUF file is inconsistent",
                    t.vocab_size()
                )))
            }
            None => {}
        }
        if eos.is_some() {
            t.eos = eos;
        }
        // llama.cpp's defaults: SentencePiece models want BOS, BPE ones do not.
        t.add_bos = g.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(is_spm);
        t.add_eos = g.get("tokenizer.ggml.add_eos_token").and_then(|v| v.as_bool()).unwrap_or(false);
        if t.add_bos && t.bos.is_none() {
            return Err(ModelError::Tokenizer(
                "the GGUF file sets tokenizer.ggml.add_bos_token (or is a SentencePiece tokenizer, which adds BOS by default) but names no BOS token in tokenizer.ggml.bos_token_id".into(),
            ));
        }
        if t.add_eos && t.eos.is_none() {
            return Err(ModelError::Tokenizer(
                "the GGUF file sets tokenizer.ggml.add_eos_token but names no EOS token in tokenizer.ggml.eos_token_id".into(),
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
        if let Some(ids) = self.encode_segments(&[(text, true)], true) {
            return ids;
        }
        let text = self.metaspace_text(text);
        let enc = self.inner.encode(text.as_ref(), false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `text` with the space sentencepiece's dummy prefix would give where a
    /// Metaspace pre-tokenizer gives none (see `metaspace_prefix`).
    fn metaspace_text<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        if self.metaspace_prefix && (text.starts_with(' ') || text.starts_with(spm::SPACE)) {
            format!(" {text}").into()
        } else {
            text.into()
        }
    }

    /// Encodes text with control tokens written in it taken as the plain text
    /// they spell (what message text gets, see [`crate::Prompt`]).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        if let Some(ids) = self.encode_segments(&[(text, false)], true) {
            return ids;
        }
        let text = self.metaspace_text(text);
        let enc = self.plain.encode(text.as_ref(), false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// SentencePiece only (`None` otherwise): encodes consecutive texts as one,
    /// control tokens written in those marked `true` recognised, the others
    /// plain text. Each run of text between control tokens gets the dummy
    /// prefix space when it starts the input (`at_start`) or follows a control
    /// token, as llama.cpp does.
    pub(crate) fn encode_segments(&self, segments: &[(&str, bool)], at_start: bool) -> Option<Result<Vec<u32>, ModelError>> {
        let spm = self.spm.as_deref()?;
        let run_segments = || -> Result<Vec<u32>, ModelError> {
            let mut out = Vec::new();
            let mut run = String::new();
            let mut prefix = at_start;
            let flush = |run: &mut String, prefix: &mut bool, out: &mut Vec<u32>| -> Result<(), ModelError> {
                if !run.is_empty() {
                    spm.encode_into(run, *prefix, out)?;
                    *prefix = false;
                    run.clear();
                }
                Ok(())
            };
            for &(text, recognise) in segments {
                let mut rest = text;
                while recognise {
                    let Some((at, special)) = self.find_special_in(rest) else { break };
                    run.push_str(&rest[..at]);
                    flush(&mut run, &mut prefix, &mut out)?;
                    out.push(spm.id(special).ok_or_else(|| ModelError::Internal("a control token of the tokenizer is not in its vocabulary".into()))?);
                    prefix = true;
                    rest = &rest[at + special.len()..];
                }
                run.push_str(rest);
            }
            flush(&mut run, &mut prefix, &mut out)?;
            Ok(out)
        };
        Some(run_segments())
    }

    /// The leftmost control token spelled in `text` (the longest there), and where.
    fn find_special_in<'a>(&'a self, text: &str) -> Option<(usize, &'a str)> {
        let mut best: Option<(usize, &str)> = None;
        for s in &self.specials {
            if let Some(at) = text.find(s.as_str()) {
                if best.is_none_or(|(b, bs)| at < b || (at == b && s.len() > bs.len())) {
                    best = Some((at, s));
                }
            }
        }
        best
    }

    /// Whether `id` is a control token (what text that follows gets a dummy
    /// prefix space after, for SentencePiece).
    pub fn is_special_id(&self, id: u32) -> bool {
        self.id_to_token(id).is_some_and(|t| self.specials.iter().any(|s| *s == t))
    }

    /// The spellings of the control tokens.
    pub fn special_tokens(&self) -> &[String] {
        &self.specials
    }

    /// Whether the model wants its BOS token at the start of every prompt
    /// (GGUF `tokenizer.ggml.add_bos_token`, default on for SentencePiece
    /// vocabularies; Hugging Face `add_bos_token`).
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether the model wants its EOS token at the end of every prompt
    /// (GGUF `tokenizer.ggml.add_eos_token`, Hugging Face `add_eos_token`).
    pub fn adds_eos(&self) -> bool {
        self.add_eos
    }

    /// The BOS id [`Tokenizer::encode_prompt`] puts first, if the model asks for one.
    pub fn bos_to_add(&self) -> Option<u32> {
        if !self.add_bos {
            return None;
        }
        self.bos.as_deref().and_then(|b| self.token_id(b))
    }

    /// The spellings of the BOS and EOS tokens, if the model has them.
    pub(crate) fn bos_eos(&self) -> (Option<&str>, Option<&str>) {
        (self.bos.as_deref(), self.eos.as_deref())
    }

    /// The EOS id [`Tokenizer::encode_prompt`] puts last, if the model asks for one.
    pub(crate) fn eos_to_add(&self) -> Option<u32> {
        if !self.add_eos {
            return None;
        }
        self.eos.as_deref().and_then(|b| self.token_id(b))
    }

    /// Decodes ids to text, dropping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        if let Some(spm) = &self.spm {
            return Ok(spm.decode(ids));
        }
        self.inner.decode(ids, true).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// Id of a token string.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match &self.spm {
            Some(spm) => spm.id(token),
            None => self.inner.token_to_id(token),
        }
    }

    /// The token string of an id.
    fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.spm {
            Some(spm) => spm.piece(id).map(String::from),
            None => self.inner.id_to_token(id),
        }
    }

    /// The bytes token `id` stands for in decoded text, as OpenAI's
    /// `logprobs.bytes` gives them: a byte-level piece's bytes (which may be
    /// part of a character), a SentencePiece `<0xHH>` byte, `▁` as a space,
    /// a control token's spelling. `None` outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let piece = self.id_to_token(id)?;
        if let Some(b) = spm::parse_byte(&piece) {
            return Some(vec![b]);
        }
        if self.byte_level {
            if let Some(bytes) = piece.chars().map(gpt2_byte).collect::<Option<Vec<u8>>>() {
                return Some(bytes);
            }
        }
        Some(piece.replace(spm::SPACE, " ").into_bytes())
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        match &self.spm {
            Some(spm) => spm.len(),
            None => self.inner.get_vocab_size(true),
        }
    }

    /// Renders the chat template for `messages`, ending with the assistant's
    /// turn prompt, within [`TEMPLATE_FUEL`] instructions and
    /// [`TEMPLATE_OUTPUT_LIMIT`] bytes.
    pub fn apply_chat_template(&self, messages: &[Message]) -> Result<String, ModelError> {
        let messages = serde_json::to_value(messages).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        self.render_chat_template(&messages, None)
    }

    /// Renders the chat template for `messages` (JSON objects with `role`,
    /// `content` and whatever else the template reads, such as an assistant
    /// turn's `tool_calls`) and `tools` (the template's `tools` variable: the
    /// function definitions it writes into the prompt), ending with the
    /// assistant's turn prompt, within the same limits as
    /// [`apply_chat_template`](Self::apply_chat_template).
    pub fn render_chat_template(&self, messages: &Json, tools: Option<&Json>) -> Result<String, ModelError> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            ModelError::Tokenizer("this model has no chat template; run without --chat".into())
        })?;
        let mut env = minijinja::Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_filter("tojson", crate::template_json::tojson);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", template)
            .map_err(|e| ModelError::Tokenizer(format!("the chat template does not parse: {}", one_line(&e))))?;
        let tmpl = env.get_template("chat").map_err(|e| ModelError::Tokenizer(one_line(&e)))?;
        let mut out = LimitedWriter { bytes: Vec::new(), limit: TEMPLATE_OUTPUT_LIMIT, over: false };
        let context = minijinja::context! {
            messages => minijinja::Value::from_serialize(messages),
            tools => tools.map(minijinja::Value::from_serialize),
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

/// What `tokenizer_config.json` says about the tokenizer.
#[derive(Default)]
struct HfTokenizerConfig {
    template: Option<String>,
    add_bos: bool,
    add_eos: bool,
    bos: Option<String>,
    eos: Option<String>,
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

/// Writes the Hugging Face `tokenizer.json` equivalent of a GGUF's tokenizer
/// (`gpt2`-style byte-level BPE, or `llama`-style SentencePiece BPE).
pub fn tokenizer_json_from_gguf(g: &GgufFile) -> Result<String, ModelError> {
    let model = g.get_str("tokenizer.ggml.model")?;
    match model {
        "gpt2" => {}
        "llama" => return Ok(spm_tokenizer_json(&spm_from_gguf(g)?)),
        other => {
            return Err(ModelError::Unsupported(format!(
                "GGUF tokenizer model {other:?}; lava reads byte-level BPE (\"gpt2\") and SentencePiece (\"llama\") tokenizers"
            )))
        }
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

/// The SentencePiece vocabulary of a GGUF whose `tokenizer.ggml.model` is `llama`.
fn spm_from_gguf(g: &GgufFile) -> Result<Spm, ModelError> {
    let tokens: Vec<String> = g.get_str_array("tokenizer.ggml.tokens")?.into_iter().map(String::from).collect();
    let n = tokens.len();
    // Absent scores and types are llama.cpp's defaults: 0 and normal.
    let scores: Vec<f32> = match g.get("tokenizer.ggml.scores") {
        None => vec![0.0; n],
        Some(v) => {
            let a = v.as_array().ok_or_else(|| ModelError::Tokenizer("tokenizer.ggml.scores is not an array".into()))?;
            a.iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_f64().map(|f| f as f32).ok_or_else(|| {
                        ModelError::Tokenizer(format!("tokenizer.ggml.scores[{i}] is not a number"))
                    })
                })
                .collect::<Result<_, _>>()?
        }
    };
    let types: Vec<u8> = match g.get("tokenizer.ggml.token_type") {
        None => vec![spm::kind::NORMAL; n],
        Some(v) => {
            let a = v.as_array().ok_or_else(|| ModelError::Tokenizer("tokenizer.ggml.token_type is not an array".into()))?;
            a.iter()
                .enumerate()
                .map(|(i, x)| {
                    x.as_u64().and_then(|t| u8::try_from(t).ok()).ok_or_else(|| {
                        ModelError::Tokenizer(format!("tokenizer.ggml.token_type[{i}] is not a token type (1 to 6)"))
                    })
                })
                .collect::<Result<_, _>>()?
        }
    };
    let add_space_prefix = g.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.as_bool()).unwrap_or(true);
    Spm::new(tokens, scores, types, add_space_prefix)
}

/// The Hugging Face `tokenizer.json` equivalent of a SentencePiece BPE
/// vocabulary, as `transformers` converts Llama's: a BPE model with byte
/// fallback whose merges follow the scores, U+2581 for spaces with a dummy
/// prefix (a `Prepend` normalizer: every run of text between added tokens
/// gets it, as in llama.cpp), control and unknown pieces as special added
/// tokens, user-defined pieces as plain added tokens.
fn spm_tokenizer_json(spm: &Spm) -> String {
    let mut vocab = serde_json::Map::with_capacity(spm.len());
    let mut added = Vec::new();
    let mut unk = None;
    for id in 0..spm.len() as u32 {
        let (Some(piece), Some(kind)) = (spm.piece(id), spm.kind(id)) else { continue };
        if vocab.contains_key(piece) {
            continue;
        }
        vocab.insert(piece.to_string(), json!(id));
        if kind == spm::kind::UNKNOWN {
            unk.get_or_insert(piece);
        }
        if matches!(kind, spm::kind::UNKNOWN | spm::kind::CONTROL | spm::kind::USER_DEFINED) && !piece.is_empty() {
            added.push(json!({"id": id, "content": piece, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": kind != spm::kind::USER_DEFINED}));
        }
    }
    let merges: Vec<Json> = spm.hf_merges().into_iter().map(|(l, r)| json!([l, r])).collect();
    let space = spm::SPACE.to_string();
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": space});
    let normalizer = if spm.add_space_prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": space}, replace]})
    } else {
        replace
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": space}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if spm.add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    })
    .to_string()
}
