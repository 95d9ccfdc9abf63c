//! LongBench data: jsonl records, the prompt templates (`dataset2prompt.json`), the
//! generation lengths (`dataset2maxlen.json`), and `pred.py`'s middle truncation.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::metrics::{base_dataset, score_prediction, uses_chat_template};
use crate::error::{EvalError, Result};
use crate::textutil::format_template;
use crate::tokenize::Tokenize;

/// One LongBench sample (one line of `<dataset>.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LongBenchRecord {
    /// The question / instruction part (may be empty, e.g. summarisation).
    pub input: String,
    /// The long context.
    pub context: String,
    /// Ground-truth answers; the score is the maximum over them.
    pub answers: Vec<String>,
    /// Length of the context in words (LongBench's own count; LongBench-E's length buckets
    /// are made from it). `None` when the record has no `length`.
    #[serde(default)]
    pub length: Option<u64>,
    /// Dataset name (`<task>` or, in LongBench-E, `<task>_e`).
    pub dataset: String,
    /// `"en"`, `"zh"`, or a programming language for code tasks.
    #[serde(default)]
    pub language: Option<String>,
    /// Class labels (classification tasks only; `null` otherwise).
    #[serde(default)]
    pub all_classes: Option<Vec<String>>,
    /// Sample id.
    #[serde(rename = "_id")]
    pub id: String,
}

impl LongBenchRecord {
    /// Scores a prediction for this record with its dataset's metric (see
    /// [`score_prediction`](super::metrics::score_prediction)).
    pub fn score(&self, prediction: &str) -> Result<f64> {
        score_prediction(&self.dataset, prediction, &self.answers, self.all_classes.as_deref())
    }

    /// The fields a result record of this sample carries besides the score:
    /// `"longbench_length"` (the record's `length`, an integer) when the record has one.
    pub fn result_extras(&self) -> Vec<(&'static str, serde_json::Value)> {
        self.length.map(|l| ("longbench_length", serde_json::Value::from(l))).into_iter().collect()
    }
}

/// A LongBench sample made ready for the model (see [`LongBenchConfig::prepare`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedPrompt {
    /// The prompt after middle truncation, without the chat template.
    pub text: String,
    /// Generation budget (`dataset2maxlen.json`).
    pub max_new_tokens: usize,
    /// Whether `pred.py` wraps this dataset's prompt in the chat template.
    pub chat: bool,
    /// The question part of `text` (what the template puts after `{context}`, with `{input}`
    /// substituted, leading whitespace trimmed) when `text` still contains it; this is where
    /// a question-agnostic run splits the prompt.
    pub question: Option<String>,
}

fn read_to_string(path: &Path) -> Result<String> {
    crate::read::text(path)
}

/// Loads a LongBench jsonl file. Blank lines are skipped; any other line that is not a valid
/// record is an error naming the file and line.
pub fn load_longbench_jsonl(path: impl AsRef<Path>) -> Result<Vec<LongBenchRecord>> {
    let path = path.as_ref();
    let text = read_to_string(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec: LongBenchRecord = serde_json::from_str(line).map_err(|e| EvalError::json(path, Some(i + 1), e))?;
        out.push(rec);
    }
    Ok(out)
}

