//! The delivery engine: events in, signed and retried HTTP requests out,
//! through a durable outbox in the store.
//!
//! * [`Notifier::emit`] is all a tunnel session does: it pushes the event onto
//!   a channel and returns, whatever the receivers are doing.
//! * The *writer* task turns events into one delivery row per matching webhook
//!   (one transaction per batch) and wakes the dispatcher.
//! * The *dispatcher* picks due rows, at most [`PER_WEBHOOK`] per webhook at a
//!   time, so a receiver that hangs only ever holds its own slots, and runs each
//!   attempt in its own task. Before an attempt it moves the row's due time past
//!   the attempt's timeout (a lease): if the server dies mid-attempt, the row
//!   comes due again after restart and is retried; nothing pending is lost.
//! * With each batch's deliveries the writer records, in the same transaction,
//!   which connects have been announced and not yet closed (live marks). A
//!   server that dies with sessions live leaves their marks behind, and the
//!   next start queues the disconnects they owe
//!   ([`Notifier::settle_previous_run`]) before any client can connect.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::deliver::{self, Attempt};
use super::event::{EventKind, Payload};
use super::retry::{Next, Schedule, decide};
use crate::store::{DeliveryRecord, DeliveryState, StoreHandle, WebhookRecord};

mod owed;
pub use owed::Settled;

/// Attempts running at once for one webhook.
pub const PER_WEBHOOK: usize = 4;
/// Attempts running at once in all: enough that 64 hanging receivers (4 slots
/// each) still leave room for the healthy ones. An attempt is a task and a socket.
pub const MAX_IN_FLIGHT: usize = 512;
/// Default per-attempt timeout.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long finished deliveries are kept (the API shows the last 24 h).
pub const RETENTION: Duration = Duration::from_secs(48 * 3600);
/// First wait before writing again a batch of events the store refused.
const RETRY_WRITE: Duration = Duration::from_millis(500);
/// Longest such wait.
const MAX_RETRY_WRITE: Duration = Duration::from_secs(30);
/// Extra time a lease allows beyond the attempt timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Delays before each retry.
    pub schedule: Schedule,
    /// Time allowed per attempt.
    pub attempt_timeout: Duration,
    /// Deliver to loopback and private addresses too.
    pub allow_private: bool,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self { schedule: Schedule::default(), attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT, allow_private: false }
    }
}

/// An event as a session reports it.
#[derive(Debug, Clone)]
struct Emitted {
    kind: EventKind,
    org_id: String,
    subject: String,
    group: Option<String>,
    /// Not a change of state but of group: a connected tunnel moved into
    /// (a connect) or out of (a disconnect) `group`. Only webhooks filtered
    /// on that group hear it; to the others nothing changed.
    regrouped: bool,
    at: OffsetDateTime,
}

/// The webhook table (cached from the store) and the delivery machinery.
pub struct Notifier {
    config: NotifyConfig,
    store: StoreHandle,
    webhooks: DashMap<String, Arc<WebhookRecord>>,
    events: mpsc::UnboundedSender<Emitted>,
    stamps: Stamps,
    queue: Mutex<Option<mpsc::UnboundedReceiver<Emitted>>>,
    wake: Notify,
    http: reqwest::Client,
    trouble: Trouble,
}

/// The dispatcher's store failures, told at most every [`TROUBLE_EVERY`],
/// with how many came meanwhile: a full disk fails the record of every
/// attempt in flight at once (20 lines in one millisecond, found by a
/// walkthrough), and a line per failure says nothing more.
#[derive(Default)]
struct Trouble(std::sync::Mutex<(Option<std::time::Instant>, usize)>);

/// How often [`Trouble`] speaks up at most.
const TROUBLE_EVERY: Duration = Duration::from_secs(10);

impl Trouble {
    /// Logs `what` failed with `err`, unless a failure was told within the
    /// window (then it is counted for the next line); whether it logged.
    fn tell(&self, what: &str, err: &crate::store::StoreError) -> bool {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if held.0.is_some_and(|at| at.elapsed() < TROUBLE_EVERY) {
            held.1 += 1;
            return false;
        }
        let more = std::mem::take(&mut held.1);
        held.0 = Some(std::time::Instant::now());
        drop(held);
        if more > 0 {
            tracing::error!(%err, store_errors_since_last = more, "{what}");
        } else {
            tracing::error!(%err, "{what}");
        }
        true
    }
}

