//! Seed 001's WebSocket-JSON tunnel protocol, sans IO.
//!
//! Legacy clients connect to `/tunnels/{subdomain}/ws` and exchange text
//! messages:
//!
//! ```text
//! server → client  {"type":"request","id":"req_1","method":"POST","path":"/hook?x=1","headers":{…},"body":"…"}
//! client → server  {"type":"response","id":"req_1","status":200,"headers":{…},"body":"…"}
//! either way       {"type":"ping"} → {"type":"pong"}
//! server → client  {"type":"error","message":"…"}
//! ```
//!
//! Additions, all optional for a legacy client: a body that is not UTF-8
//! travels base64-encoded with `"bodyEncoding":"base64"` (both directions); a
//! header value that is not UTF-8 shows U+FFFD in `headers` as it always did,
//! and its bytes travel in `"headersBase64"` beside it (both directions; see
//! the `headers` module); a response header value may be an array of strings
//! (for several `set-cookie`s, which cannot be folded); a client may answer a
//! request with `{"type":"error","id":…,"message":…}` to fail it with a 502.
//!
//! Parsing is deliberately lenient where legacy clients differ (numbers as
//! header values, a JSON object as a body) and precise in its errors where they
//! cannot be understood, so the server can answer with a useful `error` message.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::Value;

mod headers;

use headers::{JsonHeaders, headers_from_json};

/// Default cap on a body crossing a WebSocket tunnel (bodies are buffered).
pub const DEFAULT_MAX_BODY: usize = 10 << 20;

/// The `bodyEncoding` value for base64 bodies.
pub const BASE64: &str = "base64";

/// How much of a string the peer sent an error message quotes.
pub const QUOTE_MAX: usize = 64;

/// At most `max` bytes of `text` (cut at a character boundary, with the full
/// length said), to quote what a peer sent in an error or a log line: a peer
/// choosing a megabyte `type` must not get a megabyte back, or in the log.
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len()).into()
}

/// Why a message could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct MessageError {
    /// The message's `id`, when it had a readable one: the request it was
    /// meant to answer can then be failed instead of left to time out.
    pub id: Option<String>,
    /// What was wrong, in words fit for the peer.
    pub reason: String,
}

impl MessageError {
    fn new(id: Option<&str>, reason: impl Into<String>) -> Self {
        Self { id: id.map(str::to_owned), reason: reason.into() }
    }
}

/// A message from a tunnel client to the server.
#[derive(Debug)]
pub enum ClientMessage {
    /// The answer to a request.
    Response(Response),
    /// The client failed a request (an addition to seed 001).
    Error {
        /// The request, if the client named one.
        id: Option<String>,
        /// Its explanation.
        message: String,
    },
    /// `{"type":"ping"}`: answer with [`pong`].
    Ping,
    /// `{"type":"pong"}`.
    Pong,
    /// `{"type":"leaving"}` (an addition to seed 001, sent only to a server
    /// that announced it understands it): the client is stopping, so route
    /// nothing new to it; it answers what it has, refuses what still comes
    /// with a `503` whose `x-hookway-error` is `tunnel-offline`, and then
    /// closes.
    Leaving,
}

/// The upgrade response's header with which a server says it understands
/// `{"type":"leaving"}`.
pub const ACCEPTS_LEAVING: &str = "x-hookway-accepts-leaving";

/// Upgrade response header: the server's request timeout in milliseconds,
/// after which its edge has answered a request 504 and no longer waits for
/// the client's answer.
pub const REQUEST_TIMEOUT: &str = "x-hookway-request-timeout-ms";

/// A response as sent by a tunnel client.
#[derive(Debug)]
pub struct Response {
    /// The request answered.
    pub id: String,
    /// HTTP status.
    pub status: StatusCode,
    /// Headers, multi-valued where the client sent arrays.
    pub headers: HeaderMap,
    /// Decoded body.
    pub body: Bytes,
}

