//! SQL for captured requests (see [`super::requests`]).
//!
//! They live in their own database file with its own connection: capture
//! writes are the busiest writes the server makes, and this way they never
//! wait for, or hold up, the tunnel and webhook tables.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use super::requests::{CapturedBody, CapturedPart, HeaderList, RequestRecord};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    tunnel_id TEXT NOT NULL,
    id TEXT NOT NULL,
    time TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    status INTEGER,
    duration_us INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    replay_of TEXT,
    req_headers TEXT NOT NULL,
    req_body BLOB,
    req_size INTEGER NOT NULL,
    req_truncated INTEGER NOT NULL,
    resp_headers TEXT,
    resp_body BLOB,
    resp_size INTEGER NOT NULL,
    resp_truncated INTEGER NOT NULL,
    UNIQUE (tunnel_id, id)
);
";

const SUMMARY_COLUMNS: &str = "tunnel_id, id, time, method, path, status, duration_us, outcome, client_ip, replay_of, req_size, resp_size, resp_headers IS NOT NULL";
const DETAIL_COLUMNS: &str = "tunnel_id, id, time, method, path, status, duration_us, outcome, client_ip, replay_of, \
     req_headers, req_body, req_size, req_truncated, resp_headers, resp_body, resp_size, resp_truncated, \
     req_over_budget, resp_over_budget";

/// Changes to [`SCHEMA`], applied in order (the file's own `user_version`
/// counts them), so an older file upgrades in place.
pub(super) const MIGRATIONS: &[&str] = &[MIGRATION_1];

/// Version 1: whether a body was cut by the capture's body budget.
const MIGRATION_1: &str = "ALTER TABLE requests ADD COLUMN req_over_budget INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE requests ADD COLUMN resp_over_budget INTEGER NOT NULL DEFAULT 0;";

/// A header value as the header columns keep it, in their JSON list of
/// `[name, value]` pairs: a value that is UTF-8 is the JSON string it always
/// was, and one that is not (obs-text) is `{"base64": …}` of its bytes, which
/// a JSON string cannot carry. So rows of UTF-8 values are written exactly as
/// before (a server from before this still reads them), and rows written
/// before are read as they are: the format grew, the schema did not, and no
/// migration rewrites the file.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StoredValue<S> {
    Text(S),
    Bytes { base64: String },
}

fn headers_json(h: &HeaderList) -> String {
    let stored: Vec<(&str, StoredValue<&str>)> = h
        .iter()
        .map(|(name, value)| {
            let value = match std::str::from_utf8(value) {
                Ok(text) => StoredValue::Text(text),
                Err(_) => StoredValue::Bytes { base64: BASE64.encode(value) },
            };
            (name.as_str(), value)
        })
        .collect();
    serde_json::to_string(&stored).unwrap_or_else(|_| "[]".into())
}

/// The list in a header column; empty if it does not parse, and without a
/// value whose base64 does not decode (no row this server wrote has either:
/// a damaged value costs that value, not the rest of the list).
fn headers_from(text: Option<String>) -> HeaderList {
    let Some(stored) = text.and_then(|t| serde_json::from_str::<Vec<(String, StoredValue<String>)>>(&t).ok()) else {
        return HeaderList::new();
    };
    stored
        .into_iter()
        .filter_map(|(name, value)| match value {
            StoredValue::Text(text) => Some((name, Bytes::from(text))),
            StoredValue::Bytes { base64 } => Some((name, BASE64.decode(base64).ok()?.into())),
        })
        .collect()
}

fn base(r: &Row<'_>) -> rusqlite::Result<RequestRecord> {
    Ok(RequestRecord {
        tunnel_id: r.get(0)?,
        id: r.get(1)?,
        time: r.get(2)?,
        method: r.get(3)?,
        path: r.get(4)?,
        status: r.get::<_, Option<i64>>(5)?.and_then(|s| u16::try_from(s).ok()),
        duration_us: r.get::<_, i64>(6)?.max(0) as u64,
        outcome: r.get(7)?,
        client_ip: r.get(8)?,
        replay_of: r.get(9)?,
        request: CapturedPart::default(),
        response: None,
    })
}

fn summary_from(r: &Row<'_>) -> rusqlite::Result<RequestRecord> {
    let mut rec = base(r)?;
    rec.request.body.size = r.get::<_, i64>(10)?.max(0) as u64;
    let resp_size = r.get::<_, i64>(11)?.max(0) as u64;
    if r.get::<_, bool>(12)? {
        rec.response =
            Some(CapturedPart { headers: Vec::new(), body: CapturedBody { size: resp_size, ..Default::default() } });
    }
    Ok(rec)
}