/// Event times, each a microsecond (`ActionDate`'s precision) or more after
/// the one before: receivers order a subject's events by `ActionDate`, since
/// deliveries may arrive in any order, and a takeover's `token.disconnected`
/// and `token.connected`, emitted back to back, sometimes fell on the same
/// microsecond (3 in 70 takeovers, found by a race probe), leaving the last
/// word on the token to chance.
#[derive(Default)]
struct Stamps(std::sync::atomic::AtomicI64);

impl Stamps {
    fn next(&self) -> OffsetDateTime {
        use std::sync::atomic::Ordering::Relaxed;
        let now = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
        let mut prev = self.0.load(Relaxed);
        let at = loop {
            let at = now.max(prev + 1);
            match self.0.compare_exchange_weak(prev, at, Relaxed, Relaxed) {
                Ok(_) => break at,
                Err(seen) => prev = seen,
            }
        };
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(at) * 1000).unwrap_or_else(|_| OffsetDateTime::now_utc())
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Notifier {
    /// A notifier over `store`, with its webhooks loaded.
    pub fn new(store: StoreHandle, config: NotifyConfig, webhooks: Vec<WebhookRecord>) -> Self {
        let (events, queue) = mpsc::unbounded_channel();
        let http = deliver::client(config.allow_private);
        Self {
            config,
            store,
            webhooks: webhooks.into_iter().map(|w| (w.id.clone(), Arc::new(w))).collect(),
            events,
            queue: Mutex::new(Some(queue)),
            wake: Notify::new(),
            http,
            trouble: Trouble::default(),
            stamps: Stamps::default(),
        }
    }

    /// Settings in force.
    pub fn config(&self) -> &NotifyConfig {
        &self.config
    }

    /// Reports an event about `subject` (a tunnel id or a token's public id).
    /// Never blocks and never fails: delivery happens elsewhere.
    pub fn emit(&self, kind: EventKind, org_id: &str, subject: &str, group: Option<&str>) {
        self.send(kind, org_id, subject, group, false);
    }

    /// Reports that a connected tunnel (or its token) moved into `group`
    /// (`kind` a connect) or out of it (a disconnect), to the webhooks
    /// filtered on that group only: each group's subscribers then hear a
    /// connect before a disconnect, while webhooks of every group hear no
    /// change, as there was none. (A move into no group is heard by none; it
    /// tells the live marks where a disconnect owed after a crash now goes.)
    pub fn emit_regrouped(&self, kind: EventKind, org_id: &str, subject: &str, group: Option<&str>) {
        self.send(kind, org_id, subject, group, true);
    }

    fn send(&self, kind: EventKind, org_id: &str, subject: &str, group: Option<&str>, regrouped: bool) {
        let event = Emitted {
            kind,
            org_id: org_id.to_owned(),
            subject: subject.to_owned(),
            group: group.map(str::to_owned),
            regrouped,
            at: self.stamps.next(),
        };
        let _ = self.events.send(event);
    }

    /// A webhook by id.
    pub fn webhook(&self, id: &str) -> Option<Arc<WebhookRecord>> {
        self.webhooks.get(id).map(|w| w.clone())
    }

    /// An organization's webhooks, oldest first.
    pub fn webhooks_of(&self, org_id: &str) -> Vec<Arc<WebhookRecord>> {
        let mut v: Vec<_> = self.webhooks.iter().filter(|w| w.org_id == org_id).map(|w| w.clone()).collect();
        v.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
        v
    }

    /// Updates the cache after the store accepted a change, and wakes the
    /// dispatcher: a webhook enabled again has deliveries to resume.
    pub fn put_webhook(&self, webhook: WebhookRecord) {
        self.webhooks.insert(webhook.id.clone(), Arc::new(webhook));
        self.wake.notify_one();
    }

    /// Drops a deleted webhook from the cache.
    pub fn remove_webhook(&self, id: &str) {
        self.webhooks.remove(id);
    }

    /// Sends a sample payload once, outside the outbox (not logged, no retry).
    pub async fn send_test(&self, webhook: &WebhookRecord, kind: EventKind) -> Attempt {
        let subject = match kind.payload_type() {
            "Tunnel" => "tun_sample000000000000",
            _ => "tok_sample000000000000000000",
        };
        let payload = Payload::new(kind, subject, OffsetDateTime::now_utc()).to_json();
        let msg_id = format!("msg_test_{}", crate::server::names::random_suffix(20));
        deliver::attempt(&self.http, webhook, &msg_id, &payload, self.config.attempt_timeout, self.config.allow_private)
            .await
    }

    /// Runs the writer, the dispatcher and the pruner until `shutdown`; events
    /// already emitted are written to the outbox before it returns.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(queue) = self.queue.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            tracing::error!("notifier started twice");
            return;
        };
        let attempts = TaskTracker::new();
        let abandon = CancellationToken::new();
        let writer = tokio::spawn(self.clone().write_outbox(queue, shutdown.clone()));
        let pruner = tokio::spawn(self.clone().prune(shutdown.clone()));
        self.dispatch(&attempts, &shutdown, &abandon).await;
        let _ = writer.await;
        let _ = pruner.await;
        // Attempts still running get a moment to finish, then are abandoned:
        // their rows stay leased, and the next start retries them at once.
        // None may outlive the server: a server started next on the same
        // data dir (in this process too) takes their rows for its own.
        attempts.close();
        if tokio::time::timeout(Duration::from_secs(2), attempts.wait()).await.is_err() {
            abandon.cancel();
            attempts.wait().await;
        }
    }

    /// Turns events into delivery rows, a batch per transaction.
    ///
    /// A batch the store refuses (a full disk, a locked file) is kept and
    /// written again, with what arrived meanwhile, every [`RETRY_WRITE`] at
    /// first and then less often: the events are few and small, and each one
    /// lost is a notification nobody gets. Only a stop while the store still
    /// refuses loses them, and says so.
    async fn write_outbox(self: Arc<Self>, mut queue: mpsc::UnboundedReceiver<Emitted>, shutdown: CancellationToken) {
        // Rows are made once per event, so a batch written again keeps its
        // `webhook-id`s, times and the webhooks it was meant for when it
        // happened. (A refused write is rolled back whole: rows and marks
        // are applied once.)
        let (mut events, mut rows, mut changes) = (0, Vec::new(), Vec::new());
        let mut backoff = RETRY_WRITE;
        let mut drops = Drops::default();
        loop {
            let mut fresh = Vec::new();
            let stopping = if events == 0 {
                tokio::select! {
                    e = queue.recv() => {
                        let closed = e.is_none();
                        fresh.extend(e);
                        closed
                    }
                    _ = shutdown.cancelled() => true,
                    // Drops of the last window, told once it is over.
                    () = tokio::time::sleep_until(drops.next_told()), if drops.owed() => {
                        drops.tell();
                        continue;
                    }
                }
            } else {
                // The refused batch again, with what arrived meanwhile.
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => false,
                    _ = shutdown.cancelled() => true,
                }
            };
            while let Ok(e) = queue.try_recv() {
                fresh.push(e);
            }
            events += fresh.len();
            rows.extend(self.deliveries_for(&fresh));
            changes.extend(owed::live_changes(&fresh));
            if events == 0 {
                return; // shut down with nothing left to write
            }
            let n = rows.len();
            let written = self
                .store
                .run(move |s| {
                    let outcome = s.record_events(&rows, &changes);
                    Ok((rows, changes, outcome))
                })
                .await;
            let outcome = match written {
                Ok((kept_rows, kept_changes, outcome)) => {
                    (rows, changes) = (kept_rows, kept_changes);
                    outcome
                }
                // The store's task itself failed (a panic): the batch went with it.
                Err(err) => {
                    tracing::error!(%err, events, deliveries = n, "webhook deliveries for the outbox are lost");
                    (events, rows, changes) = (0, Vec::new(), Vec::new());
                    if stopping {
                        return;
                    }
                    continue;
                }
            };
            match outcome {
                Ok(dropped) => {
                    drops.note(dropped);
                    if backoff > RETRY_WRITE {
                        tracing::info!(events, "webhook deliveries written to the outbox after all");
                    }
                    (events, backoff) = (0, RETRY_WRITE);
                    (rows, changes) = (Vec::new(), Vec::new());
                    if n > 0 {
                        self.wake.notify_one();
                    }
                }
                Err(err) if stopping && n > 0 => {
                    tracing::error!(%err, events, deliveries = n, "stopping: webhook deliveries the outbox refused are lost");
                }
                // (Only the sessions' marks, with no webhook to hear of them:
                // the next start may owe disconnects nobody listens for.)
                Err(err) if stopping => {
                    tracing::warn!(%err, events, "stopping: the outbox refused the last session events (no webhook listens for them)");
                }
                Err(err) => {
                    tracing::error!(%err, events, deliveries = n, retry_in = ?backoff, "cannot write webhook deliveries to the outbox: kept, to try again");
                    backoff = (backoff * 2).min(MAX_RETRY_WRITE);
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// One delivery per (event, subscribed webhook of the same organization).
    fn deliveries_for(&self, events: &[Emitted]) -> Vec<DeliveryRecord> {
        let now = now_ms();
        let mut rows = Vec::new();
        for e in events {
            let payload = Payload::new(e.kind, &e.subject, e.at).to_json();
            for w in self.webhooks.iter() {
                let subscribed = w.enabled
                    && w.org_id == e.org_id
                    && w.events.iter().any(|name| name == e.kind.as_str())
                    && match &w.group {
                        Some(g) => e.group.as_ref() == Some(g),
                        None => !e.regrouped,
                    };
                if subscribed {
                    rows.push(DeliveryRecord {
                        id: format!("msg_{}", crate::server::names::random_suffix(24)),
                        webhook_id: w.id.clone(),
                        event: e.kind.as_str().to_owned(),
                        payload: payload.clone(),
                        state: DeliveryState::Pending,
                        attempts: 0,
                        next_attempt_ms: now,
                        last_status: None,
                        last_response: None,
                        last_error: None,
                        duration_ms: None,
                        created_ms: now,
                        updated_ms: now,
                    });
                }
            }
        }
        rows
    }

    /// Starts due attempts within the concurrency limits, then sleeps until
    /// something is due, an event arrives or an attempt ends.
    async fn dispatch(
        self: &Arc<Self>,
        attempts: &TaskTracker,
        shutdown: &CancellationToken,
        abandon: &CancellationToken,
    ) {
        let global = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let mut per_webhook: HashMap<String, Arc<Semaphore>> = HashMap::new();
        loop {
            let due = self.store.run(|s| s.due_deliveries(now_ms(), PER_WEBHOOK, MAX_IN_FLIGHT)).await;
            let mut blocked = false;
            let mut starting = Vec::new();
            for delivery in due.unwrap_or_else(|err| {
                self.trouble.tell("cannot read the webhook outbox", &err);
                Vec::new()
            }) {
                let slot = per_webhook
                    .entry(delivery.webhook_id.clone())
                    .or_insert_with(|| Arc::new(Semaphore::new(PER_WEBHOOK)));
                match (slot.clone().try_acquire_owned(), global.clone().try_acquire_owned()) {
                    (Ok(mine), Ok(all)) => starting.push((delivery, mine, all)),
                    _ => blocked = true,
                }
            }
            if !starting.is_empty() {
                // The lease, for the whole batch in one transaction: not due
                // again until these attempts have surely ended.
                let until = now_ms() + (self.config.attempt_timeout + LEASE_MARGIN).as_millis() as i64;
                let ids: Vec<String> = starting.iter().map(|(d, ..)| d.id.clone()).collect();
                match self.store.run(move |s| s.lease_deliveries(&ids, until)).await {
                    // Given up since they were read (a backlog's drop): not sent.
                    Ok(leased) => {
                        let leased: std::collections::HashSet<String> = leased.into_iter().collect();
                        starting.retain(|(d, ..)| leased.contains(&d.id));
                    }
                    Err(err) => drop(self.trouble.tell("cannot lease webhook deliveries", &err)),
                }
            }
            for (delivery, mine, all) in starting {
                let (this, abandon) = (self.clone(), abandon.clone());
                attempts.spawn(async move {
                    this.deliver(delivery, &abandon).await;
                    drop((mine, all));
                    this.wake.notify_one();
                });
            }
            per_webhook.retain(|_, s| s.available_permits() < PER_WEBHOOK);
            let next_due = self.store.run(|s| s.next_due_ms()).await.ok().flatten();
            let wait = match next_due {
                _ if blocked => Duration::from_secs(1),
                Some(at) => Duration::from_millis((at - now_ms()).clamp(0, 30_000) as u64),
                None => Duration::from_secs(30),
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(5))) => {}
            }
        }
    }

    /// One attempt of one delivery, and its record; `abandon` ends a
    /// request still waiting for its receiver, and then nothing is recorded
    /// (the row stays leased): a record written once abandoned might land
    /// after the server let go of its data dir.
    async fn deliver(&self, mut d: DeliveryRecord, abandon: &CancellationToken) {
        let Some(webhook) = self.webhook(&d.webhook_id) else { return }; // deleted: its rows went with it
        if !webhook.enabled {
            // Disabled since it was read: it waits, as the webhook's other
            // deliveries do, until the webhook is enabled again (a pause),
            // in its place among them (its due time as it was; the save
            // lifts the lease).
            d.updated_ms = now_ms();
            self.save(d).await;
            return;
        }
        if d.attempts as usize > self.config.schedule.0.len() {
            // Its last attempt was cut by a stop or a crash (counted as it
            // started, see `lease_deliveries`): none is left. (Saved with
            // the count as read, which this lease's own count undoes.)
            (d.state, d.next_attempt_ms, d.updated_ms) = (DeliveryState::Failed, now_ms(), now_ms());
            d.last_error = Some(
                "no attempt left: the last one was cut by a stop of the server (or the retry schedule is shorter now)"
                    .to_owned(),
            );
            self.save(d).await;
            return;
        }
        let attempt = deliver::attempt(
            &self.http,
            &webhook,
            &d.id,
            &d.payload,
            self.config.attempt_timeout,
            self.config.allow_private,
        );
        let Some(a) = abandon.run_until_cancelled(attempt).await else { return };
        d.attempts += 1;
        let next = decide(&a.result, d.attempts, &self.config.schedule);
        let now = now_ms();
        (d.state, d.next_attempt_ms) = match next {
            Next::Succeeded => (DeliveryState::Succeeded, now),
            Next::Failed => (DeliveryState::Failed, now),
            Next::RetryIn(delay) => (DeliveryState::Pending, now + delay.as_millis() as i64),
        };
        tracing::debug!(webhook_id = %d.webhook_id, delivery = %d.id, attempt = d.attempts, ?next, status = ?a.status, "webhook attempt");
        (d.last_status, d.last_response, d.last_error) = (a.status, a.response, a.error);
        d.duration_ms = Some(a.duration.as_millis() as u64);
        d.updated_ms = now;
        self.save(d).await;
    }

    async fn save(&self, d: DeliveryRecord) {
        if let Err(err) = self.store.run(move |s| s.update_delivery(&d)).await {
            self.trouble.tell("could not record a webhook delivery attempt", &err);
        }
    }

    /// Deletes finished deliveries older than [`RETENTION`], and beyond each
    /// webhook's newest [`MAX_KEPT`](crate::store::webhooks::MAX_KEPT), every
    /// minute: a flapping tunnel makes hundreds of rows a second, which the
    /// list, the health figures and every write then read through.
    async fn prune(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
            let before = now_ms() - RETENTION.as_millis() as i64;
            match self.store.run(move |s| s.prune_deliveries(before)).await {
                Ok(n) if n > 0 => tracing::debug!(deliveries = n, "pruned old webhook deliveries"),
                Ok(_) => {}
                Err(err) => tracing::warn!(%err, "could not prune webhook deliveries"),
            }
            self.trim_backlogs().await;
        }
    }

    /// Cuts back the backlogs over the cap of webhooks that get no new
    /// events (those that do are cut back as their events are written): a
    /// burst's rows would otherwise wait, at a hanging receiver's pace, until
    /// the next event. A step of at most a thousand rows per webhook a store
    /// call, so that other calls get the store in between; bounded, so that
    /// a store that keeps dropping cannot hold the prune.
    async fn trim_backlogs(&self) {
        let mut dropped = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..MAX_TRIM_STEPS {
            let now = now_ms();
            match self.store.run(move |s| s.trim_backlogs(now)).await {
                Ok(step) if step.is_empty() => break,
                Ok(step) => step.into_iter().for_each(|(webhook, n)| *dropped.entry(webhook).or_default() += n),
                Err(err) => {
                    tracing::warn!(%err, "could not cut back webhook backlogs");
                    break;
                }
            }
        }
        for (webhook, dropped) in dropped {
            warn_dropped(&webhook, dropped);
        }
    }
}

