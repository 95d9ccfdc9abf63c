//! Prefill once, compress many: the evaluation engine.
//!
//! In every policy here (as in the reference implementations) a layer's prefill
//! attention is computed over the full prompt and compression happens after it,
//! so the prefill's hidden states do not depend on the policy. The engine runs
//! the prefill once with a recording full cache, then builds each policy's cache
//! from the recorded keys and values and the policy's selection, which is
//! exactly what running that policy live would keep.

use burn::tensor::{backend::Backend, Tensor};
use lava_cache::{select_positions, CacheError, CompressedCache, FullCache, KvCache, LayerQkv, PolicyConfig, PolicyName};
use lava_llama::{Llama, Logits, ModelError};

use crate::error::{EvalError, Result};

/// A full cache that also keeps each layer's first (prefill) `q`, `k`, `v`.
pub struct RecordingCache<B: Backend> {
    inner: FullCache<B>,
    recorded: Vec<Option<LayerQkv<B>>>,
}

impl<B: Backend> RecordingCache<B> {
    /// Wraps a new full cache for `model`.
    pub fn new(model: &Llama<B>, max_tokens: usize) -> Result<Self> {
        let inner = FullCache::new(model.cache_shape(), max_tokens, model.device()).map_err(model_err)?;
        Ok(Self { inner, recorded: (0..model.config.num_hidden_layers).map(|_| None).collect() })
    }
}

impl<B: Backend> KvCache<B> for RecordingCache<B> {
    fn attend(&mut self, layer: usize, q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>) -> std::result::Result<Tensor<B, 3>, CacheError> {
        if let Some(slot @ None) = self.recorded.get_mut(layer) {
            *slot = Some(LayerQkv::new(q.clone(), k.clone(), v.clone()));
        }
        self.inner.attend(layer, q, k, v)
    }
    fn next_position(&self) -> usize {
        self.inner.next_position()
    }
    fn retained_tokens(&self) -> usize {
        self.inner.retained_tokens()
    }
    fn retained_bytes(&self) -> usize {
        self.inner.retained_bytes()
    }
    fn allocated_bytes(&self) -> usize {
        self.inner.allocated_bytes()
    }
    fn full_bytes(&self) -> usize {
        self.inner.full_bytes()
    }
    fn reset(&mut self) {
        self.inner.reset();
        self.recorded.iter_mut().for_each(|r| *r = None);
    }
}

fn model_err(e: impl Into<ModelError>) -> EvalError {
    EvalError::Model(e.into().to_string())
}

/// The state after one prefill, from which every policy's cache is derived.
pub struct Prefilled<B: Backend> {
    full: FullCache<B>,
    qkv: Vec<LayerQkv<B>>,
    /// Logits after the last prompt token, `[1, vocab]`.
    pub last_logits: Tensor<B, 2>,
    /// Prompt tokens.
    pub prompt_len: usize,
}

/// Runs the prompt once (one forward pass) and records what the policies need.
pub fn prefill<B: Backend>(model: &Llama<B>, ids: &[u32], max_tokens: usize) -> Result<Prefilled<B>> {
    let mut rec = RecordingCache::new(model, max_tokens)?;
    let last_logits = model.forward(ids, &mut rec, Logits::Last).map_err(model_err)?;
    let qkv = rec.recorded.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| EvalError::Model("a layer was not recorded".into()))?;
    Ok(Prefilled { full: rec.inner, qkv, last_logits, prompt_len: ids.len() })
}

impl<B: Backend> Prefilled<B> {
    /// The cache `policy` would hold after this prefill, with room for `decode_tokens`.
    pub fn cache_for(&self, model: &Llama<B>, policy: &PolicyConfig, max_tokens: usize, decode_tokens: usize) -> Result<Box<dyn KvCache<B>>> {
        if policy.policy == PolicyName::Full {
            return Ok(Box::new(self.full.clone()));
        }
        let selection = select_positions(&self.qkv, policy).map_err(model_err)?;
        let kv: Vec<(Tensor<B, 3>, Tensor<B, 3>)> = self.qkv.iter().map(|l| (l.k.clone(), l.v.clone())).collect();
        let cache = CompressedCache::from_selection(model.cache_shape(), policy.clone(), max_tokens, model.device(), &kv, &selection)
            .map_err(model_err)?
            .with_decode_headroom(decode_tokens.clamp(1, CompressedCache::<B>::DEFAULT_HEADROOM));
        Ok(Box::new(cache))
    }
}

/// Greedy continuation: appends `suffix` (if any) to `cache`, then generates up
/// to `max_new` tokens, stopping before any of `stop`. Without a suffix the first
/// token comes from `first_logits`.
pub fn greedy<B: Backend>(
    model: &Llama<B>,
    cache: &mut dyn KvCache<B>,
    first_logits: &Tensor<B, 2>,
    suffix: &[u32],
    max_new: usize,
    stop: &[u32],
) -> Result<Vec<u32>> {
    let mut logits = if suffix.is_empty() {
        first_logits.clone()
    } else {
        model.forward(suffix, cache, Logits::Last).map_err(model_err)?
    };
    let mut out = Vec::new();
    while out.len() < max_new {
        let id = argmax(logits)?;
        if stop.contains(&id) {
            break;
        }
        out.push(id);
        if out.len() == max_new {
            break;
        }
        logits = model.forward(&[id], cache, Logits::Last).map_err(model_err)?;
    }
    Ok(out)
}

fn argmax<B: Backend>(logits: Tensor<B, 2>) -> Result<u32> {
    let v = logits.argmax(1).into_data().convert::<i64>().to_vec::<i64>().map_err(|e| EvalError::Model(format!("{e:?}")))?;
    Ok(v.first().copied().unwrap_or(0) as u32)
}
