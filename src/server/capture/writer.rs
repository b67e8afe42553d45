//! The capture writer: queued records → one SQLite transaction per window.
//!
//! A batch collects for [`BATCH_WINDOW`] after its first record, so a busy
//! tunnel costs one transaction per window rather than one per request. Under
//! load (the last batch held [`BUSY_BATCH`] records or more) the window grows
//! to [`BUSY_WINDOW`]: records that retention would delete at once (more than
//! `max_records` of one tunnel in one batch) are then never written, which
//! bounds the writes to about `max_records` per tunnel per second however
//! fast requests come. Stored records are then fanned out to live-stream
//! subscribers and to waiting replays.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use time::OffsetDateTime;
use time::macros::format_description;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{BodyBuf, Capture, Captured};
use crate::server::State;
use crate::store::requests::id_floor;
use crate::store::{CapturedBody, CapturedPart, RequestRecord};

/// How long a batch collects after its first record.
pub const BATCH_WINDOW: Duration = Duration::from_millis(100);
/// The window under load.
pub const BUSY_WINDOW: Duration = Duration::from_secs(1);
/// A batch this large means load: the next one collects for [`BUSY_WINDOW`].
pub const BUSY_BATCH: usize = 256;
/// How often a batch takes what was queued meanwhile. The queue holds
/// [`super::MAX_QUEUED`] records: this many milliseconds' worth at 800k
/// requests a second.
const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// Most records in one batch (memory stays bounded by the queue's byte limit,
/// which counts a record until it is written).
const MAX_BATCH: usize = super::MAX_QUEUED;
/// Least time between two warnings about dropped records.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// First wait before writing again records the store refused.
const RETRY_HELD: Duration = Duration::from_secs(1);
/// Longest such wait.
const MAX_RETRY_HELD: Duration = Duration::from_secs(30);
/// How often records past `max_age` are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub(super) async fn run(hub: Arc<Capture>, state: Arc<State>, stop: CancellationToken) {
    let Some(mut rx) = hub.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    // Records of tunnels deleted while the server was down, and expired ones.
    prune(&hub, &state, true).await;
    let mut next_prune = Instant::now() + PRUNE_EVERY;
    // (dropped records, records with cut bodies) as of the last warning.
    let mut warned = (0, 0);
    let mut window = BATCH_WINDOW;
    let mut last_warning = None;
    let mut held = Held::default();
    loop {
        let first = tokio::select! {
            biased;
            r = rx.recv() => r,
            _ = stop.cancelled() => None,
            // Records the store refused, again, though no new ones come.
            _ = tokio::time::sleep_until(held.retry_at.unwrap_or_else(Instant::now)), if !held.entries.is_empty() => {
                write(&hub, &state, Vec::new(), &mut held).await;
                continue;
            }
            // An idle server still forgets records past their age.
            _ = tokio::time::sleep_until(next_prune) => {
                prune(&hub, &state, false).await;
                next_prune = Instant::now() + PRUNE_EVERY;
                continue;
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        // One timer, one cancellation wait and one flush wait per batch, and
        // records taken in bulk every [`DRAIN_EVERY`], not as they come: a
        // writer waiting on the queue was woken for nearly every record
        // (0.73 wake-ups a record at concurrency 64, each polling all of
        // these again), work taken from forwarding.
        let deadline = tokio::time::sleep_until(Instant::now() + window);
        let stopped = stop.cancelled();
        let flushed = hub.flush.notified();
        tokio::pin!(deadline, stopped, flushed);
        loop {
            take_queued(&mut rx, &mut batch);
            if batch.len() >= MAX_BATCH {
                break;
            }
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                _ = &mut flushed => {
                    // What the reader waits for may have come in meanwhile.
                    take_queued(&mut rx, &mut batch);
                    break;
                }
                _ = &mut deadline => {
                    take_queued(&mut rx, &mut batch);
                    break;
                }
                _ = tokio::time::sleep(DRAIN_EVERY) => {}
            }
        }
        window = if batch.len() >= BUSY_BATCH { BUSY_WINDOW } else { BATCH_WINDOW };
        write(&hub, &state, batch, &mut held).await;
        let seen = (hub.dropped(), hub.cut());
        if seen != warned && last_warning.is_none_or(|at: Instant| at.elapsed() >= WARN_EVERY) {
            last_warning = Some(Instant::now());
            if seen.0 > warned.0 {
                tracing::warn!(
                    dropped = seen.0 - warned.0,
                    total = seen.0,
                    "request capture fell behind, or the store refuses records; records dropped (forwarding was not slowed)"
                );
            }
            if seen.1 > warned.1 {
                tracing::warn!(
                    records = seen.1 - warned.1,
                    total = seen.1,
                    "request capture is over its body budget (--capture-body-rate); bodies were cut short"
                );
            }
            warned = seen;
        }
        if Instant::now() >= next_prune {
            prune(&hub, &state, false).await;
            next_prune = Instant::now() + PRUNE_EVERY;
        }
    }
    // Shutting down: in-flight exchanges are over; store what they left.
    let mut rest = Vec::new();
    while let Ok(c) = rx.try_recv() {
        rest.push(c);
    }
    if !rest.is_empty() || !held.entries.is_empty() {
        // One last try for all of it, backoff or not.
        held.retry_at = None;
        write(&hub, &state, rest, &mut held).await;
    }
    if !held.entries.is_empty() {
        tracing::error!(records = held.entries.len(), "stopping: captured requests the store refused are lost");
    }
}

