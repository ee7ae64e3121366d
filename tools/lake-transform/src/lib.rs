//! lake-transform: SQL models over the landing zone into `lakehouse.duckdb`.
//!
//! The SQLMesh replacement: model files with a SQLMesh-style `MODEL (...)` header
//! ([`model`]), dependencies read from the SQL and run in topological order
//! ([`project`]), landing files ingested once each, models rebuilt only when their
//! definition or inputs changed, audits after each model, and the whole run in one
//! transaction ([`engine`]).
//!
//! stdout gets one line per model (`model<TAB>action<TAB>rows<TAB>reason`); logs go to stderr.

pub mod audit;
mod compact;
pub mod engine_state;
mod header;
mod lakehouse_file;
pub mod landing_order;
mod memory;
pub mod model;
pub mod plan;
pub mod profile;
pub mod project;
pub mod quarantine;
pub mod run;
pub mod sql;
pub mod unittest;
mod upkeep;
mod write;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use materia_common::lakehouse_target::{Lakehouse, LakehouseArgs, Target};
use materia_common::layout;
use materia_common::{CommonArgs, Outcome, Report, exit};

use memory::Memory;
use plan::Action;
use project::Project;

/// The tool's name: binary, step lock and `runs.tool`.
pub const TOOL: &str = "lake-transform";

/// A development build's DuckDB extension directory (none in a release build).
pub(crate) const DEV_EXTENSIONS: Option<&str> = option_env!("MATERIA_DEV_DUCKDB_EXTENSIONS");

/// Run the SQL models over the landing zone into lakehouse.duckdb.
///
/// Exit codes: 0 the lakehouse changed, 3 nothing to do, 1 failed, 2 bad models or
/// flags, 4 already running or the lakehouse is held, 5 a blocking audit failed (rolled
/// back), 6 a loaded landing file changed or disappeared (or `maintain`'s compacted copy did not
/// verify: the lakehouse is left as it was).
#[derive(Debug, Parser)]
#[command(name = TOOL, version)]
pub struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Models folder [default: the release's models/, beside the bin/ this binary is in].
    #[arg(long, global = true, value_name = "DIR", env = layout::ENV_MODELS)]
    models: Option<PathBuf>,

    /// DuckDB's memory limit for a run, in DuckDB's syntax (`4GB`, `512MB`): past it,
    /// joins, sorts and aggregates spill to --spill-dir instead of growing. One over 3/4
    /// of the memory the process's cgroup allows (the unit's `MemoryMax=`) is refused
    /// [default: 4GB, or 3/4 of the cgroup's memory when that is less].
    #[arg(long, global = true, value_name = "SIZE", env = layout::ENV_MEMORY_LIMIT)]
    memory_limit: Option<String>,

    /// Where a run spills past --memory-limit; DuckDB's spill files a killed run left
    /// there are removed by the next [default: DATA_DIR/spill/lake-transform].
    #[arg(long, global = true, value_name = "DIR", env = layout::ENV_SPILL_DIR)]
    spill_dir: Option<PathBuf>,

    #[command(flatten)]
    lakehouse: LakehouseArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build what changed: new landing files, edited models and everything downstream.
    Run {
        /// Forget the engine state and rebuild every model from every landing file.
        #[arg(long)]
        rebuild: bool,
        /// Profile each statement that writes a model's rows, and each audit, with DuckDB's
        /// EXPLAIN ANALYZE into DIR/run-<run id>/ (JSON, and profile.tsv: a line each).
        #[arg(long, value_name = "DIR", env = layout::ENV_PROFILE_DIR)]
        profile: Option<PathBuf>,
    },
    /// Print what `run` would do and why, touching nothing.
    Plan {
        /// Plan a --rebuild.
        #[arg(long)]
        rebuild: bool,
    },
    /// Run the model unit tests (models/tests/*.toml) in an in-memory DuckDB.
    Test {
        /// Only the tests whose name contains this.
        filter: Option<String>,
        /// Run each test in a DuckLake catalog of its own instead of a plain in-memory
        /// DuckDB: the models' SQL on the lake's tables. `duckdb` (the default): its
        /// metadata in a DuckDB file; `postgres:CONNINFO`: in that PostgreSQL database,
        /// in a schema of its own dropped after the test (the password from PGPASSWORD).
        /// The data as Parquet in a scratch dir.
        #[arg(long, value_name = "CATALOG", num_args = 0..=1, require_equals = true, default_missing_value = "duckdb")]
        ducklake: Option<String>,
    },
    /// Set a landed file aside: every run and rebuild leave it out (it stays in the
    /// landing dir) until `--undo`. Without FILE: list the files set aside.
    Quarantine {
        /// The landed file, relative to the landing dir (psd/2024/01/x.csv.gzip).
        file: Option<String>,
        /// Why (recorded with who and when).
        #[arg(long, value_name = "TEXT", requires = "file")]
        reason: Option<String>,
        /// Take the file back: the next run loads it again.
        #[arg(long, requires = "file")]
        undo: bool,
    },
    /// Check that the DuckDB extensions a lakehouse on DuckLake needs load offline
    /// (ducklake, postgres_scanner, httpfs): one line each, with its version and file.
    Extensions,
    /// Keep a DuckLake small: flush data inlined in the catalog to Parquet, merge small
    /// files, expire snapshots older than --keep-days, delete the files only they used
    /// and those a killed run left uncommitted. Every landed vintage stays (they are rows of
    /// raw.psd, not snapshots). On the local file: a compaction (the file copied into a
    /// new one without the space DuckDB keeps for reuse, checked table by table, renamed
    /// over it). One line per step on stdout.
    Maintain {
        /// Keep the snapshots of the last DAYS days (time travel, and readers pinned to one).
        #[arg(long, value_name = "DAYS", default_value_t = 7)]
        keep_days: u32,
    },
}

