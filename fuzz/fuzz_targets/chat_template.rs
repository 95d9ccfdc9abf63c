//! Chat templates (GGUF `tokenizer.chat_template`, `tokenizer_config.json`):
//! rendering within the fuel and output limits, the placeholders that locate
//! the message texts, and the question-agnostic split. The input is a template,
//! then a NUL byte, then the user's text (a question is split off at its last
//! line). Every rendering must end, within the limits, with a prompt or an error.
#![no_main]

use std::sync::OnceLock;

use lava_llama::{Message, Prompt, Tokenizer};
use libfuzzer_sys::fuzz_target;

/// A word-level tokenizer with ChatML's control tokens.
fn tokenizer_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let special = |id: u32, content: &str| {
            format!(r#"{{"id":{id},"content":"{content}","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}"#)
        };
        format!(
            r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{},{}],"normalizer":null,"pre_tokenizer":{{"type":"Whitespace"}},"post_processor":null,"decoder":null,"model":{{"type":"WordLevel","vocab":{{"<|im_start|>":0,"<|im_end|>":1,"[UNK]":2,"user":3,"assistant":4,"system":5}},"unk_token":"[UNK]"}}}}"#,
            special(0, "<|im_start|>"),
            special(1, "<|im_end|>")
        )
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (template, user) = text.split_once('\0').unwrap_or((&text, "what is it"));
    let Ok(tok) = Tokenizer::from_json(tokenizer_json(), Some(template.to_string())) else { return };

    // A direct rendering: bounded output or an error.
    let messages = [
        Message { role: "system".into(), content: "system".into() },
        Message { role: "user".into(), content: user.into() },
    ];
    if let Ok(out) = tok.apply_chat_template(&messages) {
        assert!(out.len() <= lava_llama::TEMPLATE_OUTPUT_LIMIT, "rendering of {} bytes", out.len());
    }

    // Prompts, with and without a system message and a question.
    let question = user.rsplit('\n').next().filter(|q| !q.is_empty());
    for (system, question) in [(None, None), (Some("system"), question), (None, question)] {
        let prompt = Prompt { system, user, chat: true, question, ..Prompt::default() };
        if let Ok(t) = tok.encode_prompt(&prompt) {
            // The message text is all there: a word-level tokenizer gives at least one id per word.
            let words = user.split_whitespace().count();
            assert!(t.len() >= words, "{} ids for {words} words", t.len());
            if question.is_none() {
                assert!(t.suffix.is_empty());
            }
        }
    }
});
