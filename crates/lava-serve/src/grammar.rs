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
        // Plain text (control tokens' spellings stay text); bytes that are
        // not UTF-8 fall back to the table's greedy split.
        match std::str::from_utf8(s) {
            Ok(text) => self.tokenizer.encode_plain(text).unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
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
/// schema); `many`: one call or more, one per line (`parallel_tool_calls`).
pub fn tool_call_grammar(functions: &[(String, Value)], many: bool) -> TopLevelGrammar {
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
    let call = format!("call: \"<tool_call>\\n\" ({}) \"\\n</tool_call>\"\n", alternatives.join(" | "));
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
