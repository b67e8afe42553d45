//! The public TCP listener: accepting connections and driving each through
//! hyper, with bounds on how long a connection may hold its socket (a file
//! descriptor) without using it.
//!
//! hyper bounds a slow HTTP/1 head (`header_read_timeout`), but a connection
//! that sends nothing never reaches it: hyper-util's `auto` builder first reads
//! the bytes that tell HTTP/1 from HTTP/2, with no timer. And an HTTP/2
//! connection may stay open without a request for ever. So each connection is
//! watched here: one that has started no request within
//! [`HttpLimits::header_timeout`] (its first) or [`HttpLimits::idle_timeout`]
//! (later) is shut down gracefully, so a request still in flight finishes. An
//! HTTP/2 peer must also answer keep-alive pings, which ends connections whose
//! peer went silent, graceful shutdown included (it waits for a ping's answer).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::http::{Request, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::held::held_for;
use super::per_address::{AddressPlace, PerAddress};
use super::proxies::counted_as;
use super::send_watch::{Blocked, send_watched};
use super::{State, http};

/// Default time a connection has to send a complete request head, counted
/// from the accept for its first request.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a connection may go without starting a request.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time a caller's socket may refuse what the edge writes (the caller
/// is not reading its answer) before the connection is closed.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time the REST API waits for a request body (at most 64 KiB).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default interval of HTTP/2 keep-alive pings (sent when nothing was read for that long).
pub const DEFAULT_H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Default time an HTTP/2 peer has to answer a ping.
pub const DEFAULT_H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Default limit of concurrent streams per HTTP/2 connection (hyper's own default, made explicit).
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 200;
/// How much request body an HTTP/2 caller may send on one stream before the
/// edge has passed it on (hyper's default, made explicit).
pub const H2_STREAM_WINDOW: u32 = 1024 * 1024;
/// ...and on all the streams of a connection together. hyper's default equals
/// the stream window: then one upload whose app reads slowly (or a WebSocket
/// tunnel's intake waiting for room) held the whole connection's window, and
/// every other upload multiplexed on that connection, to any tunnel, stalled
/// until it timed out. Four times as much leaves room for the others even
/// with three streams stalled, and bounds what a connection's unread bodies
/// may cost the edge at 4 MiB.
pub const H2_CONNECTION_WINDOW: u32 = 4 * H2_STREAM_WINDOW;
/// Header lines hyper's HTTP/1 parser makes room for. Past its room hyper
/// answers 431 itself, without the edge's error form, so the room is larger
/// than the edge's own limit ([`http::MAX_REQUEST_HEADERS`]), which the
/// service then enforces with the usual answer. Bounded, since the parser
/// allocates the room for each parse (64 bytes a line, 16 KiB here, freed
/// before the parse returns) rather than for what arrived; hyper's read
/// buffer, which bounds a head's bytes, stays at its default.
pub const H1_PARSER_HEADERS: usize = 256;
const _: () = assert!(H1_PARSER_HEADERS > http::MAX_REQUEST_HEADERS, "else hyper answers before the edge can");
/// Default limit of open connections when nothing better is known; the
/// binary derives its own from the process's file-descriptor limit
/// ([`max_connections_for`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default of [`HttpLimits::max_connections_per_address`]: more than a
/// busy webhook sender or a browser keeps open at once, a small share of
/// [`DEFAULT_MAX_CONNECTIONS`].
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 1024;
/// Default of [`HttpLimits::max_in_flight_per_caller`]: a quarter of the
/// requests a tunnel carries at once, far more than a webhook sender sends
/// at once.
pub const DEFAULT_MAX_IN_FLIGHT_PER_CALLER: u32 = crate::quic::MAX_CONCURRENT_REQUESTS / 4;
/// Descriptors kept back from connections, at least (or half a smaller
/// limit): the QUIC socket, the store, webhook deliveries, the runtime's own.
const RESERVED_DESCRIPTORS: u64 = 64;

/// First pause after an accept failed for lack of resources (no free file
/// descriptor, say); it doubles up to [`ACCEPT_PAUSE_MAX`], as Go's net/http does.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(5);
/// Longest pause between failed accepts.
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// At most one warning per this interval while accepts keep failing.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// Timers and limits of the public HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time a connection has to send a complete request head (its first one
    /// counted from the accept), before it is closed.
    pub header_timeout: Duration,
    /// Time a connection may go without starting a request before it is shut
    /// down gracefully (HTTP/1 keep-alive connections are also closed by
    /// hyper after `header_timeout`).
    pub idle_timeout: Duration,
    /// Time the REST API waits for a request body before answering 408.
    pub body_timeout: Duration,
    /// Time a connection's writes may stay blocked, its caller reading
    /// nothing, before it is closed (see [`super::send_watch`]).
    pub send_timeout: Duration,
    /// Interval of HTTP/2 keep-alive pings.
    pub h2_keep_alive_interval: Duration,
    /// Time an HTTP/2 peer has to answer a ping before the connection is closed.
    pub h2_keep_alive_timeout: Duration,
    /// Concurrent streams per HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    /// Open connections at most (WebSocket tunnels included). At the limit
    /// the listener stops accepting, so new connections wait in the kernel's
    /// backlog until one closes, as nginx does at `worker_connections`:
    /// running out of file descriptors instead would also starve the store
    /// and webhook deliveries.
    pub max_connections: usize,
    /// Open connections at most from one caller address ([`counted_as`]:
    /// an IPv6 /64 counts as one), trusted proxies aside: without it one
    /// address could take every place under [`Self::max_connections`] (a
    /// connection that sends nothing keeps its place for the head timeout)
    /// and keep every other caller waiting in the backlog.
    pub max_connections_per_address: usize,
    /// Requests in flight at most from one caller address to one tunnel
    /// ([`super::registry::Session::callers`]); more get 429.
    pub max_in_flight_per_caller: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            h2_keep_alive_interval: DEFAULT_H2_KEEP_ALIVE_INTERVAL,
            h2_keep_alive_timeout: DEFAULT_H2_KEEP_ALIVE_TIMEOUT,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_in_flight_per_caller: DEFAULT_MAX_IN_FLIGHT_PER_CALLER,
        }
    }
}

