//! Serving one request stream: read the request from the tunnel, send it to the
//! local app, stream the response back.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{Request, Uri};
use http_body::Frame as BodyFrame;
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioExecutor;

use super::app_conn::{self, AppConnector};
use crate::headers::strip_hop_by_hop;
use crate::quic::framed::{SendOutcome, SmallBody, send_message};
use crate::quic::{FrameReader, FrameWriter, ReadFrameError, close};
use crate::wire::{Frame, ResponseHead, StreamError, StreamErrorCode};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// One forwarded exchange, as reported to the user.
#[derive(Debug, Clone)]
pub struct RequestLog {
    /// The server's record of the request (`req_…`), when it keeps one: what
    /// `hookway tunnels request` and `replay` take.
    pub id: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Status returned, or `None` when the local app failed.
    pub status: Option<u16>,
    /// Time until the response went out whole (or failed), as the server's
    /// request record counts it. (Time to the head alone hid an app slow to
    /// send its body: one writing head and body apart met Nagle's 40 ms.)
    pub duration: Duration,
    /// What went wrong, when something did.
    pub error: Option<String>,
}

/// The local app requests are forwarded to. Cloned for every request, so
/// one shared allocation: a clone is one reference count, not the pooled
/// client's half-dozen and a copy of the authority.
#[derive(Clone)]
pub struct LocalApp(Arc<AppInner>);

struct AppInner {
    client: Client<AppConnector, Body>,
    /// For a request sent again after a kept-alive connection failed it
    /// ([`app_conn`](super::app_conn)): a new connection each, never a pooled
    /// one, which could be as stale.
    fresh: Client<AppConnector, Body>,
    /// What the connections told of the app.
    side: Arc<app_conn::AppSide>,
    authority: String,
}

/// Resolves `localhost` to both loopback addresses, IPv4 first, without a
/// lookup; other names through the system's resolver.
///
/// Why: a development server may listen on either. Python's `http.server`
/// takes `0.0.0.0`, Node's (17 and later) and Vite's `localhost` often only
/// `::1`. The connector tries the second address at once when the first one
/// refuses, so either app is reached, and one on IPv4 without a failed try.
/// (An IP literal, such as `--local-host 127.0.0.1`, is never resolved.)
#[derive(Clone, Debug)]
pub struct LoopbackFirst(GaiResolver);

impl tower_service::Service<Name> for LoopbackFirst {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        if name.as_str().eq_ignore_ascii_case("localhost") {
            let both = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), SocketAddr::from((Ipv6Addr::LOCALHOST, 0))];
            return Box::pin(std::future::ready(Ok(both.into_iter())));
        }
        let looked_up = self.0.call(name);
        Box::pin(async move { Ok(looked_up.await?.collect::<Vec<_>>().into_iter()) })
    }
}

/// Checks a `--local-host`: a host name or an IP address (an IPv6 one with
/// or without brackets), returned as [`authority`] takes it. Anything else
/// used to be accepted and made every request fail with a misleading
/// "refused": `127.0.0.1:3000` became `[127.0.0.1:3000]:3000`.
pub fn local_host(s: &str) -> Result<String, String> {
    const PORT: &str = "the port is the command's own argument, as in `hookway start 3000 --local-host 127.0.0.1`";
    let host = s.trim();
    if host.is_empty() {
        return Err("the local app's host is empty (the default is localhost)".into());
    }
    if host.contains("://") {
        return Err(format!("give the host alone, without a scheme: {PORT}"));
    }
    let unbracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if unbracketed.parse::<std::net::IpAddr>().is_ok() {
        return Ok(unbracketed.to_owned());
    }
    if host.parse::<SocketAddr>().is_ok() || host.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        return Err(format!("give the host alone, without a port: {PORT}"));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            // (`_`: Docker Compose names its containers `project_web_1`.)
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("{host:?} is not a host name or an IP address"));
    }
    Ok(host.to_owned())
}

/// `host:port` as in a URL: an IPv6 address in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// Most header lines of an app's answer the client reads (hyper's default,
/// as the edge's for a caller's request).
pub const APP_MAX_HEADERS: usize = 100;

