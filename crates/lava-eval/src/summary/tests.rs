use super::*;
use crate::provenance::kv_shape_value;

fn rec(task: &str, policy: &str, budget: impl Into<Budget>, len: Option<u64>, id: &str, score: f64) -> ResultRecord {
    ResultRecord::new(task, policy, budget, len, id, score)
}

/// Synthetic run, hand-computable:
/// * NIAH, 10 prompts: lava 1.0, snapkv 0.0, full 1.0 everywhere;
/// * RULER, 4 prompts: lava [1, 0, 1, 0], snapkv [0, 1, 0, 1], full 1.0 (lava - snapkv: +-1, mean 0);
/// * LongBench, 3 prompts: lava [0.5, 0.25, 1.0], snapkv [0.25, 0.25, 0.5], full 0.5 (mean
///   lava - snapkv 0.25), plus a prompt only lava has (never paired).
fn synthetic() -> Vec<ResultRecord> {
    let mut v = Vec::new();
    for i in 0..10 {
        let id = format!("depth{i}");
        v.push(rec("niah", "full", "full", Some(1000), &id, 1.0));
        v.push(rec("niah", "lava", 64, Some(1000), &id, 1.0));
        v.push(rec("niah", "snapkv", 64, Some(1000), &id, 0.0));
    }
    for (i, (l, s)) in [(1.0, 0.0), (0.0, 1.0), (1.0, 0.0), (0.0, 1.0)].into_iter().enumerate() {
        let id = i.to_string();
        v.push(rec("ruler/vt", "full", "full", Some(2000), &id, 1.0));
        v.push(rec("ruler/vt", "lava", 64, Some(2000), &id, l));
        v.push(rec("ruler/vt", "snapkv", 64, Some(2000), &id, s));
    }
    for (i, (l, s)) in [(0.5, 0.25), (0.25, 0.25), (1.0, 0.5)].into_iter().enumerate() {
        let task = ["longbench/qasper", "longbench/trec", "longbench/lcc"][i];
        v.push(rec(task, "full", "full", None, "0", 0.5));
        v.push(rec(task, "lava", 64, None, "0", l));
        v.push(rec(task, "snapkv", 64, None, "0", s));
    }
    v.push(rec("longbench/qasper", "lava", 64, None, "extra", 0.0));
    v
}

fn find<'a>(rows: &'a [PairedRow], subject: &str, baseline: &str, family: &str) -> &'a PairedRow {
    rows.iter()
        .find(|r| r.subject == subject && r.baseline == baseline && r.family == family && r.budget == Budget::Tokens(64))
        .unwrap_or_else(|| panic!("no row {subject} vs {baseline} {family}: {rows:#?}"))
}

#[test]
fn families_and_full_expansion() {
    assert_eq!(task_family("niah").as_deref(), Some("NIAH"));
    assert_eq!(task_family("ruler/cwe").as_deref(), Some("RULER"));
    assert_eq!(task_family("longbench/trec").as_deref(), Some("LongBench"));
    assert_eq!(task_family("longbench/trec_e").as_deref(), Some("LongBench-E"));
    assert_eq!(task_family("fidelity").as_deref(), Some("fidelity top-1"));
    assert_eq!(task_family("ppl"), None);
    assert_eq!(task_family("other/x").as_deref(), Some("other"));
    let recs = vec![
        rec("niah", "full", "full", Some(1), "0", 1.0),
        rec("niah", "lava", 64, Some(1), "0", 0.5),
        rec("niah", "lava", 128, Some(1), "0", 0.5),
        rec("ppl", "full", "full", Some(1), "0", 3.0),
    ];
    let e = expand_full_budgets(&recs);
    let full: Vec<(&str, &Budget)> = e.iter().filter(|r| r.policy == "full").map(|r| (r.task.as_str(), &r.budget)).collect();
    assert_eq!(full, vec![("niah", &Budget::Tokens(64)), ("niah", &Budget::Tokens(128)), ("ppl", &Budget::named("full"))]);
    let order = SummaryOptions::default().policy_order;
    assert_eq!(order_policies(["zeta", "lava", "full", "alpha"], &order), vec!["full", "lava", "alpha", "zeta"]);
}

