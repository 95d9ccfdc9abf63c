//! Hand-written CPU kernels for the decode step on the `burn-flex` backend.
//!
//! Decode multiplies one (or a few) activation rows by every weight matrix:
//! a vector-matrix product bound by how fast the weights stream from memory.
//! `burn-flex` runs products this small through a general matmul on one
//! thread; [`matvec`] streams the weights on all cores instead.
//!
//! The kernels are reached through [`project_rows`], which recognises the
//! flex backend at run time (`TypeId`) and otherwise returns `None`, so every
//! other backend keeps Burn's own matmul. No `unsafe` is needed: primitives are
//! moved through `Box<dyn Any>`.

use std::any::{Any, TypeId};

use burn::tensor::{backend::Backend, DType, Tensor, TensorData, TensorPrimitive};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

/// Row counts up to this use [`matvec`]; longer blocks (prefill) use the matmul.
pub const MATVEC_MAX_ROWS: usize = 8;

/// Rows of `w` per pass of [`matvec`]'s inner loop.
const ROW_BLOCK: usize = 4;

/// `x [n, d_in] @ w [d_in, d_out]` by [`matvec`] when `B` is flex, both are
/// f32, `n <= MATVEC_MAX_ROWS` and `w` is contiguous; `None` otherwise (the
/// caller falls back to `matmul`).
pub fn project_rows<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>, threads: usize) -> Option<Tensor<B, 2>> {
    if TypeId::of::<B>() != TypeId::of::<Flex>() {
        return None;
    }
    let [n, d_in] = x.dims();
    let [w_in, d_out] = w.dims();
    if n > MATVEC_MAX_ROWS || w_in != d_in || x.dtype() != DType::F32 || w.dtype() != DType::F32 {
        return None;
    }
    let wp = flex_primitive(w.clone())?;
    if !wp.is_contiguous() || wp.layout().start_offset() != 0 {
        return None;
    }
    let xp = flex_primitive(x.clone())?.to_contiguous();
    let mut y = vec![0f32; n * d_out];
    matvec(xp.storage::<f32>(), wp.storage::<f32>(), &mut y, n, d_in, d_out, threads);
    let out = FlexTensor::from_data(TensorData::new(y, [n, d_out]));
    let boxed: Box<dyn Any> = Box::new(out);
    let prim = boxed.downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(*prim)))
}

fn flex_primitive<B: Backend>(t: Tensor<B, 2>) -> Option<FlexTensor> {
    match t.into_primitive() {
        TensorPrimitive::Float(p) => {
            let boxed: Box<dyn Any> = Box::new(p);
            boxed.downcast::<FlexTensor>().ok().map(|b| *b)
        }
        TensorPrimitive::QFloat(_) => None,
    }
}

/// `y [n, d_out] = x [n, d_in] @ w [d_in, d_out]`, all row-major.
///
/// The rows of `w` (the `d_in` dimension) are cut into `threads` contiguous
/// bands, one per worker, so each worker streams one contiguous region of
/// memory; each band's partial product is then added to `y`. The result
/// depends on `threads` only through float summation order.
///
/// # Panics
/// If a slice is shorter than its shape says.
pub fn matvec(x: &[f32], w: &[f32], y: &mut [f32], n: usize, d_in: usize, d_out: usize, threads: usize) {
    assert!(x.len() >= n * d_in && w.len() >= d_in * d_out && y.len() >= n * d_out, "matvec: slice shorter than its shape");
    let y = &mut y[..n * d_out];
    let threads = threads.clamp(1, d_in.div_ceil(ROW_BLOCK).max(1));
    if threads == 1 {
        y.fill(0.0);
        rows(x, w, y, n, d_in, d_out, 0, d_in);
        return;
    }
    // Each task streams a contiguous band of rows of `w` into its own partial
    // sum; the bands are then added in order.
    let per = d_in.div_ceil(threads).div_ceil(ROW_BLOCK) * ROW_BLOCK;
    let partials: Vec<Vec<f32>> = (0..threads)
        .into_par_iter()
        .map(|t| {
            let mut out = vec![0f32; n * d_out];
            rows(x, w, &mut out, n, d_in, d_out, (t * per).min(d_in), ((t + 1) * per).min(d_in));
            out
        })
        .collect();
    y.fill(0.0);
    for part in partials {
        y.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
    }
}

/// Adds rows `r0..r1` of `w`, weighted by the matching entries of `x`, to
/// `out [n, d_out]`.
#[allow(clippy::too_many_arguments)]
fn rows(x: &[f32], w: &[f32], out: &mut [f32], n: usize, d_in: usize, d_out: usize, r0: usize, r1: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { rows_avx2(x, w, out, n, d_in, d_out, r0, r1) };
            return;
        }
    }
    rows_portable(x, w, out, n, d_in, d_out, r0, r1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_avx2(x: &[f32], w: &[f32], out: &mut [f32], n: usize, d_in: usize, d_out: usize, r0: usize, r1: usize) {
    rows_portable(x, w, out, n, d_in, d_out, r0, r1)
}

/// Four rows of `w` per pass over `out`, so each output element is loaded and
/// stored once per four weights.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_portable(x: &[f32], w: &[f32], out: &mut [f32], n: usize, d_in: usize, d_out: usize, r0: usize, r1: usize) {
    let mut i = r0;
    while i + ROW_BLOCK <= r1 {
        let w0 = &w[i * d_out..(i + 1) * d_out];
        let w1 = &w[(i + 1) * d_out..(i + 2) * d_out];
        let w2 = &w[(i + 2) * d_out..(i + 3) * d_out];
        let w3 = &w[(i + 3) * d_out..(i + 4) * d_out];
        for r in 0..n {
            let xr = &x[r * d_in + i..r * d_in + i + ROW_BLOCK];
            let (a, b, c, d) = (xr[0], xr[1], xr[2], xr[3]);
            let o = &mut out[r * d_out..(r + 1) * d_out];
            for j in 0..d_out {
                o[j] += (a * w0[j] + b * w1[j]) + (c * w2[j] + d * w3[j]);
            }
        }
        i += ROW_BLOCK;
    }
    while i < r1 {
        let wi = &w[i * d_out..(i + 1) * d_out];
        for r in 0..n {
            let a = x[r * d_in + i];
            let o = &mut out[r * d_out..(r + 1) * d_out];
            for j in 0..d_out {
                o[j] += a * wi[j];
            }
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], n: usize, d_in: usize, d_out: usize) -> Vec<f64> {
        let mut y = vec![0f64; n * d_out];
        for r in 0..n {
            for i in 0..d_in {
                for j in 0..d_out {
                    y[r * d_out + j] += x[r * d_in + i] as f64 * w[i * d_out + j] as f64;
                }
            }
        }
        y
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2001) as f32 / 1000.0 - 1.0).collect()
    }

    #[test]
    fn matvec_matches_f64_reference_for_odd_shapes_and_thread_counts() {
        for &(n, d_in, d_out) in &[(1, 1, 1), (1, 7, 5), (3, 130, 200), (8, 576, 192), (2, 33, 1000)] {
            let x = values(n * d_in, 1);
            let w = values(d_in * d_out, 2);
            let want = reference(&x, &w, n, d_in, d_out);
            for threads in [1, 2, 3, 16] {
                let mut y = vec![f32::NAN; n * d_out];
                matvec(&x, &w, &mut y, n, d_in, d_out, threads);
                for (k, (&a, &b)) in y.iter().zip(&want).enumerate() {
                    assert!((a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()), "{n}x{d_in}x{d_out} t={threads} [{k}]: {a} vs {b}");
                }
            }
        }
    }
}
