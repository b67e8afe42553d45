//! A caller's socket that says how long its writes have been blocked: how the
//! listener tells a caller who stopped reading its answer.
//!
//! Why it matters: an answer the caller does not read stops in the edge's
//! socket buffer, then in the tunnel. Over QUIC it holds the stream's receive
//! window (8 MiB), and a few such callers hold the whole connection's: every
//! other request of that tunnel then waits, for as long as those callers keep
//! their sockets open. Over the WebSocket gateway each holds its answer, whole,
//! in the server's memory. So a connection whose writes have made no progress
//! for [`HttpLimits::send_timeout`](super::listener::HttpLimits::send_timeout)
//! is closed, as nginx's `send_timeout` does: what it held goes with it.
//! (Sooner, over QUIC, a tunnel keeps only a few such answers: see
//! [`super::untaken::Stalls`].)
//!
//! Only the time between two writes that make progress counts, so a reader
//! that keeps reading is not cut, however long its answer takes, as long as
//! it frees room in the socket within the timeout: Linux wakes a writer once
//! a third of the send buffer (up to 4 MiB) has drained, so below about
//! 46 KB/s even a reader that reads can go 30 s without a write passing.
//!
//! What it does not see: an HTTP/2 caller that stops reading one stream but
//! not its connection. HTTP/2's own flow control then stops hyper from
//! writing that stream, and the socket never blocks: [`super::untaken`]
//! watches those answers instead.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use tokio::time::Instant;

use super::observed::{Observed, WriteObserver};

/// Since when a socket's writes have been blocked, shared with its watcher.
#[derive(Debug)]
pub struct Blocked {
    epoch: Instant,
    /// Milliseconds from `epoch` to the first write that found the socket
    /// full, plus one; 0 while writes go through.
    since_ms: AtomicU64,
}

impl Blocked {
    fn new() -> Self {
        Self { epoch: Instant::now(), since_ms: AtomicU64::new(0) }
    }

    /// When the current run of blocked writes began, if one is going on.
    pub fn since(&self) -> Option<Instant> {
        match self.since_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.epoch + std::time::Duration::from_millis(ms - 1)),
        }
    }

    /// Notes a write's outcome; stores only on a change, so a busy socket
    /// does not write the shared word on every write.
    fn note<T>(&self, polled: &Poll<T>) {
        let blocked = self.since_ms.load(Ordering::Relaxed) != 0;
        match (polled.is_pending(), blocked) {
            (true, false) => {
                let ms = self.epoch.elapsed().as_millis() as u64 + 1;
                self.since_ms.store(ms, Ordering::Relaxed);
            }
            (false, true) => self.since_ms.store(0, Ordering::Relaxed),
            _ => {}
        }
    }
}

impl WriteObserver for Arc<Blocked> {
    fn observe(&self, written: &Poll<io::Result<usize>>) {
        self.note(written);
    }
}

/// A socket whose writes are watched by a [`Blocked`].
pub type SendWatched<S> = Observed<S, Arc<Blocked>>;

/// Watches `inner`; the handle tells since when its writes are blocked.
pub fn send_watched<S>(inner: S) -> (SendWatched<S>, Arc<Blocked>) {
    let blocked = Arc::new(Blocked::new());
    (Observed::new(inner, blocked.clone()), blocked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Writes into a pipe nobody reads block, and say since when; once the
    /// other end reads, the next write clears it.
    #[tokio::test]
    async fn a_full_pipe_is_blocked_until_read() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let (mut watched, blocked) = send_watched(ours);
        watched.write_all(&[0; 1024]).await.unwrap();
        assert_eq!(blocked.since(), None, "written in full");
        let before = Instant::now();
        let stuck = tokio::time::timeout(std::time::Duration::from_millis(50), watched.write_all(&[1; 10])).await;
        assert!(stuck.is_err(), "the pipe is full");
        let since = blocked.since().expect("blocked");
        assert!(since >= before - std::time::Duration::from_millis(2), "{since:?} {before:?}");
        let mut got = vec![0; 1024];
        theirs.read_exact(&mut got).await.unwrap();
        watched.write_all(&[2; 10]).await.unwrap();
        assert_eq!(blocked.since(), None, "progress again");
    }
}
