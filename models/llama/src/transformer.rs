//! The decoder: embeddings, RMSNorm, RoPE attention through a [`KvCache`],
//! SwiGLU MLP, output projection. Batch 1; hidden states are `[T, d_model]`.

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear, RmsNorm};
use burn::tensor::{activation::silu, backend::Backend, Int, Tensor, TensorData};
use lava_cache::{CacheShape, KvCache};

use crate::config::LlamaConfig;
use crate::error::ModelError;
use lava_flex::matmul as kernels;
use crate::rope::{apply_rope, Rope};

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
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
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

/// Rows per block of the host MLP (`run_on_host`): bounds the `[rows, ff]`
/// intermediates of a long prefill.
const MLP_BLOCK_ROWS: usize = 1024;

/// Steps of at most this many tokens use [`Llama::with_matvec_split`].
pub const MATVEC_SPLIT_MAX_ROWS: usize = 8;

/// Which positions' logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position: `[1, vocab]` (generation).
    Last,
    /// Every position: `[T, vocab]` (perplexity).
    All,
}

/// A ready-to-run Llama-family model.
#[derive(Debug)]
pub struct Llama<B: Backend> {
    /// Architecture.
    pub config: LlamaConfig,
    /// Parameters.
    pub weights: LlamaWeights<B>,
    /// Output projection in matmul layout `[d_model, vocab]` (tied models: the
    /// transposed embedding, materialised once at load).
    output: Tensor<B, 2>,
    rope: Rope,
    device: B::Device,
    /// Column blocks the projections are split into for few-token steps
    /// (see [`Llama::with_matvec_split`]); 1 = one matmul.
    matvec_split: usize,
}

/// Where weights come from: Hugging Face names and row-major HF layout
/// (`[out, in]` for projections), as f32.
pub trait WeightSource {
    /// The tensor `name` as `(shape, values)`, or `None` if absent.
    fn tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>, ModelError>;
    /// Where the weights come from, for error messages.
    fn origin(&self) -> std::path::PathBuf;
}

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

fn linear<B: Backend, S: WeightSource + ?Sized>(
    src: &S,
    name: &str,
    d_in: usize,
    d_out: usize,
    bias: bool,
    device: &B::Device,
) -> Result<Linear<B>, ModelError> {
    let w = expect(src, &format!("{name}.weight"), &[d_out, d_in])?;
    let weight = Tensor::from_data(TensorData::new(transpose(&w, d_out, d_in), [d_in, d_out]), device);
    let bias = if bias {
        let b = expect(src, &format!("{name}.bias"), &[d_out])?;
        Some(Param::from_tensor(Tensor::from_data(TensorData::new(b, [d_out]), device)))
    } else {
        None
    };
    Ok(Linear { weight: Param::from_tensor(weight), bias })
}

fn rms_norm<B: Backend, S: WeightSource + ?Sized>(
    src: &S,
    name: &str,
    d: usize,
    eps: f64,
    device: &B::Device,
) -> Result<RmsNorm<B>, ModelError> {
    let g = expect(src, &format!("{name}.weight"), &[d])?;
    Ok(RmsNorm { gamma: Param::from_tensor(Tensor::from_data(TensorData::new(g, [d]), device)), epsilon: eps })
}

