//! The markdown report of an evaluation run (`lava eval report`), built from its merged
//! records ([`crate::provenance::merge_results`]):
//!
//! 1. a summary per task family (NIAH, RULER, LongBench, LongBench-E, fidelity top-1) and
//!    budget, each cell `mean ± half-width` of a seeded 95% bootstrap interval over prompts;
//! 2. paired comparisons of `lava` and `lava-matched` against every other policy on the same
//!    prompts, per family and overall, with a win / loss / no-significant-difference verdict;
//! 3. retained KV memory per policy and budget, relative to the nominal
//!    `L * H_kv * B * D * 2 * 4` bytes and in MB, and PNG plots of score against retained KV
//!    bytes per family ([`plot`]);
//! 4. the per-task tables of means (accuracy, LongBench-E length buckets, PG-19 perplexity,
//!    fidelity top-1 agreement and KL), as [`crate::report::render_report`] draws them.
//!
//! The full cache is run once, with budget `"full"`; the report copies its records under every
//! token budget of the same task ([`expand_full_budgets`]), so that it sits in every budget
//! column and pairs with every budget.

pub mod bootstrap;
pub mod plot;
pub mod settings;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use lava_cache::PolicyName;

pub use bootstrap::{bootstrap_mean, bootstrap_stratified, Interval, DEFAULT_RESAMPLES};

use crate::error::{EvalError, Result};
use crate::provenance::{fnv1a64, record_kv_shape, record_local_windows};
use crate::report::{render_report, ReportOptions};
use crate::results::{Budget, ResultRecord};

/// Policies compared against every other policy present (those present are used).
pub const DEFAULT_SUBJECTS: [&str; 2] = ["lava", "lava-matched"];

/// Name of the pooled row of the paired comparisons.
pub const OVERALL: &str = "overall";

/// Fewest prompts a family needs for an interval: one prompt has no spread to resample, so
/// its interval would be a point and any difference would look significant.
pub const MIN_PROMPTS: usize = 2;

/// Where the score-vs-memory plots go.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotOutput {
    /// Folder the PNG files are written to (created if needed).
    pub dir: PathBuf,
    /// Path of that folder as the report's links should write it (relative to the report);
    /// empty for the report's own folder.
    pub link_prefix: String,
}

/// What the report contains and how its statistics are drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryOptions {
    /// Policies listed first, in this order; unknown ones follow sorted by name.
    pub policy_order: Vec<String>,
    /// Policies compared pairwise against every other policy (when present).
    pub subjects: Vec<String>,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Bootstrap seed (each cell derives its own stream from it and the cell's name).
    pub seed: u64,
    /// Write the score-vs-memory plots here and link them, if set.
    pub plots: Option<PlotOutput>,
}

impl Default for SummaryOptions {
    fn default() -> Self {
        Self {
            policy_order: PolicyName::ALL.iter().map(|p| p.to_string()).collect(),
            subjects: DEFAULT_SUBJECTS.iter().map(|s| s.to_string()).collect(),
            resamples: DEFAULT_RESAMPLES,
            seed: 0,
            plots: None,
        }
    }
}

/// The summary family of a task: `niah` is NIAH, `ruler/*` RULER, `longbench/*_e`
/// LongBench-E, other `longbench/*` LongBench, `fidelity` "fidelity top-1" (its score is the
/// top-1 agreement with the full cache); `ppl` has none (a perplexity, not a score in
/// `[0, 1]`); any other task is a family named by its first path segment.
pub fn task_family(task: &str) -> Option<String> {
    let head = task.split('/').next().unwrap_or_default();
    Some(match head {
        "ppl" => return None,
        "niah" => "NIAH".into(),
        "ruler" => "RULER".into(),
        "longbench" if longbench_e_dataset(task).is_some() => "LongBench-E".into(),
        "longbench" => "LongBench".into(),
        "fidelity" => "fidelity top-1".into(),
        other => other.to_string(),
    })
}

/// The dataset of a LongBench-E task (`longbench/<dataset>` with a dataset ending in `_e`).
pub fn longbench_e_dataset(task: &str) -> Option<&str> {
    task.strip_prefix("longbench/").filter(|d| d.ends_with("_e"))
}

/// LongBench-E length buckets, in order.
pub const LONGBENCH_E_BUCKETS: [&str; 3] = ["0-4k", "4-8k", "8k+"];

