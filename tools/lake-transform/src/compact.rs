//! Compacting the local lakehouse file: `maintain` copies it into a new file and renames
//! that over it. DuckDB reuses the blocks a run frees but never returns them, so the
//! file grows past its contents with every release (~50 MB a release at the
//! all-commodities size, for ~21 MB of data); a copy holds only the contents.
//!
//! Under the lakehouse lock, no reader or writer has the file open. The copy is checked
//! against the original (every table with its columns and row count, every view with its
//! SQL) before it replaces it (lakehouse_file.rs: until the rename the original is
//! untouched, and a killed run leaves only a temp file, which the next removes).

use std::path::Path;

use anyhow::Context as _;
use duckdb::Connection;
use materia_common::duckdb_config::{self, sql_ident, sql_string};
use materia_common::exit::Integrity;
use materia_common::layout;

use crate::lakehouse_file::NewLakehouse;

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
    let new = NewLakehouse::start(path, "compact")?;
    conn.execute_batch("CHECKPOINT").context("checkpointing the lakehouse before the copy")?;
    let before = size(path)?;
    let catalog: String = conn.query_row("SELECT current_database()", [], |r| r.get(0))?;
    if let Err(e) = copy_and_verify(&conn, &catalog, new.tmp()) {
        // Detached before the temp file is removed, so DuckDB writes nothing there after.
        let _ = conn.execute_batch("DETACH DATABASE IF EXISTS materia_compact");
        return Err(whose_corrupt_block(&conn, &catalog, new.tmp(), e));
    }
    drop(conn);
    new.publish()?;
    Ok(Compacted { before, after: size(path)? })
}

fn copy_and_verify(conn: &Connection, catalog: &str, tmp: &Path) -> anyhow::Result<()> {
    let mut sql = format!(
        "ATTACH {} AS materia_compact {}; COPY FROM DATABASE {} TO materia_compact;",
        sql_string(&tmp.display().to_string()),
        duckdb_config::attach_options(duckdb_config::Write::Whole),
        sql_ident(catalog)
    );
    if std::env::var(layout::ENV_LAKE_TRANSFORM_FAULT).as_deref() == Ok("corrupt-compact-midway") {
        // Tests only: a block the copy wrote breaks on disk and the copy reads it back (as
        // DuckDB does with a block it evicted under memory pressure).
        conn.execute_batch(&format!(
            "ATTACH {} AS materia_compact; CREATE TABLE materia_compact.main.written AS SELECT * FROM {}.raw.psd; CHECKPOINT materia_compact;",
            sql_string(&tmp.display().to_string()),
            sql_ident(catalog)
        ))?;
        let ids: Vec<u64> = conn
            .prepare("SELECT DISTINCT block_id FROM pragma_storage_info('materia_compact.main.written') WHERE block_id >= 0")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let block_size: u64 =
            conn.query_row("SELECT block_size FROM pragma_database_size() WHERE database_name = 'materia_compact'", [], |r| r.get(0))?;
        conn.execute_batch("DETACH materia_compact")?;
        materia_common::fault::break_duckdb_blocks(tmp, block_size, &ids)?;
        sql.push_str("CREATE TABLE materia_compact.main.read_back AS SELECT * FROM materia_compact.main.written;");
    }
    conn.execute_batch(&sql).with_context(|| format!("copying the lakehouse into {}", tmp.display()))?;
    if std::env::var(layout::ENV_LAKE_TRANSFORM_FAULT).as_deref() == Ok("alter-compact") {
        // Tests only: make the copy differ from its original, as a failing disk or bug would.
        conn.execute_batch("DELETE FROM materia_compact.raw.psd WHERE rowid = 0")?;
    }
    verify(conn, catalog, "materia_compact")?;
    conn.execute_batch("CHECKPOINT materia_compact; DETACH materia_compact;").context("writing the copy")
}

/// The error `e` of a compaction: a corrupt block of the new file names its disk (exit 6,
/// the lakehouse left as it was, no rebuild named), not the lakehouse
/// (`lakehouse_target::whose_corrupt_block`, over every table of the lakehouse).
fn whose_corrupt_block(conn: &Connection, catalog: &str, tmp: &Path, e: anyhow::Error) -> anyhow::Error {
    let tables = conn
        .prepare("SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY 1, 2")
        .and_then(|mut st| st.query_map([catalog], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?.collect::<Result<Vec<_>, _>>());
    let Ok(tables) = tables else { return e };
    let names: Vec<String> = tables.iter().map(|(s, t)| format!("{}.{}.{}", sql_ident(catalog), sql_ident(s), sql_ident(t))).collect();
    materia_common::lakehouse_target::whose_corrupt_block(conn, &names, e, |e| {
        Integrity(format!(
            "the compacted copy reads back corrupt as it is written ({}); the lakehouse was left as it was (it is not at fault: check the disk under {})",
            materia_common::exit::one_line(e),
            tmp.parent().unwrap_or(Path::new(".")).display()
        ))
        .into()
    })
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
            let rows: i64 =
                conn.query_row(&format!("SELECT count(*) FROM {}.{}.{}", sql_ident(catalog), sql_ident(&schema), sql_ident(&table)), [], |r| {
                    r.get(0)
                })?;
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

fn size(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path).with_context(|| format!("reading the size of {}", path.display()))?.len())
}
