//! The WebSocket-JSON gateway for legacy tunnel clients (seed 001).
//!
//! `GET /tunnels/{subdomain}/ws?tunnelId=…&token=…` is checked before the
//! upgrade (401/404 with a JSON error), then the socket becomes a [`Session`](super::registry::Session)
//! in the same routing map as QUIC clients. Requests are multiplexed by id:
//! the edge serializes a request in its own task, queues it for the socket's
//! writer task and waits on a oneshot that the reader task completes when the
//! matching response arrives, so many requests are in flight at once and are
//! answered in any order.
//!
//! Bodies are buffered (seed 001 carries them as JSON strings), so they are
//! capped: a request body over the limit gets 413 at the edge. What waits for
//! a client is bounded in bytes ([`outbox`]), and a client that leaves it
//! unread for the idle timeout is dropped ([`stall`]). The socket's halves
//! run in [`writer`] and [`reader`].

mod outbox;
mod reader;
mod stall;
mod violation;
mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::State;
use super::http::{Body, EdgeErrorKind, RefusedByLeavingClient, bad_request_body, edge_error, full, json_error};
use super::listener::ConnectionSlot;
use super::names::secret_matches;
use super::registry::Transport;
use super::session;
use crate::error_chain;
use crate::headers::strip_hop_by_hop;
use crate::quic::close;
use crate::wsjson;
use outbox::{Outbox, Parcel};
use reader::{REPLIES, read_loop};
use stall::{Counted, Progress};
use writer::{CLOSE_GRACE, Queues, Writer};

pub use crate::wsjson::DEFAULT_MAX_BODY;
/// Default interval of the server's WebSocket pings.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);
/// Default silence after which a client is dropped.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Limits and timers of the gateway.
#[derive(Debug, Clone, Copy)]
pub struct WsLimits {
    /// Largest request or response body, in bytes.
    pub max_body: usize,
    /// How often the server pings.
    pub ping_interval: Duration,
    /// How long a client may stay silent (not even a pong), or leave what the
    /// server writes unread, before it is dropped.
    pub idle_timeout: Duration,
}

impl Default for WsLimits {
    fn default() -> Self {
        Self { max_body: DEFAULT_MAX_BODY, ping_interval: DEFAULT_PING_INTERVAL, idle_timeout: DEFAULT_IDLE_TIMEOUT }
    }
}

/// What a waiting request receives.
enum Reply {
    Response(wsjson::Response),
    Failed(String),
}

/// The edge's handle on one WebSocket session.
#[derive(Debug)]
pub struct WsLink {
    /// Replies to the client's own messages.
    out: mpsc::Sender<Message>,
    /// Requests.
    outbox: Outbox,
    /// Requests waiting for their response, by the id their message carries.
    pending: Mutex<HashMap<Box<str>, oneshot::Sender<Reply>>>,
    /// Requests sent without a record, which numbers their ids.
    next_id: AtomicU64,
    /// The greatest record id sent as a request's id: record ids grow with
    /// time, so an answer under one at most this is late, not unknown.
    last_record_id: Mutex<Option<Bytes>>,
    closing: CancellationToken,
    /// Cancelled when the client says it is leaving (`{"type":"leaving"}`):
    /// its session is then taken out of the routing map, and a `503
    /// tunnel-offline` it answers from then on is a refusal no app saw.
    left: CancellationToken,
    close_frame: Mutex<Option<CloseFrame>>,
    max_body: usize,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reply::Response(_) => "Response",
            Reply::Failed(_) => "Failed",
        })
    }
}

impl WsLink {
    /// Ends the session: the writer sends a close frame carrying `code` as
    /// `4000 + code` (see [`close::ws_code`]), so clients can tell a final end
    /// from a "reconnect later".
    pub fn close(&self, code: quinn::VarInt, reason: &str) {
        self.end(CloseCode::from(close::ws_code(code)), reason);
    }

    /// Ends the session with this close frame, unless it is already ending.
    fn end(&self, code: CloseCode, reason: &str) {
        let frame = CloseFrame { code, reason: reason.to_owned().into() };
        self.close_frame.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(frame);
        self.closing.cancel();
    }

