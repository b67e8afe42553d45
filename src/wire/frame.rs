//! Validated domain frames and their conversion from and to the protobuf types.
//!
//! Request and response heads normally bypass the conversions here: they are
//! written and read by `wire::head`, which keeps received headers as checked
//! ranges of the frame. The head conversions below serve frames in another
//! protobuf layout (decoding) and are the reference `head`'s tests compare
//! against (encoding); they build a `HeaderMap` and copy header bytes.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::headers::Headers;
use super::pb;
use super::pb::frame::Kind;

/// One message on a tunnel stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client → server, first on the control stream.
    ClientHello(ClientHello),
    /// Server → client: handshake accepted.
    ServerHello(ServerHello),
    /// Server → client: handshake refused.
    Rejected(Rejected),
    /// Server → client, on the control stream: the server ended the session.
    SessionEnded(SessionEnded),
    /// Client → server, on the control stream: it is stopping; route it no
    /// new requests (sent only to a server whose hello accepts it).
    Leaving,
    /// Heartbeat request, answered by [`Frame::Pong`] with the same sequence number.
    Ping(u64),
    /// Heartbeat answer.
    Pong(u64),
    /// Server → client: start of a forwarded HTTP request.
    RequestHead(RequestHead),
    /// Client → server: start of the local app's response.
    ResponseHead(ResponseHead),
    /// A piece of a request or response body.
    Body(Bytes),
    /// The body is complete.
    End,
    /// The exchange failed; no more frames follow on this stream.
    Error(StreamError),
}

/// Why a well-formed protobuf is not an acceptable frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidFrame {
    /// The `Frame` had no variant set (or one this build does not know).
    #[error("frame has no known kind")]
    Empty,
    /// The HTTP method is not a valid token.
    #[error("invalid HTTP method")]
    Method,
    /// The request target is not an origin-form path and query.
    #[error("invalid request target")]
    Target,
    /// A header name or value breaks the HTTP grammar.
    #[error("invalid header")]
    Header,
    /// More header lines than [`MAX_HEADERS`].
    #[error("{0} headers, more than the {MAX_HEADERS} a head may carry")]
    TooManyHeaders(usize),
    /// The status code is outside 100..=999.
    #[error("invalid status code {0}")]
    Status(u32),
    /// The client address is neither 4 nor 16 bytes.
    #[error("invalid client address")]
    ClientIp,
    /// The request id is longer than [`MAX_REQUEST_ID`] or holds other than
    /// ASCII letters, digits, `_` and `-`.
    #[error("invalid request id")]
    RequestId,
    /// The reason phrase is longer than [`MAX_REASON`] or holds bytes the
    /// HTTP/1 status line does not allow.
    #[error("invalid reason phrase")]
    Reason,
}

/// Longest reason phrase a response head may carry.
pub const MAX_REASON: usize = 256;

/// A reason phrase: tabs, spaces, visible ASCII and obs-text (RFC 9112 §4),
/// at most [`MAX_REASON`] bytes. Empty means the status code's own.
pub fn check_reason(reason: &[u8]) -> Result<(), InvalidFrame> {
    let ok = reason.len() <= MAX_REASON && reason.iter().all(|&b| b == b'\t' || b == b' ' || (b > 0x20 && b != 0x7f));
    if ok { Ok(()) } else { Err(InvalidFrame::Reason) }
}

/// Handshake opening: which tunnel, and the token that proves the right to serve it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The tunnel's id (`tun_…`).
    pub tunnel_id: String,
    /// The tunnel's auth token, as returned at creation or regeneration.
    pub auth_token: String,
    /// [`super::PROTOCOL_VERSION`] of the client.
    pub protocol_version: u32,
    /// Client software version, for the server's logs.
    pub client_version: String,
}

impl std::fmt::Debug for ClientHello {
    // The token is a secret: never let it reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHello")
            .field("tunnel_id", &self.tunnel_id)
            .field("auth_token", &"<redacted>")
            .field("protocol_version", &self.protocol_version)
            .field("client_version", &self.client_version)
            .finish()
    }
}

