//! # lava-llama
//!
//! A Llama-family decoder (Llama, Mistral, Qwen2, Qwen3, Gemma 3, SmolLM) in Burn, generic over
//! the backend, that calls a [`lava_cache::KvCache`] at every attention layer.
//!
//! Loads GGUF files (F32, F16, BF16, Q8_0, Q4_0, Q4_1, dequantised to f32) and
//! Hugging Face directories (`config.json`, safetensors, `tokenizer.json`).
//!
//! Where things live:
//! - weight loading: `weights` holds the parameter structs ([`LlamaWeights`]),
//!   the [`WeightSource`] trait and the one table of Hugging Face parameter
//!   names and shapes that [`LlamaWeights::from_source`], [`hf`] and [`tiny`]
//!   read; [`gguf`] and [`hf`] are the file formats behind it;
//! - the generic forward: `transformer` ([`Llama::forward`],
//!   [`Llama::decode_batch`]), Burn tensor ops on any backend;
//! - the host forward: `host_forward`, the same math on the flex backend's
//!   host storage (`lava_flex::matmul`), tried first and falling back to the
//!   generic path on other backends; behind the `flex` feature.
//!
//! ```no_run
//! use burn_ndarray::NdArray;
//! use lava_cache::FullCache;
//! use lava_llama::{load_model, Logits};
//!
//! # fn main() -> Result<(), lava_llama::ModelError> {
//! let device = Default::default();
//! let (model, tokenizer) = load_model::<NdArray<f32>>("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &device)?;
//! let ids = tokenizer.encode("The capital of France is")?;
//! let mut cache = FullCache::new(model.cache_shape(), 8192, &device)?;
//! let logits = model.forward(&ids, &mut cache, Logits::Last)?; // [1, vocab]
//! # Ok(()) }
//! ```

pub mod config;
mod error;
pub mod gguf;
mod generation;
mod gguf_source;
pub mod hf;
mod host_forward;
pub mod memory;
#[cfg(feature = "flex")]
mod packed;
mod prompt;
#[cfg(feature = "flex")]
mod quantized;
mod rope;
pub mod sampling;
mod spm;
pub mod synthetic;
mod template_json;
pub mod tiny;
mod tokenizer;
mod transformer;
mod weights;

use std::path::Path;

use burn::tensor::backend::Backend;

pub use config::{Llama3RopeScaling, LlamaConfig};
pub use error::ModelError;
pub use generation::token_log_probs;
pub use gguf_source::{config_from_gguf, unpermute_rows, GgufSource, GGUF_ARCHITECTURES};
pub use prompt::{Prompt, PromptTokens};
pub use rope::{apply_rope, Rope};
pub use sampling::{apply_repetition_penalty, token_logprob, Sampler, Sampling, TokenLogprob};
pub use tokenizer::{tokenizer_json_from_gguf, Message, Tokenizer, TEMPLATE_ALLOCATION_LIMIT, TEMPLATE_FUEL, TEMPLATE_OUTPUT_LIMIT};
pub use transformer::{Llama, Logits};
pub use weights::{Attention, DecoderLayer, LlamaWeights, Mlp, WeightSource};

/// How the matrices (embedding, projections, output head) of a GGUF file are held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// Dequantized to f32 at load (every backend).
    #[default]
    F32,
    /// `Native` where it applies: on the flex backend, for a file whose projections are in
    /// block formats ([`has_block_matrices`]); `F32` otherwise (other backends, files of
    /// F32/F16/BF16 matrices, Hugging Face directories).
    Auto,
    /// Kept in the file's block formats and multiplied in them by
    /// `lava-quant`'s kernels: on the flex backend (with the `flex` feature);
    /// elsewhere, and for Hugging Face directories, the same as `F32`.
    Native,
}

/// Loads a GGUF file, its matrices dequantized to f32.
pub fn load_gguf<B: Backend>(path: &Path, device: &B::Device) -> Result<(Llama<B>, Tokenizer), ModelError> {
    load_gguf_with(path, device, WeightFormat::F32)
}

/// Loads a GGUF file, its matrices held as `format` says.
pub fn load_gguf_with<B: Backend>(path: &Path, device: &B::Device, format: WeightFormat) -> Result<(Llama<B>, Tokenizer), ModelError> {
    load_parsed_gguf(gguf::GgufFile::open(path)?, device, format)
}

