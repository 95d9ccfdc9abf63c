//! Quantized matrix times a few activation rows: `out[k][r] = sum_c W[r][c] * x[k][c]`.
//!
//! Shapes: the weight `W` is a [`QuantMatrix`], `rows` (`d_out`) rows of `cols` (`d_in`)
//! elements, each row a run of `cols / block_size` blocks as GGUF stores it. The activations
//! `x` are `n` rows of `cols` values, quantized once by [`quantize_activations`] into the 8-bit
//! form that matches the weight type:
//!
//! * 32-element types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): per 32 values, an `f32` scale
//!   `dx = max|x| / 127`, codes `xq = round(x / dx)` in `-127..=127`, and `dx * sum(xq)` (for the
//!   weight's offset term);
//! * K-quants: per 256 values, an `f32` scale, codes in `-127..=127`, and the 16 sums of codes
//!   over each group of 16;
//! * F32, F16, BF16: the `f32` values as they are (no activation quantization; the weight is
//!   converted to `f32` on the fly).
//!
//! Per weight block the product is an exact integer dot product of weight codes and activation
//! codes, scaled in `f32` by the block scales (llama.cpp's `vec_dot_*_q8_*` scheme). The only
//! approximation against dequantize-then-`f32`-dot is the activation rounding `x - dx * xq`,
//! plus `f32` rounding of the per-block partial sums.
//!
//! [`QuantMatrix::dot_rows`] computes a range of output rows for up to [`MAX_ACT_ROWS`]
//! activation rows per pass over the weights (more rows are done in several passes), on one
//! thread: a caller parallelizes over row ranges. The instruction set is chosen at run time
//! ([`simd_level`]); the portable path is the definition, the SIMD paths compute the same
//! integers and differ from it only in `f32` summation order.

use std::ops::Range;
use std::sync::OnceLock;

use crate::blocks::{codes_4, codes_5, codes_q2k, codes_q3k, codes_q4k, codes_q5k, codes_q6k, f16_at, scale_min_k4, scales_q3k};
use crate::types::{GgmlType, QuantError};

#[cfg(target_arch = "x86_64")]
mod x86;

/// Activation rows handled in one pass over the weights.
pub const MAX_ACT_ROWS: usize = 8;

/// An instruction-set level for the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Plain Rust: the definition.
    Portable,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL) with VNNI.
    Avx512,
}

impl SimdLevel {
    /// Whether this CPU can run this level.
    pub fn available(self) -> bool {
        match self {
            SimdLevel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => {
                SimdLevel::Avx2.available()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// The best level this CPU runs (detected once).
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        [SimdLevel::Avx512, SimdLevel::Avx2].into_iter().find(|l| l.available()).unwrap_or(SimdLevel::Portable)
    })
}

/// The activation form a weight type takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// Values as they are.
    F32,
    /// 8-bit codes in blocks of 32.
    Q8x32,
    /// 8-bit codes in blocks of 256 with group-of-16 sums.
    Q8K,
}

fn form_of(kind: GgmlType) -> Form {
    match kind {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => Form::F32,
        k if k.is_k_quant() => Form::Q8K,
        _ => Form::Q8x32,
    }
}

/// `n` activation rows of `cols` values, in the form [`QuantMatrix::dot_rows`] takes for one
/// weight type (see the module documentation). Made by [`quantize_activations`].
#[derive(Clone, Debug)]
pub struct Activations {
    form: Form,
    kind: GgmlType,
    rows: usize,
    cols: usize,
    /// `Form::F32`: the values, `[rows, cols]`.
    values: Vec<f32>,
    /// Codes, `[rows, cols]`.
    q: Vec<i8>,
    /// Block scales, `[rows, cols / block]`.
    d: Vec<f32>,
    /// `Form::Q8x32`: `d * sum(codes)` per block, `[rows, cols / 32]`.
    dsum: Vec<f32>,
    /// `Form::Q8K`: sums of codes per group of 16, `[rows, cols / 16]`.
    bsums: Vec<i16>,
    /// `Form::Q8x32` with at least [`INTERLEAVE_MIN_ROWS`] rows on an AVX-512 CPU: the rows in
    /// groups of [`GROUP_ROWS`] (the last padded with zero rows), each group's codes as
    /// `[block][4-code step j][row][4 codes]`, so one 64-byte load holds the same 4 codes of 16
    /// rows; empty otherwise.
    inter_q: Vec<i8>,
    /// The block scales in the same grouping, `[group][block][row]`.
    inter_d: Vec<f32>,
    /// `sum(codes)` in the same grouping, `[group][block][row]` (times `inter_d`, it is `dsum`).
    inter_sum: Vec<i32>,
}

