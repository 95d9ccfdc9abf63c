//! The task families, each a loop over samples that calls [`run_prompt`].

use std::path::Path;

use burn::tensor::{activation::log_softmax, backend::Backend, Tensor};
use lava_cache::KvCache;
use lava_llama::{Logits, Prompt, PromptTokens};

use super::engine::{greedy_batch, prefill};
use super::{ModelTokenizer, Settings, Sink, Subject, Variant};
use crate::error::{EvalError, Result};
use crate::longbench::{self, LongBenchConfig};
use crate::niah::{self, NiahConfig, NiahHaystack, NiahPrompt};
use crate::results::{CellKey, ResultRecord, QUERY_AGNOSTIC};
use crate::ruler::{RulerGenerator, RulerTask};
use crate::tokenize::Tokenize;

fn model_err(e: impl Into<lava_llama::ModelError>) -> EvalError {
    EvalError::Model(e.into())
}

/// The backend failed to hand `what` back to the host.
fn read_back_err(what: String) -> EvalError {
    EvalError::Model(lava_llama::ModelError::Backend(what))
}

/// Renders `(system, user)` (+ `answer_prefix`) with the chat template when
/// `chat` and the model has one (else as plain text), split before `question`
/// (question-agnostic) into what is prefilled and compressed and what follows.
fn make_prompt<B: Backend>(
    s: &Subject<'_, B>,
    system: Option<&str>,
    user: &str,
    answer_prefix: &str,
    chat: bool,
    question: Option<&str>,
) -> Result<PromptTokens> {
    let chat = chat && s.tok.chat_template().is_some();
    let prompt = Prompt { system, user, answer_prefix, chat, question, allow_special: false };
    s.tok.encode_prompt(&prompt).map_err(model_err)
}