/// A message from the server to a tunnel client.
#[derive(Debug)]
pub enum ServerMessage {
    /// A request to forward to the local app.
    Request(Request),
    /// `{"type":"ping"}`.
    Ping,
    /// `{"type":"pong"}`.
    Pong,
    /// The server could not understand something the client sent.
    Error(String),
}

/// A request as sent by the server.
#[derive(Debug)]
pub struct Request {
    /// Correlates the response.
    pub id: String,
    /// HTTP method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Headers (folded values stay folded).
    pub headers: HeaderMap,
    /// Decoded body.
    pub body: Bytes,
}

/// The fields any message may carry; each is checked by the parser that needs
/// it, so an error can name the field (and the id, when it is readable).
#[derive(serde::Deserialize)]
struct Raw {
    #[serde(rename = "type")]
    kind: Option<Value>,
    id: Option<Value>,
    method: Option<Value>,
    path: Option<Value>,
    status: Option<Value>,
    headers: Option<Value>,
    #[serde(rename = "headersBase64")]
    headers_base64: Option<Value>,
    body: Option<Value>,
    #[serde(rename = "bodyEncoding")]
    body_encoding: Option<Value>,
    message: Option<Value>,
}

fn parse_raw(text: &[u8]) -> Result<Raw, MessageError> {
    let raw: Raw = serde_json::from_slice(text).map_err(|e| {
        if e.is_data() {
            MessageError::new(None, "a message must be a JSON object with a \"type\" field")
        } else {
            MessageError::new(None, format!("malformed JSON: {e}"))
        }
    })?;
    Ok(raw)
}

fn kind(raw: &mut Raw) -> Result<String, MessageError> {
    match raw.kind.take() {
        Some(Value::String(k)) => Ok(k),
        Some(_) => Err(MessageError::new(None, "\"type\" must be a string")),
        None => Err(MessageError::new(None, "missing \"type\" field")),
    }
}

fn id(raw: &mut Raw) -> Result<Option<String>, MessageError> {
    match raw.id.take() {
        Some(Value::String(id)) => Ok(Some(id)),
        None | Some(Value::Null) => Ok(None),
        Some(_) => Err(MessageError::new(None, "\"id\" must be a string")),
    }
}

/// Parses a message from a client.
pub fn parse_client_message(text: &[u8]) -> Result<ClientMessage, MessageError> {
    let mut raw = parse_raw(text)?;
    let kind = kind(&mut raw)?;
    let id = id(&mut raw)?;
    let id = id.as_deref();
    match kind.as_str() {
        "response" => {
            let Some(id) = id else { return Err(MessageError::new(None, "a response needs an \"id\"")) };
            let status = match &raw.status {
                Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
                None => return Err(MessageError::new(Some(id), "a response needs a \"status\"")),
                Some(_) => None,
            }
            .and_then(|s| StatusCode::from_u16(s).ok())
            .filter(|s| !s.is_informational())
            .ok_or_else(|| MessageError::new(Some(id), "\"status\" must be a number from 200 to 999"))?;
            let headers = headers_from_json(raw.headers.as_ref(), raw.headers_base64.as_ref())
                .map_err(|e| MessageError::new(Some(id), e))?;
            let body =
                body_from_json(raw.body, raw.body_encoding.as_ref()).map_err(|e| MessageError::new(Some(id), e))?;
            Ok(ClientMessage::Response(Response { id: id.to_owned(), status, headers, body }))
        }
        "error" => Ok(ClientMessage::Error {
            id: id.map(str::to_owned),
            message: match raw.message {
                Some(Value::String(m)) => m,
                Some(other) => other.to_string(),
                None => "no message".to_owned(),
            },
        }),
        "ping" => Ok(ClientMessage::Ping),
        "pong" => Ok(ClientMessage::Pong),
        "leaving" => Ok(ClientMessage::Leaving),
        other => Err(MessageError::new(
            id,
            format!(
                "unknown message type {:?} (expected \"response\", \"ping\", \"pong\", \"error\" or \"leaving\")",
                clip(other, QUOTE_MAX)
            ),
        )),
    }
}

