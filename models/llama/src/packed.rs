//! f32 weights on the flex host path, packed once at load into the strip
//! order of [`lava_flex::packed`]: every projection and the output head are
//! read by [`lava_flex::packed::gemm_packed`], whatever the row count, and the
//! f32 matrices of [`LlamaWeights`] are then empty (as with native quantized
//! weights). Packing changes no result of a projection of up to
//! [`lava_flex::gemm::GEMM_MAX_ROWS`] rows (the packed gemm is bit-identical to
//! the row-major one) and holds the same bytes; the model's own tensors stay
//! the reference on every other backend.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use lava_flex::matmul::Host;
use lava_flex::packed::{gemm_packed, PackedMatrix};

use crate::error::ModelError;
use crate::weights::{LlamaWeights, Proj};

/// The packed matrices of one decoder layer, in [`Proj`] order (q, k, v, o,
/// gate, up, down).
#[derive(Debug)]
struct Layer([PackedMatrix; 7]);

/// Every projection of a model and its output head, packed.
#[derive(Debug)]
pub(crate) struct PackedWeights {
    layers: Vec<Layer>,
    /// `[d_model, vocab]`: `lm_head`, or the transposed embedding when tied.
    output: PackedMatrix,
}

impl PackedWeights {
    /// Packs the projections and the output head of `weights` and empties the
    /// projections' f32 matrices (`[0, 0]`), one at a time (the peak is one
    /// matrix above the weights); the embedding stays (tokens are looked up in
    /// it). `None` unless every matrix is non-empty f32 readable in place
    /// (flex): that is checked before anything is changed.
    pub(crate) fn take<B: Backend>(weights: &mut LlamaWeights<B>, device: &B::Device) -> Option<Self> {
        let readable = |l: &Linear<B>| l.weight.val().dims().iter().all(|&d| d > 0) && Host::new(&l.weight.val()).is_some();
        let all = weights.layers.iter().all(|l| l.projections().iter().all(|p| readable(p)))
            && weights.lm_head.as_ref().is_none_or(readable)
            && Host::new(&weights.embed_tokens.weight.val()).is_some();
        if !all {
            return None;
        }
        let pack = |l: &mut Linear<B>| -> Option<PackedMatrix> {
            let [d_in, d_out] = l.weight.val().dims();
            let packed = PackedMatrix::from_rows(Host::new(&l.weight.val())?.values(), d_in, d_out)?;
            l.weight = Param::from_tensor(Tensor::from_data(TensorData::new(Vec::<f32>::new(), [0, 0]), device));
            Some(packed)
        };
        let mut layers = Vec::with_capacity(weights.layers.len());
        for l in &mut weights.layers {
            let [q, k, v, o, gate, up, down] = l.projections_mut();
            layers.push(Layer([pack(q)?, pack(k)?, pack(v)?, pack(o)?, pack(gate)?, pack(up)?, pack(down)?]));
        }
        let output = match &mut weights.lm_head {
            Some(head) => pack(head)?,
            None => {
                let e = Host::new(&weights.embed_tokens.weight.val())?;
                let [v, d] = weights.embed_tokens.weight.val().dims();
                PackedMatrix::from_transposed(e.values(), d, v)?
            }
        };
        Some(Self { layers, output })
    }

    /// Bytes of the packed matrices.
    pub(crate) fn bytes(&self) -> usize {
        self.layers.iter().flat_map(|l| l.0.iter()).chain([&self.output]).map(PackedMatrix::bytes).sum()
    }

    /// `x [rows, d_in]` through the projections `projs` of `layer` (all with
    /// that input), each `[rows, d_out]`, on `threads` workers.
    pub(crate) fn project(&self, layer: usize, projs: &[Proj], x: &[f32], rows: usize, threads: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        let l = self.layers.get(layer).ok_or_else(|| ModelError::Internal(format!("no packed layer {layer}")))?;
        let mats: Vec<&PackedMatrix> = projs
            .iter()
            .map(|&p| match p {
                Proj::Q => Ok(&l.0[0]),
                Proj::K => Ok(&l.0[1]),
                Proj::V => Ok(&l.0[2]),
                Proj::O => Ok(&l.0[3]),
                Proj::Gate => Ok(&l.0[4]),
                Proj::Up => Ok(&l.0[5]),
                Proj::Down => Ok(&l.0[6]),
                Proj::LmHead => Err(ModelError::Internal("the output head is not a layer's projection".into())),
            })
            .collect::<Result<_, _>>()?;
        Self::check(&mats, x, rows)?;
        Ok(gemm_packed(x, rows, &mats, threads))
    }

    /// `x [rows, d_model]` through the output head: `[rows, vocab]`.
    pub(crate) fn logits(&self, x: &[f32], rows: usize, threads: usize) -> Result<Vec<f32>, ModelError> {
        Self::check(&[&self.output], x, rows)?;
        Ok(gemm_packed(x, rows, &[&self.output], threads).pop().unwrap_or_default())
    }

    /// `x` holds `rows` rows of the matrices' input size.
    fn check(mats: &[&PackedMatrix], x: &[f32], rows: usize) -> Result<(), ModelError> {
        match mats.first() {
            Some(m) if x.len() == rows * m.d_in() && mats.iter().all(|p| p.d_in() == m.d_in()) => Ok(()),
            _ => Err(ModelError::Internal(format!("{} values are not {rows} rows of the packed matrices' input", x.len()))),
        }
    }
}
