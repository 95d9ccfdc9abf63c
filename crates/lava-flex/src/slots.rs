//! Attention over the slots of a compressed cache's layer, on the host (flex).
//!
//! A layer of `lava-cache`'s compressed cache stores its kept tokens as rows
//! of flat `[capacity, D]` K/V storages, one row per (KV head, token) slot, in
//! any order, each slot tagged `(kv_head, position)`. Query head `h` reads the
//! slots of KV head `h / G` at positions up to its own. The generic path of
//! `lava-cache` (`compressed/storage.rs`) multiplies every query row with every
//! slot and hides the others with a mask tensor; these kernels visit only a
//! head's own slots and build no mask:
//!
//! - [`chunk_attention`]: a chunk of `T` new tokens attending over the slots
//!   (causal among themselves), flash attention per KV head
//!   ([`crate::attention`]'s prefill kernel on the head's gathered rows);
//! - [`window_attention`]: the softmax rows of the window queries over the
//!   slots, summed or each, the input of re-scoring.
//!
//! Both decline (`None`) unless the backend is flex, the data plain f32, and
//! the slots what the cache guarantees; the generic path is the reference and
//! the tests of `lava-cache` check both agree.

use burn::tensor::{backend::Backend, Tensor};
use rayon::prelude::*;

use crate::attention::{dot, flash_heads, key_tiles, FlashHead};
use crate::bridge::{from_host, is_flex, is_plain, to_flex};

/// `[H_q, T, D]` attention of the chunk `q [H_q, T, D]` (positions
/// `first .. first + T`) over the slots `slots` (row `r` of `keys`/`values`,
/// each `[R, D]` in memory, is slot `slots[r] = (kv_head, position)`): query
/// `i` of head `h` attends, softmax scaled by `1/sqrt(D)`, over the slots of
/// KV head `h / G` at positions `<= first + i`.
///
/// The chunk's own tokens must be slots, one per (KV head, position `first ..
/// first + T`), every other slot at a position below `first` (what appending a
/// chunk to a compressed cache gives); `None` otherwise, or for a head
/// dimension other than 64 and 128, or unless `B` is flex with f32 storages
/// contiguous from offset 0.
pub fn chunk_attention<B: Backend, const K: usize>(
    q: &Tensor<B, 3>,
    kv_heads: usize,
    keys: &Tensor<B, K>,
    values: &Tensor<B, K>,
    slots: &[(usize, usize)],
    first: usize,
) -> Option<Tensor<B, 3>> {
    let [h_q, t, d] = q.dims();
    if !is_flex::<B>() || t == 0 || kv_heads == 0 || h_q % kv_heads != 0 || !matches!(d, 64 | 128) {
        return None;
    }
    let order = chunk_order(slots, kv_heads, first, t)?;
    let qf = to_flex(q.clone())?.to_contiguous();
    let (kf, vf) = (to_flex(keys.clone())?, to_flex(values.clone())?);
    if !is_plain(&kf) || !is_plain(&vf) {
        return None;
    }
    let (ks, vs) = (kf.storage::<f32>(), vf.storage::<f32>());
    if slots.len() * d > ks.len().min(vs.len()) {
        return None;
    }
    // Per KV head: its keys as tiles and its values gathered, past rows first.
    let gathered: Vec<(Vec<f32>, Vec<f32>)> = order
        .par_iter()
        .map(|(rows, _)| {
            let tiles = key_tiles(rows.iter().map(|&r| &ks[r * d..(r + 1) * d]), rows.len(), d);
            let mut v = Vec::with_capacity(rows.len() * d);
            rows.iter().for_each(|&r| v.extend_from_slice(&vs[r * d..(r + 1) * d]));
            (tiles, v)
        })
        .collect();
    let heads: Vec<FlashHead<'_>> =
        gathered.iter().zip(&order).map(|((kt, v), (_, past))| FlashHead { key_tiles: kt, values: v, past: *past }).collect();
    let out = flash_heads(qf.storage::<f32>(), h_q, t, d, &heads)?;
    from_host(out, [h_q, t, d])
}

/// Per KV head: its slot rows with the ones before `first` first (storage
/// order) and then the chunk's `t` in position order, and the count before
/// the chunk. `None` unless the slots are what [`chunk_attention`] requires.
fn chunk_order(slots: &[(usize, usize)], kv_heads: usize, first: usize, t: usize) -> Option<Vec<(Vec<usize>, usize)>> {
    let mut past: Vec<Vec<usize>> = vec![Vec::new(); kv_heads];
    let mut chunk: Vec<Vec<Option<usize>>> = vec![vec![None; t]; kv_heads];
    for (row, &(g, p)) in slots.iter().enumerate() {
        if g >= kv_heads {
            return None;
        }
        if p < first {
            past[g].push(row);
        } else {
            let at = chunk[g].get_mut(p - first)?;
            if at.replace(row).is_some() {
                return None;
            }
        }
    }
    past.into_iter()
        .zip(chunk)
        .map(|(mut rows, own)| {
            let n = rows.len();
            for r in own {
                rows.push(r?);
            }
            Some((rows, n))
        })
        .collect()
}