/// Activation rows per interleaved group: one 512-bit lane per row.
pub(crate) const GROUP_ROWS: usize = 16;

/// The fewest activation rows for which the interleaved form is made (and its kernel run).
pub const INTERLEAVE_MIN_ROWS: usize = 12;

impl Activations {
    /// Number of activation rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The weight type these activations were quantized for.
    pub fn kind(&self) -> GgmlType {
        self.kind
    }

    /// Whether these activations serve weights of type `kind` (same form: see
    /// [`quantize_activations`]) with `cols` columns.
    pub fn fits(&self, kind: GgmlType, cols: usize) -> bool {
        form_of(kind) == self.form && cols == self.cols && cols.is_multiple_of(kind.block_size())
    }

    /// The values the kernels actually multiply (`dx * xq`, or the values themselves for float
    /// weights), `[rows, cols]`: what the kernel result is exact against, up to `f32` rounding.
    pub fn dequantized(&self) -> Vec<f32> {
        match self.form {
            Form::F32 => self.values.clone(),
            Form::Q8x32 | Form::Q8K => {
                let bs = if self.form == Form::Q8K { 256 } else { 32 };
                self.q.chunks_exact(bs).zip(&self.d).flat_map(|(q, &d)| q.iter().map(move |&c| d * c as f32)).collect()
            }
        }
    }
}

/// Quantizes `x`, `n` rows of `cols` values (`x.len() = n * cols`), for weights of type `kind`
/// with `cols` columns. `cols` must be a whole number of `kind` blocks. The result also serves
/// every weight type of the same form ([`Activations::fits`]): all 32-element types share one,
/// all K-quants another, the float types a third.
pub fn quantize_activations(kind: GgmlType, x: &[f32], cols: usize) -> Result<Activations, QuantError> {
    let mut a = Activations {
        form: form_of(kind),
        kind,
        rows: 0,
        cols: 0,
        values: Vec::new(),
        q: Vec::new(),
        d: Vec::new(),
        dsum: Vec::new(),
        bsums: Vec::new(),
        inter_q: Vec::new(),
        inter_d: Vec::new(),
        inter_sum: Vec::new(),
    };
    quantize_activations_into(kind, x, cols, &mut a)?;
    Ok(a)
}

/// [`quantize_activations`] into `out`, reusing its buffers (no allocation once they are large
/// enough). On error `out` is left empty (0 rows).
pub fn quantize_activations_into(kind: GgmlType, x: &[f32], cols: usize, out: &mut Activations) -> Result<(), QuantError> {
    let a = out;
    let form = form_of(kind);
    a.form = form;
    a.kind = kind;
    a.rows = 0;
    a.cols = cols;
    a.values.clear();
    a.q.clear();
    a.d.clear();
    a.dsum.clear();
    a.bsums.clear();
    a.inter_q.clear();
    a.inter_d.clear();
    a.inter_sum.clear();
    let bs = match form {
        Form::F32 => 1,
        Form::Q8x32 => 32,
        Form::Q8K => 256,
    };
    if cols == 0 || !cols.is_multiple_of(bs) || !cols.is_multiple_of(kind.block_size()) {
        return Err(QuantError::NotBlockMultiple { kind, elements: cols });
    }
    if !x.len().is_multiple_of(cols) {
        return Err(QuantError::Mismatch(format!("{} activation values is not a whole number of rows of {cols}", x.len())));
    }
    if form == Form::F32 {
        a.values.extend_from_slice(x);
        a.rows = x.len() / cols;
        return Ok(());
    }
    let blocks = x.len() / bs;
    a.q.resize(x.len(), 0);
    a.d.resize(blocks, 0.0);
    match form {
        Form::Q8x32 => a.dsum.resize(blocks, 0.0),
        _ => a.bsums.resize(x.len() / 16, 0),
    }
    #[cfg(target_arch = "x86_64")]
    if simd_level() >= SimdLevel::Avx2 {
        // SAFETY: the CPU runs the AVX2 level (checked just above).
        unsafe { x86::quantize_blocks_avx2(x, bs, a) };
    } else {
        quantize_blocks(x, bs, a);
    }
    #[cfg(not(target_arch = "x86_64"))]
    quantize_blocks(x, bs, a);
    a.rows = x.len() / cols;
    if form == Form::Q8x32 && a.rows >= INTERLEAVE_MIN_ROWS && simd_level() == SimdLevel::Avx512 {
        interleave(a);
    }
    Ok(())
}

