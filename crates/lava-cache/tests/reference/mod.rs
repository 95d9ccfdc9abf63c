//! A deliberately naive, straight-line re-implementation of the reference
//! behaviour (SnapKV / PyramidKV / Ada-KV / LAVa as in the public reference
//! code: `adaptive_snapkv/monkeypatch/snapkv_utils.py` with GQA support, and the
//! LAVa prefill loop of `adaptive_mistral_hijack_lava.py`), written from the
//! description of its behaviour, sharing no code with the crate.
//!
//! Everything is `f64` loops over heads, queries and positions, except the
//! Ada-KV capacity rounding, which the reference does on `float32` tensors.
//! LAVa's layer budgets are produced by simulating the reference's prefill
//! cascade literally (after each layer: recompute the shares over the layers
//! seen so far, compress layers seen for the first time, truncate the already
//! compressed ones), not by the closed formula the crate uses.
//!
//! Project conventions applied on top of the reference (each marked `PROJECT:`
//! below, all documented in lava-algorithm.md or the crate docs):
//! - ties in top-k / sort go to the lower index (PyTorch leaves them unspecified);
//! - a layer whose budget reaches the prefix length keeps everything (Ada-KV
//!   code compresses at equality, rounding some heads to `n - 1`), and nothing
//!   is compressed when `B - w >= n` (CAKE: when `B >= n`, as the cakekv code);
//! - the head floor follows one of three rules ([`RefFloor`]): `int(alpha * B)`
//!   as the LAVa code runs it (its per-layer update writes a misspelled
//!   attribute, so the floor of the whole budget `B` stays), `int(alpha * (B -
//!   w))`, or the Ada-KV code's `int(alpha * B_l)`.
//!
//! CAKE (antgroup/cakekv defaults: `tau1 = tau2 = 1`, `gamma = 200`, average
//! pooling of kernel 5) is simulated the same way: window attention rows per
//! query, token scores `avgpool(mean + gamma * var)` averaged over the group,
//! the preference `entropy * variance` per layer, budgets from the preference
//! shares of `L * (B - w)` put through cakekv's `adjust_budgets`, and the
//! cascade over the layers seen so far.
#![allow(dead_code)]

/// Which scorer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefScorer {
    /// SnapKV family: group mean, then pooling.
    Snap,
    /// LAVa: pooling per query head, value-norm scale, group max.
    Lava,
    /// CAKE: mean + gamma * variance over the window queries, avgpool 5, group mean.
    Cake,
}

/// Which layer budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefLayers {
    Uniform,
    Pyramid,
    Entropy,
    /// CAKE preference shares and `adjust_budgets`.
    Cake,
}

/// Which head floor the adaptive heads get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefFloor {
    /// `int(alpha * B)`, `B` window included (the LAVa code as run).
    Reference,
    /// `int(alpha * (B - w))`.
    Matched,
    /// `int(alpha * B_l)` (the Ada-KV code).
    Layer,
}

#[derive(Debug, Clone)]
pub struct RefConfig {
    pub budget: usize,
    pub window: usize,
    pub kernel: usize,
    pub maxpool: bool,
    pub alpha: f64,
    pub beta: usize,
    pub scorer: RefScorer,
    pub layers: RefLayers,
    pub adaptive_heads: bool,
    pub floor: RefFloor,
}

/// One layer's inputs as nested vectors: `q[h][t][d]`, `k[g][t][d]`, `v[g][t][d]`.
#[derive(Debug, Clone)]
pub struct RefLayer {
    pub q: Vec<Vec<Vec<f64>>>,
    pub k: Vec<Vec<Vec<f64>>>,
    pub v: Vec<Vec<Vec<f64>>>,
}

impl RefLayer {
    /// From flat row-major `f32` data.
    pub fn from_flat(q: &[f32], k: &[f32], v: &[f32], hq: usize, hkv: usize, n_tok: usize, d: usize) -> Self {
        let nest = |x: &[f32], heads: usize| -> Vec<Vec<Vec<f64>>> {
            let mut out = Vec::new();
            for h in 0..heads {
                let mut rows = Vec::new();
                for t in 0..n_tok {
                    let mut row = Vec::new();
                    for e in 0..d {
                        row.push(x[(h * n_tok + t) * d + e] as f64);
                    }
                    rows.push(row);
                }
                out.push(rows);
            }
            out
        };
        RefLayer { q: nest(q, hq), k: nest(k, hkv), v: nest(v, hkv) }
    }
}

