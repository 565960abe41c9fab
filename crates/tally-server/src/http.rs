//! The HTTP/1.1 and HTTP/2 connection loop (hyper): accepts connections, serves the router
//! on each, and drains them on shutdown. Its own limits sit far above the router's, so
//! that requests with long URIs or many headers reach the router and are refused there
//! with the error envelope (`api::limits`) instead of by hyper with an empty body.
//!
//! Every connection has a watchdog: a client that starts a request head must finish it
//! within the header-read timeout (slow-header attacks), and a connection with no request
//! in flight and no bytes moving is closed after the idle timeout. Connections beyond the
//! cap are answered 503 and closed, so a flood of sockets cannot use up the open-file
//! limit and starve `accept`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;
use tower_http::normalize_path::NormalizePath;

use crate::config::HttpTimeouts;

/// hyper's own header-count limit, a little above `api::limits::MAX_HEADERS` so that the
/// router answers a head with a few headers too many with the envelope; hyper answers a
/// bare 431 past this. hyper parses every head into buffers of this many entries (on the
/// heap past 100), so it stays small: at 1,000 the two 32 KiB buffers filled per request
/// were 3 % of the gateway's CPU.
const HYPER_MAX_HEADERS: usize = 128;
/// hyper's read buffer, which bounds a request head; the router refuses heads larger than
/// `api::limits::MAX_HEADER_BYTES`.
const HYPER_MAX_BUF: usize = 1024 * 1024;
/// How an HTTP/2 connection with prior knowledge starts.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
/// File descriptors kept free for the database, logs and the like when the connection cap
/// is fitted under the open-file limit.
const RESERVED_FDS: u64 = 256;
/// Refusals (503) being written at once; beyond this an excess connection is just closed.
/// Well inside `RESERVED_FDS`, so refusing never uses up the open-file limit.
const MAX_REFUSALS: usize = 64;

/// How the loop treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub timeouts: HttpTimeouts,
    pub max_connections: usize,
}

/// Raises the soft open-file limit to the hard limit (logging both) and returns the
/// connection cap that fits under it.
pub fn fit_connection_cap(configured: usize) -> usize {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let limit = getrlimit(Resource::Nofile);
        let (soft, hard) = (limit.current, limit.maximum);
        let mut effective = soft;
        if soft != hard {
            let raised = rustix::process::Rlimit {
                current: hard,
                maximum: hard,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => effective = hard,
                Err(error) => tracing::warn!(%error, "could not raise the open-file limit"),
            }
        }
        let show = |v: Option<u64>| v.map_or("unlimited".to_owned(), |n| n.to_string());
        let cap = match effective {
            Some(n) => configured.min(n.saturating_sub(RESERVED_FDS).max(1) as usize),
            None => configured,
        };
        tracing::info!(
            soft = %show(soft),
            hard = %show(hard),
            now = %show(effective),
            max_connections = cap,
            "open-file limit"
        );
        cap
    }
    #[cfg(not(unix))]
    configured
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for open connections
/// to finish their requests (at most the shutdown deadline) and closes the rest.
pub async fn run(
    listener: TcpListener,
    app: NormalizePath<axum::Router>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .max_headers(HYPER_MAX_HEADERS)
        .max_buf_size(HYPER_MAX_BUF);
    builder.http2().max_header_list_size(HYPER_MAX_BUF as u32);
    let graceful = GracefulShutdown::new();
    let clock = Instant::now();
    // Every connection's task, so the ones still open at the shutdown deadline are closed.
    let mut connections = tokio::task::JoinSet::new();
    let mut refusals = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            Some(_) = refusals.join_next(), if !refusals.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small writes (stream chunks) go out at once instead of waiting for the peer's
        // delayed ACK (Nagle's algorithm): a stream's first token would otherwise wait 40 ms.
        let _ = stream.set_nodelay(true);
        if connections.len() >= limits.max_connections {
            if refusals.len() < MAX_REFUSALS {
                refusals.spawn(refuse(stream));
            }
            continue;
        }
        let activity = Arc::new(Activity::new(clock));
        let tracked = activity.clone();
        let service = ServiceBuilder::new()
            .map_future(move |response| {
                let request = tracked.begin();
                async move {
                    let r = response.await;
                    drop(request);
                    r
                }
            })
            .map_request(|req: hyper::Request<hyper::body::Incoming>| {
                req.map(axum::body::Body::new)
            })
            .layer(axum::Extension(ConnectInfo::<SocketAddr>(peer)))
            .service(app.clone());
        let hyper_service = TowerToHyperService::new(service);
        let io = TokioIo::new(WatchedStream {
            inner: stream,
            activity: activity.clone(),
        });
        let conn = builder.serve_connection_with_upgrades(io, hyper_service);
        let conn = graceful.watch(conn.into_owned());
        let timeouts = limits.timeouts;
        connections.spawn(async move {
            tokio::select! {
                result = conn => if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                },
                reason = watchdog(&activity, timeouts) => {
                    tracing::debug!(%peer, reason, "closing connection");
                }
            }
        });
    }
    drop(listener);
    let deadline = limits.timeouts.shutdown;
    if tokio::time::timeout(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            deadline_secs = deadline.as_secs_f64(),
            "closing connections still open at the shutdown deadline"
        );
    }
    connections.abort_all();
    refusals.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Answers a connection over the cap with 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"error":{"code":"SERVICE_UNAVAILABLE","message":"too many open connections; retry shortly","details":{}}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// What the watchdog knows of a connection, in milliseconds since the loop started.
