//! `lava select`: which positions a policy keeps, from per-layer q/k/v tensors.

use std::path::Path;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use lava_cache::{select_positions, LayerQkv, PolicyConfig};

use crate::error::CliError;

/// One layer's f32 tensors on the host: `(shape, values)` for q, k, v.
pub type HostQkv = [(Vec<usize>, Vec<f32>); 3];

/// Reads a safetensors image holding `layers.{l}.q`, `layers.{l}.k`, `layers.{l}.v`
/// (f32, 3-D: `[H_q, N, D]`, `[H_kv, N, D]`, `[H_kv, N, D]`) for `l = 0..L`.
pub fn read_qkv(name: &str, bytes: &[u8]) -> Result<Vec<HostQkv>, CliError> {
    let bad = |m: String| CliError::Usage(format!("{name}: {m}"));
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
    let mut layers = Vec::new();
    loop {
        let l = layers.len();
        let key = |x: &str| format!("layers.{l}.{x}");
        if st.tensor(&key("q")).is_err() {
            break;
        }
        let mut out: Vec<(Vec<usize>, Vec<f32>)> = Vec::with_capacity(3);
        for x in ["q", "k", "v"] {
            let k = key(x);
            let t = st.tensor(&k).map_err(|_| bad(format!("tensor {k} is missing")))?;
            if t.dtype() != safetensors::Dtype::F32 {
                return Err(bad(format!("tensor {k} is {:?}; lava select reads F32", t.dtype())));
            }
            let shape = t.shape().to_vec();
            if shape.len() != 3 || shape.iter().any(|&d| d == 0) {
                return Err(bad(format!("tensor {k} has shape {shape:?}; expected 3 non-zero dimensions [heads, tokens, head_dim]")));
            }
            let values: Vec<f32> = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            if values.iter().any(|v| !v.is_finite()) {
                return Err(bad(format!("tensor {k} holds NaN or infinite values")));
            }
            out.push((shape, values));
        }
        let (q, k, v) = (&out[0].0, &out[1].0, &out[2].0);
        if k != v || q[1] != k[1] || q[2] != k[2] || q[0] % k[0] != 0 {
            return Err(bad(format!(
                "layer {l}: shapes q {q:?}, k {k:?}, v {v:?} disagree (need q [H_q, N, D], k = v [H_kv, N, D], H_q a multiple of H_kv)"
            )));
        }
        if let Some(first) = layers.first() {
            let f: &HostQkv = first;
            if f[0].0 != out[0].0 || f[1].0 != out[1].0 {
                return Err(bad(format!("layer {l} has shapes different from layer 0")));
            }
        }
        let mut it = out.into_iter();
        match (it.next(), it.next(), it.next()) {
            (Some(a), Some(b), Some(c)) => layers.push([a, b, c]),
            _ => return Err(bad("internal: layer tensors".into())),
        }
    }
    if layers.is_empty() {
        return Err(bad("no tensor layers.0.q: the file must hold layers.{l}.q, layers.{l}.k, layers.{l}.v".into()));
    }
    Ok(layers)
}

/// Runs the policy on the host tensors and renders the JSON answer.
pub fn select_json<B: Backend>(layers: &[HostQkv], config: &PolicyConfig, device: &B::Device) -> Result<serde_json::Value, CliError> {
    let to = |(shape, v): &(Vec<usize>, Vec<f32>)| -> Tensor<B, 3> {
        Tensor::from_data(TensorData::new(v.clone(), [shape[0], shape[1], shape[2]]), device)
    };
    let qkv: Vec<LayerQkv<B>> = layers.iter().map(|[q, k, v]| LayerQkv::new(to(q), to(k), to(v))).collect();
    let sel = select_positions(&qkv, config)?;
    let layers: Vec<serde_json::Value> = sel
        .layers
        .iter()
        .map(|l| serde_json::json!({"budget": l.budget, "head_budgets": l.head_budgets, "heads": l.heads}))
        .collect();
    Ok(serde_json::json!({
        "policy": config.policy.to_string(),
        "prompt_len": sel.prompt_len,
        "window": sel.window,
        "layers": layers,
    }))
}

/// `lava select` reads q/k/v files of at most 4 GiB.
pub const MAX_QKV_BYTES: u64 = 4 << 30;

/// Reads the file, then [`read_qkv`]. The tensors are held about three times
/// (the file's bytes, the host values, the backend's tensors), so the file
/// may take at most a third of the memory available, and [`MAX_QKV_BYTES`];
/// the read stops there whatever the file is.
pub fn read_qkv_file(path: &Path) -> Result<Vec<HostQkv>, CliError> {
    let available = lava_llama::memory::available_bytes();
    let cap = available.map_or(MAX_QKV_BYTES, |a| (a / 3).min(MAX_QKV_BYTES));
    let (bytes, longer) = crate::input::read_capped(path, cap)?;
    if longer {
        let why = match available {
            Some(a) if a / 3 < MAX_QKV_BYTES => format!(
                "a third of the {} of memory available, since select holds the tensors about three times",
                lava_llama::memory::human_bytes(a)
            ),
            _ => "the 4 GiB lava select reads".into(),
        };
        return Err(CliError::Usage(format!(
            "{} is larger than {cap} bytes, {why}; select fewer layers or tokens",
            path.display()
        )));
    }
    read_qkv(&path.display().to_string(), &bytes)
}
