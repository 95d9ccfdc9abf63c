//! SentencePiece BPE tokenizer: GGUF files whose `tokenizer.ggml.model` is
//! `llama` (Llama 2, Mistral, TinyLlama...).
//!
//! Encoding is sentencepiece's `bpe_model.cc` (and llama.cpp's SPM tokenizer):
//! spaces become U+2581, a dummy U+2581 goes in front (`add_space_prefix`),
//! the text is split into characters (user-defined pieces, matched in the text
//! as written before its spaces become U+2581, whole and never merged),
//! and the adjacent pair whose concatenation is a piece of the vocabulary with
//! the highest score is merged until none is left (ties: leftmost). A
//! character that is no piece becomes its UTF-8 bytes as `<0xHH>` tokens.
//! Decoding follows sentencepiece's `Decode`: U+2581 back to spaces, byte
//! tokens reassembled into UTF-8 (U+FFFD per invalid byte), control tokens
//! invisible, the unknown token ` ⁇ `, and the dummy prefix space of the first
//! piece dropped.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use crate::error::ModelError;

/// The space marker.
pub(crate) const SPACE: char = '\u{2581}';
/// The space marker as a string.
const SPACE_STR: &str = "\u{2581}";
/// What sentencepiece decodes the unknown token to.
const UNKNOWN_SURFACE: &str = " \u{2047} ";

/// Token types of `tokenizer.ggml.token_type` (sentencepiece's piece types).
pub(crate) mod kind {
    pub const NORMAL: u8 = 1;
    pub const UNKNOWN: u8 = 2;
    pub const CONTROL: u8 = 3;
    pub const USER_DEFINED: u8 = 4;
    pub const UNUSED: u8 = 5;
    pub const BYTE: u8 = 6;
}

/// A SentencePiece BPE vocabulary.
#[derive(Debug, Clone)]
pub(crate) struct Spm {
    pieces: Vec<String>,
    scores: Vec<f32>,
    kinds: Vec<u8>,
    /// Normal, user-defined and unused pieces: what merges may form
    /// (sentencepiece's `pieces_`).
    mergeable: HashMap<String, u32>,
    /// Control, unknown and byte pieces (sentencepiece's `reserved_id_map_`).
    reserved: HashMap<String, u32>,
    /// The value of each byte token.
    byte_of: HashMap<u32, u8>,
    byte_id: [Option<u32>; 256],
    /// User-defined pieces, longest first.
    user_defined: Vec<String>,
    unk: Option<u32>,
    pub(crate) add_space_prefix: bool,
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
    freeze: bool,
}