/// Result: per layer, the budget `B_l` and per KV head the kept positions (ascending).
#[derive(Debug, Clone, PartialEq)]
pub struct RefResult {
    pub budgets: Vec<usize>,
    pub kept: Vec<Vec<Vec<usize>>>,
}

/// `a` ranks before `b`? Higher value first; PROJECT: equal values, lower index first.
fn before(va: f64, ia: usize, vb: f64, ib: usize) -> bool {
    if va > vb {
        return true;
    }
    if va < vb {
        return false;
    }
    ia < ib
}

/// Descending sort of `values` returning (sorted values, their indices), by insertion.
fn sort_desc(values: &[f64]) -> (Vec<f64>, Vec<usize>) {
    let mut idx: Vec<usize> = Vec::new();
    for i in 0..values.len() {
        let mut pos = idx.len();
        while pos > 0 && before(values[i], i, values[idx[pos - 1]], idx[pos - 1]) {
            pos -= 1;
        }
        idx.insert(pos, i);
    }
    let vals = idx.iter().map(|&i| values[i]).collect();
    (vals, idx)
}

/// Mean over the window queries of the causal window attention, per query head: `s[h][j]`, `j < n`.
fn window_scores(layer: &RefLayer, window: usize) -> Vec<Vec<f64>> {
    let hq = layer.q.len();
    let hkv = layer.k.len();
    let group = hq / hkv;
    let n_tok = layer.q[0].len();
    let d = layer.q[0][0].len();
    let n = n_tok - window;
    let mut s = vec![vec![0.0; n]; hq];
    for h in 0..hq {
        let g = h / group;
        for i in 0..window {
            let qpos = n + i;
            // logits over visible keys 0..=qpos
            let mut logits = vec![0.0; qpos + 1];
            for j in 0..=qpos {
                let mut dot = 0.0;
                for e in 0..d {
                    dot += layer.q[h][qpos][e] * layer.k[g][j][e];
                }
                logits[j] = dot / (d as f64).sqrt();
            }
            let mut mx = f64::NEG_INFINITY;
            for &x in &logits {
                if x > mx {
                    mx = x;
                }
            }
            let mut z = 0.0;
            for &x in &logits {
                z += (x - mx).exp();
            }
            for j in 0..n {
                s[h][j] += (logits[j] - mx).exp() / z / window as f64;
            }
        }
    }
    s
}

/// PyTorch `max_pool1d` / `avg_pool1d(count_include_pad=True)`, stride 1, padding k/2.
fn pool1d(x: &[f64], kernel: usize, maxpool: bool) -> Vec<f64> {
    let n = x.len() as i64;
    let pad = (kernel / 2) as i64;
    let mut out = Vec::new();
    for j in 0..n {
        let mut best = f64::NEG_INFINITY;
        let mut sum = 0.0;
        for t in (j - pad)..=(j + pad) {
            let val = if t < 0 || t >= n {
                if maxpool {
                    f64::NEG_INFINITY
                } else {
                    0.0
                }
            } else {
                x[t as usize]
            };
            if val > best {
                best = val;
            }
            sum += val;
        }
        out.push(if maxpool { best } else { sum / kernel as f64 });
    }
    out
}

/// Every window query's causal attention over the prefix keys, per query
/// head: `a[h][i][j]`, `j < n`.
fn window_rows(layer: &RefLayer, window: usize) -> Vec<Vec<Vec<f64>>> {
    let hq = layer.q.len();
    let hkv = layer.k.len();
    let group = hq / hkv;
    let n_tok = layer.q[0].len();
    let d = layer.q[0][0].len();
    let n = n_tok - window;
    let mut a = vec![vec![vec![0.0; n]; window]; hq];
    for h in 0..hq {
        let g = h / group;
        for i in 0..window {
            let qpos = n + i;
            let mut logits = Vec::new();
            for j in 0..=qpos {
                let mut dot = 0.0;
                for e in 0..d {
                    dot += layer.q[h][qpos][e] * layer.k[g][j][e];
                }
                logits.push(dot / (d as f64).sqrt());
            }
            let mut mx = f64::NEG_INFINITY;
            for &x in &logits {
                mx = mx.max(x);
            }
            let mut z = 0.0;
            for &x in &logits {
                z += (x - mx).exp();
            }
            for j in 0..n {
                a[h][i][j] = (logits[j] - mx).exp() / z;
            }
        }
    }
    a
}