/// Longest timeout accepted: hyper and the connection watcher add timeouts to
/// the clock, which must not overflow.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

impl HttpLimits {
    /// Checks that every timeout is positive and at most [`MAX_TIMEOUT`], and
    /// that HTTP/2 connections may open at least one stream.
    pub fn validate(&self) -> Result<(), String> {
        let timeouts = [
            ("header timeout", self.header_timeout),
            ("idle timeout", self.idle_timeout),
            ("body timeout", self.body_timeout),
            ("send timeout", self.send_timeout),
            ("HTTP/2 keep-alive interval", self.h2_keep_alive_interval),
            ("HTTP/2 keep-alive timeout", self.h2_keep_alive_timeout),
        ];
        for (name, value) in timeouts {
            if value.is_zero() || value > MAX_TIMEOUT {
                return Err(format!("the HTTP {name} must be between 1 ms and {MAX_TIMEOUT:?}, not {value:?}"));
            }
        }
        if self.h2_max_concurrent_streams == 0 {
            return Err("HTTP/2 connections must allow at least one stream".into());
        }
        if !(1..=Semaphore::MAX_PERMITS).contains(&self.max_connections) {
            return Err(format!(
                "the connection limit must be between 1 and {}, not {}",
                Semaphore::MAX_PERMITS,
                self.max_connections
            ));
        }
        if self.max_connections_per_address == 0 {
            return Err("the connection limit per address must be at least 1".into());
        }
        if self.max_in_flight_per_caller == 0 {
            return Err("the limit of requests in flight per caller must be at least 1".into());
        }
        Ok(())
    }
}

/// The connection limit that a process allowed `nofile` open files can keep:
/// an eighth of them (at least [`RESERVED_DESCRIPTORS`], or half of a limit
/// below twice that) stays free for everything else the server opens.
pub fn max_connections_for(nofile: u64) -> usize {
    let reserved = (nofile / 8).max(RESERVED_DESCRIPTORS.min(nofile / 2));
    let left = nofile.saturating_sub(reserved).max(1);
    usize::try_from(left).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS)
}

fn builder(limits: &HttpLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .max_headers(H1_PARSER_HEADERS);
    // The keep-alive ping costs hyper a mutex per received HTTP/2 frame; webhooks
    // arrive over HTTP/1 far more often, and a dead HTTP/2 peer would keep its
    // socket for ever without it.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.h2_keep_alive_interval)
        .keep_alive_timeout(limits.h2_keep_alive_timeout)
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW);
    builder
}

