//! The public HTTP service: routing each request to the tunnel edge (path- and
//! host-based), the REST API or health checks, and the edge's error answers.
//! Connections are accepted and timed in [`super::listener`].

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;

use super::{HostRoute, State, api, edge, gateway};
use crate::headers::join_cookies;

/// Boxed error carried by streaming bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body type of every handler.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(serde_json::to_vec(value).unwrap_or_default()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The API's error shape: `{"error": "…"}`.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message.into() }))
}

/// The kind of an [`edge_error`], kept in the response's extensions so the
/// request capture can tell the edge's errors from the local app's answers
/// (a header could be forged by the app).
#[derive(Debug, Clone, Copy)]
pub struct EdgeErrorKind(pub &'static str);

/// Marks the answer for a request a stopping client refused before its app
/// saw it (a refused QUIC stream, a `--ws` client's "going offline"): the
/// one answer besides an offline tunnel's that the offline reply may replace.
#[derive(Debug, Clone, Copy)]
pub struct RefusedByLeavingClient;

/// A one-line plain-text error from the edge, with a machine-readable kind in
/// `x-hookway-error` so callers can tell our errors from the local app's.
pub fn edge_error(status: StatusCode, kind: &'static str, message: impl std::fmt::Display) -> Response<Body> {
    let mut resp = Response::new(full(format!("hookway: {message}\n")));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(EdgeErrorKind(kind));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    // The line may quote the caller (a tunnel name from the URL): never to be
    // read as markup.
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert("x-hookway-error", HeaderValue::from_static(kind));
    resp
}

/// Most of what a tunnel client says about a failed request that goes into
/// the caller's answer.
pub const CLIENT_TEXT_MAX: usize = 512;

/// What a tunnel client said about a failed request (its app refused the
/// connection, timed out…), fit for the edge's one-line answer: cut to
/// [`CLIENT_TEXT_MAX`] bytes, and line breaks and other control or
/// text-direction characters made spaces. The client is the tunnel owner's,
/// and what it says reaches callers who are not.
pub fn client_text(text: &str) -> String {
    crate::wsjson::clip(text, CLIENT_TEXT_MAX)
        .chars()
        .map(|c| if crate::rewrites_terminal(c) { ' ' } else { c })
        .collect()
}

/// The answer when the caller's own request body fails (a malformed chunk, a
/// connection cut mid-body): the caller's fault, whichever way the tunnel goes.
pub fn bad_request_body(err: impl std::fmt::Display) -> Response<Body> {
    edge_error(StatusCode::BAD_REQUEST, "bad-request-body", format_args!("the request body failed: {err}"))
}

/// Most header lines a request may carry, on every route and over HTTP/1 and
/// HTTP/2 alike: hyper's HTTP/1 default, which callers have always met, now
/// checked here so that its 431 has the edge's error form. hyper's HTTP/1
/// parser makes room for more ([`super::listener::H1_PARSER_HEADERS`]) and
/// still answers alone past those, as HTTP/2 does past its header list size.
pub const MAX_REQUEST_HEADERS: usize = 100;

/// Most bytes of header fields and target a request may carry (names and
/// values, as HTTP/1 lines with their `: ` and line end), on every route: as much as
/// nginx's largest default, four times HTTP/2's 16 KiB list here. hyper's
/// HTTP/1 reads heads of up to about 400 KB, and each is kept with its
/// capture record: a caller sending such heads filled a tunnel's share of the
/// request log with 350 MB in 40 s.
pub const MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;

/// The methods the edge forwards, for the `Allow` header of a refused `CONNECT`.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, TRACE";

/// Routes one request.
pub(super) async fn handle(state: Arc<State>, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    // Before anything counts or forwards them: an HTTP/2 caller's cookies,
    // one field each, are one header line, as they will be for the app.
    if req.version() == Version::HTTP_2 {
        join_cookies(req.headers_mut());
    }
    // Every line counts, as the app will get it: an HTTP/1 caller's several
    // `Cookie` lines (which RFC 6265 forbids) go on as they came, so counting
    // them once let 200 of them through to an app that refuses 100.
    if req.headers().len() > MAX_REQUEST_HEADERS {
        return too_many_headers(api_form(&state, &req), req.headers().len());
    }
    // (The target too: it is kept with the record as well.)
    let fields: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    let bytes = fields + req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if bytes > MAX_REQUEST_HEADER_BYTES {
        return refused(
            api_form(&state, &req),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            format_args!(
                "the request's target and header fields are {bytes} bytes; the edge accepts at most \
                 {MAX_REQUEST_HEADER_BYTES}"
            ),
        );
    }
    if req.method() == Method::CONNECT {
        return connect_refused(req.version());
    }
    // `OPTIONS *` asks about the server, not a resource (RFC 9110 §9.3.7):
    // the edge answers it, on any host; an app behind a tunnel has no use for
    // a target that is not a path.
    if req.uri().path() == "*" {
        return asterisk(req.method());
    }
    let host = match request_host(&req) {
        Ok(host) => host,
        // (Which host it was for is unknown: by its path alone.)
        Err(why) => return refused(is_api_path(&state, req.uri().path()), StatusCode::BAD_REQUEST, "bad-request", why),
    };
    match host.map_or(HostRoute::Elsewhere, |host| state.host_route(host)) {
        HostRoute::Tunnel(sub) => {
            // Origin form for the app: an absolute-form target may have no
            // path (`http://host?x=1` is `/?x=1`).
            let target = match req.uri().path_and_query().map(|p| p.as_str()) {
                Some(target) if target.starts_with('/') => target.to_owned(),
                Some(target) => format!("/{target}"),
                None => "/".to_owned(),
            };
            return edge::forward(state, &sub, Bytes::from(target), req, peer, None).await;
        }
        HostRoute::NoTunnel(labels) => {
            return edge_error(StatusCode::NOT_FOUND, "tunnel-not-found", format_args!("no tunnel named '{labels}'"));
        }
        HostRoute::EmptyLabel => {
            return edge_error(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format_args!("the host '{}' has an empty label: it is no host name", host.unwrap_or_default()),
            );
        }
        HostRoute::Elsewhere => {}
    }
    // The path as the caller gave it, for a 404, when the prefix was taken off.
    let mut given = None;
    if let Some(uri) = state.config.path_prefix.as_deref().and_then(|prefix| without_prefix(req.uri(), prefix)) {
        given = Some(req.uri().path().to_owned());
        *req.uri_mut() = uri;
    }
    let path = req.uri().path();
    // (`/t` alone is `/t/`: no tunnel named, and the answer says where they are.)
    if let Some(rest) = path.strip_prefix("/t/").or((path == "/t").then_some("")) {
        let (sub, tail) = rest.split_once('/').map_or((rest, ""), |(s, t)| (s, t));
        let mut target = String::with_capacity(tail.len() + 16);
        target.push('/');
        target.push_str(tail);
        if let Some(q) = req.uri().query() {
            target.push('?');
            target.push_str(q);
        }
        // Subdomains are lower case, as host names compare: `/t/My-App` is
        // `my-app`, as `My-App.{domain}` is.
        let sub = sub.to_ascii_lowercase();
        return edge::forward(state, &sub, Bytes::from(target), req, peer, None).await;
    }
    if let Some(sub) = path.strip_prefix("/tunnels/").and_then(|rest| rest.strip_suffix("/ws")) {
        let sub = sub.to_owned();
        return gateway::upgrade(state, &sub, req, peer).await;
    }
    if is_api_path(&state, path) {
        return api::handle(state, req, peer).await;
    }
    match path {
        "/healthz" => Response::new(full("ok\n")),
        "/" => Response::new(full(format!(
            "hookway {}\nREST API: {}/api/tunnels\nTunnels: {}/t/{{subdomain}}\n",
            env!("CARGO_PKG_VERSION"),
            state.config.public_url,
            state.config.public_url
        ))),
        // (An authority-form target, `GET host:80`, has no path: it is named whole.)
        "" => json_error(StatusCode::NOT_FOUND, format!("no route for {}: give a path", req.uri())),
        _ => json_error(StatusCode::NOT_FOUND, format!("no route for {}", given.as_deref().unwrap_or(path))),
    }
}

/// `uri` without the public URL's path `prefix`, when it starts with that
/// path (a whole segment: `/hooks` is not the start of `/hooksmith`).
fn without_prefix(uri: &http::Uri, prefix: &str) -> Option<http::Uri> {
    let path = unprefixed(uri.path(), prefix)?;
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(target.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

/// `path` after `prefix`, when it starts with that path as a whole segment
/// (`/hooks` is not the start of `/hooksmith`); `/` for the prefix itself.
fn unprefixed<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    match path.strip_prefix(prefix)? {
        "" => Some("/"),
        rest if rest.starts_with('/') => Some(rest),
        _ => None,
    }
}

/// The answer to a request whose target is `*`: the methods the edge
/// forwards, for `OPTIONS`, and a 400 for any other method, which `*` does not
/// name a resource for.
fn asterisk(method: &Method) -> Response<Body> {
    if method != Method::OPTIONS {
        return edge_error(StatusCode::BAD_REQUEST, "bad-request", format_args!("{method} * names no resource"));
    }
    let mut resp = Response::new(full(Bytes::new()));
    resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
    resp
}

/// The host a request is addressed to: its URI's authority when it has one
/// (HTTP/2's `:authority`, or an HTTP/1 absolute-form target, which RFC 9112
/// §3.2.2 puts before `Host`), else its `Host` header. Two `Host` headers are
/// a 400 (RFC 9112 §3.2): which one a proxy in front of us used is anyone's
/// guess; so is an HTTP/1.1 request without one (HTTP/1.0 may omit it).
fn request_host<B>(req: &Request<B>) -> Result<Option<&str>, &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err("the request has more than one Host header");
    }
    match req.uri().authority() {
        Some(authority) => Ok(Some(without_userinfo(authority))),
        None if first.is_none() && req.version() == Version::HTTP_11 => {
            Err("an HTTP/1.1 request needs a Host header (RFC 9112 §3.2)")
        }
        None => match first.and_then(|v| v.to_str().ok()) {
            Some(host) if !port_is_digits(host) => Err("the Host header's port is not a number"),
            host => Ok(host),
        },
    }
}

