//! Forwarding a public HTTP request through a tunnel and streaming the answer back.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::Frame as BodyFrame;
use http_body_util::{BodyExt, StreamBody};
use quinn::VarInt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::caller_pace::{CallerPaced, Pace};
use super::capture::{Replay, TapBody};
use super::http::{Body, BoxError, bad_request_body, edge_error};
use super::registry::{Session, Transport, Tunnel};
use super::{State, gateway, inbound, untaken};
use crate::headers::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, strip_hop_by_hop};
use crate::inbound::{OfflineReply, Verdict};
use crate::quic::framed::{ReadFrameError, SendOutcome, SmallBody, send_message, sent_inline};
use crate::quic::{FrameReader, FrameWriter, close};
use crate::wire::{Frame, RequestHead, StreamErrorCode};

/// Forwards `req` to the tunnel named `subdomain`, as `target` (path and
/// query), capturing the exchange for inspection (`replay` when it replays a
/// captured request).
pub async fn forward<B>(
    state: Arc<State>,
    subdomain: &str,
    target: Bytes,
    req: Request<B>,
    peer: SocketAddr,
    replay: Option<Replay>,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError> + std::fmt::Display + Send,
{
    let session = state.registry.route(subdomain);
    let offline;
    let tunnel = match &session {
        Some(session) => &session.tunnel,
        None => {
            offline = match state.registry.by_subdomain(subdomain) {
                Some(tunnel) => tunnel,
                None if subdomain.is_empty() => {
                    return edge_error(
                        StatusCode::NOT_FOUND,
                        "tunnel-not-found",
                        "no tunnel named in the URL: a tunnel's URLs are /t/<subdomain>/…",
                    );
                }
                None => {
                    return edge_error(
                        StatusCode::NOT_FOUND,
                        "tunnel-not-found",
                        format_args!("no tunnel named '{subdomain}'"),
                    );
                }
            };
            &offline
        }
    };
    let mut req = req;
    // What the capture records as the target: with a verification handshake
    // set, its code masked (passing requests too: a POST may carry `?verify=`).
    let mut recorded_target = None;
    let options = tunnel.inbound();
    if let Some(rules) = &options {
        recorded_target = rules.masked(&target).map(Bytes::from);
        // (A replay comes from the tunnel's owner, through the API: not screened.)
        let verdict = match replay {
            None => rules.screen(req.method(), req.uri().query(), req.headers().get(header::AUTHORIZATION)),
            Some(_) => Verdict::Pass { authenticated: false },
        };
        // With basic auth, `Authorization` is the tunnel's credential (or a
        // try at it): for no one else, not the app, not the capture, whatever
        // the verdict.
        if rules.config().basic_auth.is_some() {
            req.headers_mut().remove(header::AUTHORIZATION);
        }
        if !matches!(verdict, Verdict::Pass { .. }) {
            // Refused callers (401, 429) are not recorded: the capture keeps a
            // tunnel's newest records, and a stranger's requests would push
            // out the webhooks recorded while it was offline, which may be
            // the only copy (an offline reply told their sender they were
            // delivered). Handshakes are recorded.
            let refused = matches!(verdict, Verdict::Throttled { .. } | Verdict::Unauthorized);
            if let Some(resp) = inbound::answer(verdict, rules) {
                if refused {
                    tracing::debug!(tunnel_id = %tunnel.id, status = resp.status().as_u16(), "refused by its inbound options");
                    return resp;
                }
                let answer = AtEdge { resp, offline_reply: None };
                let target = recorded_target.unwrap_or(target);
                return answer_at_edge(&state, tunnel, req, &target, peer, replay, answer).await;
            }
        }
    }
    let Some(session) = session else {
        let resp = edge_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "tunnel-offline",
            format_args!("tunnel '{subdomain}' is offline: no client is connected to it"),
        );
        let reply = options.and_then(|rules| rules.config().offline_reply).filter(|_| replay.is_none());
        let answer = AtEdge { resp, offline_reply: reply };
        let target = recorded_target.unwrap_or(target);
        return answer_at_edge(&state, tunnel, req, &target, peer, replay, answer).await;
    };
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    // Before our own hop joins `X-Forwarded-For`.
    let caller = caller(&state, peer, &headers, replay.is_some());
    // Not for a replay: its caller is the tunnel's owner, through the API.
    let limit = state.config.http.max_in_flight_per_caller;
    let _caller_place = match replay {
        Some(_) => None,
        None => match session.callers.take(caller) {
            Some(place) => Some(place),
            // Not recorded, as the inbound options' refusals are not.
            None => return too_many_in_flight(&session.tunnel, caller, limit),
        },
    };
    session.count_request();
    // The offline reply is also for a request the client refused as it was
    // leaving (see below); not for a replay, whose caller is the API.
    let offline_reply = options.as_ref().and_then(|rules| rules.config().offline_reply).filter(|_| replay.is_none());
    let span = tracing::debug_span!("forward", tunnel_id = %session.tunnel.id, method = %parts.method, ?peer);
    let recorded = recorded_target.as_ref().unwrap_or(&target);
    let tap = state.capture.tap(&session.tunnel, &parts.method, recorded, &headers, caller, replay);
    let body = match &tap {
        Some(tap) => tap.request_body(body),
        None => TapBody::plain(body),
    };
    add_forwarded(&mut headers, &state, peer, parts.uri.authority());
    let timeout = state.config.request_timeout;
    let resp = match &session.transport {
        Transport::Quic(conn) => {
            let head = Frame::RequestHead(RequestHead {
                method: parts.method,
                target,
                headers: headers.into(),
                client_ip: Some(caller),
                request_id: tap.as_ref().map(|tap| tap.id().clone()).unwrap_or_default(),
            });
            let _in_flight = state.in_flight.enter();
            let exchange = quic_exchange(conn, &session, head, CallerPaced::new(body), timeout, &state.cutting);
            exchange.instrument(span).await
        }
        Transport::WebSocket(link) => {
            let target = std::str::from_utf8(&target).unwrap_or("/");
            let deadline = tokio::time::Instant::now() + timeout;
            let record_id = tap.as_ref().map(|tap| tap.id());
            let exchange =
                gateway::exchange(link, subdomain, record_id, &parts.method, target, &headers, body, deadline);
            tokio::select! {
                // The cut first: once it came, a link already closing must not
                // answer "disconnected" in its place.
                biased;
                () = state.cutting.cancelled() => gateway::cut_by_shutdown(subdomain),
                resp = tokio::time::timeout_at(deadline, exchange.instrument(span)) => {
                    resp.unwrap_or_else(|_| timed_out(timeout))
                }
            }
        }
    };
    // An HTTP/2 caller may leave one answer unread while its connection goes
    // on, which the socket's watch does not see (see `untaken`); and over
    // QUIC, the answers callers leave unread share the tunnel's window, so a
    // tunnel keeps only a few. Answers small enough for HTTP/2's first
    // window (or a socket's buffer) never wait on their caller.
    // (A tunnel's body has no size hint: its length is in its header.)
    let declared = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let small = http_body::Body::size_hint(resp.body()).upper().or(declared).is_some_and(|n| n <= UNTAKEN_MIN);
    let quic = matches!(session.transport, Transport::Quic(_));
    let resp = if (parts.version == http::Version::HTTP_2 || quic) && !small {
        let stalls = quic.then(|| session.stalls.clone());
        resp.map(|body| untaken::watch(body, state.config.http.send_timeout, stalls))
    } else {
        resp
    };
    match tap {
        Some(tap) => {
            // Refused by a client that is stopping, before its app saw it (a
            // stream opened just before the server read its `Leaving`, or a
            // `--ws` client's drain): the tunnel is going offline, and a
            // request recorded whole gets its offline reply, as one that
            // came a moment later does.
            let resp = match offline_reply {
                Some(reply) if went_offline(&resp) && tap.request_recorded_whole() => {
                    inbound::offline_reply(reply, &session.tunnel.subdomain)
                }
                _ => resp,
            };
            tap.response(resp)
        }
        None => resp,
    }
}

