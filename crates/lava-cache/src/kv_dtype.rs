//! The element format of stored keys and values (`--kv-dtype`), and the stored
//! rows themselves.
//!
//! - `f32`: as computed (the default).
//! - `f16`: IEEE half precision, round to nearest even: half the bytes.
//! - `q8_0`: ggml's Q8_0 block format, per block of 32 consecutive values of a
//!   row one scale `d = max|x| / 127` (stored as f16) and 32 codes
//!   `q = round(x / d)` (as `x * (1/d)`, ties away from zero, `i8`), read back
//!   as `q * d`: 34 bytes per 32 values, `~3.76x` fewer than f32. The
//!   head dimension must be a multiple of 32.
//!
//! The format only changes what the cache stores. A layer's first `attend`
//! (the prefill) attends over, and scores, the prompt's K/V as computed;
//! every later `attend` (decode, later prefill chunks) and every re-scoring
//! reads what is stored, the new tokens included.
//!
//! Where the backend has no f16 tensors (ndarray), `f16` is refused and
//! `q8_0` keeps its scales as f32 holding the f16-rounded values (the same
//! numbers, 36 bytes per 32 values; [`KvDtype::row_bytes`] states the f16
//! layout, [`crate::KvCache::stats`] what is really allocated).

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use burn::tensor::{backend::Backend, DType, FloatDType, Int, IntDType, Tensor, TensorData};

use crate::fast_path::{
    decode_attention, decode_attention_f16, decode_attention_q8_0, quantize_q8_0_host, write_f16_in_place, write_in_place, write_q8_0_in_place, Segment,
};
use crate::host::to_host;
use crate::CacheError;

/// Values per Q8_0 block.
pub const Q8_0_BLOCK: usize = 32;

/// How the cache stores keys and values (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum KvDtype {
    /// 32-bit floats, as computed.
    #[default]
    F32,
    /// 16-bit IEEE floats.
    F16,
    /// ggml's Q8_0: 8-bit codes with one f16 scale per 32 values.
    Q8_0,
}

impl KvDtype {
    /// Every format, in order of size.
    pub const ALL: [KvDtype; 3] = [KvDtype::F32, KvDtype::F16, KvDtype::Q8_0];

    /// Bytes of one stored row of `head_dim` values (K or V): `4 D`, `2 D`,
    /// or `D + 2 D / 32` (Q8_0 with f16 scales).
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            KvDtype::F32 => head_dim * 4,
            KvDtype::F16 => head_dim * 2,
            KvDtype::Q8_0 => head_dim + head_dim / Q8_0_BLOCK * 2,
        }
    }

    /// The name `--kv-dtype` takes.
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Q8_0 => "q8_0",
        }
    }

    /// The values a cache storing `x` (`[.., D]`) in this format reads back:
    /// `x` itself for f32, rounded to f16, or quantized to Q8_0 and
    /// dequantized. Errors as [`check`](Self::check).
    pub fn round_trip<B: Backend, const N: usize>(self, x: Tensor<B, N>) -> Result<Tensor<B, N>, CacheError> {
        self.check::<B>(x.dims()[N - 1], &x.device())?;
        Ok(KvRows::encode(x, self)?.decode())
    }

    /// Checks that rows of `head_dim` values can be stored this way on `B`.
    pub fn check<B: Backend>(self, head_dim: usize, device: &B::Device) -> Result<(), CacheError> {
        match self {
            KvDtype::F32 => Ok(()),
            KvDtype::F16 if !B::supports_dtype(device, DType::F16) => Err(CacheError::InvalidParameters(
                "kv dtype f16 needs a backend with f16 tensors (flex or cuda); use --kv-dtype f32 or q8_0 on this backend".into(),
            )),
            KvDtype::F16 => Ok(()),
            KvDtype::Q8_0 if head_dim % Q8_0_BLOCK != 0 => Err(CacheError::InvalidParameters(format!(
                "kv dtype q8_0 stores blocks of {Q8_0_BLOCK} values, but the head dimension is {head_dim}; use f16 or f32"
            ))),
            KvDtype::Q8_0 if !B::supports_dtype(device, DType::I8) => Err(CacheError::InvalidParameters(
                "kv dtype q8_0 needs a backend with 8-bit integer tensors; use f16 or f32".into(),
            )),
            KvDtype::Q8_0 => Ok(()),
        }
    }
}

