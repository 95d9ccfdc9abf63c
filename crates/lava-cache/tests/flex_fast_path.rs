//! The flex fast paths (decode attention read in place, in-place appends;
//! `lava-flex`, behind lava-cache's `flex` feature) against the generic tensor-op path on ndarray: the same
//! prompt and decode steps through `FullCache` and `CompressedCache` (with and
//! without decode-time eviction) give the same outputs on both backends, and
//! the scorers' host window attention and value norms equal the tensor-op ones.
//! Needs the `flex` feature (on in the workspace build, which the binary turns on).

#![cfg(feature = "flex")]

mod common;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use common::{random_values, Rng};
use lava_cache::{CacheShape, CompressedCache, FullCache, KvCache, PolicyConfig, PolicyName};

type Nd = burn_ndarray::NdArray<f32>;
type Fx = lava_flex::Flex;

/// One `attend` call's inputs, as host values with shapes.
struct Step {
    t: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

fn steps(rng: &mut Rng, shape: CacheShape, lengths: &[usize]) -> Vec<Vec<Step>> {
    lengths
        .iter()
        .map(|&t| {
            (0..shape.layers)
                .map(|_| Step {
                    t,
                    q: random_values(rng, shape.query_heads * t * shape.head_dim, 1.5),
                    k: random_values(rng, shape.kv_heads * t * shape.head_dim, 1.5),
                    v: random_values(rng, shape.kv_heads * t * shape.head_dim, 1.0),
                })
                .collect()
        })
        .collect()
}

fn run<B: Backend, C: KvCache<B>>(cache: &mut C, shape: CacheShape, steps: &[Vec<Step>]) -> Vec<Vec<f32>> {
    let device = Default::default();
    let t3 = |v: &[f32], h: usize, t: usize| Tensor::<B, 3>::from_data(TensorData::new(v.to_vec(), [h, t, shape.head_dim]), &device);
    let mut outs = Vec::new();
    for step in steps {
        for (l, s) in step.iter().enumerate() {
            let out = cache
                .attend(l, t3(&s.q, shape.query_heads, s.t), t3(&s.k, shape.kv_heads, s.t), t3(&s.v, shape.kv_heads, s.t))
                .expect("attend");
            outs.push(out.into_data().to_vec::<f32>().expect("f32"));
        }
    }
    outs
}

fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let worst = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-5, "{what}: call {i} differs by {worst}");
    }
}

#[test]
fn full_cache_decode_on_flex_equals_ndarray() {
    // Head dim 16 takes the generic decode kernel, 64 the blocked one.
    for head_dim in [16, 64] {
        let shape = CacheShape { layers: 2, query_heads: 6, kv_heads: 2, head_dim };
        // 1100 prompt tokens: the decode attention splits its rows across threads.
        let s = steps(&mut Rng::new(7), shape, &[1100, 1, 1, 1, 3, 1, 1]);
        let mut nd = FullCache::<Nd>::new(shape, 4096, &Default::default()).unwrap();
        let mut fx = FullCache::<Fx>::new(shape, 4096, &Default::default()).unwrap();
        assert_close(&run(&mut nd, shape, &s), &run(&mut fx, shape, &s), &format!("full, head dim {head_dim}"));
        assert_eq!(nd.allocated_bytes(), fx.allocated_bytes());
    }
}

#[test]
fn compressed_cache_decode_on_flex_equals_ndarray() {
    compressed_cache_matches(CacheShape { layers: 3, query_heads: 4, kv_heads: 2, head_dim: 8 }, 120, 8, 24);
}

#[test]
fn compressed_cache_with_head_dim_64_on_flex_equals_ndarray() {
    // The blocked decode kernel, and the host window attention of the scorers
    // over a prompt longer than a decode block.
    compressed_cache_matches(CacheShape { layers: 2, query_heads: 6, kv_heads: 2, head_dim: 64 }, 300, 16, 48);
}

fn compressed_cache_matches(shape: CacheShape, prompt: usize, window: usize, budget: usize) {
    let s = steps(&mut Rng::new(11), shape, &[prompt, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1]);
    for policy in [PolicyName::Lava, PolicyName::SnapKv, PolicyName::Streaming] {
        for slack in [None, Some(2)] {
            let config = PolicyConfig { window, ..PolicyConfig::new(policy, budget) };
            let mut nd = with_slack(CompressedCache::<Nd>::new(shape, config.clone(), 1000, &Default::default()).unwrap(), slack);
            let mut fx = with_slack(CompressedCache::<Fx>::new(shape, config.clone(), 1000, &Default::default()).unwrap(), slack);
            let what = format!("{policy} slack {slack:?}");
            assert_close(&run(&mut nd, shape, &s), &run(&mut fx, shape, &s), &what);
            for l in 0..shape.layers {
                assert_eq!(nd.kept_positions(l).unwrap(), fx.kept_positions(l).unwrap(), "{what} layer {l}");
            }
            assert_eq!(nd.allocated_bytes(), fx.allocated_bytes(), "{what}");
        }
    }
}

fn with_slack<B: Backend>(cache: CompressedCache<B>, slack: Option<usize>) -> CompressedCache<B> {
    match slack {
        Some(s) => cache.with_decode_budget(s),
        None => cache.with_decode_headroom(3),
    }
}

