//! Planning and running models against `lakehouse.duckdb`.
//!
//! The engine keeps its own state inside the lakehouse, in schema `_materia`: each
//! model's fingerprint (`models`) and the landing files each ingest model has loaded
//! (`landing_ledger`). A run is one DuckDB transaction: models, audits and that state
//! commit together or not at all, so a failing blocking audit, an error or a `kill -9`
//! leaves the lakehouse exactly at its last good state.

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, anyhow};
use duckdb::Connection;
use materia_common::exit::{BadInput, Integrity};
use sha2::{Digest as _, Sha256};

use crate::audit;
use crate::model::{Kind, Model};
use crate::project::Project;

/// What a run will do with one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing: unchanged.
    Skip,
    /// Create or replace from scratch (an ingest model reloads every file).
    Build,
    /// Ingest these new landing files.
    Append(Vec<LandingFile>),
    /// Merge the query's rows by unique key.
    Merge,
}

impl Action {
    fn label(&self) -> &'static str {
        match self {
            Action::Skip => "skip",
            Action::Build => "build",
            Action::Append(_) => "append",
            Action::Merge => "merge",
        }
    }
}

/// A model and what will happen to it, and why.
#[derive(Debug, Clone)]
pub struct Step {
    /// Model name.
    pub model: String,
    /// The action.
    pub action: Action,
    /// Why, for humans.
    pub reason: String,
    /// Every landing file an ingest model will load (Build) — empty otherwise.
    pub all_files: Vec<LandingFile>,
}

/// A file in the landing zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandingFile {
    /// Relative to the landing dir.
    pub rel: String,
    /// Absolute.
    pub abs: PathBuf,
    /// Size.
    pub bytes: u64,
    /// Modification time, ns.
    pub mtime_ns: i64,
}

#[derive(Debug)]
struct ModelState {
    fingerprint: String,
}

#[derive(Debug)]
struct LedgerEntry {
    path: String,
    bytes: u64,
    mtime_ns: i64,
    sha256: String,
}

const STATE_DDL: &str = "
CREATE SCHEMA IF NOT EXISTS _materia;
CREATE TABLE IF NOT EXISTS _materia.models (
    name VARCHAR NOT NULL, fingerprint VARCHAR NOT NULL, kind VARCHAR NOT NULL,
    rows BIGINT, run_id BIGINT, built_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS _materia.landing_ledger (
    model VARCHAR NOT NULL, path VARCHAR NOT NULL, bytes BIGINT NOT NULL, mtime_ns BIGINT NOT NULL,
    sha256 VARCHAR NOT NULL, run_id BIGINT NOT NULL, loaded_at TIMESTAMP NOT NULL);
";

fn has_state(conn: &Connection) -> anyhow::Result<bool> {
    let n: i64 = conn.query_row("SELECT count(*) FROM duckdb_tables() WHERE schema_name = '_materia' AND table_name = 'models'", [], |r| r.get(0))?;
    Ok(n > 0)
}

/// Fingerprints by model, and loaded landing files by ingest model.
type EngineState = (HashMap<String, ModelState>, HashMap<String, Vec<LedgerEntry>>);

fn read_state(conn: &Connection) -> anyhow::Result<EngineState> {
    let mut models = HashMap::new();
    let mut ledger: HashMap<String, Vec<LedgerEntry>> = HashMap::new();
    if !has_state(conn)? {
        return Ok((models, ledger));
    }
    let mut st = conn.prepare("SELECT name, fingerprint FROM _materia.models")?;
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (name, fingerprint) = row?;
        models.insert(name, ModelState { fingerprint });
    }
    let mut st = conn.prepare("SELECT model, path, bytes, mtime_ns, sha256 FROM _materia.landing_ledger ORDER BY path")?;
    for row in
        st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?, r.get::<_, String>(4)?)))?
    {
        let (model, path, bytes, mtime_ns, sha256) = row?;
        ledger.entry(model).or_default().push(LedgerEntry { path, bytes: bytes as u64, mtime_ns, sha256 });
    }
    Ok((models, ledger))
}

