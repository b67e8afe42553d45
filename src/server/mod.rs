//! The hookway server: HTTP edge + REST API on TCP, tunnel clients on QUIC.
//!
//! [`Server::bind`] opens the store, loads the tunnel table, queues the
//! disconnect notifications a previous run died owing, binds both listeners
//! and prepares TLS; [`Server::run`] serves until the shutdown token
//! fires, then stops accepting, lets in-flight requests finish under a deadline,
//! closes tunnel sessions with a "reconnect later" code and flushes counters.

pub mod api;
mod auth_failures;
mod caller_pace;
pub mod capture;
pub mod clock;
mod dir_lock;
mod dir_watch;
pub mod edge;
pub mod gateway;
mod held;
pub mod http;
mod inbound;
pub mod listener;
mod log_limit;
pub mod names;
mod observed;
pub mod per_address;
pub mod proxies;
pub mod registry;
pub mod requests_api;
mod routes;
mod send_watch;
pub mod session;
mod untaken;
pub mod webhooks_api;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::notify::{Notifier, NotifyConfig};
use crate::quic::{self, close, tls};
use crate::shutdown::Shutdown;
use crate::store::{ApiKeyRecord, ENV_KEY_PREFIX, SqliteStore, StoreError, StoreHandle};
use capture::{Capture, CaptureConfig};
use gateway::WsLimits;
use listener::HttpLimits;
use registry::{Registry, Tunnel};

pub use dir_watch::{DEFAULT_DATA_DIR_CHECK, DataDirLost};

/// Default time the edge waits for the local app's response head.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time in-flight requests get to finish at shutdown.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often request counters are written to the store.
pub const COUNTER_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How long a verified API key is trusted without asking the store again:
/// how soon `hookway keys revoke` takes effect on a running server.
pub const KEY_RECHECK: Duration = Duration::from_secs(10);

/// Name of the organization that bootstrap keys belong to.
pub const DEFAULT_ORG: &str = "default";

/// Where the QUIC certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// Generate (once) a self-signed certificate in the data directory.
    SelfSigned,
    /// Use these PEM files.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
}

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// TCP address of the HTTP edge and API.
    pub http_addr: SocketAddr,
    /// UDP address of the QUIC listener.
    pub quic_addr: SocketAddr,
    /// Directory for the database and the generated certificate.
    pub data_dir: PathBuf,
    /// Public base URL; defaults to `http://{http_addr}`.
    pub public_url: Option<String>,
    /// Domain for host-based routing (`{subdomain}.{domain}`).
    pub domain: Option<String>,
    /// QUIC address clients should dial, when it differs from `{public host}:{quic port}`.
    pub quic_public_addr: Option<String>,
    /// TLS material.
    pub tls: TlsSource,
    /// How long the edge waits for a response head.
    pub request_timeout: Duration,
    /// How long in-flight requests may run after shutdown starts.
    pub shutdown_grace: Duration,
    /// An API key to accept (created in the default organization if unknown).
    pub api_key: Option<String>,
    /// Timeouts and limits of the public HTTP listener.
    pub http: HttpLimits,
    /// Limits of the WebSocket-JSON gateway.
    pub ws: WsLimits,
    /// Status webhook delivery settings.
    pub webhooks: NotifyConfig,
    /// Request capture for inspection.
    pub capture: CaptureConfig,
    /// Reverse proxies whose `X-Forwarded-For` names the caller.
    pub trusted_proxies: proxies::TrustedProxies,
    /// How often the server looks whether its data dir is still there
    /// ([`DEFAULT_DATA_DIR_CHECK`]); it stops when it is not.
    pub data_dir_check: Duration,
}

