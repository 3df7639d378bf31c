//! The accept loop of the HTTP port: what keeps slow, idle or too many
//! clients from taking the port away from `/healthz` and the API.
//!
//! - **Header-read timeout** (`http.header_read_timeout`): a request's
//!   headers must arrive in full within it, counted from the moment the
//!   connection is ready for a request (so it also ends a kept-alive
//!   connection on which no next request comes).
//! - **Idle timeout** (`http.idle_timeout`): a connection on which no byte
//!   moved for that long while no handler is running is closed (a client
//!   that stopped reading its answer). Long store work inside a handler is
//!   not idleness.
//! - **Connection cap** (`http.max_connections`): past it a new connection
//!   gets an immediate `503` with `Retry-After` and is closed, so the excess
//!   costs a file descriptor for a moment, never a slot.
//! - Running out of file descriptors while accepting is logged (at most once
//!   a minute) and retried after a short pause instead of spinning.
//!
//! It only moves bytes: routing, auth and handlers are the router's. On
//! shutdown it stops accepting and lets every connection finish its request.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// The listener's limits (from `[http]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// What a connection over the cap is told before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 67\r\n\r\n{\"error\":\"too many open connections to erpsync: try again shortly\"}";

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let stop = CancellationToken::new();
    let conns = TaskTracker::new();
    let refusals = Throttled::default();
    let accept_errors = Throttled::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE/ENFILE and the like: the descriptors come back
                    // as connections close; do not spin meanwhile.
                    if accept_errors.due() {
                        tracing::warn!(error = %e, "cannot accept HTTP connections (at most one line a minute)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if refusals.due() {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "HTTP connection refused: http.max_connections are open (at most one line a minute)"
                );
            }
            conns.spawn(refuse(stream));
            continue;
        };
        let router = router.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            connection(stream, addr, router, limits, stop).await;
            drop(slot);
        });
    }
    stop.cancel();
    conns.close();
    conns.wait().await;
    Ok(())
}

/// Answers 503 and closes, within a second whatever the client does.
async fn refuse(mut stream: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(REFUSAL).await?;
        stream.shutdown().await
    })
    .await;
}

async fn connection(
    stream: TcpStream,
    addr: SocketAddr,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let busy = Arc::clone(&activity);
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(addr));
        let mut router = router.clone();
        let guard = Running::new(Arc::clone(&busy));
        async move {
            let r = router.call(req.map(axum::body::Body::new)).await;
            drop(guard);
            r
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    loop {
        let idle_for = activity.idle_for();
        let wait = limits.idle_timeout.saturating_sub(idle_for);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.as_mut().await;
                return;
            }
            _ = tokio::time::sleep(wait) => {
                if activity.running() == 0 && activity.idle_for() >= limits.idle_timeout {
                    tracing::debug!(client = %addr, "HTTP connection idle: closed");
                    return;
                }
            }
        }
    }
}

/// When a connection last moved a byte, and how many handlers run on it.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    running: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            running: AtomicUsize::new(0),
        }
    }
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
    fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

/// Counts a running handler for as long as it lives.
struct Running(Arc<Activity>);

impl Running {
    fn new(a: Arc<Activity>) -> Running {
        a.running.fetch_add(1, Ordering::SeqCst);
        Running(a)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// A socket that records when bytes last moved.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// At most one log line a minute for a repeated condition.
#[derive(Default)]
struct Throttled(Mutex<Option<Instant>>);

impl Throttled {
    fn due(&self) -> bool {
        let mut last = self.0.lock().expect("throttle lock poisoned");
        let now = Instant::now();
        if last.is_some_and(|l| now.duration_since(l) < Duration::from_secs(60)) {
            return false;
        }
        *last = Some(now);
        true
    }
}
