//! Fetching: the backfill, conditional GETs, retries and deadlines, the signal a landing
//! sends, sources that fail, `import`.

use super::*;

#[test]
fn backfill_lands_every_release_and_records_it() {
    let s = psd_server();
    let env = Env::new();
    let run = env.fetch(&s.url(), &["--since", "2024-01", "--until", "2024-04"]);
    assert_eq!(run.code, 0, "{run:?}");

    let cur = current_month_dir();
    let mut want = vec![
        "psd/2024/01/a1_0.csv.gzip".to_owned(),
        "psd/2024/02/a2_0.csv.gzip".to_owned(),
        "psd/2024/03/a3_0.csv.gzip".to_owned(),
        format!("psd/{cur}/cur-1.csv.gzip"),
    ];
    want.sort();
    assert_eq!(env.landed(), want);
    // The landed CSV is the zip's CSV, byte for byte.
    assert_eq!(gunzip(&env.landing().join("psd/2024/02/a2_0.csv.gzip")), psd_csv(32, "2024-2"));
    // stdout is data: the landed paths.
    assert_eq!(run.stdout.lines().count(), 4, "{}", run.stdout);
    assert!(run.stderr.contains("checked 5, landed 4, unchanged 0, not released 1"), "{}", run.stderr);

    // The operator's query, verbatim.
    let db = env.db();
    let rows: Vec<(String, String, Option<String>)> = db
        .prepare("SELECT extractor, status, finished_at FROM extraction_runs ORDER BY run_id DESC LIMIT 20")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), ("psd-extract", "success"));
    assert!(rows[0].2.is_some());
    let (month, etag, rows_n): (String, String, i64) = db
        .query_row("SELECT release_month, etag, rows FROM landed_files WHERE path LIKE 'psd/2024/03/%'", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((month.as_str(), etag.as_str(), rows_n), ("2024-03", "\"a3:0\"", 34));
    assert_eq!(env.count("SELECT count(*) FROM fetches WHERE outcome = 'not_released'"), 1);
    assert!(env.data.join("triggers/landing.updated").exists());
    // Not a terminal: plain log lines, no progress bar drawing.
    assert!(!run.stderr.contains('\x1b') && !run.stderr.contains('\r'), "{:?}", run.stderr);
}

#[test]
fn a_terminal_gets_a_progress_bar() {
    let s = psd_server();
    let env = Env::new();
    let args = env.fetch_args(&s.url(), &["--since", "2024-01", "--until", "2024-04"]);
    let cmd = std::iter::once(env!("CARGO_BIN_EXE_psd-extract").to_owned()).chain(args).collect::<Vec<_>>().join(" ");
    // script(1) runs the command on a pseudo-terminal and copies what it drew.
    let out = env.command("script").args(["-qfec", &cmd, "/dev/null"]).output().unwrap();
    let drawn = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{drawn}");
    assert!(drawn.contains("/5 http://"), "no progress bar drawn: {drawn:?}");
}

#[test]
fn rerun_without_changes_is_one_conditional_request_and_writes_nothing() {
    let s = psd_server();
    let env = Env::new();
    assert_eq!(env.fetch(&s.url(), &["--since", "2024-01", "--until", "2024-03"]).code, 0);
    let trigger = env.data.join("triggers/landing.updated");
    let before = (env.landed(), std::fs::metadata(&trigger).unwrap().modified().unwrap());
    s.clear_log();

    let run = env.fetch(&s.url(), &["--since", "2024-01", "--until", "2024-03"]);
    assert_eq!(run.code, 3, "nothing new exits 3: {run:?}");
    let seen = s.requests();
    assert_eq!(seen.len(), 1, "landed archives are not requested again: {seen:?}");
    assert_eq!(seen[0].path, COFFEE);
    assert_eq!(seen[0].headers.get("if-none-match").map(String::as_str), Some("\"cur-1\""));
    assert_eq!(seen[0].status, 304);
    assert_eq!((env.landed(), std::fs::metadata(&trigger).unwrap().modified().unwrap()), before);
    assert_eq!(env.last_run().0, "unchanged");
    assert!(run.stdout.is_empty());
}

#[test]
fn a_new_release_lands_beside_the_old_one() {
    let s = psd_server();
    let env = Env::new();
    assert_eq!(env.fetch(&s.url(), &[]).code, 0);
    s.set(COFFEE, Route::new(psd_zip(41, "current-2"), "\"cur-2\""));
    assert_eq!(env.fetch(&s.url(), &[]).code, 0);
    let cur = current_month_dir();
    assert_eq!(env.landed(), vec![format!("psd/{cur}/cur-1.csv.gzip"), format!("psd/{cur}/cur-2.csv.gzip")]);
    // Same content under a new ETag: recorded, not written twice.
    s.set(COFFEE, Route::new(psd_zip(41, "current-2"), "\"cur-3\""));
    let run = env.fetch(&s.url(), &[]);
    assert_eq!(run.code, 3, "{run:?}");
    assert_eq!(env.landed().len(), 2);
    assert_eq!(env.count("SELECT count(*) FROM fetches WHERE outcome = 'duplicate'"), 1);
    assert_eq!(env.count("SELECT count(*) FROM http_validators WHERE etag = '\"cur-3\"'"), 1);
}

