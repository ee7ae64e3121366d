//! The scripts as they run: the monitoring ping's and the notifier's own rules, the secrets workflow with
//! the real sops and age, the CI tag job under gitlab-ci-local, the Pulumi program.
//! The rules every file follows (shellcheck, rustfmt, docs) are in house.rs.
//!
//! Why this long: each script needs its own real tools (sops, age, gitlab-ci-local, Pulumi) set up; the tests share the venv that holds them.

use std::path::{Path, PathBuf};
use std::process::Command;

use materia_test_support::test_venv;

use crate::repo;

fn ping(arg: &str, url: Option<&str>) -> (i32, String) {
    let mut cmd = materia_test_support::tool(repo().join("scripts/ping.sh"));
    cmd.arg(arg);
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

#[test]
fn the_notifier_keeps_only_what_it_reported() {
    // What notify-failure.sh keeps holds back the next report of the same failure, so it
    // keeps nothing it did not report: with no URL, or when the POST failed. (What it
    // keeps, and a success clearing it, is tested under systemd.)
    let state = materia_test_support::temp_dir();
    let notify = |url: Option<&str>| {
        let mut cmd = materia_test_support::tool(repo().join("scripts/notify-failure.sh"));
        cmd.arg("x.service").env("STATE_DIRECTORY", state.path());
        if let Some(u) = url {
            cmd.env("MATERIA_NOTIFY_URL", u);
        }
        cmd.output().unwrap()
    };
    let kept = || std::fs::read_dir(state.path()).unwrap().count();
    assert!(notify(None).status.success());
    assert_eq!(kept(), 0, "nothing reported without a URL");
    // Nothing listens on port 9: the report fails, the unit fails, and is tried again next time.
    assert!(!notify(Some("http://127.0.0.1:9/fail")).status.success());
    assert_eq!(kept(), 0, "a report that failed is not kept");
    let o = materia_test_support::tool(repo().join("scripts/notify-failure.sh")).arg("../x").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "a unit name never reaches a path unchecked");
}