impl fmt::Display for KvDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvDtype {
    type Err = CacheError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            "q8_0" => Ok(KvDtype::Q8_0),
            other => Err(CacheError::InvalidParameters(format!("unknown kv dtype {other:?}: expected f32, f16 or q8_0"))),
        }
    }
}

/// Stored K or V rows, shaped `[.., D]` (rank `N`; the last dimension is the
/// head dimension) in one [`KvDtype`].
#[derive(Debug, Clone)]
pub(crate) enum KvRows<B: Backend, const N: usize> {
    /// `f32` values.
    F32(Tensor<B, N>),
    /// `f16` values.
    F16(Tensor<B, N>),
    /// Q8_0: `codes` `[.., D]` (`i8`), `scales` `[.., D / 32]` (f16 where the
    /// backend has it, else f32 holding f16 values).
    Q8_0 { codes: Tensor<B, N, Int>, scales: Tensor<B, N> },
}

impl<B: Backend, const N: usize> KvRows<B, N> {
    /// `x` (`f32`, `[.., D]`) stored as `dtype` (checked with
    /// [`KvDtype::check`] beforehand).
    pub fn encode(x: Tensor<B, N>, dtype: KvDtype) -> Result<Self, CacheError> {
        Ok(match dtype {
            KvDtype::F32 => KvRows::F32(x),
            KvDtype::F16 => KvRows::F16(x.cast(FloatDType::F16)),
            KvDtype::Q8_0 => {
                let (codes, scales) = quantize_q8_0(x)?;
                KvRows::Q8_0 { codes, scales }
            }
        })
    }

    /// Zeros shaped `dims` (`[.., D]`) stored as `dtype`.
    pub fn zeros(dims: [usize; N], dtype: KvDtype, device: &B::Device) -> Self {
        match dtype {
            KvDtype::F32 => KvRows::F32(Tensor::zeros(dims, device)),
            KvDtype::F16 => KvRows::F16(Tensor::zeros(dims, (device, DType::F16))),
            KvDtype::Q8_0 => {
                let scale_dtype = if B::supports_dtype(device, DType::F16) { DType::F16 } else { DType::F32 };
                KvRows::Q8_0 {
                    codes: Tensor::zeros(dims, (device, DType::I8)),
                    scales: Tensor::zeros(scale_dims(dims), (device, scale_dtype)),
                }
            }
        }
    }

    /// The dimensions (`[.., D]`).
    pub fn dims(&self) -> [usize; N] {
        match self {
            KvRows::F32(x) | KvRows::F16(x) => x.dims(),
            KvRows::Q8_0 { codes, .. } => codes.dims(),
        }
    }

    /// Bytes of one row as stored.
    pub fn row_bytes(&self) -> usize {
        let d = self.dims()[N - 1];
        match self {
            KvRows::F32(_) => d * 4,
            KvRows::F16(_) => d * 2,
            KvRows::Q8_0 { scales, .. } => d + d / Q8_0_BLOCK * scales.dtype().size(),
        }
    }

    /// The values as `f32` (dequantized), same shape.
    pub fn decode(self) -> Tensor<B, N> {
        match self {
            KvRows::F32(x) => x,
            KvRows::F16(x) => x.cast(FloatDType::F32),
            KvRows::Q8_0 { codes, scales } => {
                let dims = codes.dims();
                let rows = dims[..N - 1].iter().product::<usize>();
                let blocks = dims[N - 1] / Q8_0_BLOCK;
                let q = codes.cast(FloatDType::F32).reshape([rows, blocks, Q8_0_BLOCK]);
                let d = scales.cast(FloatDType::F32).reshape([rows, blocks, 1]);
                (q * d).reshape(dims)
            }
        }
    }

