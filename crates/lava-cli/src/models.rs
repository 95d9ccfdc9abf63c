//! `lava models`: the models `--model NAME` knows, with size, architecture, context length and
//! whether each is in `$LAVA_HOME/models` already.

use crate::error::CliError;
use crate::fetch::{lava_home, MODELS};

/// `lava models`.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelsArgs {
    /// Print JSON (one object per model) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Lists the known models.
pub fn models(a: ModelsArgs) -> Result<(), CliError> {
    let dir = lava_home()?.join("models");
    let rows: Vec<(&crate::fetch::KnownModel, Option<std::path::PathBuf>)> =
        MODELS.iter().map(|m| (m, Some(dir.join(m.file)).filter(|p| p.is_file()))).collect();
    let text = if a.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(m, cached)| {
                serde_json::json!({
                    "name": m.name, "default": m.is_default(), "title": m.title, "file": m.file,
                    "arch": m.arch, "context": m.context, "bytes": m.bytes, "sha256": m.sha256,
                    "cached": cached.is_some(), "path": dir.join(m.file),
                })
            })
            .collect();
        serde_json::to_string_pretty(&v).map_err(|e| CliError::Runtime(format!("JSON: {e}")))? + "\n"
    } else {
        let mut t = format!("{:<20} {:<42} {:<6} {:>8} {:>9}  {}\n", "name", "model", "arch", "context", "size", "cached");
        for (m, cached) in &rows {
            let name = if m.is_default() { format!("{} *", m.name) } else { m.name.to_string() };
            let cached = cached.as_ref().map_or_else(|| "no (fetched on first use)".to_string(), |p| format!("yes, {}", p.display()));
            t += &format!("{name:<20} {:<42} {:<6} {:>8} {:>6.0} MB  {cached}\n", m.title, m.arch, m.context, m.bytes as f64 / 1e6);
        }
        t += "* the default. Use one with --model NAME, or pass --model PATH to a GGUF file or Hugging Face directory.\n";
        t
    };
    crate::write_stdout(&text)
}