/// The LongBench-E bucket of a sample of `words` words (the record's `longbench_length`), as
/// the official `eval.py` `scorer_e`: below 4000, 4000 to below 8000, 8000 and more.
pub fn longbench_e_bucket(words: f64) -> &'static str {
    if words < 4000.0 {
        LONGBENCH_E_BUCKETS[0]
    } else if words < 8000.0 {
        LONGBENCH_E_BUCKETS[1]
    } else {
        LONGBENCH_E_BUCKETS[2]
    }
}

/// Copies every record of policy `full` or `full@<dtype>` (budget `"full"`) under each token budget that other
/// records of the same task have (dropping the original); a task without token budgets keeps
/// its `full` records as they are.
pub fn expand_full_budgets(records: &[ResultRecord]) -> Vec<ResultRecord> {
    let budgets: BTreeSet<(&str, u64)> = records
        .iter()
        .filter_map(|r| match r.budget {
            Budget::Tokens(b) => Some((r.task.as_str(), b)),
            Budget::Named(_) => None,
        })
        .collect();
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        if r.policy != "full" && !r.policy.starts_with("full@") {
            out.push(r.clone());
            continue;
        }
        let mine: Vec<u64> = budgets.iter().filter(|(t, _)| *t == r.task).map(|(_, b)| *b).collect();
        if mine.is_empty() {
            out.push(r.clone());
        }
        for b in mine {
            let mut c = r.clone();
            c.budget = Budget::Tokens(b);
            out.push(c);
        }
    }
    out
}

/// `present` in report order: those of `order` first (in that order), then the rest by name.
pub fn order_policies<'a>(present: impl IntoIterator<Item = &'a str>, order: &[String]) -> Vec<String> {
    let present: BTreeSet<&str> = present.into_iter().collect();
    let mut out: Vec<String> = Vec::new();
    for p in order {
        if present.contains(p.as_str()) && !out.contains(p) {
            out.push(p.clone());
        }
    }
    for p in present {
        if !out.iter().any(|o| o == p) {
            out.push(p.to_string());
        }
    }
    out
}

/// A prompt within a task family: task, length, sample id.
type PromptKey = (String, Option<u64>, String);

/// The records of one (policy, family, budget) cell.
#[derive(Debug, Default)]
struct Cell {
    /// Score per prompt.
    scores: BTreeMap<PromptKey, f64>,
    /// Sum and count of `kv_bytes`.
    kv: (f64, usize),
}

impl Cell {
    fn values(&self) -> Vec<f64> {
        self.scores.values().copied().collect()
    }
    fn kv_mb(&self) -> Option<f64> {
        (self.kv.1 > 0).then(|| self.kv.0 / self.kv.1 as f64 / 1e6)
    }
}

fn kv_bytes(r: &ResultRecord) -> Option<f64> {
    r.extra.get("kv_bytes").and_then(|v| v.as_f64())
}

/// The family cells of the expanded records, and the set of families and budgets.
struct Index {
    cells: BTreeMap<(String, String, Budget), Cell>,
    families: Vec<String>,
    budgets: Vec<Budget>,
    policies: Vec<String>,
}

impl Index {
    fn new(recs: &[ResultRecord], order: &[String]) -> Self {
        let mut cells: BTreeMap<(String, String, Budget), Cell> = BTreeMap::new();
        for r in recs {
            let Some(fam) = task_family(&r.task) else { continue };
            let c = cells.entry((r.policy.clone(), fam, r.budget.clone())).or_default();
            c.scores.entry((r.task.clone(), r.length, r.sample_id.clone())).or_insert(r.score);
            if let Some(b) = kv_bytes(r) {
                c.kv.0 += b;
                c.kv.1 += 1;
            }
        }
        let families: BTreeSet<String> = cells.keys().map(|(_, f, _)| f.clone()).collect();
        let budgets: BTreeSet<Budget> = cells.keys().map(|(_, _, b)| b.clone()).collect();
        let policies = order_policies(cells.keys().map(|(p, _, _)| p.as_str()), order);
        Self { cells, families: families.into_iter().collect(), budgets: budgets.into_iter().collect(), policies }
    }

    fn get(&self, policy: &str, family: &str, budget: &Budget) -> Option<&Cell> {
        self.cells.get(&(policy.to_string(), family.to_string(), budget.clone()))
    }
}

