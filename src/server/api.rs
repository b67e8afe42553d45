//! The Tunnels REST API, shaped exactly as seed 001 (the webhooks API lives in
//! [`super::webhooks_api`] and shares this file's error style) (paths, bodies, wrappers,
//! field names); anything extra is an addition, never a change.
//!
//! Every error is `{"error": "…"}` with 400/401/404/405/408/409/413, mapped here in
//! one place; a tunnel of another organization is indistinguishable from a
//! missing one (404). A 405 carries `Allow`, read from the routing tables
//! ([`super::routes`]) that also decide it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{Value, json};

use super::State;
use super::http::{Body, json as json_response, json_error};
use super::names;
use super::registry::Tunnel;
use super::routes::{ANY, Routes, unrouted};
use super::session::end_on_purpose;
use crate::inbound::{BasicAuth, InboundConfig, OfflineReply, RateLimit, Rules, Verification, VerificationKind};
use crate::quic::close;
use crate::store::{StoreError, TunnelRecord};

/// Largest JSON body the API reads.
pub const MAX_API_BODY: usize = 64 * 1024;
/// Longest tunnel name accepted.
pub const MAX_NAME_LEN: usize = 200;

/// An API failure, rendered as `{"error": …}`.
pub(super) struct ApiError {
    status: StatusCode,
    message: String,
    /// A 405's `Allow` header: the methods the path accepts.
    allow: Option<&'static str>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), allow: None }
    }
    pub(super) fn bad(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }
    pub(super) fn conflict(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, msg)
    }
    /// 404 for a `what` (`tunnel`, `webhook`) with `id`: saying so when the
    /// id is of another kind (`webhooks get tun_…`), a mix-up the bare "not
    /// found" left to guess.
    pub(super) fn not_found(what: &str, id: &str) -> Self {
        const KINDS: [(&str, &str); 6] = [
            ("tun_", "a tunnel's"),
            ("wh_", "a webhook's"),
            ("req_", "a captured request's"),
            ("msg_", "a webhook delivery's"),
            ("key_", "an API key's"),
            ("tok_", "a token's public"),
        ];
        let own = KINDS.iter().find(|(_, kind)| kind.ends_with(&format!("{what}'s"))).map(|(prefix, _)| *prefix);
        match KINDS.iter().find(|(prefix, _)| id.starts_with(prefix)) {
            Some((prefix, kind)) if Some(*prefix) != own => Self::new(
                StatusCode::NOT_FOUND,
                format!("{what} not found: {id} is {kind} id ({what} ids start with {})", own.unwrap_or("?")),
            ),
            _ => Self::new(StatusCode::NOT_FOUND, format!("{what} not found")),
        }
    }
    /// 405 for a path that accepts only `methods` (listed as `Allow` lists them).
    pub(super) fn not_allowed(methods: &'static str) -> Self {
        Self { allow: Some(methods), ..Self::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this path") }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(what) => Self::conflict(what),
            StoreError::Database(_) | StoreError::MainLost { .. } => {
                tracing::error!(%err, "store failure in API");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "storage is unavailable; try again")
            }
        }
    }
}

pub(super) type ApiResult = Result<Response<Body>, ApiError>;

/// The tunnel object of seed 001.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TunnelJson {
    id: String,
    name: String,
    subdomain: String,
    status: &'static str,
    total_requests: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_connected_at: Option<String>,
    created_at: String,
    /// An addition to seed 001, present only when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    /// An addition to seed 001, present only when body capture is off.
    /// (`false`; seed 001's shape is unchanged for tunnels left at the default).
    #[serde(skip_serializing_if = "Option::is_none")]
    capture_bodies: Option<bool>,
    /// Additions to seed 001, present only when set (seed 004's inbound
    /// options), without their secrets: `{"username": "…"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    basic_auth: Option<Value>,
    /// `{"type": "facebook" | "fitbit"}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    verification: Option<Value>,
    /// `{"requests": N, "windowSeconds": S}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<RateLimit>,
    /// `{"status": N}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    offline_reply: Option<OfflineReply>,
}

