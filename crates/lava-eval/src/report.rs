//! Markdown report of a results file: rows are policies, columns are (task, budget[, length])
//! cells holding the mean score over samples, plus an average column.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::results::{Budget, ResultRecord};

/// How to lay out the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportOptions {
    /// Policies listed first, in this order; the others follow sorted by name.
    pub policy_order: Vec<String>,
    /// Whether context lengths get their own columns (otherwise samples of all lengths are
    /// averaged together).
    pub split_by_length: bool,
    /// Factor applied to scores for display (100 = percentages).
    pub scale: f64,
    /// Decimals shown.
    pub decimals: usize,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self { policy_order: Vec::new(), split_by_length: false, scale: 100.0, decimals: 2 }
    }
}

/// A report column.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ColumnKey {
    /// Task / dataset.
    pub task: String,
    /// Cache budget.
    pub budget: Budget,
    /// Context length, when split by length.
    pub length: Option<u64>,
}

impl ColumnKey {
    /// Header text: `task / budget[ / length]`.
    pub fn label(&self) -> String {
        match self.length {
            Some(l) => format!("{} / {} / {}", self.task, self.budget, l),
            None => format!("{} / {}", self.task, self.budget),
        }
    }
}

/// Mean and count of the scores of one cell.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CellStats {
    /// Mean score (unscaled).
    pub mean: f64,
    /// Number of samples.
    pub count: usize,
}

/// One report row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    /// Policy name.
    pub policy: String,
    /// One entry per column; `None` where the policy has no result.
    pub cells: Vec<Option<CellStats>>,
    /// Mean of the row's available cell means (each column weighs the same).
    pub average: Option<f64>,
}

/// The aggregated table behind the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportTable {
    /// Columns, sorted by task, then budget (tokens ascending, then names), then length.
    pub columns: Vec<ColumnKey>,
    /// Rows in report order.
    pub rows: Vec<ReportRow>,
}

impl ReportTable {
    /// Aggregates records.
    pub fn from_records(records: &[ResultRecord], options: &ReportOptions) -> Self {
        let mut acc: BTreeMap<(String, ColumnKey), (f64, usize)> = BTreeMap::new();
        for r in records {
            let col = ColumnKey {
                task: r.task.clone(),
                budget: r.budget.clone(),
                length: if options.split_by_length { r.length } else { None },
            };
            let e = acc.entry((r.policy.clone(), col)).or_insert((0.0, 0));
            e.0 += r.score;
            e.1 += 1;
        }
        let mut columns: Vec<ColumnKey> = acc.keys().map(|(_, c)| c.clone()).collect();
        columns.sort();
        columns.dedup();
        let mut policies: Vec<String> = acc.keys().map(|(p, _)| p.clone()).collect();
        policies.sort();
        policies.dedup();
        let mut ordered: Vec<String> =
            options.policy_order.iter().filter(|p| policies.contains(p)).cloned().collect();
        ordered.dedup();
        for p in policies {
            if !ordered.contains(&p) {
                ordered.push(p);
            }
        }
        let rows = ordered
            .into_iter()
            .map(|policy| {
                let cells: Vec<Option<CellStats>> = columns
                    .iter()
                    .map(|c| {
                        acc.get(&(policy.clone(), c.clone()))
                            .map(|&(sum, count)| CellStats { mean: sum / count as f64, count })
                    })
                    .collect();
                let present: Vec<f64> = cells.iter().flatten().map(|c| c.mean).collect();
                let average = (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64);
                ReportRow { policy, cells, average }
            })
            .collect();
        Self { columns, rows }
    }

    /// Renders the table as GitHub markdown (`-` marks a missing cell).
    pub fn to_markdown(&self, options: &ReportOptions) -> String {
        let fmt = |v: Option<f64>| match v {
            Some(x) => format!("{:.*}", options.decimals, x * options.scale),
            None => "-".to_string(),
        };
        let mut out = String::new();
        out.push_str("| policy |");
        for c in &self.columns {
            out.push_str(&format!(" {} |", c.label().replace('|', "\\|")));
        }
        out.push_str(" average |\n|---|");
        for _ in &self.columns {
            out.push_str("---:|");
        }
        out.push_str("---:|\n");
        for r in &self.rows {
            out.push_str(&format!("| {} |", r.policy.replace('|', "\\|")));
            for c in &r.cells {
                out.push_str(&format!(" {} |", fmt(c.map(|s| s.mean))));
            }
            out.push_str(&format!(" {} |\n", fmt(r.average)));
        }
        out
    }
}

/// Renders records as a markdown table (see [`ReportTable`]).
pub fn render_report(records: &[ResultRecord], options: &ReportOptions) -> String {
    ReportTable::from_records(records, options).to_markdown(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(task: &str, policy: &str, budget: Budget, len: Option<u64>, id: &str, score: f64) -> ResultRecord {
        ResultRecord::new(task, policy, budget, len, id, score)
    }

    #[test]
    fn markdown_table() {
        let recs = vec![
            rec("qasper", "snapkv", Budget::Tokens(128), Some(4096), "0", 0.2),
            rec("qasper", "lava", Budget::Tokens(128), Some(4096), "0", 0.5),
            rec("qasper", "lava", Budget::Tokens(128), Some(8192), "1", 1.0),
            rec("qasper", "lava", Budget::Tokens(1024), Some(4096), "0", 0.25),
            rec("hotpotqa", "lava", Budget::Tokens(128), Some(4096), "0", 0.0),
            rec("hotpotqa", "full", Budget::named("full"), Some(4096), "0", 1.0),
        ];
        let opts = ReportOptions { policy_order: vec!["full".into(), "nope".into()], ..Default::default() };
        let md = render_report(&recs, &opts);
        let expected = "\
| policy | hotpotqa / 128 | hotpotqa / full | qasper / 128 | qasper / 1024 | average |
|---|---:|---:|---:|---:|---:|
| full | - | 100.00 | - | - | 100.00 |
| lava | 0.00 | - | 75.00 | 25.00 | 33.33 |
| snapkv | - | - | 20.00 | - | 20.00 |
";
        assert_eq!(md, expected);
        // deterministic regardless of record order
        let mut rev = recs.clone();
        rev.reverse();
        assert_eq!(render_report(&rev, &opts), expected);

        let split = ReportOptions { split_by_length: true, decimals: 1, ..Default::default() };
        let md = render_report(&recs, &split);
        assert!(md.starts_with("| policy | hotpotqa / 128 / 4096 | hotpotqa / full / 4096 | qasper / 128 / 4096 | qasper / 128 / 8192 |"));
        assert!(md.contains("| lava | 0.0 | - | 50.0 | 100.0 | 25.0 | 43.8 |"), "{md}");
        assert_eq!(render_report(&[], &ReportOptions::default()), "| policy | average |\n|---|---:|\n");
    }
}
