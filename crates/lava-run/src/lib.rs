//! # lava-run
//!
//! Running one sequence, the one way `lava generate`, `eval`, `bench` and
//! `serve` all do:
//!
//! - [`cache`]: a sequence's KV cache from a [`lava_cache::PolicyConfig`], a
//!   [`lava_cache::KvDtype`] and the model's cache shape (sliding-window
//!   layers included);
//! - [`bytes`]: the KV byte arithmetic (per token, full, at a budget, the
//!   reservation of `lava serve`), for every dtype;
//! - [`prefill`]: a [`Sequence`] (its cache and the tokens it holds) and its
//!   prefill in chunks;
//! - [`decode`]: the decode loop with sampling and stop conditions, the
//!   greedy batch of several caches, the one device argmax;
//! - [`context`]: a compressed context ([`SavedContext`]: a cache snapshot,
//!   its token ids and the model's SHA-256) kept to answer from many times,
//!   in memory or in a file;
//! - [`recorded`]: prefill once, compress many (every policy's cache derived
//!   from one recorded prefill);
//! - [`detok`]: incremental detokenization (an incomplete UTF-8 character is
//!   held back; `stop` strings);
//! - [`error`]: [`RunError`].
//!
//! The layering holds: the model never sees a policy (this crate turns a
//! policy into a cache the model runs through), the cache never sees a token.

pub mod bytes;
pub mod cache;
pub mod context;
pub mod decode;
pub mod detok;
pub mod error;
pub mod prefill;
pub mod recorded;

pub use bytes::KvBytes;
pub use cache::{build_cache, CacheOptions};
pub use context::{PromptLayout, SavedContext};
pub use decode::{GenerationConfig, GenerationStats};
pub use error::RunError;
pub use prefill::Sequence;