/// The block quantization of [`quantize_activations_into`] into `a`'s sized buffers: per block
/// of `bs` values, `d = max|x| / 127`, codes `round(x / d)` (half away from zero, clamped to
/// `-127..=127`; NaN to 0), and `d * sum(codes)` (`bs = 32`) or the 16-code sums (`bs = 256`).
/// Written so that the compiler vectorizes it: the maximum over 8 lanes (`f32::max` ignores
/// NaN and is exact, so the order does not matter), and the rounding as `trunc` plus one where
/// the dropped fraction is at least a half (`x - trunc(x)` is exact), which is `f32::round`
/// without its scalar call. [`x86::quantize_blocks_avx2`] is the same body compiled for AVX2
/// (the same results: the operations are the same); the tests check both against
/// `f32::round` one value at a time.
#[inline(always)]
pub(crate) fn quantize_blocks(x: &[f32], bs: usize, a: &mut Activations) {
    for (bi, (blk, qb)) in x.chunks_exact(bs).zip(a.q.chunks_exact_mut(bs)).enumerate() {
        let mut lanes = [0f32; 8];
        for c in blk.chunks_exact(8) {
            for (m, &v) in lanes.iter_mut().zip(c) {
                *m = m.max(v.abs());
            }
        }
        let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (c, &v) in qb.iter_mut().zip(blk) {
            *c = round_code(v * id);
        }
        store_block(bi, d, qb, &mut a.d, &mut a.dsum, &mut a.bsums);
    }
}

/// Block `bi`'s scale `d` and the sums of its codes `qb`: `d * sum(codes)` for a block of
/// 32, the 16-code sums for a block of 256.
#[inline(always)]
fn store_block(bi: usize, d: f32, qb: &[i8], ds: &mut [f32], dsum: &mut [f32], bsums: &mut [i16]) {
    ds[bi] = d;
    if qb.len() == 32 {
        dsum[bi] = d * qb.iter().map(|&c| c as i32).sum::<i32>() as f32;
    } else {
        for (s, g) in bsums[bi * 16..bi * 16 + 16].iter_mut().zip(qb.chunks_exact(16)) {
            *s = g.iter().map(|&c| c as i16).sum::<i16>();
        }
    }
}

/// `(t.round() as i32).clamp(-127, 127) as i8` (NaN to 0, infinities to the ends) without
/// `round`'s call or the saturating cast's per-value checks.
#[inline(always)]
fn round_code(t: f32) -> i8 {
    let r = t.trunc();
    let r = r + if (t - r).abs() >= 0.5 { 1f32.copysign(t) } else { 0.0 };
    let r = if r.is_nan() { 0.0 } else { r.clamp(-127.0, 127.0) };
    // SAFETY: `r` is a whole number in -127..=127 (NaN replaced, the rest clamped).
    unsafe { r.to_int_unchecked::<i32>() as i8 }
}

/// Fills the interleaved copy of `a`'s codes, scales and sums (see [`Activations::inter_q`]).
fn interleave(a: &mut Activations) {
    let (nb, groups) = (a.cols / 32, a.rows.div_ceil(GROUP_ROWS));
    a.inter_q.resize(groups * nb * 32 * GROUP_ROWS, 0);
    a.inter_d.resize(groups * nb * GROUP_ROWS, 0.0);
    a.inter_sum.resize(groups * nb * GROUP_ROWS, 0);
    for k in 0..a.rows {
        let (g, lane) = (k / GROUP_ROWS, k % GROUP_ROWS);
        for b in 0..nb {
            let at = (g * nb + b) * GROUP_ROWS + lane;
            a.inter_d[at] = a.d[k * nb + b];
            let src = &a.q[k * a.cols + 32 * b..k * a.cols + 32 * b + 32];
            a.inter_sum[at] = src.iter().map(|&c| c as i32).sum();
            for (j, four) in src.chunks_exact(4).enumerate() {
                let dst = (((g * nb + b) * 8 + j) * GROUP_ROWS + lane) * 4;
                a.inter_q[dst..dst + 4].copy_from_slice(four);
            }
        }
    }
}