/// Parses a message from the server.
pub fn parse_server_message(text: &[u8]) -> Result<ServerMessage, MessageError> {
    let mut raw = parse_raw(text)?;
    let kind = kind(&mut raw)?;
    let id = id(&mut raw)?;
    let id = id.as_deref();
    match kind.as_str() {
        "request" => {
            let Some(id) = id else { return Err(MessageError::new(None, "a request needs an \"id\"")) };
            let field = |v: &Option<Value>, name: &str| match v {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(MessageError::new(Some(id), format!("a request needs a string \"{name}\""))),
            };
            let method = Method::from_bytes(field(&raw.method, "method")?.as_bytes())
                .map_err(|_| MessageError::new(Some(id), "invalid \"method\""))?;
            let path = field(&raw.path, "path")?;
            if !path.starts_with('/') {
                return Err(MessageError::new(Some(id), "\"path\" must start with '/'"));
            }
            let headers = headers_from_json(raw.headers.as_ref(), raw.headers_base64.as_ref())
                .map_err(|e| MessageError::new(Some(id), e))?;
            let body =
                body_from_json(raw.body, raw.body_encoding.as_ref()).map_err(|e| MessageError::new(Some(id), e))?;
            Ok(ServerMessage::Request(Request { id: id.to_owned(), method, path, headers, body }))
        }
        "ping" => Ok(ServerMessage::Ping),
        "pong" => Ok(ServerMessage::Pong),
        "error" => Ok(ServerMessage::Error(match raw.message {
            Some(Value::String(m)) => m,
            other => other.map(|v| v.to_string()).unwrap_or_default(),
        })),
        other => Err(MessageError::new(id, format!("unknown message type {:?}", clip(other, QUOTE_MAX)))),
    }
}

/// A body from its JSON value: a string (base64 when `bodyEncoding` says so),
/// absent or null (empty), or any other JSON value (sent as its JSON text).
fn body_from_json(body: Option<Value>, encoding: Option<&Value>) -> Result<Bytes, String> {
    let base64 = match encoding {
        None | Some(Value::Null) => false,
        Some(Value::String(e)) if e == BASE64 => true,
        Some(Value::String(e)) if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => false,
        Some(_) => return Err("\"bodyEncoding\" must be \"base64\" (or absent for UTF-8 text)".into()),
    };
    match body {
        None | Some(Value::Null) => Ok(Bytes::new()),
        Some(Value::String(s)) if base64 => {
            B64.decode(s.as_bytes()).map(Bytes::from).map_err(|e| format!("\"body\" is not valid base64: {e}"))
        }
        Some(Value::String(s)) => Ok(Bytes::from(s)),
        Some(_) if base64 => Err("a base64 \"body\" must be a string".into()),
        Some(other) => Ok(Bytes::from(other.to_string())),
    }
}

/// The body as a JSON string: itself when UTF-8, else base64 (and the encoding
/// to announce).
fn json_body(body: &[u8]) -> (std::borrow::Cow<'_, str>, Option<&'static str>) {
    match std::str::from_utf8(body) {
        Ok(text) => (text.into(), None),
        Err(_) => (B64.encode(body).into(), Some(BASE64)),
    }
}

/// How much longer than base64 a response body's escaped text may be and
/// still go as text: the part of [`HEAD_ALLOWANCE`] the largest head leaves
/// free, with room to spare. Ordinary text (JSON with its quotes, a page)
/// stays readable; a large body of control characters goes as base64.
const ESCAPE_SLACK: usize = 64 << 10;

