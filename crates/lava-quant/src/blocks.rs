//! GGUF block layouts, dequantization (bit-identical to llama.cpp's reference dequantizers) and
//! the reference quantizers of the 32-element types.
//!
//! All multi-byte fields are little-endian; `f16` is IEEE binary16. A block's *codes* are its
//! small unsigned integers in element order; each family below gives its byte layout, how the
//! codes are packed, and the value of element `e`.
//!
//! 32-element blocks (`e` in `0..32`, `q[e]` its code):
//!
//! | type | bytes | layout | value |
//! |---|---|---|---|
//! | Q4_0 | 18 | `d: f16, qs: [u8; 16]` | `d * (q - 8)` |
//! | Q4_1 | 20 | `d: f16, m: f16, qs: [u8; 16]` | `d * q + m` |
//! | Q5_0 | 22 | `d: f16, qh: u32, qs: [u8; 16]` | `d * (q - 16)` |
//! | Q5_1 | 24 | `d: f16, m: f16, qh: u32, qs: [u8; 16]` | `d * q + m` |
//! | Q8_0 | 34 | `d: f16, qs: [i8; 32]` | `d * q` |
//!
//! 4-bit codes: `q[j] = qs[j] & 15`, `q[j + 16] = qs[j] >> 4` (`j < 16`). 5-bit codes add bit
//! `e` of `qh` as bit 4 of `q[e]`.
//!
//! 256-element super-blocks (K-quants; `e` in `0..256`):
//!
//! | type | bytes | layout | groups | value |
//! |---|---|---|---|---|
//! | Q2_K | 84 | `scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16` | 16 x 16 | `(d * sc) * q - (dmin * mn)` |
//! | Q3_K | 110 | `hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16` | 16 x 16 | `(d * sc) * (q - 4)` |
//! | Q4_K | 144 | `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]` | 8 x 32 | `(d * sc) * q - (dmin * mn)` |
//! | Q5_K | 176 | `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]` | 8 x 32 | `(d * sc) * q - (dmin * mn)` |
//! | Q6_K | 210 | `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16` | 16 x 16 | `(d * sc) * (q - 32)` |
//!
//! (`sc`, `mn`: the scale and minimum of the group holding `e`; the products are `f32`, rounded
//! in the order written, which is the reference order.)
//!
//! * Q2_K: `sc = scales[g] & 15`, `mn = scales[g] >> 4`; with `h = e / 128`, `s = (e % 128) / 32`,
//!   `l = e % 32`: `q = (qs[32h + l] >> 2s) & 3`.
//! * Q3_K: 6-bit scales, biased by 32: group `g` takes its low 4 bits from nibble `g / 8` of
//!   `scales[g % 8]` and its high 2 bits from bits `2 (g / 4)..` of `scales[8 + g % 4]`. With `h`,
//!   `s`, `l` as for Q2_K, the 2 low bits of `q` are `(qs[32h + l] >> 2s) & 3` and bit 2 is bit
//!   `4h + s` of `hmask[l]`.
//! * Q4_K / Q5_K: 6-bit scales and minimums, packed in 12 bytes: groups `g < 4` have
//!   `sc = scales[g] & 63`, `mn = scales[g + 4] & 63`; groups `g >= 4` have
//!   `sc = (scales[g + 4] & 15) | (scales[g - 4] >> 6) << 4` and
//!   `mn = (scales[g + 4] >> 4) | (scales[g] >> 6) << 4`. With `c = e / 64`, `r = e % 64`:
//!   `q = qs[32c + r] & 15` for `r < 32`, else `qs[32c + r - 32] >> 4`; Q5_K adds bit `e / 32`
//!   of `qh[e % 32]` as bit 4.
//! * Q6_K: with `h = e / 128`, `k = (e % 128) / 32`, `l = e % 32`: the low 4 bits are nibble
//!   `k / 2` of `ql[64h + 32 (k % 2) + l]`, the high 2 bits are `(qh[32h + l] >> 2k) & 3`;
//!   `sc = scales[e / 16]`.

use half::f16;

use crate::types::{GgmlType, QuantError};

/// The `f16` at byte `i` of `b`, as `f32` (exact).
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// The `bf16` at byte `i` of `b`, as `f32` (exact).
#[inline(always)]
pub(crate) fn bf16_at(b: &[u8], i: usize) -> f32 {
    f32::from_bits((u16::from_le_bytes([b[i], b[i + 1]]) as u32) << 16)
}

// ---------------------------------------------------------------- code unpacking

/// Codes of a 4-bit 32-element block from its 16 packed bytes.
#[inline(always)]
pub(crate) fn codes_4(qs: &[u8]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = qs[j] & 15;
        q[j + 16] = qs[j] >> 4;
    }
    q
}

