//! Headers in seed 001's messages: a JSON object of lowercase names, each with
//! a string (or an array of strings), both ways; and beside it, only when a
//! value is not UTF-8, `headersBase64` with the exact bytes of such headers.
//!
//! HTTP allows bytes 0x80–0xFF in a value (obs-text: Latin-1, a raw
//! signature), which a JSON string cannot carry: `headers` shows them with
//! U+FFFD in place of each bad sequence, as it always did, and
//! `headersBase64` gives every value of each such header in base64, in the
//! shape `headers` gives that header (a string, or an array in the same
//! order). A peer that knows the field takes the bytes from it; one that does
//! not sees the messages it always saw.

use std::borrow::Cow;
use std::cell::Cell;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::Value;

use super::{QUOTE_MAX, clip};

/// The field that carries the exact bytes of header values that are not UTF-8.
pub(super) const EXACT: &str = "headersBase64";

/// Headers from a JSON object: values are strings, numbers or booleans
/// (stringified), or arrays of those (one header line each). `exact` is the
/// message's `headersBase64`: for each name it has, the bytes it gives take
/// the place of the text in `headers`, value for value, so it must name
/// headers that `headers` has and match their shape.
pub(super) fn headers_from_json(value: Option<&Value>, exact: Option<&Value>) -> Result<HeaderMap, String> {
    let obj = match value {
        None | Some(Value::Null) => None,
        Some(Value::Object(obj)) => Some(obj),
        Some(_) => return Err("\"headers\" must be an object".into()),
    };
    let exact = match exact {
        None | Some(Value::Null) => None,
        Some(Value::Object(exact)) => Some(exact),
        Some(_) => return Err(format!("\"{EXACT}\" must be an object")),
    };
    if let Some(name) = exact.and_then(|e| e.keys().find(|n| obj.and_then(|o| o.get(*n)).is_none_or(Value::is_null))) {
        return Err(format!("\"{EXACT}\" has header {:?}, which \"headers\" lacks", clip(name, QUOTE_MAX)));
    }
    let Some(obj) = obj else { return Ok(HeaderMap::new()) };
    let too_many = || format!("more than {} header lines", crate::wire::MAX_HEADERS);
    if obj.len() > crate::wire::MAX_HEADERS {
        return Err(too_many());
    }
    let mut map = HeaderMap::with_capacity(obj.len());
    for (name, value) in obj {
        let quoted = || clip(name, QUOTE_MAX);
        let header =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {:?}", quoted()))?;
        let shape = || {
            format!(
                "\"{EXACT}\" for header {:?} must match its \"headers\" value: a base64 string, or an array of as many",
                quoted()
            )
        };
        // One value, as text or (`bytes`) as its base64.
        let mut add = |v: &Value, bytes: Option<&Value>| -> Result<(), String> {
            let value = match (v, bytes) {
                (Value::String(_) | Value::Number(_) | Value::Bool(_), Some(Value::String(b))) => {
                    let bytes = B64
                        .decode(b)
                        .map_err(|e| format!("\"{EXACT}\" for header {:?} is not valid base64: {e}", quoted()))?;
                    HeaderValue::from_maybe_shared(Bytes::from(bytes))
                }
                (Value::String(_) | Value::Number(_) | Value::Bool(_), Some(_)) => return Err(shape()),
                (Value::String(s), None) => HeaderValue::from_str(s),
                (Value::Number(n), None) => HeaderValue::from_str(&n.to_string()),
                (Value::Bool(b), None) => HeaderValue::from_str(if *b { "true" } else { "false" }),
                _ => return Err(format!("header {:?} must be a string or an array of strings", quoted())),
            };
            if map.len() == crate::wire::MAX_HEADERS {
                return Err(too_many());
            }
            map.append(header.clone(), value.map_err(|_| format!("invalid value for header {:?}", quoted()))?);
            Ok(())
        };
        match (value, exact.and_then(|e| e.get(name))) {
            (Value::Array(items), None) => items.iter().try_for_each(|v| add(v, None))?,
            (Value::Array(items), Some(Value::Array(bytes))) if bytes.len() == items.len() => {
                items.iter().zip(bytes).try_for_each(|(v, b)| add(v, Some(b)))?;
            }
            (Value::Array(_), Some(_)) => return Err(shape()),
            (Value::Null, _) => {}
            (other, bytes) => add(other, bytes)?,
        }
    }
    Ok(map)
}

