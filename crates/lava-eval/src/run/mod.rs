//! Running the evaluations on a model: every task family over a grid of
//! policies and budgets, results appended to a JSONL file as they finish.

pub mod engine;
mod shard;
#[cfg(test)]
mod stamp_tests;
mod tasks;
mod windows;

use std::collections::HashSet;
use std::path::PathBuf;

use burn::tensor::backend::Backend;
use lava_cache::{KvDtype, PolicyConfig, PolicyName};
use lava_llama::{Llama, Tokenizer};

pub use shard::Shard;
pub use tasks::{run_fidelity, run_longbench, run_niah, run_ppl, run_ruler, NIAH_ANSWER_TOKENS};

use crate::error::Result;
use crate::results::{Budget, CellKey, ResultRecord, ResultsWriter};
use crate::tokenize::Tokenize;

/// One cache configuration of the grid.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Policy name as written in results.
    pub policy: String,
    /// Budget as written in results (`"full"` for the full cache).
    pub budget: Budget,
    /// The configuration.
    pub config: PolicyConfig,
    /// How the cache stores K and V.
    pub kv_dtype: KvDtype,
}

/// The grid: policies x budgets (plus `full` once), and the mode.
#[derive(Debug, Clone)]
pub struct Grid {
    /// Policies (`full` is run once, without a budget).
    pub policies: Vec<PolicyName>,
    /// Budgets `B` (tokens per KV head per layer, window included).
    pub budgets: Vec<usize>,
    /// Window, kernel, pooling, alpha, beta, sinks.
    pub base: PolicyConfig,
    /// The settings run: query-aware, query-agnostic or both.
    pub settings: Settings,
    /// KV dtypes: every variant runs once per dtype; results of a dtype other
    /// than f32 are labelled `policy@dtype` (`lava@q8_0`, `full@q8_0`).
    pub kv_dtypes: Vec<KvDtype>,
    /// The policies run at the KV dtypes other than f32 (`None`: every policy).
    pub kv_dtype_policies: Option<Vec<PolicyName>>,
}

impl Grid {
    /// The variants, `full` first, each KV dtype in turn (the dtypes other than f32 only for
    /// the policies of `kv_dtype_policies`).
    pub fn variants(&self) -> Result<Vec<Variant>> {
        let mut out = Vec::new();
        let dtypes = if self.kv_dtypes.is_empty() { vec![KvDtype::F32] } else { self.kv_dtypes.clone() };
        for kv_dtype in dtypes {
            let label = |p: PolicyName| if kv_dtype == KvDtype::F32 { p.to_string() } else { format!("{p}@{kv_dtype}") };
            for v in self.policy_variants()? {
                if kv_dtype != KvDtype::F32 && self.kv_dtype_policies.as_ref().is_some_and(|ps| !ps.contains(&v.config.policy)) {
                    continue;
                }
                out.push(Variant { policy: label(v.config.policy), kv_dtype, ..v });
            }
        }
        Ok(out)
    }

    /// The variants of one KV dtype (f32), `full` first.
    fn policy_variants(&self) -> Result<Vec<Variant>> {
        let mut out = Vec::new();
        for &p in &self.policies {
            if p == PolicyName::Full {
                let mut c = self.base.clone();
                c.policy = p;
                out.push(Variant { policy: p.to_string(), budget: Budget::named("full"), config: c, kv_dtype: KvDtype::F32 });
                continue;
            }
            for &b in &self.budgets {
                let mut c = self.base.clone();
                c.policy = p;
                c.budget = b;
                c.validate().map_err(|e| crate::error::EvalError::InvalidArgument(e.to_string()))?;
                out.push(Variant { policy: p.to_string(), budget: Budget::Tokens(b as u64), config: c, kv_dtype: KvDtype::F32 });
            }
        }
        Ok(out)
    }
}

/// Which settings a run evaluates (at least one).
///
/// *Query-aware*: the question is in the compressed prompt (the paper's setting).
/// *Query-agnostic*: the context is compressed without the question, which is appended
/// after (kvpress's setting); its records carry `setting` [`QUERY_AGNOSTIC`](crate::results::QUERY_AGNOSTIC).
/// With both, each prompt's context is prefilled once for the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Run the query-aware setting.
    pub query_aware: bool,
    /// Run the query-agnostic setting.
    pub query_agnostic: bool,
}

impl Settings {
    /// Query-aware only (every run's default).
    pub const QUERY_AWARE: Settings = Settings { query_aware: true, query_agnostic: false };
    /// Query-agnostic only.
    pub const QUERY_AGNOSTIC: Settings = Settings { query_aware: false, query_agnostic: true };
    /// Both.
    pub const BOTH: Settings = Settings { query_aware: true, query_agnostic: true };

