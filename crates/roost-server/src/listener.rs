//! The listener: accepts TCP connections (with TLS when configured) and serves HTTP/1.1 and
//! WebSocket upgrades on them, with the bounds a server facing the internet needs.
//!
//! - A connection has `http.header_read_timeout_secs` to deliver a complete request head (and
//!   its TLS handshake), counted from when it opens or from the first byte of a later request;
//!   a kept-alive connection may sit silent for `http.idle_timeout_secs` between requests.
//!   Either runs out and the connection closes. (hyper's own header timer starts when it waits
//!   for a head, which on a kept-alive connection is the idle wait too, so the two could not be
//!   set apart with it; a watchdog per connection keeps both.)
//! - Request bodies are bounded in time, size and memory where they are read (`crate::http::body`).
//! - A response the client stops reading may stall for `http.write_timeout_secs` at most (no
//!   byte accepted by the socket that long); then the connection closes.
//! - At most `http.max_connections` connections, WebSockets included, are open at once; the
//!   next is answered `503 too_many_connections` and closed, so the process never runs out of
//!   file descriptors and what it has stays served.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::config::HttpConfig;

/// Descriptors kept back from connections when the cap is derived from the descriptor limit:
/// the database pool, Redis, the SQLite files, logs and refusals need their own.
const DESCRIPTOR_RESERVE: u64 = 256;
/// Refusals being written at once, at most; beyond that a connection over the cap is closed
/// without an answer (each refusal holds a descriptor while it is written).
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// How long a refusal waits for the client's request before closing: closing with unread bytes
/// would reset the connection and could destroy the answer on its way.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Connections the kernel completes and holds for the server before it accepts them (capped by
/// the system's `net.core.somaxconn`). A listener's usual 128 overflows when an instance's
/// clients reconnect at once, or when a moment's stall leaves many new connections waiting:
/// the kernel then drops their handshakes, and each client retries only after a second or more.
pub const BACKLOG: u32 = 4096;

/// Binds a listening socket at `address` with room for [`BACKLOG`] waiting connections.
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // As the standard library's listeners do: a restarted server may bind again at once while
    // its old connections linger in TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// The bounds the listener enforces, resolved from [`HttpConfig`].
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Time to a complete request head.
    pub header_read: Duration,
    /// Silent time allowed between requests.
    pub idle: Duration,
    /// Time a response may wait for the client to take any of it.
    pub write: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Bounds {
    /// The bounds of `config`; a cap of 0 becomes the descriptor limit less a reserve (the
    /// soft limit is first raised to the hard one).
    pub fn of(config: &HttpConfig) -> Self {
        let max_connections = match config.max_connections {
            0 => automatic_connection_cap(),
            cap => cap as usize,
        };
        Self {
            header_read: Duration::from_secs(config.header_read_timeout_secs),
            idle: Duration::from_secs(config.idle_timeout_secs),
            write: Duration::from_secs(config.write_timeout_secs),
            max_connections,
        }
    }
}

