//! SQL for webhooks and deliveries (see [`super::webhooks`]).

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::webhooks::{BACKLOG_GRACE_MS, DeliveryRecord, DeliveryState, Health, MAX_KEPT, MAX_PENDING, WebhookRecord};

/// Schema version 1: tunnel groups, webhooks and the delivery outbox.
pub(super) const MIGRATION_1: &str = "
ALTER TABLE tunnels ADD COLUMN group_name TEXT;
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    group_name TEXT,
    enabled INTEGER NOT NULL,
    custom_headers TEXT NOT NULL,
    signing_key TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX webhooks_org ON webhooks(org_id);
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    webhook_id TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    last_status INTEGER,
    last_response TEXT,
    last_error TEXT,
    duration_ms INTEGER,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX deliveries_due ON deliveries(state, next_attempt_ms);
CREATE INDEX deliveries_webhook ON deliveries(webhook_id, created_ms);
";

const WEBHOOK_COLUMNS: &str =
    "id, org_id, name, url, events, group_name, enabled, custom_headers, signing_key, created_at, updated_at";
const DELIVERY_COLUMNS: &str = "id, webhook_id, event, payload, state, attempts, next_attempt_ms, last_status, \
     last_response, last_error, duration_ms, created_ms, updated_ms";

fn webhook_from(r: &Row<'_>) -> rusqlite::Result<WebhookRecord> {
    let events: String = r.get(4)?;
    let headers: String = r.get(7)?;
    Ok(WebhookRecord {
        id: r.get(0)?,
        org_id: r.get(1)?,
        name: r.get(2)?,
        url: r.get(3)?,
        events: events.split(',').filter(|e| !e.is_empty()).map(str::to_owned).collect(),
        group: r.get(5)?,
        enabled: r.get(6)?,
        custom_headers: serde_json::from_str(&headers).unwrap_or_default(),
        signing_key: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

fn delivery_from(r: &Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    let state: String = r.get(4)?;
    Ok(DeliveryRecord {
        id: r.get(0)?,
        webhook_id: r.get(1)?,
        event: r.get(2)?,
        payload: r.get(3)?,
        state: DeliveryState::parse(&state),
        attempts: r.get::<_, i64>(5)?.clamp(0, i64::from(u32::MAX)) as u32,
        next_attempt_ms: r.get(6)?,
        last_status: r.get::<_, Option<i64>>(7)?.and_then(|s| u16::try_from(s).ok()),
        last_response: r.get(8)?,
        last_error: r.get(9)?,
        duration_ms: r.get::<_, Option<i64>>(10)?.map(|d| d.max(0) as u64),
        created_ms: r.get(11)?,
        updated_ms: r.get(12)?,
    })
}

pub(super) fn load_webhooks(c: &Connection) -> rusqlite::Result<Vec<WebhookRecord>> {
    let mut stmt = c.prepare(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY created_at, id"))?;
    let rows = stmt.query_map([], webhook_from)?;
    rows.collect()
}

/// Inserts a webhook, or updates every column of an existing one in place.
///
/// Not `INSERT OR REPLACE`: SQLite carries out a replace as a delete and an
/// insert, and the delete cascades to the webhook's deliveries, so every
/// update (a rename, a new URL, a new signing key) wiped its log, its health
/// and its pending retries.
pub(super) fn save_webhook(c: &Connection, w: &WebhookRecord) -> rusqlite::Result<()> {
    let headers = serde_json::to_string(&w.custom_headers).unwrap_or_else(|_| "[]".into());
    c.execute(
        &format!(
            "INSERT INTO webhooks ({WEBHOOK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
             ON CONFLICT(id) DO UPDATE SET org_id = excluded.org_id, name = excluded.name, url = excluded.url, \
             events = excluded.events, group_name = excluded.group_name, enabled = excluded.enabled, \
             custom_headers = excluded.custom_headers, signing_key = excluded.signing_key, \
             created_at = excluded.created_at, updated_at = excluded.updated_at"
        ),
        params![
            w.id,
            w.org_id,
            w.name,
            w.url,
            w.events.join(","),
            w.group,
            w.enabled,
            headers,
            w.signing_key,
            w.created_at,
            w.updated_at
        ],
    )
    .map(drop)
}

pub(super) fn delete_webhook(c: &Connection, id: &str) -> rusqlite::Result<()> {
    c.execute("DELETE FROM webhooks WHERE id = ?1", params![id]).map(drop)
}

/// Appends deliveries within the caller's transaction, skipping those of a
/// webhook deleted since they were decided: the notifier decides from its
/// cache, which the API updates after the store, and one such row failing its
/// foreign key rolled back the whole batch (every webhook's deliveries, and
/// the live marks written with them).
pub(super) fn insert_delivery_rows(
    tx: &Connection,
    deliveries: &[DeliveryRecord],
) -> rusqlite::Result<Vec<(String, usize)>> {
    let mut stmt = tx.prepare_cached(&format!(
        "INSERT OR IGNORE INTO deliveries ({DELIVERY_COLUMNS}) \
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13 \
         WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = ?2)"
    ))?;
    // Each webhook of the batch, with how many rows it got.
    let mut webhooks: Vec<(&str, usize)> = Vec::new();
    for d in deliveries {
        match webhooks.iter_mut().find(|(id, _)| *id == d.webhook_id) {
            Some((_, n)) => *n += 1,
            None => webhooks.push((&d.webhook_id, 1)),
        }
        stmt.execute(params![
            d.id,
            d.webhook_id,
            d.event,
            d.payload,
            d.state.as_str(),
            d.attempts,
            d.next_attempt_ms,
            d.last_status,
            d.last_response,
            d.last_error,
            d.duration_ms.map(|d| d as i64),
            d.created_ms,
            d.updated_ms
        ])?;
    }
    let now_ms = deliveries.iter().map(|d| d.created_ms).max().unwrap_or(0);
    let mut dropped = Vec::new();
    for (webhook, arrived) in webhooks {
        let n = drop_over_backlog(tx, webhook, now_ms, arrived)?;
        if n > 0 {
            dropped.push((webhook.to_owned(), n));
        }
    }
    Ok(dropped)
}

/// [`drop_over_backlog`] for every enabled webhook, in one transaction, with
/// no rows arrived: a backlog whose webhook gets no new events is cut back
/// too (the notifier calls it every minute); returns how many rows each
/// webhook gave up. A disabled webhook's deliveries wait, neither sent nor
/// given up (a pause).
pub(super) fn trim_backlogs(c: &mut Connection, now_ms: i64) -> rusqlite::Result<Vec<(String, usize)>> {
    let tx = c.transaction()?;
    let mut dropped = Vec::new();
    for webhook in enabled_webhook_ids(&tx)? {
        let n = drop_over_backlog(&tx, &webhook, now_ms, 0)?;
        if n > 0 {
            dropped.push((webhook, n));
        }
    }
    tx.commit()?;
    Ok(dropped)
}

/// Most rows [`drop_over_backlog`] gives up in one batch, unless the batch
/// brought more.
const DROP_STEP: usize = 1_000;

/// Gives up the pending deliveries of `webhook` beyond [`MAX_PENDING`], as
/// failed, saying why, and returns how many: a receiver that never answers
/// finishes about one delivery per attempt timeout and slot, and the events
/// of busy tunnels would otherwise pile up without end. Only once the first
/// due has waited [`BACKLOG_GRACE_MS`]: a burst that a receiver drains is
/// no reason to lose its events (one of 40,000 events in 12 s lost half of
/// them, with two other webhooks backlogged). Those due first go
/// (new rows are due when made, so the oldest events), not those being
/// attempted now: their outcome is still to come. Both statements read only
/// the webhook's pending rows, through `deliveries_pending`: ordered by
/// creation time they read every row the webhook has, finished ones too
/// (93 ms at 116k, in every batch of the outbox's writer).
///
/// At most [`DROP_STEP`] rows a batch, or as many as it brought: a backlog
/// far over the cap (a burst's, once its grace is over) is worked down over
/// the batches that follow rather than in one long transaction, which held
/// the store for half a second at 14.5k rows.
fn drop_over_backlog(tx: &Connection, webhook: &str, now_ms: i64, arrived: usize) -> rusqlite::Result<usize> {
    let pending: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM deliveries WHERE webhook_id = ?1 AND state = 'pending'")?
        .query_row(params![webhook], |r| r.get(0))?;
    let over = pending - MAX_PENDING as i64;
    if over <= 0 {
        return Ok(0);
    }
    let first_made: Option<i64> = tx
        .prepare_cached(
            "SELECT created_ms FROM deliveries WHERE webhook_id = ?1 AND state = 'pending' AND leased = 0
             ORDER BY next_attempt_ms, id LIMIT 1",
        )?
        .query_row(params![webhook], |r| r.get(0))
        .optional()?;
    if first_made.is_none_or(|made| now_ms - made < BACKLOG_GRACE_MS) {
        return Ok(0); // a burst, which a receiver that keeps up is still draining
    }
    let over = over.min(DROP_STEP.max(arrived) as i64);
    let why = format!(
        "{MAX_PENDING} newer deliveries were waiting for this receiver, which is not keeping up (it fails, or \
         answers slowly)"
    );
    // A delivery already tried keeps what its last attempt met.
    tx.prepare_cached(
        "UPDATE deliveries SET state = 'failed', updated_ms = ?4, last_error = CASE
             WHEN attempts = 0 THEN 'dropped before it was sent: ' || ?3
             ELSE 'given up before its next retry: ' || ?3 || COALESCE(
                 ' (last attempt: ' || last_error || ')', ' (last attempt: HTTP ' || last_status || ')', '')
         END
         WHERE id IN (
             SELECT id FROM deliveries WHERE webhook_id = ?1 AND state = 'pending' AND leased = 0
             ORDER BY next_attempt_ms, id LIMIT ?2)",
    )?
    .execute(params![webhook, over, why, now_ms])
}

/// Schema version 5: a webhook's pending deliveries by due time, so that
/// picking the next few of each, and counting a backlog, reads only those
/// (the query before ranked every due row of every webhook: 280 ms at a
/// backlog of 117k rows, on the store's one connection).
pub(super) const MIGRATION_5: &str =
    "CREATE INDEX deliveries_pending ON deliveries(webhook_id, state, next_attempt_ms, id);";

/// Schema version 4: whether a delivery's due time is a lease (an attempt
/// was started) rather than its schedule, so a restart can tell the two apart.
pub(super) const MIGRATION_4: &str = "ALTER TABLE deliveries ADD COLUMN leased INTEGER NOT NULL DEFAULT 0;";

/// Moves the due time of `ids` to `until_ms`, marked as a lease, in one transaction.
pub(super) fn lease_deliveries(c: &mut Connection, ids: &[String], until_ms: i64) -> rusqlite::Result<Vec<String>> {
    let tx = c.transaction()?;
    let mut leased = Vec::with_capacity(ids.len());
    {
        // Only what is still pending: a backlog's drop may have given a row
        // up since the dispatcher read it.
        // The attempt is counted as it starts: one cut by a crash or a stop
        // counts too (the receiver may have had it), so a delivery gets no
        // more attempts than the schedule allows, and its log says how many.
        let mut stmt = tx.prepare_cached(
            "UPDATE deliveries SET next_attempt_ms = ?2, leased = 1, attempts = attempts + 1
             WHERE id = ?1 AND state = 'pending'",
        )?;
        for id in ids {
            if stmt.execute(params![id, until_ms])? == 1 {
                leased.push(id.clone());
            }
        }
    }
    tx.commit()?;
    Ok(leased)
}

/// Makes the pending deliveries whose attempt a previous run started, and
/// never recorded, due at once, in the order of their events; returns how many.
pub(super) fn release_leases(c: &Connection) -> rusqlite::Result<usize> {
    c.execute(
        "UPDATE deliveries SET next_attempt_ms = created_ms, leased = 0 WHERE leased = 1 AND state = 'pending'",
        [],
    )
}

/// Records the outcome of an attempt (every mutable column of the delivery).
pub(super) fn update_delivery(c: &Connection, d: &DeliveryRecord) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE deliveries SET state = ?2, attempts = ?3, next_attempt_ms = ?4, last_status = ?5, last_response = ?6,
             last_error = ?7, duration_ms = ?8, updated_ms = ?9, leased = 0
         WHERE id = ?1",
        params![
            d.id,
            d.state.as_str(),
            d.attempts,
            d.next_attempt_ms,
            d.last_status,
            d.last_response,
            d.last_error,
            d.duration_ms.map(|d| d as i64),
            d.updated_ms
        ],
    )
    .map(drop)
}

/// Pending deliveries due by `now_ms`, oldest due first, at most
/// `per_webhook` of each webhook (so one receiver's backlog cannot hide the
/// others') and `limit` in all.
pub(super) fn due_deliveries(
    c: &Connection,
    now_ms: i64,
    per_webhook: usize,
    limit: usize,
) -> rusqlite::Result<Vec<DeliveryRecord>> {
    // Webhook by webhook, each an index range of its first due rows: the
    // cost is in webhooks, not in how many deliveries wait. A disabled
    // webhook's wait until it is enabled again.
    let webhooks = enabled_webhook_ids(c)?;
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries
         WHERE webhook_id = ?1 AND state = 'pending' AND next_attempt_ms <= ?2
         ORDER BY next_attempt_ms, id LIMIT ?3"
    ))?;
    let mut due = Vec::new();
    for webhook in &webhooks {
        let rows = stmt.query_map(params![webhook, now_ms, per_webhook as i64], delivery_from)?;
        for row in rows {
            due.push(row?);
        }
    }
    // (Ordered as `deliveries_pending` reads them: by `rowid` they would
    // need a scan of every due row, the cost that index was made to end.
    // Rows due in the same millisecond start together anyway.)
    due.sort_by(|a, b| (a.next_attempt_ms, &a.id).cmp(&(b.next_attempt_ms, &b.id)));
    due.truncate(limit);
    Ok(due)
}

