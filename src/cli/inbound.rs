//! The inbound options' flags (seed 004), for `start`, `tunnels create` and
//! `tunnels update`, as fields of the API's create and update bodies.

use clap::Args;
use hookway::inbound::{OfflineReply, RateLimit};
use serde_json::{Map, Value, json};

/// Options a new tunnel may have (`start`, `tunnels create`).
#[derive(Args, Debug, Default)]
pub struct InboundArgs {
    /// Require HTTP basic auth from every caller, as USER:PASSWORD (either may be empty, like
    /// ":secret"). The app then never sees the Authorization header. Mind that a password on the
    /// command line is visible to other users of the machine.
    #[arg(long, value_name = "USER:PASSWORD", value_parser = basic_auth)]
    pub basic_auth: Option<(String, String)>,
    /// Answer a sender's verification handshake at the server, even while no client is
    /// connected: facebook:VERIFY_TOKEN (GET ?hub.mode=subscribe&hub.verify_token=… answered
    /// with hub.challenge) or fitbit:CODE (GET ?verify=CODE answered 204, a wrong code 404).
    #[arg(long, value_name = "KIND:CODE", value_parser = verification)]
    pub verify: Option<(String, String)>,
    /// Throttle: like 100/10s (also 60/1m, 1000/1h, 5/1d), bursts of up to 100, then 10 a second
    /// on average (one back every window/N); past it, 429 with Retry-After.
    #[arg(long, value_name = "N/WINDOW", value_parser = RateLimit::parse)]
    pub rate_limit: Option<RateLimit>,
    /// While no client is connected, answer with this status (like 202) instead of 503, so that a
    /// sender does not disable the endpoint; the requests are recorded, to be replayed later.
    #[arg(long, value_name = "STATUS", value_parser = offline_reply)]
    pub offline_reply: Option<OfflineReply>,
}

impl InboundArgs {
    /// The create or update body's fields for the options given.
    pub fn fields(&self) -> Map<String, Value> {
        let mut body = Map::new();
        if let Some((username, password)) = &self.basic_auth {
            body.insert("basicAuth".into(), json!({ "username": username, "password": password }));
        }
        if let Some((kind, code)) = &self.verify {
            body.insert("verification".into(), json!({ "type": kind, "code": code }));
        }
        if let Some(limit) = self.rate_limit {
            body.insert("rateLimit".into(), json!(limit));
        }
        if let Some(reply) = self.offline_reply {
            body.insert("offlineReply".into(), json!(reply));
        }
        body
    }

    /// The options given, in a line for `start`'s banner (never a secret).
    pub fn summary(&self) -> Option<String> {
        summary(&Value::Object(self.fields()))
    }
}