/// The dataset names of the `*.jsonl` files of a LongBench directory (file stems, so
/// LongBench-E files give `<task>_e`), sorted.
pub fn list_datasets(dir: impl AsRef<Path>) -> Result<Vec<String>> {
    let dir = dir.as_ref();
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| EvalError::io(dir, e))? {
        let entry = entry.map_err(|e| EvalError::io(dir, e))?;
        let p = entry.path();
        if p.extension().and_then(|e| e.to_str()) == Some("jsonl") {
            if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                names.push(stem.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// LongBench's configuration: prompt templates and generation lengths per dataset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LongBenchConfig {
    /// `dataset2prompt.json`: template with `{context}` and `{input}` per dataset.
    pub prompts: BTreeMap<String, String>,
    /// `dataset2maxlen.json`: max new tokens per dataset.
    pub max_gen: BTreeMap<String, usize>,
}

impl LongBenchConfig {
    /// Reads `dataset2prompt.json` and `dataset2maxlen.json` from `dir`.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        Self::load(dir.join("dataset2prompt.json"), dir.join("dataset2maxlen.json"))
    }

    /// Reads the two JSON files.
    pub fn load(prompt_json: impl AsRef<Path>, maxlen_json: impl AsRef<Path>) -> Result<Self> {
        let (pp, mp): (PathBuf, PathBuf) = (prompt_json.as_ref().into(), maxlen_json.as_ref().into());
        let prompts = serde_json::from_str(&read_to_string(&pp)?).map_err(|e| EvalError::json(&pp, None, e))?;
        let max_gen = serde_json::from_str(&read_to_string(&mp)?).map_err(|e| EvalError::json(&mp, None, e))?;
        Ok(Self { prompts, max_gen })
    }

    /// The prompt template of `dataset` (a LongBench-E name `<task>_e` without an entry of
    /// its own uses `<task>`'s, as the official harness does).
    pub fn template(&self, dataset: &str) -> Result<&str> {
        self.prompts
            .get(dataset)
            .or_else(|| self.prompts.get(base_dataset(dataset)))
            .map(String::as_str)
            .ok_or_else(|| EvalError::UnknownDataset(dataset.into()))
    }

    /// The generation budget (max new tokens) of `dataset` (LongBench-E names fall back to
    /// their base dataset, like [`template`](Self::template)).
    pub fn max_new_tokens(&self, dataset: &str) -> Result<usize> {
        self.max_gen
            .get(dataset)
            .or_else(|| self.max_gen.get(base_dataset(dataset)))
            .copied()
            .ok_or_else(|| EvalError::UnknownDataset(dataset.into()))
    }

    /// Prepares `record` of `dataset` as `pred.py` does: the prompt from `dataset`'s
    /// template, truncated in the middle to `max_length` tokens minus the generation budget,
    /// whether the chat template applies, and the question part for question-agnostic runs.
    pub fn prepare<T: Tokenize + ?Sized>(
        &self,
        dataset: &str,
        record: &LongBenchRecord,
        tokenizer: &T,
        max_length: usize,
    ) -> Result<PreparedPrompt> {
        let max_new_tokens = self.max_new_tokens(dataset)?;
        let template = self.template(dataset)?;
        let full = build_prompt(template, record)?;
        let text = truncate_middle(tokenizer, &full, max_length.saturating_sub(max_new_tokens));
        let question = template
            .split("{context}")
            .nth(1)
            .map(|tail| tail.replace("{input}", &record.input).trim_start().to_string())
            .filter(|q| !q.is_empty() && text.contains(q.as_str()));
        Ok(PreparedPrompt { text, max_new_tokens, chat: uses_chat_template(dataset), question })
    }

    /// The (untruncated, un-chat-templated) prompt of a record.
    pub fn build_prompt(&self, record: &LongBenchRecord) -> Result<String> {
        build_prompt(self.template(&record.dataset)?, record)
    }
}

/// `prompt_format.format(**json_obj)`: substitutes `{context}`, `{input}` (and, for
/// completeness, `{dataset}`, `{language}`, `{_id}`, `{length}`); `{{`/`}}` are literal
/// braces. Unknown fields are an error.
pub fn build_prompt(template: &str, record: &LongBenchRecord) -> Result<String> {
    let length = record.length.map(|l| l.to_string()).unwrap_or_default();
    let language = record.language.clone().unwrap_or_default();
    format_template(
        template,
        &[
            ("context", &record.context),
            ("input", &record.input),
            ("dataset", &record.dataset),
            ("language", &language),
            ("_id", &record.id),
            ("length", &length),
        ],
    )
}

/// The kept parts of `pred.py`'s middle truncation: if `ids.len() > max_tokens`, the first
/// `max_tokens / 2` and the last `max_tokens / 2` ids (so an odd `max_tokens` keeps one id
/// less); otherwise `None` (no truncation needed).
///
/// Deviation: for `max_tokens < 2` Python's `ids[-0:]` keeps *everything*; here both halves
/// are empty.
pub fn middle_truncation_split(ids: &[u32], max_tokens: usize) -> Option<(&[u32], &[u32])> {
    if ids.len() <= max_tokens {
        return None;
    }
    let half = max_tokens / 2;
    Some((&ids[..half], &ids[ids.len() - half..]))
}

/// `pred.py`'s truncation of a prompt to at most `max_tokens` tokens: when longer, the
/// prompt becomes `decode(first half) + decode(last half)`; otherwise it is returned as is.
///
/// The tokenizer's `encode` must not add special tokens; note that LongBench counts the BOS
/// token in `max_length`, so pass `max_length - 1` for exact parity with a BOS-adding model.
pub fn truncate_middle<T: Tokenize + ?Sized>(tokenizer: &T, prompt: &str, max_tokens: usize) -> String {
    let ids = tokenizer.encode(prompt);
    match middle_truncation_split(&ids, max_tokens) {
        None => prompt.to_string(),
        Some((head, tail)) => tokenizer.decode(head) + &tokenizer.decode(tail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::CharTokenizer;

    fn record(context: &str, input: &str) -> LongBenchRecord {
        LongBenchRecord {
            input: input.into(),
            context: context.into(),
            answers: vec!["x".into()],
            length: Some(3),
            dataset: "qasper".into(),
            language: Some("en".into()),
            all_classes: None,
            id: "id0".into(),
        }
    }

    #[test]
    fn prompt_substitution() {
        let r = record("CTX {input}", "Q?");
        // values are not re-parsed: "{input}" inside the context stays literal
        assert_eq!(build_prompt("A {context}\nQ: {input} {{x}}", &r).unwrap(), "A CTX {input}\nQ: Q? {x}");
        assert!(build_prompt("{answers}", &r).is_err());
    }

    #[test]
    fn middle_truncation() {
        let t = CharTokenizer;
        assert_eq!(truncate_middle(&t, "abcdefghij", 10), "abcdefghij");
        assert_eq!(truncate_middle(&t, "abcdefghij", 4), "abij");
        // odd: half = 2
        assert_eq!(truncate_middle(&t, "abcdefghij", 5), "abij");
        assert_eq!(truncate_middle(&t, "abcdefghij", 1), "");
        let ids: Vec<u32> = (0..10).collect();
        let (h, tl) = middle_truncation_split(&ids, 6).unwrap();
        assert_eq!(h, &[0, 1, 2]);
        assert_eq!(tl, &[7, 8, 9]);
        assert!(middle_truncation_split(&ids, 10).is_none());
    }

    #[test]
    fn jsonl_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("qasper.jsonl");
        let good = serde_json::to_string(&record("c", "i")).unwrap();
        fs::write(&p, format!("{good}\n\n{good}\n{{not json\n")).unwrap();
        let err = load_longbench_jsonl(&p).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("qasper.jsonl:4"), "{msg}");
        fs::write(&p, format!("{good}\n\n{good}\n")).unwrap();
        let recs = load_longbench_jsonl(&p).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].score("x").unwrap(), 1.0);
        assert_eq!(list_datasets(dir.path()).unwrap(), vec!["qasper".to_string()]);
        assert!(load_longbench_jsonl(dir.path().join("missing.jsonl")).is_err());
    }

    /// LongBench-E: `trec_e.jsonl` (records with `"dataset": "trec_e"`) with the official
    /// config files, which have no `_e` entries: trec's prompt, output length and metric,
    /// and the record's `length` in the result extras.
    #[test]
    fn longbench_e_file_loads_prompts_and_scores() {
        let dir = tempfile::tempdir().unwrap();
        let prompts = serde_json::json!({
            "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
            "qasper": "Article: {context}\n\nQuestion: {input}\n\nAnswer:",
        });
        let maxlen = serde_json::json!({"trec": 64, "qasper": 128});
        fs::write(dir.path().join("dataset2prompt.json"), prompts.to_string()).unwrap();
        fs::write(dir.path().join("dataset2maxlen.json"), maxlen.to_string()).unwrap();
        let classes = ["Date", "City", "Individual"];
        let lines: Vec<String> = [(3500u64, "Date"), (9100, "City")]
            .iter()
            .enumerate()
            .map(|(i, (len, answer))| {
                serde_json::json!({
                    "input": format!("When was question {i} asked?"),
                    "context": "Question: Where is Paris?\nType: City\nQuestion: When did it end?\nType: Date",
                    "answers": [answer],
                    "length": len,
                    "dataset": "trec_e",
                    "language": "en",
                    "all_classes": classes,
                    "_id": format!("e{i}"),
                })
                .to_string()
            })
            .collect();
        fs::write(dir.path().join("trec_e.jsonl"), lines.join("\n") + "\n").unwrap();
        fs::write(dir.path().join("qasper.jsonl"), "").unwrap();
        assert_eq!(list_datasets(dir.path()).unwrap(), vec!["qasper".to_string(), "trec_e".to_string()]);

        let cfg = LongBenchConfig::load_dir(dir.path()).unwrap();
        let recs = load_longbench_jsonl(dir.path().join("trec_e.jsonl")).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].length, Some(9100));
        assert_eq!(cfg.template("trec_e").unwrap(), cfg.template("trec").unwrap());
        assert!(cfg.template("lcc_e").is_err() && cfg.max_new_tokens("lcc_e").is_err());

        let p = cfg.prepare("trec_e", &recs[0], &CharTokenizer, 10_000).unwrap();
        assert_eq!(p.max_new_tokens, 64);
        assert!(!p.chat, "trec is prompted without the chat template");
        assert!(p.text.starts_with("Please determine the type") && p.text.ends_with("When was question 0 asked?"), "{}", p.text);
        assert!(p.text.contains(&recs[0].context));
        assert_eq!(p.question.as_deref(), Some("When was question 0 asked?"));
        // Middle truncation to max_length - max_new tokens.
        let short = cfg.prepare("trec_e", &recs[0], &CharTokenizer, 64 + 40).unwrap();
        assert_eq!(short.text.chars().count(), 40);
        assert_eq!(short.question, None, "the question was cut away");

        // trec's metric and first-line rule.
        assert_eq!(recs[0].score("Date\nCity").unwrap(), 1.0);
        assert_eq!(recs[0].score("\nCity").unwrap(), 0.0);
        assert_eq!(recs[1].score("City").unwrap(), 1.0);
        assert_eq!(recs[0].result_extras(), vec![("longbench_length", serde_json::json!(3500))]);

        // Records without `length` load, and carry no length.
        let mut v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        v.as_object_mut().unwrap().remove("length");
        fs::write(dir.path().join("trec_e.jsonl"), v.to_string()).unwrap();
        let recs = load_longbench_jsonl(dir.path().join("trec_e.jsonl")).unwrap();
        assert_eq!(recs[0].length, None);
        assert!(recs[0].result_extras().is_empty());
        assert!(build_prompt("{length}", &recs[0]).unwrap().is_empty());
    }
}
