//! tag-deploy against real git repositories made by the tests.
//!
//! The shared git remote, build script and release helpers are here; the tests are in the modules, by topic.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod contained;
mod deploy;
mod secrets;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use materia_test_support::Run;
use materia_test_support::sshd::{Sshd, keygen};

/// The release's build: fails when FAIL exists, sleeps when SLOW exists, writes 64 MiB
/// of artifacts when BIG exists, and makes
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
if [ -e BIG ]; then head -c 64M /dev/zero > "$CARGO_TARGET_DIR/big"; fi
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

    /// Run git in the source repo; its stdout, trimmed.
    fn git(&self, args: &[&str]) -> String {
        let o = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "tag.gpgSign=false", "-c", "commit.gpgSign=false"])
            .args(args)
            .current_dir(&self.src)
            .output()
            .unwrap();
        assert!(o.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
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

    /// Each `deploys` row's target (the commit it was of), in order.
    fn deploy_targets(&self) -> Vec<String> {
        let c = rusqlite::Connection::open(self.data.join("landing/.state.sqlite")).unwrap();
        let mut st = c.prepare("SELECT target FROM deploys ORDER BY rowid").unwrap();
        st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    fn deploys(&self) -> Vec<String> {
        let c = rusqlite::Connection::open(self.data.join("landing/.state.sqlite")).unwrap();
        let mut st = c.prepare("SELECT tag || ' ' || status FROM deploys ORDER BY rowid").unwrap();
        st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }
}

/// Polls after a failure: each must be a no-op (exit 3) that builds nothing.
fn assert_not_retried(env: &Env, builds: &[&str]) {
    for _ in 0..2 {
        let again = env.poll(&[]);
        assert_eq!(again.code, 3, "a failed tag is not retried: {again:?}");
    }
    assert_eq!(env.lines("builds.log"), builds);
}

/// Is process `pid` gone (or a zombie waiting for its parent)?
fn gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}
