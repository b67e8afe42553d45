//! The caller's address behind reverse proxies (`--trusted-proxies`).
//!
//! Why: the usual deployment puts the server behind a TLS terminator (Caddy,
//! nginx), from whose address every request then comes: request records and
//! a WebSocket tunnel client's `clientIp` would all name the proxy. For a
//! request from a trusted proxy, the caller is the last address of
//! `X-Forwarded-For` that is not itself a trusted proxy, the rule of nginx's
//! `real_ip_recursive` and Caddy's `trusted_proxies`: the addresses left of
//! it were written by the caller, who can write anything there. A request
//! from any other peer is its own caller, whatever its headers say.
//!
//! Only the recorded caller changes: `X-Forwarded-For` still reaches the app
//! with the proxy's address appended, as every proxy in the chain does.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// The address that stands for `ip` wherever callers are counted: an IPv6
/// address's /64 (one host or network usually holds a whole /64, and a limit
/// per address would let it take a fresh one for every try), an IPv4 address
/// (or one mapped into IPv6, or translated by NAT64) itself.
pub fn counted_as(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            // NAT64's well-known prefix (RFC 6052): an IPv4 caller behind a
            // translator, each its own address.
            None if v6.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] => IpAddr::V4((u128::from(v6) as u32).into()),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

/// The proxies whose `X-Forwarded-For` is believed; none by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Trusts the peers in `nets`.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// Whether `ip` is a trusted proxy's (which speaks for many callers).
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        !self.0.is_empty() && self.trusts(ip.to_canonical())
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The caller of a request that came from `peer` with `headers`.
    pub fn caller(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if self.0.is_empty() || !self.trusts(peer) {
            return peer;
        }
        // Every `X-Forwarded-For` field, as one list (RFC 9110 §5.3), read
        // from the nearest hop back.
        let fields: Vec<Option<&str>> = headers.get_all("x-forwarded-for").iter().map(|v| v.to_str().ok()).collect();
        let mut caller = peer;
        // What cannot be read ends the chain, a whole field that is not
        // text too (else a caller's earlier field would be read in its
        // place): the last hop read is the caller.
        let entries = fields.iter().rev().flat_map(|field| match field {
            Some(text) => text.rsplit(',').map(Some).collect::<Vec<_>>(),
            None => vec![None],
        });
        for entry in entries {
            let Some(ip) = entry.and_then(hop) else { break };
            caller = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        caller
    }
}

/// One `X-Forwarded-For` entry: an address, perhaps with a port
/// (`203.0.113.7:51234`, `[2001:db8::1]:443`) or in brackets.
fn hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let ip = entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(ip.to_canonical())
}

impl std::str::FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of entries for [`parse_net`]; empty entries
    /// (`HOOKWAY_TRUSTED_PROXIES=` with nothing) are none.
    fn from_str(list: &str) -> Result<Self, String> {
        list.split(',').filter(|s| !s.trim().is_empty()).map(parse_net).collect::<Result<_, _>>().map(Self)
    }
}

impl TrustedProxies {
    /// All of `lists`' proxies in one (a flag given more than once).
    pub fn merged(lists: Vec<Self>) -> Self {
        Self(lists.into_iter().flat_map(|l| l.0).collect())
    }
}

