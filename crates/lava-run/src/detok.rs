//! Incremental detokenization: from generated token ids to the text that is
//! final so far. A token can end in the middle of a character (its bytes
//! decode to U+FFFD until the rest arrives): that character is held back, and
//! dropped if the generation ends inside it. `stop` strings end the text
//! before the first occurrence of any; text that could be the start of one
//! is held back until it is known not to be.

use std::sync::Arc;

use lava_llama::Tokenizer;

/// What one more token adds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delta {
    /// New text to send (may be empty).
    pub text: String,
    /// A stop string was reached: nothing more is sent.
    pub stopped: bool,
}

/// The text of one generation, built token by token.
pub struct TextAssembler {
    tokenizer: Arc<Tokenizer>,
    stop: Vec<String>,
    /// Control tokens written as their spelling (decoding drops the others).
    kept: Vec<(u32, String)>,
    ids: Vec<u32>,
    /// Bytes of the decoded text already handed out.
    sent: usize,
    stopped: bool,
}

impl TextAssembler {
    /// An empty text ending at any of `stop`.
    pub fn new(tokenizer: Arc<Tokenizer>, stop: Vec<String>) -> Self {
        Self { tokenizer, stop, kept: Vec::new(), ids: Vec::new(), sent: 0, stopped: false }
    }

    /// Writes these control tokens as their spelling instead of dropping
    /// them (Qwen2.5's `<tool_call>` delimiters, for the calls to be parsed).
    pub fn keep(&mut self, kept: Vec<(u32, String)>) {
        self.kept = kept;
    }

    /// The text of `ids`, kept control tokens spelled out.
    fn decode(&self, ids: &[u32]) -> Result<String, lava_llama::ModelError> {
        if self.kept.is_empty() {
            return self.tokenizer.decode(ids);
        }
        let mut text = String::new();
        for run in ids.split_inclusive(|id| self.kept.iter().any(|(k, _)| k == id)) {
            let (last, head) = run.split_last().map_or((None, run), |(l, h)| (Some(l), h));
            match last.and_then(|l| self.kept.iter().find(|(k, _)| k == l)) {
                Some((_, spelling)) => {
                    text.push_str(&self.tokenizer.decode(head)?);
                    text.push_str(spelling);
                }
                None => text.push_str(&self.tokenizer.decode(run)?),
            }
        }
        Ok(text)
    }

    /// Tokens taken so far.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Bytes of the decoded text handed out so far.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// Takes one token; returns the text that is now final.
    pub fn push(&mut self, id: u32) -> Delta {
        if self.stopped {
            return Delta { text: String::new(), stopped: true };
        }
        self.ids.push(id);
        let Ok(text) = self.decode(&self.ids) else { return Delta::default() };
        // An incomplete character decodes to U+FFFD: wait for the next token.
        if text.ends_with('\u{fffd}') {
            return Delta::default();
        }
        self.advance(&text, false)
    }

