//! One server per data dir.
//!
//! Why: a server's start takes every session its store still marks live for
//! one a crashed run left behind, and queues their `disconnected` webhooks. A
//! second server on the same `--data-dir` would do that to the first one's
//! live tunnels (and clear the marks the first needs after a real crash). An
//! advisory lock on a file in the dir, taken before the store is read, makes
//! the second start fail with a clear error instead. The kernel releases it
//! when the process ends, however it ends, so a crash leaves no stale lock.
//!
//! `hookway keys` commands do not take it: they are meant to run beside the
//! server, and SQLite keeps their writes consistent with its own.
//!
//! On a network file system the lock is only as good as the mount's: NFS
//! may keep a crashed holder's lock for its lease (about 90 s), and a mount
//! without locking refuses it, which is then only a warning.

use std::fs::{File, OpenOptions};

use fs4::TryLockError;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The lock file, holding the pid of the server that has the dir.
pub const LOCK_FILE: &str = "server.lock";

/// The data dir, held for one server while this lives.
#[derive(Debug)]
pub struct DirLock {
    /// `None` on a file system without locks (some network mounts).
    _file: Option<File>,
}

/// Why the data dir cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum DirLockError {
    /// Another live process holds it.
    #[error(
        "{dir} is in use by another hookway server{pid}: run one server per --data-dir (stop that one, or give this one another --data-dir)"
    )]
    InUse {
        /// The data dir.
        dir: PathBuf,
        /// ` (pid N)` when the holder wrote it, else empty.
        pid: String,
    },
    /// The data dir could not be created.
    #[error("cannot create the data dir {dir}: {source}")]
    Create {
        /// The data dir.
        dir: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The lock file could not be created or opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The lock file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

impl DirLock {
    /// Takes `dir` (creating it, private to this user, if needed) for this process.
    pub fn acquire(dir: &Path) -> Result<Self, DirLockError> {
        let path = dir.join(LOCK_FILE);
        crate::store::create_private_dir(dir)
            .map_err(|source| DirLockError::Create { dir: dir.to_path_buf(), source })?;
        let open = |source| DirLockError::Open { path: path.clone(), source };
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(open)?;
        // fs4's, not std's `File::try_lock`: that one needs Rust 1.89, and the
        // crate builds with 1.85 (Debian's).
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = (&file).take(32).read_to_string(&mut text);
                let pid = text.trim().parse::<u32>().map(|pid| format!(" (pid {pid})")).unwrap_or_default();
                return Err(DirLockError::InUse { dir: dir.to_path_buf(), pid });
            }
            Err(TryLockError::Error(err)) => {
                tracing::warn!(%err, path = %path.display(), "cannot lock the data dir: make sure no other server uses it");
                return Ok(Self { _file: None });
            }
        }
        // Only for the message a second server prints; the lock is what counts.
        let _ = file.set_len(0).and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()));
        Ok(Self { _file: Some(file) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = DirLock::acquire(&data).expect("a fresh dir is free");
        let err = DirLock::acquire(&data).expect_err("the dir is held");
        let msg = err.to_string();
        assert!(msg.contains("in use by another hookway server"), "{msg}");
        assert!(msg.contains(&format!("(pid {})", std::process::id())), "{msg}");
        drop(first);
        DirLock::acquire(&data).expect("free again once the holder is gone");
    }
}