    /// The close frame's reason, once the session is ending.
    fn end_reason(&self) -> Option<String> {
        self.close_frame.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|f| f.reason.to_string())
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, oneshot::Sender<Reply>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The id of a request's message: its capture record's (`req_` and 20
    /// hex digits), so that a client can name the request to `hookway
    /// tunnels request` and `replay` as over QUIC; without a record, `req_`
    /// and a number of this session's.
    fn issue_id(&self, record: Option<&Bytes>) -> Box<str> {
        match record.and_then(|id| std::str::from_utf8(id).ok()) {
            Some(id) => {
                let mut last = self.last_record_id.lock().unwrap_or_else(|p| p.into_inner());
                if last.as_ref().is_none_or(|l| l[..] < *id.as_bytes()) {
                    *last = record.cloned();
                }
                id.into()
            }
            None => wsjson::request_id(self.next_id.fetch_add(1, Ordering::Relaxed) + 1).into(),
        }
    }

    /// Whether `id` is one this session sent: a late answer, not an unknown id.
    fn was_issued(&self, id: &str) -> bool {
        if let Some(n) = wsjson::request_number(id) {
            return n <= self.next_id.load(Ordering::Relaxed);
        }
        if !wsjson::is_record_id(id) {
            return false;
        }
        // (Record ids have one length and one alphabet: bytes compare as
        // their times do.)
        let last = self.last_record_id.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref().is_some_and(|last| id.as_bytes() <= &last[..])
    }

    /// Hands a reply to the request `id` is for; `Err` when no request with
    /// that id is waiting (`true` if the id was issued: a late answer).
    fn complete(&self, id: &str, reply: Reply) -> Result<(), bool> {
        match self.lock_pending().remove(id) {
            Some(tx) => {
                let _ = tx.send(reply);
                Ok(())
            }
            None => Err(self.was_issued(id)),
        }
    }
}

/// Removes a request from the pending table when its exchange ends, however
/// it ends (answered, timed out, caller gone), and drops its message if the
/// writer has not taken it yet.
struct PendingGuard<'a> {
    link: &'a WsLink,
    id: Box<str>,
    parcel: Arc<Parcel>,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.link.lock_pending().remove(&self.id);
        drop(self.parcel.take());
    }
}