/// Serves HTTP on `listener` until `shutdown`, then lets in-flight requests
/// finish for up to `grace`, or until `cut`, and closes the connections still open.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: CancellationToken,
    grace: Duration,
    cut_short: CancellationToken,
) {
    let limits = state.config.http;
    let builder = builder(&limits);
    let connections = TaskTracker::new();
    // The edge watches it too: a request still waiting for its answer then
    // answers the caller why, in the moment its connection has left.
    let cut = state.cutting.clone();
    let mut backoff = AcceptBackoff::default();
    let slots = Arc::new(Semaphore::new(limits.max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    let mut warned_full: Option<Instant> = None;
    let per_address = Arc::new(PerAddress::new(limits.max_connections_per_address));
    let mut warned_crowded: Option<Instant> = None;
    loop {
        // A slot first: at the limit, connections wait in the backlog.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if warned_full.is_none_or(|at| at.elapsed() >= ACCEPT_WARN_EVERY) {
                    warned_full = Some(Instant::now());
                    tracing::warn!(
                        limit = limits.max_connections,
                        "connection limit reached; new connections wait until one closes"
                    );
                }
                let acquired = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    acquired = slots.clone().acquire_owned() => acquired,
                };
                match acquired {
                    Ok(slot) => slot,
                    Err(_) => break, // never closed
                }
            }
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                if let Some(failures) = backoff.accepted() {
                    tracing::info!(failures, "accepting connections again");
                }
                pair
            }
            Err(err) if is_connection_error(&err) => {
                // That connection is gone; the next one is unaffected.
                tracing::debug!(%err, "accept failed");
                continue;
            }
            Err(err) => {
                let (pause, warn) = backoff.failed(Instant::now());
                if let Some(suppressed) = warn {
                    tracing::warn!(%err, suppressed, ?pause, "accept failed; pausing accepts");
                }
                if shutdown.run_until_cancelled(tokio::time::sleep(pause)).await.is_none() {
                    break;
                }
                continue;
            }
        };
        // On a dual-stack socket (`[::]`) an IPv4 caller is `::ffff:a.b.c.d`:
        // shown as the IPv4 address it is (`clientIp`, `x-forwarded-for`).
        let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let from_peer = if state.config.trusted_proxies.is_trusted(peer.ip()) {
            None
        } else {
            match per_address.take(peer.ip()) {
                Some(place) => Some(place),
                None => {
                    refuse_crowded(&stream, peer, &mut warned_crowded, limits.max_connections_per_address);
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let requests = Arc::new(AtomicU64::new(0));
        let slot = Arc::new(ConnectionSlot(Mutex::new(Some(HeldSlot { _slot: slot, _from_peer: from_peer }))));
        let service = {
            let (state, requests, slot) = (state.clone(), requests.clone(), slot.clone());
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                requests.fetch_add(1, Ordering::Relaxed);
                if req.headers().contains_key(header::UPGRADE) {
                    req.extensions_mut().insert(slot.clone());
                }
                let state = state.clone();
                async move { Ok::<_, Infallible>(http::handle(state, req, peer).await) }
            })
        };
        let (stream, blocked) = send_watched(stream);
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let span = tracing::debug_span!("http", ?peer);
        let watch = Watch { requests, blocked, limits, shutdown: shutdown.clone(), cut: cut.clone(), _slot: slot };
        connections.spawn(drive(conn, watch).instrument(span));
    }
    drop(listener);
    connections.close();
    tokio::select! {
        () = connections.wait() => return,
        () = tokio::time::sleep(grace) => tracing::warn!(
            connections = connections.len(),
            "in-flight requests still running after {grace:?}; closing them"
        ),
        () = cut_short.cancelled() => tracing::warn!("asked again to stop: closing in-flight requests now"),
    }
    cut.cancel();
    // The requests still waiting answer why (see `drive`), before the server
    // closes the tunnels' connections: else some would see a closed tunnel
    // first, and a process that exits next would not write the answers.
    let _ = tokio::time::timeout(CUT_FLUSH, connections.wait()).await;
}

/// What [`drive`] watches a connection with.
struct Watch {
    /// Requests the connection has started, counted by its service.
    requests: Arc<AtomicU64>,
    /// Since when its writes have been blocked.
    blocked: Arc<Blocked>,
    limits: HttpLimits,
    /// Graceful shutdown of the server.
    shutdown: CancellationToken,
    /// The end of the grace period: connections still open are dropped.
    cut: CancellationToken,
    /// The connection's place under [`HttpLimits::max_connections`], given
    /// back when it ends, unless an upgrade took it.
    _slot: Arc<ConnectionSlot>,
}

