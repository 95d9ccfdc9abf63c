//! LongBench's English metrics (`metrics.py`) and scorer rules (`eval.py`), reproduced
//! exactly (see each function for the Python it mirrors).

use std::collections::HashMap;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::difflib::sequence_matcher_ratio;
use super::rouge::rouge_l_f;
use crate::error::{EvalError, Result};
use crate::textutil::{py_round, py_split_whitespace};

/// Datasets whose prediction is cut at its first line before scoring (`eval.py`:
/// `prediction.lstrip('\n').split('\n')[0]`).
pub const FIRST_LINE_DATASETS: [&str; 4] = ["trec", "triviaqa", "samsum", "lsht"];

/// Datasets that are prompted without the chat template (`pred.py`).
pub const NO_CHAT_TEMPLATE_DATASETS: [&str; 6] = ["trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"];

/// The English LongBench datasets (all of them have a metric in [`Metric::for_dataset`]).
pub const ENGLISH_DATASETS: [&str; 16] = [
    "narrativeqa",
    "qasper",
    "multifieldqa_en",
    "hotpotqa",
    "2wikimqa",
    "musique",
    "gov_report",
    "qmsum",
    "multi_news",
    "trec",
    "triviaqa",
    "samsum",
    "passage_count",
    "passage_retrieval_en",
    "lcc",
    "repobench-p",
];

/// The datasets of LongBench-E (the length-balanced subset): their files and records name
/// them `<dataset>_e` and they use `<dataset>`'s prompt, output length and metric.
pub const LONGBENCH_E_DATASETS: [&str; 13] = [
    "qasper",
    "multifieldqa_en",
    "hotpotqa",
    "2wikimqa",
    "gov_report",
    "multi_news",
    "trec",
    "triviaqa",
    "samsum",
    "passage_count",
    "passage_retrieval_en",
    "lcc",
    "repobench-p",
];

/// The LongBench dataset whose prompt, output length, metric and scorer rules `dataset`
/// uses: `<d>` for a LongBench-E name `<d>_e` where `<d>` is an English dataset
/// ([`ENGLISH_DATASETS`]; the official LongBench-E files are the
/// [`LONGBENCH_E_DATASETS`]), else `dataset` itself.
pub fn base_dataset(dataset: &str) -> &str {
    match dataset.strip_suffix("_e") {
        Some(base) if ENGLISH_DATASETS.contains(&base) => base,
        _ => dataset,
    }
}

/// Whether `dataset` is a LongBench-E name (`<d>_e`, see [`base_dataset`]).
pub fn is_longbench_e(dataset: &str) -> bool {
    base_dataset(dataset) != dataset
}

/// A LongBench metric (the English ones; the Chinese metrics need `jieba` and are not ported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// `qa_f1_score`: token F1 after [`normalize_answer`].
    QaF1,
    /// `rouge_score`: ROUGE-L F of the `rouge` package.
    RougeL,
    /// `classification_score`: exact class mentions, shared between all mentioned classes.
    Classification,
    /// `retrieval_score`: fraction of numbers in the prediction equal to `Paragraph N`'s N.
    Retrieval,
    /// `count_score`: fraction of numbers in the prediction equal to the ground truth.
    Count,
    /// `code_sim_score`: fuzzywuzzy ratio of the first code line.
    CodeSim,
}

impl Metric {
    /// `dataset2metric` of `eval.py`, restricted to the English datasets (LongBench-E names
    /// `<d>_e` get `<d>`'s metric, see [`base_dataset`]). `None` for unknown or Chinese
    /// datasets (`multifieldqa_zh`, `dureader`, `vcsum`, `lsht`, `passage_retrieval_zh`).
    pub fn for_dataset(dataset: &str) -> Option<Metric> {
        Some(match base_dataset(dataset) {
            "narrativeqa" | "qasper" | "multifieldqa_en" | "hotpotqa" | "2wikimqa" | "musique" | "triviaqa" => {
                Metric::QaF1
            }
            "gov_report" | "qmsum" | "multi_news" | "samsum" => Metric::RougeL,
            "trec" => Metric::Classification,
            "passage_retrieval_en" => Metric::Retrieval,
            "passage_count" => Metric::Count,
            "lcc" | "repobench-p" => Metric::CodeSim,
            _ => return None,
        })
    }