/// Runs every variant not yet done on one prompt, in each of `settings`.
///
/// Query-aware only (`prompt.suffix` empty): prefills the prompt once, builds each variant's
/// cache from it and generates greedily. With the query-agnostic setting (`prompt` split
/// before its question): prefills `prompt.context` once; the query-agnostic caches are built
/// from it and each appends `prompt.suffix` before generating; the query-aware caches (when
/// asked for too) are built from the same prefill run on through the suffix
/// ([`Prefilled::extended`](super::engine::Prefilled::extended)), so the two settings share
/// the context's prefill. Records `score(prediction)` for each cell, query-agnostic ones
/// with `setting` [`QUERY_AGNOSTIC`]. A prompt without a question to split off (an empty
/// suffix) is the same prompt in both settings.
#[allow(clippy::too_many_arguments)]
fn run_prompt<B: Backend>(
    s: &Subject<'_, B>,
    variants: &[Variant],
    settings: Settings,
    prompt: &PromptTokens,
    max_new: usize,
    sink: &mut Sink,
    key: impl Fn(&Variant) -> CellKey,
    score: impl Fn(&str) -> f64,
    extra: &[(&str, serde_json::Value)],
) -> Result<()> {
    let key_in = |v: &Variant, setting: Option<&str>| CellKey { setting: setting.map(str::to_string), ..key(v) };
    let mut todo: Vec<(Option<&str>, Vec<&Variant>)> = Vec::new();
    for (on, setting) in [(settings.query_agnostic, Some(QUERY_AGNOSTIC)), (settings.query_aware, None)] {
        if !on {
            continue;
        }
        let left: Vec<&Variant> = variants.iter().filter(|v| !sink.is_done(&key_in(v, setting))).collect();
        for _ in 0..variants.len() - left.len() {
            sink.skip();
        }
        if !left.is_empty() {
            todo.push((setting, left));
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    let total = prompt
        .context
        .len()
        .checked_add(prompt.suffix.len())
        .and_then(|n| n.checked_add(max_new))
        .ok_or_else(|| EvalError::InvalidArgument(format!("a prompt plus {max_new} generated tokens is more tokens than any cache holds")))?;
    let max_tokens = s.model.config.max_position_embeddings;
    if total > max_tokens {
        let k = key(todo[0].1[0]);
        return Err(EvalError::InvalidArgument(format!(
            "{} sample {}{}: the prompt has {} tokens and up to {max_new} are generated, more than the model's context of {max_tokens} tokens; use shorter lengths",
            k.task,
            k.sample_id,
            k.length.map(|l| format!(" at length {l}")).unwrap_or_default(),
            total - max_new
        )));
    }
    let t0 = std::time::Instant::now();
    let mut pre = prefill(s.model, &prompt.context, max_tokens)?;
    let context_prefill_s = t0.elapsed().as_secs_f64();
    // Query-agnostic cells first (built from the context's prefill); then the query-aware
    // ones, from that prefill run on through the suffix (or, unsplit, from it directly).
    for (setting, todo) in todo {
        let t0 = std::time::Instant::now();
        let suffix: &[u32] = match setting {
            Some(_) => &prompt.suffix,
            None => {
                if !prompt.suffix.is_empty() {
                    pre = pre.extended(s.model, &prompt.suffix)?;
                }
                &[]
            }
        };
        let prefill_s = context_prefill_s + t0.elapsed().as_secs_f64();
        let pre_here = &mut pre;
        let mut caches = Vec::with_capacity(todo.len());
        let mut cache_seconds = Vec::with_capacity(todo.len());
        for v in &todo {
            let t = std::time::Instant::now();
            caches.push(pre_here.cache_for(s.model, &v.config, v.kv_dtype, max_tokens, suffix.len() + max_new)?);
            cache_seconds.push(t.elapsed().as_secs_f64());
        }
        let t2 = std::time::Instant::now();
        // Retained bytes after the prefill's compression, before the suffix and decoding append.
        let kv_bytes: Vec<usize> = caches.iter().map(|c| c.retained_bytes()).collect();
        let outputs = greedy_batch(s.model, &mut caches, &pre_here.last_logits, suffix, max_new, &s.stop)?;
        drop(caches);
        // Wall times (the only non-deterministic fields): the shared prefill (for the
        // query-aware setting of a split prompt: the context's and the suffix's run on
        // it), this setting's batched decode (the suffix's pass included), and this
        // variant's cache construction (scoring included for the first policy of each scorer).
        let (decode_s, batch) = (t2.elapsed().as_secs_f64(), todo.len());
        for (((v, ids), bytes), cache_s) in todo.into_iter().zip(outputs).zip(kv_bytes).zip(cache_seconds) {
            let pred = s.tok.decode(&ids).map_err(model_err)?;
            let k = key_in(v, setting);
            let mut rec = ResultRecord::new(k.task, k.policy, k.budget, k.length, k.sample_id, score(&pred))
                .with_extra("prediction", pred)
                .with_extra("prompt_tokens", prompt.context.len() + prompt.suffix.len())
                .with_extra("kv_bytes", bytes)
                .with_extra("timing", serde_json::json!({"prefill_s": prefill_s, "cache_s": cache_s, "batch_decode_s": decode_s, "batch": batch}));
            rec.setting = k.setting;
            for (name, value) in extra {
                rec = rec.with_extra(*name, value.clone());
            }
            sink.push(rec)?;
        }
    }
    Ok(())
}

/// Tokens a NIAH answer may take (generated after each prompt).
pub const NIAH_ANSWER_TOKENS: usize = 48;

/// A NIAH length whose prompt (`prompt_tokens` long) and answer do not fit in `ctx` tokens.
fn niah_past_context(len: usize, prompt_tokens: usize, ctx: usize) -> EvalError {
    let over = prompt_tokens + NIAH_ANSWER_TOKENS - ctx;
    EvalError::InvalidArgument(format!(
        "NIAH length {len} makes a prompt of {prompt_tokens} tokens, which with the {NIAH_ANSWER_TOKENS} tokens of the answer is more than \
         the model's context of {ctx} tokens; use --lengths up to {}",
        len.saturating_sub(over)
    ))
}

/// Needle in a haystack: `lengths` (model tokens) x `depths` (percent), one sample (one
/// prompt, in that order) each. Lengths whose prompts do not fit in the model's context with
/// their answer are refused before any cell runs.
#[allow(clippy::too_many_arguments)]
pub fn run_niah<B: Backend>(
    s: &Subject<'_, B>,
    variants: &[Variant],
    haystack_dir: &Path,
    lengths: &[usize],
    depths: &[f64],
    settings: Settings,
    sink: &mut Sink,
) -> Result<()> {
    let tok = ModelTokenizer(s.tok);
    let cfg = NiahConfig::default();
    let max_len = lengths.iter().copied().max().unwrap_or(0);
    let ctx_tokens = s.model.config.max_position_embeddings;
    if let Some(&len) = lengths.iter().find(|&&l| l + NIAH_ANSWER_TOKENS > ctx_tokens) {
        return Err(niah_past_context(len, len, ctx_tokens));
    }
    let hay = NiahHaystack::from_dir(&tok, haystack_dir, max_len)?;
    // The longest prompt (haystack, instructions, chat template) must fit with its answer,
    // checked before any cell runs.
    if let Some(&depth) = depths.first().filter(|_| max_len > 0) {
        let ctx = niah::build_context(&tok, &hay, max_len, depth, &cfg)?;
        let p = NiahPrompt::new(&ctx.context, &cfg);
        let q = settings.query_agnostic.then_some(cfg.question.as_str());
        let prompt = make_prompt(s, Some(&p.system), &p.user, &p.answer_prefix, s.chat, q)?;
        let n = prompt.context.len() + prompt.suffix.len();
        if n + NIAH_ANSWER_TOKENS > ctx_tokens {
            return Err(niah_past_context(max_len, n, ctx_tokens));
        }
    }
    sink.expect_prompts(lengths.len() * depths.len(), variants.len() * settings.count());
    for &len in lengths {
        for &depth in depths {
            if !sink.take_prompt() {
                continue;
            }
            let ctx = niah::build_context(&tok, &hay, len, depth, &cfg)?;
            let p = NiahPrompt::new(&ctx.context, &cfg);
            let q = settings.query_agnostic.then_some(cfg.question.as_str());
            let prompt = make_prompt(s, Some(&p.system), &p.user, &p.answer_prefix, s.chat, q)?;
            let sample = format!("depth{depth}");
            run_prompt(
                s,
                variants,
                settings,
                &prompt,
                NIAH_ANSWER_TOKENS,
                sink,
                |v| CellKey { task: "niah".into(), policy: v.policy.clone(), budget: v.budget.clone(), length: Some(len as u64), sample_id: sample.clone(), setting: None },
                |pred| niah::score_response(pred, &cfg.expected_answer),
                &[("depth_percent", depth.into())],
            )?;
        }
    }
    Ok(())
}

/// RULER tasks at each length, `samples` per task, seeded (prompts in task, length, sample
/// order). `essay_dir` is the essay haystack, needed when a task uses it
/// ([`RulerTask::config`]`.needs_essay()`); `None` otherwise.
#[allow(clippy::too_many_arguments)]
pub fn run_ruler<B: Backend>(
    s: &Subject<'_, B>,
    variants: &[Variant],
    tasks: &[RulerTask],
    lengths: &[usize],
    samples: usize,
    seed: u64,
    essay_dir: Option<&Path>,
    settings: Settings,
    sink: &mut Sink,
) -> Result<()> {
    let tok = ModelTokenizer(s.tok);
    let mut gen = RulerGenerator::new(&tok);
    if let Some(dir) = essay_dir {
        gen = gen.with_essay_dir(dir)?;
    }
    sink.expect_prompts(tasks.len() * lengths.len() * samples, variants.len() * settings.count());
    for &task in tasks {
        for &len in lengths {
            // Leave room for the chat template's own tokens.
            let fit = len.saturating_sub(if s.chat { 40 } else { 0 });
            for i in 0..samples {
                if !sink.take_prompt() {
                    continue;
                }
                let sample = gen.generate(task, fit, seed, i)?;
                // RULER inputs end with the question on their last line.
                let question = sample.input.trim_end().rsplit('\n').next().map(str::to_string);
                let q = if settings.query_agnostic { question.as_deref() } else { None };
                let prompt = make_prompt(s, None, &sample.input, &sample.answer_prefix, s.chat, q)?;
                run_prompt(
                    s,
                    variants,
                    settings,
                    &prompt,
                    sample.tokens_to_generate,
                    sink,
                    |v| CellKey { task: format!("ruler/{}", task.name()), policy: v.policy.clone(), budget: v.budget.clone(), length: Some(len as u64), sample_id: i.to_string(), setting: None },
                    |pred| sample.score(pred),
                    &[],
                )?;
            }
        }
    }
    Ok(())
}

/// LongBench datasets from `data_dir` (`<dataset>.jsonl`, LongBench-E's `<task>_e.jsonl`
/// included), the first `limit` records of each (prompts in dataset, record order), prompts
/// truncated in the middle to `max_length` tokens. Each result carries the record's `length`
/// as `"longbench_length"` when it has one.
#[allow(clippy::too_many_arguments)]
pub fn run_longbench<B: Backend>(
    s: &Subject<'_, B>,
    variants: &[Variant],
    data_dir: &Path,
    datasets: &[String],
    limit: usize,
    max_length: usize,
    settings: Settings,
    sink: &mut Sink,
) -> Result<()> {
    let tok = ModelTokenizer(s.tok);
    let cfg = LongBenchConfig::load_dir(data_dir)?;
    for ds in datasets {
        let records = longbench::load_longbench_jsonl(data_dir.join(format!("{ds}.jsonl")))?;
        let records: Vec<_> = records.into_iter().take(limit).collect();
        sink.expect_prompts(records.len(), variants.len() * settings.count());
        // Unknown datasets fail before any prompt is run.
        cfg.max_new_tokens(ds)?;
        cfg.template(ds)?;
        for (i, rec) in records.iter().enumerate() {
            if !sink.take_prompt() {
                continue;
            }
            let p = cfg.prepare(ds, rec, &tok, max_length)?;
            // Question-agnostic: what the template puts after {context} is the question part.
            let question = if settings.query_agnostic { p.question.as_deref() } else { None };
            let prompt = make_prompt(s, None, &p.text, "", s.chat && p.chat, question)?;
            let id = if rec.id.is_empty() { i.to_string() } else { rec.id.clone() };
            run_prompt(
                s,
                variants,
                settings,
                &prompt,
                p.max_new_tokens,
                sink,
                |v| CellKey { task: format!("longbench/{ds}"), policy: v.policy.clone(), budget: v.budget.clone(), length: None, sample_id: id.clone(), setting: None },
                |pred| rec.score(pred).unwrap_or(0.0),
                &rec.result_extras(),
            )?;
        }
    }
    Ok(())
}

/// Per-token log-probabilities `[T]` of `targets` under `[T, vocab]` logits, and the logits' log-softmax.
fn log_probs<B: Backend>(logits: Tensor<B, 2>, targets: &[u32]) -> Result<(Vec<f32>, Tensor<B, 2>)> {
    lava_llama::token_log_probs(logits, targets).map_err(model_err)
}

/// Where window `j` of `windows` starts, as a fraction of a book: the first a fifth of the way
/// in (past the Gutenberg front matter), the others spread evenly over the remaining four
/// fifths (two windows: 1/5 and 3/5).
fn window_start(j: usize, windows: usize) -> f64 {
    0.2 + 0.8 * j as f64 / windows.max(1) as f64
}

/// Splits the first `files` `.txt` files of `dir` (sorted by name) into (id, tokens) samples:
/// `windows` non-overlapping windows per book, each `context + continuation` tokens, with id
/// `<book>#<window>`. A window is cut off where the next one starts, so windows never share
/// text; a window without enough tokens before that (or the end of the book) is left out.
fn pg19_samples(s_tok: &impl Tokenize, dir: &Path, files: usize, windows: usize, context: usize, continuation: usize) -> Result<Vec<(String, Vec<u32>)>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| EvalError::Io { path: dir.to_path_buf(), source: e })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    names.sort();
    let need = context.checked_add(continuation).ok_or_else(|| {
        EvalError::InvalidArgument(format!("--context {context} plus --continuation {continuation} overflows"))
    })?;
    let mut out = Vec::new();
    for p in names.into_iter().take(files) {
        let text = crate::read::text(&p)?;
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let at = |frac: f64| ((chars.len() as f64 * frac) as usize).min(chars.len());
        let name = p.file_stem().map(|x| x.to_string_lossy().into_owned()).unwrap_or_default();
        for j in 0..windows {
            let (from, to) = (at(window_start(j, windows)), if j + 1 < windows { at(window_start(j + 1, windows)) } else { chars.len() });
            let to = to.min(from.saturating_add(need.saturating_mul(8)));
            let byte = |c: usize| chars.get(c).map_or(text.len(), |&(b, _)| b);
            let ids = s_tok.encode(&text[byte(from)..byte(to)]);
            if ids.len() >= need {
                out.push((format!("{name}#{j}"), ids[..need].to_vec()));
            }
        }
    }
    Ok(out)
}