impl ServerConfig {
    /// Defaults for a first try on one machine, storing data in `data_dir`.
    pub fn local(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            http_addr: "127.0.0.1:8080".parse().expect("literal"),
            quic_addr: "127.0.0.1:4443".parse().expect("literal"),
            data_dir: data_dir.into(),
            public_url: None,
            domain: None,
            quic_public_addr: None,
            tls: TlsSource::SelfSigned,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            api_key: None,
            http: HttpLimits::default(),
            ws: WsLimits::default(),
            webhooks: NotifyConfig::default(),
            capture: CaptureConfig::default(),
            trusted_proxies: proxies::TrustedProxies::default(),
            data_dir_check: DEFAULT_DATA_DIR_CHECK,
        }
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
    /// QUIC endpoint error.
    #[error(transparent)]
    Endpoint(#[from] quic::EndpointError),
    /// TLS material error.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Store error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data dir is another server's, or cannot be opened.
    #[error(transparent)]
    DataDir(#[from] dir_lock::DirLockError),
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Values derived from the configuration once, used on every request.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Public base URL without trailing slash.
    pub public_url: String,
    /// `http` or `https`, from the public URL.
    pub scheme: &'static str,
    /// Explicit port of the public URL, kept on host-based URLs.
    pub public_port: Option<u16>,
    /// `ws(s)://` + the public URL after its scheme, for `wsUrl`.
    pub ws_base: String,
    /// The public URL's path (`/hooks`), for a reverse proxy that serves
    /// hookway under it: requests are routed with it (a proxy that passes
    /// the path on) and without it (one that strips it), so either works.
    pub path_prefix: Option<String>,
    /// Lowercased domain for host-based routing.
    pub domain: Option<String>,
    /// The public URL's own host as labels under `domain`, when it is under it
    /// (`hooks` of `https://hooks.example.com` with `--domain example.com`):
    /// never a tunnel, or that tunnel would take the API and the `wsUrl`s.
    pub own_subdomain: Option<String>,
    /// Response-head timeout.
    pub request_timeout: Duration,
    /// Bound QUIC port.
    pub quic_port: u16,
    /// Explicit QUIC address for clients.
    pub quic_public_addr: Option<String>,
    /// SHA-256 of a self-signed certificate, for clients to pin.
    pub fingerprint: Option<String>,
    /// HTTP listener timeouts and limits.
    pub http: HttpLimits,
    /// WebSocket gateway limits.
    pub ws: WsLimits,
    /// Reverse proxies whose `X-Forwarded-For` names the caller.
    pub trusted_proxies: proxies::TrustedProxies,
}

/// State shared by every task of the server.
pub struct State {
    /// Derived configuration.
    pub config: RuntimeConfig,
    /// Durable storage.
    pub store: StoreHandle,
    /// Tunnels and live sessions.
    pub registry: Registry,
    /// Verified API keys: hash → (organization, when the store last said
    /// so). `hookway keys revoke` deletes a key in the store, from another
    /// process: an entry older than [`KEY_RECHECK`] is looked up again.
    api_keys: DashMap<[u8; 32], (String, Instant)>,
    /// Session tasks (QUIC and WebSocket), awaited briefly at shutdown so
    /// their close frames go out.
    pub tasks: TaskTracker,
    /// Status webhooks: sessions report connects and disconnects here.
    pub notifier: Arc<Notifier>,
    /// Request capture: the edge taps exchanges here.
    pub capture: Arc<Capture>,
    /// Requests being forwarded over QUIC; the QUIC endpoint batches sends
    /// while there are several.
    pub in_flight: quic::runtime::InFlight,
    /// The end of the shutdown grace: connections still open are dropped,
    /// and requests still waiting for their answer are answered why first.
    pub cutting: CancellationToken,
    /// Held by the API from reading a webhook to writing it (update, delete,
    /// new signing key; a new one has nothing to race), so that a PATCH racing a DELETE cannot write
    /// back, and bring back, the webhook it read. Webhook changes are rare.
    pub(crate) webhook_writes: tokio::sync::Mutex<()>,
    /// Wrong API keys by caller address: past a few a minute, refused.
    pub(crate) auth_failures: auth_failures::AuthFailures,
}

impl State {
    /// Where `host` (a `Host` header or URI authority, port optional) sends a
    /// request: a tunnel, a 404 under the routing domain, or elsewhere (the
    /// API and path routes; so does the public URL's own host, whatever its
    /// labels).
    pub fn host_route(&self, host: &str) -> HostRoute {
        let Some(domain) = self.config.domain.as_deref() else { return HostRoute::Elsewhere };
        match host_route(host, domain) {
            HostRoute::Tunnel(labels) | HostRoute::NoTunnel(labels) if self.is_own_subdomain(&labels) => {
                HostRoute::Elsewhere
            }
            route => route,
        }
    }

    /// Whether `subdomain` is the public URL's own host (see
    /// [`RuntimeConfig::own_subdomain`]).
    pub fn is_own_subdomain(&self, subdomain: &str) -> bool {
        self.config.own_subdomain.as_deref() == Some(subdomain)
    }

    /// `{public-url}/t/{subdomain}`.
    pub fn tunnel_url(&self, subdomain: &str) -> String {
        format!("{}/t/{subdomain}", self.config.public_url)
    }

    /// `{scheme}://{subdomain}.{domain}`, with the public URL's port if any.
    /// None for the public URL's own host (a tunnel that had the name before
    /// it was the server's): that host serves the API.
    pub fn host_url(&self, subdomain: &str) -> Option<String> {
        let domain = self.config.domain.as_deref().filter(|_| !self.is_own_subdomain(subdomain))?;
        Some(host_url(self.config.scheme, subdomain, domain, self.config.public_port))
    }

    /// `ws(s)://{host}/tunnels/{subdomain}/ws?tunnelId=…&token=…` (seed 001).
    pub fn ws_url(&self, subdomain: &str, tunnel_id: &str, token: &str) -> String {
        crate::wsjson::ws_url(&self.config.ws_base, subdomain, tunnel_id, token)
    }

    /// Records a handshake: in memory now, in the store off the hot path.
    pub fn record_connected(&self, tunnel: &Arc<Tunnel>, at: &str) {
        tunnel.update_meta(|m| m.last_connected_at = Some(at.to_owned()));
        let (id, at) = (tunnel.id.clone(), at.to_owned());
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(err) = store.run(move |s| s.set_last_connected(&id, &at)).await {
                tracing::warn!(%err, "could not persist connection time");
            }
        });
    }

    /// The organization of a presented API key, if valid.
    pub async fn org_for_key(&self, key: &str) -> Result<Option<String>, StoreError> {
        let hash = names::hash_secret(key);
        if let Some(entry) = self.api_keys.get(&hash)
            && entry.1.elapsed() < KEY_RECHECK
        {
            return Ok(Some(entry.0.clone()));
        }
        let found = self.store.run(move |s| s.find_api_key(&hash)).await?;
        match found {
            Some(k) => {
                self.api_keys.insert(k.key_hash, (k.org_id.clone(), Instant::now()));
                Ok(Some(k.org_id))
            }
            None => {
                self.api_keys.remove(&hash);
                Ok(None)
            }
        }
    }

