//! Decode attention over K/V stored in 16 or 8 bits (`lava-cache`'s KV
//! dtypes `f16` and `q8_0`), read where they lie: each run of up to
//! [`WIDEN_ROWS`] rows of one KV head is widened to f32 in a small scratch
//! buffer (it stays in cache) and attended by the f32 decode kernel of
//! [`crate::attention`]; the runs' partial softmax sums are merged
//! (max-shifted), as across threads. Q8_0 on a CPU with AVX-512 VNNI takes
//! the crate's `decode_kernel` instead (keys scored in the integer domain). The
//! generic path of `lava-cache` (dequantize, then attend) is the reference.

use std::ops::Range;

use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};
use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::attention::{split_rows, Partial, Segment, PARALLEL_ROWS};
use crate::decode_kernel::{self, Q8Rows, QueryCodes};
use crate::bridge::{float_from_flex, float_to_flex, from_host, int_from_flex, int_to_flex, is_flex, is_plain, to_flex};

/// Rows widened to f32 at a time (`WIDEN_ROWS * D` floats of K and as many of V).
pub const WIDEN_ROWS: usize = 256;

/// Values per Q8_0 block.
const QK8_0: usize = 32;

/// K or V rows `[R, D]` as stored.
#[derive(Debug, Clone, Copy)]
pub enum StoredRows<'a> {
    /// IEEE half-precision values, row-major.
    F16(&'a [f16]),
    /// ggml Q8_0: `codes` `[R, D]`, one f16 scale per 32 codes (`scales` `[R, D / 32]`); value = code * scale.
    Q8_0 {
        /// The 8-bit codes.
        codes: &'a [i8],
        /// The block scales.
        scales: &'a [f16],
    },
}

impl StoredRows<'_> {
    /// Number of whole rows of `d` values held.
    fn rows(&self, d: usize) -> usize {
        match self {
            StoredRows::F16(x) => x.len() / d,
            StoredRows::Q8_0 { codes, scales } => (codes.len() / d).min(scales.len() * QK8_0 / d),
        }
    }

    /// Rows `rows` widened to f32 into `out` (`rows.len() * d` floats).
    fn widen(&self, rows: Range<usize>, d: usize, out: &mut [f32]) {
        let (a, b) = (rows.start * d, rows.end * d);
        match self {
            StoredRows::F16(x) => x[a..b].convert_to_f32_slice(&mut out[..b - a]),
            StoredRows::Q8_0 { codes, scales } => {
                let blocks = out[..b - a].chunks_exact_mut(QK8_0).zip(codes[a..b].chunks_exact(QK8_0));
                for ((o, q), s) in blocks.zip(&scales[a / QK8_0..b / QK8_0]) {
                    let s = s.to_f32();
                    for (o, &q) in o.iter_mut().zip(q) {
                        *o = q as f32 * s;
                    }
                }
            }
        }
    }
}

/// Softmax attention of `q [H_q, D]` over the rows `segments` of `keys` and
/// `values` as stored (query head `h` reads KV head `h / G`), scaled by
/// `1/sqrt(D)`: [`crate::attention::attend_rows`] on the widened rows.
/// Returns `[H_q, D]`, or `None` if the shapes do not fit (or, for Q8_0, `D`
/// is not a multiple of 32).
#[allow(clippy::too_many_arguments)]
pub fn attend_stored_rows(
    q: &[f32],
    h_q: usize,
    h_kv: usize,
    d: usize,
    keys: StoredRows<'_>,
    values: StoredRows<'_>,
    segments: &[Segment],
    threads: usize,
) -> Option<Vec<f32>> {
    let quantized = matches!(keys, StoredRows::Q8_0 { .. }) || matches!(values, StoredRows::Q8_0 { .. });
    let rows = keys.rows(d.max(1)).min(values.rows(d.max(1)));
    let fits = |s: &Segment| s.kv_head < h_kv && s.rows.end <= rows;
    if d == 0 || h_kv == 0 || h_q % h_kv != 0 || q.len() < h_q * d || (quantized && d % QK8_0 != 0) || !segments.iter().all(fits) {
        return None;
    }
    let g = h_q / h_kv;
    let total: usize = segments.iter().map(|s| s.rows.len()).sum();
    let parts = if total >= PARALLEL_ROWS { threads.max(1) } else { 1 };
    let pieces = split_rows(segments, total, parts);
    let scale = 1.0 / (d as f32).sqrt();
    if let (StoredRows::Q8_0 { codes: kc, scales: ks }, StoredRows::Q8_0 { codes: vc, scales: vs }) = (keys, values) {
        if decode_kernel::available(d) {
            let qc = QueryCodes::new(q, h_q, d, scale);
            let (k, v) = (Q8Rows { codes: kc, scales: ks }, Q8Rows { codes: vc, scales: vs });
            let partials = crate::spin_pool::map(pieces.len(), &|i| decode_kernel::partial(&qc, h_q, g, d, k, v, &pieces[i]));
            return Some(Partial::merge(&partials, h_q, d));
        }
    }
    let partials = crate::spin_pool::map(pieces.len(), &|i| {
        let mut kw = vec![0f32; WIDEN_ROWS * d];
        let mut vw = vec![0f32; WIDEN_ROWS * d];
        let mut out = Vec::new();
        for s in &pieces[i] {
            let mut start = s.rows.start;
            while start < s.rows.end {
                let end = (start + WIDEN_ROWS).min(s.rows.end);
                let n = end - start;
                keys.widen(start..end, d, &mut kw);
                values.widen(start..end, d, &mut vw);
                let run = [Segment { kv_head: s.kv_head, rows: 0..n }];
                out.push(Partial::compute(q, h_q, g, d, &kw[..n * d], &vw[..n * d], &run, scale));
                start = end;
            }
        }
        out
    });
    let all: Vec<Partial> = partials.into_iter().flatten().collect();
    Some(Partial::merge(&all, h_q, d))
}

