//! Request capture for inspection: every exchange through a tunnel becomes a
//! [`RequestRecord`] that the API lists, streams and replays.
//!
//! Capture stays off the forwarding path's back: a [`Tap`] copies at most
//! `body_limit` bytes of each body as they stream past, and when the exchange
//! ends (its last handle is dropped) the finished record is handed to a
//! bounded queue with `try_send`. A `writer` task batches the queue into
//! one SQLite transaction per window and trims each tunnel to its newest
//! records.
//!
//! **Bodies have a budget** ([`CaptureConfig::body_rate`] bytes a second for
//! the whole server, a second's worth at once): a flood of large bodies would
//! otherwise have the writer store them faster than anyone could look at them,
//! taking the CPU that forwarding needs (1 MiB bodies at 1 GiB/s lost a
//! quarter of their throughput to SQLite). Past the budget, bodies are cut
//! short and marked `truncated`; the records themselves are all kept.
//!
//! **When the writer falls behind** — the queue holds [`MAX_QUEUED`] records
//! or [`MAX_QUEUED_BYTES`] of bodies — new records are dropped, never waited
//! for: forwarding is never slowed by inspection. Drops and cut bodies are
//! counted ([`Capture::dropped`], [`Capture::cut`]) and logged by the writer.

pub mod tap;
mod writer;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use http::{HeaderMap, Method, StatusCode};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::registry::Tunnel;
use crate::store::RequestRecord;
use crate::store::requests::HeaderList;
pub use tap::{Tap, TapBody};

/// Default cap on each captured body.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// Default body bytes captured per second, server-wide: 16 bodies of the
/// default limit, or thousands of typical webhooks, a second. SQLite stores
/// 1 MiB bodies at 150–250 MiB/s on one core of the benchmark machine (with
/// retention deleting as fast): at this rate the writer takes a few percent
/// of a core, at 64 MiB/s it took a fifth of the server's CPU.
pub const DEFAULT_BODY_RATE: usize = 16 * 1024 * 1024;
/// Default number of records kept per tunnel.
pub const DEFAULT_MAX_RECORDS: usize = 1000;
/// Records waiting for the writer before new ones are dropped.
pub const MAX_QUEUED: usize = 16 * 1024;
/// Captured bytes waiting for the writer before new records are dropped.
pub const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;
/// Live-stream events buffered per tunnel for a slow subscriber.
const WATCH_BUFFER: usize = 1024;

/// What is captured and for how long it is kept.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// Capture at all (`--no-capture` turns it off server-wide).
    pub enabled: bool,
    /// Bytes kept of each request and response body.
    pub body_limit: usize,
    /// Body bytes kept per second over all tunnels (bursts of up to a
    /// second's worth); past it, bodies are cut short. 0 keeps no bodies.
    pub body_rate: usize,
    /// Newest records kept per tunnel.
    pub max_records: usize,
    /// Records older than this are pruned.
    pub max_age: Option<Duration>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            body_limit: DEFAULT_BODY_LIMIT,
            body_rate: DEFAULT_BODY_RATE,
            max_records: DEFAULT_MAX_RECORDS,
            max_age: None,
        }
    }
}

/// A replay's wish to be told of its record once it is stored.
#[derive(Debug)]
pub struct Replay {
    /// The record replayed.
    pub of: String,
    /// Receives the new record after it is written.
    pub done: oneshot::Sender<RequestRecord>,
}

/// The server-wide allowance of body bytes to capture: a token bucket that
/// refills at `rate` bytes a second and holds at most a second's worth.
#[derive(Debug)]
struct Budget {
    rate: f64,
    bucket: Mutex<(f64, Instant)>,
}

impl Budget {
    fn new(rate: usize) -> Self {
        Self::starting_at(rate, Instant::now())
    }

    fn starting_at(rate: usize, now: Instant) -> Self {
        Self { rate: rate as f64, bucket: Mutex::new((rate as f64, now)) }
    }

    /// Takes up to `n` bytes' worth; returns how many were granted (fewer
    /// when the bucket runs low, so a chunk larger than it is kept in part).
    fn take(&self, n: usize) -> usize {
        self.take_at(n, Instant::now())
    }

