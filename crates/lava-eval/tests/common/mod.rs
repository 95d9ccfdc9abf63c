//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `shared/data` next to the repository (`$LAVA_SHARED_DATA` overrides), if present.
pub fn shared_data() -> Option<PathBuf> {
    let p = match std::env::var_os("LAVA_SHARED_DATA") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    };
    p.is_dir().then_some(p)
}

/// A deterministic essay-like text (sentences of common words), for when the real essays are
/// not available.
pub fn synthetic_essay(sentences: usize) -> String {
    let words = lava_eval::ruler::words::NOUNS;
    let mut s = String::new();
    for i in 0..sentences {
        let n = 6 + i % 9;
        let mut sent: Vec<&str> = (0..n).map(|j| words[(i * 31 + j * 7) % words.len()]).collect();
        let first = sent[0].to_string();
        let cap = first[..1].to_uppercase() + &first[1..];
        sent[0] = &cap;
        s.push_str(&sent.join(" "));
        s.push_str(if i % 5 == 4 { "?\n" } else { ". " });
    }
    s
}