/// Codes of a 5-bit 32-element block from its high-bit word and 16 packed bytes.
#[inline(always)]
pub(crate) fn codes_5(qh: &[u8], qs: &[u8]) -> [u8; 32] {
    let h = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = codes_4(qs);
    for (e, c) in q.iter_mut().enumerate() {
        *c |= (((h >> e) & 1) as u8) << 4;
    }
    q
}

/// Q2_K codes (`0..4`).
#[inline(always)]
pub(crate) fn codes_q2k(qs: &[u8]) -> [u8; 256] {
    let mut q = [0u8; 256];
    for (e, c) in q.iter_mut().enumerate() {
        let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
        *c = (qs[32 * h + l] >> (2 * s)) & 3;
    }
    q
}

/// Q3_K codes, biased (`0..8`, the value's integer is `code - 4`).
#[inline(always)]
pub(crate) fn codes_q3k(hmask: &[u8], qs: &[u8]) -> [u8; 256] {
    let mut q = [0u8; 256];
    for (e, c) in q.iter_mut().enumerate() {
        let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
        let low = (qs[32 * h + l] >> (2 * s)) & 3;
        let high = (hmask[l] >> (4 * h + s)) & 1;
        *c = low | (high << 2);
    }
    q
}

/// The 16 Q3_K group scales (`-32..32`).
#[inline(always)]
pub(crate) fn scales_q3k(sc: &[u8]) -> [i8; 16] {
    let mut s = [0i8; 16];
    for (g, v) in s.iter_mut().enumerate() {
        let low = (sc[g % 8] >> (4 * (g / 8))) & 15;
        let high = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
        *v = (low | (high << 4)) as i8 - 32;
    }
    s
}

/// The 8 Q4_K / Q5_K group scales and minimums (`0..64` each).
#[inline(always)]
pub(crate) fn scale_min_k4(sc: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut s, mut m) = ([0u8; 8], [0u8; 8]);
    for g in 0..4 {
        s[g] = sc[g] & 63;
        m[g] = sc[g + 4] & 63;
    }
    for g in 4..8 {
        s[g] = (sc[g + 4] & 15) | ((sc[g - 4] >> 6) << 4);
        m[g] = (sc[g + 4] >> 4) | ((sc[g] >> 6) << 4);
    }
    (s, m)
}

/// Q4_K codes (`0..16`).
#[inline(always)]
pub(crate) fn codes_q4k(qs: &[u8]) -> [u8; 256] {
    let mut q = [0u8; 256];
    for c in 0..4 {
        for l in 0..32 {
            let b = qs[32 * c + l];
            q[64 * c + l] = b & 15;
            q[64 * c + 32 + l] = b >> 4;
        }
    }
    q
}

/// Q5_K codes (`0..32`).
#[inline(always)]
pub(crate) fn codes_q5k(qh: &[u8], qs: &[u8]) -> [u8; 256] {
    let mut q = codes_q4k(qs);
    for (e, c) in q.iter_mut().enumerate() {
        *c |= ((qh[e % 32] >> (e / 32)) & 1) << 4;
    }
    q
}