    fn take_at(&self, n: usize, now: Instant) -> usize {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = &mut *bucket;
        // `saturating_duration_since`: another thread may have stored a later `now`.
        *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = (*last).max(now);
        let granted = (*tokens as usize).min(n);
        *tokens -= granted as f64;
        granted
    }
}

/// Bytes kept of one body.
#[derive(Debug, Default)]
struct BodyBuf {
    data: Option<BytesMut>,
    size: u64,
    truncated: bool,
    /// The budget ran out: nothing more is kept (what was kept stays a prefix).
    cut: bool,
}

impl BodyBuf {
    fn new(keep: bool) -> Self {
        Self { data: keep.then(BytesMut::new), size: 0, truncated: false, cut: false }
    }

    /// Keeps what fits of `chunk` under `limit` and the `budget`.
    ///
    /// The buffer grows by doubling, not to the body's announced length: a
    /// caller may announce a megabyte and send a byte, and a reservation per
    /// open request would be memory it chose. (The budget keeps what doubling
    /// costs small.)
    fn push(&mut self, chunk: &[u8], limit: usize, budget: &Budget) {
        self.size += chunk.len() as u64;
        let Some(data) = &mut self.data else { return };
        let room = chunk.len().min(limit.saturating_sub(data.len()));
        let take = if self.cut || room == 0 { 0 } else { budget.take(room) };
        if take < room {
            self.cut = true;
        }
        data.extend_from_slice(&chunk[..take]);
        self.truncated |= take < chunk.len();
    }

    fn kept(&self) -> usize {
        self.data.as_ref().map_or(0, |d| d.len())
    }
}

/// Headers copied out of the exchange as `name:value\n` lines in one buffer.
///
/// Not a cloned `HeaderMap`: its values are slices of hyper's read buffer or
/// of the QUIC receive buffer, and holding them until the writer runs would
/// keep those buffers from being reused (a fresh allocation per request).
/// Values cannot hold `\n` and names cannot hold `:`, so the lines parse back.
#[derive(Debug, Default)]
struct FlatHeaders(Vec<u8>);

impl FlatHeaders {
    fn copy(map: &HeaderMap) -> Self {
        let len = map.iter().map(|(k, v)| k.as_str().len() + v.len() + 2).sum();
        let mut buf = Vec::with_capacity(len);
        for (k, v) in map {
            buf.extend_from_slice(k.as_str().as_bytes());
            buf.push(b':');
            buf.extend_from_slice(v.as_bytes());
            buf.push(b'\n');
        }
        Self(buf)
    }

    /// The headers as a list, in the writer (off the forwarding path). Values
    /// are slices of the buffer, bytes as they arrived: no copy each, and no
    /// conversion to text, which would turn obs-text into U+FFFD (see
    /// [`HeaderList`]). Names are ASCII, so the conversion of theirs is exact.
    fn into_list(self) -> HeaderList {
        let buf = Bytes::from(self.0);
        let mut list = Vec::new();
        let mut start = 0;
        while start < buf.len() {
            let end = buf[start..].iter().position(|&b| b == b'\n').map_or(buf.len(), |i| start + i);
            let line = &buf[start..end];
            if !line.is_empty() {
                let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
                let name = String::from_utf8_lossy(&line[..colon]).into_owned();
                list.push((name, buf.slice((start + colon + 1).min(end)..end)));
            }
            start = end + 1;
        }
        list
    }
}

/// A record's id, `req_` then the arrival's milliseconds (12 hex digits: ids
/// sort by time, see `store::requests::id_floor`) and the tunnel's counter (8), written
/// by hand: a `format!` per request showed in profiles.
fn record_id(ms: u64, n: u32) -> Bytes {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = *b"req_00000000000000000000";
    let digits = (u128::from(ms & 0xffff_ffff_ffff) << 32) | u128::from(n);
    for (i, byte) in id[4..].iter_mut().enumerate() {
        *byte = HEX[((digits >> (4 * (19 - i))) & 0xf) as usize];
    }
    Bytes::copy_from_slice(&id)
}