/// Whether Q8_0 decode attention with head dim `d` scores keys in the
/// integer domain on this CPU (AVX-512 VNNI): the query is then quantized to
/// Q8_0 first (`(q / sqrt(d))` per 32 values, ggml's rounding), as llama.cpp
/// does for a Q8_0 K; elsewhere the stored rows are widened to f32 and the
/// query is used as it is.
pub fn q8_0_quantizes_query(d: usize) -> bool {
    decode_kernel::available(d)
}

/// `[H_q, 1, D]` decode attention of `q` over f16 `keys`/`values` (`[R, D]`
/// in memory) on flex; `None` on any other backend or layout.
pub fn decode_attention_f16<B: Backend, const K: usize>(
    q: &Tensor<B, 3>,
    kv_heads: usize,
    keys: &Tensor<B, K>,
    values: &Tensor<B, K>,
    segments: &[Segment],
) -> Option<Tensor<B, 3>> {
    let [h_q, t, d] = q.dims();
    if t != 1 || !is_flex::<B>() || keys.dtype() != DType::F16 || values.dtype() != DType::F16 {
        return None;
    }
    let qf = to_flex(q.clone())?.to_contiguous();
    let (kf, vf) = (float_to_flex(keys.clone())?, float_to_flex(values.clone())?);
    if !is_plain(&kf) || !is_plain(&vf) {
        return None;
    }
    let out = attend_stored_rows(
        qf.storage::<f32>(),
        h_q,
        kv_heads,
        d,
        StoredRows::F16(kf.storage::<f16>()),
        StoredRows::F16(vf.storage::<f16>()),
        segments,
        rayon::current_num_threads(),
    )?;
    from_host(out, [h_q, 1, d])
}

/// `[H_q, 1, D]` decode attention of `q` over Q8_0 keys and values (`i8`
/// codes `[R, D]`, f16 scales `[R, D / 32]`) on flex; `None` on any other
/// backend, dtype or layout.
#[allow(clippy::too_many_arguments)]
pub fn decode_attention_q8_0<B: Backend, const K: usize>(
    q: &Tensor<B, 3>,
    kv_heads: usize,
    key_codes: &Tensor<B, K, Int>,
    key_scales: &Tensor<B, K>,
    value_codes: &Tensor<B, K, Int>,
    value_scales: &Tensor<B, K>,
    segments: &[Segment],
) -> Option<Tensor<B, 3>> {
    let [h_q, t, d] = q.dims();
    if t != 1 || !is_flex::<B>() {
        return None;
    }
    let codes_ok = |c: &Tensor<B, K, Int>| c.dtype() == DType::I8;
    let scales_ok = |s: &Tensor<B, K>| s.dtype() == DType::F16;
    if !codes_ok(key_codes) || !codes_ok(value_codes) || !scales_ok(key_scales) || !scales_ok(value_scales) {
        return None;
    }
    let qf = to_flex(q.clone())?.to_contiguous();
    let (kc, vc) = (int_to_flex(key_codes.clone())?, int_to_flex(value_codes.clone())?);
    let (ks, vs) = (float_to_flex(key_scales.clone())?, float_to_flex(value_scales.clone())?);
    if ![&kc, &vc, &ks, &vs].iter().all(|f| is_plain(f)) {
        return None;
    }
    let out = attend_stored_rows(
        qf.storage::<f32>(),
        h_q,
        kv_heads,
        d,
        StoredRows::Q8_0 { codes: kc.storage::<i8>(), scales: ks.storage::<f16>() },
        StoredRows::Q8_0 { codes: vc.storage::<i8>(), scales: vs.storage::<f16>() },
        segments,
        rayon::current_num_threads(),
    )?;
    from_host(out, [h_q, 1, d])
}

/// ggml's Q8_0 quantization of rows of f32 values (`x.len()` a multiple of
/// 32): per block `d = max|x| / 127`, codes `round(x * (1/d))` (ties away
/// from zero; 0 for an all-zero block), `d` stored as f16. The arithmetic of
/// `lava-cache`'s tensor-op quantizer and of gguf-py, step for step.
pub fn quantize_rows_q8_0(x: &[f32], codes: &mut [i8], scales: &mut [f16]) {
    for ((xb, qb), s) in x.chunks_exact(QK8_0).zip(codes.chunks_exact_mut(QK8_0)).zip(scales.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
        }
        *s = f16::from_f32(d);
    }
}

