//! landing-backup against a real S3 server (moto on 127.0.0.1) and the fs backend.
//!
//! Why this long: one integration binary per tool (fast to link); the S3 and fs tests share one moto server and its helpers.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod proxy;

use materia_test_support::Run;
use materia_test_support::moto::Moto;
use proxy::{Fault, Proxy};

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const PREFIX: &str = "backup/materia/landing/";

struct Env {
    _tmp: materia_test_support::TestDir,
    root: PathBuf,
    data: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = materia_test_support::temp_dir();
        let root = tmp.path().to_owned();
        Env { data: root.join("data"), root, _tmp: tmp }
    }

    fn land(&self, rel: &str, bytes: &[u8]) {
        let p = self.data.join("landing").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn run(&self, target: &str, endpoint: Option<&str>, args: &[&str]) -> Run {
        let mut c = materia_test_support::tool(env!("CARGO_BIN_EXE_landing-backup"));
        if let Some(e) = endpoint {
            c.env("R2_ENDPOINT", e).env("R2_ACCESS_KEY_ID", "test-key-id").env("R2_SECRET_ACCESS_KEY", "test-secret-value");
        }
        let o = c.arg("--data-dir").arg(&self.data).arg("--target").arg(target).args(args).output().unwrap();
        Run::from(o)
    }

    fn s3(&self, moto: &Moto, args: &[&str]) -> Run {
        self.run("s3://bkt", Some(&moto.endpoint()), args)
    }

    fn via(&self, proxy: &Proxy, args: &[&str]) -> Run {
        self.run("s3://bkt", Some(&proxy.endpoint()), args)
    }

    /// Requests of the last run by kind, from its run record.
    fn requests(&self) -> serde_json::Value {
        let c = rusqlite::Connection::open(self.data.join("landing/.state.sqlite")).unwrap();
        let stats: String = c.query_row("SELECT stats FROM runs ORDER BY run_id DESC LIMIT 1", [], |r| r.get(0)).unwrap();
        serde_json::from_str::<serde_json::Value>(&stats).unwrap()["requests"].clone()
    }

    fn ledger(&self) -> Vec<String> {
        let c = rusqlite::Connection::open(self.data.join("landing/.state.sqlite")).unwrap();
        let mut st = c.prepare("SELECT key FROM backup_objects ORDER BY key").unwrap();
        st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }
}

fn three_files(env: &Env) {
    env.land("psd/2024/01/a.csv.gzip", b"alpha");
    env.land("psd/2024/02/b.csv.gzip", b"bravo bravo");
    env.land("psd/2024/03/c.csv.gzip", &vec![7u8; 100_000]);
    env.land("psd/2024/03/.c.csv.gzip.tmp-1-0", b"half written");
}