/// Whether `resp` answers a request a stopping client refused, which no app
/// saw. (Not any "tunnel offline": a stream that could not be opened on a
/// connection just replaced belongs to a tunnel that is live.)
fn went_offline(resp: &Response<Body>) -> bool {
    resp.extensions().get::<super::http::RefusedByLeavingClient>().is_some()
}

/// The largest answer that goes to an HTTP/2 caller without a deadline on
/// its being taken: HTTP/2's initial stream window (65,535 bytes) holds it.
const UNTAKEN_MIN: u64 = 65_535;

/// What the edge answers a request with by itself.
struct AtEdge {
    /// The answer.
    resp: Response<Body>,
    /// The tunnel's offline reply, given instead of `resp` only when the
    /// request is recorded whole, body and all: the sender takes it for
    /// delivered, and the replay is all the app will ever get of it.
    offline_reply: Option<OfflineReply>,
}

/// Answers a request at the edge (its tunnel is offline, or its inbound
/// options answered it), capturing it as a forwarded one is: the owner sees
/// what arrived and what it was told, and can replay it.
async fn answer_at_edge<B>(
    state: &State,
    tunnel: &Tunnel,
    req: Request<B>,
    target: &Bytes,
    peer: SocketAddr,
    replay: Option<Replay>,
    answer: AtEdge,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError> + std::fmt::Display + Send,
{
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let caller = caller(state, peer, &parts.headers, replay.is_some());
    match state.capture.tap(tunnel, &parts.method, target, &parts.headers, caller, replay) {
        Some(tap) => {
            let body = tap.request_body(body);
            // (A tunnel that keeps no bodies has nothing to wait for.)
            let bodies = tunnel.capture_bodies.load(std::sync::atomic::Ordering::Relaxed);
            if bodies {
                keep_offline_body(body, state.capture.config().body_limit).await;
            }
            let resp = match answer.offline_reply {
                Some(reply) if tap.request_recorded_whole() => inbound::offline_reply(reply, &tunnel.subdomain),
                _ => answer.resp,
            };
            tap.response(resp)
        }
        None => answer.resp,
    }
}

/// How long the edge waits for the body of a request to an offline tunnel.
const OFFLINE_BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads the body of a request to an offline tunnel through its tap, so the
/// record keeps it: replaying the webhooks that arrived while the laptop was
/// away is what a replay is most wanted for. Only up to the capture limit
/// (a body declared larger is not read at all) and for at most
/// [`OFFLINE_BODY_WAIT`]. Whether it was read and kept whole, the tap tells.
async fn keep_offline_body<B>(mut body: TapBody<B>, limit: usize)
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    if http_body::Body::size_hint(&body).lower() > limit as u64 {
        return;
    }
    let read = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > limit {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(OFFLINE_BODY_WAIT, read).await;
}

pub(super) fn timed_out(timeout: std::time::Duration) -> Response<Body> {
    edge_error(StatusCode::GATEWAY_TIMEOUT, "timeout", format_args!("the local app did not answer within {timeout:?}"))
}

/// The answer to a request the tunnel could not take in time, its caller's
/// body whole: the QUIC window to the client is full.
fn tunnel_full(timeout: std::time::Duration) -> Response<Body> {
    edge_error(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        format_args!(
            "the tunnel could not take the request within {timeout:?}: its window is full (uploads its app does \
             not read)"
        ),
    )
}

/// A request body that notes when its caller has sent all of it.
struct NotesEnd<B> {
    inner: B,
    arrived: Arc<std::sync::atomic::AtomicBool>,
}

impl<B: http_body::Body + Unpin> http_body::Body for NotesEnd<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.arrived.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.arrived.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        end
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// One request over its own QUIC stream: head and body out, response back,
/// the response head within `timeout`.
async fn quic_exchange<B>(
    conn: &quinn::Connection,
    session: &Session,
    head: Frame,
    body: CallerPaced<B>,
    timeout: std::time::Duration,
    cutting: &CancellationToken,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError> + Send,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let pace = body.pace();
    let head_request = matches!(&head, Frame::RequestHead(h) if h.method == http::Method::HEAD);
    // (A timer is registered only if a step is pending: usually none is for
    // `open_bi`.)
    let opened = tokio::select! {
        biased;
        () = cutting.cancelled() => return gateway::cut_by_shutdown(&session.tunnel.subdomain),
        opened = tokio::time::timeout_at(deadline, conn.open_bi()) => opened,
    };
    let (send, recv) = match opened {
        Ok(Ok(pair)) => pair,
        Ok(Err(_)) => return offline(session, conn),
        // The client takes as many requests at once as it said it would (2048
        // for ours), and none of them finished in time.
        Err(_) => {
            return edge_error(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format_args!(
                    "the tunnel client took no new request within {timeout:?}: it has as many in flight as it \
                     allows, and none finished"
                ),
            );
        }
    };
    let mut reader = FrameReader::new(recv);
    // Whether the caller had sent all of its body: a small request still
    // not handed over at the timeout is then the tunnel's fault (its window
    // full of unread uploads or answers), not the caller's.
    let arrived = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body = NotesEnd { inner: body, arrived: arrived.clone() };
    // Set once `send_request` returns: a small request has then gone out
    // whole, a large one streams from its task (stopped through `streaming`).
    let mut handed_over = false;
    let mut streaming = None;
    let exchange = tokio::time::timeout_at(deadline, async {
        match send_request(FrameWriter::new(send), head, body, pace.clone(), timeout).await {
            Sending::BodyFailed(err) => Err(err),
            mut sending => {
                handed_over = true;
                if let Sending::Spawned { stop, .. } = &mut sending {
                    streaming = stop.take();
                }
                Ok((sending, reader.next().await))
            }
        }
    });
    let answer = tokio::select! {
        // The cut first: once it came, a connection already closing must not
        // answer "disconnected" in its place.
        biased;
        () = cutting.cancelled() => None,
        answer = exchange => Some(answer),
    };
    let Some(answer) = answer else {
        // The shutdown grace ran out: the caller hears why before its
        // connection closes, and the client that the server gave up.
        reader.stop(close::SHUTTING_DOWN);
        if let Some(stop) = streaming {
            let _ = stop.send(close::SHUTTING_DOWN);
        }
        return gateway::cut_by_shutdown(&session.tunnel.subdomain);
    };
    let (sending, first) = match answer {
        Ok(Ok(sent)) => sent,
        Ok(Err(body_err)) => return bad_request_body(body_err),
        Err(_) => {
            // A small body is read whole before anything is sent: one still
            // arriving means the caller is late, and the app never saw the
            // request. A large body streams from a task: the caller is late
            // if that task is waiting on it now, and long enough (see
            // `Pace::caller_is_late`); else the app (not reading, or not
            // answering) or the tunnel is: a 504.
            let (resp, code) = if !handed_over && !arrived.load(std::sync::atomic::Ordering::Relaxed) {
                (gateway::body_timed_out(), close::REQUEST_TIMEOUT)
            } else if !handed_over {
                (tunnel_full(timeout), close::REQUEST_TIMEOUT)
            } else if pace.as_ref().is_some_and(|p| p.caller_is_late()) {
                (body_cut_by_timeout(), close::BODY_TIMEOUT)
            } else {
                (timed_out(timeout), close::REQUEST_TIMEOUT)
            };
            // Tell the client why: it logs a timeout rather than a caller
            // who went away, and stops waiting on the app's answer.
            reader.stop(code);
            if let Some(stop) = streaming {
                let _ = stop.send(code);
            }
            return resp;
        }
    };
    match first {
        Ok(Some(Frame::ResponseHead(head))) => response(head, reader, head_request),
        // (A large body streams from its task, and the client hears of its
        // caller breaking it off as a reset: the app failing on it then is
        // the caller's doing, not the app's.)
        Ok(Some(Frame::Error(err))) => match sending.body_error_soon().await {
            Some(body_err) => bad_request_body(body_err),
            None => local_error(err.code, &err.message),
        },
        Err(ReadFrameError::Read(quinn::ReadError::Reset(code))) if code == close::STREAM_REFUSED => {
            let mut resp = edge_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "tunnel-offline",
                format_args!("tunnel '{}' is going offline: its client is stopping", session.tunnel.subdomain),
            );
            resp.extensions_mut().insert(super::http::RefusedByLeavingClient);
            resp
        }
        // The client gives up on a request whose stream we reset because the
        // caller's body failed: that is the caller's fault, not the tunnel's.
        Ok(_) | Err(_) => match sending.body_error().await {
            Some(err) => bad_request_body(err),
            // The client went away (said goodbye, or died) after the request
            // reached it: as over the WebSocket gateway, a 502, since the app
            // may have seen the request (a 503 says it was not processed).
            None if conn.close_reason().is_some() => {
                // (A shutdown that closed the connection before the cut reached
                // this request, should one ever.)
                let ended = session.ending.borrow().as_ref().map(|e| u64::from(e.close_code));
                if ended == Some(close::SERVER_SHUTDOWN.into_inner()) {
                    gateway::cut_by_shutdown(&session.tunnel.subdomain)
                } else {
                    gateway::disconnected(&session.tunnel.subdomain)
                }
            }
            None => edge_error(
                StatusCode::BAD_GATEWAY,
                "tunnel-error",
                "the tunnel client ended the request without a response",
            ),
        },
    }
}

