//! Next-token selection: greedy, or temperature sampling filtered by top-k,
//! nucleus (top-p) and min-p, with a seeded generator, so a run is
//! reproducible; the repetition penalty; and the log-probabilities of a
//! position's distribution (log-softmax of the raw logits).

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Highest logit (ties: lowest id).
    Greedy,
    /// Softmax at `temperature`, restricted to the `top_k` most likely tokens
    /// (0: all), then to the smallest set of those whose probability
    /// (renormalised over them) reaches `top_p`, then to those whose
    /// probability is at least `min_p` times the most likely one's (the
    /// Hugging Face order: temperature, top-k, top-p, min-p), drawn with a
    /// generator seeded by `seed`.
    TopP {
        /// Temperature (> 0).
        temperature: f32,
        /// Nucleus mass in (0, 1].
        top_p: f32,
        /// Tokens kept at most (0: no limit).
        top_k: usize,
        /// Least probability relative to the most likely token, in [0, 1] (0: no limit).
        min_p: f32,
        /// Seed.
        seed: u64,
    },
}

impl Sampling {
    /// The mode of choice `index` of several drawn from one prompt: the seed
    /// plus `index` (wrapping), so each choice is reproducible on its own and
    /// choice 0 is what a single-choice request draws.
    pub fn for_choice(self, index: usize) -> Sampling {
        match self {
            Sampling::TopP { temperature, top_p, top_k, min_p, seed } => {
                Sampling::TopP { temperature, top_p, top_k, min_p, seed: seed.wrapping_add(index as u64) }
            }
            Sampling::Greedy => Sampling::Greedy,
        }
    }
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
            Sampling::TopP { temperature, top_p, top_k, min_p, .. } => {
                let probs = candidates(logits, temperature, top_p, top_k, min_p);
                let mass: f64 = probs.iter().map(|p| p.1).sum();
                let mut r = self.next_f64() * mass;
                for p in &probs {
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

/// The tokens a draw may pick, most likely first (ties: lowest id), with
/// their unnormalised probabilities at `temperature`, after top-k, top-p and
/// min-p ([`Sampling::TopP`]). Never empty for a non-empty row.
fn candidates(logits: &[f32], temperature: f32, top_p: f32, top_k: usize, min_p: f32) -> Vec<(u32, f64)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> =
        logits.iter().enumerate().map(|(i, &l)| (i as u32, (((l - max) / temperature) as f64).exp())).collect();
    let order = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if top_k > 0 && top_k < probs.len() {
        probs.select_nth_unstable_by(top_k - 1, order);
        probs.truncate(top_k);
    }
    probs.sort_by(order);
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (i, p) in probs.iter().enumerate() {
        kept += p.1 / total;
        if kept >= top_p as f64 {
            cut = i + 1;
            break;
        }
    }
    probs.truncate(cut.max(1));
    if min_p > 0.0 {
        if let Some(&(_, best)) = probs.first() {
            let floor = best * min_p as f64;
            probs.retain(|p| p.1 >= floor);
        }
    }
    probs
}

/// The repetition penalty of Hugging Face and llama.cpp (CTRL's): the logit
/// of every token in `seen` (the prompt's and the generated tokens, each
/// once) is divided by `penalty` when positive and multiplied by it when
/// not, so `penalty > 1` discourages repeats and `penalty < 1` favours them.
/// Ids past the row are skipped.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: impl IntoIterator<Item = u32>, penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    for t in seen {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// A token's log-probability and the most likely tokens' at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub id: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens and their log-probabilities, most likely first
    /// (ties: lowest id).
    pub top: Vec<(u32, f32)>,
}

/// The log-probability of `id` under the distribution of `logits`
/// (log-softmax of the raw values, before any temperature or penalty) and
/// the `top` most likely tokens'.
pub fn token_logprob(logits: &[f32], id: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_z = f64::from(max) + sum.ln();
    let lp = |l: f32| (f64::from(l) - log_z) as f32;
    let logprob = logits.get(id as usize).map_or(f32::NEG_INFINITY, |&l| lp(l));
    let top = top.min(logits.len());
    let mut best: Vec<(u32, f32)> = Vec::new();
    if top > 0 {
        let mut idx: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if top < idx.len() {
            idx.select_nth_unstable_by(top - 1, order);
            idx.truncate(top);
        }
        idx.sort_by(order);
        best = idx.into_iter().map(|(i, l)| (i, lp(l))).collect();
    }
    TokenLogprob { id, logprob, top: best }
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
        let mode = Sampling::TopP { temperature: 1.0, top_p: 0.95, top_k: 0, min_p: 0.0, seed: 7 };
        let a: Vec<u32> = { let mut s = Sampler::new(mode); (0..50).map(|_| s.sample(&logits)).collect() };
        let b: Vec<u32> = { let mut s = Sampler::new(mode); (0..50).map(|_| s.sample(&logits)).collect() };
        assert_eq!(a, b, "same seed, same draws");
        assert!(a.contains(&2) && a.contains(&1));
        // top_p small keeps only the most likely token.
        let mut s = Sampler::new(Sampling::TopP { temperature: 1.0, top_p: 0.1, top_k: 0, min_p: 0.0, seed: 1 });
        assert!((0..20).all(|_| s.sample(&logits) == 2));
    }

