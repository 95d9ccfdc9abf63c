//! Seeded percentile-bootstrap confidence intervals of means.
//!
//! A statistic over prompts is recomputed on `resamples` resamples drawn with replacement
//! (ChaCha8, seeded, so that a report is reproducible), and the 95% interval is the 2.5th and
//! 97.5th percentile of the resampled statistics (linear interpolation between order
//! statistics, as numpy's default `percentile`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Resamples of the report.
pub const DEFAULT_RESAMPLES: usize = 2000;

/// A point estimate and its 95% bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// The statistic on the data itself.
    pub mean: f64,
    /// 2.5th percentile of the resampled statistic.
    pub lo: f64,
    /// 97.5th percentile of the resampled statistic.
    pub hi: f64,
    /// Observations (prompts) behind the statistic.
    pub n: usize,
}

impl Interval {
    /// Half the interval's width, `(hi - lo) / 2`.
    pub fn half_width(&self) -> f64 {
        (self.hi - self.lo) / 2.0
    }

    /// Whether the interval lies strictly above 0 (`Some(true)`), strictly below
    /// (`Some(false)`), or contains 0 (`None`).
    pub fn excludes_zero(&self) -> Option<bool> {
        if self.lo > 0.0 {
            Some(true)
        } else if self.hi < 0.0 {
            Some(false)
        } else {
            None
        }
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// `q`-quantile (in `[0, 1]`) of sorted values, interpolating linearly between neighbours.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let i = pos.floor() as usize;
    let j = (i + 1).min(sorted.len() - 1);
    sorted[i] + (sorted[j] - sorted[i]) * (pos - i as f64)
}

/// The resampled statistic of [`bootstrap_stratified`], one value per resample, unsorted.
pub fn resampled_means(groups: &[&[f64]], resamples: usize, seed: u64) -> Vec<f64> {
    let groups: Vec<&[f64]> = groups.iter().copied().filter(|g| !g.is_empty()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..resamples)
        .map(|_| {
            let total: f64 =
                groups.iter().map(|g| (0..g.len()).map(|_| g[rng.random_range(0..g.len())]).sum::<f64>() / g.len() as f64).sum();
            total / groups.len() as f64
        })
        .collect()
}

/// Stratified bootstrap of the mean of group means (every non-empty group weighs the same):
/// each resample draws, within every group independently, as many values as the group has,
/// with replacement. `None` if there is no value. With one group this is the plain bootstrap
/// of a mean ([`bootstrap_mean`]).
pub fn bootstrap_stratified(groups: &[&[f64]], resamples: usize, seed: u64) -> Option<Interval> {
    let present: Vec<&[f64]> = groups.iter().copied().filter(|g| !g.is_empty()).collect();
    if present.is_empty() {
        return None;
    }
    let point = present.iter().map(|g| mean(g)).sum::<f64>() / present.len() as f64;
    let n = present.iter().map(|g| g.len()).sum();
    if resamples == 0 {
        return Some(Interval { mean: point, lo: point, hi: point, n });
    }
    let mut stats = resampled_means(&present, resamples, seed);
    stats.sort_by(f64::total_cmp);
    Some(Interval { mean: point, lo: quantile(&stats, 0.025), hi: quantile(&stats, 0.975), n })
}

/// Bootstrap of the mean of `values` (resampling the values with replacement); `None` if
/// empty.
pub fn bootstrap_mean(values: &[f64], resamples: usize, seed: u64) -> Option<Interval> {
    bootstrap_stratified(&[values], resamples, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_point_case_matches_hand_computation() {
        // Scores [0, 1]: a resample of two is {0,0}, {0,1}, {1,0} or {1,1}, so the resampled
        // mean is 0, 0.5, 1 with probability 1/4, 1/2, 1/4; the 2.5th percentile is 0 and the
        // 97.5th is 1.
        let means = resampled_means(&[&[0.0, 1.0]], 4000, 7);
        let frac = |x: f64| means.iter().filter(|&&m| m == x).count() as f64 / means.len() as f64;
        assert!((frac(0.0) - 0.25).abs() < 0.03, "{}", frac(0.0));
        assert!((frac(0.5) - 0.50).abs() < 0.03, "{}", frac(0.5));
        assert!((frac(1.0) - 0.25).abs() < 0.03, "{}", frac(1.0));
        let ci = bootstrap_mean(&[0.0, 1.0], DEFAULT_RESAMPLES, 1).unwrap();
        assert_eq!((ci.mean, ci.lo, ci.hi, ci.n), (0.5, 0.0, 1.0, 2));
        assert_eq!(ci.half_width(), 0.5);
        assert_eq!(ci.excludes_zero(), None);
    }

    #[test]
    fn degenerate_cases() {
        let ci = bootstrap_mean(&[0.7; 9], DEFAULT_RESAMPLES, 3).unwrap();
        assert!((ci.mean - 0.7).abs() < 1e-12 && (ci.lo - 0.7).abs() < 1e-12 && (ci.hi - 0.7).abs() < 1e-12);
        assert!(ci.half_width().abs() < 1e-12);
        assert_eq!(bootstrap_mean(&[0.25], DEFAULT_RESAMPLES, 3).unwrap().half_width(), 0.0);
        assert!(bootstrap_mean(&[], DEFAULT_RESAMPLES, 3).is_none());
        assert!(bootstrap_stratified(&[&[], &[]], 10, 3).is_none());
        let z = bootstrap_mean(&[1.0, 0.0], 0, 3).unwrap();
        assert_eq!((z.lo, z.hi), (0.5, 0.5));
        assert_eq!(bootstrap_mean(&[0.1, 0.2], 10, 0).unwrap().excludes_zero(), Some(true));
        assert_eq!(bootstrap_mean(&[-0.1, -0.2], 10, 0).unwrap().excludes_zero(), Some(false));
    }

    #[test]
    fn deterministic_for_a_seed() {
        let v: Vec<f64> = (0..40).map(|i| ((i * 37) % 11) as f64 / 10.0).collect();
        let a = bootstrap_mean(&v, DEFAULT_RESAMPLES, 42).unwrap();
        assert_eq!(a, bootstrap_mean(&v, DEFAULT_RESAMPLES, 42).unwrap());
        let b = bootstrap_mean(&v, DEFAULT_RESAMPLES, 43).unwrap();
        assert_ne!((a.lo, a.hi), (b.lo, b.hi));
        assert!(a.lo < a.mean && a.mean < a.hi);
        // about 1.96 standard errors each side for a mean of 40 values
        let m = a.mean;
        let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        let se = sd / (v.len() as f64).sqrt();
        assert!((a.half_width() / (1.96 * se) - 1.0).abs() < 0.15, "{} vs {}", a.half_width(), 1.96 * se);
    }

    #[test]
    fn stratified_weighs_groups_equally() {
        // Group means 1.0 and 0.0 -> 0.5 whatever the group sizes; each group constant, so
        // every resample gives 0.5 too.
        let ci = bootstrap_stratified(&[&[1.0; 10], &[0.0; 2], &[]], 100, 5).unwrap();
        assert_eq!((ci.mean, ci.lo, ci.hi, ci.n), (0.5, 0.5, 0.5, 12));
    }
}
