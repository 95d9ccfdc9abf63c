//! `lava eval`: accuracy of every policy at every budget, one command, one table.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use clap::{Args, Subcommand};
use lava_cache::{PolicyConfig, PolicyName};
use lava_eval::niah::{render_heatmap_png, NiahCell, NiahGrid};
use lava_eval::run::{self, Grid, Sink, Subject};
use lava_eval::{load_results, render_report, Budget, ReportOptions, ResultRecord, RulerTask};

use crate::error::CliError;
use crate::fetch::resolve_model;
use crate::{with_backend, BackendKind};

/// Options shared by every evaluation.
#[derive(Debug, Clone, Args)]
pub struct EvalCommon {
    /// GGUF file or Hugging Face directory (default: SmolLM2-135M-Instruct).
    #[arg(long, global = true)]
    pub model: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex, global = true)]
    pub backend: BackendKind,
    /// Policies, comma-separated (default: all).
    #[arg(long, value_delimiter = ',', global = true)]
    pub policies: Vec<String>,
    /// Budgets B, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,128,256,512", global = true)]
    pub budgets: Vec<usize>,
    /// Samples per task (RULER samples per length; LongBench records per dataset; PG-19 books).
    #[arg(long, global = true)]
    pub samples: Option<usize>,
    /// Compress the context before the question is appended (kvpress's question-agnostic setting).
    #[arg(long, global = true)]
    pub question_agnostic: bool,
    /// JSONL results file; cells already in it are skipped (resume).
    #[arg(long, default_value = "results/eval.jsonl", global = true)]
    pub results: PathBuf,
    /// Observation window w.
    #[arg(long, default_value_t = 32, global = true)]
    pub window: usize,
    /// Seed of the synthetic tasks.
    #[arg(long, default_value_t = 42, global = true)]
    pub seed: u64,
    /// Shared data directory (LongBench, essays, PG-19).
    #[arg(long, default_value = "../shared/data", global = true)]
    pub data: PathBuf,
    /// No progress bar.
    #[arg(long, global = true)]
    pub quiet: bool,
}

