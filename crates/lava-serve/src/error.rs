//! The server's errors, as OpenAI sends them: an HTTP status and the body
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::engine::EngineError;

/// One failed request: its status and the OpenAI-style error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status (400, 401, 404, 405, 408, 413, 429, 500, 503).
    pub status: StatusCode,
    /// One sentence saying what is wrong.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error`, `server_error`...
    pub kind: &'static str,
    /// The request field at fault (`messages`, `kv_budget`...), if one is.
    pub param: Option<String>,
    /// A machine-readable code (`context_length_exceeded`, `invalid_json`...).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400: a field of the request is wrong.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: Some("invalid_value"),
        }
    }

    /// 400 with a code of its own.
    pub fn invalid_code(param: &str, code: &'static str, message: impl Into<String>) -> Self {
        Self { code: Some(code), ..Self::invalid(param, message) }
    }

    /// 400: the body is not a JSON object.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_json"),
        }
    }

    /// 401: no or the wrong API key.
    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or wrong API key: send the header `Authorization: Bearer KEY` with the key the server was started with (--api-key)".into(),
            kind: "authentication_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    /// 413: the body is larger than `--max-body`.
    pub fn too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("the request body is larger than the server's limit of {limit} bytes (--max-body)"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
        }
    }

    /// 429: the admission queue is full.
    pub fn queue_full(queued: usize) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "the server's KV memory is taken and its queue holds {queued} waiting request(s), its limit (--max-queue); retry later"
            ),
            kind: "rate_limit_error",
            param: None,
            code: Some("queue_full"),
        }
    }

    /// 404: no such route.
    pub fn not_found(path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("no route {path}: the server has POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics"),
            kind: "invalid_request_error",
            param: None,
            code: Some("unknown_url"),
        }
    }

    /// 404: the request's `model` is not the one this server serves.
    pub fn model_not_found(asked: &str, served: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("the model {asked:?} is not served here: this server serves {served:?} (GET /v1/models; other names with --model-alias)"),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// 405: the route exists, not with this method.
    pub fn method_not_allowed(method: &str, path: &str, allowed: &str) -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("{path} does not take {method}: use {allowed}"),
            kind: "invalid_request_error",
            param: None,
            code: Some("method_not_allowed"),
        }
    }

    /// 408: the request body did not arrive within `--body-timeout`.
    pub fn body_timeout(seconds: f64) -> Self {
        Self {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!("the request body did not arrive within {seconds} s (--body-timeout); send it at once"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_timeout"),
        }
    }

    /// 503: the server is shutting down or its engine stopped.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, message: message.into(), kind: "server_error", param: None, code: None }
    }

    /// 500: the model failed on this request.
    pub fn internal(message: impl Into<String>) -> Self {
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into(), kind: "server_error", param: None, code: None }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

/// Seconds a client refused with 429 or 503 is told to wait (`Retry-After`):
/// memory frees as soon as any running sequence ends, which is often within a second.
pub const RETRY_AFTER_SECONDS: u32 = 1;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body().to_string();
        let mut r = (self.status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response();
        if matches!(self.status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The body was not read to its end: the connection cannot carry another request.
            r.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        r
    }
}

impl ApiError {
    /// The status and body of an engine error: a `kv_dtype` the backend cannot
    /// store and a reservation past `--kv-memory` are 400 (the latter blamed on
    /// `max_tokens_field`, the request's name for its `max_tokens`), a full
    /// queue 429, a failure of the model or its cache 500.
    pub fn from_engine(e: EngineError, max_tokens_field: &str) -> Self {
        match e {
            EngineError::KvDtype(why) => ApiError::invalid("kv_dtype", format!("kv_dtype: {why}")),
            EngineError::KvMemoryExceeded { needed, prompt_tokens, max_tokens, policy, n, limit } => ApiError::invalid_code(
                max_tokens_field,
                "kv_memory_exceeded",
                format!(
                    "this request needs {needed} bytes of KV memory ({prompt_tokens} prompt tokens plus {max_tokens_field} {max_tokens} under policy '{policy}', times n = {n}), more than the server's --kv-memory of {limit} bytes; shorten the prompt, lower {max_tokens_field} or n, or use a compressing kv_policy"
                ),
            ),
            EngineError::QueueFull(queued) => ApiError::queue_full(queued),
            EngineError::Failed(message) => ApiError::internal(message),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        ApiError::from_engine(e, "max_tokens")
    }
}
