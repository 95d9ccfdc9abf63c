//! Reading input files with a size limit: a prompt or text file is read only
//! as far as the model's context can use, so `/dev/zero` or a 38 MB book ends
//! in a clear error (or, where only a prefix is scored, a truncation) after a
//! bounded read instead of an out-of-memory kill.

use std::io::Read;
use std::path::Path;

use crate::error::CliError;

/// Bytes of text read per token of context: generous (English averages about
/// 4 bytes per token, code and other scripts rarely more than 16).
pub const BYTES_PER_TOKEN: u64 = 64;

/// Text files are always allowed at least this many bytes (1 MiB).
pub const MIN_TEXT_BYTES: u64 = 1 << 20;

/// The byte limit for text that must fit in `tokens` tokens.
pub fn text_cap(tokens: usize) -> u64 {
    (tokens as u64).saturating_mul(BYTES_PER_TOKEN).max(MIN_TEXT_BYTES)
}

/// What to do with a file longer than its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// An error (the whole text was meant to be used: a prompt).
    Refuse,
    /// Keep the first `cap` bytes (only a prefix is used: a text to score).
    Truncate,
}

/// Reads at most `cap + 1` bytes of `path` (streaming; never more, whatever
/// the file is), the second value telling whether the file was longer than `cap`.
pub fn read_capped(path: &Path, cap: u64) -> Result<(Vec<u8>, bool), CliError> {
    let f = std::fs::File::open(path).map_err(|e| CliError::io(path, e))?;
    let mut bytes = Vec::new();
    f.take(cap.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| CliError::io(path, e))?;
    let longer = bytes.len() as u64 > cap;
    if longer {
        bytes.truncate(cap as usize);
    }
    Ok((bytes, longer))
}

/// Reads UTF-8 text of at most `cap` bytes from `path`; `limit_why` says where
/// the limit comes from (e.g. "the model's context of 8192 tokens").
pub fn read_text(path: &Path, cap: u64, limit_why: &str, overflow: Overflow) -> Result<String, CliError> {
    let (mut bytes, longer) = read_capped(path, cap)?;
    if longer && overflow == Overflow::Refuse {
        return Err(CliError::Usage(format!(
            "{} is larger than {cap} bytes, more than {limit_why} can use (lava reads at most {BYTES_PER_TOKEN} bytes per token); shorten the file",
            path.display()
        )));
    }
    if longer {
        // The cut may fall inside a character: drop its first bytes.
        if let Err(e) = std::str::from_utf8(&bytes) {
            if e.error_len().is_none() {
                bytes.truncate(e.valid_up_to());
            }
        }
        eprintln!("lava: read the first {} bytes of {} ({limit_why})", bytes.len(), path.display());
    }
    String::from_utf8(bytes).map_err(|e| {
        CliError::Usage(format!(
            "{} is not UTF-8 text (invalid byte at offset {}); convert it to UTF-8 first",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}