/// A weight matrix stored as GGUF stores it: `rows` rows of `cols` elements of type `kind`,
/// each row `cols / kind.block_size()` blocks, rows contiguous.
#[derive(Clone, Copy, Debug)]
pub struct QuantMatrix<'a> {
    kind: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: &'a [u8],
}

impl<'a> QuantMatrix<'a> {
    /// Checks the geometry: `cols` a positive whole number of blocks, `data` exactly
    /// `rows * row_bytes` long.
    pub fn new(kind: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, QuantError> {
        if cols == 0 {
            return Err(QuantError::NotBlockMultiple { kind, elements: 0 });
        }
        let row_bytes = kind.bytes_for(cols)?;
        let total = row_bytes.checked_mul(rows).ok_or(QuantError::Overflow)?;
        if data.len() != total {
            return Err(QuantError::Length { what: "quantized matrix bytes", expected: total, got: data.len() });
        }
        Ok(QuantMatrix { kind, rows, cols, row_bytes, data })
    }

    /// The weight type.
    pub fn kind(&self) -> GgmlType {
        self.kind
    }

    /// Output rows (`d_out`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Elements per row (`d_in`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// The raw blocks.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Dequantizes row `r` into `out` (`cols` values).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), QuantError> {
        if r >= self.rows {
            return Err(QuantError::Mismatch(format!("row {r} of a matrix of {} rows", self.rows)));
        }
        crate::blocks::dequantize(self.kind, &self.data[r * self.row_bytes..(r + 1) * self.row_bytes], out)
    }

    /// `out[k * rows.len() + (r - rows.start)] = sum_c W[r][c] * x[k][c]` for the output rows
    /// `r` in `rows` and every activation row `k` of `act` (`out` is `[act.rows(), rows.len()]`),
    /// on this thread, at the best [`SimdLevel`] of this CPU.
    pub fn dot_rows(&self, act: &Activations, rows: Range<usize>, out: &mut [f32]) -> Result<(), QuantError> {
        self.dot_rows_at(simd_level(), act, rows, out)
    }

    /// [`QuantMatrix::dot_rows`] at a given level (an error when this CPU lacks it).
    pub fn dot_rows_at(&self, level: SimdLevel, act: &Activations, rows: Range<usize>, out: &mut [f32]) -> Result<(), QuantError> {
        if !level.available() {
            return Err(QuantError::Mismatch(format!("this CPU cannot run the {level:?} kernels")));
        }
        if form_of(act.kind) != form_of(self.kind) {
            return Err(QuantError::Mismatch(format!("activations quantized for {}, weights are {}", act.kind, self.kind)));
        }
        if act.cols != self.cols {
            return Err(QuantError::Length { what: "activation row", expected: self.cols, got: act.cols });
        }
        if rows.start > rows.end || rows.end > self.rows {
            return Err(QuantError::Mismatch(format!("output rows {rows:?} of a matrix of {} rows", self.rows)));
        }
        let len = rows.len();
        let need = len.checked_mul(act.rows).ok_or(QuantError::Overflow)?;
        if out.len() != need {
            return Err(QuantError::Length { what: "dot_rows output", expected: need, got: out.len() });
        }
        #[cfg(target_arch = "x86_64")]
        if level == SimdLevel::Avx512 && !act.inter_q.is_empty() && x86::dot_interleaved(self, act, rows.clone(), out) {
            return Ok(());
        }
        // Q4_K or Q6_K against many rows (a prefill): the tiled VNNI kernel takes the leading rows.
        #[cfg(target_arch = "x86_64")]
        let mut k0 = if level == SimdLevel::Avx512 { x86::tiled(self, act, rows.clone(), out) } else { 0 };
        #[cfg(not(target_arch = "x86_64"))]
        let mut k0 = 0;
        while k0 < act.rows {
            let n = (act.rows - k0).min(MAX_ACT_ROWS);
            let chunk = &mut out[k0 * len..(k0 + n) * len];
            let view = ActView::new(act, k0, n);
            #[cfg(target_arch = "x86_64")]
            let done = level != SimdLevel::Portable && x86::dot(level, self, &view, rows.clone(), chunk);
            #[cfg(not(target_arch = "x86_64"))]
            let done = false;
            if !done {
                portable(self, &view, rows.clone(), chunk);
            }
            k0 += n;
        }
        Ok(())
    }

