//! x86-64 kernels (placeholder).
use std::ops::Range;
use super::{ActView, QuantMatrix, SimdLevel};
pub(crate) fn dot(_level: SimdLevel, _m: &QuantMatrix, _a: &ActView, _rows: Range<usize>, _out: &mut [f32]) -> bool { false }