#[test]
fn last_modified_is_the_fallback_validator() {
    let s = Server::start();
    let lm = "Tue, 20 Dec 2022 15:02:00 GMT";
    s.set(COFFEE, Route { body: psd_zip(5, "lm"), last_modified: Some(lm.into()), ..Route::default() });
    let env = Env::new();
    assert_eq!(env.fetch(&s.url(), &[]).code, 0);
    // No ETag: the file is named after its content.
    let landed = env.landed();
    assert!(landed[0].rsplit('/').next().unwrap().starts_with("sha256-"), "{landed:?}");
    assert_eq!(env.fetch(&s.url(), &[]).code, 3);
    let second = s.requests_to(COFFEE).pop().unwrap();
    assert_eq!(second.headers.get("if-modified-since").map(String::as_str), Some(lm));
    assert_eq!(second.status, 304);
}

#[test]
fn server_errors_are_retried_and_retry_after_is_honoured() {
    let s = psd_server();
    s.push_fault(COFFEE, Fault::Status(503, None));
    s.push_fault(COFFEE, Fault::Status(429, Some("1")));
    let env = Env::new();
    let run = env.fetch(&s.url(), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let seen = s.requests_to(COFFEE);
    assert_eq!(seen.iter().map(|r| r.status).collect::<Vec<_>>(), [503, 429, 200]);
    assert!(seen[2].at - seen[1].at >= Duration::from_millis(950), "Retry-After: 1 was not honoured");
    assert!(run.stderr.contains("retry 1/3"), "{}", run.stderr);
    assert_eq!(env.count("SELECT attempts FROM fetches"), 3);
}

#[test]
fn persistent_server_errors_fail_cleanly_and_the_next_run_recovers() {
    let s = psd_server();
    s.set_always(COFFEE, Some(Fault::Status(503, None)));
    let env = Env::new();
    let run = env.fetch(&s.url(), &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(s.requests_to(COFFEE).len(), 4, "1 attempt + 3 retries");
    let line = run.error_line();
    assert!(line.contains("giving up after 4 attempts") && line.contains("HTTP 503"), "{line}");
    assert_eq!(run.stderr.lines().filter(|l| l.starts_with("psd-extract: error:")).count(), 1);
    assert!(env.landed().is_empty());
    let (status, error) = env.last_run();
    assert_eq!(status, "failed");
    assert!(error.unwrap().contains("HTTP 503"));
    assert!(!env.data.join("triggers/landing.updated").exists());

    s.set_always(COFFEE, None);
    assert_eq!(env.fetch(&s.url(), &[]).code, 0);
    assert_eq!(env.landed().len(), 1);
}

#[test]
fn a_retry_budget_too_small_for_retry_after_gives_up_at_once() {
    let s = psd_server();
    s.set_always(COFFEE, Some(Fault::Status(429, Some("3600"))));
    let env = Env::new();
    let run = env.fetch(&s.url(), &["--retry-budget", "10"]);
    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("would exceed the retry budget of 10 s"), "{}", run.error_line());
    assert_eq!(s.requests_to(COFFEE).len(), 1);
}

#[test]
fn a_connection_cut_mid_body_is_retried() {
    let s = psd_server();
    s.push_fault(COFFEE, Fault::CutAfter(300));
    let env = Env::new();
    let run = env.fetch(&s.url(), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(s.requests_to(COFFEE).len(), 2);
    assert_eq!(env.landed().len(), 1);
}

#[test]
fn a_stalled_download_times_out_and_is_retried() {
    let s = psd_server();
    s.push_fault(COFFEE, Fault::Stall(Duration::from_secs(5)));
    let env = Env::new();
    let run = env.fetch(&s.url(), &["--timeout", "1"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(s.requests_to(COFFEE).len(), 2);
    let warning = run.stderr.lines().find(|l| l.starts_with("warn:")).expect("a retry warning");
    assert!(warning.contains("connection lost after 100 bytes") && warning.contains("retry 1/3"), "{warning}");
    assert_eq!(env.landed().len(), 1);
}

#[test]
fn a_trickling_server_is_stopped_by_the_run_deadline_and_nothing_lands() {
    // Every read gets a few bytes in time, so no per-read timeout ever fires: only the
    // whole run's deadline ends it (the drip alone would take minutes).
    let s = psd_server();
    s.set_always(COFFEE, Some(Fault::Drip { chunk: 8, pause: Duration::from_millis(200) }));
    let env = Env::new();
    let run = env.fetch(&s.url(), &["--timeout", "5", "--run-timeout", "2"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().contains("the run's deadline passed (--run-timeout)"), "{}", run.error_line());
    assert!(env.landed().is_empty());
    assert!(!env.data.join("triggers/landing.updated").exists());
    assert_eq!(env.last_run().0, "failed");
    assert_eq!(env.count("SELECT count(*) FROM fetches WHERE outcome = 'failed' AND detail LIKE '%deadline%'"), 1);
    assert_eq!(s.requests_to(COFFEE).len(), 1, "a deadline is not retried");

    // A backfill whose deadline passes stops checking and says how many it left.
    s.set_always(COFFEE, None);
    for m in 1..=3 {
        s.set_always(&archive(2024, m), Some(Fault::Drip { chunk: 8, pause: Duration::from_millis(200) }));
    }
    let run = env.fetch(&s.url(), &["--since", "2024-01", "--until", "2024-03", "--run-timeout", "1"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().contains("sources not checked"), "{}", run.error_line());
    assert!(env.landed().is_empty());
}

#[test]
fn each_landing_is_signalled_as_it_lands() {
    // 2024-01 lands, then the run is killed while 2024-02 drips: what landed is already
    // signalled, so the transform does not wait for the next landing.
    let s = psd_server();
    let env = Env::new();
    s.set_always(&archive(2024, 2), Some(Fault::Drip { chunk: 8, pause: Duration::from_millis(100) }));
    let args = env.fetch_args(&s.url(), &["--since", "2024-01", "--until", "2024-02"]);
    let mut child = env.command(env!("CARGO_BIN_EXE_psd-extract")).args(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    materia_test_support::wait_until("2024-02 to be requested", Duration::from_secs(30), || !s.requests_to(&archive(2024, 2)).is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(env.landed(), ["psd/2024/01/a1_0.csv.gzip"]);
    assert!(env.data.join("triggers/landing.updated").exists(), "signalled before the run ended");
}

#[test]
fn archive_404_is_not_released_but_a_missing_current_file_is_an_error() {
    let s = psd_server();
    let env = Env::new();
    let run = env.fetch(&s.url(), &["--since", "2024-04", "--until", "2024-05"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.count("SELECT count(*) FROM fetches WHERE outcome = 'not_released'"), 2);
    s.remove(COFFEE);
    let run = env.fetch(&s.url(), &[]);
    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("HTTP 404"), "{}", run.error_line());
}

#[test]
fn one_failing_source_does_not_stop_the_others() {
    let s = psd_server();
    s.set("/downloads/psd_tea_csv.zip", Route::new(corrupt_zip(), "\"t\""));
    let env = Env::new();
    let run = env.fetch(&s.url(), &["--file", "psd_tea_csv.zip", "--file", "psd_coffee_csv.zip"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert_eq!(env.landed().len(), 1, "coffee landed");
    assert!(env.data.join("triggers/landing.updated").exists(), "what landed is signalled");
    assert_eq!(env.last_run().0, "failed");
}

#[test]
fn import_lands_a_zip_fetched_by_hand_with_the_same_validation() {
    let env = Env::new();
    let zip = env.root.join("psd_coffee_csv.zip");
    std::fs::write(&zip, psd_zip(7, "import")).unwrap();
    let run = env.run(&["import", zip.to_str().unwrap(), "--release", "2023-05"]);
    assert_eq!(run.code, 0, "{run:?}");
    let landed = env.landed();
    assert_eq!(landed.len(), 1);
    assert!(landed[0].starts_with("psd/2023/05/sha256-"), "{landed:?}");
    assert_eq!(run.stdout.trim(), env.landing().join(&landed[0]).to_str().unwrap());
    let again = env.run(&["import", zip.to_str().unwrap(), "--release", "2023-05"]);
    assert_eq!(again.code, 3, "{again:?}");
    assert_eq!(env.landed().len(), 1);

    std::fs::write(&zip, corrupt_zip()).unwrap();
    let bad = env.run(&["import", zip.to_str().unwrap(), "--release", "2023-06"]);
    assert_eq!(bad.code, 5);
    assert!(bad.error_line().contains("corrupt zip entry"), "{}", bad.error_line());
    assert_eq!(env.landed().len(), 1);
}

#[test]
fn the_real_release_lands_from_http_and_by_import() {
    let Some(real) = real_release() else { return };
    let s = Server::start();
    s.set(COFFEE, Route::new(real, "\"8068a3b6e14d91:0\""));
    let env = Env::new();
    let run = env.fetch(&s.url(), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let path = format!("psd/{}/8068a3b6e14d91_0.csv.gzip", current_month_dir());
    assert_eq!(env.landed(), vec![path.clone()]);
    let csv = gunzip(&env.landing().join(&path));
    assert!(csv.starts_with(HEADER.as_bytes()));
    assert_eq!(env.count("SELECT rows FROM landed_files"), 77_957);
    assert_eq!(env.count("SELECT csv_bytes FROM landed_files"), csv.len() as i64);
    assert_eq!(env.fetch(&s.url(), &[]).code, 3);

    // The same release imported by hand is recognised as already landed.
    let run = env.run(&["import", shared_fixture().to_str().unwrap(), "--release", "2022-12"]);
    assert_eq!(run.code, 3, "{run:?}");
    let other = Env::new();
    let run = other.run(&["import", shared_fixture().to_str().unwrap(), "--release", "2022-12"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(other.count("SELECT rows FROM landed_files WHERE release_month = '2022-12'"), 77_957);
}