    /// `[act.rows(), self.rows()]`: every output row, on this thread.
    pub fn matmul(&self, act: &Activations) -> Result<Vec<f32>, QuantError> {
        let mut out = vec![0f32; act.rows.checked_mul(self.rows).ok_or(QuantError::Overflow)?];
        self.dot_rows(act, 0..self.rows, &mut out)?;
        Ok(out)
    }
}

/// Activation rows `k0..k0 + n` of an [`Activations`], as slices.
pub(crate) struct ActView<'a> {
    pub(crate) n: usize,
    pub(crate) cols: usize,
    pub(crate) values: &'a [f32],
    pub(crate) q: &'a [i8],
    pub(crate) d: &'a [f32],
    pub(crate) dsum: &'a [f32],
    pub(crate) bsums: &'a [i16],
    /// Blocks per row in `d`.
    pub(crate) nb: usize,
}

impl<'a> ActView<'a> {
    fn new(a: &'a Activations, k0: usize, n: usize) -> Self {
        let (c, k1) = (a.cols, k0 + n);
        let nb = match a.form {
            Form::F32 => 0,
            Form::Q8x32 => c / 32,
            Form::Q8K => c / 256,
        };
        let sl = |len: usize| k0 * len..k1 * len;
        ActView {
            n,
            cols: c,
            values: if a.values.is_empty() { &[] } else { &a.values[sl(c)] },
            q: if a.q.is_empty() { &[] } else { &a.q[sl(c)] },
            d: if a.d.is_empty() { &[] } else { &a.d[sl(nb)] },
            dsum: if a.dsum.is_empty() { &[] } else { &a.dsum[sl(nb)] },
            bsums: if a.bsums.is_empty() { &[] } else { &a.bsums[sl(c / 16)] },
            nb,
        }
    }
}

/// One 32-element block, decoded: signed integer codes (`q - 8`, `q - 16`, `q`; Q4_1 / Q5_1
/// their unsigned codes), the scale `d`, and the minimum `m` (0 for the symmetric types).
struct Dec32 {
    q: [i16; 32],
    d: f32,
    m: f32,
}

fn decode32(kind: GgmlType, blk: &[u8]) -> Dec32 {
    let widen = |q: [u8; 32], bias: i16| q.map(|c| c as i16 - bias);
    let d = f16_at(blk, 0);
    match kind {
        GgmlType::Q4_0 => Dec32 { q: widen(codes_4(&blk[2..18]), 8), d, m: 0.0 },
        GgmlType::Q4_1 => Dec32 { q: widen(codes_4(&blk[4..20]), 0), d, m: f16_at(blk, 2) },
        GgmlType::Q5_0 => Dec32 { q: widen(codes_5(&blk[2..6], &blk[6..22]), 16), d, m: 0.0 },
        GgmlType::Q5_1 => Dec32 { q: widen(codes_5(&blk[4..8], &blk[8..24]), 0), d, m: f16_at(blk, 2) },
        _ => {
            let mut q = [0i16; 32];
            for (v, &c) in q.iter_mut().zip(&blk[2..34]) {
                *v = c as i8 as i16;
            }
            Dec32 { q, d, m: 0.0 }
        }
    }
}

/// One K-quant super-block, decoded into the common form: codes `q` (`0..64`), per group of 16
/// a scale `sc` and a minimum `mn` (a group of 32 is two groups of 16 with the same ones), and a
/// code bias (4 for Q3_K, 32 for Q6_K, else 0). Element `e` of group `g` is
/// `d * sc[g] * (q[e] - bias) - dmin * mn[g]`.
struct DecK {
    q: [u8; 256],
    sc: [i32; 16],
    mn: [i32; 16],
    bias: i32,
    d: f32,
    dmin: f32,
}

