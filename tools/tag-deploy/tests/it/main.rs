//! tag-deploy against real git repositories made by the tests.
//!
//! Why this long: one integration binary per tool (fast to link); its tests share the git remote and release helpers at the top.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use materia_test_support::Run;
use materia_test_support::sshd::{Sshd, keygen};

/// The release's build: fails when FAIL exists, sleeps when SLOW exists, and makes
/// every tool (`TOOLS` in its `for`) as a script that prints its tag.
fn build_script() -> String {
    BUILD.replace("TOOLS", &materia_common::layout::TOOLS.join(" "))
}

const BUILD: &str = r#"#!/bin/sh
set -e
if [ -e FAIL ]; then echo "build broken" >&2; exit 1; fi
if [ -e "$MATERIA_RELEASE_DIR/../../BREAK" ]; then echo "build machine broken" >&2; exit 1; fi
if [ -e SLOW ]; then sleep 3; fi
mkdir -p "$CARGO_TARGET_DIR/release"
for t in TOOLS; do
    printf '#!/bin/sh\necho %s\n' "$MATERIA_TAG" > "$CARGO_TARGET_DIR/release/$t"
    chmod +x "$CARGO_TARGET_DIR/release/$t"
done
echo "$MATERIA_TAG" >> "$MATERIA_RELEASE_DIR/../../builds.log"
"#;

const HOOK: &str = "#!/bin/sh\necho \"$MATERIA_TAG\" >> \"$MATERIA_RELEASE_DIR/../../web-hooks.log\"\n";