/// The answer to a request whose streamed body was still arriving, slowly, at
/// the deadline: the app got part of it at most, and its stream was reset.
fn body_cut_by_timeout() -> Response<Body> {
    edge_error(
        StatusCode::REQUEST_TIMEOUT,
        "request-body-timeout",
        "the request body was still arriving at the request timeout: the caller sent it too slowly; \
         the local app got part of it at most",
    )
}

/// The answer when a request's stream cannot be opened: the connection is
/// gone. If its client closed it (a client that left and then closed), the
/// request met a tunnel going offline, which no app saw: the offline reply
/// may stand in (a connection the server closed, replaced by a newer
/// client's, is not that).
fn offline(session: &Session, conn: &quinn::Connection) -> Response<Body> {
    let mut resp = edge_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "tunnel-offline",
        format_args!("tunnel '{}' lost its client connection", session.tunnel.subdomain),
    );
    if matches!(conn.close_reason(), Some(quinn::ConnectionError::ApplicationClosed(_))) {
        resp.extensions_mut().insert(super::http::RefusedByLeavingClient);
    }
    resp
}

fn local_error(code: StreamErrorCode, message: &str) -> Response<Body> {
    let message = super::http::client_text(message);
    match code {
        StreamErrorCode::LocalUnreachable => edge_error(StatusCode::BAD_GATEWAY, "local-unreachable", message),
        StreamErrorCode::LocalTimeout => edge_error(StatusCode::GATEWAY_TIMEOUT, "local-timeout", message),
        _ => edge_error(StatusCode::BAD_GATEWAY, "local-error", message),
    }
}

