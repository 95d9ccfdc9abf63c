//! Results bookkeeping: one JSON line per finished grid cell, appended and flushed as soon as
//! the cell finishes, so that an interrupted run can resume by skipping the cells already
//! done ([`load_done_keys`]).
//!
//! A crash while writing can leave a truncated last line (no trailing newline, not valid
//! JSON): readers ignore it, and [`ResultsWriter::open`] cuts it off before appending. Any
//! other malformed line is an error naming the file and line. One writer per file at a time:
//! [`ResultsWriter::open`] takes an exclusive lock on the file and fails if another process
//! holds it.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{EvalError, Result};

/// A KV-cache budget: a number of tokens, or a name such as `"full"`.
///
/// Serialised as a JSON number or string. Ordering: token budgets ascending, then names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Budget {
    /// A budget in tokens.
    Tokens(u64),
    /// A named budget (e.g. `"full"`).
    Named(String),
}

impl Budget {
    /// A named budget.
    pub fn named(name: impl Into<String>) -> Self {
        Budget::Named(name.into())
    }
}

impl From<u64> for Budget {
    fn from(v: u64) -> Self {
        Budget::Tokens(v)
    }
}

impl From<&str> for Budget {
    fn from(v: &str) -> Self {
        Budget::Named(v.to_string())
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Tokens(n) => write!(f, "{n}"),
            Budget::Named(s) => f.write_str(s),
        }
    }
}

/// Identity of a grid cell: what must match for a cell to count as done.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CellKey {
    /// Task / dataset name.
    pub task: String,
    /// Cache policy name.
    pub policy: String,
    /// Cache budget.
    pub budget: Budget,
    /// Context length (tokens), if the grid has one.
    pub length: Option<u64>,
    /// Sample id within the task.
    pub sample_id: String,
    /// The setting: `None` for query-aware (the question is in the compressed prompt),
    /// `Some("query-agnostic")` when the context was compressed before the question.
    pub setting: Option<String>,
}

/// The `setting` of query-agnostic records ([`ResultRecord::setting`]).
pub const QUERY_AGNOSTIC: &str = "query-agnostic";
/// The name of the query-aware setting in reports (records of that setting have no `setting`).
pub const QUERY_AWARE: &str = "query-aware";

/// One finished grid cell, one JSON line of the results file. Fields other than the named
/// ones are kept in `extra` (flattened into the same JSON object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    /// Task / dataset name.
    pub task: String,
    /// Cache policy name.
    pub policy: String,
    /// Cache budget.
    pub budget: Budget,
    /// Context length (tokens), if the grid has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Sample id within the task.
    pub sample_id: String,
    /// Score in `[0, 1]`.
    pub score: f64,
    /// [`QUERY_AGNOSTIC`] when the context was compressed without the question, which was
    /// appended after; absent for the query-aware setting (the question compressed with the
    /// context, the paper's setting and every run's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setting: Option<String>,
    /// Any other fields (prediction, timings, depth, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ResultRecord {
    /// A record without extra fields.
    pub fn new(
        task: impl Into<String>,
        policy: impl Into<String>,
        budget: impl Into<Budget>,
        length: Option<u64>,
        sample_id: impl Into<String>,
        score: f64,
    ) -> Self {
        Self {
            task: task.into(),
            policy: policy.into(),
            budget: budget.into(),
            length,
            sample_id: sample_id.into(),
            score,
            setting: None,
            extra: Map::new(),
        }
    }

    /// Adds an extra field (replacing one of the same name).
    pub fn with_extra(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// The cell's identity.
    pub fn key(&self) -> CellKey {
        CellKey {
            task: self.task.clone(),
            policy: self.policy.clone(),
            budget: self.budget.clone(),
            length: self.length,
            sample_id: self.sample_id.clone(),
            setting: self.setting.clone(),
        }
    }

    /// The record's setting as reports name it: [`QUERY_AWARE`] or [`QUERY_AGNOSTIC`] (or
    /// whatever other name the record carries).
    pub fn setting_name(&self) -> &str {
        self.setting.as_deref().unwrap_or(QUERY_AWARE)
    }
}