/// A connection's place under [`HttpLimits::max_connections`]. Requests that
/// ask for an upgrade carry it in their extensions: hyper hands an upgraded
/// socket over and ends the connection's task, so the WebSocket session that
/// now owns the socket [takes](Self::take) the place along with it.
#[derive(Debug)]
pub struct ConnectionSlot(Mutex<Option<HeldSlot>>);

impl ConnectionSlot {
    /// The place, to hold for as long as the socket stays open; `None` once taken.
    pub fn take(&self) -> Option<HeldSlot> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A connection's places: under [`HttpLimits::max_connections`], and under
/// [`HttpLimits::max_connections_per_address`] unless a trusted proxy's.
/// Given back when dropped.
#[derive(Debug)]
pub struct HeldSlot {
    // (In this order: the address's place is given back before the server's,
    // so a connection the server takes next never finds its address full.)
    _from_peer: Option<AddressPlace>,
    _slot: OwnedSemaphorePermit,
}

/// What a connection past its address's limit reads, in the edge's form,
/// before it is closed (an HTTP/1 caller that sent its head already may see
/// a reset instead; an HTTP/2 one sees the connection close).
fn crowded_answer() -> String {
    let body = "hookway: too many connections from your address are open; close some and try again\n";
    format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: 1\r\n\
         x-hookway-error: too-many-connections\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Answers a connection past its address's limit (one try, never waiting on
/// it) and closes it, warning at most every [`ACCEPT_WARN_EVERY`].
fn refuse_crowded(stream: &TcpStream, peer: SocketAddr, warned: &mut Option<Instant>, limit: usize) {
    let _ = stream.try_write(crowded_answer().as_bytes());
    if warned.is_none_or(|at| at.elapsed() >= ACCEPT_WARN_EVERY) {
        *warned = Some(Instant::now());
        tracing::warn!(
            caller = %counted_as(peer.ip()),
            limit,
            "an address has as many connections open as it may; its new ones are refused with 429 (a reverse \
             proxy in front of the server must be listed in --trusted-proxies)"
        );
    }
}

/// Runs one connection to its end: shuts it down gracefully at `shutdown` or
/// once it has started no request (`requests` unchanged) for a while, and
/// drops it at `cut` or once its writes have been blocked (`blocked`) for the
/// send timeout.
async fn drive<C>(conn: C, watch: Watch)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let Watch { requests, blocked, limits, shutdown, cut, _slot } = watch;
    let mut conn = pin!(conn);
    let idle = tokio::time::sleep(limits.header_timeout);
    let mut idle = pin!(idle);
    let stalled = held_for(limits.send_timeout, || blocked.since());
    let mut stalled = pin!(stalled);
    // How long an idle connection's graceful close may take (armed with it):
    // an HTTP/2 caller that never reads again holds a dropped answer's stream
    // open, as hyper resets it only once the caller gives it room, and the
    // close waits on that stream for ever.
    let closed_by = tokio::time::sleep(Duration::MAX / 4);
    let mut closed_by = pin!(closed_by);
    let (mut seen, mut closing) = (0, false);
    loop {
        tokio::select! {
            biased;
            ended = conn.as_mut() => {
                if let Err(err) = ended {
                    tracing::debug!(%err, "http connection ended with an error");
                }
                return;
            }
            () = cut.cancelled() => {
                // The edge answers the requests still waiting (502, the server
                // shut down): a moment to write those answers, then dropped.
                let _ = tokio::time::timeout(CUT_FLUSH, conn.as_mut()).await;
                return;
            }
            () = closed_by.as_mut() => {
                tracing::debug!(timeout = ?limits.send_timeout, "dropping an idle connection that did not close");
                return;
            }
            () = stalled.as_mut() => {
                // Dropped, not shut down gracefully: that would wait on the
                // very writes that are blocked.
                tracing::debug!(timeout = ?limits.send_timeout, "closing a connection whose caller stopped reading");
                return;
            }
            () = shutdown.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = idle.as_mut(), if !closing => {
                let started = requests.load(Ordering::Relaxed);
                if started == seen {
                    tracing::debug!(requests = started, "closing an idle connection");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                    closed_by.as_mut().reset(Instant::now() + limits.send_timeout);
                } else {
                    seen = started;
                    idle.as_mut().reset(Instant::now() + limits.idle_timeout);
                }
            }
        }
    }
}

/// How long a connection still open at the end of the shutdown grace has to
/// write the answers the edge then gives its waiting requests.
const CUT_FLUSH: Duration = Duration::from_millis(250);

/// Errors that concern only the connection being accepted.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
    )
}

