//! Times [`lava_flex::packed::gemm_packed`] and [`lava_flex::gemm::gemm_multi`] against
//! [`lava_flex::matmul::matvec_multi`] and the backend's matmul on SmolLM2's projection shapes: `cargo run --release -p lava-flex --example gemm_speed`.
use std::time::Instant;

fn main() {
    let threads = rayon::current_num_threads();
    let shapes = [(576usize, 960usize), (576, 576), (576, 3072), (1536, 576), (576, 49152)];
    let ws: Vec<Vec<f32>> = shapes.iter().map(|&(i, o)| (0..i * o).map(|k| ((k % 97) as f32 - 48.0) / 97.0).collect()).collect();
    let ps: Vec<lava_flex::packed::PackedMatrix> = shapes.iter().zip(&ws).map(|(&(i, o), w)| lava_flex::packed::PackedMatrix::from_rows(w, i, o).expect("packs")).collect();
    type B = burn_flex::Flex;
    let dev = Default::default();
    let wt: Vec<burn::tensor::Tensor<B, 2>> = shapes.iter().zip(&ws).map(|(s, w)| burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(w.clone(), [s.0, s.1]), &dev)).collect();
    for n in std::env::args().skip(1).map(|a| a.parse::<usize>().expect("row count")) {
        let x: Vec<f32> = (0..n * 1536).map(|k| ((k % 13) as f32 - 6.0) / 13.0).collect();
        let (mut tp, mut tg, mut tm, mut tb, mut flop) = (0f64, 0f64, 0f64, 0f64, 0f64);
        for (((s, w), wt), p) in shapes.iter().zip(&ws).zip(&wt).zip(&ps) {
            let reps = 20;
            let run = |f: &dyn Fn()| {
                f();
                let t = Instant::now();
                for _ in 0..reps {
                    f();
                }
                t.elapsed().as_secs_f64() / reps as f64
            };
            tp += run(&|| { std::hint::black_box(lava_flex::packed::gemm_packed(&x, n, &[p], threads)); });
            tg += run(&|| { std::hint::black_box(lava_flex::gemm::gemm_multi(&x, n, s.0, &[(w, s.1)], threads)); });
            if n <= 64 {
                tm += run(&|| { std::hint::black_box(lava_flex::matmul::matvec_multi(&x, n, s.0, &[(w, s.1)], threads)); });
            }
            let xt: burn::tensor::Tensor<B, 2> = burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(x[..n * s.0].to_vec(), [n, s.0]), &dev);
            tb += run(&|| { std::hint::black_box(xt.clone().matmul(wt.clone()).into_data()); });
            flop += 2.0 * (n * s.0 * s.1) as f64;
        }
        println!(
            "n {n:>4}: packed {:>8.3} ms ({:>6.1} GFLOP/s)  gemm {:>8.3} ms ({:>6.1} GFLOP/s)  matvec {:>8.3} ms ({:>6.1})  flex matmul {:>8.3} ms ({:>6.1})",
            tp * 1e3, flop / tp / 1e9, tg * 1e3, flop / tg / 1e9, tm * 1e3, flop / tm / 1e9, tb * 1e3, flop / tb / 1e9
        );
    }
}
