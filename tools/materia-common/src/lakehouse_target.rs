//! Where the lakehouse is (feature `duckdb`; lake-transform writes it, serve-export reads
//! it): the local file `DATA_DIR/lakehouse.duckdb` (the default), or a DuckLake
//! (`--lakehouse ducklake:postgres:CONNINFO`: its catalog in PostgreSQL, its data as
//! Parquet under `--lake-data-path`, on S3/R2), for when the data or its readers outgrow
//! one machine. Either way a connection opens with the lakehouse as its default catalog,
//! named `lakehouse`, so the models, the engine's state (`_materia`) and the audits run
//! unchanged; a run is one transaction, which on DuckLake is one snapshot.

use std::path::{Path, PathBuf};

use duckdb::Connection;

use crate::duckdb_config;
use crate::duckdb_config::sql_string as quote;
use crate::exit::Usage;
use crate::layout;

mod corrupt;
pub use corrupt::{FOUND_CORRUPT, says_corrupt, whose_corrupt_block};
use corrupt::{corrupt_file, file_error};

/// The S3 (R2) endpoint and credentials of a DuckLake's data path.
#[derive(Clone)]
pub struct S3 {
    /// `http(s)://host[:port]`.
    pub endpoint: String,
    /// Key id.
    pub key_id: String,
    /// Secret (never logged, never in argv: from the environment).
    pub secret: String,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3").field("endpoint", &self.endpoint).field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// The flags that say where the lakehouse is (lake-transform's and serve-export's).
#[derive(Debug, Clone, clap::Args)]
pub struct LakehouseArgs {
    /// Where the lakehouse is: unset, the local DATA_DIR/lakehouse.duckdb; or
    /// `ducklake:postgres:CONNINFO`, a DuckLake whose catalog is that PostgreSQL
    /// database (libpq's `dbname=… host=… user=…`; the password from PGPASSWORD).
    #[arg(long, global = true, value_name = "URL", env = layout::ENV_LAKEHOUSE)]
    pub lakehouse: Option<String>,

    /// A DuckLake's data files: `s3://BUCKET/PREFIX/` (endpoint and credentials from
    /// MATERIA_LAKE_S3_*) or a directory.
    #[arg(long, global = true, value_name = "PATH", env = layout::ENV_LAKE_DATA_PATH)]
    pub lake_data_path: Option<String>,
}

impl LakehouseArgs {
    /// The lakehouse these flags name (`file`: the local one's path).
    pub fn lakehouse(&self, file: PathBuf, dev: Option<&'static str>) -> anyhow::Result<Lakehouse> {
        Lakehouse::new(self.lakehouse.as_deref(), self.lake_data_path.as_deref(), file, dev)
    }
}

/// Where the lakehouse is, and a development build's extension directory (the tool's
/// `option_env!("MATERIA_DEV_DUCKDB_EXTENSIONS")`; None in a release build).
#[derive(Debug, Clone)]
pub struct Lakehouse {
    /// Where.
    pub target: Target,
    dev: Option<&'static str>,
}

/// Where the lakehouse is.
#[derive(Debug, Clone)]
pub enum Target {
    /// The local DuckDB file.
    File(PathBuf),
    /// A DuckLake: a libpq connection string for its PostgreSQL catalog, and its data path.
    DuckLake {
        /// `dbname=… host=… user=…` (a password comes from PGPASSWORD, not from here).
        catalog: String,
        /// `s3://bucket/prefix/` (or a local directory).
        data_path: String,
        /// Credentials for an S3 data path.
        s3: Option<S3>,
    },
}

impl Lakehouse {
    /// From `--lakehouse` (None: the local file) and `--lake-data-path`; the S3
    /// credentials come from the environment only.
    pub fn new(url: Option<&str>, data_path: Option<&str>, file: PathBuf, dev: Option<&'static str>) -> anyhow::Result<Lakehouse> {
        Ok(Lakehouse { target: Target::new(url, data_path, file)?, dev })
    }
}

impl Target {
    fn new(url: Option<&str>, data_path: Option<&str>, file: PathBuf) -> anyhow::Result<Target> {
        let Some(url) = url.filter(|u| !u.is_empty()) else {
            return Ok(Target::File(file));
        };
        let Some(catalog) = url.strip_prefix("ducklake:postgres:") else {
            return Err(Usage(format!("--lakehouse {url:?}: expected ducklake:postgres:CONNINFO (or unset, for the local file)")).into());
        };
        if catalog.split_whitespace().any(|kv| kv.starts_with("password=")) {
            return Err(Usage("--lakehouse: a password does not belong in the URL (it would show in ps and logs): set PGPASSWORD".into()).into());
        }
        let Some(data_path) = data_path.filter(|d| !d.is_empty()) else {
            return Err(
                Usage(format!("--lakehouse {url:?} needs --lake-data-path (or {}), e.g. s3://bucket/lake/", layout::ENV_LAKE_DATA_PATH)).into()
            );
        };
        let data_path = if data_path.ends_with('/') { data_path.to_owned() } else { format!("{data_path}/") };
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let s3 = match (var(layout::ENV_LAKE_S3_ENDPOINT), var(layout::ENV_LAKE_S3_KEY_ID), var(layout::ENV_LAKE_S3_SECRET)) {
            (Some(endpoint), Some(key_id), Some(secret)) => Some(S3 { endpoint, key_id, secret }),
            (None, None, None) => None,
            _ => {
                return Err(Usage(format!(
                    "{}, {} and {} go together (the data path's S3 endpoint and credentials)",
                    layout::ENV_LAKE_S3_ENDPOINT,
                    layout::ENV_LAKE_S3_KEY_ID,
                    layout::ENV_LAKE_S3_SECRET
                ))
                .into());
            }
        };
        if data_path.starts_with("s3://") && s3.is_none() {
            return Err(Usage(format!("--lake-data-path {data_path}: set {} and its credentials", layout::ENV_LAKE_S3_ENDPOINT)).into());
        }
        Ok(Target::DuckLake { catalog: catalog.to_owned(), data_path, s3 })
    }
}

impl Lakehouse {
    /// For logs: where it is, without credentials.
    pub fn describe(&self) -> String {
        match &self.target {
            Target::File(p) => p.display().to_string(),
            Target::DuckLake { catalog, data_path, .. } => format!("DuckLake (catalog {catalog}, data {data_path})"),
        }
    }

