//! The embedded SQLite store.
//!
//! WAL mode with `synchronous=NORMAL`: a committed transaction survives a process
//! crash, and writers never block readers. One connection behind a mutex is
//! plenty: callers are the API (rare), handshakes (rare) and the counter flusher
//! (one batched transaction per interval).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::requests::RequestRecord;
use super::sqlite_live as live;
use super::sqlite_requests as rq;
use super::sqlite_webhooks as wh;
use super::{
    ApiKeyListing, ApiKeyRecord, CounterUpdate, DeliveryRecord, ENV_KEY_PREFIX, Health, LiveMark, Store, StoreError,
    TunnelRecord, WebhookRecord,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orgs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    key_hash BLOB NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tunnels (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    subdomain TEXT NOT NULL UNIQUE,
    token_hash BLOB NOT NULL,
    total_requests INTEGER NOT NULL DEFAULT 0,
    last_connected_at TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tunnels_org ON tunnels(org_id);
";

/// Changes to [`SCHEMA`], applied in order; `PRAGMA user_version` records how
/// many a database has had, so an older data dir upgrades in place.
const MIGRATIONS: &[&str] =
    &[wh::MIGRATION_1, MIGRATION_2, live::MIGRATION_3, wh::MIGRATION_4, wh::MIGRATION_5, MIGRATION_6];

/// Schema version 2: per-tunnel body capture switch.
const MIGRATION_2: &str = "ALTER TABLE tunnels ADD COLUMN capture_bodies INTEGER NOT NULL DEFAULT 1;";

/// Schema version 6: a tunnel's inbound options, as JSON
/// ([`crate::inbound::InboundConfig`]); NULL when none is set.
const MIGRATION_6: &str = "ALTER TABLE tunnels ADD COLUMN inbound TEXT;";

/// A tunnel's inbound options from their column.
fn inbound_from(json: Option<String>) -> rusqlite::Result<crate::inbound::InboundConfig> {
    json.map_or_else(
        || Ok(Default::default()),
        |json| {
            serde_json::from_str(&json)
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(10, rusqlite::types::Type::Text, Box::new(e)))
        },
    )
}

/// A tunnel's inbound options for their column.
fn inbound_json(inbound: &crate::inbound::InboundConfig) -> Option<String> {
    (!inbound.is_empty()).then(|| serde_json::to_string(inbound).unwrap_or_default())
}

/// Applies the `migrations` a database has not had yet (each file of the
/// store keeps its own count in `user_version`).
fn migrate(conn: &mut Connection, migrations: &[&str]) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in migrations.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// Captured requests, in their own file (see [`super::sqlite_requests`]).
    log: Mutex<Connection>,
}

fn db(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(err, msg) = &e {
        if err.code == rusqlite::ErrorCode::ConstraintViolation {
            return StoreError::Conflict(msg.clone().unwrap_or_else(|| "constraint".into()));
        }
    }
    StoreError::Database(e.to_string())
}

fn hash_from(blob: Vec<u8>) -> Result<[u8; 32], rusqlite::Error> {
    <[u8; 32]>::try_from(blob.as_slice()).map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, "hash is not 32 bytes".into())
    })
}

impl SqliteStore {
    /// Opens (creating if needed) `hookway.db` in `dir`.
    ///
    /// A directory it creates is its owner's only (0700 on Unix): it holds
    /// the databases, and beside them the TLS key.
    pub fn open_in(dir: &Path) -> Result<Self, StoreError> {
        super::create_private_dir(dir)
            .map_err(|e| StoreError::Database(format!("cannot create {}: {e}", dir.display())))?;
        Self::open(&Self::path_in(dir))
    }

    /// Where [`SqliteStore::open_in`] keeps the database of `dir`.
    pub fn path_in(dir: &Path) -> std::path::PathBuf {
        dir.join("hookway.db")
    }

    /// Opens (creating if needed) the database file at `path`, and beside it
    /// the captured-requests file (`hookway.db` → `hookway-requests.db`).
    ///
    /// A main database that is missing or empty beside a requests file with
    /// records is refused ([`StoreError::MainLost`]): see [`super::sqlite_lost`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let log_path = Self::requests_path(path);
        super::sqlite_lost::check(path, &log_path)?;
        let conn = open_main(path).map_err(in_file(path))?;
        let log = open_log(&log_path).map_err(in_file(&log_path))?;
        Ok(Self { conn: Mutex::new(conn), log: Mutex::new(log) })
    }

    /// The captured-requests file beside the database at `path`
    /// (`hookway.db` → `hookway-requests.db`).
    pub fn requests_path(path: &Path) -> std::path::PathBuf {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("hookway");
        path.with_file_name(format!("{stem}-requests.db"))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        // A panic while holding the lock cannot leave SQLite inconsistent (the
        // transaction rolls back), so a poisoned lock is safe to reuse.
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(db)
    }

    fn with_log<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.log.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(db)
    }
}

