//! Sizes and values from files and arguments that the machine cannot serve or
//! that make no sense: each row runs the real binary and must end with one
//! clear sentence and a non-zero exit code (or, where the input is fine once
//! handled lazily, a normal run), never a panic, an abort or an OOM kill.
//!
//! Rows marked `limited` run under an address-space limit of 2 GiB
//! (`ulimit -v` through `sh -c`): before the fixes they allocated gigabytes
//! (or terabytes) eagerly; now they must fail (or succeed) within it.

use std::path::{Path, PathBuf};
use std::process::Command;

use lava_llama::gguf::{GgmlType, GgufFile, GgufWriter, Value};
use lava_llama::tiny::{tiny_config, RandomWeights};
use lava_llama::LlamaConfig;

/// The address-space limit of the `limited` rows, in KiB (2 GiB).
const LIMIT_KIB: u64 = 2 << 20;

struct Case {
    name: &'static str,
    args: Vec<String>,
    /// Exit code (0: the run must succeed).
    code: i32,
    /// Text stderr must contain.
    expect: &'static str,
    /// Run under the 2 GiB address-space limit.
    limited: bool,
}

fn run(case: &Case) {
    let mut cmd = if case.limited {
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!("ulimit -v {LIMIT_KIB} && exec \"$0\" \"$@\"")).arg(env!("CARGO_BIN_EXE_lava"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_lava"))
    };
    let out = cmd.args(&case.args).env_remove("RUST_BACKTRACE").output().expect("run lava");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(case.code), "{}: exit code; stderr: {stderr}", case.name);
    assert!(stderr.contains(case.expect), "{}: stderr lacks {:?}: {stderr}", case.name, case.expect);
    for bad in ["panicked", "stack backtrace", "RUST_BACKTRACE=1 shows", "memory allocation of", "capacity overflow"] {
        assert!(!stderr.contains(bad), "{}: stderr has {bad:?}: {stderr}", case.name);
    }
    // One sentence: the error line stays short whatever the input was.
    if let Some(line) = stderr.lines().find(|l| l.starts_with("lava: error:")) {
        assert!(line.len() <= 400, "{}: error line of {} bytes: {line}", case.name, line.len());
        assert_eq!(stderr.lines().filter(|l| l.starts_with("lava: error:")).count(), 1, "{}: {stderr}", case.name);
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn tiny() -> LlamaConfig {
    tiny_config(3, 1, true, false)
}

fn gguf_of(config: LlamaConfig) -> Vec<u8> {
    RandomWeights { config, seed: 1 }.to_gguf(GgmlType::F32)
}

/// The tiny model's GGUF with metadata keys replaced or added (`Some`) or removed (`None`).
fn gguf_with(edits: &[(&str, Option<Value>)]) -> Vec<u8> {
    let g = GgufFile::from_bytes("tiny.gguf", gguf_of(tiny())).expect("parse tiny");
    let mut w = GgufWriter::new();
    let mut keys: Vec<&String> = g.metadata.keys().collect();
    keys.sort();
    for k in keys {
        if !edits.iter().any(|(e, _)| e == k) {
            w.kv(k, g.metadata[k].clone());
        }
    }
    for (k, v) in edits {
        if let Some(v) = v {
            w.kv(k, v.clone());
        }
    }
    for name in &g.tensor_order {
        let values = g.dequantize(name).expect("dequantize");
        w.tensor(name, &g.tensors[name].shape(), GgmlType::F32, &values);
    }
    w.to_bytes()
}

/// The tiny model's tokenizer and the metadata of a model of `c`, whose
/// tensor table claims `c`'s full shapes while the file holds only a few
/// bytes of data per tensor: what the file says costs gigabytes, the file
/// itself a few kilobytes.
fn gguf_claiming(c: &LlamaConfig) -> Vec<u8> {
    let g = GgufFile::from_bytes("tiny.gguf", gguf_of(tiny())).expect("parse tiny");
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        if k.starts_with("tokenizer.") || k == "general.architecture" {
            w.kv(k, v.clone());
        }
    }
    for (k, v) in [
        ("block_count", c.num_hidden_layers),
        ("context_length", c.max_position_embeddings),
        ("embedding_length", c.hidden_size),
        ("feed_forward_length", c.intermediate_size),
        ("attention.head_count", c.num_attention_heads),
        ("attention.head_count_kv", c.num_key_value_heads),
        ("vocab_size", c.vocab_size),
    ] {
        w.kv(&format!("llama.{k}"), Value::U64(v as u64));
    }
    let names = lava_llama::hf::parameter_names(c);
    for name in names {
        let shape = lava_llama::hf::expected_shape(c, &name).expect("shape");
        let gname = lava_llama::tiny::gguf_name(&name);
        w.tensor(&gname, &shape, GgmlType::F32, &[0.0; 32]);
    }
    w.to_bytes()
}

/// A GGUF image with one metadata array of `n` u8 values (type 0): `n` bytes on disk.
fn gguf_with_byte_array(n: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // metadata keys
    let key = b"junk.bytes";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&9u32.to_le_bytes()); // array
    b.extend_from_slice(&0u32.to_le_bytes()); // of u8
    b.extend_from_slice(&n.to_le_bytes());
    b.resize(b.len() + n as usize, 7);
    b
}

