//! What the tests of every tool and of `tests/` share, in one crate (a dev-dependency
//! of each): a finished [`Run`], the test servers on 127.0.0.1 ([`psd_server`] for
//! PSD Online, [`moto`] for S3, [`sshd`] for a git remote over SSH), the hermetic
//! command every test runs a tool with ([`tool`]), and [`wait_until`].
//!
//! Real parts only: the servers are real servers (ours speaks HTTP/1.1 over a real
//! socket; moto and sshd are the real programs), nothing is mocked in-process.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

pub mod moto;
pub mod psd_server;
mod run;
pub mod sshd;

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

/// Poll `done` every 20 ms until it is true; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
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
}
