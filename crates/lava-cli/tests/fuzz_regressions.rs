//! Bad-input robustness of `lava select`'s q/k/v reader: inputs found by the
//! `select_qkv` fuzzer in `fuzz/` (kept as regression tests), and a bounded,
//! deterministic mutation loop over a valid image that runs in the normal
//! suite. Bad input must give an error, never a panic; what `read_qkv`
//! accepts, `select_json` must handle.
//!
//! With `LAVA_FUZZ_CORPUS=<dir>` set (a relative `<dir>` is taken from the
//! workspace root), `write_fuzz_seeds` also writes the seed corpus of the
//! `select_qkv` fuzz target under `<dir>/select_qkv/`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use burn_ndarray::NdArray;
use lava_cache::{PolicyConfig, PolicyName};
use lava_cli::select::{read_qkv, select_json};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// Same bound as the `select_qkv` fuzz target.
const MAX_ELEMENTS: usize = 1 << 16;

/// A valid `lava select` input: `layers` layers of f32 q `[h_q, n, d]`, k and v `[h_kv, n, d]`.
fn qkv_image(layers: usize, h_q: usize, h_kv: usize, n: usize, d: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for l in 0..layers {
        for (x, h) in [("q", h_q), ("k", h_kv), ("v", h_kv)] {
            let bytes = (0..h * n * d)
                .flat_map(|_| ((rng.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0).to_le_bytes())
                .collect();
            tensors.push((format!("layers.{l}.{x}"), vec![h, n, d], bytes));
        }
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape, b)| (name.clone(), TensorView::new(Dtype::F32, shape.clone(), b).expect("view")))
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

fn policy() -> PolicyConfig {
    let mut c = PolicyConfig::new(PolicyName::Lava, 8);
    c.window = 4;
    c.kernel_size = 3;
    c
}

/// What the `select_qkv` fuzz target does; `true` when the input reached the policy.
fn exercise_qkv(bytes: &[u8]) -> bool {
    let Ok(layers) = read_qkv("fuzz", bytes) else { return false };
    let total: usize = layers.iter().flatten().map(|(_, v)| v.len()).sum();
    if total >= MAX_ELEMENTS {
        return false;
    }
    let json = select_json::<NdArray<f32>>(&layers, &policy(), &Default::default())
        .unwrap_or_else(|e| panic!("read_qkv accepted the file but select failed: {e}"));
    assert_eq!(json["layers"].as_array().map(Vec::len), Some(layers.len()));
    true
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter in a safetensors header (JSON digits, quotes, brackets)
/// and in f32 payloads (NaN / infinity exponents).
const INTERESTING: &[u8] = b"0123456789,:[]{}\"-eE. \x00\xff\x7f\x80";

/// One to four random edits, half in the 8-byte length and JSON header, half
/// in place in the tensor payload (which then reaches the policy, or holds
/// NaN/infinity).
fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    let header = base.get(..8).map_or(0, |h| u64::from_le_bytes(h.try_into().unwrap_or([0; 8])) as usize + 8);
    for _ in 0..1 + rng.below(4) {
        let in_header = rng.below(2) == 0;
        let at = if in_header {
            rng.below(header.min(b.len()).max(1))
        } else {
            header + rng.below(b.len().saturating_sub(header).max(1))
        };
        // Payload edits keep the length, so the header stays consistent.
        match rng.below(if in_header { 6 } else { 3 }) {
            0 => {
                if let Some(x) = b.get_mut(at) {
                    *x ^= 1 << rng.below(8);
                }
            }
            1 | 2 => {
                if let Some(x) = b.get_mut(at) {
                    *x = INTERESTING[rng.below(INTERESTING.len())];
                }
            }
            3 => b.truncate(at),
            4 => {
                let ins: Vec<u8> = (0..1 + rng.below(8)).map(|_| INTERESTING[rng.below(INTERESTING.len())]).collect();
                let at = at.min(b.len());
                b.splice(at..at, ins);
            }
            _ => {
                let end = (at + 1 + rng.below(8)).min(b.len());
                if at < end {
                    b.drain(at..end);
                }
            }
        }
    }
    b
}

#[test]
fn random_mutations_of_qkv_file_never_panic() {
    let bases = [qkv_image(2, 6, 2, 20, 4, 1), qkv_image(1, 2, 2, 3, 2, 2), qkv_image(3, 4, 1, 12, 2, 3)];
    for base in &bases {
        assert!(exercise_qkv(base));
    }
    let mut failures = Vec::new();
    let (mut selected, mut rejected) = (0, 0);
    for i in 0..500u64 {
        let seed = 0x243f_6a88_85a3_08d3 ^ i.wrapping_mul(0x1000_0000_01b3);
        let mut rng = Rng(seed | 1);
        let bytes = mutate(&mut rng, &bases[i as usize % bases.len()]);
        match catch_unwind(AssertUnwindSafe(|| exercise_qkv(&bytes))) {
            Ok(true) => selected += 1,
            Ok(false) => rejected += 1,
            Err(_) => failures.push((i, seed)),
        }
    }
    assert!(failures.is_empty(), "q/k/v mutations that panicked (iteration, rng seed): {failures:?}");
    // The loop must reach the policy, not only the header checks.
    eprintln!("q/k/v mutations: {selected} reached the policy, {rejected} rejected");
    assert!(selected >= 25 && rejected >= 25, "selected {selected}, rejected {rejected}");
}

/// `LAVA_FUZZ_CORPUS`, a relative path resolved from the workspace root (cargo
/// runs tests in the package directory).
fn corpus_root() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("LAVA_FUZZ_CORPUS")?);
    Some(if dir.is_relative() { Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(dir) } else { dir })
}

/// Writes the `select_qkv` seed corpus when `LAVA_FUZZ_CORPUS` names a directory.
#[test]
fn write_fuzz_seeds() {
    let Some(root) = corpus_root() else { return };
    let dir = root.join("select_qkv");
    std::fs::create_dir_all(&dir).expect("corpus dir");
    for (name, image) in [
        ("l2_hq6_hkv2_n20_d4.safetensors", qkv_image(2, 6, 2, 20, 4, 1)),
        ("l1_hq2_hkv2_n3_d2.safetensors", qkv_image(1, 2, 2, 3, 2, 2)),
        ("l3_hq4_hkv1_n12_d2.safetensors", qkv_image(3, 4, 1, 12, 2, 3)),
    ] {
        assert!(exercise_qkv(&image));
        std::fs::write(dir.join(name), image).expect("write seed");
    }
}
