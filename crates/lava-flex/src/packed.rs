//! f32 weight matrices relaid out once, at load, in the order the few-row
//! products of a decode step read them, and the gemm over that layout.
//!
//! In a batched decode step every weight matrix streams from memory once, and
//! [`crate::gemm::gemm_multi`] over a row-major `w [d_in, d_out]` reads a
//! thread's columns as short runs of many rows far apart: on a CPU whose
//! prefetchers follow few streams (a 2-core Zen 1 runs the 16-row step at
//! about 55% of its FMA peak) the weights arrive late. A [`PackedMatrix`]
//! holds `w` as strips of [`STRIP`] columns, each strip `[d_in, 16]`
//! contiguous, so a thread reads its whole share in one forward stream and a
//! tile's accumulators stay in registers across all of `d_in` (no partial sums
//! through memory).
//!
//! Results do not change: every output element is still one chain of
//! multiply-adds over `k = 0..d_in` in order, fused where the CPU has FMA, so
//! [`gemm_packed`] is bit-identical to [`crate::gemm::gemm_multi`] on the same
//! CPU, and a row's result is the same alone and in any batch, row block or
//! thread count.

use crate::gemm::Out;

/// Columns per strip.
pub const STRIP: usize = 16;

/// Columns per group (four strips, one AVX-512 tile's width). A matrix is
/// padded with zero columns to whole groups.
pub const GROUP: usize = 64;

/// Bytes of activations a row block keeps in cache while the strips stream
/// past it: a long prefill is cut into blocks of rows, and every strip is
/// read once per block.
const ROW_BLOCK_BYTES: usize = 96 * 1024;

/// `w [d_in, d_out]` as `[groups * 4, d_in, 16]`: strip `s` holds columns
/// `16 s .. 16 s + 16` for every input row in order, contiguous; columns past
/// `d_out` (up to a whole group) are zero.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    d_in: usize,
    d_out: usize,
    data: Vec<f32>,
}

impl PackedMatrix {
    /// Packs row-major `w [d_in, d_out]`; `None` if `w` holds fewer than
    /// `d_in * d_out` values or the packed size overflows.
    pub fn from_rows(w: &[f32], d_in: usize, d_out: usize) -> Option<Self> {
        let (needed, mut data) = Self::zeroed(w.len(), d_in, d_out)?;
        if d_out > 0 {
            for (k, row) in w[..needed].chunks_exact(d_out).enumerate() {
                for (s, run) in row.chunks(STRIP).enumerate() {
                    let at = (s * d_in + k) * STRIP;
                    data[at..at + run.len()].copy_from_slice(run);
                }
            }
        }
        Some(Self { d_in, d_out, data })
    }

    /// Packs `w [d_in, d_out]` given as its transpose `wt [d_out, d_in]` (an
    /// embedding table used as the output head, a weight in Hugging Face's
    /// `[out, in]` order); `None` as [`from_rows`](Self::from_rows).
    pub fn from_transposed(wt: &[f32], d_in: usize, d_out: usize) -> Option<Self> {
        let (needed, mut data) = Self::zeroed(wt.len(), d_in, d_out)?;
        if d_in > 0 {
            for (j, column) in wt[..needed].chunks_exact(d_in).enumerate() {
                let (s, i) = (j / STRIP, j % STRIP);
                let strip = &mut data[s * d_in * STRIP..(s + 1) * d_in * STRIP];
                strip.iter_mut().skip(i).step_by(STRIP).zip(column).for_each(|(d, &v)| *d = v);
            }
        }
        Some(Self { d_in, d_out, data })
    }

    /// For a source of `len` values: the `d_in * d_out` it must hold and the
    /// packed data, all zero (whole groups); `None` if it holds fewer or a size
    /// overflows.
    fn zeroed(len: usize, d_in: usize, d_out: usize) -> Option<(usize, Vec<f32>)> {
        let needed = d_in.checked_mul(d_out)?;
        if len < needed {
            return None;
        }
        let strips = d_out.div_ceil(GROUP) * (GROUP / STRIP);
        Some((needed, vec![0f32; strips.checked_mul(d_in)?.checked_mul(STRIP)?]))
    }

    /// Input size (rows of `w`).
    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Output size (columns of `w`).
    pub fn d_out(&self) -> usize {
        self.d_out
    }

    /// Bytes held (the padding included).
    pub fn bytes(&self) -> usize {
        self.data.len() * std::mem::size_of::<f32>()
    }

