//! The decoder's parameters and how they are assembled: the module structs
//! ([`LlamaWeights`] and its parts), the [`WeightSource`] trait loaders
//! implement, and the one parameter table ([`parameter_table`]) that names
//! every Hugging Face parameter with its shape. [`LlamaWeights::from_source`],
//! [`LlamaWeights::zeros`], the Hugging Face loader and exporter
//! (`crate::hf`) and the tiny random models (`crate::tiny`) all read that table.

use std::collections::HashMap;

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::config::LlamaConfig;
use crate::error::ModelError;

/// Self-attention projections of one layer (Hugging Face names).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[d_model, H_q * D]`
    pub q_proj: Linear<B>,
    /// `[d_model, H_kv * D]`
    pub k_proj: Linear<B>,
    /// `[d_model, H_kv * D]`
    pub v_proj: Linear<B>,
    /// `[H_q * D, d_model]`
    pub o_proj: Linear<B>,
    /// Per-head RMS norm of the queries, gain `[D]`, before RoPE (Qwen3).
    pub q_norm: Option<RmsNorm<B>>,
    /// Per-head RMS norm of the keys, gain `[D]`, before RoPE (Qwen3).
    pub k_norm: Option<RmsNorm<B>>,
}

/// SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[d_model, d_ff]`
    pub gate_proj: Linear<B>,
    /// `[d_model, d_ff]`
    pub up_proj: Linear<B>,
    /// `[d_ff, d_model]`
    pub down_proj: Linear<B>,
}

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Attention.
    pub self_attn: Attention<B>,
    /// MLP.
    pub mlp: Mlp<B>,
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Norm before the MLP (Gemma's `pre_feedforward_layernorm`).
    pub post_attention_layernorm: RmsNorm<B>,
    /// Gemma: norm of the attention output, before its residual add
    /// (Gemma's `post_attention_layernorm`, GGUF `post_attention_norm`).
    pub attention_output_norm: Option<RmsNorm<B>>,
    /// Gemma: norm of the MLP output, before its residual add
    /// (`post_feedforward_layernorm`, GGUF `post_ffw_norm`).
    pub mlp_output_norm: Option<RmsNorm<B>>,
}

/// The Llama-family decoder's parameters (names follow Hugging Face, minus `model.`).
#[derive(Module, Debug)]
pub struct LlamaWeights<B: Backend> {
    /// `[vocab, d_model]`
    pub embed_tokens: Embedding<B>,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final norm.
    pub norm: RmsNorm<B>,
    /// Output projection `[d_model, vocab]`; `None` when tied to the embeddings.
    pub lm_head: Option<Linear<B>>,
}

/// Where weights come from: Hugging Face names and row-major HF layout
/// (`[out, in]` for projections), as f32.
pub trait WeightSource {
    /// The tensor `name` as `(shape, values)`, or `None` if absent.
    fn tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>, ModelError>;
    /// Where the weights come from, for error messages.
    fn origin(&self) -> std::path::PathBuf;
    /// The shape of tensor `name` without reading its values, or `None` if
    /// absent. Checked against the configuration before anything is
    /// allocated; sources should override the default, which reads the tensor.
    fn shape(&self, name: &str) -> Result<Option<Vec<usize>>, ModelError> {
        Ok(self.tensor(name)?.map(|(s, _)| s))
    }
    /// How many tensors the source holds, if it is a file with a fixed set
    /// (a configuration asking for more cannot match it).
    fn tensor_count(&self) -> Option<usize> {
        None
    }
}

