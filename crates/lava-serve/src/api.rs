//! Request and response bodies of the OpenAI API subset the server speaks.
//!
//! Requests are read field by field from the parsed JSON object (not through a
//! derived deserializer) so that every error names its field: a known field of
//! the wrong type or out of range is a 400 with `param` set. No field is
//! silently ignored: one the server does not honour (`suffix`, `audio`,
//! `functions`...) or does not know is a 400
//! `unsupported_parameter` naming it, unless it is `null` or the value that
//! asks for nothing (`tools: []`, `best_of: 1`...). The fields
//! that only identify the caller (`user`, `metadata`, `safety_identifier`,
//! `prompt_cache_key`) are accepted: they change nothing in the answer.

use lava_cache::{KvDtype, PolicyConfig};
use lava_llama::Message;
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// What a request asks the model to continue.
#[derive(Debug, Clone)]
pub enum PromptInput {
    /// `/v1/chat/completions`: messages rendered with the chat template.
    Chat(Vec<Message>),
    /// `/v1/completions`: raw text.
    Text(String),
    /// `/v1/completions`: token ids given directly.
    Tokens(Vec<u32>),
}

/// How to generate, common to both endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// `max_tokens` (chat also `max_completion_tokens`); `None`: the server's
    /// default. 0 only with `echo` (the prompt's log-probabilities alone).
    pub max_tokens: Option<usize>,
    /// The field `max_tokens` came from (`max_tokens` or `max_completion_tokens`),
    /// named by the errors about it.
    pub max_tokens_field: &'static str,
    /// `temperature`, 0 (greedy) by default here.
    pub temperature: f32,
    /// `top_p` in (0, 1].
    pub top_p: f32,
    /// `top_k`: keep the k most likely tokens (0, or -1 in the request: all).
    pub top_k: usize,
    /// `min_p` in [0, 1]: drop tokens less likely than `min_p` times the most likely.
    pub min_p: f32,
    /// `repetition_penalty` > 0 (1: none), over the prompt's and generated tokens.
    pub repetition_penalty: f32,
    /// `n` in [1, 128]: choices from the one prompt.
    pub n: usize,
    /// Log-probabilities of the generated tokens with this many most likely
    /// tokens' (chat: `logprobs: true` and `top_logprobs` in [0, 20];
    /// completions: `logprobs` in [0, 5]).
    pub logprobs: Option<usize>,
    /// `echo` (completions): each choice's text starts with the prompt, and
    /// with `logprobs` so do its log-probabilities.
    pub echo: bool,
    /// `seed` of the sampler.
    pub seed: u64,
    /// `stop`: up to 4 non-empty strings that end the text (not included).
    pub stop: Vec<String>,
    /// `stream`: answer with server-sent events.
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with `usage`.
    pub include_usage: bool,
    /// The KV-cache policy (extension fields over the server's defaults).
    pub policy: PolicyConfig,
    /// `kv_dtype` (extension): how this request's cache stores K and V;
    /// `None`: the server's `--kv-dtype`.
    pub kv_dtype: Option<KvDtype>,
    /// `ignore_eos` (extension, as vLLM and llama-server have it): generate
    /// `max_tokens` tokens even past an end-of-turn token (load tests).
    pub ignore_eos: bool,
    /// `model`, if the request names one.
    pub model: Option<String>,
    /// `presence_penalty` in [-2, 2].
    pub presence_penalty: f32,
    /// `frequency_penalty` in [-2, 2].
    pub frequency_penalty: f32,
    /// `logit_bias`: (token id, bias in [-100, 100]), sorted by id; the ids
    /// are checked against the vocabulary by the caller.
    pub logit_bias: Vec<(u32, f32)>,
    /// `response_format` (chat).
    pub response_format: ResponseFormat,
}

/// `response_format`: what the text must be.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    /// `text` (the default): anything.
    Text,
    /// `json_object`: a JSON object.
    JsonObject,
    /// `json_schema`: JSON valid under `json_schema.schema` (absent: any
    /// JSON value), enforced whatever `strict` says.
    JsonSchema(Option<Value>),
}

