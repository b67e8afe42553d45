//! A tunnel's inbound options (seed 004): what the edge answers by itself,
//! before a request reaches the client. Verification handshakes that a
//! sender makes before it sends webhooks (Facebook, Fitbit), HTTP basic auth
//! in front of the app, and throttling. Each is off until a tunnel's owner
//! sets it, so a tunnel without them costs one atomic load per request.
//!
//! Pure: [`Rules::screen`] reads a request's method, query and
//! `Authorization`, and returns a [`Verdict`] that the edge turns into a
//! response. Secrets (the basic auth password, the verification code) are
//! kept as salted HMAC-SHA256 digests, compared in constant time, and never
//! shown again.

use std::num::NonZeroU32;
use std::time::Duration;

use base64::Engine as _;
use governor::{DefaultDirectRateLimiter, Quota, clock::Clock as _};
use hmac::{Hmac, Mac};
use http::{HeaderValue, Method};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// A tunnel's inbound options, as stored and as the API takes them apart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundConfig {
    /// Basic auth every request must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// A verification handshake the edge answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// At most so many requests in a window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// What the edge answers while no client is connected, instead of 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_reply: Option<OfflineReply>,
}

impl InboundConfig {
    /// Whether no option is set.
    pub fn is_empty(&self) -> bool {
        self.basic_auth.is_none()
            && self.verification.is_none()
            && self.rate_limit.is_none()
            && self.offline_reply.is_none()
    }
}

/// The status the edge answers with while no client is connected (seed
/// 004's reply status code): a sender that disables an endpoint after a run
/// of failures (most do) sees a success, and the request is captured, to be
/// replayed once the laptop is back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OfflineReply {
    /// 200 to 599.
    pub status: u16,
}

impl OfflineReply {
    /// Checks the status: a final one (not 1xx), and no redirect (a sender
    /// would follow it elsewhere).
    pub fn validate(self) -> Result<Self, String> {
        if (200..300).contains(&self.status) || (400..600).contains(&self.status) {
            Ok(self)
        } else {
            Err("an offline reply's status is 200-299 or 400-599".into())
        }
    }
}

/// Basic auth: the user name in clear (shown by the API), `user:password` as
/// a salted digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicAuth {
    /// Shown by the API; may be empty (a password alone).
    pub username: String,
    /// The digest of `username:password`.
    pub secret: SaltedDigest,
}

impl BasicAuth {
    /// Basic auth for `username` and `password`. Either may be empty, not
    /// both; a user name cannot hold a colon (RFC 7617 §2).
    pub fn new(username: &str, password: &str) -> Result<Self, String> {
        if username.is_empty() && password.is_empty() {
            return Err("basic auth needs a username, a password or both".into());
        }
        if username.contains(':') {
            return Err("a basic auth username cannot contain ':' (RFC 7617)".into());
        }
        if username.chars().chain(password.chars()).any(char::is_control) {
            return Err("a basic auth username or password cannot contain control characters".into());
        }
        if username.len() > MAX_SECRET_LEN || password.len() > MAX_SECRET_LEN {
            return Err(format!("a basic auth username or password is at most {MAX_SECRET_LEN} bytes"));
        }
        Ok(Self {
            username: username.to_owned(),
            secret: SaltedDigest::of(format!("{username}:{password}").as_bytes()),
        })
    }
}

/// The services whose verification handshake the edge answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerificationKind {
    /// `GET ?hub.mode=subscribe&hub.verify_token=CODE&hub.challenge=N`,
    /// answered `200` with `N`; a wrong token gets a `403`.
    Facebook,
    /// `GET ?verify=CODE`, answered `204`; a wrong code gets the `404`
    /// Fitbit checks for.
    Fitbit,
}

impl VerificationKind {
    /// The API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Facebook => "facebook",
            Self::Fitbit => "fitbit",
        }
    }
}

