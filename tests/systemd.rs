//! The units as shipped, under a real systemd booted in namespaces (tests/systemd/
//! container.sh): the extract timer fires, the path units chain the transform and the
//! export, a failing unit calls the notifier, materia-status reports it all.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

#[path = "support/sshd.rs"]
mod sshd;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// A booted container; powered off and cleaned up on drop.
struct Container {
    pid: String,
    base: PathBuf,
    name: String,
}

impl Container {
    fn boot(base: &Path, name: &str, binds: &[&Path]) -> Option<Container> {
        let script = repo().join("tests/systemd/container.sh");
        let binds: Vec<String> = binds.iter().map(|p| p.display().to_string()).collect();
        let o = Command::new(&script)
            .arg("start")
            .arg(base)
            .arg(name)
            .env("MATERIA_CONTAINER_BINDS", binds.join(" "))
            .output()
            .unwrap();
        if !o.status.success() {
            eprintln!("SKIPPED: cannot boot systemd in namespaces here (needs root): {}", String::from_utf8_lossy(&o.stderr).trim());
            return None;
        }
        let pid = String::from_utf8(o.stdout).unwrap().trim().to_owned();
        Some(Container { pid, base: base.to_owned(), name: name.to_owned() })
    }

    /// Run a command inside; (exit code, stdout + stderr).
    fn exec(&self, args: &[&str]) -> (i32, String) {
        let o = Command::new(repo().join("tests/systemd/container.sh")).arg("exec").arg(&self.pid).args(args).output().unwrap();
        (o.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out) = self.exec(args);
        assert_eq!(code, 0, "{args:?}: {out}");
        out
    }

    /// A path inside the container, as the host sees it.
    fn path(&self, p: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{p}", self.pid))
    }