/// Parses `response_format` (400 naming the part that is wrong).
fn response_format(body: &Map<String, Value>) -> Result<ResponseFormat, ApiError> {
    let o = match body.get("response_format") {
        None | Some(Value::Null) => return Ok(ResponseFormat::Text),
        Some(Value::Object(o)) => o,
        Some(v) => return Err(wrong_type("response_format", "an object {\"type\": \"text\" | \"json_object\" | \"json_schema\"}", v)),
    };
    let kind = match o.get("type") {
        Some(Value::String(t)) => t.as_str(),
        None | Some(Value::Null) => return Err(ApiError::invalid("response_format.type", "response_format.type is required: text, json_object or json_schema")),
        Some(v) => return Err(wrong_type("response_format.type", "a string", v)),
    };
    let allowed: &[&str] = match kind {
        "text" | "json_object" => &["type"],
        "json_schema" => &["type", "json_schema"],
        other => {
            return Err(ApiError::invalid(
                "response_format.type",
                format!("response_format.type must be text, json_object or json_schema, got {other:?}"),
            ))
        }
    };
    if let Some((k, _)) = o.iter().find(|(k, v)| !allowed.contains(&k.as_str()) && !v.is_null()) {
        return Err(ApiError::invalid_code(
            &format!("response_format.{k}"),
            "unsupported_parameter",
            format!("response_format.{k} is not a field of response_format type {kind}: remove it"),
        ));
    }
    match kind {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        _ => {
            let js = match o.get("json_schema") {
                Some(Value::Object(js)) => js,
                None | Some(Value::Null) => {
                    return Err(ApiError::invalid("response_format.json_schema", "response_format.json_schema is required with type json_schema: {\"name\": ..., \"schema\": {...}}"))
                }
                Some(v) => return Err(wrong_type("response_format.json_schema", "an object", v)),
            };
            let name = js.get("name").and_then(Value::as_str).unwrap_or_default();
            if !((1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')) {
                return Err(ApiError::invalid(
                    "response_format.json_schema.name",
                    format!("response_format.json_schema.name must be 1 to 64 letters, digits, _ or -, got {name:?}"),
                ));
            }
            if let Some((k, _)) = js.iter().find(|(k, _)| !matches!(k.as_str(), "name" | "schema" | "strict" | "description")) {
                return Err(ApiError::invalid_code(
                    &format!("response_format.json_schema.{k}"),
                    "unsupported_parameter",
                    format!("response_format.json_schema.{k} is not supported: give name, schema, strict, description"),
                ));
            }
            opt_bool(js, "strict").map_err(|e| ApiError { param: Some("response_format.json_schema.strict".into()), ..e })?;
            opt_str(js, "description").map_err(|e| ApiError { param: Some("response_format.json_schema.description".into()), ..e })?;
            match js.get("schema") {
                None | Some(Value::Null) => Ok(ResponseFormat::JsonSchema(None)),
                Some(s @ Value::Object(_)) => Ok(ResponseFormat::JsonSchema(Some(s.clone()))),
                Some(v) => Err(wrong_type("response_format.json_schema.schema", "a JSON schema object", v)),
            }
        }
    }
}

/// The extension fields both endpoints take (the KV-cache policy, `ignore_eos`).
const EXTENSION_FIELDS: [&str; 11] =
    ["kv_policy", "kv_budget", "kv_window", "kv_kernel", "kv_pooling", "kv_floor_alpha", "kv_beta", "kv_sinks", "kv_floor_rule", "kv_dtype", "ignore_eos"];

/// Fields both endpoints honour.
const COMMON_FIELDS: [&str; 16] = [
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "n",
    "stream",
    "stream_options",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "top_k",
    "min_p",
    "repetition_penalty",
];

/// Chat fields honoured besides [`COMMON_FIELDS`] (the identifying ones change nothing).
const CHAT_FIELDS: [&str; 13] = [
    "messages",
    "max_completion_tokens",
    "metadata",
    "safety_identifier",
    "prompt_cache_key",
    "logprobs",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
];

/// Completion fields honoured besides [`COMMON_FIELDS`] (the `suffix` and `best_of` checks are in [`parse_completion`]).
const COMPLETION_FIELDS: [&str; 5] = ["prompt", "echo", "logprobs", "suffix", "best_of"];

/// Whether `value` of the OpenAI chat field `field` asks for nothing this
/// server would have to do (so accepting it ignores nothing).
fn chat_field_asks_nothing(field: &str, value: &Value) -> bool {
    match (field, value) {
        ("modalities", Value::Array(a)) => a.len() == 1 && a[0].as_str() == Some("text"),
        ("store", Value::Bool(false)) => true,
        ("service_tier", Value::String(s)) => s == "auto" || s == "default",
        _ => false,
    }
}

/// 400 `unsupported_parameter` for the first field of `body` the endpoint
/// does not honour (module docs).
fn refuse_unhonoured(body: &Map<String, Value>, chat: bool) -> Result<(), ApiError> {
    for (field, value) in body {
        let f = field.as_str();
        let honoured = EXTENSION_FIELDS.contains(&f)
            || COMMON_FIELDS.contains(&f)
            || if chat { CHAT_FIELDS.contains(&f) } else { COMPLETION_FIELDS.contains(&f) };
        if honoured || value.is_null() || (chat && chat_field_asks_nothing(f, value)) {
            continue;
        }
        let endpoint = if chat { "/v1/chat/completions" } else { "/v1/completions" };
        return Err(ApiError::invalid_code(
            f,
            "unsupported_parameter",
            format!("{f} is not supported by this server's {endpoint} (it is not ignored either): remove it"),
        ));
    }
    Ok(())
}

/// Most choices a request may ask for (OpenAI's limit).
pub const MAX_N: usize = 128;

/// Chat's `logprobs` (a boolean) and `top_logprobs` (in [0, 20], only with
/// `logprobs: true`): how many most likely tokens to give with each token's
/// log-probability, `None` when not asked for.
fn chat_logprobs(body: &Map<String, Value>) -> Result<Option<usize>, ApiError> {
    let on = opt_bool(body, "logprobs")?.unwrap_or(false);
    let top = opt_usize(body, "top_logprobs").map_err(|_| {
        ApiError::invalid_code("top_logprobs", "invalid_type", "top_logprobs must be an integer in [0, 20]")
    })?;
    match top {
        Some(t) if t > 20 => Err(ApiError::invalid("top_logprobs", format!("top_logprobs must lie in [0, 20], got {t}"))),
        Some(t) if t > 0 && !on => Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true")),
        _ => Ok(on.then_some(top.unwrap_or(0))),
    }
}

/// Completions' `logprobs`: an integer in [0, 5] (`false` or `null`: none).
fn completion_logprobs(body: &Map<String, Value>) -> Result<Option<usize>, ApiError> {
    match body.get("logprobs") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(k) if k <= 5 => Ok(Some(k as usize)),
            Some(k) => Err(ApiError::invalid("logprobs", format!("logprobs must lie in [0, 5], got {k}"))),
            None => Err(wrong_type("logprobs", "an integer in [0, 5]", v)),
        },
    }
}

