//! Provenance of results: which code and which settings produced a record, and merging
//! results files without silently mixing runs.
//!
//! A run stamps every record with three extra fields (see [`crate::run::Sink::set_stamp`]):
//!
//! * `code_version`: `{"commit": "<hash>", "dirty": bool}`, the last commit that touched the
//!   code and whether the code had uncommitted changes;
//! * `settings_hash`: [`settings_hash`] of the run's settings (grid, window, seed, task sizes,
//!   model file name);
//! * `kv_shape`: `{"layers": L, "kv_heads": H, "head_dim": D}` of the model's KV cache, and
//!   for a model with sliding-window layers `"local_windows"`: each layer's window (`null`
//!   for a global layer).
//!
//! The first two make up a record's [`RunVersion`]. Records without them (files written
//! before they existed) have the version "unknown", which is one version like any other: an
//! old file merges with itself, not with stamped records.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{EvalError, Result};
use crate::results::{CellKey, ResultRecord};

/// Extra field holding the code version.
pub const CODE_VERSION: &str = "code_version";
/// Extra field holding the settings hash.
pub const SETTINGS_HASH: &str = "settings_hash";
/// Extra field holding the model's KV shape.
pub const KV_SHAPE: &str = "kv_shape";
/// Stamp field: the SHA-256 of the model file (hex; of its files in name order for a
/// directory).
pub const MODEL_SHA256: &str = "model_sha256";

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Compact JSON with the keys of every object sorted, so that equal values always give the
/// same text (whatever the map order of `serde_json`).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(k) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The settings hash: 16 hex digits of [`fnv1a64`] over [`canonical_json`] of `settings`.
pub fn settings_hash(settings: &Value) -> String {
    format!("{:016x}", fnv1a64(canonical_json(settings).as_bytes()))
}

/// The `code_version` value: `{"commit": commit, "dirty": dirty}`.
pub fn code_version_value(commit: &str, dirty: bool) -> Value {
    serde_json::json!({ "commit": commit, "dirty": dirty })
}

/// The `kv_shape` value: `{"layers": L, "kv_heads": H, "head_dim": D}`.
pub fn kv_shape_value(layers: usize, kv_heads: usize, head_dim: usize) -> Value {
    serde_json::json!({ "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim })
}

/// [`kv_shape_value`] of a model whose layer `l` attends within `windows[l]` (`None`: a
/// global layer): with `"local_windows"` when some layer is local (else the same value, so
/// the stamps of models without local layers are unchanged).
pub fn kv_shape_value_windowed(layers: usize, kv_heads: usize, head_dim: usize, windows: &[Option<usize>]) -> Value {
    let mut v = kv_shape_value(layers, kv_heads, head_dim);
    if windows.iter().any(Option::is_some) {
        v["local_windows"] = serde_json::json!(windows);
    }
    v
}

/// Each layer's sliding window a record's `kv_shape` names (`None`: a global layer); empty
/// when it names none (every layer global, or no `kv_shape`).
pub fn record_local_windows(rec: &ResultRecord) -> Vec<Option<usize>> {
    let Some(a) = rec.extra.get(KV_SHAPE).and_then(|s| s.get("local_windows")).and_then(Value::as_array) else {
        return Vec::new();
    };
    a.iter().map(|w| w.as_u64().and_then(|w| usize::try_from(w).ok())).collect()
}

/// The KV shape `(layers, kv_heads, head_dim)` a record carries, if any.
pub fn record_kv_shape(rec: &ResultRecord) -> Option<(u64, u64, u64)> {
    let s = rec.extra.get(KV_SHAPE)?;
    Some((s.get("layers")?.as_u64()?, s.get("kv_heads")?.as_u64()?, s.get("head_dim")?.as_u64()?))
}

/// Which code and settings produced a record. `None` parts are unknown (the field is
/// missing); two versions are the same run only if both parts are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunVersion {
    /// `code_version` as text: `<commit>` or `<commit> (dirty)`; a value that is not an
    /// object with `commit` and `dirty` is kept as its JSON text.
    pub code: Option<String>,
    /// `settings_hash`.
    pub settings: Option<String>,
}

impl RunVersion {
    /// The version read from a map of extra fields (a record's, or a run's stamp).
    pub fn from_fields(fields: &Map<String, Value>) -> Self {
        let code =
            fields.get(CODE_VERSION).map(|v| match (v.get("commit").and_then(Value::as_str), v.get("dirty").and_then(Value::as_bool)) {
                (Some(c), Some(true)) => format!("{c} (dirty)"),
                (Some(c), Some(false)) => c.to_string(),
                _ => v.to_string(),
            });
        let settings = fields.get(SETTINGS_HASH).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string));
        Self { code, settings }
    }

    /// The version of a record.
    pub fn of(rec: &ResultRecord) -> Self {
        Self::from_fields(&rec.extra)
    }
}

