//! RULER's scoring (`scripts/eval/evaluate.py`, `scripts/eval/synthetic/constants.py`).

use crate::textutil::{py_is_space, py_round};

/// `postprocess_pred`: strip, replace every control character `\x00`-`\x1f` by `\n`, strip.
pub fn postprocess_pred(prediction: &str) -> String {
    let s = prediction.trim_matches(py_is_space);
    let replaced: String = s.chars().map(|c| if (c as u32) < 0x20 { '\n' } else { c }).collect();
    replaced.trim_matches(py_is_space).to_string()
}

/// Per-sample `string_match_all`: the fraction of `references` that occur (case-insensitively)
/// as substrings of `prediction`. 0 for no references.
pub fn string_match_all(prediction: &str, references: &[String]) -> f64 {
    if references.is_empty() {
        return 0.0;
    }
    let p = prediction.to_lowercase();
    let hits = references.iter().filter(|r| p.contains(&r.to_lowercase())).count();
    hits as f64 / references.len() as f64
}

/// Per-sample `string_match_part`: 1 if any reference occurs (case-insensitively) in the
/// prediction, else 0.
pub fn string_match_part(prediction: &str, references: &[String]) -> f64 {
    let p = prediction.to_lowercase();
    if references.iter().any(|r| p.contains(&r.to_lowercase())) {
        1.0
    } else {
        0.0
    }
}

/// RULER's task score from per-sample scores: `round(100 * mean, 2)` (0 for none).
pub fn aggregate(scores: &[f64]) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    py_round(scores.iter().sum::<f64>() / scores.len() as f64 * 100.0, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn match_all_and_part() {
        let r = refs(&["1234567", "Blue-Cat"]);
        assert_eq!(string_match_all("the numbers are 1234567 and blue-cat", &r), 1.0);
        assert_eq!(string_match_all("1234567", &r), 0.5);
        assert_eq!(string_match_all("nothing", &r), 0.0);
        assert_eq!(string_match_part("1234567", &r), 1.0);
        assert_eq!(string_match_part("nothing", &r), 0.0);
        assert_eq!(string_match_all("x", &[]), 0.0);
    }

    #[test]
    fn postprocess() {
        assert_eq!(postprocess_pred("  a\tb\x01c \n"), "a\nb\nc");
        assert_eq!(postprocess_pred("\n\n"), "");
        assert_eq!(aggregate(&[1.0, 0.5, 0.0]), 50.0);
        assert_eq!(aggregate(&[1.0, 0.0, 0.0]), 33.33);
        assert_eq!(aggregate(&[]), 0.0);
    }
}
