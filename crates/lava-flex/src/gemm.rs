//! `x [n, d_in] @ w [d_in, d_out]` for the few-row products of a batched
//! decode step (and the short prefill chunks that join it), on host slices.
//!
//! [`crate::matmul::matvec_multi`] streams the weights once per call and
//! keeps its partial sums in memory: right for one row (the step is bound by
//! how fast the weights arrive), but with 16 rows every weight is loaded and
//! every partial sum loaded and stored once per row, and the loads bound it.
//! Here the outputs of a tile of [`TILE_ROWS`] rows by [`PANEL`] columns stay
//! in registers while the whole `d_in` dimension streams past: per input
//! element, four vector loads of `w` and one broadcast of `x` per row feed
//! sixteen fused multiply-adds, and a panel of `w` (`d_in x 64` values, at
//! most a few hundred KiB) is read from cache again by each row tile. That is
//! the AVX-512 kernel; on a CPU with AVX2 and FMA only (16 registers of 8
//! lanes), tiles are 6 rows by 16 columns: two vector loads of `w` and six
//! broadcasts feed twelve fused multiply-adds. Elsewhere a portable loop runs
//! the same tiles with a separate multiply and add.
//!
//! Threads split the output columns (whole panels), so no partial sums are
//! merged. Every output element is one chain of fused multiply-adds over `k =
//! 0..d_in` in order, whatever the row count, the tile a row falls in or the
//! thread count: a row's result is bit-identical whether it is multiplied
//! alone or in a batch (what lets `lava serve` batch greedy requests without
//! changing their answers).

/// Row counts up to this take [`gemm_multi`] in the host forward; longer
/// blocks (a long prefill) take the backend's packed matmul, faster there.
pub const GEMM_MAX_ROWS: usize = 128;

/// Output columns per panel: four 16-lane vectors.
pub const PANEL: usize = 64;

/// Activation rows per register tile.
pub const TILE_ROWS: usize = 4;

/// Input rows (`k`) per pass over a part's panels, for `n` activation rows:
/// few rows leave the step bound by how fast `w` streams from memory, which
/// wants few concurrent row streams; many rows reuse each `[k_block, 64]`
/// block of `w` from L1 and want few reloads of the accumulators. (The block
/// does not change any result: the accumulators go through memory exactly.)
fn k_block(n: usize) -> usize {
    match n {
        0..=1 => K1,
        2..=4 => 8,
        5..=8 => 16,
        _ => 64,
    }
}
const K1: usize = 4;

/// A pointer the parts of one pass write through, each to its own columns.
#[derive(Clone, Copy)]
pub(crate) struct Out(pub(crate) *mut f32);

// SAFETY: the parts of a pass write disjoint column ranges of the outputs,
// which outlive the pass (see `gemm_multi`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `x [n, d_in] @ w [d_in, d_out]` for each `(w, d_out)` of `mats` (all with
/// the same input, as q/k/v or gate/up), on up to `threads` threads: returns
/// each product `[n, d_out]`.
///
/// # Panics
/// If a slice is shorter than its shape says.
pub fn gemm_multi(x: &[f32], n: usize, d_in: usize, mats: &[(&[f32], usize)], threads: usize) -> Vec<Vec<f32>> {
    assert!(x.len() >= n * d_in, "gemm: x shorter than its shape");
    assert!(mats.iter().all(|&(w, d_out)| w.len() >= d_in * d_out), "gemm: w shorter than its shape");
    let mut outs: Vec<Vec<f32>> = mats.iter().map(|&(_, d_out)| vec![0f32; n * d_out]).collect();
    if n == 0 || d_in == 0 {
        return outs;
    }
    // The panels of every matrix, in order, cut into `parts` contiguous runs;
    // a run is one column range per matrix it touches.
    let panels: Vec<usize> = mats.iter().map(|&(_, d_out)| d_out.div_ceil(PANEL)).collect();
    let total: usize = panels.iter().sum();
    let parts = threads.clamp(1, total.max(1));
    let ptrs: Vec<Out> = outs.iter_mut().map(|o| Out(o.as_mut_ptr())).collect();
    let kb = k_block(n);
    let part = |t: usize| {
        let (p0, p1) = (t * total / parts, (t + 1) * total / parts);
        let mut first = 0;
        for (m, (&(w, d_out), &count)) in mats.iter().zip(&panels).enumerate() {
            let (a, b) = (p0.max(first), p1.min(first + count));
            if a < b {
                let (c0, c1) = ((a - first) * PANEL, ((b - first) * PANEL).min(d_out));
                // SAFETY: `x` holds `n * d_in` values and `w` `d_in * d_out`
                // (asserted above); this part alone writes columns `c0..c1` of
                // output `m` (`n * d_out` values), and `outs` outlives the pass.
                unsafe { columns(x, n, d_in, w, d_out, c0, c1, kb, ptrs[m].0) };
            }
            first += count;
        }
    };
    crate::spin_pool::run(parts, &part);
    outs
}