/// Parses one `--trusted-proxies` entry: a CIDR range or a single address.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("'{s}' is not an address or a CIDR range (like 10.0.0.0/8 or ::1)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callers_are_counted_by_ipv4_address_or_ipv6_64() {
        let at = |s: &str| counted_as(s.parse().unwrap()).to_string();
        assert_eq!(at("192.0.2.7"), "192.0.2.7");
        assert_eq!(at("::ffff:192.0.2.7"), "192.0.2.7", "a mapped IPv4 address is that address");
        assert_eq!(at("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), "2001:db8:1:2::");
        assert_eq!(at("::1"), "::");
        assert_eq!(at("64:ff9b::192.0.2.7"), "192.0.2.7", "an IPv4 caller behind NAT64");
    }

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(list.iter().map(|s| parse_net(s).unwrap()).collect())
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_caller_is_the_last_address_not_a_trusted_proxy() {
        let trusted = proxies(&["127.0.0.1", "10.0.0.0/8"]);
        let local = ip("127.0.0.1");
        // Through one proxy.
        assert_eq!(trusted.caller(local, &xff(&["203.0.113.7"])), ip("203.0.113.7"));
        // Through two (a load balancer, then the local terminator); the caller's own
        // entries, left of its address, are not believed.
        assert_eq!(trusted.caller(local, &xff(&["6.6.6.6, 203.0.113.7, 10.1.2.3"])), ip("203.0.113.7"));
        assert_eq!(trusted.caller(local, &xff(&["6.6.6.6", "203.0.113.7, 10.1.2.3"])), ip("203.0.113.7"));
        // Ports, brackets, spaces, IPv4 mapped into IPv6.
        assert_eq!(trusted.caller(local, &xff(&[" 203.0.113.7:5123 "])), ip("203.0.113.7"));
        assert_eq!(trusted.caller(local, &xff(&["[2001:db8::1]:443"])), ip("2001:db8::1"));
        assert_eq!(trusted.caller(local, &xff(&["[2001:db8::1]"])), ip("2001:db8::1"));
        assert_eq!(trusted.caller(ip("::ffff:127.0.0.1"), &xff(&["::ffff:203.0.113.7"])), ip("203.0.113.7"));
        // Only proxies all along: the farthest one read.
        assert_eq!(trusted.caller(local, &xff(&["10.0.0.5, 10.0.0.6"])), ip("10.0.0.5"));
        // Unreadable entries end the chain at the last hop read.
        assert_eq!(trusted.caller(local, &xff(&["203.0.113.7, unknown"])), local);
        assert_eq!(trusted.caller(local, &xff(&["garbage, 10.0.0.5"])), ip("10.0.0.5"));
        // A field that is not text ends the chain there, not read past.
        let mut latin1 = xff(&["203.0.113.7"]);
        latin1.append("x-forwarded-for", http::HeaderValue::from_bytes(b"caf\xe9, 10.0.0.5").unwrap());
        assert_eq!(trusted.caller(local, &latin1), local);
        // No header: the proxy itself.
        assert_eq!(trusted.caller(local, &HeaderMap::new()), local);
    }

    #[test]
    fn other_peers_are_their_own_callers() {
        let spoofed = xff(&["203.0.113.7"]);
        assert_eq!(TrustedProxies::default().caller(ip("127.0.0.1"), &spoofed), ip("127.0.0.1"));
        assert_eq!(proxies(&["10.0.0.0/8"]).caller(ip("192.0.2.1"), &spoofed), ip("192.0.2.1"));
    }

    #[test]
    fn lists_are_comma_separated_and_may_be_empty() {
        let list: TrustedProxies = "127.0.0.1, ::1,10.0.0.0/8,".parse().unwrap();
        assert_eq!(list, proxies(&["127.0.0.1", "::1", "10.0.0.0/8"]));
        assert_eq!("".parse::<TrustedProxies>().unwrap(), TrustedProxies::default());
        assert!("127.0.0.1,nope".parse::<TrustedProxies>().unwrap_err().contains("'nope'"));
        assert_eq!(
            TrustedProxies::merged(vec![proxies(&["::1"]), proxies(&["10.0.0.0/8"])]),
            proxies(&["::1", "10.0.0.0/8"])
        );
    }

    #[test]
    fn entries_are_addresses_or_ranges() {
        assert_eq!(parse_net(" 10.0.0.0/8 ").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert_eq!(parse_net("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        assert!(parse_net("localhost").unwrap_err().contains("'localhost' is not an address or a CIDR range"));
        assert!(parse_net("10.0.0.0/33").is_err());
    }
}
