//! `/api/webhooks`: status webhook subscriptions, their signing keys, test
//! sends, delivery logs and health. Same auth, error shape and wrappers as the
//! tunnels API; another organization's webhook is a 404.

use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::State;
use super::api::{ApiError, ApiResult, bool_field, group_field, ok, read_json, string_field, valid_name};
use super::http::json as json_response;
use super::names;
use super::routes::{ANY, Routes, unrouted};
use crate::notify::notifier::now_ms;
use crate::notify::{EventKind, deliver, sign, ssrf};
use crate::store::{DeliveryRecord, Health, WebhookRecord};

/// Most custom headers on one webhook.
pub const MAX_CUSTOM_HEADERS: usize = 20;
/// The window of the delivery log and health figures.
const DAY_MS: i64 = 24 * 3600 * 1000;
/// Most deliveries one listing returns (the newest; `truncated` says when
/// the last 24 h held more).
pub const MAX_LISTED: usize = 1000;
/// Fields a webhook body may carry.
const FIELDS: &[&str] = &["name", "url", "events", "group", "enabled", "customHeaders"];

/// Routes `/api/webhooks/…` (`rest` is what follows `webhooks`).
pub(super) async fn route(
    state: &Arc<State>,
    org: &str,
    rest: &[&str],
    method: Method,
    req: Request<Incoming>,
) -> ApiResult {
    match (rest, method) {
        ([], Method::GET) => Ok(list(state, org).await),
        ([], Method::POST) => create(state, org, read_json(state, req).await?).await,
        ([id], Method::GET) => {
            let w = owned(state, org, id)?;
            Ok(ok(json!({ "webhook": webhook_json(&w, health_of(state, org, &w.id).await) })))
        }
        ([id], Method::PATCH) => update(state, org, id, read_json(state, req).await?).await,
        ([id], Method::DELETE) => {
            let _one_at_a_time = state.webhook_writes.lock().await;
            let w = owned(state, org, id)?;
            let wid = w.id.clone();
            state.store.run(move |s| s.delete_webhook(&wid)).await?;
            state.notifier.remove_webhook(&w.id);
            Ok(ok(json!({ "success": true })))
        }
        ([id, "regenerate-signing-key"], Method::POST) => {
            let _one_at_a_time = state.webhook_writes.lock().await;
            let mut w = (*owned(state, org, id)?).clone();
            w.signing_key = sign::generate_key();
            w.updated_at = super::clock::now_rfc3339();
            let key = w.signing_key.clone();
            let w = save(state, w).await?;
            Ok(ok(json!({ "webhook": webhook_json(&w, health_of(state, org, &w.id).await), "signingKey": key })))
        }
        ([id, "test"], Method::POST) => test(state, org, id).await,
        ([id, "deliveries"], Method::GET) => deliveries(state, org, id).await,
        _ => Err(unrouted(ROUTES, rest, || "no such webhooks route".into())),
    }
}

/// The paths [`route`] serves (after `/api/webhooks`).
const ROUTES: Routes = &[
    (&[], "GET, HEAD, POST"),
    (&[ANY], "GET, HEAD, PATCH, DELETE"),
    (&[ANY, "regenerate-signing-key"], "POST"),
    (&[ANY, "test"], "POST"),
    (&[ANY, "deliveries"], "GET, HEAD"),
];

fn owned(state: &State, org: &str, id: &str) -> Result<Arc<WebhookRecord>, ApiError> {
    state.notifier.webhook(id).filter(|w| w.org_id == org).ok_or_else(|| ApiError::not_found("webhook", id))
}

async fn save(state: &State, w: WebhookRecord) -> Result<WebhookRecord, ApiError> {
    let stored = w.clone();
    state.store.run(move |s| s.save_webhook(&stored)).await?;
    state.notifier.put_webhook(w.clone());
    Ok(w)
}

async fn health_of(state: &State, org: &str, id: &str) -> Health {
    let org = org.to_owned();
    let since = now_ms() - DAY_MS;
    let all = state.store.run(move |s| s.webhook_health(&org, since)).await.unwrap_or_default();
    all.get(id).copied().unwrap_or_default()
}

