//! Evaluation harness for lava: the model-independent parts.
//!
//! * [`longbench`]: LongBench data loading, prompts, middle truncation, and the metrics of
//!   THUDM/LongBench `metrics.py` / `eval.py` reproduced exactly.
//! * [`ruler`]: RULER synthetic tasks (NIAH variants, variable tracking, common / frequent
//!   words extraction) generated with a seeded RNG and fitted to a token length.
//! * [`niah`]: the classic needle-in-a-haystack test (gkamradt harness), word-recall
//!   scoring, and a PNG heatmap.
//! * [`results`] / [`report`]: append-only JSONL results with resume, and markdown tables of means.
//! * [`summary`]: the full report of a run (bootstrap intervals, paired comparisons, memory,
//!   score-vs-memory plots, LongBench-E length buckets); [`provenance`]: code version and
//!   settings stamps, and merging results files without mixing runs.
//!
//! The crate never depends on the model: token counting and (de)tokenization come in through
//! the [`TokenCounter`] and [`Tokenize`] traits.

pub mod error;
pub mod haystack;
pub mod longbench;
pub mod niah;
pub mod provenance;
pub mod read;
pub mod report;
pub mod results;
pub mod ruler;
pub mod run;
pub mod summary;
pub mod textutil;
pub mod tokenize;

pub use error::{EvalError, Result};
pub use provenance::{merge_results, RunVersion};
pub use report::{render_report, ReportOptions, ReportTable};
pub use results::{load_done_keys, load_results, Budget, CellKey, ResultRecord, ResultsWriter};
pub use ruler::{RulerGenerator, RulerSample, RulerTask};
pub use summary::{build_report, PlotOutput, SummaryOptions};
pub use tokenize::{CharTokenizer, TokenCounter, Tokenize, WhitespaceCounter};
