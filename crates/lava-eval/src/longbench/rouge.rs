//! ROUGE-L exactly as LongBench computes it: `Rouge().get_scores([pred], [gt], avg=True)
//! ["rouge-l"]["f"]` of the PyPI package `rouge` 1.0.1 (pltrdy), with LongBench's
//! `try/except -> 0.0` around it.
//!
//! What that package does (and this port reproduces):
//! * each text is split into "sentences" on every `.` (also inside numbers), pieces that are
//!   empty *before* whitespace normalisation are dropped, each piece is normalised with
//!   `" ".join(piece.split())`, and words are then `sentence.split(" ")` (so a piece made only
//!   of spaces becomes one empty word `""`);
//! * `m` / `n` are the numbers of **distinct** words of the reference / hypothesis
//!   (`exclusive=True` uses sets);
//! * the summary-level union LCS is the number of distinct words in the union, over all
//!   (reference sentence, hypothesis sentence) pairs, of the words of *one* reconstructed LCS
//!   (the package's `_recon_lcs` tie-breaking: on a mismatch go up only if
//!   `table[i-1][j] > table[i][j-1]`);
//! * `r = llcs / m`, `p = llcs / n`, `f = 2 * (p * r / (p + r + 1e-8))`.
//! * An empty hypothesis or reference sentence list raises in the package (rouge-1 runs first:
//!   "Hypothesis is empty."), which LongBench turns into a score of 0.0.
//! * `_recon_lcs` is recursive: with LongBench's call stack under CPython's default recursion
//!   limit of 1000, a reconstruction needing more than [`PY_MAX_RECON_CALLS`] nested calls
//!   raises `RecursionError`, which LongBench also turns into 0.0. This is reproduced
//!   (measured with CPython 3.11: a path of 991 calls passes, 992 fails).

use std::collections::HashSet;

use crate::textutil::py_normalize_whitespace;

/// Largest number of nested `_recon` calls that CPython 3.11 (recursion limit 1000) allows
/// from LongBench's `eval.py` call stack (9 frames below the first `_recon`).
pub const PY_MAX_RECON_CALLS: usize = 991;

/// LongBench's `rouge_score(prediction, ground_truth)`: the ROUGE-L F-measure of the `rouge`
/// package, or `0.0` where the package raises.
pub fn rouge_l_f(prediction: &str, ground_truth: &str) -> f64 {
    rouge_l(prediction, ground_truth).map(|s| s.f).unwrap_or(0.0)
}

/// ROUGE-L recall / precision / F of the `rouge` package (summary level, exclusive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RougeL {
    /// Recall: union-LCS words / distinct reference words.
    pub r: f64,
    /// Precision: union-LCS words / distinct hypothesis words.
    pub p: f64,
    /// F-measure `2 * (p * r / (p + r + 1e-8))`.
    pub f: f64,
}

/// ROUGE-L of the `rouge` package; `None` where the package raises (empty hypothesis or
/// reference after sentence splitting, or a `RecursionError` in `_recon_lcs`).
pub fn rouge_l(hypothesis: &str, reference: &str) -> Option<RougeL> {
    let hyp = split_sentences(hypothesis);
    let refs = split_sentences(reference);
    if hyp.is_empty() || refs.is_empty() {
        return None;
    }
    let hyp_words: Vec<Vec<&str>> = hyp.iter().map(|s| s.split(' ').collect()).collect();
    let ref_words: Vec<Vec<&str>> = refs.iter().map(|s| s.split(' ').collect()).collect();

    let m = ref_words.iter().flatten().collect::<HashSet<_>>().len();
    let n = hyp_words.iter().flatten().collect::<HashSet<_>>().len();

    let mut union: HashSet<&str> = HashSet::new();
    for r in &ref_words {
        for h in &hyp_words {
            recon_lcs_into(r, h, &mut union)?;
        }
    }
    let llcs = union.len() as f64;
    let r_lcs = llcs / m as f64;
    let p_lcs = llcs / n as f64;
    let f_lcs = 2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8));
    Some(RougeL { r: r_lcs, p: p_lcs, f: f_lcs })
}

/// `[" ".join(s.split()) for s in text.split(".") if len(s) > 0]`.
fn split_sentences(text: &str) -> Vec<String> {
    text.split('.').filter(|s| !s.is_empty()).map(py_normalize_whitespace).collect()
}

