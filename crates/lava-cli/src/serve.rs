//! `lava serve`: parses the flags, and hands `lava-serve` a loader that runs on
//! its engine thread (model, tokenizer, stop tokens); the engine builds each
//! request's cache through `lava-run`, as `lava generate` does.

use std::path::PathBuf;
use std::time::Duration;

use burn::tensor::backend::Backend;
use clap::Args;
use lava_serve::{ConnConfig, EngineConfig, HttpConfig, Loaded, ServeError, ServeOptions};

use crate::error::CliError;
use crate::fetch::resolve_model;
use crate::{with_backend, ModelArgs, PolicyArgs};

/// `lava serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Model and backend.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The default KV-cache policy of requests (each may set `kv_policy`, `kv_budget`...).
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the bound address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// KV bytes all running sequences may reserve together (e.g. 1GiB, 512MiB, 1000000).
    #[arg(long, default_value = "4GiB")]
    pub kv_memory: String,
    /// Requests that may wait for KV memory; more get 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Prompt tokens per prefill step, between decode steps of the running sequences.
    #[arg(long, default_value_t = 256)]
    pub prefill_chunk: usize,
    /// Largest request body (e.g. 4MiB); larger ones get 413.
    #[arg(long, default_value = "4MiB")]
    pub max_body: String,
    /// Require `Authorization: Bearer KEY` on the /v1/ routes.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Read control tokens (`<|im_start|>`...) written in prompts and messages as
    /// control tokens; by default they are plain text, so a message cannot forge a turn.
    #[arg(long)]
    pub allow_special: bool,
    /// max_tokens of a request that gives none (capped by the context).
    #[arg(long, default_value_t = 256)]
    pub default_max_tokens: usize,
    /// The model's name in answers and /v1/models (default: the file's name).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Another name a request's `model` may give (repeatable); a request naming a
    /// model that is neither this nor --model-name gets 404 model_not_found.
    #[arg(long = "model-alias", value_name = "NAME")]
    pub model_alias: Vec<String>,
    /// A request head must arrive within this of its first byte, else the connection
    /// is closed (e.g. 30s, 500ms, 2m; a bare number is seconds).
    #[arg(long, default_value = "30s")]
    pub header_timeout: String,
    /// A request body must arrive within this of its head, else 408.
    #[arg(long, default_value = "60s")]
    pub body_timeout: String,
    /// A keep-alive connection with no request is closed after this.
    #[arg(long, default_value = "15s")]
    pub idle_timeout: String,
    /// Open connections at most; more are answered 503 and closed.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// After SIGTERM/SIGINT, how long requests in flight may take to finish before
    /// they are dropped (a second signal drops them at once).
    #[arg(long, default_value = "30s")]
    pub shutdown_timeout: String,
    /// Bytes the context cache may hold in memory, counted within --kv-memory
    /// (compressed states of prompt prefixes reused by later requests; 0: off;
    /// default: a quarter of --kv-memory).
    #[arg(long)]
    pub context_cache_memory: Option<String>,
    /// The shortest prefix (tokens, ending at a message boundary) the context cache keeps.
    #[arg(long, default_value_t = 1024)]
    pub context_cache_min: usize,
    /// Also keep the context cache's states in this directory (one file each),
    /// and use the states found there at start (files of another model are skipped).
    #[arg(long)]
    pub context_cache_dir: Option<PathBuf>,
    /// Bytes the files in --context-cache-dir may take.
    #[arg(long, default_value = "10GiB")]
    pub context_cache_disk: String,
}

/// Parses a duration: a number with an optional unit ms, s, m or h (none: seconds).
pub fn parse_duration(flag: &str, value: &str) -> Result<Duration, CliError> {
    let v = value.trim();
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let seconds: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(CliError::Usage(format!("{flag} {value:?}: the unit must be ms, s, m or h (e.g. 30s)"))),
    };
    let n: f64 = num.parse().map_err(|_| CliError::Usage(format!("{flag} {value:?} is not a duration (e.g. 30s or 500ms)")))?;
    let d = n * seconds;
    if !(d.is_finite() && d > 0.0 && d < 1e9) {
        return Err(CliError::Usage(format!("{flag} {value:?} must be more than 0")));
    }
    Ok(Duration::from_secs_f64(d))
}

/// Parses a byte size: a number with an optional suffix K/M/G/T (powers of
/// 1000), KiB/MiB/GiB/TiB (powers of 1024), or B.
pub fn parse_bytes(flag: &str, value: &str) -> Result<u64, CliError> {
    let v = value.trim();
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(CliError::Usage(format!("{flag} {value:?}: the unit must be B, K, M, G, T, KiB, MiB, GiB or TiB"))),
    };
    let n: f64 = num.parse().map_err(|_| CliError::Usage(format!("{flag} {value:?} is not a size (e.g. 1GiB or 1000000)")))?;
    let bytes = n * mult as f64;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(CliError::Usage(format!("{flag} {value:?} must be at least 1 byte")));
    }
    Ok(bytes as u64)
}