    /// Writes dirty counters to the store; the error if that failed (they
    /// stay dirty, for the next try).
    async fn flush_counters(&self) -> Result<(), StoreError> {
        let updates = self.registry.dirty_counters();
        if updates.is_empty() {
            return Ok(());
        }
        let batch = updates.clone();
        self.store.run(move |s| s.save_counters(&batch)).await?;
        self.registry.mark_persisted(&updates);
        Ok(())
    }
}

/// Where a request's host sends it, under the server's `--domain`.
#[derive(Debug, PartialEq, Eq)]
pub enum HostRoute {
    /// `{subdomain}.{domain}`: the tunnel of that subdomain (lowercase).
    Tunnel(String),
    /// Under the domain, but a name no tunnel can have (`a.b.{domain}`,
    /// `x_y.{domain}`): the labels before the domain, lowercase. A 404, not
    /// the API: the caller meant a tunnel.
    NoTunnel(String),
    /// Under the domain, with an empty label before it (`a..{domain}`,
    /// `.a.{domain}`): no host name at all (RFC 1035 §2.3.1), a 400.
    EmptyLabel,
    /// The domain itself, a reserved name (`api.`, `www.`), or another host:
    /// the API and path-based routes.
    Elsewhere,
}

/// Where `host` sends a request under `domain`. Host names compare without
/// regard to case, and a trailing dot (the fully-qualified form) names the
/// same host: `Cool-X.Example.COM.:8080` is `cool-x` under `example.com`, as
/// DNS would resolve it.
fn host_route(host: &str, domain: &str) -> HostRoute {
    let host =
        host.rsplit_once(':').map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host });
    let host = host.strip_suffix('.').unwrap_or(host).as_bytes();
    let Some((sub, dot_domain)) = host.len().checked_sub(domain.len() + 1).map(|at| host.split_at(at)) else {
        return HostRoute::Elsewhere;
    };
    if dot_domain[0] != b'.' || !dot_domain[1..].eq_ignore_ascii_case(domain.as_bytes()) || sub.is_empty() {
        return HostRoute::Elsewhere;
    }
    if sub.split(|&b| b == b'.').any(<[u8]>::is_empty) {
        return HostRoute::EmptyLabel;
    }
    let sub = String::from_utf8_lossy(sub).to_ascii_lowercase();
    match names::validate_subdomain(&sub) {
        Ok(()) => HostRoute::Tunnel(sub),
        // Reserved names (`api.`, `www.`) are never tunnels: they reach the API.
        Err(_) if names::is_reserved(&sub) => HostRoute::Elsewhere,
        Err(_) => HostRoute::NoTunnel(sub),
    }
}

/// Creates an API key in `org` and returns the secret (shown once).
pub fn create_api_key(store: &StoreHandle, org: &str) -> Result<String, StoreError> {
    let store = store.blocking();
    let org_id = store.ensure_org(org)?;
    let key = names::api_key();
    store.insert_api_key(&ApiKeyRecord {
        id: names::api_key_id(),
        org_id,
        key_hash: names::hash_secret(&key),
        prefix: key[..8].to_owned(),
    })?;
    Ok(key)
}

/// A bound, ready-to-run server.
pub struct Server {
    state: Arc<State>,
    http: TcpListener,
    quic: quinn::Endpoint,
    http_addr: SocketAddr,
    quic_addr: SocketAddr,
    grace: Duration,
    key_source: KeySource,
    /// Held until [`Server::run`] returns (or its future is dropped).
    dir_lock: dir_lock::DirLock,
    /// The data dir's files, looked at every `dir_check` while it runs.
    dir_watch: dir_watch::DirWatch,
    dir_check: Duration,
}

impl Server {
    /// Opens the store, prepares TLS and binds both listeners.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        config.http.validate().map_err(ServerError::Config)?;
        if config.data_dir_check.is_zero() {
            return Err(ServerError::Config("the data dir check period must be more than zero".into()));
        }
        // First: nothing of the dir may be read or changed while another server has it.
        let dir_lock = dir_lock::DirLock::acquire(&config.data_dir)?;
        let store = StoreHandle::new(SqliteStore::open_in(&config.data_dir)?);
        let main_db = SqliteStore::path_in(&config.data_dir);
        let requests_db = SqliteStore::requests_path(&main_db);
        let dir_watch = dir_watch::DirWatch::new([main_db, requests_db, config.data_dir.join(dir_lock::LOCK_FILE)]);
        let registry = Registry::default();
        for record in store.blocking().load_tunnels()? {
            // Answered only for requests recorded whole (see `edge`): without
            // capture, or without bodies, its callers get the 503 again.
            let unkept = !config.capture.enabled || config.capture.body_limit == 0 || !record.capture_bodies;
            if record.inbound.offline_reply.is_some() && unkept {
                tracing::warn!(
                    tunnel_id = %record.id,
                    "this tunnel's offline reply is not given: requests are not recorded with their bodies \
                     (--no-capture, --capture-body-limit 0 or the tunnel's captureBodies off), so callers get 503"
                );
            }
            registry.insert(Arc::new(Tunnel::from_record(record)));
        }

