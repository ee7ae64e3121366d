//! A run that fails leaves the lakehouse as the last good run left it, says why once,
//! and stops no later run: a failed blocking audit, a `kill -9`, a full disk.

use super::*;

#[test]
fn a_blocking_audit_failure_rolls_the_whole_run_back() {
    let (a, _) = two_releases();
    let env = Env::new();
    env.land("2024-01", &a);
    assert_eq!(env.run(&["run"]).code, 0);
    let before = env.snapshot();

    // A release with a duplicated key: raw.psd's grain audit (one value per key in a
    // file) must stop it.
    let mut rows = balance("BR", 2022, 50.0);
    rows.push(("BR", 2022, "028", 51.0));
    env.land("2024-02", &csv(&rows));
    let run = env.run(&["run"]);
    assert_eq!(run.code, 5, "{run:?}");
    let line = run.error_line();
    assert!(line.contains("audit unique_combination_of_columns on raw.psd failed: 1 offending row") && line.contains("rolled back"), "{line}");
    assert_eq!(env.snapshot(), before, "the lakehouse is exactly at the previous state");
    assert_eq!(env.state_rows("SELECT status FROM runs ORDER BY run_id DESC LIMIT 1"), ["Text(\"failed\")"]);
    assert_eq!(
        env.state_rows("SELECT model, blocking, failing_rows FROM audit_results WHERE failing_rows > 0 AND run_id = (SELECT max(run_id) FROM runs)"),
        ["Text(\"raw.psd\")|Integer(1)|Integer(1)"]
    );
    // Still failing on the next run (the bad file was not recorded as loaded).
    assert_eq!(env.run(&["run"]).code, 5);

    // A rebuild writes a new file: failing, it replaces nothing and leaves no file behind.
    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.error_line().contains("audit unique_combination_of_columns on raw.psd failed"), "{}", run.error_line());
    assert_eq!(env.snapshot(), before, "the lakehouse is exactly at the previous state");
    let names: Vec<String> = std::fs::read_dir(&env.data).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.contains("-tmp-")), "{names:?}");
}