/// How long `text` is inside a JSON string as serde_json writes it: `"`, `\`
/// and the short escapes take two bytes, other control characters six.
fn escaped_len(text: &[u8]) -> usize {
    text.iter()
        .map(|&b| match b {
            b'"' | b'\\' | b'\x08' | b'\t' | b'\n' | b'\x0c' | b'\r' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// What a request or response message starts with, before its headers.
enum Head<'a> {
    Request { id: &'a str, method: &'a str, path: &'a str },
    Response { id: &'a str, status: u16 },
}

/// A request or response message. Serialized by hand rather than derived:
/// `headersBase64` follows `headers` only when writing `headers` met a value
/// that is not UTF-8, which is known once `headers` is written.
struct MessageOut<'a> {
    head: Head<'a>,
    headers: JsonHeaders<'a>,
    body: &'a str,
    body_encoding: Option<&'static str>,
}

impl Serialize for MessageOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self.head {
            Head::Request { id, method, path } => {
                m.serialize_entry("type", "request")?;
                m.serialize_entry("id", id)?;
                m.serialize_entry("method", method)?;
                m.serialize_entry("path", path)?;
            }
            Head::Response { id, status } => {
                m.serialize_entry("type", "response")?;
                m.serialize_entry("id", id)?;
                m.serialize_entry("status", &status)?;
            }
        }
        m.serialize_entry("headers", &self.headers)?;
        if let Some(exact) = self.headers.exact() {
            m.serialize_entry(headers::EXACT, &exact)?;
        }
        m.serialize_entry("body", self.body)?;
        if let Some(encoding) = self.body_encoding {
            m.serialize_entry("bodyEncoding", encoding)?;
        }
        m.end()
    }
}

fn to_json(value: &impl Serialize, capacity: usize) -> String {
    let mut out = Vec::with_capacity(capacity);
    // Serializing these types to memory cannot fail: every key is a string.
    serde_json::to_writer(&mut out, value).expect("JSON serialization to memory");
    // serde_json only writes valid UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// `{"type":"request",…}` for the server to send.
pub fn request(id: &str, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> String {
    RequestMessage::new(id, method, path, headers, body).build()
}

/// A request message for the server to send, whose body's form (text when
/// UTF-8, else base64) is decided once, for both its length bound and the
/// message: the gateway takes the bound's room from its outbox's budget
/// before it builds the message (see [`RequestMessage::len_bound`]).
pub struct RequestMessage<'a> {
    id: &'a str,
    method: &'a Method,
    path: &'a str,
    headers: &'a HeaderMap,
    body: &'a [u8],
    /// The body, when it goes as text.
    text: Option<&'a str>,
}

impl<'a> RequestMessage<'a> {
    /// The message of this request.
    pub fn new(id: &'a str, method: &'a Method, path: &'a str, headers: &'a HeaderMap, body: &'a [u8]) -> Self {
        Self { id, method, path, headers, body, text: std::str::from_utf8(body).ok() }
    }

    /// At least the message's length, known before it is built: a body of
    /// control characters, valid UTF-8 that goes as text, grows sixfold as
    /// `\u0001` escapes, and messages built before their room was known held
    /// several times what the budget allows. Counts six bytes for each byte
    /// of the path and of the headers (the most any byte takes), and the
    /// body's exact length in the message.
    pub fn len_bound(&self) -> usize {
        let head: usize = self.headers.iter().map(|(k, v)| 8 + 6 * (k.as_str().len() + v.len())).sum();
        let body = match self.text {
            Some(text) => escaped_len(text.as_bytes()),
            None => self.body.len().div_ceil(3) * 4,
        };
        // The fixed keys and the id, with room to spare.
        256 + self.method.as_str().len() + 6 * self.path.len() + head + body
    }

    /// The message.
    pub fn build(&self) -> String {
        let (text, body_encoding) = match self.text {
            Some(text) => (text.into(), None),
            None => (std::borrow::Cow::Owned(B64.encode(self.body)), Some(BASE64)),
        };
        let (id, path, headers) = (self.id, self.path, self.headers);
        let msg = MessageOut {
            head: Head::Request { id, method: self.method.as_str(), path },
            headers: JsonHeaders::new(headers),
            body: &text,
            body_encoding,
        };
        to_json(&msg, 128 + path.len() + headers.len() * 48 + text.len() * 11 / 10)
    }
}

/// `{"type":"response",…}` for a client to send. A UTF-8 body goes as base64
/// when its escaped text would be longer by more than [`ESCAPE_SLACK`]
/// (control characters take six bytes each as `\u0000`): the server caps a
/// client's messages at base64's growth of the largest body plus room for the
/// head, and a message over the cap closes the socket, failing every request
/// on it. (Requests keep UTF-8 as text, which every client reads; the
/// client's own cap has room for the escapes.)
pub fn response(id: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> String {
    let (text, body_encoding) = match json_body(body) {
        (text, None) if escaped_len(text.as_bytes()) > body.len().div_ceil(3) * 4 + ESCAPE_SLACK => {
            (B64.encode(body).into(), Some(BASE64))
        }
        plain => plain,
    };
    let msg = MessageOut {
        head: Head::Response { id, status: status.as_u16() },
        headers: JsonHeaders::new(headers),
        body: &text,
        body_encoding,
    };
    to_json(&msg, 96 + headers.len() * 48 + text.len() * 11 / 10)
}

/// `{"type":"error","message":…}`, with the request's id when there is one.
pub fn error(id: Option<&str>, message: &str) -> String {
    let mut v = serde_json::json!({ "type": "error", "message": message });
    if let Some(id) = id {
        v["id"] = Value::String(id.to_owned());
    }
    v.to_string()
}

/// `{"type":"ping"}`.
pub fn ping() -> &'static str {
    r#"{"type":"ping"}"#
}

/// `{"type":"pong"}`.
pub fn pong() -> &'static str {
    r#"{"type":"pong"}"#
}

/// `{"type":"leaving"}`.
pub fn leaving() -> &'static str {
    r#"{"type":"leaving"}"#
}