/// Q6_K codes, biased (`0..64`, the value's integer is `code - 32`).
#[inline(always)]
pub(crate) fn codes_q6k(ql: &[u8], qh: &[u8]) -> [u8; 256] {
    let mut q = [0u8; 256];
    for (e, c) in q.iter_mut().enumerate() {
        let (h, k, l) = (e / 128, (e % 128) / 32, e % 32);
        let low = (ql[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 15;
        let high = (qh[32 * h + l] >> (2 * k)) & 3;
        *c = low | (high << 4);
    }
    q
}

// ---------------------------------------------------------------- dequantization

/// Dequantizes `raw` (a whole number of `kind` blocks) into `out`, which must hold exactly
/// `raw.len() / kind.block_bytes() * kind.block_size()` values. Bit-identical to llama.cpp's
/// reference dequantizers (`f32` products rounded in the reference order).
pub fn dequantize(kind: GgmlType, raw: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let bb = kind.block_bytes();
    if !raw.len().is_multiple_of(bb) {
        return Err(QuantError::NotBlockBytes { kind, bytes: raw.len() });
    }
    let n = (raw.len() / bb).checked_mul(kind.block_size()).ok_or(QuantError::Overflow)?;
    if out.len() != n {
        return Err(QuantError::Length { what: "dequantize output", expected: n, got: out.len() });
    }
    let bs = kind.block_size();
    let blocks = raw.chunks_exact(bb).zip(out.chunks_exact_mut(bs));
    match kind {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16_at(b, 0)),
        GgmlType::BF16 => blocks.for_each(|(b, y)| y[0] = bf16_at(b, 0)),
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            let q = codes_4(&b[2..18]);
            for (v, &c) in y.iter_mut().zip(&q) {
                *v = d * (c as i32 - 8) as f32;
            }
        }),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let q = codes_4(&b[4..20]);
            for (v, &c) in y.iter_mut().zip(&q) {
                *v = d * c as f32 + m;
            }
        }),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            let q = codes_5(&b[2..6], &b[6..22]);
            for (v, &c) in y.iter_mut().zip(&q) {
                *v = d * (c as i32 - 16) as f32;
            }
        }),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let q = codes_5(&b[4..8], &b[8..24]);
            for (v, &c) in y.iter_mut().zip(&q) {
                *v = d * c as f32 + m;
            }
        }),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 0);
            for (v, &c) in y.iter_mut().zip(&b[2..34]) {
                *v = d * c as i8 as f32;
            }
        }),
        GgmlType::Q2_K => blocks.for_each(|(b, y)| {
            let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
            let q = codes_q2k(&b[16..80]);
            for g in 0..16 {
                let sc = b[g];
                let dl = d * (sc & 15) as f32;
                let ml = dmin * (sc >> 4) as f32;
                for e in 16 * g..16 * g + 16 {
                    y[e] = dl * q[e] as f32 - ml;
                }
            }
        }),
        GgmlType::Q3_K => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 108);
            let q = codes_q3k(&b[0..32], &b[32..96]);
            let s = scales_q3k(&b[96..108]);
            for g in 0..16 {
                let dl = d * s[g] as f32;
                for e in 16 * g..16 * g + 16 {
                    y[e] = dl * (q[e] as i32 - 4) as f32;
                }
            }
        }),
        GgmlType::Q4_K => blocks.for_each(|(b, y)| {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (s, m) = scale_min_k4(&b[4..16]);
            let q = codes_q4k(&b[16..144]);
            dequant_k8(d, dmin, &s, &m, &q, y);
        }),
        GgmlType::Q5_K => blocks.for_each(|(b, y)| {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (s, m) = scale_min_k4(&b[4..16]);
            let q = codes_q5k(&b[16..48], &b[48..176]);
            dequant_k8(d, dmin, &s, &m, &q, y);
        }),
        GgmlType::Q6_K => blocks.for_each(|(b, y)| {
            let d = f16_at(b, 208);
            let q = codes_q6k(&b[0..128], &b[128..192]);
            for g in 0..16 {
                let dl = d * b[192 + g] as i8 as f32;
                for e in 16 * g..16 * g + 16 {
                    y[e] = dl * (q[e] as i32 - 32) as f32;
                }
            }
        }),
    }
    Ok(())
}

/// The Q4_K / Q5_K value rule over 8 groups of 32.
#[inline(always)]
fn dequant_k8(d: f32, dmin: f32, s: &[u8; 8], m: &[u8; 8], q: &[u8; 256], y: &mut [f32]) {
    for g in 0..8 {
        let dl = d * s[g] as f32;
        let ml = dmin * m[g] as f32;
        for e in 32 * g..32 * g + 32 {
            y[e] = dl * q[e] as f32 - ml;
        }
    }
}

/// [`dequantize`] into a new vector.
pub fn dequantize_to_vec(kind: GgmlType, raw: &[u8]) -> Result<Vec<f32>, QuantError> {
    let bb = kind.block_bytes();
    if !raw.len().is_multiple_of(bb) {
        return Err(QuantError::NotBlockBytes { kind, bytes: raw.len() });
    }
    let n = (raw.len() / bb).checked_mul(kind.block_size()).ok_or(QuantError::Overflow)?;
    let mut out = vec![0f32; n];
    dequantize(kind, raw, &mut out)?;
    Ok(out)
}

// ---------------------------------------------------------------- quantization

/// The element of largest magnitude (the first one on ties), with its sign.
#[inline(always)]
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Minimum and maximum, starting from `(f32::MAX, -f32::MAX)`.
#[inline(always)]
fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (if v < lo { v } else { lo }, if v > hi { v } else { hi }))
}

#[inline(always)]
fn inv(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

#[inline(always)]
fn put_f16(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// `f32` to `bf16` bits: round to nearest even, NaN kept quiet (ggml's rule).
#[inline(always)]
fn bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        ((u >> 16) | 64) as u16
    } else {
        ((u as u64 + (0x7fff + ((u >> 16) & 1)) as u64) >> 16) as u16
    }
}

/// 4-bit codes of 32 elements, packed (element `j` low nibble, `j + 16` high nibble).
#[inline(always)]
fn pack_4(q: &[u8; 32], out: &mut Vec<u8>) {
    for j in 0..16 {
        out.push((q[j] & 15) | ((q[j + 16] & 15) << 4));
    }
}

