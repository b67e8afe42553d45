//! QUIC transport: endpoint construction, tuning, TLS, and framed stream IO.
//!
//! Tuning follows what production QUIC tunnels learned:
//! * receive windows sized for throughput (a few MiB per stream, more per
//!   connection) so a single upload is not capped by flow control, while memory
//!   per slow peer stays bounded by those same windows;
//! * an initial packet size of 1200 bytes, which survives a 1280-byte MTU path
//!   (IPv6 minimum) and grows only through path MTU discovery;
//! * keep-alives well below the idle timeout, so a dead peer is noticed within
//!   [`IDLE_TIMEOUT`] and a quiet-but-alive one never is dropped.

pub mod close;
pub mod framed;
pub mod runtime;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{EndpointConfig, IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};

pub use framed::{FrameReader, FrameWriter, ReadFrameError};

/// A connection silent for this long is considered dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(9);
/// Interval of QUIC keep-alive packets; a few of them fit in [`IDLE_TIMEOUT`].
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// Per-stream receive window: one request or response body in flight.
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
/// Per-connection receive window: all bodies of one tunnel in flight.
pub const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;
/// How many request streams may be open at once on one tunnel.
pub const MAX_CONCURRENT_REQUESTS: u32 = 2048;
/// The server's connection receive window until a client's hello checks out
/// (then [`CONNECTION_WINDOW`], see [`open_receive_window`]): room for the
/// hello and more, but a connection that never says who it is cannot make the
/// server hold a full window of its bytes. (At a full window, six such
/// connections held 230 MiB.)
pub const UNAUTHENTICATED_WINDOW: u32 = 64 * 1024;
/// First datagram size: fits the 1280-byte IPv6 minimum MTU after headers.
pub const INITIAL_MTU: u16 = 1200;
/// Largest datagram path MTU discovery may settle on.
///
/// Across the Internet discovery stops near 1452 bytes whatever the bound. On
/// loopback (server and client on one machine) and on jumbo-frame networks it
/// climbs to this bound, and a body then takes about 4.5 times fewer packets
/// than at 1452: quinn's per-packet work (framing, AEAD, ACKs, one kernel
/// segment each) was most of a body's CPU. Bodies through a loopback tunnel
/// moved 1.4–1.7× faster (medians of five interleaved runs).
///
/// Why not more:
/// * quinn sends an ack-eliciting packet only while the bytes in flight plus
///   one MTU stay under the congestion window, which starts at 14,720 bytes
///   and is at least two MTUs. Above half of that, one probe in flight blocks
///   everything else until it is acked or declared lost: on an Internet path,
///   every lost probe stalls the connection. A close sent while blocked never
///   leaves (quinn issue 2785, unreleased fix): at a bound of 16000, bodies
///   moved 4–18% faster on loopback, but a session ended right after connecting
///   lost its close reason, and the client reconnected. (The reason now also
///   travels on the control stream, `SessionEnded`; the stalls remain.)
///   Asserted below.
/// * quinn hands the kernel up to 10 datagrams per `sendmsg` (GSO), and the
///   kernel refuses a batch larger than one UDP datagram can be (`EMSGSIZE`,
///   which quinn treats as loss); asserted below.
/// * The pacer holds even a small packet until a whole MTU of send credit is
///   there: a bound of ~64 KiB was measured to multiply webhook latency under
///   concurrency.
pub const MTU_UPPER_BOUND: u16 = 6500;
/// quinn's initial congestion window (`CubicConfig::initial_window`'s default).
const QUINN_INITIAL_WINDOW: usize = 14_720;
const _: () = assert!(
    2 * MTU_UPPER_BOUND as usize <= QUINN_INITIAL_WINDOW,
    "a probe at the bound and a packet at the MTU below it must fit the initial congestion window"
);
/// Most datagrams quinn puts in one GSO send: `MAX_TRANSMIT_SEGMENTS`, private
/// in quinn 0.11.
const QUINN_SEND_BATCH: usize = 10;
/// Largest UDP payload over IPv4: 65,535 bytes less the IP and UDP headers.
const MAX_UDP_PAYLOAD: usize = 65_535 - 20 - 8;
const _: () = assert!(
    MTU_UPPER_BOUND as usize * QUINN_SEND_BATCH <= MAX_UDP_PAYLOAD,
    "a full GSO batch of MTU-sized datagrams must fit in one UDP send"
);
/// Requested UDP socket buffer size (the kernel may cap it).
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Errors building an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The UDP socket could not be created or bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The TLS configuration is unusable for QUIC.
    #[error("TLS configuration unusable for QUIC: {0}")]
    Tls(String),
}

