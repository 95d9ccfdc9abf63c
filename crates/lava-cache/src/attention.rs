use burn::tensor::{activation::softmax, backend::Backend, Bool, Tensor, TensorData};

/// Causal grouped-query attention of `T` new queries over `S` keys, the last
/// `T` of which are the new tokens themselves.
///
/// - `q`: `[H_q, T, D]`, `k`, `v`: `[H_kv, S, D]`, `H_q = G * H_kv`, query
///   heads `g*G .. (g+1)*G` share KV head `g` (Hugging Face `repeat_kv` order).
/// - returns `[H_q, T, D]`.
///
/// K and V are never repeated per query head: the `G` query heads of a group
/// are folded into the row dimension, `[H_kv, G*T, D]`, and multiplied by the
/// group's keys once.
pub fn causal_attention<B: Backend>(q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>) -> Tensor<B, 3> {
    let [h_q, t, d] = q.dims();
    let [h_kv, s, _] = k.dims();
    let g = h_q / h_kv;
    let device = q.device();
    let scale = 1.0 / (d as f64).sqrt();
    let q = q.reshape([h_kv, g * t, d]);
    let scores = q.matmul(k.swap_dims(1, 2)).mul_scalar(scale); // [H_kv, G*T, S]
    let scores = if t > 1 {
        let mask = causal_mask::<B>(g, t, s, &device);
        scores.mask_fill(mask.unsqueeze_dim::<3>(0).expand([h_kv, g * t, s]), f32::NEG_INFINITY)
    } else {
        scores
    };
    let probs = softmax(scores, 2);
    probs.matmul(v).reshape([h_q, t, d])
}

/// `[G*T, S]` mask, true where key `j` is in the future of query row `r`
/// (query `t = r % T` sits at sequence index `S - T + t`).
fn causal_mask<B: Backend>(g: usize, t: usize, s: usize, device: &B::Device) -> Tensor<B, 2, Bool> {
    let past = s - t;
    let mut data = Vec::with_capacity(g * t * s);
    for _ in 0..g {
        for ti in 0..t {
            for j in 0..s {
                data.push(j > past + ti);
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [g * t, s]), device)
}
