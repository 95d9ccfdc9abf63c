//! Splitting a run's prompts between independent processes (`lava eval --shard K/N`).

use std::fmt;
use std::str::FromStr;

use crate::error::{EvalError, Result};

/// Shard `index` of `count`: the prompts numbered `index`, `index + count`, `index + 2 count`,
/// ... (0-based, counted in one deterministic order across every task family of a run), so
/// the `count` shards together run each prompt of the grid exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    index: u64,
    count: u64,
}

impl Shard {
    /// Every prompt (`0/1`).
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Shard `index` of `count`; errors unless `count >= 1` and `index < count`.
    pub fn new(index: u64, count: u64) -> Result<Self> {
        if count == 0 {
            return Err(EvalError::InvalidArgument(format!(
                "shard {index}/{count}: the number of shards N must be at least 1"
            )));
        }
        if index >= count {
            return Err(EvalError::InvalidArgument(format!(
                "shard {index}/{count}: K must be below N (shards are numbered from 0: 0/{count} .. {}/{count})",
                count - 1
            )));
        }
        Ok(Self { index, count })
    }

    /// K, 0-based.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// N.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether prompt number `prompt` (0-based) belongs to this shard.
    pub fn contains(&self, prompt: u64) -> bool {
        prompt % self.count == self.index
    }

    /// How many of the prompts `start .. start + n` belong to this shard.
    pub fn count_in(&self, start: u64, n: u64) -> u64 {
        // Members below `x`: ceil((x - index) / count) for x > index.
        let below = |x: u64| if x > self.index { (x - self.index).div_ceil(self.count) } else { 0 };
        below(start.saturating_add(n)) - below(start)
    }
}

impl Default for Shard {
    fn default() -> Self {
        Self::ALL
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = EvalError;

    /// Parses `K/N` (e.g. `0/4`).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || EvalError::InvalidArgument(format!("shard {s:?}: expected K/N with whole numbers 0 <= K < N, e.g. 0/4"));
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let k: u64 = k.trim().parse().map_err(|_| bad())?;
        let n: u64 = n.trim().parse().map_err(|_| bad())?;
        Self::new(k, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_prompts() {
        let shards: Vec<Shard> = (0..3).map(|k| Shard::new(k, 3).unwrap()).collect();
        let mut seen = vec![0u32; 100];
        for s in &shards {
            let mine: Vec<u64> = (0..100).filter(|&i| s.contains(i)).collect();
            assert!(!mine.is_empty());
            for &i in &mine {
                seen[i as usize] += 1;
            }
            // every 3rd prompt, starting at K
            assert_eq!(mine[0], s.index());
            assert!(mine.windows(2).all(|w| w[1] - w[0] == 3));
        }
        assert!(seen.iter().all(|&c| c == 1), "each prompt in exactly one shard: {seen:?}");
        assert!((0..10).all(|i| Shard::ALL.contains(i)));
    }

    #[test]
    fn count_in_matches_contains() {
        for n in 1..5 {
            for k in 0..n {
                let s = Shard::new(k, n).unwrap();
                for start in 0..12 {
                    for len in 0..12 {
                        let want = (start..start + len).filter(|&i| s.contains(i)).count() as u64;
                        assert_eq!(s.count_in(start, len), want, "{s} [{start}, +{len})");
                    }
                }
            }
        }
    }

    #[test]
    fn parse_and_validate() {
        assert_eq!("1/3".parse::<Shard>().unwrap(), Shard::new(1, 3).unwrap());
        assert_eq!("0/1".parse::<Shard>().unwrap(), Shard::ALL);
        assert_eq!(Shard::new(2, 5).unwrap().to_string(), "2/5");
        for bad in ["3/3", "0/0", "1", "a/b", "-1/2", "1/-2", "", "1/2/3"] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains("shard"), "{bad}: {e}");
        }
        assert!("3/3".parse::<Shard>().unwrap_err().to_string().contains("K must be below N"));
        assert!("0/0".parse::<Shard>().unwrap_err().to_string().contains("at least 1"));
    }
}