/// The webhook object. The signing key is never part of it.
fn webhook_json(w: &WebhookRecord, health: Health) -> Value {
    let headers: Map<String, Value> =
        w.custom_headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let rate = (health.requests > 0).then(|| health.succeeded as f64 / health.requests as f64);
    json!({
        "id": w.id,
        "name": w.name,
        "url": w.url,
        "events": w.events,
        "group": w.group,
        "enabled": w.enabled,
        "customHeaders": headers,
        "createdAt": w.created_at,
        "updatedAt": w.updated_at,
        "health": { "requests24h": health.requests, "successRate24h": rate },
    })
}

async fn list(state: &State, org: &str) -> http::Response<super::http::Body> {
    let owner = org.to_owned();
    let since = now_ms() - DAY_MS;
    let health = state.store.run(move |s| s.webhook_health(&owner, since)).await.unwrap_or_default();
    let webhooks: Vec<Value> = state
        .notifier
        .webhooks_of(org)
        .iter()
        .map(|w| webhook_json(w, health.get(&w.id).copied().unwrap_or_default()))
        .collect();
    ok(json!({ "webhooks": webhooks }))
}

/// Applies the fields present in `body` to `w`; unknown fields are refused so
/// that a typo does not pass silently.
fn apply(state: &State, w: &mut WebhookRecord, body: &Map<String, Value>) -> Result<(), ApiError> {
    super::api::known_fields(body, FIELDS)?;
    if let Some(name) = string_field(body, "name")? {
        w.name = valid_name(name)?;
    }
    if let Some(url) = string_field(body, "url")? {
        ssrf::check_url(&url, state.notifier.config().allow_private).map_err(ApiError::bad)?;
        w.url = url;
    }
    match body.get("events") {
        None => {}
        Some(Value::Array(items)) if !items.is_empty() => {
            let mut events = Vec::new();
            for item in items {
                let name = item.as_str().unwrap_or_default();
                let Some(kind) = EventKind::parse(name) else {
                    let known: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                    return Err(ApiError::bad(format!("unknown event {item} (known: {})", known.join(", "))));
                };
                if !events.contains(&kind.as_str().to_owned()) {
                    events.push(kind.as_str().to_owned());
                }
            }
            w.events = events;
        }
        Some(_) => return Err(ApiError::bad("'events' must be a non-empty array of event names")),
    }
    if let Some(group) = group_field(body)? {
        w.group = group;
    }
    if let Some(enabled) = bool_field(body, "enabled")? {
        w.enabled = enabled;
    }
    match body.get("customHeaders") {
        None => {}
        Some(Value::Null) => w.custom_headers.clear(),
        Some(Value::Object(map)) if map.len() <= MAX_CUSTOM_HEADERS => {
            let mut headers = Vec::with_capacity(map.len());
            for (name, value) in map {
                let value = value.as_str().ok_or_else(|| ApiError::bad(format!("header '{name}' must be a string")))?;
                let parsed = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| ApiError::bad(format!("'{name}' is not a valid header name")))?;
                // They describe one connection, not the message: `Connection:
                // webhook-signature` would have a proxy strip the signature, and
                // `Transfer-Encoding` or `Expect` would break the request's framing.
                if crate::headers::is_hop_by_hop(&parsed) || parsed == http::header::EXPECT {
                    return Err(ApiError::bad(format!(
                        "'{name}' describes the connection, not the message, and cannot be a custom header"
                    )));
                }
                // Every delivery sets these itself, so a custom one would never be sent.
                if deliver::is_reserved(parsed.as_str()) {
                    return Err(ApiError::bad(format!(
                        "'{name}' is set by hookway on every delivery and cannot be a custom header (reserved: {})",
                        deliver::RESERVED_HEADERS.join(", ")
                    )));
                }
                http::HeaderValue::from_str(value)
                    .map_err(|_| ApiError::bad(format!("the value of header '{name}' is not valid")))?;
                // Names are case-insensitive: `X-A` and `x-a` are one header,
                // which would be sent twice.
                if headers.iter().any(|(other, _): &(String, String)| other.eq_ignore_ascii_case(name)) {
                    return Err(ApiError::bad(format!("header '{name}' is given twice (names ignore case)")));
                }
                headers.push((name.clone(), value.to_owned()));
            }
            w.custom_headers = headers;
        }
        Some(Value::Object(_)) => {
            return Err(ApiError::bad(format!("at most {MAX_CUSTOM_HEADERS} custom headers")));
        }
        Some(_) => return Err(ApiError::bad("'customHeaders' must be an object of header names to strings")),
    }
    Ok(())
}