struct Env {
    _tmp: materia_test_support::TestDir,
    src: PathBuf,
    app: PathBuf,
    data: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = materia_test_support::temp_dir();
        let src = tmp.path().join("src");
        let env = Env { app: tmp.path().join("app"), data: tmp.path().join("data"), src, _tmp: tmp };
        std::fs::create_dir_all(&env.src).unwrap();
        env.git(&["init", "-q", "-b", "main"]);
        env.write("build.sh", &build_script(), true);
        env.write("web/deploy.sh", HOOK, true);
        env.write("web/index.html", "<h1>1</h1>", false);
        env.write("src/lib.rs", "// 1", false);
        env.commit("first");
        env
    }

    fn git(&self, args: &[&str]) {
        let o = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "tag.gpgSign=false", "-c", "commit.gpgSign=false"])
            .args(args)
            .current_dir(&self.src)
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }

    fn write(&self, rel: &str, text: &str, exec: bool) {
        let p = self.src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        if exec {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    fn remove(&self, rel: &str) {
        std::fs::remove_file(self.src.join(rel)).unwrap();
    }

    fn commit(&self, msg: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", msg]);
    }

    fn tag(&self, name: &str) {
        self.git(&["tag", name]);
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = materia_test_support::tool(env!("CARGO_BIN_EXE_tag-deploy"));
        c.arg("--data-dir").arg(&self.data).arg("--app-dir").arg(&self.app);
        c.args(args);
        c
    }

    fn poll(&self, extra: &[&str]) -> Run {
        let src = self.src.display().to_string();
        let mut args = vec!["--remote", &src, "--build-cmd", "sh build.sh"];
        args.extend(extra);
        let o = self.cmd(&args).output().unwrap();
        Run::from(o)
    }

    fn current(&self) -> Option<String> {
        std::fs::read_link(self.app.join("current")).ok().map(|p| p.display().to_string())
    }

    /// What the deployed psd-extract prints.
    fn deployed_binary(&self) -> String {
        let o = Command::new(self.app.join("current/bin/psd-extract")).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    fn lines(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.app.join(file)).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    fn releases(&self) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(self.app.join("releases")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    fn deploys(&self) -> Vec<String> {
        let c = rusqlite::Connection::open(self.data.join("landing/.state.sqlite")).unwrap();
        let mut st = c.prepare("SELECT tag || ' ' || status FROM deploys ORDER BY rowid").unwrap();
        st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }
}

#[test]
fn first_deploy_then_a_poll_with_no_new_tag_builds_nothing() {
    let env = Env::new();
    env.tag("v1");
    let run = env.poll(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.trim(), "v1");
    assert_eq!(env.current().as_deref(), Some("releases/v1"));
    assert_eq!(env.deployed_binary(), "v1");
    assert_eq!(env.lines("builds.log"), ["v1"]);
    assert_eq!(env.lines("web-hooks.log"), ["v1"], "the first deploy publishes web/");

    let again = env.poll(&[]);
    assert_eq!(again.code, 3, "{again:?}");
    assert!(again.stderr.contains("no new release tag; v1 is deployed"), "{}", again.stderr);
    assert_eq!(env.lines("builds.log"), ["v1"], "no build");

    let o = env.cmd(&["status"]).output().unwrap();
    let status = String::from_utf8_lossy(&o.stdout);
    assert!(status.contains("deployed: v1") && status.contains("previous: -") && status.contains("failed:   -"), "{status}");
}

#[test]
fn versions_order_tags_and_older_ones_are_refused() {
    let env = Env::new();
    env.tag("v9");
    env.write("src/lib.rs", "// 10", false);
    env.commit("ten");
    env.tag("v10");
    let run = env.poll(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.deployed_binary(), "v10", "by version, not by name (v9 > v10 as text)");

    env.write("src/lib.rs", "// old", false);
    env.commit("old");
    env.tag("v1.2.3"); // created later, but an older version than v10
    let run = env.poll(&[]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("tag v1.2.3 is older than the deployed v10: refused"), "{}", run.stderr);
    assert_eq!(env.deployed_binary(), "v10");
    let again = env.poll(&[]);
    assert!(!again.stderr.contains("refused"), "judged once: {}", again.stderr);
    assert_eq!(env.deploys(), ["v10 deployed", "v1.2.3 refused"], "v9 was history when v10 was deployed");
}

#[test]
fn a_failed_build_keeps_the_old_release_and_is_not_retried_until_cleared() {
    let env = Env::new();
    env.tag("v1");
    assert_eq!(env.poll(&[]).code, 0);
    env.write("FAIL", "", false);
    env.commit("broken");
    env.tag("v2");
    let run = env.poll(&[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("tag-deploy: error: build failed: `sh build.sh` exited with exit status: 1"), "{}", run.stderr);
    assert_eq!(env.deployed_binary(), "v1");
    assert_eq!(env.releases(), ["v1"], "nothing half-built left");
    let again = env.poll(&[]);
    assert_eq!(again.code, 3, "a failed tag is not retried every poll: {again:?}");
    assert_eq!(env.lines("builds.log"), ["v1"]);
    let o = env.cmd(&["status"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("failed:   v2"));

    // Fixed in a newer tag: that one deploys.
    env.remove("FAIL");
    env.commit("fixed");
    env.tag("v3");
    assert_eq!(env.poll(&[]).code, 0);
    assert_eq!(env.deployed_binary(), "v3");
    // --clear-failed makes v2 eligible again, but it is older than v3 now.
    assert_eq!(env.poll(&["--clear-failed"]).code, 3);
}

#[test]
fn the_web_hook_runs_only_when_web_changed() {
    let env = Env::new();
    env.tag("v1");
    assert_eq!(env.poll(&[]).code, 0);
    env.write("src/lib.rs", "// 2", false);
    env.commit("code only");
    env.tag("v2");
    assert_eq!(env.poll(&[]).code, 0);
    env.write("web/index.html", "<h1>3</h1>", false);
    env.commit("web");
    env.tag("v3");
    let run = env.poll(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("web hook ran"), "{}", run.stderr);
    assert_eq!(env.lines("web-hooks.log"), ["v1", "v3"]);
    assert_eq!(env.lines("builds.log"), ["v1", "v2", "v3"]);
}

#[test]
fn a_failing_health_check_switches_back() {
    let env = Env::new();
    env.tag("v1");
    let health = ["--health-cmd", "test \"$MATERIA_TAG\" != v2"];
    assert_eq!(env.poll(&health).code, 0);
    env.write("src/lib.rs", "// 2", false);
    env.commit("two");
    env.tag("v2");
    let run = env.poll(&health);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("health check failed") && run.stderr.contains("switched back"), "{}", run.stderr);
    assert_eq!(env.current().as_deref(), Some("releases/v1"));
    assert_eq!(env.deployed_binary(), "v1");
    assert_eq!(env.deploys(), ["v1 deployed", "v2 failed"]);
}

#[test]
fn hostile_tag_names_never_reach_a_shell_or_a_path() {
    let env = Env::new();
    // Git refuses spaces and control characters in tag names; ${IFS} stands in for them.
    for t in ["v1;touch${IFS}PWNED", "v2$(touch${IFS}PWNED)", "v3`touch${IFS}PWNED`", "v4.0.0-rc1", "v5|x", "v7&&touch${IFS}PWNED"] {
        env.git(&["tag", "--", t]);
    }
    env.tag("v1");
    let run = env.poll(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.deployed_binary(), "v1");
    assert_eq!(env.releases(), ["v1"]);
    let found = Command::new("find").arg(env._tmp.path()).args(["-name", "PWNED"]).output().unwrap();
    assert!(found.stdout.is_empty(), "{}", String::from_utf8_lossy(&found.stdout));
}

#[test]
fn kill_9_mid_deploy_leaves_current_on_a_complete_release() {
    let env = Env::new();
    env.tag("v1");
    assert_eq!(env.poll(&[]).code, 0);
    env.write("SLOW", "", false);
    env.commit("slow");
    env.tag("v2");
    let src = env.src.display().to_string();
    let mut child = env.cmd(&["--remote", &src, "--build-cmd", "sh build.sh"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    materia_test_support::wait_until("the deploy to start", Duration::from_secs(30), || env.releases().iter().any(|r| r.starts_with(".tmp-v2")));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(env.current().as_deref(), Some("releases/v1"));
    assert_eq!(env.deployed_binary(), "v1");
    assert!(!env.releases().contains(&"v2".to_owned()), "{:?}", env.releases());
    // Whatever moment it died at, git may have left locks behind in the mirror.
    for lock in ["index.lock", "refs/tags/v2.lock", "packed-refs.lock"] {
        std::fs::write(env.app.join("repo.git").join(lock), "").unwrap();
    }

    let run = env.poll(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.deployed_binary(), "v2");
    assert!(env.releases().iter().all(|r| !r.starts_with('.')), "{:?}", env.releases());
    let _ = Path::new("");
}

/// sops and age as setup-dev.sh installs them, and a home with an age key where sops
/// looks by default. Returns (PATH with sops first, HOME, the key's public part).
fn secrets_setup(env: &Env) -> (String, PathBuf, String) {
    let venv = materia_test_support::test_venv();
    assert!(venv.join("bin/sops").exists(), "sops is not installed in {}: run scripts/setup-dev.sh", venv.display());
    let home = env._tmp.path().join("home");
    let keys = home.join(".config/sops/age/keys.txt");
    std::fs::create_dir_all(keys.parent().unwrap()).unwrap();
    let o = Command::new("age-keygen").arg("-o").arg(&keys).output().expect("age-keygen (Debian package age): run scripts/setup-dev.sh");
    assert!(o.status.success());
    let public = std::fs::read_to_string(&keys).unwrap().lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_owned();
    let path = format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap());
    (path, home, public)
}

fn encrypt(env: &Env, path: &str, public: &str, plain: &str) {
    let plain_file = env._tmp.path().join("plain.env");
    std::fs::write(&plain_file, plain).unwrap();
    let o = Command::new("sops")
        .env("PATH", path)
        .args(["--disable-version-check", "--encrypt", "--age", public, "--input-type", "dotenv", "--output-type", "dotenv"])
        .arg(&plain_file)
        .current_dir(env._tmp.path()) // not under this repository's .sops.yaml
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(env.src.join(".env.prod.sops"), o.stdout).unwrap();
}

#[test]
fn secrets_are_decrypted_on_every_deploy_owner_only_and_never_logged() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = Env::new();
    let (path, home, public) = secrets_setup(&env);
    encrypt(&env, &path, &public, "API_KEY=first-s3cret\n");
    env.commit("secrets");
    env.tag("v1");
    let src = env.src.display().to_string();
    let poll = || env.cmd(&["--remote", &src, "--build-cmd", "sh build.sh"]).env("PATH", &path).env("HOME", &home).output().unwrap();
    let o = poll();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let env_file = env.app.join("secrets.env");
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), "API_KEY=first-s3cret\n");
    assert_eq!(std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("s3cret") && !String::from_utf8_lossy(&o.stdout).contains("s3cret"));

    // A rotation in the next release takes effect.
    encrypt(&env, &path, &public, "API_KEY=second-s3cret\n");
    env.commit("rotate");
    env.tag("v2");
    assert_eq!(poll().status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), "API_KEY=second-s3cret\n");

    // The lake's secrets go to lake.env beside it, which only the lakehouse's units
    // read; the backup's stay in secrets.env.
    let lake_file = env.app.join("lake.env");
    assert_eq!(std::fs::read_to_string(&lake_file).unwrap(), "", "no lake secret yet");
    encrypt(&env, &path, &public, "API_KEY=second-s3cret\nPGPASSWORD=pg-s3cret\nMATERIA_LAKE_S3_SECRET=lake-s3cret\n");
    env.commit("lake");
    env.tag("v3");
    assert_eq!(poll().status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), "API_KEY=second-s3cret\n");
    assert_eq!(std::fs::read_to_string(&lake_file).unwrap(), "PGPASSWORD=pg-s3cret\nMATERIA_LAKE_S3_SECRET=lake-s3cret\n");
    assert_eq!(std::fs::metadata(&lake_file).unwrap().permissions().mode() & 0o777, 0o600);

    // A release whose health check fails gets its secrets taken back with it, both files.
    encrypt(&env, &path, &public, "API_KEY=third-s3cret\n");
    env.commit("bad");
    env.tag("v4");
    let o =
        env.cmd(&["--remote", &src, "--build-cmd", "sh build.sh", "--health-cmd", "false"]).env("PATH", &path).env("HOME", &home).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), "API_KEY=second-s3cret\n");
    assert_eq!(std::fs::read_to_string(&lake_file).unwrap(), "PGPASSWORD=pg-s3cret\nMATERIA_LAKE_S3_SECRET=lake-s3cret\n");
    assert_eq!(env.deployed_binary(), "v3");
}

