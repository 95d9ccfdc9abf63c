//! From a request's text to the token ids the model prefills: the chat
//! template, the split before the question (question-agnostic compression) and
//! the rule that message text never becomes control tokens.
//!
//! The template is rendered once with a placeholder in place of each message's
//! text, so the rendering is small whatever the prompt's length (its fuel and
//! output limits bound the template's own work), the placeholders say exactly
//! where each message's text sits (the split before the question falls inside
//! the user's text, never inside the template), and the template's text (with
//! its control tokens) is encoded apart from the message text, which is encoded
//! as plain text unless [`Prompt::allow_special`] says otherwise. A template
//! therefore sees placeholders, not the message text: filters applied to the
//! content (`| trim`) do not reach it.

use crate::error::ModelError;
use crate::tokenizer::{Message, Tokenizer};

/// A prompt before tokenization.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prompt<'a> {
    /// Optional system message (skipped when empty).
    pub system: Option<&'a str>,
    /// The user's text.
    pub user: &'a str,
    /// Text put after the rendered prompt: the start of the answer.
    pub answer_prefix: &'a str,
    /// Render with the model's chat template (an error if it has none); else
    /// plain text: the system message, a newline, the user's text, the answer
    /// prefix.
    pub chat: bool,
    /// Question-agnostic compression: split before the last occurrence of this
    /// text in [`user`](Self::user); what comes from there on (with whatever the
    /// template puts after it) is prefilled after the context is compressed.
    pub question: Option<&'a str>,
    /// Recognise control tokens (`<|im_start|>`...) written in the system and
    /// user text. Off by default, so a document cannot forge a turn.
    pub allow_special: bool,
}

/// A tokenized prompt: what is prefilled and compressed, and what follows it
/// (empty unless [`Prompt::question`] split it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTokens {
    /// The context: prefilled first, then compressed.
    pub context: Vec<u32>,
    /// From the question on: prefilled after the context's compression.
    pub suffix: Vec<u32>,
}

impl PromptTokens {
    /// Prompt tokens in all.
    pub fn len(&self) -> usize {
        self.context.len() + self.suffix.len()
    }

    /// Whether there are no prompt tokens at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A piece of the rendered prompt: template text (control tokens recognised)
/// or message text.
enum Piece<'a> {
    Template(String),
    Text(&'a str),
}

/// Placeholders for the message texts: private-use code points that no
/// tokenizer's control token and no sensible template contains.
const PLACEHOLDERS: [&str; 3] = ["\u{10FFFD}lava-system\u{10FFFD}", "\u{10FFFD}lava-user\u{10FFFD}", "\u{10FFFD}lava-question\u{10FFFD}"];

impl Tokenizer {
    /// Tokenizes `prompt` (see the module docs for how the template, the split
    /// and control tokens are handled). The model's BOS token is put first when
    /// the model asks for one ([`Tokenizer::adds_bos`]) and the prompt does not
    /// already start with it; its EOS token last when it asks for that
    /// ([`Tokenizer::adds_eos`]).
    pub fn encode_prompt(&self, prompt: &Prompt<'_>) -> Result<PromptTokens, ModelError> {
        let system = prompt.system.filter(|s| !s.is_empty());
        let (user, question) = split_at_question(prompt.user, prompt.question)?;
        let mut pieces = Vec::new();
        // Index of the first piece of the suffix (the question's text).
        let mut split = None;
        if prompt.chat {
            let mut messages = Vec::new();
            if system.is_some() {
                messages.push(Message { role: "system".into(), content: PLACEHOLDERS[0].into() });
            }
            let content = match question {
                Some(_) => format!("{}{}", PLACEHOLDERS[1], PLACEHOLDERS[2]),
                None => PLACEHOLDERS[1].to_string(),
            };
            messages.push(Message { role: "user".into(), content });
            let rendered = self.apply_chat_template(&messages)?;
            let texts = [system, Some(user), question];
            let mut rest = rendered.as_str();
            for (i, (placeholder, text)) in PLACEHOLDERS.iter().zip(texts).enumerate() {
                let Some(text) = text else { continue };
                if rendered.matches(placeholder).count() != 1 {
                    return Err(template_mangles("repeats or drops"));
                }
                let at = rest.find(placeholder).ok_or_else(|| template_mangles("reorders"))?;
                pieces.push(Piece::Template(rest[..at].to_string()));
                if i == 2 {
                    split = Some(pieces.len());
                }
                pieces.push(Piece::Text(text));
                rest = &rest[at + placeholder.len()..];
            }
            pieces.push(Piece::Template(rest.to_string()));
        } else {
            if let Some(s) = system {
                pieces.push(Piece::Text(s));
                pieces.push(Piece::Template("\n".into()));
            }
            pieces.push(Piece::Text(user));
            if let Some(q) = question {
                split = Some(pieces.len());
                pieces.push(Piece::Text(q));
            }
        }
        pieces.push(Piece::Text(prompt.answer_prefix));
        let split = split.unwrap_or(pieces.len());
        let mut context = self.encode_pieces(&pieces[..split], prompt.allow_special, true)?;
        // The suffix continues the context: for SentencePiece it gets the dummy
        // prefix space only where the whole text would (at the start, or after
        // a control token).
        let after_special = context.last().is_none_or(|&id| self.is_special_id(id));
        let mut suffix = self.encode_pieces(&pieces[split..], prompt.allow_special, after_special)?;
        if let Some(bos) = self.bos_to_add() {
            if context.first() != Some(&bos) {
                context.insert(0, bos);
            }
        }
        if let Some(eos) = self.eos_to_add() {
            suffix.push(eos);
        }
        Ok(PromptTokens { context, suffix })
    }

