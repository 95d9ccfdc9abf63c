//! Layer budgets `B_l`, tokens beyond the window per KV head: part 2 of a policy
//! (`lava-algorithm.md` §3).
//!
//! `base = B - w` is the per-layer mean the allocations share. A budget at or
//! above the prefix length `n` means the layer keeps its whole prefix.

use super::scorer::ScoreMatrix;

/// Uniform (SnapKV, Ada-SnapKV): `B_l = B - w` for each of the `layers`.
pub fn uniform(layers: usize, base: usize) -> Vec<usize> {
    vec![base; layers]
}

/// PyramidKV: budgets decreasing linearly from the first layer to the last,
/// with mean about `base = B - w`.
///
/// `min = base / beta`, `max = 2*base - min`; if `max >= n` then `max = n` and
/// `min = 2*base - max`; `step = (max - min) / (L - 1)` (floor division);
/// `B_l = max - l*step`. Integer arithmetic throughout, as the reference.
///
/// Totality: with one layer (where the reference divides by zero) the single
/// layer gets `base`; `beta = 0` is treated as 1; a budget that would be
/// negative is 0 (it cannot happen for `base < n`).
pub fn pyramid(layers: usize, base: usize, n: usize, beta: usize) -> Vec<usize> {
    if layers <= 1 {
        return vec![base; layers];
    }
    let base = base as i128;
    let mut min = base / beta.max(1) as i128;
    let mut max = 2 * base - min;
    if max >= n as i128 {
        max = n as i128;
        min = 2 * base - max;
    }
    let step = (max - min).div_euclid(layers as i128 - 1);
    (0..layers as i128).map(|l| (max - l * step).max(0) as usize).collect()
}

/// Normalised entropy of one layer's scores (`[H_kv, n]`, flattened):
/// `P = S / (sum S + 1e-16)`, `e = -sum P ln(P + 1e-16) / ln(H_kv * n)`.
/// Computed in `f64`. Returns 0 when it is undefined (fewer than two scores)
/// or not finite (non-finite scores).
pub fn normalized_entropy(scores: &ScoreMatrix) -> f64 {
    let values = scores.data();
    if values.len() < 2 {
        return 0.0;
    }
    let total: f64 = values.iter().map(|&x| x as f64).sum();
    let denom = total + 1e-16;
    let entropy: f64 = values
        .iter()
        .map(|&x| {
            let p = x as f64 / denom;
            -p * (p + 1e-16).ln()
        })
        .sum();
    let e = entropy / (values.len() as f64).ln();
    if e.is_finite() {
        e
    } else {
        0.0
    }
}

/// LAVa entropy allocation: `B_l = floor(e_l / sum_k e_k * L * base)` for each
/// layer whose entropy is given, `L = total_layers`.
///
/// Given all `L` entropies this is the final allocation; given only the first
/// layers' (the prefill cascade) it is the allocation over the layers seen so
/// far, which only shrinks as more layers are seen. Negative or non-finite
/// entropies count as 0; if they sum to 0 the allocation falls back to uniform
/// (`B_l = base`), where the reference would divide by zero.
pub fn entropy(entropies: &[f64], total_layers: usize, base: usize) -> Vec<usize> {
    let clean = |e: f64| if e.is_finite() && e > 0.0 { e } else { 0.0 };
    let sum: f64 = entropies.iter().map(|&e| clean(e)).sum();
    if sum <= 0.0 {
        return vec![base; entropies.len()];
    }
    let total = (total_layers as f64) * (base as f64);
    entropies.iter().map(|&e| (clean(e) / sum * total).floor() as usize).collect()
}

/// CAKE preference allocation (cakekv defaults): `B_l = floor(p_l / sum_k p_k *
/// L * base)` for each layer whose preference `p_l` is given (`L =
/// total_layers`), then [`adjust_to_prefix`] with the prefix length `n` and the
/// total `L * base`. As [`entropy`], given only the first layers' preferences
/// it is the allocation over the layers seen so far (the prefill cascade).
/// Negative or non-finite preferences count as 0; if they sum to 0 every layer
/// gets `base`.
pub fn preference(preferences: &[f64], total_layers: usize, base: usize, n: usize) -> Vec<usize> {
    let shares = entropy(preferences, total_layers, base);
    adjust_to_prefix(shares, total_layers.saturating_mul(base), n)
}

/// cakekv's `adjust_budgets`: caps every budget at `n` (the prefix length) and
/// spreads the excess evenly over the layers still below `n` (the remainder,
/// one token each, to the first of them); then, if the budgets do not sum to
/// `total`, spreads the difference the same way (adding over the layers below
/// `n`, removing over the layers above 1). Integer arithmetic, as the
/// reference's numpy code; a layer may end above `n` after the spreading (it
/// then keeps its whole prefix).
pub fn adjust_to_prefix(budgets: Vec<usize>, total: usize, n: usize) -> Vec<usize> {
    let mut b: Vec<i128> = budgets.into_iter().map(|x| x as i128).collect();
    let (n, total) = (n as i128, total as i128);
    let spread = |b: &mut [i128], amount: i128, valid: &[bool], sign: i128| {
        let count = valid.iter().filter(|&&v| v).count() as i128;
        if count == 0 {
            return;
        }
        let (each, mut rest) = (amount / count, amount % count);
        for (x, &ok) in b.iter_mut().zip(valid) {
            if ok {
                *x += sign * each;
                if rest > 0 {
                    *x += sign;
                    rest -= 1;
                }
            }
        }
    };
    let excess: i128 = b.iter().map(|&x| (x - n).max(0)).sum();
    b.iter_mut().for_each(|x| *x = (*x).min(n));
    if excess > 0 {
        let valid: Vec<bool> = b.iter().map(|&x| x < n).collect();
        spread(&mut b, excess, &valid, 1);
    }
    let diff = total - b.iter().sum::<i128>();
    if diff > 0 {
        let valid: Vec<bool> = b.iter().map(|&x| x < n).collect();
        spread(&mut b, diff, &valid, 1);
    } else if diff < 0 {
        let valid: Vec<bool> = b.iter().map(|&x| x > 1).collect();
        spread(&mut b, -diff, &valid, -1);
    }
    b.into_iter().map(|x| x.max(0) as usize).collect()
}
