//! serve-export: publish the lakehouse's `serving.*` tables as `analytics.duckdb`.
//!
//! Under the lakehouse lock (shared with lake-transform), an in-memory DuckDB attaches
//! the lakehouse read-only and a temp file beside `analytics.duckdb`, copies every
//! `serving.*` table (tables, not views) plus a `_meta` table, checkpoints and detaches.
//! The temp file is verified on its own (tables, columns, row counts, `_meta`), fsynced,
//! and renamed over `analytics.duckdb`, the previous file kept as
//! `analytics.duckdb.prev`; the directory is fsynced. Readers follow the contract in
//! `materia_common::reader`. `--rollback` swaps the two files in one atomic rename.
//!
//! stdout gets the id of the export that is published afterwards.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::Parser;
use duckdb::Connection;
use materia_common::duckdb_config::{self, wal_path as wal};
use materia_common::lakehouse;
use materia_common::lakehouse_target::{LakehouseArgs, Target};
use materia_common::layout::Layout;
use materia_common::{CommonArgs, Outcome, Report, Step};
use sha2::{Digest as _, Sha256};

use crate::copy::{copy, source_tables, sql_str, verify};

mod copy;

/// The tool's name: binary, step lock and `runs.tool`.
pub const TOOL: &str = "serve-export";

/// A development build's DuckDB extension directory (none in a release build).
const DEV_EXTENSIONS: Option<&str> = option_env!("MATERIA_DEV_DUCKDB_EXTENSIONS");

/// Temp files beside analytics.duckdb start with this (DuckDB adds `.wal` to its own).
const TMP_PREFIX: &str = ".analytics.duckdb.";

/// Publish the lakehouse's serving tables as analytics.duckdb, or roll back.
///
/// Exit codes: 0 published (or rolled back), 3 the lakehouse is unchanged since the
/// published export, 1 failed, 4 already running or the lakehouse is held, 6 the copy
/// did not verify. Whatever fails, the published analytics.duckdb stays as it was.
#[derive(Debug, Parser)]
#[command(name = TOOL, version)]
pub struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    #[command(flatten)]
    lakehouse: LakehouseArgs,

    /// Swap the published export with the previous one (analytics.duckdb.prev).
    #[arg(long)]
    rollback: bool,
}

/// Run the tool.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    materia_common::init_logging(&cli.common);
    if cli.rollback { rollback(&cli.common) } else { publish(&cli.common, &cli.lakehouse) }
}

/// What `_meta` of a published file says.
#[derive(Debug)]
struct Meta {
    export_id: String,
    lakehouse_state: String,
}

fn publish(common: &CommonArgs, lakehouse: &LakehouseArgs) -> anyhow::Result<Outcome> {
    materia_common::run_step(TOOL, common, |step| {
        let layout = step.layout.clone();
        sweep(layout.data_dir())?;
        let lakehouse = lakehouse.lakehouse(layout.lakehouse(), DEV_EXTENSIONS)?;
        // The local file is read under its lock (lake-transform writes it in place); a
        // DuckLake is read at one snapshot, pinned, whatever commits meanwhile.
        let lock = match &lakehouse.target {
            Target::File(path) => {
                let lock = materia_common::lock::lakehouse(&layout, Duration::from_secs(common.wait_lock))?;
                if !path.exists() {
                    anyhow::bail!("{} does not exist yet: run lake-transform first", path.display());
                }
                Some(lock)
            }
            Target::DuckLake { .. } => None,
        };
        let t = std::time::Instant::now();
        let db = Connection::open_in_memory_with_flags(duckdb_config::config(DEV_EXTENSIONS)?)?;
        // Past DuckDB's memory limit (its default: 80 % of the memory the unit allows) the
        // copy spills here, not into `.tmp` in the working dir (read-only in the unit).
        duckdb_config::spill_to(&db, &std::path::absolute(layout.spill_dir(TOOL))?)?;
        let snapshot = lakehouse.attach_read(&db)?;
        log::debug!("attached {} in {:?}", lakehouse.describe(), t.elapsed());
        // A corrupt block of the local file, found as the reads below reach it: exit 6,
        // naming the fix, as when the file does not open.
        let reading = |e| lakehouse.corrupt(e);
        if let Some(id) = snapshot {
            log::info!("reading {} at snapshot {id}", lakehouse.describe());
        }
        let state = lakehouse_state(&db).map_err(reading)?;
        if let Some(meta) = published_meta(&db, &layout.analytics())
            && meta.lakehouse_state == state
        {
            let summary = format!("nothing to do: the lakehouse is unchanged since export {}", meta.export_id);
            log::info!("{summary}");
            println!("{}", meta.export_id);
            return Ok(Report { outcome: Outcome::Unchanged, summary, stats: serde_json::json!({}), failure: None });
        }
        log::debug!("read its state and the published _meta in {:?}", t.elapsed());
        let tables = source_tables(&db).map_err(reading)?;
        if tables.is_empty() {
            anyhow::bail!("the lakehouse has no serving tables to export");
        }
        let export_id = format!("{}-{}", step.run_id, &state[..12]);
        let tmp = layout.data_dir().join(format!("{TMP_PREFIX}tmp-{}", std::process::id()));
        let guard = TempGuard(tmp.clone());
        log::debug!("listed {} serving tables in {:?}", tables.len(), t.elapsed());
        copy(&db, &tmp, &tables, &export_id, &state, snapshot).map_err(|e| reading(copy::whose_corrupt_block(&db, &tables, &tmp, e)))?;
        log::debug!("copied them in {:?}", t.elapsed());
        db.execute_batch("DETACH lakehouse")?;
        drop(lock); // the lakehouse is not needed any more
        verify(&db, &tmp, &tables, &export_id)?;
        drop(db);
        log::debug!("verified the copy in {:?}", t.elapsed());
        let bytes = std::fs::metadata(&tmp)?.len();
        publish_file(&tmp, &layout)?;
        guard.disarm();
        log::debug!("published in {:?}", t.elapsed());
        let rows: i64 = tables.iter().map(|t| t.rows).sum();
        record(step, "publish", &export_id, &state, Some((tables.len(), rows, bytes)))?;
        println!("{export_id}");
        let summary = format!("published export {export_id}: {} tables, {rows} rows, {bytes} bytes", tables.len());
        log::info!("{summary}");
        let stats = serde_json::json!({"export_id": export_id, "tables": tables.len(), "rows": rows, "bytes": bytes});
        Ok(Report { outcome: Outcome::Changed, summary, stats, failure: None })
    })
}