/// Every webhook's id: the due query and the prune go webhook by webhook,
/// each an index range.
fn webhook_ids(c: &Connection) -> rusqlite::Result<Vec<String>> {
    c.prepare_cached("SELECT id FROM webhooks")?.query_map([], |r| r.get(0))?.collect()
}

/// The ids of the webhooks that are enabled: [`due_deliveries`] and
/// [`next_due_ms`] pass the others by, whose deliveries wait.
fn enabled_webhook_ids(c: &Connection) -> rusqlite::Result<Vec<String>> {
    c.prepare_cached("SELECT id FROM webhooks WHERE enabled = 1")?.query_map([], |r| r.get(0))?.collect()
}

/// When the earliest pending delivery of an enabled webhook is due (one
/// index lookup per webhook).
pub(super) fn next_due_ms(c: &Connection) -> rusqlite::Result<Option<i64>> {
    let mut first = c.prepare_cached(
        "SELECT next_attempt_ms FROM deliveries WHERE webhook_id = ?1 AND state = 'pending'
         ORDER BY next_attempt_ms LIMIT 1",
    )?;
    let mut earliest: Option<i64> = None;
    for webhook in enabled_webhook_ids(c)? {
        if let Some(at) = first.query_row(params![webhook], |r| r.get::<_, i64>(0)).optional()? {
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        }
    }
    Ok(earliest)
}

