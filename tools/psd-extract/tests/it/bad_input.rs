//! Bad input contained: releases the models cannot load, size limits and zip bombs,
//! hostile ETags and redirects, a wrong clock, cut bodies, bad flags.

use super::*;

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