/// How long a connection to the app may stay idle in the pool before it is closed.
pub const APP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl LocalApp {
    /// The app at `host:port`, over a pooled HTTP/1.1 client.
    pub fn new(host: &str, port: u16) -> Self {
        Self::with_idle_timeout(host, port, APP_IDLE_TIMEOUT)
    }

    /// [`LocalApp::new`] closing pooled connections idle for `idle`.
    pub fn with_idle_timeout(host: &str, port: u16, idle: Duration) -> Self {
        let mut connector = HttpConnector::new_with_resolver(LoopbackFirst(GaiResolver::new()));
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = AppConnector { inner: connector, app: Arc::default() };
        // (Without a timer the idle timeout is never applied: a burst's
        // connections stayed open for good, up to the idle limit.)
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(idle)
            .pool_max_idle_per_host(256)
            .build(connector.clone());
        let side = connector.app.clone();
        let fresh = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector);
        Self(Arc::new(AppInner { client, fresh, side, authority: authority(host, port) }))
    }

    /// Sends `req` to the app: on a kept-alive connection, or on a new one
    /// for an app that closes after answering. When it fails on a connection
    /// the app closed as it went out, unanswered, and the app cannot have
    /// acted on it (see [`app_conn`](super::app_conn)), sends it once more
    /// on a new connection, if `again` can build it anew (its body is whole).
    async fn send(
        &self,
        req: Request<Body>,
        again: impl FnOnce() -> Option<Request<Body>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        let client = if self.0.side.closes_after_answering() { &self.0.fresh } else { &self.0.client };
        let idempotent = req.method().is_idempotent();
        let err = match client.request(req).await {
            Err(err) if app_conn::may_send_again(&err, idempotent) => err,
            sent => return sent,
        };
        let Some(req) = again() else { return Err(err) };
        tracing::debug!(err = %crate::error_chain(&err), "the app closed a connection under a request; sending it again on a new one");
        match self.0.fresh.request(req).await {
            // The app is gone now, but it may have seen the first (an
            // idempotent request): the first failure is the one to tell.
            Err(again) if again.is_connect() => Err(err),
            sent => sent,
        }
    }

    /// The app's URI for a request target (path and query).
    fn uri(&self, target: &str) -> Option<Uri> {
        format!("http://{}{target}", self.0.authority).parse().ok()
    }

    /// `host:port`.
    pub fn authority(&self) -> &str {
        &self.0.authority
    }
}

/// A complete response from the local app, or the reason there is none, for
/// transports that carry whole messages (the WebSocket-JSON gateway).
pub struct Buffered {
    /// HTTP status.
    pub status: http::StatusCode,
    /// Headers, hop-by-hop ones removed.
    pub headers: http::HeaderMap,
    /// The complete body.
    pub body: Bytes,
}

impl LocalApp {
    /// Sends a complete request and reads the complete response, refusing a
    /// response body over `max_body`. The error is a message for the caller.
    pub async fn exchange_buffered(
        &self,
        method: http::Method,
        target: &str,
        headers: http::HeaderMap,
        body: Bytes,
        max_body: usize,
    ) -> Result<Buffered, (&'static str, String)> {
        let uri = self.uri(target).ok_or_else(|| ("bad-target", format!("invalid request target {target:?}")))?;
        let req = app_request(method.clone(), uri.clone(), headers.clone(), RequestBody::Whole(body.clone()));
        let again = || Some(app_request(method, uri, headers, RequestBody::Whole(body)));
        let resp = self.send(req, again).await.map_err(|err| self.failure(&err))?;
        let (parts, body) = resp.into_parts();
        if parts.status.is_informational() {
            return Err(("local-error", crate::headers::unasked_informational(parts.status)));
        }
        let body = whole(body, max_body).await.map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                (
                    "body-too-large",
                    format!("the local app's response is larger than the {max_body} bytes a WebSocket tunnel carries"),
                )
            } else {
                let err = crate::error_chain(&*err);
                ("local-error", format!("the local app at {} failed mid-response: {err}", self.0.authority))
            }
        })?;
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        Ok(Buffered { status: parts.status, headers, body })
    }

    /// Explains a failed request to the local app, with the `x-hookway-error` kind.
    fn failure(&self, err: &hyper_util::client::legacy::Error) -> (&'static str, String) {
        if err.is_connect() {
            let host = self.0.authority.rsplit_once(':').map_or("", |(host, _)| host);
            let tried = if host.eq_ignore_ascii_case("localhost") { " (tried 127.0.0.1 and ::1)" } else { "" };
            let app = &self.0.authority;
            let message = match connect_failure(err) {
                ConnectFailure::Refused => {
                    format!("the local app at {app} refused the connection or is not running{tried}")
                }
                ConnectFailure::TimedOut => format!("the local app at {app} did not accept the connection within 5 s"),
                ConnectFailure::Other(why) => format!("the local app at {app} cannot be reached: {why}"),
            };
            ("local-unreachable", message)
        } else {
            // hyper-util's error says only "client error (SendRequest)", which
            // means nothing to the webhook's sender: what the app did wrong
            // is in its sources.
            let too_large = crate::error_sources(err)
                .filter_map(|cause| cause.downcast_ref::<hyper::Error>())
                .any(hyper::Error::is_parse_too_large);
            if too_large {
                // ("message head is too large" said nothing of the limits.)
                return (
                    "local-error",
                    format!(
                        "the local app at {} answered with too large a head: the client reads at most {APP_MAX_HEADERS} \
                         header lines and about 400 KiB of head",
                        self.0.authority,
                    ),
                );
            }
            let why = std::error::Error::source(err).map_or_else(|| err.to_string(), crate::error_chain);
            ("local-error", format!("the local app at {} failed: {why}", self.0.authority))
        }
    }
}