/// Bit 4 of each of 32 codes, as the little-endian `qh` word.
#[inline(always)]
fn pack_high(q: &[u8; 32], out: &mut Vec<u8>) {
    let h = q.iter().enumerate().fold(0u32, |h, (e, &c)| h | ((((c >> 4) & 1) as u32) << e));
    out.extend_from_slice(&h.to_le_bytes());
}

/// Quantizes `values` (a whole number of `kind` blocks) with the reference quantizer: the
/// round-to-nearest rules of llama.cpp's `quantize_row_*_ref` for Q4_0, Q4_1, Q5_0, Q5_1 and
/// Q8_0, round-to-nearest-even for F16 and BF16. K-quants have no quantizer here
/// ([`QuantError::NoQuantizer`]).
pub fn quantize(kind: GgmlType, values: &[f32]) -> Result<Vec<u8>, QuantError> {
    let bytes = kind.bytes_for(values.len())?;
    let mut out = Vec::with_capacity(bytes);
    let blocks = values.chunks_exact(kind.block_size());
    match kind {
        GgmlType::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => values.iter().for_each(|&v| put_f16(&mut out, v)),
        GgmlType::BF16 => values.iter().for_each(|&v| out.extend_from_slice(&bf16_bits(v).to_le_bytes())),
        GgmlType::Q4_0 | GgmlType::Q5_0 => {
            let (div, bias, top) = if kind == GgmlType::Q4_0 { (-8f32, 8.5f32, 15u8) } else { (-16f32, 16.5f32, 31u8) };
            for x in blocks {
                let d = signed_absmax(x) / div;
                let id = inv(d);
                let mut q = [0u8; 32];
                for (c, &v) in q.iter_mut().zip(x) {
                    *c = ((v * id + bias) as i8).clamp(0, top as i8) as u8;
                }
                put_f16(&mut out, d);
                if kind == GgmlType::Q5_0 {
                    pack_high(&q, &mut out);
                }
                pack_4(&q, &mut out);
            }
        }
        GgmlType::Q4_1 | GgmlType::Q5_1 => {
            let (div, top) = if kind == GgmlType::Q4_1 { (15f32, 15u8) } else { (31f32, 31u8) };
            for x in blocks {
                let (lo, hi) = min_max(x);
                let d = (hi - lo) / div;
                let id = inv(d);
                let mut q = [0u8; 32];
                for (c, &v) in q.iter_mut().zip(x) {
                    *c = (((v - lo) * id + 0.5) as i8).clamp(0, top as i8) as u8;
                }
                put_f16(&mut out, d);
                put_f16(&mut out, lo);
                if kind == GgmlType::Q5_1 {
                    pack_high(&q, &mut out);
                }
                pack_4(&q, &mut out);
            }
        }
        GgmlType::Q8_0 => {
            for x in blocks {
                let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = inv(d);
                put_f16(&mut out, d);
                out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
            }
        }
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            return Err(QuantError::NoQuantizer(kind))
        }
    }
    debug_assert_eq!(out.len(), bytes);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_checked() {
        let mut out = [0f32; 32];
        assert!(dequantize(GgmlType::Q4_0, &[0u8; 17], &mut out).is_err());
        assert!(dequantize(GgmlType::Q4_0, &[0u8; 18], &mut out[..31]).is_err());
        assert!(dequantize(GgmlType::Q4_0, &[0u8; 18], &mut out).is_ok());
        assert!(quantize(GgmlType::Q8_0, &[0.0; 33]).is_err());
        assert_eq!(quantize(GgmlType::Q4_K, &[0.0; 256]), Err(QuantError::NoQuantizer(GgmlType::Q4_K)));
    }

    #[test]
    fn quantize_dequantize_round_trip_is_close() {
        let x: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        for (kind, tol) in [
            (GgmlType::Q4_0, 0.37), // the far side of the signed maximum is one step short: up to d = 2.94 / 8
            (GgmlType::Q4_1, 0.2),
            (GgmlType::Q5_0, 0.19),
            (GgmlType::Q5_1, 0.1),
            (GgmlType::Q8_0, 0.012),
            (GgmlType::F16, 2e-3),
            (GgmlType::BF16, 1.6e-2),
            (GgmlType::F32, 0.0),
        ] {
            let y = dequantize_to_vec(kind, &quantize(kind, &x).unwrap()).unwrap();
            let err = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err <= tol, "{kind}: max error {err} > {tol}");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80); // tie, even stays
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82); // tie, odd rounds up
        assert_eq!(bf16_bits(f32::NAN) & 0x7fc0, 0x7fc0);
    }
}