/// Loads the synthetic model `shape` ([`synthetic`]): its GGUF image is built in memory
/// from `seed` and loaded as a file would be, its matrices held as `format` says.
pub fn load_synthetic<B: Backend>(
    shape: &synthetic::SyntheticShape,
    seed: u64,
    device: &B::Device,
    format: WeightFormat,
) -> Result<(Llama<B>, Tokenizer), ModelError> {
    load_parsed_gguf(shape.gguf(seed)?, device, format)
}

/// Loads a parsed GGUF file (mapped or in memory).
fn load_parsed_gguf<B: Backend>(g: gguf::GgufFile, device: &B::Device, format: WeightFormat) -> Result<(Llama<B>, Tokenizer), ModelError> {
    let g = std::sync::Arc::new(g);
    let config = config_from_gguf(&g)?;
    let tokenizer = Tokenizer::from_gguf(&g)?;
    let src = GgufSource::new(&g, config.clone())?;
    #[cfg(feature = "flex")]
    let native = lava_flex::bridge::is_flex::<B>()
        && match format {
            WeightFormat::Native => true,
            WeightFormat::Auto => block_matrices(&g),
            WeightFormat::F32 => false,
        };
    #[cfg(not(feature = "flex"))]
    let native = {
        let _ = format;
        false
    };
    // The weights first: their shapes are checked against the file before
    // anything sized by the metadata (RoPE tables included) is allocated.
    let weights = LlamaWeights::from_source_without_matrices(&config, &src, device, native)?;
    let mut rope = Rope::new(&config);
    if let Some(f) = src.rope_freq_factors()? {
        rope = rope.with_freq_factors(&f);
    }
    #[allow(unused_mut)]
    let mut model = Llama::new(config, weights, rope, device);
    #[cfg(feature = "flex")]
    if native {
        let unpermute = gguf_source::permuted_qk(g.get_str("general.architecture")?);
        let q = quantized::QuantizedWeights::from_gguf(g.clone(), &model.config, unpermute)?;
        model.quantized = Some(std::sync::Arc::new(q));
    }
    Ok((model, tokenizer))
}

/// Whether the projections of a GGUF file are in block formats (Q4_0 ... Q6_K), not
/// F32/F16/BF16: what [`WeightFormat::Auto`] runs natively. `false` for a directory.
pub fn has_block_matrices(path: &Path) -> Result<bool, ModelError> {
    if std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?.is_dir() {
        return Ok(false);
    }
    Ok(block_matrices(&gguf::GgufFile::open(path)?))
}

/// [`has_block_matrices`] of an open file: its first layer's query projection decides.
fn block_matrices(g: &gguf::GgufFile) -> bool {
    use lava_quant::GgmlType as T;
    g.tensors
        .get("blk.0.attn_q.weight")
        .and_then(|t| t.kind.quant())
        .is_some_and(|k| !matches!(k, T::F32 | T::F16 | T::BF16))
}

/// Loads a model from a GGUF file or a Hugging Face directory (f32 matrices).
pub fn load_model<B: Backend>(path: &Path, device: &B::Device) -> Result<(Llama<B>, Tokenizer), ModelError> {
    load_model_with(path, device, WeightFormat::F32)
}

/// Loads a model from a GGUF file (its matrices held as `format` says) or a
/// Hugging Face directory (f32).
pub fn load_model_with<B: Backend>(path: &Path, device: &B::Device, format: WeightFormat) -> Result<(Llama<B>, Tokenizer), ModelError> {
    let meta = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?;
    if meta.is_dir() {
        hf::load_hf_dir(path, device)
    } else {
        load_gguf_with(path, device, format)
    }
}

/// Writes the Hugging Face directory equivalent of a GGUF file (f32 weights).
pub fn export_gguf_to_hf(gguf_path: &Path, out: &Path) -> Result<(), ModelError> {
    let g = gguf::GgufFile::open(gguf_path)?;
    let config = config_from_gguf(&g)?;
    if g.tensors.contains_key("rope_freqs.weight") {
        return Err(ModelError::Unsupported(
            "export of GGUF files with rope_freqs (Llama-3.1 scaling) is not supported yet".into(),
        ));
    }
    if config.post_norms || config.sliding_window.is_some() {
        return Err(ModelError::Unsupported(format!(
            "export of {} files (sliding-window layers, Gemma norms) to Hugging Face directories is not supported; run the GGUF file itself",
            config.model_type
        )));
    }
    let tokenizer = Tokenizer::from_gguf(&g)?;
    let src = GgufSource::new(&g, config.clone())?;
    hf::export_hf(&config, &src, &tokenizer, out)
}