        let http = TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| ServerError::Bind { addr: config.http_addr, source })?;
        let http_addr = http.local_addr().map_err(|source| ServerError::Bind { addr: config.http_addr, source })?;
        let public_url = match &config.public_url {
            Some(url) => normalized_url(url),
            None => {
                // (A socket address prints an IPv6 host in brackets.)
                let ip = if http_addr.ip().is_unspecified() { [127, 0, 0, 1].into() } else { http_addr.ip() };
                format!("http://{}", SocketAddr::new(ip, http_addr.port()))
            }
        };
        let public = PublicUrl::parse(&public_url)?;
        let domain = config.domain.as_deref().map(parse_domain).transpose()?;
        let own_subdomain = domain.as_deref().and_then(|d| match host_route(&public.host, d) {
            HostRoute::Tunnel(labels) | HostRoute::NoTunnel(labels) => Some(labels),
            HostRoute::EmptyLabel | HostRoute::Elsewhere => None,
        });
        if let Some(own) = own_subdomain.as_deref().filter(|own| registry.subdomain_exists(own)) {
            tracing::warn!(
                subdomain = own,
                "a tunnel has the public URL's own host name: it is reached at /t/{own} only, never by host"
            );
        }

        let identity = match &config.tls {
            TlsSource::SelfSigned => {
                let mut names: Vec<String> = domain.iter().cloned().collect();
                names.push(public.host.clone());
                tls::Identity::self_signed_in(&config.data_dir.join("tls"), &names)?
            }
            TlsSource::Files { cert, key } => tls::Identity::from_pem_files(cert, key)?,
        };
        let webhooks = store.blocking().load_webhooks()?;
        let notifier = Arc::new(Notifier::new(store.clone(), config.webhooks.clone(), webhooks));
        // Before any client can connect: a session of this run must not be
        // taken for one the previous run left behind.
        let owed = notifier.settle_previous_run()?;
        if owed.released > 0 {
            tracing::info!(
                deliveries = owed.released,
                "webhook deliveries the previous run was attempting when it stopped are retried now"
            );
        }
        if owed.deliveries > 0 {
            tracing::warn!(
                events = owed.events,
                deliveries = owed.deliveries,
                "the previous run stopped without ending its sessions; their disconnect notifications are queued"
            );
        } else if owed.events > 0 {
            tracing::info!(
                events = owed.events,
                "the previous run stopped without ending its sessions (no webhook listens for their disconnects)"
            );
        }
        let in_flight = quic::runtime::InFlight::default();
        let reset_key = tls::reset_key_in(&config.data_dir.join("tls"));
        let quic = quic::server_endpoint(config.quic_addr, &identity, reset_key.as_ref(), &in_flight)?;
        let quic_addr = quic.local_addr().map_err(|source| ServerError::Bind { addr: config.quic_addr, source })?;
        let quic_public_addr = match &config.quic_public_addr {
            Some(addr) => Some(addr.clone()),
            None if quic_reaches(quic_addr, &public.host) => None,
            // Clients would dial QUIC at the public URL's host, where nothing
            // listens (`--http 127.0.0.1:… --quic [::1]:…`). A first try on
            // one machine (no public URL, QUIC on loopback): announce QUIC's
            // own address. Anywhere else the operator's setup (NAT, a port
            // mapping) may route it, and clients dial the host they were
            // given, as before: say what would fix it, should it not.
            None if config.public_url.is_none() && quic_addr.ip().is_loopback() => Some(quic_addr.to_string()),
            None => {
                tracing::warn!(
                    quic = %quic_addr,
                    host = %public.host,
                    "clients dial QUIC at the public URL's host, which this QUIC socket does not listen on: \
                     give --quic-public-addr, or bind --quic to that address (or to [::] for all)"
                );
                None
            }
        };
        for warning in exposure_warnings(http_addr, quic_addr, (&public_url, &public.host), &config) {
            tracing::warn!("{warning}");
        }
        // Last, once nothing else can fail: a key generated by a start that
        // then failed (a port in use) would never be shown, and the next
        // start generates none.
        let key_source = bootstrap_key(&store, config.api_key.as_deref())?;

        let state = Arc::new(State {
            config: RuntimeConfig {
                public_url,
                scheme: public.scheme,
                public_port: public.port,
                ws_base: public.ws_base,
                path_prefix: public.path_prefix,
                domain,
                own_subdomain,
                request_timeout: config.request_timeout,
                quic_port: quic_addr.port(),
                quic_public_addr,
                fingerprint: identity.self_signed.then(|| identity.fingerprint()),
                http: config.http,
                ws: config.ws,
                trusted_proxies: config.trusted_proxies.clone(),
            },
            store,
            registry,
            api_keys: DashMap::new(),
            tasks: TaskTracker::new(),
            notifier,
            capture: Arc::new(Capture::new(config.capture.clone())),
            in_flight,
            cutting: CancellationToken::new(),
            webhook_writes: tokio::sync::Mutex::new(()),
            auth_failures: auth_failures::AuthFailures::default(),
        });
        Ok(Self {
            state,
            http,
            quic,
            http_addr,
            quic_addr,
            grace: config.shutdown_grace,
            key_source,
            dir_lock,
            dir_watch,
            dir_check: config.data_dir_check,
        })
    }

    /// Bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Bound QUIC address.
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// Public base URL.
    pub fn public_url(&self) -> &str {
        &self.state.config.public_url
    }

    /// A tunnel's host-based URL, as `{subdomain}` stands in it (with
    /// `--domain`).
    pub fn host_url_pattern(&self) -> Option<String> {
        let domain = self.state.config.domain.as_deref()?;
        Some(host_url(self.state.config.scheme, "<subdomain>", domain, self.state.config.public_port))
    }

    /// Whether requests are recorded for inspection (not with `--no-capture`).
    pub fn captures(&self) -> bool {
        self.state.capture.config().enabled
    }

    /// Fingerprint of the self-signed certificate, if one is in use.
    pub fn fingerprint(&self) -> Option<&str> {
        self.state.config.fingerprint.as_deref()
    }

    /// The API key generated on first start, to show once.
    pub fn generated_api_key(&self) -> Option<&str> {
        match &self.key_source {
            KeySource::Generated(key) => Some(key),
            _ => None,
        }
    }

    /// Where the API key came from at this start.
    pub fn key_source(&self) -> &KeySource {
        &self.key_source
    }

    /// The store, e.g. to create API keys for other organizations.
    pub fn store(&self) -> StoreHandle {
        self.state.store.clone()
    }

    /// Serves until `shutdown` stops it, then shuts down gracefully: requests
    /// in flight get the shutdown grace to finish, unless the stop is cut
    /// short (a plain `CancellationToken` never cuts it).
    ///
    /// It also stops, the same way, when a file of its data dir is deleted or
    /// replaced (see [`DataDirLost`]), and then says so: nothing
    /// it wrote from then on would be kept.
    pub async fn run(self, shutdown: impl Into<Shutdown>) -> Result<(), DataDirLost> {
        let Server { state, http, quic, grace, dir_lock, dir_watch, dir_check, .. } = self;
        let stop: Shutdown = shutdown.into();
        // A child: the server stopping itself does not cancel its caller's token.
        let (shutdown, cut) = (stop.stop_token().child_token(), stop.cut_token().clone());
        let watch = tokio::spawn(dir_watch.run(dir_check, shutdown.clone()));
        let tracker = state.tasks.clone();
        // The notifier outlives the sessions, so their disconnect events reach the outbox.
        let notifier_stop = CancellationToken::new();
        let notifier = tokio::spawn(state.notifier.clone().run(notifier_stop.clone()));
        // Likewise the capture writer, so the last exchanges are stored.
        let capture_stop = CancellationToken::new();
        let capture = tokio::spawn(state.capture.clone().run_writer(state.clone(), capture_stop.clone()));
        {
            // Live request streams end when shutdown starts, not after the grace period.
            let (shutdown, closing) = (shutdown.clone(), state.capture.closing().clone());
            tokio::spawn(async move {
                shutdown.cancelled().await;
                closing.cancel();
            });
        }
        tracker.spawn(session::accept_loop(quic.clone(), state.clone(), shutdown.clone()));
        let flusher = {
            let state = state.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(COUNTER_FLUSH_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // A store that fails (a full disk) fails every second: said
                // once a minute, with how many tries failed, and when it works again.
                let mut log = log_limit::LogLimit::new(Duration::from_secs(60));
                let mut failing = 0u64;
                while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
                    match state.flush_counters().await {
                        Ok(()) if failing > 0 => {
                            tracing::info!(failed_tries = failing, "request counters are persisted again");
                            // (A new failure is a new story: said at once.)
                            (failing, log) = (0, log_limit::LogLimit::new(Duration::from_secs(60)));
                        }
                        Ok(()) => {}
                        Err(err) => {
                            failing += 1;
                            if let Some(unlogged) = log.admit(std::time::Instant::now()) {
                                tracing::warn!(%err, failed_since_last_said = unlogged, "could not persist request counters; retrying every second");
                            }
                        }
                    }
                }
            })
        };
        listener::serve(http, state.clone(), shutdown.clone(), grace, cut).await;

        // In-flight requests are done (or out of time): end the sessions.
        let sessions = state.registry.sessions();
        for session in &sessions {
            session.close(close::SERVER_SHUTDOWN, "server shutting down");
        }
        // Each client reads why on its control stream and closes itself: wait
        // for that, briefly, before closing what is left. A close of ours
        // sent while a connection's congestion window is full never leaves
        // (quinn issue 2785, fixed but not released), and its client would
        // learn of the shutdown only at its idle timeout, seconds later; the
        // notice, stream data, still goes out as acks free the window.
        let closed = sessions.iter().filter_map(|s| match &s.transport {
            registry::Transport::Quic(conn) => Some(conn.closed()),
            registry::Transport::WebSocket(_) => None,
        });
        let _ = tokio::time::timeout(SHUTDOWN_CLOSE_WAIT, futures_util::future::join_all(closed)).await;
        quic.close(close::SERVER_SHUTDOWN, b"server shutting down");
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            tracker.wait().await;
            quic.wait_idle().await;
        })
        .await;
        notifier_stop.cancel();
        capture_stop.cancel();
        let _ = notifier.await;
        let _ = capture.await;
        let _ = flusher.await;
        if let Err(err) = state.flush_counters().await {
            tracing::warn!(%err, "could not persist the last request counts: they are lost");
        }
        drop(dir_lock);
        tracing::info!("server stopped");
        // (Stopped already, unless the listener ended on its own.)
        shutdown.cancel();
        match watch.await {
            Ok(Some(lost)) => Err(lost),
            Ok(None) | Err(_) => Ok(()),
        }
    }
}

