//! serve-export on real DuckDB files, with real readers in threads.
//!
//! The shared lakehouse and export helpers are here; the tests are in the modules, by topic.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod failures;
mod publish;

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use materia_common::reader::AnalyticsReader;
use materia_test_support::Run;

struct Env {
    _tmp: materia_test_support::TestDir,
    data: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = materia_test_support::temp_dir();
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        Env { _tmp: tmp, data }
    }

    fn cmd(&self) -> Command {
        let mut c = materia_test_support::tool(env!("CARGO_BIN_EXE_serve-export"));
        c.arg("--data-dir").arg(&self.data);
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd().args(args).output().unwrap())
    }

    /// A lakehouse as lake-transform leaves it: serving tables stamped with `generation`,
    /// and the engine's model records (whose change is what serve-export notices).
    fn lakehouse(&self, generation: i64, rows: i64) {
        let c = duckdb::Connection::open(self.data.join("lakehouse.duckdb")).unwrap();
        c.execute_batch(&format!(
            "CREATE SCHEMA IF NOT EXISTS serving; CREATE SCHEMA IF NOT EXISTS _materia; CREATE SCHEMA IF NOT EXISTS staging;
             CREATE OR REPLACE TABLE staging.hidden AS SELECT 1 AS x;
             CREATE OR REPLACE TABLE serving.numbers AS SELECT i AS id, {generation} AS generation, i * 0.5 AS value FROM range({rows}) t(i);
             CREATE OR REPLACE TABLE serving.other AS SELECT {generation} AS generation, 'x' AS label, DATE '2024-01-01' AS release;
             CREATE OR REPLACE VIEW serving.a_view AS SELECT * FROM serving.other;
             CREATE OR REPLACE TABLE _materia.models AS
               SELECT 'serving.numbers' AS name, 'fp' AS fingerprint, 'FULL' AS kind, {rows}::BIGINT AS rows,
                      {generation}::BIGINT AS run_id, now()::TIMESTAMP AS built_at;"
        ))
        .unwrap();
    }

    fn analytics(&self) -> PathBuf {
        self.data.join("analytics.duckdb")
    }

    /// (generation of serving.numbers (min = max), its rows, generation of serving.other, _meta.export_id)
    fn read(&self, path: &std::path::Path) -> (i64, i64, i64, String) {
        let mut r = AnalyticsReader::new(path);
        let c = r.connection().unwrap();
        c.query_row(
            "SELECT (SELECT CASE WHEN min(generation) = max(generation) THEN min(generation) ELSE -1 END FROM serving.numbers),
                    (SELECT count(*) FROM serving.numbers), (SELECT generation FROM serving.other), (SELECT export_id FROM _meta)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
    }

    /// Files beside analytics.duckdb that are not part of the published set.
    fn strays(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.data)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".analytics") || n.ends_with(".wal") && n.starts_with("analytics"))
            .collect();
        out.sort();
        out
    }

    fn state(&self, sql: &str) -> Vec<String> {
        let c = rusqlite::Connection::open(self.data.join("landing/.state.sqlite")).unwrap();
        let mut st = c.prepare(sql).unwrap();
        st.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap).collect()
    }
}
