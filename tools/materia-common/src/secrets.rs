//! Secrets a tool reads itself, as its own user: the dotenv file [`ENV_SECRETS_FILE`]
//! names (`/opt/materia/secrets.env` for landing-backup, `lake.env` for the lakehouse's
//! steps), read before the flags are parsed and put in the process's environment by
//! executing the same program again with them (same PID, same arguments).
//!
//! Why not systemd's `EnvironmentFile=`: PID 1 reads that file as root, and the file sits
//! where the service user writes (tag-deploy writes it on every deploy), so a service
//! user that replaced it with a symlink would get any root-only `KEY=VALUE` file on the
//! server into its own process. Read here, the file is opened with the service user's
//! rights: a link to a file it may not read fails with "Permission denied".
//!
//! [`ENV_SECRETS_FILE`]: crate::layout::ENV_SECRETS_FILE

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::layout::ENV_SECRETS_FILE;

/// A secrets file that could not be used. Never holds a secret: lines are named by
/// number, not content.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The file exists but cannot be read (a link to a file the user may not read).
    #[error("cannot read the secrets file {} ({ENV_SECRETS_FILE}): {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// A line that is not `KEY=VALUE`, a comment or blank.
    #[error("secrets file {} line {line}: {why}", path.display())]
    Syntax { path: PathBuf, line: usize, why: &'static str },
    /// Executing the program again failed.
    #[error("cannot execute {} again with its secrets: {source}", program.display())]
    Exec { program: PathBuf, source: std::io::Error },
}

/// If [`ENV_SECRETS_FILE`] names a file, execute this program again with the file's
/// variables added to its environment (they win over inherited ones, as a later
/// `EnvironmentFile=` did) and [`ENV_SECRETS_FILE`] removed. Returns `Ok` without doing
/// anything when the variable is unset or empty or the file does not exist (no secrets
/// deployed yet) or sets nothing; returns only on error otherwise.
///
/// Call it first in `main`, before any thread is started.
pub fn exec_with_secrets() -> Result<(), SecretsError> {
    let Some(path) = std::env::var_os(ENV_SECRETS_FILE).filter(|p| !p.is_empty()).map(PathBuf::from) else {
        return Ok(());
    };
    match read(&path)? {
        Some(vars) if !vars.is_empty() => exec(vars),
        _ => Ok(()),
    }
}

/// The variables of the dotenv file at `path`; `None` when it does not exist.
pub fn read(path: &Path) -> Result<Option<Vec<(String, String)>>, SecretsError> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SecretsError::Read { path: path.to_owned(), source }),
    };
    parse(&text).map(Some).map_err(|(line, why)| SecretsError::Syntax { path: path.to_owned(), line, why })
}

/// Parse dotenv text as systemd's `EnvironmentFile=` reads what sops writes: `KEY=VALUE`
/// lines (an optional `export `), blank lines and `#`/`;` comments; whitespace around
/// key and value trimmed; one pair of surrounding double quotes (with `\"`, `\\`, `\$`
/// and `` \` `` escapes) or single quotes removed. Errors name the line number and why.
pub fn parse(text: &[u8]) -> Result<Vec<(String, String)>, (usize, &'static str)> {
    let text = std::str::from_utf8(text).map_err(|e| (1 + text[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count(), "not UTF-8"))?;
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = line.split_once('=').ok_or((n, "not KEY=VALUE"))?;
        let key = key.trim();
        let valid_key =
            key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return Err((n, "the key is not a variable name"));
        }
        if key == ENV_SECRETS_FILE {
            // The program is executed again with these: it would read a file again.
            return Err((n, "a secrets file cannot name another one"));
        }
        let value = unquote(value.trim());
        if value.contains('\0') {
            return Err((n, "the value holds a NUL byte"));
        }
        vars.push((key.to_owned(), value));
    }
    Ok(vars)
}

fn unquote(v: &str) -> String {
    if v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'') {
        return v[1..v.len() - 1].to_owned();
    }
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        let mut out = String::with_capacity(v.len());
        let mut chars = v[1..v.len() - 1].chars();
        while let Some(c) = chars.next() {
            match (c, chars.clone().next()) {
                ('\\', Some(next @ ('"' | '\\' | '$' | '`'))) => {
                    out.push(next);
                    chars.next();
                }
                _ => out.push(c),
            }
        }
        return out;
    }
    v.to_owned()
}

fn exec(vars: Vec<(String, String)>) -> Result<(), SecretsError> {
    use std::os::unix::process::CommandExt as _;
    let program = std::env::current_exe().map_err(|source| SecretsError::Exec { program: "/proc/self/exe".into(), source })?;
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from(&program));
    let source = std::process::Command::new(&program).arg0(arg0).args(args).env_remove(ENV_SECRETS_FILE).envs(vars).exec();
    Err(SecretsError::Exec { program, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv_lines_parse_as_systemd_reads_them() {
        let text = b"# comment\n\n; also\nR2_KEY=abc\n  export PGPASSWORD = p=w  \nQ=\"a \\\"b\\\" \\\\ \\n\"\nS='x \\\" y'\nEMPTY=\n";
        let vars = parse(text).unwrap();
        let want = [("R2_KEY", "abc"), ("PGPASSWORD", "p=w"), ("Q", "a \"b\" \\ \\n"), ("S", "x \\\" y"), ("EMPTY", "")];
        assert_eq!(vars, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
    }

    #[test]
    fn a_bad_line_is_named_by_number_never_by_content() {
        assert_eq!(parse(b"A=1\nsecret-without-key\n"), Err((2, "not KEY=VALUE")));
        assert_eq!(parse(b"A=1\n\n9X=secret\n"), Err((3, "the key is not a variable name")));
        assert_eq!(parse(b"=secret\n"), Err((1, "the key is not a variable name")));
        assert_eq!(parse(b"A=x\0y\n"), Err((1, "the value holds a NUL byte")));
        assert_eq!(parse(b"A=1\nB=\xff\n"), Err((2, "not UTF-8")), "the line of the first bad byte");
        assert_eq!(parse(b"MATERIA_SECRETS_FILE=/x.env\n"), Err((1, "a secrets file cannot name another one")));
        let e = SecretsError::Syntax { path: "/s.env".into(), line: 2, why: "not KEY=VALUE" };
        assert_eq!(e.to_string(), "secrets file /s.env line 2: not KEY=VALUE");
    }

    #[test]
    fn a_missing_file_is_no_secrets_and_an_unreadable_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&dir.path().join("absent.env")).unwrap().is_none());
        // A directory cannot be read as a file: an error, not "no secrets".
        let e = read(dir.path()).unwrap_err();
        assert!(e.to_string().starts_with(&format!("cannot read the secrets file {}", dir.path().display())), "{e}");
    }
}
