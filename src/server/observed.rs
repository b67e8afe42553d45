//! A socket whose writes are reported to an observer: the one wrapper behind
//! the watches on a socket's writes (a WebSocket client's progress, a
//! caller's blocked writes). Reads pass through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Told the outcome of every write to an [`Observed`] socket.
pub trait WriteObserver {
    /// One write's outcome: the bytes it took, or that the socket was full.
    fn observe(&self, written: &Poll<io::Result<usize>>);
}

/// `io`, its writes reported to `observer`.
#[derive(Debug)]
pub struct Observed<T, O> {
    io: T,
    observer: O,
}

impl<T, O> Observed<T, O> {
    /// Wraps `io`, reporting to `observer`.
    pub fn new(io: T, observer: O) -> Self {
        Self { io, observer }
    }
}

impl<T: AsyncRead + Unpin, O: Unpin> AsyncRead for Observed<T, O> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin, O: WriteObserver + Unpin> AsyncWrite for Observed<T, O> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        self.observer.observe(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.observer.observe(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
