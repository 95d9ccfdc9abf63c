//! Single-threaded micro benchmark of the quantized dot kernels: GB/s of weight bytes streamed
//! (and activation rows x weight rows per second, best of 7 trials), portable vs each SIMD level, for
//! SmolLM2-135M's `ffn_down` shape (576 rows of 1536) and a few others.
//!
//! `cargo run --release -p lava-quant --example dot_bench` (`DOT_BENCH_TYPE=Q8_0`: one type)

use std::time::Instant;

// The block layouts' f16 scale offsets, shared with the kernel tests.
#[path = "../tests/common/mod.rs"]
mod common;

use lava_quant::{quantize_activations, GgmlType, QuantMatrix, SimdLevel};

fn bytes(kind: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    // Deterministic pseudo-random blocks with small finite f16 scales (0x2000 ~ 0.0078).
    let n = rows * kind.bytes_for(cols).unwrap_or(0);
    let mut s = 0x1234_5678u32;
    let mut b: Vec<u8> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s as u8
        })
        .collect();
    let fields = common::f16_fields(kind);
    if fields.is_empty() {
        // Float rows: small finite values.
        let v: Vec<f32> = (0..rows * cols).map(|i| ((i % 17) as f32 - 8.0) / 64.0).collect();
        return lava_quant::quantize(kind, &v).unwrap_or_default();
    }
    for blk in b.chunks_exact_mut(kind.block_bytes()) {
        for &o in fields {
            blk[o] = 0x00;
            blk[o + 1] = 0x20;
        }
    }
    b
}

fn main() {
    let levels: Vec<SimdLevel> = [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512].into_iter().filter(|l| l.available()).collect();
    println!("{:6} {:>5}x{:<5} {:>2} {:>9} {:>9} {:>12}", "type", "rows", "cols", "n", "level", "GB/s", "Mrow-dots/s");
    for (kind, rows, cols) in [
        (GgmlType::Q4_1, 576, 1536),
        (GgmlType::Q8_0, 576, 1536),
        (GgmlType::Q4_0, 576, 1536),
        (GgmlType::Q5_0, 576, 1536),
        (GgmlType::Q4_K, 640, 2048),
        (GgmlType::Q5_K, 640, 2048),
        (GgmlType::Q2_K, 640, 2048),
        (GgmlType::Q3_K, 640, 2048),
        (GgmlType::Q6_K, 640, 2048),
        (GgmlType::F16, 576, 1536),
    ] {
        // `DOT_BENCH_TYPE=Q8_0` (a type name) runs that type alone, e.g. under `perf`.
        if std::env::var("DOT_BENCH_TYPE").is_ok_and(|t| t != kind.name()) {
            continue;
        }
        let data = bytes(kind, rows, cols);
        let m = QuantMatrix::new(kind, rows, cols, &data).expect("matrix");
        for n in [1usize, 4, 8, 16, 64] {
            let x: Vec<f32> = (0..n * cols).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 300.0).collect();
            let act = quantize_activations(kind, &x, cols).expect("activations");
            let mut out = vec![0f32; n * rows];
            for &level in &levels {
                // Best of 7 trials of ~50 ms: robust to other work on the machine.
                let mut s = f64::INFINITY;
                for _ in 0..7 {
                    let mut iters = 0u32;
                    let t = Instant::now();
                    while t.elapsed().as_secs_f64() < 0.05 {
                        m.dot_rows_at(level, &act, 0..rows, &mut out).expect("dot");
                        iters += 1;
                    }
                    s = s.min(t.elapsed().as_secs_f64() / iters as f64);
                }
                println!(
                    "{:6} {:>5}x{:<5} {:>2} {:>9} {:>9.2} {:>12.1}",
                    kind.name(),
                    rows,
                    cols,
                    n,
                    format!("{level:?}"),
                    data.len() as f64 / s / 1e9,
                    (rows * n) as f64 / s / 1e6
                );
            }
        }
    }
}
