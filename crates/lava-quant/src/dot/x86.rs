//! x86-64 kernels for [`super::QuantMatrix::dot_rows`]: AVX2 (`maddubs` + `madd`) and AVX-512
//! (VNNI `vpdpbusd`, 512-bit vectors for the K-quants, and the 32 vector registers).
//!
//! Covered here: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (one 32-element block per 256-bit vector; the
//! integer sums of 8 blocks are reduced into one vector, so block scales and offsets are applied
//! 8 blocks at a time), Q4_K, Q5_K, Q6_K (a super-block as 8 vectors of 32 codes, or 4 of 64 at
//! the AVX-512 level), Q2_K, Q3_K (8 vectors of 32 codes at both levels), F32, F16, BF16.
//!
//! At the AVX-512 level, for 12 or more activation rows, the 32-element types run [`inter16`] instead: 16 rows per
//! 512-bit vector, one lane each, over the interleaved activations; for 16 or more, Q4_K and Q6_K
//! run [`tiled`]: 16 weight rows per 512-bit vector, one lane each, unpacked once per tile.
//!
//! Every kernel computes the same integers as the portable definition (weight codes as unsigned
//! bytes times activation codes as signed bytes; Q8_0 takes the sign of the weight onto the
//! activation). Neither `maddubs` nor `vpdpbusd` saturates here: a pair of products is at most
//! `2 * 128 * 127 = 32512` (Q8_0) or `2 * 63 * 127` (Q6_K). The `f32` side differs from the
//! portable path only in summation order: each activation row keeps 8 lanes of partial sums,
//! reduced at the end of the output row.
//!
//! Memory safety: [`super::QuantMatrix::new`] guarantees `data.len() == rows * row_bytes` and
//! `row_bytes == cols / block_size * block_bytes`; [`super::ActView`] holds `n` rows of `cols`
//! codes (and `cols / block_size` scales and sums) for the same `cols`; `dot_rows_at` checks
//! `rows.end <= self.rows` and `out.len() == n * rows.len()`. Every pointer below stays inside
//! those bounds.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{ActView, Activations, QuantMatrix, SimdLevel};
use crate::blocks::{scale_min_k4, scales_q3k};
use crate::types::GgmlType;

/// Calls `$isa::$f::<N $g>` with the activation-row count `N = $a.n` as a constant.
macro_rules! by_n {
    ($isa:ident :: $f:ident [$($g:tt)*], $m:expr, $a:expr, $rows:expr, $out:expr) => {
        match $a.n {
            1 => $isa::$f::<1 $($g)*>($m, $a, $rows, $out),
            2 => $isa::$f::<2 $($g)*>($m, $a, $rows, $out),
            3 => $isa::$f::<3 $($g)*>($m, $a, $rows, $out),
            4 => $isa::$f::<4 $($g)*>($m, $a, $rows, $out),
            5 => $isa::$f::<5 $($g)*>($m, $a, $rows, $out),
            6 => $isa::$f::<6 $($g)*>($m, $a, $rows, $out),
            7 => $isa::$f::<7 $($g)*>($m, $a, $rows, $out),
            8 => $isa::$f::<8 $($g)*>($m, $a, $rows, $out),
            _ => return false,
        }
    };
}

/// Dispatches on type and activation-row count to the entry points of one ISA module.
macro_rules! run {
    ($isa:ident, $m:expr, $a:expr, $rows:expr, $out:expr) => {{
        match $m.kind {
            GgmlType::Q4_0 => by_n!($isa::legacy[, Q4_0], $m, $a, $rows, $out),
            GgmlType::Q4_1 => by_n!($isa::legacy[, Q4_1], $m, $a, $rows, $out),
            GgmlType::Q5_0 => by_n!($isa::legacy[, Q5_0], $m, $a, $rows, $out),
            GgmlType::Q5_1 => by_n!($isa::legacy[, Q5_1], $m, $a, $rows, $out),
            GgmlType::Q8_0 => by_n!($isa::legacy[, Q8_0], $m, $a, $rows, $out),
            GgmlType::Q4_K => by_n!($isa::q4k[, false], $m, $a, $rows, $out),
            GgmlType::Q5_K => by_n!($isa::q4k[, true], $m, $a, $rows, $out),
            GgmlType::Q6_K => by_n!($isa::q6k[], $m, $a, $rows, $out),
            GgmlType::Q2_K => by_n!($isa::q23k[, false], $m, $a, $rows, $out),
            GgmlType::Q3_K => by_n!($isa::q23k[, true], $m, $a, $rows, $out),
            GgmlType::F32 => by_n!($isa::float[, F32], $m, $a, $rows, $out),
            GgmlType::F16 => by_n!($isa::float[, F16], $m, $a, $rows, $out),
            GgmlType::BF16 => by_n!($isa::float[, BF16], $m, $a, $rows, $out),
        }
        true
    }};
}

/// Runs the kernel for `m.kind` at `level` (`false`: none, for more than 8 activation rows at
/// once, which `dot_rows_at` never passes; the portable path runs then).
pub(crate) fn dot(level: SimdLevel, m: &QuantMatrix, a: &ActView, rows: Range<usize>, out: &mut [f32]) -> bool {
    // SAFETY: `level.available()` was checked by the caller (`dot_rows_at`), so the CPU has
    // the features each entry is compiled for; the bounds are as the module header says.
    unsafe {
        match level {
            SimdLevel::Avx512 => run!(v4, m, a, rows, out),
            SimdLevel::Avx2 => run!(v3, m, a, rows, out),
            SimdLevel::Portable => false,
        }
    }
}


// Type tags for the const-generic kernels (ggml ids).
const F32: u32 = 0;
const F16: u32 = 1;
const Q4_0: u32 = 2;
const Q4_1: u32 = 3;
const Q5_0: u32 = 6;
const Q5_1: u32 = 7;
const Q8_0: u32 = 8;
const BF16: u32 = 30;

/// The one operation that differs between the ISA levels: `acc + sum of 4 u8 * i8 products`
/// per 32-bit lane.
trait Dp {
    /// Whether Q8_0 codes go in biased by 128 (no saturation to fear), not sign-folded.
    const BIASED_Q8: bool;
    unsafe fn dp(acc: __m256i, w: __m256i, x: __m256i) -> __m256i;
}

struct Avx2;
impl Dp for Avx2 {
    const BIASED_Q8: bool = false;
    #[inline(always)]
    unsafe fn dp(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)))
    }
}

