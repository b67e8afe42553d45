//! Busy-polling for a moment around each forwarded request instead of
//! sleeping.
//!
//! At low concurrency most of what a tunnel adds to a request's latency is not
//! work but wake-ups. Each time a process sleeps in `epoll_wait` and its data
//! arrives, the kernel has to wake it, and on a virtual machine whose idle vCPU
//! has halted that costs a VM exit and an inter-processor interrupt: 20–35 µs
//! on our 2-vCPU test machine, where keeping both vCPUs busy cut a direct
//! request's median from 92 µs to 24 µs. A forwarded request wakes the client
//! twice: when the server's request arrives, and when the local app answers.
//!
//! So for [`Spinner::budget`] after a request starts or ends, the client keeps
//! polling its sockets instead of sleeping: the app's answer, and the next
//! request of a steady caller, then find it running. It costs at most twice
//! the budget in CPU per request, and nothing while the tunnel is idle.
//!
//! Only while the CPU is otherwise idle. Once more than [`MAX_IN_FLIGHT`]
//! requests are in flight, and for [`QUIET`] after, the client sleeps as
//! usual: a busy client's runtime seldom sleeps anyway, and spinning in the
//! gaps of a burst takes CPU from the app and server (the benchmark at
//! concurrency 16 lost a fifth of its requests/s that way). And once the
//! kernel preempts the polling thread ([`PREEMPTED`]), which it does when
//! something else wants the core, it sleeps as usual for [`CONTENDED`]: a
//! client fed one request at a time by a saturated server never sees two in
//! flight, but its polling would slow the server down.
//!
//! Measured in the end-to-end benchmark, interleaved runs with and without,
//! on a noisy 2-vCPU VM: at concurrency 1 the tunnel added 33–88 µs to the
//! median instead of 102–220 µs; at 16 and 64 requests/s did not change
//! beyond the noise (see benches/README.md for the runs).
//!
//! The polling is tokio's own: a task that keeps yielding makes the
//! current-thread runtime poll its IO driver without blocking before it runs
//! the task again, so no socket is read twice and nothing here is unsafe.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Default busy-polling budget after each request's start and end.
pub const DEFAULT_BUDGET: Duration = Duration::from_micros(300);

/// Above this many requests in flight, the client does not busy-poll...
pub const MAX_IN_FLIGHT: usize = 1;

/// ...nor for this long after: requests that overlap come in bursts, and
/// the gaps between them are not worth a core the app and server need.
pub const QUIET: Duration = Duration::from_millis(10);

/// A yield that takes longer than this means the kernel took the CPU away
/// from the polling thread: the cores are busy, and polling takes time from
/// whatever ran instead (the app, the server, the caller).
pub const PREEMPTED: Duration = Duration::from_micros(500);

/// How long the client sleeps as usual once it was preempted while polling:
/// long enough that a contended client polls in a small fraction of its
/// time, short enough that one stray preemption costs a lone caller little.
/// (A 1 s back-off lost most of the gain at concurrency 1 on our test VM,
/// where the cores are shared with the caller, the server and the app.)
pub const CONTENDED: Duration = Duration::from_millis(20);

/// Keeps the runtime polling for a budget after each request's start and end.
#[derive(Debug)]
pub struct Spinner {
    /// How long to keep polling after a request starts or ends.
    pub budget: Duration,
    start: Instant,
    /// Polling goes on until this many µs after `start`.
    until_us: AtomicU64,
    in_flight: AtomicUsize,
    /// No polling before this many µs after `start` (see [`QUIET`], [`CONTENDED`]).
    quiet_until_us: AtomicU64,
    wake: Notify,
}

/// Counts a request as in flight until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Spinner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let left = self.0.in_flight.fetch_sub(1, Ordering::Relaxed) - 1;
        self.0.extend(left);
    }
}