/// Most store calls of one [`Notifier::trim_backlogs`]: 100,000 rows of one
/// webhook, more than a minute of any burst brings.
const MAX_TRIM_STEPS: usize = 100;

/// Tells that `dropped` deliveries of `webhook` were given up.
fn warn_dropped(webhook: &str, dropped: usize) {
    tracing::warn!(
        webhook,
        dropped,
        waiting = crate::store::webhooks::MAX_PENDING,
        "webhook deliveries given up: the receiver is not keeping up (it fails or answers slowly), and the most \
         that wait per webhook were waiting"
    );
}

/// Deliveries the outbox gave up for webhooks whose receivers do not keep up
/// (see [`crate::store::webhooks::MAX_PENDING`]), told in the log at once,
/// then at most every [`DROP_WARNING_EVERY`], what came meanwhile at the end
/// of that window: their rows are soon too old for the deliveries list, and
/// under a burst a line per batch would flood the log.
#[derive(Default)]
struct Drops {
    since_told: std::collections::BTreeMap<String, usize>,
    told_at: Option<tokio::time::Instant>,
}

/// How often [`Drops`] speaks up at most.
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);

impl Drops {
    /// Counts `dropped`, and tells at once unless a warning went out within the window.
    fn note(&mut self, dropped: Vec<(String, usize)>) {
        for (webhook, n) in dropped {
            *self.since_told.entry(webhook).or_default() += n;
        }
        let window_over = self.told_at.is_none_or(|at| at.elapsed() >= DROP_WARNING_EVERY);
        if self.owed() && window_over {
            self.tell();
        }
    }