/// A webhook's deliveries created since `since_ms`, newest first.
pub(super) fn deliveries_since(
    c: &Connection,
    webhook_id: &str,
    since_ms: i64,
    limit: usize,
) -> rusqlite::Result<Vec<DeliveryRecord>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE webhook_id = ?1 AND created_ms >= ?2
         ORDER BY created_ms DESC, rowid DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![webhook_id, since_ms, limit as i64], delivery_from)?;
    rows.collect()
}

/// Health of every webhook of `org_id` over deliveries created since `since_ms`
/// that were tried: not one whose first attempt is still under way (counted
/// as it starts, it has no outcome yet).
pub(super) fn health(c: &Connection, org_id: &str, since_ms: i64) -> rusqlite::Result<HashMap<String, Health>> {
    let mut stmt = c.prepare_cached(
        "SELECT d.webhook_id, COUNT(*), SUM(d.state = 'succeeded') FROM deliveries d
         JOIN webhooks w ON w.id = d.webhook_id
         WHERE w.org_id = ?1 AND d.created_ms >= ?2 AND d.attempts > 0
           AND NOT (d.state = 'pending' AND d.leased = 1 AND d.attempts = 1)
         GROUP BY d.webhook_id",
    )?;
    let rows = stmt.query_map(params![org_id, since_ms], |r| {
        let h = Health { requests: r.get::<_, i64>(1)?.max(0) as u64, succeeded: r.get::<_, i64>(2)?.max(0) as u64 };
        Ok((r.get::<_, String>(0)?, h))
    })?;
    rows.collect()
}

/// Deletes finished deliveries created before `before_ms`, and those of a
/// webhook beyond its newest [`MAX_KEPT`] (a tunnel that flaps all day
/// would otherwise fill the disk within the retention).
pub(super) fn prune_deliveries(c: &Connection, before_ms: i64) -> rusqlite::Result<usize> {
    let mut pruned =
        c.execute("DELETE FROM deliveries WHERE state != 'pending' AND created_ms < ?1", params![before_ms])?;
    let webhooks = webhook_ids(c)?;
    let mut over = c.prepare_cached(
        "DELETE FROM deliveries WHERE webhook_id = ?1 AND state != 'pending' AND created_ms < (
             SELECT created_ms FROM deliveries WHERE webhook_id = ?1 AND state != 'pending'
             ORDER BY created_ms DESC LIMIT 1 OFFSET ?2)",
    )?;
    for webhook in &webhooks {
        pruned += over.execute(params![webhook, MAX_KEPT as i64 - 1])?;
    }
    Ok(pruned)
}