/// The answer to a caller with `limit` requests in flight to `tunnel` already.
fn too_many_in_flight(tunnel: &Tunnel, caller: std::net::IpAddr, limit: u32) -> Response<Body> {
    tracing::debug!(tunnel_id = %tunnel.id, %caller, limit, "a caller has as many requests in flight as it may");
    let mut resp = edge_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-in-flight",
        format_args!(
            "your address has {limit} requests in flight to this tunnel, the most it may; try again when some have ended"
        ),
    );
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// The caller of a request from `peer`, for its record and the tunnel
/// client: behind a trusted proxy, the one its `X-Forwarded-For` names. Not
/// for a replay, whose headers are a captured request's (with the API
/// user's edits), not what a proxy wrote for this one.
fn caller(state: &State, peer: SocketAddr, headers: &HeaderMap, replay: bool) -> std::net::IpAddr {
    if replay { peer.ip().to_canonical() } else { state.config.trusted_proxies.caller(peer.ip(), headers) }
}

/// Adds `X-Forwarded-For/-Proto/-Host`; the host is the request's URI
/// authority when it has one (HTTP/2, which has no `Host` header), else its `Host`.
/// (Always the edge's own `-Proto` and `-Host`, even from a trusted proxy: a
/// proxy passes on what its caller wrote unless told to overwrite them, and an
/// app that builds links or checks signatures from them would be the caller's
/// to steer.)
fn add_forwarded(headers: &mut HeaderMap, state: &State, peer: SocketAddr, authority: Option<&Authority>) {
    let ip = peer.ip().to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::try_from(xff) {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(state.config.scheme));
    let host = match authority {
        // The request was routed by this authority (HTTP/2's `:authority`, or
        // an HTTP/1.1 target in absolute form), so the app gets it as its
        // `Host`, whatever `Host` header came along (RFC 9112 §3.2.2): else
        // the app saw its own address over HTTP/2, or a `Host` the caller
        // chose apart from the URL it was routed by.
        Some(authority) => {
            // (Userinfo is not the app's to see.)
            let host = HeaderValue::from_str(super::http::without_userinfo(authority)).ok();
            if let Some(host) = &host {
                headers.insert(header::HOST, host.clone());
            }
            host
        }
        None => headers.get(header::HOST).cloned(),
    };
    if let Some(host) = host {
        headers.insert(&X_FORWARDED_HOST, host);
    }
}

