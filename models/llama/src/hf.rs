//! Hugging Face model directories: `config.json` + `*.safetensors` (f32/f16/bf16,
//! optionally sharded with `model.safetensors.index.json`) + `tokenizer.json`.
//! Loading goes through `burn-store`; [`export_hf`] writes such a directory.
//! The parameter names and shapes come from the table in `crate::weights`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, TensorData};
use burn_store::{
    ChainAdapter, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore, TensorSnapshot,
    TensorSnapshotError,
};

use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::rope::Rope;
use crate::tokenizer::Tokenizer;
use crate::transformer::Llama;
use crate::weights::{parameter_shape, parameters, LlamaWeights, WeightSource};

/// The Hugging Face shape of parameter `name` under `config`, if it is one
/// (looked up in the crate's parameter table).
pub fn expected_shape(c: &LlamaConfig, name: &str) -> Option<Vec<usize>> {
    parameter_shape(c, name)
}

/// Every parameter name of a config, in a stable order (the parameter table's).
pub fn parameter_names(c: &LlamaConfig) -> Vec<String> {
    parameters(c).into_iter().map(|p| p.name).collect()
}

/// Casts f16/bf16/f64 tensors to f32 on load; any other dtype (integer,
/// boolean, quantised) becomes a load error instead of reaching the backend,
/// which panics on non-float data for a float parameter.
#[derive(Debug, Clone, Default)]
struct ToF32Adapter;

impl ModuleAdapter for ToF32Adapter {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        let data_fn = snapshot.clone_data_fn();
        let to_f32: std::rc::Rc<dyn Fn() -> Result<TensorData, TensorSnapshotError>> = match snapshot.dtype {
            DType::F32 => return snapshot.clone(),
            DType::F16 | DType::BF16 | DType::F64 => std::rc::Rc::new(move || Ok(data_fn()?.convert_dtype(DType::F32))),
            other => std::rc::Rc::new(move || {
                Err(TensorSnapshotError::DataError(format!("dtype {other:?}: lava reads F32, F16, BF16 or F64 weights")))
            }),
        };
        TensorSnapshot::from_closure(
            to_f32,
            DType::F32,
            snapshot.shape.clone(),
            snapshot.path_stack.clone().unwrap_or_default(),
            snapshot.container_stack.clone().unwrap_or_default(),
            snapshot.tensor_id.unwrap_or_default(),
        )
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}

/// The safetensors files of a directory: the shards named by
/// `model.safetensors.index.json`, else `model.safetensors`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = crate::memory::read_text_bounded(&index, crate::memory::MAX_CONFIG_BYTES)
            .map_err(|e| ModelError::io(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Weights {
            path: index.clone(),
            detail: format!("does not parse as JSON: {e}"),
        })?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ModelError::Weights {
            path: index.clone(),
            detail: "has no weight_map object".into(),
        })?;
        let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        let mut out = Vec::new();
        for f in files {
            if f.contains('/') || f.contains("..") {
                return Err(ModelError::Weights { path: index.clone(), detail: format!("shard name {f:?} is not a plain file name") });
            }
            out.push(dir.join(f));
        }
        return Ok(out);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(ModelError::Weights {
        path: dir.to_path_buf(),
        detail: "no model.safetensors or model.safetensors.index.json in this directory".into(),
    })
}

