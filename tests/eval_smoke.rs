//! CI's smoke run of `lava eval all` (one sample per task family, short lengths),
//! the determinism of eval results (two runs give bit-identical records), and `--shard`:
//! the shards of a run together give exactly its records.

use std::process::Command;

/// `lava eval all --preset smoke` (plus `extra` args) into `<dir>/<name>.jsonl`.
fn run_all(dir: &std::path::Path, name: &str, extra: &[&str]) -> String {
    let results = dir.join(format!("{name}.jsonl"));
    let out = Command::new(env!("CARGO_BIN_EXE_lava"))
        .args(["eval", "all", "--model", "smollm2-135m", "--preset", "smoke", "--policies", "full,lava,snapkv,pyramidkv,streaming", "--budgets", "48", "--quiet"])
        .args(extra)
        .arg("--results")
        .arg(&results)
        .arg("--out")
        .arg(dir.join(name))
        .output()
        .expect("run lava");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_smoke(dir: &std::path::Path, name: &str) -> Vec<serde_json::Value> {
    let stdout = run_all(dir, name, &[]);
    assert!(stdout.contains("| lava |") && stdout.contains("| full |"), "{stdout}");
    assert!(dir.join(name).join("report.md").is_file());
    assert!(dir.join(name).join("niah").join("niah_lava_48.png").is_file());
    records(dir, name)
}

/// The records of `<dir>/<name>.jsonl` without their wall times.
fn records(dir: &std::path::Path, name: &str) -> Vec<serde_json::Value> {
    let results = dir.join(format!("{name}.jsonl"));
    std::fs::read_to_string(&results)
        .expect("results")
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("json line");
            if let Some(o) = v.as_object_mut() {
                o.remove("timing"); // wall times, the only non-deterministic fields
            }
            v
        })
        .collect()
}

#[test]
fn smoke_eval_runs_every_family_and_is_deterministic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = run_smoke(dir.path(), "a");
    // niah + ruler + longbench + fidelity, each 1 sample x (full + 4 policies).
    assert_eq!(a.len(), 4 * 5, "{a:#?}");
    let tasks: std::collections::BTreeSet<&str> = a.iter().filter_map(|r| r["task"].as_str()).collect();
    assert_eq!(tasks.into_iter().collect::<Vec<_>>(), ["fidelity", "longbench/trec", "niah", "ruler/niah_single_1"]);
    let b = run_smoke(dir.path(), "b");
    assert_eq!(a, b, "two runs with the same seed differ");
    // Resume: running again into the same file adds nothing.
    let again = run_smoke(dir.path(), "a");
    assert_eq!(again.len(), a.len());

    // Shards: the smoke grid has 4 prompts (niah, ruler, longbench, fidelity, in that
    // order); 0/2 runs the 1st and 3rd, 1/2 the others, and together they give `a` exactly.
    let key = |r: &serde_json::Value| {
        ["task", "policy", "budget", "length", "sample_id"].map(|f| r[f].to_string()).join(" ")
    };
    let mut union = Vec::new();
    for (k, tasks) in [(0, ["longbench/trec", "niah"]), (1, ["fidelity", "ruler/niah_single_1"])] {
        let name = format!("shard{k}");
        run_all(dir.path(), &name, &["--shard", &format!("{k}/2")]);
        let part = records(dir.path(), &name);
        let got: std::collections::BTreeSet<&str> = part.iter().filter_map(|r| r["task"].as_str()).collect();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), tasks, "shard {k}/2");
        union.extend(part);
    }
    union.sort_by_key(key);
    let mut all = a.clone();
    all.sort_by_key(key);
    assert_eq!(union.iter().map(key).collect::<Vec<_>>(), all.iter().map(key).collect::<Vec<_>>(), "shards cover the grid once");
    assert_eq!(union, all, "a shard's records equal the unsharded run's");
}