/// Where sending a request stands when its response is awaited.
enum Sending {
    /// Sent in full, or the tunnel client is gone (the response read says so).
    Done,
    /// The caller's body failed, with this error; the stream was reset.
    BodyFailed(String),
    /// Going on in a task, which returns the caller's body error if any. A
    /// code sent through `stop` resets the stream with it and ends the task.
    Spawned { task: JoinHandle<Option<String>>, stop: Option<oneshot::Sender<VarInt>> },
}

impl Sending {
    /// The caller's body error, waiting briefly for a task still ending: the
    /// client's error can arrive between the task's reset and its return (a
    /// descheduled thread), and the caller must not get the app's 502 then.
    async fn body_error_soon(self) -> Option<String> {
        match self {
            Sending::Spawned { task, .. } => {
                tokio::time::timeout(std::time::Duration::from_millis(100), task).await.ok()?.ok().flatten()
            }
            other => other.body_error().await,
        }
    }

    /// The caller's body error, if sending has ended with one. A failed body
    /// resets the stream before the client can react to it, so when the
    /// response read fails for that reason, the task has already finished.
    async fn body_error(self) -> Option<String> {
        match self {
            Sending::Done => None,
            Sending::BodyFailed(err) => Some(err),
            Sending::Spawned { task, .. } if task.is_finished() => task.await.ok().flatten(),
            Sending::Spawned { .. } => None,
        }
    }
}

