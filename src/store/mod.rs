//! Durable state: organizations, API keys, tunnels and their counters, webhooks
//! and their delivery outbox, captured requests.
//!
//! The [`Store`] trait is deliberately small and synchronous; [`StoreHandle`] runs
//! its calls on tokio's blocking pool so no SQLite call ever blocks the runtime.
//! SQLite ([`sqlite::SqliteStore`]) is the embedded default; a networked backend
//! for multi-node deployments only has to implement the same trait.

pub mod requests;
pub mod sqlite;
mod sqlite_live;
mod sqlite_lost;
mod sqlite_requests;
mod sqlite_webhooks;
pub mod webhooks;

use std::sync::Arc;

pub use requests::{CapturedBody, CapturedPart, RequestRecord};
pub use sqlite::SqliteStore;
pub use webhooks::{DeliveryRecord, DeliveryState, Health, LiveMark, WebhookRecord};

/// Creates `dir` and its parents if missing, the dir itself readable by this
/// user only (0700): it holds the database, with webhook signing keys, and
/// the TLS key.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Errors from a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique value (subdomain, key) is already taken.
    #[error("already exists: {0}")]
    Conflict(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(String),
    /// The main database is missing or empty, though the captured requests
    /// beside it say the data dir was in use: its tunnels, API keys and
    /// webhooks are lost, and starting as if afresh would delete the
    /// requests too.
    #[error(
        "{main} is empty or missing, but {requests} holds captured requests: this data dir was in use, and its \
         tunnels, API keys and webhooks went with that file. Restore {main} from a backup; or, to start afresh, \
         move the data dir aside (starting over it would delete the captured requests)",
        main = main.display(),
        requests = requests.display()
    )]
    MainLost {
        /// The main database (`hookway.db`).
        main: std::path::PathBuf,
        /// The captured-requests file beside it.
        requests: std::path::PathBuf,
    },
}

/// A tunnel as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelRecord {
    /// `tun_…`.
    pub id: String,
    /// Owning organization.
    pub org_id: String,
    /// Display name.
    pub name: String,
    /// Unique subdomain.
    pub subdomain: String,
    /// SHA-256 of the current auth token.
    pub token_hash: [u8; 32],
    /// Requests forwarded, as last persisted.
    pub total_requests: u64,
    /// RFC 3339, seconds precision.
    pub last_connected_at: Option<String>,
    /// RFC 3339, seconds precision.
    pub created_at: String,
    /// Label that webhooks can subscribe to.
    pub group: Option<String>,
    /// Whether request and response bodies are captured for inspection.
    pub capture_bodies: bool,
    /// What the edge answers by itself (seed 004): basic auth, verification,
    /// throttling; secrets as salted digests.
    pub inbound: crate::inbound::InboundConfig,
}

/// The [`ApiKeyRecord::prefix`] of a key the server took from its
/// `HOOKWAY_API_KEY`: a chosen key may be short, so none of it is kept in
/// clear. (Generated keys keep their first 8 characters, `hwk_…`.)
pub const ENV_KEY_PREFIX: &str = "env";

/// An API key as `hookway keys list` shows it: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyListing {
    /// `key_…`.
    pub id: String,
    /// The name of its organization.
    pub org: String,
    /// The key's first characters, or [`ENV_KEY_PREFIX`].
    pub prefix: String,
    /// RFC 3339, seconds precision.
    pub created_at: String,
}

/// An API key as persisted (its hash only; the key itself is shown once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// `key_…`.
    pub id: String,
    /// The organization whose tunnels the key sees.
    pub org_id: String,
    /// SHA-256 of the key.
    pub key_hash: [u8; 32],
    /// The key's first characters, to recognise it in listings.
    pub prefix: String,
}

/// A counter update written by the background flusher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterUpdate {
    /// Tunnel id.
    pub tunnel_id: String,
    /// New absolute request count.
    pub total_requests: u64,
}