/// The largest safetensors header read (the `safetensors` crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Bytes per element of a safetensors dtype name, if lava knows it.
fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// Reads only the header of a safetensors file (at most [`MAX_HEADER_BYTES`])
/// and returns each tensor's dtype and shape, after checking that every
/// tensor's data lies inside the file and has the size its dtype and shape
/// imply. Nothing is allocated from the sizes the header claims.
fn read_safetensors_header(path: &Path) -> Result<Vec<(String, String, Vec<usize>)>, ModelError> {
    use std::io::Read;
    let bad = |detail: String| ModelError::Weights { path: path.to_path_buf(), detail };
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let file_len = f.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8).map_err(|_| bad("is not a safetensors file: shorter than its 8-byte header length".into()))?;
    let n = u64::from_le_bytes(len8);
    if n > MAX_HEADER_BYTES || n > file_len.saturating_sub(8) {
        return Err(bad(format!(
            "is not a valid safetensors file: its header length {n} exceeds the file ({file_len} bytes) or the {MAX_HEADER_BYTES}-byte limit"
        )));
    }
    let mut header = Vec::with_capacity(n as usize);
    f.take(n).read_to_end(&mut header).map_err(|e| ModelError::io(path, e))?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("is not a valid safetensors file: its header does not parse as JSON ({e})")))?;
    let map = v.as_object().ok_or_else(|| bad("is not a valid safetensors file: its header is not a JSON object".into()))?;
    let data_len = file_len - 8 - n;
    let mut out = Vec::with_capacity(map.len());
    for (name, t) in map {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t.get("dtype").and_then(|d| d.as_str()).unwrap_or("").to_string();
        let shape: Option<Vec<usize>> = t
            .get("shape")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect());
        let offsets: Option<Vec<u64>> =
            t.get("data_offsets").and_then(|s| s.as_array()).and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let (Some(shape), Some([begin, end])) = (shape, offsets.as_deref().map(|o| <[u64; 2]>::try_from(o).ok()).flatten())
        else {
            return Err(bad(format!("tensor {name}: the header has no valid shape and data_offsets")));
        };
        if begin > end || end > data_len {
            return Err(bad(format!(
                "tensor {name}: its data ({begin}..{end}) lies outside the file's {data_len} data bytes; the file is truncated or corrupt"
            )));
        }
        let want = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .and_then(|e| e.checked_mul(dtype_bytes(&dtype)?));
        if let Some(want) = want.filter(|&w| w != end - begin) {
            return Err(bad(format!(
                "tensor {name}: the header says {dtype} {shape:?} ({want} bytes) but gives it {} bytes; the file is corrupt",
                end - begin
            )));
        }
        out.push((name.clone(), dtype, shape));
    }
    Ok(out)
}

/// One sentence for a `burn-store` apply error (its `Debug` form is kilobytes long).
fn apply_error_text(err: &burn_store::ApplyError) -> String {
    use burn_store::ApplyError as E;
    match err {
        E::ShapeMismatch { path, expected, found } => {
            format!("tensor {path}: expected shape {:?}, found {:?}", expected.as_slice(), found.as_slice())
        }
        E::DTypeMismatch { path, expected, found } => format!("tensor {path}: expected dtype {expected:?}, found {found:?}"),
        E::AdapterError { path, message } | E::LoadError { path, message } => {
            let first = message.lines().next().unwrap_or("");
            let short: String = first.chars().take(300).collect();
            format!("tensor {path}: {short}")
        }
    }
}