/// Forwards one request over a WebSocket session (the edge's timeout, ending
/// at `deadline`, wraps this); its message carries `record_id`, the capture
/// record's id, when there is one.
#[allow(clippy::too_many_arguments)]
pub async fn exchange<B>(
    link: &WsLink,
    subdomain: &str,
    record_id: Option<&Bytes>,
    method: &http::Method,
    target: &str,
    headers: &HeaderMap,
    body: B,
    deadline: tokio::time::Instant,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<super::http::BoxError>,
{
    let too_large = || {
        edge_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format_args!(
                "tunnel '{subdomain}' is served over WebSocket, which carries bodies of at most {} bytes",
                link.max_body
            ),
        )
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > link.max_body as u64) {
        return too_large();
    }
    // Room to read the body first: while the client is slow, later callers
    // wait here with their bodies unread.
    let room = if body.is_end_stream() { 0 } else { declared.map_or(link.max_body, |n| n as usize) };
    let started = tokio::time::Instant::now();
    let Ok(admission) = link.outbox.admit(room).await else {
        return disconnected(subdomain);
    };
    // The body is read whole before the client hears of the request: if it is
    // still arriving at the deadline, and had at least half the time to
    // arrive, the caller is slow, not the app (which has not seen the
    // request), and the answer says so. When the wait for room above took
    // most of the time, the tunnel's client is the slow one: the edge's 504.
    let read_from = tokio::time::Instant::now();
    let body = match tokio::time::timeout_at(deadline, Limited::new(body, link.max_body).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(err)) => return bad_request_body(error_chain(&*err)),
        Err(_) if deadline - read_from >= (deadline - started) / 2 => return body_timed_out(),
        Err(_) => return super::edge::timed_out(deadline.saturating_duration_since(started)),
    };
    let id = link.issue_id(record_id);
    let (tx, rx) = oneshot::channel();
    link.lock_pending().insert(id.clone(), tx);
    let guard = PendingGuard { link, id, parcel: Arc::default() };
    let message = wsjson::RequestMessage::new(&guard.id, method, target, headers, &body);
    if link.outbox.post(&guard.parcel, message.len_bound(), || message.build()).await.is_err() {
        return disconnected(subdomain);
    }
    drop(body);
    drop(admission);
    match rx.await {
        Ok(Reply::Response(r)) if r.body.len() > link.max_body => edge_error(
            StatusCode::BAD_GATEWAY,
            "body-too-large",
            format_args!(
                "the local app's response ({} bytes) is larger than the {} bytes a WebSocket tunnel carries",
                r.body.len(),
                link.max_body
            ),
        ),
        Ok(Reply::Response(r)) => {
            let mut headers = r.headers;
            strip_hop_by_hop(&mut headers);
            // The body is complete: hyper sets the length that matches it.
            // A HEAD answer has no body, and its length describes the GET's:
            // it goes out as the client wrote it, so it must be one length.
            if method != http::Method::HEAD {
                headers.remove(header::CONTENT_LENGTH);
            } else {
                match crate::headers::content_length(&headers) {
                    Ok(None) => {}
                    Ok(Some(n)) => {
                        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
                    }
                    Err(bad) => {
                        return edge_error(
                            StatusCode::BAD_GATEWAY,
                            "tunnel-error",
                            format_args!("the tunnel client answered HEAD with an invalid content-length ({bad:?})"),
                        );
                    }
                }
            }
            let body = if super::edge::no_content(r.status, &mut headers) { Bytes::new() } else { r.body };
            // A client that said it is leaving refuses what still comes this
            // way: the app never saw those requests, so they are the tunnel's
            // going offline, as a refused QUIC stream is, not an answer of
            // the app's. (The socket is ordered: every such refusal comes
            // after the `leaving`. An app's own answer of the kind, before
            // it, is taken at its word.)
            let leaving = link.left.is_cancelled()
                && r.status == StatusCode::SERVICE_UNAVAILABLE
                && headers.get("x-hookway-error").is_some_and(|kind| kind == "tunnel-offline");
            let mut resp = Response::new(full(body));
            *resp.status_mut() = r.status;
            *resp.headers_mut() = headers;
            if leaving {
                resp.extensions_mut().insert(EdgeErrorKind("tunnel-offline"));
                resp.extensions_mut().insert(RefusedByLeavingClient);
            }
            resp
        }
        Ok(Reply::Failed(why)) => edge_error(StatusCode::BAD_GATEWAY, "tunnel-error", why),
        Err(_) => disconnected(subdomain),
    }
}

/// The answer to a request whose body had not arrived whole by the deadline
/// (and so was not forwarded).
pub(super) fn body_timed_out() -> Response<Body> {
    edge_error(
        StatusCode::REQUEST_TIMEOUT,
        "request-body-timeout",
        "the request body did not arrive within the request timeout; it was not forwarded to the tunnel",
    )
}

/// The answer to a request whose tunnel client went away before answering it.
pub(super) fn disconnected(subdomain: &str) -> Response<Body> {
    edge_error(
        StatusCode::BAD_GATEWAY,
        "tunnel-disconnected",
        format_args!("the client of tunnel '{subdomain}' disconnected before answering"),
    )
}

/// The answer to a request still unanswered when the server's shutdown grace
/// ran out: the same kind as [`disconnected`] (the app may have seen the
/// request), with the reason that is true.
pub(crate) fn cut_by_shutdown(subdomain: &str) -> Response<Body> {
    edge_error(
        StatusCode::BAD_GATEWAY,
        "tunnel-disconnected",
        format_args!("the server shut down before the client of tunnel '{subdomain}' answered"),
    )
}