/// Why a connection to the local app failed: a refusal is the usual case
/// (the app is not running), but a name that does not resolve, or a host that
/// does not answer, calls for another fix.
enum ConnectFailure {
    Refused,
    TimedOut,
    Other(String),
}

fn connect_failure(err: &hyper_util::client::legacy::Error) -> ConnectFailure {
    for cause in crate::error_sources(err).skip(1) {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return ConnectFailure::Refused,
                std::io::ErrorKind::TimedOut => return ConnectFailure::TimedOut,
                _ => {}
            }
        }
    }
    // hyper-util's message ("client error (Connect)") says nothing its
    // sources do not: "dns error: failed to lookup address information: …".
    let chain = std::error::Error::source(err).map_or_else(|| err.to_string(), crate::error_chain);
    ConnectFailure::Other(chain)
}

/// Why this client is closing its connection, once it is: the log of a
/// request still waiting for the app then says so, rather than blaming a
/// lost connection or the caller.
#[derive(Clone, Debug, Default)]
pub struct Closing(std::sync::Arc<std::sync::OnceLock<String>>);

impl Closing {
    /// Records why, before the close (the first reason given stays).
    pub fn because(&self, why: impl Into<String>) {
        let _ = self.0.set(why.into());
    }
}

/// Serves one stream opened by the server; returns what happened, for the log.
pub async fn serve(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    app: &LocalApp,
    closing: &Closing,
) -> Option<RequestLog> {
    let started = Instant::now();
    let mut reader = FrameReader::new(recv);
    let mut writer = FrameWriter::new(send);
    let head = match reader.next().await {
        Ok(Some(Frame::RequestHead(head))) => head,
        _ => {
            writer.reset(close::STREAM_CANCELLED);
            return None;
        }
    };
    let mut log = RequestLog {
        // (Checked on decode: ASCII letters, digits, `_` and `-`.)
        id: (!head.request_id.is_empty()).then(|| String::from_utf8_lossy(&head.request_id).into_owned()),
        method: head.method.to_string(),
        path: String::from_utf8_lossy(&head.target).into_owned(),
        status: None,
        duration: Duration::ZERO,
        error: None,
    };
    // (A reference count: kept to build the request anew, should it be sent again.)
    let wire_headers = head.headers.clone();
    let Ok(headers) = head.headers.into_map() else {
        let _ = writer.send(&error_frame(StreamErrorCode::Protocol, "invalid request header")).await;
        writer.finish();
        log.error = Some("the server sent a request header that is not valid HTTP".into());
        return Some(log);
    };
    let body = match request_body(reader).await {
        Ok(body) => body,
        Err(broke) => {
            writer.reset(close::STREAM_CANCELLED);
            log.error = Some(if broke { CALLER_BODY_BROKE.into() } else { "request body failed".into() });
            return Some(log);
        }
    };
    let uri = match app.uri(&log.path) {
        Some(uri) => uri,
        None => {
            let _ = writer.send(&error_frame(StreamErrorCode::Protocol, "invalid request target")).await;
            writer.finish();
            return Some(log);
        }
    };
    // To send it again: a whole body, and the request's parts as they came
    // (reference counts; the request is built anew only if it is sent again).
    let again = body.again().map(|body| (body, head.method.clone(), head.target.clone(), wire_headers));
    let req = app_request(head.method, uri, headers, body);
    let again = || {
        let (body, method, target, headers) = again?;
        let uri = app.uri(&String::from_utf8_lossy(&target))?;
        Some(app_request(method, uri, headers.into_map().ok()?, body))
    };

    let result = tokio::select! {
        // In order: the answer first, and no random pick (a thread-local RNG
        // draw on every poll, about 1% of the client's CPU at concurrency 64).
        biased;
        r = app.send(req, again) => r,
        stopped = writer.stopped() => {
            log.duration = started.elapsed();
            log.error = Some(match stopped {
                Ok(Some(close::REQUEST_TIMEOUT)) => {
                    "no answer in time: the server answered the caller 504 (its --request-timeout)".into()
                }
                Ok(Some(close::BODY_TIMEOUT)) => "the caller's body stopped arriving: the server answered the caller \
                     408 (its --request-timeout); the app got part of it at most"
                    .into(),
                // Told by the stream's stop, or by the connection's close,
                // whichever quinn sees first.
                Ok(Some(close::SHUTTING_DOWN)) => SERVER_SHUT_DOWN.into(),
                Err(quinn::StoppedError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(closed)))
                    if closed.error_code == close::SERVER_SHUTDOWN =>
                {
                    SERVER_SHUT_DOWN.into()
                }
                Ok(_) => "the caller went away".into(),
                // This client's stop (the drain after ctrl-c ran out) or the
                // end of its session: not the caller's doing.
                Err(quinn::StoppedError::ConnectionLost(quinn::ConnectionError::LocallyClosed)) => {
                    format!("not answered before {}", closing.0.get().map_or("the connection closed", String::as_str))
                }
                Err(_) => "the connection to the server ended before the app answered".into(),
            });
            return Some(log);
        }
    };
    log.duration = started.elapsed();
    let resp = match result {
        Ok(resp) => resp,
        Err(err) if crate::caused_by::<CallerBodyBroke>(&err) => {
            // Not the app's failure: the server answers the caller 400, if
            // the caller is still there.
            log.error = Some(format!("{CALLER_BODY_BROKE}: the app got only part of it"));
            let _ = writer.send(&error_frame(StreamErrorCode::LocalProtocol, CALLER_BODY_BROKE)).await;
            writer.finish();
            return Some(log);
        }
        Err(err) => {
            let (kind, msg) = app.failure(&err);
            let code = if kind == "local-unreachable" {
                StreamErrorCode::LocalUnreachable
            } else {
                StreamErrorCode::LocalProtocol
            };
            log.error = Some(msg.clone());
            let _ = writer.send(&error_frame(code, &msg)).await;
            writer.finish();
            return Some(log);
        }
    };
    if resp.status().is_informational() {
        // The edge answers the caller 502 in its place (a 101 it was not
        // asked for); the line said 101, as if the app had answered.
        log.error =
            Some(format!("{} (the caller was answered 502)", crate::headers::unasked_informational(resp.status())));
    } else {
        log.status = Some(resp.status().as_u16());
    }
    let (parts, body) = resp.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    // (hyper keeps the app's reason phrase only when it is not the standard one.)
    let reason = parts
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| Bytes::copy_from_slice(r.as_bytes()))
        .filter(|r| crate::wire::frame::check_reason(r).is_ok())
        .unwrap_or_default();
    let head = Frame::ResponseHead(ResponseHead { status: parts.status, headers: headers.into(), reason });
    send_response(writer, head, body, app.authority(), &mut log).await;
    log.duration = started.elapsed();
    Some(log)
}

