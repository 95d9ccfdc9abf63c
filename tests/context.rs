//! `lava generate --save-context` / `--load-context`: a context compressed
//! once answers each question as the one-question question-agnostic run
//! does, from the file as from memory; every bad file or flag is refused in
//! one sentence with a non-zero exit and nothing half-written.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const MODEL: &str = "synthetic:tiny";

fn lava(args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lava"));
    // A synthetic model needs no download: an empty home proves it.
    c.env("LAVA_HOME", tempfile::tempdir().expect("home").keep());
    c.args(["generate", "--model", MODEL, "--max-new-tokens", "12", "--json"]);
    c.args(args).output().expect("run lava")
}

const POLICY: [&str; 6] = ["--policy", "lava", "--budget", "48", "--window", "8"];

fn ok(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "lava failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

fn refused(out: &Output, needle: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "accepted, wanted a refusal naming {needle:?}: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains(needle), "the error does not say {needle:?}: {err}");
    assert!(err.lines().filter(|l| l.contains("error")).count() == 1, "one error line: {err}");
    err
}

fn document(dir: &Path) -> std::path::PathBuf {
    let text: String = (0..60).map(|i| format!("Line {i}: the blue box holds item {}. ", i * 7 % 13)).collect();
    let path = dir.join("doc.txt");
    std::fs::write(&path, text).expect("write doc");
    path
}

#[test]
fn a_saved_context_answers_every_question_as_a_fresh_compression_does() {
    let dir = tempfile::tempdir().expect("dir");
    let doc = document(dir.path());
    let file = dir.path().join("doc.lvc");
    let (doc_s, file_s) = (doc.to_str().expect("utf-8"), file.to_str().expect("utf-8"));
    let questions = ["Which item is in line 5?", "How many lines are there?"];
    let q_args: Vec<&str> = questions.iter().flat_map(|q| ["--question", *q]).collect();

    let mut args = vec!["--context-file", doc_s, "--save-context", file_s];
    args.extend(POLICY);
    args.extend(&q_args);
    let saved = ok(&lava(&args));
    assert_eq!(saved.len(), 2, "one JSON line per question");

    let mut args = vec!["--load-context", file_s];
    args.extend(&q_args);
    let loaded = ok(&lava(&args));
    for (i, q) in questions.iter().enumerate() {
        // The one-question question-agnostic run compresses at the same boundary.
        let mut args = vec!["--context-file", doc_s, "--question", q];
        args.extend(POLICY);
        let fresh = ok(&lava(&args));
        assert_eq!(saved[i]["question"], *q);
        assert_eq!(saved[i]["text"], fresh[0]["text"], "question {i}: from memory vs a fresh compression");
        assert_eq!(loaded[i]["text"], fresh[0]["text"], "question {i}: from the file vs a fresh compression");
        assert_eq!(loaded[i]["kv_bytes"], saved[i]["kv_bytes"], "question {i}");
        assert_eq!(loaded[i]["context_tokens"], fresh[0]["prompt_segments"][0], "question {i}");
        assert_eq!(loaded[i]["policy"], "lava");
        assert_eq!(loaded[i]["budget"], 48);
    }
    // --save-context alone writes the file and answers nothing.
    let other = dir.path().join("only.lvc");
    let mut args = vec!["--context-file", doc_s, "--save-context", other.to_str().expect("utf-8")];
    args.extend(POLICY);
    assert!(ok(&lava(&args)).is_empty());
    assert_eq!(std::fs::read(&other).expect("written"), std::fs::read(&file).expect("written"), "the same context, the same file");
}

#[test]
fn bad_context_files_and_flags_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let doc = document(dir.path());
    let file = dir.path().join("doc.lvc");
    let (doc_s, file_s) = (doc.to_str().expect("utf-8"), file.to_str().expect("utf-8"));
    let mut args = vec!["--context-file", doc_s, "--save-context", file_s];
    args.extend(POLICY);
    ok(&lava(&args));
    let bytes = std::fs::read(&file).expect("read");
    let write = |name: &str, b: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, b).expect("write");
        p.to_str().expect("utf-8").to_string()
    };
    let load = |path: &str, extra: &[&str]| {
        let mut a = vec!["--load-context", path, "--question", "What?"];
        a.extend(extra);
        lava(&a)
    };
    // Damaged files: each refused, naming the file.
    let truncated = write("truncated.lvc", &bytes[..bytes.len() / 2]);
    assert!(refused(&load(&truncated, &[]), "truncated").contains("truncated.lvc"));
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    refused(&load(&write("flipped.lvc", &flipped), &[]), "corrupted");
    refused(&load(&write("empty.lvc", b""), &[]), "truncated");
    refused(&load(&write("text.lvc", b"not a snapshot at all, just text"), &[]), "text.lvc");
    refused(&load(dir.path().join("absent.lvc").to_str().expect("utf-8"), &[]), "absent.lvc");
    // Another model's context.
    let mut c = Command::new(env!("CARGO_BIN_EXE_lava"));
    let out = c
        .env("LAVA_HOME", tempfile::tempdir().expect("home").keep())
        .args(["generate", "--model", "synthetic:smollm2-135m", "--load-context", file_s, "--question", "What?"])
        .output()
        .expect("run");
    refused(&out, "computed with the model");
    // Flags that contradict the file, or that the mode cannot honour.
    refused(&load(file_s, &["--policy", "snapkv"]), "drop the policy flags");
    refused(&load(file_s, &["--kv-dtype", "q8_0"]), "drop --kv-dtype");
    refused(&load(file_s, &["--trace", "t.json"]), "--trace");
    refused(&lava(&["--load-context", file_s]), "at least one --question");
    refused(&lava(&["--context-file", doc_s]), "--save-context");
    refused(&lava(&["--prompt", "hi", "--question", "What?"]), "--question goes with");
    refused(&lava(&["--context-file", doc_s, "--question", " "]), "--question is empty");
    // A file that cannot be written leaves nothing behind.
    let nowhere = dir.path().join("missing-dir").join("doc.lvc");
    let mut args = vec!["--context-file", doc_s, "--save-context", nowhere.to_str().expect("utf-8")];
    args.extend(POLICY);
    refused(&lava(&args), "missing-dir");
    assert!(!dir.path().join("missing-dir").exists());
}
