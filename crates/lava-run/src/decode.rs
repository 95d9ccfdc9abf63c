//! The decode loop: a sequence's prompt prefilled in chunks, then one token at
//! a time, chosen by its [`Sampler`], until a stop token or the length limit
//! ([`Finish`]); and the greedy batch of several caches of one prompt.

use std::time::Instant;

use burn::tensor::{backend::Backend, Tensor};
use lava_cache::KvCache;
use lava_llama::{Llama, ModelError, Sampler, Sampling};

use crate::error::RunError;
use crate::prefill::Sequence;

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
    /// Generation stops before any of these (not included in the output).
    pub stop_tokens: Vec<u32>,
    /// Prompt tokens per prefill forward pass (bounds the attention matrix).
    pub prefill_chunk: usize,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token was sampled (it is not part of the output).
    Stop,
    /// The output reached its length limit.
    Length,
}

/// The stop rule of every decode loop, before a sampled `token` is emitted:
/// [`Finish::Stop`] if it is one of `stop_tokens` (it is not emitted).
pub fn stops_before(token: u32, stop_tokens: &[u32]) -> Option<Finish> {
    stop_tokens.contains(&token).then_some(Finish::Stop)
}

/// The length rule of every decode loop, after a token is emitted:
/// [`Finish::Length`] once `generated` tokens reach `max_new_tokens`.
pub fn full_after(generated: usize, max_new_tokens: usize) -> Option<Finish> {
    (generated >= max_new_tokens).then_some(Finish::Length)
}

/// Per-row argmax of `[n, vocab]` logits, on the device.
pub fn argmax_rows<B: Backend>(logits: Tensor<B, 2>) -> Result<Vec<u32>, RunError> {
    let v = logits.argmax(1).into_data().convert::<i64>().to_vec::<i64>().map_err(RunError::read_back)?;
    Ok(v.into_iter().map(|x| x as u32).collect())
}

/// Argmax of the first row of `[n, vocab]` logits (0 for no rows).
pub fn argmax<B: Backend>(logits: Tensor<B, 2>) -> Result<u32, RunError> {
    Ok(argmax_rows(logits)?.first().copied().unwrap_or(0))
}

/// Picks the next token from `[1, vocab]` logits, on the device for greedy decoding.
pub fn next_token<B: Backend>(logits: Tensor<B, 2>, sampler: &mut Sampler) -> Result<u32, RunError> {
    match sampler.mode() {
        Sampling::Greedy => argmax(logits),
        _ => {
            let v = logits.into_data().convert::<f32>().to_vec::<f32>().map_err(RunError::read_back)?;
            Ok(sampler.sample(&v))
        }
    }
}

impl<B: Backend, C: KvCache<B> + ?Sized> Sequence<B, C> {
    /// Prefills `segments` one after the other (each in chunks of at most
    /// `config.prefill_chunk` tokens), then generates. A compressing cache
    /// compresses during the first segment's prefill, so `[context, question]`
    /// gives question-agnostic compression: the observation window cannot see
    /// the question. `on_prefill(done, total)` reports prefill progress;
    /// `on_token(id)` sees each new token and may return `false` to stop;
    /// `on_logits` is shown the logits (`[1, vocab]`) each token is chosen
    /// from, before it is chosen (`lava generate --trace`).
    pub fn generate(
        &mut self,
        model: &Llama<B>,
        segments: &[&[u32]],
        config: &GenerationConfig,
        mut on_prefill: impl FnMut(usize, usize),
        mut on_token: impl FnMut(u32) -> bool,
        mut on_logits: impl FnMut(&Tensor<B, 2>) -> Result<(), RunError>,
    ) -> Result<(Vec<u32>, GenerationStats), RunError> {
        let total: usize = segments.iter().map(|s| s.len()).sum();
        if total == 0 {
            return Err(ModelError::Input("the prompt is empty: give some text to continue".into()).into());
        }
        let mut sampler = Sampler::new(config.sampling);
        let mut stats = GenerationStats { prompt_tokens: total, ..Default::default() };
        let t0 = Instant::now();
        let mut logits = None;
        let mut done = 0;
        for segment in segments {
            if let Some(l) = self.prefill(model, segment, config.prefill_chunk, |n| {
                done += n;
                on_prefill(done, total);
            })? {
                logits = Some(l);
            }
        }
        let mut out = Vec::new();
        let Some(mut logits) = logits else { return Ok((out, stats)) };
        on_logits(&logits)?;
        let mut token = next_token(logits, &mut sampler)?;
        stats.prefill_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        while full_after(out.len(), config.max_new_tokens).is_none() && stops_before(token, &config.stop_tokens).is_none() {
            out.push(token);
            if !on_token(token) || full_after(out.len(), config.max_new_tokens).is_some() {
                break;
            }
            logits = self.step(model, token)?;
            stats.decode_steps += 1;
            on_logits(&logits)?;
            token = next_token(logits, &mut sampler)?;
        }
        stats.decode_seconds = t1.elapsed().as_secs_f64();
        stats.generated_tokens = out.len();
        Ok((out, stats))
    }
}

