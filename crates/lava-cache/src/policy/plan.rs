//! Glue shared by [`select_positions`](crate::select_positions) and
//! [`CompressedCache`](crate::CompressedCache): ranking a layer's scores and
//! turning budgets into kept positions.

use super::{head_budget, layer_budget, scorer::ScoreMatrix, HeadAllocation, LayerAllocation, PolicyConfig};

/// One layer's scores ranked per KV head: what every selection works from
/// (the prefill, the dynamic-allocation cascade, re-scoring after prefill).
/// Heads may rank different numbers of tokens (after evictions).
#[derive(Debug, Clone)]
pub(crate) struct Ranking {
    /// Per KV head: the evictable positions from the highest score to the lowest.
    pub order: Vec<Vec<usize>>,
    /// Per KV head: their scores, in that order.
    pub sorted: Vec<Vec<f32>>,
    /// The layer's weight in a dynamic layer allocation: the normalised entropy
    /// of the scores (LAVa) or the CAKE preference.
    pub weight: f64,
}

impl Ranking {
    /// Ranks `rows[g]`, the scores of KV head `g`'s tokens at `positions[g]`
    /// (ties: lower index, i.e. lower position), for a layer of weight `weight`.
    pub fn new(rows: &[Vec<f32>], positions: &[Vec<usize>], weight: f64) -> Self {
        let mut order = Vec::with_capacity(rows.len());
        let mut sorted = Vec::with_capacity(rows.len());
        for (row, ps) in rows.iter().zip(positions) {
            let idx = head_budget::rank_descending(row);
            order.push(idx.iter().map(|&i| ps[i]).collect());
            sorted.push(idx.iter().map(|&i| row[i]).collect());
        }
        Self { order, sorted, weight }
    }

    /// Ranks a prefill's `scores` (`[H_kv, n]`, every head over positions `0..n`).
    pub fn of_prefill(scores: &ScoreMatrix, weight: f64) -> Self {
        let rows: Vec<Vec<f32>> = scores.iter_rows().map(<[f32]>::to_vec).collect();
        let positions = vec![(0..scores.cols()).collect(); scores.rows()];
        Self::new(&rows, &positions, weight)
    }
}

/// Layer budgets that need no scores (uniform, pyramid) for `layers` layers with
/// `n` prefix tokens; `None` for the dynamic ones (entropy, preference).
pub(crate) fn static_layer_budgets(
    allocation: LayerAllocation,
    config: &PolicyConfig,
    layers: usize,
    n: usize,
) -> Option<Vec<usize>> {
    let base = config.budget_beyond_window();
    match allocation {
        LayerAllocation::Uniform => Some(layer_budget::uniform(layers, base)),
        LayerAllocation::Pyramid => Some(layer_budget::pyramid(layers, base, n, config.pyramid_beta)),
        LayerAllocation::Entropy | LayerAllocation::Preference => None,
    }
}

/// Budgets of a dynamic allocation from the weights of the layers seen so far
/// (all `layers` of them once the prefill is over), `n` prefix tokens.
pub(crate) fn dynamic_layer_budgets(
    allocation: LayerAllocation,
    config: &PolicyConfig,
    weights: &[f64],
    layers: usize,
    n: usize,
) -> Vec<usize> {
    let base = config.budget_beyond_window();
    match allocation {
        LayerAllocation::Preference => layer_budget::preference(weights, layers, base, n),
        _ => layer_budget::entropy(weights, layers, base),
    }
}

/// What the prefill cascade of a dynamic allocation leaves each layer: the
/// budget after its last truncation, i.e. the smallest of the budgets it was
/// given as the layers after it were seen (a cascade only truncates). For the
/// entropy allocation the shares only shrink, so this is the final formula;
/// the CAKE preference redistributes the excess over the prefix and rounding
/// remainders, which can raise a layer's share by a token.
pub(crate) fn cascade_layer_budgets(allocation: LayerAllocation, config: &PolicyConfig, weights: &[f64], n: usize) -> Vec<usize> {
    let layers = weights.len();
    let mut out = vec![usize::MAX; layers];
    for seen in 1..=layers {
        let step = dynamic_layer_budgets(allocation, config, &weights[..seen], layers, n);
        out.iter_mut().zip(step).for_each(|(b, s)| *b = (*b).min(s));
    }
    out
}

/// Prefix tokens each KV head of a prefill keeps for layer budget `budget`:
/// all `n` if `budget >= n` (the layer is not compressed), else the head
/// allocation ([`ragged_head_caps`] on rows of equal length `n`).
pub(crate) fn head_caps(allocation: HeadAllocation, ranked: &Ranking, budget: usize, config: &PolicyConfig) -> Vec<usize> {
    let n = ranked.sorted.first().map_or(0, Vec::len);
    if budget >= n {
        return vec![n; ranked.sorted.len()];
    }
    ragged_head_caps(allocation, &ranked.sorted, budget, config)
}

/// Head budgets (prefix tokens per KV head) for layer budget `budget` when the
/// heads have different numbers of evictable tokens: `sorted[g]` holds head
/// `g`'s scores, descending (its length is the head's evictable count).
///
/// The result is the head's *budget*, not clamped to its length: head `g`
/// keeps the first `min(caps[g], sorted[g].len())` tokens of its ranking.
/// When `budget` reaches the longest row every head gets `budget` (nothing is
/// evicted). Uniform heads get `budget`. Adaptive heads run
/// [`head_budget::adaptive`] on the rows padded with `-inf` to the longest one
/// (padding ranks last, so it only enters the pool when the real tokens do not
/// fill it), so rows of equal length are the plain pool.
pub(crate) fn ragged_head_caps(allocation: HeadAllocation, sorted: &[Vec<f32>], budget: usize, config: &PolicyConfig) -> Vec<usize> {
    let heads = sorted.len();
    let n_max = sorted.iter().map(Vec::len).max().unwrap_or(0);
    if budget >= n_max {
        return vec![budget; heads];
    }
    match allocation {
        HeadAllocation::Uniform => vec![budget; heads],
        HeadAllocation::Adaptive => {
            let data: Vec<f32> = sorted
                .iter()
                .flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(f32::NEG_INFINITY, n_max - row.len())))
                .collect();
            match ScoreMatrix::new(heads, n_max, data) {
                Ok(padded) => head_budget::adaptive_with_floor(&padded, budget, config.floor_alpha, config.head_floor(budget)),
                // `heads * n_max` values by construction.
                Err(_) => vec![budget; heads],
            }
        }
    }
}

/// Kept positions per KV head, ascending: the first `caps[g]` of `order[g]`
/// and the window `n..n_tok`.
pub(crate) fn kept_positions(order: &[Vec<usize>], caps: &[usize], n: usize, n_tok: usize) -> Vec<Vec<usize>> {
    order
        .iter()
        .zip(caps)
        .map(|(ord, &cap)| {
            let mut kept: Vec<usize> = ord[..cap.min(ord.len())].to_vec();
            kept.sort_unstable();
            kept.extend(n..n_tok);
            kept
        })
        .collect()
}