/// Checks a configuration against the tensors a file actually holds, before
/// any weight is allocated: the file must have at least as many tensors as
/// the configuration's parameters (so a huge layer count fails at once), every
/// parameter must be present with exactly the shape the configuration implies,
/// and (with `f32_matrices`) the f32 weights must fit in the memory this process can get.
/// `shape_of` gives a tensor's Hugging Face shape, `count` the file's tensor
/// count when known.
pub(crate) fn check_against_file(
    config: &LlamaConfig,
    origin: &std::path::Path,
    count: Option<usize>,
    f32_matrices: bool,
    mut shape_of: impl FnMut(&str) -> Result<Option<Vec<usize>>, ModelError>,
) -> Result<(), ModelError> {
    config.validate()?;
    let weights_err = |detail: String| ModelError::Weights { path: origin.to_path_buf(), detail };
    // The layers alone must fit in the file's tensors: a layer count of 2^31
    // fails here, before the parameter list is built.
    let t = parameter_table(config);
    let layer_tensors = t.per_layer.len().checked_mul(t.layers);
    if let Some(n) = count.filter(|&n| layer_tensors.is_none_or(|l| l > n)) {
        return Err(weights_err(format!(
            "the configuration's {} layers need {} tensors but the file holds only {n}; \
             the layer count (num_hidden_layers / block_count) does not match the weights",
            config.num_hidden_layers,
            layer_tensors.map_or("more".to_string(), |l| l.to_string())
        )));
    }
    for p in parameters(config) {
        match shape_of(&p.name)? {
            None => return Err(weights_err(format!("missing tensor {}", p.name))),
            Some(found) if found != p.shape => {
                return Err(weights_err(format!(
                    "tensor {} has shape {found:?} but the configuration implies {:?}; the config does not match the weights",
                    p.name, p.shape
                )))
            }
            Some(_) => {}
        }
    }
    if !f32_matrices {
        // Native quantized matrices stay in the file, already mapped (and counted in the
        // address space); the f32 norms and biases left are a few KB per layer.
        return Ok(());
    }
    let bytes = config.f32_weight_bytes().unwrap_or(u64::MAX);
    crate::memory::check_available(&format!("loading the f32 weights of {}", origin.display()), bytes)
}

/// A projection of [`LlamaWeights`]: the layers' seven and the output head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Proj {
    /// `self_attn.q_proj`
    Q,
    /// `self_attn.k_proj`
    K,
    /// `self_attn.v_proj`
    V,
    /// `self_attn.o_proj`
    O,
    /// `mlp.gate_proj`
    Gate,
    /// `mlp.up_proj`
    Up,
    /// `mlp.down_proj`
    Down,
    /// `lm_head` (untied models only)
    LmHead,
}

/// An RMS norm of [`LlamaWeights`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Norm {
    /// A layer's `input_layernorm`.
    Input,
    /// A layer's `post_attention_layernorm`.
    PostAttention,
    /// The final `norm`.
    Final,
    /// A layer's per-head `self_attn.q_norm` (`[head_dim]`).
    Q,
    /// A layer's per-head `self_attn.k_norm` (`[head_dim]`).
    K,
    /// A Gemma layer's attention output norm.
    AttentionOutput,
    /// A Gemma layer's MLP output norm.
    MlpOutput,
}

/// Which field of [`LlamaWeights`] a parameter fills, and so how it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ParameterKind {
    /// The embedding table, kept as stored: `[vocab, d_model]`.
    Embedding,
    /// A projection's weight: HF `[out, in]`, kept transposed as `[in, out]`.
    Weight(Proj),
    /// A projection's bias `[out]`.
    Bias(Proj),
    /// An RMS norm's gain (`[d_model]`; `[head_dim]` for the per-head q/k norms).
    Norm(Norm),
}

/// One row of the [`parameter_table`].
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// Hugging Face name; relative to `model.layers.{l}.` in [`ParameterTable::per_layer`].
    pub name: &'static str,
    /// Shape in the Hugging Face layout.
    pub shape: Vec<usize>,
    /// What it is.
    pub kind: ParameterKind,
}

/// Every parameter of a config, in file order: the rows `before` the layers,
/// the rows of each layer (`per_layer`, repeated for `layers` layers) and the
/// rows `after` them.
#[derive(Debug, Clone)]
pub(crate) struct ParameterTable {
    /// `model.embed_tokens.weight`.
    pub before: Vec<Row>,
    /// One layer's parameters, named relative to `model.layers.{l}.`.
    pub per_layer: Vec<Row>,
    /// `model.norm.weight`, and `lm_head.weight` when untied.
    pub after: Vec<Row>,
    /// How many times `per_layer` repeats.
    pub layers: usize,
}