fn tunnel_json(state: &State, t: &Tunnel) -> Value {
    let meta = t.meta();
    let rules = t.inbound();
    let inbound = rules.as_deref().map(Rules::config);
    serde_json::to_value(TunnelJson {
        id: t.id.clone(),
        name: meta.name,
        subdomain: t.subdomain.clone(),
        status: status_of(state, t),
        total_requests: t.total_requests.load(std::sync::atomic::Ordering::Relaxed),
        last_connected_at: meta.last_connected_at,
        created_at: t.created_at.clone(),
        group: meta.group,
        capture_bodies: (!t.capture_bodies.load(std::sync::atomic::Ordering::Relaxed)).then_some(false),
        basic_auth: inbound.and_then(|i| i.basic_auth.as_ref()).map(|a| json!({ "username": a.username })),
        verification: inbound.and_then(|i| i.verification.as_ref()).map(|v| json!({ "type": v.kind.as_str() })),
        rate_limit: inbound.and_then(|i| i.rate_limit),
        offline_reply: inbound.and_then(|i| i.offline_reply),
    })
    .unwrap_or(Value::Null)
}

fn status_of(state: &State, t: &Tunnel) -> &'static str {
    if state.registry.session_of(t).is_some() { "connected" } else { "disconnected" }
}

/// Handles `/api/...`.
pub async fn handle(state: Arc<State>, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    // HEAD is GET without the body (RFC 9110 §9.3.2). The body is dropped
    // here: hyper leaves it out over HTTP/1.1, but over HTTP/2 it sent it,
    // which the peer takes for a protocol error (and a stream of requests
    // would never end).
    let head = req.method() == Method::HEAD;
    if head {
        *req.method_mut() = Method::GET;
    }
    let cutting = state.cutting.clone();
    let answered = async move {
        if head || req.method() == Method::GET {
            answer(&state, req, peer).await
        } else {
            // A change runs to its end in a task of its own, whether or not its
            // caller waits for the answer: dropped between the store's write and
            // memory's (a client's timeout, an HTTP/2 reset), a new token was
            // stored and the old one still taken until a restart.
            match tokio::spawn(async move { answer(&state, req, peer).await }).await {
                Ok(resp) => resp,
                Err(err) => {
                    tracing::error!(%err, "an API call failed");
                    json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_owned())
                }
            }
        }
    };
    // A call still running when the shutdown grace runs out (a webhook test
    // to a receiver that does not answer) is answered why, not cut off with
    // an empty reply.
    let resp = tokio::select! {
        resp = answered => resp,
        () = cutting.cancelled() => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server shut down before this call was answered (a change it makes may still have been made)".to_owned(),
        ),
    };
    if !head {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    if let Some(len) = http_body::Body::size_hint(&body).exact() {
        parts.headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(len));
    }
    Response::from_parts(parts, super::http::full(bytes::Bytes::new()))
}

async fn answer(state: &Arc<State>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    match route(state, req, peer).await {
        Ok(resp) => resp,
        Err(ApiError { status, message, allow }) => {
            let mut resp = json_error(status, message);
            if status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            }
            if let Some(methods) = allow {
                resp.headers_mut().insert(header::ALLOW, http::HeaderValue::from_static(methods));
            }
            resp
        }
    }
}

async fn route(state: &Arc<State>, req: Request<Incoming>, peer: SocketAddr) -> ApiResult {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').skip(2).collect();
    let method = req.method().clone();
    if segments == ["info"] {
        return match method {
            Method::GET => Ok(info(state)),
            _ => Err(unrouted(ROUTES, &segments, String::new)),
        };
    }
    let org = authenticate(state, &req, peer).await?;
    match (segments.as_slice(), method) {
        (["tunnels"], Method::GET) => Ok(list(state, &org)),
        (["tunnels"], Method::POST) => create(state, &org, read_json(state, req).await?).await,
        (["tunnels", id], Method::GET) => {
            let t = owned(state, &org, id)?;
            Ok(ok(json!({ "tunnel": tunnel_json(state, &t) })))
        }
        (["tunnels", id], Method::PATCH) => update(state, &org, id, read_json(state, req).await?).await,
        (["tunnels", id], Method::DELETE) => delete(state, &org, id).await,
        (["tunnels", id, "status"], Method::GET) => Ok(live_status(state, &*owned(state, &org, id)?)),
        (["tunnels", id, "regenerate-token"], Method::POST) => regenerate(state, &org, id).await,
        (["tunnels", id, "disconnect"], Method::POST) => {
            let t = owned(state, &org, id)?;
            end_on_purpose(
                state,
                &t,
                || state.registry.take_session(&t),
                close::DISCONNECTED,
                "disconnected through the API",
            );
            Ok(ok(json!({ "success": true })))
        }
        (["tunnels", id, "requests", rest @ ..], method) => {
            let t = owned(state, &org, id)?;
            super::requests_api::route(state, t, rest, method, req, peer).await
        }
        (["webhooks", rest @ ..], method) => super::webhooks_api::route(state, &org, rest, method, req).await,
        _ => Err(unrouted(ROUTES, &segments, || format!("no API route for {path}"))),
    }
}

