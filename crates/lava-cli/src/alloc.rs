//! The `lava` binary's global allocator: the system allocator, plus two rules
//! that turn an exhausted or hostile allocation into one sentence and exit
//! code 3 instead of an abort:
//!
//! - a single allocation past the current thread's cap
//!   ([`lava_llama::memory::allocation_cap`], set while a chat template
//!   renders) ends the run naming what it guards and the cap;
//! - an allocation the system refuses (free memory or `ulimit -v` exhausted)
//!   ends the run naming the size, where Rust's default would abort with a
//!   core dump.
//!
//! Both write to stderr with a fixed buffer and leave with `_exit`: nothing in
//! the message path allocates.
//!
//! [`keep_freed_memory`] sets how much freed memory glibc keeps for reuse.

use std::alloc::{GlobalAlloc, Layout, System};

/// The system allocator with lava's caps (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct Guarded;

// SAFETY: every method forwards to `System` with the caller's arguments, or
// does not return.
unsafe impl GlobalAlloc for Guarded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check_cap(layout.size());
        // SAFETY: forwarded as given.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            refused(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check_cap(layout.size());
        // SAFETY: forwarded as given.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            refused(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check_cap(new_size);
        // SAFETY: forwarded as given.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            refused(new_size);
        }
        p
    }
}

/// The padding glibc adds to each growth of the heap, and keeps at its top when trimming.
pub const HEAP_PAD: usize = 256 << 20;
/// Free memory at the top of the heap past which glibc hands it back to the system.
pub const KEEP_FREED: usize = 512 << 20;
/// Allocations from this size on get their own mapping (glibc's largest threshold, 32 MiB).
pub const MMAP_FROM: usize = 32 << 20;

/// Sets glibc's heap padding ([`HEAP_PAD`]), trim threshold ([`KEEP_FREED`]) and mmap
/// threshold ([`MMAP_FROM`]). With glibc's defaults a prefill took its buffers' pages from the
/// kernel again for every layer (tens of MB a layer, one fault and one zeroed page per 4 KiB):
/// on the 1.5B, 735,000 page faults in a 1k-token prefill against 157,000 with the three set
/// (most of those the model file's own pages), and 2k-token prefill 147-153 -> 166 tokens/s,
/// peak RSS unchanged (1,875 MB). Any one of them alone changed nothing. Up to 512 MiB of
/// freed memory now stays with the process, for the next layer and the next request. Does
/// nothing on other C libraries.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called first thing in `main`,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, HEAP_PAD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_FREED as libc::c_int);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_FROM as libc::c_int);
    }
}

/// Ends the run when `size` is past this thread's cap.
fn check_cap(size: usize) {
    if let Some(cap) = lava_llama::memory::allocation_cap() {
        if size > cap.bytes {
            let mut m = Message::new();
            m.push("lava: error: ");
            m.push(cap.what);
            m.push(" asked for ");
            m.number(size);
            m.push(" bytes at once, more than its limit of ");
            m.number(cap.bytes);
            m.push(" bytes; ");
            m.push(cap.fix);
            m.push("\n");
            m.exit();
        }
    }
}

/// Ends the run after the system refused `size` bytes.
fn refused(size: usize) {
    let mut m = Message::new();
    m.push("lava: error: out of memory: an allocation of ");
    m.number(size);
    m.push(" bytes failed (free memory and the address-space limit, ulimit -v, are used up); use a smaller model or input, or free memory\n");
    m.exit();
}

/// A one-line message built in a fixed buffer (no allocation).
struct Message {
    buf: [u8; 512],
    len: usize,
}

impl Message {
    fn new() -> Self {
        Self { buf: [0; 512], len: 0 }
    }

    fn push(&mut self, s: &str) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
    }

    fn number(&mut self, mut v: usize) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        // The digits are ASCII.
        self.push(std::str::from_utf8(&digits[i..]).unwrap_or("?"));
    }

    /// Writes the message to stderr and leaves with exit code 3.
    fn exit(&self) -> ! {
        #[cfg(unix)]
        // SAFETY: write(2) of an initialised buffer, then _exit(2): neither allocates.
        unsafe {
            libc::write(2, self.buf.as_ptr().cast(), self.len);
            libc::_exit(3)
        }
        #[cfg(not(unix))]
        {
            use std::io::Write;
            let _ = std::io::stderr().write_all(&self.buf[..self.len]);
            std::process::exit(3)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_are_written_in_decimal() {
        for v in [0usize, 7, 10, 1234567890, usize::MAX] {
            let mut m = super::Message::new();
            m.number(v);
            assert_eq!(std::str::from_utf8(&m.buf[..m.len]).unwrap(), v.to_string());
        }
    }
}