/// A penalty field in [-2, 2] (0 when absent).
fn penalty(body: &Map<String, Value>, field: &str) -> Result<f32, ApiError> {
    let p = opt_f64(body, field)?.unwrap_or(0.0);
    if !(p.is_finite() && (-2.0..=2.0).contains(&p)) {
        return Err(ApiError::invalid(field, format!("{field} must lie in [-2, 2], got {p}")));
    }
    Ok(p as f32)
}

/// `logit_bias`: an object of token ids (as strings) to biases in [-100, 100].
fn logit_bias(body: &Map<String, Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let map = match body.get("logit_bias") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(v) => return Err(wrong_type("logit_bias", "an object of token ids to biases", v)),
    };
    let mut out = Vec::with_capacity(map.len());
    for (key, v) in map {
        let id: u32 = key
            .trim()
            .parse()
            .map_err(|_| ApiError::invalid("logit_bias", format!("logit_bias keys must be token ids (integers), got {key:?}")))?;
        let bias = v.as_f64().ok_or_else(|| wrong_type("logit_bias", "an object whose values are numbers", v))?;
        if !(bias.is_finite() && (-100.0..=100.0).contains(&bias)) {
            return Err(ApiError::invalid("logit_bias", format!("logit_bias[{key}] must lie in [-100, 100], got {bias}")));
        }
        out.push((id, bias as f32));
    }
    out.sort_by_key(|&(id, _)| id);
    Ok(out)
}

/// A parsed request of either endpoint.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// The prompt.
    pub prompt: PromptInput,
    /// The generation settings.
    pub generation: Generation,
    /// `tools`, `tool_choice`, `parallel_tool_calls` (chat; `None`: no tools).
    pub tools: Option<crate::tools::Tools>,
    /// Each message's `tool_calls` as the chat template reads them (chat;
    /// `None` for a message without).
    pub tool_calls: Vec<Option<Value>>,
}

/// Parses a body into its JSON object (400 `invalid_json` otherwise).
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_json("the request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_json(format!("the request body is not valid JSON: {e}"))),
    }
}

fn wrong_type(field: &str, expected: &str, got: &Value) -> ApiError {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    ApiError::invalid_code(field, "invalid_type", format!("{field} must be {expected}, got {got}"))
}

/// An optional non-negative integer field (`null` counts as absent).
pub fn opt_usize(body: &Map<String, Value>, field: &str) -> Result<Option<usize>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| wrong_type(field, "a non-negative integer", v)),
    }
}

/// An optional number field.
pub fn opt_f64(body: &Map<String, Value>, field: &str) -> Result<Option<f64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| wrong_type(field, "a number", v)),
    }
}

/// An optional string field.
pub fn opt_str<'a>(body: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong_type(field, "a string", v)),
    }
}

fn opt_bool(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(wrong_type(field, "a boolean", v)),
    }
}