/// Run the tool.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    materia_common::init_logging(&cli.common);
    let models = || match cli.models.clone() {
        Some(dir) => Ok(dir),
        None => release_models_dir(),
    };
    match cli.command {
        Command::Run { rebuild, profile } => {
            let memory = Memory { limit: cli.memory_limit.clone(), spill_dir: cli.spill_dir.clone() };
            run_models(&cli.common, models, rebuild, &memory, &cli.lakehouse, profile.as_deref())
        }
        Command::Plan { rebuild } => plan(&cli.common, &models()?, rebuild, &cli.lakehouse),
        Command::Test { filter, ducklake } => unittest::command(&models()?, filter.as_deref(), ducklake.as_deref()),
        Command::Quarantine { file, reason, undo } => quarantine::command(&cli.common, file.as_deref(), reason.as_deref(), undo),
        Command::Extensions => upkeep::extensions(),
        Command::Maintain { keep_days } => {
            let memory = Memory { limit: cli.memory_limit.clone(), spill_dir: cli.spill_dir.clone() };
            upkeep::maintain(&cli.common, &cli.lakehouse, keep_days, &memory)
        }
    }
}

/// The release's `models/`: a release is `releases/<tag>/` with `bin/lake-transform` and
/// `models/` side by side. Nothing else is guessed (no build or source dir: a deployed
/// binary must never depend on where it was built).
fn release_models_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let release = exe.parent().and_then(Path::parent).unwrap_or(Path::new("/"));
    let dir = release.join("models");
    if dir.is_dir() {
        return Ok(dir);
    }
    Err(materia_common::exit::Usage(format!(
        "no models folder: {} does not exist (a release has models/ beside bin/); pass --models DIR or set {}",
        dir.display(),
        layout::ENV_MODELS
    ))
    .into())
}

/// The plan. A rebuild of the local file plans without it when DuckDB finds it corrupt
/// as the plan reads it (the new file needs nothing from it); otherwise that is the error.
fn plan_steps(
    project: &Project,
    conn: &mut Option<duckdb::Connection>,
    target: &Lakehouse,
    landing: &Path,
    rebuild: bool,
    aside: &std::collections::HashSet<String>,
) -> anyhow::Result<Vec<plan::PlannedModel>> {
    match plan::plan(project, conn.as_ref(), landing, rebuild, aside) {
        Err(e) if rebuild && conn.is_some() && target.is_corrupt(&e) => {
            log::warn!("{}; the rebuild does without it", exit::one_line(&e));
            *conn = None;
            plan::plan(project, None, landing, rebuild, aside)
        }
        steps => steps,
    }
}

