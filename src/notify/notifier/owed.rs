//! What subscribers are owed when a server dies with sessions live: the
//! writer keeps count of announced connects in the store (live marks), and
//! the next start turns what is left into the disconnects never sent.

use super::{Emitted, EventKind, Notifier};
use crate::store::{LiveMark, StoreError};

/// Most `token.disconnected` owed for one token after a crash: one per session
/// it had live, which is one or two (a client taking over from its own
/// previous connection); the cap only bounds what a damaged count can cost.
const MAX_OWED_PER_TOKEN: i64 = 16;

impl Notifier {
    /// Queues the disconnects that the previous process announced a connect
    /// for and died before sending (a crash, a power loss, an OOM kill), and
    /// clears its marks, in one transaction; returns how many events, and how
    /// many deliveries they make. First, the deliveries it was attempting are
    /// made due at once (see [`crate::store::Store::release_leases`]).
    ///
    /// Blocking: for start-up, before the notifier runs and before any client
    /// can connect, so no new event moves a mark meanwhile. The events go
    /// through the same `deliveries_for` as live ones, so the same
    /// webhooks hear them (same organization, events and group). `ActionDate`
    /// is the time of this restart, the moment the server learned of the
    /// disconnect: the crash time is unknown, and the restart time still comes
    /// after the connect and before any new one.
    pub fn settle_previous_run(&self) -> Result<Settled, StoreError> {
        let store = self.store.blocking();
        let released = store.release_leases()?;
        let marks = store.live_marks()?;
        if marks.is_empty() {
            return Ok(Settled { released, ..Settled::default() });
        }
        let mut events = Vec::new();
        for m in &marks {
            let Some(kind) = EventKind::parse(&m.owed) else { continue };
            // A tunnel goes offline once; each of a token's sessions ends.
            let owed = match kind {
                EventKind::TunnelDisconnected => m.open.clamp(0, 1),
                _ => m.open.clamp(0, MAX_OWED_PER_TOKEN),
            };
            for _ in 0..owed {
                // (Each its own time, as live events have: see `Stamps`.)
                let (org_id, subject, group) = (m.org_id.clone(), m.subject.clone(), m.group.clone());
                events.push(Emitted { kind, org_id, subject, group, regrouped: false, at: self.stamps.next() });
            }
        }
        let rows = self.deliveries_for(&events);
        let cleared: Vec<LiveMark> = marks.into_iter().map(|m| LiveMark { open: -m.open, ..m }).collect();
        store.record_events(&rows, &cleared)?;
        Ok(Settled { events: events.len(), deliveries: rows.len(), released })
    }
}

/// What [`Notifier::settle_previous_run`] found owed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Disconnect events the previous run never sent.
    pub events: usize,
    /// The deliveries queued for them: none when no webhook listens.
    pub deliveries: usize,
    /// Deliveries the previous run was attempting when it stopped, due again at once.
    pub released: usize,
}