/// Parses the fields both endpoints share.
fn generation(body: &Map<String, Value>, defaults: &PolicyConfig, chat: bool) -> Result<Generation, ApiError> {
    // Chat takes both names (`max_completion_tokens` wins); each is checked on its own.
    let given = opt_usize(body, "max_tokens")?;
    let given_completion = if chat { opt_usize(body, "max_completion_tokens")? } else { None };
    let echo = if chat { false } else { opt_bool(body, "echo")?.unwrap_or(false) };
    for (field, value) in [("max_tokens", given), ("max_completion_tokens", given_completion)] {
        // With echo, 0 asks for the prompt alone (its log-probabilities, as evaluation harnesses do).
        if value == Some(0) && !echo {
            return Err(ApiError::invalid(field, format!("{field} must be at least 1 (0 only with echo on /v1/completions)")));
        }
    }
    let (max_tokens, max_tokens_field) = match given_completion {
        Some(m) => (Some(m), "max_completion_tokens"),
        None => (given, "max_tokens"),
    };
    let temperature = opt_f64(body, "temperature")?.unwrap_or(0.0);
    if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
        return Err(ApiError::invalid("temperature", format!("temperature must lie in [0, 2], got {temperature}")));
    }
    let top_p = opt_f64(body, "top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", format!("top_p must lie in (0, 1], got {top_p}")));
    }
    let seed = match body.get("seed") {
        None | Some(Value::Null) => 0,
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(u), _) => u,
            (None, Some(i)) => i as u64,
            _ => return Err(wrong_type("seed", "an integer", v)),
        },
    };
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    v => return Err(wrong_type(&format!("stop[{i}]"), "a string", v)),
                }
            }
            out
        }
        Some(v) => return Err(wrong_type("stop", "a string or an array of strings", v)),
    };
    if stop.len() > 4 {
        return Err(ApiError::invalid("stop", format!("stop takes at most 4 sequences, got {}", stop.len())));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop sequences must not be empty"));
    }
    let n = opt_usize(body, "n")?.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid("n", format!("n must lie in [1, {MAX_N}], got {n}")));
    }
    let top_k = match body.get("top_k") {
        None | Some(Value::Null) => 0,
        Some(v) => match v.as_i64() {
            Some(-1) => 0,
            Some(k) if k >= 0 => usize::try_from(k).unwrap_or(usize::MAX),
            Some(k) => return Err(ApiError::invalid("top_k", format!("top_k must be at least 0 (0 or -1: no limit), got {k}"))),
            None => return Err(wrong_type("top_k", "an integer", v)),
        },
    };
    let min_p = opt_f64(body, "min_p")?.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::invalid("min_p", format!("min_p must lie in [0, 1], got {min_p}")));
    }
    let repetition_penalty = opt_f64(body, "repetition_penalty")?.unwrap_or(1.0);
    if !(repetition_penalty.is_finite() && repetition_penalty > 0.0) {
        return Err(ApiError::invalid("repetition_penalty", format!("repetition_penalty must be greater than 0 (1: none), got {repetition_penalty}")));
    }
    let logprobs = if chat { chat_logprobs(body)? } else { completion_logprobs(body)? };
    let stream = opt_bool(body, "stream")?.unwrap_or(false);
    let include_usage = match body.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => {
            if let Some((k, _)) = o.iter().find(|(k, v)| *k != "include_usage" && !v.is_null()) {
                return Err(ApiError::invalid_code(
                    &format!("stream_options.{k}"),
                    "unsupported_parameter",
                    format!("stream_options.{k} is not supported by this server (it is not ignored either): remove it"),
                ));
            }
            opt_bool(o, "include_usage").map_err(|e| ApiError { param: Some("stream_options.include_usage".into()), ..e })?.unwrap_or(false)
        }
        Some(v) => return Err(wrong_type("stream_options", "an object", v)),
    };
    if include_usage && !stream {
        // As OpenAI: the usage chunk is a streaming option (a whole answer always has its usage).
        return Err(ApiError::invalid("stream_options", "stream_options is only allowed with stream: true"));
    }
    let model = opt_str(body, "model")?.map(str::to_string);
    opt_str(body, "user")?;
    let ignore_eos = opt_bool(body, "ignore_eos")?.unwrap_or(false);
    let presence_penalty = penalty(body, "presence_penalty")?;
    let frequency_penalty = penalty(body, "frequency_penalty")?;
    let logit_bias = logit_bias(body)?;
    let response_format = if chat { response_format(body)? } else { ResponseFormat::Text };
    if chat {
        opt_str(body, "safety_identifier")?;
        opt_str(body, "prompt_cache_key")?;
        if let Some(v) = body.get("metadata").filter(|v| !v.is_null() && !v.is_object()) {
            return Err(wrong_type("metadata", "an object", v));
        }
    }
    refuse_unhonoured(body, chat)?;
    let policy = crate::policy::request_policy(body, defaults)?;
    let kv_dtype = crate::policy::request_kv_dtype(body)?;
    Ok(Generation {
        max_tokens,
        max_tokens_field,
        temperature: temperature as f32,
        top_p: top_p as f32,
        top_k,
        min_p: min_p as f32,
        repetition_penalty: repetition_penalty as f32,
        n,
        logprobs,
        echo,
        seed,
        stop,
        stream,
        include_usage,
        policy,
        kv_dtype,
        ignore_eos,
        model,
        presence_penalty,
        frequency_penalty,
        logit_bias,
        response_format,
    })
}

