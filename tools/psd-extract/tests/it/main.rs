//! psd-extract against a real HTTP server on 127.0.0.1, real SQLite and real files.
//!
//! Why this long: one integration binary per tool (fast to link); its tests share the HTTP server and zip builders at the top.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod support;

use std::process::Stdio;
use std::time::Duration;

use materia_common::Month;
use materia_test_support::psd_server::{Fault, Route, Server};
use support::*;

const COFFEE: &str = "/downloads/psd_coffee_csv.zip";

fn archive(y: u16, m: u8) -> String {
    format!("/downloads/archives/{y:04}/{m:02}/psd_coffee_csv.zip")
}

/// A server with the current file and archives for 2024-01..=2024-03 (2024-04 not released).
fn psd_server() -> Server {
    let s = Server::start();
    s.set(COFFEE, Route::new(psd_zip(40, "current"), "\"cur-1\""));
    for m in 1..=3 {
        s.set(&archive(2024, m), Route::new(psd_zip(30 + m as usize, &format!("2024-{m}")), &format!("\"a{m}:0\"")));
    }
    s
}

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

/// A release whose CSV is `psd_csv(rows)` with line `line` (1-based, the header is 1)
/// replaced by `bad`.
fn release_with_line(rows: usize, line: usize, bad: &str) -> Vec<u8> {
    let csv = String::from_utf8(psd_csv(rows, "x")).unwrap();
    let mut lines: Vec<String> = csv.split("\r\n").map(str::to_owned).collect();
    lines[line - 1] = bad.to_owned();
    zip_of(&[("psd_coffee.csv", lines.join("\r\n").as_bytes())])
}

#[test]
fn a_release_the_models_cannot_load_never_lands() {
    let row = "0711100,\"Coffee, Green\",BR,Brazil,2001,2022,12,028,Production,02,\"(1000 60 KG BAGS)\"";
    let long = format!("{row},1.0{}", "0".repeat(3 << 20));
    let cases = [
        (format!("{row},n/a"), "line 7: Value is \"n/a\", expected a number"),
        (format!("{row},1.0,extra"), "line 7: 13 columns, expected 12"),
        (row.replace(",2001,", ",201,") + ",1.0", "line 7: Market_Year is \"201\", expected a 4-digit year"),
        (long, "line 7 is longer than 4096 bytes"),
    ];
    for (bad, why) in cases {
        let s = Server::start();
        s.set(COFFEE, Route::new(release_with_line(20, 7, &bad), "\"bad\""));
        let env = Env::new();
        let run = env.fetch(&s.url(), &[]);
        assert_eq!(run.code, 5, "{why}: {run:?}");
        assert!(run.error_line().contains(why), "{}", run.error_line());
        assert!(env.landed().is_empty(), "{why}");
        assert!(!env.data.join("triggers/landing.updated").exists());
        let detail: String = env.db().query_row("SELECT detail FROM fetches WHERE outcome = 'failed'", [], |r| r.get(0)).unwrap();
        assert!(detail.contains(why), "recorded with the line and why: {detail}");
        // Nothing is remembered of it: the next run asks again (USDA may fix it).
        assert_eq!(env.count("SELECT count(*) FROM http_validators WHERE etag IS NOT NULL"), 0);
    }
}

