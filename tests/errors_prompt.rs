//! Chat templates run within limits: a template that writes too much or runs
//! too long fails with one sentence naming the template (exit code 3), under a
//! 2 GiB address-space limit, never an abort, a hang or a panic.

use std::path::Path;
use std::process::Command;

use lava_llama::gguf::GgmlType;
use lava_llama::tiny::{tiny_config, RandomWeights};

/// Runs `lava` under `ulimit -v` (KiB) through the shell.
fn lava_limited(args: &[&str], kib: u64) -> std::process::Output {
    let script = format!("ulimit -v {kib} && exec \"$0\" \"$@\"");
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_lava"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run lava")
}

fn with_template(dir: &Path, template: &str) {
    let config = serde_json::json!({ "chat_template": template }).to_string();
    std::fs::write(dir.join("tokenizer_config.json"), config).expect("write tokenizer_config.json");
}

/// `{% set s = s ~ s %}` sixty times: few instructions, 2^60 bytes.
static DOUBLING: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{{% set s = 'x' %}}{}{{{{ messages[0].content }}}}", "{% set s = s ~ s %}".repeat(60)));

#[test]
fn hostile_chat_templates_fail_within_limits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gguf = tmp.path().join("tiny.gguf");
    std::fs::write(&gguf, RandomWeights { config: tiny_config(3, 1, true, false), seed: 1 }.to_gguf(GgmlType::F32))
        .expect("write");
    let hf = tmp.path().join("hf");
    let st = Command::new(env!("CARGO_BIN_EXE_lava")).arg("export-hf").arg(&gguf).arg(&hf).status().expect("export");
    assert!(st.success());
    let hf_s = hf.display().to_string();
    let args = ["generate", "--chat", "--prompt", "hello", "--max-new-tokens", "2", "--backend", "ndarray", "--model", &hf_s];
    const LIMIT_KIB: u64 = 2 * 1024 * 1024;

    // A good template works under the limit (so the limit itself is not what fails below).
    with_template(&hf, "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:");
    let out = lava_limited(&args, LIMIT_KIB);
    assert!(out.status.success(), "good template: {}", String::from_utf8_lossy(&out.stderr));

    let cases = [
        ("huge output", "{{ 'x' * 100000000 }}", "more than its limit of"),
        ("output in a loop", "{% for i in range(1000) %}{{ 'x' * 1000000 }}{% endfor %}", "more than its limit of"),
        ("nested loops", "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}", "instructions"),
        ("repeats the message", "{% for m in messages %}{{ m.content }}{{ m.content }}{% endfor %}", "repeats or drops"),
        ("does not parse", "{% for m in messages %}", "does not parse"),
        (
            "doubles a string in a loop",
            "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ messages[0].content }}",
            "asked for",
        ),
        ("doubles a string without a loop", DOUBLING.as_str(), "asked for"),
    ];
    for (name, template, expect) in cases {
        with_template(&hf, template);
        let t = std::time::Instant::now();
        let out = lava_limited(&args, LIMIT_KIB);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{name}: exit code; stderr: {stderr}");
        assert!(stderr.contains(expect), "{name}: stderr lacks {expect:?}: {stderr}");
        assert!(stderr.contains("chat template"), "{name}: names the template: {stderr}");
        assert_eq!(stderr.lines().filter(|l| l.contains("error")).count(), 1, "{name}: one error line: {stderr}");
        for bad in ["panicked", "stack backtrace", "memory allocation"] {
            assert!(!stderr.contains(bad), "{name}: stderr has {bad:?}: {stderr}");
        }
        assert!(t.elapsed().as_secs() < 60, "{name}: took {:?}", t.elapsed());
    }
}