fn gen(model: &Path, extra: &[&str]) -> Vec<String> {
    let mut v = s(&["generate", "--prompt", "12345", "--max-new-tokens", "2", "--backend", "ndarray", "--model", &p(model)]);
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

struct Fixture {
    dir: tempfile::TempDir,
    good: PathBuf,
    hf: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.gguf");
        std::fs::write(&good, gguf_of(tiny())).expect("write");
        let hf = dir.path().join("hf");
        let st = Command::new(env!("CARGO_BIN_EXE_lava")).args(["export-hf", &p(&good), &p(&hf)]).status().expect("export");
        assert!(st.success());
        Fixture { dir, good, hf }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    }

    /// A copy of the exported HF directory whose config.json is `edit`ed.
    fn hf_with(&self, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
        let to = self.dir.path().join(name);
        std::fs::create_dir_all(&to).expect("mkdir");
        for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(self.hf.join(f), to.join(f)).expect("copy");
        }
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(to.join("config.json")).expect("read")).expect("json");
        edit(&mut cfg);
        std::fs::write(to.join("config.json"), cfg.to_string()).expect("write");
        to
    }
}

/// A normal tiny-model run fits in the 2 GiB the limited rows get: what
/// fails there fails because of the input, not because the binary needs more.
#[test]
fn a_normal_tiny_run_fits_in_the_address_space_limit() {
    let f = Fixture::new();
    for backend in ["ndarray", "flex"] {
        run(&Case {
            name: "normal run",
            args: s(&["generate", "--prompt", "12345", "--max-new-tokens", "4", "--backend", backend, "--model", &p(&f.good)]),
            code: 0,
            expect: "lava: prompt",
            limited: true,
        });
    }
    run(&Case { name: "normal HF run", args: gen(&f.hf, &[]), code: 0, expect: "lava: prompt", limited: true });
}