fn detail_from(r: &Row<'_>) -> rusqlite::Result<RequestRecord> {
    let mut rec = base(r)?;
    rec.request = CapturedPart {
        headers: headers_from(r.get(10)?),
        body: CapturedBody {
            data: r.get::<_, Option<Vec<u8>>>(11)?.map(Into::into),
            size: r.get::<_, i64>(12)?.max(0) as u64,
            truncated: r.get(13)?,
            over_budget: r.get(18)?,
        },
    };
    let resp_headers: Option<String> = r.get(14)?;
    rec.response = match resp_headers {
        Some(h) => Some(CapturedPart {
            headers: headers_from(Some(h)),
            body: CapturedBody {
                data: r.get::<_, Option<Vec<u8>>>(15)?.map(Into::into),
                size: r.get::<_, i64>(16)?.max(0) as u64,
                truncated: r.get(17)?,
                over_budget: r.get(19)?,
            },
        }),
        None => None,
    };
    Ok(rec)
}

/// Inserts `records` and trims each tunnel they touch to its newest `keep`, in one transaction.
pub(super) fn insert(c: &mut Connection, records: &[RequestRecord], keep: usize) -> rusqlite::Result<()> {
    let tx = c.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO requests (tunnel_id, id, time, method, path, status, duration_us, outcome, client_ip,
                 replay_of, req_headers, req_body, req_size, req_truncated, resp_headers, resp_body, resp_size, resp_truncated,
                 req_over_budget, resp_over_budget)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
        )?;
        for r in records {
            let resp = r.response.as_ref();
            stmt.execute(params![
                r.tunnel_id,
                r.id,
                r.time,
                r.method,
                r.path,
                r.status,
                r.duration_us as i64,
                r.outcome,
                r.client_ip,
                r.replay_of,
                headers_json(&r.request.headers),
                r.request.body.data.as_deref(),
                r.request.body.size as i64,
                r.request.body.truncated,
                resp.map(|p| headers_json(&p.headers)),
                resp.and_then(|p| p.body.data.as_deref()),
                resp.map_or(0, |p| p.body.size as i64),
                resp.is_some_and(|p| p.body.truncated),
                r.request.body.over_budget,
                resp.is_some_and(|p| p.body.over_budget),
            ])?;
        }
        let mut trim = tx.prepare_cached(
            "DELETE FROM requests WHERE tunnel_id = ?1 AND id < (
                 SELECT id FROM requests WHERE tunnel_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        )?;
        let mut tunnels: Vec<&str> = records.iter().map(|r| r.tunnel_id.as_str()).collect();
        tunnels.sort_unstable();
        tunnels.dedup();
        for t in tunnels {
            // (Saturated, not wrapped: a negative offset counts as none and would keep one.)
            trim.execute(params![t, i64::try_from(keep.saturating_sub(1)).unwrap_or(i64::MAX)])?;
        }
    }
    tx.commit()
}

/// A page of summaries, newest first.
pub(super) fn list(
    c: &Connection,
    tunnel_id: &str,
    before: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<RequestRecord>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM requests WHERE tunnel_id = ?1 AND (?2 IS NULL OR id < ?2)
         ORDER BY id DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![tunnel_id, before, limit as i64], summary_from)?;
    rows.collect()
}

/// One record in full.
pub(super) fn get(c: &Connection, tunnel_id: &str, id: &str) -> rusqlite::Result<Option<RequestRecord>> {
    c.prepare_cached(&format!("SELECT {DETAIL_COLUMNS} FROM requests WHERE tunnel_id = ?1 AND id = ?2"))?
        .query_row(params![tunnel_id, id], detail_from)
        .optional()
}

/// Deletes a tunnel's records; returns how many.
pub(super) fn delete_for(c: &Connection, tunnel_id: &str) -> rusqlite::Result<usize> {
    c.execute("DELETE FROM requests WHERE tunnel_id = ?1", params![tunnel_id])
}

/// Deletes records that arrived before `id_floor` (see [`super::requests::id_floor`]),
/// and those of tunnels not in `keep_tunnels` (deleted while the server was down).
pub(super) fn prune(
    c: &Connection,
    id_floor: Option<&str>,
    keep_tunnels: Option<&[String]>,
) -> rusqlite::Result<usize> {
    let mut n = 0;
    if let Some(floor) = id_floor {
        n += c.execute("DELETE FROM requests WHERE id < ?1", params![floor])?;
    }
    if let Some(tunnels) = keep_tunnels {
        let list = serde_json::to_string(tunnels).unwrap_or_else(|_| "[]".into());
        n +=
            c.execute("DELETE FROM requests WHERE tunnel_id NOT IN (SELECT value FROM json_each(?1))", params![list])?;
    }
    Ok(n)
}
