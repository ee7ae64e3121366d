//! The shell scripts: shellcheck clean, and the monitoring ping's own rules.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Every `*.sh` under the folders that hold scripts.
fn scripts() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in ["infra", "scripts", "scripts/bench", "tests/systemd", ".ci"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let p = e.unwrap().path();
            let shell = p.extension().is_some_and(|e| e == "sh")
                || std::fs::read_to_string(&p).is_ok_and(|t| t.starts_with("#!/usr/bin/env bash") || t.starts_with("#!/bin/sh"));
            if p.is_file() && shell {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_shell_script_is_shellcheck_clean() {
    if Command::new("shellcheck").arg("--version").output().is_err() {
        panic!("shellcheck is not installed: scripts/setup-dev.sh --tests installs it");
    }
    let scripts = scripts();
    assert!(scripts.iter().any(|p| p.ends_with("infra/setup_server.sh")) && scripts.iter().any(|p| p.ends_with(".ci/run")), "{scripts:?}");
    let o = Command::new("shellcheck").arg("--external-sources").args(&scripts).current_dir(repo()).output().unwrap();
    assert!(o.status.success(), "shellcheck:\n{}", String::from_utf8_lossy(&o.stdout));
    // And it would say so.
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.sh");
    std::fs::write(&bad, "#!/usr/bin/env bash\nrm -rf $1/*\n").unwrap();
    assert!(!Command::new("shellcheck").arg(&bad).output().unwrap().status.success());
}

fn ping(arg: &str, url: Option<&str>) -> (i32, String) {
    let mut cmd = Command::new(repo().join("scripts/ping.sh"));
    cmd.arg(arg).env_remove("MATERIA_PING_URL");
    if let Some(u) = url {
        cmd.env("MATERIA_PING_URL", u);
    }
    let o = cmd.output().unwrap();
    (o.status.code().unwrap(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn the_ping_does_nothing_unconfigured_and_never_fails_a_step() {
    assert_eq!(ping("psd-extract:start", None), (0, String::new()));
    let (code, out) = ping("psd-extract:restart", None);
    assert_eq!(code, 2);
    assert!(out.contains("unknown event 'restart'"), "{out}");
    assert_eq!(ping("../x:start", Some("http://127.0.0.1:9")).0, 2, "a step name never reaches the URL unchecked");
    // Nothing listens on port 9: the ping fails, is logged without its URL (it holds the
    // ping key), and exits 0.
    let (code, out) = ping("psd-extract:fail", Some("http://127.0.0.1:9/SECRETKEY"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the fail ping of psd-extract failed (ignored)") && !out.contains("SECRETKEY"), "{out}");
}

/// Every process's command line, as any local user can read it.
fn command_lines() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect()
}

#[test]
fn the_ping_and_notify_urls_never_reach_a_command_line() {
    // A monitoring server that answers slowly, so curl is caught mid-request.
    let server = r#"
import http.server, sys, time
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self): time.sleep(1.5); self.send_response(200); self.end_headers()
    def do_POST(self): self.rfile.read(int(self.headers.get("Content-Length", 0))); self.do_GET()
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
    let mut child = Command::new("python3").args(["-c", server]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut port = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut port).unwrap();
    let url = format!("http://127.0.0.1:{}/PINGSECRETKEY", port.trim());
    for (script, args, var) in [("scripts/ping.sh", vec!["psd-extract:start"], "MATERIA_PING_URL"), ("scripts/notify-failure.sh", vec!["x.service"], "MATERIA_NOTIFY_URL")] {
        let mut run = Command::new(repo().join(script))
            .args(&args)
            .env_remove("MATERIA_PING_URL")
            .env(var, &url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (mut saw_curl, mut leaked) = (false, Vec::new());
        while run.try_wait().unwrap().is_none() {
            for line in command_lines() {
                saw_curl |= line.starts_with("curl ");
                if line.contains("PINGSECRETKEY") {
                    leaked.push(line);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(saw_curl, "{script}: curl was seen running");
        assert!(leaked.is_empty(), "{script}: the URL is on a command line: {leaked:?}");
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("PINGSECRETKEY"), "{script}: not logged");
    }
    let _ = child.kill();
    let _ = child.wait();
}
