//! From generated token ids to the text sent: incremental decoding (a token
//! can end in the middle of a character) and `stop` strings (the text ends
//! before the first occurrence of any; text that could be the start of one is
//! held back until it is known not to be).

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
    ids: Vec<u32>,
    /// Bytes of the decoded text already handed out.
    sent: usize,
    stopped: bool,
}

impl TextAssembler {
    /// An empty text ending at any of `stop`.
    pub fn new(tokenizer: Arc<Tokenizer>, stop: Vec<String>) -> Self {
        Self { tokenizer, stop, ids: Vec::new(), sent: 0, stopped: false }
    }

    /// Tokens taken so far.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// Takes one token; returns the text that is now final.
    pub fn push(&mut self, id: u32) -> Delta {
        if self.stopped {
            return Delta { text: String::new(), stopped: true };
        }
        self.ids.push(id);
        let Ok(text) = self.tokenizer.decode(&self.ids) else { return Delta::default() };
        // An incomplete character decodes to U+FFFD: wait for the next token.
        if text.ends_with('\u{fffd}') {
            return Delta::default();
        }
        self.advance(&text, false)
    }

    /// The generation ended: everything not yet sent (held-back text included).
    pub fn finish(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        let text = self.tokenizer.decode(&self.ids).unwrap_or_default();
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