    /// Sub-rows `ranges` (the last range must cover the whole head dimension).
    pub fn slice(self, ranges: [Range<usize>; N]) -> Self {
        match self {
            KvRows::F32(x) => KvRows::F32(x.slice(ranges)),
            KvRows::F16(x) => KvRows::F16(x.slice(ranges)),
            KvRows::Q8_0 { codes, scales } => {
                let s = scale_ranges(&ranges);
                KvRows::Q8_0 { codes: codes.slice(ranges), scales: scales.slice(s) }
            }
        }
    }

    /// Writes `value` over `ranges` (the last covering the head dimension);
    /// `value` is converted to this format first if it is in another.
    pub fn slice_assign(self, ranges: [Range<usize>; N], value: Self) -> Result<Self, CacheError> {
        let value = value.into_format(self.dtype())?;
        Ok(match (self, value) {
            (KvRows::F32(x), KvRows::F32(v)) => KvRows::F32(x.slice_assign(ranges, v)),
            (KvRows::F16(x), KvRows::F16(v)) => KvRows::F16(x.slice_assign(ranges, v)),
            (KvRows::Q8_0 { codes, scales }, KvRows::Q8_0 { codes: vc, scales: vs }) => {
                let s = scale_ranges(&ranges);
                let vs = vs.cast(scales.dtype());
                KvRows::Q8_0 { codes: codes.slice_assign(ranges, vc), scales: scales.slice_assign(s, vs) }
            }
            (x, _) => return Err(mixed(x.dtype())),
        })
    }

    /// `self` in `dtype` (re-encoded through f32 if it is in another format).
    fn into_format(self, dtype: KvDtype) -> Result<Self, CacheError> {
        if self.dtype() == dtype {
            Ok(self)
        } else {
            KvRows::encode(self.decode(), dtype)
        }
    }

    /// Writes `x` (f32, shaped as `ranges`; the last range covering the head
    /// dimension) over `ranges`, encoding it. On flex the values go straight
    /// into the storage, element runs `runs` (`(storage offset, offset in x,
    /// len)`, as [`write_in_place`]) describing where; elsewhere (or if the
    /// storage is shared) through `slice_assign`.
    pub fn write(self, ranges: [Range<usize>; N], x: Tensor<B, N>, runs: &[(usize, usize, usize)]) -> Result<Self, CacheError> {
        let dtype = self.dtype();
        let rest = match self {
            KvRows::F32(buf) => match write_in_place(buf, &x, runs) {
                Ok(b) => return Ok(KvRows::F32(b)),
                Err(b) => KvRows::F32(b),
            },
            KvRows::F16(buf) => match write_f16_in_place(buf, &x, runs) {
                Ok(b) => return Ok(KvRows::F16(b)),
                Err(b) => KvRows::F16(b),
            },
            KvRows::Q8_0 { codes, scales } => match write_q8_0_in_place(codes, scales, &x, runs) {
                Ok((codes, scales)) => return Ok(KvRows::Q8_0 { codes, scales }),
                Err((codes, scales)) => KvRows::Q8_0 { codes, scales },
            },
        };
        rest.slice_assign(ranges, KvRows::encode(x, dtype)?)
    }

    /// The same rows reshaped to `dims` (the last dimension, the head
    /// dimension, unchanged).
    pub fn reshape<const M: usize>(self, dims: [usize; M]) -> KvRows<B, M> {
        match self {
            KvRows::F32(x) => KvRows::F32(x.reshape(dims)),
            KvRows::F16(x) => KvRows::F16(x.reshape(dims)),
            KvRows::Q8_0 { codes, scales } => KvRows::Q8_0 { codes: codes.reshape(dims), scales: scales.reshape(scale_dims(dims)) },
        }
    }

    /// Rows `idx` along dimension 0.
    pub fn select(self, idx: Tensor<B, 1, Int>) -> Self {
        match self {
            KvRows::F32(x) => KvRows::F32(x.select(0, idx)),
            KvRows::F16(x) => KvRows::F16(x.select(0, idx)),
            KvRows::Q8_0 { codes, scales } => KvRows::Q8_0 { codes: codes.select(0, idx.clone()), scales: scales.select(0, idx) },
        }
    }