/// Query parameters of the upgrade URL: `tunnelId` and `token`, or the name
/// of one given twice. (Which of two tokens would count is a guess, and the
/// client refuses such a wsUrl too.)
fn query_params(req: &Request<Incoming>) -> Result<(Option<String>, Option<String>), &'static str> {
    let (mut id, mut token) = (None, None);
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        let (slot, name) = match &*k {
            "tunnelId" => (&mut id, "tunnelId"),
            "token" => (&mut token, "token"),
            _ => continue,
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(name);
        }
    }
    Ok((id, token))
}

/// Whether the request asks for a WebSocket upgrade we can accept; the key to
/// answer with if so.
fn websocket_key(req: &Request<Incoming>) -> Result<HeaderValue, &'static str> {
    let h = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if req.method() != http::Method::GET || req.version() != http::Version::HTTP_11 {
        return Err("a WebSocket upgrade must be an HTTP/1.1 GET");
    }
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err("this endpoint only accepts WebSocket upgrades (Connection: Upgrade, Upgrade: websocket)");
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        return Err("unsupported WebSocket version (need Sec-WebSocket-Version: 13)");
    }
    let key = h.get(header::SEC_WEBSOCKET_KEY).ok_or("missing Sec-WebSocket-Key")?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).map_err(|_| "invalid Sec-WebSocket-Key")
}

/// `GET /tunnels/{subdomain}/ws`: authenticates, then upgrades to a session.
pub async fn upgrade(state: Arc<State>, subdomain: &str, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let Some(tunnel) = state.registry.by_subdomain(subdomain) else {
        return json_error(StatusCode::NOT_FOUND, format!("no tunnel named '{subdomain}'"));
    };
    let (id, token) = match query_params(&req) {
        Ok(params) => params,
        Err(twice) => {
            let why = format!("{twice} is given more than once: connect with ?tunnelId=…&token=… (the wsUrl has both)");
            return json_error(StatusCode::BAD_REQUEST, why);
        }
    };
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return json_error(StatusCode::UNAUTHORIZED, "missing auth token: connect with ?tunnelId=…&token=…");
    };
    let Some(id) = id.filter(|id| !id.is_empty()) else {
        // (404, as for a tunnelId that is not this tunnel's: no tunnel named.)
        return json_error(
            StatusCode::NOT_FOUND,
            "missing tunnelId: connect with ?tunnelId=…&token=… (the wsUrl has both)",
        );
    };
    if id != tunnel.id {
        return json_error(
            StatusCode::NOT_FOUND,
            format!("tunnel '{subdomain}' does not have the id given in tunnelId (check the wsUrl)"),
        );
    }
    if !secret_matches(&token, &tunnel.meta().token_hash) {
        return json_error(StatusCode::UNAUTHORIZED, "invalid auth token for this tunnel (was it regenerated?)");
    }
    let accept = match websocket_key(&req) {
        Ok(accept) => accept,
        Err(why) => {
            let mut resp = json_error(StatusCode::UPGRADE_REQUIRED, why);
            resp.headers_mut().insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            return resp;
        }
    };
    let limits = state.config.ws;
    // The session goes live before the 101 goes out, so a request sent the
    // moment the client sees the upgrade is queued for it, never refused.
    let (out, queue) = mpsc::channel(REPLIES);
    let (outbox, requests) = Outbox::new(outbox_budget(limits.max_body), limits.max_body.saturating_mul(INTAKE_BODIES));
    let link = Arc::new(WsLink {
        out,
        outbox,
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        last_record_id: Mutex::new(None),
        closing: CancellationToken::new(),
        left: CancellationToken::new(),
        close_frame: Mutex::new(None),
        max_body: limits.max_body,
    });
    let transport = Transport::WebSocket(link.clone());
    let caller = state.config.trusted_proxies.caller(peer.ip(), req.headers());
    let Some(session) = session::go_live(&state, &tunnel, transport, caller, &token) else {
        return json_error(StatusCode::UNAUTHORIZED, "the auth token was regenerated while connecting");
    };
    // The session keeps the socket, and so its place under the connection
    // limit, once the connection's task ends (taken only now: a refused
    // upgrade leaves the place with its connection, which stays open).
    let slot = req.extensions().get::<Arc<ConnectionSlot>>().and_then(|s| s.take());
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    // Extras for hookway's own client; legacy clients ignore them.
    let extra = [
        ("x-hookway-tunnel-url", state.tunnel_url(&tunnel.subdomain)),
        ("x-hookway-host-url", state.host_url(&tunnel.subdomain).unwrap_or_default()),
        ("x-hookway-tunnel-name", tunnel.meta().name),
        ("x-hookway-max-body", limits.max_body.to_string()),
        ("x-hookway-ping-interval-ms", limits.ping_interval.as_millis().to_string()),
        // When the edge gives up on a request (504): the protocol has no
        // message for it, so the client stops waiting for its app then.
        (wsjson::REQUEST_TIMEOUT, state.config.request_timeout.as_millis().to_string()),
        (wsjson::ACCEPTS_LEAVING, "1".to_owned()),
    ];
    for (name, value) in extra {
        if let Ok(v) = HeaderValue::try_from(value) {
            h.insert(name, v);
        }
    }
    let span = tracing::info_span!("ws", tunnel_id = %tunnel.id, %peer);
    let tasks = state.tasks.clone();
    let task = async move {
        let reason = match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let serving = serve_socket(upgraded, Queues { replies: queue, requests }, &link, limits);
                tokio::pin!(serving);
                tokio::select! {
                    reason = &mut serving => reason,
                    () = link.left.cancelled() => {
                        // As over QUIC: out of the routing map at once, so the
                        // tunnel is offline (new requests get an offline
                        // tunnel's answer, its offline reply among them)
                        // while the requests the client has finish.
                        session::end(&state, &session, "its client is stopping");
                        // Out of the routing map, no API call reaches it any
                        // more: a client that never closes is closed here.
                        match tokio::time::timeout(session::LEFT_DRAIN, &mut serving).await {
                            Ok(reason) => reason,
                            Err(_) => {
                                link.close(close::NORMAL, "drain over");
                                serving.await;
                                "its client left and did not close within its drain".into()
                            }
                        }
                    }
                }
            }
            Err(err) => format!("upgrade failed: {err}"),
        };
        // Stop the writer (with a close frame) and fail what is still waiting.
        link.close(close::NORMAL, &reason);
        link.outbox.close();
        link.lock_pending().clear();
        session::end(&state, &session, &reason);
        drop(slot);
    };
    tasks.spawn(task.instrument(span));
    resp
}

