//! A server that fails, cuts a response, loses one after storing the object, or dies
//! mid-multipart (through the fault proxy).

use super::*;

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
