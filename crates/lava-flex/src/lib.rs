//! # lava-flex
//!
//! The CPU fast path of `lava`: host kernels for Burn's `burn-flex` backend,
//! used by `lava-cache` (attention over the cache, the scorers' inputs) and
//! `lava-llama` (the decode step's matrix-vector products, norms, RoPE) when
//! their `flex` feature is on. Everything here answers `None` (or hands its
//! input back) unless the backend is flex and the data is plain f32, so the
//! callers' generic tensor-op code stays the reference and runs everywhere
//! else; the tests check that both paths agree.
//!
//! - [`bridge`]: Burn tensor <-> host memory (recognising flex at run time,
//!   reading storage, writing in place).
//! - [`attention`]: decode and prefill attention, window-attention means,
//!   H2O's column sums, value norms.
//! - [`matmul`]: matrix-vector products streaming the weights on all cores,
//!   RMS norm, RoPE, SwiGLU on host rows.
//! - [`slots`]: chunk attention and window attention over a compressed
//!   cache's ragged slots.
//! - [`stored`]: decode attention over K/V stored as f16 or Q8_0, widened
//!   run by run.
//! - [`packed`]: f32 weight matrices relaid out once in the order the
//!   decode step's gemm streams them, and that gemm.
//! - [`spin_pool`]: the thread pool of the many short passes of a decode step.

#![warn(missing_docs)]

pub mod attention;
pub mod bridge;
pub mod gemm;
pub mod matmul;
pub mod packed;
mod decode_kernel;
pub mod slots;
pub mod spin_pool;
pub mod stored;

#[cfg(target_arch = "x86_64")]
mod simd;

pub use burn_flex::{Flex, FlexDevice};
