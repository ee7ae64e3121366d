//! How a step's rows reach its model's table: a build creates the table, an append
//! inserts, a merge inserts the new rows and deletes the stored rows they replace (by
//! unique key or by partition). New rows go straight into the table, once, and the
//! audits read them there by row id.

use anyhow::Context as _;
use duckdb::Connection;
use materia_common::exit::BadInput;
use materia_common::landing::LandingFile;

use crate::engine_state::sha256_file;
use crate::landing_order::LandingOrder;
use crate::model::{Kind, Model};
use crate::plan::{Action, PlannedModel};
use crate::profile::Profiler;

/// The temp table holding the partitions an INCREMENTAL_BY_PARTITION merge replaced in
/// this run, for the models whose `partitions_from` names it.
pub(crate) fn replaced_partitions(model: &str) -> String {
    format!("__materia_replaced__{}", model.replace('.', "__"))
}

/// Where an append's or a merge's new rows are, for the audits: in the model's table,
/// at row ids from `first` on, the rows this transaction inserted (DuckDB gives a
/// transaction's new rows ids past every committed row's; [`insert_new`] checks it).
/// One write of the new rows: a batch table in between cost a second write of every
/// new row (about 0.6 s per 2M rows) and held them all in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NewRows {
    first: i64,
}

impl NewRows {
    /// A table expression for the new rows of `table`.
    pub(crate) fn sql(&self, table: &str) -> String {
        format!("(SELECT * FROM {table} WHERE rowid >= {})", self.first)
    }

    /// A condition true of the rows of `t` stored before this step.
    fn stored(&self, t: &str) -> String {
        format!("{t}.rowid < {}", self.first)
    }
}

/// Insert the result of `sql` into `m`'s table (a model that declares its columns has
/// them checked first, before any row reaches the table); returns where the new rows are,
/// checked: the rows at or past the returned id are exactly those this insert made.
fn insert_new(conn: &Connection, profile: Option<&Profiler>, m: &Model, sql: &str) -> anyhow::Result<NewRows> {
    let name = &m.name;
    if !m.columns.is_empty() {
        check_columns(conn, m, &format!("({sql})"))?;
    }
    let first = next_row_id(conn, name)?;
    // DuckDB reads a table as it was when the statement began, so a model reading
    // @this_model does not see the rows it is inserting.
    let inserted = write_rows(conn, profile, m, "insert", &format!("INSERT INTO {name} BY NAME SELECT * FROM ({sql})"))?;
    let new_rows = NewRows { first };
    let found: i64 = conn.query_row(&format!("SELECT count(*) FROM {}", new_rows.sql(name)), [], |r| r.get(0))?;
    if let Some(inserted) = inserted
        && found != inserted as i64
    {
        anyhow::bail!("{name}: inserted {inserted} rows but {found} have row ids from {first} on (DuckDB's row ids changed meaning?)");
    }
    Ok(new_rows)
}

/// Run one statement that writes `m`'s rows: the rows it created, inserted or deleted;
/// unknown under `--profile` (a profile has no such count on every engine: profile.rs),
/// where [`insert_new`]'s check of the new rows' ids is then left out.
fn write_rows(conn: &Connection, profile: Option<&Profiler>, m: &Model, statement: &str, sql: &str) -> anyhow::Result<Option<usize>> {
    match profile {
        Some(p) => p.execute(conn, &m.name, statement, sql).map(|_| None),
        None => Ok(Some(conn.execute(sql, [])?)),
    }
}

/// The row id past every stored row of `table`. DuckDB numbers a table's rows by their
/// place, so the table's row count in its catalog (deleted rows included) says where the
/// last one is, and a filter on rowid reads only the row group holding it: a max over
/// the whole rowid column read the whole history (32 ms at 100 coffee releases, growing
/// with every release). The count is only a hint: a table with no row at or past it is
/// read whole, so the answer is the max either way.
fn next_row_id(conn: &Connection, table: &str) -> anyhow::Result<i64> {
    let (schema, object) = table.split_once('.').unwrap_or(("main", table));
    let hint: i64 = conn
        .query_row(
            "SELECT coalesce(max(estimated_size), 0) FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = ? AND table_name = ?",
            [schema, object],
            |r| r.get(0),
        )
        .context("reading the table's row count")?;
    let since = (hint - 1).max(0);
    let max: Option<i64> = conn.query_row(&format!("SELECT max(rowid) FROM {table} WHERE rowid >= {since}"), [], |r| r.get(0))?;
    let max = match max {
        Some(m) => Some(m),
        None if since > 0 => conn.query_row(&format!("SELECT max(rowid) FROM {table}"), [], |r| r.get(0))?,
        None => None,
    };
    Ok(max.map_or(0, |m| m + 1))
}

/// The landing files a step loaded, each with its sha256.
type Loaded = Vec<(LandingFile, String)>;

