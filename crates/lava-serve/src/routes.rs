//! The HTTP routes: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `GET /v1/models`, `GET /health`, `GET /metrics`.
//!
//! A generation request is read (at most `--max-body` bytes, within
//! `--body-timeout`: 408 otherwise), checked against
//! the API key (routes under `/v1/`), parsed, tokenized (on tokio's blocking
//! pool), checked against the context and handed to the engine; the handler
//! then waits for the engine's first word (admitted, or refused with 400/429)
//! before it answers, so a refusal is always a proper status and JSON body.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use lava_cache::{KvDtype, PolicyConfig};
use lava_llama::{Prompt, Sampling, Tokenizer};
use serde_json::json;
use tokio::sync::watch;

use crate::answer::{logprobs_json, Answer, Echo, Entry};
use crate::api::{self, Endpoint, GenerationRequest, PromptInput, Usage};
use crate::engine::{EngineHandle, Event, Job, Penalties};
use crate::error::ApiError;
use crate::grammar::{json_grammar, tool_call_grammar, Grammars};
use crate::metrics::Metrics;
use crate::tools::Tools;

/// Settings of the HTTP side.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `--max-body`: request bodies larger than this get 413.
    pub max_body: usize,
    /// `--api-key`: when set, `/v1/` routes need `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// The server's default policy (`--policy`, `--budget`...).
    pub default_policy: PolicyConfig,
    /// The server's `--kv-dtype`, for requests that set no `kv_dtype`.
    pub default_kv_dtype: KvDtype,
    /// The model's name in answers and `/v1/models`.
    pub model_id: String,
    /// Other names a request's `model` may give (`--model-alias`).
    pub model_aliases: Vec<String>,
    /// Control tokens written in prompts are control tokens (`--allow-special`).
    pub allow_special: bool,
    /// `max_tokens` when a request gives none (capped by the context).
    pub default_max_tokens: usize,
    /// `--body-timeout`: a request body must arrive within this of its head (408 otherwise).
    pub body_timeout: Duration,
    /// `--context-cache-min` when the context cache is on: chats at least
    /// this long get their message boundaries found for it.
    pub context_cache_min: Option<usize>,
}

/// What every handler shares.
pub struct AppState {
    /// The engine.
    pub engine: EngineHandle,
    /// The tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The settings.
    pub config: HttpConfig,
    /// Set when the server shuts down (a body still arriving then is not waited for).
    pub shutdown: watch::Receiver<bool>,
    /// The grammar engine's token table, built at the first request that
    /// needs one (`response_format`, a forced tool call).
    pub grammars: std::sync::OnceLock<Result<Arc<Grammars>, String>>,
}

impl AppState {
    /// The grammar engine (built on first use, on tokio's blocking pool).
    async fn grammars(self: &Arc<Self>) -> Result<Arc<Grammars>, ApiError> {
        let s = self.clone();
        let built = tokio::task::spawn_blocking(move || {
            s.grammars
                .get_or_init(|| Grammars::new(s.tokenizer.clone(), s.engine.vocab, &s.engine.stop_tokens).map(Arc::new))
                .clone()
        })
        .await
        .map_err(|_| ApiError::internal("building the grammar engine failed (internal error)"))?;
        built.map_err(ApiError::internal)
    }
}

/// The router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat).fallback(only_post))
        .route("/v1/completions", post(completions).fallback(only_post))
        .route("/v1/models", get(models).fallback(only_get))
        .route("/health", get(health).fallback(only_get))
        .route("/metrics", get(metrics).fallback(only_get))
        .fallback(not_found)
        .with_state(state)
}

async fn chat(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    answer(s, Endpoint::Chat, headers, body).await
}

async fn completions(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    answer(s, Endpoint::Completion, headers, body).await
}

async fn answer(s: Arc<AppState>, endpoint: Endpoint, headers: HeaderMap, body: Body) -> Response {
    let r = generate(&s, endpoint, &headers, body).await;
    let r = r.unwrap_or_else(IntoResponse::into_response);
    s.metrics.request(endpoint.label(), r.status().as_u16());
    r
}

