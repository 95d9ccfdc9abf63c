//! From the engine's events to the choices of an answer: each choice's text
//! (stop strings, [`TextAssembler`]), its log-probabilities and its finish,
//! the echoed prompt of `/v1/completions`, and the usage. The whole answer
//! and the streamed one are both built from the [`Piece`]s this gives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lava_llama::{TokenLogprob, Tokenizer};
use serde_json::{json, Map, Value};

use crate::api::{Endpoint, FinishReason, Usage};
use crate::engine::Event;
use crate::error::ApiError;
use lava_run::detok::TextAssembler;

/// One token's log-probability entry: its id, where its text starts in the
/// choice's text (characters), and its log-probabilities (`None`: the
/// prompt's first token, which has none).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The token.
    pub id: u32,
    /// Characters of the choice's text before it (counted over the tokens' bytes).
    pub offset: usize,
    /// Its log-probability and the most likely tokens'.
    pub logprob: Option<TokenLogprob>,
}

/// What a choice gained from one event: text, the entries of the tokens it
/// covers, and the finish if the choice ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The choice.
    pub index: usize,
    /// New text (may be empty).
    pub text: String,
    /// Log-probability entries that came with it (empty when not asked for).
    pub entries: Vec<Entry>,
    /// Set when the choice ended.
    pub finish: Option<FinishReason>,
}

/// The prompt to echo before each choice's text (`echo` of `/v1/completions`).
#[derive(Debug, Clone)]
pub struct Echo {
    /// Its text.
    pub text: String,
    /// Its token ids.
    pub ids: Vec<u32>,
}

struct Choice {
    text: TextAssembler,
    /// Entries not yet handed out (their text may be held back).
    pending: Vec<Entry>,
    /// Characters of the choice's text so far (for the next entry's offset).
    chars: usize,
    finish: Option<FinishReason>,
    kv_bytes: usize,
    kv_allocated_bytes: usize,
}

/// The answer's choices as events arrive.
pub struct Answer {
    tokenizer: Arc<Tokenizer>,
    choices: Vec<Choice>,
    stopped: Arc<[AtomicBool]>,
    echo: Option<Echo>,
    logprobs: bool,
    prompt_logprobs: bool,
    /// Usage so far (`completion_tokens` and the `kv_*` bytes filled by [`Answer::usage`]).
    usage: Usage,
}

/// Characters in `bytes` (UTF-8 lead bytes; a character cut between tokens
/// counts where it starts).
fn chars_in(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| (b & 0xC0) != 0x80).count()
}

impl Answer {
    /// An answer of `stopped.len()` choices, each ending at any of `stop`;
    /// `logprobs`: entries for generated tokens; `echo`: each choice starts
    /// with the prompt (with entries for its tokens when `prompt_logprobs`).
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        stop: Vec<String>,
        stopped: Arc<[AtomicBool]>,
        logprobs: bool,
        echo: Option<Echo>,
        prompt_logprobs: bool,
        usage: Usage,
    ) -> Self {
        let choices = (0..stopped.len())
            .map(|_| Choice {
                text: TextAssembler::new(tokenizer.clone(), stop.clone()),
                pending: Vec::new(),
                chars: 0,
                finish: None,
                kv_bytes: 0,
                kv_allocated_bytes: 0,
            })
            .collect();
        Self { tokenizer, choices, stopped, echo, logprobs, prompt_logprobs, usage }
    }

    /// Writes these control tokens of every choice as their spelling ([`TextAssembler::keep`]).
    pub fn keep(&mut self, kept: Vec<(u32, String)>) {
        for c in &mut self.choices {
            c.text.keep(kept.clone());
        }
    }

    /// Number of choices.
    pub fn n(&self) -> usize {
        self.choices.len()
    }

    /// Whether every choice has ended.
    pub fn done(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    /// The usage: completion tokens of all choices, the `kv_*` bytes summed over their caches.
    pub fn usage(&self) -> Usage {
        let mut u = self.usage;
        u.completion_tokens = self.choices.iter().map(|c| c.text.tokens()).sum();
        u.kv_bytes = self.choices.iter().map(|c| c.kv_bytes).sum();
        u.kv_allocated_bytes = self.choices.iter().map(|c| c.kv_allocated_bytes).sum();
        u
    }

    /// The pieces that open the choices: the echoed prompt, unless its
    /// log-probabilities are still to come (then [`Event::PromptLogprobs`] opens them).
    pub fn start(&mut self) -> Vec<Piece> {
        match &self.echo {
            Some(_) if !self.prompt_logprobs => self.echo_pieces(None),
            _ => Vec::new(),
        }
    }

    fn echo_pieces(&mut self, logprobs: Option<Vec<Option<TokenLogprob>>>) -> Vec<Piece> {
        let Some(echo) = &self.echo else { return Vec::new() };
        let mut entries = Vec::new();
        let mut chars = 0;
        for (k, &id) in echo.ids.iter().enumerate() {
            let logprob = logprobs.as_ref().and_then(|l| l.get(k).cloned().flatten());
            entries.push(Entry { id, offset: chars, logprob });
            chars += chars_in(&self.tokenizer.token_bytes(id).unwrap_or_default());
        }
        let chars = echo.text.chars().count();
        let text = echo.text.clone();
        let with_entries = logprobs.is_some();
        self.choices
            .iter_mut()
            .enumerate()
            .map(|(index, c)| {
                c.chars = chars;
                Piece { index, text: text.clone(), entries: if with_entries { entries.clone() } else { Vec::new() }, finish: None }
            })
            .collect()
    }

    /// Takes one event: the pieces it gives, or the failure that ends the answer.
    pub fn take(&mut self, event: Event) -> Result<Vec<Piece>, ApiError> {
        match event {
            Event::Admitted { .. } => Ok(Vec::new()),
            Event::Failed(e) => Err(e.into()),
            Event::PromptLogprobs(l) => Ok(if self.echo.is_some() { self.echo_pieces(Some(l)) } else { Vec::new() }),
            Event::Token { index, id, logprob, kv_bytes, kv_allocated_bytes } => {
                let logprobs = self.logprobs;
                let tokenizer = self.tokenizer.clone();
                let Some(c) = self.choices.get_mut(index).filter(|c| c.finish.is_none()) else { return Ok(Vec::new()) };
                c.kv_bytes = kv_bytes;
                c.kv_allocated_bytes = kv_allocated_bytes;
                if logprobs {
                    c.pending.push(Entry { id, offset: c.chars, logprob });
                }
                c.chars += chars_in(&tokenizer.token_bytes(id).unwrap_or_default());
                let d = c.text.push(id);
                if d.stopped {
                    if let Some(flag) = self.stopped.get(index) {
                        flag.store(true, Ordering::Relaxed);
                    }
                    c.finish = Some(FinishReason::Stop);
                    return Ok(vec![Piece { index, text: d.text, entries: std::mem::take(&mut c.pending), finish: c.finish }]);
                }
                if d.text.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(vec![Piece { index, text: d.text, entries: std::mem::take(&mut c.pending), finish: None }])
            }
            Event::Finished { index, reason, kv_bytes, kv_allocated_bytes } => {
                let Some(c) = self.choices.get_mut(index).filter(|c| c.finish.is_none()) else { return Ok(Vec::new()) };
                c.kv_bytes = kv_bytes;
                c.kv_allocated_bytes = kv_allocated_bytes;
                c.finish = Some(reason);
                Ok(vec![Piece { index, text: c.text.finish(), entries: std::mem::take(&mut c.pending), finish: Some(reason) }])
            }
        }
    }
}

