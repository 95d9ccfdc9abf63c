//! Attention and scorer kernels on the host, for the `burn-flex` backend:
//! decode attention read where K/V lie ([`decode_attention`], flash-decoding
//! above [`PARALLEL_ROWS`] rows), prefill flash attention
//! ([`prefill_attention`]), and the scorers' inputs (window attention mean,
//! H2O's column sums, value norms). Each mirrors a generic tensor-op path in
//! `lava-cache`, which stays the reference; tests check both agree.

use std::ops::Range;

use burn::tensor::{backend::Backend, Tensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::bridge::{from_host, is_flex, is_plain, to_flex};

/// Rows `rows` of a K/V storage (row `r` = elements `r*D .. (r+1)*D`) that
/// belong to KV head `kv_head`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The KV head these rows belong to.
    pub kv_head: usize,
    /// Row range in the storage.
    pub rows: Range<usize>,
}

/// Rows of K/V per block of the decode kernel for head dims 64/128.
pub(crate) const DECODE_BLOCK: usize = 64;

/// Rows of K/V above which [`decode_attention`] splits the work across threads.
pub(crate) const PARALLEL_ROWS: usize = 2048;

/// `[H_q, 1, D]` attention of one query token per query head (`kv_heads`
/// KV heads) over the rows `segments` of the storages `keys` and `values` (each `[R, D]` in memory,
/// any leading shape), as a tensor of `B`; `None` unless `B` is flex, all
/// three are f32 and the storages are contiguous from offset 0.
pub fn decode_attention<B: Backend, const K: usize>(
    q: &Tensor<B, 3>,
    kv_heads: usize,
    keys: &Tensor<B, K>,
    values: &Tensor<B, K>,
    segments: &[Segment],
) -> Option<Tensor<B, 3>> {
    let [h_q, t, d] = q.dims();
    if t != 1 || !is_flex::<B>() {
        return None;
    }
    let qf = to_flex(q.clone())?.to_contiguous();
    let kf = to_flex(keys.clone())?;
    let vf = to_flex(values.clone())?;
    if !is_plain(&kf) || !is_plain(&vf) {
        return None;
    }
    let out = attend_rows(qf.storage::<f32>(), h_q, kv_heads, d, kf.storage::<f32>(), vf.storage::<f32>(), segments, rayon::current_num_threads())?;
    from_host(out, [h_q, 1, d])
}

/// Softmax attention of `q [H_q, D]` over the given rows of `keys`/`values`
/// (`[R, D]` row-major): query head `h` sees the rows of KV head `h / G`,
/// `G = H_q / H_kv` (Hugging Face `repeat_kv` order), scaled by `1/sqrt(D)`.
/// Returns `[H_q, D]`, or `None` if `H_kv` does not divide `H_q` or a segment
/// lies outside the storage or names a KV head `>= H_kv`. A query head whose
/// KV head has no rows gets zeros.
///
/// Each K and V row is read once for the `G` query heads that share it. Above
/// [`PARALLEL_ROWS`] rows the rows are split into `threads` parts whose partial
/// softmax sums are merged (max-shifted), as in flash-decoding.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows(
    q: &[f32],
    h_q: usize,
    h_kv: usize,
    d: usize,
    keys: &[f32],
    values: &[f32],
    segments: &[Segment],
    threads: usize,
) -> Option<Vec<f32>> {
    let fits = |s: &Segment| s.kv_head < h_kv && s.rows.end * d <= keys.len().min(values.len());
    if d == 0 || h_kv == 0 || h_q % h_kv != 0 || q.len() < h_q * d || !segments.iter().all(fits) {
        return None;
    }
    let g = h_q / h_kv;
    let total: usize = segments.iter().map(|s| s.rows.len()).sum();
    let scale = 1.0 / (d as f32).sqrt();
    if total < PARALLEL_ROWS || threads <= 1 {
        // One part, read straight from `segments` (no split copy).
        let one = Partial::compute(q, h_q, g, d, keys, values, segments, scale);
        return Some(Partial::merge(std::slice::from_ref(&one), h_q, d));
    }
    let pieces = split_rows(segments, total, threads);
    let partials = crate::spin_pool::map(pieces.len(), &|i| Partial::compute(q, h_q, g, d, keys, values, &pieces[i], scale));
    Some(Partial::merge(&partials, h_q, d))
}

/// The window attention of `lava_cache::policy::scorer::window_attention`
/// on flex: `q_window [H_kv, G*w, D]` (the `w` window queries of the `G`
/// query heads of each KV head), `k [H_kv, N, D]`; returns `[H_q, n]` row-major,
/// `n = N - w`: for query head `h`, the mean over the window queries `i` of
/// `softmax_j(q . k_j / sqrt(D))`, keys `j > n + i` masked. The logits come
/// from flex's matmul; the masked softmax and the mean run on the host (no
/// mask tensor, no `[H_kv, G*w, N]` softmax tensor). `None` unless `B` is flex.
pub fn window_attention_mean<B: Backend>(q_window: Tensor<B, 3>, k: &Tensor<B, 3>, group: usize, window: usize) -> Option<Vec<f32>> {
    let n = k.dims()[1].checked_sub(window)?;
    masked_column_sums(q_window, k, group, window, n, n, 1.0 / window.max(1) as f32)
}

/// `max_{j < prefix} ||v[g, j]||_1` per KV head of `v [H_kv, N, D]`, read on
/// the host (as `lava_cache::policy::scorer::value_norm_max`);
/// `None` unless `B` is flex.
pub fn value_norm_max<B: Backend>(v: &Tensor<B, 3>, prefix: usize) -> Option<Vec<f32>> {
    let [h_kv, n_tok, d] = v.dims();
    if prefix > n_tok {
        return None;
    }
    // Read `v` in place when it is contiguous (the usual case), else copy the prefix.
    let whole = to_flex(v.clone())?;
    let (f, stride) = if is_plain(&whole) {
        (whole, n_tok * d)
    } else {
        (to_flex(v.clone().slice([0..h_kv, 0..prefix, 0..d]))?.to_contiguous(), prefix * d)
    };
    let x = f.storage::<f32>();
    if d == 0 || h_kv == 0 || x.len() < (h_kv - 1) * stride + prefix * d {
        return None;
    }
    Some(
        (0..h_kv)
            .map(|g| {
                x[g * stride..g * stride + prefix * d]
                    .chunks_exact(d)
                    .map(|row| {
                        let mut s = [0f32; 16];
                        let chunks = row.chunks_exact(16);
                        let tail: f32 = chunks.remainder().iter().map(|a| a.abs()).sum();
                        for c in chunks {
                            for k in 0..16 {
                                s[k] += c[k].abs();
                            }
                        }
                        tree16(s) + tail
                    })
                    .fold(0f32, f32::max)
            })
            .collect(),
    )
}