fn decode_k(kind: GgmlType, blk: &[u8]) -> DecK {
    let (mut sc, mut mn) = ([0i32; 16], [0i32; 16]);
    match kind {
        GgmlType::Q2_K => {
            for g in 0..16 {
                sc[g] = (blk[g] & 15) as i32;
                mn[g] = (blk[g] >> 4) as i32;
            }
            DecK { q: codes_q2k(&blk[16..80]), sc, mn, bias: 0, d: f16_at(blk, 80), dmin: f16_at(blk, 82) }
        }
        GgmlType::Q3_K => {
            let s = scales_q3k(&blk[96..108]);
            for g in 0..16 {
                sc[g] = s[g] as i32;
            }
            DecK { q: codes_q3k(&blk[0..32], &blk[32..96]), sc, mn, bias: 4, d: f16_at(blk, 108), dmin: 0.0 }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (s, m) = scale_min_k4(&blk[4..16]);
            for g in 0..16 {
                sc[g] = s[g / 2] as i32;
                mn[g] = m[g / 2] as i32;
            }
            let q = if kind == GgmlType::Q4_K { codes_q4k(&blk[16..144]) } else { codes_q5k(&blk[16..48], &blk[48..176]) };
            DecK { q, sc, mn, bias: 0, d: f16_at(blk, 0), dmin: f16_at(blk, 2) }
        }
        _ => {
            for g in 0..16 {
                sc[g] = blk[192 + g] as i8 as i32;
            }
            DecK { q: codes_q6k(&blk[0..128], &blk[128..192]), sc, mn, bias: 32, d: f16_at(blk, 208), dmin: 0.0 }
        }
    }
}

/// The decoded super-block against 256 activation codes `x` with scale `dx` and group sums
/// `bsums`: `dx * (d * isum - dmin * msum)` with exact integer sums.
fn dot_k(w: &DecK, x: &[i8], dx: f32, bsums: &[i16]) -> f32 {
    let (mut isum, mut msum) = (0i32, 0i32);
    for g in 0..16 {
        let q = &w.q[16 * g..16 * g + 16];
        let dot: i32 = q.iter().zip(&x[16 * g..16 * g + 16]).map(|(&a, &b)| a as i32 * b as i32).sum();
        isum += w.sc[g] * (dot - w.bias * bsums[g] as i32);
        msum += w.mn[g] * bsums[g] as i32;
    }
    dx * (w.d * isum as f32 - w.dmin * msum as f32)
}

/// The definition: per block, exact integer dot products scaled in `f32` (32-element blocks:
/// `(d * dx) * sum(q * xq) + m * (dx * sum(xq))`; K-quants: [`dot_k`]), block results summed in
/// order; each weight block is decoded once for all activation rows.
fn portable(m: &QuantMatrix, a: &ActView, rows: Range<usize>, out: &mut [f32]) {
    let len = rows.len();
    let (kind, bb, bs) = (m.kind, m.kind.block_bytes(), m.kind.block_size());
    let mut acc = [0f32; MAX_ACT_ROWS];
    let mut wf = vec![0f32; if form_of(kind) == Form::F32 { m.cols } else { 0 }];
    for (i, r) in rows.enumerate() {
        let row = &m.data[r * m.row_bytes..(r + 1) * m.row_bytes];
        acc[..a.n].fill(0.0);
        match form_of(kind) {
            Form::F32 => {
                // Infallible: the row is exactly `cols` elements of `kind`.
                let _ = crate::blocks::dequantize(kind, row, &mut wf);
                for (k, s) in acc[..a.n].iter_mut().enumerate() {
                    *s = dot_f32(&wf, &a.values[k * a.cols..(k + 1) * a.cols]);
                }
            }
            Form::Q8x32 => {
                for (b, blk) in row.chunks_exact(bb).enumerate() {
                    let w = decode32(kind, blk);
                    for (k, s) in acc[..a.n].iter_mut().enumerate() {
                        let x = &a.q[k * a.cols + b * bs..k * a.cols + (b + 1) * bs];
                        let dot: i32 = w.q.iter().zip(x).map(|(&q, &c)| q as i32 * c as i32).sum();
                        let bi = k * a.nb + b;
                        *s += (w.d * a.d[bi]) * dot as f32 + w.m * a.dsum[bi];
                    }
                }
            }
            Form::Q8K => {
                for (b, blk) in row.chunks_exact(bb).enumerate() {
                    let w = decode_k(kind, blk);
                    for (k, s) in acc[..a.n].iter_mut().enumerate() {
                        let bi = k * a.nb + b;
                        let x = &a.q[k * a.cols + b * bs..k * a.cols + (b + 1) * bs];
                        *s += dot_k(&w, x, a.d[bi], &a.bsums[bi * 16..bi * 16 + 16]);
                    }
                }
            }
        }
        for k in 0..a.n {
            out[k * len + i] = acc[k];
        }
    }
}