/// A log-probability as JSON: OpenAI's floor of -9999 for what cannot be
/// written (minus infinity, NaN).
fn lp_json(lp: f32) -> Value {
    if lp.is_finite() {
        json!(lp)
    } else {
        json!(-9999.0)
    }
}

/// The `logprobs` object of a chat choice (or chunk) for `entries`:
/// `{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}], "refusal": null}`.
pub fn chat_logprobs(tokenizer: &Tokenizer, entries: &[Entry]) -> Value {
    let token = |id: u32| {
        let bytes = tokenizer.token_bytes(id).unwrap_or_default();
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    };
    let content: Vec<Value> = entries
        .iter()
        .filter_map(|e| {
            let lp = e.logprob.as_ref()?;
            let (text, bytes) = token(e.id);
            let top: Vec<Value> = lp
                .top
                .iter()
                .map(|&(id, l)| {
                    let (text, bytes) = token(id);
                    json!({"token": text, "logprob": lp_json(l), "bytes": bytes})
                })
                .collect();
            Some(json!({"token": text, "logprob": lp_json(lp.logprob), "bytes": bytes, "top_logprobs": top}))
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// The `logprobs` object of a completion choice (or chunk) for `entries`:
/// `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`, where each
/// `top_logprobs` entry maps the most likely tokens and the chosen one to
/// their log-probabilities (OpenAI's "up to logprobs + 1"), `null` for the
/// prompt's first token.
pub fn completion_logprobs(tokenizer: &Tokenizer, entries: &[Entry]) -> Value {
    let text = |id: u32| String::from_utf8_lossy(&tokenizer.token_bytes(id).unwrap_or_default()).into_owned();
    let mut tokens = Vec::with_capacity(entries.len());
    let mut token_logprobs = Vec::with_capacity(entries.len());
    let mut top_logprobs = Vec::with_capacity(entries.len());
    let mut offsets = Vec::with_capacity(entries.len());
    for e in entries {
        let t = text(e.id);
        offsets.push(json!(e.offset));
        match &e.logprob {
            Some(lp) => {
                token_logprobs.push(lp_json(lp.logprob));
                let mut top = Map::new();
                for &(id, l) in &lp.top {
                    top.entry(text(id)).or_insert_with(|| lp_json(l));
                }
                top.entry(t.clone()).or_insert_with(|| lp_json(lp.logprob));
                top_logprobs.push(Value::Object(top));
            }
            None => {
                token_logprobs.push(Value::Null);
                top_logprobs.push(Value::Null);
            }
        }
        tokens.push(json!(t));
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets})
}

/// The `logprobs` value of a choice or chunk of `endpoint` for `entries`
/// (`null` when log-probabilities were not asked for).
pub fn logprobs_json(endpoint: Endpoint, tokenizer: &Tokenizer, asked: bool, entries: &[Entry]) -> Value {
    match (asked, endpoint) {
        (false, _) => Value::Null,
        (true, Endpoint::Chat) => chat_logprobs(tokenizer, entries),
        (true, Endpoint::Completion) => completion_logprobs(tokenizer, entries),
    }
}
