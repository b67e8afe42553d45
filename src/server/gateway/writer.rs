//! The sending half of a WebSocket session: replies and requests as they
//! come, pings, and the close frame, every write under the stall deadline and
//! racing the session's end.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::outbox::OutboxRx;
use super::stall::{Progress, Stalled, unless_stalled};
use super::{Sink, WsLink};

/// Messages written per flush when several are queued.
const BATCH: usize = 64;
/// How long the writer may take to send the close frame once the session
/// ends (a client that reads nothing never gets it).
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the writer sends: replies to the client's messages, and requests.
pub struct Queues {
    /// Pongs and errors, answering the client.
    pub replies: mpsc::Receiver<Message>,
    /// Requests.
    pub requests: OutboxRx,
}

impl Queues {
    /// The next message to write (replies first), with the budget a request
    /// holds until it is flushed; `None` once the link is gone.
    pub async fn next(&mut self) -> Option<(Message, Option<OwnedSemaphorePermit>)> {
        tokio::select! {
            biased;
            reply = self.replies.recv() => Some((reply?, None)),
            request = self.requests.next() => request.map(|r| (r.message, Some(r.budget))),
        }
    }

    /// The next message already queued, if any.
    pub fn try_next(&mut self) -> Option<(Message, Option<OwnedSemaphorePermit>)> {
        match self.replies.try_recv() {
            Ok(reply) => Some((reply, None)),
            Err(_) => self.requests.try_next().map(|r| (r.message, Some(r.budget))),
        }
    }
}

/// Why the writer stopped before the session ended.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    /// The client does not read.
    #[error(transparent)]
    Stalled(#[from] Stalled),
    /// The socket failed.
    #[error("WebSocket write failed: {0}")]
    Ws(#[from] WsError),
}

/// Whether a write failed only because the client's close frame has arrived:
/// tungstenite then sends nothing but its answer to it.
fn client_closed(err: &WsError) -> bool {
    matches!(err, WsError::Protocol(ProtocolError::SendAfterClosing))
}

/// The socket's sending half, with its write deadline.
pub struct Writer {
    /// The socket's sending half.
    pub sink: Sink,
    /// The bytes the socket has accepted.
    pub progress: Arc<Progress>,
    /// How long the socket may accept nothing while there is something to write.
    pub stall: Duration,
}

impl Writer {
    /// Writes queued messages and pings until the link closes, then sends
    /// the close frame. Every write races the link's closing: a client that
    /// does not read cannot keep its socket open past the session's end.
    pub async fn run(mut self, mut queues: Queues, link: Arc<WsLink>, ping_interval: Duration) {
        let result = tokio::select! {
            biased;
            _ = link.closing.cancelled() => Ok(()),
            result = self.pump(&mut queues, ping_interval) => result,
        };
        match result {
            Ok(()) => {}
            Err(WriteError::Stalled(Stalled(stall))) => {
                tracing::info!(?stall, "client reads nothing; dropping it");
                link.end(CloseCode::Away, &format!("the client read nothing for {stall:?}"));
                return;
            }
            // The client's close frame came in while this was writing: its
            // answer is still to go out, below.
            Err(WriteError::Ws(err)) if client_closed(&err) => link.closing.cancel(),
            Err(err) => {
                tracing::debug!(%err, "WebSocket write failed");
                link.closing.cancel();
                return;
            }
        }
        // What is still queued is dropped with `queues`, its budget given back.
        drop(queues);
        let frame = link.close_frame.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let frame = frame.unwrap_or(CloseFrame { code: CloseCode::Normal, reason: "".into() });
        let _ = tokio::time::timeout(CLOSE_GRACE, self.close(frame)).await;
    }

    /// Sends `frame`, or, when the client closed first, the answer tungstenite
    /// has queued to the client's close frame: the echo of its code (RFC 6455
    /// §5.5.1), or 1002 for a code no endpoint may send. tungstenite refuses
    /// a close frame of ours then, and sends its answer only when the socket
    /// is flushed, which nothing else does once the reader has stopped: the
    /// client saw its socket drop without one.
    async fn close(&mut self, frame: CloseFrame) -> Result<(), WsError> {
        match self.sink.send(Message::Close(Some(frame))).await {
            Err(err) if client_closed(&err) => self.sink.flush().await,
            sent => sent,
        }
    }

    /// Writes messages as they come (batching what is already queued into one
    /// flush) and pings.
    async fn pump(&mut self, queues: &mut Queues, ping_interval: Duration) -> Result<(), WriteError> {
        let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flushing = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                biased;
                next = queues.next() => {
                    let Some(first) = next else { return Ok(()) };
                    let (mut next, mut fed) = (Some(first), 0);
                    while let Some((message, budget)) = next.take() {
                        flushing.extend(budget);
                        self.write(|sink| sink.feed(message)).await?;
                        fed += 1;
                        if fed < BATCH {
                            next = queues.try_next();
                        }
                    }
                    self.write(|sink| sink.flush()).await?;
                    // Flushed: the socket has these bytes, the budget gets them back.
                    flushing.clear();
                }
                _ = ping.tick() => self.write(|sink| sink.send(Message::Ping(Bytes::new()))).await?,
            }
        }
    }

    /// One operation on the sink, under the write deadline.
    async fn write<'s, F>(&'s mut self, op: impl FnOnce(&'s mut Sink) -> F) -> Result<(), WriteError>
    where
        F: std::future::Future<Output = Result<(), WsError>> + 's,
    {
        unless_stalled(&self.progress, self.stall, op(&mut self.sink)).await??;
        Ok(())
    }
}
