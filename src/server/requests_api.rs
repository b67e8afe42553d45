//! Request inspection API: `/api/tunnels/{id}/requests…` — captured records
//! (list, detail, delete), a live server-sent-events stream, and replay.
//!
//! Same auth, errors and wrappers as the tunnels API: `{"requests": […]}`,
//! `{"request": …}`, `{"success": true}`, `{"error": "…"}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::stream;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, oneshot};

use super::State;
use super::api::{ApiError, ApiResult, ok, read_json_up_to};
use super::capture::Replay;
use super::edge;
use super::registry::Tunnel;
use super::routes::{ANY, Routes, unrouted};
use crate::store::{CapturedPart, RequestRecord};

/// Records per page when `limit` is not given.
pub const DEFAULT_PAGE: usize = 50;
/// Largest `limit`.
pub const MAX_PAGE: usize = 1000;
/// Interval of the live stream's keep-alive comments.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a replay waits for its record to be stored.
const REPLAY_RECORD_WAIT: Duration = Duration::from_secs(10);

/// Routes `/api/tunnels/{id}/requests/{rest…}` for an authorized `tunnel`.
pub(super) async fn route(
    state: &Arc<State>,
    tunnel: Arc<Tunnel>,
    rest: &[&str],
    method: Method,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> ApiResult {
    match (rest, method) {
        ([], Method::GET) => {
            state.capture.settle(SETTLE_WAIT).await;
            list(state, &tunnel, req.uri().query()).await
        }
        ([], Method::DELETE) => {
            let tid = tunnel.id.clone();
            let deleted = state.store.run(move |s| s.delete_requests(&tid)).await?;
            Ok(ok(json!({ "success": true, "deleted": deleted })))
        }
        (["stream"], Method::GET) => {
            let since = req.headers().get("last-event-id").and_then(|v| v.to_str().ok()).filter(|id| is_request_id(id));
            live_stream(state, &tunnel, since.map(str::to_owned)).await
        }
        ([rid], Method::GET) => {
            state.capture.settle(SETTLE_WAIT).await;
            let record = find(state, &tunnel, rid).await?;
            Ok(ok(json!({ "request": detail_json(&record) })))
        }
        ([rid, "replay"], Method::POST) => {
            // (A replay of a request that just ended finds its record, as a lookup does.)
            state.capture.settle(SETTLE_WAIT).await;
            replay(state, &tunnel, rid, req, peer).await
        }
        _ => Err(unrouted(ROUTES, rest, || "no such requests route".into())),
    }
}

/// Longest a listing, a lookup or a replay waits for the records of requests
/// that just ended.
const SETTLE_WAIT: Duration = Duration::from_secs(2);

/// The paths [`route`] serves (after `/api/tunnels/{id}/requests`).
const ROUTES: Routes =
    &[(&[], "GET, HEAD, DELETE"), (&["stream"], "GET, HEAD"), (&[ANY], "GET, HEAD"), (&[ANY, "replay"], "POST")];

async fn find(state: &State, tunnel: &Tunnel, rid: &str) -> Result<RequestRecord, ApiError> {
    let (tid, rid) = (tunnel.id.clone(), rid.to_owned());
    state
        .store
        .run(move |s| s.get_request(&tid, &rid))
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "request not found"))
}

async fn list(state: &State, tunnel: &Tunnel, query: Option<&str>) -> ApiResult {
    let (mut limit, mut before) = (DEFAULT_PAGE, None);
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| ApiError::bad(format!("'limit' must be a number from 1 to {MAX_PAGE}")))?;
            }
            "before" => {
                // The ids this server makes (`req_` and 20 hex digits, in time
                // order): any other string would be compared as text and
                // silently page from somewhere else.
                if !is_request_id(&v) {
                    return Err(ApiError::bad("'before' must be a request id (req_ and 20 hex digits)"));
                }
                before = Some(v.into_owned());
            }
            _ => {}
        }
    }
    let tid = tunnel.id.clone();
    let records = state.store.run(move |s| s.list_requests(&tid, before.as_deref(), limit)).await?;
    let requests: Vec<Value> = records.iter().map(summary_json).collect();
    Ok(ok(json!({ "requests": requests })))
}

