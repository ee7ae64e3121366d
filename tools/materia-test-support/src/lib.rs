//! What the tests of every tool and of `tests/` share, in one crate (a dev-dependency
//! of each): a finished [`Run`], the test servers on 127.0.0.1 ([`psd_server`] for
//! PSD Online, [`moto`] for S3, [`postgres`] for a DuckLake catalog, [`sshd`] for a git
//! remote over SSH), the hermetic
//! command every test runs a tool with ([`tool`]), each test's own directory
//! ([`temp_dir`], kept when the test fails), [`wait_until`], [`landing`]: landed
//! files made by psd-extract itself, and [`tmpfs`]: a disk that fills up.
//!
//! Real parts only: the servers are real servers (ours speaks HTTP/1.1 over a real
//! socket; moto and sshd are the real programs), nothing is mocked in-process.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

pub mod landing;
pub mod moto;
pub mod postgres;
pub mod psd_server;
mod run;
pub mod sshd;
pub mod tmpfs;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use run::Run;

/// `program` with none of the variables `materia_common::layout::ENV_VARS` lists
/// inherited from the caller (a developer's `.env`, CI's settings): the test sets what
/// it means to. Everything else (PATH, HOME) is inherited.
pub fn tool(program: impl AsRef<Path>) -> Command {
    let mut c = Command::new(program.as_ref());
    for v in materia_common::layout::ENV_VARS {
        c.env_remove(v);
    }
    c
}

/// The venv of the test tools `scripts/setup-dev.sh --tests` installs (moto, sops, the
/// Python DuckDB, Pulumi): `MATERIA_TEST_VENV`, default `~/.cache/materia-test-venv`.
pub fn test_venv() -> PathBuf {
    std::env::var_os("MATERIA_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/materia-test-venv"))
}

/// Poll `done` every 2 ms (short enough to see a temp file before its rename) until it
/// is true; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A test's own directory, named after the test (`materia-<test name>-…` in the
/// system temp dir). Removed when the test passes; kept, and its path printed, when the
/// test panics, so what a failing run left behind can be read.
pub struct TestDir(tempfile::TempDir);

/// A new [`TestDir`] for the calling test.
pub fn temp_dir() -> TestDir {
    let name = std::thread::current().name().unwrap_or("test").replace("::", "-");
    TestDir(tempfile::Builder::new().prefix(&format!("materia-{name}-")).tempdir().unwrap())
}

impl TestDir {
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.disable_cleanup(true);
            eprintln!("the failed test's directory is kept: {}", self.0.path().display());
        }
    }
}

/// Break the checksum of blocks `ids` (as `pragma_storage_info` lists a table's) of the
/// DuckDB file `path`, whose blocks are `block_size` bytes (`pragma_database_size`):
/// DuckDB finds it when a query reads one of them, not when it opens the file.
pub fn corrupt_duckdb_blocks(path: &Path, block_size: usize, ids: &[usize]) {
    let ids: Vec<u64> = ids.iter().map(|&i| i as u64).collect();
    materia_common::fault::break_duckdb_blocks(path, block_size as u64, &ids).unwrap();
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tool_command_inherits_none_of_the_tools_variables() {
        let cmd = super::tool("/bin/true");
        let removed: Vec<_> = cmd.get_envs().filter(|(_, v)| v.is_none()).map(|(k, _)| k.to_string_lossy().into_owned()).collect();
        for v in materia_common::layout::ENV_VARS {
            assert!(removed.iter().any(|r| r == v), "{v} is not cleared");
        }
        assert!(removed.len() > 20);
    }

    #[test]
    fn a_test_dir_is_named_after_its_test_and_kept_only_when_the_test_fails() {
        let passed = super::temp_dir();
        let passed_path = passed.path().to_owned();
        let name = passed_path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("materia-"), "{name}");
        if std::thread::current().name().is_some_and(|t| t != "main") {
            assert!(name.contains("a_test_dir_is_named_after_its_test"), "{name}");
        }
        drop(passed);
        assert!(!passed_path.exists());

        let failed = std::thread::Builder::new()
            .name("failing".into())
            .spawn(|| {
                let dir = super::temp_dir();
                std::fs::write(dir.join("left"), "behind").unwrap();
                let path = dir.path().to_owned();
                std::panic::panic_any(path);
            })
            .unwrap()
            .join()
            .unwrap_err();
        let kept = failed.downcast::<std::path::PathBuf>().unwrap();
        assert_eq!(std::fs::read_to_string(kept.join("left")).unwrap(), "behind");
        std::fs::remove_dir_all(*kept).unwrap();
    }
}