/// A verification handshake: which, and its code as a salted digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// The service.
    pub kind: VerificationKind,
    /// The digest of the code (Facebook's "verify token").
    pub code: SaltedDigest,
}

impl Verification {
    /// A handshake of `kind` with `code`, which must not be empty.
    pub fn new(kind: VerificationKind, code: &str) -> Result<Self, String> {
        if code.is_empty() || code.len() > MAX_SECRET_LEN {
            return Err(format!("a verification code is 1 to {MAX_SECRET_LEN} bytes"));
        }
        Ok(Self { kind, code: SaltedDigest::of(code.as_bytes()) })
    }
}

/// At most `requests` in `window_seconds`, with bursts up to `requests`
/// (Losant's 100 calls in 10 s is `{"requests": 100, "windowSeconds": 10}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Requests allowed in a window, 1 to [`MAX_RATE_REQUESTS`].
    pub requests: u32,
    /// The window, 1 s to a day.
    pub window_seconds: u32,
}

/// Most requests a [`RateLimit`] window may allow.
pub const MAX_RATE_REQUESTS: u32 = 1_000_000;

impl RateLimit {
    /// Checks the bounds.
    pub fn validate(self) -> Result<Self, String> {
        if !(1..=MAX_RATE_REQUESTS).contains(&self.requests) {
            return Err(format!("a rate limit allows 1 to {MAX_RATE_REQUESTS} requests"));
        }
        if !(1..=86_400).contains(&self.window_seconds) {
            return Err("a rate limit's window is 1 to 86400 seconds".into());
        }
        Ok(self)
    }

    /// Parses the CLI's `N/WINDOW`: `100/10s`, `60/1m`, `1000/1h`, `5/1d`
    /// (a bare number is seconds).
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is no rate limit: give requests/window, like 100/10s, 60/1m or 1000/1h");
        let (requests, window) = s.split_once('/').ok_or_else(bad)?;
        let requests = requests.trim().parse().map_err(|_| bad())?;
        let window = window.trim();
        if window.is_empty() {
            return Err(bad());
        }
        let (digits, unit) = window.find(|c: char| !c.is_ascii_digit()).map_or((window, ""), |at| window.split_at(at));
        let n: u32 = if digits.is_empty() { 1 } else { digits.parse().map_err(|_| bad())? };
        let scale = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        Self { requests, window_seconds: n.checked_mul(scale).ok_or_else(bad)? }.validate()
    }
}

/// Longest secret or user name taken.
pub const MAX_SECRET_LEN: usize = 512;

/// Longest Facebook challenge echoed (it is a number in practice).
const MAX_CHALLENGE_LEN: usize = 256;

/// HMAC-SHA256 of a secret under a random salt of its own, hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaltedDigest {
    salt: String,
    digest: String,
}

type HmacSha256 = Hmac<Sha256>;

impl SaltedDigest {
    /// The digest of `secret` under a new salt.
    pub fn of(secret: &[u8]) -> Self {
        let salt: [u8; 16] = rand::random();
        Self { salt: hex::encode(salt), digest: hex::encode(digest(&salt, secret)) }
    }

    /// Whether `presented` is the secret, in constant time. A digest that
    /// does not decode (a damaged store) matches nothing.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let (Ok(salt), Ok(stored)) = (hex::decode(&self.salt), hex::decode(&self.digest)) else { return false };
        bool::from(digest(&salt, presented).as_slice().ct_eq(&stored))
    }
}

fn digest(salt: &[u8], secret: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(salt).expect("HMAC takes a key of any length");
    mac.update(secret);
    mac.finalize().into_bytes().into()
}