/// Adds the words of the package's reconstructed LCS of `x` (reference words) and `y`
/// (hypothesis words) to `union`. `None` if the Python recursion would overflow.
fn recon_lcs_into<'a>(x: &[&'a str], y: &[&str], union: &mut HashSet<&'a str>) -> Option<()> {
    let (n, m) = (x.len(), y.len());
    let w = m + 1;
    let mut table = vec![0u32; (n + 1) * (m + 1)];
    for i in 1..=n {
        for j in 1..=m {
            table[i * w + j] = if x[i - 1] == y[j - 1] {
                table[(i - 1) * w + j - 1] + 1
            } else {
                table[(i - 1) * w + j].max(table[i * w + j - 1])
            };
        }
    }
    let (mut i, mut j) = (n, m);
    let mut calls = 1usize;
    while i > 0 && j > 0 {
        if x[i - 1] == y[j - 1] {
            union.insert(x[i - 1]);
            i -= 1;
            j -= 1;
        } else if table[(i - 1) * w + j] > table[i * w + j - 1] {
            i -= 1;
        } else {
            j -= 1;
        }
        calls += 1;
    }
    (calls <= PY_MAX_RECON_CALLS).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn identical_single_sentence() {
        // m = n = llcs = 3 -> r = p = 1, f = 2 * (1 / (2 + 1e-8))
        let s = rouge_l("the cat sat", "the cat sat").unwrap();
        assert!(close(s.r, 1.0) && close(s.p, 1.0));
        assert!(close(s.f, 2.0 * (1.0 / (2.0 + 1e-8))));
    }

    #[test]
    fn hand_computed_partial_overlap() {
        // hyp "the cat sat on the mat": distinct words {the, cat, sat, on, mat} -> n = 5
        // ref "the cat lay on a mat":   distinct words {the, cat, lay, on, a, mat} -> m = 6
        // LCS = "the cat on mat" -> union {the, cat, on, mat} = 4
        // r = 4/6, p = 4/5, f = 2 * (p*r / (p + r + 1e-8))
        let s = rouge_l("the cat sat on the mat", "the cat lay on a mat").unwrap();
        let (r, p) = (4.0 / 6.0, 4.0 / 5.0);
        assert!(close(s.r, r) && close(s.p, p));
        assert!(close(s.f, 2.0 * ((p * r) / (p + r + 1e-8))));
        // LongBench's rouge_score() in CPython with rouge 1.0.1 prints 0.7272727223140496
        assert!((s.f - 0.727_272_722_314_049_6).abs() < 1e-15);
    }

    #[test]
    fn sentences_and_union() {
        // Two hypothesis sentences, one reference sentence (the paper's union-LCS example):
        // ref r = "w1 w2 w3 w4 w5"; c1 = "w1 w2 w6 w7 w8", c2 = "w1 w3 w8 w9 w5"
        // LCS(r, c1) = w1 w2; LCS(r, c2) = w1 w3 w5 -> union {w1, w2, w3, w5} = 4
        // m = 5, n = |{w1,w2,w6,w7,w8,w3,w9,w5}| = 8
        let s = rouge_l("w1 w2 w6 w7 w8. w1 w3 w8 w9 w5", "w1 w2 w3 w4 w5").unwrap();
        assert!(close(s.r, 4.0 / 5.0));
        assert!(close(s.p, 4.0 / 8.0));
        // Python: 0.6153846106508877
        assert!((s.f - 0.615_384_610_650_887_7).abs() < 1e-15);
    }

    #[test]
    fn empty_inputs_score_zero() {
        assert!(rouge_l("", "a b").is_none());
        assert!(rouge_l("...", "a b").is_none());
        assert!(rouge_l("a b", "").is_none());
        assert_eq!(rouge_l_f("", "a b"), 0.0);
        // A space-only piece survives as the empty word "": hyp words {"", }, ref {a, b}
        let s = rouge_l(" . ", "a b").unwrap();
        assert_eq!(s.f, 0.0);
        assert!(close(s.p, 0.0));
    }

    #[test]
    fn python_recursion_limit_is_reproduced() {
        // ref "x y", hyp "w0 .. w{n-1} y": the reconstruction makes n + 2 nested calls.
        let mk = |n: usize| (0..n).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ") + " y";
        assert!(rouge_l_f(&mk(989), "x y") > 0.0);
        assert_eq!(rouge_l_f(&mk(990), "x y"), 0.0);
    }
}
