//! Noticing the data dir deleted or replaced under a running server.
//!
//! Why: SQLite keeps writing to the files it opened, whatever became of their
//! names. After an `rm -rf` of the data dir every write still succeeded, into
//! files no path leads to: tunnels created, tokens regenerated, requests
//! captured, all of it gone at the next start, which also made a new
//! self-signed certificate (that pinned clients refuse). And with the lock
//! file gone too, a second server could take the dir meanwhile. So every few
//! seconds the server looks whether its files are still at their paths (same
//! device and inode as at start-up), and stops when one is not: nothing it
//! wrote from then on would be kept.
//!
//! A `stat` of three files per period, on the blocking pool: nothing on the
//! request path. (Without inodes, off Unix, only a deleted file is noticed.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the data dir's files are looked at, by default: writes made
/// between a deletion and its notice are lost (and the server's state since
/// the last backup), so soon; a look costs three `stat` calls.
pub const DEFAULT_DATA_DIR_CHECK: Duration = Duration::from_secs(2);

/// What became of a file of the data dir while the server ran.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path} was {change} while the server ran: what the server wrote since is kept nowhere, and its next start \
     would begin afresh (no tunnels, API keys or webhooks; a new self-signed certificate). Put the data dir back \
     (restore it from a backup), or let the next start begin afresh, and start the server again",
    path = path.display()
)]
pub struct DataDirLost {
    /// The file.
    pub path: PathBuf,
    /// `deleted` (or moved away), or `replaced` by another file.
    pub change: &'static str,
}

/// The data dir's files as the server opened them.
#[derive(Debug, Clone)]
pub(super) struct DirWatch {
    files: Vec<(PathBuf, FileId)>,
}

/// Which file a path names: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId(u64, u64);

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    FileId(meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> FileId {
    FileId(0, 0)
}

impl DirWatch {
    /// Watches `paths`, as the files they name now. One that cannot be
    /// looked at is left out, and said so.
    pub(super) fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        let files = paths
            .into_iter()
            .filter_map(|path| match std::fs::metadata(&path) {
                Ok(meta) => Some((path, file_id(&meta))),
                Err(err) => {
                    tracing::warn!(path = %path.display(), %err, "cannot watch this file of the data dir");
                    None
                }
            })
            .collect();
        Self { files }
    }

    /// The first file no longer at its path, if any. A file that cannot be
    /// looked at (no permission, an I/O error) is not taken for lost.
    fn lost(&self) -> Result<Option<DataDirLost>, (&Path, std::io::Error)> {
        for (path, id) in &self.files {
            let change = match std::fs::metadata(path) {
                Ok(meta) if file_id(&meta) == *id => continue,
                Ok(_) => "replaced",
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => "deleted",
                Err(err) => return Err((path, err)),
            };
            return Ok(Some(DataDirLost { path: path.clone(), change }));
        }
        Ok(None)
    }

    /// Looks every `every` until `stop` is cancelled, or until a file is
    /// lost: then logs why and cancels `stop` itself.
    pub(super) async fn run(self, every: Duration, stop: CancellationToken) -> Option<DataDirLost> {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unreadable = false;
        while stop.run_until_cancelled(tick.tick()).await.is_some() {
            let watch = self.clone();
            let seen = tokio::task::spawn_blocking(move || watch.lost().map_err(|(p, err)| (p.to_owned(), err))).await;
            match seen {
                Ok(Ok(None)) => unreadable = false,
                Ok(Ok(Some(lost))) => {
                    tracing::error!(
                        path = %lost.path.display(),
                        change = lost.change,
                        "a file of the data dir went from its path while the server ran: what the server writes \
                         from now on would be kept nowhere, so it stops. Put the data dir back (restore it from a \
                         backup), or let the next start begin afresh (no tunnels, API keys or webhooks; a new \
                         self-signed certificate), and start the server again"
                    );
                    stop.cancel();
                    return Some(lost);
                }
                Ok(Err((path, err))) => {
                    if !std::mem::replace(&mut unreadable, true) {
                        tracing::warn!(path = %path.display(), %err, "cannot look whether the data dir is still there");
                    }
                }
                // The blocking pool is shutting down: so is the server.
                Err(_) => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_or_replaced_file_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        let watch = DirWatch::new([a.clone(), b.clone(), dir.path().join("missing")]);
        assert_eq!(watch.files.len(), 2, "a file missing at the start is not watched");
        assert!(watch.lost().unwrap().is_none());
        std::fs::write(&b, "written in place").unwrap();
        assert!(watch.lost().unwrap().is_none(), "the same file, changed");

        std::fs::remove_file(&b).unwrap();
        let lost = watch.lost().unwrap().expect("lost");
        assert_eq!((lost.path.as_path(), lost.change), (b.as_path(), "deleted"));
        #[cfg(unix)]
        {
            std::fs::write(dir.path().join("new"), "b").unwrap();
            std::fs::rename(dir.path().join("new"), &a).unwrap();
            let lost = watch.lost().unwrap().expect("lost");
            assert_eq!((lost.path.as_path(), lost.change), (a.as_path(), "replaced"));
        }
    }
}
