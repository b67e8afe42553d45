//! The in-memory tunnel table and the live-session routing map.
//!
//! Routing a public request is one `DashMap` lookup (subdomain → live session)
//! and an `Arc` clone; no lock is held across an `.await`. The table mirrors the
//! store: the API writes the store first, then this table, so what the API
//! answers has been persisted. Request counters live here as atomics and are
//! flushed to the store in batches by a background task.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;

use crate::inbound::{InboundConfig, Rules};
use crate::store::{CounterUpdate, TunnelRecord};
use crate::wire::SessionEnded;

/// Mutable tunnel fields, changed only through the API or a handshake.
#[derive(Debug, Clone)]
pub struct TunnelMeta {
    /// Display name.
    pub name: String,
    /// SHA-256 of the current auth token.
    pub token_hash: [u8; 32],
    /// Last handshake time.
    pub last_connected_at: Option<String>,
    /// Label webhooks can subscribe to.
    pub group: Option<String>,
}

/// A tunnel known to the server.
#[derive(Debug)]
pub struct Tunnel {
    /// `tun_…`.
    pub id: String,
    /// Owning organization.
    pub org_id: String,
    /// Routing name.
    pub subdomain: String,
    /// Creation time.
    pub created_at: String,
    meta: Mutex<TunnelMeta>,
    /// Requests forwarded over the tunnel's lifetime.
    pub total_requests: AtomicU64,
    persisted_requests: AtomicU64,
    /// Whether bodies are captured for inspection: an atomic, since every
    /// forwarded request reads it.
    pub capture_bodies: AtomicBool,
    /// The counter in the ids of this tunnel's captured requests (from a
    /// random start). The tunnel's own, not the server's: ids are shown to
    /// the tunnel's organization, and with one counter for all tunnels the
    /// gap between two of its ids told how many requests other
    /// organizations had sent meanwhile. Ids are unique per tunnel (the
    /// store keys records by tunnel and id).
    pub(crate) capture_counter: AtomicU32,
    /// Whether [`Tunnel::inbound`] holds rules: every forwarded request reads
    /// it, and most tunnels have none, so they never take the lock.
    has_inbound: AtomicBool,
    /// The inbound options in force (seed 004), with their rate limit's state.
    inbound: Mutex<Option<Arc<Rules>>>,
    /// Held by an API change (update, new token, delete) from reading the
    /// tunnel's fields to setting them: two PATCHes at once each wrote back
    /// the options it read, and one of them was lost; two new tokens at once
    /// were stored in one order and taken in memory in the other.
    pub(crate) updates: Arc<tokio::sync::Mutex<()>>,
    /// Held while a session of this tunnel is attached, checked or taken out
    /// of the routing map together with the events that say so (see
    /// `session::go_live`): subscribers get them in the order they happened,
    /// and a client whose token was just regenerated cannot replace one
    /// holding the new token. Never held across an `.await`.
    pub(crate) events: Mutex<()>,
}

impl Tunnel {
    /// From a stored record.
    pub fn from_record(r: TunnelRecord) -> Self {
        Self {
            id: r.id,
            org_id: r.org_id,
            subdomain: r.subdomain,
            created_at: r.created_at,
            meta: Mutex::new(TunnelMeta {
                name: r.name,
                token_hash: r.token_hash,
                last_connected_at: r.last_connected_at,
                group: r.group,
            }),
            total_requests: AtomicU64::new(r.total_requests),
            persisted_requests: AtomicU64::new(r.total_requests),
            capture_bodies: AtomicBool::new(r.capture_bodies),
            capture_counter: AtomicU32::new(rand::random()),
            has_inbound: AtomicBool::new(!r.inbound.is_empty()),
            inbound: Mutex::new((!r.inbound.is_empty()).then(|| Arc::new(Rules::new(r.inbound)))),
            updates: Arc::new(tokio::sync::Mutex::new(())),
            events: Mutex::new(()),
        }
    }

