//! The copy: every `serving.*` table of the attached lakehouse into a new file beside
//! `analytics.duckdb`, with its `_meta`, and the check that the file, read back, holds
//! what the lakehouse had.

use std::path::Path;

use anyhow::Context as _;
use duckdb::Connection;
use materia_common::duckdb_config::{self, sql_ident, wal_path as wal};
use materia_common::exit::Integrity;
use materia_common::{lakehouse, layout};

/// A serving table as the lakehouse has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Table {
    pub name: String,
    pub columns: Vec<(String, String)>,
    pub rows: i64,
}

/// `p` as a SQL string literal.
pub(crate) fn sql_str(p: &Path) -> String {
    duckdb_config::sql_string(&p.display().to_string())
}

/// The lakehouse's serving tables (a view there is named, and left out).
pub(crate) fn source_tables(db: &Connection) -> anyhow::Result<Vec<Table>> {
    let mut views = db.prepare("SELECT view_name FROM duckdb_views() WHERE database_name = 'lakehouse' AND schema_name = ? ORDER BY 1")?;
    for v in views.query_map([lakehouse::SERVING_SCHEMA], |r| r.get::<_, String>(0))? {
        log::warn!("serving.{} is a view: only tables are exported", v?);
    }
    serving_tables(db, "lakehouse")
}

/// Every serving table of `catalog`, by name: its columns and its row count (two queries
/// in all, not two a table).
fn serving_tables(db: &Connection, catalog: &str) -> anyhow::Result<Vec<Table>> {
    let mut st = db.prepare(
        "SELECT t.table_name, c.column_name, c.data_type
         FROM duckdb_tables() t JOIN duckdb_columns() c USING (database_name, schema_name, table_name)
         WHERE t.database_name = ? AND t.schema_name = ? ORDER BY t.table_name, c.column_index",
    )?;
    let mut tables: Vec<Table> = Vec::new();
    for row in st.query_map([catalog, lakehouse::SERVING_SCHEMA], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))? {
        let (table, column, data_type) = row?;
        match tables.last_mut() {
            Some(t) if t.name == table => t.columns.push((column, data_type)),
            _ => tables.push(Table { name: table, columns: vec![(column, data_type)], rows: 0 }),
        }
    }
    if tables.is_empty() {
        return Ok(tables);
    }
    let counts = tables
        .iter()
        .enumerate()
        .map(|(i, t)| format!("SELECT {i} AS i, count(*) AS n FROM {}.serving.{}", sql_ident(catalog), sql_ident(&t.name)))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let mut st = db.prepare(&counts)?;
    for row in st.query_map([], |r| Ok((r.get::<_, usize>(0)?, r.get::<_, i64>(1)?)))? {
        let (i, n) = row?;
        tables[i].rows = n;
    }
    Ok(tables)
}

/// `snapshot`: the DuckLake snapshot read (`_meta.lakehouse_snapshot`; NULL for the file).
pub(crate) fn copy(db: &Connection, tmp: &Path, tables: &[Table], export_id: &str, state: &str, snapshot: Option<i64>) -> anyhow::Result<()> {
    let contents = serde_json::Value::Object(tables.iter().map(|t| (t.name.clone(), serde_json::Value::from(t.rows))).collect());
    // FSST off: in the file's format (DuckDB's default, which any reader opens) a plain
    // dictionary wins for every string column here, so trying FSST on each segment only
    // costs time (a 24-release all-commodities export 2.4–2.6 → 2.1–2.2 s, the same bytes).
    // One transaction: one commit (one WAL sync) for the whole copy, not one a table.
    let mut sql =
        format!("SET disabled_compression_methods = 'fsst'; ATTACH {} AS export_target; BEGIN; CREATE SCHEMA export_target.serving;", sql_str(tmp));
    for t in tables {
        sql.push_str(&format!("CREATE TABLE export_target.serving.{n} AS SELECT * FROM lakehouse.serving.{n};", n = sql_ident(&t.name)));
    }
    sql.push_str(&format!(
        "CREATE TABLE export_target.main._meta AS SELECT {} AS export_id, now()::TIMESTAMP AS exported_at,
            {} AS lakehouse_state, {} AS tables, {} AS row_counts, CAST({} AS BIGINT) AS lakehouse_snapshot;",
        sql_str(Path::new(export_id)),
        sql_str(Path::new(state)),
        tables.len(),
        sql_str(Path::new(&contents.to_string())),
        snapshot.map_or("NULL".to_owned(), |s| s.to_string())
    ));
    if std::env::var(layout::ENV_SERVE_EXPORT_FAULT).as_deref() == Ok("corrupt-copy-midway") {
        // Tests only: a block the copy wrote breaks on disk and the copy reads it back (as
        // DuckDB does with a block it evicted under memory pressure): a first table written
        // and checkpointed, its block broken, then read by the copy's own transaction.
        db.execute_batch(&format!(
            "ATTACH {} AS export_target; CREATE TABLE export_target.main.written AS SELECT * FROM lakehouse.serving.{}; DETACH export_target;",
            sql_str(tmp),
            sql_ident(&tables[0].name)
        ))?;
        materia_common::fault::break_duckdb_blocks(tmp, 0, &[0])?; // block 0: its offset needs no block size
        sql.push_str("CREATE TABLE export_target.main.read_back AS SELECT * FROM export_target.main.written;");
    }
    if std::env::var(layout::ENV_SERVE_EXPORT_FAULT).as_deref() == Ok("alter-copy") {
        // Tests only: make the copy differ from its source, as a failing disk or bug would.
        sql.push_str(&format!(
            "DELETE FROM export_target.serving.{n} WHERE rowid = (SELECT min(rowid) FROM export_target.serving.{n});",
            n = sql_ident(&tables[0].name)
        ));
    }
    sql.push_str("COMMIT; CHECKPOINT export_target; DETACH export_target;");
    if let Err(e) = db.execute_batch(&sql) {
        // Rolled back and detached before the temp file is removed, so DuckDB writes
        // nothing there after (as the compaction's copy does).
        let _ = db.execute_batch("ROLLBACK");
        let _ = db.execute_batch("DETACH DATABASE IF EXISTS export_target");
        return Err(anyhow::Error::new(e).context(format!("copying the serving tables into {}", tmp.display())));
    }
    if std::env::var(layout::ENV_SERVE_EXPORT_FAULT).as_deref() == Ok("corrupt-copy") {
        // Tests only: a block of the copy breaks on disk before its check reads it back.
        materia_common::fault::break_duckdb_blocks(tmp, 0, &[0])?; // block 0: its offset needs no block size
    }
    Ok(())
}