/// The paths [`route`] serves itself (after `/api/`); `requests` and
/// `webhooks` keep their own tables.
const ROUTES: Routes = &[
    (&["info"], "GET, HEAD"),
    (&["tunnels"], "GET, HEAD, POST"),
    (&["tunnels", ANY], "GET, HEAD, PATCH, DELETE"),
    (&["tunnels", ANY, "status"], "GET, HEAD"),
    (&["tunnels", ANY, "regenerate-token"], "POST"),
    (&["tunnels", ANY, "disconnect"], "POST"),
];

pub(super) fn ok(value: Value) -> Response<Body> {
    json_response(StatusCode::OK, &value)
}

async fn authenticate(state: &State, req: &Request<Incoming>, peer: SocketAddr) -> Result<String, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
    // (Behind a trusted proxy, its caller: else one guesser would shut out
    // everyone behind the proxy.)
    let caller = state.config.trusted_proxies.caller(peer.ip(), req.headers());
    if let Some(wait) = state.auth_failures.refused_for(caller, Instant::now()) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many wrong API keys from this address: refused for {} s more", wait.as_secs().max(1)),
        ));
    }
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let value = values
        .next()
        .ok_or_else(|| unauthorized("missing Authorization header; send 'Authorization: Bearer <api key>'"))?;
    // Which of two keys to use is anyone's guess (a proxy may have added one).
    if values.next().is_some() {
        return Err(unauthorized("more than one Authorization header; send one, 'Authorization: Bearer <api key>'"));
    }
    // The scheme is case-insensitive (RFC 9110 §11.1): `BEARER` is `Bearer`.
    let key = value
        .to_str()
        .ok()
        .and_then(bearer_token)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| unauthorized("Authorization must be 'Bearer <api key>'"))?;
    let org = state.org_for_key(key).await?;
    org.ok_or_else(|| {
        state.auth_failures.failed(caller, Instant::now());
        unauthorized("invalid API key")
    })
}

/// The token of `Bearer <token>`: the scheme in any case (RFC 9110 §11.1),
/// then spaces or tabs.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once([' ', '\t'])?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_matches([' ', '\t']))
}

/// The tunnel `id` if it belongs to `org`; 404 otherwise, whoever owns it.
pub(super) fn owned(state: &State, org: &str, id: &str) -> Result<Arc<Tunnel>, ApiError> {
    state.registry.get(id).filter(|t| t.org_id == org).ok_or_else(|| ApiError::not_found("tunnel", id))
}

/// [`owned`], for a change: with the tunnel's update lock held, so that
/// changes to one tunnel are made one at a time, in the store and in memory
/// in the same order (two token regenerations at once once left the server
/// accepting one token and the store holding the other, which a restart then
/// brought back), and looked up again once it is held: a tunnel deleted
/// meanwhile is not found, rather than changed in the store after its row went.
async fn owned_for_change(
    state: &State,
    org: &str,
    id: &str,
) -> Result<(Arc<Tunnel>, tokio::sync::OwnedMutexGuard<()>), ApiError> {
    let tunnel = owned(state, org, id)?;
    let held = tunnel.updates.clone().lock_owned().await;
    match owned(state, org, id) {
        Ok(still) if Arc::ptr_eq(&still, &tunnel) => Ok((tunnel, held)),
        _ => Err(ApiError::not_found("tunnel", id)),
    }
}

