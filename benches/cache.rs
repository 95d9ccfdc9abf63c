//! Criterion benches of the hot paths, one layer of SmolLM2-135M's shape
//! (9 query heads, 3 KV heads, head dim 64) on the flex CPU backend:
//!
//! - `decode_step`: one token's `attend` vs context length, full cache vs
//!   LAVa at budget 128 (the KV read that compression removes);
//! - `lava_score`: the LAVa scoring of one layer at 1k/4k/8k prompt tokens;
//! - `gather`: building one layer's compressed storage from a selection
//!   (the eviction's device-side gather);
//! - `append`: a decode `attend` at 64 tokens of context, where the append
//!   dominates;
//! - `dequantize`: Q4_1 to f32 of one 576 x 1536 projection.
//!
//! `cargo bench --bench cache` runs them; CI only compiles them.

use std::time::{Duration, Instant};

use burn::tensor::{Distribution, Tensor};
use burn_flex::{Flex, FlexDevice};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lava_cache::policy::scorer::score_layer;
use lava_cache::{select_positions, CacheShape, CompressedCache, FullCache, KvCache, LayerQkv, PolicyConfig, PolicyName, Scorer};
use lava_llama::gguf::{GgmlType, GgufFile, GgufWriter};

type B = Flex<f32>;

const SHAPE: CacheShape = CacheShape { layers: 1, query_heads: 9, kv_heads: 3, head_dim: 64 };
const STEPS: u64 = 32;

fn qkv(n: usize) -> LayerQkv<B> {
    let d = FlexDevice;
    LayerQkv::new(
        Tensor::random([9, n, 64], Distribution::Normal(0.0, 1.0), &d),
        Tensor::random([3, n, 64], Distribution::Normal(0.0, 1.0), &d),
        Tensor::random([3, n, 64], Distribution::Normal(0.0, 1.0), &d),
    )
}

fn token() -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
    let d = FlexDevice;
    (
        Tensor::random([9, 1, 64], Distribution::Normal(0.0, 1.0), &d),
        Tensor::random([3, 1, 64], Distribution::Normal(0.0, 1.0), &d),
        Tensor::random([3, 1, 64], Distribution::Normal(0.0, 1.0), &d),
    )
}

/// A cache holding the prefill `x` for `policy` (`None`: full).
fn filled(x: &LayerQkv<B>, policy: Option<PolicyConfig>) -> Box<dyn KvCache<B>> {
    let n = x.k.dims()[1];
    let max = n + 4096;
    match policy {
        None => {
            let mut c = FullCache::new(SHAPE, max, &FlexDevice).expect("cache");
            c.attend(0, x.q.clone(), x.k.clone(), x.v.clone()).expect("prefill");
            Box::new(c)
        }
        Some(p) => {
            let sel = select_positions(std::slice::from_ref(x), &p).expect("select");
            let c = CompressedCache::new(SHAPE, p, max, &FlexDevice)
                .expect("cache")
                .with_decode_headroom(STEPS as usize)
                .filled_from_selection(&[(x.k.clone(), x.v.clone())], &sel)
                .expect("fill");
            Box::new(c)
        }
    }
}

/// Times `iters` decode steps, `STEPS` at a time from a fresh copy of the
/// prefilled cache (so the context grows by at most `STEPS`).
fn time_steps(x: &LayerQkv<B>, policy: Option<PolicyConfig>, iters: u64) -> Duration {
    let (q, k, v) = token();
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < iters {
        let mut cache = filled(x, policy.clone());
        let steps = STEPS.min(iters - done);
        let t = Instant::now();
        for _ in 0..steps {
            let o = cache.attend(0, q.clone(), k.clone(), v.clone()).expect("decode");
            std::hint::black_box(o.into_data());
        }
        total += t.elapsed();
        done += steps;
    }
    total
}

fn decode_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_step");
    g.sample_size(20);
    for n in [1024, 4096, 8192] {
        let x = qkv(n);
        g.bench_with_input(BenchmarkId::new("full", n), &x, |b, x| b.iter_custom(|iters| time_steps(x, None, iters)));
        let lava = PolicyConfig::new(PolicyName::Lava, 128);
        g.bench_with_input(BenchmarkId::new("lava_b128", n), &x, |b, x| b.iter_custom(|iters| time_steps(x, Some(lava.clone()), iters)));
    }
    g.finish();
}

fn lava_score(c: &mut Criterion) {
    let mut g = c.benchmark_group("lava_score");
    g.sample_size(10);
    let config = PolicyConfig::new(PolicyName::Lava, 128);
    for n in [1024, 4096, 8192] {
        let x = qkv(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &x, |b, x| {
            b.iter(|| score_layer(&x.q, &x.k, &x.v, &config, Scorer::Lava).expect("score"))
        });
    }
    g.finish();
}

fn gather(c: &mut Criterion) {
    let mut g = c.benchmark_group("gather");
    g.sample_size(20);
    let config = PolicyConfig::new(PolicyName::Lava, 128);
    for n in [1024, 8192] {
        let x = qkv(n);
        let sel = select_positions(std::slice::from_ref(&x), &config).expect("select");
        let kv = [(x.k.clone(), x.v.clone())];
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| CompressedCache::<B>::from_selection(SHAPE, config.clone(), n + 64, &FlexDevice, &kv, &sel).expect("gather"))
        });
    }
    g.finish();
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    let x = qkv(64);
    g.bench_function("full_at_64", |b| b.iter_custom(|iters| time_steps(&x, None, iters)));
    let snap = PolicyConfig::new(PolicyName::SnapKv, 48);
    g.bench_function("compressed_at_64", |b| b.iter_custom(|iters| time_steps(&x, Some(snap.clone()), iters)));
    g.finish();
}

fn dequantize(c: &mut Criterion) {
    let values: Vec<f32> = (0..576 * 1536).map(|i| ((i as f32) * 0.37).sin()).collect();
    let mut w = GgufWriter::new();
    w.tensor("w", &[1536, 576], GgmlType::Q4_1, &values);
    let file = GgufFile::from_bytes("bench.gguf", w.to_bytes()).expect("gguf");
    c.bench_function("dequantize_q4_1_576x1536", |b| b.iter(|| file.dequantize("w").expect("dequantize")));
}

criterion_group!(benches, decode_step, lava_score, gather, append, dequantize);
criterion_main!(benches);
