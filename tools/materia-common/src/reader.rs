//! The reader contract for `analytics.duckdb` (feature `reader`).
//!
//! serve-export replaces the file by atomic rename. A DuckDB handle keeps reading the
//! inode it opened, so a reader must notice the new file and reopen:
//!
//! 1. open the file read-only;
//! 2. before each query, `stat` the path; when the inode (or device) differs from the
//!    one the handle was opened on, drop every handle on the old file and reopen;
//! 3. one [`AnalyticsReader`] per thread (each holds its own connection).
//!
//! A reader never blocks serve-export (the rename does not wait for readers) and never
//! sees a torn file (the file under the name is always complete). The same steps work
//! from Python: `os.stat(path).st_ino` before each query, `duckdb.connect(path,
//! read_only=True)` anew when it changed, after closing the old connection.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// A failure to open or query the analytics file.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// The file cannot be stat'ed (not published yet?).
    #[error("{}: {source}", path.display())]
    Stat {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// DuckDB refused to open it.
    #[error("opening {} read-only: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: duckdb::Error,
    },
}

/// One thread's view of `analytics.duckdb`, reopened whenever the file is replaced.
#[derive(Debug)]
pub struct AnalyticsReader {
    path: PathBuf,
    open: Option<(duckdb::Connection, (u64, u64))>,
    reopens: u64,
}

impl AnalyticsReader {
    /// A reader of `path`; nothing is opened until the first [`connection`](Self::connection).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), open: None, reopens: 0 }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many times the file was (re)opened.
    pub fn opens(&self) -> u64 {
        self.reopens
    }

    /// A connection to the file as it is now: call before every query.
    pub fn connection(&mut self) -> Result<&duckdb::Connection, ReaderError> {
        let meta = std::fs::metadata(&self.path).map_err(|source| ReaderError::Stat { path: self.path.clone(), source })?;
        let id = (meta.dev(), meta.ino());
        if self.open.as_ref().is_none_or(|(_, open_id)| *open_id != id) {
            // Close the old handle first: an open handle keeps the old file alive.
            self.open = None;
            let cfg = duckdb::Config::default()
                .access_mode(duckdb::AccessMode::ReadOnly)
                .map_err(|source| ReaderError::Open { path: self.path.clone(), source })?;
            let conn =
                duckdb::Connection::open_with_flags(&self.path, cfg).map_err(|source| ReaderError::Open { path: self.path.clone(), source })?;
            self.reopens += 1;
            self.open = Some((conn, id));
        }
        Ok(&self.open.as_ref().expect("opened above").0)
    }
}
