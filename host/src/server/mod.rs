//! Listeners and connections: accepting, TLS, HTTP/1.1 and HTTP/2 (also
//! cleartext with prior knowledge), limits and timeouts on what clients send,
//! and graceful shutdown.
//!
//! [`serve`] takes the bound listener and the shutdown signal from its
//! caller, so tests bind port 0 and stop the server when they like.

pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::HttpArgs;
use crate::response::{ResponseBody, error_response};

/// HTTP/2 streams a client may have open on one connection.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 streams a client may reset before they are accepted (defends
/// against "rapid reset" floods).
pub const H2_MAX_PENDING_ACCEPT_RESETS: usize = 50;
/// HTTP/2 streams the server may reset because of client errors before it
/// closes the connection.
pub const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;

/// What a handler knows about the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Answers requests. Implemented by the data plane of `run` and by the full
/// server of `serve`.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(
        &self,
        request: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<ResponseBody>> + Send;
}

/// Limits and timeouts of the HTTP layer.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Time to receive the request line and headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// Largest header section (HTTP/1.1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_header_count: usize,
    /// Longest request target.
    pub max_uri_length: usize,
    /// Connections served at once.
    pub max_connections: usize,
    /// Time in-flight requests get after shutdown is signalled.
    pub shutdown_timeout: Duration,
    /// Time a client has to complete the TLS handshake.
    pub tls_handshake_timeout: Duration,
}

impl From<&HttpArgs> for HttpOptions {
    fn from(args: &HttpArgs) -> Self {
        Self {
            header_read_timeout: args.header_read_timeout,
            max_header_bytes: usize::try_from(args.max_header_bytes).unwrap_or(usize::MAX),
            max_header_count: args.max_header_count,
            max_uri_length: args.max_uri_length,
            max_connections: args.max_connections,
            shutdown_timeout: args.shutdown_timeout,
            tls_handshake_timeout: args.tls_handshake_timeout,
        }
    }
}

/// Binds `addr` with `SO_REUSEADDR` (so a restarted node can rebind while
/// old connections sit in TIME_WAIT) and a deep accept queue.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Serves connections from `listener` with `handler` until `shutdown`
/// resolves; then stops accepting (new connections are refused), lets
/// in-flight requests finish for up to `options.shutdown_timeout`, and
/// returns.
pub async fn serve<H, S>(
    listener: TcpListener,
    tls: Option<tls::TlsAcceptor>,
    handler: Arc<H>,
    options: HttpOptions,
    shutdown: S,
) -> anyhow::Result<()>
where
    H: Handler,
    S: Future<Output = ()>,
{
    let builder = Arc::new(connection_builder(&options));
    let options = Arc::new(options);
    // One permit per open connection: at the cap the loop stops accepting
    // and clients wait in the kernel's queue (backpressure, not errors).
    let connections = Arc::new(Semaphore::new(options.max_connections));
    let graceful = GracefulShutdown::new();
    let mut accept_backoff = Duration::ZERO;
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = connections.clone().acquire_owned() => permit?,
        };
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    accept_backoff = Duration::ZERO;
                    accepted
                }
                Err(e) => {
                    if is_resource_exhaustion(&e) {
                        // Out of file descriptors or memory: accepting again
                        // at once would spin. Back off, up to a second.
                        accept_backoff = (accept_backoff * 2)
                            .clamp(Duration::from_millis(10), Duration::from_secs(1));
                        tracing::warn!(error = %e, backoff_ms = accept_backoff.as_millis() as u64,
                                       "accept failed: resources exhausted");
                        tokio::time::sleep(accept_backoff).await;
                    }
                    continue;
                }
            },
        };
        // Nagle would hold small writes (a streamed chunk, an h2 frame) for
        // up to 40 ms waiting for an ACK; guests that stream need them sent.
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let handler = handler.clone();
        let tls = tls.clone();
        let options = options.clone();
        tokio::spawn(async move {
            serve_connection(stream, remote, tls, builder, handler, options, watcher).await;
            drop(permit);
        });
    }

    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(options.shutdown_timeout) => {
            tracing::warn!(timeout_s = options.shutdown_timeout.as_secs(),
                           "shutdown timeout: closing the remaining connections");
        }
    }
    Ok(())
}

fn connection_builder(options: &HttpOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // hyper's header read timeout does nothing without a timer.
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(options.max_header_bytes.max(8192))
        .max_headers(options.max_header_count)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

async fn serve_connection<H: Handler>(
    stream: TcpStream,
    remote: SocketAddr,
    tls: Option<tls::TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    handler: Arc<H>,
    options: Arc<HttpOptions>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let info = ConnInfo { remote, tls: tls.is_some() };
    let handshake_timeout = options.tls_handshake_timeout;
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let handler = handler.clone();
        let max_uri_length = options.max_uri_length;
        async move {
            if too_long(&request, max_uri_length) {
                return Ok::<_, Infallible>(error_response(
                    StatusCode::URI_TOO_LONG,
                    "uri_too_long",
                    &format!("the request target is longer than {max_uri_length} bytes"),
                ));
            }
            Ok(handler.handle(request, info).await)
        }
    });
    let result = match tls {
        None => {
            let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
            watcher.watch(connection).await
        }
        Some(acceptor) => {
            let stream =
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
            let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
            watcher.watch(connection).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}

fn too_long(request: &Request<Incoming>, max: usize) -> bool {
    let uri = request.uri();
    let length = uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    length > max
}

fn is_resource_exhaustion(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}
