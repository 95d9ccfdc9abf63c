//! The decoder, generic over the backend: embeddings, RMSNorm, RoPE attention
//! through a [`KvCache`], SwiGLU MLP, output projection, as Burn tensor ops.
//! Batch 1; hidden states are `[T, d_model]`. The parameters and their loading
//! are in `crate::weights`; [`Llama::forward`] and [`Llama::decode_batch`]
//! first try the flex host path of `crate::host_forward`.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{activation::silu, backend::Backend, Int, Tensor, TensorData};

use crate::config::Activation;
use lava_cache::{CacheShape, KvCache};

use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::rope::{apply_rope, Rope};
use crate::weights::{transpose, DecoderLayer, LlamaWeights, WeightSource};

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
    pub(crate) rope: Rope,
    /// RoPE of the sliding-window layers when their base differs
    /// ([`LlamaConfig::rope_local_base_freq`]).
    pub(crate) rope_local: Option<Rope>,
    device: B::Device,
    /// Column blocks the projections are split into for few-token steps
    /// (see [`Llama::with_matvec_split`]); 1 = one matmul.
    pub(crate) matvec_split: usize,
    /// The embedding and projections in their GGUF block formats, run by the
    /// flex host path (`crate::quantized`); the f32 matrices of `weights` are
    /// then empty.
    #[cfg(feature = "flex")]
    pub(crate) quantized: Option<std::sync::Arc<crate::quantized::QuantizedWeights>>,
    /// The projections and output head packed for the flex host path
    /// (`crate::packed`); the f32 matrices of `weights` (but the embedding)
    /// and `output` are then empty.
    #[cfg(feature = "flex")]
    pub(crate) packed: Option<std::sync::Arc<crate::packed::PackedWeights>>,
}