/// Greedy continuation of several caches of the same prompt: each appends
/// `suffix` (if any, all caches in one [`Llama::forward_runs`] step; without
/// one the first token comes from `first_logits`) and generates up to
/// `max_new` tokens, stopping before any of `stop`. The caches step together
/// through [`Llama::decode_batch`] (one pass over the weights per step for
/// all of them), and a cache leaves the batch when it stops. Returns each
/// cache's tokens, in order.
pub fn greedy_batch<B: Backend>(
    model: &Llama<B>,
    caches: &mut [Box<dyn KvCache<B>>],
    first_logits: &Tensor<B, 2>,
    suffix: &[u32],
    max_new: usize,
    stop: &[u32],
) -> Result<Vec<Vec<u32>>, RunError> {
    let n = caches.len();
    let mut next: Vec<u32> = if suffix.is_empty() {
        vec![argmax(first_logits.clone())?; n]
    } else if n == 0 {
        Vec::new()
    } else {
        // Every cache appends the suffix in one step (the weights read once for all of them).
        let runs: Vec<&[u32]> = vec![suffix; n];
        let mut refs: Vec<&mut dyn KvCache<B>> = caches.iter_mut().map(|c| c.as_mut()).collect();
        argmax_rows(model.forward_runs(&runs, &mut refs)?)?
    };
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut active: Vec<usize> = (0..n).collect();
    loop {
        active.retain(|&i| {
            let id = next[i];
            if stops_before(id, stop).is_some() || full_after(out[i].len(), max_new).is_some() {
                return false;
            }
            out[i].push(id);
            full_after(out[i].len(), max_new).is_none()
        });
        if active.is_empty() {
            return Ok(out);
        }
        let tokens: Vec<u32> = active.iter().map(|&i| next[i]).collect();
        let mut refs: Vec<&mut dyn KvCache<B>> =
            caches.iter_mut().enumerate().filter(|(i, _)| active.contains(i)).map(|(_, c)| c.as_mut()).collect();
        let logits = model.decode_batch(&tokens, &mut refs)?;
        for (&i, id) in active.iter().zip(argmax_rows(logits)?) {
            next[i] = id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_ndarray::NdArray;
    use lava_cache::{PolicyConfig, PolicyName};
    use lava_llama::tiny::{tiny_config, RandomWeights};
    use lava_llama::{Logits, Rope};

    use crate::cache::{build_cache, CacheOptions};

    type B = NdArray<f32>;

    fn model() -> Llama<B> {
        let cfg = tiny_config(4, 2, false, false);
        let w = RandomWeights { config: cfg.clone(), seed: 7 };
        Llama::<B>::from_source(cfg.clone(), &w, Rope::new(&cfg), &Default::default()).expect("model")
    }

    fn sequence(m: &Llama<B>) -> Sequence<B> {
        let full = PolicyConfig::new(PolicyName::Full, 0);
        Sequence::new(build_cache(m, &full, 64, CacheOptions::default(), &Default::default()).expect("cache"))
    }

    /// Greedy tokens by recomputing the whole prefix from an empty cache at every step.
    fn recomputed(m: &Llama<B>, prompt: &[u32], n: usize) -> Vec<u32> {
        let mut ids = prompt.to_vec();
        for _ in 0..n {
            let mut seq = sequence(m);
            let logits = m.forward(&ids, seq.cache.as_mut(), Logits::Last).expect("forward");
            let row = logits.into_data().convert::<f32>().to_vec::<f32>().expect("row");
            ids.push(lava_llama::sampling::argmax(&row));
        }
        ids[prompt.len()..].to_vec()
    }

    fn config(max_new_tokens: usize, stop_tokens: Vec<u32>) -> GenerationConfig {
        GenerationConfig { max_new_tokens, sampling: Sampling::Greedy, stop_tokens, prefill_chunk: 3 }
    }

    #[test]
    fn greedy_generation_is_the_recomputed_argmax_and_stops_where_told() {
        let m = model();
        let prompt = [1u32, 5, 9, 2, 33, 17, 8];
        let want = recomputed(&m, &prompt, 6);
        // Two segments, chunks of 3: the prefill reports 3, 6, 7 of 7.
        let mut seq = sequence(&m);
        let mut progress = Vec::new();
        let (out, stats) = seq.generate(&m, &[&prompt[..4], &prompt[4..]], &config(6, Vec::new()), |d, t| progress.push((d, t)), |_| true, |_| Ok(())).expect("run");
        assert_eq!(out, want);
        assert_eq!(progress, [(3, 7), (4, 7), (7, 7)]);
        assert_eq!((stats.prompt_tokens, stats.generated_tokens, stats.decode_steps), (7, 6, 5));
        // The sequence holds the prompt and every generated token but the last (never fed back).
        assert_eq!(seq.tokens, [&prompt[..], &want[..5]].concat());
        assert_eq!(seq.position(), 12);
        // A stop token ends the output before it; on_token returning false ends it after the token.
        let mut seq = sequence(&m);
        let (out, _) = seq.generate(&m, &[&prompt], &config(6, vec![want[3]]), |_, _| {}, |_| true, |_| Ok(())).expect("run");
        let first_stop = want.iter().position(|&t| t == want[3]).unwrap_or(3);
        assert_eq!(out, want[..first_stop]);
        let mut seq = sequence(&m);
        let (out, _) = seq.generate(&m, &[&prompt], &config(6, Vec::new()), |_, _| {}, |id| id != want[1], |_| Ok(())).expect("run");
        let first_cut = want.iter().position(|&t| t == want[1]).unwrap_or(1);
        assert_eq!(out, want[..=first_cut]);
        // An empty prompt is refused.
        assert!(sequence(&m).generate(&m, &[&[]], &config(6, Vec::new()), |_, _| {}, |_| true, |_| Ok(())).is_err());
    }

    #[test]
    fn the_stop_rules_and_the_argmax() {
        assert_eq!(stops_before(3, &[1, 3]), Some(Finish::Stop));
        assert_eq!(stops_before(2, &[1, 3]), None);
        assert_eq!(full_after(4, 4), Some(Finish::Length));
        assert_eq!(full_after(3, 4), None);
        let logits = Tensor::<B, 2>::from_floats([[0.5, 2.0, -1.0], [3.0, 3.0, 0.0]], &Default::default());
        // Rows: the largest value; on a tie the first.
        assert_eq!(argmax_rows(logits.clone()).expect("argmax"), [1, 0]);
        assert_eq!(argmax(logits).expect("argmax"), 1);
    }

    #[test]
    fn greedy_batch_continues_each_cache_like_a_lone_generation() {
        let m = model();
        let prompt = [4u32, 8, 15, 16, 23, 42];
        let want = recomputed(&m, &prompt, 4);
        let mut first = sequence(&m);
        let logits = first.prefill(&m, &prompt, 64, |_| {}).expect("prefill").expect("logits");
        let second = first.cache.box_clone().expect("clone");
        let mut caches = vec![first.cache, second];
        let out = greedy_batch(&m, &mut caches, &logits, &[], 4, &[want[2]]).expect("batch");
        let stop = want.iter().position(|&t| t == want[2]).unwrap_or(2);
        assert_eq!(out, [want[..stop].to_vec(), want[..stop].to_vec()]);
        // Without a stop token each runs to the length limit.
        let mut again = sequence(&m);
        let logits = again.prefill(&m, &prompt, 2, |_| {}).expect("prefill").expect("logits");
        let mut caches = vec![again.cache];
        assert_eq!(greedy_batch(&m, &mut caches, &logits, &[], 4, &[]).expect("batch"), [want.clone()]);
    }
}
