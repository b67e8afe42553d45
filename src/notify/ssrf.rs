//! Safe destinations: webhook URLs must not reach the server's own network.
//!
//! Checked twice: on the URL when a webhook is saved (scheme, literal
//! addresses), and on every resolved address at delivery time through a DNS
//! resolver that drops forbidden addresses, so a name that re-resolves to
//! `127.0.0.1` later (DNS rebinding) is still refused. `--allow-private-webhooks`
//! turns both off (needed when everything runs on one machine).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Whether a webhook may not be delivered to `ip`: loopback, private, link-local
/// (which holds cloud metadata at 169.254.169.254), shared (CGNAT), multicast,
/// broadcast, unspecified, reserved and documentation ranges, and the IPv6
/// equivalents including IPv4-mapped, -translated and NAT64 forms of those,
/// and the local-use NAT64 range.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10, shared address space
        || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24, IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // 198.18.0.0/15, benchmarking
        || a >= 240 // reserved
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let s = ip.segments();
    // 64:ff9b::/96 (NAT64) and ::/96 (IPv4-compatible) embed an IPv4 address.
    if (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4]) || s[..6] == [0; 6] {
        let v4 = embedded_v4(s[6], s[7]);
        if s[..6] == [0; 6] && (ip.is_loopback() || ip.is_unspecified()) {
            return true;
        }
        return forbidden_v4(v4);
    }
    // ::ffff:0:0/96 (IPv4-translated, RFC 2765) embeds one too.
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return forbidden_v4(embedded_v4(s[6], s[7]));
    }
    // 64:ff9b:1::/48 (local-use NAT64, RFC 8215) is a private translator's:
    // never a public destination, whatever address it embeds.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        return true;
    }
    // 2001::/32 (Teredo) tunnels to the IPv4 address it embeds (obfuscated):
    // refused whole, as no webhook receiver needs it.
    if s[0] == 0x2001 && s[1] == 0 {
        return true;
    }
    // 2002::/16 (6to4) carries an IPv4 address in its next 32 bits, which a
    // 6to4 relay would deliver to.
    if s[0] == 0x2002 {
        let v4 = embedded_v4(s[1], s[2]);
        if forbidden_v4(v4) {
            return true;
        }
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local (fd00:ec2::254 is AWS metadata)
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x3fff && s[1] < 0x1000) // 3fff::/20, documentation (RFC 9637)
        || (s[0] == 0x0100 && s[1..4] == [0; 3]) // 100::/64, discard-only
        || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0010) // 2001:10::/28, ORCHID
        || (s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0020) // 2001:20::/28, ORCHIDv2
        || (s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0) // 2001:2::/48, benchmarking
        || s[0] == 0x5f00 // 5f00::/16, SRv6 segment identifiers
}

/// The IPv4 address an IPv6 address embeds in two of its 16-bit segments.
fn embedded_v4(high: u16, low: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(high) << 16) | u32::from(low))
}

/// Checks a webhook URL when it is saved: http(s), a host, and no literal
/// forbidden address unless `allow_private`. Returns the reason it is refused.
pub fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    // The parser drops tabs and line breaks anywhere and spaces at the ends:
    // the URL stored would not be the one deliveries go to.
    if url.chars().any(char::is_control) || url.trim() != url {
        return Err("\"url\" must not contain control characters or surrounding spaces".into());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("\"url\" is not a valid URL: {e}"))?;
    // The host right after `//`: a parser that follows browsers reads
    // `http:///x` and `http:x` as `http://x/`, so the URL stored would not be
    // the one deliveries go to.
    if url.split_once("://").is_none_or(|(_, rest)| rest.starts_with(['/', '\\'])) {
        return Err("\"url\" must name its host right after the scheme's \"//\" (http://host/path)".into());
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("\"url\" must be http or https, not {}", parsed.scheme()));
    }
    if parsed.port() == Some(0) {
        return Err("\"url\" has port 0, which nothing listens on".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("\"url\" must not carry credentials; use customHeaders for an Authorization header".into());
    }
    let ip = match parsed.host() {
        None => return Err("\"url\" has no host".into()),
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            (!allow_private && (d == "localhost" || d.ends_with(".localhost")))
                .then_some(IpAddr::V4(Ipv4Addr::LOCALHOST))
        }
    };
    match ip {
        Some(ip) if !allow_private && is_forbidden(ip) => Err(format!(
            "\"url\" points to {ip}, a loopback, private or link-local address; \
             start the server with --allow-private-webhooks to allow it"
        )),
        _ => Ok(parsed),
    }
}

