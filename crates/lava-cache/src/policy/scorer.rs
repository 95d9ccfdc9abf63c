//! Token scorers: part 1 of a policy (`lava-algorithm.md` §1, §2, §6).
//!
//! The attention that scores tokens is computed on the backend, never as an
//! `N x N` matrix: [`window_attention`] multiplies only the `w` window queries by
//! the `N` keys, and [`cumulative_attention`] (H2O) walks the prompt queries in
//! chunks. The results, `[H_q, n]` matrices over the `n = N - w` evictable prefix
//! tokens, are read back to the host, where pooling and the per-KV-head
//! aggregation ([`snapkv_scores`], [`lava_scores`], [`h2o_scores`]) are plain Rust.
//!
//! Query heads `g*G .. (g+1)*G` share KV head `g` (Hugging Face `repeat_kv`
//! order), as in [`causal_attention`](crate::causal_attention).

use burn::tensor::{activation::softmax, backend::Backend, Bool, FloatDType, Tensor, TensorData};

use super::{layer_budget, PolicyConfig, Pooling, Scorer};
use crate::{host::to_host, CacheError};

/// A row-major host matrix of scores, `[rows, cols]`: one row per head (query
/// head or KV head, as documented where it is produced), one column per prefix
/// token `j < n`. Always holds exactly `rows * cols` values.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreMatrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl ScoreMatrix {
    /// A matrix from row-major data; errors if `data.len() != rows * cols`.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, CacheError> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(CacheError::ShapeMismatch {
                what: "score matrix data",
                expected: format!("{rows} * {cols} values"),
                found: format!("{} values", data.len()),
            });
        }
        Ok(Self { rows, cols, data })
    }

    /// Number of rows (heads).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (prefix tokens `n`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// All values, row after row.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Row `r`, or `None` if `r >= rows`.
    pub fn get_row(&self, r: usize) -> Option<&[f32]> {
        (r < self.rows).then(|| self.row(r))
    }

    /// Iterator over the rows.
    pub fn iter_rows(&self) -> impl Iterator<Item = &[f32]> + '_ {
        (0..self.rows).map(move |r| self.row(r))
    }

    /// Row `r`; callers guarantee `r < rows` (the constructor guarantees the length).
    pub(crate) fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// Checks `q [H_q, N, D]` against `k [H_kv, N, D]` ([`crate::check_qkv`]);
/// returns `(H_q, H_kv, N, D)`.
fn check_qk<B: Backend>(q: &Tensor<B, 3>, k: &Tensor<B, 3>) -> Result<(usize, usize, usize, usize), CacheError> {
    let [h_q, h_kv, n_tok, d] = crate::check_qkv(q, k, None)?;
    Ok((h_q, h_kv, n_tok, d))
}

/// Softmax over the last dimension of `[H_kv, G*R, N]` logits of query rows
/// against all keys, with key `j` hidden from row `(gi, i)` when
/// `j > first_query + i` (causal), computed in `f32`.
fn masked_probs<B: Backend>(
    q_rows: Tensor<B, 3>,
    k: &Tensor<B, 3>,
    group: usize,
    first_query: usize,
    rows: usize,
) -> Tensor<B, 3> {
    let [h_kv, gr, d] = q_rows.dims();
    let n_tok = k.dims()[1];
    let device = q_rows.device();
    let scale = 1.0 / (d as f64).sqrt();
    let logits = q_rows.matmul(k.clone().swap_dims(1, 2)).mul_scalar(scale).cast(FloatDType::F32);
    let mut future = Vec::with_capacity(gr * n_tok);
    for _ in 0..group {
        for i in 0..rows {
            future.extend((0..n_tok).map(|j| j > first_query + i));
        }
    }
    let future = Tensor::<B, 2, Bool>::from_data(TensorData::new(future, [gr, n_tok]), &device)
        .unsqueeze_dim::<3>(0)
        .expand([h_kv, gr, n_tok]);
    softmax(logits.mask_fill(future, f32::NEG_INFINITY), 2)
}

