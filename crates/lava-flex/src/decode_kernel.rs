//! Decode attention on AVX-512, one kernel body for K/V stored as f32 or as
//! Q8_0 (the `Rows` trait of the x86 module says how a storage is read):
//! per block of one KV head's rows, each key row is prepared once for all the
//! query heads that share it, 16 rows' logits are summed in one transpose, and
//! the weighted values are added in register passes into several heads'
//! accumulators at once, so each value row is read once per pass.
//!
//! Q8_0 is read where it lies and scored in the integer domain (AVX-512
//! VNNI), as llama.cpp's CPU flash attention does for a Q8_0 K: each query
//! head is quantized to Q8_0 once per call ([`QueryCodes`]), a key's logit is
//! the sum over its 32-value blocks of `d_q * d_k * (q codes . k codes)`, the
//! integer dot products by `vpdpbusd` (64 multiply-adds per instruction). The
//! values are widened to f32 in registers, 32 columns (one Q8_0 block) at a
//! time. The widening path of [`crate::stored`] (dequantize, then the f32
//! kernel) is the fallback on other CPUs and head dims; this path differs from
//! it by the query's quantization alone (a relative error of about 1/254 of
//! each 32-value block's largest query element, in each logit's terms).

use half::f16;

use crate::attention::{Partial, Segment};

/// Values per Q8_0 block.
const QK8_0: usize = 32;

/// K or V rows as Q8_0: `codes` `[R, D]`, one f16 scale per 32 codes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Q8Rows<'a> {
    pub(crate) codes: &'a [i8],
    pub(crate) scales: &'a [f16],
}

/// The query heads `[H_q, D]`, times the softmax scale `1/sqrt(D)`, as Q8_0
/// (ggml's rounding: per 32 values `d = max|x| / 127`, codes `round(x / d)`),
/// the codes biased by 128 to unsigned bytes (`vpdpbusd` multiplies unsigned
/// by signed bytes; the bias is taken out again with `128 * sum(k codes)`).
pub(crate) struct QueryCodes {
    /// `code + 128`, `[H_q, D]`.
    biased: Vec<u8>,
    /// `d` of each block, repeated 8 times, `[H_q, D / 4]`: the lanes of
    /// `vpdpbusd`'s product of 64 codes (lanes 0..8 hold a vector's first
    /// block, 8..16 its second).
    lanes: Vec<f32>,
}

impl QueryCodes {
    /// `q` `[H_q, D]` (`D` a multiple of 32) times `scale`, quantized.
    pub(crate) fn new(q: &[f32], h_q: usize, d: usize, scale: f32) -> Self {
        let mut biased = vec![0u8; h_q * d];
        let mut lanes = vec![0f32; h_q * d / 4];
        for ((x, c), s) in q[..h_q * d].chunks_exact(QK8_0).zip(biased.chunks_exact_mut(QK8_0)).zip(lanes.chunks_exact_mut(8)) {
            let amax = x.iter().fold(0f32, |m, v| m.max((v * scale).abs()));
            let dq = amax / 127.0;
            let inv = if dq == 0.0 { 0.0 } else { 1.0 / dq };
            for (c, &v) in c.iter_mut().zip(x) {
                *c = ((v * scale * inv).round().clamp(-127.0, 127.0) as i32 + 128) as u8;
            }
            s.fill(dq);
        }
        Self { biased, lanes }
    }
}

/// Whether this CPU runs [`partial`].
pub(crate) fn available(d: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        matches!(d, 64 | 128 | 256)
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = d;
        false
    }
}

/// One part's softmax sums (see [`Partial`]) of the query heads over the
/// rows `segments` (query head `h` reads KV head `h / g`). The caller checked
/// [`available`], that every segment lies in both storages and that `q`
/// holds `H_q` heads of `d`.
pub(crate) fn partial(q: &QueryCodes, h_q: usize, g: usize, d: usize, keys: Q8Rows<'_>, values: Q8Rows<'_>, segments: &[Segment]) -> Partial {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the caller checked `available(d)`: the CPU has the features.
        unsafe {
            match d {
                64 => return x86::partial::<64, 1>(q, h_q, g, keys, values, segments),
                128 => return x86::partial::<128, 2>(q, h_q, g, keys, values, segments),
                256 => return x86::partial::<256, 4>(q, h_q, g, keys, values, segments),
                _ => {}
            }
        }
    }
    let _ = (q, h_q, g, d, keys, values, segments);
    unreachable!("q8_attention::partial without `available`")
}