/// Makes `path` readable and writable by its owner only (0600 on Unix),
/// creating it empty if need be, before SQLite opens it: the databases hold
/// webhook signing keys and captured requests, and SQLite gives its `-wal` and
/// `-shm` files the database file's mode. (SQLite alone creates them 0644.)
fn owner_only(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let cannot = |e: std::io::Error| StoreError::Database(format!("cannot secure {}: {e}", path.display()));
        let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(cannot)?;
        // Tightening a file someone else owns fails (EPERM): say so, and use it
        // as it is, as before this check.
        if let Err(err) = file.set_permissions(std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(path = %path.display(), %err, "cannot make the database readable by its owner only");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn open_main(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = open_wal(path)?;
    conn.execute_batch(SCHEMA).map_err(db)?;
    migrate(&mut conn, MIGRATIONS).map_err(db)?;
    Ok(conn)
}

/// Names the file an opening error is about: the data dir holds two
/// databases, and "file is not a database" alone does not say which.
fn in_file(path: &Path) -> impl Fn(StoreError) -> StoreError + '_ {
    move |err| match err {
        StoreError::Database(msg) if !msg.contains(&*path.to_string_lossy()) => {
            StoreError::Database(format!("{}: {msg}", path.display()))
        }
        other => other,
    }
}

fn open_wal(path: &Path) -> Result<Connection, StoreError> {
    owner_only(path)?;
    let conn = Connection::open(path).map_err(db)?;
    set_wal(&conn)?;
    Ok(conn)
}

fn set_wal(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;",
    )
    .map_err(db)
}

/// Opens the captured-requests file. A new file gets 16 KiB pages: its rows
/// carry bodies of up to a MiB, kept in chains of overflow pages that are
/// written, then walked page by page when pruned. Measured on the benchmark
/// machine against the default 4 KiB, with retention deleting as fast as
/// records come: 1 MiB bodies stored 1.2–1.4× as fast, small records 1.5×,
/// for 1.4× the bytes written by a small commit. (64 KiB pages stored bodies
/// 1.7× as fast but wrote 4.4× the bytes per small commit: the common case is
/// a few webhooks at a time.) An existing file keeps its page size: changing
/// it would take a `VACUUM`.
fn open_log(path: &Path) -> Result<Connection, StoreError> {
    owner_only(path)?;
    let mut conn = Connection::open(path).map_err(db)?;
    // Before WAL mode is set: that writes the new file's header.
    conn.execute_batch("PRAGMA page_size=16384;").map_err(db)?;
    set_wal(&conn)?;
    conn.execute_batch(rq::SCHEMA).map_err(db)?;
    migrate(&mut conn, rq::MIGRATIONS).map_err(db)?;
    Ok(conn)
}

fn now() -> String {
    crate::server::clock::now_rfc3339()
}