#[test]
fn a_missing_sops_is_an_error_only_when_a_release_has_secrets() {
    let env = Env::new();
    let (path, _home, public) = secrets_setup(&env);
    let no_sops = "/usr/local/bin:/usr/bin:/bin";
    env.tag("v1");
    let src = env.src.display().to_string();
    let poll = || env.cmd(&["--remote", &src, "--build-cmd", "sh build.sh"]).env("PATH", no_sops).output().unwrap();
    assert_eq!(poll().status.code(), Some(0), "no .env.prod.sops: sops is not needed");
    encrypt(&env, &path, &public, "API_KEY=x\n");
    env.commit("secrets");
    env.tag("v2");
    let o = poll();
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("tag-deploy: error: v2 has .env.prod.sops but sops is not installed (not on PATH)"), "{stderr}");
    assert_eq!(env.deployed_binary(), "v1");
    assert_eq!(env.releases(), ["v1"]);
}

#[test]
fn old_releases_are_pruned_but_never_the_current_or_previous_one() {
    let env = Env::new();
    for i in 1..=5 {
        env.write("src/lib.rs", &format!("// {i}"), false);
        env.commit(&format!("r{i}"));
        env.tag(&format!("v{i}"));
        assert_eq!(env.poll(&["--keep", "1"]).code, 0);
    }
    // current v5, previous v4, and one more kept.
    assert_eq!(env.releases(), ["v3", "v4", "v5"]);
    assert_eq!(env.deployed_binary(), "v5");
}