struct Vnni;
impl Dp for Vnni {
    const BIASED_Q8: bool = true;
    #[inline(always)]
    unsafe fn dp(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, w, x)
    }
}

/// Entry points compiled for one feature set; the bodies are the `#[inline(always)]` kernels
/// below, specialized with that level's [`Dp`].
macro_rules! entries {
    ($name:ident, $legacy:ident [$($dp:ty)?], $q4k:ident, $q6k:ident, $features:literal) => {
        mod $name {
            use super::*;

            #[target_feature(enable = $features)]
            pub(super) unsafe fn legacy<const N: usize, const T: u32>(m: &QuantMatrix, a: &ActView, rows: Range<usize>, out: &mut [f32]) {
                super::$legacy::<$($dp,)? N, T>(m, a, rows, out)
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn q4k<const N: usize, const Q5: bool>(m: &QuantMatrix, a: &ActView, rows: Range<usize>, out: &mut [f32]) {
                super::$q4k::<N, Q5>(m, a, rows, out)
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn q6k<const N: usize>(m: &QuantMatrix, a: &ActView, rows: Range<usize>, out: &mut [f32]) {
                super::$q6k::<N>(m, a, rows, out)
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn q23k<const N: usize, const Q3: bool>(m: &QuantMatrix, a: &ActView, rows: Range<usize>, out: &mut [f32]) {
                super::q23k::<N, Q3>(m, a, rows, out)
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn float<const N: usize, const T: u32>(m: &QuantMatrix, a: &ActView, rows: Range<usize>, out: &mut [f32]) {
                super::float::<N, T>(m, a, rows, out)
            }
        }
    };
}

entries!(v3, legacy8[Avx2], q4k, q6k, "avx2,fma,f16c");
entries!(v4, legacy8[Vnni], q4k512, q6k512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");

/// `f16` bits at `p` to `f32` (exact).
#[inline(always)]
unsafe fn f16p(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Sum of the 8 lanes.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// 16 packed bytes of 4-bit codes to 32 code bytes in element order.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> __m256i {
    let v = _mm_loadu_si128(p as *const __m128i);
    let m4 = _mm_set1_epi8(15);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m4), _mm_and_si128(v, m4))
}

/// Bit `e` of the little-endian word at `p`, as `16` or `0` in byte `e`.
#[inline(always)]
unsafe fn high_bits(p: *const u8) -> __m256i {
    let h = _mm256_set1_epi32(u32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]) as i32);
    // Byte e takes byte e / 8 of the word (each 128-bit lane holds the whole word).
    let spread = _mm256_shuffle_epi8(
        h,
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(16))
}

/// A 32-element block's codes as unsigned bytes (Q8_0: its signed codes), its scale `d`, and
/// the coefficient of `dx * sum(xq)` in its product (`-8 d`, `m`, `-16 d`, `m`, 0).
#[inline(always)]
unsafe fn codes32<const T: u32>(blk: *const u8) -> (__m256i, f32, f32) {
    let d = f16p(blk);
    match T {
        Q4_0 => (nibbles(blk.add(2)), d, -8.0 * d),
        Q4_1 => (nibbles(blk.add(4)), d, f16p(blk.add(2))),
        Q5_0 => (_mm256_or_si256(nibbles(blk.add(6)), high_bits(blk.add(2))), d, -16.0 * d),
        Q5_1 => (_mm256_or_si256(nibbles(blk.add(8)), high_bits(blk.add(4))), d, f16p(blk.add(2))),
        _ => (_mm256_loadu_si256(blk.add(2) as *const __m256i), d, 0.0),
    }
}

/// Block `b` of a row (at `blk`) against `N` activation rows, into 8-lane sums `acc` and the
/// offset sums `off`.
#[inline(always)]
unsafe fn block32<D: Dp, const N: usize, const T: u32>(blk: *const u8, b: usize, a: &ActView, acc: &mut [__m256; N], off: &mut [f32; N]) {
    let (nb, cols) = (a.nb, a.cols);
    let (xq, xd, xs) = (a.q.as_ptr(), a.d.as_ptr(), a.dsum.as_ptr());
    let (w, d, c) = codes32::<T>(blk);
    let wabs = if T == Q8_0 { _mm256_sign_epi8(w, w) } else { w };
    for k in 0..N {
        let x = _mm256_loadu_si256(xq.add(k * cols + b * 32) as *const __m256i);
        let x = if T == Q8_0 { _mm256_sign_epi8(x, w) } else { x };
        let p = D::dp(_mm256_setzero_si256(), wabs, x);
        let s = d * *xd.add(k * nb + b);
        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(s), acc[k]);
        if T != Q8_0 {
            off[k] += c * *xs.add(k * nb + b);
        }
    }
}

/// One block's integer dot product (8 lanes of partial sums): codes `w` (`wabs = |w|` for Q8_0)
/// times the 32 activation codes at `x`.
#[inline(always)]
unsafe fn idot32<D: Dp, const T: u32>(w: __m256i, wabs: __m256i, x: *const i8) -> __m256i {
    let x = _mm256_loadu_si256(x as *const __m256i);
    let x = if T == Q8_0 { _mm256_sign_epi8(x, w) } else { x };
    D::dp(_mm256_setzero_si256(), wabs, x)
}

/// The lane sums of 8 vectors, in order: `[sum(p[0]), ..., sum(p[7])]`.
#[inline(always)]
unsafe fn reduce8(p: [__m256i; 8]) -> __m256i {
    let q0 = _mm256_hadd_epi32(p[0], p[1]);
    let q1 = _mm256_hadd_epi32(p[2], p[3]);
    let q2 = _mm256_hadd_epi32(p[4], p[5]);
    let q3 = _mm256_hadd_epi32(p[6], p[7]);
    // Per 128-bit half: [p0, p1, p2, p3] (r0) and [p4, .., p7] (r1), each over half the lanes.
    let r0 = _mm256_hadd_epi32(q0, q1);
    let r1 = _mm256_hadd_epi32(q2, q3);
    _mm256_add_epi32(_mm256_permute2x128_si256(r0, r1, 0x20), _mm256_permute2x128_si256(r0, r1, 0x31))
}