impl<B: Backend> LlamaWeights<B> {
    /// Builds the parameters from a [`WeightSource`], checking every shape.
    pub fn from_source<S: WeightSource + ?Sized>(
        config: &LlamaConfig,
        src: &S,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let c = config;
        let (d, hd) = (c.hidden_size, c.head_dim);
        let q_out = c.num_attention_heads * hd;
        let kv_out = c.num_key_value_heads * hd;
        let emb = expect(src, "model.embed_tokens.weight", &[c.vocab_size, d])?;
        let embed_tokens =
            Embedding { weight: Param::from_tensor(Tensor::from_data(TensorData::new(emb, [c.vocab_size, d]), device)) };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let b = c.attention_bias;
            layers.push(DecoderLayer {
                self_attn: Attention {
                    q_proj: linear(src, &format!("{p}.self_attn.q_proj"), d, q_out, b, device)?,
                    k_proj: linear(src, &format!("{p}.self_attn.k_proj"), d, kv_out, b, device)?,
                    v_proj: linear(src, &format!("{p}.self_attn.v_proj"), d, kv_out, b, device)?,
                    o_proj: linear(src, &format!("{p}.self_attn.o_proj"), q_out, d, false, device)?,
                },
                mlp: Mlp {
                    gate_proj: linear(src, &format!("{p}.mlp.gate_proj"), d, c.intermediate_size, false, device)?,
                    up_proj: linear(src, &format!("{p}.mlp.up_proj"), d, c.intermediate_size, false, device)?,
                    down_proj: linear(src, &format!("{p}.mlp.down_proj"), c.intermediate_size, d, false, device)?,
                },
                input_layernorm: rms_norm(src, &format!("{p}.input_layernorm"), d, c.rms_norm_eps, device)?,
                post_attention_layernorm: rms_norm(
                    src,
                    &format!("{p}.post_attention_layernorm"),
                    d,
                    c.rms_norm_eps,
                    device,
                )?,
            });
        }
        let norm = rms_norm(src, "model.norm", d, c.rms_norm_eps, device)?;
        let lm_head =
            if c.tie_word_embeddings { None } else { Some(linear(src, "lm_head", d, c.vocab_size, false, device)?) };
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
        let shape = crate::hf::expected_shape(&self.0, name);
        Ok(shape.map(|s| {
            let n = s.iter().product();
            (s, vec![0.0; n])
        }))
    }
    fn origin(&self) -> std::path::PathBuf {
        "<zeros>".into()
    }
}

impl<B: Backend> Llama<B> {
    /// Assembles a model from its parameters.
    pub fn new(config: LlamaConfig, weights: LlamaWeights<B>, rope: Rope, device: &B::Device) -> Self {
        let output = match &weights.lm_head {
            Some(l) => l.weight.val(),
            // Materialise the transposed embedding once: the matmul then reads it contiguously.
            None => {
                let e = weights.embed_tokens.weight.val();
                let [v, d] = e.dims();
                // On flex, read the embedding in place (no host copy of it at load time).
                let transposed = match lava_flex::matmul::Host::new(&e) {
                    Some(host) => Some(transpose(host.values(), v, d)),
                    None => e.into_data().to_vec::<f32>().ok().map(|vals| transpose(&vals, v, d)),
                };
                match transposed {
                    Some(t) => Tensor::from_data(TensorData::new(t, [d, v]), device),
                    None => weights.embed_tokens.weight.val().transpose(),
                }
            }
        };
        Self { config, weights, output, rope, device: device.clone(), matvec_split: 1 }
    }

    /// Builds from a [`WeightSource`] (GGUF, or a tiny random model).
    pub fn from_source<S: WeightSource + ?Sized>(
        config: LlamaConfig,
        src: &S,
        rope: Rope,
        device: &B::Device,
    ) -> Result<Self, ModelError> {
        let weights = LlamaWeights::from_source(&config, src, device)?;
        Ok(Self::new(config, weights, rope, device))
    }

    /// Uses `parts` threads for the projections of a decode step (at most
    /// [`MATVEC_SPLIT_MAX_ROWS`] tokens), which are bound by reading the
    /// weights: on flex, the threads of [`kernels::matvec_multi`]; on other
    /// backends, `parts` column blocks (views of the weights, no copy) computed
    /// in parallel on the rayon pool and concatenated, identical results.
    ///
    /// For CPU backends, whose matmul runs a vector-matrix product this small
    /// on one thread, i.e. at one core's memory bandwidth. Leave it at 1 (the
    /// default) on GPUs.
    pub fn with_matvec_split(mut self, parts: usize) -> Self {
        self.matvec_split = parts.max(1);
        self
    }

