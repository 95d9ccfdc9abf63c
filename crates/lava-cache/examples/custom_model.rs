//! Using the cache from a Burn model that is not lava's: a toy one-layer
//! attention block (no RoPE) that hands its projections to a `KvCache`.
//!
//! Run: `cargo run --release -p lava-cache --example custom_model`
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{backend::Backend, Distribution, Tensor};
use burn_ndarray::NdArray;
use lava_cache::{CacheError, CacheShape, CompressedCache, KvCache, PolicyConfig, PolicyName};

struct ToyAttention<B: Backend> {
    q: Linear<B>,
    kv: Linear<B>,
    heads: usize,
    head_dim: usize,
}

impl<B: Backend> ToyAttention<B> {
    /// `x [T, d]` -> `[T, d]`; one query head per KV head here (no GQA).
    fn forward(&self, x: Tensor<B, 2>, cache: &mut dyn KvCache<B>) -> Result<Tensor<B, 2>, CacheError> {
        let [t, d] = x.dims();
        let split = |y: Tensor<B, 2>| y.reshape([t, self.heads, self.head_dim]).swap_dims(0, 1);
        let q = split(self.q.forward(x.clone()));
        let k = split(self.kv.forward(x.clone()));
        let v = split(self.kv.forward(x));
        let out = cache.attend(0, q, k, v)?; // [H, T, D]
        Ok(out.swap_dims(0, 1).reshape([t, d]))
    }
}

fn main() -> Result<(), CacheError> {
    type B = NdArray<f32>;
    let device = Default::default();
    let (heads, head_dim) = (4, 16);
    let layer = ToyAttention::<B> {
        q: LinearConfig::new(64, 64).init(&device),
        kv: LinearConfig::new(64, 64).init(&device),
        heads,
        head_dim,
    };
    let shape = CacheShape { layers: 1, query_heads: heads, kv_heads: heads, head_dim };
    let mut config = PolicyConfig::new(PolicyName::Lava, 48);
    config.window = 16;
    let mut cache = CompressedCache::<B>::new(shape, config, 1024, &device)?;
    let prompt = Tensor::<B, 2>::random([300, 64], Distribution::Default, &device);
    layer.forward(prompt, &mut cache)?; // prefill: scores, evicts down to the budget
    for _ in 0..8 {
        let token = Tensor::<B, 2>::random([1, 64], Distribution::Default, &device);
        layer.forward(token, &mut cache)?; // decode: appends one token per head
    }
    println!(
        "kept {} of {} tokens ({} of {} bytes)",
        cache.retained_tokens(),
        cache.next_position() * heads,
        cache.retained_bytes(),
        cache.full_bytes()
    );
    Ok(())
}
