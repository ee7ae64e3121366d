//! Running the planned steps, all or nothing, so a failing blocking audit, an error or a
//! `kill -9` leaves the lakehouse exactly at its last good state: one DuckDB transaction
//! for the whole run (models, their audits, the engine's state), or, when every model is
//! built on the local file, a new file committed model by model and renamed over the
//! lakehouse only when the run succeeded (lakehouse_file.rs). Also the sandbox model SQL
//! runs in (its memory bound: memory.rs). How each step writes its table is in write.rs.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, anyhow};
use duckdb::Connection;
use materia_common::duckdb_config;
use materia_common::exit::BadInput;

use crate::audit;
use crate::engine_state::{STATE_DDL, record_model};
use crate::landing_order::LandingOrder;
use crate::model::{Kind, Model};
use crate::plan::{Action, PlannedModel};
use crate::profile::Profiler;
use crate::project::Project;
use crate::write::{check_columns, drop_model, execute, replaced_partitions};

/// What a model did in a run.
#[derive(Debug, Clone)]
pub struct ModelResult {
    /// Model name.
    pub model: String,
    /// build / append / merge / skip.
    pub action: &'static str,
    /// Why.
    pub reason: String,
    /// Rows after the step (None when skipped).
    pub rows: Option<i64>,
    /// Time taken.
    pub duration_ms: u64,
}

/// One audit's outcome.
#[derive(Debug, Clone)]
pub struct AuditResult {
    /// Model audited.
    pub model: String,
    /// Audit name.
    pub audit: String,
    /// Blocking?
    pub blocking: bool,
    /// Offending rows.
    pub failing_rows: i64,
    /// Up to 5 offending rows, one line each.
    pub sample: Vec<String>,
}

/// Everything a run did, committed or not.
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// Per model.
    pub models: Vec<ModelResult>,
    /// Per audit run.
    pub audits: Vec<AuditResult>,
    /// Set when the run was rolled back.
    pub failure: Option<anyhow::Error>,
}

/// How a run commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Once, at the end: the run is all or nothing in the lakehouse itself.
    Once,
    /// After each model: only for a new file that replaces the lakehouse when the whole
    /// run succeeded (lakehouse_file.rs), which keeps the run all or nothing. A model then
    /// reads committed tables, which DuckDB scans faster than a transaction's own writes
    /// (~1.3 s of a 100-release coffee build).
    EachModel,
}

