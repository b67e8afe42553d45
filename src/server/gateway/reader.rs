//! The receiving half of a WebSocket session: the client's messages, the
//! idle timeout, replies that never hold up reading for long, and a log the
//! client cannot flood.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::violation;
use super::{Reply, Stream, WsLink};
use crate::server::log_limit::{self, LogLimit};
use crate::wsjson::{self, ClientMessage};

/// Replies (pongs, errors) that may wait for one client beyond what the
/// socket buffers.
pub const REPLIES: usize = 64;
/// How long the read loop waits for room for one more reply before it drops
/// the client as not reading.
const REPLY_WAIT: Duration = Duration::from_secs(2);

/// Reads client messages until the socket ends, the link closes or the client
/// stays silent past `idle_timeout`; returns why it stopped.
pub async fn read_loop(stream: Stream, link: &WsLink, idle_timeout: Duration) -> String {
    let mut log = LogLimit::new(log_limit::EVERY);
    let reason = read_messages(stream, link, idle_timeout, &mut log).await;
    if log.unlogged() > 0 {
        let every = log_limit::EVERY;
        tracing::info!(unlogged = log.unlogged(), ?every, "lines about this client's messages left out of the log");
    }
    reason
}

async fn read_messages(mut stream: Stream, link: &WsLink, idle_timeout: Duration, log: &mut LogLimit) -> String {
    let silence = tokio::time::sleep(idle_timeout);
    tokio::pin!(silence);
    loop {
        let msg = tokio::select! {
            _ = link.closing.cancelled() => {
                // Give the client a moment to answer our close frame.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Some(Ok(msg)) = stream.next().await {
                        if msg.is_close() { break; }
                    }
                }).await;
                return link.end_reason().map_or_else(|| "closed by the server".into(), |why| format!("closed by the server: {why}"));
            }
            _ = &mut silence => {
                tracing::info!(?idle_timeout, "client silent; dropping it");
                link.end(CloseCode::Away, "no message or pong within the idle timeout");
                return format!("client silent for {idle_timeout:?}");
            }
            msg = stream.next() => msg,
        };
        silence.as_mut().reset(Instant::now() + idle_timeout);
        let text = match msg {
            Some(Ok(Message::Text(text))) => Bytes::from(text),
            Some(Ok(Message::Binary(data))) => data,
            Some(Ok(Message::Close(Some(frame)))) if violation::is_invalid_close(&frame) => {
                tracing::warn!("client closed with a code no endpoint may send; answered 1002 (protocol error)");
                return "client closed with an invalid close code".into();
            }
            Some(Ok(Message::Close(frame))) => {
                return frame.map_or_else(|| "client closed".into(), |f| format!("client closed: {}", f.code));
            }
            Some(Ok(_)) => continue, // ping, pong, raw frame
            Some(Err(err)) => {
                if let Some(frame) = violation::for_read_error(&err) {
                    tracing::warn!(%err, code = %frame.code, "client broke the WebSocket protocol; closing");
                    link.end(frame.code, &frame.reason);
                }
                return format!("read error: {err}");
            }
            None => return "connection closed".into(),
        };
        if let Err(NotReading) = handle_message(link, &text, log).await {
            tracing::info!(queued = REPLIES, ?REPLY_WAIT, "client leaves the server's replies unread; dropping it");
            link.end(CloseCode::Policy, "the client does not read the server's replies");
            return "client does not read its replies".into();
        }
    }
}

/// The client's replies queue is full: it sends messages that need an answer
/// faster than it reads the answers, or reads nothing.
#[derive(Debug, thiserror::Error)]
#[error("the client leaves the server's replies unread")]
struct NotReading;

impl WsLink {
    /// Queues a reply. When [`REPLIES`] are already waiting, the read loop
    /// waits for the writer, as TCP makes a fast sender wait, but only for
    /// [`REPLY_WAIT`]: it must get back to reading (responses, the session's
    /// end, the idle timeout), and a client that reads nothing would hold it
    /// for ever.
    async fn reply(&self, message: Message) -> Result<(), NotReading> {
        let message = match self.out.try_send(message) {
            Err(mpsc::error::TrySendError::Full(message)) => message,
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
        };
        tokio::select! {
            biased;
            _ = self.closing.cancelled() => Ok(()),
            sent = tokio::time::timeout(REPLY_WAIT, self.out.send(message)) => sent.map(drop).map_err(|_| NotReading),
        }
    }
}

/// Logs a line about what the client sent, if its [`LogLimit`] allows.
macro_rules! client_log {
    ($limit:expr, $level:ident!($($arg:tt)+)) => {
        if let Some(unlogged) = $limit.admit(std::time::Instant::now()) {
            tracing::$level!(unlogged, $($arg)+);
        }
    };
}

/// Longest id of the client's that an error reply echoes: ours are at most
/// 24 characters (a record's id, or `req_<u64>`), and a client's
/// megabyte-long id is not sent back.
const ECHOED_ID_MAX: usize = 128;

/// Acts on one message from the client. What it sent is quoted short, in
/// replies and in the log, and the log only gets what `log` allows.
async fn handle_message(link: &WsLink, text: &[u8], log: &mut LogLimit) -> Result<(), NotReading> {
    let reply_error = |id: Option<&str>, message: &str| {
        let id = id.filter(|id| id.len() <= ECHOED_ID_MAX);
        Message::text(wsjson::error(id, message))
    };
    let quote = |text: &str| wsjson::clip(text, wsjson::QUOTE_MAX).into_owned();
    match wsjson::parse_client_message(text) {
        Ok(ClientMessage::Response(r)) => {
            let id = r.id.clone();
            match link.complete(&id, Reply::Response(r)) {
                Ok(()) => {}
                Err(true) => {
                    let id = quote(&id);
                    client_log!(log, debug!(id, "late response ignored (request timed out or its caller left)"));
                }
                Err(false) => {
                    client_log!(log, warn!(id = quote(&id), "response for an unknown request id ignored"));
                    let msg = format!("no request with id {:?} is waiting for a response", quote(&id));
                    return link.reply(reply_error(Some(&id), &msg)).await;
                }
            }
        }
        Ok(ClientMessage::Ping) => return link.reply(Message::text(wsjson::pong())).await,
        Ok(ClientMessage::Pong) => {}
        Ok(ClientMessage::Leaving) => {
            if !link.left.is_cancelled() {
                tracing::debug!("the client says it is leaving");
            }
            link.left.cancel();
        }
        Ok(ClientMessage::Error { id: Some(id), message }) => {
            let why = format!("the tunnel client failed the request: {}", crate::server::http::client_text(&message));
            if link.complete(&id, Reply::Failed(why)).is_err() {
                let (id, message) = (quote(&id), quote(&message));
                client_log!(log, info!(id, message, "client reported an error for an unknown request"));
            }
        }
        Ok(ClientMessage::Error { id: None, message }) => {
            client_log!(log, info!(message = quote(&message), "client reported an error"));
        }
        Err(err) => {
            client_log!(log, warn!(reason = %err.reason, "malformed message from client"));
            if let Some(id) = &err.id {
                let why = format!("the tunnel client sent an invalid response: {}", err.reason);
                let _ = link.complete(id, Reply::Failed(why));
            }
            return link.reply(reply_error(err.id.as_deref(), &err.reason)).await;
        }
    }
    Ok(())
}