    #[test]
    fn top_k_min_p_and_choice_seeds() {
        let logits = [1.0, 2.0, 3.0, 0.5, 2.9];
        let draws = |mode| -> Vec<u32> { let mut s = Sampler::new(mode); (0..200).map(|_| s.sample(&logits)).collect() };
        let mode = |top_k, min_p, seed| Sampling::TopP { temperature: 1.0, top_p: 1.0, top_k, min_p, seed };
        // top_k 2 keeps ids 2 and 4 only; both come up.
        let a = draws(mode(2, 0.0, 3));
        assert!(a.iter().all(|&t| t == 2 || t == 4) && a.contains(&2) && a.contains(&4));
        // top_k 1 is greedy.
        assert!(draws(mode(1, 0.0, 3)).iter().all(|&t| t == 2));
        // min_p 0.5 keeps p(t) >= 0.5 p(2): ids 2 and 4 (e^-0.1), not 1 (e^-1 = 0.37).
        let b = draws(mode(0, 0.5, 3));
        assert!(b.iter().all(|&t| t == 2 || t == 4) && b.contains(&4));
        // No filter: the old sampler's draws (top_k 0, min_p 0 change nothing).
        assert!(draws(mode(0, 0.0, 3)).contains(&1));
        // Choice i draws with seed + i.
        assert_eq!(mode(0, 0.0, 3).for_choice(2), mode(0, 0.0, 5));
        assert_eq!(Sampling::Greedy.for_choice(4), Sampling::Greedy);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let mut l = [2.0f32, -2.0, 2.0, 0.0];
        apply_repetition_penalty(&mut l, [0, 1, 3, 9], 2.0);
        assert_eq!(l, [1.0, -4.0, 2.0, 0.0]);
        let mut l = [2.0f32, -2.0];
        apply_repetition_penalty(&mut l, [0, 1], 0.5);
        assert_eq!(l, [4.0, -1.0]);
    }

    #[test]
    fn logprobs_are_the_log_softmax_of_the_raw_logits() {
        let logits = [1.0f32, 3.0, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        let t = token_logprob(&logits, 2, 3);
        assert!((f64::from(t.logprob) - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(t.top.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 3, 2]);
        assert!((f64::from(t.top[0].1) - (3.0 - z.ln())).abs() < 1e-6);
        let total: f64 = logits.iter().map(|&l| f64::from(token_logprob(&logits, 0, 0).logprob - 1.0 + l).exp()).sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        assert!(token_logprob(&logits, 0, 0).top.is_empty());
        assert_eq!(token_logprob(&logits, 0, 10).top.len(), 4);
    }
}