/// A resolver that drops forbidden addresses (unless `allow_private`), so that
/// every connection a delivery makes goes to a permitted address.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    /// Let private addresses through.
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs.iter().copied().filter(|a| allow || !is_forbidden(a.ip())).collect();
            if allowed.is_empty() && !addrs.is_empty() {
                return Err(Box::new(Refused(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A name resolved only to forbidden addresses.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to loopback, private or link-local addresses (refused; see --allow-private-webhooks)")]
pub struct Refused(pub String);

/// Whether a reqwest error came from [`GuardedResolver`] refusing the destination.
pub fn is_refusal(err: &reqwest::Error) -> bool {
    crate::caused_by::<Refused>(err)
}

/// The resolver as reqwest wants it.
pub fn resolver(allow_private: bool) -> Arc<GuardedResolver> {
    Arc::new(GuardedResolver { allow_private })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::7f00:1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "64:ff9b:1::a00:1",
            "64:ff9b:1:2::808:808",
            "::ffff:0:a00:1",
            "::ffff:0:7f00:1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            // Reserved ranges a probe found accepted.
            "100::1",
            "2001:2::1",
            "2001:10::1",
            "2001:20::1",
            "3fff::1",
            "3fff:fff:ffff::1",
            "5f00::1",
        ] {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip} should be refused");
        }
        for ip in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::ffff:0:808:808",
            // Public neighbours of the reserved ranges.
            "2001:4860:4860::8888",
            "2001:500:88:200::8",
            "3fff:1000::1",
            "100:0:0:1::1",
        ] {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip} should be allowed");
        }
    }

    #[test]
    fn urls() {
        assert!(check_url("https://hooks.example.com/x", false).is_ok());
        for (url, why) in [
            ("ftp://example.com", "http or https"),
            ("not a url", "valid URL"),
            ("http://127.0.0.1:9/x", "--allow-private-webhooks"),
            ("http://[::1]/", "--allow-private-webhooks"),
            ("http://169.254.169.254/latest/meta-data", "--allow-private-webhooks"),
            ("http://localhost:8080/", "--allow-private-webhooks"),
            ("http://user:pw@example.com/", "credentials"),
            ("http://example.com:0/", "port 0"),
            // Read as http://x/ by the URL parser, as browsers do.
            ("http:///x", "right after"),
            ("https:x.example.com/hook", "right after"),
            ("http:\\\\x.example.com", "right after"),
            ("http://\t/x.example.com/hook", "control characters"),
            ("http://\n/x.example.com/hook", "control characters"),
            (" http://x.example.com/hook", "surrounding spaces"),
        ] {
            let err = check_url(url, false).expect_err(url);
            assert!(err.contains(why), "{url}: {err}");
        }
        assert!(check_url("http://127.0.0.1:9/x", true).is_ok());
    }

    #[tokio::test]
    async fn resolver_drops_private_addresses() {
        use reqwest::dns::Resolve;
        let name = |s: &str| reqwest::dns::Name::from_str(s).unwrap();
        use std::str::FromStr;
        let guarded = GuardedResolver { allow_private: false };
        let err = guarded.resolve(name("localhost")).await.err().expect("localhost refused");
        assert!(err.to_string().contains("refused"), "{err}");
        let open = GuardedResolver { allow_private: true };
        let addrs: Vec<_> = open.resolve(name("localhost")).await.unwrap().collect();
        assert!(addrs.iter().any(|a| a.ip().is_loopback()));
    }
}