/// Parses a `/v1/chat/completions` body.
pub fn parse_chat(body: &Map<String, Value>, defaults: &PolicyConfig) -> Result<GenerationRequest, ApiError> {
    let messages = match body.get("messages") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => return Err(ApiError::invalid("messages", "messages must hold at least one message")),
        None | Some(Value::Null) => return Err(ApiError::invalid_code("messages", "missing_required_parameter", "messages is required")),
        Some(v) => return Err(wrong_type("messages", "an array of messages", v)),
    };
    let mut out = Vec::with_capacity(messages.len());
    let mut tool_calls = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(wrong_type(&format!("messages[{i}]"), "an object with role and content", m));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            Some(v) => return Err(wrong_type(&format!("messages[{i}].role"), "a string", v)),
            None => return Err(ApiError::invalid(&format!("messages[{i}].role"), format!("messages[{i}].role is required"))),
        };
        let role = match role {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            other => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!("messages[{i}].role {other:?} is not one of system, developer, user, assistant, tool"),
                ))
            }
        };
        // `name`... would change what the model is told: refused, not ignored. An
        // assistant turn's `tool_calls` is rendered; a tool turn's `tool_call_id`
        // only identifies the call it answers (the template shows results in order).
        let known = |k: &str| matches!((role, k), (_, "role" | "content") | ("assistant", "tool_calls") | ("tool", "tool_call_id"));
        let unused = m.iter().find(|(k, v)| !known(k) && !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()));
        if let Some((k, _)) = unused {
            return Err(ApiError::invalid_code(
                &format!("messages[{i}].{k}"),
                "unsupported_parameter",
                format!("messages[{i}].{k} is not supported by this server (it is not ignored either): give role and content (and an assistant turn's tool_calls, a tool turn's tool_call_id)"),
            ));
        }
        if role == "tool" {
            opt_str(m, "tool_call_id").map_err(|e| ApiError { param: Some(format!("messages[{i}].tool_call_id")), ..e })?;
        }
        tool_calls.push(match m.get("tool_calls") {
            Some(Value::Array(calls)) if !calls.is_empty() => Some(crate::tools::history_calls(calls, &format!("messages[{i}].tool_calls"))?),
            None | Some(Value::Null) | Some(Value::Array(_)) => None,
            Some(v) => return Err(wrong_type(&format!("messages[{i}].tool_calls"), "an array of tool calls", v)),
        });
        let field = format!("messages[{i}].content");
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    let part = p.as_object().filter(|o| o.get("type").and_then(Value::as_str) == Some("text"));
                    match part.and_then(|o| o.get("text")).and_then(Value::as_str) {
                        Some(t) => text.push_str(t),
                        None => {
                            return Err(ApiError::invalid(
                                &format!("{field}[{j}]"),
                                format!("{field}[{j}] must be a text part {{\"type\": \"text\", \"text\": ...}}"),
                            ))
                        }
                    }
                }
                text
            }
            None | Some(Value::Null) => String::new(),
            Some(v) => return Err(wrong_type(&field, "a string or an array of text parts", v)),
        };
        out.push(Message { role: role.to_string(), content });
    }
    if out.iter().zip(&tool_calls).all(|(m, c)| m.content.trim().is_empty() && c.is_none()) {
        return Err(ApiError::invalid("messages", "every message is empty: give some text"));
    }
    let tools = crate::tools::parse(body)?;
    let generation = generation(body, defaults, true)?;
    if let Some(t) = tools.as_ref().filter(|t| t.active()) {
        if generation.stream {
            return Err(ApiError::invalid_code(
                "stream",
                "unsupported_parameter",
                "stream is not supported with tools (tool calls are parsed from the whole answer): leave stream off, or send tool_choice none",
            ));
        }
        if generation.response_format != ResponseFormat::Text && t.forced().is_some() {
            return Err(ApiError::invalid(
                "response_format",
                "response_format cannot be combined with a forced tool call (tool_choice required or a named function): send one of them",
            ));
        }
    }
    Ok(GenerationRequest { prompt: PromptInput::Chat(out), generation, tools, tool_calls })
}

/// Parses a `/v1/completions` body.
pub fn parse_completion(body: &Map<String, Value>, defaults: &PolicyConfig) -> Result<GenerationRequest, ApiError> {
    let prompt = match body.get("prompt") {
        Some(Value::String(s)) => PromptInput::Text(s.clone()),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            PromptInput::Text(items[0].as_str().unwrap_or_default().to_string())
        }
        Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_u64) => {
            let ids: Option<Vec<u32>> = items.iter().map(|v| v.as_u64().and_then(|x| u32::try_from(x).ok())).collect();
            PromptInput::Tokens(ids.ok_or_else(|| ApiError::invalid("prompt", "prompt token ids must fit in 32 bits"))?)
        }
        None | Some(Value::Null) => return Err(ApiError::invalid_code("prompt", "missing_required_parameter", "prompt is required")),
        Some(v) => return Err(wrong_type("prompt", "a string (or one string, or an array of token ids)", v)),
    };
    if matches!(&prompt, PromptInput::Text(t) if t.is_empty()) {
        return Err(ApiError::invalid("prompt", "prompt is empty: give some text"));
    }
    for field in ["suffix", "best_of"] {
        let unset = match body.get(field) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => field == "suffix" && s.is_empty(),
            Some(Value::Number(n)) => field == "best_of" && n.as_u64() == Some(1),
            _ => false,
        };
        if !unset {
            return Err(ApiError::invalid_code(field, "unsupported_parameter", format!("{field} is not supported by this server (it is not ignored either): remove it")));
        }
    }
    Ok(GenerationRequest { prompt, generation: generation(body, defaults, false)?, tools: None, tool_calls: Vec::new() })
}

