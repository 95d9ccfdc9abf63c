//! The server's counters and gauges, rendered as Prometheus text at
//! `GET /metrics`. The HTTP side counts requests and tokens out; the engine
//! sets the sequence, KV-memory and throughput gauges after every step.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// What the engine reports after each scheduler step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineGauges {
    /// Sequences in the decode batch or prefilling.
    pub running: usize,
    /// Requests waiting for KV memory.
    pub queued: usize,
    /// Bytes of K/V storage the running sequences' caches have allocated.
    pub kv_allocated_bytes: u64,
    /// Bytes of K/V they keep.
    pub kv_retained_bytes: u64,
    /// Bytes admission has reserved for them.
    pub kv_reserved_bytes: u64,
    /// The `--kv-memory` limit.
    pub kv_limit_bytes: u64,
    /// Prompt tokens per second of the last prefill chunk.
    pub prefill_tok_s: f64,
    /// Tokens per second of the last decode step (batch size / step time).
    pub decode_tok_s: f64,
    /// Sequences in the last decode step.
    pub decode_batch: usize,
}

#[derive(Debug, Default)]
struct State {
    /// (endpoint, status) -> count.
    requests: BTreeMap<(&'static str, u16), u64>,
    prompt_tokens: u64,
    completion_tokens: u64,
    prefill_tokens: u64,
    prefill_seconds: f64,
    decode_tokens: u64,
    decode_seconds: f64,
    decode_steps: u64,
    mixed_steps: u64,
    cancelled: u64,
    finished: u64,
    gauges: EngineGauges,
    context_cache: crate::context_cache::ContextCacheStats,
    cached_tokens: u64,
    peak_running: usize,
    peak_kv_allocated: u64,
    connections_open: u64,
    /// reason -> connections the server closed or refused.
    connections_closed: BTreeMap<&'static str, u64>,
}

/// Why the server closed or refused a connection (the `reason` label).
pub const CONNECTION_CLOSE_REASONS: [&str; 4] = ["idle_timeout", "header_timeout", "over_limit", "shutdown"];

/// The metrics, shared by the HTTP handlers and the engine.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        // A poisoned lock only means a panic elsewhere mid-update: the numbers are still usable.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    /// Counts one answered request.
    pub fn request(&self, endpoint: &'static str, status: u16) {
        self.with(|s| *s.requests.entry((endpoint, status)).or_default() += 1);
    }

    /// Counts a finished request's tokens.
    pub fn tokens(&self, prompt: usize, completion: usize) {
        self.with(|s| {
            s.prompt_tokens += prompt as u64;
            s.completion_tokens += completion as u64;
        });
    }

    /// Counts one prefill chunk.
    pub fn prefill(&self, tokens: usize, seconds: f64) {
        self.with(|s| {
            s.prefill_tokens += tokens as u64;
            s.prefill_seconds += seconds;
        });
    }

    /// Counts one decode step of `batch` sequences.
    pub fn decode(&self, batch: usize, seconds: f64) {
        self.with(|s| {
            s.decode_tokens += batch as u64;
            s.decode_seconds += seconds;
            s.decode_steps += 1;
        });
    }

    /// Counts a step that carried a prefill chunk together with the decode
    /// batch (counted besides, by [`prefill`](Self::prefill) and [`decode`](Self::decode)).
    pub fn mixed_step(&self) {
        self.with(|s| s.mixed_steps += 1);
    }

    /// Counts a sequence that left the engine: finished, or cancelled (its
    /// client went away before it finished).
    pub fn sequence_ended(&self, cancelled: bool) {
        self.with(|s| {
            if cancelled {
                s.cancelled += 1;
            } else {
                s.finished += 1;
            }
        });
    }

    /// A connection was accepted and is served.
    pub fn connection_opened(&self) {
        self.with(|s| s.connections_open += 1);
    }