/// Decide what a run would do. Reads the lakehouse (if `conn` is given) and the
/// landing dir; writes nothing. Files in `quarantined` (relative to the landing dir)
/// are left out; one that was loaded already makes the run a rebuild without it (which
/// rows downstream came from it is not tracked; a rebuild equals the incremental path).
pub fn plan(project: &Project, conn: Option<&Connection>, landing: &Path, rebuild: bool, quarantined: &HashSet<String>) -> anyhow::Result<Vec<Step>> {
    let (state, ledger) = match conn {
        Some(c) => read_state(c)?,
        None => Default::default(),
    };
    let mut set_aside: Vec<&str> = ledger.values().flatten().map(|e| e.path.as_str()).filter(|p| quarantined.contains(*p)).collect();
    set_aside.sort_unstable();
    set_aside.dedup();
    let rebuild_why = if rebuild {
        Some("--rebuild".to_owned())
    } else if !set_aside.is_empty() {
        Some(format!("quarantined since loaded: {}", set_aside.join(", ")))
    } else {
        None
    };
    if rebuild_why.is_none() {
        check_ledger(&ledger, landing)?;
    }
    let mut changed: HashSet<&str> = HashSet::new(); // models whose data changes in this run
    let mut waiting: HashSet<&str> = HashSet::new(); // models that cannot be built yet
    let mut steps = Vec::new();
    for m in &project.models {
        let fp = &project.fingerprints[&m.name];
        let prev = state.get(&m.name);
        let ups = &project.deps[&m.name];
        let (action, reason, all_files) = if let Some(w) = ups.iter().find(|u| waiting.contains(u.as_str())) {
            waiting.insert(&m.name);
            (Action::Skip, format!("waiting for {w}"), Vec::new())
        } else {
            let why_build = if let Some(why) = &rebuild_why {
                Some(why.clone())
            } else if prev.is_none() {
                Some("new model".to_owned())
            } else if prev.is_some_and(|p| &p.fingerprint != fp) {
                Some("model or an upstream model definition changed".to_owned())
            } else {
                None
            };
            let ran_up = ups.iter().find(|u| changed.contains(u.as_str()));
            match &m.kind {
                Kind::LandingIngest { pattern } => {
                    let matched = glob(landing, pattern)?;
                    let aside = matched.iter().filter(|f| quarantined.contains(&f.rel)).count();
                    let files: Vec<LandingFile> = matched.into_iter().filter(|f| !quarantined.contains(&f.rel)).collect();
                    let loaded: HashSet<&str> = ledger.get(&m.name).map(|l| l.iter().map(|e| e.path.as_str()).collect()).unwrap_or_default();
                    let new: Vec<LandingFile> = files.iter().filter(|f| !loaded.contains(f.rel.as_str())).cloned().collect();
                    let aside = if aside > 0 { format!(" ({aside} quarantined)") } else { String::new() };
                    match why_build {
                        Some(_) if files.is_empty() => {
                            waiting.insert(&m.name);
                            (Action::Skip, format!("no landing files match {pattern} yet{aside}"), Vec::new())
                        }
                        Some(why) => {
                            let n = files.len();
                            (Action::Build, format!("{why}: loading {n} file{}{aside}", if n == 1 { "" } else { "s" }), files)
                        }
                        None if !new.is_empty() => {
                            let n = new.len();
                            (Action::Append(new), format!("{n} new landing file{}{aside}", if n == 1 { "" } else { "s" }), Vec::new())
                        }
                        None => (Action::Skip, format!("no new landing files{aside}"), Vec::new()),
                    }
                }
                Kind::View => match why_build {
                    Some(why) => (Action::Build, why, Vec::new()),
                    None => (Action::Skip, "unchanged".into(), Vec::new()),
                },
                Kind::Full => match (why_build, ran_up) {
                    (Some(why), _) => (Action::Build, why, Vec::new()),
                    (None, Some(u)) => (Action::Build, format!("upstream {u} changed"), Vec::new()),
                    (None, None) => (Action::Skip, "unchanged".into(), Vec::new()),
                },
                Kind::IncrementalByUniqueKey { .. } | Kind::IncrementalByPartition { .. } => match (why_build, ran_up) {
                    (Some(why), _) => (Action::Build, why, Vec::new()),
                    // Which partitions a rebuilt upstream replaced is unknown: all of them.
                    (None, Some(_))
                        if m.partitions_from.as_ref().is_some_and(|up| steps.iter().any(|s: &Step| &s.model == up && s.action == Action::Build)) =>
                    {
                        (Action::Build, format!("upstream {} was rebuilt", m.partitions_from.as_deref().unwrap_or_default()), Vec::new())
                    }
                    (None, Some(u)) => (Action::Merge, format!("upstream {u} changed"), Vec::new()),
                    (None, None) => (Action::Skip, "unchanged".into(), Vec::new()),
                },
            }
        };
        // A view's data changes when its inputs change, even if the view is not rebuilt.
        let data_changes = action != Action::Skip || (m.kind == Kind::View && ups.iter().any(|u| changed.contains(u.as_str())));
        if data_changes {
            changed.insert(&m.name);
        }
        steps.push(Step { model: m.name.clone(), action, reason, all_files });
    }
    Ok(steps)
}

