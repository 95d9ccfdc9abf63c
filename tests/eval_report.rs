//! `lava eval report` on synthetic results files (no model needed): merging several files,
//! refusing to mix code versions or settings unless `--allow-mixed`, conflicting
//! duplicates, plots.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

fn lava(args: &[&str], files: &[&Path]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lava"));
    cmd.args(["eval", "report"]);
    for f in files {
        cmd.arg("--results").arg(f);
    }
    cmd.args(args).env_remove("RUST_BACKTRACE").output().expect("run lava")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A NIAH record of `policy` at `budget`, stamped with `commit` / `settings` unless `None`.
fn rec(policy: &str, budget: Value, sample: &str, score: f64, stamp: Option<(&str, bool, &str)>) -> Value {
    let mut r = json!({
        "task": "niah", "policy": policy, "budget": budget, "length": 1000, "sample_id": sample, "score": score,
        "kv_bytes": 2949120, "prediction": format!("p{score}"),
    });
    if let Some((commit, dirty, settings)) = stamp {
        r["code_version"] = json!({"commit": commit, "dirty": dirty});
        r["settings_hash"] = json!(settings);
        r["kv_shape"] = json!({"layers": 30, "kv_heads": 3, "head_dim": 64});
    }
    r
}

fn write(dir: &Path, name: &str, recs: &[Value]) -> PathBuf {
    let p = dir.join(name);
    let body: String = recs.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&p, body).expect("write results");
    p
}

fn run_of(stamp: Option<(&str, bool, &str)>, samples: std::ops::Range<usize>) -> Vec<Value> {
    let mut v = Vec::new();
    for i in samples {
        let s = format!("depth{i}");
        v.push(rec("full", json!("full"), &s, 1.0, stamp));
        v.push(rec("lava", json!(64), &s, if i % 2 == 0 { 1.0 } else { 0.0 }, stamp));
        v.push(rec("snapkv", json!(64), &s, 0.0, stamp));
    }
    v
}

const A: Option<(&str, bool, &str)> = Some(("1111111111111111111111111111111111111111", false, "00000000000000aa"));

#[test]
fn merges_files_of_one_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write(dir.path(), "a.jsonl", &run_of(A, 0..4));
    // shard 2: other prompts, plus one cell also in a.jsonl (identical: kept once)
    let mut second = run_of(A, 4..8);
    second.push(rec("lava", json!(64), "depth0", 1.0, A));
    let b = write(dir.path(), "b.jsonl", &second);
    let out = lava(&[], &[&a, &b]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // lava: 4 of 8 prompts; snapkv 0; paired: lava - snapkv = +50 on 8 prompts
    assert!(stdout.contains("| lava | 50.0 ± "), "{stdout}");
    assert!(stdout.contains("| snapkv | 0.0 ± 0.0 |"), "{stdout}");
    assert!(stdout.contains("| snapkv | 64 | NIAH | 8 | +50.0 |"), "{stdout}");
    assert!(stdout.contains("| lava | 1.00x |"), "{stdout}");
    // the same with one comma-separated flag
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lava"));
    let both = format!("{},{}", a.display(), b.display());
    let out2 = cmd.args(["eval", "report", "--results", &both]).output().expect("run lava");
    assert!(out2.status.success(), "{}", text(&out2.stderr));
    assert_eq!(text(&out2.stdout), stdout);

    // --plots next to --out: files written, links relative to the report
    let report = dir.path().join("rep").join("report.md");
    std::fs::create_dir_all(report.parent().unwrap()).unwrap();
    let plots = dir.path().join("rep").join("memory");
    let out = lava(&["--out", report.to_str().unwrap(), "--plots", plots.to_str().unwrap()], &[&a, &b]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(plots.join("score_vs_kv_niah.png").is_file());
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(md.contains("![NIAH](memory/score_vs_kv_niah.png)"), "{md}");
}

#[test]
fn refuses_mixed_versions_unless_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write(dir.path(), "a.jsonl", &run_of(A, 0..4));
    let dirty = Some(("1111111111111111111111111111111111111111", true, "00000000000000aa"));
    let b = write(dir.path(), "b.jsonl", &run_of(dirty, 4..8));
    let other_settings = Some(("1111111111111111111111111111111111111111", false, "00000000000000bb"));
    let c = write(dir.path(), "c.jsonl", &run_of(other_settings, 8..10));
    let old = write(dir.path(), "old.jsonl", &run_of(None, 10..12));

    for (files, expect) in [
        (vec![&a, &b], vec!["a.jsonl", "b.jsonl", "(dirty)", "1111111111111111111111111111111111111111"]),
        (vec![&a, &c], vec!["settings 00000000000000aa", "settings 00000000000000bb", "c.jsonl"]),
        (vec![&a, &old], vec!["unknown version", "old.jsonl"]),
    ] {
        let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
        let out = lava(&[], &paths);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "mixed runs accepted: {stderr}");
        assert!(stderr.contains("different runs") && stderr.contains("--allow-mixed"), "{stderr}");
        for e in expect {
            assert!(stderr.contains(e), "stderr lacks {e:?}: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
        let out = lava(&["--allow-mixed"], &paths);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("| lava |"));
    }
    // an old file alone (no stamps: version "unknown") is one run, and merges with itself
    let out = lava(&[], &[&old, &old]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn conflicting_duplicates_and_missing_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write(dir.path(), "a.jsonl", &run_of(A, 0..2));
    let b = write(dir.path(), "b.jsonl", &[rec("lava", json!(64), "depth0", 0.0, A)]);
    for extra in [&[][..], &["--allow-mixed"][..]] {
        let out = lava(extra, &[&a, &b]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("conflicting results for task niah, policy lava, budget 64, length 1000, sample depth0"), "{stderr}");
        assert!(stderr.contains("a.jsonl") && stderr.contains("b.jsonl"), "{stderr}");
    }
    let missing = dir.path().join("nope.jsonl");
    let out = lava(&[], &[&a, &missing]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("nope.jsonl") && stderr.contains("no such results file"), "{stderr}");
    // running an evaluation takes one results file
    let out = Command::new(env!("CARGO_BIN_EXE_lava"))
        .args(["eval", "niah", "--results"])
        .arg(format!("{},{}", a.display(), b.display()))
        .output()
        .expect("run lava");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--results takes one file"), "{stderr}");
}