/// The window queries of `q [H_q, N, D]` grouped by KV head, `[H_kv, G*w, D]`,
/// with `G` and the prefix length `n = N - window`; `None` when `n = 0`.
/// Errors on mismatched shapes or a window outside `1..=N`.
fn window_queries<B: Backend>(q: &Tensor<B, 3>, k: &Tensor<B, 3>, window: usize) -> Result<Option<(Tensor<B, 3>, usize, usize)>, CacheError> {
    let (h_q, h_kv, n_tok, d) = check_qk(q, k)?;
    if window == 0 || window > n_tok {
        return Err(CacheError::InvalidParameters(format!(
            "the window ({window}) must hold between 1 and N = {n_tok} tokens"
        )));
    }
    let n = n_tok - window;
    if n == 0 {
        return Ok(None);
    }
    let group = h_q / h_kv;
    Ok(Some((q.clone().slice([0..h_q, n..n_tok, 0..d]).reshape([h_kv, group * window, d]), group, n)))
}

/// Window attention `s[h, j]` of `lava-algorithm.md` §1, `[H_q, n]` with
/// `n = N - window`.
///
/// For query head `h` and window query `i` (position `n + i`),
/// `A[h,i,j] = softmax_j(q[h,n+i] . k[g(h),j] / sqrt(D))` over all `N` keys with
/// keys `j > n + i` masked; `s[h,j] = mean_i A[h,i,j]` for `j < n`. Computed on
/// the backend in `f32` as one `[H_kv, G*w, N]` product (no `N x N` matrix).
///
/// `q`: `[H_q, N, D]`, `k`: `[H_kv, N, D]`, `1 <= window <= N`.
pub fn window_attention<B: Backend>(q: &Tensor<B, 3>, k: &Tensor<B, 3>, window: usize) -> Result<ScoreMatrix, CacheError> {
    let Some((q_window, group, n)) = window_queries(q, k, window)? else {
        return ScoreMatrix::new(q.dims()[0], 0, Vec::new());
    };
    let (h_q, h_kv) = (q.dims()[0], k.dims()[0]);
    if let Some(mean) = crate::fast_path::window_attention_mean(q_window.clone(), k, group, window) {
        return ScoreMatrix::new(h_q, n, mean);
    }
    let probs = masked_probs(q_window, k, group, n, window);
    let mean = probs.slice([0..h_kv, 0..group * window, 0..n]).reshape([h_q, window, n]).mean_dim(1);
    ScoreMatrix::new(h_q, n, to_host(mean)?)
}

/// The window attention itself, `A[h, i, j]` of `lava-algorithm.md` §1 for
/// the prefix keys `j < n = N - window`: `[H_q, window, n]`, row-major, read
/// back to the host (CAKE needs every window query's row, not only their mean).
///
/// `q`: `[H_q, N, D]`, `k`: `[H_kv, N, D]`, `1 <= window <= N`.
pub fn window_attention_rows<B: Backend>(q: &Tensor<B, 3>, k: &Tensor<B, 3>, window: usize) -> Result<Vec<f32>, CacheError> {
    let Some((q_window, group, n)) = window_queries(q, k, window)? else {
        return Ok(Vec::new());
    };
    let h_kv = k.dims()[0];
    let probs = masked_probs(q_window, k, group, n, window);
    to_host(probs.slice([0..h_kv, 0..group * window, 0..n]))
}

/// CAKE's fixed settings (cakekv defaults): `gamma` weighting the variance in
/// the token score, the preference temperatures `tau1`, `tau2`, and the
/// average pooling of kernel 5 it applies whatever the policy's pooling.
pub mod cake {
    /// Weight of the variance in the token score.
    pub const GAMMA: f64 = 200.0;
    /// Entropy temperature of the layer preference.
    pub const TAU1: f64 = 1.0;
    /// Variance temperature of the layer preference.
    pub const TAU2: f64 = 1.0;
    /// Average-pooling kernel of the token score.
    pub const KERNEL: usize = 5;
}

/// CAKE scores and layer preference (`lava-algorithm.md` §6, cakekv defaults)
/// from the window attention rows `attn` (`[H_q, r, n]`, see
/// [`window_attention_rows`]) of a layer with `kv_heads` KV heads.
///
/// Per query head and token: `m = mean_i A[h,i,j]`, `v` the unbiased variance
/// of `A[h,i,j]` across the `r` window queries (0 when `r < 2`); the token
/// score is `avgpool_5(m + gamma * v)` averaged over the `G` query heads of
/// each KV head (`[H_kv, n]`). The preference is `H^(1/tau1) * V^(1/tau2)` with
/// `H = -sum A ln(A + 1e-10)` over every head, window query and prefix key and
/// `V = sum_{h,j} v[h,j]` ([`cake_preference`]). Computed in `f64`, scores
/// returned as `f32`.
pub fn cake_scores(attn: &[f32], query_heads: usize, rows: usize, kv_heads: usize) -> Result<(ScoreMatrix, f64), CacheError> {
    let n = if query_heads * rows == 0 { 0 } else { attn.len() / (query_heads * rows) };
    let positions: Vec<usize> = (0..n).collect();
    let (scores, entropy, variance) = cake_statistics(attn, query_heads, rows, kv_heads, &positions)?;
    Ok((scores, cake_preference(entropy, variance)))
}

