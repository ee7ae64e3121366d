//! The lake's upkeep: `extensions` (the DuckDB extensions a DuckLake needs load offline)
//! and `maintain` (keep a DuckLake small; compact the local file: compact.rs).

use std::time::Duration;

use duckdb::Connection;
use materia_common::duckdb_config;
use materia_common::lakehouse_target::{LakehouseArgs, Target};
use materia_common::{CommonArgs, Outcome, Report};

use crate::DEV_EXTENSIONS;

/// Load each extension from the offline directory (never downloaded); the first that
/// does not load fails the check, naming the fix.
pub(crate) fn extensions() -> anyhow::Result<Outcome> {
    let conn = Connection::open_in_memory_with_flags(duckdb_config::config(DEV_EXTENSIONS)?)?;
    for name in duckdb_config::EXTENSIONS {
        duckdb_config::load(&conn, name, DEV_EXTENSIONS)?;
        let (version, path): (String, String) = conn.query_row(
            "SELECT coalesce(extension_version, ''), coalesce(install_path, '') FROM duckdb_extensions() WHERE extension_name = ?",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        println!("{name}\t{version}\t{path}");
    }
    Ok(Outcome::Changed)
}

/// `maintain`: recorded as a run of its own step (`lake-maintain`), under both writer
/// locks (it rewrites the lake's files), which also keep it from running beside a
/// transform.
pub(crate) fn maintain(common: &CommonArgs, lakehouse: &LakehouseArgs, keep_days: u32, memory: &crate::memory::Memory) -> anyhow::Result<Outcome> {
    materia_common::run_step(materia_common::layout::MAINTAIN_STEP, common, |step| {
        let target = lakehouse.lakehouse(step.layout.lakehouse(), DEV_EXTENSIONS)?;
        let _lock = materia_common::lock::lakehouse(&step.layout, Duration::from_secs(common.wait_lock))?;
        let _lake_lock = target.writer_lock(Duration::from_secs(common.wait_lock))?;
        // Never creates one: a lake that does not exist yet is an error, as a missing file.
        let Some(conn) = target.open_existing_writable()? else {
            anyhow::bail!("{} does not exist yet: run lake-transform first", target.describe());
        };
        memory.bound(&conn, &step.layout)?;
        let mut done = serde_json::Map::new();
        if let Target::File(path) = &target.target {
            // The copy reads every block of the file, so a block DuckDB finds corrupt is
            // found here, weekly, even one no run reads: exit 6, naming the fix, the file
            // left as it was.
            let c = crate::compact::compact(conn, path).map_err(|e| target.corrupt(e))?;
            println!("compacted\t{}\t{}", c.before, c.after);
            let summary = format!("compacted {}: {} → {} bytes", target.describe(), c.before, c.after);
            log::info!("{summary}");
            let stats = serde_json::json!({"bytes_before": c.before, "bytes_after": c.after});
            return Ok(Report { outcome: Outcome::Changed, summary, stats, failure: None });
        }
        // Each call commits on its own: the lake is whole between any two.
        let steps: [(&str, String); 5] = [
            ("flushed_tables", "CALL ducklake_flush_inlined_data('lakehouse')".into()),
            ("merged_tables", "CALL ducklake_merge_adjacent_files('lakehouse')".into()),
            ("expired_snapshots", format!("CALL ducklake_expire_snapshots('lakehouse', older_than => now() - INTERVAL {keep_days} DAY)")),
            ("removed_files", "CALL ducklake_cleanup_old_files('lakehouse', cleanup_all => true)".into()),
            // Files a killed run wrote and never committed (no writer is running: we hold
            // the lake's lock), past the same age.
            ("removed_orphans", format!("CALL ducklake_delete_orphaned_files('lakehouse', older_than => now() - INTERVAL {keep_days} DAY)")),
        ];
        for (what, sql) in steps {
            let mut st = conn.prepare(&sql)?;
            let n = st.query_map([], |_| Ok(()))?.count();
            println!("{what}\t{n}");
            done.insert(what.into(), n.into());
        }
        let summary = format!(
            "maintained {}: {}",
            target.describe(),
            done.iter().map(|(k, v)| format!("{v} {}", k.replace('_', " "))).collect::<Vec<_>>().join(", ")
        );
        log::info!("{summary}");
        Ok(Report { outcome: Outcome::Changed, summary, stats: serde_json::Value::Object(done), failure: None })
    })
}
