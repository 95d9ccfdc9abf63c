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
//!
//! ```
//! use lava_quant::{quantize, quantize_activations, GgmlType, QuantMatrix};
//!
//! // A 3 x 64 weight (d_out = 3, d_in = 64) as a GGUF file would hold it, in Q4_1.
//! let w: Vec<f32> = (0..3 * 64).map(|i| (i % 7) as f32 - 3.0).collect();
//! let raw = quantize(GgmlType::Q4_1, &w).unwrap();
//! let m = QuantMatrix::new(GgmlType::Q4_1, 3, 64, &raw).unwrap();
//!
//! // Two activation rows, quantized once, then every output row on this thread...
//! let x = vec![0.5f32; 2 * 64];
//! let act = quantize_activations(m.kind(), &x, m.cols()).unwrap();
//! let y = m.matmul(&act).unwrap(); // [2, 3]
//! // ... or rows 1..3 only (what one worker of a thread pool does): out is [2, 2].
//! let mut part = vec![0f32; 2 * 2];
//! m.dot_rows(&act, 1..3, &mut part).unwrap();
//! assert_eq!(part, [y[1], y[2], y[4], y[5]]);
//! ```

#![warn(missing_docs)]
// Kernels index several arrays (codes, activation rows, accumulators) in lockstep.
#![allow(clippy::needless_range_loop)]

mod blocks;
mod dot;
mod types;

pub use blocks::{dequantize, dequantize_to_vec, quantize};
pub use dot::{quantize_activations, quantize_activations_into, simd_level, Activations, QuantMatrix, SimdLevel, INTERLEAVE_MIN_ROWS, MAX_ACT_ROWS};
pub use types::{GgmlType, QuantError};