    /// `x [T, in] @ weight [in, out] (+ bias)`, split by columns for small `T`.
    fn project(&self, layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let [t, _] = x.dims();
        let w = layer.weight.val();
        let [d_in, d_out] = w.dims();
        let parts = self.matvec_split.min(d_out / 16).max(1);
        let y = if parts > 1 && t <= MATVEC_SPLIT_MAX_ROWS {
            use rayon::prelude::*;
            let block = d_out.div_ceil(parts);
            let outs: Vec<Tensor<B, 2>> = (0..parts)
                .into_par_iter()
                .map(|i| {
                    let cols = i * block..((i + 1) * block).min(d_out);
                    x.clone().matmul(w.clone().slice([0..d_in, cols]))
                })
                .collect();
            Tensor::cat(outs, 1)
        } else {
            x.matmul(w)
        };
        match &layer.bias {
            Some(b) => y + b.val().unsqueeze_dim(0),
            None => y,
        }
    }

    /// `x [T, d_model] @ output [d_model, vocab]`.
    fn logits(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let fast = if x.dims()[0] <= MATVEC_SPLIT_MAX_ROWS { lava_flex::matmul::project_rows(&x, &self.output, self.matvec_split) } else { None };
        fast.unwrap_or_else(|| x.matmul(self.output.clone()))
    }

    /// One decoder layer on `x [T, d_model]`: norm, q/k/v projections, RoPE
    /// (`cos`/`sin` per row), `attend(q [H_q,T,D], k, v [H_kv,T,D]) -> [H_q,T,D]`,
    /// output projection, residual, norm, SwiGLU MLP, residual.
    fn layer_step(
        &self,
        layer: &DecoderLayer<B>,
        x: Tensor<B, 2>,
        cos: &Tensor<B, 3>,
        sin: &Tensor<B, 3>,
        attend: impl FnOnce(Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) -> Result<Tensor<B, 3>, lava_cache::CacheError>,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let c = &self.config;
        let (hq, hkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let [t, _] = x.dims();
        let h = layer.input_layernorm.forward(x.clone());
        let a = &layer.self_attn;
        let q = apply_rope(self.project(&a.q_proj, h.clone()).reshape([t, hq, hd]).swap_dims(0, 1), cos, sin);
        let k = apply_rope(self.project(&a.k_proj, h.clone()).reshape([t, hkv, hd]).swap_dims(0, 1), cos, sin);
        let v = self.project(&a.v_proj, h).reshape([t, hkv, hd]).swap_dims(0, 1);
        let o = attend(q, k, v)?.swap_dims(0, 1).reshape([t, hq * hd]);
        let x = x + self.project(&a.o_proj, o);
        let h = layer.post_attention_layernorm.forward(x.clone());
        let m = &layer.mlp;
        Ok(x + self.project(&m.down_proj, silu(self.project(&m.gate_proj, h.clone())) * self.project(&m.up_proj, h)))
    }

    /// The device the model lives on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// The cache shape this model needs.
    pub fn cache_shape(&self) -> CacheShape {
        CacheShape {
            layers: self.config.num_hidden_layers,
            query_heads: self.config.num_attention_heads,
            kv_heads: self.config.num_key_value_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// Bytes of f32 parameters.
    pub fn parameter_bytes(&self) -> usize {
        self.weights.num_params() * 4
    }

    /// Runs `tokens` through the model, appending them to `cache` at absolute
    /// positions `cache.next_position()..`, and returns logits (`[1, vocab]` or
    /// `[T, vocab]` per `which`).
    pub fn forward<C: KvCache<B> + ?Sized>(
        &self,
        tokens: &[u32],
        cache: &mut C,
        which: Logits,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let t = tokens.len();
        if t == 0 {
            return Err(ModelError::Input("cannot run the model on zero tokens".into()));
        }
        let c = &self.config;
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(ModelError::Input(format!("token id {bad} is outside the vocabulary ({})", c.vocab_size)));
        }
        if t == 1 {
            // One new token: the decode step (which has a fast path on CPU).
            return self.decode_batch(tokens, &mut [cache]);
        }
        let start = cache.next_position();
        if lava_flex::bridge::is_flex::<B>() {
            let positions: Vec<usize> = (start..start + t).collect();
            if let Some(x) = self.run_on_host(tokens, &positions, &[0..t], &mut [cache])? {
                let (x, rows) = match which {
                    Logits::Last => (x[(t - 1) * c.hidden_size..].to_vec(), 1),
                    Logits::All => (x, t),
                };
                if let Some(logits) = self.host_logits(x, rows) {
                    return Ok(logits);
                }
            }
        }
        let ids: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [t]), &self.device);
        let mut x = self.weights.embed_tokens.weight.val().select(0, ids); // [T, d]
        let (cos, sin) = self.rope.tables::<B>(start, t, &self.device);
        for (l, layer) in self.weights.layers.iter().enumerate() {
            x = self.layer_step(layer, x, &cos, &sin, |q, k, v| cache.attend(l, q, k, v))?;
        }
        let x = match which {
            Logits::Last => x.slice([t - 1..t, 0..c.hidden_size]),
            Logits::All => x,
        };
        Ok(self.logits(self.weights.norm.forward(x)))
    }