/// Handshake answer: where the tunnel is now reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// The tunnel's id.
    pub tunnel_id: String,
    /// Display name.
    pub name: String,
    /// The tunnel's subdomain.
    pub subdomain: String,
    /// Path-based URL, `{public-url}/t/{subdomain}`.
    pub tunnel_url: String,
    /// Host-based URL, when the server has a domain.
    pub host_url: Option<String>,
    /// How often the client should ping, in milliseconds.
    pub heartbeat_interval_ms: u32,
    /// Whether the server takes [`Frame::Leaving`]: one from before it
    /// would end the session on it.
    pub accepts_leaving: bool,
}

/// Why the server refused a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectCode {
    /// Unknown or unspecified reason.
    Unspecified,
    /// Wrong or revoked token.
    BadToken,
    /// No such tunnel.
    UnknownTunnel,
    /// The client speaks a protocol version the server does not.
    UnsupportedVersion,
    /// The server failed; retrying later may help.
    Internal,
}

/// A refused handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Machine-readable reason.
    pub code: RejectCode,
    /// Human-readable explanation, shown to the user.
    pub message: String,
}

/// A session the server ended on purpose (disconnect, token regenerated,
/// tunnel deleted, another client took over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnded {
    /// The QUIC application close code that follows (`quic::close`).
    pub close_code: u32,
    /// Human-readable reason.
    pub message: String,
}

/// The start of a forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// HTTP method.
    pub method: Method,
    /// Origin-form path and query (`/a/b?c=d`).
    pub target: Bytes,
    /// Request headers, hop-by-hop ones already removed by the edge.
    pub headers: Headers,
    /// The public caller's address.
    pub client_ip: Option<IpAddr>,
    /// The server's record of the request (`req_…`), empty when it keeps
    /// none: what the client shows beside the request, for the user to look
    /// it up or replay it. Checked by [`check_request_id`], so it is ASCII.
    pub request_id: Bytes,
}

/// The start of the local app's response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: Headers,
    /// The app's reason phrase when it is not the status code's own (`599
    /// Weird`, `200 Everything Fine`); empty for the standard one. Checked
    /// by [`check_reason`].
    pub reason: Bytes,
}

/// Why an exchange was aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamErrorCode {
    /// Unknown reason.
    Unspecified,
    /// The local app refused the connection.
    LocalUnreachable,
    /// The local app did not answer in time.
    LocalTimeout,
    /// The local app's answer was not valid HTTP.
    LocalProtocol,
    /// The sender gave up.
    Cancelled,
    /// The peer broke the protocol.
    Protocol,
}

/// An aborted exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamError {
    /// Machine-readable reason.
    pub code: StreamErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

impl TryFrom<pb::Frame> for Frame {
    type Error = InvalidFrame;

    fn try_from(raw: pb::Frame) -> Result<Self, InvalidFrame> {
        Ok(match raw.kind.ok_or(InvalidFrame::Empty)? {
            Kind::ClientHello(h) => Frame::ClientHello(ClientHello {
                tunnel_id: h.tunnel_id,
                auth_token: h.auth_token,
                protocol_version: h.protocol_version,
                client_version: h.client_version,
            }),
            Kind::ServerHello(h) => Frame::ServerHello(ServerHello {
                tunnel_id: h.tunnel_id,
                name: h.name,
                subdomain: h.subdomain,
                tunnel_url: h.tunnel_url,
                host_url: Some(h.host_url).filter(|u| !u.is_empty()),
                heartbeat_interval_ms: h.heartbeat_interval_ms,
                accepts_leaving: h.accepts_leaving,
            }),
            Kind::Rejected(r) => Frame::Rejected(Rejected { code: reject_code_from(r.code), message: r.message }),
            Kind::SessionEnded(e) => Frame::SessionEnded(SessionEnded { close_code: e.close_code, message: e.message }),
            Kind::Leaving(_) => Frame::Leaving,
            Kind::Ping(h) => Frame::Ping(h.seq),
            Kind::Pong(h) => Frame::Pong(h.seq),
            Kind::RequestHead(h) => Frame::RequestHead(request_head_from(h)?),
            Kind::ResponseHead(h) => Frame::ResponseHead(ResponseHead {
                status: u16::try_from(h.status)
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .ok_or(InvalidFrame::Status(h.status))?,
                headers: headers_from_pb(h.headers)?,
                reason: {
                    check_reason(&h.reason)?;
                    h.reason
                },
            }),
            Kind::Body(b) => Frame::Body(b),
            Kind::End(_) => Frame::End,
            Kind::Error(e) => Frame::Error(StreamError { code: stream_code_from(e.code), message: e.message }),
        })
    }
}