    /// Whether drops wait to be told.
    fn owed(&self) -> bool {
        !self.since_told.is_empty()
    }

    /// When the next warning may go out.
    fn next_told(&self) -> tokio::time::Instant {
        self.told_at.map_or_else(tokio::time::Instant::now, |at| at + DROP_WARNING_EVERY)
    }

    fn tell(&mut self) {
        for (webhook, dropped) in std::mem::take(&mut self.since_told) {
            warn_dropped(&webhook, dropped);
        }
        self.told_at = Some(tokio::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events emitted back to back never share an `ActionDate`, and they
    /// stay near the clock.
    #[test]
    fn event_times_increase_by_a_microsecond_at_least() {
        let stamps = Stamps::default();
        let before = OffsetDateTime::now_utc();
        // (Taken in a tight loop, as two emits are: many share a microsecond
        // of the clock.)
        let times: Vec<OffsetDateTime> = (0..10_000).map(|_| stamps.next()).collect();
        let dates: Vec<String> = times
            .iter()
            .map(|&at| crate::notify::Payload::new(EventKind::TokenConnected, "t", at).action_date)
            .collect();
        assert!(dates.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        let last = stamps.next();
        assert!(last - before < time::Duration::seconds(1), "{last} is near {before}");
    }

    /// A burst of store failures is one line, and the next line after the
    /// window says how many came meanwhile.
    #[test]
    fn store_failures_are_told_once_a_window() {
        let trouble = Trouble::default();
        let err = crate::store::StoreError::Database("database or disk is full".into());
        assert!(trouble.tell("could not record a webhook delivery attempt", &err));
        for _ in 0..19 {
            assert!(!trouble.tell("could not record a webhook delivery attempt", &err));
        }
        assert_eq!(trouble.0.lock().unwrap().1, 19, "counted for the next line");
        trouble.0.lock().unwrap().0 = Some(std::time::Instant::now() - TROUBLE_EVERY);
        assert!(trouble.tell("cannot lease webhook deliveries", &err), "told again after the window");
        assert_eq!(trouble.0.lock().unwrap().1, 0);
    }

    /// The first drop is told at once; those within the window wait for its
    /// end (the writer's timer), rather than for a drop after it, which may
    /// never come.
    #[tokio::test]
    async fn drops_are_told_at_once_then_at_the_end_of_each_window() {
        let mut drops = Drops::default();
        assert!(!drops.owed());
        drops.note(vec![("wh_a".into(), 3)]);
        assert!(!drops.owed(), "the first is told at once");
        drops.note(vec![("wh_a".into(), 2), ("wh_b".into(), 1)]);
        drops.note(Vec::new());
        assert!(drops.owed(), "within the window: kept");
        let wait = drops.next_told() - tokio::time::Instant::now();
        assert!(wait > DROP_WARNING_EVERY - Duration::from_secs(1) && wait <= DROP_WARNING_EVERY, "{wait:?}");
        assert_eq!(drops.since_told.values().sum::<usize>(), 3);
        drops.tell();
        assert!(!drops.owed());
    }
}