impl Spinner {
    /// A spinner with this budget; zero turns busy-polling off.
    pub fn new(budget: Duration) -> Arc<Self> {
        Arc::new(Self {
            budget,
            start: Instant::now(),
            until_us: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            quiet_until_us: AtomicU64::new(0),
            wake: Notify::new(),
        })
    }

    /// A request started; the guard marks its end.
    pub fn request(self: &Arc<Self>) -> InFlight {
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.extend(in_flight);
        InFlight(self.clone())
    }

    fn now_us(&self) -> u64 {
        micros(self.start.elapsed())
    }

    fn extend(&self, in_flight: usize) {
        if self.budget.is_zero() {
            return;
        }
        let now = self.now_us();
        if in_flight > MAX_IN_FLIGHT {
            self.quiet_for(now, QUIET);
            return;
        }
        if now < self.quiet_until_us.load(Ordering::Relaxed) {
            return;
        }
        let budget = micros(self.budget);
        let before = self.until_us.fetch_max(now.saturating_add(budget), Ordering::Relaxed);
        if before <= now {
            tracing::trace!(budget_us = budget, "busy-polling");
        }
        self.wake.notify_one();
    }

    /// Stops polling, and starting to, for `quiet`.
    fn quiet_for(&self, now: u64, quiet: Duration) {
        let until = now.saturating_add(micros(quiet));
        self.quiet_until_us.fetch_max(until, Ordering::Relaxed);
        self.until_us.store(0, Ordering::Relaxed);
    }

    /// Whether the runtime is being kept polling now.
    pub fn spinning(&self) -> bool {
        self.now_us() < self.until_us.load(Ordering::Relaxed)
    }

    /// Notes one yield of the polling task, from `before` to `after` (µs).
    fn yielded(&self, before: u64, after: u64) {
        if after.saturating_sub(before) > micros(PREEMPTED) {
            tracing::trace!(gap_us = after - before, "preempted while busy-polling; sleeping as usual for a while");
            self.quiet_for(after, CONTENDED);
        }
    }

    /// Runs until dropped: yields while within a budget (each yield lets the
    /// runtime poll its sockets without blocking), waits for the next request
    /// otherwise.
    pub async fn run(&self) {
        loop {
            if self.spinning() {
                let before = self.now_us();
                tokio::task::yield_now().await;
                self.yielded(before, self.now_us());
            } else {
                self.wake.notified().await;
            }
        }
    }
}

/// Whole microseconds in `d`, saturating.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn polls_for_the_budget_around_lone_requests_only() {
        let spin = Spinner::new(Duration::from_secs(3600));
        assert!(!spin.spinning(), "idle: no polling");
        let first = spin.request();
        assert!(spin.spinning(), "a lone request starts the budget");
        let second = spin.request();
        assert!(!spin.spinning(), "overlapping requests stop it");
        drop(second);
        assert!(!spin.spinning(), "one left, but requests overlapped {QUIET:?} ago at most");
        drop(first);
        assert!(!spin.spinning(), "none left, but still within {QUIET:?} of the overlap");
        tokio::time::sleep(QUIET + Duration::from_millis(5)).await;
        let lone = spin.request();
        assert!(spin.spinning(), "a lone request after a quiet spell starts it again");
        drop(lone);

        // The budget runs out.
        let spin = Spinner::new(Duration::from_millis(30));
        drop(spin.request());
        assert!(spin.spinning());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!spin.spinning(), "past the budget");

        // Preempted while polling: no polling for a while, even for lone requests.
        let spin = Spinner::new(Duration::from_secs(3600));
        drop(spin.request());
        let now = spin.now_us();
        spin.yielded(now, now + 50);
        assert!(spin.spinning(), "a short yield is normal");
        spin.yielded(now, now + micros(PREEMPTED) + 1);
        assert!(!spin.spinning(), "a long one stops it");
        drop(spin.request());
        assert!(!spin.spinning(), "and it does not start again within {CONTENDED:?}");

        let off = Spinner::new(Duration::ZERO);
        let _g = off.request();
        assert!(!off.spinning(), "a zero budget turns it off");
    }
}
