//! The WebSocket-JSON message checks shared by the `wsjson` fuzz target and
//! `tests/fuzz_corpus.rs` (which includes this file by path, so it may only use
//! `hookway`, `http` and `serde_json`).
//!
//! Properties checked on any input:
//! * parsing as a client message and as a server message never panics;
//! * a parsed response or request re-encodes to a message that parses back to
//!   the same id, status or method and path, body bytes and header values, and
//!   re-encoding that gives the same JSON (folding happens once; header order
//!   may differ, as JSON objects are unordered);
//! * header values keep their bytes through the re-encoding, also those that
//!   are not UTF-8 (from `headersBase64`), where it does not fold them.

use hookway::wsjson::{self, ClientMessage, ServerMessage};

/// What an input parsed to, for corpus statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A response (client message).
    Response,
    /// A request (server message).
    Request,
    /// Ping, pong or error.
    Control,
    /// Rejected by both parsers.
    Rejected,
}

/// Runs every property on `data`; panics on a violation.
pub fn check(data: &[u8]) -> Outcome {
    let mut outcome = Outcome::Rejected;
    match wsjson::parse_client_message(data) {
        Ok(ClientMessage::Response(r)) => {
            outcome = Outcome::Response;
            let text = wsjson::response(&r.id, r.status, &r.headers, &r.body);
            let Ok(ClientMessage::Response(again)) = wsjson::parse_client_message(text.as_bytes()) else {
                panic!("re-encoded response does not parse: {text}");
            };
            assert_eq!((&again.id, again.status, &again.body), (&r.id, r.status, &r.body));
            assert_eq!(again.headers.keys_len(), r.headers.keys_len(), "{text}");
            assert_same_values(&r.headers, &again.headers, &text);
            let stable = wsjson::response(&again.id, again.status, &again.headers, &again.body);
            assert_same_json(&stable, &text);
        }
        Ok(_) => outcome = Outcome::Control,
        Err(e) => assert!(!e.reason.is_empty()),
    }
    match wsjson::parse_server_message(data) {
        Ok(ServerMessage::Request(r)) => {
            outcome = Outcome::Request;
            let text = wsjson::request(&r.id, &r.method, &r.path, &r.headers, &r.body);
            let Ok(ServerMessage::Request(again)) = wsjson::parse_server_message(text.as_bytes()) else {
                panic!("re-encoded request does not parse: {text}");
            };
            assert_eq!((&again.id, &again.method, &again.path, &again.body), (&r.id, &r.method, &r.path, &r.body));
            assert_eq!(again.headers.keys_len(), r.headers.keys_len(), "{text}");
            assert_same_values(&r.headers, &again.headers, &text);
            let stable = wsjson::request(&again.id, &again.method, &again.path, &again.headers, &again.body);
            assert_same_json(&stable, &text);
        }
        Ok(_) if outcome == Outcome::Rejected => outcome = Outcome::Control,
        Ok(_) => {}
        Err(e) => assert!(!e.reason.is_empty()),
    }
    outcome
}

/// The values of each header that re-encoding does not fold (a single value,
/// or `set-cookie`'s) are the same bytes after it.
fn assert_same_values(before: &http::HeaderMap, after: &http::HeaderMap, text: &str) {
    for name in before.keys() {
        let values = |m: &http::HeaderMap| m.get_all(name).iter().map(|v| v.as_bytes().to_vec()).collect::<Vec<_>>();
        let was = values(before);
        if was.len() == 1 || name == http::header::SET_COOKIE {
            assert_eq!(values(after), was, "header {name} changed through {text}");
        }
    }
}

fn assert_same_json(a: &str, b: &str) {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).expect("our own output is JSON");
    assert_eq!(parse(a), parse(b), "re-encoding is not stable:\n{a}\n{b}");
}
