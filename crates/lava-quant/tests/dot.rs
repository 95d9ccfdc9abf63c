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
//!    activation rounding itself is checked: `|x_i - x̂_i| <= dx / 2 * (1 + 2^-20)`.
//! 3. Each SIMD level against the portable path: within twice bound 1.

use lava_quant::{dequantize_to_vec, quantize_activations, Activations, GgmlType, QuantMatrix, SimdLevel};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit().max(1e-7), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

/// Byte offsets of the f16 scales in a block (replaced by finite values).
fn f16_fields(kind: GgmlType) -> &'static [usize] {
    match kind {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        _ => &[],
    }
}

/// Random weights: random bytes as blocks, finite f16 scales of mixed signs and magnitudes;
/// random values for the float types.
fn weights(kind: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let n = rows * kind.bytes_for(cols).unwrap();
    match kind {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            let v: Vec<f32> = (0..rows * cols).map(|_| rng.normal()).collect();
            lava_quant::quantize(kind, &v).unwrap()
        }
        _ => {
            let mut b: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            for blk in b.chunks_exact_mut(kind.block_bytes()) {
                for &o in f16_fields(kind) {
                    let s = rng.normal() * 10f32.powf(-3.0 * rng.unit());
                    blk[o..o + 2].copy_from_slice(&half::f16::from_f32(s).to_bits().to_le_bytes());
                }
            }
            b
        }
    }
}

fn activations(n: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n * cols)
        .map(|i| {
            let v = rng.normal();
            // A few outliers, as real hidden states have.
            if i % 97 == 5 {
                v * 20.0
            } else {
                v
            }
        })
        .collect()
}

const EPS: f64 = 1.0 / (1u64 << 23) as f64;

struct Case {
    kind: GgmlType,
    rows: usize,
    cols: usize,
    w: Vec<f32>,
    bmax: Vec<f64>,
    x: Vec<f32>,
    xh: Vec<f32>,
    act: Activations,
    data: Vec<u8>,
}

impl Case {
    fn new(kind: GgmlType, rows: usize, cols: usize, n: usize, seed: u64) -> Case {
        let mut rng = Rng(seed);
        let data = weights(kind, rows, cols, &mut rng);
        let w = dequantize_to_vec(kind, &data).unwrap();
        let bs = kind.block_size().max(if kind.block_size() == 1 { cols } else { 1 });
        let bmax = w
            .chunks(bs)
            .flat_map(|b| {
                let m = b.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
                std::iter::repeat_n(m, b.len())
            })
            .collect();
        let x = activations(n, cols, &mut rng);
        let act = quantize_activations(kind, &x, cols).unwrap();
        let xh = act.dequantized();
        Case { kind, rows, cols, w, bmax, x, xh, act, data }
    }

    fn matrix(&self) -> QuantMatrix<'_> {
        QuantMatrix::new(self.kind, self.rows, self.cols, &self.data).unwrap()
    }

    /// (w·x̂, w·x, bound 1, sum |w||x - x̂|) for output row `r`, activation row `k`.
    fn reference(&self, r: usize, k: usize) -> (f64, f64, f64, f64) {
        let (c, nb) = (self.cols, if self.kind.block_size() == 1 { self.cols / 8 } else { self.cols / self.kind.block_size() });
        let (mut exact_h, mut exact, mut mass, mut act_err) = (0f64, 0f64, 0f64, 0f64);
        for i in 0..c {
            let (w, bm) = (self.w[r * c + i] as f64, self.bmax[r * c + i]);
            let (x, xh) = (self.x[k * c + i] as f64, self.xh[k * c + i] as f64);
            exact_h += w * xh;
            exact += w * x;
            mass += 3.0 * bm * xh.abs();
            act_err += w.abs() * (x - xh).abs();
        }
        (exact_h, exact, (nb + 8) as f64 * EPS * mass + 1e-30, act_err)
    }

    fn run(&self, level: SimdLevel, rows: std::ops::Range<usize>) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.act.rows() * rows.len()];
        self.matrix().dot_rows_at(level, &self.act, rows, &mut out).unwrap();
        out
    }
}

fn levels() -> Vec<SimdLevel> {
    [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512].into_iter().filter(|l| l.available()).collect()
}

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
                // The activation rounding itself.
                if kind.block_size() > 1 {
                    let abs = if kind.is_k_quant() { 256 } else { 32 };
                    for (xb, hb) in case.x.chunks(abs).zip(case.xh.chunks(abs)) {
                        let dx = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                        for (a, b) in xb.iter().zip(hb) {
                            assert!(((a - b) as f64).abs() <= dx / 2.0 * (1.0 + 1.0 / (1 << 20) as f64), "{kind}: activation {a} -> {b}");
                        }
                    }
                }
                let portable = case.run(SimdLevel::Portable, 0..rows);
                for level in levels() {
                    // Whole range, and an odd sub-range.
                    for range in [0..rows, 2..7] {
                        let got = case.run(level, range.clone());
                        let len = range.len();
                        for k in 0..n {
                            for (j, r) in range.clone().enumerate() {
                                let (eh, e, tol, act_err) = case.reference(r, k);
                                let g = got[k * len + j] as f64;
                                let ctx = format!("{kind} {level:?} cols {cols} n {n} row {r} act {k}: got {g}, w·x̂ {eh}, w·x {e}, tol {tol:e}");
                                assert!((g - eh).abs() <= tol, "vs w·x̂: {ctx}");
                                assert!((g - e).abs() <= act_err + tol, "vs w·x (activation error bound {act_err:e}): {ctx}");
                                let p = portable[k * rows + r] as f64;
                                assert!((g - p).abs() <= 2.0 * tol, "vs portable {p}: {ctx}");
                                checked += 1;
                            }
                        }
                    }
                }
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