/// [`quantize_rows_q8_0`] of an f32 tensor `[.., D]` of flex: the `i8` codes
/// (same shape) and f16 scales (`[.., D / 32]`) as tensors of `B`; `None`
/// unless `B` is flex, `x` is f32 and `D` a multiple of 32.
pub fn quantize_q8_0<B: Backend, const N: usize>(x: &Tensor<B, N>) -> Option<(Tensor<B, N, Int>, Tensor<B, N>)> {
    let dims = x.dims();
    if !is_flex::<B>() || x.dtype() != DType::F32 || N == 0 || dims[N - 1] % QK8_0 != 0 {
        return None;
    }
    let xf = to_flex(x.clone())?.to_contiguous();
    let values = xf.storage::<f32>();
    let mut codes = vec![0i8; values.len()];
    let mut scales = vec![f16::ZERO; values.len() / QK8_0];
    quantize_rows_q8_0(values, &mut codes, &mut scales);
    let mut scale_dims = dims;
    scale_dims[N - 1] /= QK8_0;
    let codes = int_from_flex::<B, N>(burn_flex::FlexTensor::from_data(TensorData::new(codes, dims)))?;
    let scales = float_from_flex::<B, N>(burn_flex::FlexTensor::from_data(TensorData::new(scales, scale_dims)))?;
    Some((codes, scales))
}

/// Writes f32 values of `src` into the f16 storage `dst` in place, converting:
/// `runs` are `(dst offset, src offset, len)` in elements. Hands `dst` back
/// (unchanged) unless `B` is flex, the dtypes fit, `dst` is plain and not
/// shared, and every run fits.
pub fn write_f16_in_place<B: Backend, const D: usize, const S: usize>(
    dst: Tensor<B, D>,
    src: &Tensor<B, S>,
    runs: &[(usize, usize, usize)],
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !is_flex::<B>() || dst.dtype() != DType::F16 || src.dtype() != DType::F32 {
        return Err(dst);
    }
    let Some(src) = to_flex(src.clone()).map(|s| s.to_contiguous()) else { return Err(dst) };
    let keep = dst.clone();
    let Some(mut flex) = float_to_flex(dst) else { return Err(keep) };
    drop(keep);
    let from = src.storage::<f32>();
    let written = is_plain(&flex)
        && match flex.try_storage_mut::<f16>() {
            Some(to) if runs.iter().all(|&(d, s, n)| d + n <= to.len() && s + n <= from.len()) => {
                for &(d, s, n) in runs {
                    to[d..d + n].convert_from_f32_slice(&from[s..s + n]);
                }
                true
            }
            _ => false,
        };
    let dst = float_from_flex(flex).expect("B is flex");
    if written {
        Ok(dst)
    } else {
        Err(dst)
    }
}

/// Quantizes f32 values of `src` to Q8_0 ([`quantize_rows_q8_0`]) straight
/// into the storage `codes` (`i8`) and `scales` (f16) in place: `runs` are
/// `(dst offset, src offset, len)` in values, all multiples of 32. Hands the
/// storage back (unchanged) where that does not apply.
#[allow(clippy::type_complexity)]
pub fn write_q8_0_in_place<B: Backend, const D: usize, const S: usize>(
    codes: Tensor<B, D, Int>,
    scales: Tensor<B, D>,
    src: &Tensor<B, S>,
    runs: &[(usize, usize, usize)],
) -> Result<(Tensor<B, D, Int>, Tensor<B, D>), (Tensor<B, D, Int>, Tensor<B, D>)> {
    let aligned = runs.iter().all(|&(d, s, n)| d % QK8_0 == 0 && s % QK8_0 == 0 && n % QK8_0 == 0);
    if !is_flex::<B>() || codes.dtype() != DType::I8 || scales.dtype() != DType::F16 || src.dtype() != DType::F32 || !aligned {
        return Err((codes, scales));
    }
    let Some(src) = to_flex(src.clone()).map(|s| s.to_contiguous()) else { return Err((codes, scales)) };
    let keep = (codes.clone(), scales.clone());
    let (Some(mut cf), Some(mut sf)) = (int_to_flex(codes), float_to_flex(scales)) else { return Err(keep) };
    drop(keep);
    let from = src.storage::<f32>();
    let mut written = is_plain(&cf) && is_plain(&sf);
    if written {
        match (cf.try_storage_mut::<i8>(), sf.try_storage_mut::<f16>()) {
            (Some(c), Some(s)) if runs.iter().all(|&(d, o, n)| d + n <= c.len() && (d + n) / QK8_0 <= s.len() && o + n <= from.len()) => {
                for &(d, o, n) in runs {
                    quantize_rows_q8_0(&from[o..o + n], &mut c[d..d + n], &mut s[d / QK8_0..(d + n) / QK8_0]);
                }
            }
            _ => written = false,
        }
    }
    let codes = int_from_flex(cf).expect("B is flex");
    let scales = float_from_flex(sf).expect("B is flex");
    if written {
        Ok((codes, scales))
    } else {
        Err((codes, scales))
    }
}

