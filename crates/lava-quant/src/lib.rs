//! GGUF tensor block formats and quantized dot products, for running GGUF files as they are.
//!
//! * [`GgmlType`]: the ggml tensor types this crate understands (ids as in ggml), with their
//!   block size in elements and in bytes.
//! * [`dequantize`]: blocks to `f32`, bit-identical to llama.cpp's reference dequantizers
//!   (checked against gguf-py's numpy dequantizers by `tests/oracle.rs`).
//! * [`quantize`]: reference quantizers for the 32-element types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
//!   and the float types.
//! * [`QuantMatrix`], [`quantize_activations`], [`QuantMatrix::dot_rows`]: `y = W x` for a weight
//!   stored as GGUF stores it (`rows` rows of `cols` elements, each row a run of blocks) and a
//!   few activation rows quantized once to 8 bits, with integer dot products per block
//!   (AVX-512 VNNI / AVX2 chosen at run time, a portable path that is the definition).
//!
//! Shapes follow GGUF: a tensor with `ne = [cols, rows]` is `rows` rows of `cols` contiguous
//! elements; a linear layer `y = W x` with `d_in = cols`, `d_out = rows`.

#![warn(missing_docs)]
// Kernels index several arrays (codes, activation rows, accumulators) in lockstep.
#![allow(clippy::needless_range_loop)]

mod blocks;
mod dot;
mod types;

pub use blocks::{dequantize, dequantize_to_vec, quantize};
pub use dot::{quantize_activations, simd_level, Activations, QuantMatrix, SimdLevel, MAX_ACT_ROWS};
pub use types::{GgmlType, QuantError};