/// What the edge does with a request, by a tunnel's inbound options.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Forward it.
    Pass {
        /// Whether it passed by the tunnel's basic auth (else the tunnel has
        /// none). Either way, with basic auth set the edge takes
        /// `Authorization` off every request, whatever the verdict: it is
        /// the tunnel's credential, or a try at it, never one of the app's.
        authenticated: bool,
    },
    /// Over the rate limit: a `429`, to retry after so many seconds.
    Throttled {
        /// Whole seconds until a request is allowed again (at least 1).
        retry_after: u64,
    },
    /// No or wrong basic auth: a `401` with a `WWW-Authenticate` challenge.
    Unauthorized,
    /// Facebook's handshake with the right token: a `200` with this body.
    Challenge(String),
    /// Fitbit's handshake with the right code: a `204`.
    Verified,
    /// A handshake with a wrong code: Facebook `403`, Fitbit `404`.
    VerificationFailed(VerificationKind),
}

/// A tunnel's inbound options in force: the config, and the rate limit's state.
pub struct Rules {
    config: InboundConfig,
    /// Shared with the rules that replace these when the rate limit stays
    /// the same (a change of another option does not refill it).
    limiter: Option<std::sync::Arc<DefaultDirectRateLimiter>>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Rules {
    /// Rules for `config` that replace `previous`: the rate limit's
    /// allowance goes on as it was when the limit is the same.
    pub fn replacing(config: InboundConfig, previous: Option<&Rules>) -> Self {
        match previous {
            Some(old) if old.config.rate_limit == config.rate_limit => Self { config, limiter: old.limiter.clone() },
            _ => Self::new(config),
        }
    }

    /// Rules for `config`, with a full rate-limit allowance.
    pub fn new(config: InboundConfig) -> Self {
        let limiter = config.rate_limit.map(|limit| {
            // GCRA: one request back every window/requests, bursts of `requests`.
            let requests = NonZeroU32::new(limit.requests.max(1)).unwrap_or(NonZeroU32::MIN);
            let period = Duration::from_secs(limit.window_seconds.max(1).into()) / requests.get();
            let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
                .map_or_else(|| Quota::per_second(requests), |quota| quota.allow_burst(requests));
            std::sync::Arc::new(DefaultDirectRateLimiter::direct(quota))
        });
        Self { config, limiter }
    }

    /// The options.
    pub fn config(&self) -> &InboundConfig {
        &self.config
    }

    /// `target` (path and query) with the verification code's value masked,
    /// for the capture; None when it names no such field. Only that value
    /// changes: the rest of the query stays byte for byte as it came.
    pub fn masked(&self, target: &[u8]) -> Option<String> {
        let field = match self.config.verification.as_ref()?.kind {
            VerificationKind::Facebook => "hub.verify_token",
            VerificationKind::Fitbit => "verify",
        };
        let target = std::str::from_utf8(target).ok()?;
        let (path, query) = target.split_once('?')?;
        let mut found = false;
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| {
                let key = pair.split('=').next().unwrap_or_default();
                let decoded = form_urlencoded::parse(key.as_bytes()).next().map(|(k, _)| k);
                if decoded.as_deref() == Some(field) {
                    found = true;
                    format!("{key}=(masked)")
                } else {
                    pair.to_owned()
                }
            })
            .collect();
        found.then(|| format!("{path}?{}", pairs.join("&")))
    }

    /// What the edge does with a request of `method`, `query` and
    /// `authorization`: throttling first (every request counts, handshakes
    /// too), then a verification handshake (a sender's handshake carries no
    /// credentials of ours), then basic auth.
    pub fn screen(&self, method: &Method, query: Option<&str>, authorization: Option<&HeaderValue>) -> Verdict {
        if let Some(limiter) = &self.limiter {
            if let Err(not_until) = limiter.check() {
                let wait = not_until.wait_time_from(limiter.clock().now());
                let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Verdict::Throttled { retry_after: retry_after.max(1) };
            }
        }
        if let (Some(verification), &Method::GET, Some(query)) = (&self.config.verification, method, query) {
            if let Some(verdict) = handshake(verification, query) {
                return verdict;
            }
        }
        match &self.config.basic_auth {
            None => Verdict::Pass { authenticated: false },
            Some(auth) if basic_credentials(authorization).is_some_and(|given| auth.secret.matches(&given)) => {
                Verdict::Pass { authenticated: true }
            }
            Some(_) => Verdict::Unauthorized,
        }
    }
}

