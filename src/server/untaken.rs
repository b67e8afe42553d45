//! An answer that hyper stops taking is let go of after the send timeout.
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

struct State {
    /// `None` once dropped for going untaken.
    body: Option<Body>,
    /// When a frame was handed out that hyper has not asked past yet.
    handed: Option<Instant>,
}

/// `body`, dropped once hyper has left a frame of it unfollowed for `limit`.
pub fn watch(body: Body, limit: Duration) -> Body {
    let hint = body.size_hint();
    let end = body.is_end_stream();
    let state = Arc::new(Mutex::new(State { body: Some(body), handed: None }));
    let weak = Arc::downgrade(&state);
    // (Aborted when the body is dropped, so it never outlives the answer.)
    let watchdog = tokio::spawn(async move {
        let handed = || weak.upgrade().and_then(|state| lock(&state).handed);
        loop {
            held_for(limit, handed).await;
            // Under the lock, in case hyper polled in between.
            let Some(state) = weak.upgrade() else { return };
            let mut state = lock(&state);
            if state.handed.is_some_and(|at| at.elapsed() >= limit) {
                tracing::debug!(?limit, "dropping an answer its HTTP/2 caller stopped reading");
                state.body = None;
                return;
            }
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
            return Poll::Ready(Some(Err("the caller read nothing of the answer for the send timeout".into())));
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
        let mut body = watch(source, limit);
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

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
