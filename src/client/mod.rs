//! The tunnel client: one QUIC connection per tunnel, one stream per forwarded
//! request, and automatic reconnection to the same tunnel. With a `ws_url` it
//! speaks the WebSocket-JSON gateway protocol instead (see the `ws` module).

pub mod api;
mod app_conn;
mod dial;
mod drain;
pub mod forward;
pub mod spin;
mod ws;
mod ws_url;

use std::sync::Arc;
use std::time::Duration;

use quinn::ConnectionError;
use tokio_util::task::TaskTracker;

use crate::quic::{FrameReader, FrameWriter, close, tls};
use crate::shutdown::Shutdown;
use crate::wire::{ClientHello, Frame, PROTOCOL_VERSION, RejectCode, ServerHello};
pub use api::{ApiClient, ApiError, ServerInfo};
pub use forward::{LocalApp, RequestLog};
pub use ws_url::{WsUrl, WsUrlError};

/// First reconnection delay; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// Time allowed to connect and complete the handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a stopping client with nothing in flight waits, after
/// `Leaving`, for the streams the server opened before it read it.
const LEAVING_LINGER_MAX: Duration = Duration::from_secs(1);

/// How long a stopping client with nothing in flight waits after saying it
/// is leaving, on a path of round trip `rtt`: a round trip and a half
/// (`Leaving` on its way, then the requests sent before the server read it
/// on theirs), and a little, at most [`LEAVING_LINGER_MAX`].
fn leaving_linger(rtt: Duration) -> Duration {
    (rtt * 3 / 2 + Duration::from_millis(20)).min(LEAVING_LINGER_MAX)
}
/// After how long a first QUIC connection still being made is told of.
pub const SLOW_CONNECT: Duration = Duration::from_secs(3);
/// On stop (ctrl-c), how long requests the local app is answering get to
/// finish; a second stop ([`Shutdown::cut`]) ends the wait at once.
pub const DRAIN: Duration = Duration::from_secs(5);

/// What the client needs to serve a tunnel.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Server base URL (`http://host:port`), for `/api/info`.
    pub server: String,
    /// Tunnel to serve.
    pub tunnel_id: String,
    /// Its auth token.
    pub token: String,
    /// Local app host (default `127.0.0.1`).
    pub local_host: String,
    /// Local app port.
    pub local_port: u16,
    /// Certificate fingerprint to pin instead of the one the server announces.
    pub fingerprint: Option<String>,
    /// QUIC address to dial instead of the one derived from the server URL.
    pub quic_addr: Option<String>,
    /// Serve over the WebSocket-JSON gateway at this `wsUrl` instead of QUIC.
    /// It names the tunnel and token itself: they must be `tunnel_id` and `token`.
    pub ws_url: Option<WsUrl>,
    /// How long to keep polling instead of sleeping around each request
    /// (QUIC only; see [`spin`]); zero turns it off.
    pub busy_poll: Duration,
}

impl ClientConfig {
    /// Serves tunnel `tunnel_id` with `token`, from the server at `server`,
    /// to the app at `127.0.0.1:local_port`, trusting what the server
    /// announces (QUIC address, certificate) and busy-polling for
    /// [`spin::DEFAULT_BUDGET`], over QUIC. The fields are public: set others
    /// with struct update syntax.
    pub fn new(
        server: impl Into<String>,
        tunnel_id: impl Into<String>,
        token: impl Into<String>,
        local_port: u16,
    ) -> Self {
        Self {
            server: server.into(),
            tunnel_id: tunnel_id.into(),
            token: token.into(),
            local_host: "127.0.0.1".into(),
            local_port,
            fingerprint: None,
            quic_addr: None,
            ws_url: None,
            busy_poll: spin::DEFAULT_BUDGET,
        }
    }
}

/// Things worth telling the user about.
#[derive(Debug, Clone)]
pub enum Event {
    /// The tunnel is live (again, when `reconnected`).
    Connected {
        /// The server's handshake answer.
        hello: ServerHello,
        /// False on the first connection.
        reconnected: bool,
    },
    /// A request went through (or failed at the local app).
    Request(RequestLog),
    /// The connection dropped, or could not be made; the client retries
    /// after `retry_in`.
    Reconnecting {
        /// Why it dropped or failed.
        reason: String,
        /// Delay before the next attempt.
        retry_in: Duration,
        /// Whether the tunnel was ever live in this run (else nothing was
        /// "lost": the first connection has not been made yet).
        was_connected: bool,
        /// Whether a live session just ended (else a try to reconnect
        /// failed, and the loss was told already).
        lost: bool,
    },
    /// A QUIC handshake, before the run's first connection, still has no
    /// answer after [`SLOW_CONNECT`] (where it takes milliseconds): told once
    /// per run, while it goes on, since a network that drops UDP shows
    /// nothing else until the attempt times out.
    SlowConnect {
        /// The QUIC address it is trying (`a and b` when the server's name
        /// has several and more than one is being tried).
        to: String,
        /// How long it has been trying.
        waited: Duration,
    },
    /// Asked to stop: requests in flight get [`DRAIN`] to finish first.
    Stopping {
        /// Requests the local app is still answering.
        in_flight: usize,
    },
}

