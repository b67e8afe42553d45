//! An answer that hyper stops taking is let go of after the send timeout, or
//! sooner when too many of one tunnel's answers wait so.
//!
//! The socket watch ([`super::send_watch`]) sees a caller who stops reading
//! only when the edge's writes block. An HTTP/2 caller may stop reading one
//! stream and not its connection (a browser's `fetch` whose body is never
//! read): HTTP/2's flow control then stops hyper from writing that stream, so
//! it stops polling the answer's body, and the socket never fills. The
//! answer meanwhile holds its QUIC stream's receive window (four such
//! streams hold the tunnel's whole connection window) or, over WebSocket, its
//! body in memory. So, for HTTP/2 callers, a body that handed out a frame and
//! has not been polled again for the send timeout is dropped: the tunnel's
//! stream is stopped, and a later poll fails, which resets the caller's
//! stream. A body that is waiting for the app (a quiet event stream) is not
//! waiting on hyper and is never cut.
//!
//! **A tunnel's window is shared** ([`Stalls`]): over QUIC, every answer its
//! caller does not take holds up to a stream's window of the tunnel's
//! connection window, HTTP/1 callers whose sockets are full as much as
//! HTTP/2 ones. Five callers that asked for large downloads and read none
//! held all of it, and every other request of the tunnel waited for the send
//! timeout (a prompt one took 27 s): anyone could freeze a tunnel so, again
//! and again. So past [`STALL_GRACE`] an untaken answer counts as stalled,
//! and a tunnel keeps at most [`MAX_STALLED`] of them: a further one has the
//! answer stalled longest dropped, and half the window stays for the rest.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::held::held_for;
use super::http::{Body, BoxError};

/// How long an answer may go untaken before it counts as stalled for its
/// tunnel's [`Stalls`]: longer than a reader that keeps reading leaves its
/// socket full (Linux wakes the writer once a third of the buffer drained:
/// about 3 s for a 1 MB buffer at 1 Mbit/s), so that slow downloads are
/// not taken for abandoned ones. (Readers slower still may be.)
pub const STALL_GRACE: Duration = Duration::from_secs(5);
/// Stalled answers a tunnel keeps: with an 8 MiB stream window, half of its
/// 32 MiB connection window.
pub const MAX_STALLED: usize = (crate::quic::CONNECTION_WINDOW / crate::quic::STREAM_WINDOW / 2) as usize;

struct State {
    /// `None` once dropped, for the reason in `cut`.
    body: Option<Body>,
    /// When a frame was handed out that hyper has not asked past yet.
    handed: Option<Instant>,
    /// Why the body was dropped.
    cut: &'static str,
}

const UNTAKEN: &str = "the caller read nothing of the answer for the send timeout";
const CROWDED: &str = "the caller stopped reading the answer, and the tunnel had more such answers than it keeps";

/// One tunnel session's answers that are stalled (see the module's doc).
#[derive(Debug)]
pub struct Stalls {
    max: usize,
    grace: Duration,
    stalled: Mutex<Vec<std::sync::Weak<Mutex<State>>>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("handed", &self.handed).field("cut", &self.body.is_none()).finish()
    }
}

impl Default for Stalls {
    fn default() -> Self {
        Self::new(MAX_STALLED, STALL_GRACE)
    }
}

impl Stalls {
    /// Keeps at most `max` answers left untaken for `grace`.
    pub fn new(max: usize, grace: Duration) -> Self {
        Self { max, grace, stalled: Mutex::new(Vec::new()) }
    }

    /// Notes `state` as stalled (again); past the limit, drops the answers
    /// stalled longest. Entries that were taken since, or dropped, leave.
    fn note(&self, state: &std::sync::Weak<Mutex<State>>) {
        let mut list = self.stalled.lock().unwrap_or_else(|p| p.into_inner());
        let still = |w: &std::sync::Weak<Mutex<State>>| {
            w.upgrade().and_then(|s| {
                let s = lock(&s);
                s.body.as_ref()?;
                s.handed.filter(|at| at.elapsed() >= self.grace)
            })
        };
        if !list.iter().any(|w| w.ptr_eq(state)) {
            list.push(state.clone());
        }
        // Each entry's stall read once: one taken meanwhile leaves the list,
        // rather than counting as the oldest.
        let mut stalled: Vec<_> = list.drain(..).filter_map(|w| Some((still(&w)?, w))).collect();
        while stalled.len() > self.max {
            let oldest = (0..stalled.len()).min_by_key(|&i| stalled[i].0).unwrap_or(0);
            if let Some(state) = stalled.swap_remove(oldest).1.upgrade() {
                let mut state = lock(&state);
                // Taken since it was looked at: not dropped after all.
                if state.handed.is_some_and(|at| at.elapsed() >= self.grace) {
                    tracing::debug!(stalled = ?state.handed.map(|at| at.elapsed()), "dropping the answer stalled longest: its tunnel has too many");
                    state.body = None;
                    state.cut = CROWDED;
                }
            }
        }
        list.extend(stalled.into_iter().map(|(_, w)| w));
    }
}

