//! Running the evaluations on a model: every task family over a grid of
//! policies and budgets, results appended to a JSONL file as they finish.

pub mod engine;
mod tasks;

use std::collections::HashSet;
use std::path::PathBuf;

use burn::tensor::backend::Backend;
use lava_cache::{PolicyConfig, PolicyName};
use lava_llama::{Llama, Tokenizer};

pub use tasks::{run_fidelity, run_longbench, run_niah, run_ppl, run_ruler};

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
    /// Compress the context before the question is appended.
    pub question_agnostic: bool,
}

impl Grid {
    /// The variants, `full` first.
    pub fn variants(&self) -> Result<Vec<Variant>> {
        let mut out = Vec::new();
        for &p in &self.policies {
            if p == PolicyName::Full {
                let mut c = self.base.clone();
                c.policy = p;
                out.push(Variant { policy: p.to_string(), budget: Budget::named("full"), config: c });
                continue;
            }
            for &b in &self.budgets {
                let mut c = self.base.clone();
                c.policy = p;
                c.budget = b;
                c.validate().map_err(|e| crate::error::EvalError::InvalidArgument(e.to_string()))?;
                out.push(Variant { policy: p.to_string(), budget: Budget::Tokens(b as u64), config: c });
            }
        }
        Ok(out)
    }
}

/// Where results go and what is already done.
pub struct Sink {
    writer: ResultsWriter,
    done: HashSet<CellKey>,
    /// Records written by this run.
    pub written: Vec<ResultRecord>,
    bar: indicatif::ProgressBar,
}

impl Sink {
    /// Opens (or resumes) a results file; `total` cells are expected in the run.
    pub fn open(path: impl Into<PathBuf>, total: u64, quiet: bool) -> Result<Self> {
        let path = path.into();
        let done = crate::results::load_done_keys(&path)?;
        let writer = ResultsWriter::open(&path)?;
        let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(total) };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg:30} {bar:30} {pos}/{len} cells, elapsed {elapsed}, eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Ok(Self { writer, done, written: Vec::new(), bar })
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

    fn push(&mut self, rec: ResultRecord) -> Result<()> {
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