    /// The Python function's name, for messages and reports.
    pub fn name(self) -> &'static str {
        match self {
            Metric::QaF1 => "qa_f1_score",
            Metric::RougeL => "rouge_score",
            Metric::Classification => "classification_score",
            Metric::Retrieval => "retrieval_score",
            Metric::Count => "count_score",
            Metric::CodeSim => "code_sim_score",
        }
    }

    /// Scores one prediction against one ground truth, in `[0, 1]`.
    ///
    /// Errors where the Python reference raises: [`Metric::Classification`] without
    /// `all_classes`, [`Metric::Retrieval`] with a ground truth lacking `Paragraph N`.
    pub fn score(self, prediction: &str, ground_truth: &str, all_classes: Option<&[String]>) -> Result<f64> {
        Ok(match self {
            Metric::QaF1 => qa_f1_score(prediction, ground_truth),
            Metric::RougeL => rouge_l_f(prediction, ground_truth),
            Metric::Classification => {
                let classes = all_classes.ok_or_else(|| EvalError::Metric {
                    dataset: String::new(),
                    metric: self.name(),
                    message: "all_classes is required".into(),
                })?;
                classification_score(prediction, ground_truth, classes)
            }
            Metric::Retrieval => retrieval_score(prediction, ground_truth).ok_or_else(|| EvalError::Metric {
                dataset: String::new(),
                metric: self.name(),
                message: format!("ground truth {ground_truth:?} has no `Paragraph N`"),
            })?,
            Metric::Count => count_score(prediction, ground_truth),
            Metric::CodeSim => code_sim_score(prediction, ground_truth),
        })
    }
}

/// Whether `dataset` is prompted with the model's chat template (everything except
/// [`NO_CHAT_TEMPLATE_DATASETS`] and their LongBench-E versions).
pub fn uses_chat_template(dataset: &str) -> bool {
    !NO_CHAT_TEMPLATE_DATASETS.contains(&base_dataset(dataset))
}

/// `prediction.lstrip('\n').split('\n')[0]`.
pub fn first_line(prediction: &str) -> &str {
    let p = prediction.trim_start_matches('\n');
    p.split('\n').next().unwrap_or("")
}

/// Scores one prediction of `dataset` like `eval.py`'s `scorer`: cut to the first line for
/// [`FIRST_LINE_DATASETS`] (and their LongBench-E versions, as `scorer_e` does), then the maximum of the dataset's metric over the ground-truth
/// answers (0 when there are none). Returns a value in `[0, 1]`.
pub fn score_prediction(
    dataset: &str,
    prediction: &str,
    answers: &[String],
    all_classes: Option<&[String]>,
) -> Result<f64> {
    let metric = Metric::for_dataset(dataset).ok_or_else(|| EvalError::UnknownDataset(dataset.to_string()))?;
    let prediction = if FIRST_LINE_DATASETS.contains(&base_dataset(dataset)) { first_line(prediction) } else { prediction };
    let mut score = 0.0f64;
    for gt in answers {
        let s = metric.score(prediction, gt, all_classes).map_err(|e| match e {
            EvalError::Metric { metric, message, .. } => {
                EvalError::Metric { dataset: dataset.to_string(), metric, message }
            }
            other => other,
        })?;
        // Python's max(score, s) keeps the first argument on ties / NaN
        if s > score {
            score = s;
        }
    }
    Ok(score)
}

/// `eval.py`'s dataset score: `round(100 * mean(scores), 2)`; 0 for no scores.
pub fn aggregate_score(scores: &[f64]) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    let total: f64 = scores.iter().sum();
    py_round(100.0 * total / scores.len() as f64, 2)
}

/// LongBench-E's length bucket of a record's `length`: `"0-4k"`, `"4-8k"` or `"8k+"`.
pub fn length_bucket(length: u64) -> &'static str {
    if length < 4000 {
        "0-4k"
    } else if length < 8000 {
        "4-8k"
    } else {
        "8k+"
    }
}