fn transport(max_incoming_bidi: u32, receive_window: u32) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(max_incoming_bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        // hookway never reads unreliable datagrams: refuse them, so a peer cannot
        // fill a buffer nobody drains.
        .datagram_receive_buffer_size(None)
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(receive_window))
        .send_window(u64::from(CONNECTION_WINDOW))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::try_from(IDLE_TIMEOUT).expect("idle timeout fits")))
        .initial_mtu(INITIAL_MTU)
        .mtu_discovery_config(Some(mtu_discovery()));
    t
}

fn mtu_discovery() -> MtuDiscoveryConfig {
    let mut mtu = MtuDiscoveryConfig::default();
    // Congestion losses during a bulk transfer look like a black hole and drop
    // the MTU to the minimum; quinn suggests retrying soon. On a real black hole
    // the retry's probes are lost and the MTU stays down, so this is safe.
    mtu.upper_bound(MTU_UPPER_BOUND).black_hole_cooldown(Duration::from_secs(2));
    mtu
}

/// Opens a server connection's receive window to [`CONNECTION_WINDOW`], once
/// its client has authenticated (it starts at [`UNAUTHENTICATED_WINDOW`]).
pub fn open_receive_window(conn: &quinn::Connection) {
    conn.set_receive_window(VarInt::from_u32(CONNECTION_WINDOW));
}

/// Endpoint settings: accept datagrams as large as discovery may reach; with
/// `reset_key` (see [`tls::reset_key_in`]), sign stateless resets with it and
/// make connection ids that a later process with the same key recognizes (it
/// answers packets only for ids it could have made), else keys of this
/// process only.
fn endpoint_config(reset_key: Option<&[u8; 32]>) -> EndpointConfig {
    let mut config = match reset_key {
        Some(key) => {
            let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
            let derived = ring::hmac::sign(&hmac, b"hookway connection ids");
            let cid_key = u64::from_le_bytes(derived.as_ref()[..8].try_into().expect("a SHA-256 tag has 32 bytes"));
            let mut config = EndpointConfig::new(Arc::new(hmac));
            config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
            config
        }
        None => EndpointConfig::default(),
    };
    config.max_udp_payload_size(MTU_UPPER_BOUND).expect("within QUIC limits");
    config
}

/// Binds a UDP socket with large buffers; QUIC throughput depends on them.
fn udp_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, EndpointError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = |addr: SocketAddr| -> std::io::Result<std::net::UdpSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() {
            // Accept IPv4-mapped traffic too when bound to [::].
            let _ = socket.set_only_v6(false);
        }
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
        socket.bind(&addr.into())?;
        Ok(socket.into())
    };
    bind(addr).map_err(|source| EndpointError::Bind { addr, source })
}

/// A server endpoint accepting tunnel clients on `addr`. Its connection
/// drivers batch the sends of concurrent requests, as `in_flight` counts them
/// (see [`runtime`]).
pub fn server_endpoint(
    addr: SocketAddr,
    identity: &tls::Identity,
    reset_key: Option<&[u8; 32]>,
    in_flight: &runtime::InFlight,
) -> Result<quinn::Endpoint, EndpointError> {
    let crypto = QuicServerConfig::try_from(identity.server_config()).map_err(|e| EndpointError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // Clients open only the control stream (requests are opened by the
    // server): a second stream of theirs would be buffered and never read.
    config.transport_config(Arc::new(transport(1, UNAUTHENTICATED_WINDOW)));
    let socket = udp_socket(addr)?;
    quinn::Endpoint::new(
        endpoint_config(reset_key),
        Some(config),
        socket,
        Arc::new(runtime::BatchingRuntime::new(in_flight.clone())),
    )
    .map_err(|source| EndpointError::Bind { addr, source })
}

/// A client endpoint on an ephemeral port, trusting the server as `trust` says.
pub fn client_endpoint(server: SocketAddr, trust: &tls::Trust) -> Result<quinn::Endpoint, EndpointError> {
    client_endpoint_with_tls(server, trust.client_config())
}

/// [`client_endpoint`] with a TLS configuration of the caller's (one from
/// [`tls::Trust::client_config_noting`], to learn why a certificate was refused).
pub fn client_endpoint_with_tls(
    server: SocketAddr,
    tls: rustls::ClientConfig,
) -> Result<quinn::Endpoint, EndpointError> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| EndpointError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport(MAX_CONCURRENT_REQUESTS, CONNECTION_WINDOW)));
    let local: SocketAddr = if server.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("valid literal");
    let socket = udp_socket(local)?;
    let mut endpoint = quinn::Endpoint::new(endpoint_config(None), None, socket, Arc::new(quinn::TokioRuntime))
        .map_err(|source| EndpointError::Bind { addr: local, source })?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// A real loopback connection between a client endpoint and a server one, as
