//! Helpers shared by the integration tests: a tiny deterministic PRNG and
//! tensor constructors on the ndarray backend.
#![allow(dead_code)]

use burn::tensor::{Tensor, TensorData};

/// The backend the suite runs on: ndarray, or CUDA with `--features cuda`.
#[cfg(not(feature = "cuda"))]
pub type B = burn_ndarray::NdArray<f32>;
/// The backend the suite runs on: ndarray, or CUDA with `--features cuda`.
#[cfg(feature = "cuda")]
pub type B = burn_cuda::Cuda<f32, i32>;

pub fn device() -> burn::tensor::Device<B> {
    Default::default()
}

/// SplitMix64: deterministic, dependency-free.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Approximately standard normal (sum of 4 uniforms, rescaled).
    pub fn normal(&mut self) -> f64 {
        let s: f64 = (0..4).map(|_| self.unit()).sum();
        (s - 2.0) * 3f64.sqrt()
    }

    /// Uniform integer in [lo, hi].
    pub fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}

/// `heads * tokens * dim` values, normal with standard deviation `scale`, as f32.
pub fn random_values(rng: &mut Rng, len: usize, scale: f64) -> Vec<f32> {
    (0..len).map(|_| (rng.normal() * scale) as f32).collect()
}

pub fn tensor3(data: Vec<f32>, shape: [usize; 3]) -> Tensor<B, 3> {
    Tensor::from_data(TensorData::new(data, shape), &device())
}

pub fn to_vec3(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().expect("f32 data")
}

/// One random layer: host copies and tensors of q `[hq, n, d]`, k and v `[hkv, n, d]`.
#[derive(Debug, Clone)]
pub struct RandomLayer {
    pub hq: usize,
    pub hkv: usize,
    pub n: usize,
    pub d: usize,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl RandomLayer {
    pub fn new(rng: &mut Rng, hq: usize, hkv: usize, n: usize, d: usize, qk_scale: f64) -> Self {
        Self {
            hq,
            hkv,
            n,
            d,
            q: random_values(rng, hq * n * d, qk_scale),
            k: random_values(rng, hkv * n * d, qk_scale),
            v: random_values(rng, hkv * n * d, 1.0),
        }
    }

    pub fn qkv(&self) -> lava_cache::LayerQkv<B> {
        lava_cache::LayerQkv::new(
            tensor3(self.q.clone(), [self.hq, self.n, self.d]),
            tensor3(self.k.clone(), [self.hkv, self.n, self.d]),
            tensor3(self.v.clone(), [self.hkv, self.n, self.d]),
        )
    }
}
