//! Bounded reads of evaluation inputs (LongBench files, haystack essays, PG-19
//! books, RULER samples, NIAH grids, results files): each is read whole, so
//! each is capped at [`MAX_DATA_FILE_BYTES`]; the read stops there, so a device
//! such as `/dev/zero` or a huge file costs no more than the cap.

use std::path::Path;

use crate::error::{EvalError, Result};

/// The most bytes read of one evaluation file (256 MiB; the largest LongBench
/// file is a few MB, a PG-19 book about 10 MB).
pub const MAX_DATA_FILE_BYTES: u64 = 256 << 20;

/// The bytes of `path`, at most [`MAX_DATA_FILE_BYTES`]; the raw I/O error
/// (so callers can treat a missing file as they need).
pub(crate) fn bytes_io(path: &Path) -> std::io::Result<Vec<u8>> {
    lava_llama::memory::read_bytes_bounded(path, MAX_DATA_FILE_BYTES)
}

/// The bytes of `path`, at most [`MAX_DATA_FILE_BYTES`].
pub(crate) fn bytes(path: &Path) -> Result<Vec<u8>> {
    bytes_io(path).map_err(|e| EvalError::io(path, e))
}

/// The UTF-8 text of `path`, at most [`MAX_DATA_FILE_BYTES`].
pub(crate) fn text(path: &Path) -> Result<String> {
    lava_llama::memory::read_text_bounded(path, MAX_DATA_FILE_BYTES).map_err(|e| EvalError::io(path, e))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_device_is_read_only_up_to_the_cap() {
        let e = super::bytes(std::path::Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("/dev/zero") && e.contains("larger than 256.0 MiB"), "{e}");
    }
}
