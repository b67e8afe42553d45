//! Connections to the local app, and what they tell of it.
//!
//! An app may close a kept-alive connection just as the client sends the
//! next request on it: it closes after every answer without saying
//! `Connection: close`, or its keep-alive timeout runs out. The request then
//! fails unanswered ("connection closed before message completed", or
//! reset). Under concurrency a tenth of the requests to an app of the first
//! kind failed so. Two remedies, neither of which may send a webhook twice
//! to an app that saw it:
//!
//! - **An app that closes after answering** is noticed ([`AppSide`]): a
//!   connection it ends within [`QUICK_CLOSE`] of an answer. For a while the
//!   client then sends each request on a new connection, as the app wants,
//!   and the race is gone.
//! - **A request caught in the race anyway is sent again** on a new
//!   connection when the app cannot have acted on it: its side of the
//!   connection was already closed (an end or a reset waiting to be read)
//!   when the request began to go out; or the request is idempotent (GET,
//!   PUT, DELETE, …, which HTTP lets a client repeat), went out on a
//!   connection that had answered before, and nothing of an answer came.
//!   A POST the app read and then failed without answering (it crashed, a
//!   handler panicked) stays the caller's 502: its side effects must not run
//!   twice.
//!
//! The checks cost nothing while the connection is healthy: the socket is
//! peeked only when its readiness says something is waiting, which on a
//! kept-alive connection between requests is only its end. hyper-util hands a
//! connection's extras to the error of a request that failed on it
//! ([`Error::connect_info`](hyper_util::client::legacy::Error::connect_info)),
//! and what [`Tracked`] saw is among them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Extensions, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::forward::LoopbackFirst;

/// A connection the app ends this soon after an answer means it closes
/// after every answer (a keep-alive timeout is seconds).
pub(super) const QUICK_CLOSE: Duration = Duration::from_millis(500);
/// How long, once noticed, each request goes on a new connection.
const NEW_CONNECTIONS_FOR: Duration = Duration::from_secs(60);

/// What the connections have told of the app.
#[derive(Debug)]
pub(super) struct AppSide {
    started: Instant,
    /// Until when (milliseconds from `started`) requests go on new
    /// connections: the app closes after answering.
    new_connections_until: AtomicU64,
}

impl Default for AppSide {
    fn default() -> Self {
        Self { started: Instant::now(), new_connections_until: AtomicU64::new(0) }
    }
}

impl AppSide {
    /// Whether requests should go on a new connection each now.
    pub(super) fn closes_after_answering(&self) -> bool {
        // (The clock only for an app seen to close so: most never are.)
        let until = self.new_connections_until.load(Ordering::Relaxed);
        until != 0 && (self.started.elapsed().as_millis() as u64) < until
    }

    fn closed_after_answering(&self) {
        let until = (self.started.elapsed() + NEW_CONNECTIONS_FOR).as_millis() as u64;
        if self.new_connections_until.swap(until, Ordering::Relaxed) == 0 {
            tracing::debug!("the local app closes its connections after answering: a new connection for each request");
        }
    }
}

/// What a connection has seen of the app, shared with its extras.
#[derive(Debug, Default)]
struct Seen {
    /// The app had answered on it before the request being sent now.
    answered_before: AtomicBool,
    /// The app's side was closed (its end, or a reset, waiting to be read)
    /// when that request began to go out.
    closed_before: AtomicBool,
    /// Bytes came in since that request began to go out.
    read_since: AtomicBool,
}

/// Whether the request that failed with `err` may be sent again: nothing of
/// an answer came, and either the app had closed the connection before the
/// request began to go out, or the request is `idempotent` and the
/// connection had answered before (a kept-alive connection, closed as it
/// went out).
pub(super) fn may_send_again(err: &hyper_util::client::legacy::Error, idempotent: bool) -> bool {
    let Some(connected) = err.connect_info() else { return false };
    let mut extras = Extensions::new();
    connected.get_extras(&mut extras);
    let Some(seen) = extras.get::<Arc<Seen>>() else { return false };
    let closed_before = seen.closed_before.load(Ordering::Relaxed);
    let kept_alive = idempotent && seen.answered_before.load(Ordering::Relaxed);
    (closed_before || kept_alive) && !seen.read_since.load(Ordering::Relaxed) && closed_unanswered(err)
}

/// Connects as [`HttpConnector`] does, each connection [`Tracked`].
#[derive(Clone, Debug)]
pub(super) struct AppConnector {
    pub(super) inner: HttpConnector<LoopbackFirst>,
    pub(super) app: Arc<AppSide>,
}

type Inner = HttpConnector<LoopbackFirst>;

impl tower_service::Service<Uri> for AppConnector {
    type Response = TokioIo<Tracked>;
    type Error = <Inner as tower_service::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let app = self.app.clone();
        Box::pin(async move {
            let stream = connecting.await?.into_inner();
            Ok(TokioIo::new(Tracked { stream, idle: true, answered_at: None, seen: Arc::default(), app }))
        })
    }
}

/// A TCP connection to the app that notes what it has [`Seen`].
#[derive(Debug)]
pub(super) struct Tracked {
    stream: TcpStream,
    /// Nothing was written since the last bytes came in (or ever): the next
    /// write begins a request. (HTTP/1 has one request at a time on a
    /// connection, and hyper writes the next only once the previous answer
    /// was read to its end. An interim `100 Continue` read mid-body makes the
    /// rest of the body look like a new request: the app then has not had
    /// the whole request, so it cannot have acted on it.)
    idle: bool,
    /// When the last answer began to come in, if one did.
    answered_at: Option<Instant>,
    seen: Arc<Seen>,
    app: Arc<AppSide>,
}

impl Connection for Tracked {
    fn connected(&self) -> Connected {
        self.stream.connected().extra(self.seen.clone())
    }
}

impl Tracked {
    /// Notes, as a request begins to go out, whether the app had closed its
    /// side. The peek is a system call only when the socket's readiness says
    /// something waits to be read, which between requests is only an end.
    fn writing(&mut self, cx: &mut Context<'_>) {
        if !self.idle {
            return;
        }
        self.idle = false;
        let mut byte = [0u8; 1];
        let mut peeked = ReadBuf::new(&mut byte);
        let closed = match self.stream.poll_peek(cx, &mut peeked) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => true,
            // Bytes no request asked for (hyper fails the connection on
            // them), or nothing waiting: open.
            Poll::Ready(Ok(_)) | Poll::Pending => false,
        };
        self.seen.answered_before.store(self.answered_at.is_some(), Ordering::Relaxed);
        self.seen.closed_before.store(closed, Ordering::Relaxed);
        self.seen.read_since.store(false, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (before, room) = (buf.filled().len(), buf.remaining());
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 && !this.idle {
            this.idle = true;
            this.answered_at = Some(Instant::now());
            this.seen.read_since.store(true, Ordering::Relaxed);
        } else if read == 0
            && room > 0
            && matches!(polled, Poll::Ready(Ok(())))
            && this.idle
            && this.answered_at.is_some_and(|at| at.elapsed() < QUICK_CLOSE)
        {
            // The app ended the connection right after an answer.
            this.app.closed_after_answering();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.writing(cx);
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.writing(cx);
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Whether `err` is a connection closed or reset under a request: what a
/// kept-alive connection closed at the wrong moment gives.
fn closed_unanswered(err: &hyper_util::client::legacy::Error) -> bool {
    if err.is_connect() {
        return false;
    }
    crate::error_sources(err).any(|e| {
        let incomplete = e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_incomplete_message);
        let cut = e.downcast_ref::<io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
            )
        });
        incomplete || cut
    })
}
