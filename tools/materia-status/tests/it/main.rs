//! materia-status over a real state DB, while another process holds it open for writing.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

fn status(data: &std::path::Path, args: &[&str]) -> (i32, String) {
    let o = materia_test_support::tool(env!("CARGO_BIN_EXE_materia-status")).arg("--data-dir").arg(data).args(args).output().unwrap();
    (o.status.code().unwrap(), String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn reports_every_step_and_the_backup_lag_while_a_writer_is_busy() {
    let tmp = materia_test_support::temp_dir();
    let data = tmp.path().join("data");
    let db = materia_common::StateDb::open(&data.join("landing/.state.sqlite")).unwrap();
    let run = db.begin_run("psd-extract").unwrap();
    db.finish_run(run, materia_common::state::RunStatus::Success, 0, "checked 1, landed 2", None, &serde_json::json!({"landed": 2})).unwrap();
    for (i, p) in ["psd/2024/01/a.csv.gzip", "psd/2024/02/b.csv.gzip"].iter().enumerate() {
        db.conn()
            .execute(
                "INSERT INTO landed_files (path, source, source_url, release_month, sha256, bytes, csv_bytes, rows, run_id, landed_at)
                 VALUES (?1, 's', 'u', '2024-01', ?2, 1, 1, 1, ?3, 'now')",
                rusqlite::params![p, format!("sha{i}"), run],
            )
            .unwrap();
    }
    let run = db.begin_run("landing-backup").unwrap();
    db.conn()
        .execute(
            "INSERT INTO backup_objects (target, key, path, bytes, run_id, backed_up_at) VALUES ('fs:/b', 'k', 'psd/2024/01/a.csv.gzip', 1, ?1, 'now')",
            [run],
        )
        .unwrap();
    db.finish_run(run, materia_common::state::RunStatus::Failed, 1, "failed: x", Some("cannot connect"), &serde_json::json!({})).unwrap();
    // A step is running right now, in the middle of a write transaction.
    db.begin_run("lake-transform").unwrap();
    db.conn().execute_batch("BEGIN IMMEDIATE; INSERT INTO model_runs (run_id, model, action, duration_ms) VALUES (1, 'x', 'skip', 0);").unwrap();

    let (code, out) = status(&data, &["--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let step = |name: &str| v["steps"].as_array().unwrap().iter().find(|s| s["step"] == name).unwrap().clone();
    assert_eq!(step("psd-extract")["last_run"]["status"], "success");
    assert_eq!(step("psd-extract")["last_run"]["stats"]["landed"], 2);
    assert_eq!(step("landing-backup")["last_run"]["error"], "cannot connect");
    assert_eq!(step("lake-transform")["last_run"]["status"], "running");
    assert!(step("serve-export")["last_run"].is_null());
    assert_eq!(v["backup_lag_files"], 1);

    let (code, table) = status(&data, &[]);
    assert_eq!(code, 0);
    assert!(table.lines().next().unwrap().starts_with("step"), "{table}");
    assert!(table.contains("psd-extract") && table.contains("checked 1, landed 2") && table.contains("cannot connect"), "{table}");
    assert!(table.contains("backup lag: 1 landed file(s) not yet backed up"), "{table}");
    assert!(v["kept_corrupt_lakehouse"].is_null() && !table.contains("kept:"), "{table}");
    db.conn().execute_batch("COMMIT").unwrap();

    // A kept corrupt lakehouse is shown as lake-transform leaves it: tests/it/pipeline.rs,
    // with the real rebuild making it.
}

#[test]
fn no_state_db_yet_is_not_an_error() {
    let tmp = materia_test_support::temp_dir();
    let (code, out) = status(&tmp.path().join("data"), &["--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["steps"].as_array().unwrap().len(), materia_common::layout::STEPS.len());
    assert!(v["backup_lag_files"].is_null());
    assert!(!tmp.path().join("data").exists(), "a status read creates nothing");
}