/// For `rows` rows of logits (`[rows, keys]`, row `i` sees keys
/// `0..=first + i`): `weight` times the sum over the rows of the scaled,
/// masked softmax, for the first `cols` keys.
fn column_sums(logits: &[f32], keys: usize, rows: usize, first: usize, cols: usize, scale: f32, weight: f32) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { column_sums_avx512(logits, keys, rows, first, cols, scale, weight) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { column_sums_avx2(logits, keys, rows, first, cols, scale, weight) };
        }
    }
    column_sums_portable(logits, keys, rows, first, cols, scale, weight)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn column_sums_avx512(logits: &[f32], keys: usize, rows: usize, first: usize, cols: usize, scale: f32, weight: f32) -> Vec<f32> {
    column_sums_portable(logits, keys, rows, first, cols, scale, weight)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn column_sums_avx2(logits: &[f32], keys: usize, rows: usize, first: usize, cols: usize, scale: f32, weight: f32) -> Vec<f32> {
    column_sums_portable(logits, keys, rows, first, cols, scale, weight)
}

#[inline(always)]
fn column_sums_portable(logits: &[f32], keys: usize, rows: usize, first: usize, cols: usize, scale: f32, weight: f32) -> Vec<f32> {
    let mut acc = vec![0f32; cols];
    let mut e = vec![0f32; keys];
    for i in 0..rows {
        let visible = (first + i + 1).min(keys);
        let row = &logits[i * keys..][..visible];
        let e = &mut e[..visible];
        let m = max_lanes(row) * scale;
        e.iter_mut().zip(row).for_each(|(e, &x)| *e = exp(x * scale - m));
        let w = weight / sum_lanes(e);
        let upto = cols.min(visible);
        acc[..upto].iter_mut().zip(&e[..upto]).for_each(|(a, &p)| *a += p * w);
    }
    acc
}

/// The column sums of H2O's cumulative attention for one chunk of query rows
/// on flex: `q_rows [H_kv, G*R, D]` (the `R` queries at positions `first ..
/// first + R` of the `G` query heads of each KV head), `k [H_kv, S, D]` the
/// keys up to the chunk's end; returns `[H_q, cols]` row-major: for query head
/// `h` and key `j < cols`, `sum_i softmax_j(q_i . k_j / sqrt(D))` with keys
/// after each query masked. Logits from flex's matmul, the rest on the host.
/// `None` unless `B` is flex.
pub fn cumulative_column_sums<B: Backend>(q_rows: Tensor<B, 3>, k: &Tensor<B, 3>, group: usize, rows: usize, first: usize, cols: usize) -> Option<Vec<f32>> {
    masked_column_sums(q_rows, k, group, rows, first, cols, 1.0)
}

/// The host pass of [`window_attention_mean`] and [`cumulative_column_sums`]:
/// `q_rows [H_kv, G*R, D]` against `k [H_kv, S, D]` (flex's matmul), then per
/// query head [`column_sums`] of its `R` rows (row `i` sees keys `0..=first + i`)
/// for the first `cols` keys, times `weight`: `[H_q, cols]`.
fn masked_column_sums<B: Backend>(q_rows: Tensor<B, 3>, k: &Tensor<B, 3>, group: usize, rows: usize, first: usize, cols: usize, weight: f32) -> Option<Vec<f32>> {
    if !is_flex::<B>() || group == 0 || rows == 0 {
        return None;
    }
    let [h_kv, gr, d] = q_rows.dims();
    let keys = k.dims()[1];
    if gr != group * rows || cols > keys || first + rows > keys {
        return None;
    }
    let logits = to_flex(q_rows.matmul(k.clone().swap_dims(1, 2)))?.to_contiguous();
    let logits = logits.storage::<f32>();
    if logits.len() < h_kv * gr * keys {
        return None;
    }
    let scale = 1.0 / (d as f32).sqrt();
    let h_q = h_kv * group;
    // One part per query head h: its R rows (g = h / G, gi = h % G) of the logits.
    let out = crate::spin_pool::map(h_q, &|h| column_sums(&logits[h * rows * keys..(h + 1) * rows * keys], keys, rows, first, cols, scale, weight)).concat();
    Some(out)
}

/// Causal grouped-query attention of `T` new queries over `S` keys (the new
/// tokens are the last `T`), as `lava_cache::causal_attention`,
/// read in place on flex: `q [H_q, T, D]`, `k`, `v [H_kv, S, D]` (any head
/// stride, rows contiguous). `None` on other backends, other dtypes or layouts.
///
/// Work items are (KV head, block of [`PREFILL_QUERIES`] query positions); a
/// block's `G` query heads share each key tile ([`PREFILL_KEYS`] keys), keys
/// after the block's last query are never visited, and the softmax is online
/// (flash attention), so no `T x S` matrix exists.
pub fn prefill_attention<B: Backend>(q: &Tensor<B, 3>, k: &Tensor<B, 3>, v: &Tensor<B, 3>) -> Option<Tensor<B, 3>> {
    let [h_q, t, d] = q.dims();
    let [h_kv, s, dk] = k.dims();
    if !is_flex::<B>() || dk != d || v.dims() != [h_kv, s, d] || t > s || h_kv == 0 || h_q % h_kv != 0 {
        return None;
    }
    let qf = to_flex(q.clone())?.to_contiguous();
    let (kf, vf) = (to_flex(k.clone())?, to_flex(v.clone())?);
    let heads = |f: &FlexTensor| -> Option<(usize, usize)> {
        let st = f.layout().strides();
        (st.len() == 3 && st[2] == 1 && st[1] == d as isize && st[0] >= (s * d) as isize).then(|| (st[0] as usize, f.layout().start_offset()))
    };
    let (k_at, v_at) = (heads(&kf)?, heads(&vf)?);
    let (qs, ks, vs) = (qf.storage::<f32>(), kf.storage::<f32>(), vf.storage::<f32>());
    // Each KV head's keys transposed once into tiles (see [`key_tiles`]).
    let tiles: Vec<Vec<f32>> = (0..h_kv)
        .into_par_iter()
        .map(|kv| {
            let keys = &ks[k_at.1 + kv * k_at.0..];
            key_tiles((0..s).map(|j| &keys[j * d..(j + 1) * d]), s, d)
        })
        .collect();
    let heads: Vec<FlashHead<'_>> =
        (0..h_kv).map(|kv| FlashHead { key_tiles: &tiles[kv], values: &vs[v_at.1 + kv * v_at.0..], past: s - t }).collect();
    let out = flash_heads(qs, h_q, t, d, &heads)?;
    from_host(out, [h_q, t, d])
}

/// Query positions per work item of [`prefill_attention`].
pub const PREFILL_QUERIES: usize = 32;
/// Keys per tile of [`prefill_attention`].
pub const PREFILL_KEYS: usize = 64;

/// One KV head's keys and values for [`flash_heads`]: query `t` of the
/// chunk sees rows `0 ..= past + t`.
pub(crate) struct FlashHead<'a> {
    /// The head's keys as [`key_tiles`].
    pub key_tiles: &'a [f32],
    /// Its value rows `[rows, D]`, from the head's first row.
    pub values: &'a [f32],
    /// Rows every query sees (before the chunk's own).
    pub past: usize,
}

