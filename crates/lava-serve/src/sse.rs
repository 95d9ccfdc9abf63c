//! Server-sent events: the streamed answer as `data: {json}` frames and a
//! final `data: [DONE]`, in OpenAI's chunk format.
//!
//! The body is a stream over the job's event receiver; when the client goes
//! away, hyper drops the body, the receiver goes with it and the engine drops
//! the sequence (and its cache) at its next turn.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::{chunk_body, usage_chunk_body, Endpoint, FinishReason, Usage};
use crate::engine::Event;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::text::TextAssembler;

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
    /// The text so far.
    pub text: TextAssembler,
    /// Usage so far.
    pub usage: Usage,
    /// Set when a stop string ends the text.
    pub stopped: Arc<std::sync::atomic::AtomicBool>,
    /// Where the finished request's tokens are counted.
    pub metrics: Arc<Metrics>,
}

struct State {
    job: StreamJob,
    first: bool,
    done: bool,
}

impl State {
    fn chunk(&mut self, delta: &str, finish: Option<FinishReason>) -> String {
        let j = &self.job;
        let c = chunk_body(j.endpoint, &j.id, j.created, &j.model, delta, self.first, finish);
        self.first = false;
        frame(&c)
    }

    /// The closing frames: the rest of the text, the finish chunk, usage, `[DONE]`.
    fn close(&mut self, out: &mut String, rest: &str, finish: FinishReason) {
        if !rest.is_empty() {
            let c = self.chunk(rest, None);
            out.push_str(&c);
        }
        let c = self.chunk("", Some(finish));
        out.push_str(&c);
        let j = &mut self.job;
        j.usage.completion_tokens = j.text.tokens();
        j.metrics.tokens(j.usage.prompt_tokens, j.usage.completion_tokens);
        if j.include_usage {
            out.push_str(&frame(&usage_chunk_body(j.endpoint, &j.id, j.created, &j.model, &j.usage)));
        }
        out.push_str(DONE);
        self.done = true;
    }

    /// Frames for the next event (`None`: the stream is over).
    async fn next(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        let mut out = String::new();
        if self.first && self.job.endpoint == Endpoint::Chat {
            // The role comes first, as OpenAI sends it.
            let c = self.chunk("", None);
            out.push_str(&c);
            return Some(out);
        }
        while out.is_empty() && !self.done {
            match self.job.events.recv().await {
                Some(Event::Token { id, kv_bytes, kv_allocated_bytes }) => {
                    self.job.usage.kv_bytes = kv_bytes;
                    self.job.usage.kv_allocated_bytes = kv_allocated_bytes;
                    let d = self.job.text.push(id);
                    if d.stopped {
                        self.job.stopped.store(true, Ordering::Relaxed);
                        self.close(&mut out, &d.text, FinishReason::Stop);
                    } else if !d.text.is_empty() {
                        let c = self.chunk(&d.text, None);
                        out.push_str(&c);
                    }
                }
                Some(Event::Finished { reason, kv_bytes, kv_allocated_bytes }) => {
                    self.job.usage.kv_bytes = kv_bytes;
                    self.job.usage.kv_allocated_bytes = kv_allocated_bytes;
                    let rest = self.job.text.finish();
                    self.close(&mut out, &rest, reason);
                }
                Some(Event::Failed(e)) => {
                    out.push_str(&frame(&e.body()));
                    self.done = true;
                }
                Some(Event::Admitted { .. }) => {}
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
    let state = State { job, first: true, done: false };
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
