//! Connections: the accept loop, each connection's timeouts, the cap on open
//! connections, and shutdown.
//!
//! Every connection is served by hyper's HTTP/1.1 machinery on a task of its
//! own, with a watchdog beside it that reads how the connection stands:
//!
//! - **idle** (no request in flight, no byte of a new one): closed after
//!   `--idle-timeout` (keep-alive timeout);
//! - **a request head arriving** (a byte of it read, the head not complete):
//!   closed `--header-timeout` after its first byte, however slowly the rest
//!   trickles in;
//! - **a request in flight** (from its complete head until its response is
//!   written): left alone here; the handler reads the body within
//!   `--body-timeout` (408 otherwise, see `routes`), and generation takes
//!   the time it takes.
//!
//! Past `--max-connections` open connections a new one is answered 503 and
//! closed at once, so slow clients cannot take every file descriptor.
//!
//! On the first SIGTERM or SIGINT the listener closes, idle and half-sent
//! connections are dropped at once, and every connection with a request in
//! flight finishes that request (its connection closes after it); whatever
//! still runs after `--shutdown-timeout`, or at a second signal, is dropped.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// Timeouts and limits of the connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnConfig {
    /// `--header-timeout`: a request head must arrive within this of its first byte.
    pub header_timeout: Duration,
    /// `--idle-timeout`: a connection with no request is closed after this.
    pub idle_timeout: Duration,
    /// `--max-connections`: open connections at most; more get 503.
    pub max_connections: usize,
    /// `--shutdown-timeout`: how long running requests may take to finish after SIGTERM.
    pub shutdown_timeout: Duration,
}

impl Default for ConnConfig {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(15),
            max_connections: 512,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// How one connection stands, written by its I/O and its requests, read by
/// its watchdog. Times are milliseconds since the connection opened.
struct Activity {
    opened: Instant,
    /// Requests from their complete head until their response is written.
    in_flight: AtomicUsize,
    /// When the connection last became idle.
    idle_since: AtomicU64,
    /// When the first byte of a new request head arrived ([`NONE`]: none yet).
    head_started: AtomicU64,
}

const NONE: u64 = u64::MAX;

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Idle,
    Header,
}

