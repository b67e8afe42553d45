//! Refusing a data dir whose main database was lost.
//!
//! Why: a missing or empty `hookway.db` looks like a first start, and a first
//! start makes the tables and goes on, with no tunnels and a new API key. The
//! capture writer's start-up prune then deletes every captured request, their
//! tunnels being gone. So a main database truncated to nothing (a full disk, a
//! restore gone wrong, a stray `> hookway.db`) took the captured requests with
//! it, and nothing said so. Records in the requests file beside it say the dir
//! was in use: that start is refused, and the operator says what to do.
//!
//! A first start has no records yet (the requests file is made after the main
//! database's tables), nor has one that crashed before writing anything, so
//! both go on as before. Only what the files certainly say refuses: a file
//! SQLite cannot read counts as holding tables (opening it then says why) and
//! as holding no records.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// Refuses a main database at `main` that holds no tables when the requests
/// file at `requests` holds records.
pub(super) fn check(main: &Path, requests: &Path) -> Result<(), StoreError> {
    if has_tables(main) || !has_records(requests) {
        return Ok(());
    }
    Err(StoreError::MainLost { main: main.to_path_buf(), requests: requests.to_path_buf() })
}

/// Whether the database at `path` holds any table: not when it is missing or
/// empty, or was left by a start that stopped before making its tables.
fn has_tables(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
        // Not opened: SQLite would drop a `-wal` file beside an empty database.
        Ok(meta) if meta.len() == 0 => false,
        Err(_) | Ok(_) => ask(path, "SELECT EXISTS (SELECT 1 FROM sqlite_master)").unwrap_or(true),
    }
}

/// Whether the requests file at `path` holds any record.
fn has_records(path: &Path) -> bool {
    path.exists() && ask(path, "SELECT EXISTS (SELECT 1 FROM requests)").unwrap_or(false)
}

/// A yes-or-no `query` of the database at `path`, opened read-only.
fn ask(path: &Path, query: &str) -> rusqlite::Result<bool> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.query_row(query, [], |r| r.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RequestRecord, SqliteStore, Store};

    #[test]
    fn a_main_database_without_tables_beside_records_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let main = SqliteStore::path_in(dir.path());
        SqliteStore::open(&main).unwrap().insert_requests(&[RequestRecord::for_test("req_1")], 10).unwrap();
        // What a start that stopped before making the tables leaves: a header, no table.
        std::fs::remove_file(&main).unwrap();
        Connection::open(&main).unwrap().pragma_update(None, "journal_mode", "WAL").unwrap();
        assert!(std::fs::metadata(&main).unwrap().len() > 0);
        let err = SqliteStore::open(&main).err().expect("refused");
        assert!(matches!(&err, StoreError::MainLost { main: m, .. } if *m == main), "{err}");

        // A damaged file is not taken for a lost one: opening it says what is wrong.
        std::fs::write(&main, vec![7u8; 8192]).unwrap();
        let err = SqliteStore::open(&main).err().expect("refused").to_string();
        assert!(err.contains("not a database") && !err.contains("empty or missing"), "{err}");
    }
}
