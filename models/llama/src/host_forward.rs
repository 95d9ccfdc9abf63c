//! The host-side forward for the flex backend: [`Llama::forward`] and
//! [`Llama::decode_batch`] on the weights' own storage, with the residual
//! stream as a host vector and the projections as passes of the packed gemm
//! (`crate::packed`, every row count) or of the native quantized kernels
//! (`crate::quantized`). The generic path (`crate::transformer`) tries
//! [`Llama::forward_on_host`] first and falls back to its tensor ops when that
//! returns `None` (any other backend, or a model whose matrices are neither
//! packed nor quantized).
//!
//! Behind the `flex` feature (the one switch of the CPU fast path): without it
//! every function here declines and the generic path runs everywhere.

#[cfg(feature = "flex")]
pub(crate) use on_host::{exact_batch_rows, project_rows, transposed};

#[cfg(not(feature = "flex"))]
pub(crate) use declined::{exact_batch_rows, project_rows, transposed};

#[cfg(feature = "flex")]
mod on_host {
    use burn::nn::Linear;
    use burn::tensor::{backend::Backend, Tensor};
    use lava_cache::KvCache;

    use crate::config::Activation;
    use crate::error::ModelError;
    use lava_flex::matmul as kernels;
    use crate::transformer::{Llama, Logits};
    use crate::weights::Proj;

    /// A parameter read in place before the step was not readable during it.
    fn lost() -> ModelError {
        ModelError::Internal("a parameter stopped being readable during the step".into())
    }

    /// The host path ran on a model with neither packed nor quantized matrices
    /// (`run_on_host` declines such a model first).
    fn no_matrices() -> ModelError {
        ModelError::Internal("the host path ran without packed or quantized matrices".into())
    }

    /// GELU, tanh approximation (Gemma's GeGLU), in f32.
    fn gelu_tanh(x: f32) -> f32 {
        const C: f32 = 0.797_884_6; // sqrt(2 / pi)
        0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
    }

    /// Rows per block of the host MLP (`run_on_host`): bounds the `[rows, ff]`
    /// intermediates of a long prefill.
    const MLP_BLOCK_ROWS: usize = 1024;

    impl<B: Backend> Llama<B> {
        /// The host path of [`forward`](Self::forward),
        /// [`decode_batch`](Self::decode_batch) and
        /// [`forward_runs`](Self::forward_runs): runs `tokens` (rows
        /// `groups[i]` appended to `caches[i]`, at absolute `positions`; `None`:
        /// one row per cache, the decode step) through
        /// [`run_on_host`](Self::run_on_host) and returns the logits of each
        /// group's last row (`Logits::Last`, `[groups, vocab]`: a forward's last
        /// token, a decode step's every row, a `forward_runs` step's last row of
        /// each run) or of every row (`Logits::All`, `[R, vocab]`); `None`
        /// (take the generic path) unless `B` is flex and every parameter is
        /// readable in place.
        pub(crate) fn forward_on_host<C: KvCache<B> + ?Sized>(
            &self,
            tokens: &[u32],
            positions: &[usize],
            groups: Option<&[std::ops::Range<usize>]>,
            caches: &mut [&mut C],
            which: Logits,
        ) -> Result<Option<Tensor<B, 2>>, ModelError> {
            if !lava_flex::bridge::is_flex::<B>() {
                return Ok(None);
            }
            let one_each: Vec<std::ops::Range<usize>>;
            let groups = match groups {
                Some(g) => g,
                None => {
                    one_each = (0..caches.len()).map(|i| i..i + 1).collect();
                    &one_each
                }
            };
            let Some(x) = self.run_on_host(tokens, positions, groups, caches)? else {
                return Ok(None);
            };
            let d = self.config.hidden_size;
            let (x, rows) = match which {
                Logits::Last => (groups.iter().flat_map(|g| x[(g.end - 1) * d..g.end * d].iter().copied()).collect(), groups.len()),
                Logits::All => (x, tokens.len()),
            };
            self.host_logits(x, rows).map(Some)
        }

