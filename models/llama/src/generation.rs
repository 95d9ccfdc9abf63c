//! The generation loop: chunked prefill, then one token at a time.

use std::time::Instant;

use burn::tensor::backend::Backend;
use lava_cache::KvCache;

use crate::error::ModelError;
use crate::sampling::{Sampler, Sampling};
use crate::transformer::{Llama, Logits};

/// Timings and counts of one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationStats {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens generated (the stop token excluded).
    pub generated_tokens: usize,
    /// Wall time of the prefill, seconds.
    pub prefill_seconds: f64,
    /// Single-token forward passes after the prefill.
    pub decode_steps: usize,
    /// Wall time of the decode steps, seconds.
    pub decode_seconds: f64,
}

impl GenerationStats {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_seconds.max(1e-9)
    }
    /// Decode forward passes per second.
    pub fn decode_tok_s(&self) -> f64 {
        self.decode_steps as f64 / self.decode_seconds.max(1e-9)
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerationConfig {
    /// Maximum new tokens.
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: Sampling,
    /// Generation stops after any of these (not included in the output).
    pub stop_tokens: Vec<u32>,
    /// Prompt tokens per prefill forward pass (bounds the attention matrix).
    pub prefill_chunk: usize,
}

/// Picks the next token from `[1, vocab]` logits, on device for greedy decoding.
fn next_token<B: Backend>(logits: burn::tensor::Tensor<B, 2>, sampler: &mut Sampler) -> Result<u32, ModelError> {
    match sampler.mode() {
        Sampling::Greedy => {
            let id = logits.argmax(1).into_data();
            let v = id.convert::<i64>().to_vec::<i64>().map_err(|e| ModelError::Backend(format!("{e:?}")))?;
            Ok(v.first().copied().unwrap_or(0) as u32)
        }
        _ => {
            let v = logits.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| ModelError::Backend(format!("{e:?}")))?;
            Ok(sampler.sample(&v))
        }
    }
}

/// Runs `prompt` through `model` into `cache`, then generates. `on_prefill(done, total)`
/// reports prefill progress; `on_token(id)` sees each new token and may return
/// `false` to stop.
pub fn generate<B: Backend, C: KvCache<B> + ?Sized>(
    model: &Llama<B>,
    cache: &mut C,
    prompt: &[u32],
    config: &GenerationConfig,
    on_prefill: impl FnMut(usize, usize),
    on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, GenerationStats), ModelError> {
    generate_segments(model, cache, &[prompt], config, on_prefill, on_token)
}

/// Like [`generate`], with the prompt given as segments that are prefilled one
/// after the other (each in chunks of at most `prefill_chunk` tokens). A
/// compressing cache compresses during the first segment's prefill, so
/// `[context, question]` gives question-agnostic compression: the observation
/// window cannot see the question.
pub fn generate_segments<B: Backend, C: KvCache<B> + ?Sized>(
    model: &Llama<B>,
    cache: &mut C,
    segments: &[&[u32]],
    config: &GenerationConfig,
    on_prefill: impl FnMut(usize, usize),
    on_token: impl FnMut(u32) -> bool,
) -> Result<(Vec<u32>, GenerationStats), ModelError> {
    generate_segments_observed(model, cache, segments, config, on_prefill, on_token, |_| Ok(()))
}

/// [`generate_segments`], with `on_logits` shown the logits (`[1, vocab]`) each token is
/// chosen from, before it is chosen (`lava generate --trace`).
pub fn generate_segments_observed<B: Backend, C: KvCache<B> + ?Sized>(
    model: &Llama<B>,
    cache: &mut C,
    segments: &[&[u32]],
    config: &GenerationConfig,
    mut on_prefill: impl FnMut(usize, usize),
    mut on_token: impl FnMut(u32) -> bool,
    mut on_logits: impl FnMut(&burn::tensor::Tensor<B, 2>) -> Result<(), ModelError>,
) -> Result<(Vec<u32>, GenerationStats), ModelError> {
    let total: usize = segments.iter().map(|s| s.len()).sum();
    if total == 0 {
        return Err(ModelError::Input("the prompt is empty: give some text to continue".into()));
    }
    let mut sampler = Sampler::new(config.sampling);
    let mut stats = GenerationStats { prompt_tokens: total, ..Default::default() };
    let t0 = Instant::now();
    let chunk = config.prefill_chunk.max(1);
    let mut logits = None;
    let mut done = 0;
    for piece in segments.iter().flat_map(|s| s.chunks(chunk)) {
        logits = Some(model.forward(piece, cache, Logits::Last)?);
        done += piece.len();
        on_prefill(done, total);
    }
    let mut out = Vec::new();
    let Some(mut logits) = logits else { return Ok((out, stats)) };
    on_logits(&logits)?;
    let mut token = next_token(logits, &mut sampler)?;
    stats.prefill_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    while out.len() < config.max_new_tokens && !config.stop_tokens.contains(&token) {
        out.push(token);
        if !on_token(token) || out.len() == config.max_new_tokens {
            break;
        }
        logits = model.forward(&[token], cache, Logits::Last)?;
        stats.decode_steps += 1;
        on_logits(&logits)?;
        token = next_token(logits, &mut sampler)?;
    }
    stats.decode_seconds = t1.elapsed().as_secs_f64();
    stats.generated_tokens = out.len();
    Ok((out, stats))
}

/// Teacher forcing's per-token log-probabilities: `log p(targets[t])` under
/// `logits` `[T, vocab]` (one row per target), as `[T]` on the host, with the
/// logits' log-softmax `[T, vocab]` (for a KL against another model's rows).
pub fn token_log_probs<B: Backend>(logits: burn::tensor::Tensor<B, 2>, targets: &[u32]) -> Result<(Vec<f32>, burn::tensor::Tensor<B, 2>), ModelError> {
    use burn::tensor::{activation::log_softmax, Int, Tensor, TensorData};
    let t = targets.len();
    let device = logits.device();
    let lsm = log_softmax(logits, 1);
    let idx: Vec<i64> = targets.iter().map(|&x| x as i64).collect();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [t]), &device).reshape([t, 1]);
    let lp = lsm.clone().gather(1, idx).into_data().convert::<f32>().to_vec::<f32>().map_err(|e| ModelError::Backend(format!("{e:?}")))?;
    Ok((lp, lsm))
}