/// Whether `id` is one this server makes: `req_` and 20 lowercase hex
/// digits, in time order, so that ids compare as text in that order.
fn is_request_id(id: &str) -> bool {
    let hex = id.strip_prefix("req_").unwrap_or_default();
    hex.len() == 20 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A record without headers and bodies: list items and live-stream events.
pub fn summary_json(r: &RequestRecord) -> Value {
    let mut v = json!({
        "id": r.id,
        "time": r.time,
        "method": r.method,
        "path": r.path,
        "status": r.status,
        "durationMs": (r.duration_us as f64) / 1000.0,
        "outcome": r.outcome,
        "clientIp": r.client_ip,
        "requestSize": r.request.body.size,
        "responseSize": r.response.as_ref().map_or(0, |p| p.body.size),
    });
    if let Some(of) = &r.replay_of {
        v["replayOf"] = Value::String(of.clone());
    }
    v
}

/// The live stream's event for a new record, rendered once for every subscriber.
pub fn sse_event(r: &RequestRecord) -> String {
    format!("event: request\nid: {}\ndata: {}\n\n", r.id, summary_json(r))
}

/// A record in full; bodies as text when UTF-8, else base64, and the exact
/// bytes of header values that are not UTF-8 beside their text (see [`headers_base64`]).
pub fn detail_json(r: &RequestRecord) -> Value {
    let mut v = summary_json(r);
    v["tunnelId"] = Value::String(r.tunnel_id.clone());
    v["request"] = part_json(&r.request);
    v["response"] = r.response.as_ref().map_or(Value::Null, part_json);
    v
}

fn part_json(p: &CapturedPart) -> Value {
    let mut headers = Map::new();
    for (name, value) in &p.headers {
        // Text as it always was: a value that is not UTF-8 shows U+FFFD in
        // place of each bad sequence (its bytes are in `headersBase64`).
        add_header(&mut headers, name, Value::String(String::from_utf8_lossy(value).into_owned()));
    }
    let (body, encoding) = match &p.body.data {
        None => (Value::Null, "utf8"),
        Some(data) => match std::str::from_utf8(data) {
            Ok(text) => (Value::String(text.to_owned()), "utf8"),
            // A text body cut at the capture limit may end inside a character
            // (`error_len` is then `None`): it is text cut short, shown as the
            // text up to that character, not as binary. (Not a body that broke
            // off with all of it kept: its last bytes are all there is of it,
            // and are shown, as base64.)
            Err(e) if p.body.truncated && (data.len() as u64) < p.body.size && e.error_len().is_none() => {
                let text = std::str::from_utf8(&data[..e.valid_up_to()]).unwrap_or_default();
                (Value::String(text.to_owned()), "utf8")
            }
            Err(_) => (Value::String(BASE64.encode(data)), "base64"),
        },
    };
    let mut part = json!({
        "headers": headers,
        "body": body,
        "bodyEncoding": encoding,
        "bodySize": p.body.size,
        "truncated": p.body.truncated,
        "overBudget": p.body.over_budget,
    });
    if let Some(exact) = headers_base64(&p.headers) {
        part["headersBase64"] = exact;
    }
    part
}

/// Adds one value of a header to the API's `headers` object: a string, or an
/// array of them in arrival order once the header repeats.
fn add_header(headers: &mut Map<String, Value>, name: &str, value: Value) {
    match headers.get_mut(name) {
        None => {
            headers.insert(name.to_owned(), value);
        }
        Some(Value::Array(values)) => values.push(value),
        Some(first) => *first = Value::Array(vec![first.take(), value]),
    }
}

/// `headersBase64`: the exact bytes of the headers that have a value that is
/// not UTF-8 (obs-text, such as Latin-1 or a raw signature), which `headers`
/// can only show with U+FFFD in place of each bad sequence, as JSON strings
/// cannot carry such bytes. Every value of such a header is here, in base64,
/// in the shape `headers` gives it (a string, or an array in the same order),
/// so a script takes a header from here when it is here, else from
/// `headers`. `None` when every value is UTF-8: such records look as they
/// always did.
fn headers_base64(list: &[(String, Bytes)]) -> Option<Value> {
    let not_utf8: Vec<&str> =
        list.iter().filter(|(_, v)| std::str::from_utf8(v).is_err()).map(|(n, _)| n.as_str()).collect();
    if not_utf8.is_empty() {
        return None;
    }
    let mut exact = Map::new();
    for (name, value) in list.iter().filter(|(n, _)| not_utf8.contains(&n.as_str())) {
        add_header(&mut exact, name, Value::String(BASE64.encode(value)));
    }
    Some(Value::Object(exact))
}

/// `text/event-stream` of the tunnel's new records, until the client leaves,
/// the tunnel is deleted or the server shuts down. A client that reconnects
/// with `Last-Event-ID` (an `EventSource` does, from the events' `id:`) first
/// gets the kept records of the requests that started after that one (ids
/// are in start order; a request running at that time comes live when it ends).
async fn live_stream(state: &State, tunnel: &Tunnel, since: Option<String>) -> ApiResult {
    struct Live {
        rx: broadcast::Receiver<Arc<str>>,
        closing: tokio_util::sync::CancellationToken,
        /// What goes first: the comment that says the stream is up, and the
        /// records missed since `Last-Event-ID`.
        first: Option<String>,
        /// The records sent from the store: their live events (a record
        /// stored between the subscription and the read) were sent already.
        sent: std::collections::HashSet<String>,
    }
    // Subscribed before the store is read, so a record is in one or the other.
    let rx = state.capture.subscribe(&tunnel.id);
    let mut first = ": connected\n\n".to_owned();
    let mut sent = std::collections::HashSet::new();
    if let Some(since) = since {
        state.capture.settle(SETTLE_WAIT).await;
        let tid = tunnel.id.clone();
        let kept = state.store.run(move |s| s.list_requests(&tid, None, MAX_PAGE)).await?;
        // Ids are in the order requests started: those that started after it.
        let missed: Vec<&RequestRecord> = kept.iter().take_while(|r| r.id > since).collect();
        for r in missed.into_iter().rev() {
            first.push_str(&sse_event(r));
            sent.insert(r.id.clone());
        }
    }
    let live = Live { rx, closing: state.capture.closing().clone(), first: Some(first), sent };
    let events = stream::unfold(live, |mut live| async move {
        if let Some(first) = live.first.take() {
            return Some((Ok::<_, Infallible>(Frame::data(Bytes::from(first))), live));
        }
        let text = loop {
            break tokio::select! {
                _ = live.closing.cancelled() => return None,
                _ = tokio::time::sleep(KEEP_ALIVE) => ": keep-alive\n\n".to_owned(),
                r = live.rx.recv() => match r {
                    Ok(event) if event_id(&event).is_some_and(|id| live.sent.remove(id)) => continue,
                    Ok(event) => event.to_string(),
                    Err(broadcast::error::RecvError::Lagged(n)) => format!("event: lagged\ndata: {{\"missed\":{n}}}\n\n"),
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
        };
        Some((Ok(Frame::data(Bytes::from(text))), live))
    });
    let mut resp = Response::new(StreamBody::new(events).map_err(|never| match never {}).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// The `id:` of a rendered [`sse_event`].
fn event_id(event: &str) -> Option<&str> {
    event.lines().find_map(|l| l.strip_prefix("id: "))
}

/// Largest replay request, less 64 KiB for its headers: a body of 32 MiB sent
/// as base64 (the CLI sends a binary `--body-file` so) fits. It used to be
/// twice the capture's body limit, which kept requests larger than about
/// 2 MiB from ever being replayed: their captured bodies are cut, and the
/// whole body given back did not fit.
pub const MAX_REPLAY_JSON: usize = 32 * 1024 * 1024 / 3 * 4;

/// Sends a captured request through the tunnel again, optionally edited, and
/// answers with the new record.
async fn replay(state: &Arc<State>, tunnel: &Tunnel, rid: &str, req: Request<Incoming>, peer: SocketAddr) -> ApiResult {
    if !state.capture.config().enabled {
        return Err(ApiError::conflict(
            "request capture is off on this server (--no-capture), so replays cannot be recorded",
        ));
    }
    // An edited body may be as large as a captured one, and is JSON-escaped;
    // a request whose body was cut needs its whole body given back.
    let limit = state.capture.config().body_limit.saturating_mul(2).max(MAX_REPLAY_JSON) + 64 * 1024;
    // Large ones take turns: each holds tens of MiB until it is over. (The
    // body's size hint is its declared length, 0 for none, open if chunked.)
    let small = http_body::Body::size_hint(req.body()).upper().is_some_and(|n| n <= super::api::MAX_API_BODY as u64);
    let _turn = if small { None } else { Some(state.capture.large_replay().await) };
    let edits = read_json_up_to(state, req, limit).await?;
    super::api::known_fields(&edits, &["headers", "headersBase64", "body", "bodyEncoding"])?;
    let original = find(state, tunnel, rid).await?;
    let body = replay_body(&original, &edits)?;
    let mut headers = replay_headers(&original, &edits)?;
    check_replay_head(&headers)?;
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    if !body.is_empty() || original.request.body.size > 0 {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let method = Method::from_bytes(original.method.as_bytes())
        .map_err(|_| ApiError::conflict("the captured method cannot be replayed"))?;
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = method;
    *request.headers_mut() = headers;

    let (done, stored) = oneshot::channel();
    let replay = Replay { of: original.id.clone(), done };
    let target = Bytes::from(original.path.clone());
    let resp = edge::forward(state.clone(), &tunnel.subdomain, target, request, peer, Some(replay)).await;
    // Read the answer to its end (within the request timeout) so the record is complete.
    let mut body = resp.into_body();
    let _ = tokio::time::timeout(state.config.request_timeout, async {
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
    })
    .await;
    drop(body);
    match tokio::time::timeout(REPLAY_RECORD_WAIT, stored).await {
        Ok(Ok(record)) => Ok(ok(json!({ "request": detail_json(&record) }))),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request was replayed, but its record could not be stored (the capture writer is behind)",
        )),
    }
}

/// How a replay refused for want of a whole captured body says what to do
/// (409); the CLI finds it there to name its own flags instead.
pub const REPLAY_BODY_HINT: &str = "send the body to replay with {\"body\": \"…\"}";

fn replay_body(original: &RequestRecord, edits: &Map<String, Value>) -> Result<Bytes, ApiError> {
    let base64 = match edits.get("bodyEncoding") {
        None | Some(Value::Null) => false,
        Some(Value::String(e)) if e == "utf8" => false,
        Some(Value::String(e)) if e == "base64" => true,
        Some(_) => return Err(ApiError::bad("'bodyEncoding' must be \"utf8\" or \"base64\"")),
    };
    match edits.get("body") {
        Some(Value::String(text)) if base64 => {
            BASE64.decode(text).map(Bytes::from).map_err(|e| ApiError::bad(format!("'body' is not valid base64: {e}")))
        }
        Some(Value::String(text)) => Ok(Bytes::from(text.clone())),
        None | Some(Value::Null) => {
            let body = &original.request.body;
            // (Truncated before empty: a body never read, of unknown length,
            // is recorded with size 0, and is not known to be empty.)
            match &body.data {
                Some(_) if body.truncated && body.size == 0 => Err(ApiError::conflict(format!(
                    "none of the request's body was received (it was not read: no client took the request, or its \
                     caller left first; or its caller broke it off before its first byte), so it is not known; \
                     {REPLAY_BODY_HINT}"
                ))),
                // All that arrived was kept, and yet it is short: the caller
                // broke the body off, or it was not read to an end it never
                // declared. Sent as it is, the app would take it for whole.
                Some(data) if body.truncated && data.len() as u64 == body.size => Err(ApiError::conflict(format!(
                    "only the first {} bytes of the request's body arrived (its caller broke it off, or it was \
                     not read to its end), so the whole body is not known; {REPLAY_BODY_HINT}",
                    data.len()
                ))),
                Some(data) if body.truncated => Err(ApiError::conflict(format!(
                    "the captured body was cut at {} of {} bytes; {REPLAY_BODY_HINT}",
                    data.len(),
                    body.size
                ))),
                None if body.truncated || body.size > 0 => {
                    Err(ApiError::conflict(format!("bodies are not captured for this tunnel; {REPLAY_BODY_HINT}")))
                }
                None => Ok(Bytes::new()),
                Some(data) => Ok(data.clone()),
            }
        }
        Some(_) => Err(ApiError::bad("'body' must be a string")),
    }
}

fn replay_headers(original: &RequestRecord, edits: &Map<String, Value>) -> Result<HeaderMap, ApiError> {
    let mut headers = HeaderMap::new();
    for (name, value) in &original.request.headers {
        // The bytes that arrived, not a text form of them: a replay is faithful.
        let value = HeaderValue::from_maybe_shared(value.clone());
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), value) {
            headers.append(n, v);
        }
    }
    let edits_of = |field: &str| match edits.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(ApiError::bad(format!("'{field}' must be an object of name: value (or null to remove one)"))),
    };
    let (text, exact) = (edits_of("headers")?, edits_of("headersBase64")?);
    if let Some(name) = exact.and_then(|e| e.keys().find(|n| text.is_some_and(|t| t.contains_key(*n)))) {
        return Err(ApiError::bad(format!("header '{name}' is edited in both 'headers' and 'headersBase64'")));
    }
    // `headersBase64` sets values as bytes, as the record gives them for
    // values that are not UTF-8, which a JSON string cannot carry.
    let text_value = |name: &str, v: &str| {
        HeaderValue::from_str(v).map_err(|_| ApiError::bad(format!("header '{name}' has an invalid value")))
    };
    let exact_value = |name: &str, v: &str| {
        let bytes = BASE64
            .decode(v)
            .map_err(|_| ApiError::bad(format!("header '{name}' in 'headersBase64' is not valid base64")))?;
        HeaderValue::from_maybe_shared(Bytes::from(bytes))
            .map_err(|_| ApiError::bad(format!("header '{name}' has an invalid value")))
    };
    if let Some(text) = text {
        edit_headers(&mut headers, text, text_value)?;
    }
    if let Some(exact) = exact {
        edit_headers(&mut headers, exact, exact_value)?;
    }
    Ok(headers)
}

/// Most bytes of header names and values a replay carries: what hyper's
/// HTTP/1 read buffer lets a caller's head be (408 KiB), so that any captured
/// request can be replayed and an edit cannot make a head the edge would
/// refuse from a caller (or one over the tunnel's frame limit).
const MAX_REPLAY_HEAD: usize = 408 * 1024;

/// Refuses replay headers a caller could not have sent through the edge: more
/// lines than it takes, or a head larger than it reads.
fn check_replay_head(headers: &HeaderMap) -> Result<(), ApiError> {
    // Counted as the edge counts a caller's: every line.
    let lines = headers.len();
    if lines > super::http::MAX_REQUEST_HEADERS {
        return Err(ApiError::bad(format!(
            "the replay would carry {lines} header lines; the edge takes at most {}",
            super::http::MAX_REQUEST_HEADERS
        )));
    }
    let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if bytes > MAX_REPLAY_HEAD {
        return Err(ApiError::bad(format!(
            "the replay's headers would be {bytes} bytes; the edge takes at most {MAX_REPLAY_HEAD}"
        )));
    }
    Ok(())
}

/// Applies `edited` (name: value, array of values, or null to remove) to
/// `headers`, each value made by `value`.
fn edit_headers(
    headers: &mut HeaderMap,
    edited: &Map<String, Value>,
    value: impl Fn(&str, &str) -> Result<HeaderValue, ApiError>,
) -> Result<(), ApiError> {
    for (name, v) in edited {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ApiError::bad(format!("'{name}' is not a valid header name")))?;
        headers.remove(&n);
        match v {
            Value::Null => {}
            Value::String(s) => {
                headers.insert(n, value(name, s)?);
            }
            Value::Array(items) => {
                for item in items {
                    let s = item
                        .as_str()
                        .ok_or_else(|| ApiError::bad(format!("header '{name}' values must be strings")))?;
                    headers.append(&n, value(name, s)?);
                }
            }
            _ => return Err(ApiError::bad(format!("header '{name}' must be a string, an array of strings or null"))),
        }
    }
    Ok(())
}