/// Moves what is queued now into `batch`, up to [`MAX_BATCH`], without waiting.
fn take_queued(rx: &mut tokio::sync::mpsc::Receiver<Captured>, batch: &mut Vec<Captured>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(c) => batch.push(c),
            Err(_) => break,
        }
    }
}

/// Records the store refused (a full disk), kept to be written again.
///
/// Their memory still counts against the queue's bound, and they are
/// bounded in number too ([`super::MAX_QUEUED`], the oldest dropped first): while
/// the store refuses, new records are dropped and counted, as when the
/// writer falls behind. They are tried again after a backoff (1 s, doubling
/// to 30 s), with what arrived meanwhile, not at every batch. Readers do not
/// wait for them: each record is settled once it reached the writer, so a
/// listing answers at once without them rather than waiting its 2 s. A
/// stop makes one last try, backoff or not.
#[derive(Default)]
pub(super) struct Held {
    entries: std::collections::VecDeque<Entry>,
    /// When to try again, and the wait after that.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// When the store's refusal was last logged.
    warned: Option<Instant>,
}

/// One record for the store, with who waits for it and its weight in the queue's bound.
pub(super) struct Entry {
    record: RequestRecord,
    replay: Option<oneshot::Sender<RequestRecord>>,
    weight: usize,
}

impl Held {
    /// Drops the entries of tunnels deleted since they were held; the weight
    /// they gave back. (A new batch is filtered before it joins them.)
    fn forget_deleted(&mut self, state: &State) -> usize {
        let mut freed = 0;
        self.entries.retain(|e| tunnel_kept(state, &e.record.tunnel_id, e.weight, &mut freed));
        freed
    }

    /// Drops (and counts) the oldest entries past [`super::MAX_QUEUED`]; the
    /// weight they gave back.
    fn cap(&mut self, hub: &Capture) -> usize {
        let excess = self.entries.len().saturating_sub(super::MAX_QUEUED);
        hub.dropped.fetch_add(excess as u64, Ordering::Relaxed);
        self.entries.drain(..excess).map(|e| e.weight).sum()
    }
}

/// Whether a record of `tunnel_id` is kept: its tunnel was not deleted
/// meanwhile. Else its `weight` is added to `freed`.
fn tunnel_kept(state: &State, tunnel_id: &str, weight: usize, freed: &mut usize) -> bool {
    let alive = state.registry.get(tunnel_id).is_some();
    if !alive {
        *freed += weight;
    }
    alive
}