async fn create(state: &Arc<State>, org: &str, body: Map<String, Value>) -> ApiResult {
    if string_field(&body, "url")?.is_none() {
        return Err(ApiError::bad("'url' is required"));
    }
    if body.get("events").is_none() {
        return Err(ApiError::bad("'events' is required, e.g. [\"tunnel.connected\", \"tunnel.disconnected\"]"));
    }
    let now = super::clock::now_rfc3339();
    let mut w = WebhookRecord {
        id: names::webhook_id(),
        org_id: org.to_owned(),
        name: String::new(),
        url: String::new(),
        events: Vec::new(),
        group: None,
        enabled: true,
        custom_headers: Vec::new(),
        signing_key: sign::generate_key(),
        created_at: now.clone(),
        updated_at: now,
    };
    apply(state, &mut w, &body)?;
    if w.name.is_empty() {
        w.name = reqwest::Url::parse(&w.url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
    }
    let key = w.signing_key.clone();
    let w = save(state, w).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({ "webhook": webhook_json(&w, Health::default()), "signingKey": key }),
    ))
}

async fn update(state: &Arc<State>, org: &str, id: &str, body: Map<String, Value>) -> ApiResult {
    let _one_at_a_time = state.webhook_writes.lock().await;
    let mut w = (*owned(state, org, id)?).clone();
    if body.is_empty() {
        return Err(ApiError::bad(format!("nothing to update: send any of {}", FIELDS.join(", "))));
    }
    apply(state, &mut w, &body)?;
    w.updated_at = super::clock::now_rfc3339();
    let w = save(state, w).await?;
    Ok(ok(json!({ "webhook": webhook_json(&w, health_of(state, org, &w.id).await) })))
}

/// Sends a sample of each selected event once, concurrently; nothing is logged.
async fn test(state: &Arc<State>, org: &str, id: &str) -> ApiResult {
    let w = owned(state, org, id)?;
    let sends = w.events.iter().filter_map(|e| EventKind::parse(e)).map(|kind| {
        let (state, w) = (state.clone(), w.clone());
        async move { (kind, state.notifier.send_test(&w, kind).await) }
    });
    let results: Vec<Value> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|(kind, a)| {
            json!({
                "event": kind.as_str(),
                "ok": a.status.is_some_and(|s| (200..300).contains(&s)),
                "status": a.status,
                "responseBody": a.response,
                "error": a.error,
                "durationMs": a.duration.as_millis() as u64,
            })
        })
        .collect();
    Ok(ok(json!({ "results": results })))
}

fn rfc3339_ms(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn delivery_json(d: &DeliveryRecord) -> Value {
    json!({
        "id": d.id,
        "event": d.event,
        "payload": serde_json::from_str::<Value>(&d.payload).unwrap_or(Value::String(d.payload.clone())),
        "status": d.state.as_str(),
        "attempts": d.attempts,
        "lastResponseStatus": d.last_status,
        "lastResponseBody": d.last_response,
        "lastError": d.last_error,
        "durationMs": d.duration_ms,
        "createdAt": rfc3339_ms(d.created_ms),
        "updatedAt": rfc3339_ms(d.updated_ms),
    })
}

async fn deliveries(state: &Arc<State>, org: &str, id: &str) -> ApiResult {
    let w = owned(state, org, id)?;
    let since = now_ms() - DAY_MS;
    let wid = w.id.clone();
    let mut rows = state.store.run(move |s| s.deliveries_since(&wid, since, MAX_LISTED + 1)).await?;
    // Said, not cut silently: health counts them all.
    let truncated = rows.len() > MAX_LISTED;
    rows.truncate(MAX_LISTED);
    Ok(ok(json!({ "deliveries": rows.iter().map(delivery_json).collect::<Vec<_>>(), "truncated": truncated })))
}
