//! The edge's answers for a tunnel's inbound options (seed 004; the rules are
//! in [`crate::inbound`]).

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use super::http::{Body, EdgeErrorKind, edge_error, full};
use crate::inbound::{OfflineReply, Rules, Verdict, VerificationKind};

/// The edge's answer for `verdict`, None for [`Verdict::Pass`]. Every
/// answer says in `x-hookway-error` or `x-hookway-verification` that it came
/// from the edge, and the capture records its kind as the outcome.
pub fn answer(verdict: Verdict, rules: &Rules) -> Option<Response<Body>> {
    let resp = match verdict {
        Verdict::Pass { .. } => return None,
        Verdict::Throttled { retry_after } => {
            let limit = rules.config().rate_limit.map_or_else(String::new, |l| {
                format!(": this tunnel takes {} requests per {} s", l.requests, l.window_seconds)
            });
            let mut resp = edge_error(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                format_args!("Over rate limit, request throttled{limit}"),
            );
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            resp
        }
        Verdict::Unauthorized => {
            let mut resp = edge_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this tunnel needs HTTP basic auth: the Authorization header was missing or wrong",
            );
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="hookway", charset="UTF-8""#),
            );
            resp
        }
        Verdict::Challenge(challenge) => verified(StatusCode::OK, VerificationKind::Facebook, challenge.into()),
        Verdict::Verified => verified(StatusCode::NO_CONTENT, VerificationKind::Fitbit, Bytes::new()),
        Verdict::VerificationFailed(VerificationKind::Facebook) => edge_error(
            StatusCode::FORBIDDEN,
            "verification-failed",
            "Facebook verification failed: it needs hub.mode=subscribe, hub.verify_token with this tunnel's code and a \
             hub.challenge of at most 256 characters",
        ),
        // Fitbit checks that a wrong code gets a 404.
        Verdict::VerificationFailed(VerificationKind::Fitbit) => edge_error(
            StatusCode::NOT_FOUND,
            "verification-failed",
            "Fitbit verification: the verify code does not match this tunnel's",
        ),
    };
    Some(resp)
}

/// The answer while no client is connected, for a tunnel that has an
/// offline reply: its status, saying what happened in a line, and recorded
/// as `tunnel-offline` like the 503 it stands for (so it can be replayed).
pub fn offline_reply(reply: OfflineReply, subdomain: &str) -> Response<Body> {
    let text = format!(
        "hookway: tunnel '{subdomain}' is offline; the request was recorded, to be replayed once its client is back\n"
    );
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    // (204, 205 and 304 carry no content, RFC 9110 §15: hyper drops a body
    // from the first and last, and sent one with a 205.)
    let bodiless = [StatusCode::NO_CONTENT, StatusCode::RESET_CONTENT, StatusCode::NOT_MODIFIED].contains(&status);
    let mut resp = Response::new(if bodiless { full(Bytes::new()) } else { full(text) });
    *resp.status_mut() = status;
    resp.extensions_mut().insert(EdgeErrorKind("tunnel-offline"));
    let h = resp.headers_mut();
    if !bodiless {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    }
    h.insert("x-hookway-offline", HeaderValue::from_static("recorded"));
    resp
}

/// A handshake's answer: `status` with `body`, marked as the edge's.
fn verified(status: StatusCode, kind: VerificationKind, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.extensions_mut().insert(EdgeErrorKind("verified"));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    // The challenge is the caller's own text: never to be read as markup.
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert("x-hookway-verification", HeaderValue::from_static(kind.as_str()));
    resp
}
