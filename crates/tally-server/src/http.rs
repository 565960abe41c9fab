//! The HTTP/1.1 and HTTP/2 connection loop (hyper): accepts connections, serves the router
//! on each, and drains them on shutdown. Its own limits sit far above the router's, so
//! that requests with long URIs or many headers reach the router and are refused there
//! with the error envelope (`api::limits`) instead of by hyper with an empty body.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::normalize_path::NormalizePath;

/// hyper's own header-count limit; the router refuses more than `api::limits::MAX_HEADERS`.
const HYPER_MAX_HEADERS: usize = 1_000;
/// hyper's read buffer, which bounds a request head; the router refuses heads larger than
/// `api::limits::MAX_HEADER_BYTES`.
const HYPER_MAX_BUF: usize = 1024 * 1024;
/// A client has this long to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections still open this long after shutdown starts are closed.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` resolves, then waits for open connections
/// to finish their requests (at most `SHUTDOWN_DEADLINE`).
pub async fn run(
    listener: TcpListener,
    app: NormalizePath<axum::Router>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(HYPER_MAX_HEADERS)
        .max_buf_size(HYPER_MAX_BUF);
    builder.http2().max_header_list_size(HYPER_MAX_BUF as u32);
    let graceful = GracefulShutdown::new();
    // Every connection's task, so the ones still open at the shutdown deadline are closed.
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
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
        let service = ServiceBuilder::new()
            .map_request(|req: hyper::Request<hyper::body::Incoming>| {
                req.map(axum::body::Body::new)
            })
            .layer(axum::Extension(ConnectInfo::<SocketAddr>(peer)))
            .service(app.clone());
        let hyper_service = TowerToHyperService::new(service);
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), hyper_service);
        let conn = graceful.watch(conn.into_owned());
        connections.spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_DEADLINE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            deadline_secs = SHUTDOWN_DEADLINE.as_secs(),
            "closing connections still open at the shutdown deadline"
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}