/// `body`, dropped once hyper has left a frame of it unfollowed for `limit`,
/// or, with `stalls`, once it is the one stalled longest of too many.
pub fn watch(body: Body, limit: Duration, stalls: Option<Arc<Stalls>>) -> Body {
    let hint = body.size_hint();
    let end = body.is_end_stream();
    let state = Arc::new(Mutex::new(State { body: Some(body), handed: None, cut: UNTAKEN }));
    let weak = Arc::downgrade(&state);
    // (Aborted when the body is dropped, so it never outlives the answer.)
    let watchdog = tokio::spawn(async move {
        let handed = || weak.upgrade().and_then(|state| lock(&state).handed);
        let grace = stalls.as_ref().map_or(limit, |s| s.grace.min(limit));
        loop {
            held_for(grace, handed).await;
            let Some(since) = handed() else { continue };
            if since.elapsed() >= limit {
                // Under the lock, in case hyper polled in between.
                let Some(state) = weak.upgrade() else { return };
                let mut state = lock(&state);
                if state.handed.is_some_and(|at| at.elapsed() >= limit) {
                    tracing::debug!(?limit, "dropping an answer its caller stopped reading");
                    state.body = None;
                    return;
                }
                continue;
            }
            if let Some(stalls) = &stalls {
                stalls.note(&weak);
                if weak.upgrade().is_none_or(|state| lock(&state).body.is_none()) {
                    return;
                }
            }
            // Looked at again within the grace: taken meanwhile and stalled
            // again, it is noted again.
            tokio::time::sleep_until((since + limit).min(Instant::now() + grace)).await;
        }
    });
    Untaken { state, watchdog: watchdog.abort_handle(), hint, end }.boxed_unsync()
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

struct Untaken {
    state: Arc<Mutex<State>>,
    watchdog: AbortHandle,
    hint: SizeHint,
    end: bool,
}

impl Drop for Untaken {
    fn drop(&mut self) {
        self.watchdog.abort();
    }
}

impl http_body::Body for Untaken {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut state = lock(&this.state);
        state.handed = None;
        let Some(body) = state.body.as_mut() else {
            return Poll::Ready(Some(Err(state.cut.into())));
        };
        let polled = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            let more = state.body.as_ref().is_some_and(|b| !b.is_end_stream());
            state.handed = more.then(Instant::now);
        }
        if let Poll::Ready(None) = &polled {
            this.end = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.end
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body whose frame is not followed by another poll is dropped after the
    /// limit; one that keeps being polled, or waits for its own data, is not.
    #[tokio::test]
    async fn an_untaken_body_is_dropped_after_the_limit() {
        let limit = Duration::from_millis(200);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let source = http_body_util::StreamBody::new(tokio_stream_from(rx)).boxed_unsync();
        let mut body = watch(source, limit, None);
        tx.send(Ok(Frame::data(Bytes::from_static(b"one")))).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // Waiting on its own source (polled, pending): never cut.
        let pending = tokio::time::timeout(limit * 3, body.frame()).await;
        assert!(pending.is_err(), "no frame, no cut");
        tx.send(Ok(Frame::data(Bytes::from_static(b"two")))).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        // Handed out, then not polled for the limit: dropped, and the source with it.
        tokio::time::sleep(limit * 3).await;
        assert!(tx.is_closed(), "the source was dropped");
        assert!(body.frame().await.unwrap().is_err());
    }

    /// A tunnel keeps at most its limit of stalled answers: past it, the one
    /// stalled longest is dropped (after the grace), whatever the send
    /// timeout; an answer waiting on its own source is never counted.
    #[tokio::test]
    async fn past_the_limit_the_answer_stalled_longest_is_dropped() {
        let grace = Duration::from_millis(200);
        let stalls = Arc::new(Stalls::new(1, grace));
        let limit = Duration::from_secs(60);
        let mut sources = Vec::new();
        let mut bodies = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
            let mut body = watch(
                http_body_util::StreamBody::new(tokio_stream_from(rx)).boxed_unsync(),
                limit,
                Some(stalls.clone()),
            );
            tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
            assert!(body.frame().await.unwrap().is_ok(), "handed out, then left untaken");
            sources.push(tx);
            bodies.push(body);
            tokio::time::sleep(grace / 2).await;
        }
        // One more, polled again and waiting on its source: taken, not stalled.
        let (waiting_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let mut waiting =
            watch(http_body_util::StreamBody::new(tokio_stream_from(rx)).boxed_unsync(), limit, Some(stalls.clone()));
        waiting_tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
        assert!(waiting.frame().await.unwrap().is_ok());
        let polling = tokio::spawn(async move { waiting.frame().await.map(|f| f.is_ok()) });
        tokio::time::sleep(grace * 4).await;
        let dropped: Vec<bool> = sources.iter().map(|tx| tx.is_closed()).collect();
        assert_eq!(dropped, [true, true, false], "the newest stalled answer is kept");
        assert!(!waiting_tx.is_closed(), "an answer waiting on its source is not stalled");
        let err = bodies[0].frame().await.unwrap().unwrap_err().to_string();
        assert!(err.contains("more such answers than it keeps"), "{err}");
        waiting_tx.send(Ok(Frame::data(Bytes::from_static(b"y")))).await.unwrap();
        assert_eq!(polling.await.unwrap(), Some(true));
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
