//! A finished run of a tool under test: exit code, stdout, stderr.

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
    /// The `TOOL: error: …` line a tool's main prints once (TOOL one of
    /// `materia_common::layout::TOOLS`); panics when there is none.
    pub fn error_line(&self) -> &str {
        self.stderr
            .lines()
            .find(|l| materia_common::layout::TOOLS.iter().any(|t| l.strip_prefix(t).is_some_and(|rest| rest.starts_with(": error: "))))
            .unwrap_or_else(|| panic!("no `TOOL: error: ` line in stderr:\n{}", self.stderr))
    }
}
