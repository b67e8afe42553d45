//! Dialing the server's QUIC address when its name resolves to several
//! addresses, Happy Eyeballs style (RFC 8305): a name with both AAAA and A
//! records, served by a listener bound to one family only (`--quic
//! 0.0.0.0:4443`), must not leave the client waiting on the other family for
//! ever, as `localhost` or a dual-stack DNS name would.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::{Instant, sleep_until};

use super::{Attempt, CONNECT_TIMEOUT, SLOW_CONNECT};
use crate::quic::{self, tls};

/// How long an address gets to answer before the next one is tried
/// alongside it (RFC 8305's "Connection Attempt Delay"): long enough for a
/// handshake on a usual path, short enough that a silent family costs little.
const NEXT_ADDRESS_DELAY: Duration = Duration::from_millis(250);

/// All the addresses `target` (`host:port`) resolves to, the families taking
/// turns, starting from the resolver's preferred one.
pub(super) async fn resolve(target: &str) -> Result<Vec<SocketAddr>, Attempt> {
    let found = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(target)).await.ok().and_then(Result::ok);
    let addrs = interleave(found.into_iter().flatten());
    if addrs.is_empty() {
        return Err(Attempt::Retry(format!("cannot resolve QUIC address {target}")));
    }
    Ok(addrs)
}

/// `addrs` without repeats, alternating families from the first one's (RFC
/// 8305 §4), each family in the resolver's order: a name with several AAAA
/// records gets its A record tried second, not after all of them.
fn interleave(addrs: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut unique: Vec<SocketAddr> = Vec::new();
    for addr in addrs {
        if !unique.contains(&addr) {
            unique.push(addr);
        }
    }
    let Some(first) = unique.first() else { return unique };
    let preferred_v6 = first.is_ipv6();
    let mut seen = [0usize; 2];
    let mut ranked: Vec<((usize, usize), SocketAddr)> = unique
        .into_iter()
        .map(|addr| {
            let family = usize::from(addr.is_ipv6() != preferred_v6);
            seen[family] += 1;
            ((seen[family], family), addr)
        })
        .collect();
    ranked.sort_by_key(|(rank, _)| *rank);
    ranked.into_iter().map(|(_, addr)| addr).collect()
}

/// Connects to the first of `addrs` (not empty) that completes a QUIC
/// handshake with `server_name`, within [`CONNECT_TIMEOUT`] in all. The first
/// address is tried at once; each next one after [`NEXT_ADDRESS_DELAY`]
/// without an answer, or as soon as an attempt fails. The winner's endpoint
/// comes back; the others are dropped, which closes their connections. One
/// address is tried as it always was: no delay, the same messages.
///
/// A certificate `refusal` (noted by the verifier in `tls`) is fatal, from
/// whichever address: every address is meant to be the same server, and a
/// mismatch may be someone in the middle. `slow`, if given, hears the
/// addresses being tried once the attempt has taken [`SLOW_CONNECT`].
pub(super) async fn dial(
    addrs: &[SocketAddr],
    tls: &rustls::ClientConfig,
    refusal: &tls::Refusal,
    server_name: &str,
    mut slow: Option<&(dyn Fn(String) + Send + Sync)>,
) -> Result<(quinn::Endpoint, quinn::Connection), Attempt> {
    let started = Instant::now();
    let (deadline, slow_at) = (started + CONNECT_TIMEOUT, started + SLOW_CONNECT);
    let mut next_at = started;
    let mut racing = FuturesUnordered::new();
    let mut tried = Vec::new();
    // The failures that said something; the other addresses tried were silent.
    let mut said: Vec<(SocketAddr, String)> = Vec::new();
    loop {
        let over = tokio::select! {
            () = sleep_until(next_at), if tried.len() < addrs.len() => {
                let addr = addrs[tried.len()];
                tried.push(addr);
                racing.push(attempt(addr, tls.clone(), server_name));
                next_at = Instant::now() + NEXT_ADDRESS_DELAY;
                false
            }
            Some((addr, outcome)) = racing.next() => {
                match outcome {
                    Ok(live) => return Ok(live),
                    Err(Some(why)) => said.push((addr, why)),
                    Err(None) => {}
                }
                // An attempt failed: the next address, at once.
                next_at = next_at.min(Instant::now());
                racing.is_empty() && tried.len() == addrs.len()
            }
            () = sleep_until(slow_at), if slow.is_some() => {
                if let Some(tell) = slow.take() {
                    tell(list(&tried));
                }
                false
            }
            () = sleep_until(deadline) => true,
        };
        // A certificate refused at any address ends the whole attempt (the
        // refusal is noted before its connection reports failing). Fatal on a
        // reconnection too: a server restarted with a certificate we cannot
        // trust is not fixed by waiting, and a silent retry loop would hide a
        // possible interception.
        if let Some(refused) = refusal.take() {
            return Err(Attempt::Fatal(refused.into()));
        }
        if over {
            break;
        }
    }
    let silent: Vec<SocketAddr> = tried.into_iter().filter(|addr| !said.iter().any(|(a, _)| a == addr)).collect();
    let mut reasons: Vec<String> = said.into_iter().map(|(_, why)| why).collect();
    if !silent.is_empty() {
        // The API answered (the address came from there), QUIC did not.
        let them = if silent.len() == 1 { "it" } else { "them" };
        reasons.push(format!(
            "timed out connecting over QUIC to {} (is UDP to {them} blocked? `--ws` tunnels over the HTTP port \
             instead)",
            list(&silent)
        ));
    }
    Err(Attempt::Retry(reasons.join("; ")))
}