/// The parameter table: every Hugging Face parameter name of `c` with its
/// shape and kind. The only place those names and shapes are written.
pub(crate) fn parameter_table(c: &LlamaConfig) -> ParameterTable {
    use ParameterKind::{Bias, Embedding, Weight};
    let (d, hd, ff, vocab) = (c.hidden_size, c.head_dim, c.intermediate_size, c.vocab_size);
    let (q, kv) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
    let row = |name, shape: &[usize], kind| Row { name, shape: shape.to_vec(), kind };
    let bias = |name, shape: &[usize], p| c.attention_bias.then(|| row(name, shape, Bias(p)));
    let qk_norm = |name, n| c.qk_norm.then(|| row(name, &[hd], ParameterKind::Norm(n)));
    let per_layer = [
        Some(row("self_attn.q_proj.weight", &[q, d], Weight(Proj::Q))),
        bias("self_attn.q_proj.bias", &[q], Proj::Q),
        Some(row("self_attn.k_proj.weight", &[kv, d], Weight(Proj::K))),
        bias("self_attn.k_proj.bias", &[kv], Proj::K),
        Some(row("self_attn.v_proj.weight", &[kv, d], Weight(Proj::V))),
        bias("self_attn.v_proj.bias", &[kv], Proj::V),
        Some(row("self_attn.o_proj.weight", &[d, q], Weight(Proj::O))),
        qk_norm("self_attn.q_norm.weight", Norm::Q),
        qk_norm("self_attn.k_norm.weight", Norm::K),
        Some(row("mlp.gate_proj.weight", &[ff, d], Weight(Proj::Gate))),
        Some(row("mlp.up_proj.weight", &[ff, d], Weight(Proj::Up))),
        Some(row("mlp.down_proj.weight", &[d, ff], Weight(Proj::Down))),
        Some(row("input_layernorm.weight", &[d], ParameterKind::Norm(Norm::Input))),
        // Gemma names its four norms after where they sit: the attention output's
        // is its `post_attention_layernorm`, the MLP input's `pre_feedforward_layernorm`.
        (!c.post_norms).then(|| row("post_attention_layernorm.weight", &[d], ParameterKind::Norm(Norm::PostAttention))),
        c.post_norms.then(|| row("post_attention_layernorm.weight", &[d], ParameterKind::Norm(Norm::AttentionOutput))),
        c.post_norms.then(|| row("pre_feedforward_layernorm.weight", &[d], ParameterKind::Norm(Norm::PostAttention))),
        c.post_norms.then(|| row("post_feedforward_layernorm.weight", &[d], ParameterKind::Norm(Norm::MlpOutput))),
    ];
    let after = [
        Some(row("model.norm.weight", &[d], ParameterKind::Norm(Norm::Final))),
        (!c.tie_word_embeddings).then(|| row("lm_head.weight", &[vocab, d], Weight(Proj::LmHead))),
    ];
    ParameterTable {
        before: vec![row("model.embed_tokens.weight", &[vocab, d], Embedding)],
        per_layer: per_layer.into_iter().flatten().collect(),
        after: after.into_iter().flatten().collect(),
        layers: c.num_hidden_layers,
    }
}

/// One parameter of a config, with its full Hugging Face name.
#[derive(Debug, Clone)]
pub(crate) struct Parameter {
    /// Full Hugging Face name, e.g. `model.layers.3.mlp.up_proj.weight`.
    pub name: String,
    /// Shape in the Hugging Face layout.
    pub shape: Vec<usize>,
    /// What it is.
    pub kind: ParameterKind,
    /// Its layer, `None` for the parameters outside the layers.
    pub layer: Option<usize>,
}

/// Every parameter of `c`, in a stable (file) order: the [`parameter_table`]
/// with its layer rows repeated per layer.
pub(crate) fn parameters(c: &LlamaConfig) -> Vec<Parameter> {
    let t = parameter_table(c);
    let whole = |r: &Row| Parameter { name: r.name.to_string(), shape: r.shape.clone(), kind: r.kind, layer: None };
    let mut out: Vec<Parameter> = t.before.iter().map(whole).collect();
    for l in 0..t.layers {
        out.extend(t.per_layer.iter().map(|r| Parameter {
            name: format!("model.layers.{l}.{}", r.name),
            shape: r.shape.clone(),
            kind: r.kind,
            layer: Some(l),
        }));
    }
    out.extend(t.after.iter().map(whole));
    out
}

/// The Hugging Face shape of parameter `name` under `c`, if it is one. Looks
/// the name up in the [`parameter_table`] without expanding it over the layers.
pub(crate) fn parameter_shape(c: &LlamaConfig, name: &str) -> Option<Vec<usize>> {
    let t = parameter_table(c);
    let found = match name.strip_prefix("model.layers.") {
        Some(rest) => {
            let (layer, param) = rest.split_once('.')?;
            if layer.parse::<usize>().ok()? >= t.layers {
                return None;
            }
            t.per_layer.iter().find(|r| r.name == param)
        }
        None => t.before.iter().chain(&t.after).find(|r| r.name == name),
    };
    found.map(|r| r.shape.clone())
}