/// Run the model's step; returns the landing files it loaded (with their sha256) and,
/// for an append or a merge, where its new rows are for the audits.
pub(crate) fn execute(
    m: &Model,
    conn: &Connection,
    step: &PlannedModel,
    run_id: i64,
    order: &LandingOrder,
    profile: Option<&Profiler>,
) -> anyhow::Result<(Loaded, Option<NewRows>)> {
    conn.execute_batch(&format!("CREATE SCHEMA IF NOT EXISTS {}", m.schema()))?;
    let sql = m.render(run_id, step.action == Action::Merge);
    if step.action == Action::Build
        && let Some(ddl) = m.empty_this_ddl()
    {
        conn.execute_batch(&ddl).context("creating the empty @this_model of a first build")?;
    }
    let files: &[LandingFile] = match &step.action {
        Action::Append(f) => f,
        Action::Build => &step.all_files,
        _ => &[],
    };
    let mut loaded = Vec::new();
    for f in files {
        loaded.push((f.clone(), sha256_file(&f.abs)?));
    }
    let sql = if matches!(m.kind, Kind::LandingIngest { .. }) {
        let list = files.iter().map(|f| materia_common::duckdb_config::sql_string(&f.abs.display().to_string())).collect::<Vec<_>>();
        sql.replace("@landing_files", &format!("[{}]", list.join(", ")))
            .replace("@landing_order", &crate::landing_order::sql_list(order, files.iter().map(|f| f.rel.as_str())))
    } else {
        sql
    };
    let name = &m.name;
    if step.action == Action::Build {
        drop_other_kind(conn, m)?;
    }
    let new_rows = match (&step.action, &m.kind) {
        (Action::Build, Kind::View) => {
            conn.execute_batch(&format!("CREATE OR REPLACE VIEW {name} AS {sql}"))?;
            None
        }
        (Action::Build, Kind::LandingIngest { .. }) => {
            conn.execute("DELETE FROM _materia.landing_ledger WHERE model = ?", [name])?;
            write_rows(conn, profile, m, "build", &format!("CREATE OR REPLACE TABLE {name} AS {sql}"))?;
            None
        }
        (Action::Build, _) => {
            write_rows(conn, profile, m, "build", &format!("CREATE OR REPLACE TABLE {name} AS {sql}"))?;
            None
        }
        (Action::Append(_), _) => Some(insert_new(conn, profile, m, &sql)?),
        // A merge inserts its new rows, then deletes the stored rows they replace.
        (Action::Merge, Kind::IncrementalByUniqueKey { unique_key }) => {
            let new_rows = insert_new(conn, profile, m, &sql)?;
            let new = new_rows.sql(name);
            let delete = format!("DELETE FROM {name} t USING {new} n WHERE {} AND {}", new_rows.stored("t"), matching(conn, &new, unique_key)?);
            write_rows(conn, profile, m, "delete", &delete)?;
            Some(new_rows)
        }
        (Action::Merge, Kind::IncrementalByPartition { partitioned_by }) => {
            let cols = partitioned_by.join(", ");
            // The partitions the named upstream replaced (none if it did not run).
            let upstream = m
                .partitions_from
                .as_deref()
                .filter(|up| table_exists(conn, &replaced_partitions(up)))
                .map(|up| format!(" UNION SELECT {cols} FROM {}", replaced_partitions(up)))
                .unwrap_or_default();
            let replaced = replaced_partitions(name);
            let new_rows = insert_new(conn, profile, m, &sql)?;
            conn.execute_batch(&format!("CREATE OR REPLACE TEMP TABLE {replaced} AS SELECT DISTINCT {cols} FROM {}{upstream}", new_rows.sql(name)))?;
            let delete =
                format!("DELETE FROM {name} t USING {replaced} n WHERE {} AND {}", new_rows.stored("t"), matching(conn, &replaced, partitioned_by)?);
            write_rows(conn, profile, m, "delete", &delete)?;
            Some(new_rows)
        }
        (a, k) => anyhow::bail!("cannot {} a {k} model", a.label()),
    };
    Ok((loaded, new_rows))
}

/// The join condition deleting the stored rows whose `cols` match a row of `new`. A
/// NULL matches a NULL; plain equality is used when `new` holds no NULL there, as
/// DuckDB then prunes the stored table's row groups by the new values' range (the
/// delete reads the few touched row groups instead of the whole history).
fn matching(conn: &Connection, new: &str, cols: &[String]) -> anyhow::Result<String> {
    let any_null = cols.iter().map(|k| format!("{k} IS NULL")).collect::<Vec<_>>().join(" OR ");
    let nulls: i64 = conn.query_row(&format!("SELECT count(*) FROM {new} WHERE {any_null}"), [], |r| r.get(0))?;
    let op = if nulls == 0 { "=" } else { "IS NOT DISTINCT FROM" };
    Ok(cols.iter().map(|k| format!("t.{k} {op} n.{k}")).collect::<Vec<_>>().join(" AND "))
}

