//! Reading small tensors back to the host.

use burn::tensor::{backend::Backend, Tensor};

use crate::CacheError;

/// Reads `t` back to the host as `f32`, whatever the backend's float type.
pub(crate) fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>, CacheError> {
    let data = t.try_into_data().map_err(|e| CacheError::Backend(e.to_string()))?;
    data.convert::<f32>().into_vec::<f32>().map_err(|e| CacheError::Backend(format!("{e:?}")))
}
