//! Native quantized weights: the embedding and every projection kept in their
//! GGUF block format (Q4_0 ... Q6_K, F16/BF16) and multiplied in it by
//! `lava-quant`'s kernels (activations quantized once per step to 8 bits,
//! integer dot products per block), on the flex host path only. The generic
//! tensor-op path (ndarray, CUDA) keeps dequantizing to f32 at load, so it stays
//! the reference.
//!
//! Shapes follow GGUF: a projection `y [n, d_out] = x [n, d_in] W^T` is stored
//! as `d_out` rows of `d_in` elements, each row a run of blocks; the embedding
//! is `vocab` rows of `d_model`, and a tied output head multiplies by those
//! same rows (no transposed f32 copy).

use std::ops::Range;
use std::sync::Arc;

use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::weights::Proj;

/// One matrix in its block format: `rows` rows of `cols` elements.
pub(crate) struct QuantMatrix {
    kind: lava_quant::GgmlType,
    rows: usize,
    cols: usize,
    bytes: Bytes,
}

/// Where a matrix's blocks live.
enum Bytes {
    /// In the (mapped) file, as stored.
    File(Arc<GgufFile>, Range<usize>),
    /// Rows reordered at load (llama.cpp's Q/K permutation undone).
    Owned(Vec<u8>),
}

impl QuantMatrix {
    fn data<'a>(&'a self) -> &'a [u8] {
        match &self.bytes {
            Bytes::File(f, r) => f.bytes_at(r.clone()),
            Bytes::Owned(v) => v,
        }
    }

    fn view(&self) -> Result<lava_quant::QuantMatrix<'_>, ModelError> {
        lava_quant::QuantMatrix::new(self.kind, self.rows, self.cols, self.data())
            .map_err(|e| ModelError::Internal(format!("a quantized matrix no longer matches its shape: {e}")))
    }

    /// Bytes of the blocks.
    fn len(&self) -> usize {
        self.data().len()
    }
}

/// The native weights of one layer, by projection.
struct Layer {
    q: QuantMatrix,
    k: QuantMatrix,
    v: QuantMatrix,
    o: QuantMatrix,
    gate: QuantMatrix,
    up: QuantMatrix,
    down: QuantMatrix,
}

/// The embedding and every projection of a model in their GGUF block formats.
pub struct QuantizedWeights {
    embed: QuantMatrix,
    /// `None`: tied to the embedding.
    output: Option<QuantMatrix>,
    layers: Vec<Layer>,
}

impl std::fmt::Debug for QuantizedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedWeights").field("layers", &self.layers.len()).field("bytes", &self.bytes()).finish()
    }
}