/// Reads a JSON object of at most [`MAX_API_BODY`] bytes within the body
/// timeout; an empty body is an empty object.
pub(super) async fn read_json(
    state: &State,
    req: Request<Incoming>,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    read_json_up_to(state, req, MAX_API_BODY).await
}

/// [`read_json`] with another size limit. A body that stalls gets 408 after
/// the body timeout rather than holding its connection (and the caller's
/// file descriptor) for as long as the caller likes.
pub(super) async fn read_json_up_to(
    state: &State,
    req: Request<Incoming>,
    limit: usize,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let too_large = || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body exceeds {limit} bytes"));
    // A declared length over the limit is refused before waiting for a body
    // that will be refused anyway (or that never comes: then it was a 408).
    if http_body::Body::size_hint(req.body()).lower() > limit as u64 {
        return Err(too_large());
    }
    let within = state.config.http.body_timeout;
    let read = tokio::time::timeout(within, Limited::new(req.into_body(), limit).collect());
    let bytes = read
        .await
        .map_err(|_| {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("the request body did not arrive within {within:?}"))
        })?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::bad(format!("could not read request body: {e}"))
            }
        })?
        .to_bytes();
    if bytes.is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad("request body must be a JSON object")),
        Err(e) => Err(ApiError::bad(format!("request body is not valid JSON: {e}"))),
    }
}

/// Refuses a body with a field not in `known`, so that a typo
/// (`"subdomian"`) is a 400 naming it instead of a field silently ignored.
pub(super) fn known_fields(body: &serde_json::Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::bad(format!("unknown field '{unknown}' (known: {})", known.join(", ")))),
        None => Ok(()),
    }
}

/// A string field, `None` when left out or null. `path` is the field's name,
/// or for one inside an object its path (`basicAuth.username`), which errors
/// name.
pub(super) fn string_field(body: &serde_json::Map<String, Value>, path: &str) -> Result<Option<String>, ApiError> {
    let field = path.rsplit('.').next().unwrap_or(path);
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad(format!("'{path}' must be a string"))),
    }
}

pub(super) fn bool_field(body: &serde_json::Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad(format!("'{field}' must be true or false"))),
    }
}

/// The fields of the inbound options (seed 004) in create and update bodies.
const INBOUND_FIELDS: [&str; 4] = ["basicAuth", "verification", "rateLimit", "offlineReply"];

/// The inbound options a create or update body sets, over `current`: None
/// when it names none of [`INBOUND_FIELDS`]; each one given is set (an
/// object) or turned off (null).
fn inbound_fields(
    body: &serde_json::Map<String, Value>,
    current: &InboundConfig,
) -> Result<Option<InboundConfig>, ApiError> {
    if !INBOUND_FIELDS.iter().any(|f| body.contains_key(*f)) {
        return Ok(None);
    }
    let mut next = current.clone();
    if let Some(v) = body.get("basicAuth") {
        next.basic_auth = object_field(v, "basicAuth", &["username", "password"])?
            .map(|o| {
                // Both given, "" for none: a password left out is not taken
                // for an empty one (it was, and the tunnel looked the same).
                let given = |path: &str| {
                    string_field(o, path)?.ok_or_else(|| ApiError::bad(format!("'{path}' is required (\"\" for none)")))
                };
                let (username, password) = (given("basicAuth.username")?, given("basicAuth.password")?);
                BasicAuth::new(&username, &password).map_err(ApiError::bad)
            })
            .transpose()?;
    }
    if let Some(v) = body.get("verification") {
        next.verification = object_field(v, "verification", &["type", "code"])?
            .map(|o| {
                let kind = match o.get("type").and_then(Value::as_str) {
                    Some("facebook") => VerificationKind::Facebook,
                    Some("fitbit") => VerificationKind::Fitbit,
                    _ => return Err(ApiError::bad("'verification.type' must be \"facebook\" or \"fitbit\"")),
                };
                let code = string_field(o, "verification.code")?.unwrap_or_default();
                Verification::new(kind, &code).map_err(ApiError::bad)
            })
            .transpose()?;
    }
    if let Some(v) = body.get("rateLimit") {
        next.rate_limit = object_field(v, "rateLimit", &["requests", "windowSeconds"])?
            .map(|o| {
                let count = |field: &str| match o.get(field) {
                    None | Some(Value::Null) => Err(ApiError::bad(format!("'rateLimit.{field}' is required"))),
                    Some(v) => v
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| ApiError::bad(format!("'rateLimit.{field}' must be a whole number"))),
                };
                RateLimit { requests: count("requests")?, window_seconds: count("windowSeconds")? }
                    .validate()
                    .map_err(ApiError::bad)
            })
            .transpose()?;
    }
    if let Some(v) = body.get("offlineReply") {
        next.offline_reply = object_field(v, "offlineReply", &["status"])?
            .map(|o| {
                if o.get("status").is_none_or(Value::is_null) {
                    return Err(ApiError::bad("'offlineReply.status' is required"));
                }
                let status = o.get("status").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok());
                let status = status.ok_or_else(|| ApiError::bad("'offlineReply.status' must be an HTTP status"))?;
                OfflineReply { status }.validate().map_err(ApiError::bad)
            })
            .transpose()?;
    }
    Ok(Some(next))
}