/// Loads a Hugging Face model directory through `burn-store`.
pub fn load_hf_dir<B: Backend>(dir: &Path, device: &B::Device) -> Result<(Llama<B>, Tokenizer), ModelError> {
    if dir.join(EXPORT_MARKER).exists() {
        return Err(ModelError::Weights {
            path: dir.to_path_buf(),
            detail: format!(
                "is half-written: a `lava export-hf` into it was interrupted ({EXPORT_MARKER} is still there); run the export again"
            ),
        });
    }
    let cfg_path = dir.join("config.json");
    let text = crate::memory::read_text_bounded(&cfg_path, crate::memory::MAX_CONFIG_BYTES).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ModelError::Weights {
            path: dir.to_path_buf(),
            detail: "no config.json: not a Hugging Face model directory (give a .gguf file or a directory with config.json, *.safetensors and tokenizer.json)".into(),
        },
        _ => ModelError::io(&cfg_path, e),
    })?;
    let config = LlamaConfig::from_hf_json(&text).map_err(|e| match e {
        ModelError::Config(m) => ModelError::Config(format!("{}: {m}", cfg_path.display())),
        ModelError::Unsupported(m) => ModelError::Unsupported(format!("{}: {m}", cfg_path.display())),
        other => other,
    })?;
    let tokenizer = Tokenizer::from_hf_dir(dir)?;
    // Every shape and dtype the configuration implies is checked against the
    // files' headers before any weight is allocated.
    let files = safetensors_files(dir)?;
    let mut shapes: std::collections::HashMap<String, (String, Vec<usize>)> = std::collections::HashMap::new();
    for file in &files {
        if !file.exists() {
            return Err(ModelError::Weights { path: file.clone(), detail: "shard named in the index is missing".into() });
        }
        for (name, dtype, shape) in read_safetensors_header(file)? {
            shapes.insert(name, (dtype, shape));
        }
    }
    crate::weights::check_against_file(&config, dir, Some(shapes.len()), true, |name| {
        Ok(shapes.get(name).map(|(_, s)| s.clone()))
    })?;
    for name in parameter_names(&config) {
        if let Some((dtype, _)) = shapes.get(&name).filter(|(d, _)| !matches!(d.as_str(), "F32" | "F16" | "BF16" | "F64")) {
            return Err(ModelError::Weights {
                path: dir.to_path_buf(),
                detail: format!("tensor {name} has dtype {dtype}: lava reads F32, F16, BF16 or F64 weights"),
            });
        }
    }
    drop(shapes);
    if config.post_norms {
        // Gemma: its norm names do not follow the module's, and its gains are `1 + weight`.
        let src = GemmaSafetensors::read(dir, &files)?;
        let rope = Rope::new(&config);
        return Ok((Llama::from_source(config, &src, rope, device)?, tokenizer));
    }
    let mut weights = LlamaWeights::<B>::zeros(&config, device)?;
    let mut applied = BTreeSet::new();
    for file in files {
        let mut store = SafetensorsStore::from_file(file.clone())
            .with_from_adapter(ChainAdapter::new(ToF32Adapter, PyTorchToBurnAdapter))
            .with_key_remapping(r"^model\.", "")
            .with_key_remapping(r"norm\.weight$", "norm.gamma")
            .allow_partial(true)
            .validate(true);
        let result = weights.load_from(&mut store).map_err(|e| ModelError::Weights {
            path: file.clone(),
            detail: format!("cannot be read as safetensors: {e}"),
        })?;
        if let Some(err) = result.errors.first() {
            return Err(ModelError::Weights { path: file.clone(), detail: apply_error_text(err) });
        }
        applied.extend(result.applied);
    }
    let expected = parameter_names(&config);
    let missing: Vec<&String> = expected
        .iter()
        .filter(|n| {
            let burn_name = n.strip_prefix("model.").unwrap_or(n).replace("norm.weight", "norm.gamma");
            !applied.contains(&burn_name)
        })
        .collect();
    if let Some(first) = missing.first() {
        return Err(ModelError::Weights {
            path: dir.to_path_buf(),
            detail: format!("{} tensors missing from the safetensors files, e.g. {first}", missing.len()),
        });
    }
    let rope = Rope::new(&config);
    Ok((Llama::new(config, weights, rope, device), tokenizer))
}

/// A Gemma 3 directory's weights as a [`WeightSource`]: each tensor read from its
/// safetensors file as f32 (from f32, f16 or bf16), Hugging Face names and layout, and the
/// RMS norms' gains as `1 + weight` (Gemma's norms multiply by one plus the stored value;
/// GGUF files store the sum, which the forward pass multiplies by). The files are read whole.
struct GemmaSafetensors {
    dir: PathBuf,
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl GemmaSafetensors {
    fn read(dir: &Path, files: &[PathBuf]) -> Result<Self, ModelError> {
        let files = files.iter().map(|f| Ok((f.clone(), std::fs::read(f).map_err(|e| ModelError::io(f, e))?))).collect::<Result<_, ModelError>>()?;
        Ok(Self { dir: dir.to_path_buf(), files })
    }
}

impl WeightSource for GemmaSafetensors {
    fn tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>, ModelError> {
        for (path, bytes) in &self.files {
            let bad = |detail: String| ModelError::Weights { path: path.clone(), detail };
            let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(format!("cannot be read as safetensors: {e}")))?;
            let Ok(t) = st.tensor(name) else { continue };
            let data = t.data();
            let mut values: Vec<f32> = match t.dtype() {
                safetensors::Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                safetensors::Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                safetensors::Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                safetensors::Dtype::F64 => data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32).collect(),
                other => return Err(bad(format!("tensor {name} has dtype {other:?}: lava reads F32, F16, BF16 or F64 weights"))),
            };
            if name.ends_with("norm.weight") {
                values.iter_mut().for_each(|x| *x += 1.0);
            }
            return Ok(Some((t.shape().to_vec(), values)));
        }
        Ok(None)
    }
    fn origin(&self) -> PathBuf {
        self.dir.clone()
    }
}

