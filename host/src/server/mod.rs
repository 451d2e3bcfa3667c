//! Listeners and connections: accepting, TLS, HTTP/1.1 and HTTP/2 (also
//! cleartext with prior knowledge), limits and timeouts on what clients send,
//! and graceful shutdown.
//!
//! [`serve`] takes the bound listeners and the shutdown signal from its
//! caller, so tests bind port 0 and stop the server when they like.
//!
//! Connections are served either on the process's own (multi-thread) tokio
//! runtime from one accept loop, or, with `HttpOptions::threads` set, by
//! that many threads, each running a single-threaded runtime with its own
//! listening socket on the same address (`SO_REUSEPORT`: the kernel spreads
//! new connections over the sockets). A connection then stays on the thread
//! that accepted it, with no work stealing between threads.

mod flood;
pub mod tls;

pub use flood::{CONTROL_FRAME_BURST, CONTROL_FRAMES_PER_SECOND, FLOOD_CLOSE_DELAY, FloodGuard};

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_util::task::TaskTracker;

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
    /// Threads serving connections, each with its own event loop and
    /// listening socket; 0 serves them on the caller's runtime.
    pub threads: usize,
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
            threads: args.server_threads,
        }
    }
}

/// The listening sockets of one address: one, or one per serving thread.
#[derive(Debug)]
pub struct Listeners {
    sockets: Vec<std::net::TcpListener>,
    local: SocketAddr,
}

impl Listeners {
    /// The address bound (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Binds `addr` for `options`: one socket, or one per serving thread, all
/// on the same address (`SO_REUSEPORT`; port 0 gets one port for all).
/// `SO_REUSEADDR` lets a restarted node rebind while old connections sit in
/// TIME_WAIT; the accept queue is deep.
pub fn bind(addr: SocketAddr, options: &HttpOptions) -> std::io::Result<Listeners> {
    let count = options.threads.max(1);
    let first = bind_one(addr, count > 1)?;
    let local = first.local_addr()?;
    let mut sockets = vec![first];
    while sockets.len() < count {
        sockets.push(bind_one(local, true)?);
    }
    Ok(Listeners { sockets, local })
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)?.into_std()
}

/// Serves connections from `listeners` with `handler` until `shutdown`
/// resolves; then stops accepting (new connections are refused), lets
/// in-flight requests finish for up to `options.shutdown_timeout`, and
/// returns.
pub async fn serve<H, S>(
    listeners: Listeners,
    tls: Option<tls::TlsAcceptor>,
    handler: Arc<H>,
    options: HttpOptions,
    shutdown: S,
) -> anyhow::Result<()>
where
    H: Handler,
    S: Future<Output = ()>,
{
    let (draining, _) = watch::channel(false);
    let tasks = TaskTracker::new();
    let open = Arc::new(OpenConnections::default());
    let shared = Arc::new(Shared {
        builder: connection_builder(&options),
        // One permit per open connection, over all threads: at the cap the
        // loops stop accepting and clients wait in the kernel's queue
        // (backpressure, not errors; see `accept_loop`).
        connections: Arc::new(Semaphore::new(options.max_connections)),
        graceful: Mutex::new(Some(GracefulShutdown::new())),
        draining: draining.clone(),
        tasks: tasks.clone(),
        open: open.clone(),
        options,
    });

    if shared.options.threads == 0 {
        let mut sockets = listeners.sockets;
        let listener = TcpListener::from_std(sockets.remove(0))?;
        tasks.spawn(accept_loop(listener, tls, handler, shared.clone()));
    } else {
        start_threads(listeners, tls.as_ref(), &handler, &shared)?;
    }

    shutdown.await;
    // Every accept loop stops and closes its socket: new connections are
    // refused from here on.
    draining.send_replace(true);
    let graceful = shared.graceful.lock().unwrap_or_else(PoisonError::into_inner).take();
    let timeout = shared.options.shutdown_timeout;
    if let Some(graceful) = graceful {
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections closed"),
            () = tokio::time::sleep(timeout) => {
                tracing::warn!(timeout_s = timeout.as_secs(),
                               "shutdown timeout: closing the remaining connections");
            }
        }
    }
    // Connections still open past the timeout are closed; every task this
    // server started has ended when it returns.
    open.abort_all();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// The abort handles of the open connections' tasks.
