//! Waiting until a condition has held for a while, on one timer: how the
//! edge tells a caller that stopped sending, a caller that stopped reading,
//! and an answer nobody takes from ones that are merely slow.

use std::time::Duration;

use tokio::time::Instant;

/// Resolves once `since` (when the condition began, `None` while it does not
/// hold) names a moment at least `limit` ago. Sleeps until that moment when
/// the condition holds, else for `limit`, then looks again: about one wake-up
/// per `limit` while it does not hold.
pub async fn held_for(limit: Duration, since: impl Fn() -> Option<Instant>) {
    loop {
        match since() {
            Some(since) if since.elapsed() >= limit => return,
            Some(since) => tokio::time::sleep_until(since + limit).await,
            None => tokio::time::sleep(limit).await,
        }
    }
}