/// Run `steps` on `conn`, committing as `commit` says.
/// `checkpoint`: fold the WAL into the database file after the commit (a local file;
/// a DuckLake has no WAL, and its CHECKPOINT is the maintenance, not for every run).
/// `profile`: profile each statement that writes rows, and each audit (profile.rs).
#[allow(clippy::too_many_arguments)]
pub fn run(
    project: &Project,
    conn: &Connection,
    steps: &[PlannedModel],
    run_id: i64,
    order: &LandingOrder,
    checkpoint: bool,
    commit: Commit,
    profile: Option<&Profiler>,
) -> RunOutcome {
    let mut out = RunOutcome::default();
    if let Err(e) = conn.execute_batch("BEGIN TRANSACTION") {
        out.failure = Some(anyhow!(e).context("starting the transaction"));
        return out;
    }
    let result = run_in_tx(project, conn, steps, run_id, order, commit, profile, &mut out);
    let t = Instant::now();
    let end = match result {
        Ok(()) => conn.execute_batch("COMMIT").context("committing the run"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    };
    log::debug!("commit or rollback: {:?}", t.elapsed());
    match end {
        Ok(()) if !checkpoint => {}
        Ok(()) => {
            let t = Instant::now();
            match conn.execute_batch("CHECKPOINT") {
                Ok(()) => {}
                // A new file is published only whole: its rows still in a WAL (DuckDB
                // invalidates the database when a checkpoint fails, a full disk) fail the run.
                Err(e) if commit == Commit::EachModel => out.failure = Some(anyhow!(e).context("checkpointing the new file")),
                Err(e) => log::warn!("checkpoint after the run failed (the WAL keeps the data): {e}"),
            }
            log::debug!("checkpoint: {:?}", t.elapsed());
        }
        Err(e) => {
            out.failure = Some(e);
        }
    }
    out
}

/// Build every model into a new file beside the lakehouse at `path`, committing after
/// each, and rename it over the lakehouse if the whole run succeeded (a failed run leaves
/// the lakehouse as it was, and the new file is removed). `replaces_corrupt`: the file it
/// replaces is one DuckDB found corrupt, kept beside it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_new_file(
    path: &Path,
    project: &Project,
    steps: &[PlannedModel],
    run_id: i64,
    order: &LandingOrder,
    memory: &crate::memory::Memory,
    layout: &materia_common::layout::Layout,
    landing: &Path,
    replaces_corrupt: bool,
    profile: Option<&Profiler>,
) -> anyhow::Result<RunOutcome> {
    let mut new = crate::lakehouse_file::NewLakehouse::start(path, "build")?;
    if replaces_corrupt {
        new.keep_old_as_corrupt();
    }
    let conn = duckdb_config::open_lakehouse_file(new.tmp(), duckdb_config::config(crate::DEV_EXTENSIONS)?, duckdb_config::Write::Whole)
        .with_context(|| format!("creating {}", new.tmp().display()))?;
    memory.bound(&conn, layout)?;
    sandbox(&conn, landing, &[])?;
    log::debug!("building every model into {}", new.tmp().display());
    let out = run(project, &conn, steps, run_id, order, true, Commit::EachModel, profile);
    drop(conn);
    if out.failure.is_none() {
        new.publish()?;
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn run_in_tx(
    project: &Project,
    conn: &Connection,
    steps: &[PlannedModel],
    run_id: i64,
    order: &LandingOrder,
    commit: Commit,
    profile: Option<&Profiler>,
    out: &mut RunOutcome,
) -> anyhow::Result<()> {
    conn.execute_batch(STATE_DDL).context("creating the _materia state tables")?;
    let mut loaded_now: Vec<String> = Vec::new(); // landing files this run loaded
    for step in steps {
        if step.action == Action::Drop {
            let start = Instant::now();
            drop_model(conn, &step.model).with_context(|| format!("dropping {} ({})", step.model, step.reason))?;
            log::info!("{}: dropped ({})", step.model, step.reason);
            let duration_ms = start.elapsed().as_millis() as u64;
            out.models.push(ModelResult { model: step.model.clone(), action: "drop", reason: step.reason.clone(), rows: None, duration_ms });
            continue;
        }
        let m = project.model(&step.model).ok_or_else(|| anyhow!("no model {}", step.model))?;
        if step.action == Action::Skip {
            out.models.push(ModelResult { model: m.name.clone(), action: "skip", reason: step.reason.clone(), rows: None, duration_ms: 0 });
            continue;
        }
        let start = Instant::now();
        let (loaded, new_rows) = with_session_properties(conn, m, || execute(m, conn, step, run_id, order, profile))
            .map_err(first_line)
            .with_context(|| format!("building {} ({})", m.name, m.path.display()))?;
        log::debug!("{}: {} executed in {:?}", m.name, step.action.label(), start.elapsed());
        // Appends and merges audit their new rows (as SQLMesh audits the processed
        // intervals), so a run's cost follows the new data; builds audit the table.
        let audited = new_rows.as_ref().map(|n| n.sql(&m.name)).unwrap_or_else(|| m.name.clone());
        if !m.columns.is_empty() && new_rows.is_none() {
            check_columns(conn, m, &m.name).with_context(|| format!("building {} ({})", m.name, m.path.display()))?;
        }
        let rows: Option<i64> =
            if m.kind == Kind::View { None } else { Some(conn.query_row(&format!("SELECT count(*) FROM {}", m.name), [], |r| r.get(0))?) };
        record_model(conn, m, &project.fingerprints[&m.name], rows, run_id, &loaded)?;
        loaded_now.extend(loaded.iter().map(|(f, _)| f.rel.clone()));
        let duration_ms = start.elapsed().as_millis() as u64;
        log::info!("{}: {} ({}){}", m.name, step.action.label(), step.reason, rows.map(|r| format!(", {r} rows")).unwrap_or_default());
        out.models.push(ModelResult { model: m.name.clone(), action: step.action.label(), reason: step.reason.clone(), rows, duration_ms });
        if commit == Commit::EachModel {
            // Before its audits, which then read it committed too: a failing one still
            // fails the run, and the new file is thrown away.
            conn.execute_batch("COMMIT; BEGIN TRANSACTION").with_context(|| format!("committing {} to the new file", m.name))?;
        }
        let t = Instant::now();
        run_audits(project, conn, m, &audited, &loaded_now, profile, out)?;
        log::debug!("{}: audits in {:?}", m.name, t.elapsed());
    }
    for step in steps {
        conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", replaced_partitions(&step.model)))?;
    }
    Ok(())
}

/// DuckDB's messages run over many lines (hints, the reader's options): keep the first
/// for the one-line error, log the rest at debug level.
fn first_line(e: anyhow::Error) -> anyhow::Error {
    if e.is::<BadInput>() {
        return e; // ours, one line already, and its exit code kept
    }
    let full = format!("{e:#}");
    let first = full.lines().next().unwrap_or_default().trim_end_matches(':').to_owned();
    if first != full {
        log::debug!("{full}");
    }
    anyhow!(first)
}

/// Run `f` with the model's `session_properties` set, then put back what they were
/// before (not DuckDB's defaults: a model's `memory_limit` must not outlive it and
/// undo the run's --memory-limit). A setting that cannot be put back fails the run.
fn with_session_properties<T>(conn: &Connection, m: &Model, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let mut before = Vec::new();
    for (k, v) in &m.session_properties {
        let old: String =
            conn.query_row("SELECT CAST(current_setting(?) AS VARCHAR)", [k], |r| r.get(0)).with_context(|| format!("session property {k}"))?;
        conn.execute_batch(&format!("SET {k} = {}", v.sql())).with_context(|| format!("session property {k}"))?;
        before.push((k, old));
    }
    let result = f();
    for (k, old) in before.into_iter().rev() {
        let put_back = conn
            .execute_batch(&format!("SET {k} = '{}'", old.replace('\'', "''")))
            .with_context(|| format!("putting session property {k} back to {old:?} after {}", m.name));
        if let (Ok(_), Err(e)) = (&result, put_back) {
            return Err(e); // the model's own error, if any, is the one to report
        }
    }
    result
}

/// The landed files a failing audit's rows come from: their `file` column when they
/// have one; else the files this run loaded for the months in their `release` column;
/// else every file this run loaded (at most 5 named).
fn blame(conn: &Connection, audit_sql: &str, loaded_now: &[String]) -> Vec<String> {
    let strings = |sql: String| -> Option<Vec<String>> {
        let mut st = conn.prepare(&sql).ok()?;
        let rows = st.query_map([], |r| r.get::<_, String>(0)).ok()?;
        rows.collect::<Result<Vec<_>, _>>().ok()
    };
    if let Some(files) = strings(format!("SELECT DISTINCT CAST(file AS VARCHAR) FROM ({audit_sql}) WHERE file IS NOT NULL ORDER BY 1 LIMIT 5"))
        && !files.is_empty()
    {
        return files;
    }
    let mut files: Vec<String> = loaded_now.to_vec();
    if let Some(months) = strings(format!("SELECT DISTINCT strftime(CAST(release AS DATE), '/%Y/%m/') FROM ({audit_sql}) WHERE release IS NOT NULL"))
        && !months.is_empty()
    {
        files.retain(|f| months.iter().any(|m| format!("/{f}").contains(m.as_str())));
    }
    files.sort();
    files.dedup();
    files.truncate(5);
    files
}

/// Close the connection to the outside before any model runs: DuckDB may then read
/// files only under `readable` (the landing dir, and a DuckLake's data path, where
/// DuckDB keeps that lakehouse's own files), and write none but its own database (no
/// COPY TO, ATTACH, extension install or read of another file). A running database
/// cannot turn either setting back, and a model is one query (model.rs), so no model
/// SQL can widen it.
pub fn sandbox(conn: &Connection, readable: &Path, data_paths: &[String]) -> anyhow::Result<()> {
    let dirs: Vec<String> =
        std::iter::once(format!("{}/", readable.display())).chain(data_paths.iter().cloned()).map(|d| duckdb_config::sql_string(&d)).collect();
    conn.execute_batch(&format!("SET allowed_directories = [{}]; SET enable_external_access = false;", dirs.join(", ")))
        .context("closing DuckDB's access to files outside the landing dir")
}

fn run_audits(
    project: &Project,
    conn: &Connection,
    m: &Model,
    table: &str,
    loaded_now: &[String],
    profile: Option<&Profiler>,
    out: &mut RunOutcome,
) -> anyhow::Result<()> {
    for call in &m.audits {
        let a = audit::resolve(call, table, project.audits.get(&call.name))
            .map_err(|e| materia_common::exit::Usage(format!("{}:{}: {e}", m.path.display(), call.line)))?;
        // One query for the count and the sample (a failing audit used to run twice; the
        // real releases fail the non-blocking identity audits every run). The count is a
        // scalar subquery over the materialized rows, not `count(*) OVER ()`: DuckDB 1.5.5's
        // parallel window races on small inputs ("Attempted to access index 0 within
        // vector of size 0", then the database is invalidated; duckdb/duckdb#25713), which
        // failed a run here once.
        let (mut failing, mut sample) = (0_i64, Vec::new());
        let query =
            format!("WITH failing AS MATERIALIZED ({}) SELECT (SELECT count(*) FROM failing), CAST(sub AS VARCHAR) FROM failing sub LIMIT 5", a.sql);
        if let Some(p) = profile {
            // Profiled, then run again for its rows (a profile returns no rows).
            p.execute(conn, &m.name, &format!("audit-{}", a.name), &query)
                .map_err(first_line)
                .with_context(|| format!("running audit {} on {}", a.name, m.name))?;
        }
        let mut st = conn.prepare(&query).map_err(|e| first_line(e.into())).with_context(|| format!("running audit {} on {}", a.name, m.name))?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| first_line(e.into()))
            .with_context(|| format!("running audit {} on {}", a.name, m.name))?;
        for row in rows {
            let (n, line) = row.map_err(|e| first_line(e.into())).with_context(|| format!("running audit {} on {}", a.name, m.name))?;
            failing = n;
            sample.push(line);
        }
        let res = AuditResult { model: m.name.clone(), audit: a.name.clone(), blocking: a.blocking, failing_rows: failing, sample };
        out.audits.push(res.clone());
        if failing > 0 {
            let msg = format!(
                "audit {} on {} failed: {failing} offending row{}, e.g. {}",
                a.name,
                m.name,
                if failing == 1 { "" } else { "s" },
                res.sample.first().map(String::as_str).unwrap_or("")
            );
            if a.blocking {
                let files = blame(conn, &a.sql, loaded_now);
                let hint = match files.as_slice() {
                    [] => String::new(),
                    [one] => format!("; its rows come from {one} (set it aside: lake-transform quarantine {one} --reason '...')"),
                    many => format!("; its rows come from {} (set one aside: lake-transform quarantine FILE --reason '...')", many.join(", ")),
                };
                return Err(BadInput(format!("{msg}; the run was rolled back{hint}")).into());
            }
            log::warn!("{msg} (not blocking)");
        }
    }
    Ok(())
}