#[test]
fn chunked_prefill_on_flex_equals_ndarray() {
    // Chunks of a prompt after the first: flash attention over each KV head's
    // slots (head dims 64 and 128) and the window attention of re-scoring on
    // the host, against the masked tensor ops on ndarray; head dim 16 takes the
    // generic chunk attention with the host window attention. Chunks shorter
    // and longer than the window, a 1-token decode step between chunks.
    for head_dim in [16, 64, 128] {
        let shape = CacheShape { layers: 2, query_heads: 6, kv_heads: 2, head_dim };
        let s = steps(&mut Rng::new(23), shape, &[70, 45, 9, 1, 100, 33, 1, 1]);
        for policy in [PolicyName::Lava, PolicyName::AdaSnapKv, PolicyName::H2o, PolicyName::Cake, PolicyName::Streaming, PolicyName::PyramidKv] {
            let config = PolicyConfig { window: 16, ..PolicyConfig::new(policy, 48) };
            let mut nd = CompressedCache::<Nd>::new(shape, config.clone(), 1000, &Default::default()).unwrap().with_chunked_prefill(true);
            let mut fx = CompressedCache::<Fx>::new(shape, config.clone(), 1000, &Default::default()).unwrap().with_chunked_prefill(true);
            let what = format!("{policy}, head dim {head_dim}");
            assert_close(&run(&mut nd, shape, &s), &run(&mut fx, shape, &s), &what);
            assert!(fx.rescores() > 0, "{what}: the chunks were re-scored");
            for l in 0..shape.layers {
                assert_eq!(nd.kept_positions(l).unwrap(), fx.kept_positions(l).unwrap(), "{what} layer {l}");
            }
            assert_eq!(nd.allocated_bytes(), fx.allocated_bytes(), "{what}");
        }
    }
}

#[test]
fn a_cloned_cache_is_not_changed_by_decoding_the_original() {
    // In-place appends must not write into storage a clone still shares.
    let shape = CacheShape { layers: 1, query_heads: 2, kv_heads: 1, head_dim: 4 };
    let s = steps(&mut Rng::new(3), shape, &[10, 1, 1]);
    let mut a = FullCache::<Fx>::new(shape, 64, &Default::default()).unwrap();
    run(&mut a, shape, &s[..1]);
    let mut b = a.clone();
    let from_a = run(&mut a, shape, &s[1..]);
    let from_b = run(&mut b, shape, &s[1..]);
    assert_eq!(from_a, from_b);
}

#[test]
fn scorer_inputs_on_flex_equal_ndarray() {
    use lava_cache::policy::scorer::{value_norm_max, window_attention};
    let (h_q, h_kv, n_tok, d) = (6, 2, 700, 64);
    let mut rng = Rng::new(5);
    let (q, k, v) = (random_values(&mut rng, h_q * n_tok * d, 1.5), random_values(&mut rng, h_kv * n_tok * d, 1.5), random_values(&mut rng, h_kv * n_tok * d, 1.0));
    fn t3<B: Backend>(x: &[f32], h: usize, n: usize, d: usize) -> Tensor<B, 3> {
        Tensor::from_data(TensorData::new(x.to_vec(), [h, n, d]), &Default::default())
    }
    for window in [1, 32, 700] {
        let a = window_attention(&t3::<Nd>(&q, h_q, n_tok, d), &t3::<Nd>(&k, h_kv, n_tok, d), window).unwrap();
        let b = window_attention(&t3::<Fx>(&q, h_q, n_tok, d), &t3::<Fx>(&k, h_kv, n_tok, d), window).unwrap();
        assert_eq!((a.rows(), a.cols()), (b.rows(), b.cols()));
        let worst = a.data().iter().zip(b.data()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-6, "window {window}: window attention differs by {worst}");
    }
    // H2O's cumulative attention: host column sums on flex, tensor ops on ndarray.
    for prefix in [0, 1, 300, 668, 700] {
        use lava_cache::policy::scorer::cumulative_attention;
        let a = cumulative_attention(&t3::<Nd>(&q, h_q, n_tok, d), &t3::<Nd>(&k, h_kv, n_tok, d), prefix).unwrap();
        let b = cumulative_attention(&t3::<Fx>(&q, h_q, n_tok, d), &t3::<Fx>(&k, h_kv, n_tok, d), prefix).unwrap();
        assert_eq!((a.rows(), a.cols()), (b.rows(), b.cols()));
        let worst = a.data().iter().zip(b.data()).map(|(x, y)| (x - y).abs() / x.abs().max(1.0)).fold(0f32, f32::max);
        assert!(worst <= 1e-4, "prefix {prefix}: cumulative attention differs by {worst}");
    }
    // A view (the first 500 tokens) and the whole tensor.
    for prefix in [0, 1, 500, 700] {
        let a = value_norm_max(&t3::<Nd>(&v, h_kv, n_tok, d), prefix).unwrap();
        let b = value_norm_max(&t3::<Fx>(&v, h_kv, n_tok, d), prefix).unwrap();
        let vb = t3::<Fx>(&v, h_kv, n_tok, d).slice([0..h_kv, 0..600, 0..d]);
        let c = value_norm_max(&vb, prefix.min(600)).unwrap();
        let a600 = value_norm_max(&t3::<Nd>(&v, h_kv, n_tok, d), prefix.min(600)).unwrap();
        for g in 0..h_kv {
            assert!((a[g] - b[g]).abs() <= 1e-4 * a[g].abs().max(1.0), "prefix {prefix} head {g}: {} vs {}", a[g], b[g]);
            assert!((a600[g] - c[g]).abs() <= 1e-4 * a600[g].abs().max(1.0), "view, prefix {prefix} head {g}");
        }
    }
}
