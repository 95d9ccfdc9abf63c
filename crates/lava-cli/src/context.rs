//! `lava generate` with a compressed context: `--context-file` compressed
//! once (question-agnostic) and optionally saved with `--save-context`, or
//! loaded with `--load-context`; then each `--question` answered from a copy
//! of that one cache.

use std::path::Path;
use std::time::Instant;

use burn::tensor::backend::Backend;
use lava_cache::{PolicyConfig, PolicyName};
use lava_llama::{Llama, Sampling, Tokenizer};
use lava_run::cache::{build_cache, CacheOptions};
use lava_run::context::{model_sha256, ContextPolicy};
use lava_run::{GenerationConfig, PromptLayout, SavedContext, Sequence};

use crate::commands::{check_sampling, load, stop_tokens, Run, Text};
use crate::error::CliError;
use crate::fetch::resolve_model;
use crate::prompt::prompt_segments;
use crate::{with_backend, GenerateArgs};

/// `lava generate --context-file FILE [--save-context OUT] --question Q...`
/// or `lava generate --load-context FILE --question Q...`.
pub fn generate(a: GenerateArgs) -> Result<(), CliError> {
    check_sampling(&a)?;
    if a.load_context.is_some() && a.question.is_empty() {
        return Err(CliError::Usage("--load-context needs at least one --question to answer from the context".into()));
    }
    if a.context_file.is_some() && a.question.is_empty() && a.save_context.is_none() {
        return Err(CliError::Usage("--context-file needs a --question, or --save-context FILE to write the compressed context".into()));
    }
    if a.trace.is_some() {
        return Err(CliError::Usage("--trace records one generation from a prompt; it does not go with --save-context, --load-context or several --question".into()));
    }
    let given = a.policy.to_config()?;
    let path = resolve_model(a.model.model.as_deref())?;
    with_backend!(a.model.backend, |B, device| { generate_on::<B>(&a, &given, &path, &device) })
}

fn generate_on<B: Backend>(a: &GenerateArgs, given: &PolicyConfig, path: &Path, device: &B::Device) -> Result<(), CliError> {
    let (model, tok) = load::<B>(&a.model, path, device)?;
    let t = Instant::now();
    let sha = model_identity(path)?;
    eprintln!("lava: model SHA-256 {} ({:.1}s)", &sha[..12], t.elapsed().as_secs_f64());
    let (base, layout, policy) = match &a.load_context {
        Some(file) => loaded(a, given, file, &sha, &model)?,
        None => compressed(a, given, &sha, &model, &tok, device)?,
    };
    let ctx = model.config.max_position_embeddings;
    let sampling = if a.temperature > 0.0 {
        Sampling::TopP { temperature: a.temperature, top_p: a.top_p, top_k: 0, min_p: 0.0, seed: a.seed }
    } else {
        Sampling::Greedy
    };
    let config = GenerationConfig { max_new_tokens: a.max_new_tokens, sampling, stop_tokens: stop_tokens(&model.config.eos_token_ids, &tok), prefill_chunk: usize::MAX };
    let several = a.question.len() > 1;
    for q in &a.question {
        let suffix = question_tokens(&tok, &layout, a.allow_special, q)?;
        let total = base.tokens.len() + suffix.len();
        if total.checked_add(a.max_new_tokens).is_none_or(|t| t > ctx) {
            return Err(CliError::Usage(format!(
                "the context ({} tokens) and the question ({} tokens) with --max-new-tokens {} come to more than the model's context of {ctx} tokens",
                base.tokens.len(),
                suffix.len(),
                a.max_new_tokens
            )));
        }
        let cache = base.cache.box_clone().ok_or_else(|| CliError::Usage("this cache cannot be copied for a second question".into()))?;
        let mut seq = Sequence::<B>::resume(cache, base.tokens.clone());
        if several && !a.json {
            crate::write_stdout(&format!("## {q}\n"))?;
        }
        let run = Run { a, model: &model, tok: &tok, segments: &[&suffix], config: &config, prompt_len: suffix.len() };
        let streamed = run.stream(&mut seq)?;
        let text = tok.decode(&streamed.out)?;
        let kv = seq.cache.stats();
        let stats = streamed.stats;
        if a.json {
            let j = serde_json::json!({
                "question": q,
                "text": text,
                "prompt_tokens": total,
                "context_tokens": base.tokens.len(),
                "question_tokens": suffix.len(),
                "generated_tokens": stats.generated_tokens,
                "prefill_tok_s": stats.prefill_tok_s(),
                "decode_tok_s": stats.decode_tok_s(),
                "kv_bytes": kv.retained_bytes,
                "kv_allocated_bytes": kv.allocated_bytes,
                "kv_full_bytes": kv.full_bytes,
                "policy": policy.policy.policy.to_string(),
                "budget": (policy.policy.policy != PolicyName::Full).then_some(policy.policy.budget),
                "kv_dtype": policy.kv_dtype.to_string(),
            });
            crate::write_stdout(&format!("{j}\n"))?;
        } else {
            crate::write_stdout(&format!("{}\n", text.get(streamed.printed..).unwrap_or("")))?;
            eprintln!(
                "lava: question {} tokens after a context of {} (not prefilled again), decode {:.1} tok/s ({} tokens), KV {} bytes",
                suffix.len(),
                base.tokens.len(),
                stats.decode_tok_s(),
                stats.generated_tokens,
                kv.retained_bytes
            );
        }
    }
    Ok(())
}