/// CAKE's layer preference `H^(1/tau1) * V^(1/tau2)` from the attention
/// entropy `H` and the summed variance `V` (0 if not finite).
pub fn cake_preference(entropy: f64, variance: f64) -> f64 {
    let p = entropy.max(0.0).powf(1.0 / cake::TAU1) * variance.max(0.0).powf(1.0 / cake::TAU2);
    if p.is_finite() {
        p
    } else {
        0.0
    }
}

/// The parts of [`cake_scores`]: the `[H_kv, n]` token scores, the entropy `H`
/// and the summed variance `V`, for attention rows `attn` (`[H_q, r, n]`) over
/// tokens at absolute `positions` (strictly increasing, length `n`; pooling
/// uses them as [`pool_at`] does, so `0..n` is the plain pooling of a prefill).
pub fn cake_statistics(
    attn: &[f32],
    query_heads: usize,
    rows: usize,
    kv_heads: usize,
    positions: &[usize],
) -> Result<(ScoreMatrix, f64, f64), CacheError> {
    let n = positions.len();
    if kv_heads == 0 || query_heads % kv_heads != 0 || rows == 0 || attn.len() != query_heads * rows * n {
        return Err(CacheError::ShapeMismatch {
            what: "window attention rows",
            expected: format!("[{query_heads} (a multiple of {kv_heads}), {rows} > 0, {n}] values"),
            found: format!("{} values", attn.len()),
        });
    }
    let group = query_heads / kv_heads;
    let (mut entropy, mut variance) = (0f64, 0f64);
    let mut data = vec![0f32; kv_heads * n];
    for h in 0..query_heads {
        let head = &attn[h * rows * n..(h + 1) * rows * n];
        let mut token = vec![0f32; n];
        for (j, t) in token.iter_mut().enumerate() {
            let column = (0..rows).map(|i| head[i * n + j] as f64);
            let mean = column.clone().sum::<f64>() / rows as f64;
            let var = if rows < 2 { 0.0 } else { column.clone().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (rows - 1) as f64 };
            entropy -= column.map(|x| x * (x + 1e-10).ln()).sum::<f64>();
            variance += var;
            *t = (mean + cake::GAMMA * var) as f32;
        }
        let pooled = pool_at(positions, &token, cake::KERNEL, Pooling::AvgPool);
        let out = &mut data[(h / group) * n..(h / group + 1) * n];
        out.iter_mut().zip(pooled).for_each(|(o, x)| *o += x / group as f32);
    }
    Ok((ScoreMatrix::new(kv_heads, n, data)?, entropy, variance))
}

/// Logits per chunk of [`cumulative_attention`]: at most about 4 M at a time
/// (and at most [`CUMULATIVE_CHUNK_ROWS`] query rows, so that the keys after
/// each chunk, masked for all its rows, are mostly skipped).
const CUMULATIVE_CHUNK_ELEMS: usize = 1 << 22;
/// Most query rows per chunk of [`cumulative_attention`].
const CUMULATIVE_CHUNK_ROWS: usize = 256;

/// Cumulative attention (H2O, `lava-algorithm.md` §6): `[H_q, prefix]` with
/// `c[h, j] = sum_i A[h,i,j]` over all `N` prompt queries `i` (causal), for
/// `j < prefix`.
///
/// The queries are processed in chunks so that at most about 4 M logits exist
/// at a time; the `N x N` attention is never materialised.
pub fn cumulative_attention<B: Backend>(q: &Tensor<B, 3>, k: &Tensor<B, 3>, prefix: usize) -> Result<ScoreMatrix, CacheError> {
    let [h_q, n_tok, _] = q.dims();
    let chunk = (CUMULATIVE_CHUNK_ELEMS / (h_q * n_tok).max(1)).clamp(1, CUMULATIVE_CHUNK_ROWS);
    cumulative_attention_in_chunks(q, k, prefix, chunk)
}

