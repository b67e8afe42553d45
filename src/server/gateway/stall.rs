//! The write deadline of a WebSocket client: it is dropped when its socket
//! accepts no byte from the server for a whole stall period while the server
//! has something to write.
//!
//! A deadline on each write would drop a slow link that is fine (a 14 MiB
//! message may take minutes to reach a phone), and no deadline at all lets a
//! client that never reads hold its session, its socket and what is queued
//! for it for ever, with the writer blocked where it cannot see the session
//! end. So the socket counts the bytes it accepts, and a write fails only when
//! that count stands still for the whole period.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use crate::server::observed::{Observed, WriteObserver};

/// Bytes the socket has accepted from the server so far.
#[derive(Debug, Default)]
pub struct Progress(AtomicU64);

impl Progress {
    fn written(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The client made no progress reading for a whole stall period.
#[derive(Debug, thiserror::Error)]
#[error("the client accepted no data for {0:?}")]
pub struct Stalled(pub Duration);

/// A socket that counts the bytes written to it in a shared [`Progress`].
pub type Counted<T> = Observed<T, Arc<Progress>>;

impl WriteObserver for Arc<Progress> {
    fn observe(&self, written: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = written {
            self.0.fetch_add(*n as u64, Ordering::Relaxed);
        }
    }
}

/// Runs `write` (a write to the socket `progress` counts) for as long as the
/// socket keeps accepting bytes: [`Stalled`] once `stall` (give or take a
/// quarter) passes without one. A write that is fast or moving is never cut
/// short.
pub async fn unless_stalled<F: Future>(progress: &Progress, stall: Duration, write: F) -> Result<F::Output, Stalled> {
    tokio::pin!(write);
    let (mut written, mut since) = (progress.written(), Instant::now());
    loop {
        match tokio::time::timeout(stall / 4, &mut write).await {
            Ok(out) => return Ok(out),
            Err(_) if progress.written() != written => (written, since) = (progress.written(), Instant::now()),
            Err(_) if since.elapsed() >= stall => return Err(Stalled(stall)),
            Err(_) => {}
        }
    }
}