/// How repeated values of `name` are folded into one, as HTTP allows (`, `;
/// `; ` for `cookie`); `None` for `set-cookie`, which cannot be folded.
fn separator(name: &HeaderName) -> Option<&'static str> {
    if name == header::SET_COOKIE {
        None
    } else if name == header::COOKIE {
        Some("; ")
    } else {
        Some(", ")
    }
}

/// Headers as a JSON object of lowercase names. Repeated headers are folded
/// into one value (see [`separator`]), except `set-cookie`, which becomes an
/// array when repeated. A value that is not UTF-8 shows U+FFFD in place of
/// each bad sequence; serializing notes it, and [`exact`](Self::exact) then
/// gives the `headersBase64` to send beside.
pub(super) struct JsonHeaders<'a> {
    map: &'a HeaderMap,
    /// Set while serializing, by the first value that is not UTF-8: headers
    /// that are all UTF-8 (nearly all) cost no second look.
    not_utf8: Cell<bool>,
}

impl<'a> JsonHeaders<'a> {
    pub(super) fn new(map: &'a HeaderMap) -> Self {
        Self { map, not_utf8: Cell::new(false) }
    }

    /// `headersBase64`, once `self` has been serialized, if it met a value
    /// that is not UTF-8.
    pub(super) fn exact(&self) -> Option<ExactHeaders<'a>> {
        self.not_utf8.get().then_some(ExactHeaders(self.map))
    }

    fn lossy(&self, v: &[u8]) -> String {
        match String::from_utf8_lossy(v) {
            Cow::Borrowed(s) => s.to_owned(),
            Cow::Owned(s) => {
                self.not_utf8.set(true);
                s
            }
        }
    }
}

impl Serialize for JsonHeaders<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.map.keys_len()))?;
        for name in self.map.keys() {
            serialize_values(&mut map, name, self.map, |v| self.lossy(v))?;
        }
        map.end()
    }
}

/// `headersBase64`: for each header with a value that is not UTF-8, all its
/// values in base64, in the shape [`JsonHeaders`] gives the header: one
/// string (of the folded value, when it folds) or an array in the same order.
pub(super) struct ExactHeaders<'a>(&'a HeaderMap);

impl Serialize for ExactHeaders<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for name in self.0.keys() {
            if self.0.get_all(name).iter().all(|v| std::str::from_utf8(v.as_bytes()).is_ok()) {
                continue;
            }
            serialize_values(&mut map, name, self.0, |v| B64.encode(v))?;
        }
        map.end()
    }
}

