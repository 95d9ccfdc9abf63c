//! Constrained decoding: `response_format` (`json_object`, `json_schema`)
//! and forced tool calls, through llguidance (the grammar engine of
//! llama.cpp and vLLM).
//!
//! llguidance works on bytes: its token table ([`TokTrie`]) is built here
//! from the tokenizer's vocabulary, each token as the bytes it stands for in
//! decoded text ([`Tokenizer::token_bytes`]: byte-level BPE pieces through
//! GPT-2's byte map, SentencePiece `▁` as a space and `<0xHH>` as its byte),
//! control tokens as llguidance's special-token marker (0xFF) followed by
//! their spelling, so no grammar's text can produce them. The stop tokens are
//! the table's end-of-sequence tokens: a grammar allows them exactly where
//! its text may end. Ids past the tokenizer's vocabulary (the padding rows of
//! the model's output) stand for nothing and are never allowed.
//!
//! A request's grammar is compiled on the HTTP side (a schema it cannot
//! enforce is a 400 naming the field); each choice gets its own
//! [`Constraint`], whose mask of allowed tokens the engine computes per
//! decode step, on another thread while the model runs.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use lava_llama::Tokenizer;
use serde_json::{json, Value};

use crate::error::ApiError;

/// The tokenizer as llguidance sees it.
struct LavaTokEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for LavaTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // The tokenizer's own split of the plain text (control tokens'
        // spellings stay text) when it spells exactly these bytes (a
        // SentencePiece dummy prefix space or an unknown-token fallback does
        // not); else the table's greedy split, which always does.
        let own = std::str::from_utf8(s).ok().and_then(|text| self.tokenizer.encode_plain(text).ok()).filter(|ids| {
            let mut bytes = Vec::with_capacity(s.len());
            for &id in ids {
                bytes.extend_from_slice(self.trie.token(id));
            }
            bytes == s
        });
        own.unwrap_or_else(|| self.trie.greedy_tokenize(s))
    }
}

/// Compiles grammars against one model's vocabulary (built once per server).
pub struct Grammars {
    factory: ParserFactory,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").field("vocab", &self.factory.tok_env().tok_trie().vocab_size()).finish()
    }
}

impl Grammars {
    /// The token table of `tokenizer` over `vocab` ids (the model's logits
    /// width), with `stop_tokens` as its end-of-sequence tokens.
    pub fn new(tokenizer: Arc<Tokenizer>, vocab: usize, stop_tokens: &[u32]) -> Result<Self, String> {
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| {
                if tokenizer.is_special_id(id) {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend(tokenizer.token_bytes(id).unwrap_or_default());
                    w
                } else {
                    tokenizer.token_bytes(id).unwrap_or_default()
                }
            })
            .collect();
        let stops: Vec<u32> = stop_tokens.iter().copied().filter(|&t| (t as usize) < vocab).collect();
        let Some(&first) = stops.first() else {
            return Err("the model has no stop token inside its vocabulary, so a grammar could not end".into());
        };
        let info = TokRxInfo::new(vocab as u32, first);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&stops);
        let env: TokEnv = Arc::new(LavaTokEnv { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| format!("cannot build the grammar engine's token table: {e}"))?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// Whether `spelling` is a control token of the vocabulary (a grammar
    /// names it as `<...>`, not as text).
    pub fn is_control_token(&self, spelling: &str) -> bool {
        let mut bytes = vec![TokTrie::SPECIAL_TOKEN_MARKER];
        bytes.extend_from_slice(spelling.as_bytes());
        self.factory.tok_env().tok_trie().token_id_at_bytes(&bytes).is_some()
    }

    /// Compiles `grammar`; an error (a schema feature llguidance cannot
    /// enforce, a grammar that matches nothing) is a 400 naming `field`.
    pub fn compile(&self, grammar: TopLevelGrammar, field: &str) -> Result<Constraint, ApiError> {
        let parser = self.factory.create_parser(grammar).map_err(|e| {
            ApiError::invalid_code(field, "invalid_schema", format!("{field} cannot be enforced: {}", one_line(&e.to_string())))
        })?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ApiError::invalid_code(field, "invalid_schema", format!("{field} cannot be enforced: {}", one_line(&e))));
        }
        Ok(Constraint { matcher, stops: self.factory.tok_env().tok_trie().eos_tokens().to_vec() })
    }
}

fn one_line(s: &str) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match s.char_indices().nth(400) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

