//! Building prompts the way every command does (their caches come from `lava_run::cache`).

use lava_llama::{Prompt, Tokenizer};

use crate::error::CliError;

/// Tokenises a prompt into prefill segments.
///
/// - `question = None`: one segment, the whole prompt (question-aware compression:
///   the observation window holds the end of the prompt).
/// - `question = Some(q)`: question-agnostic; the context is one segment and the
///   question (with whatever the chat template puts after it) a second one,
///   prefilled after the context has been compressed.
///
/// Control tokens written in the text are plain text unless `allow_special`.
pub fn prompt_segments(
    tok: &Tokenizer,
    chat: bool,
    allow_special: bool,
    context: &str,
    question: Option<&str>,
) -> Result<Vec<Vec<u32>>, CliError> {
    let joined = match question {
        Some(q) => format!("{context}\n\n{q}"),
        None => context.to_string(),
    };
    let tokens = tok.encode_prompt(&Prompt { user: &joined, chat, question, allow_special, ..Prompt::default() })?;
    Ok(match question {
        None => vec![tokens.context],
        Some(_) => vec![tokens.context, tokens.suffix],
    })
}