/// `f32` dot product with 8 interleaved partial sums (the portable order).
pub(crate) fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let mut p = [0f32; 8];
    let (wc, xc) = (w.chunks_exact(8), x.chunks_exact(8));
    let tail: f32 = wc.remainder().iter().zip(xc.remainder()).map(|(a, b)| a * b).sum();
    for (a, b) in wc.zip(xc) {
        for j in 0..8 {
            p[j] += a[j] * b[j];
        }
    }
    ((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7])) + tail
}


#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one value at a time: `f32::round` and the saturating cast (the sums
    /// are stored as the kernel stores them).
    fn quantize_blocks_by_value(x: &[f32], bs: usize, a: &mut Activations) {
        for (bi, (blk, qb)) in x.chunks_exact(bs).zip(a.q.chunks_exact_mut(bs)).enumerate() {
            let amax = blk.iter().fold(0f32, |m, &v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (c, &v) in qb.iter_mut().zip(blk) {
                *c = ((v * id).round() as i32).clamp(-127, 127) as i8;
            }
            store_block(bi, d, qb, &mut a.d, &mut a.dsum, &mut a.bsums);
        }
    }

    #[test]
    fn round_code_is_round_then_saturate() {
        let mut cases = vec![0.0f32, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -0.49999997, 126.5, -126.5, 127.4, 127.5, 1e9, -1e9];
        cases.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE, 8388607.5, 8388609.0, f32::MAX, f32::MIN]);
        let mut s = 0x1234_5678u32;
        for _ in 0..100_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            cases.push(f32::from_bits(s).clamp(-300.0, 300.0));
            cases.push((s % 2000) as f32 / 4.0 - 250.0);
        }
        for t in cases {
            assert_eq!(round_code(t), (t.round() as i32).clamp(-127, 127) as i8, "{t:e}");
        }
    }

    /// The vectorized block quantization (the plain body and its AVX2 build) gives the
    /// by-value loop's bytes, ties included (values at exactly `(k + 1/2) * d`, which round
    /// away from zero), for both block sizes.
    #[test]
    fn vectorized_quantization_equals_the_plain_loop() {
        let mut s = 0x9e37_79b9u32;
        let mut x: Vec<f32> = (0..256 * 24)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 8.0
            })
            .collect();
        // Block 0 of each size: max 127 (so d = 1) and every other value a tie, both signs.
        for (i, v) in x[..256].iter_mut().enumerate() {
            *v = if i == 0 { 127.0 } else { (i % 120) as f32 - 59.5 };
        }
        x[300] = f32::NAN;
        x[301] = f32::INFINITY;
        for kind in [GgmlType::Q8_0, GgmlType::Q4_K] {
            let simd = quantize_activations(kind, &x, 512).unwrap();
            let bs = if kind == GgmlType::Q8_0 { 32 } else { 256 };
            let mut plain = simd.clone();
            quantize_blocks(&x, bs, &mut plain);
            let mut by_value = simd.clone();
            quantize_blocks_by_value(&x, bs, &mut by_value);
            assert_eq!(plain.q, by_value.q, "{kind}: codes");
            assert_eq!(plain.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), by_value.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{kind}: scales");
            assert_eq!(plain.dsum.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), by_value.dsum.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            assert_eq!(plain.bsums, by_value.bsums);
            assert_eq!(plain.q, simd.q, "{kind}: codes");
            assert_eq!(plain.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), simd.d.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{kind}: scales");
            assert_eq!(plain.dsum.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), simd.dsum.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
            assert_eq!(plain.bsums, simd.bsums);
            // The ties went away from zero.
            assert_eq!(plain.q[1], -59, "{kind}: -58.5 rounds to -59");
        }
    }
}