impl Activity {
    fn new() -> Self {
        Self { opened: Instant::now(), in_flight: AtomicUsize::new(0), idle_since: AtomicU64::new(0), head_started: AtomicU64::new(NONE) }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    /// Bytes were read from the client.
    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let _ = self.head_started.compare_exchange(NONE, self.now(), Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// A request's head is complete: it is in flight.
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
    }

    /// A request's response is written (or the request dropped).
    fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle_since.store(self.now(), Ordering::Release);
            self.head_started.store(NONE, Ordering::Release);
        }
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Whether the connection has outstayed a timeout (never while a request is in flight).
    fn expired(&self, c: &ConnConfig) -> Option<Expiry> {
        if self.busy() {
            return None;
        }
        let now = self.now();
        let started = self.head_started.load(Ordering::Acquire);
        if started != NONE {
            return (now.saturating_sub(started) >= millis(c.header_timeout)).then_some(Expiry::Header);
        }
        (now.saturating_sub(self.idle_since.load(Ordering::Acquire)) >= millis(c.idle_timeout)).then_some(Expiry::Idle)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(NONE - 1)
}

/// Holds a request in flight until dropped (with its response body, once written).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: Arc<Activity>) -> Self {
        a.begin();
        Self(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that keeps its request in flight until hyper has taken all of it.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, telling the connection's [`Activity`] when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// How often a watchdog looks: a quarter of the shortest timeout, within 10 ms..1 s.
fn tick(c: &ConnConfig) -> Duration {
    (c.header_timeout.min(c.idle_timeout) / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Serves one connection until it ends, times out, or shutdown drops it;
/// returns why the server closed it (`None`: it ended on its own).
async fn connection(stream: TcpStream, app: Router, config: ConnConfig, mut shutdown: watch::Receiver<bool>) -> Option<&'static str> {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched { stream, activity: activity.clone() });
    let app = TowerToHyperService::new(app);
    let a = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let in_flight = InFlight::new(a.clone());
        let answer = hyper::service::Service::call(&app, req);
        async move {
            let r = answer.await?;
            Ok::<_, Infallible>(r.map(|inner| Body::new(Tracked { inner, _in_flight: in_flight })))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::pin!(conn);
    let every = tick(&config);
    let mut draining = *shutdown.borrow();
    if draining {
        return Some("shutdown");
    }
    loop {
        tokio::select! {
            _ = conn.as_mut() => return None,
            _ = tokio::time::sleep(every) => {
                match activity.expired(&config) {
                    Some(Expiry::Idle) => return Some("idle_timeout"),
                    Some(Expiry::Header) => return Some("header_timeout"),
                    None => {}
                }
            }
            _ = shutdown.changed(), if !draining => {
                if !activity.busy() {
                    return Some("shutdown");
                }
                // Finish the request in flight, then close.
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Answers a connection over `--max-connections` with 503 and closes it.
async fn refuse(mut stream: TcpStream, max: usize) {
    let e = ApiError::unavailable(format!("the server has {max} open connections, its limit (--max-connections); retry later"));
    let body = e.body().to_string();
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        crate::error::RETRY_AFTER_SECONDS,
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent before closing, so that the close does not
        // reset the connection before the client has read the answer.
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

/// Connections being refused at most at once (each holds a socket for up to a second).
const MAX_REFUSING: usize = 64;

/// Resolves at each SIGTERM or SIGINT.
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Takes over SIGTERM and SIGINT (from now on they no longer end the process).
    pub fn new() -> io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Serves `app` on `listener` until a signal, then shuts down (module docs).
/// `shutdown` is set when the first signal comes (the handlers watch it too).
/// Returns whether connections still running were dropped (timeout or second signal).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ConnConfig,
    metrics: Arc<Metrics>,
    mut signals: Signals,
    shutdown: watch::Sender<bool>,
) -> bool {
    let mut open = JoinSet::new();
    let mut refusing = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    if open.len() >= config.max_connections {
                        metrics.connection_refused();
                        if refusing.len() < MAX_REFUSING {
                            refusing.spawn(refuse(stream, config.max_connections));
                        }
                        continue;
                    }
                    metrics.connection_opened();
                    let m = metrics.clone();
                    let served = connection(stream, app.clone(), config, shutdown.subscribe());
                    open.spawn(async move { m.connection_closed(served.await) });
                }
                // Out of file descriptors, or the client left before accept:
                // wait a little rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            Some(_) = open.join_next() => {}
            Some(_) = refusing.join_next() => {}
            _ = signals.next() => break,
        }
    }
    drop(listener);
    drop(app);
    refusing.abort_all();
    eprintln!("lava serve: shutting down: no new connections; finishing the requests in flight (at most {:?}, --shutdown-timeout; a second signal stops at once)", config.shutdown_timeout);
    let _ = shutdown.send(true);
    let deadline = tokio::time::sleep(config.shutdown_timeout);
    tokio::pin!(deadline);
    let cut = loop {
        tokio::select! {
            next = open.join_next() => if next.is_none() { break false },
            _ = &mut deadline => {
                eprintln!("lava serve: --shutdown-timeout reached: dropping {} connection(s) still running", open.len());
                break true;
            }
            _ = signals.next() => {
                eprintln!("lava serve: second signal: dropping {} connection(s) still running", open.len());
                break true;
            }
        }
    };
    if cut {
        open.abort_all();
        while open.join_next().await.is_some() {}
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_expires_idle_and_slow_heads_but_never_a_request_in_flight() {
        let c = ConnConfig { header_timeout: Duration::from_millis(40), idle_timeout: Duration::from_millis(80), ..ConnConfig::default() };
        let a = Arc::new(Activity::new());
        assert_eq!(a.expired(&c), None);
        std::thread::sleep(Duration::from_millis(90));
        assert_eq!(a.expired(&c), Some(Expiry::Idle));
        // A request in flight is never expired here.
        let r = InFlight::new(a.clone());
        a.read();
        std::thread::sleep(Duration::from_millis(90));
        assert_eq!(a.expired(&c), None);
        drop(r);
        assert_eq!(a.expired(&c), None, "idle again from the end of the response");
        // The first byte of a head starts the header clock; later bytes do not restart it.
        a.read();
        std::thread::sleep(Duration::from_millis(25));
        a.read();
        assert_eq!(a.expired(&c), None);
        std::thread::sleep(Duration::from_millis(25));
        assert_eq!(a.expired(&c), Some(Expiry::Header));
        assert_eq!(tick(&c), Duration::from_millis(10));
    }
}
