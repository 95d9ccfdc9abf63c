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
