//! Compacting the local lakehouse file: `maintain` copies it into a new file and renames
//! that over it. DuckDB reuses the blocks a run frees but never returns them, so the
//! file grows past its contents with every release (~50 MB a release at the
//! all-commodities size, for ~21 MB of data); a copy holds only the contents.
//!
//! Under the lakehouse lock, no reader or writer has the file open. The copy is checked
//! against the original (every table with its columns and row count, every view with its
//! SQL) before it replaces it; until the rename the original is untouched, and a killed
//! run leaves only a temp file, which the next `maintain` removes.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use duckdb::Connection;
use materia_common::duckdb_config::sql_string;
use materia_common::exit::Integrity;
use materia_common::layout;

/// Temp copies start with this, beside the lakehouse (DuckDB adds `.wal` to its own).
const TMP_PREFIX: &str = ".lakehouse.compact-tmp-";

/// What a compaction did, in bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Compacted {
    /// The file's size before (after the checkpoint that folds in its WAL).
    pub before: u64,
    /// The new file's size.
    pub after: u64,
}

/// Copy the lakehouse `conn` has open (the file at `path`) into a new file, check it, and
/// rename it over `path`. Consumes the connection: the original must be closed (and its
/// WAL folded in) before the rename.
pub(crate) fn compact(conn: Connection, path: &Path) -> anyhow::Result<Compacted> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    sweep(dir)?;
    conn.execute_batch("CHECKPOINT").context("checkpointing the lakehouse before the copy")?;
    let before = size(path)?;
    let tmp = dir.join(format!("{TMP_PREFIX}{}", std::process::id()));
    let guard = TempGuard(tmp.clone());
    let catalog: String = conn.query_row("SELECT current_database()", [], |r| r.get(0))?;
    if let Err(e) = copy_and_verify(&conn, &catalog, &tmp) {
        // Detached before the guard removes it, so DuckDB writes nothing there after.
        let _ = conn.execute_batch("DETACH DATABASE IF EXISTS materia_compact");
        return Err(e);
    }
    drop(conn);
    // DuckDB folds the WAL into the file when it closes it; a WAL still there would be
    // replayed onto the new file at the next open.
    if wal(path).exists() {
        return Err(Integrity(format!("{} still has a WAL after it was closed; the lakehouse was left as it was", path.display())).into());
    }
    if wal(&tmp).exists() {
        return Err(Integrity(format!("the copy {} was left with a WAL after its checkpoint", tmp.display())).into());
    }
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("fsync {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    guard.disarm();
    materia_common::atomic::sync_dir(dir)?;
    Ok(Compacted { before, after: size(path)? })
}

fn copy_and_verify(conn: &Connection, catalog: &str, tmp: &Path) -> anyhow::Result<()> {
    conn.execute_batch(&format!(
        "ATTACH {} AS materia_compact; COPY FROM DATABASE \"{}\" TO materia_compact;",
        sql_string(&tmp.display().to_string()),
        catalog.replace('"', "\"\"")
    ))
    .with_context(|| format!("copying the lakehouse into {}", tmp.display()))?;
    if std::env::var(layout::ENV_LAKE_TRANSFORM_FAULT).as_deref() == Ok("alter-compact") {
        // Tests only: make the copy differ from its original, as a failing disk or bug would.
        conn.execute_batch("DELETE FROM materia_compact.raw.psd WHERE rowid = 0")?;
    }
    verify(conn, catalog, "materia_compact")?;
    conn.execute_batch("CHECKPOINT materia_compact; DETACH materia_compact;").context("writing the copy")
}

/// Every table (columns, types, rows) and view (SQL) of `a` is in `b`, and nothing else.
fn verify(conn: &Connection, a: &str, b: &str) -> anyhow::Result<()> {
    let inventory = |catalog: &str| -> anyhow::Result<Vec<String>> {
        let mut st = conn.prepare(
            "SELECT 'table ' || c.schema_name || '.' || c.table_name || ' ('
                    || string_agg(c.column_name || ' ' || c.data_type, ', ' ORDER BY c.column_index) || ')'
             FROM duckdb_columns() c
             JOIN duckdb_tables() t USING (database_name, schema_name, table_name)
             WHERE c.database_name = ?
             GROUP BY c.schema_name, c.table_name
             UNION ALL
             SELECT 'view ' || schema_name || '.' || view_name || ': ' || sql FROM duckdb_views() WHERE database_name = ? AND NOT internal
             ORDER BY 1",
        )?;
        let mut items: Vec<String> = st.query_map([catalog, catalog], |r| r.get(0))?.collect::<Result<_, _>>()?;
        let mut tables = conn.prepare("SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY 1, 2")?;
        let names: Vec<(String, String)> = tables.query_map([catalog], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        for (schema, table) in names {
            let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            let rows: i64 = conn.query_row(&format!("SELECT count(*) FROM {}.{}.{}", q(catalog), q(&schema), q(&table)), [], |r| r.get(0))?;
            items.push(format!("rows {schema}.{table}: {rows}"));
        }
        Ok(items)
    };
    let (want, got) = (inventory(a)?, inventory(b)?);
    if want != got {
        let diff = want
            .iter()
            .find(|w| !got.contains(w))
            .map(|w| format!("the lakehouse has {w}; the copy does not"))
            .or_else(|| got.iter().find(|g| !want.contains(g)).map(|g| format!("the copy has {g}; the lakehouse does not")))
            .unwrap_or_default();
        return Err(Integrity(format!("the compacted copy did not verify: {diff}; the lakehouse was left as it was")).into());
    }
    Ok(())
}

/// Remove the temp copies a killed `maintain` left (we hold the lakehouse lock).
fn sweep(dir: &Path) -> anyhow::Result<()> {
    for e in materia_common::read_dir_or_empty(dir)? {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(TMP_PREFIX) {
            log::warn!("removing {name}, left by an interrupted maintain");
            std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(())
}

fn size(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path).with_context(|| format!("reading the size of {}", path.display()))?.len())
}

fn wal(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".wal");
    PathBuf::from(s)
}

/// Removes the temp copy (and its WAL) unless disarmed.
struct TempGuard(PathBuf);

impl TempGuard {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_file(wal(&self.0));
    }
}