/// tests of this layer need it: (client's side, server's side, the directory
/// holding the server's certificate). The server's side is as a new client's
/// is before its hello: one stream of the client's, a small window.
#[cfg(test)]
pub(crate) async fn loopback_pair() -> (quinn::Connection, quinn::Connection, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let identity = tls::Identity::self_signed_in(dir.path(), &[]).unwrap();
    let server = server_endpoint("127.0.0.1:0".parse().unwrap(), &identity, None, &Default::default()).unwrap();
    let addr = server.local_addr().unwrap();
    let client = client_endpoint(addr, &tls::Trust::pinned(&identity.fingerprint()).unwrap()).unwrap();
    let accepted = tokio::spawn(async move { server.accept().await.unwrap().await.unwrap() });
    let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
    (conn, accepted.await.unwrap(), dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real loopback connection: bytes flow, path MTU discovery grows from
    /// the conservative initial size to the bound, coming back after a burst,
    /// and at the bound quinn's GSO batches still fit the kernel's limit.
    #[tokio::test]
    async fn loopback_connection_transfers_and_discovers_mtu() {
        const BURST: usize = 16 << 20;
        let (conn, server_conn, _dir) = loopback_pair().await;
        // (As the server does once a client's hello checks out.)
        open_receive_window(&server_conn);
        let accept = tokio::spawn(async move {
            let mut lens = Vec::new();
            for _ in 0..2 {
                let (_send, mut recv) = server_conn.accept_bi().await.unwrap();
                lens.push(recv.read_to_end(BURST).await.unwrap().len());
            }
            (lens, server_conn)
        });
        let burst = |conn: quinn::Connection| async move {
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            send.write_chunk(bytes::Bytes::from(vec![1u8; BURST])).await.unwrap();
            send.finish().unwrap();
            // Keep the stream until the peer has read it all.
            send.stopped().await.unwrap();
        };
        burst(conn.clone()).await;
        // Discovery found a larger MTU, and even if congestion during the burst
        // tripped black-hole detection, it comes back after the cooldown.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while conn.stats().path.current_mtu < MTU_UPPER_BOUND {
            assert!(tokio::time::Instant::now() < deadline, "MTU stuck: {:?}", conn.stats().path);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // A second burst at the full MTU. Were a batch of MTU-sized datagrams
        // over the kernel's limit, every full batch would fail with EMSGSIZE,
        // which quinn counts as sent and later as lost: many packets, or (once
        // black-hole detection drops the MTU) the MTU itself.
        let before = conn.stats();
        burst(conn.clone()).await;
        let after = conn.stats();
        let (lens, _server_conn) = accept.await.unwrap();
        assert_eq!(lens, [BURST, BURST]);
        let sent = after.path.sent_packets - before.path.sent_packets;
        let lost = after.path.lost_packets - before.path.lost_packets;
        let (datagrams, ios) = (after.udp_tx.datagrams - before.udp_tx.datagrams, after.udp_tx.ios - before.udp_tx.ios);
        assert!(
            lost * 20 < sent && after.path.current_mtu == MTU_UPPER_BOUND,
            "{lost} of {sent} packets lost ({datagrams} datagrams in {ios} sends): {:?}",
            after.path
        );
    }

    /// A client may open one stream of its own (the control stream), and
    /// until the server opens its window, the server holds at most
    /// [`UNAUTHENTICATED_WINDOW`] of what it sends, read or not; then a
    /// stream's full window.
    #[tokio::test]
    async fn a_server_connection_takes_one_stream_and_little_data_until_opened() {
        let (conn, server_conn, _dir) = loopback_pair().await;
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        let second = tokio::time::timeout(std::time::Duration::from_millis(300), conn.open_bi()).await;
        assert!(second.is_err(), "a second stream of the client's was allowed");
        // Writes until the peer's flow control stops them for a while.
        let chunk = vec![7u8; 16 * 1024];
        let fill = async |send: &mut quinn::SendStream, most: usize| {
            let mut sent = 0;
            while sent < most {
                match tokio::time::timeout(std::time::Duration::from_millis(300), send.write(&chunk)).await {
                    Ok(written) => sent += written.unwrap(),
                    Err(_) => break,
                }
            }
            sent
        };
        let before = fill(&mut send, 1 << 20).await;
        assert!(before <= UNAUTHENTICATED_WINDOW as usize, "{before} bytes taken before the window opened");
        open_receive_window(&server_conn);
        let after = fill(&mut send, 2 << 20).await;
        assert_eq!(after, 2 << 20, "the opened window takes a stream's worth");
    }
}