/// The values of tensor `name` from `src`, which must have shape `shape`.
fn expect<S: WeightSource + ?Sized>(src: &S, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
    match src.tensor(name)? {
        None => Err(ModelError::Weights { path: src.origin(), detail: format!("missing tensor {name}") }),
        Some((found, _)) if found != shape => Err(ModelError::Weights {
            path: src.origin(),
            detail: format!("tensor {name} has shape {found:?}, the configuration implies {shape:?}"),
        }),
        Some((_, v)) => Ok(v),
    }
}

/// Transposes a row-major `[rows, cols]` matrix.
pub(crate) fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// A projection from its weight `[in, out]` and optional bias `[out]`.
fn linear<B: Backend>(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Linear<B> {
    Linear { weight: Param::from_tensor(weight), bias: bias.map(Param::from_tensor) }
}

/// An RMS norm from its gain `[d]`.
fn rms_norm<B: Backend>(gamma: Tensor<B, 1>, eps: f64) -> RmsNorm<B> {
    RmsNorm { gamma: Param::from_tensor(gamma), epsilon: eps }
}

/// The loaded tensors of a model, by (layer, kind), until they are assembled
/// into [`LlamaWeights`]. Only device tensors: each host vector is dropped as
/// soon as its tensor exists.
struct Loaded<B: Backend> {
    matrices: HashMap<(Option<usize>, ParameterKind), Tensor<B, 2>>,
    vectors: HashMap<(Option<usize>, ParameterKind), Tensor<B, 1>>,
}

#[cfg(feature = "flex")]
impl<B: Backend> DecoderLayer<B> {
    /// The seven projections, in [`Proj`] order (q, k, v, o, gate, up, down).
    pub(crate) fn projections(&self) -> [&Linear<B>; 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &m.gate_proj, &m.up_proj, &m.down_proj]
    }

    /// [`projections`](Self::projections), mutable.
    pub(crate) fn projections_mut(&mut self) -> [&mut Linear<B>; 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj, &mut m.gate_proj, &mut m.up_proj, &mut m.down_proj]
    }
}

impl<B: Backend> Loaded<B> {
    /// Stores `values` (HF layout, shape `p.shape`) as its kind is kept.
    fn put(&mut self, p: &Parameter, values: Vec<f32>, device: &B::Device) {
        let key = (p.layer, p.kind);
        match p.kind {
            ParameterKind::Embedding => {
                let t = Tensor::from_data(TensorData::new(values, [p.shape[0], p.shape[1]]), device);
                self.matrices.insert(key, t);
            }
            ParameterKind::Weight(_) => {
                let (d_out, d_in) = (p.shape[0], p.shape[1]);
                let t = Tensor::from_data(TensorData::new(transpose(&values, d_out, d_in), [d_in, d_out]), device);
                self.matrices.insert(key, t);
            }
            ParameterKind::Bias(_) | ParameterKind::Norm(_) => {
                let n = p.shape[0];
                self.vectors.insert(key, Tensor::from_data(TensorData::new(values, [n]), device));
            }
        }
    }

    /// The table and the assembly disagree (a bug, not bad weights).
    fn absent(layer: Option<usize>, kind: ParameterKind) -> ModelError {
        ModelError::Weights {
            path: "<parameter table>".into(),
            detail: format!("no {kind:?} parameter for layer {layer:?} in the parameter table"),
        }
    }

    fn matrix(&mut self, layer: Option<usize>, kind: ParameterKind) -> Result<Tensor<B, 2>, ModelError> {
        self.matrices.remove(&(layer, kind)).ok_or_else(|| Self::absent(layer, kind))
    }

    /// Projection `p` of `layer`, with its bias if the table has one.
    fn linear(&mut self, layer: Option<usize>, p: Proj) -> Result<Linear<B>, ModelError> {
        let weight = self.matrix(layer, ParameterKind::Weight(p))?;
        Ok(linear(weight, self.vectors.remove(&(layer, ParameterKind::Bias(p)))))
    }

    /// Projection `p` of `layer` if the table has it.
    fn linear_if_present(&mut self, layer: Option<usize>, p: Proj) -> Result<Option<Linear<B>>, ModelError> {
        if self.matrices.contains_key(&(layer, ParameterKind::Weight(p))) {
            self.linear(layer, p).map(Some)
        } else {
            Ok(None)
        }
    }

    fn rms_norm(&mut self, layer: Option<usize>, n: Norm, eps: f64) -> Result<RmsNorm<B>, ModelError> {
        let kind = ParameterKind::Norm(n);
        let gamma = self.vectors.remove(&(layer, kind)).ok_or_else(|| Self::absent(layer, kind))?;
        Ok(rms_norm(gamma, eps))
    }