#[test]
fn first_backup_then_a_no_change_run_makes_no_request() {
    let moto = Moto::start();
    let env = Env::new();
    three_files(&env);
    let run = env.s3(&moto, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let objects = moto.objects();
    let keys: Vec<&str> = objects.iter().map(|o| o.0.as_str()).collect();
    assert_eq!(
        keys,
        [format!("{PREFIX}psd/2024/01/a.csv.gzip"), format!("{PREFIX}psd/2024/02/b.csv.gzip"), format!("{PREFIX}psd/2024/03/c.csv.gzip")],
        "landing files only: no state DB, no temp file"
    );
    assert_eq!(moto.object(&format!("{PREFIX}psd/2024/02/b.csv.gzip")), b"bravo bravo");
    assert_eq!(env.requests(), serde_json::json!({"LIST": 1, "PUT": 3}), "each PUT's ETag confirms it: no HEAD");
    assert!(run.stderr.contains("requests: LIST 1, PUT 3, HEAD 0, GET 0, DELETE 0, multipart 0"), "{}", run.stderr);
    assert_eq!(env.ledger().len(), 3);

    let again = env.s3(&moto, &[]);
    assert_eq!(again.code, 3, "{again:?}");
    assert_eq!(env.requests(), serde_json::json!({}), "the ledger proves nothing is new: no request at all");

    env.land("psd/2024/04/d.csv.gzip", b"delta");
    let run = env.s3(&moto, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.requests(), serde_json::json!({"LIST": 1, "PUT": 1}), "new files only");
    assert_eq!(moto.objects().len(), 4);
}

#[test]
fn verify_repairs_a_deleted_object_and_alerts_on_an_altered_one() {
    let moto = Moto::start();
    let env = Env::new();
    three_files(&env);
    assert_eq!(env.s3(&moto, &[]).code, 0);
    let a = format!("{PREFIX}psd/2024/01/a.csv.gzip");
    let b = format!("{PREFIX}psd/2024/02/b.csv.gzip");

    assert_eq!(moto.http("DELETE", &format!("/bkt/{a}"), b"").0, 204);
    assert_eq!(env.s3(&moto, &[]).code, 3, "a normal run trusts the ledger");
    let run = env.s3(&moto, &["--verify"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains(&format!("{a} is missing from the backup: uploading it again")), "{}", run.stderr);
    assert_eq!(moto.object(&a), b"alpha");
    assert_eq!(env.requests(), serde_json::json!({"LIST": 1, "PUT": 1}));

    assert_eq!(moto.http("PUT", &format!("/bkt/{b}"), b"tampered").0, 200);
    let run = env.s3(&moto, &["--verify"]);
    assert_eq!(run.code, 6, "{run:?}");
    let line = run.stderr.lines().find(|l| l.starts_with("landing-backup: error:")).unwrap();
    assert!(line.contains(&format!("remote {b} changed since it was backed up")), "{line}");
    assert_eq!(moto.object(&b), b"tampered", "never overwritten");
    assert!(!run.stderr.contains("test-secret-value"));
}

#[test]
fn a_remote_object_already_there_is_recorded_if_identical_and_an_alert_if_not() {
    let moto = Moto::start();
    let env = Env::new();
    env.land("psd/2024/01/a.csv.gzip", b"alpha");
    env.land("psd/2024/02/b.csv.gzip", b"bravo");
    // As if an earlier run's upload succeeded but its answer was lost: a is there already.
    assert_eq!(moto.http("PUT", &format!("/bkt/{PREFIX}psd/2024/01/a.csv.gzip"), b"alpha").0, 200);
    // And b is there with other content.
    assert_eq!(moto.http("PUT", &format!("/bkt/{PREFIX}psd/2024/02/b.csv.gzip"), b"other").0, 200);
    let run = env.s3(&moto, &[]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.stderr.contains("a.csv.gzip was already in the backup: recorded"), "{}", run.stderr);
    assert!(run.stderr.contains("differs from landing/psd/2024/02/b.csv.gzip") && run.stderr.contains("not overwritten"), "{}", run.stderr);
    assert_eq!(env.ledger(), [format!("{PREFIX}psd/2024/01/a.csv.gzip")]);
    assert_eq!(env.requests()["PUT"], serde_json::Value::Null, "nothing uploaded");
    assert_eq!(moto.object(&format!("{PREFIX}psd/2024/02/b.csv.gzip")), b"other");
}

#[test]
fn large_files_go_up_in_equal_parts() {
    let moto = Moto::start();
    let env = Env::new();
    let big: Vec<u8> = (0..11 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    env.land("psd/2024/01/big.csv.gzip", &big);
    let run = env.s3(&moto, &["--multipart-threshold", "5242880", "--part-size", "5242880"]);
    assert_eq!(run.code, 0, "{run:?}");
    let objects = moto.objects();
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].1, big.len() as u64);
    assert!(objects[0].2.ends_with("-3"), "three 5 MiB parts: {}", objects[0].2);
    let req = env.requests();
    assert_eq!((req["multipart-create"].as_u64(), req["multipart-part"].as_u64(), req["multipart-complete"].as_u64()), (Some(1), Some(3), Some(1)));
    // The locally computed multipart ETag matches: verify finds nothing wrong.
    let run = env.s3(&moto, &["--verify", "--multipart-threshold", "5242880", "--part-size", "5242880"]);
    assert_eq!(run.code, 3, "{run:?}");
}

#[test]
fn odd_file_names_round_trip() {
    let moto = Moto::start();
    let env = Env::new();
    let names =
        ["psd/2024/01/with space.csv.gzip", "psd/2024/01/plus+and%percent.csv.gzip", "psd/2024/01/ünïcödé.csv.gzip", "psd/2024/01/a&b=c.csv.gzip"];
    for (i, n) in names.iter().enumerate() {
        env.land(n, format!("content {i}").as_bytes());
    }
    let run = env.s3(&moto, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let mut keys: Vec<String> = moto.objects().into_iter().map(|o| o.0).collect();
    keys.sort();
    let mut want: Vec<String> = names.iter().map(|n| format!("{PREFIX}{n}")).collect();
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(env.s3(&moto, &["--verify"]).code, 3);
}

#[test]
fn missing_credentials_are_named_and_nothing_is_touched() {
    let env = Env::new();
    three_files(&env);
    let mut c = materia_test_support::tool(env!("CARGO_BIN_EXE_landing-backup"));
    let o = c.env("R2_ACCESS_KEY_ID", "id").arg("--data-dir").arg(&env.data).args(["--target", "s3://bkt"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.trim(), "landing-backup: error: missing R2_ENDPOINT, R2_SECRET_ACCESS_KEY for target s3://bkt/backup/materia/landing/");
    assert!(!env.data.join("landing/.state.sqlite").exists(), "nothing touched");
    assert!(!env.data.join("locks").exists());

    // A secret never shows, even when the server cannot be reached.
    let run = env.run("s3://bkt", Some("http://127.0.0.1:9"), &["--retries", "0", "--timeout", "2"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!run.stderr.contains("test-secret-value"), "{}", run.stderr);
}

#[test]
fn the_secrets_file_the_unit_names_gives_the_credentials_and_a_bad_one_stops_the_run() {
    let moto = Moto::start();
    let env = Env::new();
    three_files(&env);
    let secrets = env.root.join("secrets.env");
    let run = |file: &Path| {
        let mut c = materia_test_support::tool(env!("CARGO_BIN_EXE_landing-backup"));
        c.env("MATERIA_SECRETS_FILE", file).env("R2_ENDPOINT", moto.endpoint());
        Run::from(c.arg("--data-dir").arg(&env.data).args(["--target", "s3://bkt"]).output().unwrap())
    };

    // What tag-deploy writes (sops' dotenv), read by the tool itself: the keys reach it.
    std::fs::write(&secrets, "# R2\nR2_ACCESS_KEY_ID=test-key-id\nR2_SECRET_ACCESS_KEY=\"test-secret-value\"\n").unwrap();
    let ok = run(&secrets);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert_eq!(moto.objects().len(), 3);
    assert!(!ok.stderr.contains("test-secret-value"), "{}", ok.stderr);

    // Not deployed yet: no secrets, as before (the missing keys are named).
    let absent = run(&env.root.join("absent.env"));
    assert_eq!(absent.code, 2, "{absent:?}");
    assert!(absent.stderr.contains("missing R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY"), "{}", absent.stderr);
    // A deployed file with none of its keys (a release whose .env.prod.sops has only others).
    let empty = env.root.join("empty.env");
    std::fs::write(&empty, "# nothing for the backup\n").unwrap();
    let none = run(&empty);
    assert_eq!(none.code, 2, "{none:?}");
    assert!(none.stderr.contains("missing R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY"), "{}", none.stderr);

    // A file it cannot read (here a directory; on a server a link to a root-only file)
    // or a malformed one stops the run before it starts: one line, exit 2, nothing
    // recorded, no secret shown.
    let runs_before = runs(&env).len();
    let unreadable = run(&env.data);
    assert_eq!(unreadable.code, 2, "{unreadable:?}");
    assert_eq!(unreadable.stderr.lines().count(), 1, "{}", unreadable.stderr);
    assert!(
        unreadable
            .stderr
            .starts_with(&format!("landing-backup: error: cannot read the secrets file {} (MATERIA_SECRETS_FILE): ", env.data.display())),
        "{}",
        unreadable.stderr
    );
    std::fs::write(&secrets, "R2_ACCESS_KEY_ID=test-key-id\ntest-secret-value\n").unwrap();
    let bad = run(&secrets);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert_eq!(bad.stderr.trim(), format!("landing-backup: error: secrets file {} line 2: not KEY=VALUE", secrets.display()));
    assert_eq!(runs(&env).len(), runs_before, "neither run was started");
}

#[test]
fn the_fs_backend_backs_up_verifies_and_repairs() {
    let env = Env::new();
    three_files(&env);
    let dest: PathBuf = env.root.join("backup");
    let target = format!("fs:{}", dest.display());
    assert_eq!(env.run(&target, None, &[]).code, 0);
    assert_eq!(std::fs::read(dest.join("psd/2024/02/b.csv.gzip")).unwrap(), b"bravo bravo");
    assert!(!dest.join("psd/2024/03/.c.csv.gzip.tmp-1-0").exists());
    assert_eq!(env.run(&target, None, &[]).code, 3);
    std::fs::remove_file(dest.join("psd/2024/01/a.csv.gzip")).unwrap();
    assert_eq!(env.run(&target, None, &["--verify"]).code, 0);
    assert_eq!(std::fs::read(dest.join("psd/2024/01/a.csv.gzip")).unwrap(), b"alpha");
    std::fs::write(dest.join("psd/2024/02/b.csv.gzip"), b"tampered!!!").unwrap();
    let run = env.run(&target, None, &["--verify"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert_eq!(std::fs::read(dest.join("psd/2024/02/b.csv.gzip")).unwrap(), b"tampered!!!");
    let _ = Path::new("");
}

#[test]
fn the_fs_backend_never_leaves_a_short_object() {
    let env = Env::new();
    // Big enough that the kill lands while it is written or fsynced.
    let big: Vec<u8> = (0..48u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    env.land("psd/2024/01/big.csv.gzip", &big);
    let dest: PathBuf = env.root.join("backup");
    let target = format!("fs:{}", dest.display());
    let mut c = materia_test_support::tool(env!("CARGO_BIN_EXE_landing-backup"));
    let mut child = c.arg("--data-dir").arg(&env.data).args(["--target", &target]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let tmp = dest.join(".materia-tmp");
    materia_test_support::wait_until("the upload to start", std::time::Duration::from_secs(30), || {
        std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some()) || child.try_wait().unwrap().is_some()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let object = dest.join("psd/2024/01/big.csv.gzip");
    if let Ok(m) = std::fs::metadata(&object) {
        assert_eq!(m.len(), big.len() as u64, "an object under its final name is complete");
    }
    // A stale temp file (a killed run's) is swept, never taken for an object.
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("psd-2024-01-x.csv.gzip.tmp"), b"short").unwrap();
    let run = env.run(&target, None, &["--verify"]);
    assert!(run.code == 0 || run.code == 3, "{run:?}");
    assert_eq!(std::fs::read(&object).unwrap(), big);
    assert!(std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0) == 0, "swept");
    assert_eq!(env.run(&target, None, &["--verify"]).code, 3, "backed up, verified, nothing differs");
}

/// The state DB inside a gzipped snapshot: its runs' tools.
fn snapshot_runs(gz: &[u8], dir: &Path) -> Vec<String> {
    let mut db = Vec::new();
    flate2::read::GzDecoder::new(gz).read_to_end(&mut db).unwrap();
    let path = dir.join("restored.sqlite");
    std::fs::write(&path, db).unwrap();
    let c = rusqlite::Connection::open(&path).unwrap();
    let mut st = c.prepare("SELECT tool || ' ' || status FROM runs ORDER BY run_id").unwrap();
    st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

#[test]
fn a_state_db_snapshot_goes_up_once_a_day() {
    let env = Env::new();
    three_files(&env);
    let dest: PathBuf = env.root.join("backup");
    let target = format!("fs:{}", dest.display());
    assert_eq!(env.run(&target, None, &[]).code, 0);
    assert!(!dest.join(".state").exists(), "only with --state-snapshot");
    let run = env.run(&target, None, &["--state-snapshot"]);
    assert_eq!(run.code, 0, "{run:?}");
    let snaps: Vec<PathBuf> = std::fs::read_dir(dest.join(".state")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let name = snaps[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("state-20") && name.ends_with(".sqlite.gz"), "{name}");
    // A consistent copy taken during the run: the earlier run, and this one, which the
    // copy records as done (restored, it is the run that took it, not one that died).
    assert_eq!(snapshot_runs(&std::fs::read(&snaps[0]).unwrap(), &env.root), ["landing-backup success", "landing-backup success"]);
    assert!(env.ledger().contains(&format!(".state/{name}")), "{:?}", env.ledger());
    // The same day again: nothing new, nothing uploaded.
    let run = env.run(&target, None, &["--state-snapshot"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(std::fs::read_dir(dest.join(".state")).unwrap().count(), 1);
    // Another snapshot already under the day's key (a restored state DB, a second
    // machine): kept as it is, not recorded, and the run does not fail.
    let env2 = Env::new();
    three_files(&env2);
    let run = env2.run(&target, None, &["--state-snapshot"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains(&format!("remote .state/{name} differs")) && run.stderr.contains("not overwritten"), "{}", run.stderr);
    assert_eq!(snapshot_runs(&std::fs::read(&snaps[0]).unwrap(), &env.root), ["landing-backup success", "landing-backup success"], "untouched");
    assert!(!env2.ledger().iter().any(|k| k.starts_with(".state/")), "{:?}", env2.ledger());
    // A snapshot that vanished from the backup is an integrity alert.
    std::fs::remove_file(&snaps[0]).unwrap();
    let run = env.run(&target, None, &["--verify"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.stderr.contains(&format!("the state DB snapshot .state/{name} is gone from the backup")), "{}", run.stderr);
}

#[test]
fn a_state_db_snapshot_to_s3_is_one_more_put_and_then_nothing() {
    let moto = Moto::start();
    let env = Env::new();
    three_files(&env);
    let run = env.s3(&moto, &["--state-snapshot"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.requests(), serde_json::json!({"LIST": 1, "PUT": 4}), "three files and the snapshot, each confirmed by its ETag");
    let key = moto.objects().into_iter().map(|o| o.0).find(|k| k.starts_with(&format!("{PREFIX}.state/state-"))).unwrap();
    assert_eq!(snapshot_runs(&moto.object(&key), &env.root), ["landing-backup success"]);
    let again = env.s3(&moto, &["--state-snapshot"]);
    assert_eq!(again.code, 3, "{again:?}");
    assert_eq!(env.requests(), serde_json::json!({}), "the ledger has today's snapshot: no request");
}

#[test]
fn server_errors_and_cut_responses_are_retried_until_everything_is_backed_up() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.port);
    let env = Env::new();
    three_files(&env);
    proxy.rule("PUT", "a.csv.gzip", Fault::Unavailable, 2);
    proxy.rule("PUT", "b.csv.gzip", Fault::CutResponse, 1);
    let run = env.via(&proxy, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(moto.object(&format!("{PREFIX}psd/2024/01/a.csv.gzip")), b"alpha");
    assert_eq!(moto.object(&format!("{PREFIX}psd/2024/02/b.csv.gzip")), b"bravo bravo");
    assert_eq!(env.ledger().len(), 3);
    // a: 2 x 503 + 1; b: stored but cut + a conditional retry the server refuses; c: 1.
    assert_eq!(env.requests()["PUT"], 6);
    assert_eq!(env.requests()["HEAD"], 1, "only b, refused by the condition, needed a HEAD");
    let puts = proxy.seen().iter().filter(|(m, _)| m == "PUT").count();
    assert_eq!(puts, 6, "the tool's count matches what the server side saw");
    assert!(proxy.seen().iter().all(|(m, _)| m != "DELETE"), "nothing is ever deleted");
}

#[test]
fn a_response_lost_after_the_object_was_stored_is_not_recorded_and_the_next_run_checks() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.port);
    let env = Env::new();
    three_files(&env);
    proxy.rule("PUT", "a.csv.gzip", Fault::DropResponse, 100);
    let run = env.via(&proxy, &["--retries", "2"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(moto.objects().iter().any(|o| o.0.ends_with("a.csv.gzip")), "the server has it");
    assert!(!env.ledger().iter().any(|k| k.ends_with("a.csv.gzip")), "but it is not recorded");

    proxy.clear();
    let run = env.via(&proxy, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("a.csv.gzip was already in the backup: recorded"), "{}", run.stderr);
    assert_eq!(env.requests(), serde_json::json!({"LIST": 1}), "verified by the listing, not uploaded again");
    assert_eq!(env.ledger().len(), 3);
}

#[test]
fn a_server_killed_mid_multipart_leaves_no_record_and_verify_finishes_the_job() {
    let mut moto = Moto::start();
    let proxy = Proxy::start(moto.port);
    let env = Env::new();
    env.land("psd/2024/01/a.csv.gzip", b"alpha");
    assert_eq!(env.via(&proxy, &[]).code, 0);
    let big: Vec<u8> = (0..11 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    env.land("psd/2024/02/big.csv.gzip", &big);
    let parts = ["--multipart-threshold", "5242880", "--part-size", "5242880", "--retries", "2", "--timeout", "5"];

    proxy.rule("PUT", "uploadId", Fault::Trip, 1);
    let mut c = materia_test_support::tool(env!("CARGO_BIN_EXE_landing-backup"));
    c.env("R2_ENDPOINT", proxy.endpoint()).env("R2_ACCESS_KEY_ID", "test-key-id").env("R2_SECRET_ACCESS_KEY", "test-secret-value");
    let child = c.arg("--data-dir").arg(&env.data).args(["--target", "s3://bkt"]).args(parts).stderr(Stdio::piped()).spawn().unwrap();
    materia_test_support::wait_until("a multipart part to be sent", Duration::from_secs(60), || proxy.tripped());
    moto.restart(); // the old server and everything it held are gone
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(env.ledger(), [format!("{PREFIX}psd/2024/01/a.csv.gzip")], "the interrupted upload is not recorded");

    let run = env.via(&proxy, &[&["--verify"][..], &parts].concat());
    assert_eq!(run.code, 0, "{run:?}");
    let mut keys: Vec<String> = moto.objects().into_iter().map(|o| o.0).collect();
    keys.sort();
    assert_eq!(keys, [format!("{PREFIX}psd/2024/01/a.csv.gzip"), format!("{PREFIX}psd/2024/02/big.csv.gzip")]);
    let sizes: Vec<u64> = moto.objects().into_iter().map(|o| o.1).collect();
    assert_eq!(sizes, [5, big.len() as u64]);
    assert_eq!(env.ledger().len(), 2);
}

#[test]
fn a_failed_multipart_upload_is_aborted_and_not_recorded() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.port);
    let env = Env::new();
    let big: Vec<u8> = (0..11 * 1024 * 1024u32).map(|i| (i % 241) as u8).collect();
    env.land("psd/2024/02/big.csv.gzip", &big);
    proxy.rule("PUT", "uploadId", Fault::Unavailable, 1000);
    let run = env.via(&proxy, &["--multipart-threshold", "5242880", "--part-size", "5242880", "--retries", "1"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(proxy.seen().iter().any(|(m, t)| m == "DELETE" && t.contains("uploadId")), "the upload was aborted");
    let (_, pending) = moto.http("GET", "/bkt?uploads", b"");
    assert!(!pending.contains("<Upload>"), "no multipart upload left open: {pending}");
    assert!(moto.objects().is_empty());
    assert!(env.ledger().is_empty());
    assert_eq!(env.requests()["multipart-abort"], 1);
}

#[test]
fn every_upload_is_conditional_multipart_included() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.port);
    let env = Env::new();
    env.land("psd/2024/01/a.csv.gzip", b"alpha");
    let big: Vec<u8> = (0..11 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    env.land("psd/2024/02/big.csv.gzip", &big);
    let run = env.via(&proxy, &["--multipart-threshold", "5242880", "--part-size", "5242880"]);
    assert_eq!(run.code, 0, "{run:?}");
    // What creates an object: a PUT of a whole object, a multipart upload's completion.
    let creates: Vec<(String, String)> =
        proxy.seen().into_iter().filter(|(m, t)| (m == "PUT" && !t.contains("uploadId")) || (m == "POST" && t.contains("uploadId"))).collect();
    assert_eq!(creates.len(), 2, "{creates:?}");
    let conditional = proxy.conditional();
    for c in &creates {
        assert!(conditional.contains(c), "{c:?} was not conditional (If-None-Match: *): {conditional:?}");
    }
}

/// Every file under `dir` (hidden ones left out) with its content.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).into_iter().flatten() {
            let p = e.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push((p.strip_prefix(root).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn runs(env: &Env) -> Vec<String> {
    let c = rusqlite::Connection::open(env.data.join("landing/.state.sqlite")).unwrap();
    let mut st = c.prepare("SELECT run_id || ' ' || tool || ' ' || status FROM runs ORDER BY run_id").unwrap();
    st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

#[test]
fn a_restore_brings_back_every_file_and_the_state_db_checked() {
    let old = Env::new();
    three_files(&old);
    let dest = old.root.join("backup");
    let target = format!("fs:{}", dest.display());
    assert_eq!(old.run(&target, None, &["--state-snapshot"]).code, 0);
    let old_runs = runs(&old);

    // --dry-run: what would come back, and the bytes; nothing is written.
    let new = Env::new();
    let dry = new.run(&target, None, &["restore", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    let listed: Vec<&str> = dry.stdout.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(listed.len(), 4, "{}", dry.stdout);
    assert!(listed[0].starts_with(".state/state-") && listed[1..] == ["psd/2024/01/a.csv.gzip", "psd/2024/02/b.csv.gzip", "psd/2024/03/c.csv.gzip"]);
    assert!(dry.stderr.contains("would fetch 4 object(s)"), "{}", dry.stderr);
    assert!(!new.data.exists(), "a dry run writes nothing");

    // The restore: the landing files as they were, the state DB with its old runs.
    let run = new.run(&target, None, &["restore"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(tree(&new.data.join("landing")), tree(&old.data.join("landing")));
    let restored_runs = runs(&new);
    assert_eq!(restored_runs[..old_runs.len()], old_runs[..], "the old runs are kept");
    assert!(restored_runs.last().unwrap().ends_with("landing-backup success"), "{restored_runs:?}");
    assert!(!new.data.join("landing/.restore-in-progress").exists());
    // The ledger knows every object: the next backup uploads nothing.
    let next = new.run(&target, None, &[]);
    assert_eq!(next.code, 3, "{next:?}");
    assert!(next.stderr.contains("uploaded 0"), "{}", next.stderr);

    // A new server's state DB (runs, but nothing landed or backed up) is set aside.
    let fresh = Env::new();
    assert_eq!(fresh.run(&format!("fs:{}", fresh.root.join("elsewhere").display()), None, &[]).code, 3);
    let run = fresh.run(&target, None, &["restore"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("set this server's new state DB aside"), "{}", run.stderr);
    assert_eq!(runs(&fresh)[..old_runs.len()], old_runs[..], "the backup's state DB took its place");

    // A landing dir that holds files is refused; --into-existing adds only what is
    // missing and never overwrites.
    let again = new.run(&target, None, &["restore"]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.error_line().contains("already holds 3 landing file(s) and a state DB"), "{}", again.error_line());
    let other = Env::new();
    other.land("psd/2024/01/a.csv.gzip", b"a local one");
    let run = other.run(&target, None, &["restore", "--into-existing"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(std::fs::read(other.data.join("landing/psd/2024/01/a.csv.gzip")).unwrap(), b"a local one");
    assert_eq!(std::fs::read(other.data.join("landing/psd/2024/02/b.csv.gzip")).unwrap(), b"bravo bravo");
    assert_eq!(other.run(&target, None, &["restore", "--into-existing"]).code, 3, "nothing left to fetch");
}

#[test]
fn a_killed_restore_resumes_and_a_changed_object_is_refused() {
    let old = Env::new();
    for i in 0..24 {
        let body: Vec<u8> = (0..(2u32 << 20)).map(|b| (b.wrapping_mul(31).wrapping_add(i)) as u8).collect();
        old.land(&format!("psd/2024/{:02}/f{i}.csv.gzip", i % 12 + 1), &body);
    }
    let dest = old.root.join("backup");
    let target = format!("fs:{}", dest.display());
    assert_eq!(old.run(&target, None, &["--state-snapshot"]).code, 0);

    // Killed mid-way: whatever has a final name is complete.
    let new = Env::new();
    let mut c = materia_test_support::tool(env!("CARGO_BIN_EXE_landing-backup"));
    let mut child =
        c.arg("--data-dir").arg(&new.data).args(["--target", &target, "restore", "--concurrency", "1"]).stderr(Stdio::null()).spawn().unwrap();
    materia_test_support::wait_until("the restore to progress", Duration::from_secs(60), || {
        tree(&new.data.join("landing")).len() >= 3 || child.try_wait().unwrap().is_some()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let original: std::collections::HashMap<String, Vec<u8>> = tree(&old.data.join("landing")).into_iter().collect();
    let partial = tree(&new.data.join("landing"));
    assert!(partial.len() < original.len(), "killed before the end: {}", partial.len());
    for (rel, bytes) in &partial {
        assert_eq!(Some(bytes), original.get(rel), "{rel} is complete under its final name");
    }
    assert!(new.data.join("landing/.restore-in-progress").exists());
    // The rerun (no flag: it is this restore's own landing dir) fetches the rest.
    let run = new.run(&target, None, &["restore"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(tree(&new.data.join("landing")), tree(&old.data.join("landing")));
    assert!(run.stderr.contains(&format!("restored {} landing file(s)", original.len() - partial.len())), "{}", run.stderr);
    let leftovers = Command::new("find").arg(new.data.join("landing")).args(["-name", "*.tmp-*"]).output().unwrap().stdout;
    assert!(leftovers.is_empty(), "no temp file left: {}", String::from_utf8_lossy(&leftovers));

    // An object altered in the backup (same size): an integrity error naming it, and
    // nothing of it under its final name; the others come back.
    let victim = "psd/2024/05/f4.csv.gzip";
    let mut bytes = std::fs::read(dest.join(victim)).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(dest.join(victim), bytes).unwrap();
    let third = Env::new();
    let run = third.run(&target, None, &["restore"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.error_line().contains(&format!("{victim}: its content does not match its record")), "{}", run.error_line());
    assert!(!third.data.join("landing").join(victim).exists());
    assert_eq!(tree(&third.data.join("landing")).len(), original.len() - 1);
}

#[test]
fn a_restore_from_s3_checks_each_object_against_the_ledger() {
    let moto = Moto::start();
    let old = Env::new();
    three_files(&old);
    assert_eq!(old.s3(&moto, &["--state-snapshot"]).code, 0);
    let new = Env::new();
    let run = new.s3(&moto, &["restore"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(tree(&new.data.join("landing")), tree(&old.data.join("landing")));
    assert_eq!(new.s3(&moto, &[]).code, 3, "recorded: nothing to upload");
    assert_eq!(new.requests()["PUT"], serde_json::Value::Null, "no PUT");

    // Someone overwrote an object in the bucket: its ETag is now the new content's,
    // but the ledger recorded the original's.
    let key = format!("{PREFIX}psd/2024/02/b.csv.gzip");
    assert_eq!(moto.http("PUT", &format!("/bkt/{key}"), b"bravo BRAVO").0, 200);
    let third = Env::new();
    let run = third.s3(&moto, &["restore"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.error_line().contains(&format!("{key}: its content does not match its record")), "{}", run.error_line());
}