impl fmt::Display for RunVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.code, &self.settings) {
            (None, None) => f.write_str("unknown version (no code_version or settings_hash fields)"),
            (code, settings) => {
                write!(f, "code {}, settings {}", code.as_deref().unwrap_or("unknown"), settings.as_deref().unwrap_or("unknown"))
            }
        }
    }
}

/// The versions found in `records`, with their record counts, in a stable order.
pub fn versions_of(records: &[ResultRecord]) -> BTreeMap<RunVersion, usize> {
    let mut out = BTreeMap::new();
    for r in records {
        *out.entry(RunVersion::of(r)).or_insert(0) += 1;
    }
    out
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Checks that the records already in a results file belong to the run about to append to
/// it (same [`RunVersion`] as `stamp`); with `allow_mixed` anything goes.
pub fn check_resume(path: &Path, existing: &[ResultRecord], stamp: &Map<String, Value>, allow_mixed: bool) -> Result<()> {
    if allow_mixed {
        return Ok(());
    }
    let mine = RunVersion::from_fields(stamp);
    let others: Vec<String> =
        versions_of(existing).into_iter().filter(|(v, _)| *v != mine).map(|(v, n)| format!("{} of {v}", plural(n, "record"))).collect();
    if others.is_empty() {
        return Ok(());
    }
    Err(EvalError::invalid(
        path,
        None,
        format!(
            "this run is {mine}, but the file already holds {}; appending would mix two runs in one file. \
             Write to a new --results file, or pass --allow-mixed to append anyway",
            others.join(" and ")
        ),
    ))
}

/// Whether two records of the same cell say the same thing: same score (bit for bit, NaN
/// equal to NaN) and same `prediction` field. Timings, stamps and other fields may differ.
fn same_content(a: &ResultRecord, b: &ResultRecord) -> bool {
    let score = a.score == b.score || (a.score.is_nan() && b.score.is_nan());
    score && a.extra.get("prediction") == b.extra.get("prediction")
}

fn describe_key(k: &CellKey) -> String {
    let len = k.length.map(|l| format!(", length {l}")).unwrap_or_default();
    let setting = k.setting.as_deref().map(|s| format!(", {s}")).unwrap_or_default();
    format!("task {}, policy {}, budget {}{len}, sample {}{setting}", k.task, k.policy, k.budget, k.sample_id)
}

/// Merges the records of several results files (`(path, records)` in order).
///
/// * Versions: if the records carry more than one [`RunVersion`] (across files or within
///   one) the merge is refused with an error naming each version and the files holding it,
///   unless `allow_mixed`.
/// * Duplicates: several records of the same cell ([`ResultRecord::key`]) are kept once (the
///   first) when they agree on score and prediction; otherwise the merge fails naming the cell,
///   both files and both scores (with or without `allow_mixed`).
pub fn merge_results(sources: &[(PathBuf, Vec<ResultRecord>)], allow_mixed: bool) -> Result<Vec<ResultRecord>> {
    if !allow_mixed {
        let mut models: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (path, recs) in sources {
            for r in recs {
                if let Some(m) = r.extra.get(MODEL_SHA256).and_then(Value::as_str) {
                    let files = models.entry(m.to_string()).or_default();
                    let p = path.display().to_string();
                    if !files.contains(&p) {
                        files.push(p);
                    }
                }
            }
        }
        if models.len() > 1 {
            let parts: Vec<String> = models.iter().map(|(m, f)| format!("model sha256 {m} in {}", f.join(", "))).collect();
            return Err(EvalError::invalid(
                sources[0].0.clone(),
                None,
                format!(
                    "the results come from {} different models: {}. Report one model at a time, or pass --allow-mixed to merge them anyway",
                    models.len(),
                    parts.join("; ")
                ),
            ));
        }
        let mut by_version: BTreeMap<RunVersion, Vec<(usize, usize)>> = BTreeMap::new();
        for (fi, (_, recs)) in sources.iter().enumerate() {
            for (v, n) in versions_of(recs) {
                by_version.entry(v).or_default().push((fi, n));
            }
        }
        if by_version.len() > 1 {
            let parts: Vec<String> = by_version
                .iter()
                .map(|(v, files)| {
                    let files: Vec<String> =
                        files.iter().map(|&(fi, n)| format!("{} ({})", sources[fi].0.display(), plural(n, "record"))).collect();
                    format!("{v} in {}", files.join(", "))
                })
                .collect();
            let first = sources.iter().find(|(_, r)| !r.is_empty()).map_or_else(PathBuf::new, |(p, _)| p.clone());
            return Err(EvalError::invalid(
                first,
                None,
                format!(
                    "the results come from {} different runs: {}. Report one run at a time, or pass --allow-mixed to merge them anyway",
                    by_version.len(),
                    parts.join("; ")
                ),
            ));
        }
    }
    let mut seen: HashMap<CellKey, (usize, usize)> = HashMap::new();
    let mut out: Vec<ResultRecord> = Vec::new();
    for (fi, (path, recs)) in sources.iter().enumerate() {
        for r in recs {
            let key = r.key();
            match seen.get(&key) {
                Some(&(ofi, oi)) => {
                    let other = &out[oi];
                    if !same_content(other, r) {
                        return Err(EvalError::invalid(
                            path,
                            None,
                            format!(
                                "conflicting results for {}: score {} here, {} in {}{}. Remove one of the two records (or files)",
                                describe_key(&key),
                                r.score,
                                other.score,
                                sources[ofi].0.display(),
                                if other.score == r.score { " (the predictions differ)" } else { "" }
                            ),
                        ));
                    }
                }
                None => {
                    seen.insert(key, (fi, out.len()));
                    out.push(r.clone());
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(r: ResultRecord, commit: &str, dirty: bool, settings: &str) -> ResultRecord {
        r.with_extra(CODE_VERSION, code_version_value(commit, dirty)).with_extra(SETTINGS_HASH, settings)
    }

    #[test]
    fn fnv_and_canonical_hash() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
        let a = serde_json::json!({"b": 1, "a": [1, {"y": true, "x": "s"}]});
        assert_eq!(canonical_json(&a), r#"{"a":[1,{"x":"s","y":true}],"b":1}"#);
        let b: Value = serde_json::from_str(r#"{"a":[1,{"y":true,"x":"s"}],"b":1}"#).unwrap();
        assert_eq!(settings_hash(&a), settings_hash(&b));
        assert_eq!(settings_hash(&a).len(), 16);
        assert_ne!(settings_hash(&a), settings_hash(&serde_json::json!({"b": 2, "a": [1, {"y": true, "x": "s"}]})));
    }

    #[test]
    fn two_models_are_not_merged_unless_allowed() {
        // Same code and settings hash (as an older run without the model in its settings
        // would have), two model files.
        let r = |id: &str, model: &str| stamped(ResultRecord::new("t", "p", 1, None, id, 1.0), "abc", false, "00ff").with_extra(MODEL_SHA256, model);
        let a = (PathBuf::from("a.jsonl"), vec![r("0", "aa11")]);
        let b = (PathBuf::from("b.jsonl"), vec![r("1", "bb22")]);
        let err = merge_results(&[a.clone(), b.clone()], false).unwrap_err().to_string();
        assert!(err.contains("2 different models") && err.contains("aa11 in a.jsonl") && err.contains("bb22 in b.jsonl"), "{err}");
        assert!(err.contains("--allow-mixed"), "{err}");
        assert_eq!(merge_results(&[a.clone(), b], true).unwrap().len(), 2);
        let a2 = (PathBuf::from("c.jsonl"), vec![r("1", "aa11")]);
        assert_eq!(merge_results(&[a, a2], false).unwrap().len(), 2);
    }

    #[test]
    fn versions_and_display() {
        let old = ResultRecord::new("t", "p", 1, None, "0", 1.0);
        assert_eq!(RunVersion::of(&old), RunVersion { code: None, settings: None });
        assert!(RunVersion::of(&old).to_string().contains("unknown"));
        let s = stamped(old.clone(), "abc", true, "00ff");
        assert_eq!(RunVersion::of(&s).to_string(), "code abc (dirty), settings 00ff");
        let c = stamped(old, "abc", false, "00ff");
        assert_ne!(RunVersion::of(&s), RunVersion::of(&c));
    }

    #[test]
    fn resume_check() {
        let path = Path::new("r.jsonl");
        let mut stamp = Map::new();
        stamp.insert(CODE_VERSION.into(), code_version_value("abc", false));
        stamp.insert(SETTINGS_HASH.into(), "00ff".into());
        let same = stamped(ResultRecord::new("t", "p", 1, None, "0", 1.0), "abc", false, "00ff");
        assert!(check_resume(path, std::slice::from_ref(&same), &stamp, false).is_ok());
        assert!(check_resume(path, &[], &stamp, false).is_ok());
        let other = stamped(ResultRecord::new("t", "p", 1, None, "1", 1.0), "abd", false, "00ff");
        let err = check_resume(path, &[same.clone(), other.clone()], &stamp, false).unwrap_err().to_string();
        assert!(err.contains("r.jsonl") && err.contains("code abc, settings 00ff") && err.contains("1 record of code abd"), "{err}");
        assert!(err.contains("--allow-mixed"), "{err}");
        assert!(check_resume(path, &[other], &stamp, true).is_ok());
        let old = ResultRecord::new("t", "p", 1, None, "2", 1.0);
        let err = check_resume(path, &[old], &stamp, false).unwrap_err().to_string();
        assert!(err.contains("unknown version"), "{err}");
    }

    #[test]
    fn merge_refuses_mixed_versions_unless_allowed() {
        let a = vec![
            stamped(ResultRecord::new("niah", "lava", 64, Some(1000), "d0", 1.0), "abc", false, "s1"),
            stamped(ResultRecord::new("niah", "lava", 64, Some(1000), "d1", 0.0), "abc", false, "s1"),
        ];
        let b = vec![stamped(ResultRecord::new("niah", "lava", 64, Some(1000), "d2", 0.5), "abc", true, "s1")];
        let c = vec![ResultRecord::new("niah", "lava", 64, Some(1000), "d3", 0.5)];
        let src = |x: Vec<(&str, &Vec<ResultRecord>)>| x.into_iter().map(|(p, r)| (PathBuf::from(p), r.clone())).collect::<Vec<_>>();

        // same version in two files: fine
        let a1 = vec![stamped(ResultRecord::new("niah", "lava", 128, Some(1000), "d0", 1.0), "abc", false, "s1")];
        assert_eq!(merge_results(&src(vec![("a.jsonl", &a), ("a1.jsonl", &a1)]), false).unwrap().len(), 3);
        // old files without stamps merge with each other
        assert_eq!(merge_results(&src(vec![("c.jsonl", &c), ("c.jsonl", &c)]), false).unwrap().len(), 1);

        let err = merge_results(&src(vec![("a.jsonl", &a), ("b.jsonl", &b)]), false).unwrap_err().to_string();
        assert!(err.contains("2 different runs"), "{err}");
        assert!(err.contains("code abc, settings s1 in a.jsonl (2 records)"), "{err}");
        assert!(err.contains("code abc (dirty), settings s1 in b.jsonl (1 record)"), "{err}");
        assert!(err.contains("--allow-mixed"), "{err}");
        let err = merge_results(&src(vec![("a.jsonl", &a), ("c.jsonl", &c)]), false).unwrap_err().to_string();
        assert!(err.contains("unknown version") && err.contains("c.jsonl"), "{err}");
        // settings differ
        let d = vec![stamped(ResultRecord::new("niah", "lava", 64, Some(1000), "d4", 0.5), "abc", false, "s2")];
        assert!(merge_results(&src(vec![("a.jsonl", &a), ("d.jsonl", &d)]), false).is_err());

        let all = merge_results(&src(vec![("a.jsonl", &a), ("b.jsonl", &b), ("c.jsonl", &c), ("d.jsonl", &d)]), true).unwrap();
        assert_eq!(all.len(), 5);
    }

    #[test]
    fn merge_dedupes_identical_and_rejects_conflicts() {
        let r = ResultRecord::new("niah", "lava", 64, Some(1000), "d0", 1.0).with_extra("prediction", "x");
        let same = r.clone().with_extra("timing", serde_json::json!({"prefill_s": 1.0}));
        let srcs = vec![(PathBuf::from("a.jsonl"), vec![r.clone()]), (PathBuf::from("b.jsonl"), vec![same])];
        let merged = merge_results(&srcs, false).unwrap();
        assert_eq!(merged, vec![r.clone()]);

        let mut worse = r.clone();
        worse.score = 0.5;
        let srcs = vec![(PathBuf::from("a.jsonl"), vec![r.clone()]), (PathBuf::from("b.jsonl"), vec![worse])];
        let err = merge_results(&srcs, true).unwrap_err().to_string();
        assert!(err.starts_with("b.jsonl: conflicting results for task niah, policy lava, budget 64, length 1000, sample d0"), "{err}");
        assert!(err.contains("score 0.5 here, 1 in a.jsonl"), "{err}");
        let other_pred = r.clone().with_extra("prediction", "y");
        let srcs = vec![(PathBuf::from("a.jsonl"), vec![r.clone(), other_pred])];
        let err = merge_results(&srcs, false).unwrap_err().to_string();
        assert!(err.contains("predictions differ"), "{err}");
    }
}