/// A finished exchange on its way to the writer: raw parts, converted to a
/// [`RequestRecord`] off the forwarding path.
#[derive(Debug)]
struct Captured {
    /// `req_…` (ASCII): bytes, so the tap shares it with the request's head.
    id: Bytes,
    tunnel_id: String,
    at: SystemTime,
    method: Method,
    target: Bytes,
    client_ip: IpAddr,
    replay: Option<Replay>,
    request_headers: FlatHeaders,
    request_body: BodyBuf,
    status: Option<StatusCode>,
    response_headers: Option<FlatHeaders>,
    response_body: BodyBuf,
    duration: Duration,
    outcome: &'static str,
}

impl Captured {
    /// What the record holds in memory while queued, for the queue's byte bound.
    fn weight(&self) -> usize {
        512 + self.request_headers.0.len()
            + self.response_headers.as_ref().map_or(0, |h| h.0.len())
            + self.request_body.kept()
            + self.response_body.kept()
    }
}

/// The capture hub: hands out taps, queues finished records, fans stored ones
/// out to live-stream subscribers.
#[derive(Debug)]
pub struct Capture {
    config: CaptureConfig,
    tx: mpsc::Sender<Captured>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Captured>>>,
    queued_bytes: AtomicUsize,
    dropped: AtomicU64,
    budget: Budget,
    cut: AtomicU64,
    watchers: DashMap<String, broadcast::Sender<Arc<str>>>,
    closing: CancellationToken,
    /// Records accepted into the queue, ever.
    queued_records: AtomicU64,
    /// Records the writer is done with (stored, or left out), ever.
    settled: watch::Sender<u64>,
    /// Asks the writer to end its batch window now: someone waits to read.
    flush: Notify,
    /// Replays with large bodies under way (see [`Capture::large_replay`]).
    large_replays: Arc<Semaphore>,
}

/// Replays whose bodies may be large (up to 32 MiB, read whole) run this many
/// at a time: each holds its JSON, the decoded body and the request.
pub const LARGE_REPLAYS: usize = 4;

impl Capture {
    /// A hub with its queue; [`Capture::run_writer`] drains it.
    pub fn new(config: CaptureConfig) -> Self {
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        Self {
            budget: Budget::new(config.body_rate),
            config,
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            queued_bytes: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            cut: AtomicU64::new(0),
            watchers: DashMap::new(),
            closing: CancellationToken::new(),
            queued_records: AtomicU64::new(0),
            settled: watch::Sender::new(0),
            flush: Notify::new(),
            large_replays: Arc::new(Semaphore::new(LARGE_REPLAYS)),
        }
    }

    /// Waits for a turn to run a replay whose body may be large; hold it
    /// until the replay is over.
    pub async fn large_replay(&self) -> OwnedSemaphorePermit {
        // Never closed, so acquiring cannot fail.
        self.large_replays.clone().acquire_owned().await.unwrap_or_else(|_| unreachable!("never closed"))
    }

    /// Waits, at most `within`, until the records of exchanges that ended
    /// before this call are stored, hurrying the writer along: a listing made
    /// right after a request shows it, instead of missing it for the writer's
    /// batch window.
    pub async fn settle(&self, within: Duration) {
        let target = self.queued_records.load(Ordering::Acquire);
        let mut settled = self.settled.subscribe();
        if *settled.borrow_and_update() >= target {
            return;
        }
        self.flush.notify_one();
        let _ = tokio::time::timeout(within, settled.wait_for(|&n| n >= target)).await;
    }

    /// The configuration in force.
    pub fn config(&self) -> &CaptureConfig {
        &self.config
    }

    /// Records dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Records whose bodies were cut short because the body budget was spent.
    pub fn cut(&self) -> u64 {
        self.cut.load(Ordering::Relaxed)
    }

    /// Starts capturing one exchange; `None` when capture is off. `headers`
    /// are the caller's, before forwarding headers are added.
    pub fn tap(
        self: &Arc<Self>,
        tunnel: &Tunnel,
        method: &Method,
        target: &Bytes,
        headers: &HeaderMap,
        client_ip: IpAddr,
        replay: Option<Replay>,
    ) -> Option<Tap> {
        if !self.config.enabled {
            return None;
        }
        let at = SystemTime::now();
        let ms = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let n = tunnel.capture_counter.fetch_add(1, Ordering::Relaxed);
        // A zero budget keeps no bodies: recorded as not captured, not as cut.
        let keep = tunnel.capture_bodies.load(Ordering::Relaxed) && self.config.body_rate > 0;
        let declared = headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        Some(Tap::new(
            self.clone(),
            Captured {
                id: record_id(ms, n),
                tunnel_id: tunnel.id.clone(),
                at,
                method: method.clone(),
                target: target.clone(),
                client_ip,
                replay,
                request_headers: FlatHeaders::copy(headers),
                request_body: BodyBuf::new(keep),
                status: None,
                response_headers: None,
                response_body: BodyBuf::new(keep),
                duration: Duration::ZERO,
                outcome: "incomplete",
            },
            declared,
        ))
    }