    /// Open it read-only, if there is one yet (a plan touches nothing: it does not create
    /// a file, nor a DuckLake's catalog tables).
    pub fn open_existing(&self) -> anyhow::Result<Option<Connection>> {
        self.open_if_exists(true)
    }

    /// Open it for writing, if there is one yet, in one attach (`maintain` never creates
    /// a lake: a missing one is an error, as a missing file).
    pub fn open_existing_writable(&self) -> anyhow::Result<Option<Connection>> {
        self.open_if_exists(false)
    }

    fn open_if_exists(&self, read_only: bool) -> anyhow::Result<Option<Connection>> {
        match &self.target {
            Target::File(p) if !p.exists() => Ok(None),
            Target::File(_) => self.open_as(read_only, false).map(Some),
            // DuckLake says so only in words (pinned by the tests of plan and maintain).
            Target::DuckLake { .. } => match self.open_as(read_only, false) {
                Err(e) if e.to_string().contains("creating a new DuckLake is explicitly disabled") => Ok(None),
                other => other.map(Some),
            },
        }
    }

    /// Does `e` say DuckDB found the local file corrupt (opening it or reading a block)?
    pub fn is_corrupt(&self, e: &anyhow::Error) -> bool {
        matches!(self.target, Target::File(_)) && says_corrupt(e)
    }

    /// `e`, or, when it says DuckDB found the local file corrupt while a tool read it, an
    /// [`Integrity`](crate::exit::Integrity) failure (exit 6) naming the fix, as an open that finds it corrupt
    /// returns. A DuckLake's errors as they are.
    pub fn corrupt(&self, e: anyhow::Error) -> anyhow::Error {
        match &self.target {
            Target::File(path) => corrupt_file(path, e),
            Target::DuckLake { .. } => e,
        }
    }

    /// Is it a DuckLake?
    pub fn is_ducklake(&self) -> bool {
        matches!(self.target, Target::DuckLake { .. })
    }