    /// Tokenizes a whole conversation (`messages` in order, any roles the
    /// template accepts) rendered with the chat template and ending with the
    /// assistant's turn prompt, the way [`encode_prompt`](Self::encode_prompt)
    /// renders one user message: each message's text is a placeholder while the
    /// template runs and is encoded as plain text unless `allow_special`. The
    /// model's BOS token is put first when the model asks for one.
    pub fn encode_chat(&self, messages: &[Message], allow_special: bool) -> Result<Vec<u32>, ModelError> {
        self.encode_chat_with_tools(messages, &[], None, allow_special)
    }

    /// [`encode_chat`](Self::encode_chat) with tools: `tools` (function
    /// definitions, OpenAI's `tools` array) is handed to the template, which
    /// writes them into the prompt (Qwen2.5's into the system turn), and
    /// `tool_calls[i]`, when given and not null, is message `i`'s `tool_calls`
    /// (an assistant turn's calls, each `{"type": "function", "function":
    /// {"name", "arguments"}}` with the arguments as a JSON object), rendered
    /// by the template as the model writes them. An assistant turn with calls
    /// and no text gets no text in the template (`if message.content` is
    /// false there). The template writes the definitions and calls itself, so
    /// unless `allow_special` they must not spell a control token.
    pub fn encode_chat_with_tools(
        &self,
        messages: &[Message],
        tool_calls: &[Option<serde_json::Value>],
        tools: Option<&serde_json::Value>,
        allow_special: bool,
    ) -> Result<Vec<u32>, ModelError> {
        let calls = |i: usize| tool_calls.get(i).and_then(Option::as_ref).filter(|v| !v.is_null());
        if !allow_special {
            let forged = |what: &str, v: &serde_json::Value| {
                let text = v.to_string();
                match self.special_tokens().iter().find(|s| text.contains(s.as_str())) {
                    Some(s) => Err(ModelError::Input(format!("{what} spells the control token {s}, which the chat template would write as one: remove it"))),
                    None => Ok(()),
                }
            };
            if let Some(t) = tools {
                forged("a tool definition", t)?;
            }
            for i in 0..messages.len() {
                if let Some(c) = calls(i) {
                    forged(&format!("message {i}'s tool calls"), c)?;
                }
            }
        }
        let marks: Vec<Option<String>> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| (!(m.content.is_empty() && calls(i).is_some())).then(|| format!("\u{10FFFD}lava-message-{i}\u{10FFFD}")))
            .collect();
        let templated: Vec<serde_json::Value> = messages
            .iter()
            .zip(&marks)
            .enumerate()
            .map(|(i, (m, mark))| {
                let mut o = serde_json::json!({"role": m.role, "content": mark.clone().unwrap_or_default()});
                if let Some(c) = calls(i) {
                    o["tool_calls"] = c.clone();
                }
                o
            })
            .collect();
        let rendered = self.render_chat_template(&serde_json::Value::Array(templated), tools)?;
        let mut pieces = Vec::with_capacity(2 * messages.len() + 1);
        let mut rest = rendered.as_str();
        for (m, mark) in messages.iter().zip(&marks) {
            let Some(mark) = mark else { continue };
            if rendered.matches(mark.as_str()).count() != 1 {
                return Err(template_mangles("repeats or drops"));
            }
            let at = rest.find(mark.as_str()).ok_or_else(|| template_mangles("reorders"))?;
            pieces.push(Piece::Template(rest[..at].to_string()));
            pieces.push(Piece::Text(m.content.as_str()));
            rest = &rest[at + mark.len()..];
        }
        pieces.push(Piece::Template(rest.to_string()));
        let mut ids = self.encode_pieces(&pieces, allow_special, true)?;
        if let Some(bos) = self.bos_to_add() {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        if let Some(eos) = self.eos_to_add() {
            ids.push(eos);
        }
        Ok(ids)
    }

