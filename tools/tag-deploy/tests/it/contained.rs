//! What stays contained: hostile tag names, `kill -9` mid-deploy, deadlines, a silent
//! remote, credentials in the remote URL, the deploy key over ssh.

use super::*;

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
