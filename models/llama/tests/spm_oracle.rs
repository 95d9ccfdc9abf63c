//! lava's SentencePiece tokenizer (GGUF `tokenizer.ggml.model = llama`)
//! against the `sentencepiece` library itself.
//!
//! `tests/spm_oracle.py` trains a small BPE model with sentencepiece (byte
//! fallback, identity normalization, dummy prefix, extra whitespace kept, two
//! user-defined pieces), writes its vocabulary into a tiny llama GGUF with
//! llama.cpp's `gguf.GGUFWriter`, and dumps sentencepiece's encode ids and
//! decode output for essays and hostile strings (whitespace runs, newlines,
//! tabs, byte fallback, mixed scripts, emoji, combining marks, spellings of
//! control tokens), plus decodes of id sequences encode never gives. lava
//! loads the GGUF with its model loader and must give the same ids and texts;
//! so must the Hugging Face directory lava exports from that GGUF (its
//! `tokenizer.json`: BPE, byte fallback, U+2581 spaces; also rewritten with a
//! Metaspace pre-tokenizer) wherever sentencepiece and `tokenizers` agree by
//! design (listed below).
//!
//! The corpus is `shared/data/paulgraham_essays` next to the repository
//! (`$LAVA_SHARED_DATA` overrides) when present, synthetic text otherwise.
//! Without python3 + sentencepiece + gguf + numpy the test is skipped with a
//! loud message, unless `LAVA_REQUIRE_ORACLE` is set (CI sets it), where it
//! fails. Setup: `python3 -m pip install sentencepiece gguf numpy`.

use std::path::{Path, PathBuf};
use std::process::Command;

use lava_llama::{Message, Prompt, Tokenizer};
use serde_json::Value;

type B = burn_ndarray::NdArray<f32>;

fn python() -> String {
    std::env::var("LAVA_PYTHON").ok().filter(|p| !p.is_empty()).unwrap_or_else(|| "python3".into())
}