#[test]
fn paired_differences_on_synthetic_results() {
    let opts = SummaryOptions { subjects: vec!["lava".into(), "snapkv".into()], ..Default::default() };
    let rows = paired_comparisons(&synthetic(), &opts);

    // NIAH: +1 on every prompt: interval [1, 1], a win (and a loss the other way round).
    let r = find(&rows, "lava", "snapkv", "NIAH");
    assert_eq!((r.diff.mean, r.diff.lo, r.diff.hi, r.diff.n), (1.0, 1.0, 1.0, 10));
    assert_eq!(r.verdict(), "win");
    assert_eq!(find(&rows, "snapkv", "lava", "NIAH").verdict(), "loss");

    // RULER: differences +1, -1, +1, -1: mean 0, no significant difference.
    let r = find(&rows, "lava", "snapkv", "RULER");
    assert_eq!((r.diff.mean, r.diff.n), (0.0, 4));
    assert!(r.diff.lo < 0.0 && r.diff.hi > 0.0, "{r:?}");
    assert_eq!(r.verdict(), "no significant difference");

    // LongBench: differences 0.25, 0, 0.5 (the unpaired prompt left out): mean 0.25; every
    // resample of three non-negative differences is >= 0, so the interval touches 0 at best.
    let r = find(&rows, "lava", "snapkv", "LongBench");
    assert_eq!((r.diff.mean, r.diff.n), (0.25, 3));
    assert!(r.diff.lo >= 0.0 && r.diff.hi <= 0.5);

    // Overall: equal family weights, (1 + 0 + 0.25) / 3.
    let r = find(&rows, "lava", "snapkv", OVERALL);
    assert!((r.diff.mean - 1.25 / 3.0).abs() < 1e-12, "{r:?}");
    assert_eq!(r.diff.n, 17);
    assert!(r.diff.lo <= r.diff.mean && r.diff.mean <= r.diff.hi);

    // Against the full cache (copied under budget 64): NIAH 0, RULER -0.5, LongBench
    // (0 - 0.25 + 0.5) / 3.
    let r = find(&rows, "lava", "full", "NIAH");
    assert_eq!((r.diff.mean, r.diff.lo, r.diff.hi), (0.0, 0.0, 0.0));
    assert_eq!(r.verdict(), "no significant difference");
    assert_eq!(find(&rows, "lava", "full", "RULER").diff.mean, -0.5);
    assert!((find(&rows, "lava", "full", "LongBench").diff.mean - 0.25 / 3.0).abs() < 1e-12);
    // snapkv vs full on NIAH: -1 everywhere, a loss
    assert_eq!(find(&rows, "snapkv", "full", "NIAH").verdict(), "loss");

    // Only the present subjects are compared; deterministic.
    assert!(rows.iter().all(|r| r.subject == "lava" || r.subject == "snapkv"));
    assert_eq!(rows, paired_comparisons(&synthetic(), &opts));
    let default_rows = paired_comparisons(&synthetic(), &SummaryOptions::default());
    assert!(default_rows.iter().all(|r| r.subject == "lava"));
}

