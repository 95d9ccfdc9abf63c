//! The commands, generic over the backend.

use std::io::Write;
use std::path::Path;

use burn::tensor::backend::Backend;
use lava_cache::{KvCache, KvDtype, PolicyConfig, PolicyName};
use lava_llama::{Llama, Logits, Sampling, Tokenizer};
use lava_run::cache::{build_cache, compressed_cache, full_cache, CacheOptions};
use lava_run::detok::TextAssembler;
use lava_run::{GenerationConfig, GenerationStats, KvBytes, Sequence};

use crate::error::CliError;
use crate::fetch::resolve_model;
use crate::input::{read_text, text_cap, Overflow};
use crate::prompt::prompt_segments;
use crate::{with_backend, ExportArgs, GenerateArgs, PplArgs, SelectArgs};

/// Where a prompt comes from: the command line, or a file read (bounded by
/// the context) once the model is loaded.
pub(crate) enum Text {
    Inline(String),
    File(std::path::PathBuf),
}

impl Text {
    /// The text; a file is read up to [`text_cap`] of the context (an error past it).
    pub(crate) fn read(&self, ctx: usize) -> Result<String, CliError> {
        match self {
            Text::Inline(s) => Ok(s.clone()),
            Text::File(f) => read_text(f, text_cap(ctx), &format!("the model's context of {ctx} tokens"), Overflow::Refuse),
        }
    }
}

pub(crate) fn load<B: Backend>(m: &crate::ModelArgs, path: &Path, device: &B::Device) -> Result<(Llama<B>, Tokenizer), CliError> {
    let t = std::time::Instant::now();
    let r = crate::backend::load_for::<B>(m.backend, m.weights, path, device)?;
    eprintln!("lava: loaded {} in {:.1}s", path.display(), t.elapsed().as_secs_f64());
    Ok(r)
}

/// Tokens that end generation: the config's EOS ids and the usual end-of-turn tokens.
pub(crate) fn stop_tokens(model_eos: &[u32], tok: &Tokenizer) -> Vec<u32> {
    let mut v = model_eos.to_vec();
    for s in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>"] {
        if let Some(id) = tok.token_id(s) {
            v.push(id);
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

pub fn generate(a: GenerateArgs) -> Result<(), CliError> {
    if let Some(q) = a.question.iter().find(|q| q.trim().is_empty()) {
        return Err(CliError::Usage(format!("--question is empty ({q:?}): give the text of each question")));
    }
    let context = match (&a.prompt, &a.prompt_file, &a.context_file, &a.load_context) {
        (Some(p), None, None, None) if a.question.is_empty() => Text::Inline(p.clone()),
        (None, Some(f), None, None) if a.question.is_empty() => Text::File(f.clone()),
        // One question about a context compressed once: the plain question-agnostic run.
        (None, None, Some(f), None) if a.question.len() == 1 && a.save_context.is_none() => Text::File(f.clone()),
        (None, None, Some(_), None) | (None, None, None, Some(_)) => return crate::context::generate(a),
        (Some(_) | None, _, None, None) if !a.question.is_empty() => {
            return Err(CliError::Usage("--question goes with --context-file FILE or --load-context FILE, not with --prompt or --prompt-file".into()))
        }
        _ => {
            return Err(CliError::Usage(
                "give the prompt with --prompt TEXT or --prompt-file FILE, or --context-file FILE with --question TEXT (or --save-context FILE), or --load-context FILE with --question TEXT".into(),
            ))
        }
    };
    if matches!(&context, Text::Inline(p) if p.trim().is_empty()) {
        return Err(empty_prompt());
    }
    check_sampling(&a)?;
    let policy = a.policy.to_config()?;
    if a.decode_budget.is_some() && policy.policy == PolicyName::Full {
        return Err(CliError::Usage("--decode-budget needs a compressing --policy (e.g. --policy lava)".into()));
    }
    let path = resolve_model(a.model.model.as_deref())?;
    let question = a.question.first().cloned();
    with_backend!(a.model.backend, |B, device| {
        generate_on::<B>(&a, &policy, &context, question.as_deref(), &path, &device)
    })
}

/// The checks of the sampling and length flags every `generate` mode shares.
pub(crate) fn check_sampling(a: &GenerateArgs) -> Result<(), CliError> {
    if a.max_new_tokens == 0 {
        return Err(CliError::Usage("--max-new-tokens must be at least 1".into()));
    }
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        return Err(CliError::Usage(format!("--temperature must be >= 0, got {}", a.temperature)));
    }
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        return Err(CliError::Usage(format!("--top-p must be in (0, 1], got {}", a.top_p)));
    }
    if a.prefill_chunk == Some(0) {
        return Err(CliError::Usage("--prefill-chunk must be at least 1".into()));
    }
    Ok(())
}