fn request_head_from(h: pb::RequestHead) -> Result<RequestHead, InvalidFrame> {
    let method = Method::from_bytes(&h.method).map_err(|_| InvalidFrame::Method)?;
    check_target(&h.target)?;
    let client_ip = client_ip_from(&h.client_ip)?;
    check_request_id(&h.request_id)?;
    Ok(RequestHead {
        method,
        target: h.target,
        headers: headers_from_pb(h.headers)?,
        client_ip,
        request_id: h.request_id,
    })
}

/// The longest id a request head may carry, or a command take: the server's are 24 bytes.
pub const MAX_REQUEST_ID: usize = 64;

/// Whether `id` is made as hookway's ids are (`tun_…`, `wh_…`, `req_…`): at
/// most [`MAX_REQUEST_ID`] ASCII letters, digits, `_` and `-`. Ids are shown
/// to the user and typed back into commands and URL paths: no control
/// characters for a terminal, nothing a shell or a path would read.
pub fn is_id(id: &[u8]) -> bool {
    id.len() <= MAX_REQUEST_ID && id.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A request head's id: empty (no record), or an id ([`is_id`]).
pub(crate) fn check_request_id(id: &[u8]) -> Result<(), InvalidFrame> {
    if is_id(id) { Ok(()) } else { Err(InvalidFrame::RequestId) }
}

/// A request target must be origin-form: a path, maybe a query, no fragment.
pub(crate) fn check_target(target: &[u8]) -> Result<(), InvalidFrame> {
    let ok = target.first() == Some(&b'/') && target.iter().all(|&b| b > 0x20 && b != 0x7f && b != b'#');
    if ok { Ok(()) } else { Err(InvalidFrame::Target) }
}

/// The client address: absent, or 4 or 16 bytes.
pub(crate) fn client_ip_from(raw: &[u8]) -> Result<Option<IpAddr>, InvalidFrame> {
    match raw.len() {
        0 => Ok(None),
        4 => Ok(Some(IpAddr::from(<[u8; 4]>::try_from(raw).expect("len 4")))),
        16 => Ok(Some(IpAddr::from(<[u8; 16]>::try_from(raw).expect("len 16")))),
        _ => Err(InvalidFrame::ClientIp),
    }
}

/// Most header lines one head may carry. hyper refuses messages with more
/// than 100 by default, so real traffic stays far below; `http`'s `HeaderMap`
/// panics past 32,768, so a peer's frame must never get near that.
pub const MAX_HEADERS: usize = 1024;

/// Refuses a head with more than [`MAX_HEADERS`] header lines.
pub(crate) fn check_header_count(count: usize) -> Result<(), InvalidFrame> {
    if count > MAX_HEADERS { Err(InvalidFrame::TooManyHeaders(count)) } else { Ok(()) }
}

/// Headers from the generated types (frames in a layout `wire::head` does
/// not read itself).
fn headers_from_pb(raw: Vec<pb::Header>) -> Result<Headers, InvalidFrame> {
    check_header_count(raw.len())?;
    let mut map = HeaderMap::with_capacity(raw.len());
    for h in raw {
        let name = HeaderName::from_bytes(&h.name).map_err(|_| InvalidFrame::Header)?;
        let value = HeaderValue::from_maybe_shared(h.value).map_err(|_| InvalidFrame::Header)?;
        map.append(name, value);
    }
    Ok(Headers::from(map))
}

fn headers_to_pb(headers: &Headers) -> Vec<pb::Header> {
    headers
        .iter()
        .map(|(n, v)| pb::Header { name: Bytes::copy_from_slice(n), value: Bytes::copy_from_slice(v) })
        .collect()
}

fn reject_code_from(code: i32) -> RejectCode {
    match pb::RejectCode::try_from(code) {
        Ok(pb::RejectCode::BadToken) => RejectCode::BadToken,
        Ok(pb::RejectCode::UnknownTunnel) => RejectCode::UnknownTunnel,
        Ok(pb::RejectCode::UnsupportedVersion) => RejectCode::UnsupportedVersion,
        Ok(pb::RejectCode::Internal) => RejectCode::Internal,
        _ => RejectCode::Unspecified,
    }
}

fn reject_code_to(code: RejectCode) -> pb::RejectCode {
    match code {
        RejectCode::Unspecified => pb::RejectCode::Unspecified,
        RejectCode::BadToken => pb::RejectCode::BadToken,
        RejectCode::UnknownTunnel => pb::RejectCode::UnknownTunnel,
        RejectCode::UnsupportedVersion => pb::RejectCode::UnsupportedVersion,
        RejectCode::Internal => pb::RejectCode::Internal,
    }
}

fn stream_code_from(code: i32) -> StreamErrorCode {
    match pb::StreamErrorCode::try_from(code) {
        Ok(pb::StreamErrorCode::LocalUnreachable) => StreamErrorCode::LocalUnreachable,
        Ok(pb::StreamErrorCode::LocalTimeout) => StreamErrorCode::LocalTimeout,
        Ok(pb::StreamErrorCode::LocalProtocol) => StreamErrorCode::LocalProtocol,
        Ok(pb::StreamErrorCode::Cancelled) => StreamErrorCode::Cancelled,
        Ok(pb::StreamErrorCode::Protocol) => StreamErrorCode::Protocol,
        _ => StreamErrorCode::Unspecified,
    }
}

fn stream_code_to(code: StreamErrorCode) -> pb::StreamErrorCode {
    match code {
        StreamErrorCode::Unspecified => pb::StreamErrorCode::Unspecified,
        StreamErrorCode::LocalUnreachable => pb::StreamErrorCode::LocalUnreachable,
        StreamErrorCode::LocalTimeout => pb::StreamErrorCode::LocalTimeout,
        StreamErrorCode::LocalProtocol => pb::StreamErrorCode::LocalProtocol,
        StreamErrorCode::Cancelled => pb::StreamErrorCode::Cancelled,
        StreamErrorCode::Protocol => pb::StreamErrorCode::Protocol,
    }
}

fn ip_bytes(ip: Option<IpAddr>) -> Bytes {
    match ip {
        None => Bytes::new(),
        Some(IpAddr::V4(v4)) => Bytes::copy_from_slice(&v4.octets()),
        Some(IpAddr::V6(v6)) => Bytes::copy_from_slice(&v6.octets()),
    }
}

impl From<&Frame> for pb::Frame {
    fn from(frame: &Frame) -> Self {
        let kind = match frame {
            Frame::ClientHello(h) => Kind::ClientHello(pb::ClientHello {
                tunnel_id: h.tunnel_id.clone(),
                auth_token: h.auth_token.clone(),
                protocol_version: h.protocol_version,
                client_version: h.client_version.clone(),
            }),
            Frame::ServerHello(h) => Kind::ServerHello(pb::ServerHello {
                tunnel_id: h.tunnel_id.clone(),
                name: h.name.clone(),
                subdomain: h.subdomain.clone(),
                tunnel_url: h.tunnel_url.clone(),
                host_url: h.host_url.clone().unwrap_or_default(),
                heartbeat_interval_ms: h.heartbeat_interval_ms,
                accepts_leaving: h.accepts_leaving,
            }),
            Frame::Rejected(r) => {
                Kind::Rejected(pb::Rejected { code: reject_code_to(r.code) as i32, message: r.message.clone() })
            }
            Frame::SessionEnded(e) => {
                Kind::SessionEnded(pb::SessionEnded { close_code: e.close_code, message: e.message.clone() })
            }
            Frame::Leaving => Kind::Leaving(pb::Leaving {}),
            Frame::Ping(seq) => Kind::Ping(pb::Heartbeat { seq: *seq }),
            Frame::Pong(seq) => Kind::Pong(pb::Heartbeat { seq: *seq }),
            Frame::RequestHead(h) => Kind::RequestHead(pb::RequestHead {
                method: Bytes::copy_from_slice(h.method.as_str().as_bytes()),
                target: h.target.clone(),
                headers: headers_to_pb(&h.headers),
                client_ip: ip_bytes(h.client_ip),
                request_id: h.request_id.clone(),
            }),
            Frame::ResponseHead(h) => Kind::ResponseHead(pb::ResponseHead {
                status: u32::from(h.status.as_u16()),
                headers: headers_to_pb(&h.headers),
                reason: h.reason.clone(),
            }),
            Frame::Body(b) => Kind::Body(b.clone()),
            Frame::End => Kind::End(pb::End {}),
            Frame::Error(e) => {
                Kind::Error(pb::StreamError { code: stream_code_to(e.code) as i32, message: e.message.clone() })
            }
        };
        pb::Frame { kind: Some(kind) }
    }
}
