//! A port of the parts of Python's `difflib.SequenceMatcher` that `fuzzywuzzy.fuzz.ratio`
//! uses (no `isjunk`, `autojunk=True`), over Unicode scalar values like Python `str`s.
//!
//! Behaviour reproduced: the "popular element" heuristic (for `len(b) >= 200`, elements of
//! `b` occurring more than `len(b) // 100 + 1` times are not indexed, but may still extend a
//! match), `find_longest_match`'s tie-breaking (earliest `i`, then earliest `j`), and the
//! recursive block decomposition of `get_matching_blocks`.

use std::collections::HashMap;

/// Python's `difflib.SequenceMatcher(None, a, b).ratio()`: `2 * M / (len(a) + len(b))`,
/// where `M` is the number of matched characters; `1.0` when both are empty.
pub fn sequence_matcher_ratio(a: &str, b: &str) -> f64 {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let total = a.len() + b.len();
    if total == 0 {
        return 1.0;
    }
    let matches = matching_characters(&a, &b);
    2.0 * matches as f64 / total as f64
}

/// Sum of the sizes of `get_matching_blocks()`.
fn matching_characters(a: &[char], b: &[char]) -> usize {
    let b2j = index_b(b);
    let mut total = 0;
    let mut queue = vec![(0usize, a.len(), 0usize, b.len())];
    while let Some((alo, ahi, blo, bhi)) = queue.pop() {
        let (i, j, k) = find_longest_match(a, b, &b2j, alo, ahi, blo, bhi);
        if k > 0 {
            total += k;
            if alo < i && blo < j {
                queue.push((alo, i, blo, j));
            }
            if i + k < ahi && j + k < bhi {
                queue.push((i + k, ahi, j + k, bhi));
            }
        }
    }
    total
}

/// `SequenceMatcher.__chain_b` with `autojunk=True` and no junk function.
fn index_b(b: &[char]) -> HashMap<char, Vec<usize>> {
    let mut b2j: HashMap<char, Vec<usize>> = HashMap::new();
    for (j, &c) in b.iter().enumerate() {
        b2j.entry(c).or_default().push(j);
    }
    let n = b.len();
    if n >= 200 {
        let ntest = n / 100 + 1;
        b2j.retain(|_, idxs| idxs.len() <= ntest);
    }
    b2j
}

/// `SequenceMatcher.find_longest_match(alo, ahi, blo, bhi)` -> `(i, j, size)`.
#[allow(clippy::too_many_arguments)]
fn find_longest_match(
    a: &[char],
    b: &[char],
    b2j: &HashMap<char, Vec<usize>>,
    alo: usize,
    ahi: usize,
    blo: usize,
    bhi: usize,
) -> (usize, usize, usize) {
    let (mut besti, mut bestj, mut bestsize) = (alo, blo, 0usize);
    // j2len[j] = length of the longest match ending with a[i-1] and b[j]
    let mut j2len: HashMap<usize, usize> = HashMap::new();
    let mut newj2len: HashMap<usize, usize> = HashMap::new();
    for (i, ch) in a.iter().enumerate().take(ahi).skip(alo) {
        newj2len.clear();
        if let Some(js) = b2j.get(ch) {
            for &j in js {
                if j < blo {
                    continue;
                }
                if j >= bhi {
                    break;
                }
                let prev = if j == 0 { 0 } else { j2len.get(&(j - 1)).copied().unwrap_or(0) };
                let k = prev + 1;
                newj2len.insert(j, k);
                if k > bestsize {
                    besti = i + 1 - k;
                    bestj = j + 1 - k;
                    bestsize = k;
                }
            }
        }
        std::mem::swap(&mut j2len, &mut newj2len);
    }
    // Extend the match with equal (non-indexed, "popular") elements on both ends. There is
    // no junk, so Python's two junk-extension loops never fire.
    while besti > alo && bestj > blo && a[besti - 1] == b[bestj - 1] {
        besti -= 1;
        bestj -= 1;
        bestsize += 1;
    }
    while besti + bestsize < ahi && bestj + bestsize < bhi && a[besti + bestsize] == b[bestj + bestsize] {
        bestsize += 1;
    }
    (besti, bestj, bestsize)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed with CPython 3.11 difflib.
    #[test]
    fn ratios_match_python() {
        assert_eq!(sequence_matcher_ratio("", ""), 1.0);
        assert_eq!(sequence_matcher_ratio("abc", ""), 0.0);
        // "abcd" vs "bcde": one block "bcd" -> 2*3/8
        assert_eq!(sequence_matcher_ratio("abcd", "bcde"), 0.75);
        // Python docs example: SequenceMatcher(None, "abcd", "abcd abcd").ratio() == 0.6153846...
        assert!((sequence_matcher_ratio("abcd", "abcd abcd") - 8.0 / 13.0).abs() < 1e-15);
        // "private Thread currentThread;" vs "private Thread thread;": blocks "private Thread " (15),
        // then on the right "hread;" (6), then left of that the 't' of "current" vs "t" (1): 2*22/51
        assert!((sequence_matcher_ratio("private Thread currentThread;", "private Thread thread;") - 44.0 / 51.0).abs() < 1e-15);
    }

    #[test]
    fn popular_elements_are_not_indexed() {
        // b has 250 chars, 'x' occurs 240 times > 250/100+1 = 3: 'x' is popular and not indexed.
        let b: String = "ab".repeat(5) + &"x".repeat(240);
        let a = "x".repeat(10);
        // No indexed char of a occurs in b, so no match at all (Python gives 0.0 as well).
        assert_eq!(sequence_matcher_ratio(&a, &b), 0.0);
        // 'a' and 'b' occur 5 times each (> 3): popular too, so even "bxxxx" finds nothing.
        assert_eq!(sequence_matcher_ratio("bxxxx", &b), 0.0);
        // A match on an indexed char extends through popular ones.
        let a2 = "jxxxx";
        let b2: String = "abcdefghij".to_string() + &"x".repeat(240);
        // longest indexed match "j" at a[0], b[9]; extended right by 4 'x' -> 5 chars: 2*5/255.
        assert!((sequence_matcher_ratio(a2, &b2) - 10.0 / 255.0).abs() < 1e-15);
    }
}