/// Python's `string.punctuation`.
const PY_PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// Python's regex `\w` for one character (`str.isalnum()` or `_`), approximated by Rust's
/// `is_alphanumeric`.
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// LongBench / SQuAD `normalize_answer`: lower-case, remove ASCII punctuation, replace the
/// whole words `a`, `an`, `the` by a space, and collapse whitespace (`" ".join(s.split())`).
pub fn normalize_answer(s: &str) -> String {
    let lowered = s.to_lowercase();
    let no_punc: String = lowered.chars().filter(|c| !PY_PUNCTUATION.contains(*c)).collect();
    // re.sub(r"\b(a|an|the)\b", " ", text): whole runs of word characters equal to an article
    let mut no_articles = String::with_capacity(no_punc.len());
    let mut run_start: Option<usize> = None;
    let flush = |out: &mut String, run: &str| {
        if matches!(run, "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(run);
        }
    };
    for (i, c) in no_punc.char_indices() {
        if is_word_char(c) {
            if run_start.is_none() {
                run_start = Some(i);
            }
        } else {
            if let Some(st) = run_start.take() {
                flush(&mut no_articles, &no_punc[st..i]);
            }
            no_articles.push(c);
        }
    }
    if let Some(st) = run_start {
        flush(&mut no_articles, &no_punc[st..]);
    }
    py_split_whitespace(&no_articles).collect::<Vec<_>>().join(" ")
}

