//! When to try a delivery again: the schedule and the decision, sans IO.

use std::time::Duration;

/// Default `--webhook-retry-schedule`: three retries.
pub const DEFAULT_SCHEDULE: &str = "10s,60s,300s";
/// Longest `Retry-After` honoured; a longer one is cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Delays before each retry; its length is the number of retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Vec<Duration>);

impl Default for Schedule {
    fn default() -> Self {
        Self::parse(DEFAULT_SCHEDULE).expect("default schedule parses")
    }
}

impl Schedule {
    /// Parses `1s,10s,60s` (units `ms`, `s`, `m`, `h`; an empty string means no retries).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self(Vec::new()));
        }
        let delays = s
            .split(',')
            .map(|part| {
                let d = parse_duration(part.trim())?;
                if d > Duration::from_secs(7 * 24 * 3600) {
                    return Err(format!("{:?} is longer than a week", part.trim()));
                }
                Ok(d)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if delays.len() > 20 {
            return Err("at most 20 retries".into());
        }
        Ok(Self(delays))
    }

    /// Attempts in all: the first one plus the retries.
    pub fn max_attempts(&self) -> u32 {
        self.0.len() as u32 + 1
    }
}

/// Parses one duration: a whole number and a unit (`ms`, `s`, `m`, `h`, `d`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 500ms, 10s, 5m, 1h or 7d");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = |mult: u64| n.checked_mul(mult).map(Duration::from_secs).ok_or_else(bad);
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => Err(bad()),
    }
}

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The receiver answered with this status (and maybe `Retry-After`).
    Status(u16, Option<Duration>),
    /// No answer within the attempt timeout.
    Timeout,
    /// No connection, TLS failure, reset…
    ConnectionError,
    /// The destination is forbidden (private address): final.
    Refused,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Delivered (2xx).
    Succeeded,
    /// Final failure (4xx, refused, or out of attempts).
    Failed,
    /// Try again after this delay.
    RetryIn(Duration),
}

/// Decides after attempt number `attempt` (1-based): 2xx succeeds; 3xx and 4xx
/// other than 429 are final; 429, 5xx, timeouts and connection errors are
/// retried while the schedule lasts, 429 after its `Retry-After` if longer.
pub fn decide(result: &AttemptResult, attempt: u32, schedule: &Schedule) -> Next {
    let retry = |at_least: Option<Duration>| match schedule.0.get(attempt as usize - 1) {
        Some(delay) => Next::RetryIn((*delay).max(at_least.unwrap_or_default().min(MAX_RETRY_AFTER))),
        None => Next::Failed,
    };
    match result {
        AttemptResult::Status(s, _) if (200..300).contains(s) => Next::Succeeded,
        AttemptResult::Status(429, retry_after) => retry(*retry_after),
        AttemptResult::Status(s, _) if *s >= 500 => retry(None),
        AttemptResult::Status(..) | AttemptResult::Refused => Next::Failed,
        AttemptResult::Timeout | AttemptResult::ConnectionError => retry(None),
    }
}

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 §10.2.3), seen at
/// `now`: the wait until then (none for a date past). `None` when it is
/// neither (then the schedule alone decides).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_parses_and_rejects() {
        let s = Schedule::parse("1s, 10s,60s").unwrap();
        assert_eq!(s.0, [Duration::from_secs(1), Duration::from_secs(10), Duration::from_secs(60)]);
        assert_eq!(s.max_attempts(), 4);
        assert_eq!(Schedule::parse("250ms,2m,1h").unwrap().0[2], Duration::from_secs(3600));
        assert_eq!(Schedule::parse("").unwrap().max_attempts(), 1);
        for bad in ["1", "x", "1w", "-1s", "1s,,2s", "9999h", "8d"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Schedule::default().max_attempts(), 4);
    }

    #[test]
    fn decisions() {
        let s = Schedule::parse("1s,10s,60s").unwrap();
        let st = |code| AttemptResult::Status(code, None);
        assert_eq!(decide(&st(200), 1, &s), Next::Succeeded);
        assert_eq!(decide(&st(204), 4, &s), Next::Succeeded);
        assert_eq!(decide(&st(500), 1, &s), Next::RetryIn(Duration::from_secs(1)));
        assert_eq!(decide(&st(503), 3, &s), Next::RetryIn(Duration::from_secs(60)));
        assert_eq!(decide(&st(500), 4, &s), Next::Failed, "4 attempts in all");
        assert_eq!(decide(&st(404), 1, &s), Next::Failed);
        assert_eq!(decide(&st(301), 1, &s), Next::Failed);
        assert_eq!(decide(&AttemptResult::Timeout, 2, &s), Next::RetryIn(Duration::from_secs(10)));
        assert_eq!(decide(&AttemptResult::ConnectionError, 1, &s), Next::RetryIn(Duration::from_secs(1)));
        assert_eq!(decide(&AttemptResult::Refused, 1, &s), Next::Failed);
        let limited = |after| AttemptResult::Status(429, Some(Duration::from_secs(after)));
        assert_eq!(decide(&limited(30), 1, &s), Next::RetryIn(Duration::from_secs(30)), "Retry-After honoured");
        assert_eq!(decide(&limited(0), 2, &s), Next::RetryIn(Duration::from_secs(10)), "never sooner than planned");
        assert_eq!(decide(&limited(99_999), 1, &s), Next::RetryIn(MAX_RETRY_AFTER), "capped");
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_445_412_400); // 07:26:40 GMT
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), Some(Duration::from_secs(80)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:20:00 GMT", now), Some(Duration::ZERO), "a date past");
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
