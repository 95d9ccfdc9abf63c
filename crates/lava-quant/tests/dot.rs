//! The quantized dot-product kernels against dequantize-then-dot, for every type, every SIMD
//! level this CPU has, odd row counts, `d_in` a multiple of the block but not of the vector
//! width (and for the 32-element types 19 blocks: two groups of 8 for the grouped SIMD step plus
//! 3 single blocks), and 1, 3, 8 and 11 activation rows (11: two passes over the weights).
//!
//! Tolerances, with `x̂ = dx * xq` the activations the kernel multiplies
//! ([`Activations::dequantized`]) and `w` the dequantized weights:
//!
//! 1. Against `w · x̂` in f64 the kernel is exact up to `f32` rounding: its integer block sums are
//!    exact, and what follows is a few `f32` products per block and a sum over `nb` blocks, each
//!    term bounded by `3 * max|w| * |x̂|` over its block (a block's offset and its scaled codes
//!    are each at most twice its largest weight). So
//!    `|kernel - w·x̂| <= (nb + 8) * eps32 * sum_i 3 * bmax_i * |x̂_i|` (`eps32 = 2^-23`,
//!    `bmax_i` the largest `|w|` in element `i`'s block; for float weights `nb = cols / 8`, the
//!    length of each lane's partial sum).
//! 2. Against the true product `w · x`:
//!    `|kernel - w·x| <= sum_i |w_i| * |x_i - x̂_i| + (bound 1)` (triangle inequality), and the
//!    activation rounding itself is checked: `|x_i - x̂_i| <= dx / 2 * (1 + 2^-20)` plus a few
//!    units in the last place of `|x_i| + |x̂_i|` (the f32 roundings of the scale, of `x / dx`
//!    and of `dx * xq`: a value within rounding of a tie may round either way).
//! 3. Each SIMD level against the portable path: within twice bound 1.

mod common;

use common::{check, levels, Case};
use lava_quant::{quantize_activations, quantize_activations_into, GgmlType, QuantMatrix, INTERLEAVE_MIN_ROWS};

#[test]
fn kernels_match_dequantize_then_dot() {
    eprintln!("SIMD levels on this CPU: {:?}", levels());
    let mut checked = 0;
    for (ti, kind) in GgmlType::ALL.into_iter().enumerate() {
        let bs = kind.block_size();
        // A multiple of the block, not of the vector width; and a single block.
        // (32-element types: also 19 blocks, two groups of 8 for the grouped SIMD step + 3.)
        let widths: Vec<usize> = match bs {
            1 => vec![1, 37, 96 + 5],
            32 => vec![32, 96, 19 * 32],
            _ => vec![bs, 3 * bs],
        };
        for (wi, &cols) in widths.iter().enumerate() {
            for n in [1usize, 3, 8, 11] {
                let rows = 7;
                let case = Case::new(kind, rows, cols, n, 1000 * ti as u64 + 10 * wi as u64 + n as u64);
                checked += check(&case, "random");
            }
        }
    }
    eprintln!("{checked} outputs checked");
}

/// The interleaved kernel of the 32-element types (AVX-512 CPUs, at least
/// `INTERLEAVE_MIN_ROWS` activation rows): groups of 16 rows, the last partial, weight rows in
/// passes of 8 with a partial last pass, widths of 1, 19 and 64 blocks, and enough rows at 64
/// blocks (150) that the activations take two passes over the weights. Same bounds as above.
#[test]
fn interleaved_kernel_matches_dequantize_then_dot() {
    let mut checked = 0;
    for (ti, kind) in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0].into_iter().enumerate() {
        for (cols, rows, ns) in [(32, 19, vec![INTERLEAVE_MIN_ROWS, 16, 35]), (19 * 32, 9, vec![16, 19]), (64 * 32, 11, vec![150])] {
            for n in ns {
                let case = Case::new(kind, rows, cols, n, 7000 + 100 * ti as u64 + n as u64 + cols as u64);
                checked += check(&case, "interleaved");
            }
        }
    }
    eprintln!("{checked} outputs checked");
}

