#![doc = include_str!("../README.md")]
//!
//! This facade crate re-exports the workspace's crates.

pub use lava_cache as cache;
pub use lava_cli as cli;
pub use lava_llama as llama;
pub use lava_run as run;