impl QuantizedWeights {
    /// Reads the matrices of `g` (checked against `config` by the caller's
    /// weight loading); `unpermute`: undo llama.cpp's Q/K row order (`llama`
    /// files, not `qwen2` or `qwen3`).
    pub(crate) fn from_gguf(g: Arc<GgufFile>, config: &LlamaConfig, unpermute: bool) -> Result<Self, ModelError> {
        let (hq, hkv, hd) = (config.num_attention_heads, config.num_key_value_heads, config.head_dim);
        let matrix = |name: &str, permute_heads: Option<usize>| -> Result<QuantMatrix, ModelError> {
            let (info, range) = g.tensor_range(name)?;
            let raw = g.bytes_at(range.clone());
            let shape = info.shape();
            let kind = info.kind.quant().ok_or_else(|| ModelError::Unsupported(format!("tensor {name} of type {}", info.kind.name())))?;
            let (rows, cols) = match shape.as_slice() {
                [rows, cols] => (*rows, *cols),
                _ => return Err(ModelError::Weights { path: g.path().to_path_buf(), detail: format!("tensor {name} is not a matrix: {shape:?}") }),
            };
            let row_bytes = kind.bytes_for(cols).map_err(|e| ModelError::Weights { path: g.path().to_path_buf(), detail: format!("tensor {name}: {e}") })?;
            if permute_heads.is_some_and(|h| h * hd != rows) || raw.len() != rows * row_bytes {
                return Err(ModelError::Weights { path: g.path().to_path_buf(), detail: format!("tensor {name} has {rows} rows, which do not fit the heads") });
            }
            let bytes = match permute_heads {
                Some(heads) => Bytes::Owned(crate::gguf_source::unpermute_rows(raw, heads, hd, row_bytes)),
                None => Bytes::File(g.clone(), range),
            };
            let m = QuantMatrix { kind, rows, cols, bytes };
            lava_quant::QuantMatrix::new(kind, rows, cols, m.data())
                .map_err(|e| ModelError::Weights { path: g.path().to_path_buf(), detail: format!("tensor {name}: {e}") })?;
            Ok(m)
        };
        let perm = |h: usize| unpermute.then_some(h);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            layers.push(Layer {
                q: matrix(&n("attn_q"), perm(hq))?,
                k: matrix(&n("attn_k"), perm(hkv))?,
                v: matrix(&n("attn_v"), None)?,
                o: matrix(&n("attn_output"), None)?,
                gate: matrix(&n("ffn_gate"), None)?,
                up: matrix(&n("ffn_up"), None)?,
                down: matrix(&n("ffn_down"), None)?,
            });
        }
        let embed = matrix("token_embd.weight", None)?;
        let output = if config.tie_word_embeddings { None } else { Some(matrix("output.weight", None)?) };
        Ok(Self { embed, output, layers })
    }

    /// Bytes of all the blocks held (the file's matrices; a tied head once).
    pub fn bytes(&self) -> usize {
        let layers: usize = self.layers.iter().map(|l| [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].iter().map(|m| m.len()).sum::<usize>()).sum();
        layers + self.embed.len() + self.output.as_ref().map_or(0, QuantMatrix::len)
    }

    fn matrix(&self, layer: usize, p: Proj) -> Option<&QuantMatrix> {
        let l = self.layers.get(layer)?;
        Some(match p {
            Proj::Q => &l.q,
            Proj::K => &l.k,
            Proj::V => &l.v,
            Proj::O => &l.o,
            Proj::Gate => &l.gate,
            Proj::Up => &l.up,
            Proj::Down => &l.down,
            Proj::LmHead => return None,
        })
    }

    /// The embedding rows of `tokens`, `[T, d_model]` (ids checked by the caller).
    pub(crate) fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let m = self.embed.view()?;
        let d = self.embed.cols;
        let mut out = vec![0f32; tokens.len() * d];
        for (row, &t) in out.chunks_exact_mut(d).zip(tokens) {
            m.dequantize_row(t as usize, row).map_err(|e| ModelError::Input(format!("token {t}: {e}")))?;
        }
        Ok(out)
    }

    /// `x [rows, d_in]` through the projections `projs` of `layer` (all with
    /// that input), each `[rows, d_out]`, on `threads` workers.
    pub(crate) fn project(&self, layer: usize, projs: &[Proj], x: &[f32], rows: usize, threads: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        let mats: Vec<&QuantMatrix> = projs
            .iter()
            .map(|&p| self.matrix(layer, p).ok_or_else(|| ModelError::Internal(format!("no quantized {p:?} for layer {layer}"))))
            .collect::<Result<_, _>>()?;
        project(&mats, x, rows, threads)
    }

    /// `x [rows, d_model]` through the output head (the embedding's rows when tied): `[rows, vocab]`.
    pub(crate) fn logits(&self, x: &[f32], rows: usize, threads: usize) -> Result<Vec<f32>, ModelError> {
        let head = self.output.as_ref().unwrap_or(&self.embed);
        Ok(project(&[head], x, rows, threads)?.pop().unwrap_or_default())
    }
}

/// Activation rows per worker from which [`project`] splits the rows (tokens) among the
/// workers rather than the weights: each worker then runs every matrix over its own rows, with
/// enough of them for the tiled prefill kernels.
const SPLIT_TOKENS_FROM: usize = 32;

