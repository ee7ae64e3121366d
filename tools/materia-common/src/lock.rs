//! Exclusive per-step locks: `flock(2)` on a lock file that holds the owner's pid.
//!
//! The kernel releases the lock when the process exits, however it exits (`kill -9`
//! included), so a lock can never be left stale. The file itself is never deleted:
//! deleting a flock'ed file lets two processes each lock a different inode.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it (and still did after waiting, if asked to wait).
    #[error("already running (pid {pid}){}", waited_msg(*.waited))]
    Held {
        /// The holder's pid as written in the lock file (`?` when it could not be read).
        pid: String,
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// Another writer, possibly on another machine, holds a lock kept elsewhere (a
    /// DuckLake's writer lock, in its PostgreSQL catalog).
    #[error("{what} is held by another writer{}", waited_msg(*.waited))]
    HeldElsewhere {
        /// Which lock.
        what: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn waited_msg(waited: Duration) -> String {
    if waited.is_zero() { String::new() } else { format!("; gave up after waiting {} s", waited.as_secs()) }
}

impl LockError {
    /// True when another process holds the lock.
    pub fn is_held(&self) -> bool {
        matches!(self, LockError::Held { .. } | LockError::HeldElsewhere { .. })
    }
}

/// A held lock; released on drop (or when the process dies).
#[derive(Debug)]
pub struct Lock {
    _file: File,
    path: PathBuf,
}

impl Lock {
    /// Take the lock at `path`, waiting up to `wait` for another holder to finish.
    /// Creates the parent directory if needed.
    pub fn acquire(path: &Path, wait: Duration) -> Result<Lock, LockError> {
        let io = |source| LockError::Io { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        let start = Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    if start.elapsed() >= wait {
                        return Err(LockError::Held { pid: read_pid(&mut file), path: path.to_owned(), waited: wait });
                    }
                    std::thread::sleep(Duration::from_millis(50).min(wait.saturating_sub(start.elapsed())));
                }
                Err(TryLockError::Error(e)) => return Err(io(e)),
            }
        }
        // We own it: record our pid for whoever finds it held.
        let record = (|| {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())?;
            file.sync_data()
        })();
        record.map_err(io)?;
        Ok(Lock { _file: file, path: path.to_owned() })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lakehouse lock (`DATA_DIR/lakehouse.duckdb.lock`), besides the step's own: whoever
/// holds it may open `lakehouse.duckdb` (lake-transform to write, serve-export to read).
/// DuckDB lets one process open a file read-write, or several read-only, never both.
pub fn lakehouse(layout: &crate::Layout, wait: Duration) -> anyhow::Result<Lock> {
    let path = layout.lakehouse_lock();
    Lock::acquire(&path, wait).map_err(|e| anyhow::Error::new(e).context(format!("the lakehouse is held by another writer ({})", path.display())))
}

fn read_pid(file: &mut File) -> String {
    // The holder writes its pid right after locking; give it a moment if we are early.
    for _ in 0..20 {
        let mut s = String::new();
        if file.seek(SeekFrom::Start(0)).is_ok() && file.read_to_string(&mut s).is_ok() {
            let s = s.trim();
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                return s.to_owned();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    "?".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("locks/x.lock");
        let first = Lock::acquire(&path, Duration::ZERO).unwrap();
        let err = Lock::acquire(&path, Duration::ZERO).unwrap_err();
        assert!(err.is_held());
        assert_eq!(err.to_string(), format!("already running (pid {})", std::process::id()));
        let err = Lock::acquire(&path, Duration::from_millis(120)).unwrap_err();
        assert!(err.to_string().contains("gave up after waiting"), "{err}");
        drop(first);
        Lock::acquire(&path, Duration::ZERO).unwrap();
    }

    #[test]
    fn waiting_succeeds_once_the_holder_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = Lock::acquire(&path, Duration::ZERO).unwrap();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        Lock::acquire(&path, Duration::from_secs(10)).unwrap();
        t.join().unwrap();
    }
}