/// Appends records to a results file, one flushed line each.
#[derive(Debug)]
pub struct ResultsWriter {
    path: PathBuf,
    file: File,
}

impl ResultsWriter {
    /// Opens (creating it and its parent directories if needed) a results file for
    /// appending. A truncated last line left by a crash is removed first; a complete last
    /// line missing only its newline gets one. The file is locked exclusively while the
    /// writer lives; if another writer holds it, this fails at once naming the file and the
    /// holder.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| EvalError::io(parent, e))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| EvalError::io(&path, e))?;
        lock_exclusive(&file, &path)?;
        let content = crate::read::bytes(&path)?;
        if !content.is_empty() && content.last() != Some(&b'\n') {
            let cut = content.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let tail = &content[cut..];
            let complete = std::str::from_utf8(tail).ok().and_then(|s| serde_json::from_str::<ResultRecord>(s).ok());
            if complete.is_some() {
                file.write_all(b"\n").map_err(|e| EvalError::io(&path, e))?;
            } else {
                file.set_len(cut as u64).map_err(|e| EvalError::io(&path, e))?;
            }
        }
        Ok(Self { path, file })
    }

    /// Appends one record as a JSON line and flushes it.
    pub fn append(&mut self, record: &ResultRecord) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|e| EvalError::json(&self.path, None, e))?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|e| EvalError::io(&self.path, e))?;
        self.file.flush().map_err(|e| EvalError::io(&self.path, e))
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the exclusive lock of an open results file (held until the file is closed), or
/// fails at once, naming the file and (on Linux) the process holding it.
fn lock_exclusive(file: &File, path: &Path) -> Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = lock_holder(file).map_or_else(|| "another process".to_string(), |(pid, name)| format!("process {pid} ({name})"));
            Err(EvalError::invalid(
                path,
                None,
                format!("{holder} is writing to this results file; wait for it to finish, or pass another --results file"),
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(EvalError::io(path, e)),
    }
}

/// The process holding a `flock` on `file`, from `/proc/locks` (Linux only): pid and name.
fn lock_holder(file: &File) -> Option<(u32, String)> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = file.metadata().ok()?;
        let dev = meta.dev();
        // Linux's encoding of dev_t; /proc/locks writes "major:minor:inode", the first two in hex.
        let (major, minor) = (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff), (dev & 0xff) | ((dev >> 12) & !0xff));
        let locks = fs::read_to_string("/proc/locks").ok()?;
        // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (waiters have "->" before FLOCK).
        let pid = locks.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (kind, pid, id) = (*f.get(1)?, *f.get(4)?, *f.get(5)?);
            let mut id = id.split(':');
            let ma = u64::from_str_radix(id.next()?, 16).ok()?;
            let mi = u64::from_str_radix(id.next()?, 16).ok()?;
            let ino = id.next()?.parse::<u64>().ok()?;
            (kind == "FLOCK" && (ma, mi, ino) == (major, minor, meta.ino())).then(|| pid.parse::<u32>().ok()).flatten()
        })?;
        let name = fs::read_to_string(format!("/proc/{pid}/comm")).map(|n| n.trim().to_string()).unwrap_or_else(|_| "?".into());
        Some((pid, name))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        None
    }
}