        /// [`forward`](Self::forward) and [`decode_batch`](Self::decode_batch) on
        /// the weights' own storage, for the flex backend. `groups[i]` is the run
        /// of rows (tokens) appended to `caches[i]`; `positions` holds each row's
        /// absolute position. The residual stream stays a host vector; the
        /// projections sharing an input are one pass (q/k/v together, gate/up
        /// together, see [`project_layer`](Self::project_layer)); RMS norm (the per-head q/k norms too), RoPE and SwiGLU run on the
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
            use kernels::{rms_norm, rope, swiglu_split, Host};
            let c = &self.config;
            let (rows, d, hd) = (tokens.len(), c.hidden_size, c.head_dim);
            let (hq, hkv, ff) = (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size);
            let (Some(embed), Some(norm)) = (Host::new(&self.weights.embed_tokens.weight.val()), Host::new(&self.weights.norm.gamma.val())) else {
                return Ok(None);
            };
            // The matrices are packed or native quantized (the f32 ones are then
            // empty); a model with neither takes the generic path.
            if self.quantized.is_none() && self.packed.is_none() {
                return Ok(None);
            }
            // Every other parameter must be readable in place before any cache is touched.
            let readable = self.weights.layers.iter().all(|l| {
                l.projections().iter().all(|p| p.bias.as_ref().is_none_or(|b| Host::new(&b.val()).is_some()))
                    && [&l.self_attn.q_norm, &l.self_attn.k_norm].iter().all(|n| n.as_ref().is_none_or(|n| Host::new(&n.gamma.val()).is_some()))
                    && [&l.attention_output_norm, &l.mlp_output_norm].iter().all(|n| n.as_ref().is_none_or(|n| Host::new(&n.gamma.val()).is_some()))
                    && Host::new(&l.input_layernorm.gamma.val()).is_some()
                    && Host::new(&l.post_attention_layernorm.gamma.val()).is_some()
            });
            if !readable {
                // The generic path has no matrices to fall back on.
                return Err(ModelError::Internal("a parameter of the host path is not readable in place".into()));
            }
            let mut x: Vec<f32> = match &self.quantized {
                Some(q) => q.embed(tokens)?,
                None => tokens.iter().flat_map(|&t| embed.values()[t as usize * d..(t as usize + 1) * d].iter().copied()).collect(),
            };
            if let Some(s) = self.embedding_scale() {
                x.iter_mut().for_each(|v| *v *= s);
            }
            let (cos, sin) = self.rope.host_tables(positions);
            let local = self.rope_local.as_ref().map(|r| r.host_tables(positions));
            let query_scale = self.query_scale().map(|s| s as f32);
            let half = hd / 2;
            for (l, layer) in self.weights.layers.iter().enumerate() {
                let (cos, sin) = match (&local, c.layer_window(l)) {
                    (Some((c, s)), Some(_)) => (c, s),
                    _ => (&cos, &sin),
                };
                let (a, m) = (&layer.self_attn, &layer.mlp);
                let (Some(g1), Some(g2)) = (Host::new(&layer.input_layernorm.gamma.val()), Host::new(&layer.post_attention_layernorm.gamma.val()))
                else {
                    return Err(lost());
                };
                let mut h = x.clone();
                rms_norm(&mut h, g1.values(), layer.input_layernorm.epsilon);
                let mut qkv = self.project_layer(l, &h, rows, &[(&a.q_proj, Proj::Q), (&a.k_proj, Proj::K), (&a.v_proj, Proj::V)])?;
                // The per-head q/k norms (Qwen3): every head_dim run of q and k is one row.
                for (i, norm) in [(0, &a.q_norm), (1, &a.k_norm)] {
                    if let Some(n) = norm {
                        let g = Host::new(&n.gamma.val()).ok_or_else(lost)?;
                        rms_norm(&mut qkv[i], g.values(), n.epsilon);
                    }
                }
                for r in 0..rows {
                    let (cs, sn) = (&cos[r * half..(r + 1) * half], &sin[r * half..(r + 1) * half]);
                    rope(&mut qkv[0][r * hq * hd..(r + 1) * hq * hd], cs, sn);
                    rope(&mut qkv[1][r * hkv * hd..(r + 1) * hkv * hd], cs, sn);
                }
                if let Some(s) = query_scale {
                    qkv[0].iter_mut().for_each(|v| *v *= s);
                }
                let mut attn = vec![0f32; rows * hq * hd];
                // Rows [t, H * D] of a group as [H, t, D].
                let heads_first = |v: &[f32], heads: usize, group: &std::ops::Range<usize>| {
                    let t = group.len();
                    let mut out = vec![0f32; heads * t * hd];
                    for (i, r) in group.clone().enumerate() {
                        for h in 0..heads {
                            out[(h * t + i) * hd..(h * t + i + 1) * hd].copy_from_slice(&v[(r * heads + h) * hd..(r * heads + h + 1) * hd]);
                        }
                    }
                    lava_flex::bridge::from_host::<B, 3>(out, [heads, t, hd])
                };
                // Each cache attends its own group; with several caches (a
                // batched step) they go to the pool's threads, one part each.
                let attend = |cache: &mut C, group: &std::ops::Range<usize>| -> Result<Vec<f32>, ModelError> {
                    let (Some(q), Some(k), Some(v)) = (heads_first(&qkv[0], hq, group), heads_first(&qkv[1], hkv, group), heads_first(&qkv[2], hkv, group)) else {
                        return Err(lost());
                    };
                    let out = cache.attend(l, q, k, v)?;
                    out.into_data().convert::<f32>().into_vec::<f32>().map_err(|e| ModelError::Backend(format!("attention output: {e:?}")))
                };
                let outs: Vec<Result<Vec<f32>, ModelError>> = if caches.len() > 1 && self.matvec_split > 1 {
                    let slots: Vec<std::sync::Mutex<&mut &mut C>> = caches.iter_mut().map(std::sync::Mutex::new).collect();
                    lava_flex::spin_pool::map(slots.len(), &|i| {
                        let mut cache = slots[i].lock().map_err(|_| ModelError::Internal("a cache's lock was poisoned".into()))?;
                        attend(&mut **cache, &groups[i])
                    })
                } else {
                    caches.iter_mut().zip(groups).map(|(cache, group)| attend(&mut **cache, group)).collect()
                };
                for (out, group) in outs.into_iter().zip(groups) {
                    let (out, t) = (out?, group.len());
                    for (i, r) in group.clone().enumerate() {
                        for h in 0..hq {
                            attn[(r * hq + h) * hd..(r * hq + h + 1) * hd].copy_from_slice(&out[(h * t + i) * hd..(h * t + i + 1) * hd]);
                        }
                    }
                }
                let mut o = self.project_layer(l, &attn, rows, &[(&a.o_proj, Proj::O)])?;
                if let Some(n) = &layer.attention_output_norm {
                    let g = Host::new(&n.gamma.val()).ok_or_else(lost)?;
                    rms_norm(&mut o[0], g.values(), n.epsilon);
                }
                x.iter_mut().zip(&o[0]).for_each(|(x, o)| *x += o);
                // The MLP in blocks of rows: its [rows, ff] intermediates are the
                // largest activations of a long prefill.
                for r0 in (0..rows).step_by(MLP_BLOCK_ROWS) {
                    let r1 = (r0 + MLP_BLOCK_ROWS).min(rows);
                    let xr = &mut x[r0 * d..r1 * d];
                    let mut h = xr.to_vec();
                    rms_norm(&mut h, g2.values(), layer.post_attention_layernorm.epsilon);
                    let mut gu = self.project_layer(l, &h, r1 - r0, &[(&m.gate_proj, Proj::Gate), (&m.up_proj, Proj::Up)])?;
                    let up = gu.pop().unwrap_or_default();
                    let mut act = gu.pop().unwrap_or_default();
                    match c.hidden_act {
                        Activation::Silu => swiglu_split(&mut act, &up, self.matvec_split),
                        Activation::GeluTanh => act.iter_mut().zip(&up).for_each(|(g, u)| *g = gelu_tanh(*g) * u),
                    }
                    debug_assert_eq!(act.len(), (r1 - r0) * ff);
                    let mut down = self.project_layer(l, &act, r1 - r0, &[(&m.down_proj, Proj::Down)])?;
                    if let Some(n) = &layer.mlp_output_norm {
                        let g = Host::new(&n.gamma.val()).ok_or_else(lost)?;
                        rms_norm(&mut down[0], g.values(), n.epsilon);
                    }
                    xr.iter_mut().zip(&down[0]).for_each(|(x, o)| *x += o);
                }
            }
            rms_norm(&mut x, norm.values(), self.weights.norm.epsilon);
            Ok(Some(x))
        }

