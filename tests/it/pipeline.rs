//! The pipeline as `scripts/run-all.sh` runs it: the built tools chained through files.
//!
//! Why this long: each test drives several tools end to end (one of them also on a
//! DuckLake), with the shared helpers to run them at the top.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::repo;

/// The tools `cargo test --workspace` built beside this test binary (target/debug).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_owned(); // target/debug/deps -> target/debug
    assert!(
        materia_common::layout::TOOLS.iter().all(|t| dir.join(t).exists()),
        "the tools are not built in {}: run the tests with `cargo test --workspace`",
        dir.display()
    );
    dir
}

pub(crate) fn fixture() -> Option<PathBuf> {
    let p = repo().join("../shared/fixtures/psd_coffee_csv.zip");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: {} is absent; CI always has it", p.display());
        None
    }
}

fn run_all(data: &Path, args: &[&str]) -> std::process::Output {
    materia_test_support::tool(repo().join("scripts/run-all.sh"))
        .args(["--data-dir", data.to_str().unwrap()])
        .args(args)
        .env("MATERIA_BIN_DIR", bin_dir())
        .env("MATERIA_DOTENV", "/dev/null") // a developer's .env is not the test's
        .output()
        .unwrap()
}

#[test]
fn run_all_offline_lands_the_real_release_and_is_idempotent() {
    let Some(zip) = fixture() else { return };
    let tmp = materia_test_support::temp_dir();
    let data = tmp.path().join("data");
    let zip = zip.to_str().unwrap();

    let out = run_all(&data, &["--import", zip, "--release", "2022-12"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let db = rusqlite::Connection::open(data.join("landing/.state.sqlite")).unwrap();
    let (path, rows): (String, i64) = db.query_row("SELECT path, rows FROM landed_files", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert!(path.starts_with("psd/2022/12/"), "{path}");
    assert_eq!(rows, 77_957);
    assert!(data.join("landing").join(&path).exists());
    // Each producer wrote its trigger (the units take them: tests/it/systemd.rs).
    assert!(data.join("triggers/landing.updated").exists(), "written by psd-extract");
    assert!(data.join("lakehouse.duckdb").exists());
    assert!(data.join("triggers/lakehouse.updated").exists(), "written by lake-transform");
    let (models, rows): (i64, i64) = db
        .query_row("SELECT count(*), max(rows) FILTER (WHERE model = 'serving.commodity_balance') FROM model_runs WHERE action = 'build'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((models, rows), (10, 4103));
    assert!(data.join("analytics.duckdb").exists());
    let (action, exported_rows): (String, i64) = db.query_row("SELECT action, rows FROM exports", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!(action, "publish");
    assert!(exported_rows > 77_957, "every serving table: {exported_rows} rows");
    let mut st = db.prepare("SELECT key FROM backup_objects ORDER BY key").unwrap();
    let backed_up: Vec<String> = st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(backed_up.len(), 2, "{backed_up:?}");
    assert!(backed_up[0].starts_with(".state/state-"), "and the day's state DB snapshot: {backed_up:?}");
    assert_eq!(backed_up[1], path, "the landed file is in the default fs backup");
    assert!(data.join("backup").join(&path).exists());
    assert!(data.join("backup").join(&backed_up[0]).exists());

    // A second run finds nothing new and still succeeds.
    let out = run_all(&data, &["--import", zip, "--release", "2022-12"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let statuses: Vec<String> = db
        .prepare("SELECT tool || ' ' || status FROM runs ORDER BY run_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        statuses,
        [
            "psd-extract success",
            "lake-transform success",
            "serve-export success",
            "landing-backup success",
            "psd-extract unchanged",
            "lake-transform unchanged",
            "serve-export unchanged",
            "landing-backup unchanged"
        ]
    );
}

#[test]
fn run_all_stops_at_the_first_failure_with_its_exit_code() {
    let tmp = materia_test_support::temp_dir();
    let bad = tmp.path().join("bad.zip");
    std::fs::write(&bad, b"not a zip").unwrap();
    let out = run_all(&tmp.path().join("data"), &["--import", bad.to_str().unwrap(), "--release", "2024-01"]);
    assert_eq!(out.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("psd-extract: error: importing"), "{stderr}");
    assert!(stderr.contains("run-all: psd-extract failed (exit 5); stopping"), "{stderr}");
}

/// `csv` zipped as USDA serves it (one CSV in a zip), with Python's zipfile.
fn zip_csv(csv: &[u8], out: &Path) {
    let tmp = out.with_extension("csv");
    std::fs::write(&tmp, csv).unwrap();
    let script = "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[2], 'w', zipfile.ZIP_DEFLATED) as z: z.write(sys.argv[1], 'psd_coffee.csv')";
    assert!(Command::new("python3").args(["-c", script]).arg(&tmp).arg(out).status().unwrap().success());
}

#[test]
fn what_psd_extract_lands_the_models_load() {
    // The rows psd-extract's checks accept at their edges load through every model; a
    // row they refuse never lands. Both on top of the real release.
    let Some(zip) = fixture() else { return };
    let real = Command::new("unzip").arg("-p").arg(&zip).output().unwrap().stdout;
    let tmp = materia_test_support::temp_dir();
    let edges = concat!(
        "\"0711100\",\"Coffee, Green\",ZZ,\"Test \"\"quoted\"\", land\",2024,2024,00,028,\"Production\",02,\"(1000 60 KG BAGS)\",\r\n",
        "0711100,\"Coffee, Green\",ZZ,Testland,2025,2024,12,028,Production,02,\"(1000 60 KG BAGS)\",1.5e3\r\n",
        "0711100,\"Coffee, Green\",ZZ,Testland,2025,2024,12,057,Imports,02,\"(1000 60 KG BAGS)\",-2\r\n",
    );
    let mut good = real.clone();
    good.extend_from_slice(edges.as_bytes());
    let good_zip = tmp.path().join("good.zip");
    zip_csv(&good, &good_zip);
    let data = tmp.path().join("data");
    let out = run_all(&data, &["--import", good_zip.to_str().unwrap(), "--release", "2022-12"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let db = rusqlite::Connection::open(data.join("landing/.state.sqlite")).unwrap();
    let rows: i64 = db.query_row("SELECT rows FROM landed_files", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 77_957 + 3);
    let transformed: String =
        db.query_row("SELECT status FROM runs WHERE tool = 'lake-transform' ORDER BY run_id DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert_eq!(transformed, "success");

    // A release with one value the models cannot read: refused, nothing lands.
    let bad = String::from_utf8(good).unwrap().replacen(",1.5e3\r\n", ",1.5e3x\r\n", 1);
    let bad_zip = tmp.path().join("bad.zip");
    zip_csv(bad.as_bytes(), &bad_zip);
    let out = materia_test_support::tool(bin_dir().join("psd-extract"))
        .args(["--data-dir", data.to_str().unwrap(), "import", bad_zip.to_str().unwrap(), "--release", "2023-01"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("line {}: Value is \"1.5e3x\", expected a number", 77_957 + 3)), "{stderr}");
    assert!(!data.join("landing/psd/2023").exists());

    // The operator sets the landed file aside; materia-status shows it.
    let landed: String = db.query_row("SELECT path FROM landed_files", [], |r| r.get(0)).unwrap();
    let tool = |name: &str, args: &[&str]| {
        materia_test_support::tool(bin_dir().join(name)).arg("--data-dir").arg(&data).args(args).env("SUDO_USER", "ops").output().unwrap()
    };
    let q = tool("lake-transform", &["quarantine", &landed, "--reason", "checking a revision"]);
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let status: serde_json::Value = serde_json::from_slice(&tool("materia-status", &["--json"]).stdout).unwrap();
    assert_eq!(status["quarantined"][0]["path"], landed.as_str());
    assert_eq!((status["quarantined"][0]["reason"].as_str(), status["quarantined"][0]["by"].as_str()), (Some("checking a revision"), Some("ops")));
    let table = String::from_utf8(tool("materia-status", &[]).stdout).unwrap();
    assert!(table.contains(&format!("quarantined: {landed} (checking a revision, by ops at ")), "{table}");

    // The lakehouse file broken (here: not a DuckDB file any more, as a failing disk
    // could leave it): the rebuild lake-transform names replaces it and keeps the corrupt
    // bytes beside it; materia-status shows them until they are removed.
    let q = tool("lake-transform", &["quarantine", "--undo", &landed]);
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let broken = vec![0x5a_u8; 3 << 20];
    std::fs::write(data.join("lakehouse.duckdb"), &broken).unwrap();
    let transform = |args: &[&str]| {
        let mut c = materia_test_support::tool(bin_dir().join("lake-transform"));
        c.arg("--data-dir").arg(&data).args(args).env(materia_common::layout::ENV_MODELS, repo().join("models")).output().unwrap()
    };
    let run = transform(&["run"]);
    assert_eq!(run.status.code(), Some(6), "{}", String::from_utf8_lossy(&run.stderr));
    let rebuild = transform(&["run", "--rebuild"]);
    assert!(rebuild.status.success(), "{}", String::from_utf8_lossy(&rebuild.stderr));
    let kept = data.join("lakehouse.duckdb.corrupt");
    assert_eq!(std::fs::read(&kept).unwrap(), broken);
    let status: serde_json::Value = serde_json::from_slice(&tool("materia-status", &["--json"]).stdout).unwrap();
    assert_eq!(status["kept_corrupt_lakehouse"], serde_json::json!({"path": kept.display().to_string(), "bytes": 3 << 20}));
    let table = String::from_utf8(tool("materia-status", &[]).stdout).unwrap();
    assert!(table.contains(&format!("kept: {} (3.0 MiB), the corrupt lakehouse a rebuild replaced", kept.display())), "{table}");
    std::fs::remove_file(&kept).unwrap();
    let status: serde_json::Value = serde_json::from_slice(&tool("materia-status", &["--json"]).stdout).unwrap();
    assert!(status["kept_corrupt_lakehouse"].is_null(), "{status}");

    // The serving tables' blocks broken, which no transform with nothing to do reads:
    // serve-export finds them as it copies (exit 6, naming the rebuild), and the rebuild,
    // which reads no block of the old file, still keeps it, from serve-export's record.
    let (block_size, blocks) = serving_blocks(&data.join("lakehouse.duckdb"));
    materia_test_support::corrupt_duckdb_blocks(&data.join("lakehouse.duckdb"), block_size, &blocks);
    let corrupted = std::fs::read(data.join("lakehouse.duckdb")).unwrap();
    assert_eq!(transform(&["run"]).status.code(), Some(3), "nothing to do: no serving block read");
    let export = tool("serve-export", &[]);
    let stderr = String::from_utf8_lossy(&export.stderr);
    assert_eq!(export.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("the file is corrupt") && stderr.contains("`lake-transform run --rebuild`"), "{stderr}");
    let rebuild = transform(&["run", "--rebuild"]);
    let stderr = String::from_utf8_lossy(&rebuild.stderr);
    assert!(rebuild.status.success(), "{stderr}");
    assert!(stderr.contains("kept the corrupt file as"), "{stderr}");
    assert_eq!(std::fs::read(&kept).unwrap(), corrupted, "the file serve-export found corrupt");
    assert_eq!(tool("serve-export", &[]).status.code(), Some(0), "the rebuilt lakehouse exports");
}

/// The block size of the DuckDB file `db` and the blocks its serving tables are stored in
/// (read with the Python DuckDB, read-only).
fn serving_blocks(db: &Path) -> (usize, Vec<usize>) {
    let script = r#"
import duckdb, sys
c = duckdb.connect(sys.argv[1], read_only=True)
print(c.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0])
for t, in c.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'serving'").fetchall():
    for b, in c.execute(f"SELECT DISTINCT block_id FROM pragma_storage_info('serving.{t}') WHERE block_id >= 0").fetchall():
        print(b)
"#;
    let o = Command::new(materia_test_support::test_venv().join("bin/python")).arg("-c").arg(script).arg(db).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let numbers: Vec<usize> = String::from_utf8(o.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert!(numbers.len() > 1, "no serving blocks: {numbers:?}");
    (numbers[0], numbers[1..].to_vec())
}

/// Every serving table of a published analytics.duckdb, row for row, as the web app
/// reads it (the Python reader, read-only): load times left out, doubles rounded (sums
/// in DuckDB are not ordered: their last bits differ between two builds).
fn serving_rows(data: &Path) -> String {
    let script = r#"
import duckdb, sys
c = duckdb.connect(sys.argv[1], read_only=True)
for t, in c.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'serving' ORDER BY 1").fetchall():
    cols = [f"round({n}, 6)" if ty == "DOUBLE" else n for n, ty in c.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name = 'serving' AND table_name = ? ORDER BY column_index", [t]).fetchall()
        if n != "loaded_at"]
    rows = c.execute(f"SELECT {', '.join(cols)} FROM serving.{t} ORDER BY ALL").fetchall()
    print(f"-- serving.{t}: {len(rows)} rows")
    for r in rows:
        print(r)
"#;
    let o =
        Command::new(materia_test_support::test_venv().join("bin/python")).arg("-c").arg(script).arg(data.join("analytics.duckdb")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// One tool from the build, on `data`, with `env`; (exit code, stderr).
pub(crate) fn tool(data: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut c = materia_test_support::tool(bin_dir().join(name));
    let o = c.arg("--data-dir").arg(data).args(args).envs(env.iter().copied()).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn state_runs(data: &Path) -> Vec<String> {
    let db = rusqlite::Connection::open(data.join("landing/.state.sqlite")).unwrap();
    let mut st = db.prepare("SELECT run_id || ' ' || tool || ' ' || status FROM runs ORDER BY run_id").unwrap();
    st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

/// The disaster-recovery drill: two releases landed, transformed, exported and backed
/// up; the data dir wiped; restored from the backup alone; the pipeline run again.
fn drill(target: &str, env: &[(&str, &str)]) {
    let Some(zip) = fixture() else { return };
    let tmp = materia_test_support::temp_dir();
    let data = tmp.path().join("data");
    // The real release, and a later one revising some values.
    let real = String::from_utf8(Command::new("unzip").arg("-p").arg(&zip).output().unwrap().stdout).unwrap();
    let revised = real.replacen(".0000\r\n", ".5000\r\n", 300);
    let later = tmp.path().join("later.zip");
    zip_csv(revised.as_bytes(), &later);
    for (z, month) in [(zip.to_str().unwrap(), "2022-12"), (later.to_str().unwrap(), "2023-01")] {
        assert_eq!(tool(&data, "psd-extract", &["import", z, "--release", month], env).0, 0);
    }
    let models = repo().join("models").display().to_string();
    assert_eq!(tool(&data, "lake-transform", &["--models", &models, "run"], env).0, 0);
    assert_eq!(tool(&data, "serve-export", &[], env).0, 0);
    let (code, err) = tool(&data, "landing-backup", &["--target", target, "--state-snapshot"], env);
    assert_eq!(code, 0, "{err}");
    let before = serving_rows(&data);
    assert!(before.contains("-- serving.revisions: ") && !before.contains("-- serving.revisions: 0 rows"), "two releases, revisions between them");
    let runs_before = state_runs(&data);

    // The server is lost.
    std::fs::remove_dir_all(&data).unwrap();

    let (code, err) = tool(&data, "landing-backup", &["--target", target, "restore"], env);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("restored 2 landing file(s)") && err.contains("and the state DB"), "{err}");
    let (code, err) = tool(&data, "lake-transform", &["--models", &models, "run"], env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(tool(&data, "serve-export", &[], env).0, 0);
    assert_eq!(serving_rows(&data), before, "the serving tables, row for row");
    let runs_after = state_runs(&data);
    assert_eq!(runs_after[..runs_before.len()], runs_before[..], "the state DB keeps the old runs");
    // The ledger knows every restored object: the next backup uploads nothing.
    let (code, err) = tool(&data, "landing-backup", &["--target", target], env);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("uploaded 0 (0 bytes)") && err.contains("PUT 0"), "{err}");
}

#[test]
fn the_disaster_recovery_drill_on_a_folder() {
    let tmp = materia_test_support::temp_dir();
    drill(&format!("fs:{}", tmp.path().join("backup").display()), &[]);
}

#[test]
fn the_disaster_recovery_drill_on_s3() {
    let moto = materia_test_support::moto::Moto::start();
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    drill("s3://bkt", &[("R2_ENDPOINT", endpoint.as_str()), ("R2_ACCESS_KEY_ID", "test-key-id"), ("R2_SECRET_ACCESS_KEY", "test-secret-value")]);
}

/// The tools' flags and environment for a DuckLake on `pg` and `moto`.
fn lake_env(pg: &materia_test_support::postgres::Postgres, moto: &materia_test_support::moto::Moto) -> (Vec<String>, Vec<(&'static str, String)>) {
    let args = vec![
        "--lakehouse".to_owned(),
        format!("ducklake:postgres:{}", pg.conninfo("lake")),
        "--lake-data-path".to_owned(),
        "s3://bkt/lake/".to_owned(),
    ];
    let env = vec![
        (materia_common::layout::ENV_LAKE_S3_ENDPOINT, moto.endpoint()),
        (materia_common::layout::ENV_LAKE_S3_KEY_ID, "test-key-id".to_owned()),
        (materia_common::layout::ENV_LAKE_S3_SECRET, "test-secret-value".to_owned()),
    ];
    (args, env)
}

/// A reader on another machine, in Python as the web app's would be: attaches the lake
/// read-only afresh every round and reads two serving tables in one transaction, until
/// `stop` exists; prints each round's (latest release of serving.releases, latest
/// release of serving.attribute_values).
const LAKE_READER: &str = r#"
import duckdb, os, sys, time
ext, conninfo, port, stop = sys.argv[1:5]
while not os.path.exists(stop):
    c = duckdb.connect(config={"extension_directory": ext, "autoinstall_known_extensions": "false"})
    c.execute(f"CREATE SECRET (TYPE s3, KEY_ID 'test-key-id', SECRET 'test-secret-value', REGION 'auto', ENDPOINT '127.0.0.1:{port}', URL_STYLE 'path', USE_SSL false)")
    c.execute(f"ATTACH 'ducklake:postgres:{conninfo}' AS lake (READ_ONLY)")
    c.execute("BEGIN")
    a = c.execute("SELECT max(release) FROM lake.serving.releases").fetchone()[0]
    b = c.execute("SELECT max(release) FROM lake.serving.attribute_values").fetchone()[0]
    c.execute("COMMIT")
    c.close()
    print(a, b, flush=True)
    time.sleep(0.05)
"#;

#[test]
fn the_pipeline_on_ducklake_publishes_what_the_local_file_does_and_readers_see_whole_snapshots() {
    let Some(zip) = fixture() else { return };
    let Some(pg) = materia_test_support::postgres::Postgres::start() else { return };
    pg.create_db("lake");
    let moto = materia_test_support::moto::Moto::start();
    let (lake_args, lake_env) = lake_env(&pg, &moto);
    let lake_env: Vec<(&str, &str)> = lake_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let tmp = materia_test_support::temp_dir();
    let (local, on_lake) = (tmp.path().join("local"), tmp.path().join("lake"));
    let real = String::from_utf8(Command::new("unzip").arg("-p").arg(&zip).output().unwrap().stdout).unwrap();
    let later = tmp.path().join("later.zip");
    zip_csv(real.replacen(".0000\r\n", ".5000\r\n", 300).as_bytes(), &later);
    let models = repo().join("models").display().to_string();
    let with_lake = |args: &[&str]| -> Vec<String> { lake_args.iter().cloned().chain(args.iter().map(|a| (*a).to_owned())).collect() };
    let run = |data: &Path, name: &str, args: Vec<String>, env: &[(&str, &str)]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err) = tool(data, name, &args, env);
        assert_eq!(code, 0, "{name} {args:?}: {err}");
    };
    for data in [&local, &on_lake] {
        run(data, "psd-extract", vec!["import".into(), zip.display().to_string(), "--release".into(), "2022-12".into()], &[]);
    }
    run(&local, "lake-transform", vec!["--models".into(), models.clone(), "run".into()], &[]);
    run(&on_lake, "lake-transform", with_lake(&["--models", &models, "run"]), &lake_env);

    // Another machine reads the lake while the next release is transformed there.
    let stop = tmp.path().join("stop-reader");
    let version = Command::new(repo().join("scripts/duckdb-lib.sh")).arg("--version").output().unwrap().stdout;
    let ext = repo().join(format!(".duckdb/{}/extensions", String::from_utf8(version).unwrap().trim()));
    let mut reader = Command::new(materia_test_support::test_venv().join("bin/python"))
        .args(["-c", LAKE_READER])
        .arg(&ext)
        .arg(pg.conninfo("lake"))
        .arg(moto.port.to_string())
        .arg(&stop)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let out = reader.stdout.take().unwrap();
    let collect = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
                seen.lock().unwrap().push(line.unwrap());
            }
        })
    };
    let has = |state: &str| seen.lock().unwrap().iter().any(|l| l == state);
    let wait = std::time::Duration::from_secs(60);
    materia_test_support::wait_until("the reader to read the first release", wait, || has("2022-12-01 2022-12-01"));
    for data in [&local, &on_lake] {
        run(data, "psd-extract", vec!["import".into(), later.display().to_string(), "--release".into(), "2023-01".into()], &[]);
    }
    run(&on_lake, "lake-transform", with_lake(&["--models", &models, "run"]), &lake_env);
    materia_test_support::wait_until("the reader to read the next release", wait, || has("2023-01-01 2023-01-01"));
    std::fs::write(&stop, "").unwrap();
    let status = reader.wait().unwrap();
    collect.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut reader.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(seen.iter().all(|l| l == "2022-12-01 2022-12-01" || l == "2023-01-01 2023-01-01"), "a snapshot mixed: {seen:?}");
    assert_eq!(seen.first().map(String::as_str), Some("2022-12-01 2022-12-01"));
    assert_eq!(seen.last().map(String::as_str), Some("2023-01-01 2023-01-01"), "{seen:?}");

    // serve-export publishes from the lake what it publishes from the local file.
    run(&local, "lake-transform", vec!["--models".into(), models.clone(), "run".into()], &[]);
    run(&local, "serve-export", vec![], &[]);
    run(&on_lake, "serve-export", with_lake(&[]), &lake_env);
    assert_eq!(serving_rows(&on_lake), serving_rows(&local), "the same analytics.duckdb, row for row");
    let snapshot = |data: &Path| -> String {
        let o = Command::new(materia_test_support::test_venv().join("bin/python"))
            .arg("-c")
            .arg("import duckdb, sys; print(duckdb.connect(sys.argv[1], read_only=True).execute('SELECT lakehouse_snapshot FROM _meta').fetchone()[0])")
            .arg(data.join("analytics.duckdb"))
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(snapshot(&local), "None", "a local file has no snapshot");
    let pinned = snapshot(&on_lake);
    assert!(pinned.parse::<i64>().is_ok_and(|s| s > 0), "{pinned}");
    assert_eq!(pinned, pg.query("lake", "SELECT max(snapshot_id) FROM ducklake_snapshot"), "the lake's latest snapshot, recorded");
    // Unchanged since: nothing to do.
    let (code, _) = tool(&on_lake, "serve-export", &with_lake(&[]).iter().map(String::as_str).collect::<Vec<_>>(), &lake_env);
    assert_eq!(code, 3);
}
