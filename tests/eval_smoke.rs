//! CI's smoke run of `lava eval all` (one sample per task family, short lengths),
//! and the determinism of eval results: two runs give bit-identical records.

use std::process::Command;

fn run_smoke(dir: &std::path::Path, name: &str) -> Vec<serde_json::Value> {
    let results = dir.join(format!("{name}.jsonl"));
    let out = Command::new(env!("CARGO_BIN_EXE_lava"))
        .args(["eval", "all", "--preset", "smoke", "--policies", "full,lava,snapkv,pyramidkv,streaming", "--budgets", "48", "--quiet"])
        .arg("--results")
        .arg(&results)
        .arg("--out")
        .arg(dir.join(name))
        .output()
        .expect("run lava");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("| lava |") && stdout.contains("| full |"), "{stdout}");
    assert!(dir.join(name).join("report.md").is_file());
    assert!(dir.join(name).join("niah").join("niah_lava_48.png").is_file());
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
}