/// sshd on 127.0.0.1 that lets a fresh deploy key (`dir/deploy_key`) in, with
/// `dir/known_hosts` listing its host key.
fn sshd(dir: &Path) -> Option<Sshd> {
    std::fs::create_dir_all(dir).unwrap();
    keygen(&dir.join("deploy_key"));
    let server = Sshd::start(dir, &std::fs::read_to_string(dir.join("deploy_key.pub")).unwrap())?;
    std::fs::write(dir.join("known_hosts"), format!("{}\n", server.known_hosts_line())).unwrap();
    Some(server)
}

#[test]
fn deploys_over_ssh_with_the_deploy_key_and_a_known_host_key() {
    let env = Env::new();
    let ssh_dir = env._tmp.path().join("ssh");
    let Some(server) = sshd(&ssh_dir) else { return };
    env.tag("v1");
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let url = format!("ssh://{}@127.0.0.1:{}{}", user.trim(), server.port, env.src.display());
    let key = ssh_dir.join("deploy_key").display().to_string();
    let poll = |known: &Path, key: &str| {
        let known = known.display().to_string();
        env.cmd(&["--remote", &url, "--build-cmd", "sh build.sh", "--ssh-key", key, "--known-hosts", &known]).output().unwrap()
    };

    // An unknown host key is refused before anything is fetched.
    std::fs::write(ssh_dir.join("empty_known_hosts"), "").unwrap();
    let o = poll(&ssh_dir.join("empty_known_hosts"), &key);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("the host key of 127.0.0.1 is not in"), "{}", String::from_utf8_lossy(&o.stderr));

    // A key the server does not know is refused.
    keygen(&ssh_dir.join("other_key"));
    let o = poll(&ssh_dir.join("known_hosts"), &ssh_dir.join("other_key").display().to_string());
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("refused the deploy key"), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(env.current().is_none());

    let o = poll(&ssh_dir.join("known_hosts"), &key);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(env.deployed_binary(), "v1");
}