/// At shutdown, the longest the server waits for its clients to close their
/// connections on its notice before it closes the rest itself.
const SHUTDOWN_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What the server derives from its public URL, parsed once at start-up.
#[derive(Debug, PartialEq, Eq)]
struct PublicUrl {
    scheme: &'static str,
    host: String,
    port: Option<u16>,
    ws_base: String,
    /// Its path, without a trailing slash, when it has one.
    path_prefix: Option<String>,
}

/// First path segments of the server's own routes: a public URL's path
/// starting with one would make requests ambiguous (under `/t`, is `/t/x/y`
/// tunnel `x`, or tunnel `y` under the prefix?).
const ROUTE_SEGMENTS: [&str; 4] = ["t", "tunnels", "api", "healthz"];

impl PublicUrl {
    /// Tunnel URLs are this URL with `/t/{subdomain}` appended, so it must be
    /// a base: no query, fragment or credentials, which would end up in the
    /// middle of every tunnel URL (`https://h/?q=1/t/x`).
    fn parse(url: &str) -> Result<Self, ServerError> {
        let bad = |why: &str| ServerError::Config(format!("public URL {url:?} {why}"));
        let uri: ::http::Uri = url.parse().map_err(|_| bad("is not a valid URL"))?;
        let (scheme, ws) = match uri.scheme_str() {
            Some("https") => ("https", "wss"),
            Some("http") => ("http", "ws"),
            _ => return Err(bad("must start with http:// or https://")),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| bad("has no host"))?;
        if url.contains(['?', '#']) {
            return Err(bad("must be a base URL, without a query or fragment"));
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(bad("must not hold a user name or password"));
        }
        // `http::Uri` reads a port it cannot parse (99999) as none at all.
        if let Err(err) = url::Url::parse(url) {
            return Err(bad(&format!("is not a valid URL ({err})")));
        }
        if uri.port_u16() == Some(0) {
            return Err(bad("has port 0"));
        }
        let path = uri.path().trim_end_matches('/');
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        if ROUTE_SEGMENTS.contains(&first) {
            return Err(bad(&format!("has a path starting with /{first}, one of hookway's own routes: pick another")));
        }
        let rest = &url[scheme.len() + "://".len()..];
        Ok(Self {
            scheme,
            host: host.trim_matches(['[', ']']).to_owned(),
            port: uri.port_u16(),
            ws_base: format!("{ws}://{rest}"),
            path_prefix: (!path.is_empty()).then(|| path.to_owned()),
        })
    }
}