/// Name of the marker file an export keeps in its directory while it replaces files there:
/// a directory holding it is half-written and [`load_hf_dir`] refuses it.
pub const EXPORT_MARKER: &str = ".lava-export-incomplete";

/// The files an export writes, the weights first.
const EXPORT_FILES: [&str; 4] = ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"];

/// The temporary name [`write_atomic`] writes `name` under, in the same directory.
fn temp_name(name: &str) -> String {
    format!(".{name}.tmp-{}", std::process::id())
}

/// Writes `bytes` to `tmp` and flushes them to the disk; `tmp` is removed on failure.
fn write_synced(tmp: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(tmp);
        ModelError::io(tmp, e)
    })
}

/// Flushes a directory's entries (renames, removals) to the disk. A no-op where
/// directories cannot be opened as files.
fn sync_dir(dir: &Path) -> Result<(), ModelError> {
    #[cfg(unix)]
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| ModelError::io(dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, flushed to
/// the disk, then renamed over `path` (and the directory flushed). On any error `path` is
/// untouched and the temporary file removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(temp_name(&name));
    write_synced(&tmp, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ModelError::io(path, e)
    })?;
    sync_dir(dir)
}

/// Whether process `pid` is running (on Linux; elsewhere every other process counts as gone).
fn process_alive(pid: u32) -> bool {
    pid == std::process::id() || (cfg!(target_os = "linux") && Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes the temporary files (`.<name>.tmp-<pid>`, see [`write_atomic`]) of `names` that
/// earlier writers killed before their rename left in `dir`, and whose process is gone.
fn remove_stale_temps(dir: &Path, names: &[&str]) -> Result<(), ModelError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
    for entry in entries.filter_map(|e| e.ok()) {
        let file = entry.file_name().to_string_lossy().into_owned();
        let stale = names.iter().any(|n| {
            file.strip_prefix(&format!(".{n}.tmp-"))
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !process_alive(pid))
        });
        if stale {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(|e| ModelError::io(&p, e))?;
        }
    }
    Ok(())
}