fn plan(common: &CommonArgs, models: &Path, rebuild: bool, lakehouse: &LakehouseArgs) -> anyhow::Result<Outcome> {
    let project = Project::load(models)?;
    let layout = common.layout();
    let _lock = materia_common::lock::lakehouse(&layout, Duration::from_secs(common.wait_lock))?;
    let target = lakehouse.lakehouse(layout.lakehouse(), DEV_EXTENSIONS)?;
    let mut conn = match target.open_existing() {
        Err(e) if rebuild && target.is_corrupt(&e) => None,
        conn => conn?,
    };
    let aside = quarantine::listed(&layout)?;
    let steps =
        plan_steps(&project, &mut conn, &target, &layout.landing(), rebuild, &aside.keys().cloned().collect()).map_err(|e| target.corrupt(e))?;
    for (path, e) in &aside {
        println!("quarantined\t{path}\t{} by {} at {}", e.reason, e.by, e.at);
    }
    for s in &steps {
        let what = match &s.action {
            Action::Append(files) => format!("append {}", files.iter().map(|f| f.rel.as_str()).collect::<Vec<_>>().join(" ")),
            a => format!("{a:?}").to_ascii_lowercase(),
        };
        println!("{}\t{what}\t{}", s.model, s.reason);
    }
    Ok(if steps.iter().all(|s| s.action == Action::Skip) { Outcome::Unchanged } else { Outcome::Changed })
}

fn run_models(
    common: &CommonArgs,
    models: impl FnOnce() -> anyhow::Result<PathBuf>,
    rebuild: bool,
    memory: &Memory,
    lakehouse: &LakehouseArgs,
    profile: Option<&Path>,
) -> anyhow::Result<Outcome> {
    materia_common::run_step(TOOL, common, |step| {
        let target = lakehouse.lakehouse(step.layout.lakehouse(), DEV_EXTENSIONS)?;
        // DuckDB finding the local file corrupt, when it opens it or reads a block of it:
        // exit 6, naming the fix.
        match transform(step, common, models, rebuild, memory, &target, profile) {
            Ok(Report { failure: Some(e), outcome, summary, stats }) => Ok(Report { failure: Some(target.corrupt(e)), outcome, summary, stats }),
            Ok(report) => Ok(report),
            Err(e) => Err(target.corrupt(e)),
        }
    })
}