/// The tiled Q4_K and Q6_K kernel (AVX-512 VNNI CPUs, at least 16 activation rows, the output rows a
/// multiple of 16): tiles of 16 weight rows, activation rows in passes of 8 with the remainder
/// (21 = 2 passes + 5, 150 = 18 passes + 6) left to the per-row kernels, a range starting
/// inside the matrix (`rows / 3..rows` with 48 rows: 16..48), widths of 1, 3 and 6
/// super-blocks. Same bounds as above.
#[test]
fn tiled_kernel_matches_dequantize_then_dot() {
    let mut checked = 0;
    for kind in [GgmlType::Q4_K, GgmlType::Q6_K] {
        for (cols, rows, ns) in [(256, 48, vec![16, 21]), (3 * 256, 32, vec![16, 150]), (6 * 256, 16, vec![24])] {
            for n in ns {
                let case = Case::new(kind, rows, cols, n, 9000 + n as u64 + cols as u64);
                checked += check(&case, "tiled");
            }
        }
    }
    eprintln!("{checked} outputs checked");
}

#[test]
fn empty_range_and_errors() {
    let case = Case::new(GgmlType::Q4_1, 5, 64, 2, 7);
    let m = case.matrix();
    let mut out = vec![];
    m.dot_rows(&case.act, 3..3, &mut out).unwrap();
    let mut out = vec![0f32; 2];
    assert!(m.dot_rows(&case.act, 0..2, &mut out).is_err(), "output too short");
    let mut out = vec![0f32; 12];
    assert!(m.dot_rows(&case.act, 0..6, &mut out).is_err(), "rows past the end");
    #[allow(clippy::reversed_empty_ranges)]
    let bad = 3..2;
    assert!(m.dot_rows(&case.act, bad, &mut out).is_err(), "reversed range");
    let other = quantize_activations(GgmlType::Q4_K, &[0.0; 256], 256).unwrap();
    assert!(m.dot_rows(&other, 0..1, &mut [0.0; 1]).is_err(), "activations of another form / width");
    assert!(QuantMatrix::new(GgmlType::Q4_1, 5, 64, &case.data[1..]).is_err());
    assert!(QuantMatrix::new(GgmlType::Q4_1, 5, 48, &case.data).is_err());
    assert!(QuantMatrix::new(GgmlType::Q4_1, usize::MAX, 64, &case.data).is_err());
    assert!(QuantMatrix::new(GgmlType::Q4_1, 5, 0, &[]).is_err());
    assert!(quantize_activations(GgmlType::Q4_K, &[0.0; 512], 128).is_err(), "cols not a whole super-block");
    assert!(quantize_activations(GgmlType::Q8_0, &[0.0; 48], 32).is_err(), "not a whole number of rows");
    // Q8_0 activations also serve Q4_0 weights (same form).
    let q80 = quantize_activations(GgmlType::Q8_0, &case.x, 64).unwrap();
    let mut a = vec![0f32; 10];
    let mut b = vec![0f32; 10];
    m.dot_rows(&q80, 0..5, &mut a).unwrap();
    m.dot_rows(&case.act, 0..5, &mut b).unwrap();
    assert_eq!(a, b);
}

#[test]
fn zero_activations_and_matmul() {
    let case = Case::new(GgmlType::Q6_K, 3, 512, 1, 3);
    let zero = quantize_activations(GgmlType::Q6_K, &[0.0; 512], 512).unwrap();
    assert_eq!(case.matrix().matmul(&zero).unwrap(), vec![0.0; 3]);
    let all = case.matrix().matmul(&case.act).unwrap();
    let mut part = vec![0f32; 2];
    case.matrix().dot_rows(&case.act, 1..3, &mut part).unwrap();
    assert_eq!(&all[1..3], &part[..]);
}

#[test]
fn activations_reuse_and_fit() {
    let x: Vec<f32> = (0..2 * 512).map(|i| ((i * 31 % 97) as f32 - 48.0) / 10.0).collect();
    let a = quantize_activations(GgmlType::Q4_K, &x, 512).unwrap();
    let mut b = quantize_activations(GgmlType::Q8_0, &[1.0; 64], 32).unwrap();
    quantize_activations_into(GgmlType::Q6_K, &x, 512, &mut b).unwrap();
    assert_eq!((b.rows(), b.cols(), b.kind()), (2, 512, GgmlType::Q6_K));
    assert_eq!(a.dequantized(), b.dequantized());
    assert!(b.fits(GgmlType::Q4_K, 512) && b.fits(GgmlType::Q2_K, 512));
    assert!(!b.fits(GgmlType::Q8_0, 512) && !b.fits(GgmlType::Q4_K, 256) && !b.fits(GgmlType::F16, 512));
    assert!(quantize_activations_into(GgmlType::Q4_K, &x, 100, &mut b).is_err());
    assert_eq!(b.rows(), 0);
    // Float weights take the values as they are.
    let f = quantize_activations(GgmlType::BF16, &x, 512).unwrap();
    assert_eq!(f.dequantized(), x);
}
