//! Connections to the local app that remember whether they have answered.
//!
//! An app may close a kept-alive connection at the moment the client sends
//! the next request on it: its keep-alive timeout runs out, or it closes
//! after every answer without saying `Connection: close`. The request then
//! fails unanswered ("connection closed before message completed", or reset),
//! though the app never took it. Under concurrency a tenth of the requests to
//! such an app failed so. curl and browsers send such a request again on a new
//! connection, and so does [`super::LocalApp`], but only when the connection
//! had answered a request before and the app sent nothing of an answer to
//! this one: a request that fails on a new connection, or after part of an
//! answer, may have been taken (and crashed the app), and is not sent twice.
//!
//! What tells the two apart is kept on the connection itself ([`Tracked`]):
//! whether the app had sent anything before this request went out, and
//! whether it sent anything since. hyper-util hands a connection's extras to
//! the error of a request that failed on it
//! ([`Error::connect_info`](hyper_util::client::legacy::Error::connect_info)),
//! and that state is among them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use http::{Extensions, Uri};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::forward::LoopbackFirst;

/// What a connection has seen of the app, shared with its extras.
#[derive(Debug, Default)]
struct Seen {
    /// The app answered on it before the request being sent now: a request
    /// went out after bytes had come in. (HTTP/1 has one request at a time on
    /// a connection, and hyper writes a whole body with its head.)
    answered_before: AtomicBool,
    /// Bytes came in since the last request went out.
    read_since_write: AtomicBool,
}

/// Whether the request that failed with `err` went out on a connection that
/// had answered before, and the app sent nothing of an answer to it: it
/// closed a kept-alive connection as the request arrived.
pub(super) fn stale_connection(err: &hyper_util::client::legacy::Error) -> bool {
    let Some(connected) = err.connect_info() else { return false };
    let mut extras = Extensions::new();
    connected.get_extras(&mut extras);
    let Some(seen) = extras.get::<Arc<Seen>>() else { return false };
    seen.answered_before.load(Ordering::Relaxed)
        && !seen.read_since_write.load(Ordering::Relaxed)
        && closed_unanswered(err)
}

/// Connects as [`HttpConnector`] does, each connection [`Tracked`].
#[derive(Clone, Debug)]
pub(super) struct AppConnector(pub(super) HttpConnector<LoopbackFirst>);

type Inner = HttpConnector<LoopbackFirst>;

impl tower_service::Service<Uri> for AppConnector {
    type Response = TokioIo<Tracked>;
    type Error = <Inner as tower_service::Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let stream = connecting.await?.into_inner();
            Ok(TokioIo::new(Tracked { stream, read_since_write: false, seen: Arc::default() }))
        })
    }
}

/// A TCP connection to the app that notes what it has [`Seen`].
#[derive(Debug)]
pub(super) struct Tracked {
    stream: TcpStream,
    /// [`Seen::read_since_write`], kept here too so that the shared flags
    /// are written only when they change (twice a request), not per read.
    read_since_write: bool,
    seen: Arc<Seen>,
}

impl Connection for Tracked {
    fn connected(&self) -> Connected {
        self.stream.connected().extra(self.seen.clone())
    }
}

impl Tracked {
    /// A request (or more of it) is going out.
    fn writing(&mut self) {
        if self.read_since_write {
            self.read_since_write = false;
            self.seen.read_since_write.store(false, Ordering::Relaxed);
            self.seen.answered_before.store(true, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before && !this.read_since_write {
            this.read_since_write = true;
            this.seen.read_since_write.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.writing();
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.writing();
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
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && hyper.is_incomplete_message()
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
            )
        {
            return true;
        }
        next = e.source();
    }
    false
}