#[test]
fn report_sections() {
    let mut recs = synthetic();
    // KV bytes and shape: 2 layers x 1 KV head x head dim 4 -> nominal at B=64: 2*1*64*4*8 = 4096 bytes.
    for r in recs.iter_mut() {
        let bytes = match (r.policy.as_str(), r.task.as_str()) {
            ("full", _) => 40_000,
            ("lava", "niah") => 4096 + 1024, // 1.25x
            ("lava", _) => 4096,             // 1.00x
            _ => 2048,                       // 0.50x (short prompts)
        };
        r.extra.insert("kv_bytes".into(), bytes.into());
        r.extra.insert(crate::provenance::KV_SHAPE.into(), kv_shape_value(2, 1, 4));
    }
    let md = build_report(&recs, &SummaryOptions::default()).unwrap();
    // summary with intervals: full and lava 100 on NIAH with no spread; lava RULER 50 +- 50
    assert!(md.contains("| policy | LongBench / 64 | NIAH / 64 | RULER / 64 | average |"), "{md}");
    assert!(md.contains("| full | 50.0 ± 0.0 | 100.0 ± 0.0 | 100.0 ± 0.0 | 83.3 |"), "{md}");
    assert!(md.contains("| snapkv | 33.3 ± "), "{md}");
    assert!(md.contains("Prompts per family: LongBench 4, NIAH 10, RULER 4."), "{md}");
    // paired table, lava only by default, with verdicts
    assert!(md.contains("#### lava against each other policy"), "{md}");
    assert!(md.contains("| snapkv | 64 | NIAH | 10 | +100.0 | [+100.0, +100.0] | win |"), "{md}");
    assert!(md.contains("| snapkv | 64 | RULER | 4 | +0.0 | ["), "{md}");
    assert!(md.contains("| snapkv | 64 | **overall** | 17 | +41.7 |"), "{md}");
    assert!(md.contains("mean of the family differences, every family weighing the same"), "{md}");
    assert!(!md.contains("#### snapkv against"), "{md}");
    // memory: lava (10 x 1.25 + 7 x 1.0 + 1 unpaired x 1.0) / 18 = 1.1389
    assert!(md.contains("| lava | 1.14x |"), "{md}");
    assert!(md.contains("| snapkv | 0.50x |"), "{md}");
    assert!(md.contains("| full | 9.77x |"), "{md}");
    assert!(md.contains("| full | 0.04 |"), "{md}");
    // the per-task table is still there
    assert!(md.contains("### Accuracy (%, higher is better)"), "{md}");
    assert!(md.contains("| policy | longbench/lcc / 64 | longbench/qasper / 64 |"), "{md}");
    // the report does not depend on record order
    let mut rev = recs.clone();
    rev.reverse();
    assert_eq!(build_report(&rev, &SummaryOptions::default()).unwrap(), md);

    // without kv_shape, only MB
    let bare: Vec<ResultRecord> = recs
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.extra.remove(crate::provenance::KV_SHAPE);
            r
        })
        .collect();
    let md = build_report(&bare, &SummaryOptions::default()).unwrap();
    assert!(md.contains("carry no `kv_shape`") && md.contains("| lava | 0.00 |"), "{md}");

    // plots: one per family, linked
    let dir = tempfile::tempdir().unwrap();
    let plots = PlotOutput { dir: dir.path().join("memory"), link_prefix: "memory".into() };
    let md = build_report(&recs, &SummaryOptions { plots: Some(plots), ..Default::default() }).unwrap();
    for fam in ["niah", "ruler", "longbench"] {
        let name = format!("score_vs_kv_{fam}.png");
        assert!(dir.path().join("memory").join(&name).is_file(), "{name}");
        assert!(md.contains(&format!("(memory/{name})")), "{md}");
    }
    assert_eq!(plot_file_name("fidelity top-1"), "score_vs_kv_fidelity_top_1.png");
    assert_eq!(plot_file_name("LongBench-E"), "score_vs_kv_longbench_e.png");
}

#[test]
fn longbench_e_length_buckets() {
    let mut recs = Vec::new();
    // words -> bucket: 3999 -> 0-4k; 4000, 7999 -> 4-8k; 8000 -> 8k+
    for (i, (words, lava, snap)) in
        [(100.0, 1.0, 0.0), (3999.0, 0.5, 0.0), (4000.0, 1.0, 1.0), (7999.0, 0.0, 1.0), (8000.0, 0.25, 0.75)].into_iter().enumerate()
    {
        let id = i.to_string();
        let w = serde_json::json!(words);
        recs.push(rec("longbench/trec_e", "full", "full", None, &id, 1.0).with_extra("longbench_length", w.clone()));
        recs.push(rec("longbench/trec_e", "lava", 128, None, &id, lava).with_extra("longbench_length", w.clone()));
        recs.push(rec("longbench/trec_e", "snapkv", 128, None, &id, snap).with_extra("longbench_length", w));
    }
    recs.push(rec("longbench/trec_e", "lava", 128, None, "nolen", 1.0));
    recs.push(rec("longbench/trec", "lava", 128, None, "0", 1.0).with_extra("longbench_length", 100));
    assert_eq!(longbench_e_bucket(3999.0), "0-4k");
    assert_eq!(longbench_e_bucket(4000.0), "4-8k");
    assert_eq!(longbench_e_bucket(7999.0), "4-8k");
    assert_eq!(longbench_e_bucket(8000.0), "8k+");
    let md = build_report(&recs, &SummaryOptions::default()).unwrap();
    assert!(md.contains("#### trec_e\n\n| policy | 128 / 0-4k | 128 / 4-8k | 128 / 8k+ |"), "{md}");
    assert!(md.contains("| full | 100.00 | 100.00 | 100.00 |"), "{md}");
    assert!(md.contains("| lava | 75.00 | 50.00 | 25.00 |"), "{md}");
    assert!(md.contains("| snapkv | 0.00 | 100.00 | 75.00 |"), "{md}");
    assert!(md.contains("Samples per bucket: 0-4k 2, 4-8k 2, 8k+ 1. Records without `longbench_length`, left out: 1."), "{md}");
    // only `_e` datasets get the table, and they form their own summary family
    assert!(!md.contains("#### trec\n"), "{md}");
    assert!(md.contains("LongBench-E / 128"), "{md}");
}