/// CAKE token scores per KV head and the layer's preference score.
fn cake_scores_and_preference(layer: &RefLayer, window: usize) -> (Vec<Vec<f64>>, f64) {
    let a = window_rows(layer, window);
    let hq = layer.q.len();
    let hkv = layer.k.len();
    let group = hq / hkv;
    let n = a[0][0].len();
    let mut entropy = 0.0;
    let mut variance = 0.0;
    let mut per_head = Vec::new();
    for h in 0..hq {
        let mut token = Vec::new();
        for j in 0..n {
            let mut mean = 0.0;
            for i in 0..window {
                mean += a[h][i][j];
                entropy -= a[h][i][j] * (a[h][i][j] + 1e-10).ln();
            }
            mean /= window as f64;
            let mut var = 0.0;
            if window > 1 {
                for i in 0..window {
                    var += (a[h][i][j] - mean) * (a[h][i][j] - mean);
                }
                var /= (window - 1) as f64; // torch.var: unbiased
            }
            variance += var;
            token.push(mean + 200.0 * var);
        }
        per_head.push(pool1d(&token, 5, false));
    }
    let mut out = Vec::new();
    for g in 0..hkv {
        let mut mean = vec![0.0; n];
        for h in g * group..(g + 1) * group {
            for j in 0..n {
                mean[j] += per_head[h][j] / group as f64;
            }
        }
        out.push(mean);
    }
    (out, entropy * variance) // tau1 = tau2 = 1
}

/// cakekv's `adjust_budgets` on numpy integer arrays.
fn adjust_budgets(budget_list: &[i64], total_budget: i64, seq_len: i64) -> Vec<i64> {
    let mut b: Vec<i64> = budget_list.to_vec();
    let mut total_excess = 0;
    for x in b.iter_mut() {
        if *x > seq_len {
            total_excess += *x - seq_len;
            *x = seq_len;
        }
    }
    if total_excess > 0 {
        let valid: Vec<usize> = (0..b.len()).filter(|&i| b[i] < seq_len).collect();
        if !valid.is_empty() {
            let per = total_excess / valid.len() as i64;
            let rem = (total_excess % valid.len() as i64) as usize;
            for &i in &valid {
                b[i] += per;
            }
            for &i in valid.iter().take(rem) {
                b[i] += 1;
            }
        }
    }
    let current: i64 = b.iter().sum();
    let diff = total_budget - current;
    if diff != 0 {
        let valid: Vec<usize> = if diff > 0 {
            (0..b.len()).filter(|&i| b[i] < seq_len).collect()
        } else {
            (0..b.len()).filter(|&i| b[i] > 1).collect()
        };
        if !valid.is_empty() {
            let per = diff.abs() / valid.len() as i64;
            let rem = (diff.abs() % valid.len() as i64) as usize;
            let sign = if diff > 0 { 1 } else { -1 };
            for &i in &valid {
                b[i] += sign * per;
            }
            for &i in valid.iter().take(rem) {
                b[i] += sign;
            }
        }
    }
    b
}

/// Per KV head token scores `S[g][j]`.
fn token_scores(layer: &RefLayer, cfg: &RefConfig) -> Vec<Vec<f64>> {
    if cfg.scorer == RefScorer::Cake {
        return cake_scores_and_preference(layer, cfg.window).0;
    }
    let s = window_scores(layer, cfg.window);
    let hq = layer.q.len();
    let hkv = layer.k.len();
    let group = hq / hkv;
    let n = s[0].len();
    let mut out = Vec::new();
    for g in 0..hkv {
        match cfg.scorer {
            RefScorer::Snap => {
                // GQA: mean over the group's query heads first, then pool.
                let mut mean = vec![0.0; n];
                for h in g * group..(g + 1) * group {
                    for j in 0..n {
                        mean[j] += s[h][j] / group as f64;
                    }
                }
                out.push(pool1d(&mean, cfg.kernel, cfg.maxpool));
            }
            RefScorer::Cake => unreachable!("handled above"),
            RefScorer::Lava => {
                // largest L1 norm of the head's prefix values
                let mut c = 0.0f64;
                for j in 0..n {
                    let mut l1 = 0.0;
                    for x in &layer.v[g][j] {
                        l1 += x.abs();
                    }
                    if l1 > c {
                        c = l1;
                    }
                }
                let mut best = vec![f64::NEG_INFINITY; n];
                for h in g * group..(g + 1) * group {
                    let p = pool1d(&s[h], cfg.kernel, cfg.maxpool);
                    for j in 0..n {
                        let scaled = p[j] * c;
                        if scaled > best[j] {
                            best[j] = scaled;
                        }
                    }
                }
                out.push(best);
            }
        }
    }
    out
}

