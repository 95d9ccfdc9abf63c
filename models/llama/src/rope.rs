//! Rotary position embedding, Hugging Face "rotate-half" convention.
//!
//! Dimension `i < D/2` of a head is paired with dimension `i + D/2` and both are
//! rotated by `position * inv_freq[i]`. Positions are absolute: a cache that
//! dropped tokens still rotates new tokens at their true position.

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::config::LlamaConfig;

/// Per-pair inverse frequencies of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    inv_freq: Vec<f64>,
}

impl Rope {
    /// `inv_freq[i] = theta^(-2i/D)`, with Llama-3.1 scaling if the config has it.
    pub fn new(config: &LlamaConfig) -> Self {
        let d = config.head_dim;
        let mut inv_freq: Vec<f64> =
            (0..d / 2).map(|i| 1.0 / config.rope_theta.powf((2 * i) as f64 / d as f64)).collect();
        if let Some(s) = &config.rope_scaling {
            let old = s.original_max_position_embeddings as f64;
            let low_wavelen = old / s.low_freq_factor;
            let high_wavelen = old / s.high_freq_factor;
            for f in inv_freq.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                if wavelen > low_wavelen {
                    *f /= s.factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    *f = (1.0 - smooth) * *f / s.factor + smooth * *f;
                }
            }
        }
        Self { inv_freq }
    }

    /// Divides each frequency by a per-pair factor (GGUF `rope_freqs.weight`,
    /// llama.cpp's form of Llama-3.1 scaling).
    pub fn with_freq_factors(mut self, factors: &[f32]) -> Self {
        for (f, &k) in self.inv_freq.iter_mut().zip(factors) {
            if k > 0.0 {
                *f /= k as f64;
            }
        }
        self
    }

    /// `(cos, sin)`, each `[1, T, D/2]`, for absolute positions `start..start+T`.
    pub fn tables<B: Backend>(&self, start: usize, len: usize, device: &B::Device) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let positions: Vec<usize> = (start..start + len).collect();
        self.tables_at(&positions, device)
    }

    /// `(cos, sin)`, each `[1, T, D/2]`, for arbitrary absolute positions (one per row).
    pub fn tables_at<B: Backend>(&self, positions: &[usize], device: &B::Device) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let (half, len) = (self.inv_freq.len(), positions.len());
        let (cos, sin) = self.host_tables(positions);
        (
            Tensor::from_data(TensorData::new(cos, [1, len, half]), device),
            Tensor::from_data(TensorData::new(sin, [1, len, half]), device),
        )
    }

    /// `(cos, sin)` as row-major `[T, D/2]` host values, one row per position.
    pub fn host_tables(&self, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let n = positions.len() * self.inv_freq.len();
        let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for &p in positions {
            for &f in &self.inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        (cos, sin)
    }
}

/// Rotates `x` (`[H, T, D]`) with tables from [`Rope::tables`].
pub fn apply_rope<B: Backend>(x: Tensor<B, 3>, cos: &Tensor<B, 3>, sin: &Tensor<B, 3>) -> Tensor<B, 3> {
    let [h, t, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..h, 0..t, 0..half]);
    let x2 = x.slice([0..h, 0..t, half..d]);
    let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let r2 = x2 * cos.clone() + x1 * sin.clone();
    Tensor::cat(vec![r1, r2], 2)
}
