//! Building prompts and caches the way every command does.

use burn::tensor::backend::Backend;
use lava_cache::{CompressedCache, FullCache, KvCache, PolicyConfig, PolicyName};
use lava_llama::{Llama, Message, Tokenizer};

use crate::error::CliError;

/// Tokenises a prompt into prefill segments.
///
/// - `question = None`: one segment, the whole prompt (question-aware compression:
///   the observation window holds the end of the prompt).
/// - `question = Some(q)`: question-agnostic; the context is one segment and the
///   question (with whatever the chat template puts after it) a second one,
///   prefilled after the context has been compressed.
pub fn prompt_segments(
    tok: &Tokenizer,
    chat: bool,
    context: &str,
    question: Option<&str>,
) -> Result<Vec<Vec<u32>>, CliError> {
    let joined = match question {
        Some(q) => format!("{context}\n\n{q}"),
        None => context.to_string(),
    };
    let text = if chat {
        tok.apply_chat_template(&[Message { role: "user".into(), content: joined }])?
    } else {
        joined
    };
    match question {
        None => Ok(vec![tok.encode(&text)?]),
        Some(q) => {
            let split = text.rfind(q).ok_or_else(|| {
                CliError::Usage("the chat template dropped the question; run without --chat".into())
            })?;
            let (c, rest) = text.split_at(split);
            Ok(vec![tok.encode(c)?, tok.encode(rest)?])
        }
    }
}

/// The cache a policy asks for: [`FullCache`] for `full`, else a [`CompressedCache`]
/// that reserves room for `decode_tokens` generated tokens per head after prefill.
pub fn make_cache<B: Backend>(
    model: &Llama<B>,
    policy: &PolicyConfig,
    max_tokens: usize,
    decode_tokens: usize,
    device: &B::Device,
) -> Result<Box<dyn KvCache<B>>, CliError> {
    Ok(if policy.policy == PolicyName::Full {
        Box::new(FullCache::<B>::new(model.cache_shape(), max_tokens, device)?)
    } else {
        let headroom = decode_tokens.clamp(1, CompressedCache::<B>::DEFAULT_HEADROOM);
        Box::new(
            CompressedCache::<B>::new(model.cache_shape(), policy.clone(), max_tokens, device)?
                .with_decode_headroom(headroom),
        )
    })
}