/// Normalised entropy of the flattened scores.
fn sparsity(scores: &[Vec<f64>]) -> f64 {
    let mut flat = Vec::new();
    for row in scores {
        for &x in row {
            flat.push(x);
        }
    }
    let mut total = 0.0;
    for &x in &flat {
        total += x;
    }
    let mut h = 0.0;
    for &x in &flat {
        let p = x / (total + 1e-16);
        h -= p * (p + 1e-16).ln();
    }
    h / (flat.len() as f64).ln()
}

/// Python floor division for a positive divisor.
fn floordiv(a: i64, b: i64) -> i64 {
    let q = a / b;
    if (a % b != 0) && (a < 0) {
        q - 1
    } else {
        q
    }
}

/// PyramidKV budget of layer `l` of `layers`.
fn pyramid_budget(base: i64, n: i64, beta: i64, layers: i64, l: i64) -> i64 {
    let mut min_num = base / beta;
    let mut max_num = base * 2 - min_num;
    if max_num >= n {
        max_num = n;
        min_num = base * 2 - max_num;
    }
    let steps = floordiv(max_num - min_num, layers - 1);
    max_num - l * steps
}

/// torch.round on float32: round half to even.
fn round_half_even_f32(x: f32) -> f32 {
    let fl = x.floor();
    let diff = x - fl;
    if diff > 0.5 {
        fl + 1.0
    } else if diff < 0.5 {
        fl
    } else if (fl as i64) % 2 == 0 {
        fl
    } else {
        fl + 1.0
    }
}

/// Per-head prefix capacities for layer budget `b` (< n).
fn head_capacities(sorted: &[Vec<f64>], b: usize, cfg: &RefConfig) -> Vec<usize> {
    let hkv = sorted.len();
    let n = sorted[0].len();
    if !cfg.adaptive_heads {
        return vec![b; hkv];
    }
    // Flatten [hkv, n] of descending scores, take the top hkv*b as one pool.
    let mut flat = Vec::new();
    for row in sorted {
        for &x in row {
            flat.push(x);
        }
    }
    let (_, order) = sort_desc(&flat);
    let mut counts = vec![0usize; hkv];
    for &i in order.iter().take(hkv * b) {
        counts[i / n] += 1;
    }
    let floor_capacity = match cfg.floor {
        RefFloor::Layer => (b as f64 * cfg.alpha) as i64, // Python int()
        RefFloor::Reference => (cfg.budget as f64 * cfg.alpha) as i64,
        RefFloor::Matched => ((cfg.budget - cfg.window) as f64 * cfg.alpha) as i64,
    };
    let mut caps = Vec::new();
    for c in counts {
        let x = (c as f32) * ((1.0 - cfg.alpha) as f32) + floor_capacity as f32;
        let r = round_half_even_f32(x) as usize;
        caps.push(r.min(n));
    }
    caps
}

/// A layer's compressed state during the simulated prefill.
#[derive(Debug, Clone)]
struct LayerState {
    /// Per KV head, kept prefix positions in descending score order; None = not compressed.
    prefix: Option<Vec<Vec<usize>>>,
    sorted_scores: Vec<Vec<f64>>,
    sorted_idx: Vec<Vec<usize>>,
}

fn compress_fresh(state: &mut LayerState, b: usize, cfg: &RefConfig) {
    let n = state.sorted_scores[0].len();
    // PROJECT: `>=` (reference Ada-KV code: `>`).
    if b >= n {
        return;
    }
    let caps = head_capacities(&state.sorted_scores, b, cfg);
    let mut kept = Vec::new();
    for (g, &cap) in caps.iter().enumerate() {
        kept.push(state.sorted_idx[g][..cap].to_vec());
    }
    state.prefix = Some(kept);
}