    /// RMS norm `n` of `layer` if the table has it.
    fn rms_norm_if_present(&mut self, layer: Option<usize>, n: Norm, eps: f64) -> Result<Option<RmsNorm<B>>, ModelError> {
        if self.vectors.contains_key(&(layer, ParameterKind::Norm(n))) {
            self.rms_norm(layer, n, eps).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl<B: Backend> LlamaWeights<B> {
    /// Builds the parameters from a [`WeightSource`], checking every shape
    /// against the parameter table (tensors are read in its order).
    pub fn from_source<S: WeightSource + ?Sized>(
        config: &LlamaConfig,
        src: &S,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        Self::from_source_without_matrices(config, src, device, false)
    }

    /// [`from_source`](Self::from_source); with `no_matrices`, the embedding
    /// and every projection weight are left empty (`[0, 0]`, nothing read or
    /// allocated): for a model whose matrices live elsewhere (the native
    /// quantized weights of `crate::quantized`). Norms and biases are read.
    pub(crate) fn from_source_without_matrices<S: WeightSource + ?Sized>(
        config: &LlamaConfig,
        src: &S,
        device: &B::Device,
        no_matrices: bool,
    ) -> Result<Self, ModelError> {
        check_against_file(config, &src.origin(), src.tensor_count(), !no_matrices, |name| src.shape(name))?;
        let eps = config.rms_norm_eps;
        let mut loaded = Loaded::<B> { matrices: HashMap::new(), vectors: HashMap::new() };
        for p in parameters(config) {
            if no_matrices && matches!(p.kind, ParameterKind::Embedding | ParameterKind::Weight(_)) {
                let empty = Tensor::from_data(TensorData::new(Vec::<f32>::new(), [0, 0]), device);
                loaded.matrices.insert((p.layer, p.kind), empty);
                continue;
            }
            let values = expect(src, &p.name, &p.shape)?;
            loaded.put(&p, values, device);
        }
        let embed_tokens = Embedding { weight: Param::from_tensor(loaded.matrix(None, ParameterKind::Embedding)?) };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in (0..config.num_hidden_layers).map(Some) {
            layers.push(DecoderLayer {
                self_attn: Attention {
                    q_proj: loaded.linear(l, Proj::Q)?,
                    k_proj: loaded.linear(l, Proj::K)?,
                    v_proj: loaded.linear(l, Proj::V)?,
                    o_proj: loaded.linear(l, Proj::O)?,
                    q_norm: loaded.rms_norm_if_present(l, Norm::Q, eps)?,
                    k_norm: loaded.rms_norm_if_present(l, Norm::K, eps)?,
                },
                mlp: Mlp {
                    gate_proj: loaded.linear(l, Proj::Gate)?,
                    up_proj: loaded.linear(l, Proj::Up)?,
                    down_proj: loaded.linear(l, Proj::Down)?,
                },
                input_layernorm: loaded.rms_norm(l, Norm::Input, eps)?,
                post_attention_layernorm: loaded.rms_norm(l, Norm::PostAttention, eps)?,
                attention_output_norm: loaded.rms_norm_if_present(l, Norm::AttentionOutput, eps)?,
                mlp_output_norm: loaded.rms_norm_if_present(l, Norm::MlpOutput, eps)?,
            });
        }
        let norm = loaded.rms_norm(None, Norm::Final, eps)?;
        let lm_head = loaded.linear_if_present(None, Proj::LmHead)?;
        Ok(Self { embed_tokens, layers, norm, lm_head })
    }

    /// Zero-filled parameters of the right shapes (to be overwritten by a store).
    pub fn zeros(config: &LlamaConfig, device: &B::Device) -> Result<Self, ModelError> {
        Self::from_source(config, &ZeroSource(config.clone()), device)
    }
}

/// Zero weights of the shapes a config implies.
struct ZeroSource(LlamaConfig);

impl WeightSource for ZeroSource {
    fn tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>, ModelError> {
        Ok(parameter_shape(&self.0, name).map(|s| {
            let n = s.iter().product();
            (s, vec![0.0; n])
        }))
    }
    fn origin(&self) -> std::path::PathBuf {
        "<zeros>".into()
    }
    fn shape(&self, name: &str) -> Result<Option<Vec<usize>>, ModelError> {
        Ok(parameter_shape(&self.0, name))
    }
}
