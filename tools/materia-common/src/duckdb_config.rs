//! How every tool opens DuckDB (feature `duckdb`): extensions come only from an offline
//! directory, never from DuckDB's server at run time (a hardened unit cannot reach it,
//! and a tool must not depend on it). scripts/duckdb-lib.sh lays the pinned, signed
//! builds out in DuckDB's own layout (`DIR/v<version>/linux_amd64/<name>.duckdb_extension`,
//! under the library's dir as `extensions/`); tag-deploy ships them in a release's
//! `lib/extensions/`, beside `libduckdb.so`.

use std::path::PathBuf;

use crate::layout::ENV_DUCKDB_EXTENSIONS;

/// The WAL DuckDB keeps beside the database file `path` (its path with `.wal` added).
pub fn wal_path(path: &std::path::Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".wal");
    PathBuf::from(s)
}

/// `s` as a quoted SQL identifier (double quotes doubled), for the catalog, schema and
/// table names the tools splice into DuckDB statements.
pub fn sql_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `s` as a SQL string literal (single quotes doubled), for the paths and settings the
/// tools splice into DuckDB statements.
pub fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// How a lakehouse file is written: the row groups a run adds to it are of
/// [`ROW_GROUP_SIZE`] rows; a new file written whole (a full build, a compaction's copy)
/// keeps DuckDB's default (122,880), a 100-release coffee build being ~2 % faster so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// A run adding to the lakehouse.
    Add,
    /// A new file, written whole.
    Whole,
}

/// Rows per row group a run adds to the lakehouse file. A release of coffee is 78k rows:
/// with DuckDB's default, an append went into the table's partly filled last row group
/// through the WAL, and the commit's checkpoint compressed those rows and rewrote that row
/// group whole (0.24 s of a 0.7 s run); with smaller row groups the insert writes the full
/// ones itself, and the commit is a few milliseconds. DuckDB keeps it per attach, not in
/// the file, so every run opens the file through [`open_lakehouse_file`] (a reader does
/// not need it).
pub const ROW_GROUP_SIZE: u32 = 16_384;

/// The storage format the lakehouse file is written in. DuckDB's default is still the
/// 1.0 format (readable by every DuckDB since 1.0), whose string segments are a
/// dictionary, or FSST-compressed; from the 1.3 format on they are `DICT_FSST`, a
/// dictionary that FSST compresses, which DuckDB writes faster (measured: `raw.psd` of 100
/// coffee releases 4.1 instead of 5.05 s, a first build 9.4 → 7.8 s, a coffee release
/// 0.52 → 0.42 s, the file no larger). A file in the older format is upgraded when a run
/// attaches it (its new segments are written in this one); DuckDB ≥ 1.5.0 opens it
/// then, and every tool and benchmark pins 1.5.5. The web app reads analytics.duckdb,
/// which serve-export writes in DuckDB's default format.
pub const STORAGE_VERSION: &str = "v1.5.0";

/// The `ATTACH` options of a lakehouse file written as `write` says.
pub fn attach_options(write: Write) -> String {
    let version = sql_string(STORAGE_VERSION);
    match write {
        Write::Add => format!("(STORAGE_VERSION {version}, ROW_GROUP_SIZE {ROW_GROUP_SIZE})"),
        Write::Whole => format!("(STORAGE_VERSION {version})"),
    }
}

/// Open the DuckDB file `path` (created if missing) to write it as `write` says, as the
/// default catalog `lakehouse`, in [`STORAGE_VERSION`]'s format.
pub fn open_lakehouse_file(path: &std::path::Path, cfg: duckdb::Config, write: Write) -> duckdb::Result<duckdb::Connection> {
    let conn = duckdb::Connection::open_in_memory_with_flags(cfg)?;
    let options = attach_options(write);
    conn.execute_batch(&format!("ATTACH {} AS lakehouse {options}; USE lakehouse;", sql_string(&path.display().to_string())))?;
    Ok(conn)
}

/// The extensions a lakehouse on DuckLake loads (a PostgreSQL catalog, S3/R2 data).
pub const EXTENSIONS: &[&str] = &["ducklake", "postgres_scanner", "httpfs"];

/// The offline extension directory: `MATERIA_DUCKDB_EXTENSIONS`; else the release's
/// `lib/extensions`, beside the `bin/` this binary is in; else `dev`, a development
/// build's own copy (the tools' build script passes it to non-release builds only, so
/// no path of the build machine is in a release).
pub fn extension_dir(dev: Option<&str>) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(ENV_DUCKDB_EXTENSIONS).filter(|d| !d.is_empty()) {
        return Some(dir.into());
    }
    let exe = std::env::current_exe().ok()?;
    let release = exe.parent()?.parent()?.join("lib/extensions");
    if release.is_dir() {
        return Some(release);
    }
    dev.map(PathBuf::from)
}

/// A DuckDB config for every connection a tool opens: extensions load (automatically,
/// when a statement needs one) from [`extension_dir`] and are never downloaded; no
/// community extensions. DuckDB reads the directory from the config at open: a later
/// `SET` is not seen by every extension (shared/notes/ducklake.md).
pub fn config(dev: Option<&str>) -> duckdb::Result<duckdb::Config> {
    let mut cfg = duckdb::Config::default()
        .with("autoinstall_known_extensions", "false")?
        .with("autoload_known_extensions", "true")?
        .with("allow_community_extensions", "false")?;
    if let Some(dir) = extension_dir(dev) {
        cfg = cfg.with("extension_directory", dir.display().to_string())?;
    }
    Ok(cfg)
}

/// Load `name` from the offline directory, or fail with one line naming the fix.
pub fn load(conn: &duckdb::Connection, name: &str, dev: Option<&str>) -> anyhow::Result<()> {
    conn.execute_batch(&format!("LOAD {name}")).map_err(|e| {
        let version: String = conn.query_row("SELECT library_version FROM pragma_version()", [], |r| r.get(0)).unwrap_or_default();
        let place = match extension_dir(dev) {
            Some(dir) => format!("{}/{version}/linux_amd64", dir.display()),
            None => format!("any extension directory (set {ENV_DUCKDB_EXTENSIONS})"),
        };
        let cause = e.to_string();
        anyhow::anyhow!(
            "DuckDB extension {name} is not in {place} (no tool downloads extensions): run scripts/setup-dev.sh, or on a server infra/setup_server.sh ({})",
            cause.lines().next().unwrap_or_default()
        )
    })
}

/// Let `conn`'s DuckDB spill to `dir` (absolute) past its memory limit instead of
/// failing, after removing the spill files a killed run left there (only DuckDB's,
/// `duckdb_temp*` at the top: whatever else the dir holds stays). The caller holds the
/// lock of the one step that spills there, so no running DuckDB owns those files.
pub fn spill_to(conn: &duckdb::Connection, dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating the spill dir {}", dir.display()))?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading the spill dir {}", dir.display()))? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("duckdb_temp")) && path.is_file() {
            std::fs::remove_file(&path).with_context(|| format!("removing a stale spill file {}", path.display()))?;
            log::info!("removed {} (spilled by a run that did not finish)", path.display());
        }
    }
    conn.execute_batch(&format!("SET temp_directory = {}", sql_string(&dir.display().to_string()))).context("setting DuckDB's spill dir")
}