fn cell_seed(seed: u64, label: &str) -> u64 {
    seed ^ fnv1a64(label.as_bytes())
}

fn esc(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The summary's intervals: per (policy, family, budget).
fn summary_intervals(index: &Index, options: &SummaryOptions) -> BTreeMap<(String, String, Budget), Interval> {
    let mut out = BTreeMap::new();
    for ((p, f, b), cell) in &index.cells {
        let seed = cell_seed(options.seed, &format!("summary|{p}|{f}|{b}"));
        if let Some(ci) = bootstrap_mean(&cell.values(), options.resamples, seed) {
            out.insert((p.clone(), f.clone(), b.clone()), ci);
        }
    }
    out
}

fn summary_section(index: &Index, cis: &BTreeMap<(String, String, Budget), Interval>, options: &SummaryOptions) -> String {
    let columns: Vec<(String, Budget)> = cis.keys().map(|(_, f, b)| (f.clone(), b.clone())).collect::<BTreeSet<_>>().into_iter().collect();
    let mut t = String::new();
    t.push_str("### Summary (%, higher is better; each family averaged over its samples, ± half-width of the 95% bootstrap interval)\n\n");
    t.push_str("| policy |");
    for (f, b) in &columns {
        t.push_str(&format!(" {} / {b} |", esc(f)));
    }
    t.push_str(" average |\n|---|");
    t.push_str(&"---:|".repeat(columns.len()));
    t.push_str("---:|\n");
    for p in &index.policies {
        t.push_str(&format!("| {} |", esc(p)));
        let mut means = Vec::new();
        for (f, b) in &columns {
            match cis.get(&(p.clone(), f.clone(), b.clone())) {
                Some(ci) if ci.n < MIN_PROMPTS => {
                    means.push(ci.mean);
                    t.push_str(&format!(" {:.1} (n={}) |", ci.mean * 100.0, ci.n));
                }
                Some(ci) => {
                    means.push(ci.mean);
                    t.push_str(&format!(" {:.1} ± {:.1} |", ci.mean * 100.0, ci.half_width() * 100.0));
                }
                None => t.push_str(" - |"),
            }
        }
        match means.is_empty() {
            true => t.push_str(" - |\n"),
            false => t.push_str(&format!(" {:.1} |\n", means.iter().sum::<f64>() / means.len() as f64 * 100.0)),
        }
    }
    let counts: Vec<String> = index
        .families
        .iter()
        .map(|f| {
            let prompts: BTreeSet<&PromptKey> =
                index.cells.iter().filter(|((_, cf, _), _)| cf == f).flat_map(|(_, c)| c.scores.keys()).collect();
            format!("{} {}", f, prompts.len())
        })
        .collect();
    t.push_str(&format!(
        "\nEach cell: mean ± half-width (hi - lo) / 2 of the 95% percentile-bootstrap interval ({} resamples of the \
         cell's prompts with replacement, seeded; `(n=1)`: one prompt, no interval); average: mean of the row's cells. \
         Prompts per family: {}.\n",
        options.resamples,
        counts.join(", ")
    ));
    t
}

/// One row of the paired comparisons.
#[derive(Debug, Clone, PartialEq)]
pub struct PairedRow {
    /// The policy compared (`lava`, `lava-matched`).
    pub subject: String,
    /// The policy it is compared against.
    pub baseline: String,
    /// Budget.
    pub budget: Budget,
    /// Task family, or [`OVERALL`].
    pub family: String,
    /// Mean of `subject - baseline` per prompt (scores in `[0, 1]`; the report shows points),
    /// and its 95% paired-bootstrap interval; `n` = prompts scored under both.
    pub diff: Interval,
    /// Fewest pairs of any family behind the row (`diff.n` for a family row).
    pub min_family_n: usize,
}

impl PairedRow {
    /// `"win"` / `"loss"` where the interval excludes 0, else `"no significant difference"`;
    /// `"too few prompts"` where a family behind the row has fewer than [`MIN_PROMPTS`] pairs.
    pub fn verdict(&self) -> &'static str {
        if self.min_family_n < MIN_PROMPTS {
            return "too few prompts";
        }
        match self.diff.excludes_zero() {
            Some(true) => "win",
            Some(false) => "loss",
            None => "no significant difference",
        }
    }
}