/// Perplexity of a continuation after compressing the context (PG-19): `windows` samples from
/// each of the first `files` books (one prompt each, in book, window order).
#[allow(clippy::too_many_arguments)]
pub fn run_ppl<B: Backend>(s: &Subject<'_, B>, variants: &[Variant], dir: &Path, files: usize, windows: usize, context: usize, continuation: usize, sink: &mut Sink) -> Result<()> {
    teacher_forced(s, variants, dir, files, windows, context, continuation, sink, false)
}

/// Fidelity against the full cache on PG-19 continuations (`windows` samples from each of
/// the first `files` books): KL divergence of the next-token distribution, top-1 agreement,
/// and per-layer relative attention-output error.
#[allow(clippy::too_many_arguments)]
pub fn run_fidelity<B: Backend>(s: &Subject<'_, B>, variants: &[Variant], dir: &Path, files: usize, windows: usize, context: usize, continuation: usize, sink: &mut Sink) -> Result<()> {
    teacher_forced(s, variants, dir, files, windows, context, continuation, sink, true)
}

/// Records each layer's attention output of the continuation pass.
struct OutputRecorder<'a, B: Backend> {
    inner: &'a mut dyn KvCache<B>,
    outputs: Vec<Tensor<B, 3>>,
}

impl<B: Backend> KvCache<B> for OutputRecorder<'_, B> {
    fn attend(&mut self, layer: usize, q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>) -> std::result::Result<Tensor<B, 3>, lava_cache::CacheError> {
        let o = self.inner.attend(layer, q, k, v)?;
        self.outputs.push(o.clone());
        Ok(o)
    }
    fn next_position(&self) -> usize {
        self.inner.next_position()
    }
    fn stats(&self) -> lava_cache::CacheStats {
        self.inner.stats()
    }
    fn reset(&mut self) {
        self.inner.reset();
        self.outputs.clear();
    }
    fn sliding_window(&self, layer: usize) -> Option<usize> {
        self.inner.sliding_window(layer)
    }
}