#[test]
fn the_notifier_reports_a_service_failing_again_once_and_every_failure_of_a_path_unit() {
    // A service fails again by itself (its timer starts it again): the same failure is
    // reported once. A path unit that failed stays stopped until someone starts it again,
    // and it has no success ping to clear a record: each of its failures is reported.
    let tmp = materia_test_support::temp_dir();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let received = tmp.path().join("received.txt");
    let (_hook, url) = crate::systemd::webhook(&received);
    let notify = |unit: &str| {
        let o = materia_test_support::tool(repo().join("scripts/notify-failure.sh"))
            .arg(unit)
            .env("STATE_DIRECTORY", &state)
            .env("MATERIA_NOTIFY_URL", format!("{url}/fail"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let reports = |unit: &str| std::fs::read_to_string(&received).unwrap_or_default().matches(&format!("{unit} failed on")).count();
    notify("x.service");
    assert!(notify("x.service").contains("x.service failed again as reported at"));
    assert_eq!(reports("x.service"), 1);
    notify("x.path");
    assert!(notify("x.path").contains("reported to the notify URL"));
    assert_eq!(reports("x.path"), 2);
    let kept: Vec<_> = std::fs::read_dir(&state).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(kept, ["x.service"], "nothing kept of a path unit");
}

#[test]
fn a_failure_is_the_same_again_whatever_temp_file_its_run_named() {
    // lake-transform's first build on a full disk, twice: each run's error line names
    // its own temp file, with its pid. For the notifier both are one failure (else the
    // catch-up timer's every run would be reported), and another error is another.
    let Some(zip) = crate::pipeline::fixture() else { return };
    let tmp = materia_test_support::temp_dir();
    let data = tmp.path().join("data");
    let Some(_disk) = materia_test_support::tmpfs::Tmpfs::mount(&data, "2500k") else { return };
    let (code, out) = crate::pipeline::tool(&data, "psd-extract", &["import", zip.to_str().unwrap(), "--release", "2022-12"], &[]);
    assert_eq!(code, 0, "the release lands in the room there is: {out}");
    let failures = failing_transforms(&data, &[&[], &[]], "No space left on device");
    assert_ne!(failures[0], failures[1], "each run names its own temp file");
    assert_eq!(digest(&failures[0]), digest(&failures[1]), "{failures:?}");
    assert_ne!(digest(&failures[0]), digest("lake-transform: error: no models folder\n"));
    assert_eq!(digest(&failures[0]).trim().len(), 64);
}

#[test]
fn an_out_of_memory_failure_is_the_same_whatever_sizes_it_names() {
    // DuckDB's out-of-memory error says how much memory was in use and allowed, which
    // moves between runs of a large build (and with the limit): lake-transform under two
    // limits too small for one release, the same failure for the notifier.
    let Some(zip) = crate::pipeline::fixture() else { return };
    let tmp = materia_test_support::temp_dir();
    let data = tmp.path().join("data");
    assert_eq!(crate::pipeline::tool(&data, "psd-extract", &["import", zip.to_str().unwrap(), "--release", "2022-12"], &[]).0, 0);
    let limits: [&[&str]; 2] = [&["--memory-limit", "8MB"], &["--memory-limit", "16MB"]];
    let failures = failing_transforms(&data, &limits, "Out of Memory Error: could not allocate block of size");
    assert_ne!(failures[0], failures[1], "each names its own sizes");
    assert_eq!(digest(&failures[0]), digest(&failures[1]), "{failures:?}");
    assert_ne!(digest(&failures[0]), digest(&failures[0].replace("Out of Memory", "IO")), "another error is another failure");
}

/// What lake-transform says running this repository's models on `data` once for each
/// of `runs` (more flags of `run`), each failing with an error that says `says`.
fn failing_transforms(data: &Path, runs: &[&[&str]], says: &str) -> Vec<String> {
    let models = repo().join("models");
    runs.iter()
        .map(|flags| {
            let args = [&["--models", models.to_str().unwrap(), "run"], *flags].concat();
            let (code, out) = crate::pipeline::tool(data, "lake-transform", &args, &[]);
            assert_eq!(code, 1, "{out}");
            assert!(out.contains(says), "{out}");
            out
        })
        .collect()
}

/// failure-digest.sh's digest of the unit journal `journal`.
fn digest(journal: &str) -> String {
    let mut child = materia_test_support::tool(repo().join("scripts/failure-digest.sh"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), journal.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn a_failure_with_no_error_line_is_the_same_whatever_cpu_time_it_took() {
    // A failure with no error line (a timeout), on a server with CPU accounting, where
    // systemd ends each run's messages with the CPU time it took: new every run. The test
    // systemd logs no such line (no cgroup controllers in its namespace), so these
    // journals are written here, in the words systemd 252 uses.
    let timed_out = |cpu: &str, ended: &[&str]| {
        let mut journal = String::from("Starting materia-landing-backup.service - Back the landing zone up...\n");
        for line in ended {
            journal += &format!("materia-landing-backup.service: {line}\n");
        }
        journal += &format!("materia-landing-backup.service: Consumed {cpu} CPU time.\n");
        journal
    };
    let killed = ["start operation timed out. Terminating.", "Main process exited, code=killed, status=15/TERM", "Failed with result 'timeout'."];
    assert_eq!(digest(&timed_out("1.234s", &killed)), digest(&timed_out("2min 3.456s", &killed)), "the CPU time is not the failure");
    let exited = ["Main process exited, code=exited, status=1/FAILURE", "Failed with result 'exit-code'."];
    assert_ne!(digest(&timed_out("1.234s", &killed)), digest(&timed_out("1.234s", &exited)), "how it ended is");
    // Without systemd's lines on how it ended, the last line but the accounting.
    assert_eq!(digest(&timed_out("1.234s", &["Stopping."])), digest(&timed_out("9.9s", &["Stopping."])));
    assert_ne!(digest(&timed_out("1.234s", &["Stopping."])), digest(&timed_out("1.234s", &["Stopped."])));
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
    for (script, args, var) in
        [("scripts/ping.sh", vec!["psd-extract:start"], "MATERIA_PING_URL"), ("scripts/notify-failure.sh", vec!["x.service"], "MATERIA_NOTIFY_URL")]
    {
        let mut run = materia_test_support::tool(repo().join(script))
            .args(&args)
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

/// scripts/secrets.sh in a scratch git repository: this repository's `.sops.yaml`,
/// `.env.dev.sops` and `scripts/env.dev.defaults`, a HOME of its own (no age key yet).
struct SecretsRepo {
    _tmp: materia_test_support::TestDir,
    dir: PathBuf,
    home: PathBuf,
}

impl SecretsRepo {
    fn new() -> SecretsRepo {
        let tmp = materia_test_support::temp_dir();
        let dir = tmp.path().join("repo");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(dir.join("scripts")).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        for f in ["scripts/secrets.sh", "scripts/env.dev.defaults", ".sops.yaml", ".env.dev.sops", ".gitignore"] {
            std::fs::copy(repo().join(f), dir.join(f)).unwrap();
        }
        let r = SecretsRepo { _tmp: tmp, dir, home };
        r.git(&["init", "-q", "-b", "main"]);
        r.git(&["add", "-A"]);
        r.git(&["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one"]);
        r
    }

    fn git(&self, args: &[&str]) {
        assert!(Command::new("git").args(args).current_dir(&self.dir).status().unwrap().success(), "git {args:?}");
    }

    /// Run the script as the maintainer, or as someone whose only age key is `key_file`
    /// (a HOME of their own: sops also reads the default key file).
    fn run(&self, args: &[&str], key_file: Option<&Path>) -> (i32, String) {
        let mut c = materia_test_support::tool(self.dir.join("scripts/secrets.sh"));
        c.args(args)
            .current_dir(&self.dir)
            .env("HOME", &self.home)
            .env("MATERIA_TEST_VENV", test_venv())
            .env_remove("SOPS_AGE_KEY_FILE")
            .env_remove("XDG_CONFIG_HOME");
        if let Some(k) = key_file {
            let home = self.home.join(format!("home-of-{}", k.file_name().unwrap().to_string_lossy()));
            std::fs::create_dir_all(home.join(".config/sops/age")).unwrap();
            std::fs::copy(k, home.join(".config/sops/age/keys.txt")).unwrap();
            c.env("HOME", home);
        }
        let o = c.output().unwrap();
        (o.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    }

    /// A new age key pair: (its file, its public key).
    fn keygen(&self, name: &str) -> (PathBuf, String) {
        let file = self.home.join(name);
        assert!(Command::new("age-keygen").arg("-o").arg(&file).output().unwrap().status.success());
        let public = std::fs::read_to_string(&file).unwrap().lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_owned();
        (file, public)
    }

    fn sops_decrypt(&self, file: &str, key_file: &Path) -> Option<String> {
        let home = self.home.join("decrypt-home");
        std::fs::create_dir_all(&home).unwrap();
        let o = Command::new(test_venv().join("bin/sops"))
            .args(["--disable-version-check", "decrypt", "--input-type", "dotenv", "--output-type", "dotenv", file])
            .current_dir(&self.dir)
            .env("HOME", &home) // no default key file: only `key_file`
            .env("SOPS_AGE_KEY_FILE", key_file)
            .output()
            .unwrap();
        o.status.success().then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

#[test]
fn the_secrets_workflow_with_the_real_sops_and_age() {
    let r = SecretsRepo::new();
    // The committed .env.dev.sops is for the team's development key, which is not here.
    let (code, out) = r.run(&["decrypt", "dev"], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot decrypt .env.dev.sops: your age key is not one of its recipients"), "{out}");

    // A development key of one's own: .env.dev.sops made anew, decrypted into .env (0600).
    let (code, out) = r.run(&["new-dev"], None);
    assert_eq!(code, 0, "{out}");
    let my_keys = r.home.join(".config/sops/age/keys.txt");
    assert!(my_keys.exists() && !std::fs::read_to_string(r.dir.join(".sops.yaml")).unwrap().contains("AGE-SECRET-KEY"));
    assert_eq!(r.run(&["decrypt", "dev"], None).0, 0);
    let env = std::fs::read_to_string(r.dir.join(".env")).unwrap();
    assert!(env.contains("PSD_FILES=psd_coffee_csv.zip\n") && env.contains("R2_SECRET_ACCESS_KEY=dev-secret-not-a-real-one"), "{env}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(r.dir.join(".env")).unwrap().permissions().mode() & 0o777, 0o600);

    // The maintainer also keeps the prod secrets: their key goes to prod too.
    let mine = std::fs::read_to_string(&my_keys).unwrap().lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_owned();
    assert_eq!(r.run(&["add-key", &mine, "prod"], None).0, 0);
    // The server's key (setup_server.sh prints it) is added for prod; the prod secrets are
    // written with `edit prod` ($EDITOR), and the server's key alone decrypts them.
    let (server_keys, server) = r.keygen("server.txt");
    let (code, out) = r.run(&["add-key", &server, "prod"], None);
    assert_eq!(code, 0, "{out}");
    let editor = r.home.join("editor.sh");
    std::fs::write(&editor, "#!/bin/sh\nprintf 'R2_SECRET_ACCESS_KEY=prod-s3cret-value-1\\n' > \"$1\"\n").unwrap();
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = Command::new(r.dir.join("scripts/secrets.sh"))
        .args(["edit", "prod"])
        .current_dir(&r.dir)
        .env("HOME", &r.home)
        .env("MATERIA_TEST_VENV", test_venv())
        .env("EDITOR", &editor)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(r.sops_decrypt(".env.prod.sops", &server_keys).as_deref(), Some("R2_SECRET_ACCESS_KEY=prod-s3cret-value-1\n"));
    assert_eq!(r.sops_decrypt(".env.dev.sops", &server_keys), None, "the server's key opens prod only");

    // A second developer: add-key re-encrypts both files for them.
    let (other_keys, other) = r.keygen("other.txt");
    assert_eq!(r.sops_decrypt(".env.dev.sops", &other_keys), None);
    let (code, out) = r.run(&["add-key", &other], None);
    assert_eq!(code, 0, "{out}");
    assert!(r.sops_decrypt(".env.dev.sops", &other_keys).is_some() && r.sops_decrypt(".env.prod.sops", &other_keys).is_some());
    assert_eq!(std::fs::read_to_string(r.dir.join(".sops.yaml")).unwrap().matches(&other).count(), 2);
    assert_eq!(r.run(&["add-key", &other], None).0, 0, "again: nothing changes");
    assert_eq!(std::fs::read_to_string(r.dir.join(".sops.yaml")).unwrap().matches(&other).count(), 2);
    assert_eq!(r.run(&["add-key", "age1notakey"], None).0, 2);

    // check: every file decrypts here, nothing in plaintext is staged.
    r.git(&["add", ".sops.yaml", ".env.dev.sops", ".env.prod.sops"]);
    let (code, out) = r.run(&["check"], None);
    assert_eq!(code, 0, "{out}");
    r.git(&["add", "-f", ".env"]);
    let (code, out) = r.run(&["check"], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(".env is staged: a plaintext secrets file must never be committed"), "{out}");
    r.git(&["rm", "-q", "--cached", ".env"]);
    std::fs::write(r.dir.join("notes.md"), "the prod key is prod-s3cret-value-1\n").unwrap();
    r.git(&["add", "notes.md"]);
    let (code, out) = r.run(&["check"], None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("the value of R2_SECRET_ACCESS_KEY (from .env.prod.sops) is staged in plaintext"), "{out}");
    // A key that opens none of the files: check says which.
    let (code, out) = r.run(&["check"], Some(&r.keygen("stranger.txt").0));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(".env.dev.sops: does not decrypt with the age keys here"), "{out}");
}

/// The tools `cargo test --workspace` built beside this test binary (target/debug).
fn bin_dir() -> PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_owned()
}

/// A project as GitLab CI sees it: a checkout of this repository's .gitlab-ci.yml and
/// scripts/ci-tag.sh (plus a quick build for tag-deploy), its origin named like a
/// GitLab project, and a bare repository standing in for it, where tags are pushed.
struct CiProject {
    _tmp: materia_test_support::TestDir,
    work: PathBuf,
    remote: PathBuf,
    app: PathBuf,
    data: PathBuf,
}

impl CiProject {
    fn new() -> CiProject {
        let tmp = materia_test_support::temp_dir();
        let (work, remote) = (tmp.path().join("work"), tmp.path().join("remote.git"));
        std::fs::create_dir_all(work.join("scripts")).unwrap();
        for f in [".gitlab-ci.yml", "scripts/ci-tag.sh"] {
            std::fs::copy(repo().join(f), work.join(f)).unwrap();
        }
        // What tag-deploy builds here: every tool as a script printing its tag.
        std::fs::write(
            work.join("build.sh"),
            "mkdir -p \"$CARGO_TARGET_DIR/release\"\nfor t in psd-extract lake-transform serve-export landing-backup tag-deploy materia-status; do\n  printf '#!/bin/sh\\necho %s\\n' \"$MATERIA_TAG\" > \"$CARGO_TARGET_DIR/release/$t\"; chmod +x \"$CARGO_TARGET_DIR/release/$t\"\ndone\n",
        )
        .unwrap();
        let p = CiProject { app: tmp.path().join("app"), data: tmp.path().join("data"), _tmp: tmp, work, remote };
        assert!(Command::new("git").args(["init", "-q", "--bare"]).arg(&p.remote).status().unwrap().success());
        p.git(&["init", "-q", "-b", "main"]);
        p.commit("first");
        p.git(&["remote", "add", "origin", "git@gitlab.example.com:beanflows/materia.git"]);
        // As a clone would have them: origin's default branch is main.
        p.git(&["update-ref", "refs/remotes/origin/main", "HEAD"]);
        p.git(&["symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/main"]);
        p
    }

    fn git(&self, args: &[&str]) -> String {
        let o = Command::new("git").args(["-c", "user.name=t", "-c", "user.email=t@t"]).args(args).current_dir(&self.work).output().unwrap();
        assert!(o.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    fn commit(&self, msg: &str) {
        std::fs::write(self.work.join("CHANGES"), msg).unwrap();
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", msg]);
    }

    /// One pipeline with gitlab-ci-local (shell executor), the test jobs running
    /// `test_cmd` instead of the whole test suite; (passed, output).
    fn pipeline(&self, test_cmd: &str) -> (bool, String) {
        let gcl = test_venv().join("node/node_modules/.bin/gitlab-ci-local");
        assert!(gcl.exists(), "gitlab-ci-local is not installed: run scripts/setup-dev.sh --tests");
        let o = Command::new(gcl)
            .args(["--force-shell-executor", "--no-color", "--variable"])
            .arg(format!("MATERIA_TEST_CMD={test_cmd}"))
            .arg("--variable")
            .arg(format!("MATERIA_TAG_PUSH_URL={}", self.remote.display()))
            .args(["--variable", "CI_JOB_TOKEN=job-token-of-the-test"])
            .current_dir(&self.work)
            .output()
            .unwrap();
        (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
    }

    /// Tags on the remote, with the commit each names.
    fn tags(&self) -> Vec<String> {
        let o = Command::new("git")
            .args(["for-each-ref", "--format=%(refname:short) %(objectname)", "refs/tags"])
            .current_dir(&self.remote)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect()
    }

    /// tag-deploy polling the remote; (exit code, the deployed release's tag).
    fn deploy(&self) -> (i32, String) {
        let o = materia_test_support::tool(bin_dir().join("tag-deploy"))
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--app-dir")
            .arg(&self.app)
            .arg("--remote")
            .arg(&self.remote)
            .args(["--build-cmd", "sh build.sh"])
            .output()
            .unwrap();
        let deployed = Command::new(self.app.join("current/bin/psd-extract")).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        (o.status.code().unwrap_or(-1), deployed.unwrap_or_default())
    }
}

#[test]
fn the_ci_pipeline_tags_the_default_branch_and_tag_deploy_deploys_it() {
    let p = CiProject::new();
    // Green on main: every test job passes, then the release job tags v<pipeline IID>.
    let (ok, out) = p.pipeline("true");
    assert!(ok, "{out}");
    assert!(out.contains("PASS  tools") && out.contains("PASS  systemd") && out.contains("PASS  release-tag"), "{out}");
    let head = p.git(&["rev-parse", "HEAD"]);
    let first: u64 =
        out.split(&format!("tagged {head} as v")).nth(1).and_then(|r| r.split_whitespace().next()).and_then(|n| n.parse().ok()).expect(&out);
    assert_eq!(p.tags(), [format!("v{first} {head}")], "{out}");
    assert!(!out.contains("job-token-of-the-test"), "the token is never printed");
    // tag-deploy, polling that remote, deploys it.
    assert_eq!(p.deploy(), (0, format!("v{first}")));

    // Red: a failing test job; no release job runs, no tag.
    p.commit("second");
    let (ok, out) = p.pipeline("false");
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  tools") && !out.contains("release-tag"), "{out}");
    assert_eq!(p.tags().len(), 1);
    assert_eq!(p.deploy(), (3, format!("v{first}")), "nothing new to deploy");

    // Another branch: tested, never tagged.
    p.git(&["checkout", "-q", "-b", "feature"]);
    p.commit("on a branch");
    let (ok, out) = p.pipeline("true");
    assert!(ok && !out.contains("release-tag"), "{out}");
    assert_eq!(p.tags().len(), 1);

    // Green on main again: the next IID is the next tag, and it deploys.
    p.git(&["checkout", "-q", "main"]);
    p.commit("third");
    let (ok, out) = p.pipeline("true");
    assert!(ok, "{out}");
    let head = p.git(&["rev-parse", "HEAD"]);
    let next = first + 3; // the pipeline IID: every pipeline counts, red and branch ones too
    assert!(p.tags().contains(&format!("v{next} {head}")), "{:?}", p.tags());
    assert_eq!(p.deploy(), (0, format!("v{next}")));
    // A rerun of the release job finds its tag there already: success, nothing pushed.
    let o = Command::new(p.work.join("scripts/ci-tag.sh"))
        .current_dir(&p.work)
        .env("CI_PIPELINE_IID", next.to_string())
        .env("CI_COMMIT_SHA", &head)
        .env("MATERIA_TAG_PUSH_URL", &p.remote)
        .output()
        .unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("is already"), "{o:?}");
    let o = Command::new(p.work.join("scripts/ci-tag.sh"))
        .current_dir(&p.work)
        .env("CI_PIPELINE_IID", first.to_string())
        .env("CI_COMMIT_SHA", &head)
        .env("MATERIA_TAG_PUSH_URL", &p.remote)
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("already exists on another commit"), "{o:?}");
}

#[test]
fn the_r2_program_declares_what_landing_backup_relies_on() {
    // infra/pulumi under Pulumi's own mocks: offline, no account, no provider plugin.
    let python = test_venv().join("bin/python");
    let o = Command::new(&python)
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(repo().join("infra/pulumi"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}");
    assert!(out.contains("Ran 3 tests") && out.contains("\nOK"), "{out}");
}
