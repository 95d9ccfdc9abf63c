//! `lava bench`: prefill and decode speed, compression overhead, KV memory and
//! peak RSS on the real model, per policy and budget, against the machine's
//! memory-bandwidth bound.
//!
//! - **Prefill**: for each prompt length and policy, a live prefill through the
//!   policy's [`CompressedCache`] (what `lava generate` does), median of
//!   `--runs`; `evict_seconds` is the time the cache spent scoring, selecting
//!   and gathering ([`CompressedCache::compression_seconds`]).
//! - **Decode**: for each context length, one recorded prefill; every policy
//!   and budget's cache is derived from it (exactly the cache a live prefill
//!   builds, see `lava_run::recorded`), then `--decode-tokens` greedy steps
//!   are timed one by one; tokens/s is one over the median step. With
//!   `--batch 1,16` each cell is also timed with that many copies of the cache
//!   stepping together through [`Llama::decode_batch`] (one read of the
//!   weights per step for all of them, what `lava serve` does): tokens/s is
//!   the batch size over the median step. With `--prefill-chunk N` a
//!   compressing cell's cache comes instead from a live prefill in chunks of
//!   `N` tokens that compresses after every chunk (the cache `lava serve`
//!   builds, query window included), and the batch steps clones of it.
//! - **Bound**: a read loop measures the bandwidth at which all threads read
//!   memory (a decode step only reads it); a decode step must read the
//!   weights and the KV cache, so `bound = read bandwidth / (weight bytes +
//!   KV bytes)` tokens/s. A STREAM triad is reported beside it (it counts 12
//!   bytes per element where the write's read-for-ownership moves 16, so it
//!   reads low: a bound from it can be beaten).
//!
//! A model with sliding-window layers (Gemma 3) gets the caches `lava generate`
//! builds ([`lava_run::build_cache`]): rings of the last `w` positions for
//! its local layers around the policy's cache of the global layers, and the
//! KV bytes count each ring as the `min(N, w)` positions it holds.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::backend::Backend;
use clap::Args;
use lava_cache::{CompressedCache, KvCache, PolicyConfig, PolicyName};
use lava_llama::{Llama, Logits};
use lava_run::cache::{build_cache, full_cache, CacheOptions};
use lava_run::decode::{argmax, argmax_rows};
use lava_run::Sequence;
use serde::Serialize;

use crate::error::CliError;
use crate::fetch::resolve_model;
use crate::{with_backend, ModelArgs};

/// `lava bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Model and backend.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt lengths (tokens) for prefill, and context lengths for decode.
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096,8192")]
    pub lengths: Vec<usize>,
    /// Policies besides `full` (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "streaming,snapkv,pyramidkv,ada-snapkv,lava")]
    pub policies: Vec<String>,
    /// Budgets for decode (prefill uses the first).
    #[arg(long, value_delimiter = ',', default_value = "64,128,256,512")]
    pub budgets: Vec<usize>,
    /// Timed prefill runs per cell (the median is reported); 0 skips the prefill cells
    /// (decode only).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Timed decode steps per cell (the median step is reported).
    #[arg(long, default_value_t = 16)]
    pub decode_tokens: usize,
    /// A few minutes: lengths 512,1024; policies snapkv,lava; budget 128; 1 run; 8 decode steps.
    #[arg(long)]
    pub quick: bool,
    /// UTF-8 text the prompts are cut from (default: a built-in paragraph, repeated).
    #[arg(long)]
    pub text_file: Option<PathBuf>,
    /// Skip the bandwidth measurement (and the bound).
    #[arg(long)]
    pub no_bandwidth: bool,
    /// Head floor of the adaptive head allocation (reference, matched, layer; default: each policy's own).
    #[arg(long)]
    pub floor_rule: Option<String>,
    /// Batch sizes of the decode cells: each cell's cache is copied this many
    /// times and the copies step together through `decode_batch` (1: the
    /// plain single-sequence step).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// How the decode cells' caches store K/V: f32, f16 or q8_0 (see `lava generate --help`).
    #[arg(long, default_value = "f32")]
    pub kv_dtype: String,
    /// Build each compressing decode cell's cache by a live prefill in chunks
    /// of this many tokens, compressing after every chunk (what `lava serve`
    /// does), instead of deriving it from the recorded prefill; the batch's
    /// copies are clones of it.
    #[arg(long)]
    pub prefill_chunk: Option<usize>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// One prefill measurement.
