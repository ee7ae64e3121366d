//! The house rules every file follows, checked like a build: shellcheck-clean scripts,
//! rustfmt-formatted Rust, a `//!` doc atop every Rust file (and a reason atop a long
//! one), and one table of environment variables that README.md repeats exactly.
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

#[test]
fn the_rust_code_is_formatted() {
    // One formatting (rustfmt.toml), checked like shellcheck: a diff fails the tests.
    let o = Command::new("cargo").args(["fmt", "--all", "--", "--check"]).current_dir(repo()).output().unwrap();
    if String::from_utf8_lossy(&o.stderr).contains("no such command") || String::from_utf8_lossy(&o.stderr).contains("not installed") {
        panic!("rustfmt is not installed: rustup component add rustfmt");
    }
    assert!(o.status.success(), "cargo fmt --check:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

/// The variable names in the first column of a markdown table's rows (`a`, `b` cells).
fn env_names<'a>(rows: impl Iterator<Item = &'a str>) -> std::collections::BTreeSet<String> {
    rows.filter_map(|l| l.strip_prefix("| `"))
        .flat_map(|cell| {
            cell.split(" |")
                .next()
                .unwrap()
                .split('`')
                .filter(|n| n.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') && !n.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_environment_variables_are_documented_once_and_alike() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme.split("## Environment variables").nth(1).unwrap().split("\n## ").next().unwrap();
    let in_readme = env_names(section.lines());
    let layout = std::fs::read_to_string(repo().join("tools/materia-common/src/layout.rs")).unwrap();
    let in_layout = env_names(layout.lines().filter_map(|l| l.strip_prefix("//! ")));
    assert_eq!(in_readme, in_layout, "README's table and layout.rs's differ");
    // Every name the code defines is in the table.
    for line in layout.lines().filter(|l| l.starts_with("pub const ENV_")) {
        let name = line.split('"').nth(1).unwrap();
        assert!(in_layout.contains(name), "{name} is defined in layout.rs but not in its table");
    }
    assert!(in_layout.len() > 20, "{in_layout:?}");
}

#[test]
fn every_rust_file_says_what_it_is_and_long_ones_why() {
    let files =
        String::from_utf8(Command::new("git").args(["ls-files", "-co", "--exclude-standard", "*.rs"]).current_dir(repo()).output().unwrap().stdout)
            .unwrap();
    let mut missing = Vec::new();
    for f in files.lines() {
        let text = std::fs::read_to_string(repo().join(f)).unwrap();
        if !text.starts_with("//!") {
            missing.push(format!("{f}: no //! doc at its top"));
        }
        let lines = text.lines().count();
        if lines > 400 && !text.lines().take(40).any(|l| l.starts_with("//! Why this long: ")) {
            missing.push(format!("{f}: {lines} lines and no `//! Why this long: ...` line"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