/// [`cumulative_attention`] with `chunk` query rows per step (at least 1).
fn cumulative_attention_in_chunks<B: Backend>(
    q: &Tensor<B, 3>,
    k: &Tensor<B, 3>,
    prefix: usize,
    chunk: usize,
) -> Result<ScoreMatrix, CacheError> {
    let (h_q, h_kv, n_tok, d) = check_qk(q, k)?;
    let chunk = chunk.max(1);
    if prefix > n_tok {
        return Err(CacheError::InvalidParameters(format!(
            "the prefix ({prefix}) exceeds the sequence length ({n_tok})"
        )));
    }
    if prefix == 0 {
        return ScoreMatrix::new(h_q, 0, Vec::new());
    }
    let group = h_q / h_kv;
    let device = q.device();
    let mut total: Option<Tensor<B, 3>> = None;
    // On flex the chunks' column sums accumulate on the host.
    let mut host: Option<Vec<f32>> = None;
    let mut start = 0;
    while start < n_tok {
        let end = (start + chunk).min(n_tok);
        let rows = end - start;
        // Keys after the chunk's last query are masked for every row: skip them.
        let keys = k.clone().slice([0..h_kv, 0..end, 0..d]);
        let q_rows = q.clone().slice([0..h_q, start..end, 0..d]).reshape([h_kv, group * rows, d]);
        let cols = prefix.min(end);
        if total.is_none() {
            if let Some(part) = crate::fast_path::cumulative_column_sums(q_rows.clone(), &keys, group, rows, start, cols) {
                let acc = host.get_or_insert_with(|| vec![0f32; h_q * prefix]);
                for h in 0..h_q {
                    acc[h * prefix..h * prefix + cols].iter_mut().zip(&part[h * cols..(h + 1) * cols]).for_each(|(a, &x)| *a += x);
                }
                start = end;
                continue;
            }
        }
        if let Some(acc) = host.take() {
            // Not reached on flex (every chunk takes the host path); keep the sums exact anyway.
            total = Some(Tensor::<B, 3>::from_data(TensorData::new(acc, [h_q, 1, prefix]), &device));
        }
        let probs = masked_probs(q_rows, &keys, group, start, rows);
        let mut part = probs.slice([0..h_kv, 0..group * rows, 0..cols]).reshape([h_q, rows, cols]).sum_dim(1);
        if cols < prefix {
            part = Tensor::cat(vec![part, Tensor::zeros([h_q, 1, prefix - cols], &device)], 2);
        }
        total = Some(match total {
            Some(t) => t.add(part),
            None => part,
        });
        start = end;
    }
    if let Some(acc) = host {
        return ScoreMatrix::new(h_q, prefix, acc);
    }
    match total {
        Some(t) => ScoreMatrix::new(h_q, prefix, to_host(t)?),
        None => ScoreMatrix::new(h_q, 0, Vec::new()),
    }
}

/// LAVa's value scale per KV head: `c[g] = max_{j < prefix} ||v[g, j]||_1`
/// (`lava-algorithm.md` §2), `[H_kv]`, computed on the backend. Empty prefix
/// gives zeros.
pub fn value_norm_max<B: Backend>(v: &Tensor<B, 3>, prefix: usize) -> Result<Vec<f32>, CacheError> {
    let [h_kv, n_tok, d] = v.dims();
    if prefix > n_tok {
        return Err(CacheError::InvalidParameters(format!(
            "the prefix ({prefix}) exceeds the sequence length ({n_tok})"
        )));
    }
    if prefix == 0 || d == 0 {
        return Ok(vec![0.0; h_kv]);
    }
    if let Some(norms) = crate::fast_path::value_norm_max(v, prefix) {
        return Ok(norms);
    }
    let norms = v.clone().slice([0..h_kv, 0..prefix, 0..d]).abs().sum_dim(2).max_dim(1);
    to_host(norms)
}