/// Raises the soft descriptor limit to the hard one and keeps a reserve back from it.
fn automatic_connection_cap() -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => limit = getrlimit(Resource::Nofile),
            Err(err) => tracing::debug!(error = %err, "could not raise the file-descriptor limit"),
        }
    }
    // No limit at all (None) is capped like a large one.
    let descriptors = limit.current.unwrap_or(1 << 20);
    usize::try_from(descriptors.saturating_sub(DESCRIPTOR_RESERVE).max(16)).unwrap_or(usize::MAX)
}

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, lets requests in
/// progress finish and closes idle connections. (WebSockets are closed by the hub.)
pub async fn serve(
    listener: TcpListener,
    app: Router,
    bounds: Bounds,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    tracing::info!(max_connections = bounds.max_connections, tls = tls.is_some(), "accepting connections");
    let slots = Arc::new(Semaphore::new(bounds.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of descriptors or memory: wait rather than spin; a peer that gave
                    // up before being accepted is nothing to wait for.
                    if !is_per_connection(&err) {
                        tracing::warn!(error = %err, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        // Pushes are small writes that must leave at once: with Nagle's algorithm a frame
        // written while an earlier one is unacknowledged waits for the peer's delayed ACK.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY on an accepted connection");
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("roost_http_connections_refused_total").increment(1);
            if let Ok(refusing) = refusals.clone().try_acquire_owned() {
                connections.spawn(async move {
                    refuse(tcp).await;
                    drop(refusing);
                });
            }
            continue;
        };
        let connection = Connection { peer, app: app.clone(), bounds, stopping: stopping.clone() };
        connections.spawn(connection.run(tcp, slot, tls.clone()));
    }
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Errors that concern one connection only (it was reset before it was accepted).
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// Answers a connection over the cap with `503 too_many_connections` and closes it.
async fn refuse(mut tcp: TcpStream) {
    let body = serde_json::json!({"error": {
        "code": roost_proto::ErrorCode::TooManyConnections,
        "message": "the server holds as many connections as it may; retry shortly",
    }})
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        // Read what the client sent first, so closing does not reset the connection.
        let mut request = [0u8; 4096];
        let _ = tokio::time::timeout(REFUSAL_LINGER / 4, tcp.read(&mut request)).await;
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await?;
        while tcp.read(&mut request).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// One accepted connection.
struct Connection {
    peer: SocketAddr,
    app: Router,
    bounds: Bounds,
    stopping: watch::Receiver<bool>,
}

impl Connection {
    async fn run(self, tcp: TcpStream, slot: OwnedSemaphorePermit, tls: Option<TlsAcceptor>) {
        let activity = Arc::new(Activity::new());
        // The slot goes wherever the socket goes (into a WebSocket after an upgrade), so it is
        // given back when the socket closes.
        let tracked = Tracked { inner: tcp, activity: activity.clone(), _slot: slot };
        match tls {
            None => self.serve(tracked, activity).await,
            Some(acceptor) => match tokio::time::timeout(self.bounds.header_read, acceptor.accept(tracked)).await {
                Ok(Ok(stream)) => self.serve(stream, activity).await,
                Ok(Err(err)) => tracing::debug!(peer = %self.peer, error = %err, "TLS handshake failed"),
                Err(_) => {
                    metrics::counter!("roost_http_connections_timed_out_total", "phase" => "tls").increment(1);
                }
            },
        }
    }

    async fn serve<I>(mut self, io: I, activity: Arc<Activity>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (peer, app, served) = (self.peer, self.app.clone(), activity.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let request_done = served.begin_request();
            let app = app.clone();
            async move {
                let response = match app.oneshot(request.map(Body::new)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| Body::new(ResponseBody { body, _done: request_done })))
            }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.keep_alive(true);
        let connection = http.serve_connection(TokioIo::new(io), service).with_upgrades();
        tokio::pin!(connection);
        let mut draining = false;
        loop {
            let deadline = activity.deadline(&self.bounds);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(err) = served {
                        tracing::debug!(peer = %self.peer, error = %err, "connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep_until(deadline) => {
                    if let Some(phase) = activity.expired(&self.bounds) {
                        metrics::counter!("roost_http_connections_timed_out_total", "phase" => phase).increment(1);
                        tracing::debug!(peer = %self.peer, phase, "closing a connection that ran out of time");
                        return;
                    }
                }
                () = activity.changed.notified() => {}
                _ = self.stopping.changed(), if !draining => {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// What a connection is doing, for its watchdog: requests in progress, when it last went idle
/// or began receiving its next request head, and since when its writes have been stuck. Times
/// are milliseconds since `epoch`.
struct Activity {
    epoch: Instant,
    in_flight: AtomicU32,
    idle_since: AtomicU64,
    /// When the bytes of the next request head began to arrive; `u64::MAX` while none has.
    head_since: AtomicU64,
    /// Since when the socket has taken no byte of what is being written; `u64::MAX` while
    /// writes go through.
    stuck_since: AtomicU64,
    /// Wakes the watchdog when a head begins or a write gets stuck, so its deadline follows.
    changed: Notify,
}

const NO_HEAD: u64 = u64::MAX;
const NOT_STUCK: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        // A new connection is expected to send its request at once: the header timeout applies
        // from the start, not the idle one.
        Self {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            stuck_since: AtomicU64::new(NOT_STUCK),
            changed: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.epoch + Duration::from_millis(millis)
    }

    /// Bytes arrived: between requests, they begin a request head.
    fn received(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 && self.head_since.load(Ordering::Acquire) == NO_HEAD {
            self.head_since.store(self.now(), Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// A write could not go through: the client is not reading (or the network is slow).
    fn write_stuck(&self) {
        if self.stuck_since.load(Ordering::Acquire) == NOT_STUCK {
            self.stuck_since.store(self.now(), Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// A write went through. Between requests (the end of a response still being written, as
    /// a body is handed over whole), that is activity too: the connection is not idle.
    fn wrote(&self) {
        if self.stuck_since.load(Ordering::Acquire) != NOT_STUCK {
            self.stuck_since.store(NOT_STUCK, Ordering::Release);
        }
        if self.in_flight.load(Ordering::Acquire) == 0 {
            self.idle_since.store(self.now(), Ordering::Release);
        }
    }

    /// A request head is complete and the request is being answered.
    fn begin_request(self: &Arc<Self>) -> RequestDone {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NO_HEAD, Ordering::Release);
        RequestDone(self.clone())
    }

    /// When the watchdog should look next.
    fn deadline(&self, bounds: &Bounds) -> Instant {
        // A response stuck on its way out has the write timeout, whatever else goes on.
        let stuck = self.stuck_since.load(Ordering::Acquire);
        if stuck != NOT_STUCK {
            return self.at(stuck) + bounds.write;
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // Answering: bodies have their own timeout; look again later.
            return Instant::now() + bounds.idle;
        }
        match self.head_since.load(Ordering::Acquire) {
            NO_HEAD => self.at(self.idle_since.load(Ordering::Acquire)) + bounds.idle,
            since => self.at(since) + bounds.header_read,
        }
    }

    /// Which bound the connection has run out of, if any.
    fn expired(&self, bounds: &Bounds) -> Option<&'static str> {
        let now = Instant::now();
        let stuck = self.stuck_since.load(Ordering::Acquire);
        if stuck != NOT_STUCK {
            return (now >= self.at(stuck) + bounds.write).then_some("write");
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.head_since.load(Ordering::Acquire) {
            NO_HEAD => (now >= self.at(self.idle_since.load(Ordering::Acquire)) + bounds.idle).then_some("idle"),
            since => (now >= self.at(since) + bounds.header_read).then_some("header"),
        }
    }
}

/// Marks a request finished when its response body is dropped (written in full, or abandoned).
struct RequestDone(Arc<Activity>);

impl Drop for RequestDone {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.idle_since.store(activity.now(), Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        activity.changed.notify_one();
    }
}

/// A response body that reports when it is done.
struct ResponseBody {
    body: Body,
    _done: RequestDone,
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The accepted socket, reporting arrivals to the watchdog and holding the connection's slot.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.received();
        }
        polled
    }
}

impl Tracked {
    /// Reports to the watchdog whether a write went through.
    fn watched<T>(&self, polled: Poll<T>) -> Poll<T> {
        match polled {
            Poll::Pending => self.activity.write_stuck(),
            Poll::Ready(_) => self.activity.wrote(),
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watched(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watched(polled)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// Connections the test opens against a listener that accepts none: well past a listener's
    /// usual 128, within the system's cap (and, with the listener, well within a soft limit of
    /// 1,024 open files).
    const WAITING: usize = 300;

    fn waiting_connections() -> Option<usize> {
        let cap: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok()?.trim().parse().ok()?;
        (cap > WAITING).then_some(WAITING)
    }

    #[tokio::test]
    async fn connections_the_server_has_not_accepted_yet_wait_for_it() {
        let Some(count) = waiting_connections() else {
            eprintln!("skipped: net.core.somaxconn does not allow {WAITING} waiting connections here");
            return;
        };
        let listener = bind(([127, 0, 0, 1], 0).into()).unwrap();
        let address = listener.local_addr().unwrap();
        let mut connecting = JoinSet::new();
        for _ in 0..count {
            // A handshake the kernel dropped is retried after 1, 3, 7... seconds, and dropped
            // again while nothing is accepted: only a backlog with room completes them all.
            connecting.spawn(tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(address)));
        }
        let mut connected = Vec::new();
        while let Some(outcome) = connecting.join_next().await {
            let stream = outcome.unwrap().expect("the handshake completed without being dropped").unwrap();
            connected.push(stream);
        }
        assert_eq!(connected.len(), count);
        // And the server gets every one of them.
        for _ in 0..count {
            let (_, peer) = listener.accept().await.unwrap();
            assert!(peer.ip().is_loopback());
        }
    }
}
