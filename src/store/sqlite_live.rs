//! SQL for live marks (see [`super::webhooks::LiveMark`]).

use rusqlite::{Connection, params};

use super::sqlite_webhooks::insert_delivery_rows;
use super::webhooks::{DeliveryRecord, LiveMark};

/// Schema version 3: the connects announced to subscribers and not yet closed.
pub(super) const MIGRATION_3: &str = "
CREATE TABLE live_marks (
    owed TEXT NOT NULL,
    subject TEXT NOT NULL,
    org_id TEXT NOT NULL,
    group_name TEXT,
    open INTEGER NOT NULL,
    PRIMARY KEY (owed, subject)
) WITHOUT ROWID;
";

/// Appends `deliveries` and adds each change's `open` to its mark, in one
/// transaction; marks that reach zero are removed.
///
/// The group is the latest event's: the tunnel's group as last seen, which
/// is what a disconnect would have been routed by.
pub(super) fn record_events(
    c: &mut Connection,
    deliveries: &[DeliveryRecord],
    changes: &[LiveMark],
) -> rusqlite::Result<Vec<(String, usize)>> {
    let tx = c.transaction()?;
    let dropped = insert_delivery_rows(&tx, deliveries)?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO live_marks (owed, subject, org_id, group_name, open) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(owed, subject) DO UPDATE SET open = open + excluded.open,
                 org_id = excluded.org_id, group_name = excluded.group_name",
        )?;
        for m in changes {
            stmt.execute(params![m.owed, m.subject, m.org_id, m.group, m.open])?;
        }
    }
    if !changes.is_empty() {
        tx.execute("DELETE FROM live_marks WHERE open = 0", [])?;
    }
    tx.commit()?;
    Ok(dropped)
}

/// Every mark, in a stable order.
pub(super) fn live_marks(c: &Connection) -> rusqlite::Result<Vec<LiveMark>> {
    let mut stmt =
        c.prepare("SELECT owed, subject, org_id, group_name, open FROM live_marks ORDER BY org_id, owed, subject")?;
    let rows = stmt.query_map([], |r| {
        Ok(LiveMark { owed: r.get(0)?, subject: r.get(1)?, org_id: r.get(2)?, group: r.get(3)?, open: r.get(4)? })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::super::{DeliveryState, SqliteStore, Store, WebhookRecord};
    use super::*;

    fn mark(owed: &str, subject: &str, org: &str, open: i64) -> LiveMark {
        LiveMark { owed: owed.into(), subject: subject.into(), org_id: org.into(), group: None, open }
    }

    fn delivery(id: &str, webhook: &str) -> DeliveryRecord {
        DeliveryRecord {
            id: id.into(),
            webhook_id: webhook.into(),
            event: "tunnel.connected".into(),
            payload: "{}".into(),
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt_ms: 1,
            last_status: None,
            last_response: None,
            last_error: None,
            duration_ms: None,
            created_ms: 1,
            updated_ms: 1,
        }
    }

    #[test]
    fn marks_count_connects_survive_reopen_and_vanish_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let tunnel = |open| mark("tunnel.disconnected", "tun_a", "org_1", open);
        let token = |open| mark("token.disconnected", "tok_a", "org_1", open);
        // Connect; a second client takes over with the same token; the first leaves.
        store.record_events(&[], &[tunnel(1), token(1)]).unwrap();
        store.record_events(&[], &[token(1)]).unwrap();
        store.record_events(&[], &[token(-1)]).unwrap();
        let mut grouped = mark("tunnel.disconnected", "tun_b", "org_2", 1);
        grouped.group = Some("prod".into());
        store.record_events(&[], &[grouped.clone()]).unwrap();
        drop(store);

        let store = SqliteStore::open_in(dir.path()).unwrap();
        assert_eq!(store.live_marks().unwrap(), [token(1), tunnel(1), grouped.clone()]);
        // A disconnect that reaches the outbox before its connect cancels out too.
        store.record_events(&[], &[mark("token.disconnected", "tok_z", "org_1", -1)]).unwrap();
        store.record_events(&[], &[mark("token.disconnected", "tok_z", "org_1", 1)]).unwrap();
        store.record_events(&[], &[tunnel(-1), token(-1), LiveMark { open: -1, ..grouped }]).unwrap();
        assert_eq!(store.live_marks().unwrap(), []);
    }

    #[test]
    fn marks_move_with_their_deliveries_and_a_deleted_webhook_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let org = store.ensure_org("default").unwrap();
        let webhook = WebhookRecord {
            id: "wh_1".into(),
            org_id: org.clone(),
            name: "ops".into(),
            url: "http://127.0.0.1:9/x".into(),
            events: vec!["tunnel.connected".into()],
            group: None,
            enabled: true,
            custom_headers: vec![],
            signing_key: "whsec_abc".into(),
            created_at: "2024-01-20T15:00:00Z".into(),
            updated_at: "2024-01-20T15:00:00Z".into(),
        };
        store.save_webhook(&webhook).unwrap();
        let connected = mark("tunnel.disconnected", "tun_a", &org, 1);
        store.record_events(&[delivery("msg_1", "wh_1")], std::slice::from_ref(&connected)).unwrap();
        assert_eq!(store.live_marks().unwrap(), std::slice::from_ref(&connected));
        assert_eq!(store.deliveries_since("wh_1", 0, 10).unwrap().len(), 1);
        // A delivery for a webhook deleted meanwhile is skipped: the rest of the
        // batch, marks included, is written (it used to roll back whole).
        let batch = [delivery("msg_2", "wh_gone"), delivery("msg_3", "wh_1")];
        store.record_events(&batch, &[LiveMark { open: -1, ..connected }]).unwrap();
        assert!(store.live_marks().unwrap().is_empty(), "the disconnect settled its mark");
        let ids: Vec<String> = store.deliveries_since("wh_1", 0, 10).unwrap().into_iter().map(|d| d.id).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(ids.contains(&"msg_3".to_owned()), "{ids:?}");
    }
}
