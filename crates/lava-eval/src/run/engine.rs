//! Prefill once, compress many: the evaluation engine, which is `lava-run`'s
//! ([`lava_run::recorded`] derives every policy's cache from one recorded
//! prefill; [`lava_run::decode::greedy_batch`] continues them together).

pub use lava_run::decode::greedy_batch;
pub use lava_run::recorded::{prefill, Prefilled, RecordingCache};