impl<B: Backend> Llama<B> {
    /// Assembles a model from its parameters.
    ///
    /// On flex (with the `flex` feature) the projections and the output head
    /// are packed for the host path's gemm (`crate::packed`), and their f32
    /// matrices in `weights` left empty.
    #[allow(unused_mut)]
    pub fn new(config: LlamaConfig, mut weights: LlamaWeights<B>, rope: Rope, device: &B::Device) -> Self {
        #[cfg(feature = "flex")]
        let packed = match lava_flex::bridge::is_flex::<B>() {
            true => crate::packed::PackedWeights::take(&mut weights, device).map(std::sync::Arc::new),
            false => None,
        };
        #[cfg(feature = "flex")]
        let is_packed = packed.is_some();
        #[cfg(not(feature = "flex"))]
        let is_packed = false;
        let output = match &weights.lm_head {
            // The packed head replaces it.
            _ if is_packed => Tensor::from_data(TensorData::new(Vec::<f32>::new(), [0, 0]), device),
            Some(l) => l.weight.val(),
            // Materialise the transposed embedding once: the matmul then reads it contiguously.
            None => {
                let e = weights.embed_tokens.weight.val();
                let [v, d] = e.dims();
                // On flex, read the embedding in place (no host copy of it at load time).
                let transposed = match crate::host_forward::transposed(&e) {
                    Some(t) => Some(t),
                    None => e.into_data().to_vec::<f32>().ok().map(|vals| transpose(&vals, v, d)),
                };
                match transposed {
                    Some(t) => Tensor::from_data(TensorData::new(t, [d, v]), device),
                    None => weights.embed_tokens.weight.val().transpose(),
                }
            }
        };
        let rope_local = config
            .rope_local_base_freq
            .filter(|_| config.sliding_window.is_some())
            .map(|base| Rope::new(&LlamaConfig { rope_theta: base, rope_scaling: None, ..config.clone() }));
        Self {
            config,
            weights,
            output,
            rope,
            rope_local,
            device: device.clone(),
            matvec_split: 1,
            #[cfg(feature = "flex")]
            quantized: None,
            #[cfg(feature = "flex")]
            packed,
        }
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
    /// weights: on flex, the threads of the host path's gemm; on other
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
    pub(crate) fn logits(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        // The host kernel declines (None) off flex and for long blocks.
        let fast = crate::host_forward::project_rows(&x, &self.output, self.matvec_split);
        fast.unwrap_or_else(|| x.matmul(self.output.clone()))
    }

    /// One decoder layer on `x [T, d_model]`: norm, q/k/v projections, the
    /// per-head q/k norms (Qwen3), RoPE
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
        // Each head's vector through its per-head norm (Qwen3), if the model has one.
        let head_norm = |x: Tensor<B, 3>, norm: &Option<burn::nn::RmsNorm<B>>| match norm {
            Some(n) => n.forward(x),
            None => x,
        };
        let q = head_norm(self.project(&a.q_proj, h.clone()).reshape([t, hq, hd]), &a.q_norm);
        let k = head_norm(self.project(&a.k_proj, h.clone()).reshape([t, hkv, hd]), &a.k_norm);
        let q = apply_rope(q.swap_dims(0, 1), cos, sin);
        let q = match self.query_scale() {
            Some(s) => q.mul_scalar(s),
            None => q,
        };
        let k = apply_rope(k.swap_dims(0, 1), cos, sin);
        let v = self.project(&a.v_proj, h).reshape([t, hkv, hd]).swap_dims(0, 1);
        let o = attend(q, k, v)?.swap_dims(0, 1).reshape([t, hq * hd]);
        let o = self.project(&a.o_proj, o);
        let o = match &layer.attention_output_norm {
            Some(n) => n.forward(o),
            None => o,
        };
        let x = x + o;
        let h = layer.post_attention_layernorm.forward(x.clone());
        let m = &layer.mlp;
        let gate = self.project(&m.gate_proj, h.clone());
        let gate = match c.hidden_act {
            Activation::Silu => silu(gate),
            Activation::GeluTanh => gelu_tanh(gate),
        };
        let y = self.project(&m.down_proj, gate * self.project(&m.up_proj, h));
        let y = match &layer.mlp_output_norm {
            Some(n) => n.forward(y),
            None => y,
        };
        Ok(x + y)
    }

    /// The factor queries are multiplied by after RoPE so that the cache's
    /// `1/sqrt(head_dim)` scores come out at `1/sqrt(query_pre_attn_scalar)`;
    /// `None` when the two agree.
    pub(crate) fn query_scale(&self) -> Option<f64> {
        let s = self.config.query_pre_attn_scalar?;
        let d = self.config.head_dim as f64;
        (s != d).then(|| (d / s).sqrt())
    }

    /// The embedding rows' factor (Gemma's `sqrt(hidden_size)`, in f32 as
    /// llama.cpp computes it), `None` for the other families.
    pub(crate) fn embedding_scale(&self) -> Option<f32> {
        self.config.scale_embeddings.then(|| (self.config.hidden_size as f32).sqrt())
    }

    /// Checks that every cache attends each layer as the model does: a
    /// sliding-window layer within its window, a global layer over
    /// everything. A cache that disagrees would compute another model.
    pub(crate) fn check_windows<C: KvCache<B> + ?Sized>(&self, caches: &[&mut C]) -> Result<(), ModelError> {
        for cache in caches {
            for l in 0..self.config.num_hidden_layers {
                let (want, got) = (self.config.layer_window(l), cache.sliding_window(l));
                if want != got {
                    let what = |w: Option<usize>| match w {
                        Some(w) => format!("within a sliding window of {w} tokens"),
                        None => "over the whole context".to_string(),
                    };
                    return Err(ModelError::Input(format!(
                        "layer {l} of this model attends {} but the cache attends it {}; build the cache with \
                         lava_cache::SlidingWindowCache over Llama::layer_windows()",
                        what(want),
                        what(got)
                    )));
                }
            }
        }
        Ok(())
    }

