//! Shared by the kernel tests (`dot.rs`, `oracle.rs`): random weights and activations, and the
//! check of a kernel result against dequantize-then-dot with the bounds `dot.rs` derives.

#![allow(dead_code)]

use lava_quant::{dequantize_to_vec, quantize_activations, Activations, GgmlType, QuantMatrix, SimdLevel};

pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit().max(1e-7), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

/// Byte offsets of the f16 scales in a block (replaced by finite values).
pub fn f16_fields(kind: GgmlType) -> &'static [usize] {
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
pub fn weights(kind: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
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

pub fn activations(n: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
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

pub struct Case {
    pub kind: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub w: Vec<f32>,
    pub bmax: Vec<f64>,
    pub x: Vec<f32>,
    pub xh: Vec<f32>,
    pub act: Activations,
    pub data: Vec<u8>,
}

impl Case {
    /// Random weights and `n` random activation rows.
    pub fn new(kind: GgmlType, rows: usize, cols: usize, n: usize, seed: u64) -> Case {
        let mut rng = Rng(seed);
        let data = weights(kind, rows, cols, &mut rng);
        let w = dequantize_to_vec(kind, &data).unwrap();
        Case::with_weights(kind, rows, cols, data, w, n, seed)
    }

    /// Given weights (`w`: their values, from this crate or another dequantizer) and `n` random
    /// activation rows.
    pub fn with_weights(kind: GgmlType, rows: usize, cols: usize, data: Vec<u8>, w: Vec<f32>, n: usize, seed: u64) -> Case {
        let mut rng = Rng(seed ^ 0x5eed);
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

    pub fn matrix(&self) -> QuantMatrix<'_> {
        QuantMatrix::new(self.kind, self.rows, self.cols, &self.data).unwrap()
    }

    /// (w·x̂, w·x, bound 1, sum |w||x - x̂|) for output row `r`, activation row `k`.
    pub fn reference(&self, r: usize, k: usize) -> (f64, f64, f64, f64) {
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

    pub fn run(&self, level: SimdLevel, rows: std::ops::Range<usize>) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.act.rows() * rows.len()];
        self.matrix().dot_rows_at(level, &self.act, rows, &mut out).unwrap();
        out
    }
}

pub fn levels() -> Vec<SimdLevel> {
    [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512].into_iter().filter(|l| l.available()).collect()
}


/// Checks the activation rounding and every available level over all rows and a sub-range
/// against the bounds in the header; returns the number of outputs checked.
pub fn check(case: &Case, what: &str) -> usize {
    let (kind, rows, cols, n) = (case.kind, case.rows, case.cols, case.act.rows());
    if kind.block_size() > 1 {
        let abs = if kind.is_k_quant() { 256 } else { 32 };
        for (xb, hb) in case.x.chunks(abs).zip(case.xh.chunks(abs)) {
            let dx = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
            for (a, b) in xb.iter().zip(hb) {
                // Half a step, plus the f32 rounding of the scale, of `x / dx` (a value within
                // rounding of a tie may go either way) and of `dx * xq` itself: a few units in
                // the last place of `|x|` and `|x̂|`.
                let slack = (a.abs() + b.abs()) as f64 / (1u64 << 22) as f64;
                assert!(((a - b) as f64).abs() <= dx / 2.0 * (1.0 + 1.0 / (1 << 20) as f64) + slack, "{what} {kind}: activation {a} -> {b}");
            }
        }
    }
    let mut checked = 0;
    let portable = case.run(SimdLevel::Portable, 0..rows);
    for level in levels() {
        for range in [0..rows, rows / 3..rows] {
            let got = case.run(level, range.clone());
            let len = range.len();
            for k in 0..n {
                for (j, r) in range.clone().enumerate() {
                    let (eh, e, tol, act_err) = case.reference(r, k);
                    let g = got[k * len + j] as f64;
                    let ctx = format!("{what} {kind} {level:?} cols {cols} n {n} row {r} act {k}: got {g}, w·x̂ {eh}, w·x {e}, tol {tol:e}");
                    assert!((g - eh).abs() <= tol, "vs w·x̂: {ctx}");
                    assert!((g - e).abs() <= act_err + tol, "vs w·x (activation error bound {act_err:e}): {ctx}");
                    let p = portable[k * rows + r] as f64;
                    assert!((g - p).abs() <= 2.0 * tol, "vs portable {p}: {ctx}");
                    checked += 1;
                }
            }
        }
    }
    checked
}
