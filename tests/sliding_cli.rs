//! `lava bench` and `lava eval` on a model with sliding-window (local) layers: a tiny
//! Gemma 3 GGUF (4 layers, every 2nd global, window 4; 2 KV heads of dimension 8;
//! random weights). Both run it through the caches `lava generate` builds, and their KV
//! bytes count each local layer's ring as the `min(N, 4)` positions it holds.
//!
//! Bytes by hand: one position of one layer is 2 KV heads * (K + V) * 8 values * 4 bytes
//! = 128 bytes. At a context of 64 tokens the two rings hold 4 positions each (1024
//! bytes); the two global layers hold 64 positions each under the full cache (16384
//! bytes) and the budget of 40 each under a compressing policy (10240 bytes).

use std::process::Command;

use lava_llama::gguf::GgmlType;
use lava_llama::tiny::{tiny_gemma3_config, RandomWeights};

const POSITION: usize = 128;
const RINGS: usize = 2 * 4 * POSITION;

fn gemma_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("tiny-gemma3.gguf");
    let w = RandomWeights { config: tiny_gemma3_config(4, 4, 2), seed: 3 };
    std::fs::write(&path, w.to_gguf(GgmlType::F32)).expect("write gguf");
    path
}

fn lava(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lava")).args(args).output().expect("run lava");
    assert!(out.status.success(), "lava {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bench_counts_the_rings_as_they_are() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = gemma_file(dir.path());
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "0123456789:;<=>?!#$%&()*+,-./".repeat(8)).expect("text");
    let out = lava(&[
        "bench", "--model", model.to_str().unwrap(), "--backend", "ndarray", "--lengths", "64", "--policies", "lava,snapkv",
        "--budgets", "40", "--runs", "1", "--decode-tokens", "2", "--no-bandwidth", "--json", "--text-file", text.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("bench json");
    let kv = report["kv"].as_array().expect("kv rows");
    let row = |p: &str| kv.iter().find(|r| r["policy"] == p).unwrap_or_else(|| panic!("no {p} row in {out}"));
    let (full, snap, lava) = (row("full"), row("snapkv"), row("lava"));
    assert_eq!(full["expected_bytes"], RINGS + 2 * 64 * POSITION);
    assert_eq!(full["retained_bytes"], RINGS + 2 * 64 * POSITION);
    // 2 decode steps plus the untimed one: 3 more positions in each global layer, the rings stay full.
    assert_eq!(full["retained_after_decode_bytes"], RINGS + 2 * 67 * POSITION);
    assert_eq!(snap["expected_bytes"], RINGS + 2 * 40 * POSITION);
    assert_eq!(snap["retained_bytes"], RINGS + 2 * 40 * POSITION);
    assert_eq!(lava["expected_bytes"], RINGS + 2 * 40 * POSITION);
    let l = lava["retained_bytes"].as_u64().unwrap() as usize;
    assert!(l > RINGS && l < RINGS + 2 * 64 * POSITION, "lava holds {l} bytes");
    assert_eq!(report["prefill"].as_array().map(Vec::len), Some(3));
    assert_eq!(report["decode"].as_array().map(Vec::len), Some(3));
}

#[test]
fn eval_runs_and_counts_the_rings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = gemma_file(dir.path());
    std::fs::create_dir_all(dir.path().join("data/pg19")).expect("mkdir");
    std::fs::write(dir.path().join("data/pg19/book.txt"), "0123456789:;<=>?!#$%&()*+,-./".repeat(40)).expect("book");
    let results = dir.path().join("r.jsonl");
    lava(&[
        "eval", "fidelity", "--model", model.to_str().unwrap(), "--backend", "ndarray", "--context", "64", "--continuation", "8",
        "--windows", "1", "--samples", "1", "--policies", "full,snapkv", "--budgets", "40", "--window", "4",
        "--data", dir.path().join("data").to_str().unwrap(), "--results", results.to_str().unwrap(), "--quiet",
    ]);
    let recs: Vec<serde_json::Value> =
        std::fs::read_to_string(&results).expect("results").lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let rec = |p: &str| recs.iter().find(|r| r["policy"] == p).unwrap_or_else(|| panic!("no {p} record in {recs:?}"));
    assert_eq!(rec("full")["kv_bytes"], RINGS + 2 * 64 * POSITION);
    assert_eq!(rec("snapkv")["kv_bytes"], RINGS + 2 * 40 * POSITION);
    // The full cache against itself: the same model, token for token.
    assert_eq!(rec("full")["top1_agreement"], 1.0);
    // Layer 0 is local: its ring holds the same 4 positions under every policy, so its output
    // over the continuation is the full cache's exactly.
    assert_eq!(rec("snapkv")["layer_rel_error"][0], 0.0);
    assert_eq!(rec("snapkv")["kv_shape"]["local_windows"], serde_json::json!([4, null, 4, null]));
}
