//! The `lava` binary; everything lives in the `lava-cli` crate.

/// The system allocator with lava's caps: an exhausted or hostile allocation
/// ends the run with one sentence (exit code 3), not an abort.
#[global_allocator]
static ALLOCATOR: lava_cli::alloc::Guarded = lava_cli::alloc::Guarded;

fn main() -> std::process::ExitCode {
    lava_cli::alloc::keep_freed_memory();
    lava_cli::main()
}