fn empty_prompt() -> CliError {
    CliError::Usage("the prompt is empty: give some text with --prompt or --prompt-file".into())
}

fn generate_on<B: Backend>(
    a: &GenerateArgs,
    policy: &PolicyConfig,
    context: &Text,
    question: Option<&str>,
    path: &Path,
    device: &B::Device,
) -> Result<(), CliError> {
    let (model, tok) = load::<B>(&a.model, path, device)?;
    let ctx = model.config.max_position_embeddings;
    let context = context.read(ctx)?;
    if context.trim().is_empty() {
        return Err(empty_prompt());
    }
    let segments = prompt_segments(&tok, a.chat, a.allow_special, &context, question)?;
    let prompt_len: usize = segments.iter().map(Vec::len).sum();
    // Checked: a --max-new-tokens near usize::MAX must not wrap past the check.
    let total = prompt_len.checked_add(a.max_new_tokens).filter(|&t| t <= ctx);
    let Some(total) = total else {
        return Err(CliError::Usage(format!(
            "the prompt has {prompt_len} tokens and --max-new-tokens is {}, together more than the model's context of {ctx} tokens; shorten the prompt or lower --max-new-tokens",
            a.max_new_tokens
        )));
    };
    let kv_dtype = a.policy.kv_dtype()?;
    if policy.policy == PolicyName::Full {
        // The full cache is allocated for the whole sequence at once.
        lava_llama::memory::check_available(&format!("a full KV cache of {total} tokens"), KvBytes::for_model(&model, kv_dtype).full(total))?;
    }
    let sampling = if a.temperature > 0.0 {
        Sampling::TopP { temperature: a.temperature, top_p: a.top_p, top_k: 0, min_p: 0.0, seed: a.seed }
    } else {
        Sampling::Greedy
    };
    let compressing = policy.policy != PolicyName::Full;
    let prefill_chunk = match a.prefill_chunk {
        Some(c) => c,
        None if compressing => usize::MAX,
        None => 512,
    };
    let cfg = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        sampling,
        stop_tokens: stop_tokens(&model.config.eos_token_ids, &tok),
        prefill_chunk,
    };
    let options = CacheOptions {
        decode_tokens: a.max_new_tokens,
        chunked_prefill: compressing && a.prefill_chunk.is_some(),
        decode_slack: a.decode_budget,
        kv_dtype,
    };
    let seg_refs: Vec<&[u32]> = segments.iter().map(Vec::as_slice).collect();
    let run = Run { a, model: &model, tok: &tok, segments: &seg_refs, config: &cfg, prompt_len };
    // With --trace, a compressing cache is kept as itself, to read its kept positions after.
    let (streamed, cache, kept) = if a.trace.is_some() && compressing {
        let mut seq = Sequence::new(Box::new(compressed_cache(&model, policy, ctx, options, device)?));
        let streamed = run.stream(&mut seq)?;
        let kept = (0..model.config.num_hidden_layers)
            .map(|l| seq.cache.kept_positions(l))
            .collect::<Result<Vec<_>, _>>()
            .map_err(lava_llama::ModelError::from)?;
        (streamed, seq.cache.stats(), Some(kept))
    } else {
        let mut seq = Sequence::new(build_cache(&model, policy, ctx, options, device)?);
        let streamed = run.stream(&mut seq)?;
        (streamed, seq.cache.stats(), None)
    };
    let Streamed { out, stats, printed, trace_logits } = streamed;
    let text = tok.decode(&out)?;
    if a.json {
        let j = serde_json::json!({
            "text": text,
            "prompt_tokens": stats.prompt_tokens,
            // Tokens compressed as context, then (question-agnostic) those prefilled after it.
            "prompt_segments": segments.iter().map(Vec::len).collect::<Vec<_>>(),
            "generated_tokens": stats.generated_tokens,
            "prefill_tok_s": stats.prefill_tok_s(),
            "decode_tok_s": stats.decode_tok_s(),
            "kv_bytes": cache.retained_bytes,
            "kv_allocated_bytes": cache.allocated_bytes,
            "kv_full_bytes": cache.full_bytes,
            "policy": policy.policy.to_string(),
            "budget": if compressing { Some(policy.budget) } else { None },
        });
        crate::write_stdout(&format!("{j}\n"))?;
    } else {
        crate::write_stdout(&format!("{}\n", text.get(printed..).unwrap_or("")))?;
        eprintln!(
            "lava: prompt {} tokens, prefill {:.1} tok/s, decode {:.1} tok/s ({} tokens)",
            stats.prompt_tokens,
            stats.prefill_tok_s(),
            stats.decode_tok_s(),
            stats.generated_tokens,
        );
        eprintln!(
            "lava: KV cache ({}) retained {} bytes of {} full ({:.1}%), allocated {} bytes",
            policy.policy,
            cache.retained_bytes,
            cache.full_bytes,
            100.0 * cache.retained_bytes as f64 / cache.full_bytes.max(1) as f64,
            cache.allocated_bytes
        );
    }
    if let Some(file) = &a.trace {
        let j = serde_json::json!({
            "model": path.display().to_string(),
            "backend": format!("{:?}", a.model.backend).to_lowercase(),
            "policy": policy.policy.to_string(),
            "budget": if compressing { Some(policy.budget) } else { None },
            "prompt": segments.concat(),
            "tokens": out,
            "steps": trace_logits,
            "kept": kept,
        });
        write_new_file(file, format!("{j}\n").as_bytes())?;
    }
    Ok(())
}

