//! LongBench (THUDM/LongBench, v1 English tasks, and LongBench-E's `<task>_e` files): data
//! loading, prompt building, middle truncation, and the metrics of `metrics.py` / the scorer
//! rules of `eval.py`. A LongBench-E dataset `<task>_e` uses `<task>`'s prompt, output length
//! and metric ([`base_dataset`]); the record's `length` (words) gives its length bucket.
//!
//! Typical use by a runner:
//! ```no_run
//! # fn main() -> Result<(), lava_eval::EvalError> {
//! use lava_eval::longbench::{load_longbench_jsonl, uses_chat_template, LongBenchConfig, truncate_middle};
//! use lava_eval::CharTokenizer;
//! let dir = "../shared/data/longbench";
//! let cfg = LongBenchConfig::load_dir(dir)?;
//! for rec in load_longbench_jsonl(format!("{dir}/qasper.jsonl"))? {
//!     let prompt = truncate_middle(&CharTokenizer, &cfg.build_prompt(&rec)?, 31_500);
//!     let _chat = uses_chat_template(&rec.dataset); // wrap `prompt` in the chat template if true
//!     let max_new = cfg.max_new_tokens(&rec.dataset)?;
//!     # let _ = (prompt, max_new);
//!     let prediction = "..."; // model output
//!     let _score = rec.score(prediction)?; // in [0, 1]
//! }
//! # Ok(()) }
//! ```

mod data;
pub mod difflib;
mod metrics;
pub mod rouge;

pub use data::{
    build_prompt, list_datasets, load_longbench_jsonl, middle_truncation_split, truncate_middle, LongBenchConfig,
    LongBenchRecord, PreparedPrompt,
};
pub use metrics::{
    aggregate_score, base_dataset, classification_score, code_sim_score, count_score, first_line, fuzz_ratio,
    is_longbench_e, length_bucket, normalize_answer, qa_f1_score, retrieval_score, score_prediction, token_f1,
    uses_chat_template, Metric, ENGLISH_DATASETS, FIRST_LINE_DATASETS, LONGBENCH_E_DATASETS,
    NO_CHAT_TEMPLATE_DATASETS,
};
pub use rouge::rouge_l_f;