/// Pacing of accepts that fail for lack of resources (EMFILE, ENFILE,
/// ENOBUFS…): retrying at once spins and floods the log while nothing can
/// change until a connection closes. Warnings are rate-limited across
/// episodes too, since a server at its limit flaps between failing and not.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// Consecutive failures: the pause doubles with each.
    failures: u64,
    /// Failures not reported since the last warning.
    unreported: u64,
    last_warning: Option<Instant>,
    /// Whether this run of failures was reported (so its end is too).
    warned: bool,
}

impl AcceptBackoff {
    /// One more failure: how long to pause, and whether to warn now (with the
    /// number of failures not reported before this one).
    fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        let doublings = self.failures.min(16) as u32;
        let pause = ACCEPT_PAUSE_MIN.saturating_mul(1 << doublings).min(ACCEPT_PAUSE_MAX);
        self.failures += 1;
        if self.last_warning.is_some_and(|at| now.duration_since(at) < ACCEPT_WARN_EVERY) {
            self.unreported += 1;
            return (pause, None);
        }
        (self.last_warning, self.warned) = (Some(now), true);
        (pause, Some(std::mem::take(&mut self.unreported)))
    }

    /// An accept succeeded: the number of failures before it, when they were
    /// reported.
    fn accepted(&mut self) -> Option<u64> {
        let failures = std::mem::take(&mut self.failures);
        std::mem::take(&mut self.warned).then_some(failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_validated() {
        assert_eq!(HttpLimits::default().validate(), Ok(()));
        let zero = HttpLimits { idle_timeout: Duration::ZERO, ..HttpLimits::default() };
        assert!(zero.validate().unwrap_err().contains("idle timeout"));
        let huge = HttpLimits { header_timeout: Duration::MAX, ..HttpLimits::default() };
        assert!(huge.validate().unwrap_err().contains("header timeout"));
        let no_streams = HttpLimits { h2_max_concurrent_streams: 0, ..HttpLimits::default() };
        assert!(no_streams.validate().is_err());
        let no_connections = HttpLimits { max_connections: 0, ..HttpLimits::default() };
        assert!(no_connections.validate().unwrap_err().contains("connection limit"));
        let too_many = HttpLimits { max_connections: usize::MAX, ..HttpLimits::default() };
        assert!(too_many.validate().is_err());
    }

    #[test]
    fn the_connection_limit_leaves_descriptors_free() {
        assert_eq!(max_connections_for(1024), 896);
        assert_eq!(max_connections_for(256), 192);
        assert_eq!(max_connections_for(200), 136, "at least 64 are kept back");
        assert_eq!(max_connections_for(64), 32, "or half of a small limit");
        assert_eq!(max_connections_for(1), 1, "never none");
        assert_eq!(max_connections_for(1 << 20), 917_504);
        assert_eq!(max_connections_for(u64::MAX), Semaphore::MAX_PERMITS);
    }

    #[test]
    fn failed_accepts_back_off_and_warn_rarely() {
        let mut b = AcceptBackoff::default();
        let t0 = Instant::now();
        assert_eq!(b.accepted(), None);
        assert_eq!(b.failed(t0), (ACCEPT_PAUSE_MIN, Some(0)), "the first failure is reported");
        assert_eq!(b.failed(t0), (ACCEPT_PAUSE_MIN * 2, None));
        let mut pause = Duration::ZERO;
        for i in 0..1000u32 {
            let (p, warn) = b.failed(t0 + Duration::from_millis(i.into()));
            assert!(warn.is_none());
            pause = p;
        }
        assert_eq!(pause, ACCEPT_PAUSE_MAX);
        assert_eq!(b.failed(t0 + ACCEPT_WARN_EVERY), (ACCEPT_PAUSE_MAX, Some(1001)), "then once per interval");
        assert_eq!(b.accepted(), Some(1003), "the end of a reported run is reported");
        // Flapping: a new run starts from the shortest pause, but within the
        // interval it is neither warned about nor reported as over.
        let t1 = t0 + ACCEPT_WARN_EVERY + Duration::from_secs(1);
        assert_eq!(b.failed(t1), (ACCEPT_PAUSE_MIN, None));
        assert_eq!(b.accepted(), None);
        assert_eq!(b.failed(t0 + ACCEPT_WARN_EVERY * 2), (ACCEPT_PAUSE_MIN, Some(1)));
    }
}