/// The qwen1.5b preset's grid (both settings, budgets 128..1024, every policy, full / lava /
/// snapkv also at f16 and q8_0 KV) at the smoke sizes, on SmolLM2-135M.
#[test]
fn qwen_preset_grid_runs_both_settings_and_kv_dtypes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let results = dir.path().join("q.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_lava"))
        .args(["eval", "all", "--model", "smollm2-135m", "--preset", "qwen1.5b-smoke", "--quiet", "--results"])
        .arg(&results)
        .arg("--out")
        .arg(dir.path().join("q"))
        .output()
        .expect("run lava");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for part in ["## Setting: query-aware", "## Setting: query-agnostic", "## Query-aware against query-agnostic", "kvpress"] {
        assert!(stdout.contains(part), "{part:?} missing from the report:\n{stdout}");
    }
    let recs = records(dir.path(), "q");
    // Variants: full + 11 policies x 4 budgets at f32, full + (lava, snapkv) x 4 budgets at
    // f16 and at q8_0: 45 + 2 x 9 = 63. NIAH, RULER and LongBench run in both settings,
    // fidelity (no question) once: 3 x 2 x 63 + 63 cells.
    assert_eq!(recs.len(), 3 * 2 * 63 + 63);
    let policies: std::collections::BTreeSet<&str> = recs.iter().filter_map(|r| r["policy"].as_str()).collect();
    assert_eq!(policies.len(), 12 + 2 * 3, "{policies:?}");
    for p in ["full@f16", "full@q8_0", "lava@f16", "lava@q8_0", "snapkv@f16", "snapkv@q8_0"] {
        assert!(policies.contains(p), "{p} missing: {policies:?}");
    }
    assert!(!policies.contains("pyramidkv@q8_0"));
    let budgets: std::collections::BTreeSet<String> = recs.iter().map(|r| r["budget"].to_string()).collect();
    assert_eq!(budgets.into_iter().collect::<Vec<_>>(), ["\"full\"", "1024", "128", "256", "512"]);
    // Every record names the model file's SHA-256 and its retained KV bytes.
    let sha = recs[0]["model_sha256"].as_str().expect("model_sha256").to_string();
    assert_eq!(sha.len(), 64);
    assert!(recs.iter().all(|r| r["model_sha256"] == sha.as_str() && r["kv_bytes"].as_u64().is_some_and(|b| b > 0)));
    // The f16 / q8_0 caches hold fewer bytes than the f32 one of the same policy and budget.
    let bytes = |p: &str| recs.iter().find(|r| r["task"] == "niah" && r["policy"] == p && r["budget"] == 128).and_then(|r| r["kv_bytes"].as_u64()).unwrap();
    assert!(bytes("lava@q8_0") < bytes("lava@f16") && bytes("lava@f16") < bytes("lava"), "{} {} {}", bytes("lava@q8_0"), bytes("lava@f16"), bytes("lava"));
    // Settings: query-agnostic records say so, query-aware ones have no `setting`; fidelity
    // is query-aware only.
    let agnostic: Vec<&serde_json::Value> = recs.iter().filter(|r| r["setting"] == "query-agnostic").collect();
    assert_eq!(agnostic.len(), 3 * 63);
    assert!(recs.iter().all(|r| r["setting"].is_null() || r["setting"] == "query-agnostic"));
    assert!(agnostic.iter().all(|r| r["task"] != "fidelity"));
    // The full cache keeps everything, so where the question goes makes no difference to
    // it: its answer is the same in both settings (the query-aware prompt is the context's
    // prefill run on through the question, the query-agnostic one appends the question to
    // the full cache).
    for task in ["niah", "ruler/niah_single_1", "longbench/trec"] {
        let full = |setting: &serde_json::Value| {
            recs.iter().find(|r| r["task"] == task && r["policy"] == "full" && &r["setting"] == setting).map(|r| r["prediction"].clone()).unwrap()
        };
        assert_eq!(full(&serde_json::Value::Null), full(&serde_json::json!("query-agnostic")), "{task}");
    }
    // Query-agnostic heatmaps beside the query-aware ones.
    assert!(dir.path().join("q").join("niah").join("niah_lava_128.png").is_file());
    assert!(dir.path().join("q").join("niah").join("niah_lava_128_query-agnostic.png").is_file());
    // Resume adds nothing.
    let again = Command::new(env!("CARGO_BIN_EXE_lava"))
        .args(["eval", "all", "--model", "smollm2-135m", "--preset", "qwen1.5b-smoke", "--quiet", "--results"])
        .arg(&results)
        .arg("--out")
        .arg(dir.path().join("q"))
        .output()
        .expect("run lava");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(records(dir.path(), "q").len(), recs.len());
}