    /// Runs of `unit` columns (the last one cut by `d_out`).
    fn units(&self, unit: usize) -> usize {
        self.d_out.div_ceil(unit)
    }
}

/// A kernel: columns `c0..c1` (those below `d_out`) of `x [n, d_in] @ w`
/// into `y [n, d_out]` (row stride `d_out`).
///
/// # Safety
/// `x` holds `n * d_in` values; `c0 < c1` are multiples of the kernel's unit
/// (see [`kernel`]) and `c1` is at most the padded width (whole groups); `y`
/// is valid for writes of `n * d_out` values and no other thread touches these
/// columns meanwhile.
type Kernel = unsafe fn(x: &[f32], n: usize, w: &PackedMatrix, c0: usize, c1: usize, y: *mut f32);

/// The best kernel this CPU has, and its unit: the width of one of its tiles
/// (a group with AVX-512, a strip otherwise), which the threads split a
/// matrix by, so that the shares of a matrix only a few tiles wide come out
/// even (by groups, SmolLM2's 576 columns went 5 : 4 to two threads).
fn kernel() -> (Kernel, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return (x86::columns_avx512, GROUP);
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return (x86::columns_avx2, STRIP);
        }
    }
    (columns_portable, STRIP)
}

/// `x [n, d_in] @ w` for each matrix of `mats` (all with the same `d_in` as
/// `x`, as q/k/v or gate/up), on up to `threads` threads: returns each product
/// `[n, d_out]`.
///
/// # Panics
/// If `x` holds fewer than `n * d_in` values or the matrices' `d_in` differ.
pub fn gemm_packed(x: &[f32], n: usize, mats: &[&PackedMatrix], threads: usize) -> Vec<Vec<f32>> {
    let d_in = mats.first().map_or(0, |m| m.d_in);
    assert!(mats.iter().all(|m| m.d_in == d_in), "gemm_packed: matrices with different inputs");
    assert!(x.len() >= n * d_in, "gemm_packed: x shorter than its shape");
    let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0f32; n * m.d_out]).collect();
    if n == 0 || d_in == 0 {
        return outs;
    }
    // The units of every matrix, in order, cut into `parts` contiguous runs.
    let (kernel, unit) = kernel();
    let total: usize = mats.iter().map(|m| m.units(unit)).sum();
    let parts = threads.clamp(1, total.max(1));
    let ptrs: Vec<Out> = outs.iter_mut().map(|o| Out(o.as_mut_ptr())).collect();
    let block = row_block(d_in);
    let part = |t: usize| {
        let (p0, p1) = (t * total / parts, (t + 1) * total / parts);
        // Row block by row block: the block's activations stay in cache while
        // the part's strips of every matrix stream past.
        for r0 in (0..n).step_by(block) {
            let rows = block.min(n - r0);
            let mut first = 0;
            for (m, mat) in mats.iter().enumerate() {
                let count = mat.units(unit);
                let (a, b) = (p0.max(first), p1.min(first + count));
                if a < b {
                    // SAFETY: the kernel runs on this CPU; `x` holds `n * d_in`
                    // values (asserted above), so rows `r0..r0 + rows`; the
                    // matrix holds whole groups, so the units' strips; this
                    // part alone writes the columns of units `a..b` of output
                    // `m` (`n * d_out` values), and `outs` outlives the pass.
                    unsafe { kernel(&x[r0 * d_in..], rows, mat, (a - first) * unit, (b - first) * unit, ptrs[m].0.add(r0 * mat.d_out)) };
                }
                first += count;
            }
        }
    };
    crate::spin_pool::run(parts, &part);
    outs
}

/// Rows per block for inputs of `d_in`: [`ROW_BLOCK_BYTES`] of activations,
/// a multiple of 12 (both tile heights), at least 24.
fn row_block(d_in: usize) -> usize {
    (ROW_BLOCK_BYTES / (4 * d_in.max(1)) / 12 * 12).max(24)
}

