//! Tokenizer abstractions, so that this crate never depends on the model.
//!
//! * [`TokenCounter`] is all the synthetic generators need: how many tokens a text is.
//! * [`Tokenize`] (encode / decode) is needed where token ids are cut and re-assembled:
//!   LongBench's middle truncation and the classic needle-in-a-haystack insertion.
//!
//! Every type implementing [`Tokenize`] is a [`TokenCounter`] too (counting = length of
//! `encode`). Implementations must **not** add special tokens (no BOS/EOS) in `encode`, and
//! `decode` should skip special tokens: this is how the reference harnesses count
//! (RULER's `text_to_tokens`, gkamradt's `encode_text_to_tokens`).
//!
//! Two tiny implementations are provided for tests and smoke runs: [`WhitespaceCounter`]
//! (one token per whitespace-separated word) and [`CharTokenizer`] (one token per Unicode
//! scalar value).

/// Counts the tokens of a text, as the model's tokenizer would (without special tokens).
pub trait TokenCounter {
    /// Number of tokens `text` encodes to.
    fn count(&self, text: &str) -> usize;
}

/// A tokenizer that maps text to token ids and back.
pub trait Tokenize {
    /// Encodes `text` to token ids, without special tokens.
    fn encode(&self, text: &str) -> Vec<u32>;
    /// Decodes token ids to text, skipping special tokens.
    fn decode(&self, ids: &[u32]) -> String;
}

impl<T: Tokenize + ?Sized> TokenCounter for T {
    fn count(&self, text: &str) -> usize {
        self.encode(text).len()
    }
}

/// Test / smoke-run counter: one token per whitespace-separated word
/// (`str::split_whitespace`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WhitespaceCounter;

impl TokenCounter for WhitespaceCounter {
    fn count(&self, text: &str) -> usize {
        text.split_whitespace().count()
    }
}

/// Test / smoke-run tokenizer: one token per Unicode scalar value (the id is the code point).
/// Decoding skips ids that are not valid code points.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CharTokenizer;

impl Tokenize for CharTokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        text.chars().map(u32::from).collect()
    }

    fn decode(&self, ids: &[u32]) -> String {
        ids.iter().filter_map(|&id| char::from_u32(id)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_counter_counts_words() {
        assert_eq!(WhitespaceCounter.count("  a b\n\tc  "), 3);
        assert_eq!(WhitespaceCounter.count(""), 0);
    }

    #[test]
    fn char_tokenizer_round_trips_and_counts() {
        let t = CharTokenizer;
        let ids = t.encode("héllo.");
        assert_eq!(ids.len(), 6);
        assert_eq!(t.decode(&ids), "héllo.");
        assert_eq!(t.count("héllo."), 6);
        assert_eq!(t.decode(&[0xD800, u32::from('a')]), "a");
    }
}