/// Largest bodies one session reads at a time while its client is slow
/// ([`Outbox::admit`]).
const INTAKE_BODIES: usize = 4;

/// The largest amount of request messages that may wait for one client: two
/// of the largest, one being written while the next waits. Beyond it, requests
/// wait for the client to read (and time out if it does not).
fn outbox_budget(max_body: usize) -> usize {
    wsjson::max_message_for(max_body).saturating_mul(2)
}

/// Runs the socket's writer and reader until either ends; returns why.
async fn serve_socket(
    upgraded: hyper::upgrade::Upgraded,
    queues: Queues,
    link: &Arc<WsLink>,
    limits: WsLimits,
) -> String {
    let max_message = wsjson::max_message_for(limits.max_body);
    let config = WebSocketConfig::default().max_message_size(Some(max_message)).max_frame_size(Some(max_message));
    let progress = Arc::new(Progress::default());
    let io = Counted::new(TokioIo::new(upgraded), progress.clone());
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (sink, stream) = ws.split();
    let writer = Writer { sink, progress, stall: limits.idle_timeout };
    let mut writer = tokio::spawn(writer.run(queues, link.clone(), limits.ping_interval).in_current_span());
    let reason = read_loop(stream, link, limits.idle_timeout).await;
    link.close(close::NORMAL, &reason);
    // The writer stops as soon as the link closes and has CLOSE_GRACE for the
    // close frame; the socket closes once it lets go of its half.
    if tokio::time::timeout(CLOSE_GRACE + Duration::from_secs(1), &mut writer).await.is_err() {
        writer.abort();
    }
    reason
}

type Socket = WebSocketStream<Counted<TokioIo<hyper::upgrade::Upgraded>>>;
type Sink = futures_util::stream::SplitSink<Socket, Message>;
type Stream = futures_util::stream::SplitStream<Socket>;
