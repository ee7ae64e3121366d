//! The house rules every file follows, checked like a build: shellcheck-clean scripts,
//! rustfmt-formatted Rust, a `//!` doc atop every Rust file (and a reason atop a long
//! one), and one table of environment variables that README.md repeats exactly.

use std::path::PathBuf;
use std::process::Command;

use crate::repo;

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
    let tmp = materia_test_support::temp_dir();
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
    // The list a hermetic test clears is the table.
    let listed: std::collections::BTreeSet<String> = materia_common::layout::ENV_VARS.iter().map(|v| (*v).to_owned()).collect();
    assert_eq!(listed, in_layout, "layout::ENV_VARS and layout.rs's table differ");
    // Every name the code defines is in the table.
    for line in layout.lines().filter(|l| l.starts_with("pub const ENV_") && !l.starts_with("pub const ENV_VARS")) {
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

#[test]
fn one_duckdb_version_everywhere() {
    // scripts/duckdb-lib.sh sets it; the scripts ask it; what cannot ask must agree.
    let out = Command::new(repo().join("scripts/duckdb-lib.sh")).arg("--version").output().unwrap();
    let version = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    let [major, minor, patch] = parts[..] else { panic!("{version:?}: not X.Y.Z") };
    // The crate's version encodes DuckDB's: 1.5.5 is 1.10505.x.
    let pin = format!("duckdb = {{ version = \"=1.{major}{minor:02}{patch:02}.");
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    assert!(cargo.contains(&pin), "Cargo.toml does not pin the duckdb crate of DuckDB {version} ({pin}...)");
    let config = std::fs::read_to_string(repo().join(".cargo/config.toml")).unwrap();
    assert!(config.contains(&format!("\".duckdb/{version}\"")), ".cargo/config.toml: DUCKDB_LIB_DIR is not .duckdb/{version}");
    // Every version named beside DuckDB in the repository (docs, scripts, tests) is it.
    let files =
        String::from_utf8(Command::new("git").args(["ls-files", "-co", "--exclude-standard"]).current_dir(repo()).output().unwrap().stdout).unwrap();
    let mut wrong = Vec::new();
    let mut seen = 0;
    for f in files.lines().filter(|f| *f != "Cargo.lock") {
        let Ok(text) = std::fs::read_to_string(repo().join(f)) else { continue };
        for (n, line) in text.lines().enumerate() {
            let lower = line.to_lowercase();
            for marker in ["duckdb==", "duckdb/", "libduckdb.so ", "duckdb ", "node-bindings-linux-x64@"] {
                for (at, _) in lower.match_indices(marker) {
                    let rest = &lower[at + marker.len()..];
                    let v: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
                    let v = v.trim_end_matches('.');
                    if v.split('.').count() == 3 && v.split('.').all(|p| !p.is_empty()) {
                        seen += 1;
                        if v != version {
                            wrong.push(format!("{f}:{}: DuckDB {v}", n + 1));
                        }
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "DuckDB is {version} (scripts/duckdb-lib.sh), but:\n{}", wrong.join("\n"));
    assert!(seen >= 5, "the scan found only {seen} mentions: is it still looking?");
}