/// Whether this CPU runs [`partial_f32`] for head dim `d`.
pub(crate) fn available_f32(d: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        matches!(d, 64 | 128 | 256) && std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = d;
        false
    }
}

/// [`partial`] over f32 K/V (`[R, D]`), the query scaled by `scale` but not
/// quantized. The caller checked [`available_f32`] and the segments.
#[allow(clippy::too_many_arguments)]
pub(crate) fn partial_f32(q: &[f32], h_q: usize, g: usize, d: usize, scale: f32, keys: &[f32], values: &[f32], segments: &[Segment]) -> Partial {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the caller checked `available_f32(d)`: the CPU has the features.
        unsafe {
            match d {
                64 => return x86::partial_f32::<64>(q, h_q, g, scale, keys, values, segments),
                128 => return x86::partial_f32::<128>(q, h_q, g, scale, keys, values, segments),
                256 => return x86::partial_f32::<256>(q, h_q, g, scale, keys, values, segments),
                _ => {}
            }
        }
    }
    let _ = (q, h_q, g, d, scale, keys, values, segments);
    unreachable!("decode_kernel::partial_f32 without `available_f32`")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Q8Rows, QueryCodes, QK8_0};
    use crate::attention::{softmax_block, strided_blocks, Partial, Segment, DECODE_BLOCK};

    /// Rows between a row's prefetch and its use.
    const AHEAD: usize = 32;

    /// Query heads whose value accumulators are held in registers at once.
    const HEADS: usize = 8;

    /// `y` with `y[i] = sum of the lanes of x[i]`.
    #[inline(always)]
    unsafe fn sum16(x: &[__m512; 16]) -> __m512 {
        // Pairs within each 128-bit lane: [x0+x2, y0+y2, x1+x3, y1+y3].
        let a: [__m512; 8] = std::array::from_fn(|k| _mm512_add_ps(_mm512_unpacklo_ps(x[2 * k], x[2 * k + 1]), _mm512_unpackhi_ps(x[2 * k], x[2 * k + 1])));
        // Each 128-bit lane: its part of the sums of 4 inputs.
        let b: [__m512; 4] = std::array::from_fn(|k| _mm512_add_ps(_mm512_shuffle_ps::<0x44>(a[2 * k], a[2 * k + 1]), _mm512_shuffle_ps::<0xEE>(a[2 * k], a[2 * k + 1])));
        // The 4 lanes of each added.
        let e0 = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(b[0], b[1]), _mm512_shuffle_f32x4::<0xEE>(b[0], b[1]));
        let e1 = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(b[2], b[3]), _mm512_shuffle_f32x4::<0xEE>(b[2], b[3]));
        _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(e0, e1), _mm512_shuffle_f32x4::<0xDD>(e0, e1))
    }

    /// The `D / 32` f16 scales at `p` as f32 in the low lanes.
    #[inline(always)]
    unsafe fn row_scales<const D: usize>(p: *const half::f16) -> __m512 {
        let bits = match D / QK8_0 {
            2 => _mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)),
            4 => _mm_loadl_epi64(p as *const __m128i),
            _ => _mm_loadu_si128(p as *const __m128i),
        };
        _mm512_castps256_ps512(_mm256_cvtph_ps(bits))
    }

    #[inline(always)]
    unsafe fn f16_to_f32(x: half::f16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(x.to_bits() as i32)))
    }

    /// How one KV head's rows are stored, as the kernel body reads them: a
    /// key row's per-lane logit terms for one query head (their lane sum is
    /// the scaled logit), and 32 columns of a value row as f32.
    pub(super) trait Rows {
        /// What is prepared once per key row for all its query heads.
        type Key: Copy;
        /// Whether a pass of the weighted values takes whole rows (for up to
        /// `24 / (D / 16)` heads, each value row read in full once per pass,
        /// as the hardware prefetcher likes) or 32 columns (one Q8_0 block,
        /// for up to [`HEADS`] heads, each row widened once per head group).
        const WHOLE_ROWS: bool;
        unsafe fn key(&self, r: usize) -> Self::Key;
        unsafe fn terms(&self, key: &Self::Key, h: usize) -> __m512;
        unsafe fn value32(&self, r: usize, c: usize) -> (__m512, __m512);
        /// Asks for the key and value rows `AHEAD` rows after `r` to be
        /// brought into cache (the rows of a Q8_0 cache come from four streams,
        /// more than the hardware prefetcher keeps ahead of).
        #[inline(always)]
        unsafe fn prefetch_ahead(&self, _r: usize) {}
        fn rows(&self) -> usize;
    }

    /// Q8_0 K/V and the query as Q8_0 codes: `vpdpbusd` (AVX-512 VNNI).
    pub(super) struct Q8<'a, const D: usize, const L: usize> {
        q: &'a QueryCodes,
        pick: [__m512i; L],
        keys: Q8Rows<'a>,
        values: Q8Rows<'a>,
    }

    impl<'a, const D: usize, const L: usize> Q8<'a, D, L> {
        #[inline(always)]
        pub(super) unsafe fn new(q: &'a QueryCodes, keys: Q8Rows<'a>, values: Q8Rows<'a>) -> Self {
            let pick = std::array::from_fn(|c| {
                let (lo, hi) = (2 * c as i32, 2 * c as i32 + 1);
                _mm512_set_epi32(hi, hi, hi, hi, hi, hi, hi, hi, lo, lo, lo, lo, lo, lo, lo, lo)
            });
            Self { q, pick, keys, values }
        }
    }

    impl<const D: usize, const L: usize> Rows for Q8<'_, D, L> {
        /// The row's codes, `-128 * (sum of each lane's 4 codes)` (takes the
        /// query's bias out) and its block scales as lanes.
        type Key = ([__m512i; L], [__m512i; L], [__m512; L]);
        const WHOLE_ROWS: bool = false;
        #[inline(always)]
        unsafe fn key(&self, r: usize) -> Self::Key {
            let kc = self.keys.codes.as_ptr().add(r * D);
            let ks = row_scales::<D>(self.keys.scales.as_ptr().add(r * (D / QK8_0)));
            let k: [__m512i; L] = std::array::from_fn(|c| _mm512_loadu_si512(kc.add(64 * c) as *const _));
            let bias = _mm512_set1_epi8(-128); // 0x80: 128 as the unsigned operand
            let unbias = std::array::from_fn(|c| _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, k[c])));
            (k, unbias, std::array::from_fn(|c| _mm512_permutexvar_ps(self.pick[c], ks)))
        }
        #[inline(always)]
        unsafe fn terms(&self, (k, unbias, kd): &Self::Key, h: usize) -> __m512 {
            let qc = self.q.biased.as_ptr().add(h * D);
            let ql = self.q.lanes.as_ptr().add(h * L * 16);
            let mut f = _mm512_setzero_ps();
            for c in 0..L {
                let dot = _mm512_dpbusd_epi32(unbias[c], _mm512_loadu_si512(qc.add(64 * c) as *const _), k[c]);
                f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(kd[c], _mm512_loadu_ps(ql.add(16 * c))), f);
            }
            f
        }
        #[inline(always)]
        unsafe fn value32(&self, r: usize, c: usize) -> (__m512, __m512) {
            let vc = self.values.codes.as_ptr().add(r * D + c * QK8_0);
            let s = _mm512_set1_ps(f16_to_f32(*self.values.scales.get_unchecked(r * (D / QK8_0) + c)));
            let v0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(vc as *const __m128i)));
            let v1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(vc.add(16) as *const __m128i)));
            (_mm512_mul_ps(v0, s), _mm512_mul_ps(v1, s))
        }
        #[inline(always)]
        unsafe fn prefetch_ahead(&self, r: usize) {
            // Wrapping pointer arithmetic: the rows past the end are never read, and a prefetch does not fault.
            let r = r + AHEAD;
            for codes in [self.keys.codes.as_ptr(), self.values.codes.as_ptr()] {
                let c = codes.wrapping_add(r * D) as *const i8;
                for line in (0..D).step_by(64) {
                    _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(line));
                }
            }
            for scales in [self.keys.scales.as_ptr(), self.values.scales.as_ptr()] {
                _mm_prefetch::<_MM_HINT_T0>(scales.wrapping_add(r * (D / QK8_0)) as *const i8);
            }
        }
        fn rows(&self) -> usize {
            (self.keys.codes.len().min(self.values.codes.len()) / D).min(self.keys.scales.len().min(self.values.scales.len()) * QK8_0 / D)
        }
    }

    /// f32 K/V and the query scaled once (AVX-512F).
    pub(super) struct F32<'a, const D: usize> {
        q: Vec<f32>,
        keys: &'a [f32],
        values: &'a [f32],
    }

    impl<'a, const D: usize> F32<'a, D> {
        pub(super) fn new(q: &[f32], h_q: usize, scale: f32, keys: &'a [f32], values: &'a [f32]) -> Self {
            Self { q: q[..h_q * D].iter().map(|&x| x * scale).collect(), keys, values }
        }
    }

    impl<const D: usize> Rows for F32<'_, D> {
        type Key = *const f32;
        const WHOLE_ROWS: bool = true;
        #[inline(always)]
        unsafe fn key(&self, r: usize) -> *const f32 {
            self.keys.as_ptr().add(r * D)
        }
        #[inline(always)]
        unsafe fn terms(&self, &k: &*const f32, h: usize) -> __m512 {
            // Two interleaved chains of fused multiply-adds.
            let q = self.q.as_ptr().add(h * D);
            let mut t0 = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_loadu_ps(k));
            let mut t1 = _mm512_mul_ps(_mm512_loadu_ps(q.add(16)), _mm512_loadu_ps(k.add(16)));
            for c in (32..D).step_by(32) {
                t0 = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(c)), _mm512_loadu_ps(k.add(c)), t0);
                t1 = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(c + 16)), _mm512_loadu_ps(k.add(c + 16)), t1);
            }
            _mm512_add_ps(t0, t1)
        }
        #[inline(always)]
        unsafe fn value32(&self, r: usize, c: usize) -> (__m512, __m512) {
            let v = self.values.as_ptr().add(r * D + c * 32);
            (_mm512_loadu_ps(v), _mm512_loadu_ps(v.add(16)))
        }
        fn rows(&self) -> usize {
            self.keys.len().min(self.values.len()) / D
        }
    }

    /// The Q8_0 entry point.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VNNI and F16C; `L * 64 == D`; the caller's
    /// contract of [`super::partial`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn partial<const D: usize, const L: usize>(q: &QueryCodes, h_q: usize, g: usize, keys: Q8Rows<'_>, values: Q8Rows<'_>, segments: &[Segment]) -> Partial {
        body::<D, _>(&Q8::<D, L>::new(q, keys, values), h_q, g, segments)
    }

    /// The f32 entry point.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `D` is a multiple of 32; the caller's contract
    /// of [`super::partial_f32`].
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn partial_f32<const D: usize>(q: &[f32], h_q: usize, g: usize, scale: f32, keys: &[f32], values: &[f32], segments: &[Segment]) -> Partial {
        body::<D, _>(&F32::<D>::new(q, h_q, scale, keys, values), h_q, g, segments)
    }

    /// The kernel body, once for every storage: per block of up to
    /// [`DECODE_BLOCK`] rows of one KV head ([`strided_blocks`]), the logits of
    /// its `g` query heads 16 rows at a time (each key row prepared once, the
    /// 16 rows' lane sums in one [`sum16`]), the online softmax per head, then
    /// the weighted values 32 columns at a time into up to [`HEADS`] heads'
    /// accumulators held in registers (each value row read once).
    #[inline(always)]
    unsafe fn body<const D: usize, R: Rows>(kv: &R, h_q: usize, g: usize, segments: &[Segment]) -> Partial {
        let mut max = vec![f32::NEG_INFINITY; h_q];
        let mut sum = vec![0f32; h_q];
        let mut acc = vec![0f32; h_q * D];
        let rows = kv.rows();
        // `[g][DECODE_BLOCK]` logits, then softmax weights, of one block.
        let mut p = vec![0f32; g * DECODE_BLOCK];
        // One group of 16 rows' per-lane logit terms, `[g][16]`.
        let mut terms = vec![[_mm512_setzero_ps(); 16]; g];
        for b in strided_blocks(segments) {
            if b.len == 0 || b.start + (b.len - 1) * b.stride >= rows {
                continue; // unreachable: the caller checked every segment
            }
            let row = |j: usize| b.start + j * b.stride;
            let h0 = b.kv_head * g;
            for j0 in (0..b.len).step_by(16) {
                for jj in 0..16 {
                    if j0 + jj >= b.len {
                        for t in terms.iter_mut() {
                            t[jj] = _mm512_setzero_ps();
                        }
                        continue;
                    }
                    kv.prefetch_ahead(row(j0 + jj));
                    let key = kv.key(row(j0 + jj));
                    for (i, t) in terms.iter_mut().enumerate() {
                        t[jj] = kv.terms(&key, h0 + i);
                    }
                }
                let n = (b.len - j0).min(16);
                for (i, t) in terms.iter().enumerate() {
                    // `p` has room for 16 past any `j0 < DECODE_BLOCK`; `n` are stored.
                    _mm512_mask_storeu_ps(p.as_mut_ptr().add(i * DECODE_BLOCK + j0), (1u32 << n).wrapping_sub(1) as u16, sum16(t));
                }
            }
            for i in 0..g {
                let h = h0 + i;
                if let Some(shrink) = softmax_block(&mut p[i * DECODE_BLOCK..i * DECODE_BLOCK + b.len], &mut max[h], &mut sum[h]) {
                    acc[h * D..(h + 1) * D].iter_mut().for_each(|x| *x *= shrink);
                }
            }
            // Weighted values: `W` vectors (`16 W` columns) of up to `N` query
            // heads' accumulators in registers per pass over the block's rows.
            let (w, heads) = if R::WHOLE_ROWS { (D / 16, (24 / (D / 16)).max(1)) } else { (2, HEADS) };
            for first in (0..g).step_by(heads) {
                let n = (g - first).min(heads);
                for c in (0..D).step_by(16 * w) {
                    let args = (&p[first * DECODE_BLOCK..], acc.as_mut_ptr().add((h0 + first) * D + c), kv, &row, b.len, c / 32);
                    macro_rules! pass {
                        ($($w:literal: $($n:literal)*;)*) => {
                            match (w, n) {
                                $($(($w, $n) => add_values::<D, $n, $w, _, _>(args),)*)*
                                _ => unreachable!("no pass of {w} vectors for {n} heads"),
                            }
                        };
                    }
                    pass! { 2: 1 2 3 4 5 6 7 8; 4: 1 2 3 4 5 6; 8: 1 2 3; 16: 1; }
                }
            }
        }
        Partial::from_parts(max, sum, acc)
    }

    /// Adds `sum_j p[i][j] * V[row(j), 32c .. 32c + 16 W]` into the `16 W`
    /// accumulators at `acc + i * D` of each of `N` query heads.
    #[inline(always)]
    unsafe fn add_values<const D: usize, const N: usize, const W: usize, K: Rows, F: Fn(usize) -> usize>((p, acc, kv, row, len, c): (&[f32], *mut f32, &K, &F, usize, usize)) {
        let mut a: [[__m512; W]; N] = std::array::from_fn(|i| std::array::from_fn(|k| _mm512_loadu_ps(acc.add(i * D + 16 * k))));
        for j in 0..len {
            let r = row(j);
            for k in (0..W).step_by(2) {
                let (v0, v1) = kv.value32(r, c + k / 2);
                for i in 0..N {
                    let w = _mm512_set1_ps(*p.get_unchecked(i * DECODE_BLOCK + j));
                    a[i][k] = _mm512_fmadd_ps(w, v0, a[i][k]);
                    a[i][k + 1] = _mm512_fmadd_ps(w, v1, a[i][k + 1]);
                }
            }
        }
        for i in 0..N {
            for k in 0..W {
                _mm512_storeu_ps(acc.add(i * D + 16 * k), a[i][k]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stored::quantize_rows_q8_0;

    /// Pseudo-random values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        crate::attention::tests::values(len, seed).iter().map(|x| x / 2.0).collect()
    }

    /// ggml's Q8_0 of one block, as f64 values (`x * (1/d)` rounded half away from zero).
    fn q8_0_block(x: &[f32]) -> Vec<f64> {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d == 0.0 { 0.0 } else { 1.0 / d };
        x.iter().map(|&v| (v * inv).round() as f64 * d as f64).collect()
    }

    /// Softmax attention in f64 of `q` (already scaled) over the rows of `segments`.
    fn reference(q: &[f64], h_q: usize, h_kv: usize, d: usize, keys: &[f64], vals: &[f64], segments: &[Segment]) -> Vec<f64> {
        let g = h_q / h_kv;
        let mut out = vec![0f64; h_q * d];
        for h in 0..h_q {
            let rows: Vec<usize> = segments.iter().filter(|s| s.kv_head == h / g).flat_map(|s| s.rows.clone()).collect();
            let logits: Vec<f64> = rows.iter().map(|&r| (0..d).map(|i| q[h * d + i] * keys[r * d + i]).sum()).collect();
            let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
            let total: f64 = w.iter().sum();
            for (wj, &r) in w.iter().zip(&rows) {
                for i in 0..d {
                    out[h * d + i] += wj / total * vals[r * d + i];
                }
            }
        }
        out
    }

    fn dequantized(codes: &[i8], scales: &[f16]) -> Vec<f64> {
        codes.iter().enumerate().map(|(i, &c)| c as f64 * scales[i / QK8_0].to_f64()).collect()
    }

    /// Against f64 attention over the dequantized K/V, with the query
    /// quantized the same way (then only the f32 sums differ) and with the
    /// exact query (then the query's 8 bits show): head dims 64/128/256,
    /// 1 to 9 query heads per KV head (more than one register group), runs of
    /// rows of every length and decode's interleaved one-row segments.
    #[test]
    fn vnni_kernel_matches_f64_attention_over_the_stored_values() {
        if !available(128) {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        for (d, h_kv, g) in [(64, 3, 3), (128, 2, 6), (128, 1, 9), (256, 1, 4), (64, 2, 7), (128, 2, 1)] {
            let h_q = h_kv * g;
            let rows = 300 + 2 * h_kv * 37;
            let mut segments: Vec<Segment> = (0..h_kv).map(|h| Segment { kv_head: h, rows: h * 150..h * 150 + 150 - 7 * h }).collect();
            // Decode's one-row segments, heads interleaved, after the prefill rows.
            for t in 0..37 {
                for h in 0..h_kv {
                    let r = 300 + t * h_kv + h;
                    segments.push(Segment { kv_head: h, rows: r..r + 1 });
                }
            }
            let scale = 1.0 / (d as f32).sqrt();
            // Keys with a few large values, as real keys have.
            let mut k = values(rows * d, 1 + d as u64);
            k.iter_mut().step_by(37).for_each(|x| *x *= 9.0);
            let v = values(rows * d, 2 + g as u64);
            let q: Vec<f32> = values(h_q * d, 3 + h_kv as u64).iter().map(|x| x * 4.0).collect();
            let quantize = |x: &[f32]| {
                let mut c = vec![0i8; x.len()];
                let mut s = vec![f16::ZERO; x.len() / QK8_0];
                quantize_rows_q8_0(x, &mut c, &mut s);
                (c, s)
            };
            let ((kc, ks), (vc, vs)) = (quantize(&k), quantize(&v));
            let (kd, vd) = (dequantized(&kc, &ks), dequantized(&vc, &vs));
            let codes = QueryCodes::new(&q, h_q, d, scale);
            let part = partial(&codes, h_q, g, d, Q8Rows { codes: &kc, scales: &ks }, Q8Rows { codes: &vc, scales: &vs }, &segments);
            let got = Partial::merge(std::slice::from_ref(&part), h_q, d);
            let scaled: Vec<f32> = q.iter().map(|x| x * scale).collect();
            let q_quantized: Vec<f64> = scaled.chunks_exact(QK8_0).flat_map(q8_0_block).collect();
            let q_exact: Vec<f64> = scaled.iter().map(|&x| x as f64).collect();
            let want = reference(&q_quantized, h_q, h_kv, d, &kd, &vd, &segments);
            let exact = reference(&q_exact, h_q, h_kv, d, &kd, &vd, &segments);
            let worst = |w: &[f64]| got.iter().zip(w).map(|(&a, &b)| (a as f64 - b).abs()).fold(0f64, f64::max);
            assert!(worst(&want) < 5e-6, "d {d} g {g}: {} from the quantized query's attention", worst(&want));
            assert!(worst(&exact) < 2e-2, "d {d} g {g}: {} from the exact query's attention", worst(&exact));
            assert!(worst(&exact) > 1e-6, "d {d} g {g}: the query is not quantized?");
        }
    }
}