/// The 32-element types, 8 blocks at a time: the 8 integer block sums are reduced into one
/// vector, so the block scales (`d * dx`) and offsets are applied with one multiply and two
/// fused multiply-adds per 8 blocks and activation row; leftover blocks go one at a time.
#[inline(always)]
unsafe fn legacy8<D: Dp, const N: usize, const T: u32>(m: &QuantMatrix, a: &ActView, rows: Range<usize>, out: &mut [f32]) {
    let (len, nb, bb, cols) = (rows.len(), m.cols / 32, m.kind.block_bytes(), m.cols);
    let (xq, xd, xs) = (a.q.as_ptr(), a.d.as_ptr(), a.dsum.as_ptr());
    for (i, r) in rows.enumerate() {
        let row = m.data.as_ptr().add(r * m.row_bytes);
        let (mut acc, mut acc_off) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
        let mut b = 0;
        while b + 8 <= nb {
            let mut w = [_mm256_setzero_si256(); 8];
            for j in 0..8 {
                w[j] = codes32::<T>(row.add((b + j) * bb)).0;
            }
            // The 8 f16 scales (and minimums at byte 2), gathered into one vector (inserted
            // one by one, not stored and reloaded, which would stall store forwarding).
            let f16s = |off: usize| {
                let h = |j: usize| {
                    let p = row.add((b + j) * bb + off);
                    u16::from_le_bytes([*p, *p.add(1)]) as i16
                };
                _mm256_cvtph_ps(_mm_setr_epi16(h(0), h(1), h(2), h(3), h(4), h(5), h(6), h(7)))
            };
            let dv = f16s(0);
            let cv = match T {
                Q4_0 => _mm256_mul_ps(dv, _mm256_set1_ps(-8.0)),
                Q5_0 => _mm256_mul_ps(dv, _mm256_set1_ps(-16.0)),
                Q4_1 | Q5_1 => f16s(2),
                _ if D::BIASED_Q8 => _mm256_mul_ps(dv, _mm256_set1_ps(-128.0)),
                _ => _mm256_setzero_ps(),
            };
            let mut wabs = w;
            if T == Q8_0 {
                for j in 0..8 {
                    // VNNI: `w + 128` as unsigned codes, `-128 d * dx * sum(xq)` as the offset;
                    // AVX2 (`maddubs` would saturate on those): `|w|` times `x` signed like `w`.
                    wabs[j] = if D::BIASED_Q8 { _mm256_xor_si256(w[j], _mm256_set1_epi8(-128)) } else { _mm256_sign_epi8(w[j], w[j]) };
                }
            }
            for k in 0..N {
                let x = xq.add(k * cols + b * 32);
                let mut p = [_mm256_setzero_si256(); 8];
                for j in 0..8 {
                    p[j] = if T == Q8_0 && D::BIASED_Q8 {
                        D::dp(_mm256_setzero_si256(), wabs[j], _mm256_loadu_si256(x.add(32 * j) as *const __m256i))
                    } else {
                        idot32::<D, T>(w[j], wabs[j], x.add(32 * j))
                    };
                }
                let s = _mm256_mul_ps(dv, _mm256_loadu_ps(xd.add(k * nb + b)));
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(p)), s, acc[k]);
                if T != Q8_0 || D::BIASED_Q8 {
                    acc_off[k] = _mm256_fmadd_ps(cv, _mm256_loadu_ps(xs.add(k * nb + b)), acc_off[k]);
                }
            }
            b += 8;
        }
        let mut tail = [_mm256_setzero_ps(); N];
        let mut off = [0f32; N];
        while b < nb {
            block32::<D, N, T>(row.add(b * bb), b, a, &mut tail, &mut off);
            b += 1;
        }
        for k in 0..N {
            out[k * len + i] = hsum(_mm256_add_ps(_mm256_add_ps(acc[k], acc_off[k]), tail[k])) + off[k];
        }
    }
}

/// [`super::quantize_blocks`] compiled for AVX2 (vectorized; the same operations, so the same
/// results).
///
/// # Safety
/// The CPU must run the AVX2 level.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_blocks_avx2(x: &[f32], bs: usize, a: &mut Activations) {
    super::quantize_blocks(x, bs, a)
}

/// [`super::QuantMatrix::dot_rows`] for the 32-element types over the interleaved activations
/// ([`Activations`]' `inter_*` fields, made on AVX-512 CPUs for [`super::INTERLEAVE_MIN_ROWS`]
/// or more rows); `false` for
/// other types (the caller runs the per-row kernels).
pub(crate) fn dot_interleaved(m: &QuantMatrix, a: &Activations, rows: Range<usize>, out: &mut [f32]) -> bool {
    type Kernel = unsafe fn(&QuantMatrix, &Activations, Range<usize>, &mut [f32]);
    let f: Kernel = match m.kind {
        GgmlType::Q4_0 => v4i::inter::<Q4_0>,
        GgmlType::Q4_1 => v4i::inter::<Q4_1>,
        GgmlType::Q5_0 => v4i::inter::<Q5_0>,
        GgmlType::Q5_1 => v4i::inter::<Q5_1>,
        GgmlType::Q8_0 => v4i::inter::<Q8_0>,
        _ => return false,
    };
    // SAFETY: the caller (`dot_rows_at`) checked that this CPU runs the AVX-512 level, the
    // geometry of `rows` and `out`, and that `a` has the interleaved form for `m.cols` columns.
    unsafe { f(m, a, rows, out) };
    true
}

mod v4i {
    use super::*;

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn inter<const T: u32>(m: &QuantMatrix, a: &Activations, rows: Range<usize>, out: &mut [f32]) {
        super::inter16::<T>(m, a, rows, out)
    }
}

/// Weight rows per pass of [`inter16`].
const INTER_ROWS: usize = 8;