#[test]
fn kill_9_mid_run_leaves_the_previous_state() {
    let (a, _) = two_releases();
    let env = Env::new();
    env.land("2024-01", &a);
    assert_eq!(env.run(&["run"]).code, 0);
    let before = env.snapshot();

    // A big second release, so the run is still busy when it is killed.
    let mut rows: Vec<Row> = Vec::new();
    let countries: Vec<&'static str> = (0..1000).map(|i| &*Box::leak(format!("X{i:03}").into_boxed_str())).collect();
    for c in &countries {
        for y in 1960..2024 {
            rows.extend(balance(c, y, 1.0));
        }
    }
    env.land("2024-02", &csv(&rows));
    let mut child = env.cmd().arg("run").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let finished_early = child.try_wait().unwrap().is_some();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!finished_early, "the run finished before it could be killed");
    assert_eq!(env.snapshot(), before, "a killed run leaves the last good state");

    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.rows("SELECT count(*) FROM serving.commodity_balance"), [(1000 * 64).to_string()], "the latest release only");
    assert_eq!(
        env.state_rows("SELECT status FROM runs WHERE tool = 'lake-transform' ORDER BY run_id"),
        ["Text(\"success\")", "Text(\"aborted\")", "Text(\"success\")"]
    );

    // A rebuild builds a new file beside the lakehouse: killed, it leaves the lakehouse
    // as it was, and the next run, with nothing to do, removes what it left.
    let before = env.snapshot();
    let served = serving_state(&env);
    let temps = |env: &Env| -> Vec<String> {
        std::fs::read_dir(&env.data).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.contains("-tmp-")).collect()
    };
    let mut child = env.cmd().args(["run", "--rebuild"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    materia_test_support::wait_until("the rebuild's new file", Duration::from_secs(30), || !temps(&env).is_empty());
    std::thread::sleep(Duration::from_millis(100));
    let finished_early = child.try_wait().unwrap().is_some();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!finished_early, "the rebuild finished before it could be killed");
    let left = temps(&env); // the new file, and its WAL if it had committed a model yet
    assert!(!left.is_empty() && left.iter().all(|n| n.starts_with(".lakehouse.build-tmp-")), "the killed rebuild's files: {left:?}");
    assert_eq!(env.snapshot(), before, "a killed rebuild leaves the last good state");
    let run = env.run(&["run"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("left by an interrupted run or maintain"), "{}", run.stderr);
    assert_eq!(temps(&env), Vec::<String>::new());
    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(serving_state(&env), served, "the rebuilt file holds what the runs built");
    assert_eq!(temps(&env), Vec::<String>::new());
}

#[test]
fn a_full_disk_fails_the_run_cleanly_and_the_next_one_goes_through() {
    let (a, _) = two_releases();
    let env = Env::new();
    // The server's layout: landing, state DB and lakehouse on one disk, which fills up.
    let Some(disk) = materia_test_support::tmpfs::Tmpfs::mount(&env.data, "256m") else { return };
    let strays = |env: &Env| -> Vec<String> {
        let names = std::fs::read_dir(&env.data).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
        names.filter(|n| n.contains("-tmp-") || n.ends_with(".wal")).collect()
    };
    env.land("2024-01", &a);

    // A first build that does not fit: its new file is removed, which frees the disk for
    // the run's record.
    disk.leave_free(256);
    let run = env.run(&["run"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().contains("No space left on device"), "{}", run.error_line());
    assert!(!env.data.join("lakehouse.duckdb").exists());
    assert_eq!(strays(&env), Vec::<String>::new());
    let recorded = env.state_rows("SELECT status, error FROM runs WHERE tool = 'lake-transform'");
    assert!(recorded.len() == 1 && recorded[0].starts_with("Text(\"failed\")|") && recorded[0].contains("No space left on device"), "{recorded:?}");

    disk.resize("256m");
    assert_eq!(env.run(&["run"]).code, 0);
    let before = env.snapshot();

    // A large new release on a full disk: DuckDB writes its row groups into the file, whose
    // growth stays when the write fails, so the state DB cannot record the run's end
    // either. The run's own error is the one reported (and its exit code); the record's
    // failure is logged beside it.
    let countries: Vec<String> = (0..1000).map(|i| format!("X{i:03}")).collect();
    let mut rows: Vec<Row> = Vec::new();
    for c in &countries {
        let c: &'static str = Box::leak(c.clone().into_boxed_str());
        for y in 1960..2024 {
            rows.extend(balance(c, y, 1.0));
        }
    }
    env.land("2024-02", &csv(&rows));
    disk.leave_free(64);
    let run = env.run(&["run"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().starts_with("lake-transform: error: ") && run.error_line().contains("No space left on device"), "{}", run.error_line());
    assert!(run.stderr.contains("recording the end of the run: state DB"), "{}", run.stderr);
    assert!(!run.stderr.contains("disk is full: database or disk is full"), "said once: {}", run.stderr);
    assert_eq!(env.snapshot(), before, "the lakehouse is exactly at the previous state");
    assert_eq!(strays(&env), Vec::<String>::new());

    // With room again, the next run marks the unrecorded one and lands the release, as a
    // rebuild would.
    disk.resize("256m");
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    let runs = env.state_rows("SELECT status, error FROM runs WHERE tool = 'lake-transform' ORDER BY run_id");
    assert_eq!(runs.len(), 4, "{runs:?}");
    assert!(runs[2].starts_with("Text(\"aborted\")|") && runs[2].contains("could not write the state DB"), "{runs:?}");
    let incremental = serving_state(&env);
    assert_eq!(env.rows("SELECT count(DISTINCT release) FROM serving.releases"), ["2"]);
    assert_eq!(env.run(&["run", "--rebuild"]).code, 0);
    assert_eq!(serving_state(&env), incremental);
}
