//! Prefill once, compress many (what `lava eval` and `lava bench` run).
//!
//! In every policy here (as in the reference implementations) a layer's prefill
//! attention is computed over the full prompt and compression happens after it,
//! so the prefill's hidden states do not depend on the policy. The engine runs
//! the prefill once with a recording full cache, then builds each policy's cache
//! from the recorded keys and values and the policy's selection, which is
//! exactly what running that policy live would keep.
//!
//! A model with sliding-window (local) layers prefills through rings for
//! those and a full cache for the global layers; only the global layers are
//! recorded, and each policy's cache is the prefill's rings around the cache
//! it builds over the global layers alone (module `windows`).

use burn::tensor::{backend::Backend, Tensor};
use lava_cache::{CacheError, KvCache, KvDtype, LayerQkv, PolicyConfig, PolicyName, PromptScores};
use lava_llama::{Llama, Logits, ModelError};

use crate::cache::{compressed_cache_for, full_cache_for, CacheOptions};

mod windows;

use windows::{global_index, global_shape, FullPrefill};

use crate::error::RunError;

type Result<T> = std::result::Result<T, RunError>;

/// A full cache that also keeps each global layer's first (prefill) `q`, `k`, `v`.
pub struct RecordingCache<B: Backend> {
    inner: FullPrefill<B>,
    /// Per model layer: its index among the global layers (`None`: a local layer, not recorded).
    global: Vec<Option<usize>>,
    recorded: Vec<Option<LayerQkv<B>>>,
}

impl<B: Backend> RecordingCache<B> {
    /// Wraps a new full cache for `model`.
    pub fn new(model: &Llama<B>, max_tokens: usize) -> Result<Self> {
        Ok(Self::around(model, FullPrefill::new(model, max_tokens)?))
    }

    fn around(model: &Llama<B>, inner: FullPrefill<B>) -> Self {
        let global = global_index(model);
        let globals = global.iter().flatten().count();
        Self { inner, global, recorded: (0..globals).map(|_| None).collect() }
    }
}

impl<B: Backend> KvCache<B> for RecordingCache<B> {
    fn attend(&mut self, layer: usize, q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>) -> std::result::Result<Tensor<B, 3>, CacheError> {
        if let Some(slot @ None) = self.global.get(layer).copied().flatten().and_then(|g| self.recorded.get_mut(g)) {
            *slot = Some(LayerQkv::new(q.clone(), k.clone(), v.clone()));
        }
        self.inner.cache().attend(layer, q, k, v)
    }
    fn next_position(&self) -> usize {
        self.inner.cache_ref().next_position()
    }
    fn stats(&self) -> lava_cache::CacheStats {
        self.inner.cache_ref().stats()
    }
    fn reset(&mut self) {
        self.inner.cache().reset();
        self.recorded.iter_mut().for_each(|r| *r = None);
    }
    fn sliding_window(&self, layer: usize) -> Option<usize> {
        self.inner.cache_ref().sliding_window(layer)
    }
}

fn model_err(e: impl Into<ModelError>) -> RunError {
    RunError::Model(e.into())
}

fn internal(msg: &str) -> RunError {
    RunError::Cache(CacheError::Internal(msg.into()))
}

/// The state after one prefill, from which every policy's cache is derived.
pub struct Prefilled<B: Backend> {
    full: FullPrefill<B>,
    /// The global layers' recorded `q`, `k`, `v` (every layer's for a model without local layers).
    qkv: Vec<LayerQkv<B>>,
    /// Logits after the last prompt token, `[1, vocab]`.
    pub last_logits: Tensor<B, 2>,
    /// Prompt tokens.
    pub prompt_len: usize,
    /// Scores computed so far, one per scorer: every budget and every policy
    /// sharing a scorer selects from the same scores.
    scores: Vec<PromptScores>,
}