/// `n` key rows transposed tile by tile: tile `i` is a contiguous
/// `[D, PREFILL_KEYS]` block (keys past `n` are 0), so a query block reads
/// its key tiles without strided loads.
pub(crate) fn key_tiles<'a>(rows: impl Iterator<Item = &'a [f32]>, n: usize, d: usize) -> Vec<f32> {
    let mut kt = vec![0f32; n.div_ceil(PREFILL_KEYS) * d * PREFILL_KEYS];
    for (j, row) in rows.enumerate().take(n) {
        let (tile, lane) = (j / PREFILL_KEYS, j % PREFILL_KEYS);
        for (c, &x) in row.iter().enumerate() {
            kt[(tile * d + c) * PREFILL_KEYS + lane] = x;
        }
    }
    kt
}

/// Causal flash attention of `q [H_q, T, D]` (contiguous) with `heads[kv]`
/// the keys and values of KV head `kv` (query heads `kv * G .. (kv + 1) * G`):
/// `[H_q, T, D]`. Work items are (KV head, block of [`PREFILL_QUERIES`]
/// positions), run on rayon. `None` for a head dimension without a kernel.
pub(crate) fn flash_heads(qs: &[f32], h_q: usize, t: usize, d: usize, heads: &[FlashHead<'_>]) -> Option<Vec<f32>> {
    let h_kv = heads.len();
    if h_kv == 0 || h_q % h_kv != 0 || qs.len() < h_q * t * d {
        return None;
    }
    let g = h_q / h_kv;
    let blocks = t.div_ceil(PREFILL_QUERIES);
    let items: Vec<(usize, usize)> = (0..h_kv).flat_map(|kv| (0..blocks).map(move |b| (kv, b))).collect();
    let results: Vec<Vec<f32>> = items
        .par_iter()
        .map(|&(kv, b)| {
            let t0 = b * PREFILL_QUERIES;
            let t1 = (t0 + PREFILL_QUERIES).min(t);
            let head = &heads[kv];
            flash_block(qs, t, d, kv * g..(kv + 1) * g, t0..t1, head.past, head.key_tiles, head.values)
        })
        .collect::<Option<_>>()?;
    let mut out = vec![0f32; h_q * t * d];
    for (&(kv, b), res) in items.iter().zip(results) {
        let t0 = b * PREFILL_QUERIES;
        let n = (t0 + PREFILL_QUERIES).min(t) - t0;
        for (i, h) in (kv * g..(kv + 1) * g).enumerate() {
            out[(h * t + t0) * d..(h * t + t0 + n) * d].copy_from_slice(&res[i * n * d..(i + 1) * n * d]);
        }
    }
    Some(out)
}

/// One work item of [`prefill_attention`]: query heads `heads`, query
/// positions `block` (of `T`; position `t` sits at key index `past + t`),
/// against keys `0 .. past + block.end`: `kt` (the KV head's keys transposed
/// tile by tile, `[tiles, D, PREFILL_KEYS]`, zero-padded) and `values` (`[rows, D]` from the
/// start of the slice). Returns `[heads.len(), block.len(), D]`, or `None`
/// for a head dimension without a compiled kernel (the caller then takes the
/// generic path).
#[allow(clippy::too_many_arguments)]
fn flash_block(q: &[f32], t: usize, d: usize, heads: Range<usize>, block: Range<usize>, past: usize, kt: &[f32], values: &[f32]) -> Option<Vec<f32>> {
    macro_rules! dispatch {
        ($d:literal) => {{
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports the features the function is compiled for.
                    return Some(unsafe { flash_block_avx512::<$d>(q, t, heads, block, past, kt, values) });
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return Some(unsafe { flash_block_avx2::<$d>(q, t, heads, block, past, kt, values) });
                }
            }
            Some(flash_block_portable::<$d, false, 16>(q, t, heads, block, past, kt, values))
        }};
    }
    match d {
        64 => dispatch!(64),
        128 => dispatch!(128),
        _ => None,
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn flash_block_avx512<const D: usize>(q: &[f32], t: usize, heads: Range<usize>, block: Range<usize>, past: usize, kt: &[f32], values: &[f32]) -> Vec<f32> {
    flash_block_portable::<D, true, 64>(q, t, heads, block, past, kt, values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn flash_block_avx2<const D: usize>(q: &[f32], t: usize, heads: Range<usize>, block: Range<usize>, past: usize, kt: &[f32], values: &[f32]) -> Vec<f32> {
    flash_block_portable::<D, true, 32>(q, t, heads, block, past, kt, values)
}

/// `a * b + c`, fused where the caller was compiled with FMA.
#[inline(always)]
pub(crate) fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Rows of the query block processed together (their accumulators stay in
/// registers while a key or value row is reused for all of them).
const ROWS: usize = 4;

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn flash_block_portable<const D: usize, const FUSED: bool, const PV: usize>(
    q: &[f32],
    t: usize,
    heads: Range<usize>,
    block: Range<usize>,
    past: usize,
    kt: &[f32],
    values: &[f32],
) -> Vec<f32> {
    const BK: usize = PREFILL_KEYS;
    let n = block.len();
    let rows = heads.len() * n;
    let padded = rows.div_ceil(ROWS) * ROWS;
    let scale = 1.0 / (D as f32).sqrt();
    // Row r = i * n + j: query head heads.start + i, position block.start + j;
    // rows past `rows` are padding (zero queries, never returned).
    let mut qb = vec![[0f32; D]; padded];
    for (i, h) in heads.clone().enumerate() {
        for j in 0..n {
            let src = &q[(h * t + block.start + j) * D..(h * t + block.start + j + 1) * D];
            qb[i * n + j].iter_mut().zip(src).for_each(|(a, &b)| *a = b * scale);
        }
    }
    let visible_until = |r: usize| if r < rows { past + block.start + r % n + 1 } else { usize::MAX };
    let mut acc = vec![[0f32; D]; padded];
    let mut max = vec![f32::NEG_INFINITY; padded];
    let mut sum = vec![0f32; padded];
    let mut sc = vec![[0f32; BK]; padded];
    let end = past + block.end;
    let mut k0 = 0;
    while k0 < end {
        let k1 = (k0 + BK).min(end);
        let w = k1 - k0;
        // Scores, ROWS rows at a time: sc[r] = q_r . K tile.
        for r0 in (0..padded).step_by(ROWS) {
            let mut s = [[0f32; BK]; ROWS];
            for c in 0..D {
                let kc = &kt[((k0 / BK) * D + c) * BK..][..BK];
                for (x, srow) in s.iter_mut().enumerate() {
                    let a = qb[r0 + x][c];
                    for j in 0..BK {
                        srow[j] = madd::<FUSED>(a, kc[j], srow[j]);
                    }
                }
            }
            sc[r0..r0 + ROWS].copy_from_slice(&s);
        }
        // Mask (keys past the row's position, and unused lanes), online softmax.
        for r in 0..padded {
            let row = &mut sc[r];
            let visible = visible_until(r).saturating_sub(k0).min(w);
            if visible == 0 {
                row.iter_mut().for_each(|x| *x = 0.0);
                continue;
            }
            row[visible..].iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
            let tile_max = row.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
            if tile_max > max[r] {
                let shrink = exp(max[r] - tile_max);
                sum[r] *= shrink;
                acc[r].iter_mut().for_each(|a| *a *= shrink);
                max[r] = tile_max;
            }
            let m = max[r];
            row.iter_mut().for_each(|x| *x = exp(*x - m));
            row[visible..].iter_mut().for_each(|x| *x = 0.0);
            sum[r] += row.iter().sum::<f32>();
        }
        // acc_r += sum_j p_rj V_j, ROWS rows and PV columns at a time (accumulators that fit
        // the vector registers).
        for r0 in (0..padded).step_by(ROWS) {
            for c0 in (0..D).step_by(PV) {
                let mut o = [[0f32; PV]; ROWS];
                for (x, orow) in o.iter_mut().enumerate() {
                    orow.copy_from_slice(&acc[r0 + x][c0..c0 + PV]);
                }
                for j in 0..w {
                    let vj = &values[(k0 + j) * D + c0..][..PV];
                    for (x, orow) in o.iter_mut().enumerate() {
                        let p = sc[r0 + x][j];
                        for c in 0..PV {
                            orow[c] = madd::<FUSED>(p, vj[c], orow[c]);
                        }
                    }
                }
                for (x, orow) in o.iter().enumerate() {
                    acc[r0 + x][c0..c0 + PV].copy_from_slice(orow);
                }
            }
        }
        k0 = k1;
    }
    let mut out = Vec::with_capacity(rows * D);
    for r in 0..rows {
        let inv = 1.0 / sum[r];
        out.extend(acc[r].iter().map(|a| a * inv));
    }
    out
}

/// Cuts `segments` (holding `total` rows) into `parts` runs of about equal row counts.
pub(crate) fn split_rows(segments: &[Segment], total: usize, parts: usize) -> Vec<Vec<Segment>> {
    let per = total.div_ceil(parts.max(1)).max(1);
    let mut out = vec![Vec::new()];
    let mut filled = 0;
    for s in segments {
        let mut start = s.rows.start;
        while start < s.rows.end {
            let take = (per - filled).min(s.rows.end - start);
            out.last_mut().expect("non-empty").push(Segment { kv_head: s.kv_head, rows: start..start + take });
            start += take;
            filled += take;
            if filled == per {
                out.push(Vec::new());
                filled = 0;
            }
        }
    }
    out
}

/// Per query head: the running max logit, the sum of `exp(logit - max)` and
/// the value sum weighted the same way, over one part's rows.
pub(crate) struct Partial {
    max: Vec<f32>,
    sum: Vec<f32>,
    /// `[H_q, D]`.
    acc: Vec<f32>,
}

impl Partial {
    /// A part's running max, sum and value accumulator (`[H_q, D]`) per query head.
    pub(crate) fn from_parts(max: Vec<f32>, sum: Vec<f32>, acc: Vec<f32>) -> Self {
        Self { max, sum, acc }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn compute(q: &[f32], h_q: usize, g: usize, d: usize, keys: &[f32], values: &[f32], segments: &[Segment], scale: f32) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if crate::decode_kernel::available_f32(d) {
                // Head dims 64/128/256 on AVX-512: the kernel body shared with Q8_0 K/V.
                return crate::decode_kernel::partial_f32(q, h_q, g, d, scale, keys, values, segments);
            }
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports the features the function is compiled for.
                return unsafe { Self::compute_avx512(q, h_q, g, d, keys, values, segments, scale) };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: as above.
                return unsafe { Self::compute_avx2(q, h_q, g, d, keys, values, segments, scale) };
            }
        }
        Self::compute_portable::<false>(q, h_q, g, d, keys, values, segments, scale)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn compute_avx512(q: &[f32], h_q: usize, g: usize, d: usize, keys: &[f32], values: &[f32], segments: &[Segment], scale: f32) -> Self {
        // Head dims 64/128/256 take `decode_kernel`; the others the portable loops, fused.
        Self::compute_portable::<true>(q, h_q, g, d, keys, values, segments, scale)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn compute_avx2(q: &[f32], h_q: usize, g: usize, d: usize, keys: &[f32], values: &[f32], segments: &[Segment], scale: f32) -> Self {
        use crate::simd::Avx2;
        match d {
            64 => Self::blocked_simd::<Avx2, 64, 8>(q, h_q, g, keys, values, segments, scale),
            128 => Self::blocked_simd::<Avx2, 128, 16>(q, h_q, g, keys, values, segments, scale),
            _ => Self::compute_portable::<true>(q, h_q, g, d, keys, values, segments, scale),
        }
    }

    /// [`Self::compute_blocked`] written with vector intrinsics (`L = D / W`
    /// vectors of `W` lanes per row; AVX2 (AVX-512 takes `decode_kernel`), inlined into the entry
    /// point compiled for it): the compiler vectorises the portable loops
    /// across rows with gathers instead. Blocks come from [`strided_blocks`],
    /// so the one-row segments that decode appends leave (one per step and KV
    /// head, the heads interleaved) are taken [`DECODE_BLOCK`] at a time, not
    /// one block each (a block's setup, query, accumulator and softmax
    /// bookkeeping, is paid per block). Each logit's dot product runs in two
    /// interleaved chains of fused multiply-adds.
    ///
    /// # Safety
    /// The CPU has `S`'s features; `L * S::W == D` and `L` is even.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn blocked_simd<S: crate::simd::Lanes, const D: usize, const L: usize>(q: &[f32], h_q: usize, g: usize, keys: &[f32], values: &[f32], segments: &[Segment], scale: f32) -> Self {
        debug_assert!(L * S::W == D && L % 2 == 0);
        let w = S::W;
        let mut max = vec![f32::NEG_INFINITY; h_q];
        let mut sum = vec![0f32; h_q];
        let mut acc = vec![0f32; h_q * D];
        // Every query head's query, scaled once.
        let qs: Vec<f32> = q[..h_q * D].iter().map(|&x| x * scale).collect();
        let mut p = [0f32; DECODE_BLOCK];
        for b in strided_blocks(segments) {
            // The offset of the block's row `j` in `keys` and `values`.
            let row = |j: usize| (b.start + j * b.stride) * D;
            if b.start + (b.len - 1) * b.stride >= keys.len().min(values.len()) / D {
                continue; // unreachable: `attend_rows` checked every segment against the storage
            }
            for h in b.kv_head * g..(b.kv_head + 1) * g {
                let qh = qs[h * D..(h + 1) * D].as_ptr();
                let p = &mut p[..b.len];
                for (j, pj) in p.iter_mut().enumerate() {
                    // SAFETY (all loads/stores below): rows `row(j) .. row(j) + D` lie in
                    // `keys`/`values` (checked above), `qh` and each accumulator hold `D`
                    // floats; the CPU has `S`'s features (the caller's contract).
                    unsafe {
                        let k = keys.as_ptr().add(row(j));
                        let mut t0 = S::mul(S::load(qh), S::load(k));
                        let mut t1 = S::mul(S::load(qh.add(w)), S::load(k.add(w)));
                        for c in (2..L).step_by(2) {
                            t0 = S::fmadd(S::load(qh.add(c * w)), S::load(k.add(c * w)), t0);
                            t1 = S::fmadd(S::load(qh.add(c * w + w)), S::load(k.add(c * w + w)), t1);
                        }
                        *pj = S::sum(S::add(t0, t1));
                    }
                }
                let a0 = acc[h * D..(h + 1) * D].as_mut_ptr();
                // SAFETY: as above.
                unsafe {
                    let mut a = [S::zero(); L];
                    for (c, x) in a.iter_mut().enumerate() {
                        *x = S::load(a0.add(c * w));
                    }
                    if let Some(shrink) = softmax_block(p, &mut max[h], &mut sum[h]) {
                        let sh = S::splat(shrink);
                        for x in a.iter_mut() {
                            *x = S::mul(*x, sh);
                        }
                    }
                    for (j, &pw) in p.iter().enumerate() {
                        let wv = S::splat(pw);
                        let v = values.as_ptr().add(row(j));
                        for (c, x) in a.iter_mut().enumerate() {
                            *x = S::fmadd(wv, S::load(v.add(c * w)), *x);
                        }
                    }
                    for (c, x) in a.iter().enumerate() {
                        S::store(a0.add(c * w), *x);
                    }
                }
            }
        }
        Self { max, sum, acc }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn compute_portable<const FUSED: bool>(q: &[f32], h_q: usize, g: usize, d: usize, keys: &[f32], values: &[f32], segments: &[Segment], scale: f32) -> Self {
        match d {
            64 => Self::compute_blocked::<64, FUSED>(q, h_q, g, keys, values, segments, scale),
            128 => Self::compute_blocked::<128, FUSED>(q, h_q, g, keys, values, segments, scale),
            _ => Self::compute_any::<FUSED>(q, h_q, g, d, keys, values, segments, scale),
        }
    }

    /// Head dims 64 and 128: each segment in blocks of [`DECODE_BLOCK`] rows
    /// (a block's K and V stay in L1/L2 while the `G` query heads reuse
    /// them); per query head, its query and its value accumulator live in
    /// registers, the block's logits are computed, the running max and sums
    /// rescaled once per block (online softmax), and the weighted value rows
    /// added.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn compute_blocked<const D: usize, const FUSED: bool>(q: &[f32], h_q: usize, g: usize, keys: &[f32], values: &[f32], segments: &[Segment], scale: f32) -> Self {
        let mut max = vec![f32::NEG_INFINITY; h_q];
        let mut sum = vec![0f32; h_q];
        let mut acc = vec![0f32; h_q * D];
        let mut p = [0f32; DECODE_BLOCK];
        for (s, Range { start, end }) in decode_blocks(segments) {
            let n = end - start;
            let (kb, vb) = (&keys[start * D..end * D], &values[start * D..end * D]);
            for h in s.kv_head * g..(s.kv_head + 1) * g {
                let qh: [f32; D] = std::array::from_fn(|c| q[h * D + c] * scale);
                let p = &mut p[..n];
                for (pj, k) in p.iter_mut().zip(kb.chunks_exact(D)) {
                    *pj = dot_lanes::<D, FUSED>(&qh, k);
                }
                let mut a: [f32; D] = std::array::from_fn(|c| acc[h * D + c]);
                if let Some(shrink) = softmax_block(p, &mut max[h], &mut sum[h]) {
                    a.iter_mut().for_each(|x| *x *= shrink);
                }
                for (&w, v) in p.iter().zip(vb.chunks_exact(D)) {
                    for c in 0..D {
                        a[c] = madd::<FUSED>(w, v[c], a[c]);
                    }
                }
                acc[h * D..(h + 1) * D].copy_from_slice(&a);
            }
        }
        Self { max, sum, acc }
    }

    /// Any head dim: per segment, the logits of its rows for the `G` query
    /// heads of its KV head (`[G, rows]`), their max folded into the running
    /// max, then the exponentials and the weighted value rows.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn compute_any<const FUSED: bool>(q: &[f32], h_q: usize, g: usize, d: usize, keys: &[f32], values: &[f32], segments: &[Segment], scale: f32) -> Self {
        let mut max = vec![f32::NEG_INFINITY; h_q];
        let mut sum = vec![0f32; h_q];
        let mut acc = vec![0f32; h_q * d];
        let mut logits = Vec::new();
        for s in segments {
            let n = s.rows.len();
            if n == 0 {
                continue;
            }
            let first = s.kv_head * g;
            logits.clear();
            logits.resize(g * n, 0f32);
            for (j, r) in s.rows.clone().enumerate() {
                let k = &keys[r * d..(r + 1) * d];
                for i in 0..g {
                    let h = first + i;
                    logits[i * n + j] = dot::<FUSED>(&q[h * d..(h + 1) * d], k) * scale;
                }
            }
            for i in 0..g {
                let h = first + i;
                let row = &mut logits[i * n..(i + 1) * n];
                let seg_max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if seg_max > max[h] {
                    let shrink = exp(max[h] - seg_max);
                    sum[h] *= shrink;
                    acc[h * d..(h + 1) * d].iter_mut().for_each(|a| *a *= shrink);
                    max[h] = seg_max;
                }
                let m = max[h];
                row.iter_mut().for_each(|x| *x = exp(*x - m));
                sum[h] += row.iter().sum::<f32>();
            }
            for (j, r) in s.rows.clone().enumerate() {
                let v = &values[r * d..(r + 1) * d];
                for i in 0..g {
                    let h = first + i;
                    axpy::<FUSED>(logits[i * n + j], v, &mut acc[h * d..(h + 1) * d]);
                }
            }
        }
        Self { max, sum, acc }
    }

    /// Combines parts: each part's sums are rescaled to the overall max.
    pub(crate) fn merge(parts: &[Partial], h_q: usize, d: usize) -> Vec<f32> {
        let mut out = vec![0f32; h_q * d];
        for h in 0..h_q {
            let m = parts.iter().map(|p| p.max[h]).fold(f32::NEG_INFINITY, f32::max);
            if m == f32::NEG_INFINITY {
                continue;
            }
            let mut total = 0f32;
            let o = &mut out[h * d..(h + 1) * d];
            for p in parts {
                if p.max[h] == f32::NEG_INFINITY {
                    continue;
                }
                let c = exp(p.max[h] - m);
                total += c * p.sum[h];
                axpy::<false>(c, &p.acc[h * d..(h + 1) * d], o);
            }
            o.iter_mut().for_each(|x| *x /= total);
        }
        out
    }
}

#[inline(always)]
pub(crate) fn dot<const FUSED: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut s = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..16 {
            s[k] = madd::<FUSED>(x[k], y[k], s[k]);
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    s.iter().sum::<f32>() + tail
}

/// The rows of `segments` in blocks of at most [`DECODE_BLOCK`] rows, each
/// with its segment.
fn decode_blocks(segments: &[Segment]) -> impl Iterator<Item = (&Segment, Range<usize>)> {
    segments.iter().flat_map(|s| s.rows.clone().step_by(DECODE_BLOCK).map(move |start| (s, start..(start + DECODE_BLOCK).min(s.rows.end))))
}

/// Rows `start, start + stride, ..` (`len` of them, at most [`DECODE_BLOCK`])
/// of one KV head: a block of the AVX-512 decode kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StridedBlock {
    pub(crate) kv_head: usize,
    pub(crate) start: usize,
    pub(crate) stride: usize,
    pub(crate) len: usize,
}

/// The rows of `segments` in blocks of at most [`DECODE_BLOCK`] rows of one KV
/// head each: a segment of several rows in consecutive blocks (stride 1), and
/// a head's one-row segments (decode appends them one per step and KV head,
/// so each head's are evenly spaced) gathered into blocks of a common stride,
/// in the order they come. Every row of `segments` is in exactly one block.
pub(crate) fn strided_blocks(segments: &[Segment]) -> Vec<StridedBlock> {
    let mut out = Vec::new();
    // Each KV head's one-row block being gathered.
    let mut open: Vec<Option<StridedBlock>> = Vec::new();
    for s in segments {
        if s.rows.len() != 1 {
            out.extend(decode_blocks(std::slice::from_ref(s)).map(|(_, r)| StridedBlock { kv_head: s.kv_head, start: r.start, stride: 1, len: r.len() }));
            continue;
        }
        if open.len() <= s.kv_head {
            open.resize(s.kv_head + 1, None);
        }
        let r = s.rows.start;
        let slot = &mut open[s.kv_head];
        match slot {
            Some(b) if b.len < DECODE_BLOCK && r > b.start + (b.len - 1) * b.stride && (b.len == 1 || r == b.start + b.len * b.stride) => {
                if b.len == 1 {
                    b.stride = r - b.start;
                }
                b.len += 1;
            }
            _ => {
                if let Some(b) = slot.take() {
                    out.push(b);
                }
                *slot = Some(StridedBlock { kv_head: s.kv_head, start: r, stride: 1, len: 1 });
            }
        }
    }
    out.extend(open.into_iter().flatten());
    out
}

/// One block of the online softmax of a query head with running `max` and
/// `sum`: turns the logits `p` into `exp(p - max)` with the updated max and
/// adds them to `sum`. Returns the factor the head's value accumulator must be
/// multiplied by when the max rose (flash attention's rescaling), else `None`.
#[inline(always)]
pub(crate) fn softmax_block(p: &mut [f32], max: &mut f32, sum: &mut f32) -> Option<f32> {
    let block_max = max_lanes(p);
    let shrink = (block_max > *max).then(|| {
        let shrink = exp(*max - block_max);
        *sum *= shrink;
        *max = block_max;
        shrink
    });
    let m = *max;
    p.iter_mut().for_each(|x| *x = exp(*x - m));
    *sum += sum_lanes(p);
    shrink
}

/// `a . b` for `D`-long rows (`D` a multiple of 16): 16 lanes, summed as a tree.
#[inline(always)]
fn dot_lanes<const D: usize, const FUSED: bool>(a: &[f32; D], b: &[f32]) -> f32 {
    let mut s = [0f32; 16];
    for (x, y) in a.chunks_exact(16).zip(b[..D].chunks_exact(16)) {
        for k in 0..16 {
            s[k] = madd::<FUSED>(x[k], y[k], s[k]);
        }
    }
    tree16(s)
}

#[inline(always)]
fn tree16(s: [f32; 16]) -> f32 {
    let h: [f32; 8] = std::array::from_fn(|k| s[k] + s[k + 8]);
    let h: [f32; 4] = std::array::from_fn(|k| h[k] + h[k + 4]);
    (h[0] + h[2]) + (h[1] + h[3])
}

/// Sum of `x`, 16 lanes at a time.
#[inline(always)]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut s = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for k in 0..16 {
            s[k] += c[k];
        }
    }
    tree16(s) + tail
}

