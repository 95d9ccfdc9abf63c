//! Haystack text shared by the synthetic tasks: essay folders and sentence splitting.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{EvalError, Result};

/// The `.txt` files of `dir`, sorted by file name.
pub fn sorted_txt_files(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| EvalError::io(dir, e))? {
        let entry = entry.map_err(|e| EvalError::io(dir, e))?;
        let p = entry.path();
        if p.is_file() && p.extension().and_then(|e| e.to_str()) == Some("txt") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Concatenation (no separator, as both RULER's essay JSON and the gkamradt harness do) of
/// the `.txt` files of `dir` in sorted file-name order. Errors if there is none.
pub fn load_txt_dir(dir: impl AsRef<Path>) -> Result<String> {
    let dir = dir.as_ref();
    let files = sorted_txt_files(dir)?;
    if files.is_empty() {
        return Err(EvalError::invalid(dir, None, "no .txt files in haystack directory"));
    }
    let mut text = String::new();
    for f in files {
        let bytes = crate::read::bytes(&f)?;
        match String::from_utf8(bytes) {
            Ok(s) => text.push_str(&s),
            Err(e) => text.push_str(&String::from_utf8_lossy(e.as_bytes())),
        }
    }
    Ok(text)
}

/// Abbreviations after which a period does not end a sentence (lower-case, without the dot).
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "inc", "ltd", "co", "corp",
    "no", "vol", "fig", "approx", "dept", "est", "u.s", "u.k", "a.m", "p.m",
];

/// Splits whitespace-normalised text into sentences (a small stand-in for NLTK's Punkt
/// `sent_tokenize` that RULER uses): a sentence ends after a word ending in `.`, `!` or `?`
/// (possibly followed by closing quotes / brackets) when the next word starts with an
/// upper-case letter, a digit or an opening quote / bracket, unless the word is a known
/// abbreviation or a single-letter initial (`J.`). Sentences are returned without the
/// separating space; joining them with `" "` gives back the input (for single-spaced input).
pub fn split_sentences(text: &str) -> Vec<&str> {
    let words: Vec<(usize, &str)> = word_spans(text);
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (k, &(pos, w)) in words.iter().enumerate() {
        let st = *start.get_or_insert(pos);
        let ends = match words.get(k + 1) {
            None => true,
            Some(&(_, next)) => ends_sentence(w) && starts_sentence(next),
        };
        if ends {
            out.push(&text[st..pos + w.len()]);
            start = None;
        }
    }
    out
}

fn word_spans(text: &str) -> Vec<(usize, &str)> {
    let mut v = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                v.push((s, &text[s..i]));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        v.push((s, &text[s..]));
    }
    v
}

fn ends_sentence(word: &str) -> bool {
    let core = word.trim_end_matches(['"', '\'', ')', ']', '\u{201d}', '\u{2019}']);
    let Some(last) = core.chars().last() else { return false };
    if last == '!' || last == '?' {
        return true;
    }
    if last != '.' {
        return false;
    }
    let stem = core.trim_end_matches('.');
    let stem_l = stem.trim_start_matches(['"', '\'', '(', '[', '\u{201c}', '\u{2018}']).to_lowercase();
    if stem_l.chars().count() == 1 && stem_l.chars().all(char::is_alphabetic) {
        return false; // initial
    }
    !ABBREVIATIONS.contains(&stem_l.as_str())
}

fn starts_sentence(word: &str) -> bool {
    match word.chars().next() {
        Some(c) => c.is_uppercase() || c.is_ascii_digit() || "\"'([\u{201c}\u{2018}".contains(c),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_sentences() {
        let t = "July 2010What hard liquor is it? Most are. Mr. Smith met J. Doe at 5 p.m. today. \"Yes.\" He left! 3 more.";
        let s = split_sentences(t);
        assert_eq!(
            s,
            vec![
                "July 2010What hard liquor is it?",
                "Most are.",
                "Mr. Smith met J. Doe at 5 p.m. today.",
                "\"Yes.\"",
                "He left!",
                "3 more."
            ]
        );
        assert_eq!(s.join(" "), t);
        assert!(split_sentences("").is_empty());
        assert_eq!(split_sentences("no end"), vec!["no end"]);
    }

    #[test]
    fn txt_dir_sorted_concatenation() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("b.txt"), "B.").unwrap();
        fs::write(d.path().join("a.txt"), "A.").unwrap();
        fs::write(d.path().join("c.md"), "C.").unwrap();
        assert_eq!(load_txt_dir(d.path()).unwrap(), "A.B.");
        let e = tempfile::tempdir().unwrap();
        assert!(load_txt_dir(e.path()).is_err());
        assert!(load_txt_dir(e.path().join("missing")).is_err());
    }
}