/// `--load-context`: the file, checked against the model and the flags given.
fn loaded<B: Backend>(
    a: &GenerateArgs,
    given: &PolicyConfig,
    file: &Path,
    sha: &str,
    model: &Llama<B>,
) -> Result<(Sequence<B>, PromptLayout, ContextPolicy), CliError> {
    let t = Instant::now();
    let saved = SavedContext::load(file, sha)?;
    let policy = saved.policy();
    // Flags left at their defaults take the file's settings; flags that say otherwise are refused.
    let default = crate::policy_args::PolicyArgs::defaults().to_config()?;
    if *given != default && *given != policy.policy {
        return Err(CliError::Usage(format!(
            "{} holds a context compressed with --policy {} --budget {}; drop the policy flags (the file's are used) or compress the context again",
            file.display(),
            policy.policy.policy,
            policy.policy.budget
        )));
    }
    let kv_dtype = a.policy.kv_dtype()?;
    if kv_dtype != lava_cache::KvDtype::default() && kv_dtype != policy.kv_dtype {
        return Err(CliError::Usage(format!("{} stores keys and values as {}; drop --kv-dtype {kv_dtype}", file.display(), policy.kv_dtype)));
    }
    if a.chat && !saved.layout.chat {
        return Err(CliError::Usage(format!("{} was compressed without --chat: its questions are asked the same way; drop --chat", file.display())));
    }
    let seq = saved.sequence(model, model.config.max_position_embeddings, a.max_new_tokens)?;
    eprintln!(
        "lava: loaded a compressed context of {} tokens ({} policy, {} bytes of K/V) from {} in {:.2}s",
        saved.tokens.len(),
        policy.policy.policy,
        seq.cache.retained_bytes(),
        file.display(),
        t.elapsed().as_secs_f64()
    );
    Ok((seq, saved.layout, policy))
}

/// `--context-file`: the context prefilled and compressed once (question-agnostic), saved with `--save-context`.
fn compressed<B: Backend>(
    a: &GenerateArgs,
    policy: &PolicyConfig,
    sha: &str,
    model: &Llama<B>,
    tok: &Tokenizer,
    device: &B::Device,
) -> Result<(Sequence<B>, PromptLayout, ContextPolicy), CliError> {
    let Some(file) = &a.context_file else { return Err(CliError::Usage("--context-file is missing".into())) };
    if a.decode_budget.is_some() && policy.policy == PolicyName::Full {
        return Err(CliError::Usage("--decode-budget needs a compressing --policy (e.g. --policy lava)".into()));
    }
    let ctx = model.config.max_position_embeddings;
    let text = Text::File(file.clone()).read(ctx)?;
    if text.trim().is_empty() {
        return Err(CliError::Usage(format!("{} is empty: give a document to compress", file.display())));
    }
    let layout = PromptLayout { chat: a.chat, system: None };
    // The context's tokens do not depend on the question that follows.
    let q = a.question.first().map_or("?", String::as_str);
    let context = prompt_segments(tok, layout.chat, a.allow_special, &text, Some(q))?.swap_remove(0);
    let kv_dtype = a.policy.kv_dtype()?;
    let compressing = policy.policy != PolicyName::Full;
    let options = CacheOptions { decode_tokens: a.max_new_tokens, chunked_prefill: compressing && a.prefill_chunk.is_some(), decode_slack: a.decode_budget, kv_dtype };
    let chunk = a.prefill_chunk.unwrap_or(if compressing { usize::MAX } else { 512 });
    let mut seq = Sequence::new(build_cache(model, policy, ctx, options, device)?);
    let t = Instant::now();
    seq.prefill(model, &context, chunk, |_| {})?;
    eprintln!(
        "lava: context of {} tokens prefilled and compressed ({} policy) in {:.1}s, K/V {} bytes",
        context.len(),
        policy.policy,
        t.elapsed().as_secs_f64(),
        seq.cache.retained_bytes()
    );
    if let Some(out) = &a.save_context {
        let saved = SavedContext::of(&seq, sha, layout.clone())?;
        saved.save(out)?;
        let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
        eprintln!("lava: wrote the compressed context to {} ({bytes} bytes)", out.display());
    }
    let p = ContextPolicy { policy: policy.clone(), decode_slack: a.decode_budget, chunked_prefill: options.chunked_prefill, kv_dtype };
    Ok((seq, layout, p))
}

/// The SHA-256 a context file names its model by: the model file's (or
/// directory's), or for a synthetic model that of its name and seed (its
/// weights are generated from them).
pub(crate) fn model_identity(path: &Path) -> Result<String, CliError> {
    if crate::fetch::synthetic_model(path)?.is_some() {
        use sha2::{Digest, Sha256};
        let id = format!("{} seed {}", path.display(), crate::backend::SYNTHETIC_SEED);
        return Ok(Sha256::digest(id.as_bytes()).iter().map(|b| format!("{b:02x}")).collect());
    }
    model_sha256(path).map_err(|e| CliError::io(path, e))
}

/// The tokens of `question` (and whatever the prompt layout puts after it)
/// as they follow a context: the second segment of a question-agnostic prompt.
fn question_tokens(tok: &Tokenizer, layout: &PromptLayout, allow_special: bool, question: &str) -> Result<Vec<u32>, CliError> {
    Ok(prompt_segments(tok, layout.chat, allow_special, "context", Some(question))?.swap_remove(1))
}