/// What one `lava generate` run streams: its model, prompt and settings.
pub(crate) struct Run<'a, B: Backend> {
    pub a: &'a GenerateArgs,
    pub model: &'a Llama<B>,
    pub tok: &'a Tokenizer,
    pub segments: &'a [&'a [u32]],
    pub config: &'a GenerationConfig,
    pub prompt_len: usize,
}

/// What a run streamed: the tokens, their timings, the bytes of text printed, the `--trace` steps.
pub(crate) struct Streamed {
    pub out: Vec<u32>,
    pub stats: GenerationStats,
    pub printed: usize,
    pub trace_logits: Vec<serde_json::Value>,
}

impl<B: Backend> Run<'_, B> {
    /// Generates into `seq`, printing the text as it completes (a progress bar during a long prefill).
    pub(crate) fn stream<C: KvCache<B> + ?Sized>(&self, seq: &mut Sequence<B, C>) -> Result<Streamed, CliError> {
        let a = self.a;
        let vocab = self.model.config.vocab_size;
        let bar = (self.prompt_len > self.config.prefill_chunk).then(|| {
            let b = indicatif::ProgressBar::new(self.prompt_len as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("prefill {bar:30} {pos}/{len} tokens, {per_sec}, eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        let mut trace_logits: Vec<serde_json::Value> = Vec::new();
        let mut text = TextAssembler::new(std::sync::Arc::new(self.tok.clone()), Vec::new());
        let mut stdout = std::io::stdout();
        let mut stream_err = None;
        let result = seq.generate(
            self.model,
            self.segments,
            self.config,
            |done, _| {
                if let Some(b) = &bar {
                    b.set_position(done as u64);
                }
            },
            |id| {
                // The prefill is over: take the bar off the terminal before any text goes there
                // (clearing it later would erase the text streamed onto its line).
                if let Some(b) = bar.as_ref().filter(|b| !b.is_finished()) {
                    b.finish_and_clear();
                }
                if a.json {
                    return true;
                }
                // Print the newly completed text (a token may end mid-character).
                let delta = text.push(id);
                if !delta.text.is_empty() {
                    if let Err(e) = write!(stdout, "{}", delta.text).and_then(|_| stdout.flush()) {
                        stream_err = Some(e);
                        return false;
                    }
                }
                true
            },
            |logits| {
                if a.trace.is_some() {
                    trace_logits.push(trace_step(logits, vocab)?);
                }
                Ok(())
            },
        );
        if let Some(b) = bar.filter(|b| !b.is_finished()) {
            b.finish_and_clear();
        }
        let (out, stats) = result?;
        if let Some(e) = stream_err {
            return Err(CliError::io("<stdout>", e));
        }
        Ok(Streamed { out, stats, printed: text.sent(), trace_logits })
    }
}

/// Writes `bytes` to `path` through a temporary file beside it and one rename, so that a
/// failed write leaves no half-written file.
fn write_new_file(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| CliError::io(dir, e))?;
    tmp.write_all(bytes).and_then(|_| tmp.as_file().sync_all()).map_err(|e| CliError::io(path, e))?;
    tmp.persist(path).map_err(|e| CliError::io(path, e.error))?;
    Ok(())
}

/// One step of `--trace`: the logits `[1, vocab]` on the host, all of them for a vocabulary
/// up to 4096, else the 64 largest as `{"ids", "logits"}`.
fn trace_step<B: Backend>(logits: &burn::tensor::Tensor<B, 2>, vocab: usize) -> Result<serde_json::Value, lava_run::RunError> {
    let v = logits.clone().into_data().convert::<f32>().to_vec::<f32>().map_err(|e| lava_llama::ModelError::Backend(format!("{e:?}")))?;
    if vocab <= 4096 {
        return Ok(serde_json::json!({ "logits": v }));
    }
    let mut ids: Vec<usize> = (0..v.len()).collect();
    ids.sort_by(|&x, &y| v[y].total_cmp(&v[x]).then(x.cmp(&y)));
    ids.truncate(64);
    Ok(serde_json::json!({ "ids": ids, "logits": ids.iter().map(|&i| v[i]).collect::<Vec<_>>() }))
}

pub fn ppl(a: PplArgs) -> Result<(), CliError> {
    if a.max_tokens < 2 {
        return Err(CliError::Usage("--max-tokens must be at least 2".into()));
    }
    if a.chunk == 0 {
        return Err(CliError::Usage("--chunk must be at least 1".into()));
    }
    let path = resolve_model(a.model.model.as_deref())?;
    with_backend!(a.model.backend, |B, device| { ppl_on::<B>(&a, &path, &device) })
}

/// Mean negative log-likelihood (nats) of `ids[1..]` given their prefixes, full cache.
pub fn mean_nll<B: Backend>(model: &Llama<B>, ids: &[u32], chunk: usize) -> Result<f64, CliError> {
    let device = model.device().clone();
    lava_llama::memory::check_available(&format!("a full KV cache of {} tokens", ids.len()), KvBytes::for_model(model, KvDtype::F32).full(ids.len()))?;
    let mut cache = full_cache(model, ids.len(), &device)?;
    let mut total = 0f64;
    let mut count = 0usize;
    let mut start = 0;
    while start + 1 < ids.len() {
        let end = start.saturating_add(chunk).min(ids.len() - 1);
        let logits = model.forward(&ids[start..end], &mut *cache, Logits::All)?; // [T, vocab]
        let t = end - start;
        let (lp, _) = lava_llama::token_log_probs(logits, &ids[start + 1..end + 1])?;
        total -= lp.iter().map(|&x| x as f64).sum::<f64>();
        count += t;
        start = end;
    }
    Ok(total / count.max(1) as f64)
}

/// Mean NLL the way llama-perplexity computes it (`-c ctx`): the tokens are cut into
/// `ids.len() / ctx` windows of `ctx`, each run from an empty cache, and in each window
/// the predictions of tokens `ctx/2 + 1 .. ctx` are scored. With `bos` (a model that adds
/// BOS), each window's first token is replaced by it, as llama-perplexity does (the text's
/// tokens then start with it too, see `ppl_on`). Returns (mean NLL, scored).
pub fn windowed_nll<B: Backend>(model: &Llama<B>, ids: &[u32], ctx: usize, bos: Option<u32>) -> Result<(f64, usize), CliError> {
    let device = model.device().clone();
    let first = ctx / 2;
    let (mut total, mut count) = (0f64, 0usize);
    for window in ids.chunks_exact(ctx) {
        let mut cache = full_cache(model, ctx, &device)?;
        let input: Vec<u32> = bos.into_iter().chain(window[bos.is_some() as usize..].iter().copied()).collect();
        let logits = model.forward(&input, &mut *cache, Logits::All)?; // [ctx, vocab]
        let [_, vocab] = logits.dims();
        let scored = logits.slice([first..ctx - 1, 0..vocab]);
        let (lp, _) = lava_llama::token_log_probs(scored, &window[first + 1..])?;
        total -= lp.iter().map(|&x| x as f64).sum::<f64>();
        count += lp.len();
    }
    Ok((total / count.max(1) as f64, count))
}

fn ppl_on<B: Backend>(a: &PplArgs, path: &Path, device: &B::Device) -> Result<(), CliError> {
    let (model, tok) = load::<B>(&a.model, path, device)?;
    if let Some(ctx) = a.ctx {
        if ctx < 4 || ctx > model.config.max_position_embeddings {
            return Err(CliError::Usage(format!(
                "--ctx {ctx} must be at least 4 and at most the model's context ({})",
                model.config.max_position_embeddings
            )));
        }
        let why = format!("the {} tokens scored", a.max_tokens);
        let text = read_text(&a.text_file, text_cap(a.max_tokens), &why, Overflow::Truncate)?;
        // As llama-perplexity tokenizes: BOS first if the model adds it, control tokens as text.
        let mut ids: Vec<u32> = tok.bos_to_add().into_iter().collect();
        ids.extend(tok.encode_plain(&text)?);
        ids.truncate(a.max_tokens);
        if ids.len() < ctx {
            return Err(CliError::Usage(format!(
                "{} has {} token(s) (of at most --max-tokens {}), fewer than one window of --ctx {ctx}",
                a.text_file.display(),
                ids.len(),
                a.max_tokens
            )));
        }
        let (nll, scored) = windowed_nll(&model, &ids, ctx, tok.bos_to_add())?;
        let windows = ids.len() / ctx;
        return if a.json {
            let j = serde_json::json!({"tokens": ids.len(), "windows": windows, "scored": scored, "nll": nll, "ppl": nll.exp()});
            crate::write_stdout(&format!("{j}\n"))
        } else {
            crate::write_stdout(&format!(
                "tokens {}  windows {windows} of {ctx}  scored {scored}  mean NLL {:.4}  perplexity {:.3}\n",
                ids.len(),
                nll,
                nll.exp()
            ))
        };
    }
    let limit = a.max_tokens.min(model.config.max_position_embeddings);
    // Only the first `limit` tokens are scored: read only what they can need.
    let why = format!("the {limit} tokens scored");
    let text = read_text(&a.text_file, text_cap(limit), &why, Overflow::Truncate)?;
    let mut ids = tok.encode(&text)?;
    ids.truncate(limit);
    if ids.len() < 2 {
        return Err(CliError::Usage(format!(
            "{} has {} token(s); perplexity needs at least 2",
            a.text_file.display(),
            ids.len()
        )));
    }
    let nll = mean_nll(&model, &ids, a.chunk)?;
    if a.json {
        crate::write_stdout(&format!("{}\n", serde_json::json!({"tokens": ids.len(), "nll": nll, "ppl": nll.exp()})))?;
    } else {
        crate::write_stdout(&format!("tokens {}  mean NLL {:.4}  perplexity {:.3}\n", ids.len(), nll, nll.exp()))?;
    }
    Ok(())
}

pub fn export_hf(a: ExportArgs) -> Result<(), CliError> {
    if !a.gguf.is_file() {
        return Err(CliError::Usage(format!("{} is not a file: export-hf takes a GGUF file and an output directory", a.gguf.display())));
    }
    lava_llama::export_gguf_to_hf(&a.gguf, &a.dir)?;
    eprintln!("lava: wrote {}", a.dir.display());
    Ok(())
}

pub fn select(a: SelectArgs) -> Result<(), CliError> {
    let config = a.policy.to_config()?;
    let layers = crate::select::read_qkv_file(&a.qkv)?;
    let json = with_backend!(a.backend, |B, device| { crate::select::select_json::<B>(&layers, &config, &device) })?;
    crate::write_stdout(&format!("{json}\n"))
}