fn recompress(state: &mut LayerState, b: usize, cfg: &RefConfig) {
    let caps = head_capacities(&state.sorted_scores, b, cfg);
    if let Some(kept) = state.prefix.as_mut() {
        for (g, &cap) in caps.iter().enumerate() {
            if kept[g].len() > cap {
                kept[g].truncate(cap);
            }
        }
    }
}

/// Runs the reference behaviour over all layers.
pub fn reference_select(layers: &[RefLayer], cfg: &RefConfig) -> RefResult {
    let n_layers = layers.len();
    let n_tok = layers[0].q[0].len();
    let hkv = layers[0].k.len();
    let w = cfg.window.min(n_tok);
    let n = n_tok - w;
    let base = cfg.budget - cfg.window;
    let everything: Vec<usize> = (0..n_tok).collect();
    // PROJECT: nothing is compressed when B - w >= n (cakekv: when the
    // prompt is at most B + w tokens long, i.e. B >= n).
    let keep_up_to = if cfg.layers == RefLayers::Cake { cfg.budget } else { base };
    if n <= keep_up_to {
        return RefResult { budgets: vec![n; n_layers], kept: vec![vec![everything; hkv]; n_layers] };
    }
    let mut states = Vec::new();
    let mut sparsities = Vec::new();
    for layer in layers {
        let scores = token_scores(layer, cfg);
        if cfg.layers == RefLayers::Cake {
            sparsities.push(cake_scores_and_preference(layer, cfg.window).1);
        } else {
            sparsities.push(sparsity(&scores));
        }
        let mut sorted_scores = Vec::new();
        let mut sorted_idx = Vec::new();
        for row in &scores {
            let (v, i) = sort_desc(row);
            sorted_scores.push(v);
            sorted_idx.push(i);
        }
        states.push(LayerState { prefix: None, sorted_scores, sorted_idx });
    }
    let mut budgets = vec![0usize; n_layers];
    match cfg.layers {
        RefLayers::Uniform | RefLayers::Pyramid => {
            for l in 0..n_layers {
                budgets[l] = if cfg.layers == RefLayers::Uniform {
                    base
                } else {
                    pyramid_budget(base as i64, n as i64, cfg.beta as i64, n_layers as i64, l as i64) as usize
                };
                compress_fresh(&mut states[l], budgets[l], cfg);
            }
        }
        RefLayers::Cake => {
            // The cascade: after layer `upto`, preference shares over layers
            // 0..=upto of the whole L * (B - w), adjusted to the prefix.
            let total = (base * n_layers) as i64;
            for upto in 0..n_layers {
                let mut sum = 0.0;
                for &p in &sparsities[..=upto] {
                    sum += p;
                }
                let mut shares = Vec::new();
                for l in 0..=upto {
                    shares.push((sparsities[l] / sum * total as f64) as i64);
                }
                let adjusted = adjust_budgets(&shares, total, n as i64);
                for l in 0..=upto {
                    let b = adjusted[l].max(0) as usize;
                    if states[l].prefix.is_some() {
                        recompress(&mut states[l], b, cfg);
                        // What the layer holds: the smallest budget so far.
                        budgets[l] = budgets[l].min(b);
                    } else {
                        compress_fresh(&mut states[l], b, cfg);
                        budgets[l] = b;
                    }
                }
            }
        }
        RefLayers::Entropy => {
            // The prefill cascade: after layer `upto`, shares over layers 0..=upto.
            let total = (base * n_layers) as f64;
            for upto in 0..n_layers {
                let mut sum = 0.0;
                for &e in &sparsities[..=upto] {
                    sum += e;
                }
                for l in 0..=upto {
                    let b = (sparsities[l] / sum * total) as usize; // Python int()
                    budgets[l] = b;
                    if states[l].prefix.is_some() {
                        recompress(&mut states[l], b, cfg);
                    } else {
                        compress_fresh(&mut states[l], b, cfg);
                    }
                }
            }
        }
    }
    let mut kept = Vec::new();
    for state in &states {
        let mut heads = Vec::new();
        for g in 0..hkv {
            let mut positions = match &state.prefix {
                Some(p) => p[g].clone(),
                None => (0..n).collect(),
            };
            positions.sort();
            for t in n..n_tok {
                positions.push(t);
            }
            heads.push(positions);
        }
        kept.push(heads);
    }
    RefResult { budgets, kept }
}