#[allow(clippy::too_many_arguments)]
fn teacher_forced<B: Backend>(
    s: &Subject<'_, B>,
    variants: &[Variant],
    dir: &Path,
    files: usize,
    windows: usize,
    context: usize,
    continuation: usize,
    sink: &mut Sink,
    fidelity: bool,
) -> Result<()> {
    if context == 0 || continuation == 0 {
        return Err(EvalError::InvalidArgument(format!(
            "PG-19 context and continuation must be at least one token each (got {context} and {continuation})"
        )));
    }
    let ctx = s.model.config.max_position_embeddings;
    if context + continuation > ctx {
        return Err(EvalError::InvalidArgument(format!(
            "PG-19 context {context} plus continuation {continuation} is {} tokens, more than the model's context of {ctx} tokens; lower them",
            context + continuation
        )));
    }
    let tok = ModelTokenizer(s.tok);
    let samples = pg19_samples(&tok, dir, files, windows, context, continuation)?;
    if samples.is_empty() && files > 0 && windows > 0 {
        return Err(EvalError::invalid(
            dir,
            None,
            format!("no .txt book here has {} tokens for a window (expected PG-19 test-set books)", context + continuation),
        ));
    }
    let task = if fidelity { "fidelity" } else { "ppl" };
    sink.expect_prompts(samples.len(), variants.len());
    for (name, ids) in &samples {
        if !sink.take_prompt() {
            continue;
        }
        let key = |v: &Variant| CellKey { task: task.into(), policy: v.policy.clone(), budget: v.budget.clone(), length: Some(context as u64), sample_id: name.clone(), setting: None };
        if variants.iter().all(|v| sink.is_done(&key(v))) {
            variants.iter().for_each(|_| sink.skip());
            continue;
        }
        let max_tokens = ids.len();
        let mut pre = prefill(s.model, &ids[..context], max_tokens)?;
        let inputs = &ids[context - 1..ids.len() - 1];
        let targets = &ids[context..];
        // Reference: the full cache.
        let mut full_cache = pre.cache_for(s.model, &variants_full(variants), lava_cache::KvDtype::F32, max_tokens, continuation)?;
        let (full_lsm, full_out) = forced_pass(s, full_cache.as_mut(), &pre, inputs)?;
        for v in variants {
            if sink.is_done(&key(v)) {
                sink.skip();
                continue;
            }
            let mut cache = pre.cache_for(s.model, &v.config, v.kv_dtype, max_tokens, continuation)?;
            // Retained bytes after the prefill's compression, before the continuation is appended.
            let kv_bytes = cache.retained_bytes();
            let (lsm, out) = forced_pass(s, cache.as_mut(), &pre, inputs)?;
            let (lp, lsm) = log_probs(lsm, targets)?;
            let nll = -lp.iter().map(|&x| x as f64).sum::<f64>() / lp.len().max(1) as f64;
            let k = key(v);
            let rec = if fidelity {
                let (kl, agree) = kl_and_agreement(&full_lsm, &lsm)?;
                let layer_err = layer_errors(&full_out, &out)?;
                ResultRecord::new(k.task, k.policy, k.budget, k.length, k.sample_id, agree)
                    .with_extra("kl", kl)
                    .with_extra("top1_agreement", agree)
                    .with_extra("layer_rel_error", layer_err)
                    .with_extra("nll", nll)
            } else {
                ResultRecord::new(k.task, k.policy, k.budget, k.length, k.sample_id, nll.exp()).with_extra("nll", nll).with_extra("ppl", nll.exp())
            };
            sink.push(rec.with_extra("kv_bytes", kv_bytes))?;
        }
    }
    Ok(())
}

