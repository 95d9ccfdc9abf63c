//! Next-token selection: greedy, or temperature + nucleus (top-p) sampling
//! with a seeded generator, so a run is reproducible.

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Highest logit (ties: lowest id).
    Greedy,
    /// Softmax at `temperature`, restricted to the smallest set of tokens whose
    /// probability reaches `top_p`, drawn with a generator seeded by `seed`.
    TopP {
        /// Temperature (> 0).
        temperature: f32,
        /// Nucleus mass in (0, 1].
        top_p: f32,
        /// Seed.
        seed: u64,
    },
}

/// A sampler with its random state.
#[derive(Debug, Clone)]
pub struct Sampler {
    mode: Sampling,
    state: u64,
}

impl Sampler {
    /// A sampler; the random state starts from the seed.
    pub fn new(mode: Sampling) -> Self {
        let state = match mode {
            Sampling::TopP { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Self { mode, state }
    }

    /// The sampling mode.
    pub fn mode(&self) -> Sampling {
        self.mode
    }

    fn next_f64(&mut self) -> f64 {
        // SplitMix64.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks a token id from one position's logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match self.mode {
            Sampling::Greedy => argmax(logits),
            Sampling::TopP { temperature, top_p, .. } => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut probs: Vec<(u32, f64)> = logits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| (i as u32, (((l - max) / temperature) as f64).exp()))
                    .collect();
                let total: f64 = probs.iter().map(|p| p.1).sum();
                probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let mut kept = 0.0;
                let mut cut = probs.len();
                for (i, p) in probs.iter().enumerate() {
                    kept += p.1 / total;
                    if kept >= top_p as f64 {
                        cut = i + 1;
                        break;
                    }
                }
                let probs = &probs[..cut];
                let mass: f64 = probs.iter().map(|p| p.1).sum();
                let mut r = self.next_f64() * mass;
                for p in probs {
                    r -= p.1;
                    if r <= 0.0 {
                        return p.0;
                    }
                }
                probs.last().map_or(0, |p| p.0)
            }
        }
    }
}

/// Index of the largest value (first on ties; NaN never wins unless every
/// value is NaN, then the last).
///
/// Two passes, both branch-free enough to vectorize: the largest non-NaN
/// value over 16 lanes (`f32::max` ignores NaN), then the first index holding
/// it. A greedy step of 16 sequences takes 16 of these over the vocabulary.
pub fn argmax(v: &[f32]) -> u32 {
    const LANES: usize = 16;
    let mut lanes = [f32::NAN; LANES];
    let chunks = v.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = m.max(x);
        }
    }
    let max = tail.iter().chain(&lanes).fold(f32::NAN, |m, &x| m.max(x));
    if max.is_nan() {
        return v.len().saturating_sub(1) as u32;
    }
    v.iter().position(|&x| x == max).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one value at a time.
    fn argmax_scalar(v: &[f32]) -> u32 {
        let mut best = 0usize;
        for (i, &x) in v.iter().enumerate() {
            if x > v[best] || v[best].is_nan() {
                best = i;
            }
        }
        best as u32
    }

    #[test]
    fn argmax_is_the_first_largest_non_nan() {
        let (nan, inf) = (f32::NAN, f32::INFINITY);
        let cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![nan],
            vec![nan, nan, nan],
            vec![nan, -inf],
            vec![-inf, -inf],
            vec![1.0, nan],
            vec![nan, 1.0, 2.0, 2.0],
            vec![0.0, -0.0],
            vec![-0.0, 0.0],
            vec![inf, 1.0, inf],
        ];
        for v in &cases {
            assert_eq!(argmax(v), argmax_scalar(v), "{v:?}");
        }
        // Long rows (lanes and tail) with ties, NaNs and the maximum everywhere.
        let mut state = 12345u64;
        for len in [15, 16, 17, 33, 100, 49152] {
            for trial in 0..20 {
                let mut v: Vec<f32> = (0..len)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ((state >> 40) % 7) as f32 - 3.0
                    })
                    .collect();
                if trial % 3 == 0 {
                    v[(trial * 7) % len] = nan;
                }
                if trial % 4 == 1 {
                    v[len - 1] = 9.0;
                }
                assert_eq!(argmax(&v), argmax_scalar(&v), "len {len} trial {trial}");
            }
        }
    }

    #[test]
    fn greedy_and_seeded_sampling() {
        assert_eq!(argmax(&[0.1, 3.0, 3.0, -1.0]), 1);
        let logits = [1.0, 2.0, 3.0, 0.5];
        let mode = Sampling::TopP { temperature: 1.0, top_p: 0.95, seed: 7 };
        let a: Vec<u32> = { let mut s = Sampler::new(mode); (0..50).map(|_| s.sample(&logits)).collect() };
        let b: Vec<u32> = { let mut s = Sampler::new(mode); (0..50).map(|_| s.sample(&logits)).collect() };
        assert_eq!(a, b, "same seed, same draws");
        assert!(a.contains(&2) && a.contains(&1));
        // top_p small keeps only the most likely token.
        let mut s = Sampler::new(Sampling::TopP { temperature: 1.0, top_p: 0.1, seed: 1 });
        assert!((0..20).all(|_| s.sample(&logits) == 2));
    }
}