/// Runs `lava serve`.
pub fn serve(a: ServeArgs) -> Result<(), CliError> {
    let policy = a.policy.to_config()?;
    let kv_memory = parse_bytes("--kv-memory", &a.kv_memory)?;
    let max_body = parse_bytes("--max-body", &a.max_body)?;
    let max_body = usize::try_from(max_body).map_err(|_| CliError::Usage("--max-body is too large".into()))?;
    if a.prefill_chunk == 0 {
        return Err(CliError::Usage("--prefill-chunk must be at least 1".into()));
    }
    if a.default_max_tokens == 0 {
        return Err(CliError::Usage("--default-max-tokens must be at least 1".into()));
    }
    if a.max_connections == 0 {
        return Err(CliError::Usage("--max-connections must be at least 1".into()));
    }
    if a.api_key.as_deref().is_some_and(str::is_empty) {
        return Err(CliError::Usage("--api-key is empty".into()));
    }
    let kv_dtype = a.policy.kv_dtype()?;
    let context_memory = match a.context_cache_memory.as_deref() {
        Some("0") => 0,
        Some(v) => parse_bytes("--context-cache-memory", v)?,
        None => kv_memory / 4,
    };
    if context_memory > kv_memory {
        return Err(CliError::Usage(format!("--context-cache-memory ({context_memory} bytes) is more than --kv-memory ({kv_memory} bytes): the context cache is counted within it")));
    }
    if a.context_cache_min == 0 {
        return Err(CliError::Usage("--context-cache-min must be at least 1 token".into()));
    }
    let context_disk = parse_bytes("--context-cache-disk", &a.context_cache_disk)?;
    if a.context_cache_dir.is_some() && context_memory == 0 {
        return Err(CliError::Usage("--context-cache-dir needs the context cache on: drop --context-cache-memory 0".into()));
    }
    let path = resolve_model(a.model.model.as_deref())?;
    let context_dir = match &a.context_cache_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| CliError::io(dir, e))?;
            Some((dir.clone(), crate::context::model_identity(&path)?))
        }
        None => None,
    };
    let context_cache = lava_serve::ContextCacheConfig { memory: context_memory, min_tokens: a.context_cache_min, dir: context_dir, disk: context_disk };
    let model_id = a.model_name.clone().unwrap_or_else(|| {
        path.file_name().map_or_else(|| "lava".to_string(), |n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
    });
    let options = ServeOptions {
        host: a.host.clone(),
        port: a.port,
        engine: EngineConfig { kv_memory, max_queue: a.max_queue, prefill_chunk: a.prefill_chunk, context_cache },
        conn: ConnConfig {
            header_timeout: parse_duration("--header-timeout", &a.header_timeout)?,
            idle_timeout: parse_duration("--idle-timeout", &a.idle_timeout)?,
            max_connections: a.max_connections,
            shutdown_timeout: parse_duration("--shutdown-timeout", &a.shutdown_timeout)?,
        },
        http: HttpConfig {
            max_body,
            api_key: a.api_key.clone(),
            default_policy: policy,
            default_kv_dtype: kv_dtype,
            model_id,
            model_aliases: a.model_alias.clone(),
            allow_special: a.allow_special,
            default_max_tokens: a.default_max_tokens,
            body_timeout: parse_duration("--body-timeout", &a.body_timeout)?,
            context_cache_min: (context_memory > 0).then_some(a.context_cache_min),
        },
    };
    with_backend!(a.model.backend, |B, device| { serve_on::<B>(options, a.model.clone(), path, device) })
}

fn serve_on<B: Backend>(options: ServeOptions, model: ModelArgs, path: PathBuf, device: B::Device) -> Result<(), CliError> {
    let load = move || -> Result<Loaded<B>, CliError> {
        let (m, tokenizer) = crate::commands::load::<B>(&model, &path, &device)?;
        let stop_tokens = crate::commands::stop_tokens(&m.config.eos_token_ids, &tokenizer);
        Ok(Loaded { model: m, tokenizer, stop_tokens })
    };
    lava_serve::serve(options, load).map_err(|e| match e {
        ServeError::Load(e) => e,
        ServeError::Io(msg) => CliError::Runtime(msg),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_bad_ones_name_the_flag() {
        assert_eq!(parse_duration("--x", "30s").expect("30s"), Duration::from_secs(30));
        assert_eq!(parse_duration("--x", "500ms").expect("ms"), Duration::from_millis(500));
        assert_eq!(parse_duration("--x", "2").expect("bare"), Duration::from_secs(2));
        assert_eq!(parse_duration("--x", "1.5m").expect("m"), Duration::from_secs(90));
        for bad in ["", "0", "-1s", "5 parsecs", "s", "1e99"] {
            let e = parse_duration("--idle-timeout", bad).expect_err(bad).to_string();
            assert!(e.contains("--idle-timeout"), "{bad}: {e}");
        }
    }
}
