//! What never publishes: a copy that does not verify or reads back corrupt, a held,
//! missing or corrupt lakehouse, a `kill -9`, a full disk.

use super::*;

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

/// Past DuckDB's memory limit an export spills to `DATA_DIR/spill/serve-export` (the
/// unit's working dir is read-only); what a killed export spilled there is removed by
/// the next one, and only that.
#[test]
fn an_export_spills_to_its_own_dir_and_clears_what_a_killed_one_spilled() {
    let env = Env::new();
    env.lakehouse(1, 100);
    let spill = env.data.join("spill/serve-export");
    std::fs::create_dir_all(&spill).unwrap();
    std::fs::write(spill.join("duckdb_temp_storage_DEFAULT-0.tmp"), vec![0u8; 4096]).unwrap();
    std::fs::write(spill.join("notes.txt"), "an operator's file").unwrap();
    let run = env.run(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!spill.join("duckdb_temp_storage_DEFAULT-0.tmp").exists(), "the stale spill file is removed");
    assert_eq!(std::fs::read_to_string(spill.join("notes.txt")).unwrap(), "an operator's file");
    assert_eq!(env.read(&env.analytics()).0, 1);
}

#[test]
fn a_full_disk_fails_the_export_and_keeps_the_published_file() {
    let env = Env::new();
    let Some(fs) = materia_test_support::tmpfs::Tmpfs::mount(&env.data, "256m") else { return };
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
    fs.leave_free(1024);

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