async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let r = match authorize(&s.config, &headers) {
        Ok(()) => json_response(
            StatusCode::OK,
            &json!({
                "object": "list",
                "data": [{"id": s.config.model_id, "object": "model", "created": 0, "owned_by": "lava"}],
            }),
        ),
        Err(e) => e.into_response(),
    };
    s.metrics.request("models", r.status().as_u16());
    r
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    s.metrics.request("health", 200);
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    s.metrics.request("metrics", 200);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}

async fn not_found(State(s): State<Arc<AppState>>, uri: Uri) -> Response {
    s.metrics.request("other", 404);
    ApiError::not_found(uri.path()).into_response()
}

/// 405 with the OpenAI-style body and the `Allow` header.
fn wrong_method(s: &AppState, method: &Method, uri: &Uri, allowed: &'static str) -> Response {
    s.metrics.request("other", 405);
    let mut r = ApiError::method_not_allowed(method.as_str(), uri.path(), allowed).into_response();
    r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allowed));
    r
}

async fn only_post(State(s): State<Arc<AppState>>, method: Method, uri: Uri) -> Response {
    wrong_method(&s, &method, &uri, "POST")
}

async fn only_get(State(s): State<Arc<AppState>>, method: Method, uri: Uri) -> Response {
    wrong_method(&s, &method, &uri, "GET, HEAD")
}

/// A JSON response.
fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Compares without an early exit: the time taken depends on the expected
/// value's length only, not on where the given one differs.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= given.get(i).copied().unwrap_or(0) ^ e;
    }
    diff == 0
}

fn authorize(config: &HttpConfig, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &config.api_key else { return Ok(()) };
    let expected = format!("Bearer {key}");
    let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or(b"");
    if same_secret(given, expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

/// Reads the body within `--body-timeout` (408 otherwise; 503 if the server
/// shuts down meanwhile), refusing more than `--max-body` bytes (413) as soon
/// as it passes them.
async fn read_body_in_time(s: &AppState, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
    let mut shutdown = s.shutdown.clone();
    let timeout = s.config.body_timeout;
    tokio::select! {
        r = tokio::time::timeout(timeout, read_body(headers, body, s.config.max_body)) => {
            r.unwrap_or_else(|_| Err(ApiError::body_timeout(timeout.as_secs_f64())))
        }
        _ = async {
            if shutdown.wait_for(|&down| down).await.is_err() {
                std::future::pending::<()>().await;
            }
        } => Err(ApiError::unavailable("the server is shutting down")),
    }
}

/// Reads the body, refusing more than `limit` bytes (413) as soon as it passes it.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| ApiError::bad_json(format!("the request body could not be read: {e}")))?;
        if out.len() + piece.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        out.extend_from_slice(&piece);
    }
    Ok(out)
}

/// The prompt's token ids (400 naming `messages` or `prompt` when it
/// cannot be); a chat's tools (when shown to the model) and its turns'
/// tool calls go through the chat template (400 naming `tools` when the
/// template does not write tools).
fn tokenize(tok: &Tokenizer, prompt: &PromptInput, tools: Option<&Tools>, tool_calls: &[Option<serde_json::Value>], allow_special: bool, vocab: usize) -> Result<Vec<u32>, ApiError> {
    let ids = match prompt {
        PromptInput::Chat(messages) => {
            let definitions = tools.filter(|t| t.active()).map(|t| &t.definitions);
            if let Some(d) = definitions {
                let probe = json!([{"role": "user", "content": "?"}]);
                let with = tok.render_chat_template(&probe, Some(d)).map_err(|e| ApiError::invalid("tools", format!("tools: {e}")))?;
                let without = tok.render_chat_template(&probe, None).map_err(|e| ApiError::invalid("messages", format!("messages: {e}")))?;
                if with == without {
                    return Err(ApiError::invalid_code(
                        "tools",
                        "unsupported_parameter",
                        "tools: this model's chat template does not show tools to the model, so it cannot call them: serve a model whose template renders tools (Qwen2.5), or send no tools",
                    ));
                }
            }
            tok.encode_chat_with_tools(messages, tool_calls, definitions, allow_special).map_err(|e| ApiError::invalid("messages", format!("messages: {e}")))?
        }
        PromptInput::Text(text) => {
            let p = Prompt { user: text, chat: false, allow_special, ..Prompt::default() };
            tok.encode_prompt(&p).map_err(|e| ApiError::invalid("prompt", format!("prompt: {e}")))?.context
        }
        PromptInput::Tokens(ids) => {
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(ApiError::invalid("prompt", format!("prompt token id {bad} is outside the vocabulary of {vocab}")));
            }
            ids.clone()
        }
    };
    if ids.is_empty() {
        let field = if matches!(prompt, PromptInput::Chat(_)) { "messages" } else { "prompt" };
        return Err(ApiError::invalid(field, format!("{field} has no tokens")));
    }
    Ok(ids)
}