/// Columns `c0..c1` of `x [n, d_in] @ w [d_in, d_out]` into `y [n, d_out]`:
/// `kb` input rows at a time across all the range's panels, so `w` is read
/// row by row in runs as long as the range (the streams the prefetcher
/// follows) and each panel's `[kb, 64]` block stays in L1 while every row
/// tile uses it.
///
/// # Safety
/// `x` and `w` hold their shapes' values, `c0 < c1 <= d_out`; `y` is valid for
/// writes of `n * d_out` values and no other thread touches these columns
/// meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn columns(x: &[f32], n: usize, d_in: usize, w: &[f32], d_out: usize, c0: usize, c1: usize, kb: usize, y: *mut f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; the rest is the caller's contract.
            unsafe { x86::columns_avx512(x, n, d_in, w, d_out, c0, c1, kb, y) };
            return;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA; the rest is the caller's contract.
            unsafe { x86::columns_avx2(x, n, d_in, w, d_out, c0, c1, kb, y) };
            return;
        }
    }
    // SAFETY: the caller's contract.
    unsafe { columns_portable(x, n, d_in, w, d_out, c0, c1, kb, y) }
}

/// [`columns`] in plain Rust (the compiler vectorizes the column loop): the
/// same tiles and summation order, with a multiply and an add per step (not
/// fused), where the CPU has neither AVX-512 nor AVX2 with FMA.
///
/// # Safety
/// As [`columns`].
#[allow(clippy::too_many_arguments)]
unsafe fn columns_portable(x: &[f32], n: usize, d_in: usize, w: &[f32], d_out: usize, c0: usize, c1: usize, kb: usize, y: *mut f32) {
    for k0 in (0..d_in).step_by(kb) {
        let k1 = (k0 + kb).min(d_in);
        for j0 in (c0..c1).step_by(PANEL) {
            let width = PANEL.min(c1 - j0);
            let mut r0 = 0;
            while r0 < n {
                let rows = TILE_ROWS.min(n - r0);
                let mut acc = [[0f32; PANEL]; TILE_ROWS];
                if k0 > 0 {
                    for (r, acc) in acc.iter_mut().enumerate().take(rows) {
                        // SAFETY: row `r0 + r < n`, columns `j0..j0 + width <= d_out`.
                        unsafe { std::ptr::copy_nonoverlapping(y.add((r0 + r) * d_out + j0), acc.as_mut_ptr(), width) };
                    }
                }
                for k in k0..k1 {
                    let wk = &w[k * d_out + j0..k * d_out + j0 + width];
                    for (r, acc) in acc.iter_mut().enumerate().take(rows) {
                        let xv = x[(r0 + r) * d_in + k];
                        acc[..width].iter_mut().zip(wk).for_each(|(a, &w)| *a += xv * w);
                    }
                }
                for (r, acc) in acc.iter().enumerate().take(rows) {
                    // SAFETY: as above.
                    unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), y.add((r0 + r) * d_out + j0), width) };
                }
                r0 += rows;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PANEL, TILE_ROWS};
    use std::arch::x86_64::*;

    /// [`super::columns`] with AVX-512: tiles of up to [`TILE_ROWS`] rows by
    /// four 16-lane vectors, masked at the range's right edge.
    ///
    /// # Safety
    /// As [`super::columns`], on a CPU with AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn columns_avx512(x: &[f32], n: usize, d_in: usize, w: &[f32], d_out: usize, c0: usize, c1: usize, kb: usize, y: *mut f32) {
        for k0 in (0..d_in).step_by(kb) {
            let k1 = (k0 + kb).min(d_in);
            for j0 in (c0..c1).step_by(PANEL) {
                let width = PANEL.min(c1 - j0);
                let lanes = |v: usize| width.saturating_sub(16 * v).min(16);
                let masks: [__mmask16; 4] = std::array::from_fn(|v| ((1u32 << lanes(v)) - 1) as __mmask16);
                let mut r0 = 0;
                while r0 < n {
                    let rows = TILE_ROWS.min(n - r0);
                    // SAFETY: as this function's contract; `r0 + rows <= n`.
                    unsafe {
                        match rows {
                            4 => tile::<4>(x, r0, d_in, w, d_out, j0, k0, k1, &masks, y),
                            3 => tile::<3>(x, r0, d_in, w, d_out, j0, k0, k1, &masks, y),
                            2 => tile::<2>(x, r0, d_in, w, d_out, j0, k0, k1, &masks, y),
                            _ => tile::<1>(x, r0, d_in, w, d_out, j0, k0, k1, &masks, y),
                        }
                    }
                    r0 += rows;
                }
            }
        }
    }

    /// [`super::columns`] with AVX2 and FMA (16 vector registers of 8 lanes):
    /// each panel in strips of 16 columns (two vectors), tiles of up to
    /// [`STRIP_ROWS`] rows by one strip, masked at the range's right edge. The
    /// same chain of fused multiply-adds per output element as the AVX-512
    /// kernel, so the same results.
    ///
    /// # Safety
    /// As [`super::columns`], on a CPU with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn columns_avx2(x: &[f32], n: usize, d_in: usize, w: &[f32], d_out: usize, c0: usize, c1: usize, kb: usize, y: *mut f32) {
        for k0 in (0..d_in).step_by(kb) {
            let k1 = (k0 + kb).min(d_in);
            // Panel by panel (its `[kb, 64]` block of `w` stays in L1), each
            // row tile over the panel's strips.
            for p0 in (c0..c1).step_by(PANEL) {
                let p1 = (p0 + PANEL).min(c1);
                let mut r0 = 0;
                while r0 < n {
                    let rows = STRIP_ROWS.min(n - r0);
                    for j0 in (p0..p1).step_by(STRIP) {
                        let width = STRIP.min(p1 - j0);
                        // SAFETY: as this function's contract; `r0 + rows <= n`.
                        unsafe {
                            if width == STRIP {
                                strip_rows::<false>(rows, x, r0, d_in, w, d_out, j0, width, k0, k1, y);
                            } else {
                                strip_rows::<true>(rows, x, r0, d_in, w, d_out, j0, width, k0, k1, y);
                            }
                        }
                    }
                    r0 += rows;
                }
            }
        }
    }

    /// [`strip`] for a tile of `rows` (at most [`STRIP_ROWS`]) rows and a strip
    /// `width` columns wide (`MASKED` when it is cut short by the range's edge).
    ///
    /// # Safety
    /// As [`strip`].
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn strip_rows<const MASKED: bool>(rows: usize, x: &[f32], r0: usize, d_in: usize, w: &[f32], d_out: usize, j0: usize, width: usize, k0: usize, k1: usize, y: *mut f32) {
        // Lane `i` of vector `v` is column `j0 + 8 v + i`: on while inside the strip.
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let masks = [_mm256_cmpgt_epi32(_mm256_set1_epi32(width as i32), lane), _mm256_cmpgt_epi32(_mm256_set1_epi32(width as i32 - 8), lane)];
        // SAFETY: the caller's contract.
        unsafe {
            match rows {
                6 => strip::<6, MASKED>(x, r0, d_in, w, d_out, j0, k0, k1, &masks, y),
                5 => strip::<5, MASKED>(x, r0, d_in, w, d_out, j0, k0, k1, &masks, y),
                4 => strip::<4, MASKED>(x, r0, d_in, w, d_out, j0, k0, k1, &masks, y),
                3 => strip::<3, MASKED>(x, r0, d_in, w, d_out, j0, k0, k1, &masks, y),
                2 => strip::<2, MASKED>(x, r0, d_in, w, d_out, j0, k0, k1, &masks, y),
                _ => strip::<1, MASKED>(x, r0, d_in, w, d_out, j0, k0, k1, &masks, y),
            }
        }
    }

    /// Columns per AVX2 strip: two 8-lane vectors.
    const STRIP: usize = 16;

    /// Activation rows per AVX2 tile: `6 x 2` accumulators, two weight vectors
    /// and a broadcast fill 15 of the 16 vector registers.
    const STRIP_ROWS: usize = 6;

    /// Rows `r0..r0 + R` by the strip's 16 columns at `j0`: `R x 2`
    /// accumulators in registers over inputs `k0..k1` (loaded from `y` unless
    /// `k0 == 0`), then one store each; `MASKED`: the strip is cut by the
    /// range's edge (`masks`), else whole.
    ///
    /// # Safety
    /// As [`super::columns`], with rows `r0..r0 + R` inside `x` and `y` and
    /// the strip's unmasked columns inside the range.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn strip<const R: usize, const MASKED: bool>(x: &[f32], r0: usize, d_in: usize, w: &[f32], d_out: usize, j0: usize, k0: usize, k1: usize, masks: &[__m256i; 2], y: *mut f32) {
        debug_assert!(R <= STRIP_ROWS);
        // Loads and stores: unmasked lanes are columns `< j0 + width <= d_out` of row `k < d_in`
        // (w) or of row `r0 + r < n` (y); masked lanes are never touched, and the address
        // arithmetic wraps rather than leaving the allocation.
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        if k0 > 0 {
            for (r, acc) in acc.iter_mut().enumerate() {
                let yr = y.wrapping_add((r0 + r) * d_out + j0);
                for v in 0..2 {
                    // SAFETY: as above.
                    acc[v] = unsafe { load8::<MASKED>(yr.wrapping_add(8 * v), masks[v]) };
                }
            }
        }
        let xp = x.as_ptr();
        let wp = w.as_ptr();
        for k in k0..k1 {
            let wk = wp.wrapping_add(k * d_out + j0);
            // SAFETY: as above.
            let wv = unsafe { [load8::<MASKED>(wk, masks[0]), load8::<MASKED>(wk.wrapping_add(8), masks[1])] };
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row `r0 + r` of `x`, element `k < d_in`.
                let xv = _mm256_set1_ps(unsafe { *xp.add((r0 + r) * d_in + k) });
                for v in 0..2 {
                    acc[v] = _mm256_fmadd_ps(xv, wv[v], acc[v]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let yr = y.wrapping_add((r0 + r) * d_out + j0);
            for v in 0..2 {
                // SAFETY: as the loads above.
                unsafe {
                    if MASKED {
                        _mm256_maskstore_ps(yr.wrapping_add(8 * v), masks[v], acc[v]);
                    } else {
                        _mm256_storeu_ps(yr.wrapping_add(8 * v), acc[v]);
                    }
                }
            }
        }
    }

    /// Eight values at `p`, the lanes `mask` turns off read as zero when `MASKED`.
    ///
    /// # Safety
    /// The lanes read are inside one allocation; inlined into AVX2 code only.
    #[inline(always)]
    unsafe fn load8<const MASKED: bool>(p: *const f32, mask: __m256i) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe {
            if MASKED {
                _mm256_maskload_ps(p, mask)
            } else {
                _mm256_loadu_ps(p)
            }
        }
    }

    /// Rows `r0..r0 + R` by the panel's columns: `R x 4` accumulators in
    /// registers over inputs `k0..k1` (loaded from `y` unless `k0 == 0`),
    /// then one masked store each.
    ///
    /// # Safety
    /// As [`panel_avx512`], with rows `r0..r0 + R` inside `x` and `y`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const R: usize>(x: &[f32], r0: usize, d_in: usize, w: &[f32], d_out: usize, j0: usize, k0: usize, k1: usize, masks: &[__mmask16; 4], y: *mut f32) {
        debug_assert!(R <= TILE_ROWS && 4 * 16 == PANEL);
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        if k0 > 0 {
            for (r, acc) in acc.iter_mut().enumerate() {
                let yr = y.wrapping_add((r0 + r) * d_out + j0);
                for v in 0..4 {
                    // SAFETY: unmasked lanes are columns `< j0 + width` of row `r0 + r < n`.
                    acc[v] = unsafe { _mm512_maskz_loadu_ps(masks[v], yr.wrapping_add(16 * v)) };
                }
            }
        }
        let xp = x.as_ptr();
        let wp = w.as_ptr();
        for k in k0..k1 {
            // Lanes past the panel's edge are masked off: never read, and the
            // address arithmetic wraps rather than leaving the allocation.
            let wk = wp.wrapping_add(k * d_out + j0);
            // SAFETY: unmasked lanes are columns `< j0 + width <= d_out` of row `k < d_in`.
            let wv: [__m512; 4] = std::array::from_fn(|v| unsafe { _mm512_maskz_loadu_ps(masks[v], wk.wrapping_add(16 * v)) });
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row `r0 + r` of `x`, element `k < d_in`.
                let xv = _mm512_set1_ps(unsafe { *xp.add((r0 + r) * d_in + k) });
                for v in 0..4 {
                    acc[v] = _mm512_fmadd_ps(xv, wv[v], acc[v]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let yr = y.wrapping_add((r0 + r) * d_out + j0);
            for v in 0..4 {
                // SAFETY: unmasked lanes are columns `< j0 + width` of row `r0 + r < n`.
                unsafe { _mm512_mask_storeu_ps(yr.wrapping_add(16 * v), masks[v], acc[v]) };
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::matmul::tests::{reference, values};

    #[test]
    fn gemm_matches_f64_reference_for_odd_shapes_and_thread_counts() {
        for &(n, d_in, d_out) in &[(1, 1, 1), (1, 7, 5), (3, 130, 200), (5, 33, 63), (16, 576, 192), (17, 64, 1000), (2, 9, 65)] {
            let x = values(n * d_in, 1);
            let w = values(d_in * d_out, 2);
            let w2 = values(d_in * 70, 3);
            let want = reference(&x, &w, n, d_in, d_out);
            let want2 = reference(&x, &w2, n, d_in, 70);
            for threads in [1, 2, 3, 16] {
                let outs = gemm_multi(&x, n, d_in, &[(&w, d_out), (&w2, 70)], threads);
                for (got, want) in outs.iter().zip([&want, &want2]) {
                    assert_eq!(got.len(), want.len());
                    for (k, (&a, &b)) in got.iter().zip(want).enumerate() {
                        assert!((a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()), "{n}x{d_in}x{d_out} t={threads} [{k}]: {a} vs {b}");
                    }
                }
            }
        }
    }

    type Kernel = unsafe fn(&[f32], usize, usize, &[f32], usize, usize, usize, usize, *mut f32);

    /// The kernels this CPU runs: the portable one, and the x86 ones it has.
    fn kernels() -> Vec<(&'static str, Kernel)> {
        let mut k: Vec<(&'static str, Kernel)> = vec![("portable", columns_portable)];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                k.push(("avx2", x86::columns_avx2));
            }
            if std::is_x86_feature_detected!("avx512f") {
                k.push(("avx512", x86::columns_avx512));
            }
        }
        k
    }

    #[test]
    fn every_kernel_writes_its_columns_only_and_matches_the_reference() {
        // Column ranges that end inside a strip and a panel, row counts off the tile.
        for &(n, d_in, d_out, c0, c1) in &[(5, 37, 100, 0, 100), (16, 64, 200, 64, 200), (1, 3, 7, 0, 7), (9, 130, 90, 0, 90), (7, 20, 130, 64, 128)] {
            let x = values(n * d_in, 11);
            let w = values(d_in * d_out, 12);
            let want = reference(&x, &w, n, d_in, d_out);
            let mut fused: Vec<(&str, Vec<f32>)> = Vec::new();
            for (name, kernel) in kernels() {
                for kb in [1, 4, 64] {
                    let mut y = vec![f32::NAN; n * d_out];
                    // SAFETY: the shapes hold their values; one thread.
                    unsafe { kernel(&x, n, d_in, &w, d_out, c0, c1, kb, y.as_mut_ptr()) };
                    check_columns(&y, &want, d_out, c0..c1, &format!("{name} kb={kb} {n}x{d_in}x{d_out}"));
                    if name != "portable" {
                        fused.push((name, y));
                    }
                }
            }
            // The fused kernels compute the same chain per element, whatever the block.
            fused_agree(&fused);
        }
    }

    /// `y [n, d_out]` (NaN-filled before a kernel wrote it) matches `want`
    /// within f32 rounding in the columns `cols` and is untouched elsewhere.
    pub(crate) fn check_columns(y: &[f32], want: &[f64], d_out: usize, cols: std::ops::Range<usize>, what: &str) {
        for (i, (&a, &b)) in y.iter().zip(want).enumerate() {
            let col = i % d_out;
            if cols.contains(&col) {
                assert!((a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()), "{what} [{i}]: {a} vs {b}");
            } else {
                assert!(a.is_nan(), "{what} wrote column {col} outside {cols:?}");
            }
        }
    }

    /// The fused kernels' outputs agree bit for bit (NaN where none wrote).
    pub(crate) fn fused_agree(fused: &[(&str, Vec<f32>)]) {
        for pair in fused.windows(2) {
            let same = pair[0].1.iter().zip(&pair[1].1).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
            assert!(same, "{} and {} differ", pair[0].0, pair[1].0);
        }
    }

    #[test]
    fn a_row_is_bit_identical_alone_and_in_any_batch_or_thread_count() {
        let (d_in, d_out) = (300, 130);
        let x = values(16 * d_in, 7);
        let w = values(d_in * d_out, 8);
        let batch = gemm_multi(&x, 16, d_in, &[(&w, d_out)], 2).remove(0);
        for r in [0, 3, 4, 13, 15] {
            for threads in [1, 3] {
                let alone = gemm_multi(&x[r * d_in..(r + 1) * d_in], 1, d_in, &[(&w, d_out)], threads).remove(0);
                assert_eq!(alone, batch[r * d_out..(r + 1) * d_out], "row {r}, {threads} threads");
            }
            let sub = gemm_multi(&x[(r / 2) * d_in..(r + 1) * d_in], r + 1 - r / 2, d_in, &[(&w, d_out)], 2).remove(0);
            assert_eq!(sub[(r - r / 2) * d_out..], batch[r * d_out..(r + 1) * d_out], "row {r} in a batch of {}", r + 1 - r / 2);
        }
    }
}
