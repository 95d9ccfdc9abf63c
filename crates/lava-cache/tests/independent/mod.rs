//! A small, independent re-implementation of the re-scoring the compressed
//! cache does after prefill (decode-time eviction, chunked prefill), written
//! from the crate docs ("Re-scoring") with `f64` loops and sharing no code with
//! the crate: window attention of the last `w` queries over each head's kept
//! tokens, pooling by absolute position over the evictable tokens, the
//! policy's per-KV-head score, the head allocation on the ragged rows, and the
//! top tokens per head. It also keeps a host mirror of every token's q, k, v.
#![allow(dead_code)]

use lava_cache::{HeadAllocation, PolicyConfig, Pooling, Scorer};

/// Host copy of every token appended to one layer.
#[derive(Debug, Clone, Default)]
pub struct HostLayer {
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    /// Per position: `[H_q * D]`.
    pub q: Vec<Vec<f32>>,
    /// Per position: `[H_kv * D]`.
    pub k: Vec<Vec<f32>>,
    /// Per position: `[H_kv * D]`.
    pub v: Vec<Vec<f32>>,
}

impl HostLayer {
    pub fn new(hq: usize, hkv: usize, d: usize) -> Self {
        Self { hq, hkv, d, ..Self::default() }
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Appends `t` tokens given as `[H, T, D]` row-major data.
    pub fn push(&mut self, q: &[f32], k: &[f32], v: &[f32], t: usize) {
        let d = self.d;
        let gather = |x: &[f32], heads: usize, i: usize| -> Vec<f32> {
            (0..heads).flat_map(|h| x[(h * t + i) * d..(h * t + i + 1) * d].iter().copied()).collect()
        };
        for i in 0..t {
            self.q.push(gather(q, self.hq, i));
            self.k.push(gather(k, self.hkv, i));
            self.v.push(gather(v, self.hkv, i));
        }
    }

    fn q_row(&self, pos: usize, h: usize) -> &[f32] {
        &self.q[pos][h * self.d..(h + 1) * self.d]
    }

    fn k_row(&self, pos: usize, g: usize) -> &[f32] {
        &self.k[pos][g * self.d..(g + 1) * self.d]
    }

    fn v_row(&self, pos: usize, g: usize) -> &[f32] {
        &self.v[pos][g * self.d..(g + 1) * self.d]
    }

    /// Attention output `[H_q, T, D]` of the last `t` tokens' queries over
    /// `kept` (per KV head, positions before the chunk) plus the chunk itself,
    /// causal inside the chunk.
    pub fn attention(&self, kept: &[Vec<usize>], t: usize) -> Vec<f32> {
        let (hq, d) = (self.hq, self.d);
        let group = hq / self.hkv;
        let first = self.len() - t;
        let mut out = vec![0f32; hq * t * d];
        for h in 0..hq {
            let g = h / group;
            for i in 0..t {
                let qpos = first + i;
                let keys: Vec<usize> = kept[g].iter().copied().filter(|&p| p < first).chain(first..=qpos).collect();
                let probs = softmax(&keys.iter().map(|&p| dot(self.q_row(qpos, h), self.k_row(p, g)) / (d as f64).sqrt()).collect::<Vec<_>>());
                for e in 0..d {
                    let x: f64 = keys.iter().zip(&probs).map(|(&p, pr)| pr * self.v_row(p, g)[e] as f64).sum();
                    out[(h * t + i) * d + e] = x as f32;
                }
            }
        }
        out
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|x| (x - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

/// What a re-scoring decides for one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// Head budgets (unclamped, as `CompressedCache::head_budgets` reports).
    pub caps: Vec<usize>,
    /// Kept positions per KV head, ascending.
    pub kept: Vec<Vec<usize>>,
    /// Per KV head: (position, score) of the evictable tokens, by position.
    pub scores: Vec<Vec<(usize, f64)>>,
    /// CAKE only: the layer's preference (entropy times summed variance).
    pub preference: Option<f64>,
}

impl Expected {
    /// The layer's weight in a dynamic allocation: CAKE's preference, else the
    /// normalised entropy of the scores.
    pub fn weight(&self) -> f64 {
        self.preference.unwrap_or_else(|| self.entropy())
    }

    /// Normalised entropy of the scores (lava-algorithm.md §3), over all heads.
    pub fn entropy(&self) -> f64 {
        let all: Vec<f64> = self.scores.iter().flatten().map(|x| x.1).collect();
        if all.len() < 2 {
            return 0.0;
        }
        let total: f64 = all.iter().sum::<f64>() + 1e-16;
        let h: f64 = all.iter().map(|&x| x / total).map(|p| -p * (p + 1e-16).ln()).sum();
        h / (all.len() as f64).ln()
    }
}

/// Re-scores a layer holding `kept` (per KV head, every position it holds,
/// the newest tokens included) after `layer.len()` tokens, with `budget`
/// evictable tokens per head as the layer budget.
pub fn rescore(layer: &HostLayer, kept: &[Vec<usize>], config: &PolicyConfig, budget: usize) -> Expected {
    let comp = config.composition().expect("a compressing policy");
    let (hq, hkv, d) = (layer.hq, layer.hkv, layer.d);
    let group = hq / hkv;
    let a = layer.len();
    let r = config.window.min(a);
    let boundary = a - r;
    let cake = comp.scorer == Scorer::Cake;
    // CAKE pools with its own average kernel of 5.
    let (kernel, pooling) = if cake { (5, Pooling::AvgPool) } else { (config.kernel_size, config.pooling) };
    let half = kernel / 2;
    let (mut cake_entropy, mut cake_variance) = (0f64, 0f64);
    let mut scores: Vec<Vec<(usize, f64)>> = Vec::new();
    for g in 0..hkv {
        let mut held = kept[g].clone();
        held.sort_unstable();
        let prefix: Vec<usize> = held.iter().copied().filter(|&p| p < boundary).collect();
        let pool = |row: &[f64]| -> Vec<f64> {
            (0..prefix.len())
                .map(|j| {
                    let near: Vec<f64> =
                        (0..prefix.len()).filter(|&m| prefix[m].abs_diff(prefix[j]) <= half).map(|m| row[m]).collect();
                    match pooling {
                        Pooling::MaxPool => near.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        Pooling::AvgPool => near.iter().sum::<f64>() / kernel as f64,
                    }
                })
                .collect()
        };
        let row: Vec<f64> = if comp.scorer == Scorer::Streaming {
            prefix.iter().map(|&p| if p < config.sinks { f64::INFINITY } else { p as f64 }).collect()
        } else {
            // s[h][j]: attention of the window queries of query head h to prefix token j.
            let mut s = vec![vec![0f64; prefix.len()]; group];
            // CAKE: every window query's attention, a[h][i][j].
            let mut a_rows = vec![vec![vec![0f64; prefix.len()]; r]; group];
            for (hi, h) in (g * group..(g + 1) * group).enumerate() {
                for i in 0..r {
                    let qpos = boundary + i;
                    let visible: Vec<usize> = held.iter().copied().filter(|&p| p <= qpos).collect();
                    let logits: Vec<f64> =
                        visible.iter().map(|&p| dot(layer.q_row(qpos, h), layer.k_row(p, g)) / (d as f64).sqrt()).collect();
                    for (&p, pr) in visible.iter().zip(softmax(&logits)) {
                        if let Ok(j) = prefix.binary_search(&p) {
                            s[hi][j] += pr;
                            a_rows[hi][i][j] = pr;
                        }
                    }
                }
                if comp.scorer != Scorer::H2o {
                    s[hi].iter_mut().for_each(|x| *x /= r as f64);
                }
            }
            let group_mean = || -> Vec<f64> {
                (0..prefix.len()).map(|j| s.iter().map(|row| row[j]).sum::<f64>() / group as f64).collect()
            };
            match comp.scorer {
                Scorer::SnapKv => pool(&group_mean()),
                Scorer::H2o => group_mean(),
                Scorer::Lava => {
                    let c = prefix
                        .iter()
                        .map(|&p| layer.v_row(p, g).iter().map(|x| x.abs() as f64).sum::<f64>())
                        .fold(f64::NEG_INFINITY, f64::max);
                    let mut best = vec![f64::NEG_INFINITY; prefix.len()];
                    for row in &s {
                        for (b, x) in best.iter_mut().zip(pool(row)) {
                            *b = b.max(x * c);
                        }
                    }
                    best
                }
                Scorer::Cake => {
                    // mean + 200 * unbiased variance over the window queries,
                    // pooled per query head, then the group mean.
                    let mut out = vec![0f64; prefix.len()];
                    for rows in &a_rows {
                        let mut token = Vec::new();
                        for j in 0..prefix.len() {
                            let mean = rows.iter().map(|row| row[j]).sum::<f64>() / r as f64;
                            let var = if r > 1 { rows.iter().map(|row| (row[j] - mean).powi(2)).sum::<f64>() / (r - 1) as f64 } else { 0.0 };
                            cake_entropy -= rows.iter().map(|row| row[j] * (row[j] + 1e-10).ln()).sum::<f64>();
                            cake_variance += var;
                            token.push(mean + 200.0 * var);
                        }
                        for (o, x) in out.iter_mut().zip(pool(&token)) {
                            *o += x / group as f64;
                        }
                    }
                    out
                }
                Scorer::Streaming => unreachable!(),
            }
        };
        scores.push(prefix.iter().copied().zip(row).collect());
    }
    // Ranking: score descending, ties to the lower position.
    let ranked: Vec<Vec<(usize, f64)>> = scores
        .iter()
        .map(|row| {
            let mut r = row.clone();
            r.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
            r
        })
        .collect();
    let n_max = ranked.iter().map(Vec::len).max().unwrap_or(0);
    let caps: Vec<usize> = if budget >= n_max || comp.heads == HeadAllocation::Uniform {
        vec![budget; hkv]
    } else {
        // Ada-KV: pool the top H_kv * budget of all (head, rank) entries, rows
        // padded with -inf; ties to the lower head, then the lower rank.
        let mut entries: Vec<(f64, usize)> = Vec::new();
        for (g, row) in ranked.iter().enumerate() {
            for rank in 0..n_max {
                let score = row.get(rank).map_or(f64::NEG_INFINITY, |x| x.1);
                entries.push((score, g * n_max + rank));
            }
        }
        entries.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
        let mut counts = vec![0usize; hkv];
        entries.iter().take(hkv * budget).for_each(|e| counts[e.1 / n_max] += 1);
        let floor_of = match config.effective_floor_rule() {
            lava_cache::FloorRule::Reference => config.budget,
            lava_cache::FloorRule::Matched => config.budget - config.window,
            lava_cache::FloorRule::Layer => budget,
        };
        let floor = (config.floor_alpha * floor_of as f64).floor() as f32;
        let keep = (1.0 - config.floor_alpha) as f32;
        counts.iter().map(|&c| ((c as f32 * keep + floor).round_ties_even() as usize).min(n_max)).collect()
    };
    let kept_after = (0..hkv)
        .map(|g| {
            let mut out: Vec<usize> = ranked[g].iter().take(caps[g]).map(|x| x.0).collect();
            out.extend(kept[g].iter().copied().filter(|&p| p >= boundary));
            out.sort_unstable();
            out
        })
        .collect();
    let preference = cake.then_some(cake_entropy * cake_variance);
    Expected { caps, kept: kept_after, scores, preference }
}

/// PyramidKV layer budgets (lava-algorithm.md §3), independently.
pub fn pyramid(layers: usize, base: usize, n: usize, beta: usize) -> Vec<usize> {
    if layers == 1 {
        return vec![base];
    }
    let (base, n) = (base as i64, n as i64);
    let mut min = base / beta as i64;
    let mut max = 2 * base - min;
    if max >= n {
        max = n;
        min = 2 * base - max;
    }
    let diff = max - min;
    let div = layers as i64 - 1;
    let step = if diff >= 0 { diff / div } else { -((-diff + div - 1) / div) };
    (0..layers as i64).map(|l| (max - l * step).max(0) as usize).collect()
}
