//! The two settings side by side (issue 34): query-aware (the question compressed with the
//! context) and query-agnostic (the context compressed without it, the question appended
//! after). A run holding both gets the whole report once per setting, then the paired
//! differences between the settings per policy; and each setting gets RULER in kvpress's
//! leaderboard form (score against the compression ratio).

use std::collections::{BTreeMap, BTreeSet};

use super::{bootstrap_mean, build_report, cell_seed, esc, expand_full_budgets, order_policies, PlotOutput, SummaryOptions, MIN_PROMPTS};
use crate::error::Result;
use crate::results::{Budget, ResultRecord, QUERY_AGNOSTIC, QUERY_AWARE};

/// The settings present in `records`, query-aware first.
pub fn settings_of(records: &[ResultRecord]) -> Vec<String> {
    let names: BTreeSet<&str> = records.iter().map(ResultRecord::setting_name).collect();
    let mut out: Vec<String> = Vec::new();
    for first in [QUERY_AWARE, QUERY_AGNOSTIC] {
        if names.contains(first) {
            out.push(first.to_string());
        }
    }
    out.extend(names.into_iter().filter(|n| *n != QUERY_AWARE && *n != QUERY_AGNOSTIC).map(str::to_string));
    out
}

/// The report of `records`: as [`build_report`] when they hold one setting (plus the kvpress
/// table); with several, the report of each setting under its own heading (plots in a
/// sub-folder per setting), then [`setting_comparison_section`].
pub fn build_report_by_setting(records: &[ResultRecord], options: &SummaryOptions) -> Result<String> {
    let settings = settings_of(records);
    if settings.len() <= 1 {
        let mut text = build_report(records, options)?;
        text.push_str(&kvpress_section(records, options));
        return Ok(text);
    }
    let mut text = String::new();
    for s in &settings {
        let subset: Vec<ResultRecord> = records.iter().filter(|r| r.setting_name() == s).cloned().collect();
        let plots = options.plots.as_ref().map(|p| PlotOutput {
            dir: p.dir.join(s),
            link_prefix: if p.link_prefix.is_empty() { s.clone() } else { format!("{}/{s}", p.link_prefix.trim_end_matches('/')) },
        });
        let opts = SummaryOptions { plots, ..options.clone() };
        text.push_str(&format!("## Setting: {s}\n\n"));
        text.push_str(&setting_note(s));
        text.push_str(&build_report(&subset, &opts)?);
        text.push_str(&kvpress_section(&subset, options));
        text.push('\n');
    }
    text.push_str(&setting_comparison_section(records, options));
    Ok(text)
}

fn setting_note(s: &str) -> String {
    match s {
        QUERY_AWARE => "The question is part of the compressed prompt (the paper's setting). PG-19 fidelity has no question and is \
                        reported here only.\n\n"
            .into(),
        QUERY_AGNOSTIC => "The context is compressed without the question; the question (and the rest of the prompt after it) is \
                           appended to the compressed cache before generating (kvpress's setting).\n\n"
            .into(),
        _ => String::new(),
    }
}

/// A family of the setting comparison: NIAH, RULER, LongBench (fidelity has no question).
fn family(task: &str) -> Option<&'static str> {
    match task.split('/').next() {
        Some("niah") => Some("NIAH"),
        Some("ruler") => Some("RULER"),
        Some("longbench") => Some("LongBench"),
        _ => None,
    }
}

/// One row of the setting comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingDiff {
    /// Policy label.
    pub policy: String,
    /// Budget.
    pub budget: Budget,
    /// Family.
    pub family: String,
    /// Mean query-aware score over the paired prompts.
    pub aware: f64,
    /// Mean query-agnostic score over the paired prompts.
    pub agnostic: f64,
    /// Mean of (query-aware - query-agnostic) per prompt and its 95% bootstrap interval.
    pub diff: super::Interval,
}