/// The interleaved kernel: `INTER_ROWS` weight rows at a time are decoded into unsigned codes
/// `u` (Q8_0 biased by 128) and their block scales `d` (Q4_1 / Q5_1: and minimums `m`); then
/// for each group of 16 activation rows, 4 codes of a weight row are broadcast to every lane
/// and `vpdpbusd` takes them against the same 4 codes of 16 rows, so after a block's 8 steps
/// each lane holds one row's exact integer block sum `sum(u * xq)`. The symmetric types start
/// that sum at `-bias * sum(xq)` (bias 8, 16, 128), which makes it exactly `sum(q * xq)` for the
/// signed codes `q`. Per block and weight row: `acc += float(isum) * (d * dx)` (Q4_1 / Q5_1:
/// then `acc += m * dx * sum(xq)`), one `f32` lane per activation row, blocks in order.
#[inline(always)]
unsafe fn inter16<const T: u32>(m: &QuantMatrix, a: &Activations, rows: Range<usize>, out: &mut [f32]) {
    const G: usize = super::GROUP_ROWS;
    let (len, nb, bb, cols) = (rows.len(), m.cols / 32, m.kind.block_bytes(), m.cols);
    let groups = a.rows.div_ceil(G);
    let (xq, xd, xsum) = (a.inter_q.as_ptr(), a.inter_d.as_ptr(), a.inter_sum.as_ptr());
    let bias: i32 = match T {
        Q4_0 => 8,
        Q5_0 => 16,
        Q8_0 => 128,
        _ => 0,
    };
    let with_min = T == Q4_1 || T == Q5_1;
    let mut codes = vec![0u8; INTER_ROWS * cols];
    let mut dsc = vec![0f32; INTER_ROWS * nb];
    let mut msc = vec![0f32; INTER_ROWS * nb];
    // Activation groups per pass over the weights: about 256 KiB of codes, so they stay in L2.
    let per_pass = ((256 << 10) / (nb * 32 * G)).max(1);
    let mut lanes = [0f32; G];
    for g0 in (0..groups).step_by(per_pass) {
        let g1 = (g0 + per_pass).min(groups);
        let mut r0 = rows.start;
        while r0 < rows.end {
            let rm = (rows.end - r0).min(INTER_ROWS);
            for t in 0..INTER_ROWS {
                let (c, d, mn) = (&mut codes[t * cols..(t + 1) * cols], &mut dsc[t * nb..(t + 1) * nb], &mut msc[t * nb..(t + 1) * nb]);
                if t >= rm {
                    // Padding rows: zero codes and scales (their results are not written).
                    c.fill(0);
                    d.fill(0.0);
                    mn.fill(0.0);
                    continue;
                }
                let row = m.data.as_ptr().add((r0 + t) * m.row_bytes);
                for b in 0..nb {
                    let (w, db, cb) = codes32::<T>(row.add(b * bb));
                    let w = if T == Q8_0 { _mm256_xor_si256(w, _mm256_set1_epi8(-128)) } else { w };
                    _mm256_storeu_si256(c.as_mut_ptr().add(32 * b) as *mut __m256i, w);
                    d[b] = db;
                    mn[b] = cb;
                }
            }
            let (cp, dp, mp) = (codes.as_ptr(), dsc.as_ptr(), msc.as_ptr());
            for g in g0..g1 {
                let mut acc = [_mm512_setzero_ps(); INTER_ROWS];
                for b in 0..nb {
                    let at = (g * nb + b) * G;
                    let xb = xq.add(at * 32);
                    let sums = _mm512_loadu_si512(xsum.add(at) as *const _);
                    let start = _mm512_mullo_epi32(sums, _mm512_set1_epi32(-bias));
                    let mut isum = [start; INTER_ROWS];
                    for j in 0..8 {
                        let xv = _mm512_loadu_si512(xb.add(64 * j) as *const _);
                        for (t, s) in isum.iter_mut().enumerate() {
                            let w = std::ptr::read_unaligned(cp.add(t * cols + 32 * b + 4 * j) as *const i32);
                            *s = _mm512_dpbusd_epi32(*s, _mm512_set1_epi32(w), xv);
                        }
                    }
                    let dxv = _mm512_loadu_ps(xd.add(at));
                    for t in 0..INTER_ROWS {
                        let s = _mm512_mul_ps(dxv, _mm512_set1_ps(*dp.add(t * nb + b)));
                        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), s, acc[t]);
                    }
                    if with_min {
                        // `dx * sum(xq)`, as `quantize_blocks` computes `dsum`.
                        let dsv = _mm512_mul_ps(dxv, _mm512_cvtepi32_ps(sums));
                        for t in 0..INTER_ROWS {
                            acc[t] = _mm512_fmadd_ps(_mm512_set1_ps(*mp.add(t * nb + b)), dsv, acc[t]);
                        }
                    }
                }
                let valid = (a.rows - g * G).min(G);
                for t in 0..rm {
                    _mm512_storeu_ps(lanes.as_mut_ptr(), acc[t]);
                    let i = r0 + t - rows.start;
                    for (k, &v) in lanes[..valid].iter().enumerate() {
                        out[(g * G + k) * len + i] = v;
                    }
                }
            }
            r0 += rm;
        }
    }
}

/// The minimums of a Q4_K / Q5_K super-block, each twice (a group of 32 is two groups of 16 of
/// `bsums`), as 16 `i16`.
#[inline(always)]
unsafe fn mins16(mn: &[u8; 8]) -> __m256i {
    let mn8 = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr() as *const __m128i));
    _mm256_set_m128i(_mm_unpackhi_epi16(mn8, mn8), _mm_unpacklo_epi16(mn8, mn8))
}

/// Codes `64c..64c + 64` of a Q4_K (`Q5 = false`) or Q5_K super-block: the low and high
/// halves (groups `2c` and `2c + 1`). `qs` is the packed nibbles, `qh` the 32 high-bit bytes.
#[inline(always)]
unsafe fn codes_k4<const Q5: bool>(qs: *const u8, qh: __m256i, c: usize) -> (__m256i, __m256i) {
    let m4 = _mm256_set1_epi8(15);
    let v = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
    let (mut lo, mut hi) = (_mm256_and_si256(v, m4), _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
    if Q5 {
        // Bit g of qh[l] is bit 4 of code 32g + l: bits 2c and 2c + 1 here, moved to bit 4.
        let b16 = _mm256_set1_epi8(16);
        let sh = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32));
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(sh, 4), b16));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(sh, 3), b16));
    }
    (lo, hi)
}

/// Q4_K / Q5_K, 256-bit: per super-block, 4 pairs of vectors of 32 codes (8 groups of 32).
#[inline(always)]
unsafe fn q4k<const N: usize, const Q5: bool>(m: &QuantMatrix, a: &ActView, rows: Range<usize>, out: &mut [f32]) {
    let (len, nb, cols, bb) = (rows.len(), m.cols / 256, m.cols, m.kind.block_bytes());
    let (xq, xd, xb) = (a.q.as_ptr(), a.d.as_ptr(), a.bsums.as_ptr());
    for (i, r) in rows.enumerate() {
        let row = m.data.as_ptr().add(r * m.row_bytes);
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            let blk = row.add(b * bb);
            let (d, dmin) = (f16p(blk), f16p(blk.add(2)));
            let (s, mn) = scale_min_k4(std::slice::from_raw_parts(blk.add(4), 12));
            let (qh, qs) = if Q5 { (_mm256_loadu_si256(blk.add(16) as *const __m256i), blk.add(48)) } else { (_mm256_setzero_si256(), blk.add(16)) };
            let mut isum = [_mm256_setzero_si256(); N];
            for c in 0..4 {
                let (lo, hi) = codes_k4::<Q5>(qs, qh, c);
                let (slo, shi) = (_mm256_set1_epi16(s[2 * c] as i16), _mm256_set1_epi16(s[2 * c + 1] as i16));
                for k in 0..N {
                    let x = xq.add(k * cols + b * 256 + 64 * c);
                    let plo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256(x as *const __m256i));
                    let phi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256(x.add(32) as *const __m256i));
                    isum[k] = _mm256_add_epi32(isum[k], _mm256_add_epi32(_mm256_madd_epi16(plo, slo), _mm256_madd_epi16(phi, shi)));
                }
            }
            let mn16 = mins16(&mn);
            for k in 0..N {
                let bs = _mm256_loadu_si256(xb.add((k * nb + b) * 16) as *const __m256i);
                let msum = _mm256_madd_epi16(bs, mn16);
                let dx = *xd.add(k * nb + b);
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[k]), _mm256_set1_ps(d * dx), acc[k]);
                acc[k] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(dmin * dx), acc[k]);
            }
        }
        for k in 0..N {
            out[k * len + i] = hsum(acc[k]);
        }
    }
}

