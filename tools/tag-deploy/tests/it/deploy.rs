//! Deploys: which tag, a failed build or health check or web hook switched back,
//! failures recorded once and cleared, pruning, incremental builds.

use super::*;

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
    let head = env.git(&["rev-parse", "--short=7", "HEAD"]);
    assert!(status.contains(&format!("deployed: v1 (at {head})")) && status.contains("previous: -") && status.contains("failed:   -"), "{status}");
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
fn a_failed_tag_moved_to_its_fix_is_tried_again_but_never_a_commit_that_failed() {
    let env = Env::new();
    env.tag("v1");
    assert_eq!(env.poll(&[]).code, 0);
    env.write("FAIL", "", false);
    env.commit("broken");
    // Annotated: the remote lists the tag object and the commit it peels to.
    env.git(&["tag", "-a", "v2", "-m", "v2"]);
    assert_eq!(env.poll(&[]).code, 1);
    assert_not_retried(&env, &["v1"]); // (a failing build logs nothing)
    // The tag made again on the same commit (a new tag object): that commit failed.
    env.git(&["tag", "-f", "-a", "v2", "-m", "v2 again"]);
    assert_not_retried(&env, &["v1"]);
    // Moved to another broken commit: tried, failed; moved back: that commit failed already.
    env.write("src/lib.rs", "// still broken", false);
    env.commit("still broken");
    env.git(&["tag", "-f", "-a", "v2", "-m", "v2, still broken"]);
    assert_eq!(env.poll(&[]).code, 1);
    env.git(&["tag", "-f", "-a", "v2", "-m", "v2, back", "HEAD~1"]);
    assert_not_retried(&env, &["v1"]);

    // The fix, tagged as the same version: tried once more, and deployed.
    env.remove("FAIL");
    env.commit("fixed");
    env.git(&["tag", "-f", "-a", "v2", "-m", "v2, fixed"]);
    let run = env.poll(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("v2 now points at ") && run.stderr.contains(" where it failed: trying it again"), "{}", run.stderr);
    assert_eq!(env.deployed_binary(), "v2");
    assert!(!env.app.join("releases/v2/FAIL").exists(), "the fixed commit is the one deployed");
    assert_eq!(env.lines("builds.log"), ["v1", "v2"]);
    assert_eq!(env.deploys(), ["v1 deployed", "v2 failed", "v2 failed", "v2 deployed"]);
    let o = env.cmd(&["status"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("failed:   -"), "a deployed tag's old failures are history");
}

#[test]
fn a_failed_tag_of_which_no_commit_was_fetched_is_tried_again_once_moved() {
    let env = Env::new();
    env.tag("v1");
    assert_eq!(env.poll(&[]).code, 0);
    // A tag at a tree: the mirror never holds a commit of it, only the state DB can say
    // where it failed.
    env.git(&["tag", "v2", "HEAD^{tree}"]);
    assert_eq!(env.poll(&[]).code, 1);
    assert_not_retried(&env, &["v1"]);
    let tree = env.git(&["rev-parse", "HEAD^{tree}"]);
    let status = String::from_utf8_lossy(&env.cmd(&["status"]).output().unwrap().stdout).into_owned();
    assert!(status.contains(&format!("failed:   v2 (at {})", &tree[..7])), "{status}");

    env.write("src/lib.rs", "// v2", false);
    env.commit("v2 as a commit");
    env.git(&["tag", "-f", "v2"]);
    let run = env.poll(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains(&format!("not {} where it failed: trying it again", &tree[..7])), "{}", run.stderr);
    assert_eq!(env.deploys(), ["v1 deployed", "v2 failed", "v2 deployed"]);
    let head = env.git(&["rev-parse", "HEAD"]);
    assert_eq!(env.deploy_targets(), [env.git(&["rev-parse", "HEAD~1"]), tree, head], "each row names the commit it was of");
}

#[test]
fn a_failure_recorded_without_its_commit_still_holds_the_tag_until_it_moves() {
    // As a release before the state DB kept the commit (schema 8) recorded it.
    let env = Env::new();
    env.tag("v1");
    assert_eq!(env.poll(&[]).code, 0);
    env.write("FAIL", "", false);
    env.commit("broken");
    env.tag("v2");
    assert_eq!(env.poll(&[]).code, 1);
    rusqlite::Connection::open(env.data.join("landing/.state.sqlite")).unwrap().execute("UPDATE deploys SET target = NULL", []).unwrap();
    assert_not_retried(&env, &["v1"]);
    // Moved: the mirror's fetched commit says where it failed.
    env.remove("FAIL");
    env.commit("fixed");
    env.git(&["tag", "-f", "v2"]);
    let run = env.poll(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.deployed_binary(), "v2");
}

#[test]
fn a_deployed_tag_moved_is_never_deployed_again_and_the_poll_says_so() {
    let env = Env::new();
    env.tag("v1");
    assert_eq!(env.poll(&[]).code, 0);
    env.write("src/lib.rs", "// after v1", false);
    env.commit("after v1");
    env.git(&["tag", "-f", "v1"]);
    for _ in 0..2 {
        let run = env.poll(&[]);
        assert_eq!(run.code, 3, "{run:?}");
        assert!(
            run.stderr.contains("no new release tag; v1 is deployed, but the remote's v1 now points at ")
                && run.stderr.contains("a version deploys once; tag the change as a newer version"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(env.lines("builds.log"), ["v1"], "not built again");
    // Put back where it was deployed: nothing to say.
    env.git(&["tag", "-f", "v1", "HEAD~1"]);
    let run = env.poll(&[]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(!run.stderr.contains("now points at"), "{}", run.stderr);
    // The change, tagged as a newer version, deploys.
    env.git(&["tag", "v2", "main"]);
    assert_eq!(env.poll(&[]).code, 0);
    assert_eq!(env.deploys(), ["v1 deployed", "v2 deployed"]);
}

#[test]
fn a_build_that_fills_the_disk_says_so_and_deploys_once_cleared_with_room() {
    let env = Env::new();
    let Some(disk) = materia_test_support::tmpfs::Tmpfs::mount(&env.app, "16m") else { return };
    env.tag("v1");
    assert_eq!(env.poll(&[]).code, 0);
    env.write("BIG", "", false);
    env.commit("bigger artifacts");
    env.tag("v2");
    let run = env.poll(&[]);
    assert_eq!(run.code, 1, "{run:?}");
    let line = run.error_line();
    assert!(line.contains("build failed") && line.contains(&format!("the disk under {} has only", env.app.display())), "{line}");
    assert!(line.contains("free some, then run tag-deploy --clear-failed"), "{line}");
    assert_eq!(env.deployed_binary(), "v1");
    assert_eq!(env.releases(), ["v1"], "nothing half-built left");

    // Room made, the failure cleared: the same tag deploys.
    disk.resize("256m");
    let run = env.poll(&["--clear-failed"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.deployed_binary(), "v2");
    assert_eq!(env.deploys(), ["v1 deployed", "v2 failed", "v2 deployed"]);
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
fn clearing_failures_forgets_the_failed_commits_too() {
    let env = Env::new();
    env.tag("v1");
    assert_eq!(env.poll(&[]).code, 0);
    std::fs::write(env.app.join("BREAK"), "").unwrap();
    env.write("src/lib.rs", "// a", false);
    env.commit("a");
    env.tag("v2");
    assert_eq!(env.poll(&[]).code, 1, "v2 fails at a");
    env.write("src/lib.rs", "// b", false);
    env.commit("b");
    env.git(&["tag", "-f", "v2"]);
    assert_eq!(env.poll(&["--clear-failed"]).code, 1, "v2 fails at b");
    // Back at a, which failed before the failures were cleared: tried again.
    std::fs::remove_file(env.app.join("BREAK")).unwrap();
    env.git(&["tag", "-f", "v2", "HEAD~1"]);
    let run = env.poll(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(std::fs::read_to_string(env.app.join("releases/v2/src/lib.rs")).unwrap(), "// a");
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
