//! Compressed contexts: a sequence's cache after its context (a document,
//! the earlier turns of a conversation) kept to answer from many times, in
//! memory or in one file.
//!
//! A [`SavedContext`] is the cache's [`CacheSnapshot`] plus what it was made
//! from: the model file's SHA-256, the context's token ids and how the prompt
//! was laid out (chat template or not, system message). A file holds all of
//! it ([`lava_cache::snapshot`] for the layout; the entries here are the
//! caller's metadata). Loading checks the model before anything else and
//! refuses another model's file in one sentence.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use burn::tensor::backend::Backend;
use lava_cache::{CacheError, CacheSnapshot, PolicyConfig, PolicyName, SnapshotKind};
use lava_llama::Llama;

use crate::cache::{build_cache, CacheOptions};
use crate::error::RunError;
use crate::prefill::Sequence;

/// Metadata entry: the SHA-256 of the model file the context was computed with.
pub const MODEL_SHA256: &str = "model_sha256";
/// Metadata entry: the context's token ids, a JSON array.
pub const TOKENS: &str = "tokens";
/// Metadata entry: how the prompt around the context was laid out, a JSON object.
pub const PROMPT: &str = "prompt";
/// Metadata entry: the lava version that wrote the file.
pub const WRITER: &str = "writer";

/// How the prompt around a context is laid out, so that a question asked
/// later continues it the same way.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptLayout {
    /// Whether the model's chat template wraps the turn.
    pub chat: bool,
    /// The system message, if any.
    pub system: Option<String>,
}

/// A compressed context, ready to answer from (module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct SavedContext {
    /// What the cache holds.
    pub snapshot: CacheSnapshot,
    /// The context's token ids, in order.
    pub tokens: Vec<u32>,
    /// SHA-256 (hex) of the model file.
    pub model_sha256: String,
    /// How the prompt around the context is laid out.
    pub layout: PromptLayout,
}

/// The cache settings a snapshot was taken with: the policy (every
/// parameter), decode-time eviction slack and chunked prefill, and the KV dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextPolicy {
    /// The policy.
    pub policy: PolicyConfig,
    /// Decode-time eviction slack.
    pub decode_slack: Option<usize>,
    /// Chunked prefill.
    pub chunked_prefill: bool,
    /// How K and V are stored.
    pub kv_dtype: lava_cache::KvDtype,
}

impl SavedContext {
    /// The context `seq` holds now (every token it was fed), for a model
    /// file of SHA-256 `model_sha256`.
    pub fn of<B: Backend>(seq: &Sequence<B>, model_sha256: &str, layout: PromptLayout) -> Result<Self, RunError> {
        Ok(Self { snapshot: seq.cache.snapshot()?, tokens: seq.tokens.clone(), model_sha256: model_sha256.to_string(), layout })
    }

    /// The policy and cache settings the context was compressed with.
    pub fn policy(&self) -> ContextPolicy {
        policy_of(&self.snapshot)
    }

    /// A sequence holding this context, in a fresh cache of `model` built
    /// for it (room for `max_tokens` in all and `decode_tokens` generated).
    pub fn sequence<B: Backend>(&self, model: &Llama<B>, max_tokens: usize, decode_tokens: usize) -> Result<Sequence<B>, RunError> {
        if self.tokens.len() != self.snapshot.next_position() {
            return Err(CacheError::Snapshot(format!(
                "it names {} context tokens but its cache holds {} positions",
                self.tokens.len(),
                self.snapshot.next_position()
            ))
            .into());
        }
        let p = self.policy();
        let options = CacheOptions { decode_tokens, chunked_prefill: p.chunked_prefill, decode_slack: p.decode_slack, kv_dtype: p.kv_dtype };
        let mut cache = build_cache(model, &p.policy, max_tokens.max(self.tokens.len()), options, model.device())?;
        cache.restore(&self.snapshot)?;
        Ok(Sequence::resume(cache, self.tokens.clone()))
    }

    /// Writes the context to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), RunError> {
        let mut meta = BTreeMap::new();
        meta.insert(MODEL_SHA256.to_string(), self.model_sha256.clone());
        meta.insert(TOKENS.to_string(), serde_json::to_string(&self.tokens).map_err(internal)?);
        meta.insert(PROMPT.to_string(), serde_json::to_string(&self.layout).map_err(internal)?);
        meta.insert(WRITER.to_string(), format!("lava {}", env!("CARGO_PKG_VERSION")));
        Ok(self.snapshot.save(path, &meta)?)
    }

    /// Reads a context file written for the model of SHA-256 `model_sha256`;
    /// refuses (naming the file) one that is damaged, of another format or
    /// version, or computed with another model.
    pub fn load(path: &Path, model_sha256: &str) -> Result<Self, RunError> {
        let named = |msg: String| RunError::from(CacheError::Snapshot(format!("{}: {msg}", path.display())));
        let (snapshot, meta) = CacheSnapshot::load(path)?;
        let get = |k: &str| meta.get(k).ok_or_else(|| named(format!("it has no {k} entry; it is not a lava context file")));
        let sha = get(MODEL_SHA256)?;
        if sha != model_sha256 {
            return Err(named(format!(
                "it was computed with the model of SHA-256 {}, and the model loaded is {}; load the model it was made with, or compress the context again",
                short(sha),
                short(model_sha256)
            )));
        }
        let tokens: Vec<u32> = serde_json::from_str(get(TOKENS)?).map_err(|e| named(format!("its token list is not valid: {e}")))?;
        let layout: PromptLayout = serde_json::from_str(get(PROMPT)?).map_err(|e| named(format!("its prompt layout is not valid: {e}")))?;
        if tokens.len() != snapshot.next_position() {
            return Err(named(format!("it names {} context tokens but its cache holds {} positions", tokens.len(), snapshot.next_position())));
        }
        Ok(Self { snapshot, tokens, model_sha256: model_sha256.to_string(), layout })
    }
}

/// The cache settings of a snapshot (those of the global layers' cache for a
/// model with sliding-window layers).
pub fn policy_of(snapshot: &CacheSnapshot) -> ContextPolicy {
    let full = |kv_dtype| ContextPolicy { policy: PolicyConfig::new(PolicyName::Full, 0), decode_slack: None, chunked_prefill: false, kv_dtype };
    match &snapshot.kind {
        SnapshotKind::Full => full(snapshot.kv_dtype),
        SnapshotKind::Compressed { policy, decode_slack, chunked_prefill } => {
            ContextPolicy { policy: policy.clone(), decode_slack: *decode_slack, chunked_prefill: *chunked_prefill, kv_dtype: snapshot.kv_dtype }
        }
        SnapshotKind::Sliding { inner: Some(inner), .. } => policy_of(inner),
        SnapshotKind::Sliding { inner: None, .. } => full(lava_cache::KvDtype::F32),
    }
}

/// SHA-256 (hex) of a model: of the file, or for a directory of its regular
/// files' contents in name order.
pub fn model_sha256(model: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut files = Vec::new();
    if model.is_dir() {
        for e in std::fs::read_dir(model)? {
            let p = e?.path();
            if p.is_file() {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(model.to_path_buf());
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for f in files {
        let mut r = std::fs::File::open(&f)?;
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn internal(e: serde_json::Error) -> RunError {
    RunError::Cache(CacheError::Internal(e.to_string()))
}
