//! Teacher forcing: the log-probabilities of given tokens under the model's
//! logits. (The generation loop is `lava_run::decode`.)

use burn::tensor::backend::Backend;

use crate::error::ModelError;

/// Teacher forcing's per-token log-probabilities: `log p(targets[t])` under
/// `logits` `[T, vocab]` (one row per target), as `[T]` on the host, with the
/// logits' log-softmax `[T, vocab]` (for a KL against another model's rows).
pub fn token_log_probs<B: Backend>(logits: burn::tensor::Tensor<B, 2>, targets: &[u32]) -> Result<(Vec<f32>, burn::tensor::Tensor<B, 2>), ModelError> {
    use burn::tensor::{activation::log_softmax, Int, Tensor, TensorData};
    let t = targets.len();
    let device = logits.device();
    let lsm = log_softmax(logits, 1);
    let idx: Vec<i64> = targets.iter().map(|&x| x as i64).collect();
    let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [t]), &device).reshape([t, 1]);
    let lp = lsm.clone().gather(1, idx).into_data().convert::<f32>().to_vec::<f32>().map_err(|e| ModelError::Backend(format!("{e:?}")))?;
    Ok((lp, lsm))
}