    /// Attach it read-only to `conn` as `lakehouse`, for a reader: a DuckLake at its
    /// current snapshot, pinned (every later read sees that one snapshot, whatever
    /// commits meanwhile); returns the snapshot's id (None for the local file).
    pub fn attach_read(&self, conn: &Connection) -> anyhow::Result<Option<i64>> {
        match &self.target {
            Target::File(path) => {
                conn.execute_batch(&format!("ATTACH {} AS lakehouse (READ_ONLY)", quote(&path.display().to_string())))
                    .map_err(|e| file_error(path, format!("attaching {} read-only", path.display()), e))?;
                Ok(None)
            }
            Target::DuckLake { catalog, data_path, s3 } => {
                self.prepare_ducklake(conn, data_path, s3.as_ref())?;
                let url = quote(&format!("ducklake:postgres:{catalog}"));
                let attach = |options: &str| {
                    conn.execute_batch(&format!("ATTACH {url} AS lakehouse ({options})")).map_err(|e| {
                        anyhow::anyhow!("attaching the DuckLake (catalog {catalog}) read-only: {}", e.to_string().lines().next().unwrap_or_default())
                    })
                };
                attach("READ_ONLY")?;
                let snapshot: i64 = conn.query_row("SELECT id FROM ducklake_current_snapshot('lakehouse')", [], |r| r.get(0))?;
                conn.execute_batch("DETACH lakehouse")?;
                attach(&format!("READ_ONLY, SNAPSHOT_VERSION {snapshot}"))?;
                Ok(Some(snapshot))
            }
        }
    }

    /// The extensions and the data path's S3 secret, on `conn`.
    fn prepare_ducklake(&self, conn: &Connection, data_path: &str, s3: Option<&S3>) -> anyhow::Result<()> {
        for ext in duckdb_config::EXTENSIONS {
            duckdb_config::load(conn, ext, self.dev)?;
        }
        if let Some(s3) = s3 {
            let (ssl, host) = match s3.endpoint.split_once("://") {
                Some(("http", host)) => (false, host),
                Some((_, host)) => (true, host),
                None => (true, s3.endpoint.as_str()),
            };
            // The statement holds the secret: it is never logged (nor its error's text).
            conn.execute_batch(&format!(
                "CREATE SECRET lake_data (TYPE s3, KEY_ID {}, SECRET {}, REGION 'auto', ENDPOINT {}, URL_STYLE 'path', USE_SSL {ssl}, SCOPE {})",
                quote(&s3.key_id),
                quote(&s3.secret),
                quote(host.trim_end_matches('/')),
                quote(data_path)
            ))
            .map_err(|_| anyhow::anyhow!("the S3 credentials of {data_path} were refused by DuckDB"))?;
        }
        Ok(())
    }

    /// Open it as the default catalog `lakehouse` (creating a new one on first use).
    pub fn open(&self, read_only: bool) -> anyhow::Result<Connection> {
        self.open_as(read_only, !read_only)
    }

    /// Open it for writing, as [`open`](Self::open), but not a local file that is not
    /// there yet (nor its WAL, nor a symlink to it): `None`, for a writer that then
    /// builds a whole new file, so nothing is created before it (a DuckLake is opened,
    /// and created on first use).
    pub fn open_unless_new(&self) -> anyhow::Result<Option<Connection>> {
        match &self.target {
            Target::File(path) if !present(path) && !present(&duckdb_config::wal_path(path)) => Ok(None),
            _ => self.open(false).map(Some),
        }
    }

    /// `create`: a DuckLake's catalog tables may be created (a read-only attach never
    /// creates them; the local file is created by the write that needs it).
    fn open_as(&self, read_only: bool, create: bool) -> anyhow::Result<Connection> {
        let cfg = duckdb_config::config(self.dev)?;
        match &self.target {
            Target::File(path) => {
                if read_only {
                    Connection::open_with_flags(path, cfg.access_mode(duckdb::AccessMode::ReadOnly)?)
                        .map_err(|e| file_error(path, format!("opening {} read-only", path.display()), e))
                } else {
                    duckdb_config::open_lakehouse_file(path, cfg, duckdb_config::Write::Add)
                        .map_err(|e| file_error(path, format!("opening {}", path.display()), e))
                }
            }
            Target::DuckLake { catalog, data_path, s3 } => {
                let conn = Connection::open_in_memory_with_flags(cfg)?;
                self.prepare_ducklake(&conn, data_path, s3.as_ref())?;
                let mode = match (read_only, create) {
                    (true, _) => ", READ_ONLY",
                    (false, true) => "",
                    (false, false) => ", CREATE_IF_NOT_EXISTS false",
                };
                conn.execute_batch(&format!(
                    "ATTACH {} AS lakehouse (DATA_PATH {}{mode}); USE lakehouse;",
                    quote(&format!("ducklake:postgres:{catalog}")),
                    quote(data_path)
                ))
                .map_err(|e| {
                    anyhow::anyhow!(
                        "attaching the DuckLake (catalog {catalog}, data {data_path}): {}",
                        e.to_string().lines().next().unwrap_or_default()
                    )
                })?;
                Ok(conn)
            }
        }
    }

