//! How much one WebSocket client can make the server log.
//!
//! What a client sends that is worth a line (a malformed message, an answer
//! to an unknown id, an error it reports) comes as often as the client likes:
//! at a line per message, one client sending `{` wrote 952 MiB of log in 10 s.
//! So each connection logs the first such line, then at most one per
//! [`EVERY`], carrying the count of the lines left out in between; the session
//! reports what was left out when it ends. Sans IO: the caller passes the time.

use std::time::{Duration, Instant};

/// At most one line per client per this period, after the first.
pub const EVERY: Duration = Duration::from_secs(60);

/// One connection's log allowance.
#[derive(Debug, Default)]
pub struct LogLimit {
    next: Option<Instant>,
    unlogged: u64,
}

impl LogLimit {
    /// Whether a line may be logged at `now`: `Some` with the number of lines
    /// left out since the last one, or `None` (and this one is counted).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.next.is_some_and(|next| now < next) {
            self.unlogged += 1;
            return None;
        }
        self.next = Some(now + EVERY);
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
        let mut limit = LogLimit::default();
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