/// Paired comparisons on the same prompts (records matched by task, length, sample id and
/// budget; the full cache's records are copied under every budget first, see
/// [`expand_full_budgets`]): each present subject of `options.subjects` against every other
/// policy present, the full cache included, per budget and family, plus [`OVERALL`] where
/// two or more families have pairs.
///
/// A family's difference is the mean over its prompts of `subject - baseline`, its interval a
/// bootstrap over those prompts. Overall is the mean of the family differences (every family
/// weighs the same, as in the summary's average column), its interval a bootstrap stratified
/// by family (each family's prompts resampled within the family).
pub fn paired_comparisons(records: &[ResultRecord], options: &SummaryOptions) -> Vec<PairedRow> {
    let recs = expand_full_budgets(records);
    let index = Index::new(&recs, &options.policy_order);
    paired_rows(&index, options)
}

fn paired_rows(index: &Index, options: &SummaryOptions) -> Vec<PairedRow> {
    let mut rows = Vec::new();
    let subjects: Vec<&String> = options.subjects.iter().filter(|s| index.policies.contains(s)).collect();
    for subject in subjects {
        for baseline in index.policies.iter().filter(|p| *p != subject) {
            for budget in &index.budgets {
                let mut groups: Vec<(String, Vec<f64>)> = Vec::new();
                for fam in &index.families {
                    let (Some(s), Some(b)) = (index.get(subject, fam, budget), index.get(baseline, fam, budget)) else { continue };
                    let d: Vec<f64> = s.scores.iter().filter_map(|(k, sv)| b.scores.get(k).map(|bv| sv - bv)).collect();
                    if !d.is_empty() {
                        groups.push((fam.clone(), d));
                    }
                }
                let label = |fam: &str| format!("paired|{subject}|{baseline}|{budget}|{fam}");
                for (fam, d) in &groups {
                    if let Some(ci) = bootstrap_mean(d, options.resamples, cell_seed(options.seed, &label(fam))) {
                        rows.push(PairedRow {
                            subject: subject.clone(),
                            baseline: baseline.clone(),
                            budget: budget.clone(),
                            family: fam.clone(),
                            diff: ci,
                            min_family_n: d.len(),
                        });
                    }
                }
                if groups.len() > 1 {
                    let slices: Vec<&[f64]> = groups.iter().map(|(_, d)| d.as_slice()).collect();
                    if let Some(ci) = bootstrap_stratified(&slices, options.resamples, cell_seed(options.seed, &label(OVERALL))) {
                        rows.push(PairedRow {
                            subject: subject.clone(),
                            baseline: baseline.clone(),
                            budget: budget.clone(),
                            family: OVERALL.into(),
                            diff: ci,
                            min_family_n: groups.iter().map(|(_, d)| d.len()).min().unwrap_or(0),
                        });
                    }
                }
            }
        }
    }
    rows
}

fn paired_section(rows: &[PairedRow], options: &SummaryOptions) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut t = String::from("### Paired comparisons on the same prompts (points, higher is better for the first policy)\n\n");
    t.push_str(&format!(
        "Difference = mean over prompts of (policy - baseline) score, in percentage points; prompts are paired by task, \
         length, sample id and budget (the full cache is a baseline at every budget). 95% interval: percentile bootstrap \
         over the pairs ({} resamples, seeded). **overall** = mean of the family differences, every family weighing the \
         same (as the summary's average), with the bootstrap stratified by family (each family's pairs resampled within \
         the family). Verdict: win / loss where the interval excludes 0, otherwise no significant difference; too few \
         prompts where a family has a single pair (no interval).\n",
        options.resamples
    ));
    let subjects: Vec<&String> = rows.iter().map(|r| &r.subject).collect::<BTreeSet<_>>().into_iter().collect();
    let subjects: Vec<&String> = options.subjects.iter().filter(|s| subjects.contains(s)).collect();
    for s in subjects {
        t.push_str(&format!("\n#### {} against each other policy\n\n", esc(s)));
        t.push_str(&format!(
            "| baseline | budget | family | prompts | {} - baseline | 95% interval | verdict |\n|---|---:|---|---:|---:|---|---|\n",
            esc(s)
        ));
        for r in rows.iter().filter(|r| &r.subject == s) {
            let fam = if r.family == OVERALL { format!("**{OVERALL}**") } else { esc(&r.family) };
            let interval = if r.min_family_n < MIN_PROMPTS {
                "-".to_string()
            } else {
                format!("[{:+.1}, {:+.1}]", r.diff.lo * 100.0, r.diff.hi * 100.0)
            };
            t.push_str(&format!(
                "| {} | {} | {fam} | {} | {:+.1} | {interval} | {} |\n",
                esc(&r.baseline),
                r.budget,
                r.diff.n,
                r.diff.mean * 100.0,
                r.verdict()
            ));
        }
    }
    t
}