/// `f1_score(prediction_tokens, ground_truth_tokens)`: multiset overlap F1; 0 without overlap.
pub fn token_f1<S: AsRef<str>>(prediction: &[S], ground_truth: &[S]) -> f64 {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in ground_truth {
        *counts.entry(t.as_ref()).or_insert(0) += 1;
    }
    let mut num_same = 0usize;
    for t in prediction {
        if let Some(c) = counts.get_mut(t.as_ref()) {
            if *c > 0 {
                *c -= 1;
                num_same += 1;
            }
        }
    }
    if num_same == 0 {
        return 0.0;
    }
    let precision = 1.0 * num_same as f64 / prediction.len() as f64;
    let recall = 1.0 * num_same as f64 / ground_truth.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

/// `qa_f1_score`: token F1 of the whitespace tokens of the normalised strings.
pub fn qa_f1_score(prediction: &str, ground_truth: &str) -> f64 {
    let p = normalize_answer(prediction);
    let g = normalize_answer(ground_truth);
    let pt: Vec<&str> = py_split_whitespace(&p).collect();
    let gt: Vec<&str> = py_split_whitespace(&g).collect();
    token_f1(&pt, &gt)
}

/// `classification_score` (trec): the classes (in `all_classes` order) that occur as
/// substrings of the prediction are collected; then, iterating over that list *while
/// removing from it* (Python skips the element after each removal — reproduced), every class
/// that is a proper substring of the ground truth is removed. The score is
/// `1 / len(list)` if the ground truth is in the list, else 0.
pub fn classification_score(prediction: &str, ground_truth: &str, all_classes: &[String]) -> f64 {
    let mut matched: Vec<&str> =
        all_classes.iter().map(String::as_str).filter(|c| prediction.contains(c)).collect();
    let mut idx = 0;
    while idx < matched.len() {
        let term = matched[idx];
        if ground_truth.contains(term) && term != ground_truth {
            // list.remove(x) removes the first occurrence
            if let Some(pos) = matched.iter().position(|m| *m == term) {
                matched.remove(pos);
            }
        }
        idx += 1;
    }
    if matched.contains(&ground_truth) {
        1.0 / matched.len() as f64
    } else {
        0.0
    }
}

/// All `\d+` runs (Unicode decimal digits, like Python's `re`).
fn find_numbers(text: &str) -> Vec<&str> {
    match Regex::new(r"\d+") {
        Ok(re) => re.find_iter(text).map(|m| m.as_str()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Fraction of the numbers in `prediction` equal to `target` (0 if it has no number).
fn fraction_equal(prediction: &str, target: &str) -> f64 {
    let numbers = find_numbers(prediction);
    if numbers.is_empty() {
        return 0.0;
    }
    let right = numbers.iter().filter(|n| **n == target).count();
    right as f64 / numbers.len() as f64
}

/// `count_score` (passage_count): fraction of the numbers in the prediction that equal the
/// ground truth string.
pub fn count_score(prediction: &str, ground_truth: &str) -> f64 {
    fraction_equal(prediction, ground_truth)
}

/// `retrieval_score` (passage_retrieval_en): the ground truth's first `Paragraph (\d+)` id,
/// then the fraction of the numbers in the prediction equal to it. `None` when the ground
/// truth has no `Paragraph N` (Python raises `IndexError`).
pub fn retrieval_score(prediction: &str, ground_truth: &str) -> Option<f64> {
    let re = Regex::new(r"Paragraph (\d+)").ok()?;
    let id = re.captures(ground_truth)?.get(1)?.as_str();
    Some(fraction_equal(prediction, id))
}

/// `fuzzywuzzy.fuzz.ratio(s1, s2)` without python-Levenshtein (LongBench's requirements):
/// 100 if the strings are equal, 0 if either is empty, else
/// `int(round(100 * SequenceMatcher(None, s1, s2).ratio()))` (round half to even).
pub fn fuzz_ratio(s1: &str, s2: &str) -> u32 {
    if s1 == s2 {
        return 100;
    }
    if s1.is_empty() || s2.is_empty() {
        return 0;
    }
    (100.0 * sequence_matcher_ratio(s1, s2)).round_ties_even() as u32
}

/// `code_sim_score` (lcc, repobench-p): the first line of `prediction.lstrip('\n')` that
/// contains none of `` ` ``, `#`, `//` (or `""` if none), compared with `fuzz.ratio / 100`.
pub fn code_sim_score(prediction: &str, ground_truth: &str) -> f64 {
    let line = prediction
        .trim_start_matches('\n')
        .split('\n')
        .find(|l| !l.contains('`') && !l.contains('#') && !l.contains("//"))
        .unwrap_or("");
    f64::from(fuzz_ratio(line, ground_truth)) / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn normalize_answer_cases() {
        assert_eq!(normalize_answer("The Cat, sat!"), "cat sat");
        assert_eq!(normalize_answer("  An apple a day   keeps\tthe doctor away. "), "apple day keeps doctor away");
        // articles only as whole words; "another", "theory" stay
        assert_eq!(normalize_answer("another theory at anthem"), "another theory at anthem");
        // punctuation is removed *before* articles: "a-b" -> "ab", "(the)" -> "the" -> removed
        assert_eq!(normalize_answer("a-b (the) A.B."), "ab ab");
        assert_eq!(normalize_answer(""), "");
    }

    #[test]
    fn f1_hand_computed() {
        // "the cat sat" -> normalised tokens [cat, sat]
        // "cat sat on the mat" -> [cat, sat, on, mat]
        // common = {cat, sat} = 2; precision = 2/2 = 1; recall = 2/4 = 0.5
        // F1 = 2 * 1 * 0.5 / (1 + 0.5) = 2/3
        assert!(close(qa_f1_score("the cat sat", "cat sat on the mat"), 2.0 / 3.0));
        // multiset: pred [a1 a1 b] (no articles), gt [a1 b b]: common = a1:1 + b:1 = 2
        // p = 2/3, r = 2/3 -> F1 = 2/3
        assert!(close(qa_f1_score("x x y", "x y y"), 2.0 / 3.0));
        assert_eq!(qa_f1_score("dog", "cat"), 0.0);
        assert_eq!(qa_f1_score("", "cat"), 0.0);
        assert_eq!(qa_f1_score("The", "a"), 0.0);
        assert!(close(qa_f1_score("Ozalj.", "Ozalj"), 1.0));
    }

    #[test]
    fn classification_cases() {
        let classes: Vec<String> =
            ["Food", "Date", "Other location", "Location", "City"].iter().map(|s| s.to_string()).collect();
        // Only the true class mentioned
        assert_eq!(classification_score("Date", "Date", &classes), 1.0);
        // "Other location" contains "location"? No: classes are case-sensitive; "Location" is
        // not a substring of "Other location" -> both stay; 1/2
        assert_eq!(classification_score("Other location or Location", "Other location", &classes), 0.5);
        // Two mentions, the wrong one is not a substring of the truth -> 1/2
        assert_eq!(classification_score("Food or Date", "Date", &classes), 0.5);
        // Not mentioned
        assert_eq!(classification_score("City", "Date", &classes), 0.0);
    }

    #[test]
    fn classification_reproduces_python_removal_skip() {
        // all_classes order [B, A, AB]; truth "AB"; prediction mentions all three.
        // em_match_list = [B, A, AB]; loop: i=0 "B" in "AB" and != -> remove -> [A, AB];
        // i=1 -> "AB" (skipping "A"): equal to truth, kept. Final [A, AB] -> 1/2.
        let classes: Vec<String> = ["B", "A", "AB"].iter().map(|s| s.to_string()).collect();
        assert_eq!(classification_score("AB", "AB", &classes), 0.5);
    }

    #[test]
    fn retrieval_and_count() {
        assert_eq!(retrieval_score("Paragraph 15", "Paragraph 15"), Some(1.0));
        assert_eq!(retrieval_score("Paragraph 3 or Paragraph 15", "Paragraph 15"), Some(0.5));
        assert_eq!(retrieval_score("I don't know", "Paragraph 15"), Some(0.0));
        assert_eq!(retrieval_score("15", "no id"), None);
        assert_eq!(count_score("8", "8"), 1.0);
        assert_eq!(count_score("There are 8 paragraphs out of 10", "8"), 0.5);
        assert_eq!(count_score("08", "8"), 0.0);
        assert_eq!(count_score("none", "8"), 0.0);
    }

    #[test]
    fn fuzz_and_code_sim() {
        assert_eq!(fuzz_ratio("", ""), 100);
        assert_eq!(fuzz_ratio("a", ""), 0);
        assert_eq!(fuzz_ratio("abc", "abc"), 100);
        // 2*3/8 = 0.75 -> 75
        assert_eq!(fuzz_ratio("abcd", "bcde"), 75);
        // 2*22/51 = 0.8627 -> 86
        assert_eq!(fuzz_ratio("private Thread currentThread;", "private Thread thread;"), 86);
        // round half to even: "ab" vs "ax": 2*1/4 = 0.5 -> 50; "abcd" vs "abxy": 50
        // "a" vs "ab": 2/3 -> 66.67 -> 67
        assert_eq!(fuzz_ratio("a", "ab"), 67);
        // SequenceMatcher("abcdefgh", "abcdefghij") = 16/18 = 88.888 -> 89
        assert_eq!(fuzz_ratio("abcdefgh", "abcdefghij"), 89);

        // code_sim skips comment / fenced lines and leading newlines
        let pred = "\n\n```java\n// comment\n# hash\n    int x = 1;\nmore";
        assert_eq!(code_sim_score(pred, "    int x = 1;"), 1.0);
        // no usable line -> "" vs gt -> 0
        assert_eq!(code_sim_score("```\n#\n", "x"), 0.0);
        // empty gt and no usable line -> "" == "" -> 1.0
        assert_eq!(code_sim_score("// c", ""), 1.0);
    }

    /// Values computed with CPython 3.11, LongBench's metrics.py, rouge 1.0.1 and
    /// fuzzywuzzy 0.18.0 (pure-Python SequenceMatcher); compared bit for bit.
    #[test]
    fn python_parity_cases() {
        let cases: [(&str, &str, f64, f64); 3] = [
            (
                "z a it's cat mat foo-bar foo-bar it's a it's it's y a mat a 3.5 dog . ",
                "dog 3.5 cat it's , 3.5 (a) sat cat it's it's foo-bar on . ",
                0.5454545404545454,
                0.5833333333333334,
            ),
            (
                "(a) 3.5 z ! The it's The x , mat sat [b] mat an it's . ",
                "A !  The , don't an cat An z sat ! dog A z a",
                0.3076923027218935,
                0.26666666666666666,
            ),
            (
                "3.5 it's ! ! [b] x don't A it's The an an . A [b] (a) an a  [b] , foo-bar it's (a)\n",
                "[b] y (a) x the The x sat don't",
                0.36363635900826446,
                0.37499999999999994,
            ),
        ];
        for (p, g, rouge, f1) in cases {
            assert_eq!(rouge_l_f(p, g), rouge, "rouge {p:?}");
            assert_eq!(qa_f1_score(p, g), f1, "f1 {p:?}");
        }
        // a 390-char ground truth: SequenceMatcher's autojunk heuristic is active
        let terms: Vec<String> = (0..30).map(|i| format!("values[{i}]")).collect();
        let b = format!("    total = {};", terms.join(" + "));
        assert_eq!(b.len(), 390);
        let a1 = "    total = values[0] + values[1] + values[2];";
        let a2 = format!("    total = {};", terms.iter().step_by(2).cloned().collect::<Vec<_>>().join(" + "));
        assert_eq!(fuzz_ratio(a1, &b), 21);
        assert_eq!(fuzz_ratio(&b, a1), 21);
        assert_eq!(fuzz_ratio(&a2, &b), 67);
        assert_eq!(code_sim_score(&format!("```python\n# comment\n{a2}\n"), &b), 0.67);
    }

    #[test]
    fn dataset_rules() {
        assert_eq!(first_line("\n\nDate\nmore"), "Date");
        assert_eq!(first_line(""), "");
        assert!(!uses_chat_template("lcc") && !uses_chat_template("trec") && uses_chat_template("qasper"));
        for d in ENGLISH_DATASETS {
            assert!(Metric::for_dataset(d).is_some(), "{d}");
        }
        assert_eq!(Metric::for_dataset("dureader"), None);

        // trec: first line only, max over answers
        let classes: Vec<String> = vec!["Date".into(), "City".into()];
        let s = score_prediction("trec", "\nCity\nDate", &["Date".into(), "City".into()], Some(&classes)).unwrap();
        assert_eq!(s, 1.0);
        let s = score_prediction("trec", "\nCity\nDate", &["Date".into()], Some(&classes)).unwrap();
        assert_eq!(s, 0.0);
        // triviaqa: second line ignored
        let s = score_prediction("triviaqa", "Paris\nLondon", &["London".into()], None).unwrap();
        assert_eq!(s, 0.0);
        // hotpotqa is not cut
        let s = score_prediction("hotpotqa", "Paris\nLondon", &["London".into()], None).unwrap();
        assert!(close(s, 2.0 / 3.0));
        // max over answers
        let s = score_prediction("qasper", "cat", &["dog".into(), "cat".into()], None).unwrap();
        assert_eq!(s, 1.0);
        assert!(score_prediction("trec", "x", &["Date".into()], None).is_err());
        assert!(score_prediction("passage_retrieval_en", "1", &["bad".into()], None).is_err());
        assert!(matches!(score_prediction("nope", "x", &[], None), Err(EvalError::UnknownDataset(_))));
        assert_eq!(aggregate_score(&[1.0, 0.0, 0.0]), 33.33);
        assert_eq!(aggregate_score(&[]), 0.0);
        assert_eq!(length_bucket(3999), "0-4k");
        assert_eq!(length_bucket(4000), "4-8k");
        assert_eq!(length_bucket(8000), "8k+");
    }

    #[test]
    fn longbench_e_names_use_the_base_dataset() {
        for d in LONGBENCH_E_DATASETS {
            let e = format!("{d}_e");
            assert_eq!(base_dataset(&e), d);
            assert!(is_longbench_e(&e) && !is_longbench_e(d));
            assert_eq!(Metric::for_dataset(&e), Metric::for_dataset(d), "{e}");
            assert!(Metric::for_dataset(&e).is_some(), "{e}");
            assert_eq!(uses_chat_template(&e), uses_chat_template(d), "{e}");
        }
        // Only English datasets have an `_e` version; other names are left alone.
        assert_eq!(base_dataset("dureader_e"), "dureader_e");
        assert_eq!(base_dataset("multifieldqa_en"), "multifieldqa_en");
        assert_eq!(Metric::for_dataset("nope_e"), None);
        assert!(!uses_chat_template("trec_e") && uses_chat_template("qasper_e"));
        // trec_e: first line only, classification metric, like trec
        let classes: Vec<String> = vec!["Date".into(), "City".into()];
        let s = score_prediction("trec_e", "\nCity\nDate", &["City".into()], Some(&classes)).unwrap();
        assert_eq!(s, 1.0);
        let s = score_prediction("trec_e", "\nCity\nDate", &["Date".into()], Some(&classes)).unwrap();
        assert_eq!(s, 0.0);
        assert!(close(score_prediction("hotpotqa_e", "Paris\nLondon", &["London".into()], None).unwrap(), 2.0 / 3.0));
        assert!(matches!(score_prediction("nope_e", "x", &[], None), Err(EvalError::UnknownDataset(_))));
    }
}