/// Class 1: allocations sized by untrusted numbers.
#[test]
fn untrusted_sizes_are_checked_before_allocating() {
    let f = Fixture::new();
    let block_count = f.write("layers.gguf", &gguf_with(&[("llama.block_count", Some(Value::U64(1 << 31)))]));
    let byte_array = f.write("bytes.gguf", &gguf_with_byte_array(50_000_000));
    let big = LlamaConfig {
        vocab_size: 32000,
        hidden_size: 4096,
        intermediate_size: 11008,
        num_hidden_layers: 4,
        num_attention_heads: 32,
        num_key_value_heads: 32,
        head_dim: 128,
        ..tiny()
    };
    let claiming = f.write("claims.gguf", &gguf_claiming(&big));
    let ff = f.hf_with("ff", |c| c["intermediate_size"] = 100_000.into());
    let vocab = f.hf_with("vocab", |c| c["vocab_size"] = 4_000_000.into());
    let hidden = f.hf_with("hidden", |c| c["hidden_size"] = 1_000_000_000_000u64.into());
    let layers = f.hf_with("layers", |c| c["num_hidden_layers"] = (1u64 << 31).into());
    let long_ctx = f.hf_with("long_ctx", |c| c["max_position_embeddings"] = 1_000_000_000_000u64.into());
    let dev_zero_tok = f.hf_with("dev_zero_tok", |_| {});
    std::fs::remove_file(dev_zero_tok.join("tokenizer.json")).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", dev_zero_tok.join("tokenizer.json")).expect("symlink");
    let dev_zero_cfg = f.hf_with("dev_zero_cfg", |_| {});
    std::fs::remove_file(dev_zero_cfg.join("config.json")).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", dev_zero_cfg.join("config.json")).expect("symlink");
    let cases = vec![
        Case {
            name: "HF tokenizer.json is /dev/zero",
            args: gen(&dev_zero_tok, &[]),
            code: 3,
            expect: "tokenizer.json: the file is larger than 256.0 MiB, the most lava reads for it",
            limited: true,
        },
        Case {
            name: "HF config.json is /dev/zero",
            args: gen(&dev_zero_cfg, &[]),
            code: 3,
            expect: "config.json: the file is larger than 16.0 MiB, the most lava reads for it",
            limited: true,
        },
        Case {
            name: "--decode-budget 1e9 is reserved lazily",
            args: gen(&f.good, &["--policy", "lava", "--budget", "40", "--decode-budget", "1000000000"]),
            code: 0,
            expect: "lava: prompt",
            limited: true,
        },
        Case {
            name: "--decode-budget u64::MAX",
            args: gen(&f.good, &["--policy", "lava", "--budget", "40", "--decode-budget", "18446744073709551615"]),
            code: 0,
            expect: "lava: prompt",
            limited: true,
        },
        Case {
            name: "--decode-budget 1e9 with chunked prefill (SnapKV)",
            args: gen(&f.good, &["--policy", "snapkv", "--budget", "40", "--decode-budget", "1000000000", "--prefill-chunk", "2"]),
            code: 0,
            expect: "lava: prompt",
            limited: true,
        },
        Case {
            name: "HF intermediate_size 100000",
            args: gen(&ff, &[]),
            code: 3,
            expect: "tensor model.layers.0.mlp.gate_proj.weight has shape [48, 24] but the configuration implies [100000, 24]",
            limited: true,
        },
        Case {
            name: "HF vocab_size 4e6",
            args: gen(&vocab, &[]),
            code: 3,
            expect: "tensor model.embed_tokens.weight has shape [64, 24] but the configuration implies [4000000, 24]",
            limited: true,
        },
        Case {
            name: "HF hidden_size 1e12",
            args: gen(&hidden, &[]),
            code: 3,
            expect: "but the configuration implies [64, 1000000000000]",
            limited: true,
        },
        Case {
            name: "HF num_hidden_layers 2^31",
            args: gen(&layers, &[]),
            code: 3,
            expect: "2147483648 layers need 19327352832 tensors but the file holds only 20",
            limited: true,
        },
        Case {
            name: "GGUF block_count 2^31",
            args: gen(&block_count, &[]),
            code: 3,
            expect: "2147483648 layers need 19327352832 tensors but the file holds only 20",
            limited: true,
        },
        Case {
            name: "GGUF with a 50 MB u8 metadata array",
            args: gen(&byte_array, &[]),
            code: 3,
            expect: "holds an array of 50000000 values, more than the 8388608 metadata values lava reads",
            limited: true,
        },
        Case {
            name: "GGUF tensor table claiming 4 GiB of weights in a small file",
            args: gen(&claiming, &[]),
            code: 3,
            expect: "not enough memory: loading the f32 weights of",
            limited: true,
        },
        Case {
            name: "full cache for 1e11 tokens",
            args: s(&[
                "generate", "--prompt", "12345", "--max-new-tokens", "100000000000", "--backend", "ndarray", "--model",
                &p(&long_ctx),
            ]),
            code: 3,
            expect: "not enough memory: a full KV cache of 100000000005 tokens needs",
            limited: true,
        },
        Case {
            name: "compressed cache for 1e11 tokens is lazy",
            args: s(&[
                "generate", "--prompt", "12345", "--max-new-tokens", "3", "--policy", "lava", "--budget", "40",
                "--backend", "ndarray", "--model", &p(&long_ctx),
            ]),
            code: 0,
            expect: "lava: prompt",
            limited: true,
        },
    ];
    for c in &cases {
        run(c);
    }
}