/// An offline reply answers for requests that only their record will ever
/// deliver: it needs the capture on, with bodies (409 otherwise).
fn check_offline_reply(state: &State, reply: Option<OfflineReply>, bodies: bool) -> Result<(), ApiError> {
    if reply.is_none() {
        return Ok(());
    }
    if !state.capture.config().enabled || state.capture.config().body_limit == 0 {
        return Err(ApiError::conflict(
            "an offline reply needs request capture with bodies, which this server does not keep (--no-capture or \
             --capture-body-limit 0): the requests it answered would be lost",
        ));
    }
    if !bodies {
        return Err(ApiError::conflict(
            "an offline reply needs the tunnel's bodies captured (\"captureBodies\": true; --capture-bodies in the \
             CLI): the requests it answered could not be replayed whole",
        ));
    }
    Ok(())
}

/// An inbound option's value: null (off) or an object of `known` fields.
fn object_field<'a>(
    v: &'a Value,
    field: &str,
    known: &[&str],
) -> Result<Option<&'a serde_json::Map<String, Value>>, ApiError> {
    match v {
        Value::Null => Ok(None),
        Value::Object(o) => {
            if let Some(unknown) = o.keys().find(|k| !known.contains(&k.as_str())) {
                return Err(ApiError::bad(format!("unknown field '{field}.{unknown}' (known: {})", known.join(", "))));
            }
            Ok(Some(o))
        }
        _ => Err(ApiError::bad(format!("'{field}' must be an object or null"))),
    }
}

/// Longest group label accepted.
pub const MAX_GROUP_LEN: usize = 64;

/// `group`: absent (`None`), null (`Some(None)`: clear it) or a label.
pub(super) fn group_field(body: &serde_json::Map<String, Value>) -> Result<Option<Option<String>>, ApiError> {
    match body.get("group") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(g)) => {
            let g = g.trim();
            let ok = !g.is_empty()
                && g.len() <= MAX_GROUP_LEN
                && g.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(ApiError::bad(format!(
                    "'group' must be 1-{MAX_GROUP_LEN} letters, digits, '-', '_' or '.'"
                )));
            }
            Ok(Some(Some(g.to_owned())))
        }
        Some(_) => Err(ApiError::bad("'group' must be a string or null")),
    }
}

pub(super) fn valid_name(name: String) -> Result<String, ApiError> {
    // A name is shown in terminals (`tunnels list`, the client's banner):
    // escape sequences and line breaks in it would rewrite what a user sees.
    crate::shown_name(&name, MAX_NAME_LEN).map(str::to_owned).map_err(|why| ApiError::bad(format!("'name' {why}")))
}

fn info(state: &State) -> Response<Body> {
    let c = &state.config;
    ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "protocolVersion": crate::wire::PROTOCOL_VERSION,
        "publicUrl": c.public_url,
        "domain": c.domain,
        "quicPort": c.quic_port,
        "quicAddr": c.quic_public_addr,
        "certFingerprint": c.fingerprint,
        "capture": state.capture.config().enabled,
    }))
}

