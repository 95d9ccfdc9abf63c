//! `lava`: long-context LLM inference with a compressed KV cache (LAVa and its
//! baselines), on Burn. This facade re-exports the workspace's crates.

pub use lava_cache as cache;
pub use lava_cli as cli;
pub use lava_llama as llama;
