//! `run --profile DIR`: where a run's time and memory go, statement by statement. Each
//! statement that writes a model's rows (a build's `CREATE`, an append's or a merge's
//! `INSERT`, a merge's `DELETE`) runs as DuckDB's `EXPLAIN (ANALYZE, FORMAT json)`: the
//! same statement, executed in the run's transaction, returning its profile (the plan's
//! operators with their time, rows and rows scanned; the statement's CPU time and peak
//! memory) as a result, not as a file DuckDB writes (the sandbox lets DuckDB write no
//! file but its database, and DuckDB 1.5.5 fails internally when its profiler is
//! refused one). Each audit query is profiled the same way, then run again for its rows.
//!
//! The tool writes each profile to `DIR/run-<run id>/NN-<model>.<statement>.json`, and
//! one line per statement to `profile.tsv` beside them.

use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use duckdb::Connection;

/// Profiles a run's statements into one directory of its own.
pub struct Profiler {
    dir: PathBuf,
    next: Cell<u32>,
    tsv: RefCell<std::fs::File>,
}

/// What a profile says about its statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Wall time, seconds.
    pub seconds: f64,
    /// CPU time of DuckDB's threads, seconds.
    pub cpu_seconds: f64,
    /// DuckDB's peak buffer memory, bytes.
    pub peak_memory: u64,
    /// Rows read from tables (whole row groups: what pruning left).
    pub rows_scanned: u64,
    /// The operators that took longest, slowest first, with their seconds (summed over threads).
    pub slowest: Vec<(String, f64)>,
}

const TSV_HEADER: &str = "seq\tmodel\tstatement\tseconds\tcpu_seconds\tpeak_memory_mib\trows_scanned\tslowest_operators\n";

impl Profiler {
    /// The profiler of run `run_id` if `--profile` gave a dir; a dir that cannot be made
    /// is a bad flag (exit 2).
    pub fn for_run(base: Option<&Path>, run_id: i64) -> anyhow::Result<Option<Profiler>> {
        base.map(|dir| {
            Profiler::create(dir, run_id)
                .map_err(|e| materia_common::exit::Usage(format!("--profile: {}", materia_common::exit::one_line(&e))).into())
        })
        .transpose()
    }

    /// Profiles go to `base/run-<run_id>/`, a new directory (a run's profiles are never
    /// mixed with another's).
    pub fn create(base: &Path, run_id: i64) -> anyhow::Result<Profiler> {
        let dir = base.join(format!("run-{run_id}"));
        std::fs::create_dir_all(base).with_context(|| format!("creating the profile dir {}", base.display()))?;
        std::fs::create_dir(&dir).with_context(|| format!("creating the profile dir {}", dir.display()))?;
        let mut tsv = std::fs::File::create(dir.join("profile.tsv")).with_context(|| format!("creating {}/profile.tsv", dir.display()))?;
        tsv.write_all(TSV_HEADER.as_bytes())?;
        log::info!("profiling every statement into {}", dir.display());
        Ok(Profiler { dir, next: Cell::new(1), tsv: RefCell::new(tsv) })
    }

    /// Execute `sql` (one statement) profiled, as `model`'s `statement` (`build`,
    /// `insert`, `delete`, `audit-<name>`): what its profile says.
    pub fn execute(&self, conn: &Connection, model: &str, statement: &str, sql: &str) -> anyhow::Result<Summary> {
        let json: String = conn.query_row(&format!("EXPLAIN (ANALYZE, FORMAT json) {sql}"), [], |r| r.get(1))?;
        let seq = self.next.get();
        self.next.set(seq + 1);
        let name = format!("{seq:02}-{model}.{statement}.json");
        let path = self.dir.join(&name);
        std::fs::write(&path, &json).with_context(|| format!("writing {}", path.display()))?;
        let profile: serde_json::Value =
            serde_json::from_str(&json).with_context(|| format!("DuckDB's profile of {model} ({statement}) is not JSON"))?;
        let s = summarize(&profile);
        let slowest = s.slowest.iter().map(|(op, t)| format!("{op} {t:.3}")).collect::<Vec<_>>().join(", ");
        writeln!(
            self.tsv.borrow_mut(),
            "{seq}\t{model}\t{statement}\t{:.3}\t{:.3}\t{:.1}\t{}\t{slowest}",
            s.seconds,
            s.cpu_seconds,
            mib(s.peak_memory),
            s.rows_scanned
        )
        .with_context(|| format!("writing {}/profile.tsv", self.dir.display()))?;
        log::info!(
            "profile {name}: {:.3} s, CPU {:.3} s, peak {:.1} MiB, {} rows scanned; slowest: {slowest}",
            s.seconds,
            s.cpu_seconds,
            mib(s.peak_memory),
            s.rows_scanned
        );
        Ok(s)
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The numbers of a DuckDB JSON profile (the root is the query, its child
/// `EXPLAIN_ANALYZE`, whose child is the statement's top operator). Not the rows a
/// statement wrote: where they show depends on the engine (a DuckLake insert's top
/// operators count the files it wrote).
pub fn summarize(profile: &serde_json::Value) -> Summary {
    let f = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let u = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let mut operators = Vec::new();
    operators_of(profile, &mut operators);
    let mut slowest: Vec<(String, f64)> = operators
        .iter()
        .filter(|o| o.get("operator_type").and_then(|t| t.as_str()) != Some("EXPLAIN_ANALYZE"))
        .map(|o| (o.get("operator_name").and_then(|n| n.as_str()).unwrap_or("?").trim().to_owned(), f(o, "operator_timing")))
        .collect();
    slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
    slowest.truncate(3);
    Summary {
        seconds: f(profile, "latency"),
        cpu_seconds: f(profile, "cpu_time"),
        peak_memory: u(profile, "system_peak_buffer_memory"),
        rows_scanned: u(profile, "cumulative_rows_scanned"),
        slowest,
    }
}

/// Every operator of the profile's plan, depth first.
pub fn operators_of<'a>(node: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    for child in node.get("children").and_then(|c| c.as_array()).into_iter().flatten() {
        out.push(child);
        operators_of(child, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profiled_statement_runs_and_its_profile_says_what_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t AS SELECT range AS i FROM range(10)").unwrap();
        let p = Profiler::create(dir.path(), 7).unwrap();
        let s = p.execute(&conn, "main.t", "insert", "INSERT INTO t SELECT range FROM range(1000)").unwrap();
        assert!(s.slowest.iter().any(|(op, _)| op == "INSERT"), "{s:?}");
        let s = p.execute(&conn, "main.t", "delete", "DELETE FROM t WHERE i < 5").unwrap();
        assert_eq!(s.rows_scanned, 1010);
        let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1000, "the statements ran: 10 + 1000 rows, 10 deleted");
        let run = dir.path().join("run-7");
        assert!(run.join("01-main.t.insert.json").is_file());
        assert!(run.join("02-main.t.delete.json").is_file());
        let tsv = std::fs::read_to_string(run.join("profile.tsv")).unwrap();
        assert_eq!(tsv.lines().count(), 3, "{tsv}");
        assert!(tsv.lines().nth(2).unwrap().starts_with("2\tmain.t\tdelete\t"), "{tsv}");
        assert!(Profiler::create(dir.path(), 7).is_err(), "a run's profiles are never mixed with another's");
    }
}