/// Why the client stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server ended the session on purpose (disconnect, new token, deleted,
    /// replaced by another client).
    #[error("{0}")]
    Ended(String),
    /// The server refused the handshake.
    #[error("the server refused this tunnel: {0}")]
    Rejected(String),
    /// The server refused the handshake's token: a wrong one, or one a new
    /// token replaced (the API key can fetch the new one).
    #[error("the server refused this tunnel: {0}")]
    TokenRefused(String),
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// The server's certificate was refused: retrying would meet the same
    /// certificate, and a mismatch may be someone in the middle.
    #[error("{0}")]
    Certificate(#[from] tls::CertRefused),
}

/// How a connection attempt or session ended.
enum Attempt {
    /// Reconnect after a delay.
    Retry(String),
    /// Give up with this error.
    Fatal(ClientError),
    /// The shutdown token fired.
    Stopped,
}

/// Serves the tunnel until `shutdown` (returns `Ok`) or the server ends it.
/// On stop, requests in flight get [`DRAIN`] to finish, unless the stop is
/// cut short (a plain `CancellationToken` never cuts it).
pub async fn run(
    config: ClientConfig,
    on_event: impl Fn(Event) + Send + Sync + 'static,
    shutdown: impl Into<Shutdown>,
) -> Result<(), ClientError> {
    let shutdown = shutdown.into();
    if let Some(url) = &config.ws_url {
        check_ws_url(url, &config)?;
    }
    let on_event: Arc<dyn Fn(Event) + Send + Sync> = Arc::new(on_event);
    let app = LocalApp::new(&config.local_host, config.local_port);
    let api = ApiClient::new(&config.server, None);
    let mut backoff = MIN_BACKOFF;
    let mut connected_before = false;
    // Whether a slow first connection was told of: once per run, on
    // whichever attempt first meets a silent QUIC handshake.
    let slow_told = std::sync::atomic::AtomicBool::new(false);
    // What the run's first connection trusted, kept for the whole run.
    let mut learned = None;
    let spinner = spin::Spinner::new(config.busy_poll);
    let _polling = tokio_util::task::AbortOnDropHandle::new(tokio::spawn({
        let spinner = spinner.clone();
        async move { spinner.run().await }
    }));
    loop {
        let (connected, end) = match &config.ws_url {
            None => {
                let tell_slow = !connected_before && !slow_told.load(std::sync::atomic::Ordering::Relaxed);
                let link = Link { api: &api, config: &config, learned: &mut learned, tell_slow, slow_told: &slow_told };
                quic_session(link, &app, &spinner, &on_event, &shutdown, connected_before).await
            }
            Some(url) => ws::session(url, &app, &on_event, &shutdown, connected_before).await,
        };
        if connected {
            backoff = MIN_BACKOFF;
            connected_before = true;
        }
        let reason = match end {
            Attempt::Stopped => return Ok(()),
            // A certificate that served this run and is now refused only for
            // its dates (a renewal that failed, a clock gone wrong) may pass
            // again without anyone touching this client: keep trying, saying
            // why at every attempt, instead of leaving the tunnel down for good.
            Attempt::Fatal(ClientError::Certificate(refused)) if connected_before && refused.may_pass_later() => {
                refused.to_string()
            }
            Attempt::Fatal(err) => return Err(err),
            Attempt::Retry(reason) => reason,
        };
        let delay = jitter(backoff);
        on_event(Event::Reconnecting { reason, retry_in: delay, was_connected: connected_before, lost: connected });
        tokio::select! {
            _ = shutdown.stop_token().cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What a QUIC connection is made from: the API, the configuration, and the
/// trust the run's first connection settled on.
struct Link<'a> {
    api: &'a ApiClient,
    config: &'a ClientConfig,
    learned: &'a mut Option<Learned>,
    /// Whether a slow QUIC handshake is to be told of (not yet told, and
    /// never connected in this run), and where to note that it was.
    tell_slow: bool,
    slow_told: &'a std::sync::atomic::AtomicBool,
}

/// One QUIC connection: connect, handshake, serve; (connected, how it ended).
async fn quic_session(
    link: Link<'_>,
    app: &LocalApp,
    spinner: &Arc<spin::Spinner>,
    on_event: &Arc<dyn Fn(Event) + Send + Sync>,
    shutdown: &Shutdown,
    reconnected: bool,
) -> (bool, Attempt) {
    let Link { api, config, learned, tell_slow, slow_told } = link;
    let attempt = async {
        // Each step of `connect` has its own deadline, and says which timed out.
        let tell = |to: String| {
            slow_told.store(true, std::sync::atomic::Ordering::Relaxed);
            on_event(Event::SlowConnect { to, waited: SLOW_CONNECT });
        };
        let slow: Option<&(dyn Fn(String) + Send + Sync)> = if tell_slow { Some(&tell) } else { None };
        let (endpoint, conn) = connect(api, config, learned, slow).await?;
        let (hello, control) = tokio::time::timeout(CONNECT_TIMEOUT, handshake(&conn, config))
            .await
            .map_err(|_| Attempt::Retry("timed out in the handshake".into()))??;
        Ok::<_, Attempt>((endpoint, conn, hello, control))
    };
    let (endpoint, conn, hello, mut control) = tokio::select! {
        _ = shutdown.stop_token().cancelled() => return (false, Attempt::Stopped),
        outcome = attempt => match outcome {
            Ok(live) => live,
            Err(end) => return (false, end),
        },
    };
    on_event(Event::Connected { hello: hello.clone(), reconnected });
    let streams = Streams { requests: TaskTracker::new(), closing: forward::Closing::default() };
    let Streams { requests, closing } = &streams;
    let end = tokio::select! {
        end = serve(&conn, &mut control, app, spinner, on_event, hello.heartbeat_interval_ms, &streams) => end,
        _ = shutdown.stop_token().cancelled() => {
            // The server routes no new request here once it reads this: the
            // tunnel is offline, and its callers get what an offline tunnel
            // gives (its offline reply, if set). The control stream stays
            // open during the drain: its end ends the session. A stream
            // opened before the server read it is refused, which tells the
            // edge "going offline".
            let mut linger = Duration::ZERO;
            if hello.accepts_leaving {
                // (Bounded: behind a full connection window, the send could
                // wait, and a second ctrl-c must still quit at once.)
                tokio::select! {
                    _ = tokio::time::timeout(Duration::from_secs(1), control.1.send(&Frame::Leaving)) => {}
                    _ = shutdown.cut_token().cancelled() => {}
                }
                linger = leaving_linger(conn.rtt());
            }
            let refuse = async {
                while let Ok((mut send, _)) = conn.accept_bi().await {
                    let _ = send.reset(close::STREAM_REFUSED);
                }
            };
            drain::drain(requests, shutdown, on_event, refuse, linger).await;
            closing.because("this client stopped");
            conn.close(close::NORMAL, b"client shutting down");
            // The close must leave before the process does, or the server
            // learns of it only from its idle timeout, failing what it sends
            // meanwhile as a broken tunnel rather than an offline one.
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            Attempt::Stopped
        }
    };
    (true, end)
}

/// The wsUrl must serve the tunnel the rest of the configuration names: the
/// status, the monitor and the messages go by `tunnel_id`, while the gateway
/// goes by the URL.
fn check_ws_url(url: &WsUrl, config: &ClientConfig) -> Result<(), ClientError> {
    if url.tunnel_id() != config.tunnel_id {
        return Err(ClientError::Config(format!(
            "the wsUrl is for tunnel {}, not {}",
            url.tunnel_id(),
            config.tunnel_id
        )));
    }
    if url.token() != config.token {
        return Err(ClientError::Config("the wsUrl carries another auth token than the one given".into()));
    }
    Ok(())
}

fn jitter(d: Duration) -> Duration {
    use rand::Rng;
    d.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// Learns the QUIC address and certificate from the API, then connects.
///
/// Without `--fingerprint`, the trust the server's API announces is taken on
/// first use and kept in `learned` for the rest of the run, once a connection
/// with it succeeded: a server that announces another self-signed
/// certificate after a reconnection (its `tls/` files replaced, or someone in
/// the middle answering for it) stops the client, as a pin given by hand
/// would, and so does one that announces a self-signed certificate where the
/// first connection verified one against the system roots. A server that
/// moves from a self-signed certificate to one the system roots verify is
/// followed: such a certificate is verified for the host of the server's
/// URL, which nobody in the middle can present one for.
///
/// `slow`, if given, hears the QUIC addresses being tried once the QUIC
/// handshake has taken [`SLOW_CONNECT`] (the attempt goes on).
async fn connect(
    api: &ApiClient,
    config: &ClientConfig,
    learned: &mut Option<Learned>,
    slow: Option<&(dyn Fn(String) + Send + Sync)>,
) -> Result<(quinn::Endpoint, quinn::Connection), Attempt> {
    let info = tokio::time::timeout(CONNECT_TIMEOUT, api.info())
        .await
        .map_err(|_| Attempt::Retry(format!("the server's API at {} did not answer in time", config.server)))?
        .map_err(|e| Attempt::Retry(crate::error_chain(&e)))?;
    let base_host = host_of(&config.server)
        .ok_or_else(|| Attempt::Fatal(ClientError::Config(format!("cannot find a host in '{}'", config.server))))?;
    let target = match config.quic_addr.clone().or(info.quic_addr.clone()) {
        Some(addr) => addr,
        None => forward::authority(&base_host, info.quic_port),
    };
    let addrs = dial::resolve(&target).await?;
    let announced = info.cert_fingerprint.as_deref();
    let pin = match (config.fingerprint.as_deref(), &*learned, announced) {
        (Some(given), ..) => Some(given.to_owned()),
        (None, Some(Learned::Pin(first)), Some(now)) if !same_fingerprint(first, now) => {
            return Err(Attempt::Fatal(ClientError::Config(format!(
                "the server now announces another certificate than when this client started (fingerprint {now}, \
                 was {first}): if it was regenerated on purpose (its tls/ files replaced), start the client \
                 again; otherwise someone may be intercepting the connection"
            ))));
        }
        (None, Some(Learned::Roots), Some(now)) => {
            return Err(Attempt::Fatal(ClientError::Config(format!(
                "the server now announces a self-signed certificate (fingerprint {now}) where it had one the \
                 system roots verify when this client started: if that is intended, start the client again (or \
                 pin it with --fingerprint); otherwise someone may be intercepting the connection"
            ))));
        }
        (None, _, now) => now.map(str::to_owned),
    };
    let trust = match pin.as_deref() {
        Some(fp) => tls::Trust::pinned(fp).map_err(|e| Attempt::Fatal(ClientError::Config(e.to_string())))?,
        None => tls::Trust::SystemRoots,
    };
    // The name a certificate verified against the system roots must carry:
    // the host of the server's URL, which the user gave, unless they named
    // the QUIC address too. Not the address the API announces: whoever
    // answers the API could name a host of theirs with a valid certificate.
    let server_name = match (&trust, &config.quic_addr) {
        (tls::Trust::SystemRoots, None) => base_host.clone(),
        _ => target.rsplit_once(':').map_or(target.as_str(), |(h, _)| h).trim_matches(['[', ']']).to_owned(),
    };
    let refusal = tls::Refusal::default();
    let crypto = trust.client_config_noting(&refusal);
    let (endpoint, conn) = dial::dial(&addrs, &crypto, &refusal, &server_name, slow).await?;
    if config.fingerprint.is_none() && learned.is_none() {
        *learned = Some(pin.map_or(Learned::Roots, Learned::Pin));
    }
    Ok((endpoint, conn))
}

/// The trust a run's first connection settled on, from the server's API.
#[derive(Debug)]
enum Learned {
    /// The certificate verified against the system roots.
    Roots,
    /// This pinned self-signed certificate.
    Pin(String),
}

/// Whether two fingerprints name the same certificate (case and `:` aside).
fn same_fingerprint(a: &str, b: &str) -> bool {
    let digits = |s: &str| s.chars().filter(|c| *c != ':').map(|c| c.to_ascii_lowercase()).collect::<String>();
    digits(a) == digits(b)
}

/// The host part of a URL like `http://host:port/…`, without IPv6 brackets.
fn host_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?.trim_matches(['[', ']']);
    (!host.is_empty()).then(|| host.to_owned())
}

/// Opens the control stream and authenticates.
async fn handshake(
    conn: &quinn::Connection,
    config: &ClientConfig,
) -> Result<(ServerHello, (FrameReader, FrameWriter)), Attempt> {
    let (send, recv) = conn.open_bi().await.map_err(|e| Attempt::Retry(e.to_string()))?;
    let mut writer = FrameWriter::control(send);
    let mut reader = FrameReader::new(recv);
    let hello = Frame::ClientHello(ClientHello {
        tunnel_id: config.tunnel_id.clone(),
        auth_token: config.token.clone(),
        protocol_version: PROTOCOL_VERSION,
        client_version: env!("CARGO_PKG_VERSION").to_owned(),
    });
    writer.send(&hello).await.map_err(|e| Attempt::Retry(e.to_string()))?;
    match reader.next().await {
        Ok(Some(Frame::ServerHello(hello))) => Ok((hello, (reader, writer))),
        Ok(Some(Frame::Rejected(r))) => {
            conn.close(close::NORMAL, b"rejected");
            match r.code {
                RejectCode::Internal => Err(Attempt::Retry(r.message)),
                RejectCode::BadToken => Err(Attempt::Fatal(ClientError::TokenRefused(r.message))),
                _ => Err(Attempt::Fatal(ClientError::Rejected(r.message))),
            }
        }
        Ok(_) => Err(Attempt::Retry("unexpected handshake answer".into())),
        Err(_) => Err(ended(conn.close_reason())),
    }
}

/// Classifies a connection end.
fn ended(reason: Option<ConnectionError>) -> Attempt {
    match reason {
        Some(ConnectionError::ApplicationClosed(close)) => Attempt::closed_with(close.error_code),
        Some(other) => Attempt::Retry(other.to_string()),
        None => Attempt::Retry("connection lost".into()),
    }
}

impl Attempt {
    /// The end a server's close code announces, whatever the transport:
    /// final codes (disconnected, token regenerated, deleted, replaced) stop
    /// the client; the rest reconnect.
    fn closed_with(code: quinn::VarInt) -> Self {
        if close::is_final(code) {
            Attempt::Fatal(ClientError::Ended(close::describe(code).to_owned()))
        } else {
            Attempt::Retry(close::describe(code).to_owned())
        }
    }
}

/// A connection's request streams: the tasks serving them, and why the
/// connection is closing once it is.
struct Streams {
    requests: TaskTracker,
    closing: forward::Closing,
}

/// Serves request streams and heartbeats until the connection ends.
async fn serve(
    conn: &quinn::Connection,
    (reader, writer): &mut (FrameReader, FrameWriter),
    app: &LocalApp,
    spinner: &Arc<spin::Spinner>,
    on_event: &Arc<dyn Fn(Event) + Send + Sync>,
    heartbeat_ms: u32,
    Streams { requests, closing }: &Streams,
) -> Attempt {
    let mut ping = tokio::time::interval(Duration::from_millis(u64::from(heartbeat_ms.max(1000))));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Beside the loop, not in it: a ping's write waits while the tunnel's
    // window is full (answers its callers read slowly), and the loop must
    // meanwhile take new requests and read what the server says.
    let pings = async {
        let mut seq = 0u64;
        loop {
            ping.tick().await;
            seq += 1;
            if writer.send(&Frame::Ping(seq)).await.is_err() {
                return ended(conn.close_reason());
            }
        }
    };
    tokio::pin!(pings);
    loop {
        tokio::select! {
            end = &mut pings => return end,
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let in_flight = spinner.request();
                    let app = app.clone();
                    let (on_event, closing) = (on_event.clone(), closing.clone());
                    requests.spawn(async move {
                        let log = forward::serve(send, recv, &app, &closing).await;
                        drop(in_flight);
                        if let Some(log) = log {
                            on_event(Event::Request(log));
                        }
                    });
                }
                Err(err) => return ended(Some(err)),
            },
            frame = reader.next() => match frame {
                Ok(Some(Frame::Pong(_) | Frame::Ping(_))) => {}
                Ok(Some(Frame::SessionEnded(notice))) => {
                    // The server ended the session on purpose and said why
                    // here, in case its close packet never comes.
                    if notice.close_code == close::SERVER_SHUTDOWN.into_inner() as u32 {
                        closing.because("the server shut down");
                    } else {
                        closing.because(format!("the server ended the session ({})", notice.message));
                    }
                    conn.close(close::NORMAL, b"session ended by the server");
                    return Attempt::closed_with(quinn::VarInt::from_u32(notice.close_code));
                }
                Ok(_) | Err(_) => {
                    // The control stream ended: the connection is going away.
                    return ended(Some(conn.closed().await));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_of_urls() {
        assert_eq!(super::host_of("http://127.0.0.1:8080").as_deref(), Some("127.0.0.1"));
        assert_eq!(super::host_of("https://tunnel.example.com/x").as_deref(), Some("tunnel.example.com"));
        assert_eq!(super::host_of("http://[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(super::host_of("http://").as_deref(), None);
    }
}