/// Sends the request: inline when small (the response is awaited right after),
/// from a task otherwise, so the response can start while a large upload goes on.
/// Such an upload outlives the exchange only while its caller keeps sending:
/// after the answer, twice `timeout` without any of it moving (`pace`) ends it.
async fn send_request<B>(
    mut writer: FrameWriter,
    head: Frame,
    body: B,
    pace: Option<Arc<Pace>>,
    timeout: std::time::Duration,
) -> Sending
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError> + Send,
{
    let small = sent_inline(&body);
    // Ends the stream as `outcome` says; the caller's body error, if any.
    let end_stream = |outcome: SendOutcome, writer: &mut FrameWriter| {
        match outcome {
            SendOutcome::Sent => writer.finish(),
            SendOutcome::PeerGone => {}
            SendOutcome::BodyFailed { error: err, .. } => {
                tracing::debug!(%err, "caller's request body failed");
                writer.reset(close::STREAM_CANCELLED);
                return Some(err);
            }
        }
        None
    };
    if small {
        let sent = send_message(&mut writer, head, body, SmallBody::Whole).await;
        return end_stream(sent, &mut writer).map_or(Sending::Done, Sending::BodyFailed);
    }
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let sent = {
            let sending = send_message(&mut writer, head, body, SmallBody::Whole);
            tokio::pin!(sending);
            tokio::select! {
                sent = &mut sending => Ok(sent),
                stop = stopped => match stop {
                    Ok(code) => Err(code),
                    // The exchange ended without a stop (the app answered):
                    // the upload goes on, unless it stalls. A caller who sends
                    // a few bytes and then nothing, or a client that answered
                    // and reads no more, would otherwise hold this task and
                    // the caller's connection for ever. (Twice the request
                    // timeout: uploads an app answered and holds unread may
                    // fill the tunnel's window, and the requests they hold up
                    // meanwhile are each the edge's 504 at their own timeout,
                    // whoever is late, before these give way.)
                    Err(_) => {
                        let stalls = async {
                            match &pace {
                                Some(pace) => pace.stalls(timeout * 2).await,
                                None => std::future::pending().await,
                            }
                        };
                        tokio::select! {
                            sent = &mut sending => Ok(sent),
                            () = stalls => Err(close::BODY_TIMEOUT),
                        }
                    }
                },
            }
        };
        match sent {
            Ok(sent) => end_stream(sent, &mut writer),
            // The exchange gave up (timeout), or the upload stalled after
            // the answer: the app gets a reset, not a body cut short that
            // looks whole, and the caller's body is dropped, so its
            // connection is not held open for it.
            Err(code) => {
                writer.reset(code);
                None
            }
        }
    });
    Sending::Spawned { task, stop: Some(stop) }
}