/// Loads all records of a results file; a missing file has none. Blank lines are skipped and
/// a truncated last line (no trailing newline, not a valid record) is ignored.
pub fn load_results(path: impl AsRef<Path>) -> Result<Vec<ResultRecord>> {
    let path = path.as_ref();
    let bytes = match crate::read::bytes_io(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(EvalError::io(path, e)),
    };
    let ends_with_newline = bytes.last() == Some(&b'\n');
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    let last_idx = lines.len().saturating_sub(1);
    let mut out = Vec::new();
    for (i, raw) in lines.iter().enumerate() {
        let truncated_tail = i == last_idx && !ends_with_newline;
        let line = match std::str::from_utf8(raw) {
            Ok(s) => s,
            Err(_) if truncated_tail => continue,
            Err(e) => return Err(EvalError::invalid(path, Some(i + 1), format!("not UTF-8: {e}"))),
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<ResultRecord>(line) {
            Ok(r) => out.push(r),
            Err(_) if truncated_tail => {}
            Err(e) => return Err(EvalError::json(path, Some(i + 1), e)),
        }
    }
    Ok(out)
}

/// The keys of the cells already in a results file (see [`load_results`]).
pub fn load_done_keys(path: impl AsRef<Path>) -> Result<HashSet<CellKey>> {
    Ok(load_results(path)?.iter().map(ResultRecord::key).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_serde_and_order() {
        assert_eq!(serde_json::to_string(&Budget::Tokens(128)).unwrap(), "128");
        assert_eq!(serde_json::to_string(&Budget::named("full")).unwrap(), "\"full\"");
        assert_eq!(serde_json::from_str::<Budget>("2048").unwrap(), Budget::Tokens(2048));
        assert_eq!(serde_json::from_str::<Budget>("\"full\"").unwrap(), Budget::named("full"));
        let mut v = vec![Budget::named("full"), Budget::Tokens(512), Budget::Tokens(128)];
        v.sort();
        assert_eq!(v, vec![Budget::Tokens(128), Budget::Tokens(512), Budget::named("full")]);
    }

    #[test]
    fn record_round_trip_with_extra() {
        let r = ResultRecord::new("qasper", "lava", 128, Some(4096), "id1", 0.5).with_extra("pred", "x");
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"task":"qasper","policy":"lava","budget":128,"length":4096,"sample_id":"id1","score":0.5,"pred":"x"}"#
        );
        let back: ResultRecord = serde_json::from_str(&s).unwrap();
        assert_eq!(back, r);
        let no_len: ResultRecord =
            serde_json::from_str(r#"{"task":"t","policy":"p","budget":"full","sample_id":"0","score":1}"#).unwrap();
        assert_eq!(no_len.length, None);
        assert_eq!(no_len.budget, Budget::named("full"));
    }

    #[test]
    fn append_resume_and_truncated_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("results.jsonl");
        assert!(load_done_keys(&path).unwrap().is_empty());
        {
            let mut w = ResultsWriter::open(&path).unwrap();
            w.append(&ResultRecord::new("t", "full", "full", None, "0", 1.0)).unwrap();
            w.append(&ResultRecord::new("t", "lava", 128, Some(1024), "0", 0.0)).unwrap();
        }
        // simulate a crash in the middle of the third line
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"task":"t","policy":"lava","bud"#).unwrap();
        drop(f);
        let done = load_done_keys(&path).unwrap();
        assert_eq!(done.len(), 2);
        assert!(done.contains(&ResultRecord::new("t", "lava", 128, Some(1024), "0", 0.3).key()));
        assert!(!done.contains(&ResultRecord::new("t", "lava", 128, None, "0", 0.3).key()));

        // reopening cuts the partial line, then appends cleanly
        {
            let mut w = ResultsWriter::open(&path).unwrap();
            w.append(&ResultRecord::new("t", "lava", 256, Some(1024), "0", 0.5)).unwrap();
        }
        let all = load_results(&path).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);

        // a complete last record without newline is kept and terminated
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"task":"t","policy":"x","budget":1,"sample_id":"9","score":1.0}"#).unwrap();
        drop(f);
        assert_eq!(load_results(&path).unwrap().len(), 4);
        {
            let mut w = ResultsWriter::open(&path).unwrap();
            w.append(&ResultRecord::new("t", "y", 1, None, "9", 1.0)).unwrap();
        }
        assert_eq!(load_results(&path).unwrap().len(), 5);

        // corruption in the middle is an error with file and line
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}garbage\n{text}")).unwrap();
        let err = load_results(&path).unwrap_err().to_string();
        assert!(err.contains("results.jsonl:6"), "{err}");
    }
}
