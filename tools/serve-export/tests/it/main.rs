//! serve-export on real DuckDB files, with real readers in threads.
//!
//! Why this long: one integration binary per tool (fast to link); its tests share the lakehouse, export and reader helpers at the top.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

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

#[test]
fn publishes_every_serving_table_with_its_meta_and_nothing_else() {
    let env = Env::new();
    env.lakehouse(1, 100);
    let run = env.run(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    let export_id = run.stdout.trim().to_owned();
    assert!(export_id.starts_with("1-"), "{export_id}");
    assert_eq!(env.read(&env.analytics()), (1, 100, 1, export_id.clone()));
    let c =
        duckdb::Connection::open_with_flags(env.analytics(), duckdb::Config::default().access_mode(duckdb::AccessMode::ReadOnly).unwrap()).unwrap();
    let mut st = c.prepare("SELECT schema_name || '.' || table_name FROM duckdb_tables() ORDER BY 1").unwrap();
    let tables: Vec<String> = st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(tables, ["main._meta", "serving.numbers", "serving.other"], "tables only: no view, no staging, no engine state");
    let views: i64 = c.query_row("SELECT count(*) FROM duckdb_views() WHERE NOT internal", [], |r| r.get(0)).unwrap();
    assert_eq!(views, 0);
    let (state, counts): (String, String) = c.query_row("SELECT lakehouse_state, row_counts FROM _meta", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!(state.len(), 64);
    assert_eq!(counts, r#"{"numbers":100,"other":1}"#);
    assert!(run.stderr.contains("serving.a_view is a view: only tables are exported"), "{}", run.stderr);
    assert!(env.strays().is_empty(), "{:?}", env.strays());
    assert_eq!(env.state("SELECT action || ' ' || export_id FROM exports"), [format!("publish {export_id}")]);
}

#[test]
fn an_unchanged_lakehouse_is_not_exported_again() {
    let env = Env::new();
    env.lakehouse(1, 10);
    let first = env.run(&[]);
    assert_eq!(first.code, 0);
    let ino = std::fs::metadata(env.analytics()).unwrap().ino();
    let again = env.run(&[]);
    assert_eq!(again.code, 3, "{again:?}");
    assert!(again.stderr.contains("the lakehouse is unchanged since export"), "{}", again.stderr);
    assert_eq!(again.stdout, first.stdout, "the published export id");
    assert_eq!(std::fs::metadata(env.analytics()).unwrap().ino(), ino, "the file was not touched");
    assert!(!env.data.join("analytics.duckdb.prev").exists());
}

#[test]
fn a_new_export_keeps_the_previous_one_and_rollback_swaps_them() {
    let env = Env::new();
    env.lakehouse(1, 10);
    let one = env.run(&[]).stdout.trim().to_owned();
    env.lakehouse(2, 20);
    let run = env.run(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    let two = run.stdout.trim().to_owned();
    let prev = env.data.join("analytics.duckdb.prev");
    assert_eq!(env.read(&env.analytics()), (2, 20, 2, two.clone()));
    assert_eq!(env.read(&prev), (1, 10, 1, one.clone()));

    let run = env.run(&["--rollback"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.trim(), one);
    assert_eq!(env.read(&env.analytics()), (1, 10, 1, one.clone()));
    assert_eq!(env.read(&prev), (2, 20, 2, two.clone()));
    // After a rollback the published file no longer matches the lakehouse: export again.
    let run = env.run(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.read(&env.analytics()).0, 2);
    assert_eq!(env.state("SELECT action FROM exports ORDER BY rowid"), ["publish", "publish", "rollback", "publish"]);
}

#[test]
fn rollback_without_a_previous_export_is_a_clear_error() {
    let env = Env::new();
    let run = env.run(&["--rollback"]);
    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("nothing to roll back to"), "{}", run.error_line());
}

#[test]
fn a_copy_that_does_not_verify_is_never_published() {
    let env = Env::new();
    env.lakehouse(1, 10);
    assert_eq!(env.run(&[]).code, 0);
    let before = (std::fs::metadata(env.analytics()).unwrap().ino(), env.read(&env.analytics()));
    env.lakehouse(2, 10);
    let o = env.cmd().env("SERVE_EXPORT_FAULT", "alter-copy").output().unwrap();
    assert_eq!(o.status.code(), Some(6), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("the export did not verify: serving.numbers: 10 rows, 3 columns in the lakehouse; the copy has numbers with 9 rows"),
        "{stderr}"
    );
    assert_eq!((std::fs::metadata(env.analytics()).unwrap().ino(), env.read(&env.analytics())), before);
    assert!(env.strays().is_empty(), "{:?}", env.strays());
    assert_eq!(env.state("SELECT status FROM runs ORDER BY run_id DESC LIMIT 1"), ["failed"]);

    // A copy whose block the disk broke reads back corrupt: the same exit 6, nothing
    // published, and the fault named as the copy's, not the lakehouse's (no rebuild).
    let o = env.cmd().env("SERVE_EXPORT_FAULT", "corrupt-copy").output().unwrap();
    assert_eq!(o.status.code(), Some(6), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("the export does not read back whole (") && stderr.contains("Corrupt database file"), "{stderr}");
    assert!(stderr.contains("the lakehouse is not at fault") && !stderr.contains("--rebuild"), "{stderr}");
    assert_eq!((std::fs::metadata(env.analytics()).unwrap().ino(), env.read(&env.analytics())), before);
    assert!(env.strays().is_empty(), "{:?}", env.strays());
    assert_eq!(env.state("SELECT CAST(exit_code AS TEXT) FROM runs ORDER BY run_id DESC LIMIT 1"), ["6"]);

    // A block of the new file read back corrupt during the copy itself (DuckDB's message
    // names no file): the lakehouse, read again, is whole, so the copy's disk is named.
    let o = env.cmd().env("SERVE_EXPORT_FAULT", "corrupt-copy-midway").output().unwrap();
    assert_eq!(o.status.code(), Some(6), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("the export reads back corrupt as it is written (") && stderr.contains("Corrupt database file"), "{stderr}");
    assert!(stderr.contains("the lakehouse is not at fault") && !stderr.contains("--rebuild"), "{stderr}");
    assert_eq!((std::fs::metadata(env.analytics()).unwrap().ino(), env.read(&env.analytics())), before);
    assert!(env.strays().is_empty(), "{:?}", env.strays());
    assert_eq!(env.run(&[]).code, 0, "the next export publishes");
}

#[test]
fn a_held_lakehouse_is_refused_or_waited_for() {
    let env = Env::new();
    env.lakehouse(1, 10);
    let lock = materia_common::lock::Lock::acquire(&env.data.join("lakehouse.duckdb.lock"), Duration::ZERO).unwrap();
    let run = env.run(&[]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.error_line().contains("the lakehouse is held by another writer"), "{}", run.error_line());
    assert!(run.error_line().ends_with(&format!("already running (pid {})", std::process::id())));
    assert!(!env.analytics().exists());
    let waiter = env.cmd().args(["--wait-lock", "30"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(lock);
    assert_eq!(waiter.wait_with_output().unwrap().status.code(), Some(0));
    assert!(env.analytics().exists());
}

#[test]
fn no_lakehouse_yet_is_a_clear_error() {
    let env = Env::new();
    let run = env.run(&[]);
    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("lakehouse.duckdb does not exist yet: run lake-transform first"), "{}", run.error_line());
}

#[test]
fn a_corrupt_lakehouse_is_an_integrity_error_naming_the_fix() {
    let env = Env::new();
    std::fs::create_dir_all(&env.data).unwrap();
    std::fs::write(env.data.join("lakehouse.duckdb"), vec![0x5a_u8; 16384]).unwrap();
    let run = env.run(&[]);
    assert_eq!(run.code, 6, "{run:?}");
    let line = run.error_line();
    assert!(line.contains("is not a valid DuckDB database file") && line.contains("`lake-transform run --rebuild` writes it anew"), "{line}");
    assert!(!env.analytics().exists());

    // Every block of the serving tables corrupt, the headers, the catalog and the change
    // marker intact: the file attaches, and DuckDB finds it as the export copies; the
    // lakehouse, read again, is corrupt again: its fault, not the copy's.
    let file = env.data.join("lakehouse.duckdb");
    std::fs::remove_file(&file).unwrap();
    env.lakehouse(1, 10);
    let blocks: Vec<usize> = {
        let c = duckdb::Connection::open(&file).unwrap();
        let tables: Vec<String> = c
            .prepare("SELECT schema_name || '.' || table_name FROM duckdb_tables() WHERE schema_name = 'serving'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut ids = Vec::new();
        for t in tables {
            let mut st = c.prepare(&format!("SELECT DISTINCT block_id FROM pragma_storage_info('{t}') WHERE block_id >= 0")).unwrap();
            ids.extend(st.query_map([], |r| r.get::<_, i64>(0)).unwrap().map(|b| usize::try_from(b.unwrap()).unwrap()));
        }
        ids
    };
    assert!(!blocks.is_empty());
    materia_test_support::corrupt_duckdb_blocks(&file, 262_144, &blocks); // DuckDB's default block size
    let run = env.run(&[]);
    assert_eq!(run.code, 6, "{run:?}");
    let line = run.error_line();
    assert!(line.contains("copying the serving tables") && line.contains("Corrupt database file"), "found copying: {line}");
    assert!(line.contains("`lake-transform run --rebuild` writes it anew") && !line.contains("not at fault"), "{line}");
    assert!(!env.analytics().exists());
    assert!(env.strays().is_empty(), "a copy that failed midway leaves nothing: {:?}", env.strays());
}

#[test]
fn kill_9_at_any_moment_leaves_a_complete_published_file() {
    let env = Env::new();
    env.lakehouse(0, 1000);
    assert_eq!(env.run(&[]).code, 0);
    // How long one export of this size takes here: the kills land at random moments
    // within it (a fixed window would miss a faster export or machine).
    env.lakehouse(1, 2_000_000);
    let t = std::time::Instant::now();
    assert_eq!(env.run(&[]).code, 0);
    let window = t.elapsed().as_millis().max(1) as u64;
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut published = 1;
    let mut killed_mid_run = 0;
    for generation in 2..=21 {
        env.lakehouse(generation, 2_000_000);
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let delay = Duration::from_millis((seed >> 33) % window);
        let mut child = env.cmd().stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill();
        child.wait().unwrap();
        // Whatever moment it died at, the published file is one complete export.
        let (g, rows, other, _) = env.read(&env.analytics());
        assert!(g == published || g == generation, "generation {g} after killing export {generation}");
        assert_eq!(other, g, "both tables come from the same export");
        assert_eq!(rows, if g == 0 { 1000 } else { 2_000_000 });
        published = g;
    }
    assert!(killed_mid_run >= 5, "only {killed_mid_run} kills landed mid-run");
    let run = env.run(&[]);
    assert!(run.code == 0 || run.code == 3, "{run:?}");
    assert_eq!(env.read(&env.analytics()).0, 21);
    assert!(env.strays().is_empty(), "the next run cleared what the killed ones left: {:?}", env.strays());
}

#[test]
fn readers_are_never_torn_never_blocked_and_see_each_new_export_at_once() {
    const READERS: usize = 8;
    const EXPORTS: i64 = 100;
    const ROWS: i64 = 5_000;
    let env = Env::new();
    env.lakehouse(0, ROWS);
    assert_eq!(env.run(&[]).code, 0);

    let published = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (published, stop, seen, path) = (published.clone(), stop.clone(), seen.clone(), env.analytics());
            std::thread::spawn(move || {
                let mut reader = AnalyticsReader::new(path);
                let (mut queries, mut errors, mut stale) = (0u64, Vec::new(), 0u64);
                while !stop.load(Ordering::SeqCst) {
                    let newest = published.load(Ordering::SeqCst);
                    let result = reader.connection().map_err(|e| e.to_string()).and_then(|c| {
                        c.query_row(
                            "SELECT min(generation), max(generation), count(*), (SELECT generation FROM serving.other), (SELECT export_id FROM _meta) FROM serving.numbers",
                            [],
                            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?, r.get::<_, String>(4)?)),
                        )
                        .map_err(|e| e.to_string())
                    });
                    queries += 1;
                    match result {
                        Ok((lo, hi, n, other, id)) => {
                            if lo != hi || n != ROWS || other != lo {
                                errors.push(format!("torn: {lo}..{hi}, {n} rows, other {other}"));
                            }
                            if lo < newest {
                                stale += 1;
                            }
                            seen.lock().unwrap().push((id, lo));
                        }
                        Err(e) => errors.push(e),
                    }
                    // Query continuously, but leave the 2 cores some room for the exports.
                    std::thread::sleep(Duration::from_millis(2));
                }
                (queries, errors, stale, reader.opens())
            })
        })
        .collect();

    let mut ids = std::collections::HashMap::new();
    for generation in 1..=EXPORTS {
        env.lakehouse(generation, ROWS);
        let run = env.run(&[]);
        assert_eq!(run.code, 0, "{run:?}");
        ids.insert(run.stdout.trim().to_owned(), generation);
        published.store(generation, Ordering::SeqCst);
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for r in readers {
        let (queries, errors, stale, opens) = r.join().unwrap();
        assert!(errors.is_empty(), "reader errors: {:?}", &errors[..errors.len().min(5)]);
        assert_eq!(stale, 0, "a query after a publish saw an older export");
        assert!(opens > 1, "the reader followed the swaps ({opens} opens)");
        total += queries;
    }
    assert!(total > EXPORTS as u64 * READERS as u64, "readers kept querying during the exports ({total} queries)");
    // Every result matched exactly one export: its _meta id and its data agree.
    for (id, generation) in seen.lock().unwrap().iter() {
        if *generation > 0 {
            assert_eq!(ids.get(id), Some(generation), "export {id} served generation {generation}");
        }
    }
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).status().is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_owned()))
    }

    fn resize(&self, size: &str) {
        let s = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).status().unwrap();
        assert!(s.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_export_and_keeps_the_published_file() {
    let env = Env::new();
    let Some(fs) = Tmpfs::mount(&env.data, "256m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root, as in CI)");
        return;
    };
    let state_db = env._tmp.path().join("state.sqlite"); // outside the full disk
    let run = |args: &[&str]| env.cmd().arg("--state-db").arg(&state_db).args(args).output().unwrap();
    env.lakehouse(1, 1000);
    assert_eq!(run(&[]).status.code(), Some(0));
    let before = (std::fs::metadata(env.analytics()).unwrap().ino(), env.read(&env.analytics()));

    // A much bigger export, on a disk with 1 MiB left.
    {
        let c = duckdb::Connection::open(env.data.join("lakehouse.duckdb")).unwrap();
        c.execute_batch(
            "CREATE OR REPLACE TABLE serving.numbers AS SELECT i AS id, 2 AS generation, random() AS value FROM range(2000000) t(i);
             UPDATE _materia.models SET run_id = 2;",
        )
        .unwrap();
    }
    let used_kib: u64 = String::from_utf8(Command::new("du").args(["-sk"]).arg(&env.data).output().unwrap().stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    fs.resize(&format!("{}k", used_kib + 1024));

    let o = run(&[]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("serve-export: error: copying the serving tables into"), "{stderr}");
    assert!(stderr.to_lowercase().contains("space"), "{stderr}");
    eprintln!("full-disk error as reported: {}", stderr.lines().last().unwrap_or_default());
    assert_eq!((std::fs::metadata(env.analytics()).unwrap().ino(), env.read(&env.analytics())), before);
    assert!(env.strays().is_empty(), "{:?}", env.strays());

    // With room again, the export goes through.
    fs.resize("256m");
    assert_eq!(run(&[]).status.code(), Some(0));
    assert_eq!(env.read(&env.analytics()).0, 2);
}