/// Whether a response of `status` has no content (204, 304), whatever the
/// tunnel client sends after its head; a 204's `content-length` goes too (RFC
/// 9110 §8.6). hyper's HTTP/2 server does not know either rule: an app's
/// `content-length: 5` on a 204, or a body, made HTTP/2 callers (nghttp2,
/// curl) reset the stream as malformed. A 304's length stays: it describes
/// the representation the caller already has (RFC 9110 §15.4.5).
pub(super) fn no_content(status: StatusCode, headers: &mut http::HeaderMap) -> bool {
    if status == StatusCode::NO_CONTENT {
        headers.remove(header::CONTENT_LENGTH);
    }
    status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// Builds the public response, its body streamed from the tunnel. Its
/// `content-length` must be one length (else the client, not the app, chose
/// how hyper frames the answer: a 502), and a body that ends short of it is
/// an error, so the caller's answer is cut rather than passed as whole, and
/// the record says so. (The answer to a HEAD has no body: its length is the
/// GET's.)
fn response(head: crate::wire::ResponseHead, reader: FrameReader, head_request: bool) -> Response<Body> {
    let crate::wire::ResponseHead { status, headers, reason } = head;
    // The app's own reason phrase, for HTTP/1 callers (hyper writes a
    // status's standard one, and `<none>` for a code without one).
    let reason = (!reason.is_empty()).then(|| hyper::ext::ReasonPhrase::try_from(reason).ok()).flatten();
    if status.is_informational() {
        return edge_error(StatusCode::BAD_GATEWAY, "local-error", crate::headers::unasked_informational(status));
    }
    let Ok(mut map) = headers.into_map() else {
        // Dropping the reader stops the stream: the rest is of no use.
        return edge_error(
            StatusCode::BAD_GATEWAY,
            "tunnel-error",
            "the tunnel client sent a response header that is not valid HTTP",
        );
    };
    strip_hop_by_hop(&mut map);
    let declared = match crate::headers::content_length(&map) {
        // (A 204's is dropped below, whatever it says.)
        Err(_) if status == StatusCode::NO_CONTENT => None,
        Err(bad) => {
            return edge_error(
                StatusCode::BAD_GATEWAY,
                "tunnel-error",
                format_args!("the tunnel client answered with an invalid content-length ({bad:?})"),
            );
        }
        Ok(declared) => declared,
    };
    if let Some(n) = declared {
        // One line: `5, 5` or two `5` lines are one length (RFC 9110 §8.6).
        map.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if no_content(status, &mut map) {
        // Whatever frames follow are not sent: dropping the reader stops the stream.
        let mut resp = Response::new(super::http::full(Bytes::new()));
        *resp.status_mut() = status;
        *resp.headers_mut() = map;
        if let Some(reason) = reason {
            resp.extensions_mut().insert(reason);
        }
        return resp;
    }
    // What the body still owes its declared length.
    let owed = declared.filter(|_| !head_request);
    let frames = stream::unfold(Some((reader, owed)), |state| async move {
        let (mut reader, owed) = state?;
        let failed = match reader.next().await {
            // More than it declared: the caller has its answer whole; the
            // rest goes nowhere (hyper's HTTP/2 sent it on, a protocol error
            // to the caller).
            Ok(Some(Frame::Body(_))) if owed == Some(0) => return None,
            Ok(Some(Frame::Body(mut data))) => {
                if let Some(n) = owed.filter(|&n| data.len() as u64 > n) {
                    data.truncate(n as usize);
                }
                let owed = owed.map(|n| n - data.len() as u64);
                let whole = owed.is_none_or(|n| n == 0);
                let more = (!(whole && reader.end_is_next())).then_some((reader, owed));
                return Some((Ok(BodyFrame::data(data)), more));
            }
            Ok(Some(Frame::End)) if owed.is_none_or(|n| n == 0) => return None,
            Ok(Some(Frame::End)) => BoxError::from(format!(
                "the tunnel client ended the response body {} bytes short of its content-length",
                owed.unwrap_or_default()
            )),
            Ok(Some(Frame::Error(err))) => {
                BoxError::from(format!("local app: {}", super::http::client_text(&err.message)))
            }
            Ok(Some(other)) => BoxError::from(format!("unexpected frame {other:?}")),
            Ok(None) => BoxError::from("response body ended early"),
            Err(err) => BoxError::from(err),
        };
        // hyper drops the connection on a body's error without writing what
        // it holds: a head and bytes that came with the failure would never
        // leave, and the caller would get an empty reply. Pending once, it
        // writes them; then the error cuts the body where the app broke it.
        tokio::task::yield_now().await;
        Some((Err(failed), None))
    });
    let mut resp = Response::new(StreamBody::new(frames).boxed_unsync());
    *resp.status_mut() = status;
    *resp.headers_mut() = map;
    if let Some(reason) = reason {
        resp.extensions_mut().insert(reason);
    }
    resp
}
