//! Exit codes: one small table for every tool, used by the systemd units.
//!
//! | code | name | meaning | units |
//! |---|---|---|---|
//! | 0 | `OK` | the step did work (something new landed, was built, exported, uploaded) | success |
//! | 1 | `FAILURE` | the run failed (network, I/O, a bug); recorded in the state DB | failure, `OnFailure=` |
//! | 2 | `USAGE` | bad flags or configuration (clap uses 2 as well) | failure |
//! | 3 | `UNCHANGED` | nothing to do: nothing new upstream, nothing changed | `SuccessExitStatus=3` |
//! | 4 | `LOCKED` | another instance holds the step's lock | `SuccessExitStatus=4` on timers |
//! | 5 | `BAD_INPUT` | input rejected by validation (corrupt zip, changed header, …); nothing written | failure |
//! | 6 | `INTEGRITY` | stored data differs from what was recorded (landing altered, remote differs) | failure |

use std::process::ExitCode;

/// The step did work.
pub const OK: u8 = 0;
/// The run failed.
pub const FAILURE: u8 = 1;
/// Bad flags or configuration.
pub const USAGE: u8 = 2;
/// Nothing to do.
pub const UNCHANGED: u8 = 3;
/// Another instance holds the lock.
pub const LOCKED: u8 = 4;
/// Input rejected by validation.
pub const BAD_INPUT: u8 = 5;
/// Stored data differs from its record.
pub const INTEGRITY: u8 = 6;

/// How a successful run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Something was done: exit 0.
    Changed,
    /// Nothing to do: exit [`UNCHANGED`].
    Unchanged,
}

impl Outcome {
    /// The process exit code for this outcome.
    pub fn code(self) -> u8 {
        match self {
            Outcome::Changed => OK,
            Outcome::Unchanged => UNCHANGED,
        }
    }
}

/// Input that failed validation; maps to exit [`BAD_INPUT`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Stored data that differs from its record; maps to exit [`INTEGRITY`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Integrity(pub String);

/// Bad flags or configuration found after parsing; maps to exit [`USAGE`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The exit code for an error: the first classified error in its chain decides.
pub fn code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<crate::lock::LockError>().is_some_and(|e| e.is_held()) {
            return LOCKED;
        }
        if cause.is::<BadInput>() {
            return BAD_INPUT;
        }
        if cause.is::<Integrity>() {
            return INTEGRITY;
        }
        if cause.is::<Usage>() {
            return USAGE;
        }
    }
    FAILURE
}

/// One line for an error: its chain joined by `: `, with control characters escaped so a
/// hostile string from a server can never break the line.
pub fn one_line(err: &anyhow::Error) -> String {
    // A cause that only repeats the end of what its error said (rusqlite's errors show
    // their source, then are followed by it: `disk is full: disk is full: Error code 13:
    // disk is full`) is said once.
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        let said = |t: &str| parts.last().is_some_and(|p| p.ends_with(t));
        if !said(&text) && !said(sqlite_code_stripped(&text)) {
            parts.push(text);
        }
    }
    // duckdb-rs appends a generic code to every failure; it says nothing the text does not.
    let s = parts.join(": ").replace(": Error code 1: Unknown error code", "");
    s.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect()
}

/// `Error code 13: database or disk is full` (SQLite's error, as rusqlite shows it) without
/// its code; any other text as it is.
fn sqlite_code_stripped(text: &str) -> &str {
    text.strip_prefix("Error code ")
        .and_then(|rest| rest.split_once(": "))
        .filter(|(code, _)| !code.is_empty() && code.bytes().all(|b| b.is_ascii_digit()))
        .map_or(text, |(_, said)| said)
}

/// The body of every tool's `main`: take the secrets file's variables
/// ([`crate::secrets::exec_with_secrets`]: an unreadable or malformed file is exit
/// [`USAGE`]), run, print `tool: error: <chain>` once on failure, and turn the result
/// into the documented exit code.
pub fn main(tool: &str, run: impl FnOnce() -> anyhow::Result<Outcome>) -> ExitCode {
    if let Err(e) = crate::secrets::exec_with_secrets() {
        let code = if matches!(e, crate::secrets::SecretsError::Exec { .. }) { FAILURE } else { USAGE };
        eprintln!("{tool}: error: {}", one_line(&anyhow::Error::new(e)));
        return ExitCode::from(code);
    }
    match run() {
        Ok(outcome) => ExitCode::from(outcome.code()),
        Err(err) => {
            eprintln!("{tool}: error: {}", one_line(&err));
            ExitCode::from(code_for(&err))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn classified_errors_keep_their_code_under_context() {
        let e = anyhow::Error::new(BadInput("bad header".into())).context("landing x");
        assert_eq!(code_for(&e), BAD_INPUT);
        let e: anyhow::Result<()> = Err(Integrity("changed".into())).context("checking");
        assert_eq!(code_for(&e.unwrap_err()), INTEGRITY);
        assert_eq!(code_for(&anyhow::anyhow!("plain")), FAILURE);
    }

    #[test]
    fn one_line_escapes_control_characters() {
        let e = anyhow::anyhow!("etag \"a\nb\0\"").context("fetching");
        let line = one_line(&e);
        assert!(!line.contains('\n') && !line.contains('\0'), "{line}");
        assert_eq!(line, "fetching: etag \"a\\nb\\u{0}\"");
        let duck = anyhow::anyhow!("IO Error: No space left on device: Error code 1: Unknown error code").context("copying");
        assert_eq!(one_line(&duck), "copying: IO Error: No space left on device");
    }

    #[test]
    fn a_cause_that_repeats_its_error_is_said_once() {
        // The real chain of a full disk under the state DB: SQLite's own error, rusqlite's,
        // the state DB's (which shows its source), then the step's context.
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("PRAGMA max_page_count = 2; CREATE TABLE t (x)").unwrap();
        let full = conn.execute_batch("INSERT INTO t VALUES (zeroblob(100000))").unwrap_err();
        let state = crate::state::StateError::Sqlite { path: "/data/landing/.state.sqlite".into(), source: full };
        let e = anyhow::Error::new(state).context("recording the end of the run");
        assert_eq!(one_line(&e), "recording the end of the run: state DB /data/landing/.state.sqlite: database or disk is full");
        // A cause that says more than the end of its error is kept.
        let e = anyhow::anyhow!("disk is full, writing x").context("landing: disk is full");
        assert_eq!(one_line(&e), "landing: disk is full: disk is full, writing x");
        assert_eq!(sqlite_code_stripped("Error code 13: database or disk is full"), "database or disk is full");
        assert_eq!(sqlite_code_stripped("Error code x: y"), "Error code x: y");
    }
}