/// The storage interface. Implementations must be safe to call from several
/// threads; calls may block (callers use [`StoreHandle`]).
pub trait Store: Send + Sync + 'static {
    /// Every tunnel, for the server's in-memory table at start-up.
    fn load_tunnels(&self) -> Result<Vec<TunnelRecord>, StoreError>;
    /// Adds a tunnel; [`StoreError::Conflict`] when the subdomain is taken.
    fn insert_tunnel(&self, tunnel: &TunnelRecord) -> Result<(), StoreError>;
    /// Renames a tunnel.
    fn rename_tunnel(&self, id: &str, name: &str) -> Result<(), StoreError>;
    /// Replaces a tunnel's token hash.
    fn set_token_hash(&self, id: &str, hash: &[u8; 32]) -> Result<(), StoreError>;
    /// Records a connection time.
    fn set_last_connected(&self, id: &str, at: &str) -> Result<(), StoreError>;
    /// Removes a tunnel (its captured requests are deleted apart, with
    /// [`Store::delete_requests`], or pruned at start-up).
    fn delete_tunnel(&self, id: &str) -> Result<(), StoreError>;
    /// Persists request counters, all in one transaction.
    fn save_counters(&self, updates: &[CounterUpdate]) -> Result<(), StoreError>;
    /// The id of the organization named `name`, creating it if needed.
    fn ensure_org(&self, name: &str) -> Result<String, StoreError>;
    /// Adds an API key.
    fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    /// Looks an API key up by its hash.
    fn find_api_key(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// How many API keys exist.
    fn count_api_keys(&self) -> Result<u64, StoreError>;
    /// Every API key, oldest first, for `hookway keys list`.
    fn list_api_keys(&self) -> Result<Vec<ApiKeyListing>, StoreError>;
    /// Deletes the API key `id`; whether there was one.
    fn delete_api_key(&self, id: &str) -> Result<bool, StoreError>;
    /// Deletes the keys taken from the server's environment (prefix
    /// [`ENV_KEY_PREFIX`]) other than the one hashed `keep`; how many went.
    fn retire_env_api_keys(&self, keep: &[u8; 32]) -> Result<u64, StoreError>;
    /// Sets or clears a tunnel's group.
    fn set_tunnel_group(&self, id: &str, group: Option<&str>) -> Result<(), StoreError>;
    /// Turns body capture on or off for a tunnel.
    fn set_capture_bodies(&self, id: &str, on: bool) -> Result<(), StoreError>;
    /// Sets a tunnel's inbound options (all of them: those left out are off).
    fn set_inbound(&self, id: &str, inbound: &crate::inbound::InboundConfig) -> Result<(), StoreError>;

    /// Adds captured requests and trims each tunnel they touch to its newest
    /// `keep_per_tunnel`, in one transaction. A record whose id exists is ignored.
    fn insert_requests(&self, records: &[RequestRecord], keep_per_tunnel: usize) -> Result<(), StoreError>;
    /// Summaries (no headers or bodies) of a tunnel's records with ids below
    /// `before`, newest first.
    fn list_requests(
        &self,
        tunnel_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, StoreError>;
    /// One record in full.
    fn get_request(&self, tunnel_id: &str, id: &str) -> Result<Option<RequestRecord>, StoreError>;
    /// Deletes a tunnel's records; returns how many.
    fn delete_requests(&self, tunnel_id: &str) -> Result<usize, StoreError>;
    /// Deletes records with ids below `id_floor` (older than a given time) and
    /// those of tunnels not in `keep_tunnels`; returns how many.
    fn prune_requests(&self, id_floor: Option<&str>, keep_tunnels: Option<&[String]>) -> Result<usize, StoreError>;

    /// Every webhook, for the server's in-memory table at start-up.
    fn load_webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError>;
    /// Inserts or replaces a webhook.
    fn save_webhook(&self, webhook: &WebhookRecord) -> Result<(), StoreError>;
    /// Removes a webhook and its deliveries.
    fn delete_webhook(&self, id: &str) -> Result<(), StoreError>;
    /// Appends the deliveries of a batch of events and applies the events'
    /// changes to the live marks, in one transaction: the outbox and the marks
    /// move together, so after a crash the marks left are exactly the
    /// disconnects that subscribers were owed and never queued. A webhook
    /// then waiting on more than [`webhooks::MAX_PENDING`] deliveries has
    /// those due first (not leased) given up as failed, saying why; returns
    /// how many, by webhook.
    fn record_events(
        &self,
        deliveries: &[DeliveryRecord],
        changes: &[LiveMark],
    ) -> Result<Vec<(String, usize)>, StoreError>;
    /// Every live mark (none at zero).
    fn live_marks(&self) -> Result<Vec<LiveMark>, StoreError>;
    /// Makes deliveries not due before `until_ms` (a lease while they are
    /// attempted), in one transaction; returns those leased: the ones still
    /// pending (a backlog's drop may have given others up since they were read).
    fn lease_deliveries(&self, ids: &[String], until_ms: i64) -> Result<Vec<String>, StoreError>;
    /// Makes every leased delivery due at once, from the time of its event,
    /// so ahead of deliveries queued after it: for start-up only, when no
    /// attempt of a previous run can still be running (the server holds the
    /// data dir, and a stopping server abandons its attempts). Without it, an
    /// attempt a crash cut short waited out its lease (the attempt timeout
    /// and 30 s) and reached its receiver after the events that followed it.
    /// Returns how many.
    fn release_leases(&self) -> Result<usize, StoreError>;
    /// Records an attempt's outcome.
    fn update_delivery(&self, delivery: &DeliveryRecord) -> Result<(), StoreError>;
    /// Pending deliveries of enabled webhooks due by `now_ms`, oldest due
    /// first, at most `per_webhook` of any one webhook and `limit` in all (a
    /// disabled webhook's wait: disabling is a pause).
    fn due_deliveries(&self, now_ms: i64, per_webhook: usize, limit: usize) -> Result<Vec<DeliveryRecord>, StoreError>;
    /// When the earliest pending delivery of an enabled webhook is due.
    fn next_due_ms(&self) -> Result<Option<i64>, StoreError>;
    /// A webhook's deliveries created since `since_ms`, newest first.
    fn deliveries_since(
        &self,
        webhook_id: &str,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;
    /// Delivery health of an organization's webhooks since `since_ms`, by webhook id.
    fn webhook_health(
        &self,
        org_id: &str,
        since_ms: i64,
    ) -> Result<std::collections::HashMap<String, Health>, StoreError>;
    /// Deletes finished deliveries created before `before_ms`, and each
    /// webhook's beyond its newest [`webhooks::MAX_KEPT`]; returns how many.
    fn prune_deliveries(&self, before_ms: i64) -> Result<usize, StoreError>;
    /// What [`Store::record_events`] gives up for the webhooks of its batch,
    /// for every webhook, a step of at most a thousand rows each: a backlog
    /// whose webhook gets no new events is cut back too. Returns how many,
    /// by webhook; none once every backlog is within the cap (or its grace).
    fn trim_backlogs(&self, now_ms: i64) -> Result<Vec<(String, usize)>, StoreError>;
}

/// Shared, async-friendly access to a [`Store`].
#[derive(Clone)]
pub struct StoreHandle {
    inner: Arc<dyn Store>,
    /// Calls on the blocking pool at once; the rest wait here, as futures.
    calls: Arc<tokio::sync::Semaphore>,
}

/// Store calls running at once. SQLite serves one at a time per
/// connection, so more would only wait on its lock, each holding a thread
/// of the blocking pool that other work (webhook address look-ups) needs:
/// behind one slow query, 500 of them once piled up.
const CONCURRENT_CALLS: usize = 8;

impl StoreHandle {
    /// Wraps a store.
    pub fn new(store: impl Store) -> Self {
        Self { inner: Arc::new(store), calls: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CALLS)) }
    }

    /// Runs `f` against the store on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.inner.clone();
        let permit = self.calls.clone().acquire_owned().await.expect("the semaphore is never closed");
        tokio::task::spawn_blocking(move || {
            let _running = permit;
            f(store.as_ref())
        })
        .await
        .map_err(|e| StoreError::Database(format!("store task failed: {e}")))?
    }

    /// Direct, blocking access: for start-up and offline commands only.
    pub fn blocking(&self) -> &dyn Store {
        self.inner.as_ref()
    }
}