/// A run of the models (`run_models`' work, under its step).
fn transform(
    step: &mut materia_common::Step,
    common: &CommonArgs,
    models: impl FnOnce() -> anyhow::Result<PathBuf>,
    rebuild: bool,
    memory: &Memory,
    target: &Lakehouse,
    profile: Option<&Path>,
) -> anyhow::Result<Report> {
    // Missing or bad models fail the run, recorded, before the lakehouse is opened.
    let models = models()?;
    let project = Project::load(&models)?;
    log::info!("models from {} into {}", models.display(), target.describe());
    let profiler = profile::Profiler::for_run(profile, step.run_id)?; // before the lakehouse is opened
    let profiler = profiler.as_ref();
    let _lock = materia_common::lock::lakehouse(&step.layout, Duration::from_secs(common.wait_lock))?;
    // A DuckLake's writers may be on other machines: its own lock, seen by all.
    let _lake_lock = target.writer_lock(Duration::from_secs(common.wait_lock))?;
    if let Target::File(path) = &target.target {
        lakehouse_file::sweep_beside(path)?;
    }
    let t = std::time::Instant::now();
    let landing = std::path::absolute(step.layout.landing())?;
    let mut corrupt = false;
    let mut conn = match target.open_unless_new() {
        // No local file yet (nor a WAL of one): a first build writes a new file; nothing
        // is opened, so a run that fails before it (a memory limit refused) creates none.
        Ok(None) => None,
        // A local file DuckDB finds corrupt: a rebuild writes a new one from landing/
        // without reading it (a run fails, exit 6, naming this fix).
        Err(e) if rebuild && target.is_corrupt(&e) => {
            log::warn!("{}; this run rebuilds it", exit::one_line(&e));
            corrupt = true;
            // A WAL beside it could only ever be replayed onto that file: it would
            // stop the new file's publish (and must never meet the new file).
            if let Target::File(path) = &target.target
                && let wal = materia_common::duckdb_config::wal_path(path)
                && wal.exists()
            {
                std::fs::remove_file(&wal).with_context(|| format!("removing {}, the corrupt file's WAL", wal.display()))?;
                log::warn!("removed {}, the corrupt file's WAL", wal.display());
            }
            None
        }
        Err(e) => return Err(e),
        Ok(Some(conn)) => {
            log::debug!("opened {} in {:?}", target.describe(), t.elapsed());
            memory.bound(&conn, &step.layout)?;
            run::sandbox(&conn, &landing, &target.data_paths())?;
            Some(conn)
        }
    };
    let t = std::time::Instant::now();
    let aside = quarantine::active(&step.db)?;
    let order = landing_order::read(&step.db)?;
    let aside = aside.keys().cloned().collect();
    let opened = conn.is_some();
    let steps = plan_steps(&project, &mut conn, target, &landing, rebuild, &aside)?;
    corrupt |= opened && conn.is_none(); // planning found it corrupt
    log::debug!("planned in {:?}", t.elapsed());
    if steps.iter().all(|s| s.action == Action::Skip) {
        let summary = format!("nothing to do: {} models unchanged", steps.len());
        log::info!("{summary}");
        return Ok(Report {
            outcome: Outcome::Unchanged,
            summary,
            stats: serde_json::json!({"models_run": 0, "models_skipped": steps.len()}),
            failure: None,
        });
    }
    let mut new_file = false;
    let out = match &target.target {
        // Every model is built (a first build, --rebuild): into a new file, renamed over
        // the lakehouse when the whole run succeeded; the old one is closed meanwhile.
        Target::File(path) if steps.iter().all(|s| matches!(s.action, Action::Build | Action::Drop)) => {
            // Keep what it replaces when the rebuild found the file corrupt (no connection:
            // opening or planning), or an earlier run or `maintain` did.
            let replaces_corrupt = corrupt || lakehouse_file::found_corrupt_since_new_file(&step.db, step.run_id)?;
            new_file = true;
            drop(conn);
            run::build_new_file(path, &project, &steps, step.run_id, &order, memory, &step.layout, &landing, replaces_corrupt, profiler)?
        }
        _ => {
            let conn = conn.context("no lakehouse connection for a run that changes it in place")?;
            let out = run::run(&project, &conn, &steps, step.run_id, &order, !target.is_ducklake(), run::Commit::Once, profiler);
            drop(conn);
            out
        }
    };
    record(&step.db, step.run_id, &out)?;
    let ran: Vec<_> = out.models.iter().filter(|m| m.action != "skip").collect();
    let failed_audits = out.audits.iter().filter(|a| a.failing_rows > 0).count();
    let stats = serde_json::json!({
        "models_run": ran.len(),
        "models_skipped": out.models.len() - ran.len(),
        "rows": out.models.iter().filter_map(|m| m.rows.map(|r| (m.model.clone(), serde_json::Value::from(r)))).collect::<serde_json::Map<_, _>>(),
        "audits": out.audits.len(),
        "audits_failed": failed_audits,
        "committed": out.failure.is_none(),
        "new_file": new_file,
    });
    if out.failure.is_none() {
        for m in &out.models {
            println!("{}\t{}\t{}\t{}", m.model, m.action, m.rows.map(|r| r.to_string()).unwrap_or_default(), m.reason);
        }
        materia_common::trigger::signal(&step.layout, layout::TRIGGER_LAKEHOUSE_UPDATED, step.run_id)?;
    }
    let summary = format!(
        "{} models run, {} skipped, {} audits ({} failed){}",
        ran.len(),
        out.models.len() - ran.len(),
        out.audits.len(),
        failed_audits,
        if out.failure.is_some() { "; rolled back" } else { "" }
    );
    log::info!("{summary}");
    Ok(Report { outcome: Outcome::Changed, summary, stats, failure: out.failure })
}

/// Per-model and per-audit results into the state DB, in one transaction (one sync to
/// disk, not one per row: ~25 ms of a coffee run).
fn record(db: &materia_common::StateDb, run_id: i64, out: &run::RunOutcome) -> anyhow::Result<()> {
    let c = db.conn().unchecked_transaction().map_err(|e| db.err(e))?;
    for m in &out.models {
        c.execute(
            "INSERT INTO model_runs (run_id, model, action, reason, rows, duration_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![run_id, m.model, m.action, m.reason, m.rows, m.duration_ms],
        )
        .map_err(|e| db.err(e))?;
    }
    for a in &out.audits {
        c.execute(
            "INSERT INTO audit_results (run_id, model, audit, blocking, failing_rows, sample) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![run_id, a.model, a.audit, a.blocking, a.failing_rows, serde_json::to_string(&a.sample)?],
        )
        .map_err(|e| db.err(e))?;
    }
    c.commit().map_err(|e| db.err(e))?;
    Ok(())
}

#[cfg(test)]
mod cli_tests {
    #[test]
    fn the_flags_are_sound() {
        // clap checks the whole command definition (names, conflicts, defaults).
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
