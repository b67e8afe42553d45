//! An answer that hyper stops taking is let go of after the send timeout; and
//! over QUIC, a tunnel's answers that their callers take slowly or not at all
//! are paid for with more window, up to a point, past which the one left
//! untaken longest (else taken most slowly) is let go of.
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
//! **A tunnel's window is shared** ([`Stalls`]): over QUIC, an answer whose
//! caller takes it more slowly than the app sends it fills its stream's
//! window, 8 MiB, and holds it, whether the caller stopped reading or reads
//! a frame a second: four such answers held the tunnel's whole 32 MiB
//! connection window, and every other request of the tunnel waited on the
//! slow callers (a prompt one took 27 s with five callers that read nothing,
//! 20 s with five HTTP/2 streams read at 40 KB/s each): anyone could freeze a
//! tunnel so, again and again. An answer *holds* its window once it has not
//! waited on its source (the QUIC stream) for [`STALL_GRACE`]: every time its
//! caller took more, more was there (any download to a caller whose link is
//! slower than the tunnel's, too). For each of up to [`MAX_FUNDED`] answers
//! that went [`FUND_AFTER`] so, the tunnel's connection window grows by a
//! stream window (and never shrinks again, see [`Stalls::note`]), so the
//! rest of the tunnel keeps its whole window beside slow downloads; a tunnel
//! keeps [`MAX_STALLED`] more unfunded (half its window); past that, the
//! answer untaken longest, else the one taken most slowly, is dropped.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use quinn::VarInt;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::http::{Body, BoxError};
use crate::quic::{CONNECTION_WINDOW, STREAM_WINDOW};

/// How long an answer may go without waiting on its source before it counts
/// as holding its window for its tunnel's [`Stalls`]: longer than a reader
/// that keeps reading leaves its socket full (Linux wakes the writer once a
/// third of the buffer drained: about 3 s for a 1 MB buffer at 1 Mbit/s),
/// so that a download is not taken for an abandoned one as it starts.
pub const STALL_GRACE: Duration = Duration::from_secs(5);
/// How long an answer goes without waiting on its source before its
/// tunnel's window grows for it (up to [`MAX_FUNDED`]): a request that
/// waits on a window held by slow callers waits about this long.
pub const FUND_AFTER: Duration = Duration::from_secs(1);
/// Answers holding their window that a tunnel pays for with as much window
/// again each: at most twice its connection window in all, 64 MiB.
pub const MAX_FUNDED: usize = (CONNECTION_WINDOW / STREAM_WINDOW) as usize;
/// Answers holding their window that a tunnel keeps unfunded, past
/// [`MAX_FUNDED`]: with an 8 MiB stream window, half of its 32 MiB
/// connection window.
pub const MAX_STALLED: usize = (CONNECTION_WINDOW / STREAM_WINDOW / 2) as usize;

struct State {
    /// `None` once dropped, for the reason in `cut`.
    body: Option<Body>,
    /// When a frame was handed out that hyper has not asked past yet.
    handed: Option<Instant>,
    /// Since when the body has not waited on its source; `None` while it does.
    flowing: Option<Instant>,
    /// Bytes handed out since `flowing`.
    taken: u64,
    /// In its tunnel's [`Stalls`], so its end must be counted there.
    listed: bool,
    /// Why the body was dropped.
    cut: &'static str,
}

impl State {
    /// How fast it has been taken while holding its window (for `grace`
    /// at least), and since when it is untaken (its caller has taken
    /// nothing for `untaken_after`); `None` while it does not hold it.
    ///
    /// (The rate alone would not do: an answer whose caller stopped reading
    /// after its socket's buffer filled has taken more in its first moments
    /// than a slow reader takes in seconds.)
    fn holding(&self, grace: Duration, untaken_after: Duration) -> Option<Holding> {
        self.body.as_ref()?;
        let since = self.flowing.filter(|at| at.elapsed() >= grace)?;
        let millis = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        let rate = self.taken.saturating_mul(1000) / millis;
        Some(Holding { rate, untaken: self.handed.filter(|at| at.elapsed() >= untaken_after) })
    }
}

#[derive(Clone, Copy)]
struct Holding {
    /// Bytes per second its caller has taken while it held the window.
    rate: u64,
    untaken: Option<Instant>,
}

impl Holding {
    /// Dropped first: the answer untaken longest, else the one its caller
    /// takes most slowly. (Not the one held longest: a caller on a link
    /// slower than the tunnel's holds its window as long as its download
    /// lasts, and the oldest download is the most nearly done.)
    fn drop_order(&self) -> (bool, Option<Instant>, u64) {
        (self.untaken.is_none(), self.untaken, self.rate)
    }
}

const UNTAKEN: &str = "the caller read nothing of the answer for the send timeout";
const CROWDED: &str =
    "the caller read the answer too slowly or not at all, and the tunnel had more such answers than it keeps";

