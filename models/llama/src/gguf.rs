//! GGUF (v2/v3) reader: metadata, tensor table and dequantisation to f32.
//!
//! Supported tensor types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and
//! the K-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (the block formats of
//! [`lava_quant`]). Every read is
//! bounds-checked, so a truncated or corrupt file yields a [`GgufError`]
//! naming the section where it ended, never a panic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};


/// Errors reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The first four bytes are not `GGUF`.
    #[error("{path} is not a GGUF file (magic bytes {found:?}, expected \"GGUF\")")]
    BadMagic {
        /// File.
        path: PathBuf,
        /// The bytes found.
        found: String,
    },
    /// A GGUF version this reader does not know.
    #[error("{path}: unsupported GGUF version {version} (supported: 2, 3)")]
    UnsupportedVersion {
        /// File.
        path: PathBuf,
        /// Version found.
        version: u32,
    },
    /// The file ends before a section is complete.
    #[error("{path} is truncated: it ends inside the {section} (needed {needed} bytes at offset {offset}, file has {len}); download or write the file again")]
    Truncated {
        /// File.
        path: PathBuf,
        /// Section: header, metadata, tensor table or tensor data.
        section: &'static str,
        /// Offset of the read.
        offset: u64,
        /// Bytes needed.
        needed: u64,
        /// File length.
        len: u64,
    },
    /// A structurally invalid value.
    #[error("{path}: corrupt {section}: {detail}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Section.
        section: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A tensor type without a dequantiser.
    #[error("{path}: tensor {tensor} has type {kind}, which lava cannot read (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K); convert the model with llama.cpp's llama-quantize to one of these")]
    UnsupportedType {
        /// File.
        path: PathBuf,
        /// Tensor name.
        tensor: String,
        /// Type name.
        kind: String,
    },
    /// A tensor the model needs is absent.
    #[error("{path}: missing tensor {tensor}")]
    MissingTensor {
        /// File.
        path: PathBuf,
        /// Tensor name.
        tensor: String,
    },
    /// Missing or mistyped metadata key.
    #[error("{path}: metadata key {key} {problem}")]
    Metadata {
        /// File.
        path: PathBuf,
        /// Key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// f32 or f64.
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string (invalid UTF-8 replaced).
    Str(String),
    /// Array of values.
    Array(Vec<Value>),
}

impl Value {
    /// As an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    /// As a float, if numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }
    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// As a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// As an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A GGML tensor type: one lava reads (a block format of [`lava_quant`]), or
/// any other id, kept for the error message. The known types are spelled as
/// constants (`GgmlType::Q4_1`), usable in patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// A type lava reads.
    Known(lava_quant::GgmlType),
    /// Any other type id (not readable here).
    Other(u32),
}

#[allow(non_upper_case_globals)]
impl GgmlType {
    /// 32-bit float.
    pub const F32: Self = Self::Known(lava_quant::GgmlType::F32);
    /// 16-bit IEEE float.
    pub const F16: Self = Self::Known(lava_quant::GgmlType::F16);
    /// bfloat16.
    pub const BF16: Self = Self::Known(lava_quant::GgmlType::BF16);
    /// 4-bit, block of 32, scale.
    pub const Q4_0: Self = Self::Known(lava_quant::GgmlType::Q4_0);
    /// 4-bit, block of 32, scale and minimum.
    pub const Q4_1: Self = Self::Known(lava_quant::GgmlType::Q4_1);
    /// 5-bit, block of 32, scale.
    pub const Q5_0: Self = Self::Known(lava_quant::GgmlType::Q5_0);
    /// 5-bit, block of 32, scale and minimum.
    pub const Q5_1: Self = Self::Known(lava_quant::GgmlType::Q5_1);
    /// 8-bit, block of 32, scale.
    pub const Q8_0: Self = Self::Known(lava_quant::GgmlType::Q8_0);

    fn from_id(id: u32) -> Self {
        lava_quant::GgmlType::from_id(id).map_or(Self::Other(id), Self::Known)
    }

    /// The ggml type id (as stored in GGUF).
    pub fn id(&self) -> u32 {
        match self {
            Self::Known(q) => q.id(),
            Self::Other(id) => *id,
        }
    }

    /// The block format, `None` for a type lava cannot read.
    pub fn quant(&self) -> Option<lava_quant::GgmlType> {
        match self {
            Self::Known(q) => Some(*q),
            Self::Other(_) => None,
        }
    }