fn list(state: &State, org: &str) -> Response<Body> {
    let tunnels: Vec<Value> = state.registry.list(org).iter().map(|t| tunnel_json(state, t)).collect();
    ok(json!({ "tunnels": tunnels }))
}

async fn create(state: &Arc<State>, org: &str, body: serde_json::Map<String, Value>) -> ApiResult {
    let known: Vec<&str> = ["name", "subdomain", "group", "captureBodies"].into_iter().chain(INBOUND_FIELDS).collect();
    known_fields(&body, &known)?;
    let name = valid_name(string_field(&body, "name")?.ok_or_else(|| ApiError::bad("'name' is required"))?)?;
    let subdomain = match string_field(&body, "subdomain")? {
        Some(s) => {
            names::validate_subdomain(&s).map_err(ApiError::bad)?;
            if state.is_own_subdomain(&s) {
                return Err(ApiError::bad(format!("subdomain '{s}' is reserved: it is this server's own host name")));
            }
            if state.registry.subdomain_exists(&s) {
                return Err(conflict(&s));
            }
            s
        }
        None => (0..32)
            .map(|_| names::generated_subdomain())
            .find(|s| !state.registry.subdomain_exists(s) && !state.is_own_subdomain(s))
            .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "could not find a free subdomain"))?,
    };
    let group = group_field(&body)?.flatten();
    let capture_bodies = bool_field(&body, "captureBodies")?.unwrap_or(true);
    let inbound = inbound_fields(&body, &InboundConfig::default())?.unwrap_or_default();
    check_offline_reply(state, inbound.offline_reply, capture_bodies)?;
    let token = names::auth_token();
    let record = TunnelRecord {
        id: names::tunnel_id(),
        org_id: org.to_owned(),
        name,
        subdomain: subdomain.clone(),
        token_hash: names::hash_secret(&token),
        total_requests: 0,
        last_connected_at: None,
        created_at: super::clock::now_rfc3339(),
        group,
        capture_bodies,
        inbound,
    };
    let stored = record.clone();
    state.store.run(move |s| s.insert_tunnel(&stored)).await.map_err(|e| match e {
        StoreError::Conflict(_) => conflict(&subdomain),
        other => other.into(),
    })?;
    let tunnel = Arc::new(Tunnel::from_record(record));
    state.registry.insert(tunnel.clone());
    let mut resp = json!({
        "tunnel": tunnel_json(state, &tunnel),
        "tunnelUrl": state.tunnel_url(&tunnel.subdomain),
        "wsUrl": state.ws_url(&tunnel.subdomain, &tunnel.id, &token),
        "authToken": token,
    });
    if let Some(host_url) = state.host_url(&tunnel.subdomain) {
        resp["hostUrl"] = Value::String(host_url);
    }
    Ok(json_response(StatusCode::CREATED, &resp))
}

fn conflict(subdomain: &str) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, format!("subdomain '{subdomain}' is already taken"))
}

