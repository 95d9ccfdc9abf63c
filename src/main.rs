//! The `lava` binary; everything lives in the `lava-cli` crate.

fn main() -> std::process::ExitCode {
    lava_cli::main()
}