    /// The type's name as llama.cpp prints it.
    pub fn name(&self) -> String {
        const NAMES: [&str; 31] = [
            "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K",
            "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
            "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
        ];
        let id = self.id();
        NAMES.get(id as usize).map_or_else(|| format!("type id {id}"), |n| n.to_string())
    }

    /// `(elements per block, bytes per block)`, or `None` if unsupported.
    fn block(&self) -> Option<(usize, usize)> {
        self.quant().map(|q| (q.block_size(), q.block_bytes()))
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// GGML dimensions, innermost first (`[in, out]` for a weight matrix).
    pub dims: Vec<u64>,
    /// Element type.
    pub kind: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Shape in row-major order (outermost first), as PyTorch writes it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file, memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    data: Box<dyn AsRef<[u8]> + Send + Sync>,
    /// GGUF version.
    pub version: u32,
    /// Metadata key/values.
    pub metadata: HashMap<String, Value>,
    /// Tensors by name.
    pub tensors: HashMap<String, TensorInfo>,
    /// Tensor names in file order.
    pub tensor_order: Vec<String>,
    data_start: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

struct MmapBytes(memmap2::Mmap);
impl AsRef<[u8]> for MmapBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// At most this many metadata values (array elements included) are decoded
/// per file: each costs about 32 bytes in memory, and a real vocabulary
/// (tokens, scores, types and merges of a 262k-token tokenizer) needs under
/// 1.5 million. A 50 MB array of bytes would otherwise take 1.7 GB.
pub const MAX_METADATA_VALUES: usize = 1 << 23;

struct Cursor<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
    section: &'static str,
    /// Metadata values that may still be decoded (see [`MAX_METADATA_VALUES`]).
    values_left: usize,
    /// The metadata key being read, for messages.
    key: String,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                section: self.section,
                offset: self.pos as u64,
                needed: n as u64,
                len: self.bytes.len() as u64,
            }),
        }
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    fn corrupt(&self, detail: String) -> GgufError {
        GgufError::Corrupt { path: self.path.to_path_buf(), section: self.section, detail }
    }
    /// A length that must fit in what remains of the file (each element at least `min_size` bytes).
    fn len(&mut self, min_size: usize) -> Result<usize, GgufError> {
        let n = self.u64()?;
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > remaining {
            return Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                section: self.section,
                offset: self.pos as u64,
                needed: n.saturating_mul(min_size as u64),
                len: self.bytes.len() as u64,
            });
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.len(1)?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U64(self.arr::<1>()?[0] as u64),
            1 => Value::I64(self.arr::<1>()?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.arr()?) as u64),
            3 => Value::I64(i16::from_le_bytes(self.arr()?) as i64),
            4 => Value::U64(self.u32()? as u64),
            5 => Value::I64(i32::from_le_bytes(self.arr()?) as i64),
            6 => Value::F64(f32::from_le_bytes(self.arr()?) as f64),
            7 => Value::Bool(self.arr::<1>()?[0] != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(self.corrupt("arrays nested too deeply".into()));
                }
                let ety = self.u32()?;
                let n = self.len(1)?;
                if n > self.values_left {
                    return Err(self.corrupt(format!(
                        "metadata key {} holds an array of {n} values, more than the {MAX_METADATA_VALUES} metadata values lava reads per file (a tokenizer needs far fewer)",
                        self.key
                    )));
                }
                self.values_left -= n;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(ety, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.arr()?)),
            12 => Value::F64(f64::from_le_bytes(self.arr()?)),
            other => return Err(self.corrupt(format!("unknown metadata value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Opens and parses `path` (memory-mapped; tensor data is read lazily).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the file is opened read-only; lava never writes model files it has open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, Box::new(MmapBytes(map)))
    }

    /// Parses a GGUF image held in memory (used by tests and fuzzing).
    pub fn from_bytes(name: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(name.as_ref(), Box::new(bytes))
    }

    fn parse(path: &Path, data: Box<dyn AsRef<[u8]> + Send + Sync>) -> Result<Self, GgufError> {
        let bytes = (*data).as_ref();
        let mut c =
            Cursor { path, bytes, pos: 0, section: "header", values_left: MAX_METADATA_VALUES, key: String::new() };
        let magic = c.arr::<4>().map_err(|_| GgufError::BadMagic {
            path: path.to_path_buf(),
            found: String::from_utf8_lossy(bytes).into_owned(),
        })?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic {
                path: path.to_path_buf(),
                found: String::from_utf8_lossy(&magic).into_owned(),
            });
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion { path: path.to_path_buf(), version });
        }
        let n_tensors = c.u64()?;
        let n_kv = c.u64()?;
        c.section = "metadata";
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            if c.values_left == 0 {
                return Err(c.corrupt(format!("more than {MAX_METADATA_VALUES} metadata values (at key {key})")));
            }
            c.values_left -= 1;
            c.key.clone_from(&key);
            let ty = c.u32()?;
            let v = c.value(ty, 0)?;
            metadata.insert(key, v);
        }
        c.section = "tensor table";
        let mut tensors = HashMap::new();
        let mut tensor_order = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string()?;
            let nd = c.u32()?;
            if nd == 0 || nd > 4 {
                return Err(c.corrupt(format!("tensor {name} has {nd} dimensions (1 to 4 allowed)")));
            }
            let mut dims = Vec::with_capacity(nd as usize);
            for _ in 0..nd {
                dims.push(c.u64()?);
            }
            let kind = GgmlType::from_id(c.u32()?);
            let offset = c.u64()?;
            if dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).is_none_or(|n| n > (1 << 40)) {
                return Err(c.corrupt(format!("tensor {name} has impossible dimensions {dims:?}")));
            }
            tensor_order.push(name.clone());
            tensors.insert(name.clone(), TensorInfo { name, dims, kind, offset });
        }
        let alignment = metadata.get("general.alignment").and_then(Value::as_u64).unwrap_or(32).max(1);
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        Ok(Self { path: path.to_path_buf(), data, version, metadata, tensors, tensor_order, data_start })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn meta_err(&self, key: &str, problem: &str) -> GgufError {
        GgufError::Metadata { path: self.path.clone(), key: key.to_string(), problem: problem.to_string() }
    }

    /// A required unsigned integer.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.get(key).ok_or_else(|| self.meta_err(key, "is missing"))?;
        v.as_u64().ok_or_else(|| self.meta_err(key, "is not a non-negative integer"))
    }

    /// A required float.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.get(key).ok_or_else(|| self.meta_err(key, "is missing"))?;
        v.as_f64().ok_or_else(|| self.meta_err(key, "is not a number"))
    }

    /// A required string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.get(key).ok_or_else(|| self.meta_err(key, "is missing"))?;
        v.as_str().ok_or_else(|| self.meta_err(key, "is not a string"))
    }

    /// A required array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let v = self.get(key).ok_or_else(|| self.meta_err(key, "is missing"))?;
        let a = v.as_array().ok_or_else(|| self.meta_err(key, "is not an array"))?;
        a.iter().map(|x| x.as_str().ok_or_else(|| self.meta_err(key, "holds a non-string"))).collect()
    }

    /// Tensor info by name, or [`GgufError::MissingTensor`].
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensors
            .get(name)
            .ok_or_else(|| GgufError::MissingTensor { path: self.path.clone(), tensor: name.to_string() })
    }

    /// Dequantises a tensor to f32, row-major (outermost dimension first).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let (info, raw) = self.tensor_bytes(name)?;
        Ok(dequantize_raw(info.kind, raw, info.elements() as usize))
    }

    /// A tensor's entry and its bytes as stored (blocks of its type), checked
    /// to lie inside the file.
    pub fn tensor_bytes(&self, name: &str) -> Result<(&TensorInfo, &[u8]), GgufError> {
        let (info, range) = self.tensor_range(name)?;
        Ok((info, self.bytes_at(range)))
    }

    /// The bytes of the file at `range` (empty when outside it).
    pub fn bytes_at(&self, range: std::ops::Range<usize>) -> &[u8] {
        (*self.data).as_ref().get(range).unwrap_or(&[])
    }

    /// A tensor's entry and the range of the file its bytes take, checked to
    /// lie inside the file.
    pub fn tensor_range(&self, name: &str) -> Result<(&TensorInfo, std::ops::Range<usize>), GgufError> {
        let info = self.tensor(name)?;
        let (per_block, block_bytes) = info.kind.block().ok_or_else(|| GgufError::UnsupportedType {
            path: self.path.clone(),
            tensor: name.to_string(),
            kind: info.kind.name(),
        })?;
        let n = info.elements() as usize;
        if n % per_block != 0 {
            return Err(GgufError::Corrupt {
                path: self.path.clone(),
                section: "tensor table",
                detail: format!("tensor {name} has {n} elements, not a multiple of the {} block size {per_block}", info.kind.name()),
            });
        }
        let nbytes = (n / per_block) * block_bytes;
        let bytes = (*self.data).as_ref();
        let start = self.data_start.checked_add(info.offset);
        let range = start
            .and_then(|s| s.checked_add(nbytes as u64).map(|e| (s, e)))
            .filter(|&(_, e)| e <= bytes.len() as u64)
            .ok_or(GgufError::Truncated {
                path: self.path.clone(),
                section: "tensor data",
                offset: start.unwrap_or(u64::MAX),
                needed: nbytes as u64,
                len: bytes.len() as u64,
            })?;
        Ok((info, range.0 as usize..range.1 as usize))
    }
}