#[derive(Debug, Clone, Serialize)]
pub struct PrefillRow {
    /// Prompt tokens.
    pub tokens: usize,
    /// Policy (`full` or a compressing one at the first budget).
    pub policy: String,
    /// Budget (`None` for full).
    pub budget: Option<usize>,
    /// Median wall time of the prefill forward pass.
    pub seconds: f64,
    /// Median time of it spent scoring, selecting and gathering.
    pub evict_seconds: f64,
}

/// One decode measurement.
#[derive(Debug, Clone, Serialize)]
pub struct DecodeRow {
    /// Context length (prompt tokens before decoding).
    pub context: usize,
    /// Policy.
    pub policy: String,
    /// Budget (`None` for full).
    pub budget: Option<usize>,
    /// Sequences per step (`--batch`).
    pub batch: usize,
    /// Batch size over the median step time.
    pub tok_s: f64,
    /// `bandwidth / (weight bytes + retained KV bytes)`, if measured.
    pub bound_tok_s: Option<f64>,
    /// `tok_s / bound_tok_s`.
    pub bound_fraction: Option<f64>,
}

/// KV memory of one cache after its prefill.
#[derive(Debug, Clone, Serialize)]
pub struct KvRow {
    /// Context length.
    pub context: usize,
    /// Policy.
    pub policy: String,
    /// Budget (`None` for full).
    pub budget: Option<usize>,
    /// Bytes of kept keys and values.
    pub retained_bytes: usize,
    /// Bytes allocated for keys and values (headroom for the timed decode steps included).
    pub allocated_bytes: usize,
    /// Bytes of kept keys and values after the decode steps (prompt plus generated tokens).
    pub retained_after_decode_bytes: usize,
    /// Bytes allocated after the decode steps.
    pub allocated_after_decode_bytes: usize,
    /// `layers * kv_heads * budget * head_dim * 2 * 4` (the full cache's bytes for `full`);
    /// with sliding-window layers, the global layers' count for `layers` plus each local
    /// layer's ring of `min(context, window)` positions (`lava_cache::held_kv_bytes`).
    pub expected_bytes: usize,
}

/// Everything `lava bench --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Model file.
    pub model: String,
    /// Backend.
    pub backend: String,
    /// Threads available to the process.
    pub threads: usize,
    /// f32 parameter bytes (what one decode step reads).
    pub weight_bytes: usize,
    /// Read bandwidth in GB/s (10^9 bytes), the bound's, if measured.
    pub bandwidth_gb_s: Option<f64>,
    /// STREAM triad bandwidth in GB/s, if measured.
    pub triad_gb_s: Option<f64>,
    /// Prefill rows.
    pub prefill: Vec<PrefillRow>,
    /// Decode rows.
    pub decode: Vec<DecodeRow>,
    /// KV rows.
    pub kv: Vec<KvRow>,
    /// How the decode cells stored K/V (`--kv-dtype`).
    pub kv_dtype: String,
    /// Peak resident set size of the process (Linux `VmHWM`), if known.
    pub peak_rss_bytes: Option<u64>,
}

/// The cache `lava serve` builds for `prompt`: a live prefill in chunks of
/// `chunk` tokens, compressing after every chunk, with room for `decode_tokens`.
fn chunked_prefill<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    config: &PolicyConfig,
    kv_dtype: lava_cache::KvDtype,
    max_tokens: usize,
    decode_tokens: usize,
    chunk: usize,
) -> Result<Box<dyn KvCache<B>>, CliError> {
    let options = CacheOptions { decode_tokens, chunked_prefill: true, kv_dtype, ..Default::default() };
    let mut seq = Sequence::new(build_cache(model, config, max_tokens, options, model.device())?);
    seq.prefill(model, prompt, chunk, |_| {})?;
    Ok(seq.cache)
}

