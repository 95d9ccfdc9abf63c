//! # lava-serve
//!
//! `lava serve`: an OpenAI-compatible HTTP server (tokio + axum) that runs
//! many conversations at once, each with its own (compressed) KV cache, in
//! one KV-memory budget.
//!
//! - [`engine`]: the one thread that owns the model and the caches and runs
//!   continuous batching (a prompt's prefill chunks ride in the batched decode steps);
//! - [`admission`]: what a request reserves of `--kv-memory`;
//! - [`conn`]: the accept loop, connection timeouts and limits, shutdown;
//! - [`routes`]: the endpoints; [`api`]: request and response bodies;
//!   [`policy`]: the per-request `kv_*` fields; [`sse`]: streaming;
//!   [`answer`]: the
//!   engine's events to an answer's choices, log-probabilities and echo;
//!   [`grammar`]: constrained decoding (`response_format`, forced tool
//!   calls) through llguidance; [`tools`]: tool definitions, the tool-call
//!   grammar and parsing calls out of the text; [`metrics`]: `/metrics`;
//!   [`error`]: OpenAI-style error bodies.
//!
//! A sequence's cache, its KV byte arithmetic, its stop rule and its
//! incremental detokenization come from `lava-run`, as for every command.
//!
//! The model and caches never leave the engine thread (the caller's `load`
//! runs there), so the backend's tensors need not be `Send`.

pub mod admission;
pub mod answer;
pub mod api;
pub mod conn;
pub mod context_cache;
pub mod engine;
pub mod error;
pub mod grammar;
pub mod metrics;
pub mod policy;
pub mod routes;
pub mod sse;
pub mod tools;

use std::sync::Arc;

use burn::tensor::backend::Backend;

pub use conn::ConnConfig;
pub use context_cache::ContextCacheConfig;
pub use engine::{EngineConfig, Loaded};
pub use error::ApiError;
pub use routes::HttpConfig;

/// Everything `lava serve` is started with.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Address to bind (`--host`).
    pub host: String,
    /// Port (`--port`; 0: any free port).
    pub port: u16,
    /// The engine's settings.
    pub engine: EngineConfig,
    /// The HTTP side's settings.
    pub http: HttpConfig,
    /// The connections' timeouts and limits.
    pub conn: ConnConfig,
}

/// Why the server could not run.
#[derive(Debug)]
pub enum ServeError<E> {
    /// The caller's `load` failed.
    Load(E),
    /// Binding the address or running the runtime failed.
    Io(String),
}

/// Loads the model on the engine thread (with `load`), binds the address,
/// prints `lava serve: listening on http://ADDR` on stderr, serves until
/// SIGTERM or SIGINT, then stops taking connections, drops idle ones, lets
/// every request in flight finish within `--shutdown-timeout` (a second
/// signal drops them at once) and returns ([`conn`]).
pub fn serve<B, E, F>(options: ServeOptions, load: F) -> Result<(), ServeError<E>>
where
    B: Backend,
    E: Send + 'static,
    F: FnOnce() -> Result<Loaded<B>, E> + Send + 'static,
{
    let metrics = Arc::new(metrics::Metrics::default());
    let (engine, tokenizer, thread) = engine::start(load, options.engine, metrics.clone()).map_err(ServeError::Load)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| ServeError::Io(format!("cannot start the async runtime: {e}")))?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let state = Arc::new(routes::AppState {
        engine,
        tokenizer: Arc::new(tokenizer),
        metrics: metrics.clone(),
        config: options.http.clone(),
        shutdown: shutdown_rx,
        grammars: std::sync::OnceLock::new(),
    });
    let result = runtime.block_on(async move {
        let signals = conn::Signals::new().map_err(|e| ServeError::Io(format!("cannot watch SIGTERM and SIGINT: {e}")))?;
        let addr = format!("{}:{}", options.host, options.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| ServeError::Io(format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr().map_err(|e| ServeError::Io(format!("cannot read the bound address: {e}")))?;
        eprintln!("lava serve: listening on http://{local}");
        let app = routes::router(state);
        Ok(conn::serve(listener, app, options.conn, metrics, signals, shutdown_tx).await)
    });
    // Every handle on the engine is gone with the router: it ends once idle
    // (sequences whose connection was dropped are cancelled at its next turn).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    let cut = matches!(result, Ok(true));
    if cut {
        // Forced: wait for the engine's current step a little, not for ever.
        let t = std::time::Instant::now();
        while !thread.is_finished() && t.elapsed() < std::time::Duration::from_secs(2) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    } else {
        let _ = thread.join();
    }
    eprintln!("lava serve: stopped");
    result.map(|_| ())
}