struct Activity {
    clock: Instant,
    /// Last time bytes moved either way.
    last: AtomicU64,
    /// When the first byte of a request head arrived while no request was in flight
    /// (0: none pending). HTTP/1 only.
    head_started: AtomicU64,
    in_flight: AtomicUsize,
    /// Set on an HTTP/2 connection (its preface seen): its control frames arrive between
    /// requests, so the head timeout does not apply; the idle timeout does.
    http2: std::sync::atomic::AtomicBool,
    /// Whether the first read was seen (the preface check is done once).
    started: std::sync::atomic::AtomicBool,
}

/// One request being served; dropped when its response head is ready.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    fn new(clock: Instant) -> Self {
        let me = Self {
            clock,
            last: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            http2: std::sync::atomic::AtomicBool::new(false),
            started: std::sync::atomic::AtomicBool::new(false),
        };
        me.touch();
        me
    }

    fn now(&self) -> u64 {
        // Never 0, which `head_started` uses for "none".
        self.clock.elapsed().as_millis() as u64 + 1
    }

    fn touch(&self) {
        self.last.store(self.now(), Ordering::Relaxed);
    }

    fn read(&self, bytes: &[u8]) {
        self.touch();
        // Only the connection's first read can carry the HTTP/2 preface: one relaxed load
        // on every later read.
        if !self.started.load(Ordering::Relaxed) {
            self.started.store(true, Ordering::Relaxed);
            self.http2
                .store(bytes.starts_with(H2_PREFACE), Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Relaxed) == 0 && !self.http2.load(Ordering::Relaxed) {
            let _ = self.head_started.compare_exchange(
                0,
                self.now(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }
}

/// Resolves when the connection should be closed, with the reason.
async fn watchdog(activity: &Activity, timeouts: HttpTimeouts) -> &'static str {
    let ms = |d: Duration| d.as_millis() as u64;
    let (header_ms, idle_ms) = (ms(timeouts.header_read), ms(timeouts.idle));
    let tick = (timeouts.header_read.min(timeouts.idle) / 4).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(tick).await;
        if activity.in_flight.load(Ordering::Relaxed) > 0 {
            continue;
        }
        let now = activity.now();
        let started = activity.head_started.load(Ordering::Relaxed);
        if started != 0 && now.saturating_sub(started) > header_ms {
            return "request head not received within the header-read timeout";
        }
        if now.saturating_sub(activity.last.load(Ordering::Relaxed)) > idle_ms {
            return "idle timeout";
        }
    }
}

/// A TCP stream that tells its connection's `Activity` when bytes move.
struct WatchedStream {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