#[test]
fn size_limits_refuse_a_huge_download_or_a_zip_bomb() {
    // A body larger than --max-download-mib, announced by Content-Length: refused unread.
    let s = Server::start();
    s.set(COFFEE, Route::new(vec![b'x'; 3 << 20], "\"big\""));
    let env = Env::new();
    let run = env.fetch(&s.url(), &["--max-download-mib", "1"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.error_line().contains("over the limit of 1048576 (--max-download-mib)"), "{}", run.error_line());
    assert_eq!(s.requests_to(COFFEE).len(), 1, "not retried");
    // The same without Content-Length (a lying one): counted as it arrives.
    s.set_always(COFFEE, Some(Fault::DeclareLength(10)));
    let run = env.fetch(&s.url(), &["--max-download-mib", "1"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(env.landed().is_empty());

    // A zip whose CSV inflates past --max-csv-mib: refused as it streams, nothing written.
    let bomb = zip_of(&[("psd_coffee.csv", &psd_csv(30_000, "bomb"))]);
    assert!(bomb.len() < 1 << 20 && psd_csv(30_000, "bomb").len() > 2 << 20);
    let s = Server::start();
    s.set(COFFEE, Route::new(bomb, "\"bomb\""));
    let env = Env::new();
    let run = env.fetch(&s.url(), &["--max-csv-mib", "2"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.error_line().contains("(--max-csv-mib)"), "{}", run.error_line());
    assert!(env.landed().is_empty(), "no temp file either: {:?}", env.landed());
    assert_eq!(env.fetch(&s.url(), &[]).code, 0, "within the default limit it lands");
}

#[test]
fn a_long_etag_is_neither_kept_nor_sent_back() {
    let s = Server::start();
    let etag = format!("\"{}\"", "e".repeat(300));
    let mut route = Route::new(psd_zip(10, "long"), &etag);
    route.last_modified = Some("Wed, 21 Oct 2026 07:28:00 GMT".into());
    s.set(COFFEE, route);
    let env = Env::new();
    let run = env.fetch(&s.url(), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("an ETag of 302 bytes is not kept"), "{}", run.stderr);
    assert!(env.landed()[0].contains("/sha256-"), "named by content: {:?}", env.landed());
    assert_eq!(env.count("SELECT count(*) FROM http_validators WHERE etag IS NULL AND last_modified IS NOT NULL"), 1);
    let again = env.fetch(&s.url(), &[]);
    assert_eq!(again.code, 3, "{again:?}");
    let second = s.requests_to(COFFEE).pop().unwrap();
    assert!(!second.headers.contains_key("if-none-match") && second.headers.contains_key("if-modified-since"), "{:?}", second.headers);
}

#[test]
fn redirects_stay_on_the_host() {
    let s = psd_server();
    // To the same host: followed.
    s.set("/downloads/moved.zip", Route::new(Vec::new(), "\"m\""));
    s.set_always("/downloads/moved.zip", Some(Fault::Redirect(format!("{}{COFFEE}", s.url()))));
    let env = Env::new();
    let run = env.fetch(&s.url(), &["--file", "moved.zip"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.landed().len(), 1);
    // To another host (the same server, named otherwise): refused, recorded, not retried.
    let port = s.url().rsplit(':').next().unwrap().to_owned();
    s.set_always("/downloads/moved.zip", Some(Fault::Redirect(format!("http://localhost:{port}{COFFEE}"))));
    let env = Env::new();
    let run = env.fetch(&s.url(), &["--file", "moved.zip"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().contains("a redirect to another host (localhost) is refused"), "{}", run.error_line());
    assert!(env.landed().is_empty());
    // Unless allowed.
    let run = env.fetch(&s.url(), &["--file", "moved.zip", "--allow-redirect-host", "localhost"]);
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn a_wrong_clock_never_dates_a_release() {
    // This machine's clock days off the server's Date: nothing lands.
    let s = Server::start();
    let mut route = Route::new(psd_zip(10, "clock"), "\"c\"");
    route.date = Some(httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(3 * 86_400)));
    s.set(COFFEE, route.clone());
    let env = Env::new();
    let run = env.fetch(&s.url(), &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().contains("this machine's clock is 72 hours off the server's"), "{}", run.error_line());
    assert!(env.landed().is_empty());
    // In step with the server: it lands.
    route.date = Some(httpdate::fmt_http_date(std::time::SystemTime::now()));
    s.set(COFFEE, route);
    assert_eq!(env.fetch(&s.url(), &[]).code, 0);

    // A clock before the newest landed release (here: a release landed for a later month).
    let later = format!("{}-12", Month::current_utc().year() + 1);
    let zip = env.root.join("later.zip");
    std::fs::write(&zip, psd_zip(5, "later")).unwrap();
    assert_eq!(env.run(&["import", zip.to_str().unwrap(), "--release", &later]).code, 0);
    let run = env.fetch(&s.url(), &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().contains(&format!("before the newest landed release ({later})")), "{}", run.error_line());
}

#[test]
fn memory_stays_bounded_whatever_the_release_size() {
    // 400,000 rows: a 40 MB CSV. Holding it (or the zip) in memory would show in the peak RSS.
    let body = psd_zip(400_000, "big");
    let csv_len = psd_csv(400_000, "big").len();
    assert!(csv_len > 35 << 20, "{csv_len}");
    let s = Server::start();
    s.set(COFFEE, Route::new(body, "\"big\""));
    let env = Env::new();
    let mut args = vec!["-f".to_owned(), "%M".to_owned(), "-o".to_owned(), env.root.join("rss").display().to_string()];
    args.push(env!("CARGO_BIN_EXE_psd-extract").to_owned());
    args.extend(env.fetch_args(&s.url(), &[]));
    let out = env.command("/usr/bin/time").args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let rss_kib: u64 = std::fs::read_to_string(env.root.join("rss")).unwrap().trim().parse().unwrap();
    assert!(rss_kib < 30 * 1024, "peak RSS {rss_kib} KiB for a {csv_len}-byte CSV");
    assert_eq!(env.count("SELECT rows FROM landed_files"), 400_001);
}

#[test]
fn cut_and_short_bodies_never_land() {
    for fault in [Fault::CutAfter(300), Fault::DeclareLength(1_000_000)] {
        let s = psd_server();
        s.set_always(COFFEE, Some(fault.clone()));
        let env = Env::new();
        let run = env.fetch(&s.url(), &[]);
        assert_eq!(run.code, 1, "{fault:?}: {run:?}");
        let line = run.error_line();
        assert!(line.contains("giving up after 4 attempts"), "{fault:?}: {line}");
        assert!(env.landed().is_empty(), "{fault:?}: {:?}", env.landed());
        assert_eq!(env.last_run().0, "failed");
        s.set_always(COFFEE, None);
        assert_eq!(env.fetch(&s.url(), &[]).code, 0, "{fault:?}: next run recovers");
    }
}

#[test]
fn invalid_releases_are_rejected_and_nothing_lands() {
    let two = zip_of(&[("a.csv", &psd_csv(3, "a")), ("b.csv", &psd_csv(3, "b"))]);
    let changed = zip_of(&[("psd_coffee.csv", HEADER.replace("Value", "Amount").as_bytes())]);
    let header_only = zip_of(&[("psd_coffee.csv", format!("{HEADER}\r\n").as_bytes())]);
    let empty = zip_of(&[("psd_coffee.csv", b"")]);
    let not_csv = zip_of(&[("psd_coffee.xlsx", &psd_csv(3, "x"))]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("corrupt", corrupt_zip(), "corrupt zip entry"),
        ("not a zip", b"<html>maintenance</html>".to_vec(), "not a valid zip archive"),
        ("changed header", changed, "CSV header changed: column 12 is \"Amount\", expected \"Value\""),
        ("header only", header_only, "CSV has a header but no data rows"),
        ("empty csv", empty, "empty CSV: no header"),
        ("two files", two, "expected exactly one CSV in the zip, found 2 files"),
        ("not a csv", not_csv, "expected a CSV in the zip"),
    ];
    for (what, body, msg) in cases {
        let s = Server::start();
        s.set(COFFEE, Route::new(body, "\"bad\""));
        let env = Env::new();
        let run = env.fetch(&s.url(), &[]);
        assert_eq!(run.code, 5, "{what}: {run:?}");
        assert!(run.error_line().contains(msg), "{what}: {}", run.error_line());
        assert_eq!(s.requests_to(COFFEE).len(), 1, "{what}: bad input is not retried");
        assert!(env.landed().is_empty(), "{what}: {:?}", env.landed());
        assert!(!env.landing().join("psd").exists(), "{what}: no empty month folder is left");
        let (status, error) = env.last_run();
        assert_eq!(status, "failed", "{what}");
        assert!(error.unwrap().contains(msg), "{what}");
        assert_eq!(env.count("SELECT count(*) FROM http_validators"), 0, "{what}: validators not kept");
        // A good file under the same ETag lands on the next run: the bad one was not remembered.
        s.set(COFFEE, Route::new(psd_zip(3, what), "\"bad\""));
        assert_eq!(env.fetch(&s.url(), &[]).code, 0, "{what}");
    }
}

#[test]
fn hostile_etags_never_escape_the_landing_dir() {
    let s = Server::start();
    let long = format!("\"{}\"", "A/".repeat(150));
    let etags: Vec<(&str, Vec<u8>)> = vec![
        ("a_csv.zip", b"\"../../x\"".to_vec()),
        ("b_csv.zip", b"\"a/b/../../../c\"".to_vec()),
        ("c_csv.zip", long.into_bytes()),
        ("d_csv.zip", b"\"..\"".to_vec()),
        ("e_csv.zip", b"W/\"..\\\\x y;rm -rf\"".to_vec()),
        ("f_csv.zip", b"\"\xff\xfe\"".to_vec()),
        ("g_csv.zip", b"\"../../x\"".to_vec()),
    ];
    let mut args = vec![];
    for (i, (file, etag)) in etags.iter().enumerate() {
        let body = psd_zip(3, &format!("hostile-{i}"));
        s.set(&format!("/downloads/{file}"), Route { body, etag: Some(etag.clone()), ..Route::default() });
        args.extend(["--file", file]);
    }
    let env = Env::new();
    let run = env.fetch(&s.url(), &args);
    assert_eq!(run.code, 0, "{run:?}");
    let landed = env.landed();
    assert_eq!(landed.len(), etags.len(), "{landed:?}");
    let dir = format!("psd/{}/", current_month_dir());
    for p in &landed {
        let name = p.strip_prefix(&dir).unwrap_or_else(|| panic!("{p} is outside {dir}"));
        assert!(name.ends_with(".csv.gzip") && !name.starts_with('.') && name.len() <= 64 + 22, "{name}");
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)), "{name}");
    }
    // Two files with the same hostile ETag got distinct names; nothing was written outside.
    assert!(landed.iter().any(|p| p.ends_with("_.._x.csv.gzip")));
    let top: Vec<_> = std::fs::read_dir(&env.root).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(top, vec![std::ffi::OsString::from("data")]);
    let mut data: Vec<_> = std::fs::read_dir(&env.data).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    data.sort();
    assert_eq!(data, ["landing", "locks", "triggers"]);
}

#[test]
fn a_second_instance_is_refused_and_wait_lock_waits() {
    let s = psd_server();
    let chunk = psd_zip(40, "current").len() / 50 + 1; // about 3 s of download
    s.push_fault(COFFEE, Fault::Drip { chunk, pause: Duration::from_millis(60) });
    let env = Env::new();
    let first = env.cmd().args(env.fetch_args(&s.url(), &[])).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    s.wait_for_requests(COFFEE, 1);

    let second = env.fetch(&s.url(), &[]);
    assert_eq!(second.code, 4, "{second:?}");
    assert_eq!(second.error_line(), format!("psd-extract: error: already running (pid {})", first.id()));

    let third = env.fetch(&s.url(), &["--wait-lock", "60"]);
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0));
    assert_eq!(third.code, 3, "waited for the first, then found nothing new: {third:?}");
    assert_eq!(s.requests_to(COFFEE).len(), 2, "the refused instance made no request");
    assert_eq!(env.count("SELECT count(*) FROM runs"), 2);
}

#[test]
fn kill_9_mid_download_leaves_no_partial_file_and_the_rerun_completes() {
    let s = psd_server();
    // 50 chunks, 100 ms apart: the download takes about 5 s.
    let chunk = psd_zip(40, "current").len() / 50 + 1;
    s.push_fault(COFFEE, Fault::Drip { chunk, pause: Duration::from_millis(100) });
    let env = Env::new();
    let mut child = env.cmd().args(env.fetch_args(&s.url(), &[])).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    s.wait_for_requests(COFFEE, 1);
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(env.landed().iter().all(|p| !p.ends_with(".csv.gzip")), "{:?}", env.landed());
    assert_eq!(env.last_run().0, "running", "the killed run could not record its end");

    let run = env.fetch(&s.url(), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.landed(), vec![format!("psd/{}/cur-1.csv.gzip", current_month_dir())]);
    let statuses: Vec<String> =
        env.db().prepare("SELECT status FROM runs ORDER BY run_id").unwrap().query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(statuses, ["aborted", "success"]);
}

#[test]
fn kill_9_while_landing_leaves_only_a_temp_file_that_the_next_run_clears() {
    // A big release takes long enough to gzip that a kill lands mid-write.
    let s = Server::start();
    s.set(COFFEE, Route::new(psd_zip(400_000, "big"), "\"big\""));
    let env = Env::new();
    let mut child = env.cmd().args(env.fetch_args(&s.url(), &[])).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    s.wait_for_requests(COFFEE, 1);
    // Wait for the temp file to appear, then kill.
    let mut saw_temp = false;
    materia_test_support::wait_until("a temp file or the end of the run", Duration::from_secs(60), || {
        saw_temp = env.landed().iter().any(|p| p.contains(".tmp-"));
        saw_temp || child.try_wait().unwrap().is_some()
    });
    let _ = child.kill();
    child.wait().unwrap();
    assert!(saw_temp, "the run finished before it could be killed mid-write");
    let left = env.landed();
    assert!(left.iter().all(|p| p.rsplit('/').next().unwrap().starts_with('.')), "only hidden temp files: {left:?}");
    let run = env.fetch(&s.url(), &[]);
    assert!(run.code == 0 || run.code == 3, "{run:?}");
    let landed = env.landed();
    assert_eq!(landed, vec![format!("psd/{}/big.csv.gzip", current_month_dir())], "no temp file left");
    assert_eq!(env.count("SELECT rows FROM landed_files"), 400_001);
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
fn bad_flags_are_usage_errors() {
    let env = Env::new();
    let run = env.run(&["--file", "../../etc/passwd", "--base-url", "http://127.0.0.1:9"]);
    assert_eq!(run.code, 2);
    assert!(run.error_line().contains("expected a PSD file name"), "{}", run.error_line());
    let run = env.run(&["--since", "2024-13"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("invalid month"), "{}", run.stderr);
    let run = env.run(&["--base-url", "ftp://x"]);
    assert_eq!(run.code, 2);
    let run = env.run(&["--since", "2024-05", "--until", "2024-04"]);
    assert_eq!(run.code, 2);
    assert!(run.error_line().contains("--since 2024-05 is after --until 2024-04"), "{}", run.error_line());
    assert!(!env.data.join("landing").exists(), "usage errors touch nothing");
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