/// A tunnel's inbound options in one line, for the banner of `start` and
/// `tunnels connect`, from the API's fields (a tunnel as the API shows it, or
/// the body that set them): without their secrets, none if it has none.
pub fn summary(t: &Value) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(user) = t["basicAuth"]["username"].as_str() {
        parts.push(if user.is_empty() {
            "basic auth (a password)".to_owned()
        } else {
            format!("basic auth (user {})", super::inspect_cli::records::clean(user))
        });
    }
    if let Some(kind) = t["verification"]["type"].as_str() {
        parts.push(format!("{} handshakes answered", super::inspect_cli::records::clean(kind)));
    }
    if let (Some(n), Some(secs)) = (t["rateLimit"]["requests"].as_u64(), t["rateLimit"]["windowSeconds"].as_u64()) {
        parts.push(format!("rate limit {n}/{secs} s"));
    }
    if let Some(status) = t["offlineReply"]["status"].as_u64() {
        parts.push(format!("offline reply {status}"));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Turning options off (`tunnels update`).
#[derive(Args, Debug, Default)]
pub struct InboundOffArgs {
    /// Stop requiring basic auth.
    #[arg(long, conflicts_with = "basic_auth")]
    pub no_basic_auth: bool,
    /// Stop answering verification handshakes (they reach the app again).
    #[arg(long, conflicts_with = "verify")]
    pub no_verify: bool,
    /// Stop throttling.
    #[arg(long, conflicts_with = "rate_limit")]
    pub no_rate_limit: bool,
    /// Answer 503 again while no client is connected.
    #[arg(long, conflicts_with = "offline_reply")]
    pub no_offline_reply: bool,
}

impl InboundOffArgs {
    /// Adds a null for each option turned off to `body`.
    pub fn add_to(&self, body: &mut Map<String, Value>) {
        for (off, field) in [
            (self.no_basic_auth, "basicAuth"),
            (self.no_verify, "verification"),
            (self.no_rate_limit, "rateLimit"),
            (self.no_offline_reply, "offlineReply"),
        ] {
            if off {
                body.insert(field.into(), Value::Null);
            }
        }
    }
}

/// An HTTP status for `--offline-reply`.
fn offline_reply(s: &str) -> Result<OfflineReply, String> {
    let status = s.parse().map_err(|_| format!("'{s}' is no HTTP status: give one like 202"))?;
    OfflineReply { status }.validate()
}

/// `USER:PASSWORD`, split at the first colon (a user name has none).
pub(crate) fn basic_auth(s: &str) -> Result<(String, String), String> {
    let (user, password) =
        s.split_once(':').ok_or("give USER:PASSWORD (either may be empty: \"alice:\" or \":secret\")")?;
    hookway::inbound::BasicAuth::new(user, password)?;
    Ok((user.to_owned(), password.to_owned()))
}

/// `facebook:CODE` or `fitbit:CODE`.
fn verification(s: &str) -> Result<(String, String), String> {
    let (kind, code) = s.split_once(':').ok_or("give KIND:CODE, like facebook:my-verify-token or fitbit:CODE")?;
    let kind = kind.to_ascii_lowercase();
    if !matches!(kind.as_str(), "facebook" | "fitbit") {
        return Err(format!("'{kind}' is no verification this server answers: facebook or fitbit"));
    }
    if code.is_empty() {
        return Err("the verification code is empty".into());
    }
    Ok((kind, code.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_the_apis_fields() {
        let args = InboundArgs {
            basic_auth: Some(basic_auth("alice:pa:ss").unwrap()),
            verify: Some(verification("Facebook:tok").unwrap()),
            rate_limit: Some(RateLimit::parse("100/10s").unwrap()),
            offline_reply: Some(offline_reply("202").unwrap()),
        };
        assert_eq!(
            Value::Object(args.fields()),
            json!({
                "basicAuth": {"username": "alice", "password": "pa:ss"},
                "verification": {"type": "facebook", "code": "tok"},
                "rateLimit": {"requests": 100, "windowSeconds": 10},
                "offlineReply": {"status": 202},
            })
        );
        assert!(InboundArgs::default().fields().is_empty());
        let line = args.summary().unwrap();
        assert_eq!(
            line,
            "basic auth (user alice), facebook handshakes answered, rate limit 100/10 s, offline reply 202"
        );
        assert!(!line.contains("pa:ss") && !line.contains("tok"), "{line}");
        assert_eq!(InboundArgs::default().summary(), None);
        let mut body = Map::new();
        InboundOffArgs { no_basic_auth: true, no_rate_limit: true, ..Default::default() }.add_to(&mut body);
        assert_eq!(Value::Object(body), json!({"basicAuth": null, "rateLimit": null}));
    }

    #[test]
    fn bad_flags_say_what_to_give() {
        assert!(basic_auth("alice").unwrap_err().contains("USER:PASSWORD"));
        assert!(basic_auth(":").unwrap_err().contains("a username, a password or both"));
        assert_eq!(basic_auth(":secret").unwrap(), (String::new(), "secret".into()));
        assert!(verification("alexa:x").unwrap_err().contains("facebook or fitbit"));
        assert!(verification("fitbit:").unwrap_err().contains("empty"));
        assert!(verification("fitbit").unwrap_err().contains("KIND:CODE"));
        assert!(offline_reply("ok").unwrap_err().contains("like 202"));
        assert!(offline_reply("302").unwrap_err().contains("200-299 or 400-599"));
    }
}
