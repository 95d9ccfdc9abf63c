//! The run stamp: written into every record, checked against the file on resume.

use super::Sink;
use crate::provenance::{code_version_value, kv_shape_value, CODE_VERSION, KV_SHAPE, SETTINGS_HASH};
use crate::results::{load_results, ResultRecord};

fn stamp(commit: &str, settings: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert(CODE_VERSION.into(), code_version_value(commit, false));
    m.insert(SETTINGS_HASH.into(), settings.into());
    m.insert(KV_SHAPE.into(), kv_shape_value(30, 3, 64));
    m
}

#[test]
fn records_are_stamped_and_resume_checks_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.jsonl");
    {
        let mut sink = Sink::open(&path, 0, true).unwrap();
        sink.set_stamp(stamp("abc", "s1"), false).unwrap();
        sink.push(ResultRecord::new("niah", "lava", 64, Some(1000), "d0", 1.0)).unwrap();
    }
    let recs = load_results(&path).unwrap();
    assert_eq!(recs[0].extra[CODE_VERSION], serde_json::json!({"commit": "abc", "dirty": false}));
    assert_eq!(recs[0].extra[SETTINGS_HASH], "s1");
    assert_eq!(recs[0].extra[KV_SHAPE], serde_json::json!({"layers": 30, "kv_heads": 3, "head_dim": 64}));

    // same run: resumes
    let mut sink = Sink::open(&path, 0, true).unwrap();
    sink.set_stamp(stamp("abc", "s1"), false).unwrap();
    drop(sink); // one writer at a time: release the file's lock
    // other settings or code: refused, naming both
    let err = Sink::open(&path, 0, true).unwrap().set_stamp(stamp("abc", "s2"), false).unwrap_err().to_string();
    assert!(err.contains("settings s2") && err.contains("settings s1") && err.contains("r.jsonl"), "{err}");
    let err = Sink::open(&path, 0, true).unwrap().set_stamp(stamp("abd", "s1"), false).unwrap_err().to_string();
    assert!(err.contains("code abd") && err.contains("code abc"), "{err}");
    // unless mixing is allowed
    let mut sink = Sink::open(&path, 0, true).unwrap();
    sink.set_stamp(stamp("abd", "s1"), true).unwrap();
    sink.push(ResultRecord::new("niah", "lava", 64, Some(1000), "d1", 0.0)).unwrap();
    assert_eq!(load_results(&path).unwrap().len(), 2);
}