/// One tunnel session's answers that hold their window (see the module's doc).
pub struct Stalls {
    funded: usize,
    kept: usize,
    grace: Duration,
    /// How long an answer flows before the window grows for it: sooner than
    /// it may be dropped, as growing costs nothing until the window is used.
    fund_after: Duration,
    /// The tunnel's connection, whose receive window is grown for the
    /// answers funded; `None` keeps the window as it is.
    window: Option<quinn::Connection>,
    listed: Mutex<Listed>,
}

#[derive(Default)]
struct Listed {
    answers: Vec<Weak<Mutex<State>>>,
    /// Answers holding their window that are funded, as last counted.
    funded: usize,
    /// The most answers the window was ever grown for (it is never shrunk).
    grown: usize,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("handed", &self.handed)
            .field("flowing", &self.flowing)
            .field("cut", &self.body.is_none())
            .finish()
    }
}

impl std::fmt::Debug for Stalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let listed = self.lock();
        f.debug_struct("Stalls").field("listed", &listed.answers.len()).field("funded", &listed.funded).finish()
    }
}

impl Stalls {
    /// Grows `window`'s receive window for up to `funded` answers held for
    /// `grace`, and keeps `kept` more.
    pub fn new(funded: usize, kept: usize, grace: Duration, window: Option<quinn::Connection>) -> Self {
        Self { funded, kept, grace, fund_after: grace, window, listed: Mutex::new(Listed::default()) }
    }

    /// The defaults, for a tunnel's QUIC connection.
    pub fn for_connection(conn: quinn::Connection) -> Self {
        Self { fund_after: FUND_AFTER, ..Self::new(MAX_FUNDED, MAX_STALLED, STALL_GRACE, Some(conn)) }
    }

    /// How many answers the window is grown for now.
    #[cfg(test)]
    fn funded(&self) -> usize {
        self.lock().funded
    }

    fn lock(&self) -> MutexGuard<'_, Listed> {
        self.listed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists `state` (when given) and counts again which answers hold their
    /// window: entries that no longer do leave, past the limit the first in
    /// [`Holding::drop_order`] are dropped, and the window is sized for the
    /// rest.
    fn note(&self, state: Option<&Weak<Mutex<State>>>) {
        let mut listed = self.lock();
        if let Some(state) = state.filter(|s| !listed.answers.iter().any(|w| w.ptr_eq(s))) {
            if let Some(s) = state.upgrade() {
                lock(&s).listed = true;
            }
            listed.answers.push(state.clone());
        }
        // Each entry read once: one taken meanwhile leaves the list, rather
        // than counting as held longest. Those flowing for `fund_after` are
        // funded; of them, those past the grace may be dropped.
        let mut flowing: Vec<_> = listed
            .answers
            .drain(..)
            .filter_map(|w| {
                let strong = w.upgrade()?;
                let mut state = lock(&strong);
                let flows = state.body.is_some() && state.flowing.is_some_and(|at| at.elapsed() >= self.fund_after);
                let held = state.holding(self.grace, self.fund_after);
                state.listed = flows;
                drop(state);
                flows.then_some((held, w))
            })
            .collect();
        loop {
            let held = (0..flowing.len()).filter_map(|i| Some((flowing[i].0?, i)));
            if held.clone().count() <= self.funded.saturating_add(self.kept) {
                break;
            }
            let Some((_, first)) = held.min_by_key(|(h, _)| h.drop_order()) else { break };
            if let Some(state) = flowing.swap_remove(first).1.upgrade() {
                let mut state = lock(&state);
                // Only if it holds still (taken since it was looked at, it is
                // not dropped after all).
                if state.holding(self.grace, self.fund_after).is_some() {
                    tracing::debug!(
                        held = ?state.flowing.map(|at| at.elapsed()),
                        untaken = ?state.handed.map(|at| at.elapsed()),
                        taken = state.taken,
                        "dropping the answer its caller takes most slowly: its tunnel has too many"
                    );
                    state.body = None;
                    state.cut = CROWDED;
                }
            }
        }
        let funded = flowing.len().min(self.funded);
        listed.answers.extend(flowing.into_iter().map(|(_, w)| w));
        listed.funded = funded;
        // Grown, never shrunk: quinn cannot take back room it granted, only
        // hold back later grants by as much, so a window that shrank and
        // grew again would leave the peer more room each time.
        if funded > listed.grown {
            listed.grown = funded;
            if let Some(conn) = &self.window {
                let extra = u64::from(STREAM_WINDOW) * funded as u64;
                tracing::debug!(funded, "a tunnel's window grown for the answers its callers are slow to take");
                conn.set_receive_window(VarInt::from_u64(u64::from(CONNECTION_WINDOW) + extra).unwrap_or(VarInt::MAX));
            }
        }
    }
}

