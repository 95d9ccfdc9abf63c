//! Head budgets inside a layer: part 3 of a policy (`lava-algorithm.md` §4),
//! and the ranking every selection uses.
//!
//! Ties: scores are ordered descending, and equal scores go to the lower index
//! (the lower position inside a head; the lower head, then the lower rank, in
//! the adaptive pool). The reference leaves ties to PyTorch's `topk`/`sort`,
//! whose order is unspecified; max pooling makes exact ties common (neighbours
//! share a window maximum), so the project fixes this rule.

use std::cmp::Ordering;

use super::scorer::ScoreMatrix;

/// The selection order: `a` (at index `ia`) before `b` (at `ib`) when its score
/// is higher, or equal and its index lower. NaN sorts as `f32::total_cmp` puts
/// it (positive NaN first); `-0.0` equals `0.0`.
pub fn score_order(a: f32, ia: usize, b: f32, ib: usize) -> Ordering {
    let by_score = match b.partial_cmp(&a) {
        Some(o) => o,
        None => b.total_cmp(&a),
    };
    by_score.then(ia.cmp(&ib))
}

/// Indices of `scores` from the highest score to the lowest (ties: lower
/// index first).
pub fn rank_descending(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| score_order(scores[a], a, scores[b], b));
    order
}

/// Uniform: each of the `heads` KV heads keeps `min(B_l, n)` prefix tokens.
pub fn uniform(heads: usize, layer_budget: usize, n: usize) -> Vec<usize> {
    vec![layer_budget.min(n); heads]
}

/// Ada-KV with floor `alpha` and the layer's own floor `floor(alpha * B_l)`
/// ([`FloorRule::Layer`](super::FloorRule::Layer), what the Ada-KV code
/// runs): [`adaptive_with_floor`] with that floor.
pub fn adaptive(sorted: &ScoreMatrix, layer_budget: usize, alpha: f64) -> Vec<usize> {
    adaptive_with_floor(sorted, layer_budget, alpha, (alpha * layer_budget as f64).floor() as usize)
}

/// The adaptive head allocation (Ada-SnapKV, Ada-PyramidKV, LAVa): prefix
/// tokens per KV head, from `sorted`, `[H_kv, n]`, each row already sorted
/// descending.
///
/// The top `H_kv * B_l` entries of `sorted` form one pool (ties: lower head,
/// then lower rank); `count_g` of them belong to head `g`, which keeps
/// `cap_g = round_half_even(count_g * (1 - alpha) + floor)` tokens, at most
/// `n`. The floor comes from the policy's [`FloorRule`](super::FloorRule)
/// ([`PolicyConfig::head_floor`](super::PolicyConfig::head_floor)); the sum is
/// computed in `f32` like the reference's `torch` tensors, so that halves round
/// the same way.
pub fn adaptive_with_floor(sorted: &ScoreMatrix, layer_budget: usize, alpha: f64, floor: usize) -> Vec<usize> {
    let (heads, n) = (sorted.rows(), sorted.cols());
    let values = sorted.data();
    let pool = heads.saturating_mul(layer_budget).min(values.len());
    let mut counts = vec![0usize; heads];
    if pool > 0 && n > 0 {
        let mut flat: Vec<usize> = (0..values.len()).collect();
        flat.select_nth_unstable_by(pool - 1, |&a, &b| score_order(values[a], a, values[b], b));
        flat[..pool].iter().for_each(|&i| counts[i / n] += 1);
    }
    let floor = floor as f32;
    let keep = (1.0 - alpha) as f32;
    counts
        .into_iter()
        .map(|count| {
            let cap = (count as f32 * keep + floor).round_ties_even();
            // `as usize` saturates: NaN and negatives give 0.
            (cap as usize).min(n)
        })
        .collect()
}