/// Why a generation ended, as OpenAI spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-turn token or a `stop` string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl From<lava_run::decode::Finish> for FinishReason {
    fn from(f: lava_run::decode::Finish) -> Self {
        match f {
            lava_run::decode::Finish::Stop => FinishReason::Stop,
            lava_run::decode::Finish::Length => FinishReason::Length,
        }
    }
}

impl FinishReason {
    /// `"stop"` or `"length"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Token and memory counts of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens (a stop token not counted).
    pub completion_tokens: usize,
    /// KV bytes the sequence's cache kept at its end.
    pub kv_bytes: usize,
    /// KV bytes its cache had allocated at its end.
    pub kv_allocated_bytes: usize,
    /// KV bytes admission reserved for it.
    pub kv_reserved_bytes: u64,
    /// Prompt tokens taken from the context cache (not prefilled).
    pub cached_tokens: usize,
}

impl Usage {
    /// The `usage` object: OpenAI's three counts plus the `kv_*` extensions.
    pub fn to_json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
            "kv_bytes": self.kv_bytes,
            "kv_allocated_bytes": self.kv_allocated_bytes,
            "kv_reserved_bytes": self.kv_reserved_bytes,
        })
    }
}

/// Which endpoint answers: decides the object names and the choice layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

impl Endpoint {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat_completions",
            Endpoint::Completion => "completions",
        }
    }
}

/// One choice of a whole answer: `text` (chat: the message's content),
/// its `logprobs` value and why it ended.
pub fn choice_body(endpoint: Endpoint, index: usize, text: &str, logprobs: Value, finish: FinishReason) -> Value {
    match endpoint {
        Endpoint::Chat => json!({
            "index": index,
            "message": {"role": "assistant", "content": text},
            "logprobs": logprobs,
            "finish_reason": finish.as_str(),
        }),
        Endpoint::Completion => json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish.as_str()}),
    }
}

/// The whole (non-streamed) answer with its choices ([`choice_body`]).
pub fn response_body(endpoint: Endpoint, id: &str, created: u64, model: &str, choices: Vec<Value>, usage: &Usage) -> Value {
    let object = match endpoint {
        Endpoint::Chat => "chat.completion",
        Endpoint::Completion => "text_completion",
    };
    json!({
        "id": id,
        "object": object,
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage.to_json(),
    })
}

/// One streamed chunk of choice `index`: `delta` text (chat: the first
/// chunk also carries the role) with its `logprobs` value, or the last one
/// with `finish_reason`.
#[allow(clippy::too_many_arguments)]
pub fn chunk_body(
    endpoint: Endpoint,
    id: &str,
    created: u64,
    model: &str,
    index: usize,
    delta: &str,
    first: bool,
    finish: Option<FinishReason>,
    logprobs: Value,
) -> Value {
    let finish = finish.map(FinishReason::as_str);
    let (object, choice) = match endpoint {
        Endpoint::Chat => {
            let delta = if finish.is_some() && delta.is_empty() {
                json!({})
            } else if first {
                json!({"role": "assistant", "content": delta})
            } else {
                json!({"content": delta})
            };
            ("chat.completion.chunk", json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}))
        }
        Endpoint::Completion => ("text_completion", json!({"index": index, "text": delta, "logprobs": logprobs, "finish_reason": finish})),
    };
    json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]})
}

/// The extra last chunk of `stream_options.include_usage`: no choices, the usage.
pub fn usage_chunk_body(endpoint: Endpoint, id: &str, created: u64, model: &str, usage: &Usage) -> Value {
    let object = match endpoint {
        Endpoint::Chat => "chat.completion.chunk",
        Endpoint::Completion => "text_completion",
    };
    json!({"id": id, "object": object, "created": created, "model": model, "choices": [], "usage": usage.to_json()})
}