/// What the log says of a request whose caller broke its body off.
const CALLER_BODY_BROKE: &str = "the caller's body broke off";

/// The server cancelled a request's body midway: its caller broke it off.
#[derive(Debug, thiserror::Error)]
#[error("the caller's request body broke off")]
struct CallerBodyBroke;

/// The log of a request the server's shutdown cut before the app answered.
const SERVER_SHUT_DOWN: &str = "the server shut down before the app answered (the caller got a 502 saying so)";

fn error_frame(code: StreamErrorCode, message: &str) -> Frame {
    Frame::Error(StreamError { code, message: message.to_owned() })
}

/// Whether a read of the request's stream met the server's cancel: the
/// server resets it so when its caller's body broke off.
fn cancelled_by_server(err: &ReadFrameError) -> bool {
    matches!(err, ReadFrameError::Read(quinn::ReadError::Reset(code)) if *code == close::STREAM_CANCELLED)
}

/// The request for the app, from its parts.
fn app_request(method: http::Method, uri: Uri, headers: http::HeaderMap, body: RequestBody) -> Request<Body> {
    let mut req = Request::new(body.into_body());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    req
}

/// A request's body for the app.
enum RequestBody {
    /// None at all.
    Empty,
    /// All of it, at hand: it can be sent again.
    Whole(Bytes),
    /// Streaming from the tunnel as it arrives.
    Streaming(Body),
}