/// `[a; 8] ++ [b; 8]` as `i16`: the scales of two groups of 16 codes, matching the lanes of
/// `maddubs` over 32 codes.
#[inline(always)]
unsafe fn two_scales(a: i16, b: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(b), _mm_set1_epi16(a))
}

/// `v >> n` per 16-bit lane, `n` not a constant.
#[inline(always)]
unsafe fn srl16(v: __m256i, n: usize) -> __m256i {
    _mm256_srl_epi16(v, _mm_cvtsi32_si128(n as i32))
}

/// Q2_K and Q3_K (`Q3 = true`), 256-bit: per super-block, 8 vectors of 32 two-bit codes (Q3_K:
/// plus the high bit from `hmask`, biased by 4), two groups of 16 each.
#[inline(always)]
unsafe fn q23k<const N: usize, const Q3: bool>(m: &QuantMatrix, a: &ActView, rows: Range<usize>, out: &mut [f32]) {
    let (len, nb, cols, bb) = (rows.len(), m.cols / 256, m.cols, m.kind.block_bytes());
    let (xq, xd, xb) = (a.q.as_ptr(), a.d.as_ptr(), a.bsums.as_ptr());
    let (m3, one) = (_mm256_set1_epi8(3), _mm256_set1_epi8(1));
    for (i, r) in rows.enumerate() {
        let row = m.data.as_ptr().add(r * m.row_bytes);
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            let blk = row.add(b * bb);
            // Group scales (Q2_K: low nibbles, minimums high nibbles; Q3_K: 6-bit signed).
            let mut sc = [0i16; 16];
            let (qs, d, dmin, corr16);
            if Q3 {
                let s3 = scales_q3k(std::slice::from_raw_parts(blk.add(96), 12));
                for g in 0..16 {
                    sc[g] = s3[g] as i16;
                }
                qs = blk.add(32);
                d = f16p(blk.add(108));
                dmin = 0.0;
                // The bias of 4 per code: 4 * sum_g sc[g] * bsum[g].
                corr16 = _mm256_slli_epi16(_mm256_loadu_si256(sc.as_ptr() as *const __m256i), 2);
            } else {
                for g in 0..16 {
                    sc[g] = (*blk.add(g) & 15) as i16;
                }
                qs = blk.add(16);
                d = f16p(blk.add(80));
                dmin = f16p(blk.add(82));
                let raw = _mm_loadu_si128(blk as *const __m128i);
                corr16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(15)));
            }
            let hm = if Q3 { _mm256_loadu_si256(blk as *const __m256i) } else { _mm256_setzero_si256() };
            let mut isum = [_mm256_setzero_si256(); N];
            for h in 0..2 {
                let v = _mm256_loadu_si256(qs.add(32 * h) as *const __m256i);
                for sh in 0..4 {
                    let mut q = _mm256_and_si256(srl16(v, 2 * sh), m3);
                    if Q3 {
                        let hb = _mm256_and_si256(srl16(hm, 4 * h + sh), one);
                        q = _mm256_or_si256(q, _mm256_slli_epi16(hb, 2));
                    }
                    let g = 8 * h + 2 * sh;
                    let sv = two_scales(sc[g], sc[g + 1]);
                    for k in 0..N {
                        let x = _mm256_loadu_si256(xq.add(k * cols + b * 256 + 128 * h + 32 * sh) as *const __m256i);
                        isum[k] = _mm256_add_epi32(isum[k], _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), sv));
                    }
                }
            }
            for k in 0..N {
                let bs = _mm256_loadu_si256(xb.add((k * nb + b) * 16) as *const __m256i);
                let corr = _mm256_madd_epi16(bs, corr16);
                let dx = *xd.add(k * nb + b);
                if Q3 {
                    let v = _mm256_sub_epi32(isum[k], corr);
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(d * dx), acc[k]);
                } else {
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[k]), _mm256_set1_ps(d * dx), acc[k]);
                    acc[k] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(corr), _mm256_set1_ps(dmin * dx), acc[k]);
                }
            }
        }
        for k in 0..N {
            out[k * len + i] = hsum(acc[k]);
        }
    }
}

/// `lo ++ hi` as one 512-bit vector.
#[inline(always)]
unsafe fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
}