    fn write(&self, p: &str, text: &str) {
        let path = self.path(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn journal(&self, unit: &str) -> String {
        self.exec(&["journalctl", "--no-pager", "-o", "cat", "-u", unit]).1
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !ok() {
            if Instant::now() > deadline {
                let status = self.exec(&["systemctl", "--no-pager", "list-units", "--all", "materia*", "psd-*", "lake-*", "serve-*", "landing-*"]).1;
                let detail = self
                    .exec(&["systemctl", "status", "--no-pager", "-n", "15", "psd-extract.service", "lake-transform.service", "serve-export.service"])
                    .1;
                panic!("timed out waiting for {what}\n{status}\n{detail}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tests/systemd/container.sh")).arg("stop").arg(&self.pid).arg(&self.base).arg(&self.name).status();
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real PSD release served over HTTP on 127.0.0.1 (the container shares the host network).
fn psd_server(dir: &Path) -> Option<(Server, u16)> {
    let fixture = repo().join("../shared/fixtures/psd_coffee_csv.zip");
    if !fixture.exists() {
        eprintln!("SKIPPED: {} is absent; CI always has it", fixture.display());
        return None;
    }
    std::fs::create_dir_all(dir.join("downloads")).unwrap();
    std::fs::copy(&fixture, dir.join("downloads/psd_coffee_csv.zip")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(dir)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the test HTTP server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((Server(child), port))
}

/// A webhook on 127.0.0.1: prints its port, appends each POST body to argv[1], and
/// each GET (a monitoring ping) as a `GET /path` line.
const NOTIFY_RECEIVER: &str = r#"
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(sys.argv[1], "ab") as f:
            f.write(body)
        self.send_response(200); self.end_headers()
    def do_GET(self):
        with open(sys.argv[1], "a") as f:
            f.write("GET %s\n" % self.path)
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// The tools this test run built, beside the test binary.
fn bin_dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_owned()
}

#[test]
fn the_chain_runs_under_a_real_systemd() {
    if !Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n") {
        eprintln!("SKIPPED: booting systemd in namespaces needs root (CI has it)");
        return;
    }
    // Not under /tmp: the container gets its own /tmp.
    let scratch = bin_dir().join("systemd-test");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let Some((_server, port)) = psd_server(&scratch.join("www")) else { return };

    let Some(c) = Container::boot(&scratch.join("container"), &format!("chain{}", std::process::id()), &[]) else { return };

    // Install the units as shipped, with test drop-ins: the local PSD server, a timer
    // that fires now, the release path.
    for e in std::fs::read_dir(repo().join("units")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&p).unwrap();
        match name.as_str() {
            "materia.sysusers.conf" => c.write("/etc/sysusers.d/materia.conf", &text),
            "materia.tmpfiles.conf" => c.write("/etc/tmpfiles.d/materia.conf", &text),
            _ => c.write(&format!("/etc/systemd/system/{name}"), &text),
        }
    }
    c.ok(&["systemd-sysusers"]);
    c.ok(&["systemd-tmpfiles", "--create"]);
    // A release as tag-deploy lays it out, from the tools this test run built (under
    // /opt/materia: the units' ProtectHome= and PrivateTmp= hide anything else).
    let release = c.path("/opt/materia/releases/test");
    for dir in ["bin", "lib", "scripts"] {
        std::fs::create_dir_all(release.join(dir)).unwrap();
    }
    for t in ["psd-extract", "lake-transform", "serve-export", "landing-backup", "tag-deploy", "materia-status"] {
        std::fs::copy(bin_dir().join(t), release.join("bin").join(t)).unwrap();
    }
    std::fs::copy(repo().join(".duckdb/1.5.6/libduckdb.so"), release.join("lib/libduckdb.so")).unwrap();
    assert!(Command::new("cp").arg("-r").arg(repo().join("tools/lake-transform/models")).arg(&release).status().unwrap().success());
    for script in ["notify-failure.sh", "ping.sh"] {
        std::fs::copy(repo().join("scripts").join(script), release.join("scripts").join(script)).unwrap();
    }
    assert!(Command::new("chmod").args(["-R", "a+rX"]).arg(&release).status().unwrap().success());
    std::os::unix::fs::symlink("releases/test", c.path("/opt/materia/current")).unwrap();
    c.write("/etc/systemd/system/psd-extract.service.d/test.conf", &format!("[Service]\nEnvironment=PSD_BASE_URL=http://127.0.0.1:{port}\n"));
    c.write("/etc/systemd/system/psd-extract.timer.d/test.conf", "[Timer]\nOnActiveSec=1s\nRandomizedDelaySec=0\n");
    c.ok(&["systemctl", "daemon-reload"]);
    c.ok(&["systemctl", "enable", "--now", "lake-transform.path", "serve-export.path", "psd-extract.timer"]);

    // The timer fires the extract; the path units chain the transform and the export.
    c.wait_for("analytics.duckdb", Duration::from_secs(120), || c.path("/data/materia/analytics.duckdb").exists());
    c.wait_for("serve-export to finish", Duration::from_secs(60), || {
        c.exec(&["systemctl", "is-active", "serve-export.service"]).1.trim() == "inactive"
    });
    assert!(c.journal("psd-extract.service").contains("landed psd/"), "{}", c.journal("psd-extract.service"));
    assert!(c.journal("lake-transform.service").contains("serving.commodity_balance: build"), "{}", c.journal("lake-transform.service"));
    assert!(c.journal("serve-export.service").contains("published export"), "{}", c.journal("serve-export.service"));
    let owner = std::fs::metadata(c.path("/data/materia/analytics.duckdb")).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    assert_ne!(owner, 0, "written by beanflows_service, not root");
    assert!(!c.path("/data/materia/triggers/landing.updated").exists(), "taken by lake-transform");

    // materia-status reports it all.
    let status: serde_json::Value =
        serde_json::from_str(&c.ok(&["/opt/materia/current/bin/materia-status", "--data-dir", "/data/materia", "--json"])).unwrap();
    let result = |step: &str| {
        status["steps"].as_array().unwrap().iter().find(|s| s["step"] == step).unwrap()["last_run"]["status"].clone()
    };
    assert_eq!((result("psd-extract"), result("lake-transform"), result("serve-export")), ("success".into(), "success".into(), "success".into()));
    assert_eq!(status["backup_lag_files"], 1, "one landed file, no backup yet");
    let next = status["steps"].as_array().unwrap().iter().find(|s| s["step"] == "psd-extract").unwrap()["next_run"].clone();
    assert!(next.as_str().is_some_and(|n| n.contains("UTC")), "the timer's next firing, from systemd: {next}");

    // A trigger that arrives while a transform runs is not lost: one more run follows.
    // (The sqlite3 CLI waits for a writer's lock, as the tools do, instead of failing.)
    let runs = || -> i64 {
        c.ok(&["sqlite3", "-cmd", ".timeout 10000", "/data/materia/landing/.state.sqlite", "SELECT count(*) FROM runs WHERE tool = 'lake-transform'"]).trim().parse().unwrap()
    };
    let before = runs();
    c.write("/etc/systemd/system/lake-transform.service.d/slow.conf", "[Service]\nExecStartPost=/bin/sleep 3\n");
    c.ok(&["systemctl", "daemon-reload"]);
    let trigger = "echo x > /data/materia/triggers/landing.updated";
    c.ok(&["runuser", "-u", "beanflows_service", "--", "sh", "-c", trigger]);
    c.wait_for("the transform to start", Duration::from_secs(30), || {
        c.exec(&["systemctl", "is-active", "lake-transform.service"]).1.trim() == "activating" && runs() == before + 1
    });
    c.ok(&["runuser", "-u", "beanflows_service", "--", "sh", "-c", trigger]); // while it runs
    c.wait_for("one more transform", Duration::from_secs(60), || {
        runs() == before + 2 && c.exec(&["systemctl", "is-active", "lake-transform.service"]).1.trim() != "activating"
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(runs(), before + 2, "exactly one more run, no loop");
    assert!(!c.path("/data/materia/triggers/landing.updated").exists());

    // A failing unit calls the notifier, which POSTs to the configured webhook, and
    // pings the monitoring URL's start and fail: landing-backup has no target here.
    let received = scratch.join("notified.txt");
    let hook = Command::new("python3")
        .args(["-c", NOTIFY_RECEIVER])
        .arg(&received)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut hook = Server(hook);
    let mut port_line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(hook.0.stdout.as_mut().unwrap()), &mut port_line).unwrap();
    let hook_url = format!("http://127.0.0.1:{}", port_line.trim());
    c.write("/opt/materia/.env", &format!("MATERIA_NOTIFY_URL={hook_url}/fail\nMATERIA_PING_URL={hook_url}/ping/KEY\n"));
    let (code, _) = c.exec(&["systemctl", "start", "landing-backup.service"]);
    assert_ne!(code, 0);
    let notifier = "materia-notify@landing-backup.service.service";
    c.wait_for("the notifier", Duration::from_secs(30), || c.journal(notifier).contains("landing-backup.service failed"));
    assert!(c.journal(notifier).contains("status=2/INVALIDARGUMENT"), "the failed unit's journal lines: {}", c.journal(notifier));
    c.wait_for("the webhook POST", Duration::from_secs(30), || {
        std::fs::read_to_string(&received).is_ok_and(|t| t.contains("landing-backup.service failed on") && t.contains("INVALIDARGUMENT"))
    });
    let pings = || -> Vec<String> {
        std::fs::read_to_string(&received).unwrap_or_default().lines().filter_map(|l| l.strip_prefix("GET ")).map(str::to_owned).collect()
    };
    c.wait_for("the fail ping", Duration::from_secs(30), || pings().contains(&"/ping/KEY/landing-backup/fail".to_owned()));
    assert_eq!(pings(), ["/ping/KEY/landing-backup/start", "/ping/KEY/landing-backup/fail"]);
    // A step that succeeds (here with nothing to do, exit 3) pings its start, then success.
    c.ok(&["systemctl", "start", "psd-extract.service"]);
    c.wait_for("the success ping", Duration::from_secs(30), || pings().contains(&"/ping/KEY/psd-extract".to_owned()));
    assert_eq!(pings()[2..], ["/ping/KEY/psd-extract/start", "/ping/KEY/psd-extract"]);
    assert!(!c.journal("materia-ping@psd-extract:success.service").contains("KEY"), "the ping URL is not logged");
    drop(hook);
}

/// Every file under `dir` (inside the container) with its size and mode: what a rerun
/// must leave unchanged.
fn listing(c: &Container, dir: &str) -> String {
    c.ok(&["sh", "-c", &format!("find {dir} -path '*/target' -prune -o -printf '%p %s %m %u\\n' | sort")])
}

#[test]
fn setup_server_and_bootstrap_deploy_and_are_idempotent() {
    if !Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n") {
        eprintln!("SKIPPED: booting systemd in namespaces needs root (CI has it)");
        return;
    }
    let scratch = bin_dir().join("systemd-test-infra");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    // The scripts run from this checkout and build into this target dir: wherever they
    // are (a CI clone may be under /tmp, which the container gets fresh), bind them in.
    let target_dir = bin_dir().parent().unwrap().to_owned();
    let repo_dir = repo();
    let Some(c) = Container::boot(&scratch.join("container"), &format!("infra{}", std::process::id()), &[&repo_dir, &target_dir]) else {
        return;
    };

    // The release remote: any repo with a tag, served over SSH (a real sshd on
    // 127.0.0.1, outside the container) to the deploy key setup_server.sh makes; its
    // build installs the tools this test run built.
    let remote_dir = scratch.join("materia.git");
    assert!(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "set -e; git init -q -b main {d}; cd {d}; git -c user.name=t -c user.email=t@t commit -q --allow-empty -m one; git tag v1",
            d = remote_dir.display()
        ))
        .status()
        .unwrap()
        .success());
    let prebuilt = c.path("/opt/prebuilt");
    std::fs::create_dir_all(&prebuilt).unwrap();
    for t in ["psd-extract", "lake-transform", "serve-export", "landing-backup", "tag-deploy", "materia-status"] {
        std::fs::copy(bin_dir().join(t), prebuilt.join(t)).unwrap();
    }
    assert!(Command::new("chmod").args(["-R", "a+rX"]).arg(&prebuilt).status().unwrap().success());
    let build = "mkdir -p \"$CARGO_TARGET_DIR/release\" && cp /opt/prebuilt/* \"$CARGO_TARGET_DIR/release/\"";
    // The pinned DuckDB library where setup_server.sh puts it (its sha256 matches: no fetch).
    let lib = c.path("/opt/materia/duckdb/1.5.6");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::copy(repo().join(".duckdb/1.5.6/libduckdb.so"), lib.join("libduckdb.so")).unwrap();

    let repo_dir = repo_dir.display().to_string();
    let target = target_dir.display().to_string();
    // The package check runs for real (everything is installed: no apt); rustup would
    // download from the internet, which this machine cannot reach.
    let setup = || c.ok(&["env", "MATERIA_SKIP_RUST=1", &format!("{repo_dir}/infra/setup_server.sh")]);
    let bootstrap = |remote: &str| {
        c.ok(&[
            "env",
            &format!("PATH={}/.cargo/bin:/usr/local/bin:/usr/bin:/bin", std::env::var("HOME").unwrap()),
            &format!("CARGO_TARGET_DIR={target}"),
            &format!("DEPLOY_BUILD_CMD={build}"),
            &format!("{repo_dir}/infra/bootstrap.sh"),
            remote,
        ])
    };

    let out = setup();
    assert!(out.contains("deploy key (add to the git remote, read-only):\nssh-ed25519 "), "{out}");
    assert!(out.contains("age recipient (encrypt .env.prod.sops to it):\nage1"), "{out}");
    let deploy_key = std::fs::read_to_string(c.path("/opt/materia/.ssh/materia_deploy.pub")).unwrap();
    let Some(sshd) = sshd::Sshd::start(&scratch.join("sshd"), &deploy_key) else { return };
    let remote = format!("ssh://root@127.0.0.1:{}{}", sshd.port, remote_dir.display());
    let remote = remote.as_str();
    let out = bootstrap(remote);
    assert!(out.contains("bootstrap: adding the host key of 127.0.0.1"), "{out}");
    assert!(out.contains("bootstrap: deployed releases/v1"), "{out}");
    let known = std::fs::read_to_string(c.path("/opt/materia/.ssh/known_hosts")).unwrap();
    assert_eq!(known.trim(), sshd.known_hosts_line(), "the server's own host key");
    assert!(out.contains("landing-backup.timer stays disabled"), "no R2 variables: {out}");
    assert_eq!(c.ok(&["readlink", "/opt/materia/current"]).trim(), "releases/v1");
    // Recorded in the state DB (the timer, now enabled, may already be polling again).
    let deploys = c.ok(&["sqlite3", "-cmd", ".timeout 10000", "/data/materia/landing/.state.sqlite", "SELECT tag || ' ' || status FROM deploys"]);
    assert_eq!(deploys.trim(), "v1 deployed");
    for u in ["psd-extract.timer", "lake-transform.path", "serve-export.path", "tag-deploy.timer"] {
        assert_eq!(c.exec(&["systemctl", "is-enabled", u]).1.trim(), "enabled", "{u}");
    }
    assert_eq!(c.exec(&["systemctl", "is-enabled", "landing-backup.timer"]).1.trim(), "disabled");
    let owner = c.ok(&["stat", "-c", "%U", "/opt/materia/releases/v1/bin/psd-extract", "/opt/materia/.env", "/opt/materia/.ssh/materia_deploy"]);
    assert_eq!(owner.lines().collect::<Vec<_>>(), ["beanflows_service"; 3], "the app tree belongs to the service user");

    // A second run of both changes nothing.
    let before = (listing(&c, "/opt/materia"), listing(&c, "/etc/systemd/system"));
    setup();
    bootstrap(remote);
    assert_eq!((listing(&c, "/opt/materia"), listing(&c, "/etc/systemd/system")), before);
}