/// `x [rows, d_in]` through each of `mats`. Many rows (a prefill, at least
/// [`SPLIT_TOKENS_FROM`] per worker): the rows are cut into one contiguous run per worker,
/// which quantizes its rows and writes its rows of every output in place. Few rows (decode):
/// see [`project_bands`].
fn project(mats: &[&QuantMatrix], x: &[f32], rows: usize, threads: usize) -> Result<Vec<Vec<f32>>, ModelError> {
    let workers = threads.max(1);
    if workers == 1 || rows < SPLIT_TOKENS_FROM * workers {
        return project_bands(mats, x, rows, threads);
    }
    let kernel_err = |e: lava_quant::QuantError| ModelError::Internal(format!("quantized matmul: {e}"));
    let views: Vec<lava_quant::QuantMatrix<'_>> = mats.iter().map(|m| m.view()).collect::<Result<_, _>>()?;
    let d_in = x.len() / rows.max(1);
    let per = rows.div_ceil(workers);
    let mut outs: Vec<Vec<f32>> = views.iter().map(|v| vec![0f32; rows * v.rows()]).collect();
    // Worker t's rows of every output, handed over once through its slot.
    let mut slots: Vec<Vec<&mut [f32]>> = (0..workers).map(|_| Vec::with_capacity(views.len())).collect();
    for (out, v) in outs.iter_mut().zip(&views) {
        for (t, part) in out.chunks_mut(per * v.rows()).enumerate() {
            slots[t].push(part);
        }
    }
    let slots: Vec<std::sync::Mutex<Vec<&mut [f32]>>> = slots.into_iter().map(std::sync::Mutex::new).collect();
    let work = |t: usize| -> Result<(), lava_quant::QuantError> {
        let mut parts = std::mem::take(&mut *slots[t].lock().unwrap_or_else(|e| e.into_inner()));
        let (from, to) = ((t * per).min(rows), ((t + 1) * per).min(rows));
        if from == to {
            return Ok(());
        }
        let xs = &x[from * d_in..to * d_in];
        let mut acts: Vec<lava_quant::Activations> = Vec::new();
        for (v, part) in views.iter().zip(parts.iter_mut()) {
            let i = match acts.iter().position(|a| a.fits(v.kind(), v.cols())) {
                Some(i) => i,
                None => {
                    acts.push(lava_quant::quantize_activations(v.kind(), xs, d_in)?);
                    acts.len() - 1
                }
            };
            v.dot_rows(&acts[i], 0..v.rows(), part)?;
        }
        Ok(())
    };
    let done = lava_flex::spin_pool::map(workers, &work);
    done.into_iter().collect::<Result<Vec<()>, _>>().map_err(kernel_err)?;
    Ok(outs)
}

/// `x [rows, d_in]` through each of `mats`, for few rows: the activations are quantized
/// once per form, then the output rows of every matrix are cut into bands,
/// one per worker, each band a [`lava_quant::QuantMatrix::dot_rows`] call
/// (each worker streams its part of the weights).
fn project_bands(mats: &[&QuantMatrix], x: &[f32], rows: usize, threads: usize) -> Result<Vec<Vec<f32>>, ModelError> {
    let kernel_err = |e: lava_quant::QuantError| ModelError::Internal(format!("quantized matmul: {e}"));
    let views: Vec<lava_quant::QuantMatrix<'_>> = mats.iter().map(|m| m.view()).collect::<Result<_, _>>()?;
    let d_in = x.len() / rows.max(1);
    // One quantization of x per activation form (Q4_K and Q6_K matrices share one).
    let mut acts: Vec<lava_quant::Activations> = Vec::new();
    let mut act_of = Vec::with_capacity(views.len());
    for v in &views {
        match acts.iter().position(|a| a.fits(v.kind(), v.cols())) {
            Some(i) => act_of.push(i),
            None => {
                acts.push(lava_quant::quantize_activations(v.kind(), x, d_in).map_err(kernel_err)?);
                act_of.push(acts.len() - 1);
            }
        }
    }
    // The matrices' output rows, end to end, cut into one contiguous band per
    // worker (at least 16 rows): each worker streams its part of the weights.
    let total_rows: usize = views.iter().map(|v| v.rows()).sum();
    let workers = threads.max(1).min(total_rows.div_ceil(16)).max(1);
    let per = total_rows.div_ceil(workers);
    let work = |t: usize| -> Result<Vec<(usize, Range<usize>, Vec<f32>)>, lava_quant::QuantError> {
        let (from, to) = (t * per, ((t + 1) * per).min(total_rows));
        let mut done = Vec::new();
        let mut offset = 0;
        for (i, v) in views.iter().enumerate() {
            let range = from.max(offset) - offset..to.min(offset + v.rows()).saturating_sub(offset);
            if !range.is_empty() {
                let mut part = vec![0f32; rows * range.len()];
                v.dot_rows(&acts[act_of[i]], range.clone(), &mut part)?;
                done.push((i, range, part));
            }
            offset += v.rows();
        }
        Ok(done)
    };
    let parts: Vec<_> = if workers == 1 { vec![work(0)] } else { lava_flex::spin_pool::map(workers, &work) };
    let mut outs: Vec<Vec<f32>> = views.iter().map(|v| vec![0f32; rows * v.rows()]).collect();
    for part in parts {
        for (i, range, values) in part.map_err(kernel_err)? {
            let d_out = views[i].rows();
            let len = range.len();
            for r in 0..rows {
                outs[i][r * d_out + range.start..r * d_out + range.end].copy_from_slice(&values[r * len..(r + 1) * len]);
            }
        }
    }
    Ok(outs)
}