/// Q4_K / Q5_K, 512-bit: per super-block, 4 vectors of 64 codes (groups `2c`, `2c + 1`).
#[inline(always)]
unsafe fn q4k512<const N: usize, const Q5: bool>(m: &QuantMatrix, a: &ActView, rows: Range<usize>, out: &mut [f32]) {
    let (len, nb, cols, bb) = (rows.len(), m.cols / 256, m.cols, m.kind.block_bytes());
    let (xq, xd, xb) = (a.q.as_ptr(), a.d.as_ptr(), a.bsums.as_ptr());
    for (i, r) in rows.enumerate() {
        let row = m.data.as_ptr().add(r * m.row_bytes);
        let (mut acc, mut acc_min) = ([_mm512_setzero_ps(); N], [_mm256_setzero_ps(); N]);
        for b in 0..nb {
            let blk = row.add(b * bb);
            let (d, dmin) = (f16p(blk), f16p(blk.add(2)));
            let (s, mn) = scale_min_k4(std::slice::from_raw_parts(blk.add(4), 12));
            let (qh, qs) = if Q5 { (_mm256_loadu_si256(blk.add(16) as *const __m256i), blk.add(48)) } else { (_mm256_setzero_si256(), blk.add(16)) };
            let mut isum = [_mm512_setzero_si512(); N];
            for c in 0..4 {
                let (lo, hi) = codes_k4::<Q5>(qs, qh, c);
                let w = join(lo, hi);
                let sv = join(_mm256_set1_epi16(s[2 * c] as i16), _mm256_set1_epi16(s[2 * c + 1] as i16));
                for k in 0..N {
                    let x = _mm512_loadu_si512(xq.add(k * cols + b * 256 + 64 * c) as *const _);
                    isum[k] = _mm512_add_epi32(isum[k], _mm512_madd_epi16(_mm512_maddubs_epi16(w, x), sv));
                }
            }
            let mn16 = mins16(&mn);
            for k in 0..N {
                let bs = _mm256_loadu_si256(xb.add((k * nb + b) * 16) as *const __m256i);
                let msum = _mm256_madd_epi16(bs, mn16);
                let dx = *xd.add(k * nb + b);
                acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[k]), _mm512_set1_ps(d * dx), acc[k]);
                acc_min[k] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_set1_ps(dmin * dx), acc_min[k]);
            }
        }
        for k in 0..N {
            out[k * len + i] = _mm512_reduce_add_ps(acc[k]) + hsum(acc_min[k]);
        }
    }
}

/// Q6_K's codes (`0..64`, biased by 32) of half `h` of the super-block at `blk`: 4 vectors
/// of 32, codes `128h + 32j ..` in vector `j`.
#[inline(always)]
unsafe fn q6k_codes(blk: *const u8, h: usize) -> [__m256i; 4] {
    let (m4, m30) = (_mm256_set1_epi8(15), _mm256_set1_epi8(0x30));
    let ql0 = _mm256_loadu_si256(blk.add(64 * h) as *const __m256i);
    let ql1 = _mm256_loadu_si256(blk.add(64 * h + 32) as *const __m256i);
    let qh = _mm256_loadu_si256(blk.add(128 + 32 * h) as *const __m256i);
    [
        _mm256_or_si256(_mm256_and_si256(ql0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30)),
        _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), _mm256_and_si256(qh, m30)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30)),
    ]
}

/// Q6_K: per super-block, 8 vectors of 32 codes (`0..64`, biased by 32), two groups each.
#[inline(always)]
unsafe fn q6k<const N: usize>(m: &QuantMatrix, a: &ActView, rows: Range<usize>, out: &mut [f32]) {
    let (len, nb, cols) = (rows.len(), m.cols / 256, m.cols);
    let (xq, xd, xb) = (a.q.as_ptr(), a.d.as_ptr(), a.bsums.as_ptr());
    for (i, r) in rows.enumerate() {
        let row = m.data.as_ptr().add(r * m.row_bytes);
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            let blk = row.add(b * 210);
            let d = f16p(blk.add(208));
            let sc = blk.add(192) as *const i8;
            let mut isum = [_mm256_setzero_si256(); N];
            for h in 0..2 {
                let q = q6k_codes(blk, h);
                for (j, &qj) in q.iter().enumerate() {
                    // Codes 32e..32e+32 of this half: groups 2e and 2e + 1 (low and high 128 bits).
                    let e = 4 * h + j;
                    let sv = _mm256_set_m128i(_mm_set1_epi16(*sc.add(2 * e + 1) as i16), _mm_set1_epi16(*sc.add(2 * e) as i16));
                    for k in 0..N {
                        let x = _mm256_loadu_si256(xq.add(k * cols + b * 256 + 32 * e) as *const __m256i);
                        isum[k] = _mm256_add_epi32(isum[k], _mm256_madd_epi16(_mm256_maddubs_epi16(qj, x), sv));
                    }
                }
            }
            // The bias of 32: subtract 32 * sum_g sc[g] * bsum[g].
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc as *const __m128i));
            for k in 0..N {
                let bs = _mm256_loadu_si256(xb.add((k * nb + b) * 16) as *const __m256i);
                let bias = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5);
                let v = _mm256_sub_epi32(isum[k], bias);
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(d * *xd.add(k * nb + b)), acc[k]);
            }
        }
        for k in 0..N {
            out[k * len + i] = hsum(acc[k]);
        }
    }
}

/// `permutexvar_epi16` indices: lane `L` takes group `g0 + L / 8` (4 groups of 16 codes, whose
/// `maddubs` pairs are 8 lanes each).
#[inline(always)]
unsafe fn group_spread(g0: i16) -> __m512i {
    let mut idx = [0i16; 32];
    for (l, v) in idx.iter_mut().enumerate() {
        *v = g0 + (l / 8) as i16;
    }
    _mm512_loadu_si512(idx.as_ptr() as *const _)
}

/// Q6_K, 512-bit: per half super-block, 2 vectors of 64 codes (4 groups of 16 each).
#[inline(always)]
unsafe fn q6k512<const N: usize>(m: &QuantMatrix, a: &ActView, rows: Range<usize>, out: &mut [f32]) {
    let (len, nb, cols) = (rows.len(), m.cols / 256, m.cols);
    let (xq, xd, xb) = (a.q.as_ptr(), a.d.as_ptr(), a.bsums.as_ptr());
    let (m4, m30) = (_mm512_set1_epi8(15), _mm512_set1_epi8(0x30));
    // High bits: codes 0..32 of a half take qh bits 0-1 (<< 4), 32..64 bits 2-3 (<< 2),
    // 64..96 bits 4-5 (as they are), 96..128 bits 6-7 (>> 2).
    let shl_lo = join(_mm256_set1_epi16(4), _mm256_set1_epi16(2));
    let shr_hi = join(_mm256_set1_epi16(0), _mm256_set1_epi16(2));
    let spread = [group_spread(0), group_spread(4), group_spread(8), group_spread(12)];
    for (i, r) in rows.enumerate() {
        let row = m.data.as_ptr().add(r * m.row_bytes);
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..nb {
            let blk = row.add(b * 210);
            let d = f16p(blk.add(208));
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192) as *const __m128i));
            let sc = _mm512_castsi256_si512(sc16);
            let mut isum = [_mm512_setzero_si512(); N];
            for h in 0..2 {
                let ql = _mm512_loadu_si512(blk.add(64 * h) as *const _);
                let qh = _mm256_loadu_si256(blk.add(128 + 32 * h) as *const __m256i);
                let qh2 = join(qh, qh);
                let qlo = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_and_si512(_mm512_sllv_epi16(qh2, shl_lo), m30));
                let qhi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), _mm512_and_si512(_mm512_srlv_epi16(qh2, shr_hi), m30));
                let slo = _mm512_permutexvar_epi16(spread[2 * h], sc);
                let shi = _mm512_permutexvar_epi16(spread[2 * h + 1], sc);
                for k in 0..N {
                    let x = xq.add(k * cols + b * 256 + 128 * h);
                    let plo = _mm512_madd_epi16(_mm512_maddubs_epi16(qlo, _mm512_loadu_si512(x as *const _)), slo);
                    let phi = _mm512_madd_epi16(_mm512_maddubs_epi16(qhi, _mm512_loadu_si512(x.add(64) as *const _)), shi);
                    isum[k] = _mm512_add_epi32(isum[k], _mm512_add_epi32(plo, phi));
                }
            }
            for k in 0..N {
                let bs = _mm256_loadu_si256(xb.add((k * nb + b) * 16) as *const __m256i);
                let bias = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5);
                let v = _mm512_sub_epi32(isum[k], _mm512_inserti64x4(_mm512_setzero_si512(), bias, 0));
                acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(d * *xd.add(k * nb + b)), acc[k]);
            }
        }
        for k in 0..N {
            out[k * len + i] = _mm512_reduce_add_ps(acc[k]);
        }
    }
}