#[cfg(test)]
mod tests {
    use super::*;
    use lava_cache::PolicyName;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn chat_requests_parse_and_bad_fields_are_named() {
        let d = PolicyConfig::new(PolicyName::Full, 128);
        let r = parse_chat(
            &obj(json!({"model": "x", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                "max_tokens": 5, "stop": "\n", "stream": true, "stream_options": {"include_usage": true}, "kv_policy": "lava", "presence_penalty": 0})),
            &d,
        )
        .expect("valid");
        let PromptInput::Chat(m) = &r.prompt else { panic!("chat prompt") };
        let m: Vec<(&str, &str)> = m.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
        assert_eq!(m, [("system", "Be brief."), ("user", "Hi")]);
        assert_eq!(r.generation.max_tokens, Some(5));
        assert_eq!(r.generation.stop, vec!["\n".to_string()]);
        assert!(r.generation.stream && r.generation.include_usage);
        assert_eq!(r.generation.policy.policy, PolicyName::Lava);
        let ok = json!([{"role": "user", "content": "Hi"}]);
        let cases = [
            (json!({}), "messages"),
            (json!({"messages": "hi"}), "messages"),
            (json!({"messages": []}), "messages"),
            (json!({"messages": [{"role": "robot", "content": "x"}]}), "messages[0].role"),
            (json!({"messages": [{"role": "user", "content": 5}]}), "messages[0].content"),
            (json!({"messages": ok, "max_tokens": "ten"}), "max_tokens"),
            (json!({"messages": ok, "max_tokens": 0}), "max_tokens"),
            (json!({"messages": ok, "max_completion_tokens": 0}), "max_completion_tokens"),
            (json!({"messages": ok, "max_tokens": 5, "max_completion_tokens": 0}), "max_completion_tokens"),
            (json!({"messages": ok, "max_tokens": 0, "max_completion_tokens": 5}), "max_tokens"),
            (json!({"messages": ok, "max_completion_tokens": "ten"}), "max_completion_tokens"),
            (json!({"messages": ok, "max_tokens": -3}), "max_tokens"),
            (json!({"messages": ok, "max_tokens": 2.5}), "max_tokens"),
            (json!({"messages": ok, "temperature": "hot"}), "temperature"),
            (json!({"messages": ok, "temperature": 9}), "temperature"),
            (json!({"messages": ok, "top_p": 0}), "top_p"),
            (json!({"messages": ok, "seed": "s"}), "seed"),
            (json!({"messages": ok, "stop": 3}), "stop"),
            (json!({"messages": ok, "stop": ["a", 1]}), "stop[1]"),
            (json!({"messages": ok, "stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"messages": ok, "stream": "yes"}), "stream"),
            (json!({"messages": ok, "n": 0}), "n"),
            (json!({"messages": ok, "n": 129}), "n"),
            (json!({"messages": ok, "n": "2"}), "n"),
            (json!({"messages": ok, "top_k": -2}), "top_k"),
            (json!({"messages": ok, "top_k": 1.5}), "top_k"),
            (json!({"messages": ok, "min_p": 1.5}), "min_p"),
            (json!({"messages": ok, "min_p": -0.1}), "min_p"),
            (json!({"messages": ok, "repetition_penalty": 0}), "repetition_penalty"),
            (json!({"messages": ok, "repetition_penalty": "x"}), "repetition_penalty"),
            (json!({"messages": ok, "logprobs": 1}), "logprobs"),
            (json!({"messages": ok, "logprobs": true, "top_logprobs": 21}), "top_logprobs"),
            (json!({"messages": ok, "logprobs": true, "top_logprobs": -1}), "top_logprobs"),
            (json!({"messages": ok, "top_logprobs": 2}), "top_logprobs"),
            (json!({"messages": ok, "echo": true}), "echo"),
            (json!({"messages": ok, "model": 7}), "model"),
            (json!({"messages": ok, "kv_budget": "big"}), "kv_budget"),
            (json!({"messages": ok, "ignore_eos": "yes"}), "ignore_eos"),
            (json!({"messages": ok, "presence_penalty": 2.5}), "presence_penalty"),
            (json!({"messages": ok, "frequency_penalty": "x"}), "frequency_penalty"),
            (json!({"messages": ok, "logit_bias": [1]}), "logit_bias"),
            (json!({"messages": ok, "logit_bias": {"abc": 1}}), "logit_bias"),
            (json!({"messages": ok, "logit_bias": {"5": 101}}), "logit_bias"),
            (json!({"messages": ok, "logit_bias": {"5": "x"}}), "logit_bias"),
            (json!({"messages": ok, "user": 5}), "user"),
            (json!({"messages": ok, "metadata": "m"}), "metadata"),
            // Not honoured: refused, never ignored.
            (json!({"messages": ok, "tools": [{"type": "retrieval"}]}), "tools[0].type"),
            (json!({"messages": ok, "tool_choice": "required"}), "tool_choice"),
            (json!({"messages": ok, "functions": [{"name": "f"}]}), "functions"),
            (json!({"messages": ok, "tools": [{"type": "function", "function": {"name": "f"}}], "stream": true}), "stream"),
            (json!({"messages": ok, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required", "response_format": {"type": "json_object"}}), "response_format"),
            (json!({"messages": ok, "response_format": "garbage"}), "response_format"),
            (json!({"messages": ok, "response_format": {"type": "xml"}}), "response_format.type"),
            (json!({"messages": ok, "response_format": {}}), "response_format.type"),
            (json!({"messages": ok, "response_format": {"type": "json_schema"}}), "response_format.json_schema"),
            (json!({"messages": ok, "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}), "response_format.json_schema.name"),
            (json!({"messages": ok, "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": true}}}), "response_format.json_schema.schema"),
            (json!({"messages": ok, "response_format": {"type": "json_schema", "json_schema": {"name": "a", "strict": "yes"}}}), "response_format.json_schema.strict"),
            (json!({"messages": ok, "response_format": {"type": "json_object", "schema": {}}}), "response_format.schema"),
            (json!({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}]}), "messages[0].tool_calls[0].function.arguments"),
            (json!({"messages": [{"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}]}), "messages[0].tool_calls"),
            (json!({"messages": [{"role": "tool", "content": "x", "tool_call_id": 5}]}), "messages[0].tool_call_id"),
            (json!({"messages": ok, "store": true}), "store"),
            (json!({"messages": ok, "reasoning_effort": "low"}), "reasoning_effort"),
            (json!({"messages": ok, "audio": {}}), "audio"),
            (json!({"messages": ok, "stream_options": {"include_usage": true, "include_obfuscation": true}}), "stream_options.include_obfuscation"),
            (json!({"messages": ok, "stream_options": {"include_usage": true}}), "stream_options"),
            (json!({"messages": [{"role": "user", "content": "Hi", "name": "bob"}]}), "messages[0].name"),
        ];
        for (body, field) in cases {
            let e = parse_chat(&obj(body.clone()), &d).expect_err(&body.to_string());
            assert_eq!(e.param.as_deref(), Some(field), "{body}: {}", e.message);
        }
    }

    #[test]
    fn neutral_values_are_accepted_and_penalties_parsed() {
        let d = PolicyConfig::new(PolicyName::Full, 128);
        let body = json!({"messages": [{"role": "user", "content": "Hi", "name": null, "tool_calls": []}], "logprobs": false, "top_logprobs": 0, "tools": [], "tool_choice": "none",
            "parallel_tool_calls": true, "n": 1, "user": "u1", "top_k": null, "min_p": null, "metadata": {"a": "b"}, "response_format": {"type": "text"}, "modalities": ["text"],
            "store": false, "service_tier": "auto", "stream_options": {"include_usage": false, "x": null}, "repetition_penalty": null,
            "presence_penalty": -0.5, "frequency_penalty": 2, "logit_bias": {"7": -100, " 3": 2.5}, "model": "m"});
        let g = parse_chat(&obj(body), &d).expect("neutral values").generation;
        assert_eq!((g.presence_penalty, g.frequency_penalty), (-0.5, 2.0));
        assert_eq!(g.logit_bias, vec![(3, 2.5), (7, -100.0)]);
        assert_eq!(g.model.as_deref(), Some("m"));
        assert_eq!((g.n, g.logprobs, g.top_k, g.min_p, g.repetition_penalty), (1, None, 0, 0.0, 1.0));
        let ok = json!([{"role": "user", "content": "Hi"}]);
        let g = parse_chat(&obj(json!({"messages": ok, "logprobs": true, "top_logprobs": 3, "n": 3, "top_k": -1, "min_p": 0.1, "repetition_penalty": 1.3})), &d)
            .expect("valid")
            .generation;
        assert_eq!((g.n, g.logprobs, g.top_k, g.min_p, g.repetition_penalty), (3, Some(3), 0, 0.1, 1.3));
        assert_eq!(parse_chat(&obj(json!({"messages": ok, "logprobs": true})), &d).expect("valid").generation.logprobs, Some(0));
        // Completions: logprobs is a count, echo with max_tokens 0 asks for the prompt alone.
        let g = parse_completion(&obj(json!({"prompt": [1, 2], "echo": true, "logprobs": 2, "max_tokens": 0, "top_k": 40})), &d).expect("valid").generation;
        assert_eq!((g.echo, g.logprobs, g.max_tokens, g.top_k), (true, Some(2), Some(0), 40));
        // max_completion_tokens is a chat field: /v1/completions refuses it.
        let e = parse_completion(&obj(json!({"prompt": "a", "max_completion_tokens": 3})), &d).expect_err("not a completions field");
        assert_eq!((e.param.as_deref(), e.code), (Some("max_completion_tokens"), Some("unsupported_parameter")));
        let g = parse_completion(&obj(json!({"prompt": "a", "presence_penalty": 1, "logit_bias": {"1": 1}, "user": "u", "best_of": 1})), &d).expect("valid");
        assert_eq!((g.generation.presence_penalty, g.generation.logit_bias.len()), (1.0, 1));
    }

    #[test]
    fn completion_prompts_and_json_errors() {
        let d = PolicyConfig::new(PolicyName::Full, 128);
        assert!(matches!(parse_completion(&obj(json!({"prompt": "a"})), &d).expect("text").prompt, PromptInput::Text(t) if t == "a"));
        assert!(matches!(parse_completion(&obj(json!({"prompt": [1, 2]})), &d).expect("ids").prompt, PromptInput::Tokens(t) if t == [1, 2]));
        for (body, field) in [
            (json!({}), "prompt"),
            (json!({"prompt": ""}), "prompt"),
            (json!({"prompt": {}}), "prompt"),
            (json!({"prompt": "a", "echo": 1}), "echo"),
            (json!({"prompt": "a", "max_tokens": 0}), "max_tokens"),
            (json!({"prompt": "a", "logprobs": 6}), "logprobs"),
            (json!({"prompt": "a", "logprobs": true}), "logprobs"),
            (json!({"prompt": "a", "suffix": "x"}), "suffix"),
            (json!({"prompt": "a", "best_of": 2}), "best_of"),
            (json!({"prompt": "a", "top_logprobs": 2}), "top_logprobs"),
        ] {
            let e = parse_completion(&obj(body.clone()), &d).expect_err(&body.to_string());
            assert_eq!(e.param.as_deref(), Some(field));
        }
        assert_eq!(parse_object(b"{not json").expect_err("bad").code, Some("invalid_json"));
        assert_eq!(parse_object(b"[1]").expect_err("array").code, Some("invalid_json"));
    }
}