/// The portable [`Kernel`] (unit: a strip): tiles of up to 4 rows by one
/// strip, a multiply and an add per step (not fused), as [`crate::gemm`]'s
/// portable kernel.
///
/// # Safety
/// As [`Kernel`], with `c0` and `c1` multiples of [`STRIP`].
unsafe fn columns_portable(x: &[f32], n: usize, w: &PackedMatrix, c0: usize, c1: usize, y: *mut f32) {
    let d_in = w.d_in;
    for s in c0 / STRIP..c1 / STRIP {
        let strip = &w.data[s * d_in * STRIP..(s + 1) * d_in * STRIP];
        let width = STRIP.min(w.d_out.saturating_sub(s * STRIP));
        if width == 0 {
            continue;
        }
        for r0 in (0..n).step_by(4) {
            let rows = 4.min(n - r0);
            let mut acc = [[0f32; STRIP]; 4];
            for (k, wk) in strip.chunks_exact(STRIP).enumerate() {
                for (r, acc) in acc.iter_mut().enumerate().take(rows) {
                    let xv = x[(r0 + r) * d_in + k];
                    acc.iter_mut().zip(wk).for_each(|(a, &w)| *a += xv * w);
                }
            }
            for (r, acc) in acc.iter().enumerate().take(rows) {
                // SAFETY: row `r0 + r < n`, columns `16 s .. 16 s + width <= d_out`.
                unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), y.add((r0 + r) * w.d_out + s * STRIP), width) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PackedMatrix, GROUP, STRIP};
    use crate::simd::{Avx2, Avx512, Lanes};
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};

    /// The AVX-512 [`super::Kernel`] (unit: a group): tiles of up to 4 rows
    /// by a whole group (four strips, one vector each).
    ///
    /// # Safety
    /// As [`super::Kernel`], on a CPU with AVX-512F; `c0` and `c1` are
    /// multiples of [`GROUP`].
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn columns_avx512(x: &[f32], n: usize, w: &PackedMatrix, c0: usize, c1: usize, y: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe { body::<Avx512, 4, 4>(x, n, w, c0, c1, y) }
    }

    /// The AVX2 and FMA [`super::Kernel`] (unit: a strip; 16 registers of 8
    /// lanes): tiles of up to 6 rows by one strip (two vectors); `6 x 2`
    /// accumulators, two weight vectors and a broadcast fill 15 registers.
    ///
    /// # Safety
    /// As [`super::Kernel`], on a CPU with AVX2 and FMA; `c0` and `c1` are
    /// multiples of [`STRIP`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn columns_avx2(x: &[f32], n: usize, w: &PackedMatrix, c0: usize, c1: usize, y: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe { body::<Avx2, 6, 2>(x, n, w, c0, c1, y) }
    }

    /// Columns `c0..c1` in tiles of `C` vectors (`C * W` columns, whole strips)
    /// by up to `R` rows: tile column by tile column, each row tile over the
    /// tile column's strips (read from memory by the first, from cache by the
    /// rest). With more than one row, the first row tile also prefetches the
    /// next tile column's strips, line for line as it reads its own: the
    /// hardware prefetcher alone leaves the 5- and 16-row steps of a 2-core
    /// Zen 1 10-30% slower (measured on SmolLM2's shapes); one row is bound by
    /// memory and gains nothing.
    ///
    /// # Safety
    /// As [`super::Kernel`]; `C * S::W` is a whole number of strips dividing
    /// [`GROUP`], and `c0` and `c1` are multiples of it; inlined into an entry
    /// point with `S`'s features.
    #[inline(always)]
    unsafe fn body<S: Lanes, const R: usize, const C: usize>(x: &[f32], n: usize, w: &PackedMatrix, c0: usize, c1: usize, y: *mut f32) {
        let cols = C * S::W;
        debug_assert!(cols.is_multiple_of(STRIP) && GROUP.is_multiple_of(cols) && c0.is_multiple_of(cols) && c1.is_multiple_of(cols));
        for j0 in (c0..c1).step_by(cols) {
            let width = cols.min(w.d_out.saturating_sub(j0));
            if width == 0 {
                break;
            }
            // SAFETY: strip `j0 / 16` starts inside the data (`j0 < d_out`, and whole groups are stored).
            let base = unsafe { w.data.as_ptr().add(j0 / STRIP * w.d_in * STRIP) };
            // The next tile column's strips, if this part has one and the step more than one row.
            let next = if n > 1 && j0 + cols < c1 { base.wrapping_add(cols / STRIP * w.d_in * STRIP) } else { std::ptr::null() };
            let mut r0 = 0;
            while r0 < n {
                let rows = R.min(n - r0);
                let prefetch = if r0 == 0 { next } else { std::ptr::null() };
                // SAFETY: rows `r0..r0 + rows < n`; the tile's strips lie in the
                // data (whole groups are stored); columns `j0..j0 + width <= d_out`.
                unsafe {
                    match rows {
                        6 if R >= 6 => tile::<S, 6, C>(x, r0, w.d_in, base, prefetch, width, w.d_out, j0, y),
                        5 if R >= 5 => tile::<S, 5, C>(x, r0, w.d_in, base, prefetch, width, w.d_out, j0, y),
                        4 => tile::<S, 4, C>(x, r0, w.d_in, base, prefetch, width, w.d_out, j0, y),
                        3 => tile::<S, 3, C>(x, r0, w.d_in, base, prefetch, width, w.d_out, j0, y),
                        2 => tile::<S, 2, C>(x, r0, w.d_in, base, prefetch, width, w.d_out, j0, y),
                        _ => tile::<S, 1, C>(x, r0, w.d_in, base, prefetch, width, w.d_out, j0, y),
                    }
                }
                r0 += rows;
            }
        }
    }

    /// Rows `r0..r0 + R` by the `C * W` columns whose strips start at `base`:
    /// `R x C` accumulators in registers over all of `d_in`, then stored to
    /// `y` (row stride `d_out`, columns `j0..j0 + width`). Unless `prefetch`
    /// is null, as many strips starting there are prefetched, each at the
    /// input row being read here.
    ///
    /// # Safety
    /// As [`body`]: `x` holds rows `r0..r0 + R`, `base` the tile's strips
    /// (`d_in * 16` values each), `y` rows `r0..r0 + R` of `d_out` columns.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<S: Lanes, const R: usize, const C: usize>(x: &[f32], r0: usize, d_in: usize, base: *const f32, prefetch: *const f32, width: usize, d_out: usize, j0: usize, y: *mut f32) {
        // Vector `c` of a tile row: strip `c * W / 16` of the tile, lanes at `c * W % 16`.
        let at = |c: usize| (c * S::W / STRIP) * d_in * STRIP + (c * S::W) % STRIP;
        // SAFETY (whole body): the caller's contract.
        unsafe {
            let mut acc = [[S::zero(); C]; R];
            let xp = x.as_ptr().add(r0 * d_in);
            for k in 0..d_in {
                if !prefetch.is_null() {
                    for t in 0..C * S::W / STRIP {
                        // A hint: it never faults, wherever it points.
                        _mm_prefetch::<_MM_HINT_T0>(prefetch.wrapping_add(t * d_in * STRIP + k * STRIP).cast());
                    }
                }
                let wk = base.add(k * STRIP);
                let wv: [S::V; C] = std::array::from_fn(|c| S::load(wk.add(at(c))));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xv = S::splat(*xp.add(r * d_in + k));
                    for c in 0..C {
                        acc[c] = S::fmadd(xv, wv[c], acc[c]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let yr = y.add((r0 + r) * d_out + j0);
                if width == C * S::W {
                    for (c, &v) in acc.iter().enumerate() {
                        S::store(yr.add(c * S::W), v);
                    }
                } else {
                    // The tile is cut by `d_out`: through a buffer, its columns only.
                    let mut buf = [0f32; GROUP];
                    for (c, &v) in acc.iter().enumerate() {
                        S::store(buf.as_mut_ptr().add(c * S::W), v);
                    }
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), yr, width);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gemm::gemm_multi;
    use crate::gemm::tests::{check_columns, fused_agree};
    use crate::matmul::tests::{reference, values};

    #[test]
    fn packing_keeps_every_value_and_zero_pads_to_whole_groups() {
        let (d_in, d_out) = (3, 21);
        let w = values(d_in * d_out, 5);
        let p = PackedMatrix::from_rows(&w, d_in, d_out).expect("packs");
        assert_eq!(p.data.len(), 4 * d_in * STRIP, "one group of four strips");
        for k in 0..d_in {
            for j in 0..GROUP {
                let got = p.data[((j / STRIP) * d_in + k) * STRIP + j % STRIP];
                let want = if j < d_out { w[k * d_out + j] } else { 0.0 };
                assert_eq!(got.to_bits(), want.to_bits(), "k {k} column {j}");
            }
        }
        let wt: Vec<f32> = (0..d_out).flat_map(|j| (0..d_in).map(move |k| (j, k))).map(|(j, k)| w[k * d_out + j]).collect();
        let t = PackedMatrix::from_transposed(&wt, d_in, d_out).expect("packs");
        assert!(t.data.iter().zip(&p.data).all(|(a, b)| a.to_bits() == b.to_bits()), "from the transpose, the same layout");
        assert!(PackedMatrix::from_transposed(&wt[1..], d_in, d_out).is_none(), "short input refused");
        assert!(PackedMatrix::from_rows(&w[1..], d_in, d_out).is_none(), "short input refused");
        assert!(PackedMatrix::from_rows(&w, usize::MAX, 2).is_none(), "overflow refused");
    }

    #[test]
    fn packed_gemm_matches_the_f64_reference_and_the_row_major_gemm_bit_for_bit() {
        // Odd widths (cut strips and groups), row counts off both tile heights and
        // past a row block (1536 inputs: blocks of 24 rows).
        for &(n, d_in, d_out) in &[(1, 1, 1), (1, 7, 5), (3, 130, 200), (5, 33, 63), (16, 576, 192), (17, 64, 1000), (2, 9, 65), (70, 1536, 40), (13, 20, 130)] {
            let x = values(n * d_in, 1);
            let w = values(d_in * d_out, 2);
            let w2 = values(d_in * 70, 3);
            let (p, p2) = (PackedMatrix::from_rows(&w, d_in, d_out).expect("packs"), PackedMatrix::from_rows(&w2, d_in, 70).expect("packs"));
            let want = [reference(&x, &w, n, d_in, d_out), reference(&x, &w2, n, d_in, 70)];
            for threads in [1, 2, 3, 16] {
                let got = gemm_packed(&x, n, &[&p, &p2], threads);
                let rows = gemm_multi(&x, n, d_in, &[(&w, d_out), (&w2, 70)], threads);
                for ((got, want), rows) in got.iter().zip(&want).zip(&rows) {
                    assert_eq!(got.len(), want.len());
                    for (k, (&a, &b)) in got.iter().zip(want).enumerate() {
                        assert!((a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()), "{n}x{d_in}x{d_out} t={threads} [{k}]: {a} vs {b}");
                    }
                    let same = got.iter().zip(rows).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{n}x{d_in}x{d_out} t={threads}: packed and row-major gemm differ");
                }
            }
        }
    }

    /// The kernels this CPU runs, each with the columns its ranges are
    /// multiples of: the portable one, and the x86 ones it has.
    fn kernels() -> Vec<(&'static str, Kernel, usize)> {
        let mut k: Vec<(&'static str, Kernel, usize)> = vec![("portable", columns_portable, STRIP)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                k.push(("avx2", x86::columns_avx2, STRIP));
            }
            if std::is_x86_feature_detected!("avx512f") {
                k.push(("avx512", x86::columns_avx512, GROUP));
            }
        }
        k
    }

    #[test]
    fn every_kernel_writes_its_columns_only() {
        // Column ranges in whole groups (every kernel) and in strips (those that split by strips).
        for &(n, d_in, d_out, c0, c1) in &[(5, 37, 100, 0, 128), (16, 64, 200, 64, 256), (1, 3, 7, 0, 64), (9, 130, 90, 64, 128), (7, 20, 250, 128, 192), (6, 40, 100, 16, 48), (13, 9, 250, 112, 256), (2, 70, 33, 32, 48)] {
            let x = values(n * d_in, 11);
            let w = values(d_in * d_out, 12);
            let p = PackedMatrix::from_rows(&w, d_in, d_out).expect("packs");
            let want = reference(&x, &w, n, d_in, d_out);
            let mut fused: Vec<(&str, Vec<f32>)> = Vec::new();
            for (name, kernel, unit) in kernels() {
                if c0 % unit != 0 || c1 % unit != 0 {
                    continue;
                }
                let mut y = vec![f32::NAN; n * d_out];
                // SAFETY: the shapes hold their values, `c1` lies within the padded width; one thread.
                unsafe { kernel(&x, n, &p, c0, c1, y.as_mut_ptr()) };
                check_columns(&y, &want, d_out, c0..c1, &format!("{name} {n}x{d_in}x{d_out}"));
                if name != "portable" {
                    fused.push((name, y));
                }
            }
            fused_agree(&fused);
        }
    }

    #[test]
    fn a_row_is_bit_identical_alone_and_in_any_batch_or_thread_count() {
        let (d_in, d_out) = (1536, 130);
        let x = values(80 * d_in, 7);
        let p = PackedMatrix::from_rows(&values(d_in * d_out, 8), d_in, d_out).expect("packs");
        let batch = gemm_packed(&x, 80, &[&p], 2).remove(0);
        for r in [0, 3, 4, 13, 61, 79] {
            for threads in [1, 3] {
                let alone = gemm_packed(&x[r * d_in..(r + 1) * d_in], 1, &[&p], threads).remove(0);
                assert_eq!(alone, batch[r * d_out..(r + 1) * d_out], "row {r}, {threads} threads");
            }
        }
    }
}
