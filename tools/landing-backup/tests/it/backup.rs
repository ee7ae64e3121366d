//! Backups to S3 and the fs backend: what goes up and when, verify and repair, the
//! credentials, the daily state DB snapshot, conditional uploads.

use super::*;

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