/// `url` as URLs are compared and printed: scheme and host in lower case, a
/// scheme's default port left out, no trailing slash (`HTTPS://Hooks.Example.COM:443/`
/// is `https://hooks.example.com`), so that tunnel URLs and host-based URLs
/// read alike. As given if it does not parse: [`PublicUrl::parse`] says why.
fn normalized_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() && url.contains("://") => {
            parsed.as_str().trim_end_matches('/').to_owned()
        }
        _ => url.trim_end_matches('/').to_owned(),
    }
}

/// `{scheme}://{subdomain}.{domain}[:port]`: a tunnel's host-based URL, with
/// the public URL's scheme and explicit port. The CLI makes it too, from
/// `/api/info`, for answers that do not carry it.
pub fn host_url(scheme: &str, subdomain: &str, domain: &str, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("{scheme}://{subdomain}.{domain}:{p}"),
        None => format!("{scheme}://{subdomain}.{domain}"),
    }
}

/// What would keep clients on other machines out, said at start-up: the
/// defaults suit a first try on one machine, and a server meant to be reached
/// from elsewhere that keeps one of them fails only on the other machine.
/// `public` is the public URL in force and its host.
fn exposure_warnings(
    http: SocketAddr,
    quic: SocketAddr,
    (public_url, public_host): (&str, &str),
    config: &ServerConfig,
) -> Vec<String> {
    // (A host that is an IP address QUIC does not listen on is warned of
    // where the QUIC address is chosen.)
    let named = public_host != "localhost" && public_host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_err();
    let mut warnings = Vec::new();
    if config.public_url.is_none() && !http.ip().is_loopback() {
        warnings.push(format!(
            "the HTTP listener ({http}) takes connections from other machines, but without --public-url tunnels' \
             URLs and clients are given {public_url}: give --public-url with the address others reach this server at"
        ));
    }
    if named && config.quic_public_addr.is_none() && quic.ip().is_loopback() {
        warnings.push(format!(
            "the public URL's host is {public_host}, but QUIC listens on {quic}, which only this machine reaches: \
             clients elsewhere cannot connect (bind --quic to 0.0.0.0:{port} or [::]:{port})",
            port = quic.port()
        ));
    }
    warnings
}

/// Whether a client dialing `host` (an IP address; a name could be
/// anything) reaches a QUIC socket bound to `quic`. `[::]` takes IPv4 too
/// (see `quic::udp_socket`); `0.0.0.0` does not take IPv6.
fn quic_reaches(quic: SocketAddr, host: &str) -> bool {
    let Ok(ip) = host.parse::<std::net::IpAddr>() else { return true };
    let ip = ip.to_canonical();
    if quic.ip().is_unspecified() { quic.is_ipv6() || ip.is_ipv4() } else { quic.ip().to_canonical() == ip }
}