    /// `self` then `other` along dimension 0 (`other` converted to this format).
    pub fn cat(self, other: Self) -> Result<Self, CacheError> {
        let other = other.into_format(self.dtype())?;
        Ok(match (self, other) {
            (KvRows::F32(a), KvRows::F32(b)) => KvRows::F32(Tensor::cat(vec![a, b], 0)),
            (KvRows::F16(a), KvRows::F16(b)) => KvRows::F16(Tensor::cat(vec![a, b], 0)),
            (KvRows::Q8_0 { codes: ac, scales: a_s }, KvRows::Q8_0 { codes: bc, scales: bs }) => {
                let bs = bs.cast(a_s.dtype());
                KvRows::Q8_0 { codes: Tensor::cat(vec![ac, bc], 0), scales: Tensor::cat(vec![a_s, bs], 0) }
            }
            (a, _) => return Err(mixed(a.dtype())),
        })
    }

    /// The format.
    pub fn dtype(&self) -> KvDtype {
        match self {
            KvRows::F32(_) => KvDtype::F32,
            KvRows::F16(_) => KvDtype::F16,
            KvRows::Q8_0 { .. } => KvDtype::Q8_0,
        }
    }
}

/// The flex decode kernel for `q` (`[H_q, 1, D]`) over the rows `segments`
/// of `keys`/`values` in whatever format they are stored; `None` where the
/// fast path does not apply (the caller then decodes and attends).
pub(crate) fn decode_attention_stored<B: Backend, const N: usize>(
    q: &Tensor<B, 3>,
    kv_heads: usize,
    keys: &KvRows<B, N>,
    values: &KvRows<B, N>,
    segments: &[Segment],
) -> Option<Tensor<B, 3>> {
    match (keys, values) {
        (KvRows::F32(k), KvRows::F32(v)) => decode_attention(q, kv_heads, k, v, segments),
        (KvRows::F16(k), KvRows::F16(v)) => decode_attention_f16(q, kv_heads, k, v, segments),
        (KvRows::Q8_0 { codes: kc, scales: ks }, KvRows::Q8_0 { codes: vc, scales: vs }) => {
            decode_attention_q8_0(q, kv_heads, kc, ks, vc, vs, segments)
        }
        _ => None,
    }
}

/// Two rows of different formats after conversion: cannot happen.
fn mixed(dtype: KvDtype) -> CacheError {
    CacheError::Internal(format!("stored rows in {dtype} met rows of another format"))
}

/// `dims` with the last dimension divided into Q8_0 blocks.
fn scale_dims<const N: usize>(mut dims: [usize; N]) -> [usize; N] {
    dims[N - 1] /= Q8_0_BLOCK;
    dims
}

/// `ranges` with the last range (the whole head dimension) over the scales.
fn scale_ranges<const N: usize>(ranges: &[Range<usize>; N]) -> [Range<usize>; N] {
    let mut s = ranges.clone();
    s[N - 1] = ranges[N - 1].start / Q8_0_BLOCK..ranges[N - 1].end.div_ceil(Q8_0_BLOCK);
    s
}

/// ggml's Q8_0 quantization of `x` (`f32`, `[.., D]`, `D` a multiple of 32)
/// on the device: per block `d = amax / 127`, `q = round_away(x * (1/d))`
/// (`0` for an all-zero block), `d` rounded to f16. Returns the `i8` codes and
/// the scales (`[.., D / 32]`, f16, or f32 holding f16 values where the backend
/// has no f16 tensors).
pub(crate) fn quantize_q8_0<B: Backend, const N: usize>(x: Tensor<B, N>) -> Result<(Tensor<B, N, Int>, Tensor<B, N>), CacheError> {
    // On flex, the same arithmetic on the host (one pass instead of a dozen tensor ops).
    if let Some(stored) = quantize_q8_0_host(&x) {
        return Ok(stored);
    }
    let dims = x.dims();
    let device = x.device();
    let rows = dims[..N - 1].iter().product::<usize>();
    let blocks = dims[N - 1] / Q8_0_BLOCK;
    let x = x.cast(FloatDType::F32).reshape([rows, blocks, Q8_0_BLOCK]);
    let d = x.clone().abs().max_dim(2).div_scalar(127.0); // [rows, blocks, 1]
    // `1 / d` as an IEEE division (some backends' `recip` is approximate).
    let id = d.ones_like().div(d.clone()).mask_fill(d.clone().equal_elem(0.0), 0.0);
    let v = x * id;
    // Round half away from zero exactly (C's `roundf`): `floor(a) + floor(2 (a - floor(a)))`
    // for `a = |v|` (`floor(a + 0.5)` would round `0.5 - 2^-25` up).
    let a = v.clone().abs();
    let whole = a.clone().floor();
    let q = (whole.clone() + (a - whole).mul_scalar(2.0).floor()) * v.sign();
    let codes = q.cast(IntDType::I8).reshape(dims);
    let scales = if B::supports_dtype(&device, DType::F16) {
        d.cast(FloatDType::F16)
    } else {
        let host: Vec<f32> = to_host(d)?.into_iter().map(|s| half::f16::from_f32(s).to_f32()).collect();
        Tensor::from_data(TensorData::new(host, [rows, blocks, 1]), &device)
    };
    Ok((codes, scales.reshape(scale_dims(dims))))
}