/// The evaluations.
#[derive(Debug, Clone, Subcommand)]
pub enum EvalTask {
    /// Needle in a haystack over a length x depth grid, with heatmaps.
    Niah {
        /// Haystack folder of .txt files (default: <data>/paulgraham_essays).
        #[arg(long)]
        haystack: Option<PathBuf>,
        /// Context lengths in model tokens.
        #[arg(long, value_delimiter = ',', default_value = "1000,2000,4000")]
        lengths: Vec<usize>,
        /// Depths as fractions of the context.
        #[arg(long, value_delimiter = ',', default_value = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1")]
        depths: Vec<f64>,
        /// Folder for heatmaps (PNG) and grids (JSON).
        #[arg(long, default_value = "results/niah")]
        out: PathBuf,
    },
    /// RULER synthetic tasks.
    Ruler {
        /// Tasks (default: all eleven).
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<String>,
        /// Lengths in model tokens.
        #[arg(long, value_delimiter = ',', default_value = "2000,4000")]
        lengths: Vec<usize>,
    },
    /// LongBench (English) from <data>/longbench.
    Longbench {
        /// Datasets (default: every jsonl in the folder).
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<String>,
        /// Prompt tokens after middle truncation (plus the answer).
        #[arg(long, default_value_t = 4000)]
        max_length: usize,
    },
    /// Perplexity of PG-19 continuations after compressing the context.
    Ppl {
        /// Context tokens (compressed).
        #[arg(long, default_value_t = 2048)]
        context: usize,
        /// Continuation tokens scored.
        #[arg(long, default_value_t = 256)]
        continuation: usize,
    },
    /// KL divergence, top-1 agreement and per-layer attention error against the full cache.
    Fidelity {
        /// Context tokens (compressed).
        #[arg(long, default_value_t = 2048)]
        context: usize,
        /// Continuation tokens compared.
        #[arg(long, default_value_t = 128)]
        continuation: usize,
    },
    /// Everything, with a preset's sizes, then the report.
    All {
        /// smollm2 (the published table) or smoke (CI: one sample per family, short lengths).
        #[arg(long, default_value = "smollm2")]
        preset: String,
        /// Folder for the report and heatmaps.
        #[arg(long, default_value = "results")]
        out: PathBuf,
    },
    /// Render the markdown table of a results file.
    Report {
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `lava eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Which evaluation.
    #[command(subcommand)]
    pub task: EvalTask,
    /// Shared options.
    #[command(flatten)]
    pub common: EvalCommon,
}

fn grid(c: &EvalCommon) -> Result<Grid, CliError> {
    let policies = if c.policies.is_empty() {
        PolicyName::ALL.to_vec()
    } else {
        c.policies.iter().map(|p| p.parse::<PolicyName>()).collect::<Result<Vec<_>, _>>()?
    };
    if c.budgets.is_empty() {
        return Err(CliError::Usage("--budgets needs at least one budget".into()));
    }
    let mut base = PolicyConfig::new(PolicyName::Full, c.budgets[0]);
    base.window = c.window;
    for &b in &c.budgets {
        let mut t = base.clone();
        t.policy = PolicyName::SnapKv;
        t.budget = b;
        t.validate()?;
    }
    Ok(Grid { policies, budgets: c.budgets.clone(), base, question_agnostic: c.question_agnostic })
}

fn eval_err(e: lava_eval::EvalError) -> CliError {
    CliError::Usage(e.to_string())
}

/// Runs `lava eval`.
pub fn eval(a: EvalArgs) -> Result<(), CliError> {
    if let EvalTask::Report { out } = &a.task {
        let text = report_text(&a.common.results)?;
        return match out {
            Some(p) => lava_llama::hf::write_atomic(p, text.as_bytes()).map_err(CliError::from),
            None => {
                print!("{text}");
                Ok(())
            }
        };
    }
    let g = grid(&a.common)?;
    if let Some(dir) = a.common.results.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| CliError::io(dir, e))?;
    }
    let path = resolve_model(a.common.model.as_deref())?;
    with_backend!(a.common.backend, |B, device| { eval_on::<B>(&a, &g, &path, &device) })
}

fn eval_on<B: Backend>(a: &EvalArgs, g: &Grid, path: &Path, device: &B::Device) -> Result<(), CliError> {
    let (model, tok) = crate::backend::load_for::<B>(a.common.backend, path, device)?;
    let mut stop: Vec<u32> = model.config.eos_token_ids.clone();
    for t in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"] {
        stop.extend(tok.token_id(t));
    }
    let subject = Subject { model: &model, tok: &tok, stop, chat: true };
    let variants = g.variants().map_err(eval_err)?;
    let c = &a.common;
    let mut sink = Sink::open(&c.results, 0, c.quiet).map_err(eval_err)?;
    let data = &c.data;
    match &a.task {
        EvalTask::Niah { haystack, lengths, depths, out } => {
            let hay = haystack.clone().unwrap_or_else(|| data.join("paulgraham_essays"));
            let depths: Vec<f64> = depths.iter().map(|d| d * 100.0).collect();
            run::run_niah(&subject, &variants, &hay, lengths, &depths, g.question_agnostic, &mut sink).map_err(eval_err)?;
            sink.finish();
            heatmaps(&c.results, out)?;
        }
        EvalTask::Ruler { tasks, lengths } => {
            let tasks = ruler_tasks(tasks)?;
            run::run_ruler(&subject, &variants, &tasks, lengths, c.samples.unwrap_or(1), c.seed, &data.join("paulgraham_essays"), g.question_agnostic, &mut sink)
                .map_err(eval_err)?;
        }
        EvalTask::Longbench { tasks, max_length } => {
            let dir = data.join("longbench");
            let tasks = if tasks.is_empty() { lava_eval::longbench::list_datasets(&dir).map_err(eval_err)? } else { tasks.clone() };
            run::run_longbench(&subject, &variants, &dir, &tasks, c.samples.unwrap_or(usize::MAX), *max_length, g.question_agnostic, &mut sink)
                .map_err(eval_err)?;
        }
        EvalTask::Ppl { context, continuation } => {
            run::run_ppl(&subject, &variants, &data.join("pg19"), c.samples.unwrap_or(6), *context, *continuation, &mut sink).map_err(eval_err)?;
        }
        EvalTask::Fidelity { context, continuation } => {
            run::run_fidelity(&subject, &variants, &data.join("pg19"), c.samples.unwrap_or(6), *context, *continuation, &mut sink)
                .map_err(eval_err)?;
        }
        EvalTask::All { preset, out } => {
            let p = Preset::named(preset)?;
            let hay = data.join("paulgraham_essays");
            let depths: Vec<f64> = p.niah_depths.iter().map(|d| d * 100.0).collect();
            run::run_niah(&subject, &variants, &hay, &p.niah_lengths, &depths, g.question_agnostic, &mut sink).map_err(eval_err)?;
            run::run_ruler(&subject, &variants, &ruler_tasks(&p.ruler_tasks)?, &p.ruler_lengths, p.ruler_samples, c.seed, &hay, g.question_agnostic, &mut sink)
                .map_err(eval_err)?;
            let lb = data.join("longbench");
            let lb_tasks = if p.longbench_tasks.is_empty() { lava_eval::longbench::list_datasets(&lb).map_err(eval_err)? } else { p.longbench_tasks.clone() };
            run::run_longbench(&subject, &variants, &lb, &lb_tasks, p.longbench_limit, p.longbench_max_length, g.question_agnostic, &mut sink).map_err(eval_err)?;
            run::run_fidelity(&subject, &variants, &data.join("pg19"), p.pg19_files, p.pg19_context, p.pg19_continuation, &mut sink).map_err(eval_err)?;
            sink.finish();
            std::fs::create_dir_all(out).map_err(|e| CliError::io(out, e))?;
            heatmaps(&c.results, &out.join("niah"))?;
            let text = report_text(&c.results)?;
            lava_llama::hf::write_atomic(&out.join("report.md"), text.as_bytes())?;
            print!("{text}");
        }
        EvalTask::Report { .. } => {}
    }
    sink.finish();
    Ok(())
}

/// Sizes of `lava eval all`.
struct Preset {
    niah_lengths: Vec<usize>,
    niah_depths: Vec<f64>,
    ruler_tasks: Vec<String>,
    ruler_lengths: Vec<usize>,
    ruler_samples: usize,
    longbench_tasks: Vec<String>,
    longbench_limit: usize,
    longbench_max_length: usize,
    pg19_files: usize,
    pg19_context: usize,
    pg19_continuation: usize,
}

impl Preset {
    fn named(name: &str) -> Result<Self, CliError> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match name {
            "smollm2" => Ok(Self {
                niah_lengths: vec![1000, 2000, 4000],
                niah_depths: (0..=5).map(|i| i as f64 / 5.0).collect(),
                ruler_tasks: s(&["niah_single_1", "niah_single_2", "niah_multikey_1", "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe"]),
                ruler_lengths: vec![2000, 4000],
                ruler_samples: 1,
                longbench_tasks: vec![],
                longbench_limit: 1,
                longbench_max_length: 4000,
                pg19_files: 3,
                pg19_context: 2048,
                pg19_continuation: 128,
            }),
            "smoke" => Ok(Self {
                niah_lengths: vec![400],
                niah_depths: vec![0.5],
                ruler_tasks: s(&["niah_single_1"]),
                ruler_lengths: vec![400],
                ruler_samples: 1,
                longbench_tasks: s(&["trec"]),
                longbench_limit: 1,
                longbench_max_length: 400,
                pg19_files: 1,
                pg19_context: 300,
                pg19_continuation: 16,
            }),
            other => Err(CliError::Usage(format!("unknown preset {other:?}; expected smollm2 or smoke"))),
        }
    }
}

fn ruler_tasks(names: &[String]) -> Result<Vec<RulerTask>, CliError> {
    if names.is_empty() {
        return Ok(RulerTask::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| {
            RulerTask::from_name(n).ok_or_else(|| {
                let all: Vec<&str> = RulerTask::ALL.iter().map(|t| t.name()).collect();
                CliError::Usage(format!("unknown RULER task {n:?}; expected one of {}", all.join(", ")))
            })
        })
        .collect()
}

fn budget_label(b: &Budget) -> String {
    match b {
        Budget::Tokens(t) => t.to_string(),
        Budget::Named(n) => n.clone(),
    }
}

/// Markdown: accuracy table (percent), then perplexity and fidelity tables.
fn report_text(results: &Path) -> Result<String, CliError> {
    let mut recs = load_results(results).map_err(eval_err)?;
    // The full cache has no budget: show its score under every budget of the same task.
    let budgets: std::collections::BTreeSet<(String, u64)> = recs
        .iter()
        .filter_map(|r| match r.budget {
            Budget::Tokens(b) => Some((r.task.clone(), b)),
            Budget::Named(_) => None,
        })
        .collect();
    let mut copies = Vec::new();
    recs.retain(|r| {
        if r.policy != "full" {
            return true;
        }
        let mine: Vec<u64> = budgets.iter().filter(|(t, _)| *t == r.task).map(|(_, b)| *b).collect();
        for b in &mine {
            let mut c = r.clone();
            c.budget = Budget::Tokens(*b);
            copies.push(c);
        }
        mine.is_empty()
    });
    recs.extend(copies);
    let order: Vec<String> = PolicyName::ALL.iter().map(|p| p.to_string()).collect();
    let pick = |f: &dyn Fn(&ResultRecord) -> bool| recs.iter().filter(|r| f(r)).cloned().collect::<Vec<_>>();
    let acc = pick(&|r| r.task != "ppl" && r.task != "fidelity");
    let mut text = String::new();
    // Summary: one column per task family and budget (RULER and LongBench
    // averaged over their tasks' samples; fidelity = top-1 agreement).
    let summary: Vec<ResultRecord> = recs
        .iter()
        .filter(|r| r.task != "ppl")
        .map(|r| {
            let mut r = r.clone();
            r.task = match r.task.split('/').next().unwrap_or_default() {
                "niah" => "NIAH".into(),
                "ruler" => "RULER".into(),
                "longbench" => "LongBench".into(),
                "fidelity" => "fidelity top-1".into(),
                other => other.to_string(),
            };
            r
        })
        .collect();
    if !summary.is_empty() {
        text.push_str("### Summary (%, higher is better; each family averaged over its samples)\n\n");
        text.push_str(&render_report(&summary, &ReportOptions { policy_order: order.clone(), decimals: 1, ..Default::default() }));
        text.push('\n');
    }
    if !acc.is_empty() {
        text.push_str("### Accuracy (%, higher is better)\n\n");
        text.push_str(&render_report(&acc, &ReportOptions { policy_order: order.clone(), ..Default::default() }));
        text.push('\n');
    }
    let ppl = pick(&|r| r.task == "ppl");
    if !ppl.is_empty() {
        text.push_str("### PG-19 perplexity of the continuation (lower is better)\n\n");
        text.push_str(&render_report(&ppl, &ReportOptions { policy_order: order.clone(), scale: 1.0, ..Default::default() }));
        text.push('\n');
    }
    let fid = pick(&|r| r.task == "fidelity");
    if !fid.is_empty() {
        text.push_str("### Fidelity: top-1 agreement with the full cache (%)\n\n");
        text.push_str(&render_report(&fid, &ReportOptions { policy_order: order.clone(), ..Default::default() }));
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
        text.push_str(&render_report(&kl, &ReportOptions { policy_order: order, scale: 1.0, decimals: 4, ..Default::default() }));
    }
    Ok(text)
}

/// One heatmap per (policy, budget) with NIAH results.
fn heatmaps(results: &Path, out: &Path) -> Result<(), CliError> {
    let recs = load_results(results).map_err(eval_err)?;
    std::fs::create_dir_all(out).map_err(|e| CliError::io(out, e))?;
    let mut groups: std::collections::BTreeMap<(String, String), Vec<NiahCell>> = Default::default();
    for r in recs.iter().filter(|r| r.task == "niah") {
        let depth = r.extra.get("depth_percent").and_then(|v| v.as_f64()).unwrap_or(0.0);
        let len = r.length.unwrap_or(0) as usize;
        groups.entry((r.policy.clone(), budget_label(&r.budget))).or_default().push(NiahCell { context_length: len, depth_percent: depth, score: r.score });
    }
    for ((policy, budget), cells) in groups {
        let title = format!("NIAH {policy} budget {budget}");
        let grid = NiahGrid::from_cells(title, &cells);
        let stem = out.join(format!("niah_{policy}_{budget}"));
        grid.write_json(stem.with_extension("json")).map_err(eval_err)?;
        render_heatmap_png(&grid, stem.with_extension("png")).map_err(eval_err)?;
    }
    Ok(())
}
