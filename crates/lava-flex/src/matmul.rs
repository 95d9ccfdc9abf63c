//! Hand-written CPU kernels for a model's decode step on the `burn-flex` backend.
//!
//! Decode multiplies one (or a few) activation rows by every weight matrix:
//! a vector-matrix product bound by how fast the weights stream from memory.
//! `burn-flex` runs products this small through a general matmul on one
//! thread; [`project_rows`] runs them through [`crate::gemm::gemm_multi`] on
//! all cores instead. [`matvec`] (each core streams a band of input rows and
//! the bands' partial sums are added) was the decode kernel before the
//! batched one; it stays as the comparison in `examples/gemm_speed.rs`. The other
//! kernels (RMS norm, RoPE, SwiGLU) let a whole decode step run on the
//! weights' storage without a tensor op per step (see `lava-llama`'s host forward).
//!
//! Flex is recognised at run time (`TypeId`, via [`crate::bridge`]); every
//! other backend keeps Burn's own ops, which stay the reference the tests
//! compare against.

use burn::tensor::{backend::Backend, Tensor};
use burn_flex::FlexTensor;
use crate::bridge::{from_host, to_flex};

/// Rows of `w` per pass of [`matvec`]'s inner loop.
const ROW_BLOCK: usize = 4;

/// `x [n, d_in] @ w [d_in, d_out]` by [`crate::gemm::gemm_multi`] when `B` is
/// flex, both are f32, `n <= GEMM_MAX_ROWS` and `w` is contiguous; `None`
/// otherwise (the caller falls back to `matmul`).
pub fn project_rows<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>, threads: usize) -> Option<Tensor<B, 2>> {
    let [n, d_in] = x.dims();
    let [w_in, d_out] = w.dims();
    if n > crate::gemm::GEMM_MAX_ROWS || w_in != d_in {
        return None;
    }
    let wp = Host::new(w)?;
    let xp = to_flex(x.clone())?.to_contiguous();
    let y = crate::gemm::gemm_multi(xp.storage::<f32>(), n, d_in, &[(wp.values(), d_out)], threads).pop()?;
    from_host(y, [n, d_out])
}

/// The f32 values of a flex tensor that is contiguous and covers its whole
/// storage (a parameter, say); `None` on other backends.
#[derive(Debug, Clone)]
pub struct Host(FlexTensor);

impl Host {
    /// The storage of `t`, shared (no copy).
    pub fn new<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<Self> {
        let f = to_flex(t.clone())?;
        let whole = crate::bridge::is_plain(&f) && f.storage::<f32>().len() == f.layout().num_elements();
        whole.then_some(Self(f))
    }

    /// Row-major values.
    pub fn values(&self) -> &[f32] {
        self.0.storage::<f32>()
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
    let out = matvec_multi(x, n, d_in, &[(w, d_out)], threads);
    y[..n * d_out].copy_from_slice(&out[0]);
}

/// [`matvec`] of one input `x [n, d_in]` with several matrices
/// `(w [d_in, d_out], d_out)` in one parallel pass (q/k/v, gate/up): returns
/// each product `[n, d_out]`.
///
/// # Panics
/// If a slice is shorter than its shape says.
pub fn matvec_multi(x: &[f32], n: usize, d_in: usize, mats: &[(&[f32], usize)], threads: usize) -> Vec<Vec<f32>> {
    assert!(x.len() >= n * d_in, "matvec: x shorter than its shape");
    assert!(mats.iter().all(|&(w, d_out)| w.len() >= d_in * d_out), "matvec: w shorter than its shape");
    let threads = threads.clamp(1, d_in.div_ceil(ROW_BLOCK).max(1));
    let per = d_in.div_ceil(threads).div_ceil(ROW_BLOCK) * ROW_BLOCK;
    let band = |t: usize| -> Vec<Vec<f32>> {
        mats.iter()
            .map(|&(w, d_out)| {
                let mut out = vec![0f32; n * d_out];
                rows(x, w, &mut out, n, d_in, d_out, (t * per).min(d_in), ((t + 1) * per).min(d_in));
                out
            })
            .collect()
    };
    if threads == 1 {
        return band(0);
    }
    // Each task streams a contiguous band of rows of every matrix into its
    // own partial sums; the bands are then added in order.
    let mut partials = crate::spin_pool::map(threads, &band).into_iter();
    let mut total = partials.next().unwrap_or_default();
    for part in partials {
        for (acc, p) in total.iter_mut().zip(part) {
            acc.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
        }
    }
    total
}

/// `x / sqrt(mean(x^2) + eps) * gamma` per row of `x [n, d]`, in place.
pub fn rms_norm(x: &mut [f32], gamma: &[f32], eps: f64) {
    let d = gamma.len();
    for row in x.chunks_exact_mut(d) {
        let mean = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
        let inv = (1.0 / (mean + eps).sqrt()) as f32;
        row.iter_mut().zip(gamma).for_each(|(v, &g)| *v = *v * inv * g);
    }
}

/// Rotate-half RoPE of each head of one token, `x [H * D]`, with that
/// position's `cos`/`sin` (`[D/2]` each).
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for head in x.chunks_exact_mut(2 * half) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

/// `silu(gate) * up`, into `gate`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    gate.iter_mut().zip(up).for_each(|(g, &u)| *g = *g / (1.0 + (-*g).exp()) * u);
}

/// Fewest values per part of [`swiglu_split`].
const SWIGLU_MIN_PART: usize = 8192;

/// [`swiglu`] cut into up to `parts` contiguous parts on the spin pool (the
/// same values: each is computed alone), for a batched step's `[rows, ff]`.
pub fn swiglu_split(gate: &mut [f32], up: &[f32], parts: usize) {
    let parts = parts.min(gate.len() / SWIGLU_MIN_PART).max(1);
    if parts == 1 {
        return swiglu(gate, up);
    }
    let per = gate.len().div_ceil(parts);
    let chunks: Vec<std::sync::Mutex<&mut [f32]>> = gate.chunks_mut(per).map(std::sync::Mutex::new).collect();
    crate::spin_pool::run(chunks.len(), &|i| {
        // Each part locks only its own chunk, once (so it is never poisoned).
        let mut g = chunks[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (at, n) = (i * per, g.len());
        swiglu(&mut g, &up[at..at + n]);
    });
}

/// Adds rows `r0..r1` of `w`, weighted by the matching entries of `x`, to
/// `out [n, d_out]`.
#[allow(clippy::too_many_arguments)]
fn rows(x: &[f32], w: &[f32], out: &mut [f32], n: usize, d_in: usize, d_out: usize, r0: usize, r1: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { rows_avx512(x, w, out, n, d_in, d_out, r0, r1) };
            return;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            unsafe { rows_avx2(x, w, out, n, d_in, d_out, r0, r1) };
            return;
        }
    }
    rows_portable(x, w, out, n, d_in, d_out, r0, r1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_avx512(x: &[f32], w: &[f32], out: &mut [f32], n: usize, d_in: usize, d_out: usize, r0: usize, r1: usize) {
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
pub(crate) mod tests {
    use super::*;

    /// `x [n, d_in] @ w [d_in, d_out]` in f64, the oracle of the host kernels' tests.
    pub(crate) fn reference(x: &[f32], w: &[f32], n: usize, d_in: usize, d_out: usize) -> Vec<f64> {
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

    /// Deterministic values in [-1, 1].
    pub(crate) fn values(len: usize, seed: u32) -> Vec<f32> {
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