/// Retained KV bytes of one (policy, budget) over all records with `kv_bytes` (every task,
/// perplexity included).
#[derive(Debug, Default)]
struct MemoryCell {
    /// Sum of `kv_bytes / nominal` and count, over records with a `kv_shape`.
    ratio: (f64, usize),
    /// Sum of `kv_bytes` and count.
    bytes: (f64, usize),
    /// Over the records of a model with local layers: sum of the nominal bytes (rings plus the
    /// global layers' budget), sum of what the same model would hold with every layer global,
    /// and count.
    local: (f64, f64, usize),
}

/// The nominal retained bytes of a record at token budget `budget` (K and V in f32): `B`
/// tokens in every KV head of every global layer, and each local layer's ring of `min(N, w)`
/// positions, `N` the record's prompt tokens (`prompt_tokens`, else its length; the rings
/// full when neither is known). Without local layers, `L * H_kv * B * D * 2 * 4`. `None`
/// without a `kv_shape`.
pub fn nominal_kv_bytes(r: &ResultRecord, budget: usize) -> Option<f64> {
    let (l, h, d) = record_kv_shape(r)?;
    let shape = lava_cache::CacheShape { layers: l as usize, query_heads: h as usize, kv_heads: h as usize, head_dim: d as usize };
    let windows = record_local_windows(r);
    let n = r.extra.get("prompt_tokens").and_then(|v| v.as_u64()).or(r.length).map_or(usize::MAX, |n| n as usize);
    Some(lava_cache::held_kv_bytes(shape, &windows, n, budget, lava_cache::KvDtype::F32) as f64)
}

type MemoryCells = BTreeMap<(String, Budget), MemoryCell>;

fn memory_cells(recs: &[ResultRecord]) -> MemoryCells {
    let mut acc: MemoryCells = BTreeMap::new();
    for r in recs {
        let Some(bytes) = kv_bytes(r) else { continue };
        let e = acc.entry((r.policy.clone(), r.budget.clone())).or_default();
        e.bytes.0 += bytes;
        e.bytes.1 += 1;
        let Budget::Tokens(b) = &r.budget else { continue };
        if let Some(nominal) = nominal_kv_bytes(r, *b as usize).filter(|&n| n > 0.0) {
            e.ratio.0 += bytes / nominal;
            e.ratio.1 += 1;
            if !record_local_windows(r).is_empty() {
                let (l, h, d) = record_kv_shape(r).unwrap_or_default();
                e.local.0 += nominal;
                e.local.1 += l as f64 * h as f64 * *b as f64 * d as f64 * 8.0;
                e.local.2 += 1;
            }
        }
    }
    acc
}

