//! Whether a streamed request body kept the edge waiting on its caller: what
//! tells, at the request timeout, a slow caller (408) from an app that does
//! not read or answer (504).
//!
//! A wait is counted from a poll of the body that found no frame until the
//! body's waker fires (the caller's bytes arrived), not until the next poll:
//! between the two the sender may be blocked writing to a congested tunnel,
//! and that time is the app's (or the tunnel's), not the caller's.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::quic::framed::sent_inline;

/// A request body measured by a [`Pace`]; only a body that streams is (one
/// sent inline, see [`sent_inline`], is read whole before anything is sent,
/// so a timeout while it arrives is the caller's anyway), so that small
/// requests pay nothing.
pub struct CallerPaced<B> {
    inner: B,
    pace: Option<Arc<Pace>>,
}

impl<B: Body> CallerPaced<B> {
    /// Measures `inner` if it streams.
    pub fn new(inner: B) -> Self {
        let pace = (!sent_inline(&inner)).then(|| {
            let now = Instant::now();
            Arc::new(Pace { started: now, waits: Mutex::new(Waits { since: None, ended: Duration::ZERO, taken: now }) })
        });
        Self { inner, pace }
    }

    /// The measure, shared with whoever waits on the answer.
    pub fn pace(&self) -> Option<Arc<Pace>> {
        self.pace.clone()
    }
}

/// How long a body kept its reader waiting on the caller.
#[derive(Debug)]
pub struct Pace {
    started: Instant,
    /// One lock, taken when a wait starts or ends, so a reader never sees a
    /// wait ended in one field and not yet in the other.
    waits: Mutex<Waits>,
}

#[derive(Debug)]
struct Waits {
    /// When the current wait began, if the reader is waiting.
    since: Option<Instant>,
    /// The waits that have ended, in all.
    ended: Duration,
    /// When the reader last took a frame (or the body began).
    taken: Instant,
}

impl Waits {
    fn end_wait(&mut self) {
        if let Some(since) = self.since.take() {
            self.ended += since.elapsed();
        }
    }
}

impl Pace {
    fn waits(&self) -> std::sync::MutexGuard<'_, Waits> {
        self.waits.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_starts(&self) {
        let mut waits = self.waits();
        waits.since.get_or_insert_with(Instant::now);
    }

    fn wait_ends(&self) {
        self.waits().end_wait();
    }

    fn frame_taken(&self) {
        let mut waits = self.waits();
        waits.end_wait();
        waits.taken = Instant::now();
    }

    /// Whether the caller holds the request up now: the reader is waiting
    /// on it, and has waited for at least half the time since the request
    /// started, or for a quarter of it in this one wait (a caller that went
    /// quiet near the end, after the app had been slow to read).
    pub fn caller_is_late(&self) -> bool {
        let waits = self.waits();
        let Some(since) = waits.since else { return false };
        let elapsed = self.started.elapsed();
        let current = since.elapsed();
        waits.ended + current >= elapsed / 2 || current >= elapsed / 4
    }

    /// Resolves once no frame of the body was taken for `limit`: what ends an
    /// upload that goes on after the app's answer, whether its caller went
    /// quiet or the tunnel stopped taking it (a client that answered and
    /// reads no more). Either would hold the upload's task and the caller's
    /// connection for ever; a moving upload takes a frame at least every
    /// `limit`. One timer at a time, about one wake-up per `limit` while the
    /// upload flows.
    pub async fn stalls(&self, limit: Duration) {
        super::held::held_for(limit, || Some(self.waits().taken)).await;
    }
}

/// The task's waker, which first ends the wait it was registered for.
struct EndsWait {
    pace: Arc<Pace>,
    task: Waker,
}

impl Wake for EndsWait {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.pace.wait_ends();
        self.task.wake_by_ref();
    }
}

impl<B> Body for CallerPaced<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let Some(pace) = &this.pace else {
            return std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        };
        let polled = match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            // Nothing yet: poll again with a waker that marks when the
            // caller's bytes come (a new waker only when a wait starts; what
            // is already buffered costs nothing).
            Poll::Pending => {
                pace.wait_starts();
                let waker = Waker::from(Arc::new(EndsWait { pace: pace.clone(), task: cx.waker().clone() }));
                std::pin::Pin::new(&mut this.inner).poll_frame(&mut Context::from_waker(&waker))
            }
            ready => ready,
        };
        if polled.is_ready() {
            pace.frame_taken();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
