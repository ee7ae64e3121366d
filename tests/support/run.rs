//! A finished run of the tool under test: exit code, stdout, stderr. One file shared by
//! the tools' integration tests through `#[path]`, so it uses nothing but std; the tool
//! is the crate compiling it (folder = crate = binary name).
#![allow(dead_code)] // each test crate uses what it needs of it

use std::process::Output;

/// What a run returned and printed.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Data.
    pub stdout: String,
    /// Logs and the error line.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// The `TOOL: error: …` line the tool's main prints once; panics when there is none.
    pub fn error_line(&self) -> &str {
        let prefix = concat!(env!("CARGO_PKG_NAME"), ": error: ");
        self.stderr.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` line in stderr:\n{}", self.stderr))
    }
}