/// Writes the values of header `name` as one entry of a message's headers
/// object: one value, several folded into one (see [`separator`]), or an
/// array for `set-cookie`, each as `render` makes it of the value's bytes.
/// Both forms share it, so `headersBase64` always has the shape of `headers`.
/// (Folding bytes first changes no text: a separator is ASCII, which never
/// continues a byte sequence, so the text of the folded value is the values'
/// texts folded.)
fn serialize_values<M: SerializeMap>(
    map: &mut M,
    name: &HeaderName,
    headers: &HeaderMap,
    render: impl Fn(&[u8]) -> String,
) -> Result<(), M::Error> {
    let mut values = headers.get_all(name).iter().map(HeaderValue::as_bytes);
    let first = values.next().unwrap_or_default();
    match (values.next(), separator(name)) {
        (None, _) => map.serialize_entry(name.as_str(), &render(first)),
        (Some(second), None) => {
            let all: Vec<String> = [first, second].into_iter().chain(values).map(render).collect();
            map.serialize_entry(name.as_str(), &all)
        }
        (Some(second), Some(sep)) => {
            let mut folded = first.to_vec();
            for v in std::iter::once(second).chain(values) {
                folded.extend_from_slice(sep.as_bytes());
                folded.extend_from_slice(v);
            }
            map.serialize_entry(name.as_str(), &render(&folded))
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
    use serde_json::{Value, json};

    use super::B64;
    use crate::wsjson::{ClientMessage, ServerMessage, max_message_for, parse_client_message, parse_server_message};
    use crate::wsjson::{request, response};
    use base64::Engine as _;

    fn h(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_bytes(v).unwrap());
        }
        m
    }

    fn b64(v: &[u8]) -> Value {
        Value::String(B64.encode(v))
    }

    fn values<'a>(m: &'a HeaderMap, name: &str) -> Vec<&'a [u8]> {
        m.get_all(name).iter().map(HeaderValue::as_bytes).collect()
    }

    const SIG: &[u8] = b"t=1,v1=caf\xe9\x80\xff";

    /// Issue: a header value that is not UTF-8 (obs-text, legal in HTTP)
    /// crossed a WebSocket tunnel as U+FFFD, both ways; QUIC tunnels carry
    /// its bytes. Now `headersBase64` carries them beside `headers`, which
    /// shows what it always showed.
    #[test]
    fn obs_text_values_cross_in_headers_base64_both_ways() {
        let sent = h(&[
            ("x-sig", SIG),
            ("x-multi", b"plain"),
            ("x-multi", b"\xfe"),
            ("x-plain", b"ok"),
            ("x-utf8", "héllo".as_bytes()),
        ]);
        let text = request("req_1", &Method::POST, "/hook", &sent, b"{}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["headers"],
            json!({
                "x-sig": String::from_utf8_lossy(SIG),
                "x-multi": "plain, \u{fffd}",
                "x-plain": "ok",
                "x-utf8": "héllo",
            })
        );
        // Only the headers with a value that is not UTF-8, folded as `headers` folds them.
        assert_eq!(v["headersBase64"], json!({ "x-sig": b64(SIG), "x-multi": b64(b"plain, \xfe") }), "{text}");
        assert!(text.contains(r#""headersBase64":{"#) && text.ends_with(r#""body":"{}"}"#), "{text}");
        let Ok(ServerMessage::Request(r)) = parse_server_message(text.as_bytes()) else { panic!("{text}") };
        assert_eq!(values(&r.headers, "x-sig"), [SIG]);
        assert_eq!(values(&r.headers, "x-multi"), [&b"plain, \xfe"[..]]);
        assert_eq!(
            (values(&r.headers, "x-plain"), values(&r.headers, "x-utf8")),
            (vec![&b"ok"[..]], vec!["héllo".as_bytes()])
        );

        // A response: repeated set-cookie stays an array, in order.
        let latin1: &[u8] = b"\xe9t\xe9";
        let sent = h(&[("set-cookie", b"a=\xe9"), ("set-cookie", b"b=2"), ("x-latin1", latin1), ("x-ok", b"1")]);
        let text = response("req_2", StatusCode::OK, &sent, b"");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["headers"]["set-cookie"], json!(["a=\u{fffd}", "b=2"]));
        assert_eq!(v["headersBase64"], json!({ "set-cookie": [b64(b"a=\xe9"), b64(b"b=2")], "x-latin1": b64(latin1) }));
        let Ok(ClientMessage::Response(r)) = parse_client_message(text.as_bytes()) else { panic!("{text}") };
        assert_eq!(r.headers, sent, "{text}");
    }

    /// Headers that are all UTF-8 serialize as they always did, and a
    /// message without `headersBase64` (a legacy peer's) parses as before.
    #[test]
    fn without_headers_base64_messages_are_what_they_were() {
        let utf8 = h(&[("x-a", b"1"), ("x-utf8", "héllo".as_bytes()), ("set-cookie", b"a=1"), ("set-cookie", b"b=2")]);
        let text = response("req_1", StatusCode::OK, &utf8, b"ok");
        assert_eq!(
            text,
            r#"{"type":"response","id":"req_1","status":200,"headers":{"x-a":"1","x-utf8":"héllo","set-cookie":["a=1","b=2"]},"body":"ok"}"#
        );
        for legacy in [
            r#"{"type":"response","id":"req_1","status":200,"headers":{"x-sig":"caf�"}}"#,
            r#"{"type":"response","id":"req_1","status":200,"headers":{"x-sig":"caf�"},"headersBase64":null}"#,
        ] {
            let Ok(ClientMessage::Response(r)) = parse_client_message(legacy.as_bytes()) else { panic!("{legacy}") };
            assert_eq!(values(&r.headers, "x-sig"), ["caf\u{fffd}".as_bytes()]);
        }
        let legacy = r#"{"type":"request","id":"req_1","method":"GET","path":"/","headers":{"x-sig":"caf�"}}"#;
        let Ok(ServerMessage::Request(r)) = parse_server_message(legacy.as_bytes()) else { panic!() };
        assert_eq!(values(&r.headers, "x-sig"), ["caf\u{fffd}".as_bytes()]);
    }

    /// A `headersBase64` that cannot be used is refused like any other bad
    /// field: a reason that says which, with the message's id.
    #[test]
    fn malformed_headers_base64_is_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            (r#""headers":{"a":"1"},"headersBase64":[]"#, "\"headersBase64\" must be an object"),
            (r#""headers":{"a":"1"},"headersBase64":"YQ==""#, "\"headersBase64\" must be an object"),
            (r#""headers":{"a":"1"},"headersBase64":{"b":"YQ=="}"#, "has header \"b\", which \"headers\" lacks"),
            (r#""headers":{"a":null},"headersBase64":{"a":"YQ=="}"#, "which \"headers\" lacks"),
            (r#""headersBase64":{"a":"YQ=="}"#, "which \"headers\" lacks"),
            (r#""headers":{"A":"1"},"headersBase64":{"a":"YQ=="}"#, "which \"headers\" lacks"),
            (r#""headers":{"a":"1"},"headersBase64":{"a":"!!"}"#, "for header \"a\" is not valid base64"),
            (r#""headers":{"a":"1"},"headersBase64":{"a":"YQ"}"#, "not valid base64"),
            (r#""headers":{"a":["1","2"]},"headersBase64":{"a":["YQ==","!"]}"#, "not valid base64"),
            (r#""headers":{"a":"1"},"headersBase64":{"a":["YQ=="]}"#, "must match its \"headers\" value"),
            (r#""headers":{"a":["1","2"]},"headersBase64":{"a":"YQ=="}"#, "must match"),
            (r#""headers":{"a":["1","2"]},"headersBase64":{"a":["YQ=="]}"#, "must match"),
            (r#""headers":{"a":["1"]},"headersBase64":{"a":[7]}"#, "must match"),
            (r#""headers":{"a":"1"},"headersBase64":{"a":7}"#, "must match"),
            (r#""headers":{"a":"1"},"headersBase64":{"a":null}"#, "must match"),
            (r#""headers":{"a":{}},"headersBase64":{"a":"YQ=="}"#, "must be a string or an array of strings"),
            // The bytes must make a header value: no line break ("a\nb").
            (r#""headers":{"a":"1"},"headersBase64":{"a":"YQpi"}"#, "invalid value for header \"a\""),
        ];
        for (fields, reason) in cases {
            let text = format!(r#"{{"type":"response","id":"req_7","status":200,{fields}}}"#);
            let err = parse_client_message(text.as_bytes()).expect_err(&text);
            assert_eq!(err.id.as_deref(), Some("req_7"), "{err:?}");
            assert!(err.reason.contains(reason), "{text}: {:?} lacks {reason:?}", err.reason);
            let text = format!(r#"{{"type":"request","id":"req_8","method":"GET","path":"/",{fields}}}"#);
            let err = parse_server_message(text.as_bytes()).expect_err(&text);
            assert_eq!(err.id.as_deref(), Some("req_8"), "{err:?}");
            assert!(err.reason.contains(reason), "{text}: {:?} lacks {reason:?}", err.reason);
        }
        // Bytes for some headers, text for the others; arrays value for value.
        let text = concat!(
            r#"{"type":"response","id":"req_9","status":200,"headers":{"a":["x","y"],"b":"2","c":3},"#,
            r#""headersBase64":{"a":["6Q==","/w=="],"c":"/g=="}}"#
        );
        let Ok(ClientMessage::Response(r)) = parse_client_message(text.as_bytes()) else { panic!() };
        assert_eq!((values(&r.headers, "a"), values(&r.headers, "b")), (vec![&b"\xe9"[..], b"\xff"], vec![&b"2"[..]]));
        assert_eq!(values(&r.headers, "c"), [b"\xfe"]);
    }

    /// The largest head hyper reads (its HTTP/1 buffer cap, for the edge's
    /// requests and the local app's responses alike), every value byte
    /// obs-text, fits the message bound: each such byte costs 3 bytes in
    /// `headers` (U+FFFD) and 4/3 in `headersBase64`.
    #[test]
    fn the_largest_head_fits_the_message_bound() {
        const HYPER_HEAD_MAX: usize = 8192 + 4096 * 100;
        let (lines, status_line) = (100, "HTTP/1.1 200 OK\r\n".len());
        let value_len = (HYPER_HEAD_MAX - status_line - 2) / lines - "x-000: \r\n".len();
        let value = vec![0xffu8; value_len];
        let mut headers = HeaderMap::new();
        for i in 0..lines {
            headers
                .insert(HeaderName::try_from(format!("x-{i:03}")).unwrap(), HeaderValue::from_bytes(&value).unwrap());
        }
        let text = response("req_18446744073709551615", StatusCode::OK, &headers, b"");
        assert!(text.len() <= max_message_for(0), "{} bytes, over the bound of {}", text.len(), max_message_for(0));
    }
}