    /// What a model's SQL may read besides the landing dir: a DuckLake's data path (its
    /// own Parquet files, which DuckDB reads and writes for it).
    pub fn data_paths(&self) -> Vec<String> {
        match &self.target {
            Target::File(_) => Vec::new(),
            Target::DuckLake { data_path, .. } => vec![data_path.clone()],
        }
    }
}

/// Is there anything at `path` (a dangling symlink counts: opening it creates its target)?
fn present(path: &Path) -> bool {
    !matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// The DuckLake writer lock's key: a PostgreSQL advisory lock in the catalog's database
/// (advisory locks are per database, so one key serves every lake).
pub const WRITER_LOCK_KEY: i64 = 0x4d41_5445_5249_4131; // "MATERIA1"

/// A DuckLake's writer lock, which every machine sees: a PostgreSQL transaction-scoped
/// advisory lock, taken by a connection of its own and held by its open transaction until
/// this is dropped, so it covers the whole run including the lake's commit. If the
/// process dies, PostgreSQL ends its session and the lock with it.
pub struct WriterLock {
    conn: Connection,
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        let _ = self.conn.execute_batch("ROLLBACK");
    }
}

impl Lakehouse {
    /// Take the lake's writer lock (None for the local file: its lock file serves),
    /// waiting up to `wait` for another writer to finish; else exit 4, as for the file's.
    pub fn writer_lock(&self, wait: std::time::Duration) -> anyhow::Result<Option<WriterLock>> {
        let Target::DuckLake { catalog, .. } = &self.target else { return Ok(None) };
        let conn = Connection::open_in_memory_with_flags(duckdb_config::config(self.dev)?)?;
        duckdb_config::load(&conn, "postgres_scanner", self.dev)?;
        conn.execute_batch(&format!("ATTACH {} AS materia_lock (TYPE postgres); BEGIN TRANSACTION;", quote(catalog)))
            .map_err(|e| anyhow::anyhow!("connecting to the DuckLake's catalog {catalog}: {}", e.to_string().lines().next().unwrap_or_default()))?;
        let lock = WriterLock { conn };
        let start = std::time::Instant::now();
        loop {
            let got: bool = lock.conn.query_row(
                &format!("SELECT got FROM postgres_query('materia_lock', 'SELECT pg_try_advisory_xact_lock({WRITER_LOCK_KEY}) AS got')"),
                [],
                |r| r.get(0),
            )?;
            if got {
                return Ok(Some(lock));
            }
            if start.elapsed() >= wait {
                return Err(crate::lock::LockError::HeldElsewhere {
                    what: format!("the DuckLake's writer lock (PostgreSQL advisory lock {WRITER_LOCK_KEY} in {catalog})"),
                    waited: wait,
                }
                .into());
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let file = PathBuf::from("/d/lakehouse.duckdb");
        assert!(matches!(Target::new(None, None, file.clone()).unwrap(), Target::File(_)));
        let t = Target::new(Some("ducklake:postgres:dbname=lake host=db"), Some("/srv/lake"), file.clone()).unwrap();
        assert!(matches!(&t, Target::DuckLake { data_path, .. } if data_path == "/srv/lake/"));
        let err = |url: &str, data: Option<&str>| Target::new(Some(url), data, file.clone()).unwrap_err().to_string();
        assert!(err("postgres://x", Some("/l")).contains("expected ducklake:postgres:CONNINFO"));
        assert!(err("ducklake:postgres:dbname=x password=hunter2", Some("/l")).contains("set PGPASSWORD"));
        assert!(err("ducklake:postgres:dbname=x", None).contains("needs --lake-data-path"));
    }
}