/// The weight files of an earlier export or download that `model.safetensors` would not
/// replace: `model.safetensors.index.json` (which [`load_hf_dir`] reads before
/// `model.safetensors`), the shards it names, and `model-*-of-*.safetensors` shards.
fn stale_weight_files(dir: &Path) -> Vec<PathBuf> {
    let index = dir.join("model.safetensors.index.json");
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string(&index) {
        if let Some(map) = serde_json::from_str::<serde_json::Value>(&text).ok().as_ref().and_then(|v| v.get("weight_map")?.as_object().cloned()) {
            for f in map.values().filter_map(|f| f.as_str()) {
                if !f.contains(['/', '\\']) && !f.contains("..") && f.ends_with(".safetensors") && f != "model.safetensors" {
                    out.push(dir.join(f));
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(|e| e.ok()) {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("model-") && n.contains("-of-") && n.ends_with(".safetensors") {
                out.push(e.path());
            }
        }
    }
    if index.exists() {
        out.push(index);
    }
    out.sort();
    out.dedup();
    out
}

/// A test hook: with `LAVA_TEST_EXPORT_ABORT=<step>` the export aborts the process (like a
/// kill) at that step, leaving the directory as a killed run would.
fn abort_at(step: &str) {
    if std::env::var("LAVA_TEST_EXPORT_ABORT").is_ok_and(|s| s == step) {
        std::process::abort();
    }
}

/// Writes `files` (name, bytes) into `dir` as one unit. Every file is first written to a
/// temporary file and flushed to the disk; then [`EXPORT_MARKER`] is written, the files are
/// renamed into place, stale weight files ([`stale_weight_files`]) are removed, and the
/// marker is removed last. A run killed before the marker leaves `dir` as it was (plus
/// temporary files, removed by the next run); one killed after it leaves the marker, so the
/// half-replaced directory is refused at load until an export completes.
fn write_dir_as_unit(dir: &Path, files: &[(&str, &[u8])]) -> Result<(), ModelError> {
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    remove_stale_temps(dir, &names)?;
    let mut written: Vec<PathBuf> = Vec::new();
    for (name, bytes) in files {
        let tmp = dir.join(temp_name(name));
        if let Err(e) = write_synced(&tmp, bytes) {
            written.iter().for_each(|t| drop(std::fs::remove_file(t)));
            return Err(e);
        }
        written.push(tmp);
    }
    abort_at("temps");
    let marker = dir.join(EXPORT_MARKER);
    let note = b"lava export-hf is (or was, if it was killed) replacing the files of this directory; run it again\n";
    if let Err(e) = write_synced(&marker, note).and_then(|_| sync_dir(dir)) {
        written.iter().for_each(|t| drop(std::fs::remove_file(t)));
        return Err(e);
    }
    abort_at("marker");
    for (i, (tmp, name)) in written.iter().zip(&names).enumerate() {
        let to = dir.join(name);
        std::fs::rename(tmp, &to).map_err(|e| ModelError::io(&to, e))?;
        if i == 0 {
            abort_at("rename");
        }
    }
    for stale in stale_weight_files(dir) {
        std::fs::remove_file(&stale).map_err(|e| ModelError::io(&stale, e))?;
    }
    sync_dir(dir)?;
    abort_at("renamed");
    std::fs::remove_file(&marker).map_err(|e| ModelError::io(&marker, e))?;
    sync_dir(dir)
}

/// Takes an exclusive `flock` on the directory `dir` itself for the whole export, so two
/// exports into one directory never interleave their files (no lock file is left behind: the
/// lock ends with the process, killed or not), or fails at once naming the directory when
/// another export holds it.
fn lock_export_dir(dir: &Path) -> Result<std::fs::File, ModelError> {
    let file = std::fs::File::open(dir).map_err(|e| ModelError::io(dir, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ModelError::io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                "another lava export-hf is writing this directory; wait for it to finish, or export into another directory",
            ),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(ModelError::io(dir, e)),
    }
}

/// Writes a Hugging Face directory (f32 `model.safetensors`, `config.json`,
/// `tokenizer.json`, `tokenizer_config.json`) holding the weights of `src`, as one unit
/// (see [`write_dir_as_unit`]): a killed export never leaves a directory that loads with
/// files of two exports, and weight shards of an earlier export are removed.
pub fn export_hf<S: WeightSource + ?Sized>(
    config: &LlamaConfig,
    src: &S,
    tokenizer: &Tokenizer,
    out: &Path,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let _lock = lock_export_dir(out)?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for p in parameters(config) {
        let (name, shape) = (p.name, p.shape);
        let (found, values) = src
            .tensor(&name)?
            .ok_or_else(|| ModelError::Weights { path: src.origin(), detail: format!("missing tensor {name}") })?;
        if found != shape {
            return Err(ModelError::Weights {
                path: src.origin(),
                detail: format!("tensor {name} has shape {found:?}, expected {shape:?}"),
            });
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((name, shape, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ModelError::Weights { path: out.to_path_buf(), detail: format!("{n}: {e}") })
        })
        .collect::<Result<_, _>>()?;
    let st = safetensors::serialize(views, None)
        .map_err(|e| ModelError::Weights { path: out.to_path_buf(), detail: e.to_string() })?;
    let cfg = serde_json::to_string_pretty(&config.to_hf_json()).unwrap_or_default();
    let tok_json = tokenizer.to_json();
    let mut tc = serde_json::json!({"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": false,
        "add_bos_token": tokenizer.adds_bos(), "add_eos_token": tokenizer.adds_eos()});
    let (bos, eos) = tokenizer.bos_eos();
    if let Some(b) = bos {
        tc["bos_token"] = b.into();
    }
    if let Some(e) = eos {
        tc["eos_token"] = e.into();
    }
    if let Some(t) = tokenizer.chat_template() {
        tc["chat_template"] = t.into();
    }
    let tc = serde_json::to_string_pretty(&tc).unwrap_or_default();
    let contents: [&[u8]; 4] = [&st, cfg.as_bytes(), tok_json.as_bytes(), tc.as_bytes()];
    let files: Vec<(&str, &[u8])> = EXPORT_FILES.iter().copied().zip(contents).collect();
    write_dir_as_unit(out, &files)
}