/// How JSON is written under a grammar: no free whitespace (a model could
/// otherwise pad forever), `", "` and `": "` between items as `json.dumps`
/// writes them, the way models saw JSON in training.
fn json_layout() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// The grammar of `response_format` `json_schema` (`schema`) or
/// `json_object` (`None`: any JSON object).
pub fn json_grammar(schema: Option<&Value>) -> TopLevelGrammar {
    let mut schema = schema.cloned().unwrap_or_else(|| json!({"type": "object"}));
    if let Value::Object(o) = &mut schema {
        o.entry("x-guidance").or_insert_with(json_layout);
    }
    TopLevelGrammar::from_json_schema(schema)
}

/// The grammar of a forced tool call (`tool_choice` `required` or a named
/// function) in the Qwen2.5 / Hermes form the chat template asks for:
/// `<tool_call>\n{"name": NAME, "arguments": ARGS}\n</tool_call>`, ARGS
/// valid under the function's `parameters`; `functions`: (name, parameters
/// schema); `many`: one call or more, one per line (`parallel_tool_calls`);
/// `delimiter_tokens`: `<tool_call>` and `</tool_call>` are control tokens of
/// the vocabulary (Qwen2.5's GGUF), which the grammar then asks for as such.
pub fn tool_call_grammar(functions: &[(String, Value)], many: bool, delimiter_tokens: bool) -> TopLevelGrammar {
    let mut rules = String::new();
    let mut alternatives = Vec::new();
    for (i, (name, parameters)) in functions.iter().enumerate() {
        let mut schema = parameters.clone();
        if let Value::Object(o) = &mut schema {
            o.entry("x-guidance").or_insert_with(json_layout);
        }
        let head = format!("{{\"name\": {}, \"arguments\": ", Value::String(name.clone()));
        // Lark string literals take JSON's escapes.
        rules.push_str(&format!("call{i}: {} args{i} \"}}\"\nargs{i}: %json {}\n", Value::String(head), schema));
        alternatives.push(format!("call{i}"));
    }
    let (open, close) = if delimiter_tokens { ("<tool_call> \"\\n\"", "\"\\n\" </tool_call>") } else { ("\"<tool_call>\\n\"", "\"\\n</tool_call>\"") };
    let call = format!("call: {open} ({}) {close}\n", alternatives.join(" | "));
    let start = if many { "start: call (\"\\n\" call)*\n" } else { "start: call\n" };
    TopLevelGrammar::from_lark(format!("{start}{call}{rules}"))
}

/// A set of allowed token ids.
pub type Mask = llguidance::toktrie::SimpleVob;

/// One choice's grammar state: which tokens may come next.
pub struct Constraint {
    matcher: Matcher,
    stops: Vec<u32>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("stopped", &self.matcher.is_stopped()).finish()
    }
}

impl Clone for Constraint {
    fn clone(&self) -> Self {
        Self { matcher: self.matcher.deep_clone(), stops: self.stops.clone() }
    }
}

impl Constraint {
    /// The tokens allowed next (every stop token where the grammar may end;
    /// only those once it has ended).
    pub fn mask(&mut self) -> Result<Mask, String> {
        let mut m = self.matcher.compute_mask_or_eos().map_err(|e| format!("the grammar failed: {e}"))?;
        if self.stops.iter().any(|&t| m.is_allowed(t)) {
            for &t in &self.stops {
                m.allow_token(t);
            }
        }
        Ok(m)
    }

    /// Moves past `token` (which the last mask allowed).
    pub fn consume(&mut self, token: u32) -> Result<(), String> {
        self.matcher.consume_token(token).map_err(|e| format!("the grammar refused a token it allowed: {e}"))
    }
}