/// Where each message but the last ends in the chat's tokens `ids`: for the
/// first `k` messages, the tokens their own encoding shares with `ids` (the
/// template's opening of the next turn included where both write it the
/// same). Ascending, without repeats; empty when the encoding fails.
fn message_boundaries(tok: &Tokenizer, messages: &[lava_llama::Message], tools: Option<&Tools>, tool_calls: &[Option<serde_json::Value>], allow_special: bool, ids: &[u32]) -> Vec<usize> {
    let definitions = tools.filter(|t| t.active()).map(|t| &t.definitions);
    let mut out: Vec<usize> = Vec::new();
    for k in 1..messages.len() {
        let calls = &tool_calls[..k.min(tool_calls.len())];
        let Ok(prefix) = tok.encode_chat_with_tools(&messages[..k], calls, definitions, allow_special) else { return out };
        let shared = prefix.iter().zip(ids).take_while(|(a, b)| a == b).count();
        if shared > out.last().copied().unwrap_or(0) && shared < ids.len() {
            out.push(shared);
        }
    }
    out
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn request_id(endpoint: Endpoint) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let prefix = match endpoint {
        Endpoint::Chat => "chatcmpl",
        Endpoint::Completion => "cmpl",
    };
    format!("{prefix}-lava-{}-{n}", std::process::id())
}

