//! How much a peer can make the server log.
//!
//! What a peer sends that is worth a line comes as often as the peer likes: at
//! a line per message, one WebSocket client sending `{` wrote 952 MiB of log in
//! 10 s, and a QUIC client can be refused a hundred times a second. So such
//! lines are logged first, then at most one per period, carrying the count of
//! the lines left out in between. Sans IO: the caller passes the time.

use std::time::{Duration, Instant};

/// The period of one WebSocket client's lines about its messages, after the
/// first: its session reports what was left out when it ends.
pub const EVERY: Duration = Duration::from_secs(60);

/// One allowance: for a WebSocket connection, or the whole QUIC listener's
/// refusals.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    next: Option<Instant>,
    unlogged: u64,
}

impl LogLimit {
    /// The first line, then at most one per `every`.
    pub fn new(every: Duration) -> Self {
        Self { every, next: None, unlogged: 0 }
    }

    /// Whether a line may be logged at `now`: `Some` with the number of lines
    /// left out since the last one, or `None` (and this one is counted).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|next| now < next) {
            self.unlogged += 1;
            return None;
        }
        self.next = Some(now + self.every);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// Lines left out since the last one logged.
    pub fn unlogged(&self) -> u64 {
        self.unlogged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_line_then_one_per_period_with_the_count_left_out() {
        let t0 = Instant::now();
        let mut limit = LogLimit::new(EVERY);
        assert_eq!(limit.admit(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(limit.admit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(limit.unlogged(), 1000);
        assert_eq!(limit.admit(t0 + EVERY - Duration::from_millis(1)), None);
        assert_eq!(limit.admit(t0 + EVERY), Some(1001));
        assert_eq!(limit.unlogged(), 0);
        assert_eq!(limit.admit(t0 + EVERY + Duration::from_secs(1)), None);
        assert_eq!(limit.admit(t0 + EVERY * 5), Some(1));
    }
}
