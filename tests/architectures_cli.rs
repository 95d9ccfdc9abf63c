//! The three families of the architectures issue through every command a user
//! runs: `generate`, `bench`, `eval` and `serve`, on a tiny file of each.
//!
//! - Qwen3: random weights written by `lava_llama::tiny` (q/k norms, a head
//!   dimension of 16 where width / heads is 8);
//! - Gemma 3: the tiny Gemma 3 of `tests/sliding_cli.rs` (local and global
//!   layers, its built-in chat template);
//! - SentencePiece: the `llama` GGUF that `models/llama/tests/spm_oracle.py`
//!   writes with llama.cpp's `gguf` writer around a BPE model trained by the
//!   `sentencepiece` library (needs python3 with sentencepiece, gguf and numpy:
//!   skipped loudly without them, a failure under `LAVA_REQUIRE_ORACLE`).
//!
//! What each command must do is run to the end and say what it ran: the
//! numbers themselves are checked elsewhere (the f64 references in
//! `models/llama/tests`, the ring bytes in `tests/sliding_cli.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lava_llama::gguf::GgmlType;
use lava_llama::tiny::{tiny_config, tiny_gemma3_config, RandomWeights};
use serde_json::{json, Value};

mod common;
use common::{http, Server};

/// Text in the tiny byte-level vocabulary (its 64 tokens are the bytes below 64).
const TEXT: &str = "0123456789:;<=>?!#$%&()*+,-./";
const PROMPT: &str = "12+34=46; 7*8=56; 9-3=6; 100/4=25;";

fn lava(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lava")).args(args).output().expect("run lava");
    assert!(out.status.success(), "lava {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qwen3_file(dir: &Path) -> PathBuf {
    let config = lava_llama::config::LlamaConfig { model_type: "qwen3".into(), qk_norm: true, head_dim: 16, ..tiny_config(4, 2, false, false) };
    let path = dir.join("tiny-qwen3.gguf");
    std::fs::write(&path, RandomWeights { config, seed: 5 }.to_gguf(GgmlType::F32)).expect("write gguf");
    path
}

fn gemma3_file(dir: &Path) -> PathBuf {
    let path = dir.join("tiny-gemma3.gguf");
    std::fs::write(&path, RandomWeights { config: tiny_gemma3_config(4, 4, 2), seed: 3 }.to_gguf(GgmlType::F32)).expect("write gguf");
    path
}

/// The SentencePiece GGUF of the tokenizer oracle, or `None` (skipped) without python.
fn spm_file(dir: &Path) -> Option<PathBuf> {
    let python = std::env::var("LAVA_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into());
    let have = Command::new(&python).args(["-c", "import sentencepiece, gguf, numpy"]).output().is_ok_and(|o| o.status.success());
    if !have {
        let msg = format!("the SentencePiece file needs `{python} -m pip install sentencepiece gguf numpy`");
        assert!(std::env::var("LAVA_REQUIRE_ORACLE").map_or(true, |v| v.is_empty() || v == "0"), "LAVA_REQUIRE_ORACLE is set and {msg}");
        eprintln!("SKIPPED the SentencePiece family: {msg}");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/llama/tests/spm_oracle.py");
    let out = Command::new(&python).arg(script).arg(dir).output().expect("run spm_oracle.py");
    assert!(out.status.success(), "spm_oracle.py: {}", String::from_utf8_lossy(&out.stderr));
    Some(dir.join("spm.gguf"))
}

/// `generate`, `bench` and `eval fidelity` on `model`, then one completion and
/// (when `chat`) one chat answer from `lava serve`.
fn every_command(model: &Path, family: &str, chat: bool) {
    let dir = model.parent().expect("dir");
    let m = model.to_str().expect("utf-8 path");

    // generate: full cache and LAVa, 6 new tokens each.
    for policy in [&["--policy", "full"][..], &["--policy", "lava", "--budget", "16", "--window", "4"][..]] {
        let mut args = vec!["generate", "--model", m, "--prompt", PROMPT, "--max-new-tokens", "6", "--json"];
        args.extend_from_slice(policy);
        let out = lava(&args);
        let j: Value = serde_json::from_str(out.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{family} generate --json: {e}: {out}"));
        assert_eq!(j["generated_tokens"], 6, "{family} {policy:?}: {j}");
    }

    // bench: one length, full and LAVa.
    let text = dir.join("text.txt");
    std::fs::write(&text, TEXT.repeat(8)).expect("text");
    let out = lava(&[
        "bench", "--model", m, "--lengths", "96", "--policies", "lava", "--budgets", "40", "--runs", "1", "--decode-tokens", "2", "--no-bandwidth",
        "--json", "--text-file", text.to_str().unwrap(),
    ]);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{family} bench json: {e}: {out}"));
    assert_eq!(report["decode"].as_array().map(Vec::len), Some(2), "{family}: {report}");
    assert!(report["decode"].as_array().unwrap().iter().all(|r| r["tok_s"].as_f64().is_some_and(|t| t > 0.0)), "{family}: {report}");

    // eval fidelity: the full cache against itself and SnapKV.
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("pg19")).expect("mkdir");
    std::fs::write(data.join("pg19/book.txt"), TEXT.repeat(40)).expect("book");
    let results = dir.join("r.jsonl");
    lava(&[
        "eval", "fidelity", "--model", m, "--context", "64", "--continuation", "8", "--windows", "1", "--samples", "1", "--policies", "full,snapkv",
        "--budgets", "32", "--window", "4", "--data", data.to_str().unwrap(), "--results", results.to_str().unwrap(), "--quiet",
    ]);
    let recs: Vec<Value> = std::fs::read_to_string(&results).expect("results").lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let full = recs.iter().find(|r| r["policy"] == "full").unwrap_or_else(|| panic!("{family}: no full record in {recs:?}"));
    assert_eq!(full["top1_agreement"], 1.0, "{family}");
    assert!(recs.iter().any(|r| r["policy"] == "snapkv"), "{family}: {recs:?}");

    // serve: a completion, and a chat answer where the file has (or the architecture brings) a template.
    let server = Server::spawn(&[std::ffi::OsStr::new("--kv-memory"), "64MiB".as_ref(), "--model".as_ref(), model.as_os_str()], Duration::from_secs(60));
    let (status, body) = http(&server.addr, "POST", "/v1/completions", &json!({"prompt": PROMPT, "max_tokens": 5, "ignore_eos": true, "temperature": 0}).to_string());
    assert_eq!(status, 200, "{family} completion: {body}");
    let j: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(j["usage"]["completion_tokens"], 5, "{family}: {j}");
    if chat {
        let req = json!({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4, "ignore_eos": true, "kv_policy": "lava", "kv_budget": 16, "kv_window": 4});
        let (status, body) = http(&server.addr, "POST", "/v1/chat/completions", &req.to_string());
        assert_eq!(status, 200, "{family} chat: {body}");
        let j: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(j["usage"]["completion_tokens"], 4, "{family}: {j}");
    }
}

#[test]
fn qwen3_runs_through_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    every_command(&qwen3_file(dir.path()), "qwen3", false);
}

#[test]
fn gemma3_runs_through_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    every_command(&gemma3_file(dir.path()), "gemma3", true);
}

#[test]
fn sentencepiece_model_runs_through_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    if let Some(model) = spm_file(dir.path()) {
        every_command(&model, "sentencepiece", true);
    }
}