/// 1-D pooling along the tokens, stride 1, padding `kernel / 2`, same length
/// out as in. `kernel` should be odd ([`PolicyConfig::validate`] rejects even
/// kernels); the pooled span is `2 * (kernel / 2) + 1` tokens.
///
/// - [`Pooling::MaxPool`]: the largest value in `[j - k/2, j + k/2]`; padding is
///   `-inf`, so only real tokens count.
/// - [`Pooling::AvgPool`]: the sum over that range divided by `kernel`, the
///   padding counting as zeros (`count_include_pad=True`).
pub fn pool(row: &[f32], kernel: usize, pooling: Pooling) -> Vec<f32> {
    let n = row.len();
    let half = kernel / 2;
    (0..n)
        .map(|j| {
            let lo = j.saturating_sub(half);
            let hi = (j + half + 1).min(n);
            let span = &row[lo..hi];
            match pooling {
                Pooling::MaxPool => span.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                Pooling::AvgPool => span.iter().sum::<f32>() / kernel.max(1) as f32,
            }
        })
        .collect()
}

/// [`pool`] over a subset of the positions: `values[j]` belongs to absolute
/// position `positions[j]` (strictly increasing), and the neighbourhood of `j`
/// is every given position within `kernel / 2` of `positions[j]`. Missing
/// positions count as zero attention: max pooling ignores them (attention is
/// non-negative and `j` itself is in its neighbourhood), average pooling
/// divides by `kernel` as [`pool`] does. With `positions = 0..n` this is
/// exactly [`pool`]. Used to re-score a layer after some tokens were evicted.
pub fn pool_at(positions: &[usize], values: &[f32], kernel: usize, pooling: Pooling) -> Vec<f32> {
    let n = values.len().min(positions.len());
    let half = kernel / 2;
    let (mut lo, mut hi) = (0, 0);
    (0..n)
        .map(|j| {
            let p = positions[j];
            while positions[lo].saturating_add(half) < p {
                lo += 1;
            }
            hi = hi.max(j + 1);
            while hi < n && positions[hi] <= p.saturating_add(half) {
                hi += 1;
            }
            let span = &values[lo..hi];
            match pooling {
                Pooling::MaxPool => span.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                Pooling::AvgPool => span.iter().sum::<f32>() / kernel.max(1) as f32,
            }
        })
        .collect()
}

/// Checks that `attn` has `H_q` rows, a multiple of `kv_heads`; returns `G`.
fn group_of(attn: &ScoreMatrix, kv_heads: usize) -> Result<usize, CacheError> {
    if kv_heads == 0 || attn.rows % kv_heads != 0 {
        return Err(CacheError::ShapeMismatch {
            what: "query-head scores",
            expected: format!("a multiple of {kv_heads} rows"),
            found: format!("{} rows", attn.rows),
        });
    }
    Ok(attn.rows / kv_heads)
}

/// One KV head's scores (`lava-algorithm.md` §1, §2, §6): the one definition
/// of every scorer but CAKE, used by the prefill (positions `0..n`) and by
/// re-scoring a layer that has already evicted tokens.
///
/// - `attn`: the attention of the head's `G = group` query heads over its
///   evictable tokens, `G` rows of `positions.len()` values (row `i` for query
///   head `g*G + i`): the window mean `s[h, j]`, for H2O the cumulative sum.
///   Ignored by StreamingLLM.
/// - `positions`: the tokens' absolute positions, strictly increasing; pooling
///   neighbourhoods follow them ([`pool_at`]; `0..n` is plain [`pool`]).
/// - `value_scale`: LAVa's `c[g] = max_j ||v[g, j]||_1` over the same tokens.
///
/// Scores per scorer:
/// - SnapKV family: the mean over the group, then pooled. The reference code
///   (GQA support of `snapkv_utils.py`) averages the group first and pools
///   after, and so does this crate; with average pooling the order does not
///   matter (both are linear), with max pooling `lava-algorithm.md` §1–2 read
///   literally (pool, then average) would differ, and the reference wins.
/// - LAVa: `max over the group of pool(s[h])[j] * c[g]`.
/// - H2O: the mean over the group; no pooling.
/// - StreamingLLM: `+inf` for the first `sinks` positions, else the position
///   (more recent is better; exact in `f32` up to 2^24 tokens).
///
/// CAKE's score needs every window query's row, not their mean: it is
/// [`cake_statistics`], and this function refuses it.
pub fn head_scores(
    scorer: Scorer,
    attn: &[f32],
    group: usize,
    positions: &[usize],
    value_scale: f32,
    config: &PolicyConfig,
) -> Result<Vec<f32>, CacheError> {
    let n = positions.len();
    if scorer != Scorer::Streaming && (group == 0 || attn.len() != group * n) {
        return Err(CacheError::ShapeMismatch {
            what: "one KV head's attention rows",
            expected: format!("{group} > 0 rows of {n} values"),
            found: format!("{} values", attn.len()),
        });
    }
    let row = |i: usize| &attn[i * n..(i + 1) * n];
    let group_mean = || {
        let mut mean = vec![0f32; n];
        for i in 0..group {
            mean.iter_mut().zip(row(i)).for_each(|(m, &x)| *m += x);
        }
        mean.iter_mut().for_each(|m| *m /= group as f32);
        mean
    };
    let (kernel, pooling) = (config.kernel_size, config.pooling);
    Ok(match scorer {
        Scorer::SnapKv => pool_at(positions, &group_mean(), kernel, pooling),
        Scorer::Lava => {
            let mut best = vec![f32::NEG_INFINITY; n];
            for i in 0..group {
                let scaled = pool_at(positions, row(i), kernel, pooling).into_iter().map(|p| p * value_scale);
                best.iter_mut().zip(scaled).for_each(|(b, x)| *b = b.max(x));
            }
            best
        }
        Scorer::H2o => group_mean(),
        Scorer::Streaming => positions.iter().map(|&p| if p < config.sinks { f32::INFINITY } else { p as f32 }).collect(),
        Scorer::Cake => {
            return Err(CacheError::InvalidParameters(
                "CAKE scores need every window query's attention row: use cake_statistics, not head_scores".into(),
            ))
        }
    })
}

