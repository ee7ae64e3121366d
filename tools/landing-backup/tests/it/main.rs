//! landing-backup against a real S3 server (moto on 127.0.0.1) and the fs backend.
//!
//! The shared test env and helpers are here (the fault proxy in proxy.rs); the tests are in the modules, by topic.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod backup;
mod faults;
mod proxy;
mod restore;

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