/// The largest encoded message a body of `max_body` bytes can produce: base64
/// growth (4/3) plus room for the head.
pub fn max_message_for(max_body: usize) -> usize {
    max_body.div_ceil(3) * 4 + HEAD_ALLOWANCE
}

/// Room for the id, status, headers and JSON escaping overhead of the head.
/// hyper reads a head of at most 408 KiB (its HTTP/1 buffer cap, for the
/// edge's requests and the local app's responses; HTTP/2 heads are capped at
/// 16 KiB), and a value byte costs at most 3 + 4/3 bytes in a message (U+FFFD
/// in `headers`, base64 in `headersBase64`): 1.73 MiB at worst.
const HEAD_ALLOWANCE: usize = 2 << 20;

/// Seed 001's `wsUrl`: `{ws_base}/tunnels/{subdomain}/ws?tunnelId=…&token=…`,
/// `ws_base` being `ws(s)://host[:port][/prefix]`. Built here for the server's
/// API answers and for clients that only know the server's URL.
pub fn ws_url(ws_base: &str, subdomain: &str, tunnel_id: &str, token: &str) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("tunnelId", tunnel_id)
        .append_pair("token", token)
        .finish();
    format!("{}/tunnels/{subdomain}/ws?{query}", ws_base.trim_end_matches('/'))
}