/// A candidate merge of symbols `left` and `right` into a piece of `size` bytes.
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pair {}
impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pair {
    /// Highest score first; ties: the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

impl Spm {
    /// Builds the vocabulary from the pieces, their scores and types (GGUF
    /// `tokenizer.ggml.tokens`, `.scores`, `.token_type`).
    pub(crate) fn new(pieces: Vec<String>, scores: Vec<f32>, kinds: Vec<u8>, add_space_prefix: bool) -> Result<Self, ModelError> {
        let n = pieces.len();
        if scores.len() != n || kinds.len() != n {
            return Err(ModelError::Tokenizer(format!(
                "the GGUF file has {n} tokens but {} scores and {} token types; the file is inconsistent",
                scores.len(),
                kinds.len()
            )));
        }
        let mut mergeable = HashMap::with_capacity(n);
        let mut reserved = HashMap::new();
        let mut byte_of = HashMap::new();
        let mut byte_id = [None; 256];
        let mut user_defined = Vec::new();
        let mut unk = None;
        for (id, (piece, &k)) in pieces.iter().zip(&kinds).enumerate() {
            let id = id as u32;
            let map = match k {
                kind::NORMAL | kind::USER_DEFINED | kind::UNUSED => &mut mergeable,
                kind::UNKNOWN | kind::CONTROL | kind::BYTE => &mut reserved,
                other => {
                    return Err(ModelError::Tokenizer(format!(
                        "token {id} ({piece:?}) has token type {other}, which SentencePiece does not have (1 to 6)"
                    )))
                }
            };
            // The first of duplicate pieces wins, as in llama.cpp.
            map.entry(piece.clone()).or_insert(id);
            match k {
                kind::USER_DEFINED if !piece.is_empty() => user_defined.push(piece.clone()),
                kind::UNKNOWN => {
                    unk.get_or_insert(id);
                }
                kind::BYTE => {
                    let b = parse_byte(piece).ok_or_else(|| {
                        ModelError::Tokenizer(format!(
                            "token {id} ({piece:?}) is a byte token but is not spelled <0xHH>; the GGUF file is inconsistent"
                        ))
                    })?;
                    byte_of.insert(id, b);
                    byte_id[b as usize].get_or_insert(id);
                }
                _ => {}
            }
        }
        user_defined.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Ok(Self { pieces, scores, kinds, mergeable, reserved, byte_of, byte_id, user_defined, unk, add_space_prefix })
    }

    pub(crate) fn len(&self) -> usize {
        self.pieces.len()
    }

    pub(crate) fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    pub(crate) fn kind(&self, id: u32) -> Option<u8> {
        self.kinds.get(id as usize).copied()
    }

    /// The id of a piece (sentencepiece's `PieceToId`, without the unknown default).
    pub(crate) fn id(&self, piece: &str) -> Option<u32> {
        self.mergeable.get(piece).or_else(|| self.reserved.get(piece)).copied()
    }

    /// Whether merges may form `id` (normal, user-defined and unused pieces).
    pub(crate) fn is_mergeable(&self, id: u32) -> bool {
        matches!(self.kind(id), Some(kind::NORMAL | kind::USER_DEFINED | kind::UNUSED))
    }

    /// Encodes one run of text (no control tokens in it), appending to `out`;
    /// `prefix`: put the dummy U+2581 in front (when `add_space_prefix`).
    pub(crate) fn encode_into(&self, text: &str, prefix: bool, out: &mut Vec<u32>) -> Result<(), ModelError> {
        if text.is_empty() {
            return Ok(());
        }
        // Characters (spaces as U+2581), user-defined pieces whole (and frozen).
        // A user-defined piece is matched in the text as written, before spaces
        // become U+2581, as llama.cpp partitions the text: Gemma's pieces of
        // runs of spaces are such pieces.
        let mut s = String::with_capacity(text.len() * 3 + 3);
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len() + 1);
        let mut push = |s: &mut String, piece: &str, freeze: bool| {
            let i = symbols.len();
            if let Some(prev) = i.checked_sub(1) {
                symbols[prev].next = Some(i);
            }
            symbols.push(Symbol { start: s.len(), len: piece.len(), prev: i.checked_sub(1), next: None, freeze });
            s.push_str(piece);
        };
        if prefix && self.add_space_prefix {
            push(&mut s, SPACE_STR, false);
        }
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            match self.user_defined.iter().find(|p| rest.starts_with(p.as_str())) {
                Some(p) => {
                    push(&mut s, p, true);
                    rest = &rest[p.len()..];
                }
                None => {
                    let mut buf = [0u8; 4];
                    push(&mut s, if c == ' ' { SPACE_STR } else { c.encode_utf8(&mut buf) }, false);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        let s = s.as_str();

        let mut agenda = BinaryHeap::new();
        // Pieces of unused type formed by a merge, and the two they came from.
        let mut rev_merge: HashMap<&str, (&str, &str)> = HashMap::new();
        let text_of = |sym: &Symbol| &s[sym.start..sym.start + sym.len];
        for i in 1..symbols.len() {
            self.add_pair(s, &symbols, &mut agenda, &mut rev_merge, Some(i - 1), Some(i));
        }
        while let Some(top) = agenda.pop() {
            let (l, r) = (symbols[top.left], symbols[top.right]);
            // Stale: one side was merged away since.
            if l.len == 0 || r.len == 0 || l.len + r.len != top.size {
                continue;
            }
            symbols[top.left].len += r.len;
            symbols[top.left].next = r.next;
            if let Some(n) = r.next {
                symbols[n].prev = Some(top.left);
            }
            symbols[top.right].len = 0;
            let prev = symbols[top.left].prev;
            let next = symbols[top.left].next;
            self.add_pair(s, &symbols, &mut agenda, &mut rev_merge, prev, Some(top.left));
            self.add_pair(s, &symbols, &mut agenda, &mut rev_merge, Some(top.left), next);
        }

        let mut pieces = Vec::new();
        let mut i = Some(0);
        while let Some(k) = i {
            self.resegment(text_of(&symbols[k]), &rev_merge, &mut pieces);
            i = symbols[k].next;
        }
        let mut last_unk = false;
        for piece in pieces {
            match self.id(piece).filter(|&id| self.kinds[id as usize] != kind::UNKNOWN) {
                Some(id) => {
                    out.push(id);
                    last_unk = false;
                }
                None if self.byte_id.iter().any(Option::is_some) => {
                    for b in piece.bytes() {
                        out.push(self.byte_id[b as usize].or(self.unk).ok_or_else(|| self.cannot_encode(piece))?);
                    }
                }
                None => {
                    // No byte fallback: one unknown token for a run of unknown pieces.
                    if !last_unk {
                        out.push(self.unk.ok_or_else(|| self.cannot_encode(piece))?);
                    }
                    last_unk = true;
                }
            }
        }
        Ok(())
    }

    /// Puts the merge of symbols `left` and `right` on the agenda if it forms
    /// a mergeable piece (and neither side is a user-defined piece).
    fn add_pair<'a>(
        &self,
        s: &'a str,
        symbols: &[Symbol],
        agenda: &mut BinaryHeap<Pair>,
        rev_merge: &mut HashMap<&'a str, (&'a str, &'a str)>,
        left: Option<usize>,
        right: Option<usize>,
    ) {
        let (Some(l), Some(r)) = (left, right) else { return };
        let (ls, rs) = (&symbols[l], &symbols[r]);
        if ls.freeze || rs.freeze {
            return;
        }
        let piece = &s[ls.start..ls.start + ls.len + rs.len];
        let Some(&id) = self.mergeable.get(piece) else { return };
        agenda.push(Pair { score: self.scores[id as usize], left: l, right: r, size: piece.len() });
        if self.kinds[id as usize] == kind::UNUSED {
            rev_merge.insert(piece, (&s[ls.start..ls.start + ls.len], &s[rs.start..rs.start + rs.len]));
        }
    }

    fn cannot_encode(&self, piece: &str) -> ModelError {
        ModelError::Tokenizer(format!(
            "cannot encode {piece:?}: it is not in the vocabulary, which has neither its bytes as <0xHH> tokens nor an unknown token"
        ))
    }

    /// Splits pieces of unused type back into the two pieces they were merged from.
    fn resegment<'a>(&self, w: &'a str, rev_merge: &HashMap<&'a str, (&'a str, &'a str)>, out: &mut Vec<&'a str>) {
        let unused = self.mergeable.get(w).is_some_and(|&id| self.kinds[id as usize] == kind::UNUSED);
        match rev_merge.get(w) {
            Some(&(l, r)) if unused => {
                self.resegment(l, rev_merge, out);
                self.resegment(r, rev_merge, out);
            }
            _ => out.push(w),
        }
    }

    /// Decodes ids (those out of the vocabulary are skipped).
    pub(crate) fn decode(&self, ids: &[u32]) -> String {
        let mut text = String::new();
        let mut bytes = Vec::new();
        let mut is_bos_ws = true;
        let mut bos_ws_seen = false;
        for &id in ids {
            let Some(piece) = self.piece(id) else { continue };
            if let Some(&b) = self.byte_of.get(&id) {
                bytes.push(b);
                continue;
            }
            flush_bytes(&mut bytes, &mut text);
            if bos_ws_seen || !text.is_empty() {
                is_bos_ws = false;
            }
            bos_ws_seen = false;
            match self.kinds[id as usize] {
                kind::CONTROL => {}
                kind::UNKNOWN => text.push_str(UNKNOWN_SURFACE),
                _ => {
                    let mut piece = piece;
                    if is_bos_ws && self.add_space_prefix {
                        if let Some(rest) = piece.strip_prefix(SPACE) {
                            piece = rest;
                            bos_ws_seen = true;
                        }
                    }
                    text.push_str(&piece.replace(SPACE, " "));
                }
            }
        }
        flush_bytes(&mut bytes, &mut text);
        text
    }

    /// The merges of a Hugging Face BPE equivalent: every split of a mergeable
    /// piece into two mergeable pieces, the highest-scoring merged piece first
    /// (ties: by the ids of the left and right pieces), as `transformers`'
    /// converter writes them.
    pub(crate) fn hf_merges(&self) -> Vec<(String, String)> {
        let mut merges: Vec<(f32, u32, u32, u32)> = Vec::new();
        for (id, piece) in self.pieces.iter().enumerate() {
            let id = id as u32;
            if !self.is_mergeable(id) || self.kinds[id as usize] == kind::USER_DEFINED {
                continue;
            }
            for (at, _) in piece.char_indices().skip(1) {
                let (l, r) = piece.split_at(at);
                if let (Some(&li), Some(&ri)) = (self.mergeable.get(l), self.mergeable.get(r)) {
                    merges.push((self.scores[id as usize], id, li, ri));
                }
            }
        }
        merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.2.cmp(&b.2)).then(a.3.cmp(&b.3)));
        merges.into_iter().map(|(_, _, l, r)| (self.pieces[l as usize].clone(), self.pieces[r as usize].clone())).collect()
    }
}