    /// Queues a finished record, or drops and counts it when the writer is behind.
    fn submit(&self, record: Captured) {
        if record.request_body.cut || record.response_body.cut {
            self.cut.fetch_add(1, Ordering::Relaxed);
        }
        let weight = record.weight();
        if self.queued_bytes.fetch_add(weight, Ordering::Relaxed) + weight > MAX_QUEUED_BYTES {
            self.queued_bytes.fetch_sub(weight, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.tx.try_send(record).is_err() {
            self.queued_bytes.fetch_sub(weight, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.queued_records.fetch_add(1, Ordering::Release);
    }

    /// Subscribes to a tunnel's stored records, as server-sent events.
    pub fn subscribe(&self, tunnel_id: &str) -> broadcast::Receiver<Arc<str>> {
        self.watchers.entry(tunnel_id.to_owned()).or_insert_with(|| broadcast::channel(WATCH_BUFFER).0).subscribe()
    }

    /// Ends a tunnel's live streams (it was deleted).
    pub fn forget(&self, tunnel_id: &str) {
        self.watchers.remove(tunnel_id);
    }

    /// Cancelled when the server shuts down, so live streams end instead of
    /// holding up the graceful shutdown.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Runs the writer until `stop`, then writes what is still queued.
    pub async fn run_writer(self: Arc<Self>, state: Arc<super::State>, stop: CancellationToken) {
        writer::run(self, state, stop).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::{BodyBuf, Budget, FlatHeaders, record_id};

    /// Ids are `req_`, 12 hex digits of milliseconds, 8 of the counter: as
    /// `format!` wrote them, so they sort by time against `id_floor`.
    #[test]
    fn record_ids_are_written_as_before() {
        for (ms, n) in [(0, 0), (1_732_450_000_123, 7), (u64::MAX, u32::MAX), (0xabc_def0_1234, 0x89ab_cdef)] {
            let id = record_id(ms, n);
            assert_eq!(std::str::from_utf8(&id).unwrap(), format!("req_{:012x}{n:08x}", ms & 0xffff_ffff_ffff));
        }
        // The WebSocket gateway sends them as request ids, and its clients
        // tell them from the ids of requests without a record.
        for id in [record_id(0, 0), record_id(1_732_450_000_123, 7), record_id(u64::MAX, u32::MAX)] {
            assert!(crate::wsjson::is_record_id(std::str::from_utf8(&id).unwrap()));
        }
        for n in [1, 42, 10u64.pow(19) - 1] {
            assert!(!crate::wsjson::is_record_id(&crate::wsjson::request_id(n)));
        }
        assert!(!crate::wsjson::is_record_id("req_0000000000000000000A"));
        assert!(!crate::wsjson::is_record_id("req_000000000000000000000"));
        let floor = crate::store::requests::id_floor(1_732_450_000_123);
        assert!(&record_id(1_732_450_000_123, 0)[..] >= floor.as_bytes());
        assert!(&record_id(1_732_450_000_122, u32::MAX)[..] < floor.as_bytes());
    }

    #[test]
    fn flat_headers_keep_order_repeats_and_colons_in_values() {
        let mut map = http::HeaderMap::new();
        map.insert("host", "example.com:8080".parse().unwrap());
        map.append("set-cookie", "a=1".parse().unwrap());
        map.append("set-cookie", "b=2".parse().unwrap());
        map.insert("x-empty", "".parse().unwrap());
        let list = FlatHeaders::copy(&map).into_list();
        let pairs: Vec<(&str, &[u8])> = list.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
        assert_eq!(
            pairs,
            [("host", &b"example.com:8080"[..]), ("set-cookie", b"a=1"), ("set-cookie", b"b=2"), ("x-empty", b"")]
        );
    }

    /// Issue: values were turned into text on the way to the store, so a
    /// Latin-1 byte or a raw signature came back as U+FFFD, and a replay sent
    /// those three bytes instead of the one that arrived.
    #[test]
    fn flat_headers_keep_the_bytes_of_values_that_are_not_utf8() {
        let raw = b"caf\xe9 \x80\xff sig=\xc3(";
        let mut map = http::HeaderMap::new();
        map.insert("x-signature", http::HeaderValue::from_bytes(raw).unwrap());
        map.insert("x-after", "ok".parse().unwrap());
        let list = FlatHeaders::copy(&map).into_list();
        assert_eq!(list, [("x-signature".to_owned(), Bytes::from_static(raw)), ("x-after".into(), "ok".into())]);
    }

    #[test]
    fn a_body_is_kept_up_to_the_limit_and_counted_in_full() {
        let plenty = Budget::new(1 << 20);
        let mut b = BodyBuf::new(true);
        b.push(b"hello ", 8, &plenty);
        b.push(b"world", 8, &plenty);
        assert_eq!((b.data.as_deref(), b.size, b.truncated, b.cut), (Some(&b"hello wo"[..]), 11, true, false));
        let mut exact = BodyBuf::new(true);
        exact.push(b"12345678", 8, &plenty);
        assert_eq!((exact.size, exact.truncated), (8, false));
        let mut off = BodyBuf::new(false);
        off.push(b"secret", 8, &plenty);
        assert_eq!((off.data, off.size, off.truncated), (None, 6, false), "sizes only when capture is off");
    }

    #[test]
    fn past_the_budget_a_body_keeps_what_was_granted_and_stays_a_prefix() {
        let budget = Budget::new(10);
        let mut a = BodyBuf::new(true);
        a.push(b"0123456", 100, &budget);
        a.push(b"789", 100, &budget);
        assert_eq!((a.data.as_deref(), a.truncated, a.cut), (Some(&b"0123456789"[..]), false, false));
        let mut b = BodyBuf::new(true);
        b.push(b"abc", 100, &budget);
        assert_eq!((b.data.as_deref(), b.size, b.truncated, b.cut), (Some(&b""[..]), 3, true, true));
        // A cut body never resumes, whatever the budget holds later: it would have a hole.
        b.push(b"def", 100, &Budget::new(1 << 20));
        assert_eq!((b.data.as_deref(), b.size), (Some(&b""[..]), 6));
        // A chunk larger than what is left is kept in part.
        let partial = Budget::new(4);
        let mut c = BodyBuf::new(true);
        c.push(b"abcdef", 100, &partial);
        assert_eq!((c.data.as_deref(), c.size, c.truncated, c.cut), (Some(&b"abcd"[..]), 6, true, true));
        let mut empty = BodyBuf::new(true);
        empty.push(b"", 100, &Budget::new(0));
        assert_eq!((empty.truncated, empty.cut), (false, false), "an empty body costs nothing");
        // At the limit nothing more is asked of the budget: not cut, only truncated.
        let mut full = BodyBuf::new(true);
        full.push(b"12345", 5, &Budget::new(5));
        full.push(b"6", 5, &Budget::new(0));
        assert_eq!((full.truncated, full.cut), (true, false));
    }

    #[test]
    fn the_budget_refills_at_its_rate_up_to_a_seconds_worth() {
        let start = Instant::now();
        let budget = Budget::starting_at(1000, start);
        assert_eq!(budget.take_at(600, start), 600);
        assert_eq!(budget.take_at(600, start), 400, "what is left");
        assert_eq!(budget.take_at(600, start), 0);
        assert_eq!(budget.take_at(600, start + Duration::from_millis(250)), 250);
        assert_eq!(budget.take_at(5000, start + Duration::from_secs(60)), 1000, "never more than a second's worth");
        // A thread that read the clock earlier does not move the bucket back.
        assert_eq!(budget.take_at(10, start), 0);
        assert_eq!(budget.take_at(100, start + Duration::from_secs(60) + Duration::from_millis(100)), 100);
    }
}