impl RequestBody {
    /// The same body, to send again, if it is at hand.
    fn again(&self) -> Option<Self> {
        match self {
            Self::Empty => Some(Self::Empty),
            Self::Whole(bytes) => Some(Self::Whole(bytes.clone())),
            Self::Streaming(_) => None,
        }
    }

    fn into_body(self) -> Body {
        match self {
            Self::Empty => Empty::new().map_err(|never| match never {}).boxed_unsync(),
            Self::Whole(bytes) => Full::new(bytes).map_err(|never| match never {}).boxed_unsync(),
            Self::Streaming(body) => body,
        }
    }
}

/// Builds the request body. The common small cases (no body; one body frame
/// then end, as an inline body always is) become complete bodies, so hyper
/// can send them with a known length; anything else streams from the tunnel
/// as it arrives.
///
/// `Err(true)` when the server cancelled the body before it got going (its
/// caller broke it off), `Err(false)` for any other failure.
async fn request_body(mut reader: FrameReader) -> Result<RequestBody, bool> {
    let first = match reader.next().await {
        Ok(Some(Frame::End)) => return Ok(RequestBody::Empty),
        Ok(Some(Frame::Body(data))) => data,
        Err(err) => return Err(cancelled_by_server(&err)),
        Ok(_) => return Err(false),
    };
    let second = match reader.next().await {
        Ok(Some(Frame::End)) => return Ok(RequestBody::Whole(first)),
        Ok(Some(Frame::Body(data))) => data,
        Err(err) => return Err(cancelled_by_server(&err)),
        Ok(_) => return Err(false),
    };
    let rest = stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        match reader.next().await {
            Ok(Some(Frame::Body(data))) => Some((Ok(BodyFrame::data(data)), Some(reader))),
            Ok(Some(Frame::End)) => None,
            Ok(other) => Some((Err(BoxError::from(format!("request body aborted: {other:?}"))), None)),
            Err(err) if cancelled_by_server(&err) => Some((Err(BoxError::from(CallerBodyBroke)), None)),
            Err(err) => Some((Err(BoxError::from(err)), None)),
        }
    });
    let prefix = stream::iter([Ok(BodyFrame::data(first)), Ok(BodyFrame::data(second))]);
    Ok(RequestBody::Streaming(StreamBody::new(prefix.chain(rest)).boxed_unsync()))
}