async fn update(state: &Arc<State>, org: &str, id: &str, body: serde_json::Map<String, Value>) -> ApiResult {
    if body.contains_key("subdomain") {
        owned(state, org, id)?;
        return Err(ApiError::bad("'subdomain' cannot be changed; create a new tunnel instead"));
    }
    let (tunnel, _one_at_a_time) = owned_for_change(state, org, id).await?;
    let known: Vec<&str> = ["name", "group", "captureBodies"].into_iter().chain(INBOUND_FIELDS).collect();
    known_fields(&body, &known)?;
    let name = string_field(&body, "name")?.map(valid_name).transpose()?;
    let group = group_field(&body)?;
    let capture_bodies = bool_field(&body, "captureBodies")?;
    let current = tunnel.inbound().map(|rules| rules.config().clone()).unwrap_or_default();
    let inbound = inbound_fields(&body, &current)?;
    // Checked when this update sets an offline reply or stops keeping bodies,
    // not on an unrelated change (a rename after a restart with --no-capture).
    if body.get("offlineReply").is_some_and(|v| !v.is_null()) || capture_bodies == Some(false) {
        let bodies = capture_bodies.unwrap_or_else(|| tunnel.capture_bodies.load(std::sync::atomic::Ordering::Relaxed));
        check_offline_reply(state, inbound.as_ref().unwrap_or(&current).offline_reply, bodies)?;
    }
    if name.is_none() && group.is_none() && capture_bodies.is_none() && inbound.is_none() {
        return Err(ApiError::bad(
            "nothing to update: send {\"name\": \"…\"}, {\"group\": \"…\" | null}, {\"captureBodies\": true | false}, \
             {\"basicAuth\": {…} | null}, {\"verification\": {…} | null}, {\"rateLimit\": {…} | null} and/or \
             {\"offlineReply\": {…} | null}",
        ));
    }
    if let Some(name) = name {
        let (tid, stored) = (tunnel.id.clone(), name.clone());
        state.store.run(move |s| s.rename_tunnel(&tid, &stored)).await?;
        tunnel.update_meta(|m| m.name = name);
    }
    if let Some(group) = group {
        let (tid, stored) = (tunnel.id.clone(), group.clone());
        state.store.run(move |s| s.set_tunnel_group(&tid, stored.as_deref())).await?;
        super::session::regroup(state, &tunnel, group);
    }
    if let Some(on) = capture_bodies {
        let tid = tunnel.id.clone();
        state.store.run(move |s| s.set_capture_bodies(&tid, on)).await?;
        tunnel.capture_bodies.store(on, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(inbound) = inbound {
        let (tid, stored) = (tunnel.id.clone(), inbound.clone());
        state.store.run(move |s| s.set_inbound(&tid, &stored)).await?;
        tunnel.set_inbound(inbound);
    }
    Ok(ok(json!({ "tunnel": tunnel_json(state, &tunnel) })))
}

async fn delete(state: &Arc<State>, org: &str, id: &str) -> ApiResult {
    let (tunnel, _one_at_a_time) = owned_for_change(state, org, id).await?;
    let tid = tunnel.id.clone();
    state.store.run(move |s| s.delete_tunnel(&tid)).await?;
    end_on_purpose(state, &tunnel, || state.registry.remove(&tunnel.id), close::TUNNEL_DELETED, "tunnel deleted");
    // After the registry: the capture writer re-checks it after each write
    // (see `capture::writer`), so no record can outlive the tunnel.
    state.capture.forget(&tunnel.id);
    let tid = tunnel.id.clone();
    if let Err(err) = state.store.run(move |s| s.delete_requests(&tid)).await {
        // Pruned at the next start-up.
        tracing::warn!(%err, tunnel_id = %tunnel.id, "could not delete the deleted tunnel's requests");
    }
    Ok(ok(json!({ "success": true })))
}

fn live_status(state: &State, t: &Tunnel) -> Response<Body> {
    // One lookup for both fields, so they cannot disagree if the session ends
    // while the answer is being built.
    let session = state.registry.session_of(t);
    let status = if session.is_some() { "connected" } else { "disconnected" };
    let live = match &session {
        Some(s) => json!({
            "connected": true,
            "connectedAt": s.connected_at,
            "clientIp": s.client_ip.to_string(),
            "requestsInSession": s.requests.load(std::sync::atomic::Ordering::Relaxed),
        }),
        None => json!({ "connected": false, "connectedAt": null, "clientIp": null, "requestsInSession": 0 }),
    };
    ok(json!({
        "tunnel": { "id": t.id, "name": t.meta().name, "status": status },
        "liveStatus": live,
    }))
}

async fn regenerate(state: &Arc<State>, org: &str, id: &str) -> ApiResult {
    let (tunnel, _one_at_a_time) = owned_for_change(state, org, id).await?;
    let token = names::auth_token();
    let hash = names::hash_secret(&token);
    let tid = tunnel.id.clone();
    state.store.run(move |s| s.set_token_hash(&tid, &hash)).await?;
    tunnel.update_meta(|m| m.token_hash = hash);
    end_on_purpose(
        state,
        &tunnel,
        || state.registry.take_session(&tunnel),
        close::TOKEN_REVOKED,
        "auth token regenerated",
    );
    Ok(ok(json!({
        "tunnel": { "id": tunnel.id, "name": tunnel.meta().name, "subdomain": tunnel.subdomain },
        "authToken": token,
        "wsUrl": state.ws_url(&tunnel.subdomain, &tunnel.id, &token),
    })))
}
