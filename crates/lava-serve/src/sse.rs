//! Server-sent events: the streamed answer as `data: {json}` frames and a
//! final `data: [DONE]`, in OpenAI's chunk format.
//!
//! The body is a stream over the job's event receiver; when the client goes
//! away, hyper drops the body, the receiver goes with it and the engine drops
//! the sequence (and its cache) at its next turn.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use lava_llama::Tokenizer;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::answer::{logprobs_json, Answer, Piece};
use crate::api::{chunk_body, usage_chunk_body, Endpoint};
use crate::engine::Event;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// One `data:` frame.
pub fn frame(json: &Value) -> String {
    format!("data: {json}\n\n")
}

/// The `data: [DONE]` frame.
pub const DONE: &str = "data: [DONE]\n\n";

/// Everything a streamed answer needs.
pub struct StreamJob {
    /// Which endpoint's chunk format.
    pub endpoint: Endpoint,
    /// `chatcmpl-...` / `cmpl-...`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model's name.
    pub model: String,
    /// Send a last chunk with the usage.
    pub include_usage: bool,
    /// The job's events (after `Admitted`).
    pub events: UnboundedReceiver<Event>,
    /// The choices so far.
    pub answer: Answer,
    /// Whether chunks carry log-probabilities.
    pub logprobs: bool,
    /// For the log-probabilities' token strings.
    pub tokenizer: Arc<Tokenizer>,
    /// Where the finished request's tokens are counted.
    pub metrics: Arc<Metrics>,
}

struct State {
    job: StreamJob,
    /// Per choice: no chunk sent yet (chat's first chunk carries the role).
    first: Vec<bool>,
    started: bool,
    done: bool,
}

impl State {
    fn chunk(&mut self, index: usize, delta: &str, finish: Option<crate::api::FinishReason>, logprobs: Value) -> String {
        let j = &self.job;
        let first = self.first.get(index).copied().unwrap_or(false);
        let c = chunk_body(j.endpoint, &j.id, j.created, &j.model, index, delta, first, finish, logprobs);
        if let Some(f) = self.first.get_mut(index) {
            *f = false;
        }
        frame(&c)
    }

    /// The frames of `pieces`: text (with its log-probabilities), then the
    /// finish chunk of each choice that ended; once all have, usage and `[DONE]`.
    fn frames(&mut self, out: &mut String, pieces: Vec<Piece>) {
        let asked = self.job.logprobs || !pieces.iter().all(|p| p.entries.is_empty());
        for p in pieces {
            if !p.text.is_empty() || !p.entries.is_empty() {
                let lp = logprobs_json(self.job.endpoint, &self.job.tokenizer, asked, &p.entries);
                let c = self.chunk(p.index, &p.text, None, lp);
                out.push_str(&c);
            }
            if p.finish.is_some() {
                // Chunks without tokens carry no log-probabilities (`null`), as OpenAI's.
                let c = self.chunk(p.index, "", p.finish, Value::Null);
                out.push_str(&c);
            }
        }
        if self.job.answer.done() {
            let j = &self.job;
            let usage = j.answer.usage();
            j.metrics.tokens(usage.prompt_tokens, usage.completion_tokens);
            if j.include_usage {
                out.push_str(&frame(&usage_chunk_body(j.endpoint, &j.id, j.created, &j.model, &usage)));
            }
            out.push_str(DONE);
            self.done = true;
        }
    }

    /// Frames for the next event (`None`: the stream is over).
    async fn next(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        let mut out = String::new();
        if !self.started {
            self.started = true;
            if self.job.endpoint == Endpoint::Chat {
                // The role comes first, as OpenAI sends it.
                for i in 0..self.job.answer.n() {
                    let c = self.chunk(i, "", None, Value::Null);
                    out.push_str(&c);
                }
            }
            let pieces = self.job.answer.start();
            self.frames(&mut out, pieces);
            if !out.is_empty() {
                return Some(out);
            }
        }
        while out.is_empty() && !self.done {
            match self.job.events.recv().await {
                Some(event) => match self.job.answer.take(event) {
                    Ok(pieces) => self.frames(&mut out, pieces),
                    Err(e) => {
                        out.push_str(&frame(&e.body()));
                        self.done = true;
                    }
                },
                None => {
                    out.push_str(&frame(&ApiError::unavailable("the engine stopped before the answer ended").body()));
                    self.done = true;
                }
            }
        }
        Some(out)
    }
}

/// The `text/event-stream` response for an admitted job.
pub fn response(job: StreamJob) -> Response {
    let n = job.answer.n();
    let state = State { job, first: vec![true; n], started: false, done: false };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        let frames = st.next().await?;
        Some((Ok::<Bytes, Infallible>(Bytes::from(frames)), st))
    });
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    r
}