/// Whether a request message's id is its capture record's (`req_` and 20
/// lowercase hex digits: 12 of the arrival's milliseconds, 8 of a counter),
/// which `hookway tunnels request` and `replay` take. The server sends it
/// when it records the request; else a [`request_id`], which a record id is
/// never taken for (those are numbered from 1 per socket, far short of 20
/// digits).
pub fn is_record_id(id: &str) -> bool {
    id.strip_prefix("req_")
        .is_some_and(|hex| hex.len() == 20 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// The request id the server issues for its `n`th request on a socket that
/// records nothing (see [`is_record_id`]).
pub fn request_id(n: u64) -> String {
    let mut s = String::with_capacity(24);
    let _ = write!(s, "req_{n}");
    s
}

/// The counter behind an id made by [`request_id`], and only such an id:
/// `req_0` was never issued (the first is `req_1`), and other spellings of a
/// number (`req_01`, `req_+1`) are not the id it was issued as.
pub fn request_number(id: &str) -> Option<u64> {
    let digits = id.strip_prefix("req_")?;
    if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use http::{HeaderName, HeaderValue};

    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        m
    }

    /// Issue: a response body of control characters (valid UTF-8) grew six
    /// times as JSON text, past the server's cap on a client's messages,
    /// which then closed the socket and failed every request on it.
    #[test]
    fn a_response_body_that_escapes_badly_goes_as_base64_within_the_cap() {
        let zeros = vec![0u8; 1 << 20];
        let msg = response("req_1", StatusCode::OK, &HeaderMap::new(), &zeros);
        assert!(msg.len() <= max_message_for(zeros.len()), "{} bytes", msg.len());
        assert!(msg.contains(r#""bodyEncoding":"base64""#));
        match parse_client_message(msg.as_bytes()).unwrap() {
            ClientMessage::Response(r) => assert_eq!(r.body, zeros),
            other => panic!("{other:?}"),
        }
        // Text that escapes a little stays text: small JSON, lines of a log.
        for text in [
            &br#"{"a":"b"}"#[..],
            &b"line
"
            .repeat(20_000),
        ] {
            let msg = response("req_1", StatusCode::OK, &HeaderMap::new(), text);
            assert!(!msg.contains("bodyEncoding"), "{}", &msg[..80]);
        }
    }

    #[test]
    fn request_matches_seed_001_shape() {
        let headers = h(&[("content-type", "application/json")]);
        let text = request("req_123", &Method::POST, "/webhook", &headers, br#"{"event":"push"}"#);
        assert_eq!(
            text,
            r#"{"type":"request","id":"req_123","method":"POST","path":"/webhook","headers":{"content-type":"application/json"},"body":"{\"event\":\"push\"}"}"#
        );
    }

    #[test]
    fn seed_001_response_parses() {
        let msg = br#"{"type":"response","id":"req_123","status":200,"headers":{"content-type":"application/json"},"body":"{\"received\":true}"}"#;
        let ClientMessage::Response(r) = parse_client_message(msg).unwrap() else { panic!("not a response") };
        assert_eq!(r.id, "req_123");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(&r.body[..], br#"{"received":true}"#);
    }

    #[test]
    fn repeated_headers_fold_but_set_cookie_stays_apart() {
        let headers = h(&[("accept", "a/b"), ("accept", "c/d"), ("cookie", "a=1"), ("cookie", "b=2"), ("x-one", "1")]);
        let v: Value = serde_json::from_str(&request("req_1", &Method::GET, "/", &headers, b"")).unwrap();
        assert_eq!(v["headers"], serde_json::json!({ "accept": "a/b, c/d", "cookie": "a=1; b=2", "x-one": "1" }));

        let cookies = h(&[("set-cookie", "a=1; Path=/"), ("set-cookie", "b=2")]);
        let text = response("req_1", StatusCode::OK, &cookies, b"");
        let ClientMessage::Response(r) = parse_client_message(text.as_bytes()).unwrap() else { panic!() };
        let got: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
        assert_eq!(got, ["a=1; Path=/", "b=2"]);
    }

    #[test]
    fn binary_bodies_travel_as_base64_both_ways() {
        let body: Vec<u8> = (0..=255u8).collect();
        let text = request("req_9", &Method::PUT, "/bin?x=1", &HeaderMap::new(), &body);
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["bodyEncoding"], "base64");
        let ServerMessage::Request(r) = parse_server_message(text.as_bytes()).unwrap() else { panic!() };
        assert_eq!((&r.body[..], r.path.as_str(), &r.method), (&body[..], "/bin?x=1", &Method::PUT));

        let text = response("req_9", StatusCode::CREATED, &HeaderMap::new(), &body);
        let ClientMessage::Response(r) = parse_client_message(text.as_bytes()).unwrap() else { panic!() };
        assert_eq!(&r.body[..], &body[..]);
        // UTF-8 bodies stay plain strings.
        assert!(!response("req_9", StatusCode::OK, &HeaderMap::new(), "héllo".as_bytes()).contains("bodyEncoding"));
    }

    #[test]
    fn the_request_length_bound_holds() {
        let mut headers = HeaderMap::new();
        headers.insert("x-quote", HeaderValue::from_static("a\"b\\c"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.insert("x-latin", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let bodies: [&[u8]; 5] = [b"", b"{\"a\":1}", &[1u8; 4096], &[0xff; 999], "\"\\\n\u{1}é".as_bytes()];
        for body in bodies {
            let message = RequestMessage::new("req_123456", &Method::POST, "/a/b?c=\"d\"", &headers, body);
            let (msg, bound) = (message.build(), message.len_bound());
            assert!(msg.len() <= bound, "{} > {bound}: {}", msg.len(), &msg[..msg.len().min(200)]);
        }
    }

    #[test]
    fn lenient_where_legacy_clients_differ() {
        let msg = br#"{"type":"response","id":"req_1","status":201,"headers":{"Content-Length":2,"X-A":["1","2"],"x-n":null},"body":{"ok":true}}"#;
        let ClientMessage::Response(r) = parse_client_message(msg).unwrap() else { panic!() };
        assert_eq!(r.headers["content-length"], "2");
        assert_eq!(r.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&r.body[..], br#"{"ok":true}"#);
        let ClientMessage::Response(r) =
            parse_client_message(br#"{"type":"response","id":"req_2","status":204}"#).unwrap()
        else {
            panic!()
        };
        assert!(r.body.is_empty() && r.headers.is_empty());
    }

    #[test]
    fn errors_name_the_problem_and_keep_the_id() {
        let cases: &[(&[u8], Option<&str>, &str)] = &[
            (b"not json", None, "malformed JSON"),
            (b"[1,2]", None, "JSON object"),
            (br#"{"id":"req_1"}"#, None, "missing \"type\""),
            (br#"{"type":7}"#, None, "must be a string"),
            (br#"{"type":"hello","id":"req_4"}"#, Some("req_4"), "unknown message type"),
            (br#"{"type":"response","status":200}"#, None, "needs an \"id\""),
            (br#"{"type":"response","id":"req_2"}"#, Some("req_2"), "needs a \"status\""),
            (br#"{"type":"response","id":"req_2","status":"ok"}"#, Some("req_2"), "\"status\" must be"),
            (br#"{"type":"response","id":"req_2","status":100}"#, Some("req_2"), "\"status\" must be"),
            (br#"{"type":"response","id":"req_2","status":70000}"#, Some("req_2"), "\"status\" must be"),
            (br#"{"type":"response","id":"req_3","status":200,"headers":[]}"#, Some("req_3"), "must be an object"),
            (br#"{"type":"response","id":"req_3","status":200,"headers":{"a b":"1"}}"#, Some("req_3"), "header name"),
            (br#"{"type":"response","id":"req_3","status":200,"headers":{"a":"\n"}}"#, Some("req_3"), "value"),
            (br#"{"type":"response","id":"req_3","status":200,"headers":{"a":{}}}"#, Some("req_3"), "must be a string"),
            (
                br#"{"type":"response","id":"req_5","status":200,"body":"!!","bodyEncoding":"base64"}"#,
                Some("req_5"),
                "not valid base64",
            ),
            (br#"{"type":"response","id":"req_5","status":200,"bodyEncoding":"gzip"}"#, Some("req_5"), "bodyEncoding"),
        ];
        for (input, id, reason) in cases {
            let err = parse_client_message(input).expect_err(std::str::from_utf8(input).unwrap());
            assert_eq!(err.id.as_deref(), *id, "{err:?}");
            assert!(err.reason.contains(reason), "{:?} lacks {reason:?}", err.reason);
        }
    }

    /// Past `wire::MAX_HEADERS` header lines, as distinct names or as one
    /// name's array, a message is refused (`HeaderMap` itself would panic
    /// past 32,768); at the limit it is accepted.
    #[test]
    fn too_many_headers_are_refused() {
        let max = crate::wire::MAX_HEADERS;
        let names = |n: usize| (0..n).map(|i| format!("\"h{i}\":\"v\"")).collect::<Vec<_>>().join(",");
        let values = |n: usize| format!("\"h\":[{}]", vec!["\"v\""; n].join(","));
        for (headers, ok) in [(names(max), true), (names(max + 1), false), (values(max), true), (values(40_000), false)]
        {
            let text = format!(r#"{{"type":"response","id":"req_1","status":200,"headers":{{{headers}}}}}"#);
            match parse_client_message(text.as_bytes()) {
                Ok(ClientMessage::Response(r)) => assert!(ok && r.headers.len() == max),
                Ok(other) => panic!("{other:?}"),
                Err(err) => assert!(!ok && err.reason.contains("header lines"), "{err:?}"),
            }
        }
    }

    /// What a peer sent is quoted short in errors, whatever its length.
    #[test]
    fn errors_quote_at_most_a_little_of_what_was_sent() {
        let long = "é".repeat(100_000);
        for msg in [
            format!(r#"{{"type":"{long}"}}"#),
            format!(r#"{{"type":"response","id":"req_1","status":200,"headers":{{"{long} x":"1"}}}}"#),
            format!(r#"{{"type":"response","id":"req_1","status":200,"headers":{{"x{long}":"\n"}}}}"#),
            format!(r#"{{"type":"response","id":"req_1","status":200,"headers":{{"x{long}":{{}}}}}}"#),
        ] {
            let err = parse_client_message(msg.as_bytes()).unwrap_err();
            assert!(err.reason.len() < 200, "{}", err.reason);
            assert!(err.reason.contains("bytes)"), "says it was cut: {}", err.reason);
        }
        let err = parse_server_message(format!(r#"{{"type":"{long}"}}"#).as_bytes()).unwrap_err();
        assert!(err.reason.len() < 200, "{}", err.reason);
        assert_eq!(clip("short", 64), "short");
        assert_eq!(clip("aé", 2), "a… (3 bytes)");
    }

    #[test]
    fn pings_errors_and_ids() {
        assert!(matches!(parse_client_message(ping().as_bytes()), Ok(ClientMessage::Ping)));
        assert!(matches!(parse_client_message(pong().as_bytes()), Ok(ClientMessage::Pong)));
        assert!(matches!(parse_client_message(leaving().as_bytes()), Ok(ClientMessage::Leaving)));
        assert!(matches!(parse_server_message(ping().as_bytes()), Ok(ServerMessage::Ping)));
        let e = error(Some("req_1"), "bad \"thing\"");
        assert!(matches!(parse_server_message(e.as_bytes()), Ok(ServerMessage::Error(m)) if m == "bad \"thing\""));
        let ClientMessage::Error { id, message } = parse_client_message(e.as_bytes()).unwrap() else { panic!() };
        assert_eq!((id.as_deref(), message.as_str()), (Some("req_1"), "bad \"thing\""));
        assert_eq!(request_number(&request_id(42)), Some(42));
        assert_eq!(request_number("req_x"), None);
        assert_eq!(request_number("42"), None);
        for other in ["req_0", "req_01", "req_+1", "req_", "req_ 1", "req_18446744073709551616"] {
            assert_eq!(request_number(other), None, "{other}");
        }
    }
}