/// The attention rows of the window queries `q [H_q, r, D]` (positions
/// `first .. first + r`) over the slots (as [`chunk_attention`]; here any
/// positions), softmax in f32 scaled by `1/sqrt(D)`, query `i` of head `h`
/// seeing the slots of KV head `h / G` at positions `<= first + i`, and 0 at
/// every other slot. With `weight = Some(w)`: `w` times the sum over the
/// queries, `[H_q * S]` (`S = slots.len()`); with `None`: every row,
/// `[H_q * r * S]`. `None` unless `B` is flex with f32 storage contiguous from
/// offset 0, or if a query sees no slot or a slot names a KV head `>= H_kv`.
pub fn window_attention<B: Backend, const K: usize>(
    q: &Tensor<B, 3>,
    kv_heads: usize,
    keys: &Tensor<B, K>,
    slots: &[(usize, usize)],
    first: usize,
    weight: Option<f32>,
) -> Option<Vec<f32>> {
    let [h_q, r, d] = q.dims();
    if !is_flex::<B>() || kv_heads == 0 || h_q % kv_heads != 0 || d == 0 || slots.iter().any(|s| s.0 >= kv_heads) {
        return None;
    }
    let qf = to_flex(q.clone())?.to_contiguous();
    let kf = to_flex(keys.clone())?;
    if !is_plain(&kf) {
        return None;
    }
    let (qs, ks) = (qf.storage::<f32>(), kf.storage::<f32>());
    let used = slots.len();
    if used * d > ks.len() {
        return None;
    }
    let group = h_q / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let dot_row = dot_kernel();
    let per_head: Vec<Vec<usize>> = (0..kv_heads).map(|g| (0..used).filter(|&s| slots[s].0 == g).collect()).collect();
    let rows: Vec<Vec<f32>> = (0..h_q)
        .into_par_iter()
        .map(|h| {
            let mine = &per_head[h / group];
            let mut out = vec![0f32; if weight.is_some() { used } else { r * used }];
            let mut p = Vec::with_capacity(mine.len());
            for i in 0..r {
                let qi = &qs[(h * r + i) * d..(h * r + i + 1) * d];
                let seen: Vec<usize> = mine.iter().copied().filter(|&s| slots[s].1 <= first + i).collect();
                p.clear();
                p.extend(seen.iter().map(|&s| dot_row(qi, &ks[s * d..(s + 1) * d]) * scale));
                let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if !max.is_finite() {
                    return None;
                }
                p.iter_mut().for_each(|x| *x = (*x - max).exp());
                let sum: f32 = p.iter().sum();
                let row = match weight {
                    Some(_) => &mut out[..],
                    None => &mut out[i * used..(i + 1) * used],
                };
                let w = weight.unwrap_or(1.0) / sum;
                for (&s, &e) in seen.iter().zip(&p) {
                    row[s] += e * w;
                }
            }
            Some(out)
        })
        .collect::<Option<_>>()?;
    Some(rows.concat())
}

/// `a . b`, with FMA where the CPU has it (detected once per call of the caller).
fn dot_kernel() -> fn(&[f32], &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features `dot_fma` is compiled for.
            return |a, b| unsafe { dot_fma(a, b) };
        }
    }
    dot::<false>
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    dot::<true>(a, b)
}

#[cfg(test)]
mod tests {
    use super::chunk_order;

    #[test]
    fn chunk_order_puts_past_rows_first_and_the_chunk_in_position_order() {
        // Rows: past (0, 3), chunk (1, 6), past (1, 2), chunk (0, 6), chunk (1, 5), chunk (0, 5).
        let slots = [(0, 3), (1, 6), (1, 2), (0, 6), (1, 5), (0, 5)];
        let order = chunk_order(&slots, 2, 5, 2).expect("valid");
        assert_eq!(order, vec![(vec![0, 5, 3], 1), (vec![2, 4, 1], 1)]);
    }

    #[test]
    fn chunk_order_declines_what_a_chunk_cannot_be() {
        // A chunk token missing, twice, beyond the chunk, or of a KV head out of range.
        assert_eq!(chunk_order(&[(0, 0), (0, 1)], 1, 1, 2), None);
        assert_eq!(chunk_order(&[(0, 1), (0, 1)], 1, 1, 1), None);
        assert_eq!(chunk_order(&[(0, 1), (0, 2)], 1, 1, 1), None);
        assert_eq!(chunk_order(&[(1, 1)], 1, 1, 1), None);
    }
}
