//! Captured requests, as the inspection API shows them and the store keeps them.
//!
//! A record is written once, by the capture writer, and never changed; the
//! newest records per tunnel are kept (see `server::capture`).

use bytes::Bytes;

/// One side's body as captured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedBody {
    /// The bytes kept (at most the capture limit), or `None` when body capture
    /// is off for the tunnel (and in summaries, which never carry bodies).
    pub data: Option<Bytes>,
    /// The body's full size, however much of it was kept.
    pub size: u64,
    /// Whether `data` stops short of the body: of `size`, or, when the caller
    /// broke the body off (`size` then being what arrived), of the body it
    /// meant to send. Such a body is never replayed as if whole.
    pub truncated: bool,
    /// Whether it stops short because the server's capture budget for bodies
    /// was spent (rather than at the body limit, or because the body ended early).
    pub over_budget: bool,
}

/// Headers in arrival order; a repeated header appears once per value.
///
/// Values are bytes, not text: HTTP allows any byte but CR, LF and NUL in a
/// value (obs-text, 0x80–0xFF, included), senders do put Latin-1 or raw
/// signatures there, and the tunnel forwards them as they are. A replay must
/// send exactly what arrived, or a signature over the header fails to check.
/// Names are ASCII (the `http` crate admits no other).
pub type HeaderList = Vec<(String, Bytes)>;

/// One side (request or response) of a captured exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedPart {
    /// Header names are lowercase.
    pub headers: HeaderList,
    /// The body.
    pub body: CapturedBody,
}

/// A request that reached a tunnel, and what its caller got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// `req_` + 12 hex digits of the arrival time in ms + 8 hex digits of a
    /// counter: ids sort by arrival, so pagination and age pruning need no
    /// other column.
    pub id: String,
    /// The tunnel it came through.
    pub tunnel_id: String,
    /// Arrival time, RFC 3339 with microseconds.
    pub time: String,
    /// HTTP method.
    pub method: String,
    /// Path with its query, as forwarded to the local app.
    pub path: String,
    /// Status the caller got (the local app's or the edge's), if a response head went out.
    pub status: Option<u16>,
    /// Arrival to the end of the response body, in microseconds.
    pub duration_us: u64,
    /// `ok`, `incomplete`, or the edge's error kind (`tunnel-offline`, `local-unreachable`, `timeout`, …).
    pub outcome: String,
    /// The caller's address.
    pub client_ip: String,
    /// The record this one replays.
    pub replay_of: Option<String>,
    /// What the caller sent (headers without summaries' bodies).
    pub request: CapturedPart,
    /// What the caller got, if a response head went out.
    pub response: Option<CapturedPart>,
}

impl RequestRecord {
    /// A plain record of tunnel `tun_a` with id `id`, for the store's tests.
    #[cfg(test)]
    pub(crate) fn for_test(id: &str) -> Self {
        Self {
            id: id.into(),
            tunnel_id: "tun_a".into(),
            time: "2026-11-24T10:00:00.000000Z".into(),
            method: "POST".into(),
            path: "/".into(),
            status: Some(200),
            duration_us: 5,
            outcome: "ok".into(),
            client_ip: "127.0.0.1".into(),
            replay_of: None,
            request: CapturedPart::default(),
            response: None,
        }
    }
}

/// The id prefix that sorts before every record that arrived at `ms` or later.
pub fn id_floor(ms: u64) -> String {
    format!("req_{ms:012x}")
}