#[derive(Default)]
struct OpenConnections {
    next: std::sync::atomic::AtomicU64,
    tasks: Mutex<HashMap<u64, tokio::task::AbortHandle>>,
}

impl OpenConnections {
    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, tokio::task::AbortHandle>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns a connection's task and registers it, under the lock: the
    /// task's own `remove` cannot come before.
    fn spawn(&self, id: u64, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.lock();
        tasks.insert(id, tokio::spawn(task).abort_handle());
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn abort_all(&self) {
        for (_, task) in self.lock().drain() {
            task.abort();
        }
    }
}

/// What every accept loop and connection of one [`serve`] shares.
struct Shared {
    builder: auto::Builder<TokioExecutor>,
    connections: Arc<Semaphore>,
    /// Taken when the server drains: a loop that finds it gone stops.
    graceful: Mutex<Option<GracefulShutdown>>,
    /// Becomes `true` when the listeners are to close.
    draining: watch::Sender<bool>,
    /// The accept loop (on the shared runtime) and every connection's task,
    /// so [`serve`] returns only when they have ended.
    tasks: TaskTracker,
    /// Each open connection's task, aborted past the shutdown timeout.
    open: Arc<OpenConnections>,
    options: HttpOptions,
}

impl Shared {
    /// Resolves once the server drains.
    fn drained(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut draining = self.draining.subscribe();
        async move {
            let _ = draining.wait_for(|draining| *draining).await;
        }
    }
}

/// Starts one thread per listener, each with a single-threaded runtime that
/// serves that listener until the server drains.
///
/// The threads and their runtimes then stay until the process exits: a
/// database pool or Redis connection first used from one of them has its
/// socket registered with that runtime, and must keep working for whatever
/// runs after [`serve`] returns (the last flush of usage counts).
fn start_threads<H: Handler>(
    listeners: Listeners,
    tls: Option<&tls::TlsAcceptor>,
    handler: &Arc<H>,
    shared: &Arc<Shared>,
) -> anyhow::Result<()> {
    for (i, socket) in listeners.sockets.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (tls, handler, shared) = (tls.cloned(), handler.clone(), shared.clone());
        std::thread::Builder::new().name(format!("wasmwiz-http-{i}")).spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(socket) {
                    Ok(listener) => accept_loop(listener, tls, handler, shared).await,
                    Err(e) => tracing::error!(error = %e, "cannot serve a listening socket"),
                }
                std::future::pending::<()>().await;
            });
        })?;
    }
    Ok(())
}

/// Accepts connections from `listener` and serves each in a task of its own
/// until the server drains; then closes the listener.
async fn accept_loop<H: Handler>(
    listener: TcpListener,
    tls: Option<tls::TlsAcceptor>,
    handler: Arc<H>,
    shared: Arc<Shared>,
) {
    let mut accept_backoff = Duration::ZERO;
    let stopped = shared.drained();
    tokio::pin!(stopped);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut stopped => break,
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
        // At the cap this loop holds the one connection it accepted (the
        // rest wait in the kernel's queue) until a connection closes. The
        // permit is taken after the accept, not before: with a socket per
        // thread, a permit taken first could go to a loop whose queue is
        // empty while a client waits in another's.
        let permit = tokio::select! {
            () = &mut stopped => break,
            permit = shared.connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        // Nagle would hold small writes (a streamed chunk, an h2 frame) for
        // up to 40 ms waiting for an ACK; guests that stream need them sent.
        let _ = stream.set_nodelay(true);
        let watcher = {
            let graceful = shared.graceful.lock().unwrap_or_else(PoisonError::into_inner);
            match graceful.as_ref() {
                Some(graceful) => graceful.watcher(),
                None => break, // draining
            }
        };
        let (handler, tls, shared) = (handler.clone(), tls.clone(), shared.clone());
        // Tracked (an add and a sub per connection, nothing per request) and
        // abortable past the shutdown timeout.
        let open = shared.open.clone();
        let id = open.next_id();
        let tasks = shared.tasks.clone();
        let task = tasks.track_future(async move {
            serve_connection(stream, remote, tls, &shared, handler, watcher).await;
            shared.open.remove(id);
            drop(permit);
        });
        open.spawn(id, task);
    }
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
    shared: &Shared,
    handler: Arc<H>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let info = ConnInfo { remote, tls: tls.is_some() };
    let handshake_timeout = shared.options.tls_handshake_timeout;
    let max_uri_length = shared.options.max_uri_length;
    let builder = &shared.builder;
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let handler = handler.clone();
        async move {
            if too_long(&request, max_uri_length) {
                return Ok::<_, Infallible>(uri_too_long(max_uri_length));
            }
            Ok(handler.handle(request, info).await)
        }
    });
    let result = match tls {
        None => {
            let stream = FloodGuard::new(stream, Some(remote));
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
            let stream = FloodGuard::new(stream, Some(remote));
            let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
            watcher.watch(connection).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%remote, error = %e, "connection ended with an error");
    }
}