/// `--domain`, checked and in the form host names are compared in: lower
/// case, without a trailing dot. Anything else could never match a request's
/// host, and would be printed into every tunnel's host-based URL.
fn parse_domain(domain: &str) -> Result<String, ServerError> {
    let bad = |why: String| ServerError::Config(format!("domain {domain:?} {why}"));
    // Dots around the name were always accepted (`.example.com`), and mean nothing.
    let name = domain.trim_matches('.').to_ascii_lowercase();
    if name.parse::<std::net::IpAddr>().is_ok() || name.starts_with('[') {
        return Err(bad("is an IP address: host-based URLs need a domain name (path-based URLs work without)".into()));
    }
    if let Some(rest) = name.strip_prefix("*.") {
        return Err(bad(format!(
            "is a wildcard: give the domain itself (--domain {rest}) and point *.{rest} at the server in DNS"
        )));
    }
    if name.contains("://") || name.contains('/') {
        return Err(bad("is a domain name, not a URL: like tunnels.example.com".into()));
    }
    if name.contains(':') {
        return Err(bad("has a port: give the name alone; host-based URLs take the public URL's port".into()));
    }
    if !name.is_ascii() {
        return Err(bad("is not ASCII: give its ASCII (punycode, xn--…) form".into()));
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(bad(
            "is not a valid domain name (dot-separated labels of letters, digits and inner hyphens)".into()
        ));
    }
    Ok(name)
}

/// Where the server's API key came from at this start, for its banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// Generated on this first start, to be shown once.
    Generated(String),
    /// `HOOKWAY_API_KEY` in the server's environment. `retired`: keys that
    /// earlier starts took from it, with another value, and that no longer
    /// work: the variable names the key, so changing it rotates the key.
    Environment {
        /// How many such keys were deleted.
        retired: u64,
    },
    /// Made before: printed on a first start, or by `hookway keys create`.
    Existing,
}

/// A chosen `HOOKWAY_API_KEY` shorter than this is warned about (accepted:
/// a throwaway key on a laptop is the user's call).
const WEAK_KEY_CHARS: usize = 16;

/// Makes sure the server has an API key: the configured one (replacing the
/// one an earlier start was configured with), or on a first start a
/// generated one.
fn bootstrap_key(store: &StoreHandle, configured: Option<&str>) -> Result<KeySource, StoreError> {
    let s = store.blocking();
    if let Some(key) = configured {
        if key.chars().count() < WEAK_KEY_CHARS {
            tracing::warn!(
                chars = key.chars().count(),
                "HOOKWAY_API_KEY is short: whoever guesses it manages every tunnel of the organization; \
                 a generated key (`hookway keys create`, or none set: the first start makes one) has 32 random characters"
            );
        }
        let hash = names::hash_secret(key);
        // A key the store already has (the same value again, or one made by
        // `keys create` and exported for the CLI in the server's shell)
        // retires nothing: only a new value replaces the one before.
        if s.find_api_key(&hash)?.is_some() {
            return Ok(KeySource::Environment { retired: 0 });
        }
        let org_id = s.ensure_org(DEFAULT_ORG)?;
        s.insert_api_key(&ApiKeyRecord {
            id: names::api_key_id(),
            org_id,
            key_hash: hash,
            prefix: ENV_KEY_PREFIX.into(),
        })?;
        let retired = s.retire_env_api_keys(&hash)?;
        if retired > 0 {
            tracing::info!(retired, "HOOKWAY_API_KEY changed: the key it set before no longer works");
        }
        return Ok(KeySource::Environment { retired });
    }
    if s.count_api_keys()? == 0 {
        return create_api_key(store, DEFAULT_ORG).map(KeySource::Generated);
    }
    Ok(KeySource::Existing)
}

#[cfg(test)]
mod tests {
    use super::{HostRoute, PublicUrl, host_route, parse_domain, quic_reaches};
    use std::net::SocketAddr;

    #[test]
    fn host_names_compare_without_case_or_trailing_dot() {
        for host in ["cool-x.example.com", "Cool-X.Example.COM", "cool-x.example.com.", "COOL-X.example.com.:8080"] {
            assert_eq!(host_route(host, "example.com"), HostRoute::Tunnel("cool-x".into()), "{host}");
        }
        for host in [
            "example.com",
            ".example.com",
            "cool-x.example.com..",
            "cool-xexample.com",
            "api.example.com",
            "WWW.example.com:80",
            "",
        ] {
            assert_eq!(host_route(host, "example.com"), HostRoute::Elsewhere, "{host}");
        }
        for (host, labels) in [
            ("a.b.example.com", "a.b"),
            ("A.Cool-X.example.com.", "a.cool-x"),
            ("é.example.com", "é"),
            ("x_y.example.com", "x_y"),
            ("ab.example.com", "ab"),
        ] {
            assert_eq!(host_route(host, "example.com"), HostRoute::NoTunnel(labels.into()), "{host}");
        }
        for host in ["sub..example.com", "..example.com", ".sub.example.com", "a..b.example.com:80"] {
            assert_eq!(host_route(host, "example.com"), HostRoute::EmptyLabel, "{host}");
        }
    }