impl Store for SqliteStore {
    fn load_tunnels(&self) -> Result<Vec<TunnelRecord>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, org_id, name, subdomain, token_hash, total_requests, last_connected_at, created_at, group_name,
                        capture_bodies, inbound
                 FROM tunnels ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(TunnelRecord {
                    id: r.get(0)?,
                    org_id: r.get(1)?,
                    name: r.get(2)?,
                    subdomain: r.get(3)?,
                    token_hash: hash_from(r.get(4)?)?,
                    total_requests: r.get::<_, i64>(5)?.max(0) as u64,
                    last_connected_at: r.get(6)?,
                    created_at: r.get(7)?,
                    group: r.get(8)?,
                    capture_bodies: r.get(9)?,
                    inbound: inbound_from(r.get(10)?)?,
                })
            })?;
            rows.collect()
        })
    }

    fn insert_tunnel(&self, t: &TunnelRecord) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO tunnels (id, org_id, name, subdomain, token_hash, total_requests, last_connected_at, created_at, group_name, capture_bodies, inbound)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![t.id, t.org_id, t.name, t.subdomain, &t.token_hash[..], t.total_requests as i64, t.last_connected_at, t.created_at, t.group, t.capture_bodies, inbound_json(&t.inbound)],
            )
            .map(drop)
        })
    }

    fn rename_tunnel(&self, id: &str, name: &str) -> Result<(), StoreError> {
        self.with(|c| c.execute("UPDATE tunnels SET name = ?2 WHERE id = ?1", params![id, name]).map(drop))
    }

    fn set_token_hash(&self, id: &str, hash: &[u8; 32]) -> Result<(), StoreError> {
        self.with(|c| c.execute("UPDATE tunnels SET token_hash = ?2 WHERE id = ?1", params![id, &hash[..]]).map(drop))
    }

    fn set_last_connected(&self, id: &str, at: &str) -> Result<(), StoreError> {
        self.with(|c| c.execute("UPDATE tunnels SET last_connected_at = ?2 WHERE id = ?1", params![id, at]).map(drop))
    }

    fn delete_tunnel(&self, id: &str) -> Result<(), StoreError> {
        self.with(|c| c.execute("DELETE FROM tunnels WHERE id = ?1", params![id]).map(drop))
    }

    fn set_capture_bodies(&self, id: &str, on: bool) -> Result<(), StoreError> {
        self.with(|c| c.execute("UPDATE tunnels SET capture_bodies = ?2 WHERE id = ?1", params![id, on]).map(drop))
    }

    fn set_inbound(&self, id: &str, inbound: &crate::inbound::InboundConfig) -> Result<(), StoreError> {
        let json = inbound_json(inbound);
        self.with(|c| c.execute("UPDATE tunnels SET inbound = ?2 WHERE id = ?1", params![id, json]).map(drop))
    }

    fn insert_requests(&self, records: &[RequestRecord], keep_per_tunnel: usize) -> Result<(), StoreError> {
        self.with_log(|c| rq::insert(c, records, keep_per_tunnel))
    }

    fn list_requests(
        &self,
        tunnel_id: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RequestRecord>, StoreError> {
        self.with_log(|c| rq::list(c, tunnel_id, before, limit))
    }

    fn get_request(&self, tunnel_id: &str, id: &str) -> Result<Option<RequestRecord>, StoreError> {
        self.with_log(|c| rq::get(c, tunnel_id, id))
    }

    fn delete_requests(&self, tunnel_id: &str) -> Result<usize, StoreError> {
        self.with_log(|c| rq::delete_for(c, tunnel_id))
    }

    fn prune_requests(&self, id_floor: Option<&str>, keep_tunnels: Option<&[String]>) -> Result<usize, StoreError> {
        self.with_log(|c| rq::prune(c, id_floor, keep_tunnels))
    }

    fn save_counters(&self, updates: &[CounterUpdate]) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut stmt = tx.prepare_cached("UPDATE tunnels SET total_requests = ?2 WHERE id = ?1")?;
                for u in updates {
                    stmt.execute(params![u.tunnel_id, u.total_requests as i64])?;
                }
            }
            tx.commit()
        })
    }

    fn ensure_org(&self, name: &str) -> Result<String, StoreError> {
        self.with(|c| {
            let existing: Option<String> =
                c.query_row("SELECT id FROM orgs WHERE name = ?1", params![name], |r| r.get(0)).optional()?;
            if let Some(id) = existing {
                return Ok(id);
            }
            let id = crate::server::names::org_id();
            c.execute("INSERT INTO orgs (id, name, created_at) VALUES (?1, ?2, ?3)", params![id, name, now()])?;
            Ok(id)
        })
    }

    fn insert_api_key(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO api_keys (id, org_id, key_hash, prefix, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![k.id, k.org_id, &k.key_hash[..], k.prefix, now()],
            )
            .map(drop)
        })
    }

    fn find_api_key(&self, hash: &[u8; 32]) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT id, org_id, key_hash, prefix FROM api_keys WHERE key_hash = ?1",
                params![&hash[..]],
                |r| {
                    Ok(ApiKeyRecord {
                        id: r.get(0)?,
                        org_id: r.get(1)?,
                        key_hash: hash_from(r.get(2)?)?,
                        prefix: r.get(3)?,
                    })
                },
            )
            .optional()
        })
    }

    fn count_api_keys(&self) -> Result<u64, StoreError> {
        self.with(|c| c.query_row("SELECT COUNT(*) FROM api_keys", [], |r| r.get::<_, i64>(0)).map(|n| n.max(0) as u64))
    }

    fn list_api_keys(&self) -> Result<Vec<ApiKeyListing>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT k.id, o.name, k.prefix, k.created_at FROM api_keys k JOIN orgs o ON o.id = k.org_id \
                 ORDER BY k.created_at, k.id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(ApiKeyListing { id: r.get(0)?, org: r.get(1)?, prefix: r.get(2)?, created_at: r.get(3)? })
            })?;
            rows.collect()
        })
    }

    fn delete_api_key(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| c.execute("DELETE FROM api_keys WHERE id = ?1", params![id]).map(|n| n > 0))
    }

    fn retire_env_api_keys(&self, keep: &[u8; 32]) -> Result<u64, StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM api_keys WHERE prefix = ?1 AND key_hash != ?2", params![ENV_KEY_PREFIX, &keep[..]])
                .map(|n| n as u64)
        })
    }

    fn set_tunnel_group(&self, id: &str, group: Option<&str>) -> Result<(), StoreError> {
        self.with(|c| c.execute("UPDATE tunnels SET group_name = ?2 WHERE id = ?1", params![id, group]).map(drop))
    }

    fn load_webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        self.with(|c| wh::load_webhooks(c))
    }

    fn save_webhook(&self, webhook: &WebhookRecord) -> Result<(), StoreError> {
        self.with(|c| wh::save_webhook(c, webhook))
    }

    fn delete_webhook(&self, id: &str) -> Result<(), StoreError> {
        self.with(|c| wh::delete_webhook(c, id))
    }

    fn record_events(
        &self,
        deliveries: &[DeliveryRecord],
        changes: &[LiveMark],
    ) -> Result<Vec<(String, usize)>, StoreError> {
        self.with(|c| live::record_events(c, deliveries, changes))
    }

    fn live_marks(&self) -> Result<Vec<LiveMark>, StoreError> {
        self.with(|c| live::live_marks(c))
    }

    fn lease_deliveries(&self, ids: &[String], until_ms: i64) -> Result<Vec<String>, StoreError> {
        self.with(|c| wh::lease_deliveries(c, ids, until_ms))
    }

    fn release_leases(&self) -> Result<usize, StoreError> {
        self.with(|c| wh::release_leases(c))
    }

    fn update_delivery(&self, delivery: &DeliveryRecord) -> Result<(), StoreError> {
        self.with(|c| wh::update_delivery(c, delivery))
    }

    fn due_deliveries(&self, now_ms: i64, per_webhook: usize, limit: usize) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.with(|c| wh::due_deliveries(c, now_ms, per_webhook, limit))
    }

    fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        self.with(|c| wh::next_due_ms(c))
    }

    fn deliveries_since(
        &self,
        webhook_id: &str,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.with(|c| wh::deliveries_since(c, webhook_id, since_ms, limit))
    }

    fn webhook_health(&self, org_id: &str, since_ms: i64) -> Result<HashMap<String, Health>, StoreError> {
        self.with(|c| wh::health(c, org_id, since_ms))
    }

    fn prune_deliveries(&self, before_ms: i64) -> Result<usize, StoreError> {
        self.with(|c| wh::prune_deliveries(c, before_ms))
    }

    fn trim_backlogs(&self, now_ms: i64) -> Result<Vec<(String, usize)>, StoreError> {
        self.with(|c| wh::trim_backlogs(c, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::CapturedBody;

    /// Issue: a damaged database failed the start with "file is not a
    /// database", without saying which of the data dir's two files it was.
    #[test]
    fn an_unreadable_database_is_named() {
        for damaged in ["hookway.db", "hookway-requests.db"] {
            let dir = tempfile::tempdir().unwrap();
            SqliteStore::open_in(dir.path()).unwrap();
            std::fs::write(dir.path().join(damaged), vec![b'x'; 8192]).unwrap();
            let err = SqliteStore::open_in(dir.path()).err().expect("a damaged file is refused").to_string();
            let named = format!("{}: ", dir.path().join(damaged).display());
            assert!(err.starts_with(&format!("database error: {named}")), "{err}");
        }
    }

    fn tunnel(id: &str, sub: &str, org: &str) -> TunnelRecord {
        TunnelRecord {
            id: id.into(),
            org_id: org.into(),
            name: "Dev".into(),
            subdomain: sub.into(),
            token_hash: [7; 32],
            total_requests: 0,
            last_connected_at: None,
            created_at: "2024-01-20T15:00:00Z".into(),
            group: None,
            capture_bodies: true,
            inbound: Default::default(),
        }
    }

    #[test]
    fn an_older_requests_file_gains_the_over_budget_columns_and_keeps_its_records() {
        let dir = tempfile::tempdir().unwrap();
        // Beside the main database, as every release made it (first).
        drop(open_main(&SqliteStore::path_in(dir.path())).unwrap());
        // The file as the first release created it, with one record.
        let old = Connection::open(dir.path().join("hookway-requests.db")).unwrap();
        old.execute_batch(rq::SCHEMA).unwrap();
        old.execute_batch(
            "INSERT INTO requests (tunnel_id, id, time, method, path, status, duration_us, outcome, client_ip,
                 replay_of, req_headers, req_body, req_size, req_truncated, resp_headers, resp_body, resp_size,
                 resp_truncated)
             VALUES ('tun_a', 'req_1', 't', 'POST', '/', 200, 5, 'ok', '127.0.0.1', NULL, '[]', x'6869', 2, 0,
                 '[]', NULL, 0, 0)",
        )
        .unwrap();
        drop(old);
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let kept = store.get_request("tun_a", "req_1").unwrap().unwrap();
        assert_eq!(kept.request.body.data.as_deref(), Some(&b"hi"[..]));
        assert!(!kept.request.body.over_budget);
        let mut new = kept.clone();
        new.id = "req_2".into();
        new.request.body = CapturedBody { data: Some("h".into()), size: 2, truncated: true, over_budget: true };
        store.insert_requests(&[new.clone()], 10).unwrap();
        assert_eq!(store.get_request("tun_a", "req_2").unwrap(), Some(new));
        drop(store);
        // Opening again finds the columns there.
        assert!(SqliteStore::open_in(dir.path()).unwrap().get_request("tun_a", "req_2").unwrap().is_some());
    }

    /// Issue: a keep count past `i64::MAX` became a negative offset in the
    /// trim, which SQLite takes as none: every record but the newest went.
    #[test]
    fn retention_keeps_the_newest_and_a_huge_count_keeps_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let kept = || -> Vec<String> {
            let ids = store.with_log(|c| {
                let mut stmt = c.prepare("SELECT id FROM requests WHERE tunnel_id = 'tun_a' ORDER BY id")?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            });
            ids.unwrap()
        };
        let with_id = RequestRecord::for_test;
        store.insert_requests(&[with_id("req_1"), with_id("req_2"), with_id("req_3")], usize::MAX).unwrap();
        assert_eq!(kept(), ["req_1", "req_2", "req_3"]);
        store.insert_requests(&[with_id("req_4")], 2).unwrap();
        assert_eq!(kept(), ["req_3", "req_4"]);
    }

    /// Issue: header values were stored as text, so a value that is not UTF-8
    /// (obs-text: Latin-1, a raw signature) came back with U+FFFD in it, and
    /// a replay sent that. Values are bytes now; rows written before, whose
    /// values are JSON strings, read as they did.
    #[test]
    fn header_values_keep_their_bytes_and_rows_of_the_old_format_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        // A row as a server before this wrote it (one value escaped, one that
        // capture had turned into text lossily).
        store
            .with_log(|c| {
                c.execute_batch(
                    r#"INSERT INTO requests (tunnel_id, id, time, method, path, status, duration_us, outcome,
                         client_ip, replay_of, req_headers, req_body, req_size, req_truncated, resp_headers, resp_body,
                         resp_size, resp_truncated)
                     VALUES ('tun_a', 'req_1', 't', 'POST', '/', 200, 5, 'ok', '127.0.0.1', NULL,
                         '[["x-a","caf\u00e9"],["x-b","caf\ufffd"],["x-b","2"]]', NULL, 0, 0, '[["x-c","1"]]',
                         NULL, 0, 0)"#,
                )
            })
            .unwrap();
        let old = store.get_request("tun_a", "req_1").unwrap().unwrap();
        let text = |n: &str, v: &str| (n.to_owned(), Bytes::copy_from_slice(v.as_bytes()));
        assert_eq!(old.request.headers, [text("x-a", "café"), text("x-b", "caf\u{fffd}"), text("x-b", "2")]);
        assert_eq!(old.response.as_ref().unwrap().headers, [text("x-c", "1")]);

        let mut new = old.clone();
        new.id = "req_2".into();
        new.request.headers = vec![
            ("x-signature".into(), Bytes::from_static(b"caf\xe9 \x80\xff=\xc3(")),
            text("x-a", "café"),
            ("x-a".into(), Bytes::from_static(b"\xfe")),
        ];
        store.insert_requests(&[new.clone()], 10).unwrap();
        assert_eq!(store.get_request("tun_a", "req_2").unwrap(), Some(new));
        // UTF-8 values are written as before (a row of them is what a server
        // from before this wrote, and reads), others as their bytes in base64.
        let raw: (String, String) = store
            .with_log(|c| {
                c.query_row("SELECT req_headers, resp_headers FROM requests WHERE id = 'req_2'", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
            })
            .unwrap();
        assert_eq!(
            raw.0,
            r#"[["x-signature",{"base64":"Y2Fm6SCA/z3DKA=="}],["x-a","café"],["x-a",{"base64":"/g=="}]]"#
        );
        assert_eq!(raw.1, r#"[["x-c","1"]]"#);
    }

    #[test]
    fn a_new_requests_file_has_larger_pages_and_an_old_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let page =
            |s: &SqliteStore| s.with_log(|c| c.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))).unwrap();
        assert_eq!(page(&store), 16384);
        assert_eq!(store.with(|c| c.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))).unwrap(), 4096);
        drop(store);
        let old = tempfile::tempdir().unwrap();
        let conn = Connection::open(old.path().join("hookway-requests.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (x);").unwrap();
        drop(conn);
        assert_eq!(page(&SqliteStore::open_in(old.path()).unwrap()), 4096, "opened as it is, no rebuild");
    }

    #[test]
    fn tunnels_survive_reopen_and_subdomains_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let org = store.ensure_org("default").unwrap();
        assert_eq!(store.ensure_org("default").unwrap(), org);
        store.insert_tunnel(&tunnel("tun_a", "alpha", &org)).unwrap();
        let dup = store.insert_tunnel(&tunnel("tun_b", "alpha", &org));
        assert!(matches!(dup, Err(StoreError::Conflict(_))), "{dup:?}");
        store.save_counters(&[CounterUpdate { tunnel_id: "tun_a".into(), total_requests: 42 }]).unwrap();
        store.rename_tunnel("tun_a", "Renamed").unwrap();
        store.set_token_hash("tun_a", &[9; 32]).unwrap();
        drop(store);

        let store = SqliteStore::open_in(dir.path()).unwrap();
        let all = store.load_tunnels().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].total_requests, 42);
        assert_eq!(all[0].name, "Renamed");
        assert_eq!(all[0].token_hash, [9; 32]);
        store.delete_tunnel("tun_a").unwrap();
        assert!(store.load_tunnels().unwrap().is_empty());
    }

    #[test]
    fn api_keys_are_found_by_hash_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let org = store.ensure_org("acme").unwrap();
        let key =
            ApiKeyRecord { id: "key_1".into(), org_id: org.clone(), key_hash: [1; 32], prefix: "hwk_abcd".into() };
        store.insert_api_key(&key).unwrap();
        assert_eq!(store.find_api_key(&[1; 32]).unwrap(), Some(key));
        assert_eq!(store.find_api_key(&[2; 32]).unwrap(), None);
        assert_eq!(store.count_api_keys().unwrap(), 1);
    }

    #[test]
    fn a_version_0_database_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hookway.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute("INSERT INTO orgs (id, name, created_at) VALUES ('org_1', 'default', 'x')", []).unwrap();
            c.execute(
                "INSERT INTO tunnels (id, org_id, name, subdomain, token_hash, created_at)
                 VALUES ('tun_old', 'org_1', 'Old', 'old-one', x'00', 'x')",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        store.set_tunnel_group("tun_old", Some("prod")).unwrap();
        drop(store);
        let store = SqliteStore::open(&path).unwrap(); // a second open applies nothing twice
        let c = store.conn.lock().unwrap();
        let (group, version): (String, i64) = c
            .query_row("SELECT group_name, (SELECT user_version FROM pragma_user_version) FROM tunnels", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((group.as_str(), version), ("prod", MIGRATIONS.len() as i64));
    }

    fn webhook(id: &str, org: &str) -> WebhookRecord {
        WebhookRecord {
            id: id.into(),
            org_id: org.into(),
            name: "ops".into(),
            url: "https://hooks.example.com/x".into(),
            events: vec!["tunnel.connected".into(), "token.disconnected".into()],
            group: Some("prod".into()),
            enabled: true,
            custom_headers: vec![("x-team".into(), "ops".into())],
            signing_key: "whsec_abc".into(),
            created_at: "2024-01-20T15:00:00Z".into(),
            updated_at: "2024-01-20T15:00:00Z".into(),
        }
    }

    fn delivery(id: &str, webhook: &str, created_ms: i64) -> DeliveryRecord {
        DeliveryRecord {
            id: id.into(),
            webhook_id: webhook.into(),
            event: "tunnel.connected".into(),
            payload: "{}".into(),
            state: super::super::DeliveryState::Pending,
            attempts: 0,
            next_attempt_ms: created_ms,
            last_status: None,
            last_response: None,
            last_error: None,
            duration_ms: None,
            created_ms,
            updated_ms: created_ms,
        }
    }

    #[test]
    fn webhooks_and_the_outbox_persist() {
        use super::super::DeliveryState::*;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let org = store.ensure_org("default").unwrap();
        store.save_webhook(&webhook("wh_1", &org)).unwrap();
        let mut changed = webhook("wh_1", &org);
        changed.enabled = false;
        store.save_webhook(&changed).unwrap();
        assert_eq!(store.load_webhooks().unwrap(), [changed]);

        store.record_events(&[delivery("msg_a", "wh_1", 1_000), delivery("msg_b", "wh_1", 2_000)], &[]).unwrap();
        // Disabled: its deliveries wait (a pause), due to nobody.
        assert_eq!(store.next_due_ms().unwrap(), None);
        assert!(store.due_deliveries(10_000, 4, 10).unwrap().is_empty());
        store.save_webhook(&webhook("wh_1", &org)).unwrap();
        assert_eq!(store.next_due_ms().unwrap(), Some(1_000));
        store.lease_deliveries(&["msg_a".into()], 5_000).unwrap();
        assert_eq!(store.next_due_ms().unwrap(), Some(2_000), "a leased delivery is not due");
        store.lease_deliveries(&["msg_a".into()], 1_000).unwrap();
        assert_eq!(store.due_deliveries(1_500, 10, 10).unwrap().len(), 1);
        assert_eq!(store.due_deliveries(9_000, 1, 10).unwrap().len(), 1, "one per webhook");
        let mut done = delivery("msg_a", "wh_1", 1_000);
        (done.state, done.attempts, done.last_status) = (Succeeded, 1, Some(200));
        store.update_delivery(&done).unwrap();
        let mut failed = delivery("msg_b", "wh_1", 2_000);
        (failed.state, failed.attempts, failed.last_error) = (Failed, 4, Some("timeout".into()));
        store.update_delivery(&failed).unwrap();
        assert_eq!(store.next_due_ms().unwrap(), None);
        drop(store);

        let store = SqliteStore::open_in(dir.path()).unwrap();
        let recent = store.deliveries_since("wh_1", 0, 10).unwrap();
        assert_eq!(recent.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["msg_b", "msg_a"]);
        assert_eq!(recent[0], failed);
        let health = store.webhook_health(&org, 0).unwrap();
        assert_eq!(health["wh_1"], Health { requests: 2, succeeded: 1 });
        assert_eq!(store.webhook_health(&org, 1_500).unwrap()["wh_1"], Health { requests: 1, succeeded: 0 });
        // An update (new URL, new signing key) keeps the log and what is pending.
        let mut moved = webhook("wh_1", &org);
        (moved.url, moved.signing_key) = ("https://hooks.example.com/fixed".into(), "whsec_new".into());
        store.record_events(&[delivery("msg_c", "wh_1", 3_000)], &[]).unwrap();
        store.save_webhook(&moved).unwrap();
        assert_eq!(store.load_webhooks().unwrap(), [moved]);
        assert_eq!(store.deliveries_since("wh_1", 0, 10).unwrap().len(), 3, "an update kept the deliveries");
        assert_eq!(store.next_due_ms().unwrap(), Some(3_000), "and the pending one is still due");
        // An attempt counts as it starts, but a first one under way has no outcome yet.
        store.lease_deliveries(&["msg_c".into()], 9_000).unwrap();
        assert_eq!(store.deliveries_since("wh_1", 2_500, 10).unwrap()[0].attempts, 1);
        assert_eq!(store.webhook_health(&org, 2_500).unwrap().get("wh_1"), None);
        assert_eq!(store.prune_deliveries(1_500).unwrap(), 1);
        store.delete_webhook("wh_1").unwrap();
        assert!(store.deliveries_since("wh_1", 0, 10).unwrap().is_empty(), "deliveries go with their webhook");
    }

    /// A receiver that never answers cannot make the outbox grow without
    /// end: past `MAX_PENDING`, the oldest waiting deliveries (not one being
    /// attempted) are given up, saying why; past `MAX_KEPT`, the oldest
    /// finished ones go at the prune. Picking due rows still takes each
    /// webhook's oldest.
    #[test]
    fn a_webhooks_backlog_and_log_are_bounded() {
        use super::super::DeliveryState::*;
        use super::super::webhooks::{BACKLOG_GRACE_MS, MAX_KEPT, MAX_PENDING};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let org = store.ensure_org("default").unwrap();
        store.save_webhook(&webhook("wh_slow", &org)).unwrap();
        store.save_webhook(&webhook("wh_ok", &org)).unwrap();
        let id = |i: usize| format!("msg_{i:06}");
        store.record_events(&[delivery(&id(0), "wh_slow", 0), delivery(&id(1), "wh_slow", 1)], &[]).unwrap();
        assert_eq!(store.lease_deliveries(&[id(0), id(1)], 1_000_000).unwrap(), [id(0), id(1)]);
        // msg 1 was tried once, and waits for its retry; msg 0 is being tried.
        let mut retrying = delivery(&id(1), "wh_slow", 1);
        (retrying.attempts, retrying.last_error, retrying.next_attempt_ms) = (1, Some("timed out".into()), 2);
        store.update_delivery(&retrying).unwrap();
        let more: Vec<_> = (2..MAX_PENDING + 1503).map(|i| delivery(&id(i), "wh_slow", i as i64)).collect();
        // Over the cap, but the first due waited 11.5 s only: a burst, kept.
        assert_eq!(store.record_events(&more, &[]).unwrap(), [], "a burst is not dropped");
        // A minute on, the backlog is still there: what is over the cap goes,
        // a thousand rows a batch.
        let late = |i: i64| delivery(&format!("msg_late{i}"), "wh_slow", BACKLOG_GRACE_MS + 20_000 + i);
        assert_eq!(store.record_events(&[late(0)], &[]).unwrap(), [("wh_slow".to_owned(), 1000)]);
        assert_eq!(store.record_events(&[late(1)], &[]).unwrap(), [("wh_slow".to_owned(), 505)], "the rest");
        assert_eq!(store.record_events(&[late(2)], &[]).unwrap(), [("wh_slow".to_owned(), 1)], "and one per new one");
        store.record_events(&[delivery("msg_ok", "wh_ok", 5)], &[]).unwrap();
        let log = store.deliveries_since("wh_slow", 0, MAX_PENDING + 2000).unwrap();
        let mut dropped: Vec<&str> = log.iter().filter(|d| d.state == Failed).map(|d| d.id.as_str()).collect();
        dropped.sort_unstable();
        let first_due: Vec<String> = (1..=1506).map(id).collect();
        assert_eq!(dropped, first_due, "the first due, not the one being attempted");
        let why = |i: usize| log.iter().find(|d| d.id == id(i)).unwrap().last_error.clone().unwrap();
        assert!(why(2).starts_with("dropped before it was sent: ") && why(2).contains("not keeping up"), "{}", why(2));
        assert!(why(1).starts_with("given up before its next retry: "), "{}", why(1));
        assert!(why(1).ends_with("(last attempt: timed out)"), "{}", why(1));
        assert_eq!(log.iter().filter(|d| d.state == Pending).count(), MAX_PENDING);
        assert!(log.iter().any(|d| d.id == id(0) && d.state == Pending), "the leased one stays");
        let due = store.due_deliveries(999_999, 4, 100).unwrap();
        let ids: Vec<&str> = due.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(
            ids,
            ["msg_ok", &id(1507), &id(1508), &id(1509), &id(1510)],
            "each webhook's first due, by due time"
        );
        assert_eq!(store.due_deliveries(999_999, 4, 2).unwrap().len(), 2, "the limit in all");
        let leased = store.lease_deliveries(&[id(1), id(1507)], 999_999).unwrap();
        assert_eq!(leased, [id(1507)], "a dropped one is not leased");

        // The log: finished deliveries beyond the newest MAX_KEPT go at the prune.
        let done: Vec<_> = (0..MAX_KEPT + 2)
            .map(|i| {
                let mut d = delivery(&format!("old_{i:06}"), "wh_ok", 10 + i as i64);
                (d.state, d.attempts) = (Succeeded, 1);
                d
            })
            .collect();
        store.record_events(&done, &[]).unwrap();
        assert_eq!(store.prune_deliveries(0).unwrap(), 2);
        let log = store.deliveries_since("wh_ok", 0, MAX_KEPT + 10).unwrap();
        assert_eq!(log.len(), MAX_KEPT + 1, "the pending one and the newest finished");
        assert!(!log.iter().any(|d| d.id == "old_000000" || d.id == "old_000001"), "the oldest went");
        assert_eq!(store.prune_deliveries(0).unwrap(), 0, "and no more");
        drop(store);
    }

    /// A backlog over the cap whose webhook gets no new events is cut back
    /// too, once its grace is over, a step at a time, and only its own.
    #[test]
    fn an_idle_backlog_is_trimmed() {
        use super::super::webhooks::{BACKLOG_GRACE_MS, MAX_PENDING};
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_in(dir.path()).unwrap();
        let org = store.ensure_org("default").unwrap();
        store.save_webhook(&webhook("wh_slow", &org)).unwrap();
        store.save_webhook(&webhook("wh_ok", &org)).unwrap();
        let burst: Vec<_> = (0..MAX_PENDING + 1200).map(|i| delivery(&format!("msg_{i:06}"), "wh_slow", 0)).collect();
        store.record_events(&burst, &[]).unwrap();
        let few: Vec<_> = (0..5).map(|i| delivery(&format!("ok_{i}"), "wh_ok", 0)).collect();
        store.record_events(&few, &[]).unwrap();
        // A paused webhook's backlog waits, however long.
        store.save_webhook(&webhook("wh_paused", &org)).unwrap();
        let held: Vec<_> = (0..MAX_PENDING + 10).map(|i| delivery(&format!("held_{i:06}"), "wh_paused", 0)).collect();
        store.record_events(&held, &[]).unwrap();
        let mut paused = webhook("wh_paused", &org);
        paused.enabled = false;
        store.save_webhook(&paused).unwrap();
        assert_eq!(store.trim_backlogs(BACKLOG_GRACE_MS - 1).unwrap(), [], "within its grace");
        let later = BACKLOG_GRACE_MS + 1;
        assert_eq!(store.trim_backlogs(later).unwrap(), [("wh_slow".to_owned(), 1000)]);
        assert_eq!(store.trim_backlogs(later).unwrap(), [("wh_slow".to_owned(), 200)]);
        assert_eq!(store.trim_backlogs(later).unwrap(), [], "within the cap");
        let pending = store.due_deliveries(later, MAX_PENDING + 10, 2 * MAX_PENDING).unwrap();
        assert_eq!(pending.iter().filter(|d| d.webhook_id == "wh_slow").count(), MAX_PENDING);
        assert_eq!(pending.iter().filter(|d| d.webhook_id == "wh_ok").count(), 5, "the other webhook's untouched");
        let paused = store.deliveries_since("wh_paused", 0, 2 * MAX_PENDING).unwrap();
        assert!(paused.iter().all(|d| d.state == super::super::DeliveryState::Pending), "a paused backlog is kept");
    }

    /// The databases hold signing keys and captured requests: no other user
    /// of the machine may read them, whatever the umask.
    #[cfg(unix)]
    #[test]
    fn the_data_dir_and_its_databases_are_the_owners_only() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let store = SqliteStore::open_in(&dir).unwrap();
        store.ensure_org("org").unwrap();
        assert_eq!(mode(&dir), 0o700);
        let files = ["hookway.db", "hookway.db-wal", "hookway-requests.db", "hookway-requests.db-wal"];
        for name in files {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
        drop(store);
        // A file an older version left readable is tightened when opened.
        std::fs::set_permissions(dir.join("hookway.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
        // (A -wal file a crash left beside it: SQLite gives it the database's mode.)
        std::fs::write(dir.join("hookway.db-wal"), b"").unwrap();
        std::fs::set_permissions(dir.join("hookway.db-wal"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let _reopened = SqliteStore::open_in(&dir).unwrap();
        assert_eq!(mode(&dir.join("hookway.db")), 0o600);
        assert_eq!(mode(&dir.join("hookway.db-wal")), 0o600);
    }
}