/// One address's attempt, on an endpoint of its own (bound to its family):
/// the live connection, or why it failed (`None`: no answer, by quinn's idle
/// timeout in the handshake).
async fn attempt(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
    server_name: &str,
) -> (SocketAddr, Result<(quinn::Endpoint, quinn::Connection), Option<String>>) {
    let connected = async {
        let endpoint = quic::client_endpoint_with_tls(addr, tls).map_err(|e| Some(e.to_string()))?;
        let connecting = endpoint.connect(addr, server_name).map_err(|e| Some(e.to_string()))?;
        match connecting.await {
            Ok(conn) => Ok((endpoint, conn)),
            Err(quinn::ConnectionError::TimedOut) => Err(None),
            // (The server is setting up as many connections as it takes at
            // once: a restart's reconnect storm, or a flood.)
            Err(quinn::ConnectionError::ConnectionClosed(c))
                if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                Err(Some(format!("the server at {addr} is busy setting up other connections")))
            }
            Err(e) => Err(Some(format!("QUIC connection to {addr} failed: {e}"))),
        }
    };
    (addr, connected.await)
}

/// `a`, `a and b`, `a, b and c`.
fn list(addrs: &[SocketAddr]) -> String {
    let names: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => names.concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn families_take_turns_from_the_preferred_one() {
        let given = addrs(&["[::1]:1", "[::2]:1", "[::3]:1", "10.0.0.1:1", "[::1]:1", "10.0.0.2:1"]);
        let want = addrs(&["[::1]:1", "10.0.0.1:1", "[::2]:1", "10.0.0.2:1", "[::3]:1"]);
        assert_eq!(interleave(given), want);
        assert_eq!(interleave(addrs(&["127.0.0.1:1"])), addrs(&["127.0.0.1:1"]));
        assert_eq!(interleave(Vec::new()), Vec::new());
    }

    /// A QUIC server on 127.0.0.1 that accepts one connection, and the
    /// trust that pins its certificate.
    fn server_on_ipv4() -> (SocketAddr, tls::Trust, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let identity = tls::Identity::self_signed_in(dir.path(), &[]).unwrap();
        let server = quic::server_endpoint("127.0.0.1:0".parse().unwrap(), &identity, None, &Default::default());
        let server = server.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            // (Held until the client is done with it.)
            if let Ok(conn) = server.accept().await.unwrap().await {
                conn.closed().await;
            }
        });
        (addr, tls::Trust::pinned(&identity.fingerprint()).unwrap(), dir)
    }

    /// Where the name's first address (IPv6) is silent, as when the server
    /// listens on IPv4 only, the next address connects soon after.
    #[tokio::test]
    async fn a_silent_first_address_gives_way_to_the_next() {
        let (server, trust, _dir) = server_on_ipv4();
        // Bound, so nothing answers "port unreachable"; never read.
        let silent = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let refusal = tls::Refusal::default();
        let started = Instant::now();
        let addrs = [silent.local_addr().unwrap(), server];
        let dialed = dial(&addrs, &trust.client_config_noting(&refusal), &refusal, "localhost", None).await;
        let Ok((_endpoint, conn)) = dialed else { panic!("did not connect to {server}") };
        assert_eq!(conn.remote_address(), server);
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    }

    /// A certificate refused at any address stops the client, as with one.
    #[tokio::test]
    async fn a_refused_certificate_at_the_next_address_is_fatal() {
        let (server, _, _dir) = server_on_ipv4();
        let silent = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let refusal = tls::Refusal::default();
        let other = tls::Trust::pinned(&"ab".repeat(32)).unwrap();
        let addrs = [silent.local_addr().unwrap(), server];
        let dialed = dial(&addrs, &other.client_config_noting(&refusal), &refusal, "localhost", None).await;
        let Err(Attempt::Fatal(super::super::ClientError::Certificate(tls::CertRefused::PinMismatch { .. }))) = dialed
        else {
            panic!("the refusal was not fatal");
        };
    }

    #[test]
    fn addresses_are_listed_in_words() {
        assert_eq!(list(&addrs(&["[::1]:4443"])), "[::1]:4443");
        assert_eq!(list(&addrs(&["[::1]:4443", "127.0.0.1:4443"])), "[::1]:4443 and 127.0.0.1:4443");
        assert_eq!(list(&addrs(&["[::1]:1", "[::2]:1", "10.0.0.1:1"])), "[::1]:1, [::2]:1 and 10.0.0.1:1");
    }
}