/// The error `e` of a copy: a corrupt block of the new file names its disk, not the
/// lakehouse (`lakehouse_target::whose_corrupt_block`).
pub(crate) fn whose_corrupt_block(db: &Connection, tables: &[Table], tmp: &Path, e: anyhow::Error) -> anyhow::Error {
    let names: Vec<String> = tables.iter().map(|t| format!("lakehouse.serving.{}", sql_ident(&t.name))).collect();
    materia_common::lakehouse_target::whose_corrupt_block(db, &names, e, |e| copy_disk_at_fault(tmp, e, "reads back corrupt as it is written"))
}

/// The new file read back corrupt: an integrity failure that names its disk.
fn copy_disk_at_fault(tmp: &Path, e: &anyhow::Error, how: &str) -> anyhow::Error {
    Integrity(format!(
        "the export {how} ({}); nothing was published (the lakehouse is not at fault: check the disk under {})",
        materia_common::exit::one_line(e),
        tmp.parent().unwrap_or(Path::new(".")).display()
    ))
    .into()
}

/// Open the copy on its own and check it holds what the lakehouse had. Attached anew
/// (read-only, as its own catalog) after the copy's connection detached it, so every
/// block is read back from the file, none from what the copy cached.
pub(crate) fn verify(db: &Connection, tmp: &Path, want: &[Table], export_id: &str) -> anyhow::Result<()> {
    if wal(tmp).exists() {
        return Err(Integrity(format!("{} was left with a WAL after its checkpoint", tmp.display())).into());
    }
    let checked = db
        .execute_batch(&format!("ATTACH {} AS export_check (READ_ONLY)", sql_str(tmp)))
        .with_context(|| format!("reopening {} to verify it", tmp.display()))
        .and_then(|()| {
            let checked = check_copy(db, want, export_id);
            db.execute_batch("DETACH export_check")?;
            checked
        });
    // The copy, just written, read back corrupt: its disk, not the lakehouse.
    checked.map_err(|e| {
        if materia_common::lakehouse_target::says_corrupt(&e) && !e.chain().any(|c| c.is::<Integrity>()) {
            copy_disk_at_fault(tmp, &e, "does not read back whole")
        } else {
            e
        }
    })
}

fn check_copy(db: &Connection, want: &[Table], export_id: &str) -> anyhow::Result<()> {
    let got = serving_tables(db, "export_check")?;
    if got != want {
        let diff = want
            .iter()
            .zip(got.iter().chain(std::iter::repeat(&Table { name: "(missing)".into(), columns: vec![], rows: 0 })))
            .find(|(w, g)| w != g)
            .map(|(w, g)| {
                format!(
                    "serving.{}: {} rows, {} columns in the lakehouse; the copy has {} with {} rows, {} columns",
                    w.name,
                    w.rows,
                    w.columns.len(),
                    g.name,
                    g.rows,
                    g.columns.len()
                )
            })
            .unwrap_or_else(|| format!("{} tables in the lakehouse, {} in the copy", want.len(), got.len()));
        return Err(Integrity(format!("the export did not verify: {diff}; nothing was published")).into());
    }
    let id: String = db.query_row("SELECT export_id FROM export_check.main._meta", [], |r| r.get(0))?;
    if id != export_id {
        return Err(Integrity(format!("the export's _meta says {id}, expected {export_id}")).into());
    }
    Ok(())
}