/// Dequantises `n` elements of `kind` from `raw` (whose length the caller
/// checked), bit-identically to llama.cpp (see [`lava_quant::dequantize`]).
fn dequantize_raw(kind: GgmlType, raw: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    match kind.quant() {
        Some(q) if lava_quant::dequantize(q, raw, &mut out).is_ok() => out,
        _ => Vec::new(),
    }
}

/// Quantises f32 values to a GGML block type (used by tests to build files):
/// [`lava_quant::quantize`], whose quantizers equal llama.cpp's byte for byte;
/// `None` for a type without one (the K-quants, unknown ids) or values that
/// are not a whole number of blocks.
pub fn quantize(kind: GgmlType, values: &[f32]) -> Option<Vec<u8>> {
    lava_quant::quantize(kind.quant()?, values).ok()
}

/// Builds a GGUF v3 image in memory (for tests, fuzz seeds and tiny models).
#[derive(Debug, Default)]
pub struct GgufWriter {
    kv: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, TensorBytes)>,
}

/// A tensor's data in a [`GgufWriter`]: given, or only sized (written by
/// [`GgufWriter::to_bytes_filled`]'s callback, in place).
#[derive(Debug)]
enum TensorBytes {
    Given(Vec<u8>),
    Sized(usize),
}

impl TensorBytes {
    fn len(&self) -> usize {
        match self {
            TensorBytes::Given(b) => b.len(),
            TensorBytes::Sized(n) => *n,
        }
    }
}