/// What the lakehouse holds under a model's name: `TABLE`, `VIEW` or nothing.
fn stored_kind(conn: &Connection, name: &str) -> anyhow::Result<Option<&'static str>> {
    let (schema, object) = name.split_once('.').unwrap_or(("main", name));
    for (kind, catalog, column) in [("TABLE", "duckdb_tables()", "table_name"), ("VIEW", "duckdb_views()", "view_name")] {
        let n: i64 = conn.query_row(
            &format!("SELECT count(*) FROM {catalog} WHERE database_name = current_database() AND schema_name = ? AND {column} = ?"),
            [schema, object],
            |r| r.get(0),
        )?;
        if n > 0 {
            return Ok(Some(kind));
        }
    }
    Ok(None)
}

/// A model whose kind changed between a view and a table (a release turned
/// staging.psd_values into a view): DuckDB's CREATE OR REPLACE does not replace an object
/// of the other type, so a build first drops it (in the run's transaction, like the rest).
fn drop_other_kind(conn: &Connection, m: &Model) -> anyhow::Result<()> {
    let other = if m.kind == Kind::View { "TABLE" } else { "VIEW" };
    if stored_kind(conn, &m.name)? == Some(other) {
        log::info!("{}: was a {}, now a {}: dropping the old one", m.name, other.to_ascii_lowercase(), m.kind);
        conn.execute_batch(&format!("DROP {other} {}", m.name))?;
    }
    Ok(())
}

/// Drop the table or view of a model whose file is gone, with its engine state (its
/// fingerprint, and the ledger of the files it loaded).
pub(crate) fn drop_model(conn: &Connection, name: &str) -> anyhow::Result<()> {
    if let Some(kind) = stored_kind(conn, name)? {
        conn.execute_batch(&format!("DROP {kind} {name}"))?;
    }
    conn.execute("DELETE FROM _materia.models WHERE name = ?", [name])?;
    conn.execute("DELETE FROM _materia.landing_ledger WHERE model = ?", [name])?;
    Ok(())
}

fn table_exists(conn: &Connection, table: &str) -> bool {
    conn.query_row("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table], |r| r.get::<_, i64>(0)).is_ok_and(|n| n > 0)
}

/// A model that declares `columns` must return exactly those, in that order.
pub(crate) fn check_columns(conn: &Connection, m: &Model, table: &str) -> anyhow::Result<()> {
    let mut st = conn.prepare(&format!("SELECT * FROM {table} LIMIT 0"))?;
    st.execute([])?;
    let got: Vec<String> = st.column_names().into_iter().map(|c| c.to_ascii_lowercase()).collect();
    let want: Vec<&str> = m.columns.iter().map(|(n, _)| n.as_str()).collect();
    if got != want {
        return Err(BadInput(format!("{} returned columns ({}) but its header declares ({})", m.name, got.join(", "), want.join(", "))).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::next_row_id;

    fn full_max(conn: &duckdb::Connection) -> i64 {
        conn.query_row("SELECT coalesce(max(rowid), -1) + 1 FROM s.t", [], |r| r.get(0)).unwrap()
    }

    /// The hint from the catalog never changes the answer: after appends, deletes of the
    /// last rows (committed or not), a checkpoint, and in an empty table.
    #[test]
    fn next_row_id_is_the_max_rowid_plus_one() {
        let dir = tempfile::tempdir().unwrap();
        let conn = duckdb::Connection::open(dir.path().join("t.duckdb")).unwrap();
        conn.execute_batch("CREATE SCHEMA s; CREATE TABLE s.t (i INTEGER)").unwrap();
        assert_eq!(next_row_id(&conn, "s.t").unwrap(), 0, "empty");
        let steps = [
            "INSERT INTO s.t SELECT range FROM range(300000)",
            "DELETE FROM s.t WHERE i >= 250000",
            "CHECKPOINT",
            "INSERT INTO s.t SELECT range FROM range(7)",
            "DELETE FROM s.t",
            "CHECKPOINT",
            "INSERT INTO s.t SELECT range FROM range(130000)",
        ];
        for step in steps {
            conn.execute_batch(step).unwrap();
            assert_eq!(next_row_id(&conn, "s.t").unwrap(), full_max(&conn), "after {step}");
        }
        // Inside a transaction that deleted the last rows and has not committed.
        conn.execute_batch("BEGIN; DELETE FROM s.t WHERE i >= 100000").unwrap();
        assert_eq!(next_row_id(&conn, "s.t").unwrap(), full_max(&conn), "uncommitted delete");
        conn.execute_batch("ROLLBACK").unwrap();
    }
}