async fn write(hub: &Capture, state: &State, mut batch: Vec<Captured>, held: &mut Held) {
    let records = batch.len() as u64;
    let mut freed = 0;
    // A deleted tunnel's records would outlive it.
    batch.retain(|c| tunnel_kept(state, &c.tunnel_id, c.weight(), &mut freed));
    let keep = hub.config.max_records;
    if keep > 0 && batch.len() > keep {
        let before: usize = batch.iter().map(Captured::weight).sum();
        trim(&mut batch, keep);
        freed += before - batch.iter().map(Captured::weight).sum::<usize>();
    }
    if keep == 0 {
        freed += batch.drain(..).map(|c| c.weight()).sum::<usize>();
    }
    freed += held.forget_deleted(state);
    held.entries.extend(batch.into_iter().map(|c| {
        let weight = c.weight();
        let (record, replay) = into_record(c);
        Entry { record, replay, weight }
    }));
    freed += held.cap(hub);
    if held.entries.is_empty() {
        // (Nothing held: the next records are written at once.)
        (held.warned, held.retry_at, held.backoff) = (None, None, Duration::ZERO);
    } else if held.retry_at.is_none_or(|at| Instant::now() >= at) {
        let entries = std::mem::take(&mut held.entries);
        let weight: usize = entries.iter().map(|e| e.weight).sum();
        match store_entries(hub, state, entries, keep).await {
            Ok(n) => {
                // (None stored: the store's task failed, and said so.)
                if held.warned.take().is_some() && n > 0 {
                    tracing::info!(records = n, "captured requests the store refused are stored after all");
                }
                (held.retry_at, held.backoff) = (None, Duration::ZERO);
                freed += weight;
            }
            Err((entries, err)) => {
                held.backoff = (held.backoff * 2).clamp(RETRY_HELD, MAX_RETRY_HELD);
                held.retry_at = Some(Instant::now() + held.backoff);
                if held.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    let (n, retry_in) = (entries.len(), held.backoff);
                    tracing::warn!(%err, records = n, ?retry_in, "could not store captured requests: kept, to try again");
                    held.warned = Some(Instant::now());
                }
                held.entries = entries;
            }
        }
    }
    // Memory counts against the queue's bound until written (or given up).
    hub.queued_bytes.fetch_sub(freed, Ordering::Relaxed);
    hub.settled.send_modify(|n| *n += records);
}

/// Stores `entries`, then fans them out to live streams and waiting replays;
/// how many, or the entries back if the store refused them.
async fn store_entries(
    hub: &Capture,
    state: &State,
    entries: std::collections::VecDeque<Entry>,
    keep: usize,
) -> Result<usize, Refused> {
    let (mut records, mut others) = (Vec::with_capacity(entries.len()), Vec::with_capacity(entries.len()));
    for Entry { record, replay, weight } in entries {
        records.push(record);
        others.push((replay, weight));
    }
    let written = state
        .store
        .run(move |s| {
            let outcome = s.insert_requests(&records, keep);
            Ok((records, outcome))
        })
        .await;
    let records = match written {
        Ok((records, Ok(()))) => records,
        Ok((records, Err(err))) => {
            let back =
                records.into_iter().zip(others).map(|(record, (replay, weight))| Entry { record, replay, weight });
            return Err((back.collect(), err));
        }
        // The store's task itself failed (a panic): the records went with it.
        Err(err) => {
            tracing::warn!(%err, "could not store captured requests");
            return Ok(0);
        }
    };
    // A tunnel deleted while the batch was written: the API removes it from
    // the registry before it deletes its records, so either that deletion saw
    // these rows or this check sees the tunnel gone.
    let mut gone: Vec<String> =
        records.iter().filter(|r| state.registry.get(&r.tunnel_id).is_none()).map(|r| r.tunnel_id.clone()).collect();
    gone.sort_unstable();
    gone.dedup();
    for tunnel in gone {
        let _ = state.store.run(move |s| s.delete_requests(&tunnel)).await;
    }
    let n = records.len();
    for (record, (replay, _)) in records.into_iter().zip(others) {
        if let Some(watch) = hub.watchers.get(&record.tunnel_id) {
            if watch.receiver_count() > 0 {
                let _ = watch.send(crate::server::requests_api::sse_event(&record).into());
            }
        }
        if let Some(replay) = replay {
            let _ = replay.send(record);
        }
    }
    // Streams of deleted tunnels end here too (one may have subscribed as the tunnel went).
    hub.watchers.retain(|id, w| w.receiver_count() > 0 && state.registry.get(id).is_some());
    Ok(n)
}

/// Entries the store refused, with its error.
type Refused = (std::collections::VecDeque<Entry>, crate::store::StoreError);