fn rollback(common: &CommonArgs) -> anyhow::Result<Outcome> {
    materia_common::run_step(TOOL, common, |step| {
        let layout = step.layout.clone();
        sweep(layout.data_dir())?;
        let (current, prev) = (layout.analytics(), layout.analytics_prev());
        if !prev.exists() {
            anyhow::bail!("nothing to roll back to: {} does not exist", prev.display());
        }
        if current.exists() {
            rustix::fs::renameat_with(rustix::fs::CWD, &current, rustix::fs::CWD, &prev, rustix::fs::RenameFlags::EXCHANGE)
                .with_context(|| format!("swapping {} and {}", current.display(), prev.display()))?;
        } else {
            std::fs::rename(&prev, &current).with_context(|| format!("renaming {}", prev.display()))?;
        }
        materia_common::atomic::sync_dir(layout.data_dir())?;
        let db = Connection::open_in_memory_with_flags(duckdb_config::config(DEV_EXTENSIONS)?)?;
        let meta = published_meta(&db, &current).ok_or_else(|| anyhow!("{} has no readable _meta after the swap", current.display()))?;
        record(step, "rollback", &meta.export_id, &meta.lakehouse_state, None)?;
        println!("{}", meta.export_id);
        let summary = format!("rolled back: export {} is published again", meta.export_id);
        log::info!("{summary}");
        Ok(Report { outcome: Outcome::Changed, summary, stats: serde_json::json!({"export_id": meta.export_id}), failure: None })
    })
}

/// Remove what a killed run left beside analytics.duckdb (we hold the step lock).
fn sweep(dir: &Path) -> anyhow::Result<()> {
    for e in materia_common::read_dir_or_empty(dir)? {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(TMP_PREFIX) && name.contains("tmp-") {
            log::warn!("removing {name}, left by an interrupted export");
            std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// Removes a temp export (and its WAL) unless disarmed.
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

/// The lakehouse's state: a digest of its change marker (the contract in
/// `materia_common::lakehouse`). It changes whenever a run changed anything.
fn lakehouse_state(db: &Connection) -> anyhow::Result<String> {
    let mut st =
        db.prepare(&lakehouse::change_marker_sql("lakehouse")).context("reading lakehouse._materia.models (is this a lake-transform lakehouse?)")?;
    let mut h = Sha256::new();
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?)))? {
        let (n, f, run, rows) = row?;
        h.update(format!("{n}\0{f}\0{run}\0{rows}\n").as_bytes());
    }
    Ok(materia_common::hex(&h.finalize()))
}

/// fsync the new file, keep the current one as .prev, rename the new one in, fsync the dir.
fn publish_file(tmp: &Path, layout: &Layout) -> anyhow::Result<()> {
    std::fs::File::open(tmp).and_then(|f| f.sync_all()).with_context(|| format!("fsync {}", tmp.display()))?;
    let (current, prev) = (layout.analytics(), layout.analytics_prev());
    if current.exists() {
        let prev_tmp = layout.data_dir().join(format!("{TMP_PREFIX}prev.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&prev_tmp);
        std::fs::hard_link(&current, &prev_tmp).with_context(|| format!("linking {}", current.display()))?;
        std::fs::rename(&prev_tmp, &prev).with_context(|| format!("renaming to {}", prev.display()))?;
    }
    std::fs::rename(tmp, &current).with_context(|| format!("renaming to {}", current.display()))?;
    materia_common::atomic::sync_dir(layout.data_dir())?;
    Ok(())
}

/// `_meta` of a published file, if it has a readable one (attached to `db` to read it).
fn published_meta(db: &Connection, path: &Path) -> Option<Meta> {
    if !path.exists() {
        return None;
    }
    let read = || -> anyhow::Result<Meta> {
        db.execute_batch(&format!("ATTACH {} AS published (READ_ONLY)", sql_str(path)))?;
        let meta = db.query_row("SELECT export_id, lakehouse_state FROM published.main._meta", [], |r| {
            Ok(Meta { export_id: r.get(0)?, lakehouse_state: r.get(1)? })
        });
        db.execute_batch("DETACH published")?;
        Ok(meta?)
    };
    match read() {
        Ok(m) => Some(m),
        Err(e) => {
            log::warn!("{}: no readable _meta ({e}); exporting anew", path.display());
            None
        }
    }
}

fn record(step: &Step, action: &str, export_id: &str, state: &str, size: Option<(usize, i64, u64)>) -> anyhow::Result<()> {
    let (tables, rows, bytes) = match size {
        Some((t, r, b)) => (Some(t as i64), Some(r), Some(b as i64)),
        None => (None, None, None),
    };
    step.db
        .conn()
        .execute(
            &format!(
                "INSERT INTO exports (run_id, action, export_id, lakehouse_state, tables, rows, bytes, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, {})",
                materia_common::state::NOW
            ),
            rusqlite::params![step.run_id, action, export_id, state, tables, rows, bytes],
        )
        .map_err(|e| step.db.err(e))?;
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