/// `body`, dropped once hyper has left a frame of it unfollowed for `limit`,
/// or, with `stalls`, counted there while it holds its window (and dropped
/// there when it is one too many).
pub fn watch(body: Body, limit: Duration, stalls: Option<Arc<Stalls>>) -> Body {
    let hint = body.size_hint();
    let end = body.is_end_stream();
    let flowing = Some(Instant::now());
    let state =
        Arc::new(Mutex::new(State { body: Some(body), handed: None, flowing, taken: 0, listed: false, cut: UNTAKEN }));
    let weak = Arc::downgrade(&state);
    // (Aborted when the body is dropped, so it never outlives the answer.)
    let watchdog = tokio::spawn({
        let stalls = stalls.clone();
        async move {
            let grace = stalls.as_ref().map_or(limit, |s| s.grace.min(limit));
            loop {
                let Some(strong) = weak.upgrade() else { return };
                let (handed, flowing, listed) = {
                    let mut state = lock(&strong);
                    if state.body.is_none() {
                        return;
                    }
                    if state.handed.is_some_and(|at| at.elapsed() >= limit) {
                        tracing::debug!(?limit, "dropping an answer its caller stopped reading");
                        state.body = None;
                        let listed = state.listed;
                        drop(state);
                        // Its place among the stalled made free now, not when
                        // hyper gets to drop the body.
                        if let Some(stalls) = stalls.as_ref().filter(|_| listed) {
                            stalls.note(None);
                        }
                        return;
                    }
                    (state.handed, state.flowing, state.listed)
                };
                drop(strong);
                let now = Instant::now();
                let mut next = now + grace;
                if let Some(at) = handed {
                    next = next.min(at + limit);
                }
                if let Some(stalls) = &stalls {
                    match flowing {
                        Some(at) if now - at >= stalls.fund_after => {
                            stalls.note(Some(&weak));
                            if now - at < stalls.grace {
                                next = next.min(at + stalls.grace);
                            }
                        }
                        // Back to waiting on its source: counted out.
                        _ if listed => stalls.note(Some(&weak)),
                        Some(at) => next = next.min(at + stalls.fund_after),
                        None => {}
                    }
                }
                tokio::time::sleep_until(next).await;
            }
        }
    });
    Untaken { state, stalls, watchdog: watchdog.abort_handle(), hint, end }.boxed_unsync()
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

struct Untaken {
    state: Arc<Mutex<State>>,
    stalls: Option<Arc<Stalls>>,
    watchdog: AbortHandle,
    hint: SizeHint,
    end: bool,
}

impl Drop for Untaken {
    fn drop(&mut self) {
        self.watchdog.abort();
        let listed = {
            let mut state = lock(&self.state);
            state.body = None;
            state.listed
        };
        // Its window given back, or another's place made.
        if let Some(stalls) = self.stalls.as_ref().filter(|_| listed) {
            stalls.note(None);
        }
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
        match &polled {
            Poll::Pending => state.flowing = None,
            Poll::Ready(Some(Ok(frame))) => {
                let now = Instant::now();
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if state.flowing.is_none() {
                    state.flowing = Some(now);
                    state.taken = 0;
                }
                state.taken += len;
                let more = state.body.as_ref().is_some_and(|b| !b.is_end_stream());
                state.handed = more.then_some(now);
            }
            Poll::Ready(None) => {
                state.flowing = None;
                this.end = true;
            }
            Poll::Ready(Some(Err(_))) => state.flowing = None,
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
        let (tx, mut body) = watched(limit, None);
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
        let stalls = Arc::new(Stalls::new(0, 1, grace, None));
        let limit = Duration::from_secs(60);
        let mut sources = Vec::new();
        let mut bodies = Vec::new();
        for _ in 0..3 {
            let (tx, mut body) = watched(limit, Some(stalls.clone()));
            tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
            assert!(body.frame().await.unwrap().is_ok(), "handed out, then left untaken");
            sources.push(tx);
            bodies.push(body);
            tokio::time::sleep(grace / 2).await;
        }
        // One more, polled again and waiting on its source: taken, not stalled.
        let (waiting_tx, mut waiting) = watched(limit, Some(stalls.clone()));
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

    /// An answer whose caller takes a frame now and then but always finds
    /// more waiting holds its window as much as one left untaken: the window
    /// is grown for the first (up to the funded limit), the next is kept,
    /// and past that the one untaken longest goes first, even before a slow
    /// reader held longer. Ends give the window back.
    #[tokio::test]
    async fn slow_readers_are_funded_and_the_answer_untaken_longest_goes_first() {
        let grace = Duration::from_millis(200);
        let stalls = Arc::new(Stalls::new(1, 1, grace, None));
        let limit = Duration::from_secs(60);
        let answer = || watched(limit, Some(stalls.clone()));
        // A slow reader: a frame every 50 ms, and always more waiting.
        let (slow_tx, mut slow) = answer();
        for _ in 0..1000 {
            slow_tx.try_send(Ok(Frame::data(Bytes::from_static(b"x")))).unwrap();
        }
        let reader = tokio::spawn(async move {
            let mut taken = 0;
            while let Some(Ok(_)) = slow.frame().await {
                taken += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            taken
        });
        // An event stream waiting on its app: never counted.
        let (quiet_tx, mut quiet) = answer();
        quiet_tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
        assert!(quiet.frame().await.unwrap().is_ok());
        let quiet = tokio::spawn(async move { quiet.frame().await.map(|f| f.is_ok()) });
        tokio::time::sleep(grace).await;
        // Untaken: a frame handed out, never asked past.
        let (untaken_tx, mut untaken) = answer();
        untaken_tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
        untaken_tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
        assert!(untaken.frame().await.unwrap().is_ok());
        tokio::time::sleep(grace * 3).await;
        assert_eq!(stalls.funded(), 1, "the window grew for one");
        assert!(!slow_tx.is_closed() && !untaken_tx.is_closed(), "one funded, one kept");
        // One more untaken: one too many.
        let (third_tx, mut third) = answer();
        third_tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
        third_tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
        assert!(third.frame().await.unwrap().is_ok());
        tokio::time::sleep(grace * 3).await;
        assert!(untaken_tx.is_closed(), "the answer untaken longest was dropped");
        assert!(!slow_tx.is_closed(), "a slow reader held longer is kept before it");
        assert!(!third_tx.is_closed());
        assert!(!quiet_tx.is_closed(), "an answer waiting on its app is not counted");
        let err = untaken.frame().await.unwrap().unwrap_err().to_string();
        assert!(err.contains("more such answers than it keeps"), "{err}");
        assert_eq!(stalls.funded(), 1);
        drop((third, untaken));
        reader.abort();
        let _ = reader.await;
        assert_eq!(stalls.funded(), 0, "ended answers give the window back");
        quiet_tx.send(Ok(Frame::data(Bytes::from_static(b"y")))).await.unwrap();
        assert_eq!(quiet.await.unwrap(), Some(true));
    }

    /// The window grows for an answer soon after it starts holding it; it
    /// may be dropped only after the grace.
    #[tokio::test]
    async fn the_window_grows_before_any_answer_may_be_dropped() {
        let fund_after = Duration::from_millis(100);
        let stalls = Arc::new(Stalls { fund_after, ..Stalls::new(1, 0, Duration::from_secs(30), None) });
        let mut sources = Vec::new();
        let mut bodies = Vec::new();
        for _ in 0..2 {
            let (tx, mut body) = watched(Duration::from_secs(60), Some(stalls.clone()));
            tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
            tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await.unwrap();
            assert!(body.frame().await.unwrap().is_ok(), "handed out, then left untaken");
            sources.push(tx);
            bodies.push(body);
        }
        tokio::time::sleep(fund_after * 5).await;
        assert_eq!(stalls.funded(), 1, "grown for one, as soon as it held its window");
        assert!(sources.iter().all(|tx| !tx.is_closed()), "one past the limit, but none past the grace");
    }

    /// Of answers whose callers are all reading, the one taken most slowly
    /// goes first: it holds the window for the least.
    #[tokio::test]
    async fn of_readers_the_slowest_goes_first() {
        let grace = Duration::from_millis(200);
        let stalls = Arc::new(Stalls::new(0, 1, grace, None));
        let reader = |every: Duration| {
            let (tx, mut body) = watched(Duration::from_secs(60), Some(stalls.clone()));
            for _ in 0..1000 {
                tx.try_send(Ok(Frame::data(Bytes::from_static(b"x")))).unwrap();
            }
            let task = tokio::spawn(async move {
                while let Some(Ok(_)) = body.frame().await {
                    tokio::time::sleep(every).await;
                }
            });
            (tx, task)
        };
        let (faster_tx, faster) = reader(Duration::from_millis(10));
        tokio::time::sleep(grace / 4).await;
        let (slower_tx, slower) = reader(Duration::from_millis(60));
        tokio::time::sleep(grace * 4).await;
        assert!(slower_tx.is_closed(), "the slower reader, younger, was dropped");
        assert!(!faster_tx.is_closed(), "the faster one, held longer, was kept");
        faster.abort();
        let _ = (faster.await, slower.await);
    }

    /// A body fed through the sender (room for 1,024 frames), watched.
    fn watched(
        limit: Duration,
        stalls: Option<Arc<Stalls>>,
    ) -> (tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        (tx, watch(http_body_util::StreamBody::new(tokio_stream_from(rx)).boxed_unsync(), limit, stalls))
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Send {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
