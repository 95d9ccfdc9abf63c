//! The KV dtypes ([`KvDtype`]): what each format reads back, against
//! independent oracles bit for bit (llama.cpp's gguf-py for Q8_0, numpy for
//! float16); attention over stored K/V against a naive f64 reference on the
//! read-back values; every policy's prefill selection unchanged by the format
//! (the prefill scores the prompt as computed); the bytes each format keeps;
//! and, with the `flex` feature, the flex kernels (which read f16 and Q8_0 in
//! place) against the same reference.
//!
//! The oracle test needs python3 with `gguf` and `numpy`; without them it is
//! skipped loudly, unless `LAVA_REQUIRE_ORACLE` is set (CI), where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use common::{random_values, Rng};
use lava_cache::{CacheShape, CompressedCache, FullCache, KvCache, KvDtype, PolicyConfig, PolicyName};

type Nd = common::B;

fn host<B: Backend, const N: usize>(t: Tensor<B, N>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().expect("f32 data")
}

fn tensor<B: Backend, const N: usize>(values: &[f32], shape: [usize; N], device: &B::Device) -> Tensor<B, N> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), device)
}

// ---------------------------------------------------------------- oracle

fn python() -> String {
    std::env::var("LAVA_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into())
}

fn oracle_available() -> bool {
    let ok = Command::new(python()).args(["-c", "import gguf, numpy, gguf.quants"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        let msg = format!("the KV dtype oracle needs `{} -m pip install gguf numpy`; it is missing", python());
        if std::env::var("LAVA_REQUIRE_ORACLE").is_ok_and(|v| !v.is_empty() && v != "0") {
            panic!("LAVA_REQUIRE_ORACLE is set and {msg}");
        }
        eprintln!("\nSKIPPED lava-cache KV dtype oracle test: {msg}\n");
    }
    ok
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const D: usize = 64;

/// Rows of `D` values covering the edge cases of both formats: normal data
/// at several scales, an all-zero block, exact ties of the Q8_0 rounding,
/// values just below a tie, a scale that underflows f16, and f16's range.
fn oracle_rows() -> Vec<f32> {
    let mut rng = Rng::new(42);
    let mut rows = Vec::new();
    for scale in [1.0, 0.01, 30.0, 1000.0] {
        rows.extend(random_values(&mut rng, 6 * D, scale));
    }
    // Block 0: zeros; block 1: amax 127 (scale 1), so x * (1/d) = x: ties at k + 0.5.
    let mut row = vec![0f32; D];
    row[32] = 127.0;
    for (i, x) in row[33..].iter_mut().enumerate() {
        *x = (i as f32 - 15.0) + 0.5;
    }
    rows.extend(&row);
    // Just below a tie (0.5 - 2^-25, 2.5 - ulp) with amax 127.
    let mut row = vec![0f32; D];
    row[0] = 127.0;
    row[1] = 0.5 - 2f32.powi(-25);
    row[2] = f32::from_bits(2.5f32.to_bits() - 1);
    row[3] = -f32::from_bits(3.5f32.to_bits() - 1);
    rows.extend(&row);
    // A block scale below f16's smallest subnormal, and values near f16's limits.
    rows.extend((0..D).map(|i| 1e-7 * (i as f32 - 31.0)));
    rows.extend((0..D).map(|i| 6.0e4 * ((i as f32) / D as f32 - 0.5)));
    rows
}

#[test]
fn stored_values_match_gguf_py_q8_0_and_numpy_f16_bit_for_bit() {
    if !oracle_available() {
        return;
    }
    let dir = TempDir(std::env::temp_dir().join(format!("lava-kv-dtype-oracle-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let rows = oracle_rows();
    let n = rows.len() / D;
    let input: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(dir.0.join("in.f32"), input).expect("write input");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kv_dtype_oracle.py");
    let status = Command::new(python())
        .arg(&script)
        .arg(dir.0.join("in.f32"))
        .arg(D.to_string())
        .arg(dir.0.join("q8.f32"))
        .arg(dir.0.join("f16.f32"))
        .status()
        .expect("run kv_dtype_oracle.py");
    assert!(status.success(), "kv_dtype_oracle.py failed: {status}");
    let read = |f: &str| -> Vec<f32> {
        std::fs::read(dir.0.join(f)).expect("oracle output").chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    };
    let (want_q8, want_f16) = (read("q8.f32"), read("f16.f32"));
    assert_eq!(want_q8.len(), rows.len());

    let check = |what: &str, got: Vec<f32>, want: &[f32]| {
        let bad: Vec<usize> = (0..want.len()).filter(|&i| got[i].to_bits() != want[i].to_bits()).collect();
        assert!(bad.is_empty(), "{what}: {} of {} values differ, first at {}: {} vs {} (input {})", bad.len(), want.len(), bad[0], got[bad[0]], want[bad[0]], rows[bad[0]]);
    };
    let nd = Default::default();
    check("q8_0 on ndarray", host(KvDtype::Q8_0.round_trip(tensor::<Nd, 2>(&rows, [n, D], &nd)).expect("q8_0")), &want_q8);
    // Three dimensions (the full cache's layout) read back the same.
    check("q8_0 on ndarray, rank 3", host(KvDtype::Q8_0.round_trip(tensor::<Nd, 3>(&rows, [2, n / 2, D], &nd)).expect("q8_0")), &want_q8);
    check("f32", host(KvDtype::F32.round_trip(tensor::<Nd, 2>(&rows, [n, D], &nd)).expect("f32")), &rows);
    #[cfg(feature = "flex")]
    {
        let fx = Default::default();
        check("q8_0 on flex", host(KvDtype::Q8_0.round_trip(tensor::<Fx, 2>(&rows, [n, D], &fx)).expect("q8_0")), &want_q8);
        check("f16 on flex", host(KvDtype::F16.round_trip(tensor::<Fx, 2>(&rows, [n, D], &fx)).expect("f16")), &want_f16);
    }
    let _ = want_f16;
}

#[cfg(feature = "flex")]
type Fx = lava_flex::Flex;

// ---------------------------------------------------------------- attention

/// One layer's inputs for a prompt of `n` tokens and `decode` single tokens.
struct LayerInputs {
    q: Vec<Vec<f32>>, // per step, [H_q, T, D]
    k: Vec<Vec<f32>>, // per step, [H_kv, T, D]
    v: Vec<Vec<f32>>,
}

const SHAPE: CacheShape = CacheShape { layers: 3, query_heads: 4, kv_heads: 2, head_dim: D };

fn inputs(seed: u64, lengths: &[usize]) -> Vec<LayerInputs> {
    let mut rng = Rng::new(seed);
    (0..SHAPE.layers)
        .map(|_| LayerInputs {
            q: lengths.iter().map(|&t| random_values(&mut rng, SHAPE.query_heads * t * D, 1.5)).collect(),
            k: lengths.iter().map(|&t| random_values(&mut rng, SHAPE.kv_heads * t * D, 1.5)).collect(),
            v: lengths.iter().map(|&t| random_values(&mut rng, SHAPE.kv_heads * t * D, 1.0)).collect(),
        })
        .collect()
}

/// Runs every step through `cache`; returns per step and layer the output.
fn run<B: Backend, C: KvCache<B>>(cache: &mut C, layers: &[LayerInputs], lengths: &[usize], device: &B::Device) -> Vec<Vec<Vec<f32>>> {
    lengths
        .iter()
        .enumerate()
        .map(|(s, &t)| {
            layers
                .iter()
                .enumerate()
                .map(|(l, x)| {
                    let q = tensor::<B, 3>(&x.q[s], [SHAPE.query_heads, t, D], device);
                    let k = tensor::<B, 3>(&x.k[s], [SHAPE.kv_heads, t, D], device);
                    let v = tensor::<B, 3>(&x.v[s], [SHAPE.kv_heads, t, D], device);
                    host(cache.attend(l, q, k, v).expect("attend"))
                })
                .collect()
        })
        .collect()
}

/// Row `i` of KV head `g` of a `[H_kv, T, D]` host tensor.
fn row(x: &[f32], t: usize, g: usize, i: usize) -> &[f32] {
    &x[(g * t + i) * D..(g * t + i + 1) * D]
}

/// Naive f64 attention of query row `q` over `(k, v)` rows.
fn attend_naive(q: &[f32], rows: &[(&[f32], &[f32])]) -> Vec<f64> {
    attend_naive_with(q, rows, false)
}

/// [`attend_naive`]; with `q8_query`, the scaled query `q / sqrt(D)` is first
/// rounded to Q8_0 (per 32 values `d = max|x| / 127`, `round(x * (1/d)) * d`),
/// as a decode that scores Q8_0 keys in the integer domain does.
fn attend_naive_with(q: &[f32], rows: &[(&[f32], &[f32])], q8_query: bool) -> Vec<f64> {
    let scale = 1.0 / (D as f32).sqrt();
    let q: Vec<f64> = if q8_query {
        let scaled: Vec<f32> = q.iter().map(|&x| x * scale).collect();
        scaled
            .chunks(32)
            .flat_map(|b| {
                let d = b.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
                let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
                b.iter().map(move |&x| (x * inv).round() as f64 * d as f64)
            })
            .collect()
    } else {
        q.iter().map(|&x| x as f64 / (D as f64).sqrt()).collect()
    };
    let logits: Vec<f64> = rows.iter().map(|(k, _)| q.iter().zip(*k).map(|(&a, &b)| a * b as f64).sum::<f64>()).collect();
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logits.iter().map(|&x| (x - m).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut out = vec![0f64; D];
    for (wi, (_, v)) in w.iter().zip(rows) {
        for (o, &x) in out.iter_mut().zip(*v) {
            *o += wi / total * x as f64;
        }
    }
    out
}

/// What `dtype` reads back for a host tensor (checked against the oracles above).
fn stored<B: Backend>(dtype: KvDtype, x: &[f32], device: &B::Device) -> Vec<f32> {
    host(dtype.round_trip(tensor::<B, 2>(x, [x.len() / D, D], device)).expect("round trip"))
}

/// The decode step `s` (one token) of `layer` against the reference: each
/// query head over its KV head's `kept` prompt positions and the decode
/// tokens so far, all as stored in `dtype`.
fn expected_decode<B: Backend>(x: &LayerInputs, n: usize, s: usize, kept: &[Vec<usize>], dtype: KvDtype, device: &B::Device) -> Vec<f64> {
    let g_size = SHAPE.query_heads / SHAPE.kv_heads;
    let prompt_k = stored::<B>(dtype, &x.k[0], device);
    let prompt_v = stored::<B>(dtype, &x.v[0], device);
    let dec_k: Vec<Vec<f32>> = (1..=s).map(|j| stored::<B>(dtype, &x.k[j], device)).collect();
    let dec_v: Vec<Vec<f32>> = (1..=s).map(|j| stored::<B>(dtype, &x.v[j], device)).collect();
    let mut out = Vec::new();
    for h in 0..SHAPE.query_heads {
        let g = h / g_size;
        let mut rows: Vec<(&[f32], &[f32])> = kept[g].iter().map(|&p| (row(&prompt_k, n, g, p), row(&prompt_v, n, g, p))).collect();
        rows.extend((0..s).map(|j| (row(&dec_k[j], 1, g, 0), row(&dec_v[j], 1, g, 0))));
        out.extend(attend_naive_with(&x.q[s][h * D..(h + 1) * D], &rows, q8_query::<B>(dtype)));
    }
    out
}

/// Whether `B`'s decode over `dtype` quantizes the query first (Q8_0 on
/// flex on a CPU with AVX-512 VNNI: lava-flex's integer-domain scoring).
fn q8_query<B: Backend>(dtype: KvDtype) -> bool {
    #[cfg(feature = "flex")]
    {
        dtype == KvDtype::Q8_0 && std::any::TypeId::of::<B>() == std::any::TypeId::of::<Fx>() && lava_flex::stored::q8_0_quantizes_query(D)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = dtype;
        false
    }
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got.iter().zip(want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0f64, f64::max);
    assert!(worst <= tol, "{what}: max abs difference {worst:e} > {tol:e}");
}

/// The prefill attends over the prompt as computed (naive causal attention).
fn expected_prefill(x: &LayerInputs, n: usize) -> Vec<f64> {
    let g_size = SHAPE.query_heads / SHAPE.kv_heads;
    let mut out = Vec::new();
    for h in 0..SHAPE.query_heads {
        let g = h / g_size;
        for i in 0..n {
            let rows: Vec<(&[f32], &[f32])> = (0..=i).map(|p| (row(&x.k[0], n, g, p), row(&x.v[0], n, g, p))).collect();
            out.extend(attend_naive(&x.q[0][(h * n + i) * D..(h * n + i + 1) * D], &rows));
        }
    }
    out
}

fn full_cache_reads_what_it_stores<B: Backend>(dtype: KvDtype, device: &B::Device) {
    let n = 21;
    let lengths = [n, 1, 1, 1];
    let layers = inputs(7, &lengths);
    let mut cache = FullCache::<B>::new(SHAPE, 64, device).expect("cache").with_kv_dtype(dtype).expect("kv dtype");
    let outs = run(&mut cache, &layers, &lengths, device);
    let all: Vec<Vec<usize>> = vec![(0..n).collect(); SHAPE.kv_heads];
    for (l, x) in layers.iter().enumerate() {
        assert_close(&outs[0][l], &expected_prefill(x, n), 1e-4, &format!("{dtype} full prefill, layer {l}"));
        for s in 1..lengths.len() {
            assert_close(&outs[s][l], &expected_decode::<B>(x, n, s, &all, dtype, device), 1e-4, &format!("{dtype} full decode {s}, layer {l}"));
        }
    }
    let stats = cache.stats();
    assert_eq!(stats.retained_tokens, SHAPE.layers * SHAPE.kv_heads * (n + 3));
}

#[test]
fn full_cache_attends_over_what_it_stores_on_ndarray() {
    let device = Default::default();
    for dtype in [KvDtype::F32, KvDtype::Q8_0] {
        full_cache_reads_what_it_stores::<Nd>(dtype, &device);
    }
}

/// Every named policy keeps, with each format, the positions it keeps with
/// f32 (the prefill scores the prompt as computed), and decodes over them
/// as stored.
fn every_policy_composes<B: Backend>(dtypes: &[KvDtype], device: &B::Device) {
    let n = 48;
    let lengths = [n, 1, 1];
    let layers = inputs(11, &lengths);
    for &policy in PolicyName::ALL.iter().filter(|&&p| p != PolicyName::Full) {
        let mut config = PolicyConfig::new(policy, 16);
        config.window = 4;
        config.kernel_size = 3;
        let make = |dtype: KvDtype| CompressedCache::<B>::new(SHAPE, config.clone(), 64, device).expect("cache").with_kv_dtype(dtype).expect("kv dtype");
        let mut reference = make(KvDtype::F32);
        run(&mut reference, &layers, &lengths[..1], device);
        for &dtype in dtypes {
            let mut cache = make(dtype);
            let outs = run(&mut cache, &layers, &lengths, device);
            for (l, x) in layers.iter().enumerate() {
                let kept = cache.kept_positions(l).expect("kept");
                let prompt_kept: Vec<Vec<usize>> = kept.iter().map(|h| h.iter().copied().filter(|&p| p < n).collect()).collect();
                assert_eq!(prompt_kept, reference.kept_positions(l).expect("kept"), "{policy} with {dtype}: layer {l} keeps other positions than with f32");
                assert_close(&outs[0][l], &expected_prefill(x, n), 1e-4, &format!("{policy} {dtype} prefill, layer {l}"));
                for s in 1..lengths.len() {
                    let want = expected_decode::<B>(x, n, s, &prompt_kept, dtype, device);
                    assert_close(&outs[s][l], &want, 1e-4, &format!("{policy} {dtype} decode {s}, layer {l}"));
                }
            }
        }
    }
}

#[test]
fn every_policy_composes_with_q8_0_on_ndarray() {
    every_policy_composes::<Nd>(&[KvDtype::Q8_0], &Default::default());
}

#[test]
fn kv_bytes_are_the_formats_bytes() {
    let device = Default::default();
    let n = 48;
    let lengths = [n, 1];
    let layers = inputs(3, &lengths);
    let mut config = PolicyConfig::new(PolicyName::Lava, 16);
    config.window = 4;
    let mut f32_cache = CompressedCache::<Nd>::new(SHAPE, config.clone(), 64, &device).expect("cache");
    let mut q8_cache = CompressedCache::<Nd>::new(SHAPE, config, 64, &device).expect("cache").with_kv_dtype(KvDtype::Q8_0).expect("q8_0");
    run(&mut f32_cache, &layers, &lengths, &device);
    run(&mut q8_cache, &layers, &lengths, &device);
    let (a, b) = (f32_cache.stats(), q8_cache.stats());
    assert_eq!(a.retained_tokens, b.retained_tokens);
    assert_eq!(a.retained_bytes, a.retained_tokens * 2 * D * 4);
    // ndarray has no f16 tensors: the Q8_0 scales are f32 there (72 bytes per row of 64).
    assert_eq!(b.retained_bytes, b.retained_tokens * 2 * (D + 2 * 4));
    assert_eq!(KvDtype::Q8_0.row_bytes(D), D * 34 / 32);
    assert_eq!(KvDtype::F16.row_bytes(D), D * 2);
}

#[test]
fn formats_a_backend_or_shape_cannot_store_are_refused() {
    let device = Default::default();
    let err = FullCache::<Nd>::new(SHAPE, 64, &device).expect("cache").with_kv_dtype(KvDtype::F16).expect_err("f16 on ndarray");
    assert!(err.to_string().contains("f16"), "{err}");
    let odd = CacheShape { head_dim: 48, ..SHAPE };
    let mut config = PolicyConfig::new(PolicyName::Lava, 16);
    config.window = 4;
    let err = CompressedCache::<Nd>::new(odd, config, 64, &device)
        .expect("cache")
        .with_kv_dtype(KvDtype::Q8_0)
        .expect_err("q8_0 with D = 48");
    assert!(err.to_string().contains("48"), "{err}");
    assert_eq!("Q8_0".parse::<KvDtype>().expect("parse"), KvDtype::Q8_0);
    let err = "q4_0".parse::<KvDtype>().expect_err("unknown");
    assert!(err.to_string().contains("f32, f16 or q8_0"), "{err}");
}

#[cfg(feature = "flex")]
mod flex {
    use super::*;

    /// On flex the decode reads f16 and Q8_0 in place (lava-flex's `stored`
    /// kernels): the same reference holds, and the bytes are the nominal ones.
    #[test]
    fn flex_kernels_read_f16_and_q8_0_as_stored() {
        let device = Default::default();
        for dtype in KvDtype::ALL {
            full_cache_reads_what_it_stores::<Fx>(dtype, &device);
        }
        every_policy_composes::<Fx>(&[KvDtype::F16, KvDtype::Q8_0], &device);
    }

    #[test]
    fn flex_q8_0_keeps_34_bytes_per_32_values() {
        let device = Default::default();
        let n = 48;
        let lengths = [n, 1];
        let layers = inputs(5, &lengths);
        for dtype in KvDtype::ALL {
            let mut cache = FullCache::<Fx>::new(SHAPE, 64, &device).expect("cache").with_kv_dtype(dtype).expect("dtype");
            run(&mut cache, &layers, &lengths, &device);
            let s = cache.stats();
            assert_eq!(s.retained_bytes, s.retained_tokens * 2 * dtype.row_bytes(D), "{dtype}");
        }
    }

    /// Long enough for the parallel split of the flex kernel (> 2048 rows).
    #[test]
    fn flex_q8_0_decode_over_many_rows_matches_the_reference() {
        let device: burn::tensor::Device<Fx> = Default::default();
        let n = 1100;
        let lengths = [n, 1];
        let layers = inputs(9, &lengths);
        let shape = SHAPE;
        let mut cache = FullCache::<Fx>::new(shape, 2048, &device).expect("cache").with_kv_dtype(KvDtype::Q8_0).expect("q8_0");
        let outs = run(&mut cache, &layers, &lengths, &device);
        let all: Vec<Vec<usize>> = vec![(0..n).collect(); shape.kv_heads];
        for (l, x) in layers.iter().enumerate() {
            assert_close(&outs[1][l], &expected_decode::<Fx>(x, n, 1, &all, KvDtype::Q8_0, &device), 1e-4, &format!("layer {l}"));
        }
    }
}

/// `FullCache::filled_from` leaves the cache a prefill through `attend` leaves: the same
/// stats, and every later step attends over the same stored keys and values (bit for bit),
/// in every format. Bad shapes and a filled cache are refused.
#[test]
fn full_cache_filled_from_equals_a_replayed_prefill() {
    let dev = Default::default();
    let shape = CacheShape { layers: 2, query_heads: 4, kv_heads: 2, head_dim: D };
    let mut rng = Rng::new(7);
    let t = 37;
    let layer_qkv: Vec<(Tensor<Nd, 3>, Tensor<Nd, 3>, Tensor<Nd, 3>)> = (0..2)
        .map(|_| {
            let mut r = |h: usize, n: usize| tensor::<Nd, 3>(&random_values(&mut rng, h * n * D, 1.0), [h, n, D], &dev);
            (r(4, t), r(2, t), r(2, t))
        })
        .collect();
    let mut ran = Vec::new();
    for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Q8_0] {
        // f16 needs a backend with f16 tensors (flex, cuda); ndarray refuses it.
        let Ok(mut replayed) = FullCache::<Nd>::new(shape, 64, &dev).unwrap().with_kv_dtype(dtype) else { continue };
        ran.push(dtype);
        for (l, (q, k, v)) in layer_qkv.iter().enumerate() {
            replayed.attend(l, q.clone(), k.clone(), v.clone()).unwrap();
        }
        let kv: Vec<_> = layer_qkv.iter().map(|(_, k, v)| (k.clone(), v.clone())).collect();
        let mut filled = FullCache::<Nd>::new(shape, 64, &dev).unwrap().with_kv_dtype(dtype).unwrap().filled_from(&kv).unwrap();
        assert_eq!(filled.next_position(), t);
        assert_eq!(filled.stats().retained_bytes, replayed.stats().retained_bytes, "{dtype:?}");
        let mut r = |h: usize| tensor::<Nd, 3>(&random_values(&mut rng, h * D, 1.0), [h, 1, D], &dev);
        let (q, k, v) = (r(4), r(2), r(2));
        for l in 0..2 {
            let a = host(filled.attend(l, q.clone(), k.clone(), v.clone()).unwrap());
            let b = host(replayed.attend(l, q.clone(), k.clone(), v.clone()).unwrap());
            assert_eq!(a, b, "{dtype:?} layer {l}");
        }
        let refill = FullCache::<Nd>::new(shape, 64, &dev).unwrap().filled_from(&kv).unwrap().filled_from(&kv);
        assert!(refill.is_err());
    }
    assert!(ran.contains(&KvDtype::F32) && ran.contains(&KvDtype::Q8_0), "{ran:?}");
    let short = vec![layer_qkv[0].1.clone(); 1].into_iter().map(|k| (k.clone(), k)).collect::<Vec<_>>();
    assert!(FullCache::<Nd>::new(shape, 64, &dev).unwrap().filled_from(&short).is_err(), "one layer for two");
    let kv: Vec<_> = layer_qkv.iter().map(|(_, k, v)| (k.clone(), v.clone())).collect();
    assert!(FullCache::<Nd>::new(shape, 16, &dev).unwrap().filled_from(&kv).is_err(), "37 tokens in a cache of 16");
    let wrong: Vec<_> = layer_qkv.iter().map(|(q, _, v)| (q.clone(), v.clone())).collect();
    assert!(FullCache::<Nd>::new(shape, 64, &dev).unwrap().filled_from(&wrong).is_err(), "4 heads of keys for 2");
}