/// The verdict on a handshake of `verification`'s kind, if `query` is one.
fn handshake(verification: &Verification, query: &str) -> Option<Verdict> {
    let pairs = || form_urlencoded::parse(query.as_bytes());
    let failed = Some(Verdict::VerificationFailed(verification.kind));
    match verification.kind {
        VerificationKind::Facebook => {
            let mode = pairs().find(|(k, _)| k == "hub.mode")?.1;
            let token = pairs().find(|(k, _)| k == "hub.verify_token").map(|(_, v)| v);
            let challenge = pairs().find(|(k, _)| k == "hub.challenge").map(|(_, v)| v);
            match (mode.as_ref(), token, challenge) {
                ("subscribe", Some(token), Some(challenge))
                    if challenge.len() <= MAX_CHALLENGE_LEN && verification.code.matches(token.as_bytes()) =>
                {
                    Some(Verdict::Challenge(challenge.into_owned()))
                }
                _ => failed,
            }
        }
        VerificationKind::Fitbit => {
            let code = pairs().find(|(k, _)| k == "verify")?.1;
            if verification.code.matches(code.as_bytes()) { Some(Verdict::Verified) } else { failed }
        }
    }
}

/// The decoded `user:password` of a `Basic` `Authorization` (RFC 7617; the
/// scheme's name in any case).
fn basic_credentials(authorization: Option<&HeaderValue>) -> Option<Vec<u8>> {
    let value = authorization?.as_bytes();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let encoded = rest.trim_ascii();
    base64::engine::general_purpose::STANDARD.decode(encoded).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user_pass: &str) -> HeaderValue {
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_pass);
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
    }

    fn rules(config: InboundConfig) -> Rules {
        Rules::new(config)
    }

    const PASS: Verdict = Verdict::Pass { authenticated: false };
    const AUTHED: Verdict = Verdict::Pass { authenticated: true };

    #[test]
    fn no_options_pass_everything() {
        let r = rules(InboundConfig::default());
        assert_eq!(r.screen(&Method::GET, Some("hub.mode=subscribe"), Some(&basic("a:b"))), PASS);
        assert!(r.config().is_empty());
    }

    #[test]
    fn basic_auth_wants_the_pair_and_takes_the_header() {
        let r =
            rules(InboundConfig { basic_auth: Some(BasicAuth::new("alice", "s3cret").unwrap()), ..Default::default() });
        assert_eq!(r.screen(&Method::POST, None, Some(&basic("alice:s3cret"))), AUTHED);
        let lower = HeaderValue::from_str(&format!(
            "bAsIc  {}",
            base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
        ))
        .unwrap();
        assert_eq!(r.screen(&Method::POST, None, Some(&lower)), AUTHED, "the scheme in any case");
        for wrong in ["alice:s3cre", "alice:s3cret ", "bob:s3cret", "alice", ":s3cret", ""] {
            assert_eq!(r.screen(&Method::POST, None, Some(&basic(wrong))), Verdict::Unauthorized, "{wrong}");
        }
        assert_eq!(r.screen(&Method::POST, None, None), Verdict::Unauthorized);
        for junk in ["Bearer abc", "Basic", "Basic !!!", "Basicx YWxpY2U6czNjcmV0"] {
            let v = HeaderValue::from_static(junk);
            assert_eq!(r.screen(&Method::POST, None, Some(&v)), Verdict::Unauthorized, "{junk}");
        }
        // A user name alone expects an empty password, and the reverse (seed 004).
        let user_only =
            rules(InboundConfig { basic_auth: Some(BasicAuth::new("ci", "").unwrap()), ..Default::default() });
        assert_eq!(user_only.screen(&Method::GET, None, Some(&basic("ci:"))), AUTHED);
        assert_eq!(user_only.screen(&Method::GET, None, Some(&basic("ci:x"))), Verdict::Unauthorized);
        let pass_only =
            rules(InboundConfig { basic_auth: Some(BasicAuth::new("", "pw").unwrap()), ..Default::default() });
        assert_eq!(pass_only.screen(&Method::GET, None, Some(&basic(":pw"))), AUTHED);
    }

    #[test]
    fn bad_basic_auth_settings_are_refused() {
        assert!(BasicAuth::new("", "").unwrap_err().contains("username, a password or both"));
        assert!(BasicAuth::new("a:b", "c").unwrap_err().contains("':'"));
        assert!(BasicAuth::new("a", "b\nc").unwrap_err().contains("control"));
        assert!(BasicAuth::new(&"a".repeat(MAX_SECRET_LEN + 1), "b").is_err());
        assert!(Verification::new(VerificationKind::Fitbit, "").is_err());
    }

    #[test]
    fn a_secret_is_salted_and_never_kept_in_clear() {
        let (a, b) = (SaltedDigest::of(b"pw"), SaltedDigest::of(b"pw"));
        assert_ne!(a, b, "each secret has its own salt");
        assert!(a.matches(b"pw") && b.matches(b"pw") && !a.matches(b"pW"));
        let stored = serde_json::to_string(&BasicAuth::new("alice", "hunter2").unwrap()).unwrap();
        assert!(!stored.contains("hunter2"), "{stored}");
        let damaged = SaltedDigest { salt: "zz".into(), digest: "00".into() };
        assert!(!damaged.matches(b""), "a damaged digest matches nothing");
    }

    #[test]
    fn facebook_handshake_echoes_the_challenge_for_the_right_token() {
        let config = InboundConfig {
            verification: Some(Verification::new(VerificationKind::Facebook, "my token").unwrap()),
            basic_auth: Some(BasicAuth::new("alice", "pw").unwrap()),
            ..Default::default()
        };
        let r = rules(config);
        let ok = "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=my+token";
        assert_eq!(
            r.screen(&Method::GET, Some(ok), None),
            Verdict::Challenge("1158201444".into()),
            "no basic auth needed"
        );
        for bad in [
            "hub.mode=subscribe&hub.challenge=1&hub.verify_token=other",
            "hub.mode=subscribe&hub.challenge=1",
            "hub.mode=unsubscribe&hub.challenge=1&hub.verify_token=my%20token",
            "hub.mode=subscribe&hub.verify_token=my%20token",
        ] {
            assert_eq!(
                r.screen(&Method::GET, Some(bad), None),
                Verdict::VerificationFailed(VerificationKind::Facebook),
                "{bad}"
            );
        }
        let long = format!(
            "hub.mode=subscribe&hub.verify_token=my%20token&hub.challenge={}",
            "9".repeat(MAX_CHALLENGE_LEN + 1)
        );
        assert_eq!(r.screen(&Method::GET, Some(&long), None), Verdict::VerificationFailed(VerificationKind::Facebook));
        // Not a handshake: basic auth as usual.
        assert_eq!(r.screen(&Method::POST, Some(ok), None), Verdict::Unauthorized, "a POST is no handshake");
        assert_eq!(r.screen(&Method::GET, Some("x=1"), None), Verdict::Unauthorized);
        assert_eq!(r.screen(&Method::GET, Some("x=1"), Some(&basic("alice:pw"))), AUTHED);
    }

    #[test]
    fn a_handshakes_code_is_masked_for_the_capture() {
        let fb = rules(InboundConfig {
            verification: Some(Verification::new(VerificationKind::Facebook, "tok").unwrap()),
            ..Default::default()
        });
        let masked = fb.masked(b"/fb?hub.mode=subscribe&hub.verify_token=tok&hub.challenge=42").unwrap();
        assert_eq!(masked, "/fb?hub.mode=subscribe&hub.verify_token=(masked)&hub.challenge=42");
        // The rest as it came; an encoded or repeated key is masked too.
        let odd = fb.masked(b"/fb?a=%20x+y&flag&hub%2Everify_token=tok&hub.verify_token=again").unwrap();
        assert_eq!(odd, "/fb?a=%20x+y&flag&hub%2Everify_token=(masked)&hub.verify_token=(masked)");
        assert_eq!(fb.masked(b"/fb?x=1"), None);
        assert_eq!(fb.masked(b"/fb"), None);
        let fitbit = rules(InboundConfig {
            verification: Some(Verification::new(VerificationKind::Fitbit, "c0de").unwrap()),
            ..Default::default()
        });
        assert_eq!(fitbit.masked(b"/?verify=c0de").unwrap(), "/?verify=(masked)");
        assert_eq!(rules(InboundConfig::default()).masked(b"/?verify=c0de"), None);
    }

    #[test]
    fn fitbit_handshake_answers_204_or_404() {
        let r = rules(InboundConfig {
            verification: Some(Verification::new(VerificationKind::Fitbit, "c0ffee").unwrap()),
            ..Default::default()
        });
        assert_eq!(r.screen(&Method::GET, Some("verify=c0ffee"), None), Verdict::Verified);
        assert_eq!(
            r.screen(&Method::GET, Some("verify=wrong"), None),
            Verdict::VerificationFailed(VerificationKind::Fitbit)
        );
        assert_eq!(r.screen(&Method::GET, Some("other=1"), None), PASS);
        assert_eq!(r.screen(&Method::POST, Some("verify=c0ffee"), None), PASS, "notifications are POSTs");
    }

    #[test]
    fn throttling_allows_a_burst_then_says_when_to_retry() {
        let r = rules(InboundConfig {
            rate_limit: Some(RateLimit { requests: 3, window_seconds: 60 }),
            ..Default::default()
        });
        for _ in 0..3 {
            assert_eq!(r.screen(&Method::POST, None, None), PASS);
        }
        // One request back every 20 s.
        match r.screen(&Method::POST, None, None) {
            Verdict::Throttled { retry_after } => assert!((19..=20).contains(&retry_after), "{retry_after}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn another_options_change_does_not_refill_the_allowance() {
        let limited =
            InboundConfig { rate_limit: Some(RateLimit { requests: 1, window_seconds: 60 }), ..Default::default() };
        let r = rules(limited.clone());
        assert_eq!(r.screen(&Method::POST, None, None), PASS);
        let with_auth = InboundConfig { basic_auth: Some(BasicAuth::new("a", "b").unwrap()), ..limited };
        let r = Rules::replacing(with_auth.clone(), Some(&r));
        assert!(matches!(r.screen(&Method::POST, None, None), Verdict::Throttled { .. }), "still spent");
        let raised = InboundConfig { rate_limit: Some(RateLimit { requests: 2, window_seconds: 60 }), ..with_auth };
        let r = Rules::replacing(raised, Some(&r));
        assert_eq!(r.screen(&Method::POST, None, Some(&basic("a:b"))), AUTHED, "a new limit starts full");
    }

    #[test]
    fn rate_limits_parse_from_the_command_line() {
        for (s, requests, window_seconds) in
            [("100/10s", 100, 10), ("60/1m", 60, 60), ("1000/h", 1000, 3600), ("5/1d", 5, 86_400), ("7/30", 7, 30)]
        {
            assert_eq!(RateLimit::parse(s), Ok(RateLimit { requests, window_seconds }), "{s}");
        }
        for bad in ["", "100", "100/", "0/10s", "x/10s", "10/0s", "10/10y", "10/-1s", "10/99999999999s", "10/2d"] {
            assert!(RateLimit::parse(bad).is_err(), "{bad}");
        }
    }
}
