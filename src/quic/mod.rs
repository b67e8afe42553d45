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
/// First datagram size: fits the 1280-byte IPv6 minimum MTU after headers.
pub const INITIAL_MTU: u16 = 1200;
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

fn transport(max_incoming_bidi: u32) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(max_incoming_bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::try_from(IDLE_TIMEOUT).expect("idle timeout fits")))
        .initial_mtu(INITIAL_MTU)
        .mtu_discovery_config(Some(MtuDiscoveryConfig::default()));
    t
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

/// A server endpoint accepting tunnel clients on `addr`.
pub fn server_endpoint(addr: SocketAddr, identity: &tls::Identity) -> Result<quinn::Endpoint, EndpointError> {
    let crypto = QuicServerConfig::try_from(identity.server_config()).map_err(|e| EndpointError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // Clients open only the control stream; requests are opened by the server.
    config.transport_config(Arc::new(transport(4)));
    let socket = udp_socket(addr)?;
    quinn::Endpoint::new(EndpointConfig::default(), Some(config), socket, Arc::new(quinn::TokioRuntime))
        .map_err(|source| EndpointError::Bind { addr, source })
}

/// A client endpoint on an ephemeral port, trusting the server as `trust` says.
pub fn client_endpoint(server: SocketAddr, trust: &tls::Trust) -> Result<quinn::Endpoint, EndpointError> {
    let crypto = QuicClientConfig::try_from(trust.client_config()).map_err(|e| EndpointError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport(MAX_CONCURRENT_REQUESTS)));
    let local: SocketAddr = if server.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse().expect("valid literal");
    let socket = udp_socket(local)?;
    let mut endpoint = quinn::Endpoint::new(EndpointConfig::default(), None, socket, Arc::new(quinn::TokioRuntime))
        .map_err(|source| EndpointError::Bind { addr: local, source })?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}