    /// The inbound options in force, if any.
    pub fn inbound(&self) -> Option<Arc<Rules>> {
        if !self.has_inbound.load(Ordering::Acquire) {
            return None;
        }
        self.inbound.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `config` in force; the rate limit's allowance goes on as it was
    /// if the limit is the same.
    pub fn set_inbound(&self, config: InboundConfig) {
        let mut held = self.inbound.lock().unwrap_or_else(|p| p.into_inner());
        let rules = (!config.is_empty()).then(|| Arc::new(Rules::replacing(config, held.as_deref())));
        self.has_inbound.store(rules.is_some(), Ordering::Release);
        *held = rules;
    }

    /// Orders a change of this tunnel's session with its events (see
    /// [`Tunnel::events`]).
    pub(crate) fn order_events(&self) -> std::sync::MutexGuard<'_, ()> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A snapshot of the mutable fields.
    pub fn meta(&self) -> TunnelMeta {
        self.meta.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the mutable fields.
    pub fn update_meta(&self, f: impl FnOnce(&mut TunnelMeta)) {
        f(&mut self.meta.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// What carries requests to a connected client.
#[derive(Debug, Clone)]
pub enum Transport {
    /// A QUIC connection: one bidirectional stream per request.
    Quic(quinn::Connection),
    /// A legacy WebSocket-JSON client: requests multiplexed by id.
    WebSocket(Arc<super::gateway::WsLink>),
}

impl Transport {
    /// `quic` or `websocket`, for logs and the API.
    pub fn kind(&self) -> &'static str {
        match self {
            Transport::Quic(_) => "quic",
            Transport::WebSocket(_) => "websocket",
        }
    }
}

/// [`Session::token_state`]: `token.connected` has not fired yet.
pub const TOKEN_UNANNOUNCED: u8 = 0;
/// [`Session::token_state`]: `token.connected` fired; a disconnect is owed.
pub const TOKEN_CONNECTED: u8 = 1;
/// [`Session::token_state`]: the session ended; nothing more fires for it.
pub const TOKEN_ENDED: u8 = 2;

/// One connected client serving a tunnel.
#[derive(Debug)]
pub struct Session {
    /// Unique per session, to tell a stale session from its replacement.
    pub id: u64,
    /// The tunnel served.
    pub tunnel: Arc<Tunnel>,
    /// How requests reach the client.
    pub transport: Transport,
    /// Handshake time.
    pub connected_at: String,
    /// The client's address.
    pub client_ip: IpAddr,
    /// Requests forwarded in this session.
    pub requests: AtomicU64,
    /// Public id of the token the client authenticated with (for token events).
    pub token_id: String,
    /// Where this session's token events stand: [`TOKEN_UNANNOUNCED`],
    /// [`TOKEN_CONNECTED`] or [`TOKEN_ENDED`]. `token.disconnected` fires once,
    /// for an announced session, when the server ends or replaces it or its
    /// connection closes, whichever comes first (see `session::token_offline`).
    pub token_state: std::sync::atomic::AtomicU8,
    /// Set when the server ends the session on purpose; the QUIC session task
    /// passes it to the client on the control stream (see [`Session::close`]).
    pub ending: tokio::sync::watch::Sender<Option<SessionEnded>>,
    /// The answers of this session that their callers are slow to take (or
    /// left untaken): over QUIC they share its connection window, which
    /// grows for a few of them (see `untaken`).
    pub stalls: Arc<super::untaken::Stalls>,
    /// Requests in flight per caller address, kept under
    /// [`super::listener::HttpLimits::max_in_flight_per_caller`]: a tunnel
    /// carries at most [`crate::quic::MAX_CONCURRENT_REQUESTS`] requests at
    /// once, and one caller whose requests wait (POSTs whose bodies never
    /// come) could take them all and hold every other caller for the
    /// request timeout, again and again.
    pub callers: Arc<super::per_address::PerAddress>,
}

/// How long a QUIC client may take to read why its session ended and close
/// (or four round trips, on a path slower than that); then the server closes
/// the connection itself.
pub const END_GRACE: Duration = Duration::from_secs(2);

impl Session {
    /// Ends the session with an application close code the client understands.
    ///
    /// Over QUIC the reason goes on the control stream before the close:
    /// quinn sends no close packet while congestion-blocked (quinn issue 2785),
    /// and a client that never learned why would reconnect, bringing back a
    /// tunnel that was disconnected, or taking it back from the client that
    /// replaced it. The client closes once it has read the reason; the server
    /// closes after [`END_GRACE`] regardless.
    pub fn close(&self, code: quinn::VarInt, reason: &str) {
        match &self.transport {
            Transport::Quic(conn) => {
                let close_code = u32::try_from(code.into_inner()).unwrap_or(u32::MAX);
                self.ending.send_replace(Some(SessionEnded { close_code, message: reason.to_owned() }));
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return conn.close(code, reason.as_bytes());
                };
                let (conn, reason) = (conn.clone(), reason.to_owned());
                runtime.spawn(async move {
                    let grace = END_GRACE.max(conn.rtt() * 4);
                    let _ = tokio::time::timeout(grace, conn.closed()).await;
                    conn.close(code, reason.as_bytes());
                });
            }
            Transport::WebSocket(link) => link.close(code, reason),
        }
    }

    /// Counts one forwarded request.
    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.tunnel.total_requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// All tunnels, indexed by id and subdomain, plus the live sessions.
#[derive(Debug, Default)]
pub struct Registry {
    by_id: DashMap<String, Arc<Tunnel>>,
    by_subdomain: DashMap<String, Arc<Tunnel>>,
    live: DashMap<String, Arc<Session>>,
    next_session: AtomicU64,
}

impl Registry {
    /// Adds (or replaces) a tunnel.
    pub fn insert(&self, tunnel: Arc<Tunnel>) {
        self.by_subdomain.insert(tunnel.subdomain.clone(), tunnel.clone());
        self.by_id.insert(tunnel.id.clone(), tunnel);
    }

    /// Removes a tunnel and returns its live session, if any.
    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        let (_, tunnel) = self.by_id.remove(id)?;
        self.by_subdomain.remove(&tunnel.subdomain);
        self.live.remove(&tunnel.subdomain).map(|(_, s)| s)
    }

    /// A tunnel by id.
    pub fn get(&self, id: &str) -> Option<Arc<Tunnel>> {
        self.by_id.get(id).map(|t| t.clone())
    }

    /// A tunnel by subdomain.
    pub fn by_subdomain(&self, subdomain: &str) -> Option<Arc<Tunnel>> {
        self.by_subdomain.get(subdomain).map(|t| t.clone())
    }

    /// Whether a subdomain is taken.
    pub fn subdomain_exists(&self, subdomain: &str) -> bool {
        self.by_subdomain.contains_key(subdomain)
    }

    /// All tunnels of an organization, oldest first.
    pub fn list(&self, org_id: &str) -> Vec<Arc<Tunnel>> {
        let mut v: Vec<_> = self.by_id.iter().filter(|t| t.org_id == org_id).map(|t| t.clone()).collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        v
    }

    /// Every tunnel's id.
    pub fn all_ids(&self) -> Vec<String> {
        self.by_id.iter().map(|t| t.key().clone()).collect()
    }

    /// The hot-path lookup: the live session serving `subdomain`.
    pub fn route(&self, subdomain: &str) -> Option<Arc<Session>> {
        self.live.get(subdomain).map(|s| s.clone())
    }

    /// The live session of a tunnel.
    pub fn session_of(&self, tunnel: &Tunnel) -> Option<Arc<Session>> {
        self.route(&tunnel.subdomain)
    }

    /// Makes `session` the one serving its tunnel; returns the one it replaced.
    pub fn attach(&self, session: Arc<Session>) -> Option<Arc<Session>> {
        self.live.insert(session.tunnel.subdomain.clone(), session)
    }

    /// Removes `session` if it is still the one serving its tunnel.
    pub fn detach(&self, session: &Session) -> bool {
        self.live.remove_if(&session.tunnel.subdomain, |_, s| s.id == session.id).is_some()
    }

    /// Removes and returns whatever session serves the tunnel.
    pub fn take_session(&self, tunnel: &Tunnel) -> Option<Arc<Session>> {
        self.live.remove(&tunnel.subdomain).map(|(_, s)| s)
    }

    /// A fresh session id.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Every live session (for shutdown).
    pub fn sessions(&self) -> Vec<Arc<Session>> {
        self.live.iter().map(|s| s.clone()).collect()
    }

    /// Counters changed since the last call; call [`Registry::mark_persisted`]
    /// once they are stored.
    pub fn dirty_counters(&self) -> Vec<CounterUpdate> {
        self.by_id
            .iter()
            .filter_map(|t| {
                let total = t.total_requests.load(Ordering::Relaxed);
                (total != t.persisted_requests.load(Ordering::Relaxed))
                    .then(|| CounterUpdate { tunnel_id: t.id.clone(), total_requests: total })
            })
            .collect()
    }

    /// Records that these counters reached the store.
    pub fn mark_persisted(&self, updates: &[CounterUpdate]) {
        for u in updates {
            if let Some(t) = self.by_id.get(&u.tunnel_id) {
                t.persisted_requests.store(u.total_requests, Ordering::Relaxed);
            }
        }
    }
}