/// Query-aware minus query-agnostic on the same prompts (task, length, sample id), per policy,
/// budget (the full cache copied under every budget) and family.
pub fn setting_differences(records: &[ResultRecord], options: &SummaryOptions) -> Vec<SettingDiff> {
    let recs = expand_full_budgets(records);
    type Key = (String, Budget, &'static str);
    let mut aware: BTreeMap<Key, BTreeMap<(String, Option<u64>, String), f64>> = BTreeMap::new();
    let mut agnostic: BTreeMap<Key, BTreeMap<(String, Option<u64>, String), f64>> = BTreeMap::new();
    for r in &recs {
        let Some(fam) = family(&r.task) else { continue };
        let side = match r.setting_name() {
            QUERY_AWARE => &mut aware,
            QUERY_AGNOSTIC => &mut agnostic,
            _ => continue,
        };
        side.entry((r.policy.clone(), r.budget.clone(), fam)).or_default().insert((r.task.clone(), r.length, r.sample_id.clone()), r.score);
    }
    let policies = order_policies(aware.keys().map(|(p, _, _)| p.as_str()), &options.policy_order);
    let mut out = Vec::new();
    for p in &policies {
        for ((pp, b, fam), a) in aware.iter().filter(|((pp, _, _), _)| pp == p) {
            let Some(g) = agnostic.get(&(pp.clone(), b.clone(), fam)) else { continue };
            let pairs: Vec<(f64, f64)> = a.iter().filter_map(|(k, &x)| g.get(k).map(|&y| (x, y))).collect();
            let d: Vec<f64> = pairs.iter().map(|(x, y)| x - y).collect();
            let seed = cell_seed(options.seed, &format!("setting|{p}|{b}|{fam}"));
            let Some(ci) = bootstrap_mean(&d, options.resamples, seed) else { continue };
            let n = pairs.len() as f64;
            out.push(SettingDiff {
                policy: p.clone(),
                budget: b.clone(),
                family: fam.to_string(),
                aware: pairs.iter().map(|(x, _)| x).sum::<f64>() / n,
                agnostic: pairs.iter().map(|(_, y)| y).sum::<f64>() / n,
                diff: ci,
            });
        }
    }
    out
}

/// The paired comparison between the settings, per policy: one row per policy and budget, a
/// column per family with `aware - agnostic` and its interval.
pub fn setting_comparison_section(records: &[ResultRecord], options: &SummaryOptions) -> String {
    let rows = setting_differences(records, options);
    if rows.is_empty() {
        return String::new();
    }
    let families: Vec<String> =
        ["NIAH", "RULER", "LongBench"].iter().filter(|f| rows.iter().any(|r| r.family == **f)).map(|f| f.to_string()).collect();
    let mut t = String::from("## Query-aware against query-agnostic, paired per policy\n\n");
    t.push_str(&format!(
        "Each cell: mean over the prompts scored in both settings of (query-aware - query-agnostic), in points, with its \
         95% percentile-bootstrap interval over the pairs ({} resamples, seeded), then the two means (aware / agnostic, %). \
         **bold**: the interval excludes 0. The full cache is listed at every budget (it is one run); `(n=1)`: one pair, no \
         interval.\n\n",
        options.resamples
    ));
    t.push_str("| policy | budget |");
    for f in &families {
        t.push_str(&format!(" {f}: aware - agnostic | {f}: aware / agnostic |"));
    }
    t.push_str("\n|---|---:|");
    t.push_str(&"---:|---:|".repeat(families.len()));
    t.push('\n');
    let mut keys: Vec<(String, Budget)> = Vec::new();
    for r in &rows {
        let k = (r.policy.clone(), r.budget.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for (p, b) in keys {
        t.push_str(&format!("| {} | {b} |", esc(&p)));
        for f in &families {
            match rows.iter().find(|r| r.policy == p && r.budget == b && &r.family == f) {
                Some(r) if r.diff.n < MIN_PROMPTS => {
                    t.push_str(&format!(" {:+.1} (n=1) | {:.1} / {:.1} |", r.diff.mean * 100.0, r.aware * 100.0, r.agnostic * 100.0))
                }
                Some(r) => {
                    let cell = format!("{:+.1} [{:+.1}, {:+.1}]", r.diff.mean * 100.0, r.diff.lo * 100.0, r.diff.hi * 100.0);
                    let cell = if r.diff.excludes_zero().is_some() { format!("**{cell}**") } else { cell };
                    t.push_str(&format!(" {cell} | {:.1} / {:.1} |", r.aware * 100.0, r.agnostic * 100.0));
                }
                None => t.push_str(" - | - |"),
            }
        }
        t.push('\n');
    }
    t
}

/// RULER in kvpress's leaderboard form: per policy and budget, the RULER average (%, the mean
/// over tasks of each task's mean) and the compression ratio `1 - kept / prompt`, where
/// `kept = min(B, prompt)` tokens per KV head and layer (the full cache keeps the whole
/// prompt: ratio 0), averaged over the prompts.
pub fn kvpress_section(records: &[ResultRecord], options: &SummaryOptions) -> String {
    let ruler: Vec<&ResultRecord> = records.iter().filter(|r| r.task.starts_with("ruler/")).collect();
    if ruler.is_empty() {
        return String::new();
    }
    // (policy, budget) -> task -> scores; and the ratios.
    let mut scores: BTreeMap<(String, Budget), BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut ratios: BTreeMap<(String, Budget), Vec<f64>> = BTreeMap::new();
    for r in &ruler {
        let prompt = r.extra.get("prompt_tokens").and_then(|v| v.as_f64());
        let ratio = match (&r.budget, prompt) {
            (Budget::Tokens(b), Some(p)) if p > 0.0 => Some(1.0 - (*b as f64).min(p) / p),
            (Budget::Named(_), _) => Some(0.0),
            _ => None,
        };
        let k = (r.policy.clone(), r.budget.clone());
        scores.entry(k.clone()).or_default().entry(r.task.clone()).or_default().push(r.score);
        if let Some(x) = ratio {
            ratios.entry(k).or_default().push(x);
        }
    }
    let policies = order_policies(scores.keys().map(|(p, _)| p.as_str()), &options.policy_order);
    let budgets: Vec<Budget> = scores.keys().map(|(_, b)| b.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let mut t = String::from("\n### RULER in kvpress's leaderboard form\n\n");
    t.push_str(
        "RULER average (%, mean over the RULER tasks of each task's mean score) against the compression ratio \
         1 - kept / prompt (kept = min(B, prompt tokens) per KV head and layer; the full cache: 0), averaged over the \
         prompts; each cell `score @ ratio`. kvpress's leaderboard reports the same pair for Qwen3-8B and \
         Llama-3.1-8B on RULER 4k; these numbers are Qwen2.5-Coder-1.5B's (or the run's model), so set them beside \
         theirs as a shape, not as a like-for-like comparison.\n\n",
    );
    t.push_str("| policy |");
    for b in &budgets {
        t.push_str(&format!(" {b} |"));
    }
    t.push_str("\n|---|");
    t.push_str(&"---:|".repeat(budgets.len()));
    t.push('\n');
    for p in &policies {
        t.push_str(&format!("| {} |", esc(p)));
        for b in &budgets {
            let k = (p.clone(), b.clone());
            match (scores.get(&k), ratios.get(&k)) {
                (Some(tasks), Some(rs)) if !rs.is_empty() => {
                    let avg = tasks.values().map(|v| v.iter().sum::<f64>() / v.len() as f64).sum::<f64>() / tasks.len() as f64;
                    let ratio = rs.iter().sum::<f64>() / rs.len() as f64;
                    t.push_str(&format!(" {:.1} @ {:.3} |", avg * 100.0, ratio));
                }
                _ => t.push_str(" - |"),
            }
        }
        t.push('\n');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(task: &str, policy: &str, budget: impl Into<Budget>, id: &str, score: f64, setting: Option<&str>) -> ResultRecord {
        let mut r = ResultRecord::new(task, policy, budget, Some(4000), id, score).with_extra("prompt_tokens", 4000).with_extra("kv_bytes", 1000);
        r.setting = setting.map(str::to_string);
        r
    }

    /// lava scores 1 on every RULER prompt query-aware and 0 query-agnostic on prompts 0..3
    /// (1 on prompt 3); the full cache 1 in both; NIAH only query-aware.
    fn both() -> Vec<ResultRecord> {
        let mut v = Vec::new();
        for i in 0..4 {
            let id = i.to_string();
            for task in ["ruler/vt", "ruler/cwe"] {
                v.push(rec(task, "full", "full", &id, 1.0, None));
                v.push(rec(task, "full", "full", &id, 1.0, Some(QUERY_AGNOSTIC)));
                v.push(rec(task, "lava", 128u64, &id, 1.0, None));
                v.push(rec(task, "lava", 128u64, &id, if i == 3 { 1.0 } else { 0.0 }, Some(QUERY_AGNOSTIC)));
            }
            v.push(rec("niah", "lava", 128u64, &id, 0.5, None));
        }
        v.push(rec("fidelity", "lava", 128u64, "book#0", 0.9, None));
        v
    }

    #[test]
    fn settings_are_split_and_paired() {
        let recs = both();
        assert_eq!(settings_of(&recs), [QUERY_AWARE, QUERY_AGNOSTIC]);
        assert_eq!(settings_of(&recs[..1]), [QUERY_AWARE]);
        let opts = SummaryOptions::default();
        let d = setting_differences(&recs, &opts);
        // Only RULER has both settings; lava at 128 and full (copied under 128).
        assert_eq!(d.iter().map(|r| (r.policy.as_str(), r.family.as_str())).collect::<Vec<_>>(), [("full", "RULER"), ("lava", "RULER")]);
        let lava = &d[1];
        // 8 pairs (2 tasks x 4 prompts), differences 1,1,1,0 per task: mean 0.75.
        assert_eq!(lava.diff.n, 8);
        assert!((lava.diff.mean - 0.75).abs() < 1e-12, "{lava:?}");
        assert!((lava.aware - 1.0).abs() < 1e-12 && (lava.agnostic - 0.25).abs() < 1e-12);
        assert!(lava.diff.lo > 0.0 && lava.diff.hi <= 1.0, "{lava:?}");
        assert_eq!(d[0].diff.mean, 0.0);

        let text = build_report_by_setting(&recs, &opts).unwrap();
        let aware = text.find("## Setting: query-aware").expect("aware section");
        let agnostic = text.find("## Setting: query-agnostic").expect("agnostic section");
        let cmp = text.find("## Query-aware against query-agnostic").expect("comparison");
        assert!(aware < agnostic && agnostic < cmp, "{text}");
        // Each setting's tables hold its own records only: RULER / 128 for lava is 100.0 aware
        // and 25.0 agnostic; NIAH and fidelity only in the query-aware part.
        let (a, g) = (&text[aware..agnostic], &text[agnostic..cmp]);
        assert!(a.contains("NIAH") && a.contains("fidelity") && !g.contains("NIAH") && !g.contains("fidelity"), "{text}");
        let lava_row = |part: &str| part.lines().find(|l| l.starts_with("| lava |")).map(str::to_string).unwrap();
        assert!(lava_row(a).contains("100.0"), "{a}");
        assert!(lava_row(g).contains("25.0") && !lava_row(g).contains("100.0"), "{g}");
        assert!(text[cmp..].contains("| lava | 128 | **+75.0 ["), "{}", &text[cmp..]);
        assert!(text[cmp..].contains("100.0 / 25.0"), "{}", &text[cmp..]);
        // kvpress form: 1 - 128 / 4000 = 0.968.
        assert!(a.contains("kvpress") && a.contains("100.0 @ 0.968") && g.contains("25.0 @ 0.968"), "{text}");
        assert!(a.contains("100.0 @ 0.000"), "{a}");

        // One setting: the plain report, no setting headings.
        let one: Vec<ResultRecord> = recs.iter().filter(|r| r.setting.is_none()).cloned().collect();
        let t = build_report_by_setting(&one, &opts).unwrap();
        assert!(!t.contains("## Setting") && t.contains("kvpress"), "{t}");
    }

    #[test]
    fn setting_is_part_of_the_cell_and_round_trips() {
        let a = rec("ruler/vt", "lava", 128u64, "0", 1.0, None);
        let g = rec("ruler/vt", "lava", 128u64, "0", 0.0, Some(QUERY_AGNOSTIC));
        assert_ne!(a.key(), g.key());
        let line = serde_json::to_string(&g).unwrap();
        assert!(line.contains("\"setting\":\"query-agnostic\""), "{line}");
        assert_eq!(serde_json::from_str::<ResultRecord>(&line).unwrap(), g);
        // Query-aware records have no `setting` field, as before the field existed.
        let line = serde_json::to_string(&a).unwrap();
        assert!(!line.contains("setting"), "{line}");
        assert_eq!(serde_json::from_str::<ResultRecord>(&line).unwrap().key(), a.key());
    }
}