    /// One decode step for `n` independent sequences: `tokens[i]` is appended
    /// to `caches[i]` at that cache's own next position. Returns `[n, vocab]`.
    ///
    /// The projections and the MLP run once on `[n, d_model]` (the weights are
    /// read once for all sequences); attention runs per cache. The result
    /// equals `n` separate [`forward`](Self::forward) calls up to float
    /// summation order.
    pub fn decode_batch<C: KvCache<B> + ?Sized>(&self, tokens: &[u32], caches: &mut [&mut C]) -> Result<Tensor<B, 2>, ModelError> {
        let n = tokens.len();
        if n == 0 || n != caches.len() {
            return Err(ModelError::Input(format!(
                "decode_batch needs one token per cache and at least one (got {n} tokens for {} caches)",
                caches.len()
            )));
        }
        let c = &self.config;
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(ModelError::Input(format!("token id {bad} is outside the vocabulary ({})", c.vocab_size)));
        }
        let positions: Vec<usize> = caches.iter().map(|c| c.next_position()).collect();
        if lava_flex::bridge::is_flex::<B>() {
            let groups: Vec<std::ops::Range<usize>> = (0..n).map(|i| i..i + 1).collect();
            if let Some(x) = self.run_on_host(tokens, &positions, &groups, caches)? {
                if let Some(logits) = self.host_logits(x, n) {
                    return Ok(logits);
                }
            }
        }
        let ids: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), &self.device);
        let mut x = self.weights.embed_tokens.weight.val().select(0, ids); // [n, d]
        let (cos, sin) = self.rope.tables_at::<B>(&positions, &self.device);
        let (hq, hkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        for (l, layer) in self.weights.layers.iter().enumerate() {
            x = self.layer_step(layer, x, &cos, &sin, |q, k, v| {
                let mut outs = Vec::with_capacity(n);
                for (i, cache) in caches.iter_mut().enumerate() {
                    let row = |t: &Tensor<B, 3>, heads: usize| t.clone().slice([0..heads, i..i + 1, 0..hd]);
                    outs.push(cache.attend(l, row(&q, hq), row(&k, hkv), row(&v, hkv))?); // [H_q, 1, D]
                }
                Ok(Tensor::cat(outs, 1))
            })?;
        }
        Ok(self.logits(self.weights.norm.forward(x)))
    }

    /// [`forward`](Self::forward) and [`decode_batch`](Self::decode_batch) on
    /// the weights' own storage, for the flex backend. `groups[i]` is the run
    /// of rows (tokens) appended to `caches[i]`; `positions` holds each row's
    /// absolute position. The residual stream stays a host vector; a
    /// projection of at most [`kernels::MATVEC_MAX_ROWS`] rows is one
    /// [`kernels::matvec_multi`] pass (q/k/v together, gate/up together), a
    /// longer one the backend's matmul; RMS norm, RoPE and SwiGLU run on the
    /// rows in place; only attention goes through the caches. Same math as
    /// [`layer_step`](Self::layer_step), without the tensor ops' copies of
    /// strided views. Returns the final normed hidden rows `[R, d_model]`
    /// (host), or `None` (take the generic path) on other backends.
    fn run_on_host<C: KvCache<B> + ?Sized>(
        &self,
        tokens: &[u32],
        positions: &[usize],
        groups: &[std::ops::Range<usize>],
        caches: &mut [&mut C],
    ) -> Result<Option<Vec<f32>>, ModelError> {
        use kernels::{rms_norm, rope, swiglu, Host};
        let c = &self.config;
        let (rows, d, hd) = (tokens.len(), c.hidden_size, c.head_dim);
        let (hq, hkv, ff) = (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size);
        let (Some(embed), Some(norm)) = (Host::new(&self.weights.embed_tokens.weight.val()), Host::new(&self.weights.norm.gamma.val())) else {
            return Ok(None);
        };
        // Every parameter must be readable in place before any cache is touched.
        fn linears<B: Backend>(l: &DecoderLayer<B>) -> [&Linear<B>; 7] {
            let (a, m) = (&l.self_attn, &l.mlp);
            [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &m.gate_proj, &m.up_proj, &m.down_proj]
        }
        let readable = self.weights.layers.iter().all(|l| {
            linears(l).iter().all(|p| Host::new(&p.weight.val()).is_some() && p.bias.as_ref().is_none_or(|b| Host::new(&b.val()).is_some()))
                && Host::new(&l.input_layernorm.gamma.val()).is_some()
                && Host::new(&l.post_attention_layernorm.gamma.val()).is_some()
        });
        if !readable {
            return Ok(None);
        }
        let mut x: Vec<f32> = tokens.iter().flat_map(|&t| embed.values()[t as usize * d..(t as usize + 1) * d].iter().copied()).collect();
        let (cos, sin) = self.rope.host_tables(positions);
        let half = hd / 2;
        let lost = || ModelError::Input("a parameter stopped being readable during the step".into());
        for (l, layer) in self.weights.layers.iter().enumerate() {
            let (a, m) = (&layer.self_attn, &layer.mlp);
            let (Some(g1), Some(g2)) = (Host::new(&layer.input_layernorm.gamma.val()), Host::new(&layer.post_attention_layernorm.gamma.val()))
            else {
                return Err(lost());
            };
            let mut h = x.clone();
            rms_norm(&mut h, g1.values(), layer.input_layernorm.epsilon);
            let mut qkv = self.project_host(&h, rows, &[&a.q_proj, &a.k_proj, &a.v_proj]).ok_or_else(lost)?;
            for r in 0..rows {
                let (cs, sn) = (&cos[r * half..(r + 1) * half], &sin[r * half..(r + 1) * half]);
                rope(&mut qkv[0][r * hq * hd..(r + 1) * hq * hd], cs, sn);
                rope(&mut qkv[1][r * hkv * hd..(r + 1) * hkv * hd], cs, sn);
            }
            let mut attn = vec![0f32; rows * hq * hd];
            for (cache, group) in caches.iter_mut().zip(groups) {
                let t = group.len();
                // Rows [t, H * D] of this group as [H, t, D].
                let heads_first = |v: &[f32], heads: usize| {
                    let mut out = vec![0f32; heads * t * hd];
                    for (i, r) in group.clone().enumerate() {
                        for h in 0..heads {
                            out[(h * t + i) * hd..(h * t + i + 1) * hd].copy_from_slice(&v[(r * heads + h) * hd..(r * heads + h + 1) * hd]);
                        }
                    }
                    lava_flex::bridge::from_host::<B, 3>(out, [heads, t, hd])
                };
                let (Some(q), Some(k), Some(v)) = (heads_first(&qkv[0], hq), heads_first(&qkv[1], hkv), heads_first(&qkv[2], hkv)) else {
                    return Err(lost());
                };
                let out = cache.attend(l, q, k, v)?;
                let out = out.into_data().convert::<f32>().into_vec::<f32>().map_err(|e| ModelError::Input(format!("attention output: {e:?}")))?;
                for (i, r) in group.clone().enumerate() {
                    for h in 0..hq {
                        attn[(r * hq + h) * hd..(r * hq + h + 1) * hd].copy_from_slice(&out[(h * t + i) * hd..(h * t + i + 1) * hd]);
                    }
                }
            }
            let o = self.project_host(&attn, rows, &[&a.o_proj]).ok_or_else(lost)?;
            x.iter_mut().zip(&o[0]).for_each(|(x, o)| *x += o);
            // The MLP in blocks of rows: its [rows, ff] intermediates are the
            // largest activations of a long prefill.
            for r0 in (0..rows).step_by(MLP_BLOCK_ROWS) {
                let r1 = (r0 + MLP_BLOCK_ROWS).min(rows);
                let xr = &mut x[r0 * d..r1 * d];
                let mut h = xr.to_vec();
                rms_norm(&mut h, g2.values(), layer.post_attention_layernorm.epsilon);
                let mut gu = self.project_host(&h, r1 - r0, &[&m.gate_proj, &m.up_proj]).ok_or_else(lost)?;
                let up = gu.pop().unwrap_or_default();
                let mut act = gu.pop().unwrap_or_default();
                swiglu(&mut act, &up);
                debug_assert_eq!(act.len(), (r1 - r0) * ff);
                let down = self.project_host(&act, r1 - r0, &[&m.down_proj]).ok_or_else(lost)?;
                xr.iter_mut().zip(&down[0]).for_each(|(x, o)| *x += o);
            }
        }
        rms_norm(&mut x, norm.values(), self.weights.norm.epsilon);
        Ok(Some(x))
    }

    /// `x [rows, d_in] @ W (+ bias)` for each layer of `layers` (all with the
    /// same input), on host values; `None` unless `B` is flex.
    fn project_host(&self, x: &[f32], rows: usize, layers: &[&Linear<B>]) -> Option<Vec<Vec<f32>>> {
        let d_in = x.len() / rows.max(1);
        let mut outs = if rows <= kernels::MATVEC_MAX_ROWS {
            let hosts: Vec<kernels::Host> = layers.iter().map(|l| kernels::Host::new(&l.weight.val())).collect::<Option<_>>()?;
            let mats: Vec<(&[f32], usize)> = hosts.iter().zip(layers).map(|(h, l)| (h.values(), l.weight.dims()[1])).collect();
            kernels::matvec_multi(x, rows, d_in, &mats, self.matvec_split)
        } else {
            let input = lava_flex::bridge::from_host::<B, 2>(x.to_vec(), [rows, d_in])?;
            let mut outs = Vec::with_capacity(layers.len());
            for l in layers {
                outs.push(kernels::Host::new(&input.clone().matmul(l.weight.val()))?.values().to_vec());
            }
            outs
        };
        for (out, l) in outs.iter_mut().zip(layers) {
            if let Some(bias) = &l.bias {
                let b = kernels::Host::new(&bias.val())?;
                out.chunks_exact_mut(b.values().len()).for_each(|row| row.iter_mut().zip(b.values()).for_each(|(o, b)| *o += b));
            }
        }
        Some(outs)
    }

    /// `x [R, d_model] @ output` for host rows (flex), as a tensor.
    fn host_logits(&self, x: Vec<f32>, rows: usize) -> Option<Tensor<B, 2>> {
        let d = self.config.hidden_size;
        let input = lava_flex::bridge::from_host::<B, 2>(x, [rows, d])?;
        Some(self.logits(input))
    }
}
