//! Wrong API keys, counted per caller address.
//!
//! Why: a generated key (`hwk_` and 32 random characters) cannot be guessed,
//! but `HOOKWAY_API_KEY` may be set to something short, and every wrong key
//! was answered at once (about 13,000 tries a second over one connection)
//! and logged nowhere (found by a security probe). Past [`MAX_FAILURES`]
//! wrong keys in a [`WINDOW`], an address is refused (429) until the window
//! ends, whatever key it sends; and refusals are logged, at most one line a
//! second. Sans IO: the caller passes the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::log_limit::LogLimit;

/// Wrong keys an address may send in a [`WINDOW`] before it is refused.
pub const MAX_FAILURES: u32 = 20;
/// The window wrong keys are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most addresses counted at once: past it, windows that ended are dropped,
/// then (a flood from many addresses) all of them.
const MAX_TRACKED: usize = 10_000;

/// One address's wrong keys in its current window.
#[derive(Debug, Clone, Copy)]
struct Count {
    since: Instant,
    failures: u32,
}

/// Wrong keys by address, and the log's allowance for them.
#[derive(Debug)]
pub struct AuthFailures {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    counts: HashMap<IpAddr, Count>,
    log: LogLimit,
}

impl Default for AuthFailures {
    fn default() -> Self {
        Self { inner: Mutex::new(Inner { counts: HashMap::new(), log: LogLimit::new(Duration::from_secs(1)) }) }
    }
}

impl AuthFailures {
    /// How long `addr` is still refused at `now`, if it is.
    pub fn refused_for(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let addr = super::proxies::counted_as(addr);
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let count = inner.counts.get(&addr)?;
        let ends = count.since + WINDOW;
        (count.failures >= MAX_FAILURES && now < ends).then(|| ends - now)
    }

    /// Counts a wrong key from `addr` at `now`, and logs it within the allowance.
    pub fn failed(&self, addr: IpAddr, now: Instant) {
        let addr = super::proxies::counted_as(addr);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.counts.len() >= MAX_TRACKED && !inner.counts.contains_key(&addr) {
            inner.counts.retain(|_, c| now < c.since + WINDOW);
            if inner.counts.len() >= MAX_TRACKED {
                inner.counts.clear();
            }
        }
        let count = inner.counts.entry(addr).or_insert(Count { since: now, failures: 0 });
        if now >= count.since + WINDOW {
            *count = Count { since: now, failures: 0 };
        }
        count.failures += 1;
        let failures = count.failures;
        if let Some(unlogged) = inner.log.admit(now) {
            tracing::warn!(
                %addr,
                failures_in_window = failures,
                other_refusals_unlogged = unlogged,
                "refused an API call: unknown API key (an address is refused for the rest of a minute after {MAX_FAILURES})"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_past_the_limit_until_its_window_ends() {
        let failures = AuthFailures::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            assert_eq!(failures.refused_for(a, t0), None, "after {i}");
            failures.failed(a, t0 + Duration::from_millis(u64::from(i)));
        }
        let refused = failures.refused_for(a, t0 + Duration::from_secs(1)).expect("refused");
        assert!(refused <= WINDOW - Duration::from_secs(1) && refused > WINDOW - Duration::from_secs(2), "{refused:?}");
        assert_eq!(failures.refused_for(b, t0), None, "another address is not");
        assert_eq!(failures.refused_for(a, t0 + WINDOW), None, "the window ended");
        // A new window counts afresh.
        failures.failed(a, t0 + WINDOW);
        assert_eq!(failures.refused_for(a, t0 + WINDOW), None);
    }

    /// Issue: counted per address, an IPv6 caller could take a fresh address
    /// of its /64 for every try. Its /64 counts as one.
    #[test]
    fn an_ipv6_caller_is_counted_by_its_64() {
        let failures = AuthFailures::default();
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES {
            failures.failed(format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap(), t0);
        }
        let ours: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(failures.refused_for(ours, t0).is_some(), "the same /64");
        assert_eq!(failures.refused_for("2001:db8:1:3::1".parse().unwrap(), t0), None, "another /64");
        assert_eq!(failures.refused_for("::ffff:192.0.2.7".parse().unwrap(), t0), None);
    }

    #[test]
    fn the_addresses_counted_are_bounded() {
        let failures = AuthFailures::default();
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 10) {
            failures.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(failures.inner.lock().unwrap().counts.len() <= MAX_TRACKED);
    }
}