/// The answer to a request whose target is longer than `max` bytes.
fn uri_too_long(max: usize) -> Response<ResponseBody> {
    error_response(
        StatusCode::URI_TOO_LONG,
        "uri_too_long",
        &format!("the request target is longer than {max} bytes"),
    )
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

/// Serves one cleartext connection whose client sends `data` and then
/// closes its side, over an in-memory stream, with the default limits and
/// a handler that answers every request with its host. For fuzzing the
/// request-head limits (`crate::fuzzing::request_head`): panics if the
/// connection does not end within 5 s, or if what the server wrote is
/// neither HTTP/1.1 nor HTTP/2.
#[doc(hidden)]
pub fn fuzz_one_connection(data: &[u8]) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
    }
    let options = HttpOptions {
        header_read_timeout: Duration::from_secs(1),
        max_header_bytes: crate::config::DEFAULT_MAX_HEADER_BYTES,
        max_header_count: crate::config::DEFAULT_MAX_HEADER_COUNT,
        max_uri_length: crate::config::DEFAULT_MAX_URI_LENGTH,
        max_connections: 1,
        shutdown_timeout: Duration::from_secs(1),
        tls_handshake_timeout: Duration::from_secs(1),
        threads: 0,
    };
    let written = RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let builder = connection_builder(&options);
            let (mut client, server) = tokio::io::duplex(64 << 10);
            let max_uri_length = options.max_uri_length;
            let service =
                hyper::service::service_fn(move |request: Request<Incoming>| async move {
                    if too_long(&request, max_uri_length) {
                        return Ok::<_, Infallible>(uri_too_long(max_uri_length));
                    }
                    let authority = request
                        .uri()
                        .authority()
                        .map(|a| a.as_str().to_string())
                        .or_else(|| {
                            request
                                .headers()
                                .get(http::header::HOST)?
                                .to_str()
                                .ok()
                                .map(String::from)
                        })
                        .unwrap_or_default();
                    let host = crate::router::request_host(&authority);
                    Ok(Response::new(crate::response::full(host)))
                });
            let server = FloodGuard::new(server, None).close_after(Duration::ZERO);
            let connection = builder.serve_connection(TokioIo::new(server), service);
            let talk = async {
                let _ = client.write_all(data).await;
                let _ = client.shutdown().await;
                let mut written = Vec::new();
                let _ = client.read_to_end(&mut written).await;
                written
            };
            let ended = tokio::time::timeout(Duration::from_secs(5), async {
                let (_, written) = tokio::join!(connection, talk);
                written
            });
            ended.await.expect("a connection that ends within 5 s of its client's last byte")
        })
    });
    let h2 = data.starts_with(b"PRI * HTTP/2.0");
    assert!(
        written.is_empty() || h2 || written.starts_with(b"HTTP/1."),
        "not an HTTP/1 answer: {:?}",
        String::from_utf8_lossy(&written[..written.len().min(64)])
    );
}