    /// Encodes consecutive pieces: template text with control tokens
    /// recognised, message text as plain text unless `allow_special`. When no
    /// message text holds a control token's spelling (or with `allow_special`),
    /// the pieces are joined and encoded as one text, which is what plain
    /// encoding gives anyway, without breaking merges at the pieces' seams.
    /// A SentencePiece tokenizer always encodes the runs of text between
    /// control tokens whole; `at_start`: the first run gets its dummy prefix
    /// space.
    fn encode_pieces(&self, pieces: &[Piece<'_>], allow_special: bool, at_start: bool) -> Result<Vec<u32>, ModelError> {
        let segments: Vec<(&str, bool)> = pieces
            .iter()
            .map(|p| match p {
                Piece::Template(t) => (t.as_str(), true),
                Piece::Text(t) => (*t, allow_special),
            })
            .collect();
        if let Some(ids) = self.encode_segments(&segments, at_start) {
            return ids;
        }
        let forged = |t: &str| self.special_tokens().iter().any(|s| t.contains(s.as_str()));
        if allow_special || !pieces.iter().any(|p| matches!(p, Piece::Text(t) if forged(t))) {
            let joined: String = pieces
                .iter()
                .map(|p| match p {
                    Piece::Template(t) => t.as_str(),
                    Piece::Text(t) => t,
                })
                .collect();
            return if joined.is_empty() { Ok(Vec::new()) } else { self.encode(&joined) };
        }
        let mut ids = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Template(t) if !t.is_empty() => ids.extend(self.encode(t)?),
                Piece::Text(t) if !t.is_empty() => ids.extend(self.encode_plain(t)?),
                _ => {}
            }
        }
        Ok(ids)
    }
}

/// Splits `user` before the last occurrence of `question` (`None` or empty:
/// no split).
fn split_at_question<'a>(user: &'a str, question: Option<&str>) -> Result<(&'a str, Option<&'a str>), ModelError> {
    match question.filter(|q| !q.is_empty()) {
        None => Ok((user, None)),
        Some(q) => {
            let at = user.rfind(q).ok_or_else(|| {
                ModelError::Input(format!(
                    "the question {:?} is not part of the prompt, so the prompt cannot be split before it; pass the question inside the prompt or leave question-agnostic mode off",
                    shorten(q)
                ))
            })?;
            let (head, tail) = user.split_at(at);
            Ok((head, Some(tail)))
        }
    }
}

fn template_mangles(what: &str) -> ModelError {
    ModelError::Tokenizer(format!(
        "the chat template {what} the message text, so lava cannot tell the message from the template; run without --chat"
    ))
}

fn shorten(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}
