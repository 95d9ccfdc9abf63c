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
/// group's keys once. Long query blocks are processed in chunks of
/// [`QUERY_CHUNK`] queries, each against the keys up to its last query only,
/// so the score matrix never exceeds `[H_kv, G*QUERY_CHUNK, S]` and the
/// masked upper triangle is mostly skipped.
pub fn causal_attention<B: Backend>(q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>) -> Tensor<B, 3> {
    if let Some(out) = crate::fast_path::prefill_attention(&q, &k, &v) {
        return out;
    }
    let [h_q, t, d] = q.dims();
    if t <= QUERY_CHUNK {
        return attention_block(q, k, v);
    }
    let [h_kv, s, _] = k.dims();
    let past = s - t;
    let mut outs = Vec::with_capacity(t.div_ceil(QUERY_CHUNK));
    let mut start = 0;
    while start < t {
        let end = (start + QUERY_CHUNK).min(t);
        let keys = past + end;
        outs.push(attention_block(
            q.clone().slice([0..h_q, start..end, 0..d]),
            k.clone().slice([0..h_kv, 0..keys, 0..d]),
            v.clone().slice([0..h_kv, 0..keys, 0..d]),
        ));
        start = end;
    }
    Tensor::cat(outs, 1)
}

/// Queries per block of [`causal_attention`].
pub const QUERY_CHUNK: usize = 256;

/// One block: `T` queries that are the last `T` of the `S` keys.
fn attention_block<B: Backend>(q: Tensor<B, 3>, k: Tensor<B, 3>, v: Tensor<B, 3>) -> Tensor<B, 3> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use burn_ndarray::NdArray;

    type B = NdArray<f32>;

    #[test]
    fn chunked_attention_equals_one_block() {
        let device = Default::default();
        // 600 new queries after 50 cached tokens: three chunks, the last partial.
        let (t, past) = (600, 50);
        let q = Tensor::<B, 3>::random([6, t, 8], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<B, 3>::random([2, past + t, 8], Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<B, 3>::random([2, past + t, 8], Distribution::Normal(0.0, 1.0), &device);
        let chunked = causal_attention(q.clone(), k.clone(), v.clone()).into_data().to_vec::<f32>().unwrap();
        let whole = attention_block(q, k, v).into_data().to_vec::<f32>().unwrap();
        assert_eq!(chunked.len(), whole.len());
        let err = chunked.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-6, "chunked attention differs by {err}");
    }
}
