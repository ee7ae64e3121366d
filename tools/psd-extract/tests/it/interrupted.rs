//! Interrupted runs: a second instance, `kill -9` mid-download and mid-landing, a full
//! disk.

use super::*;

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
fn a_full_disk_fails_the_run_with_nothing_landed_and_the_next_run_lands_it() {
    let s = Server::start();
    s.set(COFFEE, Route::new(psd_zip(40, "current"), "\"cur-1\""));
    let env = Env::new();
    let Some(disk) = materia_test_support::tmpfs::Tmpfs::mount(&env.data, "64m") else { return };
    assert_eq!(env.fetch(&s.url(), &[]).code, 0);
    let before = env.landed();

    // A new release larger than the room left: the download or the landing runs out of
    // disk; what it wrote is freed, so the failure is recorded.
    s.set(COFFEE, Route::new(psd_zip(200_000, "big"), "\"big\""));
    disk.leave_free(256);
    let run = env.fetch(&s.url(), &[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().contains("No space left on device"), "{}", run.error_line());
    assert_eq!(env.landed(), before, "nothing landed, no temp file left");
    let (status, error) = env.last_run();
    assert_eq!(status, "failed");
    assert!(error.as_deref().is_some_and(|e| e.contains("No space left on device")), "{error:?}");

    disk.resize("64m");
    let run = env.fetch(&s.url(), &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.landed().len(), 2, "{:?}", env.landed());
    assert_eq!(env.count("SELECT rows FROM landed_files WHERE path LIKE '%/big.csv.gzip'"), 200_001);
}