/// [`head_scores`] for every KV head of a prefill, whose heads all hold the
/// prefix `0..n`: `attn` `[H_q, n]`, `value_scales` one per KV head (LAVa).
fn prefill_scores(scorer: Scorer, attn: &ScoreMatrix, kv_heads: usize, value_scales: &[f32], config: &PolicyConfig) -> Result<ScoreMatrix, CacheError> {
    let group = group_of(attn, kv_heads)?;
    let n = attn.cols;
    let positions: Vec<usize> = (0..n).collect();
    let mut data = Vec::with_capacity(kv_heads * n);
    for g in 0..kv_heads {
        let rows = &attn.data[g * group * n..(g + 1) * group * n];
        let scale = value_scales.get(g).copied().unwrap_or(0.0);
        data.extend(head_scores(scorer, rows, group, &positions, scale, config)?);
    }
    ScoreMatrix::new(kv_heads, n, data)
}

/// The parameters [`head_scores`] reads, with every other field at its default.
fn pooling_config(kernel: usize, pooling: Pooling, sinks: usize) -> PolicyConfig {
    let mut config = PolicyConfig::new(super::PolicyName::SnapKv, 1);
    config.kernel_size = kernel;
    config.pooling = pooling;
    config.sinks = sinks;
    config
}

/// SnapKV / PyramidKV / Ada-KV scores `S[g, j]`, `[H_kv, n]`, from the window
/// attention `s` (`[H_q, n]`): the mean over the `G` query heads of KV head
/// `g`, then pooled ([`head_scores`], which says why the mean comes first).
pub fn snapkv_scores(attn: &ScoreMatrix, kv_heads: usize, kernel: usize, pooling: Pooling) -> Result<ScoreMatrix, CacheError> {
    prefill_scores(Scorer::SnapKv, attn, kv_heads, &[], &pooling_config(kernel, pooling, 0))
}

/// The LAVa score (`lava-algorithm.md` §2), `[H_kv, n]`:
/// `S[g, j] = max over query heads h of g of pool(s[h])[j] * c[g]`,
/// with `c[g] = max_j ||V[g, j]||_1` ([`value_norm_max`]); see [`head_scores`].
pub fn lava_scores(
    attn: &ScoreMatrix,
    value_norms: &[f32],
    kernel: usize,
    pooling: Pooling,
) -> Result<ScoreMatrix, CacheError> {
    prefill_scores(Scorer::Lava, attn, value_norms.len(), value_norms, &pooling_config(kernel, pooling, 0))
}

/// H2O scores, `[H_kv, n]`: the cumulative attention ([`cumulative_attention`])
/// averaged over the `G` query heads of each KV head; no pooling.
pub fn h2o_scores(cumulative: &ScoreMatrix, kv_heads: usize) -> Result<ScoreMatrix, CacheError> {
    prefill_scores(Scorer::H2o, cumulative, kv_heads, &[], &pooling_config(1, Pooling::MaxPool, 0))
}