fn variants_full(variants: &[Variant]) -> lava_cache::PolicyConfig {
    let mut c = variants.first().map(|v| v.config.clone()).unwrap_or_default();
    c.policy = lava_cache::PolicyName::Full;
    c
}

/// Runs the continuation inputs through `cache` in one pass; returns `[T, vocab]` log-softmax and per-layer outputs.
fn forced_pass<B: Backend>(
    s: &Subject<'_, B>,
    cache: &mut dyn KvCache<B>,
    _pre: &super::engine::Prefilled<B>,
    inputs: &[u32],
) -> Result<(Tensor<B, 2>, Vec<Tensor<B, 3>>)> {
    let mut rec = OutputRecorder { inner: cache, outputs: Vec::new() };
    let logits = s.model.forward(inputs, &mut rec, Logits::All).map_err(model_err)?;
    Ok((log_softmax(logits, 1), rec.outputs))
}

/// Mean KL(full || policy) per token and top-1 agreement.
fn kl_and_agreement<B: Backend>(full: &Tensor<B, 2>, pol: &Tensor<B, 2>) -> Result<(f64, f64)> {
    let kl = full.clone().exp().mul(full.clone().sub(pol.clone())).sum_dim(1);
    let kl = kl.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| read_back_err(format!("{e:?}")))?;
    let a = lava_run::decode::argmax_rows(full.clone())?;
    let b = lava_run::decode::argmax_rows(pol.clone())?;
    let n = kl.len().max(1) as f64;
    let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / n;
    Ok((kl.iter().map(|&x| x as f64).sum::<f64>() / n, agree))
}