/// Whether a `Host` header's port, if it has one, is digits (RFC 3986
/// §3.2.3; empty is allowed). Else `sub.example.com:abc` was no tunnel's
/// host, and fell through to the API's "no route".
fn port_is_digits(host: &str) -> bool {
    let port = match host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`.
        Some(rest) => match rest.split_once(']') {
            Some((_, after)) => after.strip_prefix(':').unwrap_or(after),
            None => return false,
        },
        None => host.rsplit_once(':').map_or("", |(_, port)| port),
    };
    port.bytes().all(|b| b.is_ascii_digit())
}

/// An authority as a `Host` gives it: without userinfo (`user:pass@`), which
/// a `Host` never has (RFC 9110 §7.2).
pub(super) fn without_userinfo(authority: &http::uri::Authority) -> &str {
    authority.as_str().rsplit_once('@').map_or(authority.as_str(), |(_, host)| host)
}

/// The answer to a request with more than [`MAX_REQUEST_HEADERS`] header
/// lines (repeated names counted each time, as hyper counts them).
/// Whether `path` is the REST API's, under the public URL's path or not.
fn is_api_path(state: &State, path: &str) -> bool {
    let path = state.config.path_prefix.as_deref().and_then(|prefix| unprefixed(path, prefix)).unwrap_or(path);
    path == "/api" || path.starts_with("/api/")
}

/// Whether a request refused before routing is answered in the API's error
/// form: it is for the API's paths, on a host that is not a tunnel's (with
/// `--domain`, `{sub}.{domain}/api/…` is the app's path, and the caller must
/// tell the edge's answer from the app's by its `x-hookway-error`).
fn api_form<B>(state: &State, req: &Request<B>) -> bool {
    let tunnel = |host| !matches!(state.host_route(host), HostRoute::Elsewhere);
    is_api_path(state, req.uri().path()) && !request_host(req).ok().flatten().is_some_and(tunnel)
}

/// An error refused before routing: in the edge's form, or as the REST API
/// answers errors (`{"error": "…"}`) when the request was for the API
/// (`api`), whose clients parse that form.
fn refused(api: bool, status: StatusCode, kind: &'static str, message: impl std::fmt::Display) -> Response<Body> {
    if api { json_error(status, message.to_string()) } else { edge_error(status, kind, message) }
}

fn too_many_headers(api: bool, lines: usize) -> Response<Body> {
    refused(
        api,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "too-many-headers",
        format_args!("the request has {lines} header lines; the edge accepts at most {MAX_REQUEST_HEADERS}"),
    )
}

/// The answer to `CONNECT`: hookway forwards requests, it does not open
/// tunnels to other hosts. Forwarding it would make hyper treat the app's 2xx
/// as an upgrade and leave the caller with an empty reply.
fn connect_refused(version: Version) -> Response<Body> {
    let mut resp = edge_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "CONNECT is not supported: hookway forwards HTTP requests to tunnels, it is not a proxy",
    );
    let h = resp.headers_mut();
    h.insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
    if version <= Version::HTTP_11 {
        // What a CONNECT caller sends next is the tunnel's bytes, not HTTP.
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::port_is_digits;

    #[test]
    fn host_ports_are_digits() {
        for ok in ["example.com", "example.com:8080", "example.com:", "[::1]", "[::1]:80", "127.0.0.1:1"] {
            assert!(port_is_digits(ok), "{ok}");
        }
        for bad in ["example.com:abc", "a.b:80x", "[::1]:x", "[::1", "[::1]x"] {
            assert!(!port_is_digits(bad), "{bad}");
        }
    }
}