/// Max of `x` (`-inf` if empty), 16 lanes at a time.
#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let mut s = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for k in 0..16 {
            s[k] = if c[k] > s[k] { c[k] } else { s[k] };
        }
    }
    s.iter().copied().fold(tail, f32::max)
}

#[inline(always)]
fn axpy<const FUSED: bool>(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y = madd::<FUSED>(a, *x, *y);
    }
}

/// `e^x` for `x <= 0` to about 2e-7 relative error (`e^-87` below -87, where
/// the softmax weight is negligible anyway; NaN is not propagated), written
/// so that it vectorises: `e^x = 2^n * e^f`, `n = round(x / ln 2)`,
/// `f = x - n ln 2` (Cody-Waite: `ln 2` in two parts, so `f` is exact to a few
/// ulp), `|f| <= ln(2)/2`, `e^f` by its Taylor polynomial of degree 7.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let f = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + f * (1.0 + f * (0.5 + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0 + f * (1.0 / 5040.0)))))));
    // 2^n from the bits of `n + 1.5 * 2^23` (`n` is an integer in [-126, 1]):
    // integer ops that vectorise, where `n as i32` (saturating) does not.
    const MAGIC: f32 = 12_582_912.0;
    let bits = (n + MAGIC).to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23;
    p * f32::from_bits(bits)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bridge::{write_in_place, write_ints_in_place};
    use burn::tensor::{Int, TensorData};

    /// `len` pseudo-random values in [-2, 2), reproducible from `seed`.
    pub(crate) fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// Softmax attention in f64, one query head at a time, over explicit rows.
    fn reference(q: &[f32], h_q: usize, h_kv: usize, d: usize, keys: &[f32], vals: &[f32], segments: &[Segment]) -> Vec<f64> {
        let g = h_q / h_kv;
        let mut out = vec![0f64; h_q * d];
        for h in 0..h_q {
            let rows: Vec<usize> = segments.iter().filter(|s| s.kv_head == h / g).flat_map(|s| s.rows.clone()).collect();
            let logits: Vec<f64> = rows
                .iter()
                .map(|&r| (0..d).map(|c| q[h * d + c] as f64 * keys[r * d + c] as f64).sum::<f64>() / (d as f64).sqrt())
                .collect();
            let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
            for (&r, l) in rows.iter().zip(&logits) {
                for c in 0..d {
                    out[h * d + c] += (l - m).exp() / z * vals[r * d + c] as f64;
                }
            }
        }
        out
    }

    #[test]
    fn exp_is_accurate_on_the_softmax_range() {
        for i in 0..=20000 {
            let x = -(i as f32) * 0.0043;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            assert!((got - want).abs() <= 4e-7 * want + 1e-38, "exp({x}) = {got}, want {want}");
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn attend_rows_matches_f64_reference() {
        // Head dims 64, 128 and 256 take the blocked kernels, 8 and 40 the generic
        // one; 9 query heads per KV head take two register groups in `decode_kernel`.
        for (d, h_q, h_kv) in [(8, 6, 2), (40, 6, 2), (64, 6, 2), (128, 6, 2), (256, 6, 2), (128, 18, 2), (64, 14, 2)] {
            // Interleaved single rows (decode appends) after grouped runs (prefill),
            // with unused rows in between; runs that end inside a block, and a
            // later run whose logits exceed the earlier max (rescaling).
            let segments = vec![
                Segment { kv_head: 0, rows: 0..40 },
                Segment { kv_head: 1, rows: 45..3000 },
                Segment { kv_head: 0, rows: 3000..3001 },
                Segment { kv_head: 1, rows: 3001..3002 },
                Segment { kv_head: 0, rows: 3002..3003 },
                Segment { kv_head: 0, rows: 3003..3200 },
            ];
            let q = values(h_q * d, 1);
            let mut keys = values(3210 * d, 2);
            keys[3100 * d..3101 * d].iter_mut().zip(&q).for_each(|(k, &q)| *k = 3.0 * q);
            let vals = values(3210 * d, 3);
            let want = reference(&q, h_q, h_kv, d, &keys, &vals, &segments);
            for threads in [1, 2, 5] {
                let got = attend_rows(&q, h_q, h_kv, d, &keys, &vals, &segments, threads).expect("valid input");
                for (k, (&a, &b)) in got.iter().zip(&want).enumerate() {
                    assert!((a as f64 - b).abs() < 1e-5, "d {d} threads {threads} [{k}]: {a} vs {b}");
                }
            }
        }
    }

    /// The layout decode leaves: each KV head's kept prefix, then one row per
    /// step and head, the heads interleaved (150 steps: more than two blocks
    /// of one-row segments per head), with a gap breaking the stride once.
    fn decode_layout(h_kv: usize) -> Vec<Segment> {
        let mut segments: Vec<Segment> = (0..h_kv).map(|g| Segment { kv_head: g, rows: g * 70..g * 70 + 50 + g }).collect();
        let mut row = h_kv * 70;
        for step in 0..150 {
            if step == 90 {
                row += 5;
            }
            for g in 0..h_kv {
                segments.push(Segment { kv_head: g, rows: row..row + 1 });
                row += 1;
            }
        }
        segments
    }

    #[test]
    fn strided_blocks_cover_every_row_once_within_one_head() {
        let segments = decode_layout(3);
        let blocks = strided_blocks(&segments);
        let mut rows: Vec<(usize, usize)> = Vec::new();
        for b in &blocks {
            assert!(b.len >= 1 && b.len <= DECODE_BLOCK, "{b:?}");
            rows.extend((0..b.len).map(|j| (b.kv_head, b.start + j * b.stride)));
        }
        let mut want: Vec<(usize, usize)> = segments.iter().flat_map(|s| s.rows.clone().map(move |r| (s.kv_head, r))).collect();
        rows.sort_unstable();
        want.sort_unstable();
        assert_eq!(rows, want);
        // The one-row segments are gathered: 150 per head, broken once by the gap,
        // in blocks of at most DECODE_BLOCK.
        let gathered = blocks.iter().filter(|b| b.stride == 3).count();
        assert!(gathered <= 3 * 4, "{gathered} strided blocks for 3 x 150 rows");
        assert!(blocks.iter().any(|b| b.stride == 3 && b.len == DECODE_BLOCK));
    }

    #[test]
    fn attend_rows_matches_f64_reference_on_the_decode_layout() {
        for d in [8, 64, 128] {
            let (h_q, h_kv) = (9, 3);
            let segments = decode_layout(h_kv);
            let rows = segments.iter().map(|s| s.rows.end).max().unwrap_or(0);
            let q = values(h_q * d, 7);
            let mut keys = values(rows * d, 8);
            // A late row of head 1 with a large logit (rescaling inside the gathered rows).
            let late = segments.iter().rev().find(|s| s.kv_head == 1).map(|s| s.rows.start).unwrap_or(0) - 30 * h_kv;
            keys[late * d..(late + 1) * d].iter_mut().zip(&q[3 * d..]).for_each(|(k, &q)| *k = 3.0 * q);
            let vals = values(rows * d, 9);
            let want = reference(&q, h_q, h_kv, d, &keys, &vals, &segments);
            for threads in [1, 2] {
                let got = attend_rows(&q, h_q, h_kv, d, &keys, &vals, &segments, threads).expect("valid input");
                for (k, (&a, &b)) in got.iter().zip(&want).enumerate() {
                    assert!((a as f64 - b).abs() < 1e-5, "d {d} threads {threads} [{k}]: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn prefill_attention_matches_f64_causal_reference_on_views() {
        type F = burn_flex::Flex;
        let device = Default::default();
        let (h_q, h_kv, d) = (6, 2, 64);
        // 100 new queries after 37 cached keys; K/V are views of a larger buffer
        // (as the full cache hands them over).
        let (past, t, cap) = (37, 100, 200);
        let s = past + t;
        let q = values(h_q * t * d, 4);
        let kbuf = values(h_kv * cap * d, 5);
        let vbuf = values(h_kv * cap * d, 6);
        let tensor = |v: &[f32], shape: [usize; 3]| Tensor::<F, 3>::from_data(TensorData::new(v.to_vec(), shape), &device);
        let k = tensor(&kbuf, [h_kv, cap, d]).slice([0..h_kv, 0..s, 0..d]);
        let v = tensor(&vbuf, [h_kv, cap, d]).slice([0..h_kv, 0..s, 0..d]);
        let got = prefill_attention(&tensor(&q, [h_q, t, d]), &k, &v).expect("flex").into_data().to_vec::<f32>().unwrap();
        let g = h_q / h_kv;
        for h in 0..h_q {
            for i in 0..t {
                // Query i sees keys 0..=past+i of its KV head.
                let segs = [Segment { kv_head: h / g, rows: (h / g) * cap..(h / g) * cap + past + i + 1 }];
                let one = reference(&q[(h * t + i) * d..(h * t + i + 1) * d], 1, 1, d, &kbuf, &vbuf, &[Segment { kv_head: 0, ..segs[0].clone() }]);
                for c in 0..d {
                    let a = got[(h * t + i) * d + c] as f64;
                    assert!((a - one[c]).abs() < 1e-5, "head {h} query {i} [{c}]: {a} vs {}", one[c]);
                }
            }
        }
        let nd = Tensor::<burn_ndarray::NdArray<f32>, 3>::zeros([2, 3, 64], &Default::default());
        assert!(prefill_attention(&nd, &nd, &nd).is_none(), "other backends take the generic path");
        let odd = Tensor::<F, 3>::zeros([2, 3, 16], &device);
        assert!(prefill_attention(&odd, &odd, &odd).is_none(), "head dims without a kernel take the generic path");
    }

    /// The portable kernels (what CPUs without AVX-512 or AVX2 run; this
    /// machine's dispatch may never reach them) against the same references.
    #[test]
    fn portable_kernels_match_references() {
        let (h_q, h_kv) = (6, 2);
        let segments = vec![Segment { kv_head: 0, rows: 0..150 }, Segment { kv_head: 1, rows: 150..333 }, Segment { kv_head: 0, rows: 333..334 }];
        for d in [40, 64, 128] {
            let q = values(h_q * d, 7);
            let keys = values(340 * d, 8);
            let vals = values(340 * d, 9);
            let want = reference(&q, h_q, h_kv, d, &keys, &vals, &segments);
            let scale = 1.0 / (d as f32).sqrt();
            for fused in [false, true] {
                let part = if fused {
                    Partial::compute_portable::<true>(&q, h_q, h_q / h_kv, d, &keys, &vals, &segments, scale)
                } else {
                    Partial::compute_portable::<false>(&q, h_q, h_q / h_kv, d, &keys, &vals, &segments, scale)
                };
                let got = Partial::merge(&[part], h_q, d);
                for (k, (&a, &b)) in got.iter().zip(&want).enumerate() {
                    assert!((a as f64 - b).abs() < 1e-5, "d {d} fused {fused} [{k}]: {a} vs {b}");
                }
            }
        }
        // Window means: the dispatched kernel and the portable one against f64.
        let (n_tok, window) = (200, 7);
        let logits = values(window * n_tok, 10);
        let n = n_tok - window;
        let mut want = vec![0f64; n];
        for i in 0..window {
            let row: Vec<f64> = logits[i * n_tok..i * n_tok + n + i + 1].iter().map(|&x| x as f64 * 0.125).collect();
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|x| (x - m).exp()).sum();
            want.iter_mut().zip(&row).for_each(|(w, x)| *w += (x - m).exp() / z / window as f64);
        }
        let portable = column_sums_portable(&logits, n_tok, window, n, n, 0.125, 1.0 / window as f32);
        let dispatched = column_sums(&logits, n_tok, window, n, n, 0.125, 1.0 / window as f32);
        for got in [dispatched, portable] {
            for (j, (&a, &b)) in got.iter().zip(&want).enumerate() {
                assert!((a as f64 - b).abs() < 1e-6, "window mean [{j}]: {a} vs {b}");
            }
        }
    }

    #[test]
    fn attend_rows_rejects_bad_segments_and_zeroes_empty_heads() {
        let (q, kv) = (values(4 * 2, 1), values(10 * 2, 2));
        let seg = |g, rows| vec![Segment { kv_head: g, rows }];
        assert!(attend_rows(&q, 4, 2, 2, &kv, &kv, &seg(2, 0..3), 1).is_none(), "KV head out of range");
        assert!(attend_rows(&q, 4, 2, 2, &kv, &kv, &seg(0, 5..11), 1).is_none(), "rows past the storage");
        assert!(attend_rows(&q, 4, 3, 2, &kv, &kv, &seg(0, 0..3), 1).is_none(), "H_kv does not divide H_q");
        let out = attend_rows(&q, 4, 2, 2, &kv, &kv, &seg(1, 0..3), 1).expect("valid");
        assert!(out[..4].iter().all(|&x| x == 0.0), "query heads of KV head 0 see nothing");
        assert!(out[4..].iter().all(|&x| x != 0.0));
    }

    #[test]
    fn write_in_place_writes_without_copying_and_declines_shared_buffers() {
        type F = burn_flex::Flex;
        let device = Default::default();
        let buf = Tensor::<F, 2>::zeros([4, 3], &device);
        let src = Tensor::<F, 2>::from_data(TensorData::new(vec![1f32, 2., 3., 4., 5., 6.], [2, 3]), &device);
        let out = write_in_place(buf, &src, &[(3, 0, 3), (9, 3, 3)]).expect("unique f32 buffer");
        assert_eq!(out.to_data().to_vec::<f32>().unwrap(), vec![0., 0., 0., 1., 2., 3., 0., 0., 0., 4., 5., 6.]);
        let view = out.clone();
        let shared = write_in_place(out, &src, &[(0, 0, 3)]).expect_err("a view is alive");
        assert_eq!(shared.to_data(), view.to_data(), "declined writes leave the buffer untouched");
        drop(view);
        assert!(write_in_place(shared, &src, &[(10, 0, 3)]).is_err(), "run past the end");

        let ints = Tensor::<F, 1, Int>::zeros([5], &device);
        let ints = write_ints_in_place(ints, 2, &[7, 8]).expect("unique");
        assert_eq!(ints.to_data().to_vec::<i32>().unwrap(), vec![0, 0, 7, 8, 0]);
        let nd = Tensor::<burn_ndarray::NdArray<f32>, 2>::zeros([2, 2], &Default::default());
        assert!(write_in_place(nd.clone(), &nd, &[(0, 0, 1)]).is_err(), "other backends take the generic path");
    }
}