/// StreamingLLM as scores, `[H_kv, n]`: the first `sinks` tokens score `+inf`,
/// token `j` after them scores `j` (more recent is better). Keeping the top
/// `B_l = B - w` then keeps the sinks and the `B_l - sinks` most recent prefix
/// tokens, which with the window are the most recent `B - sinks` tokens.
pub fn streaming_scores(kv_heads: usize, n: usize, sinks: usize) -> ScoreMatrix {
    let positions: Vec<usize> = (0..n).collect();
    let config = pooling_config(1, Pooling::MaxPool, sinks);
    let row = head_scores(Scorer::Streaming, &[], 1, &positions, 0.0, &config).unwrap_or_default();
    let data = (0..kv_heads).flat_map(|_| row.iter().copied()).collect();
    ScoreMatrix { rows: kv_heads, cols: n, data }
}

/// Scores one layer's `n = N - w` prefix tokens per KV head, `[H_kv, n]`, with
/// `scorer` and the parameters of `config` (`q [H_q, N, D]`, `k`, `v [H_kv, N, D]`,
/// `w = config.window <= N`).
pub fn score_layer<B: Backend>(
    q: &Tensor<B, 3>,
    k: &Tensor<B, 3>,
    v: &Tensor<B, 3>,
    config: &PolicyConfig,
    scorer: Scorer,
) -> Result<ScoreMatrix, CacheError> {
    score_layer_weighted(q, k, v, config, scorer).map(|(scores, _)| scores)
}

/// [`score_layer`] and the layer's weight in a dynamic layer allocation: the
/// CAKE preference for [`Scorer::Cake`] ([`cake_scores`]), else the normalised
/// entropy of the scores ([`layer_budget::normalized_entropy`], LAVa's).
pub fn score_layer_weighted<B: Backend>(
    q: &Tensor<B, 3>,
    k: &Tensor<B, 3>,
    v: &Tensor<B, 3>,
    config: &PolicyConfig,
    scorer: Scorer,
) -> Result<(ScoreMatrix, f64), CacheError> {
    let [h_q, h_kv, n_tok, _] = crate::check_qkv(q, k, Some(v))?;
    let window = config.window.min(n_tok);
    let n = n_tok - window;
    let scores = match scorer {
        Scorer::SnapKv => prefill_scores(scorer, &window_attention(q, k, window)?, h_kv, &[], config)?,
        Scorer::Lava => prefill_scores(scorer, &window_attention(q, k, window)?, h_kv, &value_norm_max(v, n)?, config)?,
        Scorer::H2o => prefill_scores(scorer, &cumulative_attention(q, k, n)?, h_kv, &[], config)?,
        Scorer::Streaming => streaming_scores(h_kv, n, config.sinks),
        Scorer::Cake => {
            if n == 0 {
                return Ok((ScoreMatrix::new(h_kv, 0, Vec::new())?, 0.0));
            }
            return cake_scores(&window_attention_rows(q, k, window)?, h_q, window, h_kv);
        }
    };
    let weight = layer_budget::normalized_entropy(&scores);
    Ok((scores, weight))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn_ndarray::NdArray;

    type B = NdArray<f32>;

    #[test]
    fn cumulative_attention_is_independent_of_the_chunk_size() {
        let device = Default::default();
        let (h_q, h_kv, n_tok, d) = (4, 2, 9, 3);
        let values = |len: usize, seed: f32| -> Vec<f32> {
            (0..len).map(|i| (i as f32 * 0.7 + seed).sin() * 1.3).collect()
        };
        let q = Tensor::<B, 3>::from_data(TensorData::new(values(h_q * n_tok * d, 0.1), [h_q, n_tok, d]), &device);
        let k = Tensor::<B, 3>::from_data(TensorData::new(values(h_kv * n_tok * d, 2.0), [h_kv, n_tok, d]), &device);
        let whole = cumulative_attention_in_chunks(&q, &k, 6, n_tok).unwrap();
        for chunk in [1, 2, 4, 100] {
            let part = cumulative_attention_in_chunks(&q, &k, 6, chunk).unwrap();
            assert_eq!(part.rows(), whole.rows());
            for (a, b) in part.data().iter().zip(whole.data()) {
                assert!((a - b).abs() < 1e-5, "chunk {chunk}: {a} vs {b}");
            }
        }
        assert_eq!(cumulative_attention(&q, &k, 6).unwrap().cols(), 6);
    }
}
