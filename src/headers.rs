//! Header rules shared by the edge and the client.

use http::{HeaderMap, HeaderName, header};

/// `X-Forwarded-For`, `-Proto` and `-Host`, which the edge adds to every
/// forwarded request: as constants, since a custom name given as a `&str` is
/// parsed and copied into an allocation of its own at each use, and the
/// client meets all three in every request it reads.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// See [`X_FORWARDED_FOR`].
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// See [`X_FORWARDED_FOR`].
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The header name `bytes` spell (lowercase, as a `HeaderMap` keeps them),
/// without an allocation for the forwarding headers every request carries.
pub fn header_name(bytes: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    match bytes {
        b"x-forwarded-for" => Ok(X_FORWARDED_FOR.clone()),
        b"x-forwarded-proto" => Ok(X_FORWARDED_PROTO.clone()),
        b"x-forwarded-host" => Ok(X_FORWARDED_HOST.clone()),
        _ => HeaderName::from_bytes(bytes),
    }
}

/// Why an app's 1xx answer is not passed on: it cannot end a request, and no
/// app was asked to switch protocols (`Upgrade` is a hop-by-hop header, not
/// forwarded). The QUIC edge and the `--ws` client answer it alike, with a
/// 502 `local-error`: hyper would send a bare 101 and leave an HTTP/1.1
/// caller with an empty reply, and the WebSocket contract has no 1xx status.
pub fn unasked_informational(status: http::StatusCode) -> String {
    format!("the local app answered {status}, which does not end a request (it was not asked to upgrade)")
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether `name` is a hop-by-hop header in itself.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || name == "keep-alive" || name == "proxy-connection"
}

/// Joins the `cookie` fields of an HTTP/2 request into one, with `; `, as
/// RFC 9113 §8.2.3 requires before the request goes on over HTTP/1.1 (to the
/// local app): HTTP/2 callers may send each cookie as a field of its own, and
/// an app sees several `Cookie` lines where HTTP/1.1 allows one (RFC 6265
/// §5.4), or refuses the request for its number of header lines.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else { return };
    let mut joined = first.as_bytes().to_vec();
    for more in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(more.as_bytes());
    }
    // Each part was a valid value, and so is `; ` between two.
    if let Ok(value) = http::HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Removes hop-by-hop headers, including those named by `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none, and one pass comparing the names finds that
    // faster than a hashed lookup of each (every head, twice per request).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    // A message framed by a transfer coding has its length there, not in a
    // `Content-Length` it also carries, which a proxy must drop (RFC 9112
    // §6.3): kept, it cut a chunked answer short at the stale length, or
    // failed a whole one for ending before it.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// The body length `Content-Length` declares: `Ok(None)` without one, `Err`
/// with the offending value when it is not one length (RFC 9110 §8.6: digits
/// only; a list or repeated lines are accepted when every value is the same).
///
/// A proxy that passes an unchecked length on lets its peer choose how the
/// next hop frames the message; a HEAD answer, whose length is kept because it
/// describes the GET's body, is where that happens.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, String> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let bad = || String::from_utf8_lossy(&value.as_bytes()[..value.len().min(64)]).into_owned();
        let text = value.to_str().map_err(|_| bad())?;
        for item in text.split(',') {
            let item = item.trim();
            let digits = !item.is_empty() && item.len() <= 19 && item.bytes().all(|b| b.is_ascii_digit());
            let n = digits.then(|| item.parse::<u64>().ok()).flatten().ok_or_else(bad)?;
            if *length.get_or_insert(n) != n {
                return Err(bad());
            }
        }
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forwarding headers' constants are the names `http` makes of the
    /// same bytes, in any case; other names are made as before.
    #[test]
    fn header_names_are_the_ones_http_makes() {
        for name in ["x-forwarded-for", "X-Forwarded-Proto", "x-forwarded-host", "x-github-event", "content-type"] {
            let made = header_name(name.as_bytes()).unwrap();
            assert_eq!(made, HeaderName::from_bytes(name.as_bytes()).unwrap());
            assert_eq!(made.as_str(), name.to_ascii_lowercase());
        }
        assert!(header_name(b"bad name").is_err() && header_name(b"").is_err());
    }

    #[test]
    fn removes_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    /// The quick check finds each kind alone; a map without any is untouched.
    #[test]
    fn each_hop_by_hop_header_alone_is_found() {
        for name in ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "proxy-authorization"]
        {
            let mut h = HeaderMap::new();
            h.insert("content-type", "text/plain".parse().unwrap());
            h.insert(HeaderName::from_static(name), "x".parse().unwrap());
            strip_hop_by_hop(&mut h);
            assert_eq!(h.keys().collect::<Vec<_>>(), ["content-type"], "{name}");
        }
        let mut h = HeaderMap::new();
        h.insert("content-type", "text/plain".parse().unwrap());
        h.append("x-a", "1".parse().unwrap());
        h.append("x-a", "2".parse().unwrap());
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn content_length_is_one_decimal_length() {
        let h = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONTENT_LENGTH, v.parse().unwrap());
            }
            content_length(&h)
        };
        assert_eq!(h(&[]), Ok(None));
        assert_eq!(h(&["0"]), Ok(Some(0)));
        assert_eq!(h(&["1234"]), Ok(Some(1234)));
        assert_eq!(h(&["42, 42"]), Ok(Some(42)));
        assert_eq!(h(&["7", "7"]), Ok(Some(7)));
        for bad in [
            &["abc"][..],
            &["12, 13"],
            &["5", "6"],
            &["-1"],
            &["+7"],
            &[""],
            &["1 2"],
            &["0x10"],
            &["99999999999999999999"],
        ] {
            assert!(h(bad).is_err(), "{bad:?}");
        }
        assert_eq!(h(&["abc"]), Err("abc".to_owned()));
    }
}