fn memory_section(recs: &[ResultRecord], order: &[String]) -> String {
    let cells = memory_cells(recs);
    if cells.is_empty() {
        return String::new();
    }
    let policies = order_policies(cells.keys().map(|(p, _)| p.as_str()), order);
    let budgets: Vec<Budget> = cells.keys().map(|(_, b)| b.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let table = |value: &dyn Fn(&MemoryCell) -> Option<String>, budgets: &[&Budget]| {
        let mut t = String::from("| policy |");
        for b in budgets {
            t.push_str(&format!(" {b} |"));
        }
        t.push_str("\n|---|");
        t.push_str(&"---:|".repeat(budgets.len()));
        t.push('\n');
        for p in &policies {
            t.push_str(&format!("| {} |", esc(p)));
            for b in budgets {
                let v = cells.get(&(p.clone(), (*b).clone())).and_then(value).unwrap_or_else(|| "-".into());
                t.push_str(&format!(" {v} |"));
            }
            t.push('\n');
        }
        t
    };
    let mut t = String::from("### Memory: retained KV cache after prefill compression\n\n");
    let token_budgets: Vec<&Budget> = budgets.iter().filter(|b| matches!(b, Budget::Tokens(_))).collect();
    let with_shape = cells.values().any(|c| c.ratio.1 > 0);
    if with_shape && !token_budgets.is_empty() {
        t.push_str(
            "Mean over records of retained KV bytes (`kv_bytes`) / nominal `L * H_kv * B * D * 2 * 4` bytes (K and V, f32, \
             `B` tokens in every KV head of every layer; `kv_shape` of the records). Prompts shorter than the budget count \
             at their real bytes (below 1x); adaptive policies may exceed 1x; the full cache holds the whole prompt. \
             For a model with sliding-window (local) layers the nominal bytes are the budget's in the global layers \
             (`L` their count) plus each local layer's ring of `min(N, w)` positions.\n\n",
        );
        t.push_str(&table(&|c| (c.ratio.1 > 0).then(|| format!("{:.2}x", c.ratio.0 / c.ratio.1 as f64)), &token_budgets));
        t.push('\n');
    } else {
        t.push_str("(The records carry no `kv_shape`, so the ratio to the nominal budget bytes is not shown.)\n\n");
    }
    t.push_str("Mean retained KV (MB = 10^6 bytes), all tasks:\n\n");
    let all: Vec<&Budget> = budgets.iter().collect();
    t.push_str(&table(&|c| (c.bytes.1 > 0).then(|| format!("{:.2}", c.bytes.0 / c.bytes.1 as f64 / 1e6)), &all));
    t.push_str(&local_rows(&cells, &all));
    t
}

/// The memory table's rows for a model with local layers (none without): per budget, the
/// mean nominal MB with the rings (rings plus the global layers' budget) and the mean MB the
/// same model would hold with every layer global (`L * H_kv * B * D * 2 * 4`).
fn local_rows(cells: &MemoryCells, budgets: &[&Budget]) -> String {
    if !cells.values().any(|c| c.local.2 > 0) {
        return String::new();
    }
    let mut rows = [String::from("| nominal: rings + global layers' budget |"), String::from("| nominal: every layer global |")];
    for b in budgets {
        let mut sums = (0.0, 0.0, 0usize);
        for ((_, cb), c) in cells {
            if cb == *b {
                sums = (sums.0 + c.local.0, sums.1 + c.local.1, sums.2 + c.local.2);
            }
        }
        let mb = |x: f64| if sums.2 == 0 { "-".to_string() } else { format!("{:.2}", x / sums.2 as f64 / 1e6) };
        rows[0].push_str(&format!(" {} |", mb(sums.0)));
        rows[1].push_str(&format!(" {} |", mb(sums.1)));
    }
    format!("{}\n{}\n\nThe model has sliding-window (local) layers: each keeps a ring of its last `w` positions \
             whatever the policy, so the first row (what the policies' budgets give with the rings) is the nominal \
             the retained bytes compare to; the second is the same budget in a model whose layers all attend to the \
             whole context.\n", rows[0], rows[1])
}

fn family_slug(family: &str) -> String {
    let mut s: String = family.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    while s.contains("__") {
        s = s.replace("__", "_");
    }
    s.trim_matches('_').to_string()
}

/// The file name of a family's plot: `score_vs_kv_<family>.png` (lower case, `_` for
/// anything but letters and digits).
pub fn plot_file_name(family: &str) -> String {
    format!("score_vs_kv_{}.png", family_slug(family))
}

fn plots_section(
    index: &Index,
    cis: &BTreeMap<(String, String, Budget), Interval>,
    out: &PlotOutput,
    options: &SummaryOptions,
) -> Result<String> {
    std::fs::create_dir_all(&out.dir).map_err(|e| EvalError::io(&out.dir, e))?;
    let mut links = Vec::new();
    for fam in &index.families {
        let mut series = Vec::new();
        for p in index.policies.iter().filter(|p| *p != "full") {
            let points: Vec<plot::PlotPoint> = index
                .budgets
                .iter()
                .filter(|b| matches!(b, Budget::Tokens(_)))
                .filter_map(|b| {
                    let x = index.get(p, fam, b)?.kv_mb()?;
                    let ci = cis.get(&(p.clone(), fam.clone(), b.clone()))?;
                    Some(plot::PlotPoint { x, y: ci.mean * 100.0, lo: ci.lo * 100.0, hi: ci.hi * 100.0 })
                })
                .collect();
            if !points.is_empty() {
                let color = options.policy_order.iter().position(|o| o == p).unwrap_or(options.policy_order.len() + series.len());
                series.push(plot::Series { label: p.clone(), emphasis: options.subjects.contains(p), color, points });
            }
        }
        if series.is_empty() {
            continue;
        }
        let reference = index
            .budgets
            .iter()
            .find_map(|b| cis.get(&("full".to_string(), fam.clone(), b.clone())))
            .map(|ci| plot::Reference { label: "full cache".into(), y: ci.mean * 100.0, lo: ci.lo * 100.0, hi: ci.hi * 100.0 });
        let chart = plot::ScoreVsKv { title: format!("{fam}: score vs retained KV"), series, reference };
        let name = plot_file_name(fam);
        plot::render_score_vs_kv_png(&chart, out.dir.join(&name))?;
        let link = if out.link_prefix.is_empty() { name } else { format!("{}/{name}", out.link_prefix.trim_end_matches('/')) };
        links.push((fam.clone(), link));
    }
    if links.is_empty() {
        return Ok(String::new());
    }
    let mut t = String::from(
        "\n### Score vs retained KV bytes\n\nx: mean retained KV (MB) of the policy at each budget over the family's prompts; \
         y: family mean score (%) with its 95% bootstrap interval; one line per policy through its budgets (points moved \
         sideways by a few pixels so that the intervals do not hide each other); dashed: the full cache.\n\n",
    );
    for (fam, link) in links {
        t.push_str(&format!("![{fam}]({link})\n"));
    }
    Ok(t)
}

/// One LongBench-E dataset's buckets.
#[derive(Debug, Default)]
struct LengthBuckets<'a> {
    /// (policy, budget, bucket) -> (sum of scores, records).
    scores: BTreeMap<(String, Budget, &'static str), (f64, usize)>,
    /// Sample ids per bucket.
    prompts: BTreeMap<&'static str, BTreeSet<&'a str>>,
    /// Records without `longbench_length`.
    missing: usize,
}

fn longbench_e_section(recs: &[ResultRecord], order: &[String]) -> String {
    let mut by_ds: BTreeMap<&str, LengthBuckets> = BTreeMap::new();
    for r in recs {
        let Some(ds) = longbench_e_dataset(&r.task) else { continue };
        let e = by_ds.entry(ds).or_default();
        let Some(words) = r.extra.get("longbench_length").and_then(|v| v.as_f64()) else {
            e.missing += 1;
            continue;
        };
        let bucket = longbench_e_bucket(words);
        let c = e.scores.entry((r.policy.clone(), r.budget.clone(), bucket)).or_default();
        c.0 += r.score;
        c.1 += 1;
        e.prompts.entry(bucket).or_default().insert(r.sample_id.as_str());
    }
    if by_ds.is_empty() {
        return String::new();
    }
    let mut t = String::from(
        "\n### LongBench-E: mean score by context length (%, words of the sample's `length` field: 0-4k < 4000 <= 4-8k < 8000 <= 8k+)\n",
    );
    for (ds, LengthBuckets { scores: acc, prompts, missing }) in by_ds {
        let policies = order_policies(acc.keys().map(|(p, _, _)| p.as_str()), order);
        let budgets: BTreeSet<&Budget> = acc.keys().map(|(_, b, _)| b).collect();
        t.push_str(&format!("\n#### {}\n\n| policy |", esc(ds)));
        for b in &budgets {
            for k in LONGBENCH_E_BUCKETS {
                t.push_str(&format!(" {b} / {k} |"));
            }
        }
        t.push_str("\n|---|");
        t.push_str(&"---:|".repeat(budgets.len() * LONGBENCH_E_BUCKETS.len()));
        t.push('\n');
        for p in &policies {
            t.push_str(&format!("| {} |", esc(p)));
            for b in &budgets {
                for k in LONGBENCH_E_BUCKETS {
                    match acc.get(&(p.clone(), (*b).clone(), k)) {
                        Some(&(s, n)) => t.push_str(&format!(" {:.2} |", s / n as f64 * 100.0)),
                        None => t.push_str(" - |"),
                    }
                }
            }
            t.push('\n');
        }
        let counts: Vec<String> = LONGBENCH_E_BUCKETS.iter().map(|k| format!("{k} {}", prompts.get(k).map_or(0, |s| s.len()))).collect();
        t.push_str(&format!("\nSamples per bucket: {}.", counts.join(", ")));
        if missing > 0 {
            t.push_str(&format!(" Records without `longbench_length`, left out: {missing}."));
        }
        t.push('\n');
    }
    t
}

/// The report of the results files `files` merged ([`merge_results`](crate::merge_results):
/// refused across code versions or settings unless `allow_mixed`), built by
/// [`build_report`] with the default options and `plots`. A missing file is an I/O error
/// that says what to pass; a file without records is an error too.
pub fn report_of_files(files: &[PathBuf], allow_mixed: bool, plots: Option<PlotOutput>) -> Result<String> {
    let mut sources = Vec::with_capacity(files.len());
    for f in files {
        if !f.is_file() {
            let why = "no such results file; pass --results FILE.jsonl (a file written by `lava eval`; several: --results a.jsonl,b.jsonl)";
            return Err(EvalError::io(f, std::io::Error::new(std::io::ErrorKind::NotFound, why)));
        }
        let records = crate::load_results(f)?;
        if records.is_empty() {
            let why = "holds no results; pass the results file of a `lava eval` run that has finished at least one cell";
            return Err(EvalError::invalid(f, None, why));
        }
        sources.push((f.clone(), records));
    }
    let records = crate::merge_results(&sources, allow_mixed)?;
    settings::build_report_by_setting(&records, &SummaryOptions { plots, ..Default::default() })
}

/// The whole markdown report of `records` (already merged: one record per cell). Writes the
/// score-vs-memory plots when `options.plots` is set.
pub fn build_report(records: &[ResultRecord], options: &SummaryOptions) -> Result<String> {
    let recs = expand_full_budgets(records);
    let order = &options.policy_order;
    let index = Index::new(&recs, order);
    let cis = summary_intervals(&index, options);
    let mut text = String::new();
    if !cis.is_empty() {
        text.push_str(&summary_section(&index, &cis, options));
        text.push('\n');
    }
    let paired = paired_rows(&index, options);
    if !paired.is_empty() {
        text.push_str(&paired_section(&paired, options));
        text.push('\n');
    }
    let memory = memory_section(&recs, order);
    if !memory.is_empty() {
        text.push_str(&memory);
    }
    if let Some(out) = &options.plots {
        text.push_str(&plots_section(&index, &cis, out, options)?);
    }
    if !memory.is_empty() || options.plots.is_some() {
        text.push('\n');
    }
    let pick = |f: &dyn Fn(&ResultRecord) -> bool| recs.iter().filter(|r| f(r)).cloned().collect::<Vec<_>>();
    let table = |scale: f64, decimals: usize| ReportOptions { policy_order: order.clone(), scale, decimals, ..Default::default() };
    let acc = pick(&|r| r.task != "ppl" && r.task != "fidelity");
    if !acc.is_empty() {
        text.push_str("### Accuracy (%, higher is better)\n\n");
        text.push_str(&render_report(&acc, &table(100.0, 2)));
    }
    let lbe = longbench_e_section(&recs, order);
    text.push_str(&lbe);
    if !acc.is_empty() || !lbe.is_empty() {
        text.push('\n');
    }
    let ppl = pick(&|r| r.task == "ppl");
    if !ppl.is_empty() {
        text.push_str("### PG-19 perplexity of the continuation (lower is better)\n\n");
        text.push_str(&render_report(&ppl, &table(1.0, 2)));
        text.push('\n');
    }
    let fid = pick(&|r| r.task == "fidelity");
    if !fid.is_empty() {
        text.push_str("### Fidelity: top-1 agreement with the full cache (%)\n\n");
        text.push_str(&render_report(&fid, &table(100.0, 2)));
        let kl: Vec<ResultRecord> = fid
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.task = "KL".into();
                r.score = r.extra.get("kl").and_then(|v| v.as_f64()).unwrap_or(f64::NAN).max(0.0);
                r
            })
            .collect();
        text.push_str("\n### Fidelity: KL(full || policy) per token (nats, lower is better)\n\n");
        text.push_str(&render_report(&kl, &table(1.0, 4)));
    }
    Ok(text)
}

#[cfg(test)]
mod tests;