/// Class 2: sums with the context must not wrap.
#[test]
fn context_checks_do_not_overflow() {
    let f = Fixture::new();
    let max = "18446744073709551615";
    let long_prompt = "?".repeat(250);
    let hay = f.dir.path().join("hay");
    std::fs::create_dir_all(hay.join("pg19")).expect("mkdir");
    std::fs::write(hay.join("essay.txt"), "1, 2, 3. 4, 5, 6. ".repeat(50)).expect("write");
    std::fs::write(hay.join("pg19").join("book.txt"), "1, 2, 3. 4, 5, 6. ".repeat(50)).expect("write");
    let results = p(&f.dir.path().join("r.jsonl"));
    let eval = |task: &str, extra: &[&str]| {
        let mut v = s(&["eval", task, "--model", &p(&f.good), "--backend", "ndarray", "--results", &results]);
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let cases = vec![
        Case {
            name: "--max-new-tokens u64::MAX, short prompt",
            args: s(&["generate", "--prompt", "12", "--max-new-tokens", max, "--backend", "ndarray", "--model", &p(&f.good)]),
            code: 2,
            expect: "more than the model's context of 256 tokens",
            limited: true,
        },
        Case {
            name: "--max-new-tokens u64::MAX, prompt near the context",
            args: s(&[
                "generate", "--prompt", &long_prompt, "--max-new-tokens", max, "--backend", "ndarray", "--model", &p(&f.good),
            ]),
            code: 2,
            expect: "more than the model's context of 256 tokens",
            limited: true,
        },
        Case {
            name: "--max-new-tokens u64::MAX with --policy lava",
            args: s(&[
                "generate", "--prompt", "12", "--max-new-tokens", max, "--policy", "lava", "--backend", "ndarray", "--model",
                &p(&f.good),
            ]),
            code: 2,
            expect: "more than the model's context of 256 tokens",
            limited: true,
        },
        Case {
            name: "--max-new-tokens u64::MAX with --decode-budget",
            args: s(&[
                "generate", "--prompt", "12", "--max-new-tokens", max, "--policy", "lava", "--decode-budget", max,
                "--backend", "ndarray", "--model", &p(&f.good),
            ]),
            code: 2,
            expect: "more than the model's context of 256 tokens",
            limited: true,
        },
        Case {
            name: "ppl --chunk u64::MAX",
            args: s(&[
                "ppl", "--text-file", &p(&f.write("t.txt", b"hello world, hello again")), "--chunk", max, "--max-tokens",
                max, "--backend", "ndarray", "--model", &p(&f.good),
            ]),
            code: 0,
            expect: "",
            limited: true,
        },
        Case {
            name: "bench --lengths u64::MAX",
            args: s(&["bench", "--lengths", max, "--no-bandwidth", "--model", &p(&f.good)]),
            code: 2,
            expect: "more tokens than any context holds",
            limited: true,
        },
        Case {
            name: "bench --decode-tokens u64::MAX",
            args: s(&["bench", "--lengths", "8", "--decode-tokens", max, "--no-bandwidth", "--model", &p(&f.good)]),
            code: 2,
            expect: "more tokens than any context holds",
            limited: true,
        },
        Case {
            name: "bench lengths past the context",
            args: s(&["bench", "--lengths", "300", "--no-bandwidth", "--model", &p(&f.good), "--backend", "ndarray"]),
            code: 2,
            expect: "exceed the model's context (256)",
            limited: true,
        },
        Case {
            name: "eval niah --lengths u64::MAX",
            args: eval("niah", &["--haystack", &p(&hay), "--lengths", max]),
            code: 2,
            expect: "the requested lengths overflow",
            limited: true,
        },
        Case {
            name: "eval niah --lengths 1e11",
            args: eval("niah", &["--haystack", &p(&hay), "--lengths", "100000000000"]),
            // Past the context: refused as usage before the memory check is reached.
            code: 2,
            expect: "more than the model's context of 256 tokens",
            limited: true,
        },
        Case {
            name: "eval ruler --lengths 1e11",
            args: eval("ruler", &["--tasks", "niah_single_1", "--lengths", "100000000000"]),
            // Past the context: refused as usage before the memory check is reached.
            code: 2,
            expect: "more than the model's context of 256 tokens",
            limited: true,
        },
        Case {
            name: "eval ppl --context u64::MAX",
            args: eval("ppl", &["--data", &p(&hay), "--context", max, "--continuation", "4"]),
            code: 2,
            expect: "the requested lengths overflow",
            limited: true,
        },
        Case {
            name: "select --budget u64::MAX",
            args: s(&["select", "--qkv", &p(&f.write("no.st", b"x")), "--policy", "lava", "--budget", max]),
            code: 2,
            expect: "not a valid safetensors file",
            limited: true,
        },
    ];
    for c in &cases {
        run(c);
    }
}

/// Class 3: inputs are read only as far as the context can use.
#[test]
fn inputs_are_read_with_a_size_limit() {
    let f = Fixture::new();
    let big = f.write("big.txt", &b"hello world ".repeat(300_000)); // 3.6 MB
    let cases = vec![
        Case {
            name: "--prompt-file /dev/zero",
            args: s(&["generate", "--prompt-file", "/dev/zero", "--backend", "ndarray", "--model", &p(&f.good)]),
            code: 2,
            expect: "/dev/zero is larger than 1048576 bytes, more than the model's context of 256 tokens can use",
            limited: true,
        },
        Case {
            name: "3.6 MB prompt file",
            args: s(&["generate", "--prompt-file", &p(&big), "--backend", "ndarray", "--model", &p(&f.good)]),
            code: 2,
            expect: "is larger than 1048576 bytes",
            limited: true,
        },
        Case {
            name: "--context-file /dev/zero",
            args: s(&[
                "generate", "--context-file", "/dev/zero", "--question", "what?", "--backend", "ndarray", "--model", &p(&f.good),
            ]),
            code: 2,
            expect: "/dev/zero is larger than 1048576 bytes",
            limited: true,
        },
        Case {
            name: "ppl --text-file /dev/zero reads a prefix",
            args: s(&["ppl", "--text-file", "/dev/zero", "--backend", "ndarray", "--model", &p(&f.good)]),
            code: 0,
            expect: "read the first 1048576 bytes of /dev/zero",
            limited: true,
        },
        Case {
            name: "ppl of a 3.6 MB file reads a prefix",
            args: s(&["ppl", "--text-file", &p(&big), "--max-tokens", "16", "--backend", "ndarray", "--model", &p(&f.good)]),
            code: 0,
            expect: "read the first 1048576 bytes",
            limited: true,
        },
        Case {
            name: "select --qkv /dev/zero",
            args: s(&["select", "--qkv", "/dev/zero", "--policy", "lava"]),
            code: 2,
            expect: "/dev/zero is larger than",
            limited: true,
        },
    ];
    for c in &cases {
        run(c);
    }
}

/// Class 3, evaluation inputs: every data file the evaluation reads whole
/// (LongBench records and templates, haystack essays, PG-19 books, results
/// files) is read at most 256 MiB, so a huge file (or a device) is one error.
#[test]
fn evaluation_data_is_read_with_a_size_limit() {
    let f = Fixture::new();
    let d = f.dir.path();
    // A sparse 300 MiB file of NUL bytes (valid UTF-8): a regular file, as the
    // folders' listings ask, past the 256 MiB read limit.
    let zero = |path: &Path| {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::File::create(path).and_then(|f| f.set_len(300 << 20)).expect("sparse file");
    };
    let data = d.join("data");
    zero(&data.join("pg19/book.txt"));
    zero(&data.join("longbench/trec.jsonl"));
    std::fs::write(data.join("longbench/dataset2prompt.json"), br#"{"trec": "{context}\n{input}"}"#).expect("write");
    std::fs::write(data.join("longbench/dataset2maxlen.json"), br#"{"trec": 16}"#).expect("write");
    let templates = d.join("templates");
    zero(&templates.join("longbench/dataset2prompt.json"));
    std::fs::write(templates.join("longbench/dataset2maxlen.json"), br#"{"trec": 16}"#).expect("write");
    std::fs::copy(f.write("trec.jsonl", br#"{"input": "1?", "context": "2. 3.", "answers": ["4"], "all_classes": ["4"], "length": 3, "_id": "x"}
"#), templates.join("longbench/trec.jsonl")).expect("copy");
    let hay = d.join("hay");
    zero(&hay.join("a.txt"));
    let results = d.join("r.jsonl");
    let huge_results = d.join("huge.jsonl");
    zero(&huge_results);
    let eval = |args: &[&str], data: &Path| -> Vec<String> {
        let mut v = s(args);
        v.extend(s(&["--model", &p(&f.good), "--backend", "ndarray", "--data", &p(data), "--results", &p(&results), "--quiet"]));
        v
    };
    let limit = "is larger than 256.0 MiB, the most lava reads for it";
    let cases = vec![
        Case { name: "LongBench jsonl is /dev/zero", args: eval(&["eval", "longbench", "--tasks", "trec", "--max-length", "200"], &data), code: 3, expect: limit, limited: true },
        Case { name: "LongBench template file is /dev/zero", args: eval(&["eval", "longbench", "--tasks", "trec", "--max-length", "200"], &templates), code: 3, expect: limit, limited: true },
        Case { name: "PG-19 book is /dev/zero", args: eval(&["eval", "ppl", "--context", "64", "--continuation", "16"], &data), code: 3, expect: limit, limited: true },
        Case {
            name: "haystack essay is /dev/zero",
            args: s(&[
                "eval", "niah", "--model", &p(&f.good), "--backend", "ndarray", "--haystack", &p(&hay), "--results", &p(&results), "--out",
                &p(&d.join("niah")), "--lengths", "100", "--depths", "0.5", "--quiet",
            ]),
            code: 3,
            expect: limit,
            limited: true,
        },
        Case { name: "eval report of a 300 MiB file", args: s(&["eval", "report", "--results", &p(&huge_results)]), code: 3, expect: limit, limited: true },
    ];
    for c in &cases {
        run(c);
    }
}

/// Class 4: configuration values the forward pass cannot use are refused,
/// from config.json and GGUF metadata alike.
#[test]
fn nonsense_config_values_are_refused() {
    let f = Fixture::new();
    let hf = |name: &'static str, key: &'static str, v: serde_json::Value| f.hf_with(name, move |c| c[key] = v);
    let llama3 = |factor: f64, low: f64, high: f64| {
        serde_json::json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high, "original_max_position_embeddings": 128})
    };
    let g = |name: &str, key: &str, v: Value| f.write(name, &gguf_with(&[(key, Some(v))]));
    let rows: Vec<(&str, PathBuf, &str)> = vec![
        ("HF rope_theta 0", hf("t0", "rope_theta", 0.into()), "rope_theta must be a positive finite number, got 0"),
        ("HF rope_theta -1", hf("tn", "rope_theta", (-1.0).into()), "rope_theta must be a positive finite number, got -1"),
        ("HF rope_theta string", hf("ts", "rope_theta", "10000".into()), "rope_theta must be a number, got \"10000\""),
        ("HF rope_theta null", hf("tz", "rope_theta", serde_json::Value::Null), "rope_theta must be a number, got null"),
        ("HF rms_norm_eps -1", hf("en", "rms_norm_eps", (-1.0).into()), "rms_norm_eps must be a finite number >= 0, got -1"),
        ("HF rms_norm_eps string", hf("es", "rms_norm_eps", "1e-5".into()), "rms_norm_eps must be a number"),
        ("HF rope factor 0", hf("f0", "rope_scaling", llama3(0.0, 1.0, 4.0)), "rope_scaling.factor must be a positive finite number, got 0"),
        ("HF rope factor 1e-307", hf("ftiny", "rope_scaling", llama3(1e-307, 1.0, 4.0)), "gives RoPE angles that overflow"),
        (
            "HF rope_theta 1e-300 over a context of 1e15",
            f.hf_with("tctx", |c| {
                c["rope_theta"] = 1e-300.into();
                c["max_position_embeddings"] = 1_000_000_000_000_000u64.into();
                c["head_dim"] = 1024.into();
            }),
            "rope_theta 1e-300 with head_dim 1024 gives RoPE angles that overflow",
        ),
        ("HF rope low = high", hf("fl", "rope_scaling", llama3(8.0, 4.0, 4.0)), "low_freq_factor < high_freq_factor"),
        ("HF eos outside vocab", hf("eos", "eos_token_id", 999.into()), "eos_token_id 999 is outside the vocabulary of 64 tokens"),
        ("HF eos list outside vocab", hf("eosl", "eos_token_id", serde_json::json!([1, 64])), "eos_token_id 64 is outside the vocabulary"),
        ("HF eos not an id", hf("eoss", "eos_token_id", "</s>".into()), "eos_token_id must be a token id"),
        ("HF bos outside vocab", hf("bos", "bos_token_id", 64.into()), "bos_token_id 64 is outside the vocabulary of 64 tokens"),
        ("HF bos past u32", hf("bosb", "bos_token_id", 4294967296u64.into()), "bos_token_id must be a token id"),
        ("HF context 0", hf("ctx0", "max_position_embeddings", 0.into()), "max_position_embeddings (the context length) must be positive"),
        ("HF head_dim string", hf("hds", "head_dim", "8".into()), "head_dim must be a non-negative integer, got \"8\""),
        ("HF tie_word_embeddings string", hf("tie", "tie_word_embeddings", "yes".into()), "tie_word_embeddings must be true or false"),
        ("GGUF freq_base NaN", g("tnan.gguf", "llama.rope.freq_base", Value::F64(f64::NAN)), "rope_theta must be a positive finite number, got NaN"),
        ("GGUF freq_base 0", g("t0.gguf", "llama.rope.freq_base", Value::F64(0.0)), "rope_theta must be a positive finite number, got 0"),
        ("GGUF freq_base string", g("ts.gguf", "llama.rope.freq_base", Value::Str("1e4".into())), "llama.rope.freq_base is not a number"),
        (
            "GGUF rms eps NaN",
            g("enan.gguf", "llama.attention.layer_norm_rms_epsilon", Value::F64(f64::NAN)),
            "rms_norm_eps must be a finite number >= 0, got NaN",
        ),
        (
            "GGUF rms eps -1",
            g("en.gguf", "llama.attention.layer_norm_rms_epsilon", Value::F64(-1.0)),
            "rms_norm_eps must be a finite number >= 0, got -1",
        ),
        ("GGUF eos outside vocab", g("eos.gguf", "tokenizer.ggml.eos_token_id", Value::U64(5000)), "eos_token_id 5000 is outside the vocabulary of 64"),
        ("GGUF bos past u32", g("bos.gguf", "tokenizer.ggml.bos_token_id", Value::U64(1 << 40)), "is not a token id"),
        ("GGUF context 0", g("c0.gguf", "llama.context_length", Value::U64(0)), "max_position_embeddings (the context length) must be positive"),
        ("GGUF context_length string", g("cs.gguf", "llama.context_length", Value::Str("8k".into())), "llama.context_length is not a non-negative integer"),
        (
            "GGUF sliding window of 0",
            g("swa0.gguf", "llama.attention.sliding_window", Value::U64(0)),
            "sliding_window must be positive (or absent)",
        ),
    ];
    for (name, model, expect) in rows {
        run(&Case { name, args: gen(&model, &[]), code: 3, expect, limited: false });
    }
    // Values that are fine still load: a Qwen2 sliding_window that is not used,
    // a Mistral window as long as the context, null for nullable keys; and
    // sliding windows below the context (every layer local, a ring cache).
    let fine = [
        f.hf_with("swa", |c| {
            c["model_type"] = "mistral".into();
            c["sliding_window"] = 128.into();
        }),
        f.hf_with("qswa", |c| {
            c["model_type"] = "qwen2".into();
            c["attention_bias"] = false.into();
            c["sliding_window"] = 64.into();
            c["use_sliding_window"] = true.into();
        }),
        g("swa.gguf", "llama.attention.sliding_window", Value::U64(64)),
        f.hf_with("qwen_unused", |c| {
            c["model_type"] = "qwen2".into();
            c["attention_bias"] = false.into();
            c["sliding_window"] = 64.into();
            c["use_sliding_window"] = false.into();
        }),
        f.hf_with("mistral_long", |c| {
            c["model_type"] = "mistral".into();
            c["sliding_window"] = 256.into();
        }),
        f.hf_with("nulls", |c| {
            c["sliding_window"] = serde_json::Value::Null;
            c["bos_token_id"] = serde_json::Value::Null;
            c["head_dim"] = serde_json::Value::Null;
        }),
    ];
    for model in fine {
        run(&Case { name: "valid config", args: gen(&model, &[]), code: 0, expect: "lava: prompt", limited: false });
    }
}

/// Class 5: shape and zero-layer errors are one short sentence.
#[test]
fn model_errors_are_one_sentence() {
    let f = Fixture::new();
    let q = f.hf_with("q", |c| c["head_dim"] = 4.into());
    let zero = f.hf_with("zero", |c| c["num_hidden_layers"] = 0.into());
    let untied = f.hf_with("untied", |c| c["tie_word_embeddings"] = false.into());
    let zero_gguf = f.write("zero.gguf", &gguf_with(&[("llama.block_count", Some(Value::U64(0)))]));
    let cases = vec![
        Case {
            name: "HF shape mismatch",
            args: gen(&q, &[]),
            code: 3,
            expect: "tensor model.layers.0.self_attn.q_proj.weight has shape [24, 24] but the configuration implies [12, 24]",
            limited: false,
        },
        Case { name: "HF missing lm_head", args: gen(&untied, &[]), code: 3, expect: "missing tensor lm_head.weight", limited: false },
        Case {
            name: "HF zero layers",
            args: gen(&zero, &[]),
            code: 3,
            expect: "num_hidden_layers (0) must all be positive",
            limited: false,
        },
        Case {
            name: "GGUF zero layers",
            args: gen(&zero_gguf, &[]),
            code: 3,
            expect: "num_hidden_layers (0) must all be positive",
            limited: false,
        },
    ];
    for c in &cases {
        run(c);
    }
}

/// Class 10, BOS: a GGUF that asks for BOS (`tokenizer.ggml.add_bos_token`)
/// gets it first in the prompt the binary runs; one that does not, does not;
/// a BOS id outside the vocabulary is refused.
#[test]
fn gguf_add_bos_token_is_honoured() {
    let f = Fixture::new();
    let prompt_tokens = |model: &Path| -> u64 {
        let out = Command::new(env!("CARGO_BIN_EXE_lava")).args(gen(model, &["--json"])).output().expect("run lava");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v["prompt_tokens"].as_u64().expect("prompt_tokens")
    };
    let asks = f.write("bos.gguf", &gguf_with(&[("tokenizer.ggml.add_bos_token", Some(Value::Bool(true))), ("tokenizer.ggml.bos_token_id", Some(Value::U64(1)))]));
    let declines = f.write("no_bos.gguf", &gguf_with(&[("tokenizer.ggml.add_bos_token", Some(Value::Bool(false))), ("tokenizer.ggml.bos_token_id", Some(Value::U64(1)))]));
    // "12345" is five byte-level tokens in the tiny vocabulary.
    assert_eq!(prompt_tokens(&f.good), 5);
    assert_eq!(prompt_tokens(&declines), 5);
    assert_eq!(prompt_tokens(&asks), 6);
    let outside = f.write("bos_outside.gguf", &gguf_with(&[("tokenizer.ggml.add_bos_token", Some(Value::Bool(true))), ("tokenizer.ggml.bos_token_id", Some(Value::U64(100_000)))]));
    run(&Case { name: "BOS id outside the vocabulary", args: gen(&outside, &[]), code: 3, expect: "bos_token_id 100000", limited: false });
}
