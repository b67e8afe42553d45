//! hookway: a self-hosted tunnel that gives a local server a public URL so it can
//! receive webhooks.
//!
//! The crate is layered so that the protocol can be tested, fuzzed and benchmarked
//! without any IO:
//! * [`wire`]: the frame protocol, sans IO;
//! * [`wsjson`]: seed 001's WebSocket-JSON messages for legacy clients, sans IO;
//! * [`quic`]: QUIC endpoints, TLS, and frames over QUIC streams;
//! * [`store`]: durable state (SQLite by default) behind a small trait;
//! * [`server`]: the HTTP edge, the REST API and the tunnel sessions;
//! * [`notify`]: status webhooks (signing, retries, safe destinations, delivery);
//! * [`client`]: the tunnel client and the REST API client used by the CLI;
//! * [`shutdown`]: the two-step stop (drain, then cut short) both ends share.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod headers;
pub mod inbound;
pub mod notify;
pub mod quic;
pub mod server;
pub mod shutdown;
pub mod store;
pub mod wire;
pub mod wsjson;

/// `err` and its causes on one line (`a: b: c`), each once. hyper's errors
/// display only their kind ("error reading a body from connection"); the cause
/// says what was wrong ("Invalid chunk size line"). Many errors already show
/// their source in their own message (`cannot listen on …: Address already in
/// use`): a cause the line already holds is not repeated.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    for cause in error_sources(err).skip(1) {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

/// `err`, then each of its causes in turn (what `Error::sources` will be,
/// once stable).
pub fn error_sources<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

/// Whether `err` or one of its causes is an `E`.
pub fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    error_sources(err).any(|e| e.is::<E>())
}

/// Whether `c` changes how a terminal shows the text around it: a control
/// character (a line break, a tab, the escape that starts a sequence which
/// clears the screen) or a bidirectional embedding, override or isolate
/// (U+202E and its kin turn the rest of a line around, "Trojan Source"; the
/// plain direction marks, which right-to-left names use, are kept). Names that one user
/// gives and others read in tables (tunnels, webhooks, organizations) refuse
/// them, and the CLI's tables show any stored before as U+FFFD.
pub fn rewrites_terminal(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A name users give and others read in tables (a tunnel's, a webhook's, an
/// organization's), trimmed; or why it cannot be one ("must …", for the
/// caller to prefix with what is named).
pub fn shown_name(name: &str, max_chars: usize) -> Result<&str, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.chars().count() > max_chars {
        return Err(format!("must be at most {max_chars} characters"));
    }
    if name.chars().any(rewrites_terminal) {
        return Err(
            "must not contain control characters (line breaks, tabs, escapes) or text-direction overrides".into()
        );
    }
    Ok(name)
}
