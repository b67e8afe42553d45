//! The four notification events and seed 000's payload.

use serde::Serialize;
use time::OffsetDateTime;
use time::macros::format_description;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// A tunnel went live (its first client connected).
    TunnelConnected,
    /// A tunnel went offline (its last client left).
    TunnelDisconnected,
    /// A client authenticated with a token.
    TokenConnected,
    /// That client's connection ended.
    TokenDisconnected,
}

impl EventKind {
    /// All events, in API order.
    pub const ALL: [EventKind; 4] = [
        EventKind::TunnelConnected,
        EventKind::TunnelDisconnected,
        EventKind::TokenConnected,
        EventKind::TokenDisconnected,
    ];

    /// The API name (`tunnel.connected`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::TunnelConnected => "tunnel.connected",
            EventKind::TunnelDisconnected => "tunnel.disconnected",
            EventKind::TokenConnected => "token.connected",
            EventKind::TokenDisconnected => "token.disconnected",
        }
    }

    /// Parses an API name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Seed 000's `Type`.
    pub fn payload_type(self) -> &'static str {
        match self {
            EventKind::TunnelConnected | EventKind::TunnelDisconnected => "Tunnel",
            EventKind::TokenConnected | EventKind::TokenDisconnected => "Token",
        }
    }

    /// The disconnect this event leaves owed (a connect, +1) or settles (a
    /// disconnect, −1): what a server that dies in between must still send.
    pub fn owes(self) -> (EventKind, i64) {
        match self {
            EventKind::TunnelConnected => (EventKind::TunnelDisconnected, 1),
            EventKind::TokenConnected => (EventKind::TokenDisconnected, 1),
            EventKind::TunnelDisconnected | EventKind::TokenDisconnected => (self, -1),
        }
    }

    /// Seed 000's `Status`.
    pub fn payload_status(self) -> &'static str {
        match self {
            EventKind::TunnelConnected | EventKind::TokenConnected => "Connected",
            EventKind::TunnelDisconnected | EventKind::TokenDisconnected => "Disconnected",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Seed 000's `WebHookRequest`, field names and order as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Payload {
    /// Tunnel id, or the token's public id (never the token).
    #[serde(rename = "Id")]
    pub id: String,
    /// UTC, ISO 8601 with microseconds and no offset: `2024-04-29T12:35:17.154580`.
    #[serde(rename = "ActionDate")]
    pub action_date: String,
    /// `Tunnel` or `Token`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// `Connected` or `Disconnected`.
    #[serde(rename = "Status")]
    pub status: String,
}

impl Payload {
    /// The payload of `kind` about `id`, at `at`.
    pub fn new(kind: EventKind, id: &str, at: OffsetDateTime) -> Self {
        Self {
            id: id.to_owned(),
            action_date: action_date(at),
            kind: kind.payload_type().to_owned(),
            status: kind.payload_status().to_owned(),
        }
    }

    /// The JSON body sent.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `2024-04-29T12:35:17.154580`: seed 000's format (UTC, microseconds, no offset).
pub fn action_date(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.format(format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]"))
        .unwrap_or_default()
}

/// The public identifier of a token: `tok_` and the first 12 bytes of its
/// SHA-256 in hex. Stable for a token, useless to recover it.
pub fn token_public_id(token_hash: &[u8; 32]) -> String {
    format!("tok_{}", hex::encode(&token_hash[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_matches_seed_000() {
        let at = time::macros::datetime!(2024-04-29 12:35:17.154580 UTC);
        let p = Payload::new(EventKind::TokenDisconnected, "9xknivVmUWwu1dqBOHRybM78", at);
        assert_eq!(
            p.to_json(),
            r#"{"Id":"9xknivVmUWwu1dqBOHRybM78","ActionDate":"2024-04-29T12:35:17.154580","Type":"Token","Status":"Disconnected"}"#
        );
        let p = Payload::new(EventKind::TunnelConnected, "tun_x", time::macros::datetime!(2024-01-02 03:04:05 +02:00));
        assert_eq!(
            (p.action_date.as_str(), p.kind.as_str(), p.status.as_str()),
            ("2024-01-02T01:04:05.000000", "Tunnel", "Connected")
        );
    }

    #[test]
    fn names_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("tunnel.exploded"), None);
        assert_eq!(token_public_id(&[0xab; 32]), "tok_abababababababababababab");
    }
}
