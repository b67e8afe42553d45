//! Webhook subscriptions and their delivery outbox, as persisted.

/// A webhook subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    /// `wh_…`.
    pub id: String,
    /// Owning organization.
    pub org_id: String,
    /// For the user's reference.
    pub name: String,
    /// Destination (http or https).
    pub url: String,
    /// Subscribed event names (`tunnel.connected`, …).
    pub events: Vec<String>,
    /// Only tunnels with this group label, or all when `None`.
    pub group: Option<String>,
    /// Disabled webhooks receive nothing.
    pub enabled: bool,
    /// Extra headers sent with every delivery.
    pub custom_headers: Vec<(String, String)>,
    /// `whsec_…`. Kept as is, not hashed: every delivery is signed with it.
    pub signing_key: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// Most deliveries of one webhook that wait to be sent; the oldest beyond
/// it are given up as failed, saying why. Enough for a receiver down for
/// hours while a few tunnels come and go.
pub const MAX_PENDING: usize = 10_000;

/// How long the first due of a webhook's waiting deliveries must have
/// waited before a backlog over [`MAX_PENDING`] is given up. A receiver that
/// keeps up drains a burst well within it (another webhook's backlog or a
/// busy machine may slow it for a while); one that does not is held at the
/// cap after it. So the rows that wait are at most [`MAX_PENDING`] and what
/// arrives in this time.
pub const BACKLOG_GRACE_MS: i64 = 60_000;

/// Most finished deliveries of one webhook kept in its log (within the
/// retention); the oldest beyond it go at the next prune (every minute).
pub const MAX_KEPT: usize = 10_000;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its first attempt or a retry.
    Pending,
    /// A 2xx answer.
    Succeeded,
    /// Given up.
    Failed,
}

impl DeliveryState {
    /// The stored and API name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Succeeded => "succeeded",
            DeliveryState::Failed => "failed",
        }
    }

    /// Parses a stored name (unknown values read as failed).
    pub fn parse(s: &str) -> Self {
        match s {
            "pending" => DeliveryState::Pending,
            "succeeded" => DeliveryState::Succeeded,
            _ => DeliveryState::Failed,
        }
    }
}

/// One event for one webhook: a single record however many attempts it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// `msg_…`, sent as `webhook-id` on every attempt.
    pub id: String,
    /// The webhook.
    pub webhook_id: String,
    /// Event name.
    pub event: String,
    /// The exact JSON body sent.
    pub payload: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (Unix ms).
    pub next_attempt_ms: i64,
    /// Status of the last answer.
    pub last_status: Option<u16>,
    /// Start of the last answer's body.
    pub last_response: Option<String>,
    /// Why the last attempt failed without an answer.
    pub last_error: Option<String>,
    /// Duration of the last attempt.
    pub duration_ms: Option<u64>,
    /// Creation time (Unix ms).
    pub created_ms: i64,
    /// Last change (Unix ms).
    pub updated_ms: i64,
}

/// Delivery figures of one webhook over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    /// Deliveries attempted at least once.
    pub requests: u64,
    /// Of those, delivered.
    pub succeeded: u64,
}

/// A connect announced to subscribers whose disconnect has not been: what a
/// server that dies (crash, power loss, OOM kill) still owes them.
///
/// Marks are counted, not set and cleared: a token serves one session at a
/// time but may overlap itself while a client takes over from its previous
/// connection, and events from concurrent sessions may reach the outbox in
/// either order. As a stored mark, `open` is connects minus disconnects
/// recorded; as a change, it is what to add (1 for a connect, −1 for its
/// disconnect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMark {
    /// The event owed: `tunnel.disconnected` or `token.disconnected`.
    pub owed: String,
    /// Tunnel id, or the token's public id.
    pub subject: String,
    /// The organization whose webhooks hear of it.
    pub org_id: String,
    /// The tunnel's group when last seen.
    pub group: Option<String>,
    /// Connects minus disconnects (or the change to make).
    pub open: i64,
}
