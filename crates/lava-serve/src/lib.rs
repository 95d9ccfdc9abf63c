//! # lava-serve
//!
//! `lava serve`: an OpenAI-compatible HTTP server (tokio + axum) that runs
//! many conversations at once, each with its own (compressed) KV cache, in
//! one KV-memory budget.
//!
//! - [`engine`]: the one thread that owns the model and the caches and runs
//!   continuous batching (a prompt's prefill chunks ride in the batched decode steps);
//! - [`admission`]: what a request reserves of `--kv-memory`;
//! - [`routes`]: the endpoints; [`api`]: request and response bodies;
//!   [`policy`]: the per-request `kv_*` fields; [`sse`]: streaming;
//!   [`text`]: token ids to text with `stop` strings; [`metrics`]: `/metrics`;
//!   [`error`]: OpenAI-style error bodies.
//!
//! The model and caches never leave the engine thread (the caller's `load`
//! runs there), so the backend's tensors need not be `Send`.

pub mod admission;
pub mod api;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod policy;
pub mod routes;
pub mod sse;
pub mod text;

use std::sync::Arc;

use burn::tensor::backend::Backend;

pub use engine::{CacheFactory, EngineConfig, Loaded};
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
/// SIGTERM or SIGINT, then stops taking connections, lets every running
/// request finish and returns.
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
    let state = Arc::new(routes::AppState { engine, tokenizer: Arc::new(tokenizer), metrics, config: options.http.clone() });
    let result = runtime.block_on(async move {
        let addr = format!("{}:{}", options.host, options.port);
        let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| ServeError::Io(format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr().map_err(|e| ServeError::Io(format!("cannot read the bound address: {e}")))?;
        eprintln!("lava serve: listening on http://{local}");
        let app = routes::router(state);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|e| ServeError::Io(format!("the server failed: {e}")))
    });
    // Every handle on the engine is gone with the router: it ends once idle.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    let _ = thread.join();
    eprintln!("lava serve: stopped");
    result
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    eprintln!("lava serve: shutting down, finishing the running requests");
}