fn required() -> bool {
    std::env::var("LAVA_REQUIRE_ORACLE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Whether python with sentencepiece, gguf and numpy is there; otherwise skip
/// loudly (or fail when required).
fn oracle_available() -> bool {
    let ok = Command::new(python())
        .args(["-c", "import sentencepiece, gguf, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg = format!(
            "the sentencepiece oracle needs `{} -m pip install sentencepiece gguf numpy`; it is missing (set LAVA_PYTHON to another python)",
            python()
        );
        if required() {
            panic!("LAVA_REQUIRE_ORACLE is set and {msg}");
        }
        eprintln!("\n{}\nSKIPPED lava-llama SentencePiece oracle test: {msg}\n{}\n", "!".repeat(78), "!".repeat(78));
    }
    ok
}

fn essays() -> Option<PathBuf> {
    let data = match std::env::var_os("LAVA_SHARED_DATA") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    };
    Some(data.join("paulgraham_essays")).filter(|d| d.is_dir())
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn show(s: &str) -> String {
    let short: String = s.chars().take(80).collect();
    format!("{short:?}{}", if short.len() < s.len() { "..." } else { "" })
}

#[test]
fn sentencepiece_tokenizer_matches_the_sentencepiece_library() {
    if !oracle_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/spm_oracle.py");
    let mut cmd = Command::new(python());
    cmd.arg(&script).arg(dir.path());
    if let Some(e) = essays() {
        cmd.arg(e);
    }
    let out = cmd.output().expect("run spm_oracle.py");
    assert!(
        out.status.success(),
        "spm_oracle.py failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let cases: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("cases.json")).expect("cases.json")).expect("json");
    let gguf = dir.path().join("spm.gguf");

    // lava's loader: config, weights and tokenizer from the GGUF.
    let (model, tok) = lava_llama::load_gguf::<B>(&gguf, &Default::default()).expect("lava loads the GGUF");
    assert_eq!(model.config.vocab_size, tok.vocab_size());
    let bos = cases["bos"].as_u64().unwrap() as u32;
    assert_eq!(tok.vocab_size(), cases["vocab"].as_u64().unwrap() as usize);
    assert_eq!(tok.token_id("<s>"), Some(bos));
    assert!(tok.adds_bos() && !tok.adds_eos(), "add_bos_token true, add_eos_token false in the GGUF");

    let encode = cases["encode"].as_array().expect("encode cases");
    let decode = cases["decode"].as_array().expect("decode cases");
    let specials = ["<s>", "</s>", "<unk>"];
    let mut failures = Vec::new();
    for c in encode {
        let text = c["text"].as_str().unwrap();
        let want = ids(&c["ids"]);
        let decoded = c["decoded"].as_str().unwrap();
        let got = tok.encode_plain(text).expect("encode");
        if got != want {
            failures.push(format!("encode {}: lava {got:?}, sentencepiece {want:?}", show(text)));
        }
        let back = tok.decode(&want).expect("decode");
        if back != decoded {
            failures.push(format!("decode of {}: lava {}, sentencepiece {}", show(text), show(&back), show(decoded)));
        }
        // Control tokens recognised: what llama.cpp does, each run of text
        // between them encoded with its dummy prefix.
        let want_special = ids(&c["ids_special"]);
        let got_special = tok.encode(text).expect("encode");
        if got_special != want_special {
            failures.push(format!("encode (control tokens recognised) {}: lava {got_special:?}, expected {want_special:?}", show(text)));
        }
        // A prompt: BOS first, message text taken plainly.
        if !text.is_empty() {
            let p = tok.encode_prompt(&Prompt { user: text, ..Default::default() }).expect("prompt");
            let mut with_bos = vec![bos];
            with_bos.extend(&want);
            if p.context != with_bos || !p.suffix.is_empty() {
                failures.push(format!("prompt {}: lava {:?} + {:?}, expected {with_bos:?}", show(text), p.context, p.suffix));
            }
        }
    }
    for c in decode {
        let want = c["decoded"].as_str().unwrap();
        let got = tok.decode(&ids(&c["ids"])).expect("decode");
        if got != want {
            failures.push(format!("decode {:?}: lava {}, sentencepiece {}", ids(&c["ids"]), show(&got), show(want)));
        }
    }

    // The question split: the suffix continues the context without a dummy
    // prefix space (sentencepiece's encoding of "\n" + question, less its
    // leading U+2581 and newline byte).
    let q = &cases["question"];
    let (context, question) = (q["context"].as_str().unwrap(), q["question"].as_str().unwrap());
    let user = format!("{context}\n{question}");
    let p = tok.encode_prompt(&Prompt { user: &user, question: Some(question), ..Default::default() }).expect("prompt");
    let mut want_context = vec![bos];
    want_context.extend(ids(&q["context_ids"]));
    want_context.extend(ids(&q["newline_ids"]));
    assert_eq!(p.context, want_context, "context of the split prompt");
    assert_eq!(p.suffix, ids(&q["question_ids"]), "suffix of the split prompt");

    // The GGUF's chat template: the message text spells control tokens,
    // which stay text; the template's own <s> is the BOS (not put twice).
    let chat = &cases["chat"];
    let message = Message { role: "user".into(), content: chat["message"].as_str().unwrap().into() };
    assert_eq!(tok.encode_chat(&[message], false).expect("chat"), ids(&chat["ids"]), "chat template prompt");

    // The Hugging Face directory lava exports from this GGUF (tokenizer.json
    // through the `tokenizers` crate). Where the two differ by design:
    // user-defined pieces are added tokens there (the text after one gets a
    // dummy prefix space, as in llama.cpp; sentencepiece gives none), and the
    // decoder drops <unk> (a special token) and writes U+FFFD for every byte
    // of a run that is not all valid UTF-8.
    let hf_dir = dir.path().join("hf");
    lava_llama::export_gguf_to_hf(&gguf, &hf_dir).expect("export to a Hugging Face directory");
    let hf = Tokenizer::from_hf_dir(&hf_dir).expect("the exported tokenizer.json loads");
    assert!(hf.adds_bos());
    // The newer form of the same tokenizer.json (`transformers` with
    // legacy=false): no normalizer, a Metaspace pre-tokenizer that puts the
    // dummy prefix in front of the text's first run only.
    let meta_dir = dir.path().join("hf-metaspace");
    std::fs::create_dir_all(&meta_dir).expect("dir");
    let mut j: Value = serde_json::from_str(hf.to_json()).expect("tokenizer.json");
    j["normalizer"] = Value::Null;
    j["pre_tokenizer"] = serde_json::json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false});
    std::fs::write(meta_dir.join("tokenizer.json"), j.to_string()).expect("write");
    let meta = Tokenizer::from_hf_dir(&meta_dir).expect("the Metaspace tokenizer.json loads");
    let user_defined = ["<sep>", "[[tool]]"];
    let mut hf_checked = 0;
    for c in encode {
        let text = c["text"].as_str().unwrap();
        if user_defined.iter().any(|u| text.contains(u)) {
            continue;
        }
        let want = ids(&c["ids"]);
        let got = meta.encode_plain(text).expect("encode");
        if got != want {
            failures.push(format!("tokenizer.json (Metaspace): encode {}: lava {got:?}, sentencepiece {want:?}", show(text)));
        }
        let got = hf.encode_plain(text).expect("encode");
        if got != want {
            failures.push(format!("tokenizer.json: encode {}: lava {got:?}, sentencepiece {want:?}", show(text)));
        }
        let back = hf.decode(&want).expect("decode");
        if back != c["decoded"].as_str().unwrap() {
            failures.push(format!("tokenizer.json: decode of {}: {}", show(text), show(&back)));
        }
        if !specials.iter().any(|s| text.contains(s)) {
            let got = hf.encode(text).expect("encode");
            if got != want {
                failures.push(format!("tokenizer.json: encode (control tokens recognised) {}: {got:?}", show(text)));
            }
        }
        hf_checked += 1;
    }
    assert!(
        failures.is_empty(),
        "{} mismatches with sentencepiece (of {} encode and {} decode cases, {hf_checked} through each tokenizer.json):\n{}",
        failures.len(),
        encode.len(),
        decode.len(),
        failures.iter().take(30).cloned().collect::<Vec<_>>().join("\n")
    );
    eprintln!(
        "sentencepiece oracle: {} encode and {} decode cases match ({hf_checked} also through the exported tokenizer.json and its Metaspace form)",
        encode.len(),
        decode.len()
    );
}