#[test]
fn single_prompt_families_get_no_interval() {
    // One fidelity prompt: lava 1, snapkv 0 -> +100 points, but a single pair is no evidence.
    let mut recs = synthetic();
    recs.push(rec("fidelity", "lava", 64, Some(2048), "book", 1.0));
    recs.push(rec("fidelity", "snapkv", 64, Some(2048), "book", 0.0));
    let rows = paired_comparisons(&recs, &SummaryOptions::default());
    let r = find(&rows, "lava", "snapkv", "fidelity top-1");
    assert_eq!((r.diff.mean, r.diff.n, r.min_family_n), (1.0, 1, 1));
    assert_eq!(r.verdict(), "too few prompts");
    let o = find(&rows, "lava", "snapkv", OVERALL);
    assert_eq!((o.diff.n, o.min_family_n), (18, 1));
    assert_eq!(o.verdict(), "too few prompts");
    // the other families keep their verdicts
    assert_eq!(find(&rows, "lava", "snapkv", "NIAH").verdict(), "win");
    let md = build_report(&recs, &SummaryOptions::default()).unwrap();
    assert!(md.contains("| snapkv | 64 | fidelity top-1 | 1 | +100.0 | - | too few prompts |"), "{md}");
    assert!(md.contains("| lava | 43.8 ± 34.4 | 100.0 ± 0.0 | 50.0 ± 50.0 | 100.0 (n=1) | 73.4 |"), "{md}");
}

/// The memory table of a model with sliding-window layers, Gemma 3 270M's shapes from its
/// config (18 layers, every 6th global, window 512; 1 KV head of dimension 256): by hand, at
/// budget 128 and 4000-token prompts, 15 rings of 512 positions (15 * 512 * 2 * 256 * 4 =
/// 15,728,640 bytes) plus 3 global layers of 128 (3 * 128 * 2048 = 786,432): 16,515,072
/// bytes, 16.52 MB; the same budget in every layer of a model without local layers: 18 *
/// 128 * 2048 = 4,718,592 bytes, 4.72 MB.
#[test]
fn memory_table_counts_the_rings_of_a_model_with_local_layers() {
    let mut config = lava_llama::tiny::tiny_gemma3_config(18, 512, 6);
    config.num_key_value_heads = 1;
    config.head_dim = 256;
    config.max_position_embeddings = 32_768;
    let windows = config.layer_windows();
    assert_eq!(windows.iter().filter(|w| w.is_none()).count(), 3);
    let shape = crate::provenance::kv_shape_value_windowed(18, 1, 256, &windows);
    let mut recs = Vec::new();
    for (i, (policy, bytes)) in [("lava", 16_515_072), ("snapkv", 16_515_072 / 2)].into_iter().enumerate() {
        for id in ["a", "b"] {
            let mut r = rec("niah", policy, 128, Some(4000), id, i as f64);
            r.extra.insert("kv_bytes".into(), bytes.into());
            r.extra.insert("prompt_tokens".into(), 4000.into());
            r.extra.insert(crate::provenance::KV_SHAPE.into(), shape.clone());
            recs.push(r);
        }
    }
    assert_eq!(nominal_kv_bytes(&recs[0], 128), Some(16_515_072.0));
    // A prompt shorter than the window: the rings hold what there is (100 positions).
    let mut short = recs[0].clone();
    short.extra.insert("prompt_tokens".into(), 100.into());
    assert_eq!(nominal_kv_bytes(&short, 128), Some((15 * 100 * 2048 + 3 * 128 * 2048) as f64));
    let md = build_report(&recs, &SummaryOptions::default()).unwrap();
    assert!(md.contains("| lava | 1.00x |") && md.contains("| snapkv | 0.50x |"), "{md}");
    assert!(md.contains("| nominal: rings + global layers' budget | 16.52 |"), "{md}");
    assert!(md.contains("| nominal: every layer global | 4.72 |"), "{md}");
    // Without local layers, no such rows.
    let plain: Vec<ResultRecord> = recs
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.extra.insert(crate::provenance::KV_SHAPE.into(), kv_shape_value(18, 1, 256));
            r
        })
        .collect();
    let md = build_report(&plain, &SummaryOptions::default()).unwrap();
    assert!(!md.contains("nominal: rings") && md.contains("| lava | 3.50x |"), "{md}");
}