impl<B: Backend> KvRows<B, 2> {
    /// The rows on the host exactly as stored (f16 as bit patterns; Q8_0
    /// scales as f16 bit patterns, which the f32 scales of backends without
    /// f16 hold exactly).
    pub fn to_stored(&self) -> Result<crate::snapshot::StoredRows, CacheError> {
        use crate::snapshot::StoredRows;
        let data = |t: Tensor<B, 2>| t.try_into_data().map_err(|e| CacheError::Backend(e.to_string()));
        let f16_bits = |t: Tensor<B, 2>| -> Result<Vec<u16>, CacheError> {
            let d = data(t)?.convert::<half::f16>();
            Ok(d.into_vec::<half::f16>().map_err(|e| CacheError::Backend(format!("{e:?}")))?.into_iter().map(|x| x.to_bits()).collect())
        };
        Ok(match self {
            KvRows::F32(x) => StoredRows::F32(to_host(x.clone())?),
            KvRows::F16(x) => StoredRows::F16(f16_bits(x.clone())?),
            KvRows::Q8_0 { codes, scales } => {
                let c = codes.clone().try_into_data().map_err(|e| CacheError::Backend(e.to_string()))?.convert::<i8>();
                StoredRows::Q8_0 { codes: c.into_vec::<i8>().map_err(|e| CacheError::Backend(format!("{e:?}")))?, scales: f16_bits(scales.clone())? }
            }
        })
    }

    /// Rows `[rows, d]` on `device` from `x` (as [`to_stored`](Self::to_stored)
    /// gives them); `x` must hold `rows * d` values.
    pub fn from_stored(x: &crate::snapshot::StoredRows, rows: usize, d: usize, device: &B::Device) -> Result<Self, CacheError> {
        use crate::snapshot::StoredRows;
        if x.values() != rows * d {
            return Err(CacheError::Snapshot(format!("{} stored values for {rows} rows of {d}", x.values())));
        }
        let halves = |bits: &[u16]| -> Vec<half::f16> { bits.iter().map(|&b| half::f16::from_bits(b)).collect() };
        Ok(match x {
            StoredRows::F32(v) => KvRows::F32(Tensor::from_data(TensorData::new(v.clone(), [rows, d]), device)),
            StoredRows::F16(v) => {
                x.dtype().check::<B>(d, device)?;
                KvRows::F16(Tensor::from_data(TensorData::new(halves(v), [rows, d]), (device, DType::F16)))
            }
            StoredRows::Q8_0 { codes, scales } => {
                x.dtype().check::<B>(d, device)?;
                let dims = scale_dims([rows, d]);
                let scales = if B::supports_dtype(device, DType::F16) {
                    Tensor::from_data(TensorData::new(halves(scales), dims), (device, DType::F16))
                } else {
                    let f: Vec<f32> = scales.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect();
                    Tensor::from_data(TensorData::new(f, dims), device)
                };
                KvRows::Q8_0 { codes: Tensor::from_data(TensorData::new(codes.clone(), [rows, d]), (device, DType::I8)), scales }
            }
        })
    }
}
