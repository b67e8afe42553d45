//! The client's drain on stop, whatever the transport: requests the local app
//! is answering get [`DRAIN`] to finish while new ones are refused at once.

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use super::{DRAIN, Event};
use crate::shutdown::Shutdown;

/// Lets the `requests` in flight finish, for at most [`DRAIN`] and only until
/// the drain is cut short or `refuse` ends (the connection is gone: nothing
/// left to wait for). `refuse` runs meanwhile, answering the requests that
/// still arrive "going offline", so their callers hear it now rather than
/// after the drain. The connection stays open throughout: closing it is the
/// caller's next step.
///
/// With nothing in flight it still waits `linger` (refusing meanwhile): after
/// `Leaving`, the streams the server opened before it read it are still on
/// their way, and a refusal is what lets the edge give them the tunnel's
/// offline reply; a close would fail them as a lost connection.
pub(super) async fn drain(
    requests: &TaskTracker,
    shutdown: &Shutdown,
    on_event: &Arc<dyn Fn(Event) + Send + Sync>,
    refuse: impl Future<Output = ()>,
    linger: std::time::Duration,
) {
    requests.close();
    if requests.is_empty() {
        tokio::select! {
            _ = tokio::time::sleep(linger) => {}
            _ = shutdown.cut_token().cancelled() => {}
            _ = refuse => {}
        }
        return;
    }
    on_event(Event::Stopping { in_flight: requests.len() });
    tokio::select! {
        _ = requests.wait() => {}
        _ = tokio::time::sleep(DRAIN) => {}
        _ = shutdown.cut_token().cancelled() => {}
        _ = refuse => {}
    }
}