/// Landing is immutable: every file an ingest model loaded must still be there,
/// unchanged. Size and mtime are checked for all; the content is hashed only when
/// they differ, so this stays cheap as history grows.
fn check_ledger(ledger: &HashMap<String, Vec<LedgerEntry>>, landing: &Path) -> anyhow::Result<()> {
    for (model, entries) in ledger {
        for e in entries {
            let abs = landing.join(&e.path);
            let meta = match std::fs::metadata(&abs) {
                Ok(m) => m,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Integrity(format!(
                        "landing file {} was loaded into {model} but is gone; landing is immutable: restore it, or run with --rebuild",
                        e.path
                    ))
                    .into());
                }
                Err(err) => return Err(anyhow!(err).context(format!("checking {}", abs.display()))),
            };
            if meta.len() != e.bytes || mtime_ns(&meta) != e.mtime_ns {
                let sha = sha256_file(&abs)?;
                if sha != e.sha256 {
                    return Err(Integrity(format!(
                        "landing file {} changed after it was loaded into {model}; landing is immutable: restore it, or run with --rebuild",
                        e.path
                    ))
                    .into());
                }
            }
        }
    }
    Ok(())
}

fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(materia_common::hex(&h.finalize()))
}

/// Files under `landing` matching `pattern` (`*` and `?` within one path segment),
/// hidden files (temp files) excluded, sorted.
pub fn glob(landing: &Path, pattern: &str) -> anyhow::Result<Vec<LandingFile>> {
    let segs: Vec<&str> = pattern.split('/').collect();
    let mut out = Vec::new();
    walk(landing, landing, &segs, &mut out)?;
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn walk(root: &Path, dir: &Path, segs: &[&str], out: &mut Vec<LandingFile>) -> anyhow::Result<()> {
    let Some((seg, rest)) = segs.split_first() else { return Ok(()) };
    for entry in materia_common::read_dir_or_empty(dir)? {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !wildcard(seg, name) {
            continue;
        }
        let path = entry.path();
        let meta = entry.metadata()?;
        if rest.is_empty() {
            if meta.is_file() {
                let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
                out.push(LandingFile { rel, abs: path.clone(), bytes: meta.len(), mtime_ns: mtime_ns(&meta) });
            }
        } else if meta.is_dir() {
            walk(root, &path, rest, out)?;
        }
    }
    Ok(())
}

fn wildcard(pat: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pat.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

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

/// Run `steps` in one transaction on `conn`.
pub fn run(project: &Project, conn: &Connection, steps: &[Step], run_id: i64) -> RunOutcome {
    let mut out = RunOutcome::default();
    if let Err(e) = conn.execute_batch("BEGIN TRANSACTION") {
        out.failure = Some(anyhow!(e).context("starting the transaction"));
        return out;
    }
    let result = run_in_tx(project, conn, steps, run_id, &mut out);
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
        Ok(()) => {
            let t = Instant::now();
            if let Err(e) = conn.execute_batch("CHECKPOINT") {
                log::warn!("checkpoint after the run failed (the WAL keeps the data): {e}");
            }
            log::debug!("checkpoint: {:?}", t.elapsed());
        }
        Err(e) => {
            out.failure = Some(e);
        }
    }
    out
}

fn run_in_tx(project: &Project, conn: &Connection, steps: &[Step], run_id: i64, out: &mut RunOutcome) -> anyhow::Result<()> {
    conn.execute_batch(STATE_DDL).context("creating the _materia state tables")?;
    let mut loaded_now: Vec<String> = Vec::new(); // landing files this run loaded
    for step in steps {
        let m = project.model(&step.model).ok_or_else(|| anyhow!("no model {}", step.model))?;
        if step.action == Action::Skip {
            out.models.push(ModelResult { model: m.name.clone(), action: "skip", reason: step.reason.clone(), rows: None, duration_ms: 0 });
            continue;
        }
        let start = Instant::now();
        let loaded = with_session_properties(conn, m, || execute(m, conn, step, run_id))
            .map_err(first_line)
            .with_context(|| format!("building {} ({})", m.name, m.path.display()))?;
        log::debug!("{}: {} executed in {:?}", m.name, step.action.label(), start.elapsed());
        if !m.columns.is_empty() {
            let table = if step.action == Action::Build { m.name.as_str() } else { BATCH };
            check_columns(conn, m, table).with_context(|| format!("building {} ({})", m.name, m.path.display()))?;
        }
        // Appends and merges audit their batch (as SQLMesh audits the processed
        // intervals), so a run's cost follows the new data; builds audit the table.
        let batch = matches!(step.action, Action::Append(_) | Action::Merge);
        let audited = if batch { BATCH } else { m.name.as_str() };
        let rows: Option<i64> =
            if m.kind == Kind::View { None } else { Some(conn.query_row(&format!("SELECT count(*) FROM {}", m.name), [], |r| r.get(0))?) };
        record_model(conn, m, &project.fingerprints[&m.name], rows, run_id, &loaded)?;
        loaded_now.extend(loaded.iter().map(|(f, _)| f.rel.clone()));
        let duration_ms = start.elapsed().as_millis() as u64;
        log::info!("{}: {} ({}){}", m.name, step.action.label(), step.reason, rows.map(|r| format!(", {r} rows")).unwrap_or_default());
        out.models.push(ModelResult { model: m.name.clone(), action: step.action.label(), reason: step.reason.clone(), rows, duration_ms });
        let t = Instant::now();
        run_audits(project, conn, m, audited, &loaded_now, out)?;
        log::debug!("{}: audits in {:?}", m.name, t.elapsed());
        if batch {
            conn.execute_batch(&format!("DROP TABLE {BATCH}"))?;
        }
    }
    for step in steps {
        conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", replaced_partitions(&step.model)))?;
    }
    Ok(())
}

/// The temp table holding the partitions an INCREMENTAL_BY_PARTITION merge replaced in
/// this run, for the models whose `partitions_from` names it.
fn replaced_partitions(model: &str) -> String {
    format!("__materia_replaced__{}", model.replace('.', "__"))
}

/// DuckDB's messages run over many lines (hints, the reader's options): keep the first
/// for the one-line error, log the rest at debug level.
fn first_line(e: anyhow::Error) -> anyhow::Error {
    let full = format!("{e:#}");
    let first = full.lines().next().unwrap_or_default().trim_end_matches(':').to_owned();
    if first != full {
        log::debug!("{full}");
    }
    anyhow!(first)
}

/// Run `f` with the model's `session_properties` set, resetting them after.
fn with_session_properties<T>(conn: &Connection, m: &Model, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    for (k, v) in &m.session_properties {
        conn.execute_batch(&format!("SET {k} = {}", v.sql())).with_context(|| format!("session property {k}"))?;
    }
    let result = f();
    for (k, _) in &m.session_properties {
        let _ = conn.execute_batch(&format!("RESET {k}"));
    }
    result
}

/// The temp table holding an append's or a merge's new rows.
const BATCH: &str = "__materia_batch";

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
/// files only under `readable` (the landing dir), and write none but its own database
/// (no COPY TO, ATTACH, extension install or read of another file). A running database
/// cannot turn either setting back, and a model is one query (model.rs), so no model
/// SQL can widen it.
pub fn sandbox(conn: &Connection, readable: &Path) -> anyhow::Result<()> {
    let dir = format!("{}/", readable.display()).replace('\'', "''");
    conn.execute_batch(&format!("SET allowed_directories = ['{dir}']; SET enable_external_access = false;"))
        .context("closing DuckDB's access to files outside the landing dir")
}

/// Run the model's step; returns the landing files it loaded (with their sha256).
/// Appends and merges leave their new rows in [`BATCH`] for the audits.
fn execute(m: &Model, conn: &Connection, step: &Step, run_id: i64) -> anyhow::Result<Vec<(LandingFile, String)>> {
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
        let list = files.iter().map(|f| format!("'{}'", f.abs.display().to_string().replace('\'', "''"))).collect::<Vec<_>>();
        sql.replace("@landing_files", &format!("[{}]", list.join(", ")))
    } else {
        sql
    };
    let name = &m.name;
    match (&step.action, &m.kind) {
        (Action::Build, Kind::View) => conn.execute_batch(&format!("CREATE OR REPLACE VIEW {name} AS {sql}"))?,
        (Action::Build, Kind::LandingIngest { .. }) => {
            conn.execute("DELETE FROM _materia.landing_ledger WHERE model = ?", [name])?;
            conn.execute_batch(&format!("CREATE OR REPLACE TABLE {name} AS {sql}"))?;
        }
        (Action::Build, _) => conn.execute_batch(&format!("CREATE OR REPLACE TABLE {name} AS {sql}"))?,
        (Action::Append(_), _) => conn.execute_batch(&format!(
            "CREATE OR REPLACE TEMP TABLE {BATCH} AS {sql};
             INSERT INTO {name} BY NAME SELECT * FROM {BATCH};"
        ))?,
        (Action::Merge, Kind::IncrementalByUniqueKey { unique_key }) => {
            conn.execute_batch(&format!("CREATE OR REPLACE TEMP TABLE {BATCH} AS {sql}"))?;
            conn.execute_batch(&format!(
                "DELETE FROM {name} t USING {BATCH} n WHERE {on};
                 INSERT INTO {name} BY NAME SELECT * FROM {BATCH};",
                on = matching(conn, BATCH, unique_key)?
            ))?
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
            conn.execute_batch(&format!(
                "CREATE OR REPLACE TEMP TABLE {BATCH} AS {sql};
                 CREATE OR REPLACE TEMP TABLE {replaced} AS SELECT DISTINCT {cols} FROM {BATCH}{upstream};"
            ))?;
            conn.execute_batch(&format!(
                "DELETE FROM {name} t USING {replaced} n WHERE {on};
                 INSERT INTO {name} BY NAME SELECT * FROM {BATCH};",
                on = matching(conn, &replaced, partitioned_by)?
            ))?
        }
        (a, k) => anyhow::bail!("cannot {} a {k} model", a.label()),
    }
    Ok(loaded)
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

fn table_exists(conn: &Connection, table: &str) -> bool {
    conn.query_row("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table], |r| r.get::<_, i64>(0)).is_ok_and(|n| n > 0)
}

/// A model that declares `columns` must return exactly those, in that order.
fn check_columns(conn: &Connection, m: &Model, table: &str) -> anyhow::Result<()> {
    let mut st = conn.prepare(&format!("SELECT * FROM {table} LIMIT 0"))?;
    st.execute([])?;
    let got: Vec<String> = st.column_names().into_iter().map(|c| c.to_ascii_lowercase()).collect();
    let want: Vec<&str> = m.columns.iter().map(|(n, _)| n.as_str()).collect();
    if got != want {
        return Err(BadInput(format!("{} returned columns ({}) but its header declares ({})", m.name, got.join(", "), want.join(", "))).into());
    }
    Ok(())
}

fn record_model(conn: &Connection, m: &Model, fp: &str, rows: Option<i64>, run_id: i64, loaded: &[(LandingFile, String)]) -> anyhow::Result<()> {
    conn.execute("DELETE FROM _materia.models WHERE name = ?", [&m.name])?;
    conn.execute(
        "INSERT INTO _materia.models VALUES (?, ?, ?, ?, ?, now()::TIMESTAMP)",
        duckdb::params![m.name, fp, m.kind.to_string(), rows, run_id],
    )?;
    let mut ins = conn.prepare("INSERT INTO _materia.landing_ledger VALUES (?, ?, ?, ?, ?, ?, now()::TIMESTAMP)")?;
    for (f, sha) in loaded {
        ins.execute(duckdb::params![m.name, f.rel, f.bytes as i64, f.mtime_ns, sha, run_id])?;
    }
    Ok(())
}

fn run_audits(project: &Project, conn: &Connection, m: &Model, table: &str, loaded_now: &[String], out: &mut RunOutcome) -> anyhow::Result<()> {
    for call in &m.audits {
        let a = audit::resolve(call, table, project.audits.get(&call.name))
            .map_err(|e| materia_common::exit::Usage(format!("{}:{}: {e}", m.path.display(), call.line)))?;
        let failing: i64 = conn
            .query_row(&format!("SELECT count(*) FROM ({})", a.sql), [], |r| r.get(0))
            .map_err(|e| first_line(e.into()))
            .with_context(|| format!("running audit {} on {}", a.name, m.name))?;
        let mut sample = Vec::new();
        if failing > 0 {
            let mut st = conn.prepare(&format!("SELECT CAST(sub AS VARCHAR) FROM ({}) sub LIMIT 5", a.sql))?;
            for row in st.query_map([], |r| r.get::<_, String>(0))? {
                sample.push(row?);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_within_a_segment() {
        assert!(wildcard("*.csv.gzip", "a_0.csv.gzip"));
        assert!(wildcard("20??", "2024"));
        assert!(!wildcard("*.csv.gzip", "a.csv.gzip.tmp"));
        assert!(wildcard("*", ""));
        assert!(!wildcard("a*b", "acbd"));
    }

    #[test]
    fn glob_skips_hidden_files_and_other_depths() {
        let d = tempfile::tempdir().unwrap();
        for p in ["psd/2024/01/a.csv.gzip", "psd/2024/01/.a.tmp-1", "psd/2024/b.csv.gzip", "psd/2024/02/c.csv.gzip", "other/x.csv.gzip"] {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let got: Vec<String> = glob(d.path(), "psd/*/*/*.csv.gzip").unwrap().into_iter().map(|f| f.rel).collect();
        assert_eq!(got, ["psd/2024/01/a.csv.gzip", "psd/2024/02/c.csv.gzip"]);
    }
}