    /// Each layer's sliding window (`None`: a global layer), what
    /// [`lava_cache::SlidingWindowCache`] needs.
    pub fn layer_windows(&self) -> Vec<Option<usize>> {
        self.config.layer_windows()
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

    /// Bytes of the parameters: the f32 ones, plus the blocks of native
    /// quantized weights or the packed f32 matrices.
    pub fn parameter_bytes(&self) -> usize {
        let native = {
            #[cfg(feature = "flex")]
            {
                self.quantized.as_ref().map_or(0, |q| q.bytes()) + self.packed.as_ref().map_or(0, |p| p.bytes())
            }
            #[cfg(not(feature = "flex"))]
            {
                0
            }
        };
        self.weights.num_params() * 4 + native
    }

    /// Whether the matrices run natively in their GGUF block formats.
    pub fn is_quantized(&self) -> bool {
        #[cfg(feature = "flex")]
        {
            self.quantized.is_some()
        }
        #[cfg(not(feature = "flex"))]
        {
            false
        }
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
        self.check_windows(&[&mut *cache])?;
        let start = cache.next_position();
        let positions: Vec<usize> = (start..start + t).collect();
        if let Some(logits) = self.forward_on_host(tokens, &positions, Some(&[0..t]), &mut [cache], which)? {
            return Ok(logits);
        }
        let ids: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [t]), &self.device);
        let mut x = self.weights.embed_tokens.weight.val().select(0, ids); // [T, d]
        if let Some(s) = self.embedding_scale() {
            x = x.mul_scalar(s);
        }
        let (cos, sin) = self.rope.tables::<B>(start, t, &self.device);
        let local = self.rope_local.as_ref().map(|r| r.tables::<B>(start, t, &self.device));
        for (l, layer) in self.weights.layers.iter().enumerate() {
            let (cos, sin) = match (&local, self.config.layer_window(l)) {
                (Some((c, s)), Some(_)) => (c, s),
                _ => (&cos, &sin),
            };
            x = self.layer_step(layer, x, cos, sin, |q, k, v| cache.attend(l, q, k, v))?;
        }
        let x = match which {
            Logits::Last => x.slice([t - 1..t, 0..c.hidden_size]),
            Logits::All => x,
        };
        Ok(self.logits(self.weights.norm.forward(x)))
    }

    /// One step for `n` independent sequences, each appending its own run of
    /// tokens: `runs[i]` (at least one token) is appended to `caches[i]` at
    /// that cache's next position. Returns the logits of each run's last
    /// token, `[n, vocab]`. This is how a server puts a prompt's prefill chunk
    /// and the running sequences' decode tokens into one step.
    ///
    /// On the flex host path the projections and the MLP run once over all
    /// rows (the weights are read once for the step) and attention runs per
    /// cache; while the rows total at most
    /// [`exact_batch_rows`](Self::exact_batch_rows), every run's logits are
    /// bit-identical to running it alone ([`forward`](Self::forward) or
    /// [`decode_batch`](Self::decode_batch)). Elsewhere the 1-token runs go
    /// through one `decode_batch` and each longer run through `forward`.
    pub fn forward_runs<C: KvCache<B> + ?Sized>(&self, runs: &[&[u32]], caches: &mut [&mut C]) -> Result<Tensor<B, 2>, ModelError> {
        let n = runs.len();
        if n == 0 || n != caches.len() || runs.iter().any(|r| r.is_empty()) {
            return Err(ModelError::Input(format!(
                "forward_runs needs one non-empty run of tokens per cache and at least one (got {n} runs for {} caches)",
                caches.len()
            )));
        }
        let vocab = self.config.vocab_size;
        if let Some(&bad) = runs.iter().flat_map(|r| r.iter()).find(|&&id| id as usize >= vocab) {
            return Err(ModelError::Input(format!("token id {bad} is outside the vocabulary ({vocab})")));
        }
        if runs.iter().all(|r| r.len() == 1) {
            let tokens: Vec<u32> = runs.iter().map(|r| r[0]).collect();
            return self.decode_batch(&tokens, caches);
        }
        self.check_windows(caches)?;
        let tokens: Vec<u32> = runs.iter().flat_map(|r| r.iter().copied()).collect();
        let mut positions = Vec::with_capacity(tokens.len());
        let mut groups = Vec::with_capacity(n);
        for (run, cache) in runs.iter().zip(caches.iter()) {
            let (start, row) = (cache.next_position(), positions.len());
            positions.extend(start..start + run.len());
            groups.push(row..row + run.len());
        }
        if let Some(logits) = self.forward_on_host(&tokens, &positions, Some(&groups), caches, Logits::Last)? {
            return Ok(logits);
        }
        // Generic backends: the decode rows batched, each longer run alone.
        let single: Vec<usize> = (0..n).filter(|&i| runs[i].len() == 1).collect();
        let mut rows: Vec<Option<Tensor<B, 2>>> = vec![None; n];
        if !single.is_empty() {
            let tokens: Vec<u32> = single.iter().map(|&i| runs[i][0]).collect();
            let mut batch: Vec<&mut C> = Vec::with_capacity(single.len());
            for (i, cache) in caches.iter_mut().enumerate() {
                if runs[i].len() == 1 {
                    batch.push(&mut **cache);
                }
            }
            let logits = self.decode_batch(&tokens, &mut batch)?;
            for (j, &i) in single.iter().enumerate() {
                rows[i] = Some(logits.clone().slice([j..j + 1, 0..vocab]));
            }
        }
        for (i, cache) in caches.iter_mut().enumerate() {
            if runs[i].len() > 1 {
                rows[i] = Some(self.forward(runs[i], &mut **cache, Logits::Last)?);
            }
        }
        let rows: Vec<Tensor<B, 2>> = rows.into_iter().collect::<Option<_>>().ok_or_else(|| ModelError::Internal("a run got no logits".into()))?;
        Ok(Tensor::cat(rows, 0))
    }

    /// The most rows a [`forward_runs`](Self::forward_runs) or
    /// [`decode_batch`](Self::decode_batch) step may hold for each run's
    /// result to be bit-identical to running it alone: on the flex host path
    /// with f32 weights, the rows of one register-tiled projection pass
    /// (`lava_flex::gemm::GEMM_MAX_ROWS`); with native quantized weights
    /// and on other backends (where a step's rows run as one matmul whose
    /// blocking may depend on the row count), 1.
    pub fn exact_batch_rows(&self) -> usize {
        crate::host_forward::exact_batch_rows(self)
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
        self.check_windows(caches)?;
        let positions: Vec<usize> = caches.iter().map(|c| c.next_position()).collect();
        if let Some(logits) = self.forward_on_host(tokens, &positions, None, caches, Logits::All)? {
            return Ok(logits);
        }
        let ids: Vec<i64> = tokens.iter().map(|&x| x as i64).collect();
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), &self.device);
        let mut x = self.weights.embed_tokens.weight.val().select(0, ids); // [n, d]
        if let Some(s) = self.embedding_scale() {
            x = x.mul_scalar(s);
        }
        let (cos, sin) = self.rope.tables_at::<B>(&positions, &self.device);
        let local = self.rope_local.as_ref().map(|r| r.tables_at::<B>(&positions, &self.device));
        let (hq, hkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        for (l, layer) in self.weights.layers.iter().enumerate() {
            let (cos, sin) = match (&local, self.config.layer_window(l)) {
                (Some((c, s)), Some(_)) => (c, s),
                _ => (&cos, &sin),
            };
            x = self.layer_step(layer, x, cos, sin, |q, k, v| {
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
}

/// GELU, tanh approximation: `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub(crate) fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715)).mul_scalar(c);
    x.mul_scalar(0.5) * (inner.tanh() + 1.0)
}
