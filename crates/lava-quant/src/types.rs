//! The ggml tensor types this crate handles, their ids (as written in a GGUF tensor-info entry)
//! and their block geometry, plus the crate's error type.
//!
//! | type | id | elements / block | bytes / block |
//! |---|---|---|---|
//! | F32 | 0 | 1 | 4 |
//! | F16 | 1 | 1 | 2 |
//! | Q4_0 | 2 | 32 | 18 |
//! | Q4_1 | 3 | 32 | 20 |
//! | Q5_0 | 6 | 32 | 22 |
//! | Q5_1 | 7 | 32 | 24 |
//! | Q8_0 | 8 | 32 | 34 |
//! | Q2_K | 10 | 256 | 84 |
//! | Q3_K | 11 | 256 | 110 |
//! | Q4_K | 12 | 256 | 144 |
//! | Q5_K | 13 | 256 | 176 |
//! | Q6_K | 14 | 256 | 210 |
//! | BF16 | 30 | 1 | 2 |

use std::fmt;

/// A ggml tensor type (the `type` field of a GGUF tensor-info entry).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top half of a binary32).
    BF16,
    /// 32 elements: f16 scale, 4-bit codes, value `d * (q - 8)`.
    Q4_0,
    /// 32 elements: f16 scale and minimum, 4-bit codes, value `d * q + m`.
    Q4_1,
    /// 32 elements: f16 scale, 5-bit codes, value `d * (q - 16)`.
    Q5_0,
    /// 32 elements: f16 scale and minimum, 5-bit codes, value `d * q + m`.
    Q5_1,
    /// 32 elements: f16 scale, signed 8-bit codes, value `d * q`.
    Q8_0,
    /// 256 elements in 16 groups of 16: 4-bit group scales and minimums, 2-bit codes.
    Q2_K,
    /// 256 elements in 16 groups of 16: 6-bit signed group scales, 3-bit codes.
    Q3_K,
    /// 256 elements in 8 groups of 32: 6-bit group scales and minimums, 4-bit codes.
    Q4_K,
    /// 256 elements in 8 groups of 32: 6-bit group scales and minimums, 5-bit codes.
    Q5_K,
    /// 256 elements in 16 groups of 16: signed 8-bit group scales, 6-bit codes.
    Q6_K,
}

impl GgmlType {
    /// Every type this crate handles.
    pub const ALL: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    /// The ggml id (as stored in GGUF).
    pub const fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }

    /// The type with ggml id `id`, if this crate handles it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// The ggml name (`"Q4_K"`, `"F16"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::BF16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
        }
    }

    /// Elements per block (1 for the float types).
    pub const fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q2_K => 84,
            GgmlType::Q3_K => 110,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
        }
    }

    /// Whether this is one of the K-quants (256-element super-blocks).
    pub const fn is_k_quant(self) -> bool {
        self.block_size() == 256
    }

    /// Bytes taken by `elements` elements (a row, a tensor), or an error when `elements` is not
    /// a whole number of blocks or the size overflows.
    pub fn bytes_for(self, elements: usize) -> Result<usize, QuantError> {
        if !elements.is_multiple_of(self.block_size()) {
            return Err(QuantError::NotBlockMultiple { kind: self, elements });
        }
        (elements / self.block_size()).checked_mul(self.block_bytes()).ok_or(QuantError::Overflow)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What can go wrong: sizes that do not fit the block geometry, or a missing quantizer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuantError {
    /// An element count that is not a whole number of blocks.
    NotBlockMultiple {
        /// The type.
        kind: GgmlType,
        /// The element count given.
        elements: usize,
    },
    /// A byte buffer whose length is not a whole number of blocks.
    NotBlockBytes {
        /// The type.
        kind: GgmlType,
        /// The length given.
        bytes: usize,
    },
    /// A buffer of the wrong length.
    Length {
        /// What the buffer is.
        what: &'static str,
        /// The length needed.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// A size that overflows `usize`.
    Overflow,
    /// No quantizer for this type (K-quants are dequantize-only here).
    NoQuantizer(GgmlType),
    /// Activations quantized for another weight type, or with another width.
    Mismatch(String),
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantError::NotBlockMultiple { kind, elements } => {
                write!(f, "{elements} elements is not a whole number of {kind} blocks of {}", kind.block_size())
            }
            QuantError::NotBlockBytes { kind, bytes } => {
                write!(f, "{bytes} bytes is not a whole number of {kind} blocks of {} bytes", kind.block_bytes())
            }
            QuantError::Length { what, expected, got } => write!(f, "{what}: expected {expected} elements, got {got}"),
            QuantError::Overflow => f.write_str("size overflows usize"),
            QuantError::NoQuantizer(kind) => write!(f, "no quantizer for {kind}"),
            QuantError::Mismatch(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for QuantError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sizes() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Ok(288));
        assert!(GgmlType::Q4_K.bytes_for(100).is_err());
        assert_eq!(GgmlType::F16.bytes_for(3), Ok(6));
    }
}