/// 8 weights of a float row at `p`, as `f32`.
#[inline(always)]
unsafe fn load8<const T: u32>(p: *const u8) -> __m256 {
    match T {
        F32 => _mm256_loadu_ps(p as *const f32),
        F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
        _ => _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)), 16)),
    }
}

/// F32 / F16 / BF16 rows times `f32` activations, 8 weights converted per step.
#[inline(always)]
unsafe fn float<const N: usize, const T: u32>(m: &QuantMatrix, a: &ActView, rows: Range<usize>, out: &mut [f32]) {
    let (len, cols) = (rows.len(), m.cols);
    let xv = a.values.as_ptr();
    let es = if T == F32 { 4 } else { 2 };
    for (i, r) in rows.enumerate() {
        let row = m.data.as_ptr().add(r * m.row_bytes);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut c = 0;
        while c + 8 <= cols {
            let w = load8::<T>(row.add(c * es));
            for k in 0..N {
                acc[k] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xv.add(k * cols + c)), acc[k]);
            }
            c += 8;
        }
        let mut tail = [0f32; N];
        while c < cols {
            let p = row.add(c * es);
            let w = match T {
                F32 => f32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]),
                F16 => f16p(p),
                _ => f32::from_bits((u16::from_le_bytes([*p, *p.add(1)]) as u32) << 16),
            };
            for k in 0..N {
                tail[k] += w * *xv.add(k * cols + c);
            }
            c += 1;
        }
        for k in 0..N {
            out[k * len + i] = hsum(acc[k]) + tail[k];
        }
    }
}

/// Activation rows per pass of [`tiled`].
const KT_ACT: usize = 8;
/// Weight rows per tile of [`tiled`]: one 512-bit lane each.
const KT_ROWS: usize = 16;

/// [`super::QuantMatrix::dot_rows`] for Q4_K or Q6_K weights and many activation rows on an
/// AVX-512 VNNI CPU (a prefill): the leading `a.rows` rounded down to a multiple of [`KT_ACT`]
/// are computed, and their count returned (0 when it does not apply: another type, fewer than
/// `2 * KT_ACT` activation rows, or `rows` not a multiple of [`KT_ROWS`]); the caller runs the
/// per-row kernels for the rest.
pub(crate) fn tiled(m: &QuantMatrix, a: &Activations, rows: Range<usize>, out: &mut [f32]) -> usize {
    if !matches!(m.kind, GgmlType::Q4_K | GgmlType::Q6_K) || a.rows < 2 * KT_ACT || !rows.len().is_multiple_of(KT_ROWS) || a.q.len() != a.rows * m.cols {
        return 0;
    }
    let done = a.rows / KT_ACT * KT_ACT;
    // The buffers are taken out of the thread-local for the call (a closure would not inherit
    // the kernel's target features).
    let mut bufs = TILE_BUFS.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
    // SAFETY: the caller (`dot_rows_at`) checked that this CPU runs the AVX-512 level (with
    // VNNI), the geometry of `rows` and `out`, and that `a` is in the Q8_K form for `m.cols`.
    unsafe {
        match m.kind {
            GgmlType::Q4_K => v4k::tiled::<8>(m, a, rows, done, out, &mut bufs),
            _ => v4k::tiled::<16>(m, a, rows, done, out, &mut bufs),
        }
    }
    TILE_BUFS.with(|cell| *cell.borrow_mut() = bufs);
    done
}

mod v4k {
    use super::*;

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn tiled<const G: usize>(m: &QuantMatrix, a: &Activations, rows: Range<usize>, done: usize, out: &mut [f32], t: &mut TileBufs) {
        super::tiled_body::<G>(m, a, rows, done, out, t)
    }
}

/// A worker's buffers for [`tiled_body`], kept between calls (a prefill makes hundreds).
#[derive(Default)]
struct TileBufs {
    /// The tile's codes, `[block][4-code step c of 64][row of 16][4 codes]`.
    w: Vec<u8>,
    /// One block of codes of each of the 16 rows, in natural order: `[row][256]`.
    row_codes: Vec<u8>,
    /// Per block and group, the 16 rows' `d * scale`: `[block][group][row]`.
    scale: Vec<f32>,
    /// Q4_K: per block and group, the 16 rows' `dmin * min`.
    min: Vec<f32>,
    /// Per activation row and group: Q4_K, the group's code sum as `f32` bits; Q6_K, `-32`
    /// times it as `i32` bits (the codes' bias of 32 taken off the integer sum).
    act_sum: Vec<u32>,
}

thread_local! {
    static TILE_BUFS: std::cell::RefCell<TileBufs> = std::cell::RefCell::new(TileBufs::default());
}