/// Per layer: `||o_policy - o_full|| / ||o_full||` over the continuation.
fn layer_errors<B: Backend>(full: &[Tensor<B, 3>], pol: &[Tensor<B, 3>]) -> Result<Vec<f64>> {
    full.iter()
        .zip(pol)
        .map(|(f, p)| {
            let num = f.clone().sub(p.clone()).square().sum().into_data().convert::<f32>().to_vec::<f32>();
            let den = f.clone().square().sum().into_data().convert::<f32>().to_vec::<f32>();
            match (num, den) {
                (Ok(n), Ok(d)) => Ok((n.first().copied().unwrap_or(0.0) as f64 / d.first().copied().unwrap_or(1.0).max(1e-30) as f64).sqrt()),
                _ => Err(read_back_err("a layer's attention-output error".into())),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::CharTokenizer;

    #[test]
    fn pg19_windows_are_disjoint_and_named() {
        let dir = tempfile::tempdir().unwrap();
        // Each character is a token; distinct characters show where a window comes from.
        let book: String = (0..1000u32).map(|i| char::from_u32(0x4e00 + i).unwrap()).collect();
        std::fs::write(dir.path().join("b.txt"), &book).unwrap();
        std::fs::write(dir.path().join("a.txt"), "too short").unwrap();
        std::fs::write(dir.path().join("c.md"), &book).unwrap();
        let s = pg19_samples(&CharTokenizer, dir.path(), 6, 2, 30, 10).unwrap();
        let ids: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(ids, ["b#0", "b#1"]);
        let all: Vec<u32> = CharTokenizer.encode(&book);
        assert_eq!(s[0].1, all[200..240]);
        assert_eq!(s[1].1, all[600..640]);
        // One window: the first one only, as before.
        let one = pg19_samples(&CharTokenizer, dir.path(), 6, 1, 30, 10).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0], s[0]);
        // A window never reaches into the next one: windows start at tokens 200 and 600, so
        // 400 tokens fit in each (the second ends with the book), 411 fit in neither.
        let big = pg19_samples(&CharTokenizer, dir.path(), 6, 2, 390, 10).unwrap();
        assert_eq!(big.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["b#0", "b#1"]);
        let bigger = pg19_samples(&CharTokenizer, dir.path(), 6, 2, 401, 10).unwrap();
        assert!(bigger.is_empty(), "{:?}", bigger.iter().map(|(n, _)| n).collect::<Vec<_>>());
        // Only the first `files` books.
        assert!(pg19_samples(&CharTokenizer, dir.path(), 1, 2, 30, 10).unwrap().is_empty());
        assert!(pg19_samples(&CharTokenizer, &dir.path().join("missing"), 1, 2, 30, 10).is_err());
    }
}