    /// The generation ended: everything not yet sent (held-back text included),
    /// except an incomplete last character (a `max_tokens` cut inside its
    /// bytes), which is dropped as it was held back before: the text never
    /// ends with the U+FFFD it decodes to.
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let mut text = self.decode(&self.ids).unwrap_or_default();
        while text.len() > self.sent && text.ends_with('\u{fffd}') {
            text.truncate(text.len() - '\u{fffd}'.len_utf8());
        }
        let d = self.advance(&text, true);
        self.stopped = true;
        d.text
    }

    fn advance(&mut self, text: &str, last: bool) -> Delta {
        if text.len() < self.sent || !text.is_char_boundary(self.sent) {
            return Delta::default();
        }
        // The earliest stop string that starts in the unsent part's reach.
        let search_from = self.sent.saturating_sub(self.stop.iter().map(String::len).max().unwrap_or(0));
        let search_from = (0..=search_from).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        let hit = self.stop.iter().filter_map(|s| text[search_from..].find(s.as_str()).map(|i| search_from + i)).min();
        if let Some(at) = hit {
            self.stopped = true;
            let at = at.max(self.sent);
            let out = text[self.sent..at].to_string();
            self.sent = at;
            return Delta { text: out, stopped: true };
        }
        let mut end = text.len();
        if !last {
            // Hold back the longest tail that begins some stop string.
            for s in &self.stop {
                for k in (1..s.len()).rev() {
                    if k <= text.len() - self.sent && s.is_char_boundary(k) && text.ends_with(&s[..k]) {
                        end = end.min(text.len() - k);
                        break;
                    }
                }
            }
        }
        let out = text[self.sent..end].to_string();
        self.sent = end;
        Delta { text: out, stopped: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A byte-level BPE tokenizer without merges: token id `b` is byte `b`
    /// (GPT-2's byte-to-character map), so any cut inside a character is easy to make.
    fn bytes_tokenizer() -> Arc<Tokenizer> {
        let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~')).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
        let mut chars = printable.clone();
        let mut extra = 0;
        for b in 0..256u32 {
            if !printable.contains(&b) {
                printable.push(b);
                chars.push(256 + extra);
                extra += 1;
            }
        }
        let mut vocab = serde_json::Map::new();
        for (b, c) in printable.iter().zip(&chars) {
            vocab.insert(char::from_u32(*c).expect("char").to_string(), json!(b));
        }
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let t = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []},
        });
        Arc::new(Tokenizer::from_json(&t.to_string(), None).expect("tokenizer"))
    }

    fn ids(text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    #[test]
    fn a_cut_inside_a_character_is_held_back_to_the_end() {
        let tok = bytes_tokenizer();
        // Whole: "é" and "猫" come out when their last byte arrives.
        let mut t = TextAssembler::new(tok.clone(), Vec::new());
        let out: Vec<String> = ids("aé猫").into_iter().map(|id| t.push(id).text).collect();
        assert_eq!(out, ["a", "", "é", "", "", "猫"]);
        assert_eq!(t.finish(), "");
        // Cut after 1 of 2 bytes, and after 2 of 3: no U+FFFD at the end.
        for (text, keep, want) in [("aé", 2, "a"), ("ab猫", 4, "ab"), ("猫", 1, "")] {
            let mut t = TextAssembler::new(tok.clone(), Vec::new());
            let mut all = String::new();
            for id in &ids(text)[..keep] {
                all.push_str(&t.push(*id).text);
            }
            all.push_str(&t.finish());
            assert_eq!(all, want, "{text:?} cut after {keep} bytes");
        }
        // A stop string still ends the text.
        let mut t = TextAssembler::new(tok, vec!["b".into()]);
        let d: Vec<Delta> = ids("aéb").into_iter().map(|id| t.push(id)).collect();
        assert_eq!(d.last(), Some(&Delta { text: String::new(), stopped: true }));
        assert_eq!(d.iter().map(|d| d.text.as_str()).collect::<String>(), "aé");
    }

    #[test]
    fn a_character_split_across_tokens_comes_out_once_whole() {
        let tok = bytes_tokenizer();
        // "€" is three bytes (E2 82 AC): nothing until the third, then the character.
        let mut t = TextAssembler::new(tok.clone(), Vec::new());
        let out: Vec<String> = ids("x€y").into_iter().map(|id| t.push(id).text).collect();
        assert_eq!(out, ["x", "", "", "€", "y"]);
        assert_eq!((t.tokens(), t.sent()), (5, 5));
        // A 4-byte character cut by max_tokens after 3 of its bytes: the text ends before it.
        let mut t = TextAssembler::new(tok, Vec::new());
        let cut: Vec<String> = ids("ok\u{1F600}").into_iter().take(5).map(|id| t.push(id).text).collect();
        assert_eq!(cut, ["o", "k", "", "", ""]);
        assert_eq!(t.finish(), "");
        assert_eq!(t.sent(), 2);
    }
}
