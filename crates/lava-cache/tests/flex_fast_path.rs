//! The flex fast paths (decode attention read in place, in-place appends;
//! `lava_cache::flex`) against the generic tensor-op path on ndarray: the same
//! prompt and decode steps through `FullCache` and `CompressedCache` (with and
//! without decode-time eviction) give the same outputs on both backends.

mod common;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use common::{random_values, Rng};
use lava_cache::{CacheShape, CompressedCache, FullCache, KvCache, PolicyConfig, PolicyName};

type Nd = burn_ndarray::NdArray<f32>;
type Fx = burn_flex::Flex;

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
    let shape = CacheShape { layers: 2, query_heads: 6, kv_heads: 2, head_dim: 16 };
    // 1100 prompt tokens: the decode attention splits its rows across threads.
    let s = steps(&mut Rng::new(7), shape, &[1100, 1, 1, 1, 3, 1, 1]);
    let mut nd = FullCache::<Nd>::new(shape, 4096, &Default::default()).unwrap();
    let mut fx = FullCache::<Fx>::new(shape, 4096, &Default::default()).unwrap();
    assert_close(&run(&mut nd, shape, &s), &run(&mut fx, shape, &s), "full");
    assert_eq!(nd.allocated_bytes(), fx.allocated_bytes());
}

#[test]
fn compressed_cache_decode_on_flex_equals_ndarray() {
    let shape = CacheShape { layers: 3, query_heads: 4, kv_heads: 2, head_dim: 8 };
    let s = steps(&mut Rng::new(11), shape, &[120, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1]);
    for policy in [PolicyName::Lava, PolicyName::SnapKv, PolicyName::Streaming] {
        for slack in [None, Some(2)] {
            let config = PolicyConfig { window: 8, ..PolicyConfig::new(policy, 24) };
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