/// `policy` at budget `budget` with the reference defaults and `--floor-rule`.
fn policy_config(a: &BenchArgs, policy: PolicyName, budget: usize) -> Result<PolicyConfig, CliError> {
    let mut c = PolicyConfig::new(policy, budget);
    c.floor_rule = crate::policy_args::parse_floor_rule(a.floor_rule.as_deref())?;
    Ok(c)
}

const DEFAULT_TEXT: &str = "The history of the printing press is a history of people who wanted to share what they knew. \
Before movable type, a single book could take a scribe months to copy, and errors crept in with every copy. \
Gutenberg's press changed the economics of knowledge: pamphlets, newspapers and scientific journals followed, \
and with them arguments that could be checked by anyone who could read. ";

pub fn bench(mut a: BenchArgs) -> Result<(), CliError> {
    if a.quick {
        a.lengths = vec![512, 1024];
        a.policies = vec!["snapkv".into(), "lava".into()];
        a.budgets = vec![128];
        a.runs = 1;
        a.decode_tokens = 8;
    }
    if a.lengths.is_empty() || a.lengths.contains(&0) {
        return Err(CliError::Usage("--lengths needs positive token counts, e.g. --lengths 1024,4096".into()));
    }
    if a.budgets.is_empty() || a.decode_tokens == 0 {
        return Err(CliError::Usage("--budgets and --decode-tokens must be non-empty / at least 1".into()));
    }
    if a.batch.is_empty() || a.batch.iter().any(|&b| b == 0 || b > 256) {
        return Err(CliError::Usage("--batch needs batch sizes from 1 to 256, e.g. --batch 1,8,16".into()));
    }
    if a.prefill_chunk == Some(0) {
        return Err(CliError::Usage("--prefill-chunk needs a positive token count, e.g. --prefill-chunk 256".into()));
    }
    let mut policies = Vec::new();
    for p in &a.policies {
        let name: PolicyName = p.parse()?;
        if name != PolicyName::Full && !policies.contains(&name) {
            policies.push(name);
        }
    }
    for &b in &a.budgets {
        PolicyConfig::new(PolicyName::Lava, b).validate()?;
    }
    crate::policy_args::parse_floor_rule(a.floor_rule.as_deref())?;
    let max_len = a.lengths.iter().copied().max().unwrap_or(0);
    // Checked: the lengths and --decode-tokens are user numbers.
    let Some(needed) = max_len.checked_add(a.decode_tokens).and_then(|n| n.checked_add(1)) else {
        return Err(CliError::Usage(format!(
            "--lengths up to {max_len} plus {} decode tokens is more tokens than any context holds",
            a.decode_tokens
        )));
    };
    let text = match &a.text_file {
        // The text is cycled to the longest length: only that many tokens of it are used.
        Some(p) => crate::input::read_text(
            p,
            crate::input::text_cap(max_len),
            &format!("the longest --lengths of {max_len} tokens"),
            crate::input::Overflow::Truncate,
        )?,
        None => DEFAULT_TEXT.to_string(),
    };
    if text.trim().is_empty() {
        return Err(CliError::Usage("--text-file is empty".into()));
    }
    let (bandwidth, triad) = if a.no_bandwidth { (None, None) } else { (Some(read_bandwidth_gb_s()), Some(triad_bandwidth_gb_s())) };
    let path = resolve_model(a.model.model.as_deref())?;
    let mut report = with_backend!(a.model.backend, |B, device| {
        let (model, tok) = crate::backend::load_for::<B>(a.model.backend, a.model.weights, &path, &device)?;
        if needed > model.config.max_position_embeddings {
            return Err(CliError::Usage(format!(
                "--lengths up to {max_len} plus {} decode tokens exceed the model's context ({})",
                a.decode_tokens, model.config.max_position_embeddings
            )));
        }
        let base = tok.encode(&text)?;
        if base.is_empty() {
            return Err(CliError::Usage("the bench text encodes to no tokens".into()));
        }
        let ids: Vec<u32> = base.iter().copied().cycle().take(max_len).collect();
        run_bench::<B>(&a, &model, &ids, &policies, bandwidth, &path, &device)
    })?;
    report.triad_gb_s = triad;
    if a.json {
        let s = serde_json::to_string_pretty(&report).map_err(model_err)?;
        crate::write_stdout(&(s + "\n"))
    } else {
        crate::write_stdout(&tables(&report))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn model_err(e: impl std::fmt::Display) -> CliError {
    CliError::Runtime(e.to_string())
}

#[allow(clippy::too_many_arguments)]
fn run_bench<B: Backend>(
    a: &BenchArgs,
    model: &Llama<B>,
    ids: &[u32],
    policies: &[PolicyName],
    bandwidth: Option<f64>,
    path: &std::path::Path,
    device: &B::Device,
) -> Result<BenchReport, CliError> {
    let (shape, windows) = (model.cache_shape(), model.layer_windows());
    let max_tokens = model.config.max_position_embeddings;
    let weight_bytes = model.parameter_bytes();
    let prefill_cells = a.lengths.len().saturating_mul(1 + policies.len()).saturating_mul(a.runs);
    let decode_cells = a.lengths.len().saturating_mul(1 + policies.len() * a.budgets.len());
    let bar = if a.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(prefill_cells.saturating_add(decode_cells) as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("bench {bar:30} {pos}/{len} {msg} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // A prefill cell's caches: no decode follows (a compressing one keeps its default headroom).
    let compressed_options = CacheOptions { decode_tokens: CompressedCache::<B>::DEFAULT_HEADROOM, ..CacheOptions::default() };
    // Warm-up: first calls allocate and page in the weights.
    let mut warm = full_cache(model, max_tokens, device)?;
    model.forward(&ids[..ids.len().min(64)], warm.as_mut(), Logits::Last)?;
    drop(warm);

    let mut prefill = Vec::new();
    for &len in &a.lengths {
        let prompt = &ids[..len];
        let mut cells: Vec<(PolicyName, Option<usize>)> = vec![(PolicyName::Full, None)];
        cells.extend(policies.iter().map(|&p| (p, Some(a.budgets[0]))));
        for (policy, budget) in cells.into_iter().filter(|_| a.runs > 0) {
            bar.set_message(format!("prefill {len} {policy}"));
            let (mut secs, mut evict) = (Vec::new(), Vec::new());
            for _ in 0..a.runs {
                // `generate`'s cache: full or compressed (rings around it for local layers).
                let config = policy_config(a, policy, budget.unwrap_or(a.budgets[0]))?;
                let options = if budget.is_some() { compressed_options } else { CacheOptions::default() };
                let mut c = build_cache(model, &config, max_tokens, options, device)?;
                let t = Instant::now();
                let logits = model.forward(prompt, c.as_mut(), Logits::Last)?;
                argmax(logits)?; // waits for the device
                let (s, e) = (t.elapsed().as_secs_f64(), c.compression_seconds());
                secs.push(s);
                evict.push(e);
                bar.inc(1);
            }
            prefill.push(PrefillRow { tokens: len, policy: policy.to_string(), budget, seconds: median(secs), evict_seconds: median(evict) });
        }
    }

    let mut decode = Vec::new();
    let mut kv = Vec::new();
    let kv_dtype: lava_cache::KvDtype = a.kv_dtype.parse()?;
    for &len in &a.lengths {
        bar.set_message(format!("decode {len}: prefill"));
        let mut pre = lava_run::recorded::prefill(model, &ids[..len], max_tokens).map_err(model_err)?;
        let first = argmax(pre.last_logits.clone())?;
        let mut cells: Vec<(PolicyName, Option<usize>)> = vec![(PolicyName::Full, None)];
        for &p in policies {
            cells.extend(a.budgets.iter().map(|&b| (p, Some(b))));
        }
        for (policy, budget) in cells {
            bar.set_message(format!("decode {len} {policy} {}", budget.map_or("".into(), |b| b.to_string())));
            let config = policy_config(a, policy, budget.unwrap_or(a.budgets[0]))?;
            // `--prefill-chunk`: the cell's cache from a live chunked prefill, cloned per sequence.
            let chunked = match (a.prefill_chunk, budget) {
                (Some(chunk), Some(_)) => Some(chunked_prefill(model, &ids[..len], &config, kv_dtype, max_tokens, a.decode_tokens + 1, chunk)?),
                _ => None,
            };
            for &batch in &a.batch {
                let mut caches: Vec<Box<dyn lava_cache::KvCache<B>>> = Vec::with_capacity(batch);
                for _ in 0..batch {
                    caches.push(match &chunked {
                        Some(c) => c.box_clone().ok_or_else(|| model_err("a chunked-prefill cache could not be copied"))?,
                        None => pre.cache_for(model, &config, kv_dtype, max_tokens, a.decode_tokens + 1).map_err(model_err)?,
                    });
                }
                let retained = caches[0].retained_bytes();
                // The global layers keep the budget (all `len` for full), each ring min(len, w).
                let expected = lava_cache::held_kv_bytes(shape, &windows, len, budget.map_or(len, |b| b.min(len)), kv_dtype);
                let allocated = caches[0].allocated_bytes();
                let mut ids = vec![first; batch];
                // One untimed step (first use of the caches' buffers), then the timed ones.
                let mut step = |ids: &mut Vec<u32>| -> Result<(), CliError> {
                    if batch == 1 {
                        ids[0] = argmax(model.forward(&[ids[0]], caches[0].as_mut(), Logits::Last)?)?;
                    } else {
                        let mut refs: Vec<&mut dyn lava_cache::KvCache<B>> = caches.iter_mut().map(|c| c.as_mut()).collect();
                        *ids = argmax_rows(model.decode_batch(ids, &mut refs)?)?;
                    }
                    Ok(())
                };
                step(&mut ids)?;
                let mut steps = Vec::with_capacity(a.decode_tokens);
                for _ in 0..a.decode_tokens {
                    let t = Instant::now();
                    step(&mut ids)?;
                    steps.push(t.elapsed().as_secs_f64());
                }
                if batch == a.batch[0] {
                    kv.push(KvRow {
                        context: len,
                        policy: policy.to_string(),
                        budget,
                        retained_bytes: retained,
                        allocated_bytes: allocated,
                        expected_bytes: expected,
                        retained_after_decode_bytes: caches[0].retained_bytes(),
                        allocated_after_decode_bytes: caches[0].allocated_bytes(),
                    });
                }
                let tok_s = batch as f64 / median(steps);
                // A step reads the weights once and every sequence's KV.
                let bound = bandwidth.map(|bw| bw * 1e9 * batch as f64 / (weight_bytes + batch * retained) as f64);
                decode.push(DecodeRow {
                    context: len,
                    policy: policy.to_string(),
                    budget,
                    batch,
                    tok_s,
                    bound_tok_s: bound,
                    bound_fraction: bound.map(|b| tok_s / b),
                });
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(BenchReport {
        model: path.display().to_string(),
        backend: format!("{:?}", a.model.backend).to_lowercase(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        weight_bytes,
        bandwidth_gb_s: bandwidth,
        triad_gb_s: None,
        prefill,
        decode,
        kv,
        kv_dtype: kv_dtype.to_string(),
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// Peak resident set size (`VmHWM` of `/proc/self/status`), Linux only.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Memory bandwidth of reading (what a decode step does): a 512 MiB array of
/// `u64` summed on all available threads, each its own contiguous part, the
/// best of 5 passes, 8 bytes per element.
pub fn read_bandwidth_gb_s() -> f64 {
    const N: usize = 64 << 20;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let x: Vec<u64> = (0..N as u64).collect();
    let chunk = N.div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let total: u64 = std::thread::scope(|scope| {
            let parts: Vec<_> = x.chunks(chunk).map(|part| scope.spawn(move || part.iter().fold(0u64, |s, &v| s.wrapping_add(v)))).collect();
            parts.into_iter().map(|p| p.join().unwrap_or(0)).fold(0u64, u64::wrapping_add)
        });
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(total);
    }
    (8 * N) as f64 / best / 1e9
}

/// Memory bandwidth of a STREAM-style triad `a[i] = b[i] + s * c[i]` over
/// three 64 MiB arrays on all available threads, counting 12 bytes per element
/// (two reads, one write), best of 5 passes, in GB/s.
pub fn triad_bandwidth_gb_s() -> f64 {
    const N: usize = 16 << 20;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let b: Vec<f32> = (0..N).map(|i| i as f32).collect();
    let c: Vec<f32> = (0..N).map(|i| (N - i) as f32).collect();
    let mut a = vec![0f32; N];
    let chunk = N.div_ceil(threads);
    let mut best = f64::INFINITY;
    for pass in 0..5 {
        let s = 1.0 + pass as f32;
        let t = Instant::now();
        std::thread::scope(|scope| {
            for ((a, b), c) in a.chunks_mut(chunk).zip(b.chunks(chunk)).zip(c.chunks(chunk)) {
                scope.spawn(move || {
                    for ((x, &y), &z) in a.iter_mut().zip(b).zip(c) {
                        *x = y + s * z;
                    }
                });
            }
        });
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&a);
    }
    (3 * 4 * N) as f64 / best / 1e9
}

/// The report as text tables.
fn tables(r: &BenchReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "model {}  backend {}  threads {}  weights {:.1} MB", r.model, r.backend, r.threads, r.weight_bytes as f64 / 1e6);
    if let Some(bw) = r.bandwidth_gb_s {
        let triad = r.triad_gb_s.map_or(String::new(), |t| format!(" (STREAM triad {t:.1} GB/s)"));
        let _ = writeln!(out, "read bandwidth {bw:.1} GB/s{triad}");
    }
    let _ = writeln!(out, "\nprefill (median)\n{:>7} {:>12} {:>7} {:>9} {:>9} {:>8} {:>7}", "tokens", "policy", "budget", "seconds", "tok/s", "evict s", "evict%");
    for p in &r.prefill {
        let _ = writeln!(out, 
            "{:>7} {:>12} {:>7} {:>9.3} {:>9.1} {:>8.3} {:>6.2}%",
            p.tokens,
            p.policy,
            p.budget.map_or("-".into(), |b| b.to_string()),
            p.seconds,
            p.tokens as f64 / p.seconds,
            p.evict_seconds,
            100.0 * p.evict_seconds / p.seconds
        );
    }
    let _ = writeln!(out, "\ndecode (median step)\n{:>7} {:>12} {:>7} {:>6} {:>9} {:>9} {:>8}", "context", "policy", "budget", "batch", "tok/s", "bound", "of bound");
    for d in &r.decode {
        let _ = writeln!(out, 
            "{:>7} {:>12} {:>7} {:>6} {:>9.1} {:>9} {:>8}",
            d.context,
            d.policy,
            d.budget.map_or("-".into(), |b| b.to_string()),
            d.batch,
            d.tok_s,
            d.bound_tok_s.map_or("-".into(), |b| format!("{b:.1}")),
            d.bound_fraction.map_or("-".into(), |f| format!("{:.0}%", 100.0 * f)),
        );
    }
    let _ = writeln!(out, 
        "\nKV bytes, K/V stored as {} (after prefill: retained vs expected, allocated vs retained; after the decode steps: the same)\n{:>7} {:>12} {:>7} {:>12} {:>12} {:>6} {:>12} {:>6} {:>12} {:>12} {:>6}",
        r.kv_dtype, "context", "policy", "budget", "retained", "expected", "ratio", "allocated", "ratio", "retained", "allocated", "ratio"
    );
    let ratio = |a: usize, b: usize| if b == 0 { "-".to_string() } else { format!("{:.3}", a as f64 / b as f64) };
    for k in &r.kv {
        let _ = writeln!(out, 
            "{:>7} {:>12} {:>7} {:>12} {:>12} {:>6} {:>12} {:>6} {:>12} {:>12} {:>6}",
            k.context,
            k.policy,
            k.budget.map_or("-".into(), |b| b.to_string()),
            k.retained_bytes,
            k.expected_bytes,
            ratio(k.retained_bytes, k.expected_bytes),
            k.allocated_bytes,
            ratio(k.allocated_bytes, k.retained_bytes),
            k.retained_after_decode_bytes,
            k.allocated_after_decode_bytes,
            ratio(k.allocated_after_decode_bytes, k.retained_after_decode_bytes),
        );
    }
    if let Some(rss) = r.peak_rss_bytes {
        let _ = writeln!(out, "\npeak RSS {:.1} MB", rss as f64 / 1e6);
    }
    out
}