        /// `x [rows, d_in] @ W (+ bias)` for the projections `projs` of layer
        /// `l` (all with the same input): by the native quantized kernels or
        /// the packed gemm, whichever the model holds.
        fn project_layer(&self, l: usize, x: &[f32], rows: usize, projs: &[(&Linear<B>, Proj)]) -> Result<Vec<Vec<f32>>, ModelError> {
            let kinds: Vec<Proj> = projs.iter().map(|(_, p)| *p).collect();
            let mut outs = match (&self.quantized, &self.packed) {
                (Some(q), _) => q.project(l, &kinds, x, rows, self.matvec_split)?,
                (None, Some(p)) => p.project(l, &kinds, x, rows, self.matvec_split)?,
                (None, None) => return Err(no_matrices()),
            };
            for (out, (layer, _)) in outs.iter_mut().zip(projs) {
                if let Some(bias) = &layer.bias {
                    let b = kernels::Host::new(&bias.val()).ok_or_else(lost)?;
                    out.chunks_exact_mut(b.values().len()).for_each(|row| row.iter_mut().zip(b.values()).for_each(|(o, b)| *o += b));
                }
            }
            Ok(outs)
        }

        /// `x [R, d_model] @ output` for host rows (flex), as a tensor.
        fn host_logits(&self, x: Vec<f32>, rows: usize) -> Result<Tensor<B, 2>, ModelError> {
            let host = match (&self.quantized, &self.packed) {
                (Some(q), _) => q.logits(&x, rows, self.matvec_split)?,
                (None, Some(p)) => p.logits(&x, rows, self.matvec_split)?,
                (None, None) => return Err(no_matrices()),
            };
            let logits = lava_flex::bridge::from_host::<B, 2>(host, [rows, self.config.vocab_size]);
            logits.ok_or_else(|| ModelError::Internal("the logits did not become a flex tensor".into()))
        }
    }

    /// [`Llama::exact_batch_rows`]: [`lava_flex::gemm::GEMM_MAX_ROWS`] on
    /// the host path with packed f32 weights (each row of a packed gemm pass
    /// is computed alone, at any row count; the limit bounds how many rows a
    /// step fuses), else 1.
    pub(crate) fn exact_batch_rows<B: Backend>(model: &Llama<B>) -> usize {
        if model.packed.is_some() {
            lava_flex::gemm::GEMM_MAX_ROWS
        } else {
            1
        }
    }

    /// The transpose `[d, v]` of `e [v, d]`, read in place on flex (no host
    /// copy of the embedding at load time); `None` elsewhere.
    pub(crate) fn transposed<B: Backend>(e: &Tensor<B, 2>) -> Option<Vec<f32>> {
        let [v, d] = e.dims();
        kernels::Host::new(e).map(|host| crate::weights::transpose(host.values(), v, d))
    }

    /// `x [n, d_in] @ w [d_in, d_out]` by the flex matvec for few rows; `None`
    /// elsewhere (the caller's matmul).
    pub(crate) fn project_rows<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>, threads: usize) -> Option<Tensor<B, 2>> {
        kernels::project_rows(x, w, threads)
    }
}

