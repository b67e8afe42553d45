//! Raw bytes as a request to a tunnel with every inbound option (seed 004):
//! a query and an `Authorization` value, screened and masked for the
//! capture. Shared by the `inbound` fuzz target and the main crate's
//! `tests/fuzz_corpus.rs`, which includes this file by path.
//!
//! Input: the first byte picks the method and the verification kind; the
//! rest is the query, then, after the first `\n`, the `Authorization` value.

use hookway::inbound::{BasicAuth, InboundConfig, Rules, Verdict, Verification, VerificationKind};
use http::{HeaderValue, Method};

/// What the screen made of an input (the corpus must reach each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Forwarded with the right credentials.
    Authed,
    /// Refused: no or wrong credentials.
    Unauthorized,
    /// Facebook's handshake answered.
    Challenge,
    /// Fitbit's handshake answered.
    Verified,
    /// A handshake with a wrong code.
    Failed,
}

/// The code both handshakes are set up with.
const CODE: &str = "tok";

/// Screens `data`; panics if a verdict is not earned or a code survives masking.
pub fn check(data: &[u8]) -> Outcome {
    let Some((&first, rest)) = data.split_first() else { return Outcome::Unauthorized };
    let method = [Method::GET, Method::POST, Method::HEAD, Method::PUT][usize::from(first & 3)].clone();
    let kind = if first & 4 == 0 { VerificationKind::Facebook } else { VerificationKind::Fitbit };
    let (query, auth) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    let query = std::str::from_utf8(query).ok();
    let auth = auth.and_then(|a| HeaderValue::from_bytes(a).ok());
    let rules = Rules::new(InboundConfig {
        basic_auth: Some(BasicAuth::new("alice", "s3cret").unwrap()),
        verification: Some(Verification::new(kind, CODE).unwrap()),
        ..Default::default()
    });
    let pairs = || form_pairs(query.unwrap_or_default());
    let outcome = match rules.screen(&method, query, auth.as_ref()) {
        Verdict::Pass { authenticated } => {
            assert!(authenticated, "basic auth is set: a pass is by the credential");
            let given = auth.as_ref().map(|a| a.as_bytes().to_vec()).unwrap_or_default();
            assert!(given.len() > 6, "a pass without credentials: {given:?}");
            Outcome::Authed
        }
        Verdict::Unauthorized => Outcome::Unauthorized,
        Verdict::Challenge(challenge) => {
            assert_eq!(kind, VerificationKind::Facebook);
            assert!(challenge.len() <= 256, "a challenge echoed whatever its length");
            assert!(pairs().iter().any(|(k, v)| k == "hub.verify_token" && v == CODE), "no right token: {query:?}");
            Outcome::Challenge
        }
        Verdict::Verified => {
            assert_eq!(kind, VerificationKind::Fitbit);
            assert!(pairs().iter().any(|(k, v)| k == "verify" && v == CODE), "no right code: {query:?}");
            Outcome::Verified
        }
        Verdict::VerificationFailed(failed) => {
            assert_eq!(failed, kind);
            Outcome::Failed
        }
        Verdict::Throttled { .. } => panic!("no rate limit is set"),
    };
    // The capture's target: the code's field masked wherever it is, the
    // rest as it came.
    let field = if kind == VerificationKind::Facebook { "hub.verify_token" } else { "verify" };
    let target = format!("/p?{}", query.unwrap_or_default());
    if let Some(masked) = rules.masked(target.as_bytes()) {
        let (_, masked_query) = masked.split_once('?').expect("a query is kept");
        for (k, v) in form_pairs(masked_query) {
            assert!(k != field || v == "(masked)", "{field} survived masking: {masked}");
        }
        assert_eq!(masked.split('&').count(), target.split('&').count(), "pairs kept: {target} → {masked}");
    } else if query.is_some() {
        assert!(!pairs().iter().any(|(k, _)| k == field), "{field} left unmasked: {target}");
    }
    outcome
}

/// A query's pairs, decoded as the screen decodes them.
fn form_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}