impl GgufWriter {
    /// A new, empty image.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a metadata key.
    pub fn kv(&mut self, key: &str, value: Value) -> &mut Self {
        self.kv.push((key.to_string(), value));
        self
    }
    /// Adds a tensor given its row-major `shape` (outermost first) and f32 values.
    pub fn tensor(&mut self, name: &str, shape: &[usize], kind: GgmlType, values: &[f32]) -> &mut Self {
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        let data = quantize(kind, values).unwrap_or_default();
        self.tensors.push((name.to_string(), dims, kind, TensorBytes::Given(data)));
        self
    }

    /// Adds a tensor of row-major `shape` in `kind` whose bytes
    /// [`to_bytes_filled`](Self::to_bytes_filled) asks for (`None` if `shape` is not a whole
    /// number of `kind`'s blocks).
    pub fn tensor_sized(&mut self, name: &str, shape: &[usize], kind: GgmlType) -> Option<&mut Self> {
        let n = kind.quant()?.bytes_for(shape.iter().product()).ok()?;
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensors.push((name.to_string(), dims, kind, TensorBytes::Sized(n)));
        Some(self)
    }

    fn write_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&(*x as f32).to_le_bytes()),
            Value::Bool(b) => out.push(*b as u8),
            Value::Str(s) => {
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Value::Array(a) => {
                let ety = a.first().map_or(4, Self::type_id);
                out.extend_from_slice(&ety.to_le_bytes());
                out.extend_from_slice(&(a.len() as u64).to_le_bytes());
                a.iter().for_each(|x| Self::write_value(out, x));
            }
        }
    }

    fn type_id(v: &Value) -> u32 {
        match v {
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
        }
    }

    /// Serialises the image.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_filled(|_, _, _| {})
    }

    /// Serialises the image, the bytes of each [`tensor_sized`](Self::tensor_sized) tensor
    /// written by `fill(name, kind, bytes)` in place (one buffer, no copy).
    pub fn to_bytes_filled(&self, mut fill: impl FnMut(&str, GgmlType, &mut [u8])) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            Self::write_value(&mut out, &Value::Str(k.clone()));
            out.extend_from_slice(&Self::type_id(v).to_le_bytes());
            Self::write_value(&mut out, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (_, _, _, data) in &self.tensors {
            offsets.push(offset);
            offset = (offset + data.len() as u64).div_ceil(32) * 32;
        }
        let header = out.len() + self.tensors.iter().map(|(n, d, _, _)| 8 + n.len() + 4 + 8 * d.len() + 4 + 8).sum::<usize>();
        out.reserve(header.div_ceil(32) * 32 + offset as usize - out.len());
        for ((name, dims, kind, _), off) in self.tensors.iter().zip(&offsets) {
            Self::write_value(&mut out, &Value::Str(name.clone()));
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
            let id = kind.id();
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        let base = out.len();
        for ((name, _, kind, data), off) in self.tensors.iter().zip(&offsets) {
            out.resize(base + *off as usize, 0);
            match data {
                TensorBytes::Given(b) => out.extend_from_slice(b),
                TensorBytes::Sized(n) => {
                    let at = out.len();
                    out.resize(at + n, 0);
                    fill(name, *kind, &mut out[at..]);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn quantised_round_trip_is_close() {
        let vals: Vec<f32> = (0..64).map(|i| ((i as f32) * 0.37).sin()).collect();
        for (kind, tol) in [
            (GgmlType::F32, 0.0),
            (GgmlType::F16, 1e-3),
            (GgmlType::BF16, 1e-2),
            (GgmlType::Q8_0, 1e-2),
            (GgmlType::Q4_0, 0.15),
            (GgmlType::Q4_1, 0.08),
        ] {
            let mut w = GgufWriter::new();
            w.kv("general.architecture", Value::Str("llama".into()));
            w.tensor("t", &[2, 32], kind, &vals);
            let f = GgufFile::from_bytes("mem.gguf", w.to_bytes()).expect("parse");
            assert_eq!(f.tensor("t").expect("t").shape(), vec![2, 32]);
            let back = f.dequantize("t").expect("dequantize");
            for (a, b) in vals.iter().zip(&back) {
                assert!((a - b).abs() <= tol, "{kind:?}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn q4_1_block_by_hand() {
        // d = 0.5, m = -1: nibble q gives q*0.5 - 1. Low nibbles are elements 0..16.
        let mut blk = Vec::new();
        blk.extend_from_slice(&f16::from_f32(0.5).to_le_bytes());
        blk.extend_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        blk.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let v = dequantize_raw(GgmlType::Q4_1, &blk, 32);
        assert_eq!(v[0], -1.0);
        assert_eq!(v[3], 0.5);
        assert_eq!(v[16], 6.5);
        assert_eq!(v[31], -1.0);
    }

    #[test]
    fn q8_0_and_q4_0_blocks_by_hand() {
        let mut blk = Vec::new();
        blk.extend_from_slice(&f16::from_f32(0.25).to_le_bytes());
        blk.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize_raw(GgmlType::Q8_0, &blk, 32);
        assert_eq!(v[0], -4.0);
        assert_eq!(v[31], 3.75);
        let mut blk = Vec::new();
        blk.extend_from_slice(&f16::from_f32(2.0).to_le_bytes());
        blk.extend((0..16u8).map(|i| i | (8 << 4)));
        let v = dequantize_raw(GgmlType::Q4_0, &blk, 32);
        assert_eq!(v[0], -16.0);
        assert_eq!(v[15], 14.0);
        assert_eq!(v[16], 0.0);
    }

    #[test]
    fn truncation_names_the_section() {
        let mut w = GgufWriter::new();
        w.kv("general.architecture", Value::Str("llama".into()));
        w.tensor("t", &[32], GgmlType::F32, &[1.0; 32]);
        let full = w.to_bytes();
        let header_end = 24;
        for (cut, section) in [(10, "header"), (header_end + 5, "metadata")] {
            let err = GgufFile::from_bytes("x.gguf", full[..cut].to_vec()).expect_err("truncated");
            assert!(matches!(err, GgufError::Truncated { section: s, .. } if s == section), "{err}");
        }
        let f = GgufFile::from_bytes("x.gguf", full[..full.len() - 4].to_vec()).expect("table intact");
        let err = f.dequantize("t").expect_err("data cut");
        assert!(matches!(err, GgufError::Truncated { section: "tensor data", .. }), "{err}");
        let err = GgufFile::from_bytes("x.gguf", b"PK\x03\x04 not gguf".to_vec()).expect_err("magic");
        assert!(matches!(err, GgufError::BadMagic { .. }));
    }
}
