//! Accepting tunnel clients over QUIC: handshake on the control stream, then a
//! live session in the routing map until the connection ends.

use std::net::IpAddr;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::sync::atomic::{AtomicU8, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::State;
use super::log_limit::LogLimit;
use super::names::{hash_secret, secret_matches};
use super::registry::{END_GRACE, Session, TOKEN_CONNECTED, TOKEN_ENDED, TOKEN_UNANNOUNCED, Transport, Tunnel};
use crate::notify::EventKind;
use crate::notify::event::token_public_id;
use crate::quic::{FrameReader, FrameWriter, close};
use crate::wire::{ClientHello, Frame, PROTOCOL_VERSION, RejectCode, Rejected, ServerHello, SessionEnded};

/// Time allowed for the QUIC and hookway handshakes together.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval at which clients are asked to ping.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How long a client that said it is leaving keeps its connection for the
/// requests in flight before the server closes it: twice the drain our
/// client gives them (`client::DRAIN`), so that one honest client is never
/// cut short, while a client that never closes is.
pub const LEFT_DRAIN: Duration = Duration::from_secs(10);

/// Handshakes (QUIC's and hookway's hello) in progress at once. Each holds
/// at most [`crate::quic::UNAUTHENTICATED_WINDOW`] of its peer's bytes and
/// lasts at most [`HANDSHAKE_TIMEOUT`]: without a bound, connections that never
/// authenticate were a way to make the server hold memory without limit. Past
/// it, new connections are refused (clients retry with backoff); an honest
/// handshake takes a round trip or two, so even a restart's reconnect storm
/// of thousands of tunnels passes it in a few seconds.
pub const MAX_HANDSHAKES: usize = 256;
/// Handshakes from one address (an IPv6 /64) at once: one host cannot take the whole
/// budget from everyone else. (A NAT shares an address, but its tunnels
/// connect once each and pass in a round trip or two.)
pub const MAX_HANDSHAKES_PER_IP: usize = 16;
/// How often the refusal of a client (a wrong token, an unknown tunnel) may be
/// logged: anyone can be refused as often as they like.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);
/// How often a full handshake budget is logged.
const BUSY_LOG_EVERY: Duration = Duration::from_secs(10);
/// The most of a refused client's tunnel id that is logged.
const LOGGED_ID_MAX: usize = 64;

/// The handshakes in progress: [`MAX_HANDSHAKES`] in all, and
/// [`MAX_HANDSHAKES_PER_IP`] from one address.
#[derive(Default)]
struct Handshakes {
    by_ip: Mutex<std::collections::HashMap<IpAddr, usize>>,
}

/// One handshake's place in [`Handshakes`], given back when dropped.
struct HandshakeSlot {
    budget: Arc<Handshakes>,
    ip: IpAddr,
}

impl Handshakes {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<HandshakeSlot, &'static str> {
        let ip = super::proxies::counted_as(ip);
        let mut by_ip = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if by_ip.values().sum::<usize>() >= MAX_HANDSHAKES {
            return Err("too many QUIC handshakes at once; refusing new connections until some finish");
        }
        let from_ip = by_ip.entry(ip).or_default();
        if *from_ip >= MAX_HANDSHAKES_PER_IP {
            return Err("too many QUIC handshakes at once from one address; refusing its new connections");
        }
        *from_ip += 1;
        Ok(HandshakeSlot { budget: self.clone(), ip })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut by_ip = self.budget.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections until `shutdown`; each runs as a task on `state.tasks`.
pub async fn accept_loop(endpoint: quinn::Endpoint, state: Arc<State>, shutdown: CancellationToken) {
    let handshakes = Arc::new(Handshakes::default());
    let refusals = Arc::new(Mutex::new(LogLimit::new(REFUSAL_LOG_EVERY)));
    let mut busy = LogLimit::new(BUSY_LOG_EVERY);
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        // A handshake holds its place only once its peer has shown it gets
        // what is sent to its address (a stateless retry, a round trip,
        // costing the server nothing): else packets with forged sources,
        // needing no answer, could keep every place taken.
        if !incoming.remote_address_validated() && incoming.may_retry() {
            let _ = incoming.retry();
            continue;
        }
        let ip = incoming.remote_address().ip().to_canonical();
        let slot = match handshakes.take(ip) {
            Ok(slot) => slot,
            Err(why) => {
                if let Some(unlogged) = busy.admit(std::time::Instant::now()) {
                    tracing::warn!(limit = MAX_HANDSHAKES, per_ip = MAX_HANDSHAKES_PER_IP, %ip, refused_before = unlogged, "{why}");
                }
                incoming.refuse();
                continue;
            }
        };
        let span = tracing::info_span!("quic", remote = ?incoming.remote_address());
        state.tasks.spawn(handle(incoming, state.clone(), slot, refusals.clone()).instrument(span));
    }
}

async fn handle(
    incoming: quinn::Incoming,
    state: Arc<State>,
    handshaking: HandshakeSlot,
    refusals: Arc<Mutex<LogLimit>>,
) {
    let handshake = async {
        let conn = incoming.await.map_err(|e| tracing::debug!(err = %e, "QUIC handshake failed"))?;
        let (send, recv) = conn.accept_bi().await.map_err(|e| tracing::debug!(err = %e, "no control stream"))?;
        let mut reader = FrameReader::new(recv);
        match reader.next().await {
            Ok(Some(Frame::ClientHello(hello))) => Ok((conn, reader, FrameWriter::control(send), hello)),
            other => {
                tracing::debug!(?other, "first frame was not a ClientHello");
                conn.close(close::PROTOCOL_ERROR, b"expected ClientHello");
                Err(())
            }
        }
    };
    let Ok(Ok((conn, reader, mut writer, hello))) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await else {
        return;
    };
    let tunnel = match authenticate(&state, &hello) {
        Ok(tunnel) => tunnel,
        Err(rejected) => return refuse(&conn, writer, &hello.tunnel_id, rejected, &refusals).await,
    };
    drop(handshaking);
    crate::quic::open_receive_window(&conn);
    // An IPv4 client of a dual-stack socket (`[::]`) as the IPv4 address it is.
    let client_ip = conn.remote_address().ip().to_canonical();
    let Some(session) = go_live(&state, &tunnel, Transport::Quic(conn.clone()), client_ip, &hello.auth_token) else {
        // Regenerated between the check and going live: the same answer as a
        // token that was already stale, so the client stops for good.
        let rejected = Rejected { code: RejectCode::BadToken, message: TOKEN_REGENERATED.to_owned() };
        return refuse(&conn, writer, &hello.tunnel_id, rejected, &refusals).await;
    };
    let hello = ServerHello {
        tunnel_id: tunnel.id.clone(),
        name: tunnel.meta().name,
        subdomain: tunnel.subdomain.clone(),
        tunnel_url: state.tunnel_url(&tunnel.subdomain),
        host_url: state.host_url(&tunnel.subdomain),
        heartbeat_interval_ms: HEARTBEAT_INTERVAL.as_millis() as u32,
        accepts_leaving: true,
    };
    if writer.send(&Frame::ServerHello(hello)).await.is_err() {
        end(&state, &session, "handshake answer not delivered");
        return;
    }
    // A client that says it is leaving is taken out of the routing map at
    // once: its tunnel is offline (new requests get an offline tunnel's
    // answer, its offline reply among them) while the requests it has finish.
    let leaving = || {
        end(&state, &session, "its client is stopping");
    };
    let (reason, left) = heartbeats(&conn, reader, writer, session.ending.subscribe(), &leaving).await;
    // (A client that left and then ended its control stream is closed too:
    // nothing else would supervise its connection.)
    if end(&state, &session, &reason) || left {
        conn.close(close::NORMAL, b"session ended");
    }
}

/// What a client hears when its token is no longer the tunnel's.
const TOKEN_REGENERATED: &str = "invalid auth token for this tunnel (was it regenerated?)";

/// Refuses a handshake: the reason on the control stream, then the close.
/// Logged within `log`'s allowance, the tunnel id (the client's to choose)
/// cut short and escaped: a line break in it must not forge a log line.
async fn refuse(
    conn: &quinn::Connection,
    mut writer: FrameWriter,
    tunnel_id: &str,
    rejected: Rejected,
    log: &Mutex<LogLimit>,
) {
    let admitted = log.lock().unwrap_or_else(|p| p.into_inner()).admit(std::time::Instant::now());
    if let Some(unlogged) = admitted {
        let tunnel_id = crate::wsjson::clip(tunnel_id, LOGGED_ID_MAX);
        let reason = &rejected.message;
        if unlogged == 0 {
            tracing::info!(?tunnel_id, %reason, "client refused");
        } else {
            tracing::info!(?tunnel_id, %reason, refused_unlogged = unlogged, "client refused");
        }
    }
    let _ = writer.send(&Frame::Rejected(rejected)).await;
    writer.finish();
    // Let the client read the reason and close; then close regardless.
    let _ = tokio::time::timeout(END_GRACE, conn.closed()).await;
    conn.close(close::REJECTED, b"rejected");
}

/// Makes a new, authenticated client the one serving `tunnel`, whatever its
/// transport: the newest client wins, and the one it replaces is told so and
/// gives up. `None` when the token was regenerated since the caller checked
/// it: the caller refuses the client as it would a stale token (nothing was
/// attached, so nothing needs closing here).
pub fn go_live(
    state: &State,
    tunnel: &Arc<Tunnel>,
    transport: Transport,
    client_ip: IpAddr,
    token: &str,
) -> Option<Arc<Session>> {
    // The token is checked again under the tunnel's event order, which a
    // regeneration takes to end the session: either the new token is in
    // place and this client is refused before it replaces anyone, or the
    // regeneration ends this session after it went live.
    let _order = tunnel.order_events();
    if !secret_matches(token, &tunnel.meta().token_hash) {
        return None;
    }
    // Over QUIC, the answers its callers are slow to take are paid for with
    // more of its connection's window, up to a point (see `untaken`).
    let stalls = Arc::new(match &transport {
        Transport::Quic(conn) => super::untaken::Stalls::for_connection(conn.clone()),
        // (Unused: a WebSocket tunnel's answers are in memory, not in a shared window.)
        Transport::WebSocket(_) => super::untaken::Stalls::new(0, usize::MAX, super::untaken::STALL_GRACE, None),
    });
    let session = Arc::new(Session {
        id: state.registry.next_session_id(),
        tunnel: tunnel.clone(),
        transport,
        connected_at: super::clock::now_rfc3339(),
        client_ip,
        requests: AtomicU64::new(0),
        token_id: token_public_id(&hash_secret(token)),
        token_state: AtomicU8::new(TOKEN_UNANNOUNCED),
        ending: tokio::sync::watch::Sender::new(None),
        stalls,
        callers: Arc::new(super::per_address::PerAddress::new(state.config.http.max_in_flight_per_caller as usize)),
    });
    let replaced = state.registry.attach(session.clone());
    if let Some(old) = &replaced {
        tracing::info!(tunnel_id = %tunnel.id, "a new client took over the tunnel");
        old.close(close::REPLACED, "another client connected to this tunnel");
        // Before the new session's `token.connected`: with the same token, a
        // disconnect after it would leave subscribers believing it is gone.
        token_offline(state, old);
    }
    state.record_connected(tunnel, &session.connected_at);
    let group = tunnel.meta().group;
    if replaced.is_none() {
        state.notifier.emit(EventKind::TunnelConnected, &tunnel.org_id, &tunnel.id, group.as_deref());
    }
    session.token_state.store(TOKEN_CONNECTED, Release);
    state.notifier.emit(EventKind::TokenConnected, &tunnel.org_id, &session.token_id, group.as_deref());
    tracing::info!(tunnel_id = %tunnel.id, subdomain = %tunnel.subdomain, kind = session.transport.kind(), "tunnel connected");
    Some(session)
}

/// Takes an ended session out of the routing map (unless the API or a newer
/// client already did); true if it was still the one serving its tunnel.
/// Fires `token.disconnected` (unless the server ended or replaced the session
/// and fired it then), and `tunnel.disconnected` if this took the tunnel
/// offline: a replaced session's tunnel never was, and one the server ended on
/// purpose was reported by [`end_on_purpose`].
pub fn end(state: &State, session: &Session, reason: &str) -> bool {
    let _order = session.tunnel.order_events();
    let was_live = state.registry.detach(session);
    token_offline(state, session);
    if was_live {
        tracing::info!(tunnel_id = %session.tunnel.id, %reason, "tunnel disconnected");
        tunnel_offline(state, &session.tunnel);
    } else {
        // Replaced, ended on purpose or left: said when that happened.
        tracing::debug!(tunnel_id = %session.tunnel.id, %reason, "an ended session's connection closed");
    }
    was_live
}

/// Ends on purpose (API disconnect, new token, deleted tunnel) the session
/// `take` removes from the routing map, if any. The tunnel is offline from
/// this moment, so `tunnel.disconnected` fires now: by the time the client's
/// connection closes, a new client may be serving the tunnel, and the event
/// would be lost between two `tunnel.connected`.
pub fn end_on_purpose(
    state: &State,
    tunnel: &Tunnel,
    take: impl FnOnce() -> Option<Arc<Session>>,
    code: quinn::VarInt,
    reason: &str,
) {
    let _order = tunnel.order_events();
    let Some(session) = take() else { return };
    tracing::info!(tunnel_id = %tunnel.id, %reason, "tunnel disconnected");
    session.close(code, reason);
    token_offline(state, &session);
    tunnel_offline(state, &session.tunnel);
}

/// Fires the session's `token.disconnected`, once: when the server ends or
/// replaces it, not seconds later when its connection finally closes (a QUIC
/// client gets [`super::registry::END_GRACE`] to read why), by which time a
/// client with the same token may have connected, and the late disconnect
/// would be the last word on a token in use.
fn token_offline(state: &State, session: &Session) {
    if session.token_state.swap(TOKEN_ENDED, AcqRel) != TOKEN_CONNECTED {
        return;
    }
    let t = &session.tunnel;
    state.notifier.emit(EventKind::TokenDisconnected, &t.org_id, &session.token_id, t.meta().group.as_deref());
}

/// Moves `tunnel` to `group` (the API's update), telling subscribers of a
/// connected tunnel's old and new group, so that what each group's webhooks
/// heard last is the tunnel's state: the old group's hear it (and its token)
/// disconnect, the new group's connect. Webhooks of every group hear nothing.
/// Without this a tunnel moved while connected was a connect without a
/// disconnect to the old group and the reverse to the new one (found by a
/// walkthrough).
///
/// Under the tunnel's event order, so no connect or disconnect of a session
/// comes between the move and its events, and each reads the group in force.
pub fn regroup(state: &State, tunnel: &Tunnel, group: Option<String>) {
    let _order = tunnel.order_events();
    let old = tunnel.meta().group;
    tunnel.update_meta(|m| m.group = group.clone());
    if old == group {
        return;
    }
    // (By its id too: the subdomain may be another tunnel's by now, had this
    // one been deleted and its name taken while the update was stored.)
    let Some(session) = state.registry.session_of(tunnel).filter(|s| s.tunnel.id == tunnel.id) else { return };
    let token = session.token_state.load(Acquire) == TOKEN_CONNECTED;
    let (org, notifier) = (&tunnel.org_id, &state.notifier);
    if old.is_some() {
        if token {
            notifier.emit_regrouped(EventKind::TokenDisconnected, org, &session.token_id, old.as_deref());
        }
        notifier.emit_regrouped(EventKind::TunnelDisconnected, org, &tunnel.id, old.as_deref());
    }
    notifier.emit_regrouped(EventKind::TunnelConnected, org, &tunnel.id, group.as_deref());
    if token {
        notifier.emit_regrouped(EventKind::TokenConnected, org, &session.token_id, group.as_deref());
    }
}

/// Fires `tunnel.disconnected`: by [`end`] or [`end_on_purpose`], whichever
/// took the session out of the routing map, so exactly once per session that
/// went offline.
fn tunnel_offline(state: &State, t: &Tunnel) {
    state.notifier.emit(EventKind::TunnelDisconnected, &t.org_id, &t.id, t.meta().group.as_deref());
}

/// Answers pings on the control stream until it or the connection ends,
/// tells the client if the server ends the session ([`Session::close`]), and
/// calls `leaving` when the client says it is stopping. Why it ended, and
/// whether the client had left.
async fn heartbeats(
    conn: &quinn::Connection,
    mut reader: FrameReader,
    mut writer: FrameWriter,
    mut ending: tokio::sync::watch::Receiver<Option<SessionEnded>>,
    leaving: &(dyn Fn() + Sync),
) -> (String, bool) {
    // The session may have been ended before this task subscribed.
    ending.mark_changed();
    let mut told = false;
    // Once the client left, no API call can reach the session (it is out of
    // the routing map): the server ends its drain itself if the client does not.
    let mut left = false;
    let drain_over = tokio::time::sleep(LEFT_DRAIN);
    tokio::pin!(drain_over);
    let reason = async {
        loop {
            tokio::select! {
                err = conn.closed() => return err.to_string(),
                () = &mut drain_over, if left => {
                    conn.close(close::NORMAL, b"drain over");
                    return "its client left and did not close within its drain".into();
                }
                changed = ending.changed(), if !told => {
                    let notice = ending.borrow_and_update().clone();
                    match (changed, notice) {
                        (Ok(()), Some(notice)) => {
                            told = true;
                            // Pongs stop; the client closes once it reads this.
                            let _ = writer.send(&Frame::SessionEnded(notice)).await;
                            writer.finish();
                        }
                        (Ok(()), None) => {}
                        (Err(_), _) => told = true,
                    }
                }
                frame = reader.next() => match frame {
                    // (After `Leaving` too: a client that left and pings without
                    // reading would block the pong's write, and with it the close
                    // at the end of its drain.)
                    Ok(Some(Frame::Ping(_))) if told || left => {}
                    Ok(Some(Frame::Ping(seq))) => {
                        if writer.send(&Frame::Pong(seq)).await.is_err() {
                            return "control stream closed".into();
                        }
                    }
                    Ok(Some(Frame::Pong(_))) => {}
                    // The connection stays for the requests in flight; the client
                    // closes it once they are done.
                    Ok(Some(Frame::Leaving)) if !left => {
                        left = true;
                        drain_over.as_mut().reset(tokio::time::Instant::now() + LEFT_DRAIN);
                        leaving();
                    }
                    Ok(Some(Frame::Leaving)) => {}
                    Ok(Some(other)) => {
                        tracing::debug!(?other, "unexpected frame on the control stream");
                        conn.close(close::PROTOCOL_ERROR, b"unexpected frame on control stream");
                        return "protocol error".into();
                    }
                    Ok(None) => return "client closed the control stream".into(),
                    // The connection's end, when that is why the read failed: the
                    // same reason whichever of the two quinn woke first.
                    Err(err) => return conn.close_reason().map_or_else(|| err.to_string(), |closed| closed.to_string()),
                },
            }
        }
    }
    .await;
    (reason, left)
}

fn authenticate(state: &State, hello: &ClientHello) -> Result<Arc<Tunnel>, Rejected> {
    let reject = |code, message: &str| Rejected { code, message: message.to_owned() };
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(reject(
            RejectCode::UnsupportedVersion,
            &format!(
                "protocol version {} is not supported (server speaks {PROTOCOL_VERSION}); upgrade hookway",
                hello.protocol_version
            ),
        ));
    }
    let Some(tunnel) = state.registry.get(&hello.tunnel_id) else {
        return Err(reject(RejectCode::UnknownTunnel, "no such tunnel (was it deleted?)"));
    };
    if !secret_matches(&hello.auth_token, &tunnel.meta().token_hash) {
        return Err(reject(RejectCode::BadToken, TOKEN_REGENERATED));
    }
    Ok(tunnel)
}