/// Keeps the newest `keep` records of each tunnel (and every replay, which someone waits for).
fn trim(batch: &mut Vec<Captured>, keep: usize) {
    let mut per_tunnel: HashMap<&str, Vec<&bytes::Bytes>> = HashMap::new();
    for c in batch.iter() {
        per_tunnel.entry(&c.tunnel_id).or_default().push(&c.id);
    }
    let mut cut: HashMap<String, bytes::Bytes> = HashMap::new();
    for (tunnel, mut ids) in per_tunnel {
        if ids.len() > keep {
            // The oldest id kept: a selection, not a sort (a busy batch holds
            // thousands of records).
            let at = ids.len() - keep;
            let (_, floor, _) = ids.select_nth_unstable(at);
            cut.insert(tunnel.to_owned(), (*floor).clone());
        }
    }
    batch.retain(|c| c.replay.is_some() || cut.get(&c.tunnel_id).is_none_or(|floor| c.id >= *floor));
}

async fn prune(hub: &Capture, state: &State, orphans: bool) {
    let floor = hub.config.max_age.map(|age| {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        id_floor(now.saturating_sub(age).as_millis() as u64)
    });
    if floor.is_none() && !orphans {
        return;
    }
    // With no tunnel at all, the orphans would be every record: more likely
    // the tunnel table was lost (a main database restored from before any
    // tunnel, emptied by hand) than the last tunnel deleted and its records
    // left (the API deletes them with it, so only a failure or a crash
    // between the two leaves any). Such records are kept: `max_age` still
    // forgets them, and the next start with a tunnel prunes them.
    let tunnels: Option<Vec<String>> = orphans.then(|| state.registry.all_ids()).filter(|ids| !ids.is_empty());
    match state.store.run(move |s| s.prune_requests(floor.as_deref(), tunnels.as_deref())).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(pruned = n, "pruned captured requests"),
        Err(err) => tracing::warn!(%err, "could not prune captured requests"),
    }
}

fn into_record(c: Captured) -> (RequestRecord, Option<tokio::sync::oneshot::Sender<RequestRecord>>) {
    let (replay_of, done) = match c.replay {
        Some(r) => (Some(r.of), Some(r.done)),
        None => (None, None),
    };
    let record = RequestRecord {
        // (ASCII, as `record_id` writes it.)
        id: String::from_utf8_lossy(&c.id).into_owned(),
        tunnel_id: c.tunnel_id,
        time: format_time(c.at),
        method: c.method.to_string(),
        path: String::from_utf8_lossy(&c.target).into_owned(),
        status: c.status.map(|s| s.as_u16()),
        duration_us: c.duration.as_micros() as u64,
        outcome: c.outcome.to_owned(),
        client_ip: c.client_ip.to_string(),
        replay_of,
        request: CapturedPart { headers: c.request_headers.into_list(), body: body(c.request_body) },
        response: c.response_headers.map(|h| CapturedPart { headers: h.into_list(), body: body(c.response_body) }),
    };
    (record, done)
}

fn body(b: BodyBuf) -> CapturedBody {
    CapturedBody { data: b.data.map(|d| d.freeze()), size: b.size, truncated: b.truncated, over_budget: b.cut }
}

fn format_time(at: SystemTime) -> String {
    OffsetDateTime::from(at)
        .format(format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(tunnel: &str, id: &str, replay: bool) -> Captured {
        Captured {
            id: bytes::Bytes::copy_from_slice(id.as_bytes()),
            tunnel_id: tunnel.into(),
            at: SystemTime::UNIX_EPOCH,
            method: http::Method::GET,
            target: bytes::Bytes::from_static(b"/"),
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            replay: replay
                .then(|| super::super::Replay { of: "req_x".into(), done: tokio::sync::oneshot::channel().0 }),
            request_headers: Default::default(),
            request_body: BodyBuf::new(true),
            status: None,
            response_headers: None,
            response_body: BodyBuf::new(true),
            duration: Duration::ZERO,
            outcome: "ok",
        }
    }

    #[test]
    fn trimming_keeps_the_newest_of_each_tunnel_and_every_replay() {
        let mut batch = vec![
            captured("a", "req_3", false),
            captured("a", "req_1", true),
            captured("b", "req_2", false),
            captured("a", "req_5", false),
            captured("a", "req_4", false),
        ];
        trim(&mut batch, 2);
        let kept: Vec<(&str, &str)> =
            batch.iter().map(|c| (c.tunnel_id.as_str(), std::str::from_utf8(&c.id).unwrap())).collect();
        assert_eq!(kept, [("a", "req_1"), ("b", "req_2"), ("a", "req_5"), ("a", "req_4")]);
    }

    #[test]
    fn times_have_microseconds_in_utc() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(format_time(at), "2023-11-14T22:13:20.123456Z");
    }
}
