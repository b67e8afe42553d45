//! What waits to be written to one WebSocket client, and how much of it.
//!
//! A client that stops reading must cost the server a bounded amount of
//! memory, however much traffic is sent its way. Each request message is
//! serialized whole (seed 001 carries bodies as JSON strings), up to about
//! 14 MiB, so a count of queued messages is no bound; two things are:
//! * a byte budget: a request takes its message's size from it before the
//!   message is queued, and the writer gives it back once the message is
//!   flushed to the socket; a request that finds the budget spent waits
//!   (under the edge's timeout) instead of adding to the pile;
//! * a request that ends before the writer gets to it (it timed out, its
//!   caller left) empties its [`Parcel`]: the message and its share of the
//!   budget are freed at once, and nothing is ever sent for it;
//! * an intake budget, for what comes before: a request reserves its body's
//!   size (the declared length, else the largest body) before the edge reads
//!   the body, and holds it until its message has its share of the first
//!   budget. Without it, callers whose requests wait for a slow client would
//!   each hold a whole body (10 MiB by default) and its message, unbounded in
//!   number; with it, they wait before sending their bodies, which stay in
//!   their own sockets. Room is taken whole, up front, because taking it
//!   piece by piece as bytes arrive lets five large uploads each hold part of
//!   it and all wait for more: nothing is ever posted. The price: a caller
//!   that declares a large body and sends it slowly holds its room meanwhile
//!   (up to the request timeout), so four of them make the others wait.

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;

/// Request messages queued for one socket before senders wait (the byte
/// budget usually binds first).
const QUEUE: usize = 256;

/// The session is over: nothing more will be written to this client.
#[derive(Debug, thiserror::Error)]
#[error("the WebSocket session ended")]
pub struct Closed;

/// One request's message on its way to the writer. The request keeps a
/// handle and empties it when it ends, so a message nobody waits for any
/// more is neither kept nor sent.
#[derive(Debug, Default)]
pub struct Parcel(Mutex<Option<Outgoing>>);

impl Parcel {
    /// Takes the message out, if it is still there.
    pub fn take(&self) -> Option<Outgoing> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn put(&self, out: Outgoing) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(out);
    }
}

/// A message for the writer, with the share of the byte budget it holds until
/// it is flushed.
#[derive(Debug)]
pub struct Outgoing {
    /// What to write.
    pub message: Message,
    /// Given back when dropped.
    pub budget: OwnedSemaphorePermit,
}

/// The sending side, held by the session's [`WsLink`](super::WsLink).
#[derive(Debug)]
pub struct Outbox {
    requests: mpsc::Sender<Arc<Parcel>>,
    budget: Arc<Semaphore>,
    budget_bytes: u32,
    intake: Arc<Semaphore>,
    intake_bytes: u32,
}

/// Room for one request's body while it is read and serialized; given back
/// when dropped.
#[derive(Debug)]
pub struct Admission {
    _room: OwnedSemaphorePermit,
}

/// The writer's side.
#[derive(Debug)]
pub struct OutboxRx {
    requests: mpsc::Receiver<Arc<Parcel>>,
}

impl Outbox {
    /// An outbox that lets `budget_bytes` of messages wait for the socket,
    /// and `intake_bytes` of bodies be read for it.
    pub fn new(budget_bytes: usize, intake_bytes: usize) -> (Self, OutboxRx) {
        // Permits are taken as u32, and a message larger than the budget takes all of it.
        let budget_bytes = u32::try_from(budget_bytes).unwrap_or(u32::MAX).max(1);
        let intake_bytes = u32::try_from(intake_bytes).unwrap_or(u32::MAX).max(1);
        let (requests, rx) = mpsc::channel(QUEUE);
        let budget = Arc::new(Semaphore::new(budget_bytes as usize));
        let intake = Arc::new(Semaphore::new(intake_bytes as usize));
        (Self { requests, budget, budget_bytes, intake, intake_bytes }, OutboxRx { requests: rx })
    }

    /// Waits for room to read a body of `bytes` (the declared length, the
    /// largest allowed when none is declared, 0 for no body); hold the
    /// [`Admission`] until [`post`](Self::post) returns. Requests are admitted
    /// in the order they asked.
    pub async fn admit(&self, bytes: usize) -> Result<Admission, Closed> {
        let cost = u32::try_from(bytes).unwrap_or(u32::MAX).min(self.intake_bytes);
        self.intake.clone().acquire_many_owned(cost).await.map(|_room| Admission { _room }).map_err(|_| Closed)
    }

    /// Queues the message `build` makes in `parcel`, built once the budget
    /// has room for `bound` bytes, at least its length: what waits for room
    /// is not the message, which may be several times its body's size. Room
    /// taken beyond the message's length is given back at once. Cancel safe
    /// as long as the caller empties `parcel` when it gives up.
    pub async fn post(&self, parcel: &Arc<Parcel>, bound: usize, build: impl FnOnce() -> String) -> Result<(), Closed> {
        let cost = |len: usize| u32::try_from(len).unwrap_or(u32::MAX).clamp(1, self.budget_bytes);
        let mut budget = self.budget.clone().acquire_many_owned(cost(bound)).await.map_err(|_| Closed)?;
        let text = build();
        debug_assert!(text.len() <= bound.max(1), "a message of {} bytes over its bound of {bound}", text.len());
        let spare = budget.num_permits().saturating_sub(cost(text.len()) as usize);
        drop(budget.split(spare));
        parcel.put(Outgoing { message: Message::text(text), budget });
        self.requests.send(parcel.clone()).await.map_err(|_| Closed)
    }

    /// Ends the outbox: requests waiting for either budget get [`Closed`] at once.
    pub fn close(&self) {
        self.budget.close();
        self.intake.close();
    }
}

impl OutboxRx {
    /// The next request message to write, skipping those whose request has
    /// ended; `None` once the outbox is gone.
    pub async fn next(&mut self) -> Option<Outgoing> {
        loop {
            if let Some(out) = self.requests.recv().await?.take() {
                return Some(out);
            }
        }
    }

    /// Like [`next`](Self::next), but only what is already queued.
    pub fn try_next(&mut self) -> Option<Outgoing> {
        loop {
            if let Some(out) = self.requests.try_recv().ok()?.take() {
                return Some(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    /// A message is built only once the budget has room for its bound, and
    /// room beyond its length goes back at once.
    #[tokio::test]
    async fn messages_are_built_once_they_have_room() {
        let (outbox, mut rx) = Outbox::new(100, 1000);
        let first = Arc::new(Parcel::default());
        // A bound of 100 for 10 bytes: 90 go back.
        outbox.post(&first, 100, || "x".repeat(10)).await.unwrap();
        let second = Arc::new(Parcel::default());
        let quick = tokio::time::timeout(Duration::from_millis(100), outbox.post(&second, 90, || "y".repeat(90)));
        quick.await.expect("the spare room was given back").unwrap();
        // The budget is spent: the next message waits unbuilt.
        let built = AtomicBool::new(false);
        let third = Arc::new(Parcel::default());
        let waiting = outbox.post(&third, 50, || {
            built.store(true, Ordering::Relaxed);
            "z".repeat(50)
        });
        tokio::pin!(waiting);
        assert!(tokio::time::timeout(Duration::from_millis(100), &mut waiting).await.is_err());
        assert!(!built.load(Ordering::Relaxed), "built before it had room");
        // Writing the first two gives their room back.
        drop(rx.next().await.unwrap());
        drop(rx.next().await.unwrap());
        waiting.await.unwrap();
        assert!(built.load(Ordering::Relaxed));
    }
}
