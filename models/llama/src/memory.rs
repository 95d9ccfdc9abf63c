//! How much memory this process can still take, checked before large
//! allocations whose size comes from a file or an argument, so that a request
//! the machine cannot serve is an error naming the size rather than an abort.
//!
//! The bound is the smaller of the memory the kernel reports available
//! (`MemAvailable` plus free swap) and what the address-space limit
//! (`ulimit -v`, `RLIMIT_AS`) leaves above the current address space. Both are
//! read from `/proc`; where it cannot be read (not Linux) no check is made.

use crate::error::ModelError;

/// One gibibyte.
const GIB: f64 = (1u64 << 30) as f64;

/// Bytes as "1.23 GiB" (or "12.3 MiB" below one GiB).
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.2} GiB", b / GIB)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}

/// `key: value kB` of `/proc/meminfo` or `/proc/self/status`, in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The soft address-space limit in bytes, `None` when unlimited or unknown.
fn address_space_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max address space"))?;
    line["Max address space".len()..].split_whitespace().next()?.parse().ok()
}

/// Bytes this process can still allocate, as far as `/proc` tells; `None` if unknown.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let free = meminfo.as_deref().and_then(|m| {
        let avail = kib_field(m, "MemAvailable:")?;
        Some(avail.saturating_add(kib_field(m, "SwapFree:").unwrap_or(0)))
    });
    let room = address_space_limit().map(|limit| {
        let used = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| kib_field(&s, "VmSize:"));
        limit.saturating_sub(used.unwrap_or(0))
    });
    match (free, room) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Errors with [`ModelError::OutOfMemory`] when `needed` bytes (for `what`)
/// exceed what [`available_bytes`] reports.
pub fn check_available(what: &str, needed: u64) -> Result<(), ModelError> {
    match available_bytes() {
        Some(available) if needed > available => {
            Err(ModelError::OutOfMemory { what: what.to_string(), needed, available })
        }
        _ => Ok(()),
    }
}

/// The most bytes of a model directory's `config.json`, `tokenizer_config.json`
/// or `model.safetensors.index.json` read (16 MiB; real ones are kilobytes).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// The most bytes of a `tokenizer.json` read (256 MiB; large vocabularies take tens of MB).
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// Reads a file of at most `limit` bytes (the read stops there, so a device
/// or a huge file costs no more); past it is an `InvalidData` error naming the
/// limit.
pub fn read_bytes_bounded(path: &std::path::Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    f.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the file is larger than {}, the most lava reads for it", human_bytes(limit)),
        ));
    }
    Ok(bytes)
}

/// [`read_bytes_bounded`] for UTF-8 text: not UTF-8 is an `InvalidData` error.
pub fn read_text_bounded(path: &std::path::Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read_bytes_bounded(path, limit)?).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is not UTF-8 text"))
}

thread_local! {
    /// The cap of [`with_allocation_cap`] on this thread (0: none) and what it guards.
    static ALLOCATION_CAP: std::cell::Cell<AllocationCap> = const { std::cell::Cell::new(AllocationCap { bytes: 0, what: "", fix: "" }) };
}

/// A cap on the single allocations of one thread (see [`with_allocation_cap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocationCap {
    /// The largest single allocation, in bytes.
    pub bytes: usize,
    /// What the cap guards ("the chat template").
    pub what: &'static str,
    /// How to get past it ("fix it, or run without --chat").
    pub fix: &'static str,
}

/// The cap on single allocations of the current thread while inside
/// [`with_allocation_cap`]; `None` outside. Read by an allocator that
/// enforces it (the `lava` binary's, `lava_cli::alloc`): a library user
/// without one gets no enforcement.
pub fn allocation_cap() -> Option<AllocationCap> {
    let cap = ALLOCATION_CAP.with(|c| c.get());
    (cap.bytes > 0).then_some(cap)
}

/// Runs `f` with single allocations of this thread capped by `cap` (see
/// [`allocation_cap`]). The previous cap is restored afterwards, also on a
/// panic.
pub fn with_allocation_cap<R>(cap: AllocationCap, f: impl FnOnce() -> R) -> R {
    struct Restore(AllocationCap);
    impl Drop for Restore {
        fn drop(&mut self) {
            ALLOCATION_CAP.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(ALLOCATION_CAP.with(|c| c.replace(cap)));
    f()
}