/// The byte of a `<0xHH>` piece.
pub(crate) fn parse_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Appends `bytes` as UTF-8, one U+FFFD per byte that starts no valid
/// character (sentencepiece's rule), and empties it.
fn flush_bytes(bytes: &mut Vec<u8>, text: &mut String) {
    let mut at = 0;
    while at < bytes.len() {
        let width = match bytes[at] {
            0x00..=0x7f => 1,
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 0,
        };
        match bytes.get(at..at + width).filter(|_| width > 0).and_then(|c| std::str::from_utf8(c).ok()) {
            Some(c) => {
                text.push_str(c);
                at += width;
            }
            None => {
                text.push('\u{FFFD}');
                at += 1;
            }
        }
    }
    bytes.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(pieces: &[(&str, f32, u8)]) -> Spm {
        let mut p: Vec<String> = pieces.iter().map(|x| x.0.to_string()).collect();
        let mut s: Vec<f32> = pieces.iter().map(|x| x.1).collect();
        let mut k: Vec<u8> = pieces.iter().map(|x| x.2).collect();
        for b in 0..=255u8 {
            p.push(format!("<0x{b:02X}>"));
            s.push(0.0);
            k.push(kind::BYTE);
        }
        Spm::new(p, s, k, true).unwrap()
    }

    #[test]
    fn merges_by_score_then_leftmost() {
        let v = vocab(&[("<unk>", 0.0, 2), ("▁", -1.0, 1), ("a", -2.0, 1), ("b", -3.0, 1), ("ab", -5.0, 1), ("▁a", -4.0, 1), ("ba", -5.0, 1)]);
        let mut out = Vec::new();
        v.encode_into("aba", true, &mut out).unwrap();
        // "▁a" (-4) first, then "ba" (-5): ▁a + ba.
        assert_eq!(out, vec![5, 6]);
        out.clear();
        v.encode_into("bab", false, &mut out).unwrap();
        // "ba" and "ab" tie at -5: the leftmost ("ba") wins.
        assert_eq!(out, vec![6, 3]);
        out.clear();
        v.encode_into("a\u{e9}", false, &mut out).unwrap();
        assert_eq!(out, vec![2, 7 + 0xc3, 7 + 0xa9]);
        assert_eq!(v.decode(&out), "a\u{e9}");
    }

    /// Gemma's vocabulary has user-defined pieces of raw spaces (`"   "`, not
    /// U+2581): llama.cpp matches them in the text as written, so a run of
    /// three spaces is that one piece, and a single space is still U+2581.
    #[test]
    fn user_defined_pieces_of_spaces_match_the_text_as_written() {
        let v = vocab(&[("<unk>", 0.0, 2), ("▁", -1.0, 1), ("a", -2.0, 1), ("   ", 0.0, 4), ("▁a", -3.0, 1)]);
        let mut out = Vec::new();
        v.encode_into("a   a a", false, &mut out).unwrap();
        // a, "   " (user-defined, frozen), a, then " a" merges to "▁a".
        assert_eq!(out, vec![2, 3, 2, 4]);
        assert_eq!(v.decode(&out), "a   a a");
    }

    #[test]
    fn invalid_bytes_decode_to_one_replacement_each() {
        let mut t = String::new();
        flush_bytes(&mut vec![0xe2, 0x82, 0x41, 0xff, 0xe2, 0x82, 0xac], &mut t);
        assert_eq!(t, "\u{FFFD}\u{FFFD}A\u{FFFD}\u{20ac}");
    }
}