#[test]
fn a_cleared_failure_is_tried_again() {
    let env = Env::new();
    env.tag("v1");
    std::fs::create_dir_all(&env.app).unwrap();
    std::fs::write(env.app.join("BREAK"), "").unwrap(); // a broken build machine, not a broken tag
    assert_eq!(env.poll(&[]).code, 1);
    std::fs::remove_file(env.app.join("BREAK")).unwrap();
    assert_eq!(env.poll(&[]).code, 3, "not retried by itself");
    let run = env.poll(&["--clear-failed"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.deployed_binary(), "v1");
}

#[test]
fn a_failing_web_hook_switches_back() {
    let env = Env::new();
    env.tag("v1");
    assert_eq!(env.poll(&[]).code, 0);
    env.write("web/deploy.sh", "#!/bin/sh\necho hook broken >&2\nexit 1\n", true);
    env.commit("broken hook");
    env.tag("v2");
    let run = env.poll(&[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("web deploy hook failed") && run.stderr.contains("switched back"), "{}", run.stderr);
    assert_eq!(env.deployed_binary(), "v1");
}

/// Polls after a failure: each must be a no-op (exit 3) that builds nothing.
fn assert_not_retried(env: &Env, builds: &[&str]) {
    for _ in 0..2 {
        let again = env.poll(&[]);
        assert_eq!(again.code, 3, "a failed tag is not retried: {again:?}");
    }
    assert_eq!(env.lines("builds.log"), builds);
}

#[test]
fn every_failing_tag_is_recorded_once_whatever_step_failed() {
    let env = Env::new();
    env.tag("v1");
    assert_eq!(env.poll(&[]).code, 0);

    // A tag that points at a tree, not a commit.
    env.git(&["tag", "v2", "HEAD^{tree}"]);
    let run = env.poll(&[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().contains("v2 does not point at a commit"), "{}", run.error_line());
    assert_not_retried(&env, &["v1"]);

    // A build that succeeds but produces no tool.
    env.write("build.sh", "#!/bin/sh\necho \"$MATERIA_TAG\" >> \"$MATERIA_RELEASE_DIR/../../builds.log\"\n", true);
    env.commit("empty build");
    env.tag("v3");
    let run = env.poll(&[]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().contains("the build produced none of the tools"), "{}", run.error_line());
    assert_not_retried(&env, &["v1", "v3"]);

    assert_eq!(env.deploys(), ["v1 deployed", "v2 failed", "v3 failed"]);
    assert_eq!(env.deployed_binary(), "v1");
    assert_eq!(env.releases(), ["v1"], "nothing half-deployed left");
}

/// Is process `pid` gone (or a zombie waiting for its parent)?
fn gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_build_or_hook_past_its_deadline_is_killed_with_everything_it_started() {
    let env = Env::new();
    // The build starts a grandchild that would outlive a plain kill of `sh`.
    env.write("build.sh", "#!/bin/sh\nsleep 300 &\necho $! > \"$MATERIA_RELEASE_DIR/../../sleeper.pid\"\nwait\n", true);
    env.commit("hanging build");
    env.tag("v1");
    let run = env.poll(&["--build-timeout", "1"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().contains("did not finish within 1 s (--build-timeout); killed"), "{}", run.error_line());
    let pid = std::fs::read_to_string(env.app.join("sleeper.pid")).unwrap().trim().to_owned();
    materia_test_support::wait_until(&format!("the build's child {pid} to end with the build"), Duration::from_secs(10), || gone(&pid));
    assert_eq!(env.deploys(), ["v1 failed"]);
    assert!(env.current().is_none());
    assert_eq!(env.poll(&["--build-timeout", "1"]).code, 3, "recorded once, not retried");

    // A web hook past its deadline: killed, switched back.
    env.write("build.sh", &build_script(), true);
    env.commit("good build");
    env.tag("v2");
    assert_eq!(env.poll(&[]).code, 0);
    env.write("web/deploy.sh", "#!/bin/sh\nsleep 300\n", true);
    env.commit("hanging hook");
    env.tag("v3");
    let run = env.poll(&["--hook-timeout", "1"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.error_line().contains("(--hook-timeout); killed") && run.error_line().contains("switched back to releases/v2"),
        "{}",
        run.error_line()
    );
    assert_eq!(env.deployed_binary(), "v2");
}

#[test]
fn a_remote_that_never_answers_fails_the_poll_at_its_deadline() {
    // Accepts connections and never says a word: an SSH server stuck before its banner.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            h.lock().unwrap().push(conn);
        }
    });
    let env = Env::new();
    let url = format!("ssh://git@127.0.0.1:{port}/materia.git");
    let o = env.cmd(&["--remote", &url, "--git-timeout", "2"]).output().unwrap();
    let run = Run::from(o);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().contains(&format!("listing the tags of {url} did not finish within 2 s (--git-timeout)")), "{}", run.error_line());
    assert!(!held.lock().unwrap().is_empty(), "it did connect");
    let c = rusqlite::Connection::open(env.data.join("landing/.state.sqlite")).unwrap();
    let (status, error): (String, String) =
        c.query_row("SELECT status, error FROM runs ORDER BY run_id DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!(status, "failed");
    assert!(error.contains("--git-timeout"), "{error}");
}

#[test]
fn credentials_in_the_remote_url_are_never_shown() {
    let env = Env::new();
    let url = "https://deploy:glpat-s3cret@127.0.0.1:1/materia.git";
    let run = Run::from(env.cmd(&["--remote", url, "--git-timeout", "10"]).output().unwrap());
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().contains("https://deploy:***@127.0.0.1:1/materia.git"), "{}", run.error_line());
    assert!(!run.stderr.contains("s3cret"), "{}", run.stderr);
    let c = rusqlite::Connection::open(env.data.join("landing/.state.sqlite")).unwrap();
    let recorded: String = c.query_row("SELECT summary || ' ' || error FROM runs", [], |r| r.get(0)).unwrap();
    assert!(!recorded.contains("s3cret") && recorded.contains("***"), "{recorded}");
}

#[test]
fn the_build_dir_keeps_unchanged_files_so_builds_are_incremental() {
    let env = Env::new();
    env.write("src/keep.rs", "// unchanged", false);
    env.write("src/gone.rs", "// removed in v2", false);
    env.commit("files");
    env.tag("v1");
    assert_eq!(env.poll(&[]).code, 0);
    let build = env.app.join("build");
    let mtime = |p: &str| std::fs::metadata(build.join(p)).unwrap().modified().unwrap();
    let (keep, lib) = (mtime("src/keep.rs"), mtime("src/lib.rs"));
    std::thread::sleep(Duration::from_millis(20));
    env.write("src/lib.rs", "// 2", false);
    env.remove("src/gone.rs");
    env.commit("two");
    env.tag("v2");
    let run = env.poll(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("1 files changed"), "{}", run.stderr);
    assert_eq!(mtime("src/keep.rs"), keep, "an unchanged file is not rewritten (cargo would rebuild it)");
    assert_ne!(mtime("src/lib.rs"), lib);
    assert_eq!(std::fs::read_to_string(build.join("src/lib.rs")).unwrap(), "// 2");
    assert!(!build.join("src/gone.rs").exists(), "a file removed from the tree is removed from the build dir");
    // The release is the tag's tree plus what the build installed.
    let release = env.app.join("releases/v2");
    assert!(release.join("src/keep.rs").exists() && !release.join("src/gone.rs").exists() && release.join("bin/psd-extract").exists());
}

#[test]
fn a_failed_first_deploy_puts_back_whatever_current_was() {
    // bootstrap.sh points `current` at its own deployer before the first deploy.
    let env = Env::new();
    std::fs::create_dir_all(env.app.join("bootstrap/bin")).unwrap();
    std::os::unix::fs::symlink("bootstrap", env.app.join("current")).unwrap();
    env.tag("v1");
    let run = env.poll(&["--health-cmd", "false"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().contains("switched back to bootstrap"), "{}", run.error_line());
    assert_eq!(env.current().as_deref(), Some("bootstrap"));
    assert_eq!(env.releases(), Vec::<String>::new());
}