/// How a batch of events moves the live marks: every event counts, whether or
/// not a webhook hears it now (one may be created before the disconnect). A
/// move to another group opens or closes nothing: its connect only changes
/// the group an owed disconnect goes to, and its disconnect (out of the old
/// group, sent first) nothing.
pub(super) fn live_changes(events: &[Emitted]) -> Vec<LiveMark> {
    events
        .iter()
        .filter(|e| !e.regrouped || e.kind.owes().1 > 0)
        .map(|e| {
            let (owed, open) = e.kind.owes();
            LiveMark {
                owed: owed.as_str().to_owned(),
                subject: e.subject.clone(),
                org_id: e.org_id.clone(),
                group: e.group.clone(),
                open: if e.regrouped { 0 } else { open },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{NotifyConfig, now_ms};
    use time::OffsetDateTime;

    use super::*;
    use crate::notify::Payload;
    use crate::store::{SqliteStore, Store, StoreHandle, WebhookRecord};

    fn webhook(id: &str, org: &str, group: Option<&str>) -> WebhookRecord {
        WebhookRecord {
            id: id.into(),
            org_id: org.into(),
            name: id.into(),
            url: "http://127.0.0.1:9/hook".into(),
            events: EventKind::ALL.iter().map(|k| k.as_str().to_owned()).collect(),
            group: group.map(str::to_owned),
            enabled: true,
            custom_headers: vec![],
            signing_key: "whsec_abc".into(),
            created_at: "2024-01-20T15:00:00Z".into(),
            updated_at: "2024-01-20T15:00:00Z".into(),
        }
    }

    fn owed(kind: EventKind, subject: &str, org: &str, group: Option<&str>, open: i64) -> LiveMark {
        let (owed, _) = kind.owes();
        LiveMark {
            owed: owed.as_str().into(),
            subject: subject.into(),
            org_id: org.into(),
            group: group.map(str::to_owned),
            open,
        }
    }

    /// (event, subject) of a webhook's deliveries, sorted.
    fn heard(store: &SqliteStore, webhook: &str) -> Vec<(String, String)> {
        let mut v: Vec<_> = store
            .deliveries_since(webhook, 0, 100)
            .unwrap()
            .into_iter()
            .map(|d| {
                let p: Payload = serde_json::from_str(&d.payload).unwrap();
                (d.event, p.id)
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_restart_queues_what_each_organization_was_owed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let (acme, other) = (store.ensure_org("acme").unwrap(), store.ensure_org("other").unwrap());
        let hooks = [webhook("wh_acme", &acme, None), webhook("wh_prod", &other, Some("prod"))];
        for w in &hooks {
            store.save_webhook(w).unwrap();
        }
        // acme: a tunnel whose client was taking over from its own previous
        // connection (two sessions of one token), and a token whose session was
        // replaced by a new token's (the tunnel's mark went with the old token's
        // disconnect). other: a tunnel in group prod, and one out of it.
        store
            .record_events(
                &[],
                &[
                    owed(EventKind::TunnelConnected, "tun_a", &acme, None, 1),
                    owed(EventKind::TokenConnected, "tok_a", &acme, None, 2),
                    owed(EventKind::TokenConnected, "tok_old", &acme, None, 1),
                    owed(EventKind::TunnelConnected, "tun_p", &other, Some("prod"), 1),
                    owed(EventKind::TunnelConnected, "tun_q", &other, Some("dev"), 1),
                    // A disconnect recorded before its connect: owes nothing.
                    owed(EventKind::TokenConnected, "tok_z", &acme, None, -1),
                ],
            )
            .unwrap();
        drop(store);

        let store = StoreHandle::new(SqliteStore::open_in(dir.path()).unwrap());
        let notifier = Notifier::new(store.clone(), NotifyConfig::default(), hooks.to_vec());
        let settled = notifier.settle_previous_run().unwrap();
        assert_eq!(settled.events, 6, "events, heard by a webhook or not");
        assert_eq!(settled.deliveries, 5, "the deliveries of the events a webhook hears");
        let sqlite = SqliteStore::open_in(dir.path()).unwrap();
        let pair = |e: &str, s: &str| (e.to_owned(), s.to_owned());
        assert_eq!(
            heard(&sqlite, "wh_acme"),
            [
                pair("token.disconnected", "tok_a"),
                pair("token.disconnected", "tok_a"),
                pair("token.disconnected", "tok_old"),
                pair("tunnel.disconnected", "tun_a"),
            ]
        );
        assert_eq!(heard(&sqlite, "wh_prod"), [pair("tunnel.disconnected", "tun_p")]);
        // Each its own time, as live events have: tok_a's two included.
        let mut dates: Vec<String> = sqlite
            .deliveries_since("wh_acme", 0, 100)
            .unwrap()
            .iter()
            .map(|d| serde_json::from_str::<Payload>(&d.payload).unwrap().action_date)
            .collect();
        dates.sort();
        dates.dedup();
        assert_eq!(dates.len(), 4, "{dates:?}");
        let due = sqlite.due_deliveries(now_ms(), 100, 100).unwrap();
        assert_eq!(due.len(), 5, "queued as pending, due now");
        assert_eq!(sqlite.live_marks().unwrap(), [], "the marks are cleared");
        assert_eq!(notifier.settle_previous_run().unwrap(), Default::default(), "and a second restart owes nothing");
    }

    /// A tunnel moved to another group while connected, then a crash: the
    /// disconnects owed go to the group it was in last (and to webhooks of
    /// every group), not to the one it left, which heard it leave.
    #[test]
    fn a_move_to_another_group_moves_what_a_crash_owes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let org = store.ensure_org("acme").unwrap();
        let hooks = [
            webhook("wh_all", &org, None),
            webhook("wh_prod", &org, Some("prod")),
            webhook("wh_dev", &org, Some("dev")),
        ];
        for w in &hooks {
            store.save_webhook(w).unwrap();
        }
        let event = |kind, subject: &str, group: Option<&str>, regrouped| Emitted {
            kind,
            org_id: org.clone(),
            subject: subject.into(),
            group: group.map(str::to_owned),
            regrouped,
            at: OffsetDateTime::now_utc(),
        };
        let events = [
            // tun_a: connected in prod, moved to dev.
            event(EventKind::TunnelConnected, "tun_a", Some("prod"), false),
            event(EventKind::TokenConnected, "tok_a", Some("prod"), false),
            event(EventKind::TokenDisconnected, "tok_a", Some("prod"), true),
            event(EventKind::TunnelDisconnected, "tun_a", Some("prod"), true),
            event(EventKind::TunnelConnected, "tun_a", Some("dev"), true),
            event(EventKind::TokenConnected, "tok_a", Some("dev"), true),
            // tun_b: connected in prod, moved out of every group.
            event(EventKind::TunnelConnected, "tun_b", Some("prod"), false),
            event(EventKind::TunnelDisconnected, "tun_b", Some("prod"), true),
            event(EventKind::TunnelConnected, "tun_b", None, true),
        ];
        // The events reach the store in batches of any size: the old group's
        // disconnects closed nothing, though their connects are still to come.
        store.record_events(&[], &live_changes(&events[..4])).unwrap();
        let marks = store.live_marks().unwrap();
        assert_eq!(marks.iter().map(|m| m.open).collect::<Vec<_>>(), [1, 1], "a move closes nothing: {marks:?}");
        store.record_events(&[], &live_changes(&events[4..])).unwrap();
        let marks = store.live_marks().unwrap();
        assert_eq!(marks.iter().map(|m| m.open).collect::<Vec<_>>(), [1, 1, 1], "nor opens anything: {marks:?}");
        drop(store);

        let store = StoreHandle::new(SqliteStore::open_in(dir.path()).unwrap());
        let notifier = Notifier::new(store.clone(), NotifyConfig::default(), hooks.to_vec());
        assert_eq!(notifier.settle_previous_run().unwrap().events, 3);
        let sqlite = SqliteStore::open_in(dir.path()).unwrap();
        let pair = |e: &str, s: &str| (e.to_owned(), s.to_owned());
        assert_eq!(
            heard(&sqlite, "wh_all"),
            [
                pair("token.disconnected", "tok_a"),
                pair("tunnel.disconnected", "tun_a"),
                pair("tunnel.disconnected", "tun_b")
            ]
        );
        assert_eq!(
            heard(&sqlite, "wh_dev"),
            [pair("token.disconnected", "tok_a"), pair("tunnel.disconnected", "tun_a")]
        );
        assert_eq!(heard(&sqlite, "wh_prod"), [], "prod heard them leave");
    }
}