/// Sets every logit `mask` does not allow to minus infinity.
pub fn apply_mask(mask: &Mask, logits: &mut [f32]) {
    let words = mask.as_slice();
    for (i, l) in logits.iter_mut().enumerate() {
        if !words.get(i / 32).is_some_and(|w| w & (1 << (i % 32)) != 0) {
            *l = f32::NEG_INFINITY;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const END: u32 = 0;

    /// A vocabulary of single characters (printable ASCII and the newline)
    /// plus a few longer pieces and one control token, `<|im_end|>` (id 0).
    fn tokenizer() -> (Arc<Tokenizer>, Vec<String>) {
        let mut pieces: Vec<String> = vec!["<|im_end|>".into()];
        pieces.extend((0x20u8..0x7f).map(|b| (b as char).to_string()));
        pieces.push("\n".into());
        pieces.extend(["\"name\"", "<tool_call>", "</tool_call>", "}}", "12"].map(String::from));
        let vocab: serde_json::Map<String, Value> = pieces.iter().enumerate().map(|(i, p)| (p.clone(), json!(i))).collect();
        let j = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": END, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<|im_end|>"},
        });
        (Arc::new(Tokenizer::from_json(&j.to_string(), None).expect("tokenizer")), pieces)
    }

    /// Walks `c` picking, at each step, the allowed token `choose` prefers
    /// (by its piece), until a stop token; the text and the steps taken.
    fn walk(c: &mut Constraint, pieces: &[String], vocab: usize, choose: impl Fn(&[&str]) -> usize) -> (String, usize) {
        let mut text = String::new();
        for step in 0..400 {
            let mask = c.mask().expect("mask");
            let mut logits = vec![0.0f32; vocab];
            apply_mask(&mask, &mut logits);
            let allowed: Vec<usize> = (0..vocab).filter(|&i| logits[i] == 0.0).collect();
            assert!(!allowed.is_empty(), "no token allowed after {text:?}");
            assert!(allowed.iter().all(|&i| i < pieces.len()), "padding ids are never allowed");
            let names: Vec<&str> = allowed.iter().map(|&i| pieces[i].as_str()).collect();
            let t = allowed[choose(&names)];
            if t == END as usize {
                return (text, step);
            }
            text.push_str(&pieces[t]);
            c.consume(t as u32).expect("consume");
        }
        panic!("no end after 400 tokens: {text:?}");
    }

    #[test]
    fn a_schema_forces_valid_json_and_ends_only_when_complete() {
        let (tok, pieces) = tokenizer();
        // Three padding ids past the tokenizer's vocabulary, as a model's logits have.
        let vocab = pieces.len() + 3;
        let g = Grammars::new(tok, vocab, &[END]).expect("grammars");
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer", "minimum": 3, "maximum": 99}, "b": {"type": "string", "maxLength": 3}},
            "required": ["a", "b"], "additionalProperties": false});
        let c = g.compile(json_grammar(Some(&schema)), "schema").expect("compiles");
        // The first token: only `{` (the stop token is not allowed before the object closes).
        let first = c.clone().mask().expect("mask");
        let allowed: Vec<&str> = (0..pieces.len()).filter(|&i| first.is_allowed(i as u32)).map(|i| pieces[i].as_str()).collect();
        assert_eq!(allowed, ["{"]);
        // Prefer the last allowed piece (long ones, letters, `}`), then the first: both walks end in valid JSON.
        for choose in [|n: &[&str]| n.len() - 1, |_: &[&str]| 0usize] {
            let (text, _) = walk(&mut c.clone(), &pieces, vocab, choose);
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            assert!(v["a"].as_i64().is_some_and(|a| a >= 3), "{text}");
            assert!(v["b"].as_str().is_some_and(|b| b.chars().count() <= 3), "{text}");
            assert!(text.starts_with("{\"a\": "), "json.dumps separators: {text}");
        }
        // json_object: any object.
        let mut o = g.compile(json_grammar(None), "response_format").expect("compiles");
        let (text, _) = walk(&mut o, &pieces, vocab, |n| n.iter().position(|p| *p == "}").unwrap_or(0));
        assert_eq!(text, "{}");
        // What llguidance cannot enforce is refused, naming the field.
        let e = g.compile(json_grammar(Some(&json!({"type": "array", "uniqueItems": true}))), "response_format.json_schema.schema").expect_err("uniqueItems");
        assert_eq!((e.param.as_deref(), e.code), (Some("response_format.json_schema.schema"), Some("invalid_schema")));
        assert!(e.message.contains("uniqueItems"), "{}", e.message);
    }

    #[test]
    fn a_forced_tool_call_has_the_template_form_and_valid_arguments() {
        let (tok, pieces) = tokenizer();
        let g = Grammars::new(tok, pieces.len(), &[END]).expect("grammars");
        let params = json!({"type": "object", "properties": {"n": {"type": "integer", "maximum": 1000}}, "required": ["n"], "additionalProperties": false});
        let functions = [("get_x".to_string(), params.clone()), ("get_y".to_string(), params)];
        let mut c = g.compile(tool_call_grammar(&functions, false, g.is_control_token("<tool_call>")), "tools").expect("compiles");
        let (text, _) = walk(&mut c, &pieces, pieces.len(), |n| n.len() - 1);
        let (content, calls) = crate::tools::parse_calls(&text, &["get_x", "get_y"], "t");
        assert_eq!((content, calls.len()), (None, 1), "{text}");
        assert!(text.starts_with("<tool_call>\n{\"name\": \"get_") && text.ends_with("}\n</tool_call>"), "{text}");
        let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap_or("")).expect("arguments");
        assert!(args["n"].is_i64(), "{text}");
    }
}
