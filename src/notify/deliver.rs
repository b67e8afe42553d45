//! One delivery attempt over HTTP: sign, send, classify the outcome.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::retry::{AttemptResult, parse_retry_after};
use super::{sign, ssrf};
use crate::error_chain;
use crate::store::WebhookRecord;

/// How much of a receiver's answer is kept for the delivery log.
pub const MAX_LOGGED_RESPONSE: usize = 1024;

/// Headers every delivery sets itself (lowercase): the signature's three, the
/// body's type and length, and what the HTTP client adds (`host`,
/// `user-agent`). The API refuses them as custom headers, and a webhook
/// stored before it did has them skipped here: ours always win.
pub const RESERVED_HEADERS: &[&str] =
    &["webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "content-length", "host", "user-agent"];

/// Whether `name` (any case) is one of [`RESERVED_HEADERS`].
pub fn is_reserved(name: &str) -> bool {
    RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// What an attempt produced, for the outbox.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The classified result, for the retry decision.
    pub result: AttemptResult,
    /// The answer's status, if any.
    pub status: Option<u16>,
    /// The start of the answer's body.
    pub response: Option<String>,
    /// Why there was no usable answer.
    pub error: Option<String>,
    /// Time taken.
    pub duration: Duration,
}

/// The HTTP client deliveries use: no proxies (they would bypass the address
/// checks), no redirects (a 3xx is an answer), and the guarded resolver.
pub fn client(allow_private: bool) -> reqwest::Client {
    crate::quic::tls::install_default_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(ssrf::resolver(allow_private))
        .user_agent(concat!("hookway/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client builds with the installed provider")
}

/// Sends `payload` to `webhook` once, signed as message `msg_id`.
pub async fn attempt(
    http: &reqwest::Client,
    webhook: &WebhookRecord,
    msg_id: &str,
    payload: &str,
    timeout: Duration,
    allow_private: bool,
) -> Attempt {
    let started = Instant::now();
    let failed = |result, error: String| Attempt {
        result,
        status: None,
        response: None,
        error: Some(error),
        duration: started.elapsed(),
    };
    // Literal addresses never reach the resolver: check them here too.
    if let Err(why) = ssrf::check_url(&webhook.url, allow_private) {
        return failed(AttemptResult::Refused, why);
    }
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let Some(signature) = sign::sign(&webhook.signing_key, msg_id, timestamp, payload.as_bytes()) else {
        return failed(AttemptResult::Refused, "the webhook's signing key is unusable; regenerate it".into());
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &webhook.custom_headers {
        if is_reserved(name) {
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(lower.as_bytes()), HeaderValue::from_str(value)) {
            // Refused by the API since; a webhook stored before may still have one.
            if !crate::headers::is_hop_by_hop(&n) && n != http::header::EXPECT {
                headers.append(n, v);
            }
        }
    }
    let ours = [
        ("content-type", "application/json".to_owned()),
        ("webhook-id", msg_id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ];
    for (name, value) in ours {
        debug_assert!(is_reserved(name), "{name} must be in RESERVED_HEADERS, or the API lets it be a custom header");
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    let sent = http.post(&webhook.url).headers(headers).body(payload.to_owned()).timeout(timeout).send().await;
    let mut resp = match sent {
        Ok(resp) => resp,
        Err(err) if ssrf::is_refusal(&err) => return failed(AttemptResult::Refused, error_chain(&err)),
        Err(err) if err.is_timeout() => return failed(AttemptResult::Timeout, format!("no answer within {timeout:?}")),
        Err(err) => return failed(AttemptResult::ConnectionError, error_chain(&err)),
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
    // Keep the start of the body; never wait long for the rest.
    let mut body = Vec::new();
    let left = timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(100));
    let _ = tokio::time::timeout(left, async {
        while body.len() < MAX_LOGGED_RESPONSE {
            match resp.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
    })
    .await;
    body.truncate(MAX_LOGGED_RESPONSE);
    Attempt {
        result: AttemptResult::Status(status, retry_after),
        status: Some(status),
        response: Some(String::from_utf8_lossy(&body).into_owned()),
        error: None,
        duration: started.elapsed(),
    }
}
