//! A tunnel's `wsUrl` (seed 001: `ws://host/tunnels/{subdomain}/ws?tunnelId=…&token=…`),
//! checked when it is given rather than when it is dialled.
//!
//! The URL carries the tunnel's id and auth token: a client that takes one
//! must serve that tunnel with that token, so both are read out here for the
//! caller to compare with what else it was told.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a usable `wsUrl`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsUrlError {
    /// Not a URL at all.
    #[error(
        "not a URL ({0}): give the wsUrl the API printed, like ws://host/tunnels/<subdomain>/ws?tunnelId=…&token=…"
    )]
    NotAUrl(String),
    /// A URL, but not a WebSocket one.
    #[error("a wsUrl starts with ws:// or wss:// (this one with {0}://)")]
    Scheme(String),
    /// A query parameter the gateway needs is missing or empty.
    #[error("the wsUrl has no {0} query parameter: give it as the API printed it")]
    Missing(&'static str),
    /// A query parameter is given twice: which one the server reads is not ours to guess.
    #[error("the wsUrl gives {0} more than once")]
    Repeated(&'static str),
}

/// A parsed `wsUrl`. Its `Debug` and `Display` hide the token.
#[derive(Clone, PartialEq, Eq)]
pub struct WsUrl {
    url: String,
    tunnel_id: String,
    token: String,
}

impl WsUrl {
    /// The URL to dial, token included.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The tunnel it serves (`tunnelId`).
    pub fn tunnel_id(&self) -> &str {
        &self.tunnel_id
    }

    /// The auth token it presents (`token`).
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl FromStr for WsUrl {
    type Err = WsUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut url = url::Url::parse(s.trim()).map_err(|e| WsUrlError::NotAUrl(e.to_string()))?;
        if !matches!(url.scheme(), "ws" | "wss") {
            return Err(WsUrlError::Scheme(url.scheme().to_owned()));
        }
        if !url.has_host() {
            return Err(WsUrlError::NotAUrl("no host".into()));
        }
        url.set_fragment(None);
        let (mut tunnel_id, mut token) = (None, None);
        for (key, value) in url.query_pairs() {
            let (slot, name) = match key.as_ref() {
                "tunnelId" => (&mut tunnel_id, "tunnelId"),
                "token" => (&mut token, "token"),
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(WsUrlError::Repeated(name));
            }
        }
        let tunnel_id = tunnel_id.filter(|v| !v.is_empty()).ok_or(WsUrlError::Missing("tunnelId"))?;
        let token = token.filter(|v| !v.is_empty()).ok_or(WsUrlError::Missing("token"))?;
        // What `url` accepts and the WebSocket client's own parser (`http::Uri`)
        // refuses would otherwise fail on every attempt to dial.
        http::Uri::try_from(url.as_str()).map_err(|e| WsUrlError::NotAUrl(e.to_string()))?;
        Ok(Self { url: url.into(), tunnel_id, token })
    }
}

impl fmt::Display for WsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.url))
    }
}

impl fmt::Debug for WsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("WsUrl").field(&redact(&self.url)).finish()
    }
}

/// The URL without its token, for messages.
fn redact(url: &str) -> String {
    match url.split_once("token=") {
        Some((head, tail)) => {
            let rest = tail.find('&').map_or("", |i| &tail[i..]);
            format!("{head}token=…{rest}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_tunnel_and_token() {
        let url: WsUrl = "ws://127.0.0.1:8080/tunnels/a/ws?tunnelId=tun_1&token=hwt_x%2By".parse().unwrap();
        assert_eq!((url.tunnel_id(), url.token()), ("tun_1", "hwt_x+y"));
        assert_eq!(url.as_str(), "ws://127.0.0.1:8080/tunnels/a/ws?tunnelId=tun_1&token=hwt_x%2By");
        assert_eq!(url.to_string(), "ws://127.0.0.1:8080/tunnels/a/ws?tunnelId=tun_1&token=…");
        assert!(!format!("{url:?}").contains("hwt_"));
        let wss: WsUrl = "wss://h.example/p/tunnels/a/ws?token=t&tunnelId=i#frag".parse().unwrap();
        assert_eq!((wss.tunnel_id(), wss.as_str()), ("i", "wss://h.example/p/tunnels/a/ws?token=t&tunnelId=i"));
    }

    #[test]
    fn refuses_what_cannot_be_dialled() {
        let err = |s: &str| s.parse::<WsUrl>().unwrap_err();
        assert!(matches!(err("not a url"), WsUrlError::NotAUrl(_)));
        assert_eq!(err("http://h/tunnels/a/ws?tunnelId=i&token=t"), WsUrlError::Scheme("http".into()));
        assert_eq!(err("ws://h/tunnels/a/ws?token=t"), WsUrlError::Missing("tunnelId"));
        assert_eq!(err("ws://h/tunnels/a/ws?tunnelId=i&token="), WsUrlError::Missing("token"));
        assert_eq!(err("ws://h/x?tunnelId=i&token=t&token=u"), WsUrlError::Repeated("token"));
    }

    #[test]
    fn redact_hides_the_token() {
        assert_eq!(redact("ws://h/tunnels/a/ws?tunnelId=t&token=secret"), "ws://h/tunnels/a/ws?tunnelId=t&token=…");
        assert_eq!(redact("ws://h/x?token=s&b=1"), "ws://h/x?token=…&b=1");
    }
}