/// Sends the response; a body that fails becomes an `Error` frame. Puts in
/// `log` what went wrong, if the response did not go out whole: the log line
/// must not show a plain status for an answer the caller got only part of,
/// nor any status for one it never got (the edge answered 502 instead).
async fn send_response(
    mut writer: FrameWriter,
    head: Frame,
    body: hyper::body::Incoming,
    app: &str,
    log: &mut RequestLog,
) {
    match send_message(&mut writer, head, body, SmallBody::Ready).await {
        SendOutcome::Sent => writer.finish(),
        SendOutcome::PeerGone => {
            log.error = Some("the response was cut short: the caller or the server went away".into());
        }
        SendOutcome::BodyFailed { error, head_sent } => {
            // Named as the client's other errors name it: the caller may get
            // this as a 502's text.
            let message = format!("the local app at {app} broke off its response body: {error}");
            let _ = writer.send(&error_frame(StreamErrorCode::LocalProtocol, &message)).await;
            writer.finish();
            log.error = Some(if head_sent {
                format!("the app's response body broke off: {error}")
            } else {
                log.status = None;
                format!("the app's response body failed: {error} (the caller was answered 502)")
            });
        }
    }
}

/// A response body read whole, refused past `max` bytes. Its chunks are
/// copied into one buffer as they come (one chunk is kept as it is): each
/// chunk is a slice of a read buffer it keeps alive, so a stream of small
/// events (SSE) collected as chunks held some 4 KiB for every 14-byte event,
/// and `max` bounded the bytes, not the memory.
async fn whole(body: hyper::body::Incoming, max: usize) -> Result<Bytes, BoxError> {
    let mut body = std::pin::pin!(http_body_util::Limited::new(body, max));
    let mut gathered = crate::quic::framed::Gathered::default();
    while let Some(frame) = body.as_mut().frame().await {
        if let Ok(data) = frame?.into_data() {
            gathered.push(data);
        }
    }
    Ok(gathered.take().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue: the pool had no timer, so its idle timeout was never applied:
    /// the connections of a burst stayed open for good (up to 256), found by
    /// a soak probe. An app that sees each connection close counts them.
    #[tokio::test]
    async fn idle_connections_to_the_app_are_closed_after_the_idle_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = closed.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let closed = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    // Slow enough that requests sent together take a connection each.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                    while !matches!(sock.read(&mut buf).await, Ok(0) | Err(_)) {}
                    closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        let app = LocalApp::with_idle_timeout("127.0.0.1", port, Duration::from_millis(500));
        let sent =
            (0..3).map(|_| app.exchange_buffered(http::Method::GET, "/", http::HeaderMap::new(), Bytes::new(), 64));
        for answer in futures_util::future::join_all(sent).await {
            assert_eq!(answer.unwrap().body, "ok");
        }
        let all_closed = async {
            while closed.load(std::sync::atomic::Ordering::SeqCst) < 3 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), all_closed).await.expect("idle connections closed within 5 s");
    }

    #[test]
    fn local_host_takes_names_and_addresses_only() {
        for (given, taken) in [
            ("localhost", "localhost"),
            ("127.0.0.1", "127.0.0.1"),
            ("::1", "::1"),
            ("[::1]", "::1"),
            ("my-app.internal", "my-app.internal"),
            ("host.docker.internal.", "host.docker.internal."),
            ("project_web_1", "project_web_1"),
        ] {
            assert_eq!(local_host(given).as_deref(), Ok(taken), "{given}");
        }
        for (given, says) in [
            ("", "empty"),
            ("  ", "empty"),
            ("http://localhost", "without a scheme"),
            ("127.0.0.1:3000", "without a port"),
            ("[::1]:3000", "without a port"),
            ("localhost:3000", "without a port"),
            ("local host", "not a host name"),
            ("app/path", "not a host name"),
            ("-app", "not a host name"),
            ("a..b", "not a host name"),
        ] {
            let err = local_host(given).unwrap_err();
            assert!(err.contains(says), "{given:?}: {err}");
        }
    }

    /// A refusal says the app is not running. (The other failures, a name
    /// that does not resolve or a host that does not answer, would need a
    /// look-up or a host that is not on this machine.)
    #[tokio::test]
    async fn a_refusal_says_the_app_is_not_running() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let app = LocalApp::new("127.0.0.1", port);
        let (kind, message) = exchange_error(&app).await;
        assert_eq!(kind, "local-unreachable");
        assert!(message.contains("refused the connection or is not running"), "{message}");
    }

    async fn exchange_error(app: &LocalApp) -> (&'static str, String) {
        let result = app.exchange_buffered(http::Method::GET, "/", http::HeaderMap::new(), Bytes::new(), 1024).await;
        result.err().expect("no app there")
    }
}