    /// How many settings run (cells per variant and prompt).
    pub fn count(self) -> usize {
        self.query_aware as usize + self.query_agnostic as usize
    }
}

/// Where results go and what is already done.
pub struct Sink {
    writer: ResultsWriter,
    done: HashSet<CellKey>,
    /// Records written by this run.
    pub written: Vec<ResultRecord>,
    bar: indicatif::ProgressBar,
    /// Which prompts this process runs.
    shard: Shard,
    /// Prompts met so far (of every shard, done or not), in the run's order.
    prompts: u64,
    /// Fields added to every record written (see [`Sink::set_stamp`]).
    stamp: serde_json::Map<String, serde_json::Value>,
}

impl Sink {
    /// Opens (or resumes) a results file; `total` cells are expected in the run.
    pub fn open(path: impl Into<PathBuf>, total: u64, quiet: bool) -> Result<Self> {
        let path = path.into();
        // Lock first: the cells done are read under the lock, so no other run adds any.
        let writer = ResultsWriter::open(&path)?;
        let done = crate::results::load_done_keys(&path)?;
        let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(total) };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:30} {bar:30} {pos}/{len} cells, elapsed {elapsed}, eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Ok(Self { writer, done, written: Vec::new(), bar, shard: Shard::ALL, prompts: 0, stamp: Default::default() })
    }

    /// Runs only the prompts of `shard` (default: every prompt).
    pub fn with_shard(mut self, shard: Shard) -> Self {
        self.shard = shard;
        self
    }

    /// Counts the next prompt of the run and says whether this shard runs it. The tasks call
    /// it once per prompt, before building it, whether or not its cells are already done, so
    /// the numbering is the same in every shard and on every resume.
    pub fn take_prompt(&mut self) -> bool {
        let i = self.prompts;
        self.prompts += 1;
        self.shard.contains(i)
    }

    /// Grows the expected number of cells by those of this shard among the next `prompts`
    /// prompts, `cells_per_prompt` cells each.
    pub fn expect_prompts(&self, prompts: usize, cells_per_prompt: usize) {
        self.expect(self.shard.count_in(self.prompts, prompts as u64) * cells_per_prompt as u64);
    }

    /// Grows the expected number of cells.
    pub fn expect(&self, more: u64) {
        self.bar.inc_length(more);
    }

    fn is_done(&self, key: &CellKey) -> bool {
        self.done.contains(key)
    }

    fn skip(&self) {
        self.bar.inc(1);
    }

    /// Adds `stamp`'s fields (`code_version`, `settings_hash`, `kv_shape`, see
    /// [`crate::provenance`]) to every record written from now on, replacing fields of the
    /// same name. Fails, naming both versions, if the file already holds records of another
    /// code version or settings hash (or without them), unless `allow_mixed`.
    pub fn set_stamp(&mut self, stamp: serde_json::Map<String, serde_json::Value>, allow_mixed: bool) -> Result<()> {
        let existing = crate::results::load_results(self.writer.path())?;
        crate::provenance::check_resume(self.writer.path(), &existing, &stamp, allow_mixed)?;
        self.stamp = stamp;
        Ok(())
    }

    fn push(&mut self, mut rec: ResultRecord) -> Result<()> {
        for (k, v) in &self.stamp {
            rec.extra.insert(k.clone(), v.clone());
        }
        self.bar.set_message(format!("{} {} {}", rec.task, rec.policy, budget_label(&rec.budget)));
        self.writer.append(&rec)?;
        self.done.insert(rec.key());
        self.written.push(rec);
        self.bar.inc(1);
        Ok(())
    }

    /// Finishes the progress bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn budget_label(b: &Budget) -> String {
    match b {
        Budget::Tokens(t) => t.to_string(),
        Budget::Named(n) => n.clone(),
    }
}

/// The model and its tokenizer, as the tasks need them.
pub struct Subject<'a, B: Backend> {
    /// Model.
    pub model: &'a Llama<B>,
    /// Tokenizer.
    pub tok: &'a Tokenizer,
    /// Stop tokens for generation.
    pub stop: Vec<u32>,
    /// Apply the chat template where the task asks for it.
    pub chat: bool,
}

/// [`Tokenize`] for the model's tokenizer (no special tokens added).
pub struct ModelTokenizer<'a>(pub &'a Tokenizer);

impl Tokenize for ModelTokenizer<'_> {
    fn encode(&self, text: &str) -> Vec<u32> {
        self.0.encode(text).unwrap_or_default()
    }
    fn decode(&self, ids: &[u32]) -> String {
        self.0.decode(ids).unwrap_or_default()
    }
}