/// Without the `flex` feature: the host path always declines.
#[cfg(not(feature = "flex"))]
mod declined {
    use burn::tensor::{backend::Backend, Tensor};
    use lava_cache::KvCache;

    use crate::error::ModelError;
    use crate::transformer::{Llama, Logits};

    impl<B: Backend> Llama<B> {
        /// Declines: the generic forward runs.
        pub(crate) fn forward_on_host<C: KvCache<B> + ?Sized>(
            &self,
            _tokens: &[u32],
            _positions: &[usize],
            _groups: Option<&[std::ops::Range<usize>]>,
            _caches: &mut [&mut C],
            _which: Logits,
        ) -> Result<Option<Tensor<B, 2>>, ModelError> {
            Ok(None)
        }
    }

    /// No host path: a step's rows are one matmul.
    pub(crate) fn exact_batch_rows<B: Backend>(_model: &Llama<B>) -> usize {
        1
    }

    /// Declines: the caller transposes with tensor data.
    pub(crate) fn transposed<B: Backend>(_e: &Tensor<B, 2>) -> Option<Vec<f32>> {
        None
    }

    /// Declines: the caller's matmul runs.
    pub(crate) fn project_rows<B: Backend>(_x: &Tensor<B, 2>, _w: &Tensor<B, 2>, _threads: usize) -> Option<Tensor<B, 2>> {
        None
    }
}