/// Unpacks block `b` of the 16 weight rows from `r0` into `t.w`, `t.scale` and `t.min`: each
/// row's 256 codes in natural order into `t.row_codes`, then 4 codes (a dword) of each row at a
/// time into one 64-byte line of `t.w` by a 16-lane gather.
#[inline(always)]
unsafe fn unpack_block<const G: usize>(m: &QuantMatrix, r0: usize, b: usize, t: &mut TileBufs) {
    let bb = m.kind.block_bytes();
    let codes = t.row_codes.as_mut_ptr();
    let m4 = _mm256_set1_epi8(15);
    for r in 0..KT_ROWS {
        let blk = m.data.as_ptr().add((r0 + r) * m.row_bytes + b * bb);
        let dst = codes.add(r * 256);
        let at = |g: usize| (b * G + g) * KT_ROWS + r;
        if G == 8 {
            // Q4_K: group g takes the low (g even) or high (g odd) nibbles of bytes 32(g/2)..+32.
            for c in 0..4 {
                let v = _mm256_loadu_si256(blk.add(16 + 32 * c) as *const __m256i);
                _mm256_storeu_si256(dst.add(64 * c) as *mut __m256i, _mm256_and_si256(v, m4));
                _mm256_storeu_si256(dst.add(64 * c + 32) as *mut __m256i, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
            }
            let (d, dmin) = (f16p(blk), f16p(blk.add(2)));
            let (sc, mn) = scale_min_k4(std::slice::from_raw_parts(blk.add(4), 12));
            for g in 0..8 {
                *t.scale.get_unchecked_mut(at(g)) = d * sc[g] as f32;
                *t.min.get_unchecked_mut(at(g)) = dmin * mn[g] as f32;
            }
        } else {
            // Q6_K: codes 0..64 (biased by 32).
            for h in 0..2 {
                let q = q6k_codes(blk, h);
                for (j, &qj) in q.iter().enumerate() {
                    _mm256_storeu_si256(dst.add(128 * h + 32 * j) as *mut __m256i, qj);
                }
            }
            let (d, sc) = (f16p(blk.add(208)), blk.add(192) as *const i8);
            for g in 0..16 {
                *t.scale.get_unchecked_mut(at(g)) = d * *sc.add(g) as f32;
            }
        }
    }
    let lanes = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(256 / 4));
    let w = t.w.as_mut_ptr().add(b * 64 * KT_ROWS * 4);
    for c in 0..64 {
        let v = _mm512_i32gather_epi32::<4>(lanes, codes.add(4 * c) as *const _);
        _mm512_storeu_si512(w.add(c * KT_ROWS * 4) as *mut _, v);
    }
}

/// The tiled kernel for Q4_K (`G = 8` groups of 32 codes per super-block) and Q6_K (`G = 16`
/// groups of 16). Per tile of [`KT_ROWS`] weight rows, every super-block is unpacked once
/// ([`unpack_block`]): byte codes laid out `[block][4-code step][row][4 codes]` (one 64-byte
/// load holds the same 4 codes of the 16 rows), each row's `d * scale` (Q4_K: and `dmin *
/// min`) per group. Then for each [`KT_ACT`] activation rows, per block and group, 4 activation
/// codes are broadcast to every lane and `vpdpbusd` takes them against the 16 rows' codes:
/// after the group's steps each lane holds one row's exact integer group sum `sum(q * xq)`
/// (Q6_K: started at `-32 * sum(xq)`, the codes' bias). Then in `f32`, one lane per weight
/// row: per group `blk += float(isum) * (d * scale)` (Q4_K: `- (dmin * min) * sum(xq)`), per
/// block `acc += blk * dx`. The integers are those of the per-row kernels; only the `f32` order
/// differs.
#[inline(always)]
unsafe fn tiled_body<const G: usize>(m: &QuantMatrix, a: &Activations, rows: Range<usize>, done: usize, out: &mut [f32], t: &mut TileBufs) {
    let (len, nb, cols, steps) = (rows.len(), m.cols / 256, m.cols, 64 / G);
    t.w.resize(nb * 64 * KT_ROWS * 4, 0);
    t.row_codes.resize(KT_ROWS * 256, 0);
    t.scale.resize(nb * G * KT_ROWS, 0.0);
    t.min.resize(nb * G * KT_ROWS, 0.0);
    // Per activation row and group, from the code sums per 16.
    let per_row = nb * G;
    t.act_sum.clear();
    for bs in a.bsums[..done * (cols / 16)].chunks_exact(cols / 16) {
        if G == 8 {
            t.act_sum.extend(bs.chunks_exact(2).map(|p| ((p[0] as i32 + p[1] as i32) as f32).to_bits()));
        } else {
            t.act_sum.extend(bs.iter().map(|&v| (-32 * v as i32) as u32));
        }
    }
    let (xq, xd, xs) = (a.q.as_ptr(), a.d.as_ptr(), t.act_sum.as_ptr());
    let mut r0 = rows.start;
    while r0 < rows.end {
        for b in 0..nb {
            unpack_block::<G>(m, r0, b, t);
        }
        let (w, sv, mv) = (t.w.as_ptr(), t.scale.as_ptr(), t.min.as_ptr());
        let mut k0 = 0;
        while k0 < done {
            let mut acc = [_mm512_setzero_ps(); KT_ACT];
            for b in 0..nb {
                let mut blk = [_mm512_setzero_ps(); KT_ACT];
                for g in 0..G {
                    let sum = |k: usize| *xs.add((k0 + k) * per_row + b * G + g);
                    let mut isum = [_mm512_setzero_si512(); KT_ACT];
                    if G == 16 {
                        for (k, v) in isum.iter_mut().enumerate() {
                            *v = _mm512_set1_epi32(sum(k) as i32);
                        }
                    }
                    for j in 0..steps {
                        let c = g * steps + j;
                        let wv = _mm512_loadu_si512(w.add((b * 64 + c) * KT_ROWS * 4) as *const _);
                        for (k, v) in isum.iter_mut().enumerate() {
                            let x = (xq.add((k0 + k) * cols + b * 256 + 4 * c) as *const i32).read_unaligned();
                            *v = _mm512_dpbusd_epi32(*v, wv, _mm512_set1_epi32(x));
                        }
                    }
                    let s = _mm512_loadu_ps(sv.add((b * G + g) * KT_ROWS));
                    for k in 0..KT_ACT {
                        blk[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[k]), s, blk[k]);
                    }
                    if G == 8 {
                        let mn = _mm512_loadu_ps(mv.add((b * G + g) * KT_ROWS));
                        for (k, v) in blk.iter_mut().enumerate() {
                            *v = _mm512_fnmadd_ps(mn, _mm512_set1_ps(f32::from_bits(sum(k))), *v);
                        }
                    }
                }
                for k in 0..KT_ACT {
                    acc[k] = _mm512_fmadd_ps(blk[k], _mm512_set1_ps(*xd.add((k0 + k) * nb + b)), acc[k]);
                }
            }
            for (k, v) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add((k0 + k) * len + (r0 - rows.start)), *v);
            }
            k0 += KT_ACT;
        }
        r0 += KT_ROWS;
    }
}