/// Runs the prompt once (one forward pass) and records what the policies need.
pub fn prefill<B: Backend>(model: &Llama<B>, ids: &[u32], max_tokens: usize) -> Result<Prefilled<B>> {
    let mut rec = RecordingCache::new(model, max_tokens)?;
    let last_logits = model.forward(ids, &mut rec, Logits::Last).map_err(model_err)?;
    let qkv = rec.recorded.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| internal("a layer was not recorded by the prefill"))?;
    Ok(Prefilled { full: rec.inner, qkv, last_logits, prompt_len: ids.len(), scores: Vec::new() })
}

impl<B: Backend> Prefilled<B> {
    /// The prefill of this prompt followed by `suffix`, from this one: the full cache runs
    /// on through `suffix` (one forward pass of `suffix.len()` tokens, attending to the
    /// whole prefix as a prefill of both would) and each layer's recorded `q`, `k`, `v` are
    /// this prefill's followed by the suffix's. The query-aware prompt of a query-agnostic
    /// split is prefilled this way, so the two settings share the context's prefill. `self`
    /// is left as it was.
    pub fn extended(&self, model: &Llama<B>, suffix: &[u32]) -> Result<Prefilled<B>> {
        if suffix.is_empty() {
            return Err(internal("extending a prefill by no tokens"));
        }
        let mut rec = RecordingCache::around(model, self.full.copy()?);
        let last_logits = model.forward(suffix, &mut rec, Logits::Last).map_err(model_err)?;
        let mut qkv = Vec::with_capacity(self.qkv.len());
        for (old, new) in self.qkv.iter().zip(rec.recorded) {
            let new = new.ok_or_else(|| internal("a layer was not recorded by the suffix's prefill"))?;
            let cat = |a: &Tensor<B, 3>, b: Tensor<B, 3>| Tensor::cat(vec![a.clone(), b], 1);
            qkv.push(LayerQkv::new(cat(&old.q, new.q), cat(&old.k, new.k), cat(&old.v, new.v)));
        }
        Ok(Prefilled { full: rec.inner, qkv, last_logits, prompt_len: self.prompt_len + suffix.len(), scores: Vec::new() })
    }

    /// The cache `policy` would hold after this prefill, with room for `decode_tokens`.
    ///
    /// With a `kv_dtype` other than f32 the cache stores the prompt's K/V in
    /// that format, as a live run would (the full cache by storing each layer's
    /// recorded keys and values in a fresh one, [`FullCache::filled_from`]).
    pub fn cache_for(&mut self, model: &Llama<B>, policy: &PolicyConfig, kv_dtype: KvDtype, max_tokens: usize, decode_tokens: usize) -> Result<Box<dyn KvCache<B>>> {
        let options = CacheOptions { decode_tokens, kv_dtype, ..CacheOptions::default() };
        if policy.policy == PolicyName::Full {
            if kv_dtype == KvDtype::F32 {
                return self.full.boxed();
            }
            // The recorded prompt K/V stored in the format, as a live prefill stores them
            // (without recomputing the prefill's attention).
            let kv: Vec<(Tensor<B, 3>, Tensor<B, 3>)> = self.qkv.iter().map(|l| (l.k.clone(), l.v.clone())).collect();
            let full = full_cache_for(global_shape(model)?, max_tokens, options, model.device())?.filled_from(&kv)?;
            return self.full.around(Box::new(full));
        }
        let shape = global_shape(model)?;
        let i = match self.scores.iter().position(|s| s.serves(policy)) {
            Some(i) => i,
            None => {
                self.scores.push(PromptScores::new(&self.qkv, policy).map_err(model_err)?);
                self.scores.len() - 1
            }
        };
        let selection = self.scores[i].select(policy).map_err(model_err)?;
        let kv: Vec<(Tensor<B, 3>, Tensor<B, 3>)> = self.qkv.iter().map(|l| (l.k.clone(), l.v.clone())).collect();
        let cache = compressed_cache_for(shape, policy, max_tokens, options, model.device())?.filled_from_selection(&kv, &selection)?;
        self.full.around(Box::new(cache))
    }
}