    /// A server meant for other machines that keeps a one-machine default
    /// hears of it at start-up; one on one machine hears nothing.
    #[test]
    fn defaults_that_keep_other_machines_out_are_warned_of() {
        use super::{ServerConfig, exposure_warnings};
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        const TUNNELS: &str = "https://tunnels.example.com";
        let local = ServerConfig::local(std::path::PathBuf::from("/tmp/x"));
        let public = ServerConfig { public_url: Some("https://tunnels.example.com".into()), ..local.clone() };
        let pinned = ServerConfig { quic_public_addr: Some("tunnels.example.com:4443".into()), ..public.clone() };
        let (http, quic) = (at("127.0.0.1:8080"), at("127.0.0.1:4443"));
        assert!(exposure_warnings(http, quic, ("http://127.0.0.1:8080", "127.0.0.1"), &local).is_empty());
        let open =
            exposure_warnings(at("0.0.0.0:8080"), at("0.0.0.0:4443"), ("http://127.0.0.1:8080", "127.0.0.1"), &local);
        assert!(open.len() == 1 && open[0].contains("--public-url") && open[0].contains("http://127.0.0.1:8080"));
        let behind = exposure_warnings(http, quic, (TUNNELS, "tunnels.example.com"), &public);
        assert!(behind.len() == 1 && behind[0].contains("bind --quic to 0.0.0.0:4443"), "{behind:?}");
        assert!(exposure_warnings(http, at("0.0.0.0:4443"), (TUNNELS, "tunnels.example.com"), &public).is_empty());
        assert!(exposure_warnings(http, quic, (TUNNELS, "tunnels.example.com"), &pinned).is_empty());
        assert!(exposure_warnings(http, quic, ("https://localhost", "localhost"), &public).is_empty());
    }

    #[test]
    fn public_urls_read_as_urls_are_compared() {
        use super::normalized_url;
        assert_eq!(normalized_url("HTTPS://Hooks.Example.COM:443/"), "https://hooks.example.com");
        assert_eq!(normalized_url("http://h.test:80/hooks/"), "http://h.test/hooks");
        assert_eq!(normalized_url("http://h.test:8080/hooks"), "http://h.test:8080/hooks");
        assert_eq!(normalized_url("http://[::1]:8080"), "http://[::1]:8080");
        // What does not parse is left for the checks that say why.
        assert_eq!(normalized_url("http://h.test:99999"), "http://h.test:99999");
        assert_eq!(normalized_url("ftp:/x"), "ftp:/x");
    }

    #[test]
    fn quic_sockets_reach_hosts_of_their_family() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        for (quic, host, reached) in [
            ("127.0.0.1:1", "127.0.0.1", true),
            ("0.0.0.0:1", "127.0.0.1", true),
            ("[::]:1", "127.0.0.1", true),
            ("[::]:1", "::1", true),
            ("[::1]:1", "::1", true),
            ("[::1]:1", "127.0.0.1", false),
            ("0.0.0.0:1", "::1", false),
            ("127.0.0.1:1", "::1", false),
            ("127.0.0.1:1", "127.0.0.2", false),
            ("127.0.0.1:1", "tunnels.example.com", true),
        ] {
            assert_eq!(quic_reaches(at(quic), host), reached, "{quic} {host}");
        }
    }

    #[test]
    fn public_url_parts() {
        let p = PublicUrl::parse("https://tunnels.example.com").unwrap();
        assert_eq!((p.scheme, p.host.as_str(), p.port), ("https", "tunnels.example.com", None));
        assert_eq!(p.ws_base, "wss://tunnels.example.com");
        assert_eq!(p.path_prefix, None);
        let p = PublicUrl::parse("http://h.test:8080/prefix").unwrap();
        assert_eq!((p.port, p.ws_base.as_str()), (Some(8080), "ws://h.test:8080/prefix"));
        assert_eq!(p.path_prefix.as_deref(), Some("/prefix"));
        assert_eq!(PublicUrl::parse("http://h.test/a/b/").unwrap().path_prefix.as_deref(), Some("/a/b"));
        assert_eq!(PublicUrl::parse("http://h.test/").unwrap().path_prefix, None);
        assert_eq!(PublicUrl::parse("http://h.test/tx").unwrap().path_prefix.as_deref(), Some("/tx"));
        let p = PublicUrl::parse("http://[::1]:9000").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", Some(9000)));
        for bad in [
            "ftp://x",
            "tunnels.example.com",
            "http://",
            "not a url",
            "https://h.test/p?q=1",
            "https://h.test#frag",
            "https://user:pw@h.test",
            "http://h.test:99999",
            "http://h.test:0",
            "http://h.test/t",
            "http://h.test/api/x",
            "http://h.test/tunnels",
            "http://h.test/healthz/",
        ] {
            assert!(PublicUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domains_are_names_a_host_can_match() {
        for (given, kept) in [
            ("Example.Test.", "example.test"),
            ("tunnels.example.com", "tunnels.example.com"),
            (".example.test", "example.test"),
        ] {
            assert_eq!(parse_domain(given).unwrap(), kept);
        }
        for (bad, says) in [
            ("", "not a valid domain"),
            ("*.example.test", "--domain example.test"),
            ("example.test:8080", "has a port"),
            ("http://example.test", "not a URL"),
            ("exa mple", "not a valid domain"),
            ("-a.example", "not a valid domain"),
            ("a..example", "not a valid domain"),
            ("bücher.example", "punycode"),
            ("::1", "IP address"),
            ("[::1]", "IP address"),
            ("127.0.0.1", "IP address"),
        ] {
            let err = parse_domain(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }
}