    /// A served connection ended; `reason`: the server closed it (one of
    /// [`CONNECTION_CLOSE_REASONS`]), `None`: it ended on its own.
    pub fn connection_closed(&self, reason: Option<&'static str>) {
        self.with(|s| {
            s.connections_open = s.connections_open.saturating_sub(1);
            if let Some(r) = reason {
                *s.connections_closed.entry(r).or_default() += 1;
            }
        });
    }

    /// A connection over `--max-connections` was refused.
    pub fn connection_refused(&self) {
        self.with(|s| *s.connections_closed.entry("over_limit").or_default() += 1);
    }

    /// The context cache's counts after a step.
    pub fn set_context_cache(&self, c: crate::context_cache::ContextCacheStats) {
        self.with(|s| s.context_cache = c);
    }

    /// Counts prompt tokens a request took from the context cache.
    pub fn cached_tokens(&self, tokens: usize) {
        self.with(|s| s.cached_tokens += tokens as u64);
    }

    /// The engine's gauges after a step.
    pub fn set_gauges(&self, g: EngineGauges) {
        self.with(|s| {
            s.peak_running = s.peak_running.max(g.running);
            s.peak_kv_allocated = s.peak_kv_allocated.max(g.kv_allocated_bytes);
            s.gauges = g;
        });
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.with(|s| {
            let mut o = String::new();
            let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
                let _ = writeln!(o, "# HELP {name} {help}");
                let _ = writeln!(o, "# TYPE {name} {kind}");
                for (labels, value) in lines {
                    let _ = writeln!(o, "{name}{labels} {value}");
                }
            };
            let requests: Vec<(String, String)> = s
                .requests
                .iter()
                .map(|((e, st), n)| (format!("{{endpoint=\"{e}\",status=\"{st}\"}}"), n.to_string()))
                .collect();
            metric("lava_requests_total", "counter", "Requests answered, by endpoint and HTTP status.", requests);
            let one = |v: String| vec![(String::new(), v)];
            metric("lava_prompt_tokens_total", "counter", "Prompt tokens of finished requests.", one(s.prompt_tokens.to_string()));
            metric("lava_completion_tokens_total", "counter", "Tokens generated for finished requests.", one(s.completion_tokens.to_string()));
            metric("lava_prefill_tokens_total", "counter", "Prompt tokens prefilled.", one(s.prefill_tokens.to_string()));
            metric("lava_prefill_seconds_total", "counter", "Seconds spent prefilling.", one(format!("{:.6}", s.prefill_seconds)));
            let c = &s.context_cache;
            metric("lava_context_cache_hits_total", "counter", "Requests that started from a kept context state.", one(c.hits.to_string()));
            metric("lava_context_cache_misses_total", "counter", "Requests of at least --context-cache-min tokens that found no kept state.", one(c.misses.to_string()));
            metric("lava_context_cache_cached_tokens_total", "counter", "Prompt tokens taken from the context cache, not prefilled.", one(s.cached_tokens.to_string()));
            metric("lava_context_cache_evictions_total", "counter", "Kept states dropped from memory (--context-cache-memory, or memory a waiting request needed).", one(c.evictions.to_string()));
            metric("lava_context_cache_disk_evictions_total", "counter", "Files removed from --context-cache-dir to stay within --context-cache-disk.", one(c.disk_evictions.to_string()));
            metric(
                "lava_context_cache_entries",
                "gauge",
                "Kept states in memory: at message boundaries (prefix, shared by every request beginning with it) and at the end of answers (turn, one per conversation).",
                vec![("{kind=\"prefix\"}".into(), c.entries.to_string()), ("{kind=\"turn\"}".into(), c.turn_entries.to_string())],
            );
            metric("lava_context_cache_memory_bytes", "gauge", "Bytes the kept states in memory hold (counted in the KV ledger).", one(c.memory_bytes.to_string()));
            metric("lava_context_cache_disk_entries", "gauge", "Kept states in --context-cache-dir.", one(c.disk_entries.to_string()));
            metric("lava_context_cache_disk_bytes", "gauge", "Bytes of the files in --context-cache-dir.", one(c.disk_bytes.to_string()));
            metric("lava_decode_tokens_total", "counter", "Tokens produced by decode steps.", one(s.decode_tokens.to_string()));
            metric("lava_decode_seconds_total", "counter", "Seconds spent in decode steps.", one(format!("{:.6}", s.decode_seconds)));
            metric("lava_decode_steps_total", "counter", "Batched decode steps.", one(s.decode_steps.to_string()));
            metric("lava_mixed_steps_total", "counter", "Decode steps that also carried a prompt's prefill chunk (one forward pass).", one(s.mixed_steps.to_string()));
            metric("lava_sequences_finished_total", "counter", "Sequences that ran to their end.", one(s.finished.to_string()));
            metric("lava_sequences_cancelled_total", "counter", "Sequences dropped because their client went away (or a stop string ended them).", one(s.cancelled.to_string()));
            metric("lava_connections_open", "gauge", "Client connections being served.", one(s.connections_open.to_string()));
            let closed = CONNECTION_CLOSE_REASONS
                .iter()
                .map(|r| (format!("{{reason=\"{r}\"}}"), s.connections_closed.get(r).copied().unwrap_or(0).to_string()))
                .collect();
            metric(
                "lava_connections_closed_total",
                "counter",
                "Connections the server closed: idle past --idle-timeout, a request head not complete within --header-timeout, refused over --max-connections, dropped at shutdown.",
                closed,
            );
            let g = &s.gauges;
            metric("lava_running_sequences", "gauge", "Sequences prefilling or in the decode batch.", one(g.running.to_string()));
            metric("lava_running_sequences_peak", "gauge", "Most sequences running at once since start.", one(s.peak_running.to_string()));
            metric("lava_queued_requests", "gauge", "Requests waiting for KV memory.", one(g.queued.to_string()));
            metric("lava_kv_allocated_bytes", "gauge", "K/V bytes allocated by the running sequences' caches.", one(g.kv_allocated_bytes.to_string()));
            metric("lava_kv_allocated_bytes_peak", "gauge", "Most K/V bytes allocated at once since start.", one(s.peak_kv_allocated.to_string()));
            metric("lava_kv_retained_bytes", "gauge", "K/V bytes kept by the running sequences' caches.", one(g.kv_retained_bytes.to_string()));
            metric("lava_kv_reserved_bytes", "gauge", "K/V bytes reserved by admission for the running sequences.", one(g.kv_reserved_bytes.to_string()));
            metric("lava_kv_limit_bytes", "gauge", "The K/V memory limit (--kv-memory).", one(g.kv_limit_bytes.to_string()));
            metric("lava_prefill_tokens_per_second", "gauge", "Prompt tokens per second of the last prefill chunk.", one(format!("{:.3}", g.prefill_tok_s)));
            metric("lava_decode_tokens_per_second", "gauge", "Tokens per second of the last decode step (batch / step time).", one(format!("{:.3}", g.decode_tok_s)));
            metric("lava_decode_batch_size", "gauge", "Sequences in the last decode step.", one(g.decode_batch.to_string()));
            o
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_once_with_values() {
        let m = Metrics::default();
        m.request("chat_completions", 200);
        m.request("chat_completions", 400);
        m.tokens(10, 3);
        m.set_gauges(EngineGauges { running: 2, kv_allocated_bytes: 99, ..Default::default() });
        m.set_gauges(EngineGauges { running: 1, ..Default::default() });
        let t = m.render();
        assert!(t.contains("lava_requests_total{endpoint=\"chat_completions\",status=\"400\"} 1\n"));
        assert!(t.contains("lava_prompt_tokens_total 10\n"));
        assert!(t.contains("lava_running_sequences 1\n"));
        assert!(t.contains("lava_running_sequences_peak 2\n"));
        assert!(t.contains("lava_kv_allocated_bytes_peak 99\n"));
        assert_eq!(t.matches("# TYPE lava_kv_limit_bytes gauge").count(), 1);
    }
}