async fn generate(s: &Arc<AppState>, endpoint: Endpoint, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    authorize(&s.config, headers)?;
    let bytes = read_body_in_time(s, headers, body).await?;
    let object = api::parse_object(&bytes)?;
    let GenerationRequest { prompt, generation: g, tools, tool_calls } = match endpoint {
        Endpoint::Chat => api::parse_chat(&object, &s.config.default_policy)?,
        Endpoint::Completion => api::parse_completion(&object, &s.config.default_policy)?,
    };
    if let Some(m) = &g.model {
        if *m != s.config.model_id && !s.config.model_aliases.contains(m) {
            return Err(ApiError::model_not_found(m, &s.config.model_id));
        }
    }
    if let Some((id, _)) = g.logit_bias.iter().find(|(id, _)| *id as usize >= s.engine.vocab) {
        return Err(ApiError::invalid("logit_bias", format!("logit_bias names token id {id}, outside the vocabulary of {}", s.engine.vocab)));
    }
    let prompt_field = if endpoint == Endpoint::Chat { "messages" } else { "prompt" };
    // The grammar the text must follow, compiled against the vocabulary (400 naming what it cannot enforce).
    let grammar = match (&g.response_format, tools.as_ref().and_then(Tools::forced)) {
        (api::ResponseFormat::Text, None) => None,
        (api::ResponseFormat::JsonObject, _) => Some((json_grammar(None), "response_format")),
        (api::ResponseFormat::JsonSchema(schema), _) => Some((json_grammar(schema.as_ref()), "response_format.json_schema.schema")),
        (api::ResponseFormat::Text, Some(functions)) => {
            let many = tools.as_ref().is_some_and(Tools::many);
            Some((tool_call_grammar(&functions, many, false), "tools"))
        }
    };
    let constraint = match grammar {
        Some((mut grammar, field)) => {
            let grammars = s.grammars().await?;
            if field == "tools" && grammars.is_control_token("<tool_call>") && grammars.is_control_token("</tool_call>") {
                let functions = tools.as_ref().and_then(Tools::forced).unwrap_or_default();
                grammar = tool_call_grammar(&functions, tools.as_ref().is_some_and(Tools::many), true);
            }
            Some(
                tokio::task::spawn_blocking(move || grammars.compile(grammar, field))
                    .await
                    .map_err(|_| ApiError::internal("compiling the grammar failed (internal error)"))??,
            )
        }
        None => None,
    };
    let tok = s.tokenizer.clone();
    let (allow, vocab, echo) = (s.config.allow_special, s.engine.vocab, g.echo);
    let tools_for_prompt = tools.clone();
    let context_min = s.config.context_cache_min;
    // The echoed text: the prompt as given, or its ids decoded.
    let (ids, echo_text, boundaries) = tokio::task::spawn_blocking(move || {
        let ids = tokenize(&tok, &prompt, tools_for_prompt.as_ref(), &tool_calls, allow, vocab)?;
        let boundaries = match (&prompt, context_min) {
            (PromptInput::Chat(messages), Some(min)) if ids.len() >= min => message_boundaries(&tok, messages, tools_for_prompt.as_ref(), &tool_calls, allow, &ids),
            _ => Vec::new(),
        };
        let text = match (&prompt, echo) {
            (_, false) => None,
            (PromptInput::Text(t), true) => Some(t.clone()),
            (_, true) => Some(tok.decode(&ids).map_err(|e| ApiError::invalid("prompt", format!("prompt: {e}")))?),
        };
        Ok::<_, ApiError>((ids, text, boundaries))
    })
    .await
    .map_err(|_| ApiError::internal("tokenizing the prompt failed (internal error)"))??;
    let ctx = s.engine.context;
    if ids.len() >= ctx {
        return Err(ApiError::invalid_code(
            prompt_field,
            "context_length_exceeded",
            format!("the prompt has {} tokens, and the model's context is {ctx}: shorten it", ids.len()),
        ));
    }
    let max_tokens = g.max_tokens.unwrap_or(s.config.default_max_tokens.min(ctx - ids.len()).max(1));
    let field = g.max_tokens_field;
    if ids.len().saturating_add(max_tokens) > ctx {
        return Err(ApiError::invalid_code(
            field,
            "context_length_exceeded",
            format!(
                "the prompt has {} tokens and {field} is {max_tokens}, together more than the model's context of {ctx} tokens; shorten the prompt or lower {field}",
                ids.len()
            ),
        ));
    }
    let sampling = if g.temperature > 0.0 {
        Sampling::TopP { temperature: g.temperature, top_p: g.top_p, top_k: g.top_k, min_p: g.min_p, seed: g.seed }
    } else {
        Sampling::Greedy
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stopped: Arc<[AtomicBool]> = (0..g.n).map(|_| AtomicBool::new(false)).collect();
    let prompt_tokens = ids.len();
    let kv_dtype = g.kv_dtype.unwrap_or(s.config.default_kv_dtype);
    let penalties = Penalties {
        presence: g.presence_penalty,
        frequency: g.frequency_penalty,
        logit_bias: g.logit_bias,
        repetition: g.repetition_penalty,
    };
    let prompt_logprobs = if echo { g.logprobs } else { None };
    let echo = echo_text.map(|text| Echo { text, ids: ids.clone() });
    let job = Job {
        prompt: ids,
        boundaries,
        max_tokens,
        sampling,
        n: g.n,
        logprobs: g.logprobs,
        prompt_logprobs,
        policy: g.policy,
        kv_dtype,
        events: tx,
        stopped: stopped.clone(),
        ignore_eos: g.ignore_eos,
        penalties,
        constraint,
    };
    if !s.engine.submit(job) {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let (reserved, cached_tokens) = match rx.recv().await {
        Some(Event::Admitted { reserved, cached_tokens }) => (reserved, cached_tokens),
        // Blamed on `max_tokens` as the request calls it (perhaps `max_completion_tokens`).
        Some(Event::Failed(e)) => return Err(ApiError::from_engine(e, field)),
        Some(_) => return Err(ApiError::internal("the engine answered out of order")),
        None => return Err(ApiError::unavailable("the server is shutting down")),
    };
    s.metrics.cached_tokens(cached_tokens);
    let usage = Usage { prompt_tokens, kv_reserved_bytes: reserved, cached_tokens, ..Usage::default() };
    let (id, created, model) = (request_id(endpoint), unix_now(), s.config.model_id.clone());
    let logprobs = g.logprobs.is_some();
    let mut answer = Answer::new(s.tokenizer.clone(), g.stop, stopped, logprobs, echo, prompt_logprobs.is_some(), usage);
    if tools.as_ref().is_some_and(Tools::active) {
        // The calls' delimiters are control tokens in some vocabularies (Qwen2.5's GGUF): written out, to be parsed.
        let kept: Vec<(u32, String)> = ["<tool_call>", "</tool_call>"]
            .iter()
            .filter_map(|&t| s.tokenizer.token_id(t).filter(|&id| s.tokenizer.is_special_id(id)).map(|id| (id, t.to_string())))
            .collect();
        answer.keep(kept);
    }
    if g.stream {
        return Ok(crate::sse::response(crate::sse::StreamJob {
            endpoint,
            id,
            created,
            model,
            include_usage: g.include_usage,
            events: rx,
            answer,
            logprobs,
            tokenizer: s.tokenizer.clone(),
            metrics: s.metrics.clone(),
        }));
    }
    let n = answer.n();
    let mut texts = vec![String::new(); n];
    let mut entries: Vec<Vec<Entry>> = vec![Vec::new(); n];
    let mut finish = vec![None; n];
    let mut pieces = answer.start();
    loop {
        for p in pieces.drain(..) {
            if let Some(i) = (p.index < n).then_some(p.index) {
                texts[i].push_str(&p.text);
                entries[i].extend(p.entries);
                finish[i] = finish[i].or(p.finish);
            }
        }
        if answer.done() {
            break;
        }
        match rx.recv().await {
            Some(event) => pieces = answer.take(event)?,
            None => return Err(ApiError::unavailable("the engine stopped before the answer ended")),
        }
    }
    drop(rx);
    let usage = answer.usage();
    s.metrics.tokens(usage.prompt_tokens, usage.completion_tokens);
    let names: Vec<&str> = tools.iter().filter(|t| t.active()).flat_map(|t| t.functions.iter().map(|f| f.name.as_str())).collect();
    let choices = (0..n)
        .map(|i| {
            let lp = logprobs_json(endpoint, &s.tokenizer, logprobs || prompt_logprobs.is_some(), &entries[i]);
            let finish = finish[i].unwrap_or(api::FinishReason::Stop);
            let mut choice = api::choice_body(endpoint, i, &texts[i], lp, finish);
            if !names.is_empty() {
                // The calls the model wrote, out of its text (crate::tools).
                let (content, calls) = crate::tools::parse_calls(&texts[i], &names, &format!("{id}_{i}"));
                if !calls.is_empty() {
                    choice["message"] = json!({"role": "assistant", "content": content, "tool_calls": calls});
                    if finish == api::FinishReason::Stop {
                        choice["finish_reason"] = json!("tool_calls");
                    }
                }
            }
            choice
        })
        .collect();
    let body = api::response_body(endpoint, &id, created, &model, choices, &usage);
    Ok(json_response(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secret_comparison() {
        assert!(same_secret(b"Bearer k1", b"Bearer k1"));
        assert!(!same_secret(b"Bearer k2", b"Bearer k1"));
        assert!(!same_secret(b"Bearer k1x", b"Bearer k1"));
        assert!(!same_secret(b"Bearer k", b"Bearer k1"));
        assert!(!same_secret(b"", b"Bearer k1"));
    }
}
