//! Atomic file writes: a temp file in the target's directory, fsync, rename (or link,
//! to never overwrite), fsync of the directory.
//!
//! Temp files are named `.{name}.tmp-{pid}-{n}`: hidden, and recognisable by
//! [`remove_stale_temps`], which a tool runs under its step lock to clear what a killed
//! run left behind. Readers of a directory only ever see complete files under their
//! final names.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The marker in every temp file name.
pub const TEMP_MARK: &str = ".tmp-";

/// A failed atomic write, with the path it was for.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct AtomicError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

impl AtomicError {
    fn new(what: &'static str, path: &Path, source: io::Error) -> Self {
        Self { what, path: path.to_owned(), source }
    }

    /// The underlying I/O error kind.
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

/// A file being written; becomes visible under its final name only on commit.
/// Dropped without commit, the temp file is removed.
#[derive(Debug)]
pub struct AtomicFile {
    file: Option<File>,
    tmp: PathBuf,
    dir: PathBuf,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl AtomicFile {
    /// Start a file that will be committed into `dir`. `hint` names the temp file
    /// (useful in `ls` while it is written); the final name is chosen at commit.
    pub fn create_in(dir: &Path, hint: &str) -> Result<Self, AtomicError> {
        std::fs::create_dir_all(dir).map_err(|e| AtomicError::new("cannot create directory", dir, e))?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let hint: String = hint.chars().filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c)).take(40).collect();
        let tmp = dir.join(format!(".{hint}{TEMP_MARK}{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| AtomicError::new("cannot create temp file", &tmp, e))?;
        Ok(Self { file: Some(file), tmp, dir: dir.to_owned() })
    }

    /// The open temp file.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file present until commit")
    }

    /// Publish under `name` only if nothing exists there yet. Returns `Ok(false)` (and
    /// keeps the temp file for another try) when the name is taken.
    pub fn commit_new(&mut self, name: &str) -> Result<bool, AtomicError> {
        let target = self.dir.join(name);
        self.sync()?;
        match std::fs::hard_link(&self.tmp, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(AtomicError::new("cannot publish", &target, e)),
        }
        self.file = None;
        std::fs::remove_file(&self.tmp).map_err(|e| AtomicError::new("cannot remove temp file", &self.tmp, e))?;
        sync_dir(&self.dir)?;
        Ok(true)
    }

    /// Publish under `name`, atomically replacing whatever is there.
    pub fn commit_replace(mut self, name: &str) -> Result<PathBuf, AtomicError> {
        let target = self.dir.join(name);
        self.sync()?;
        std::fs::rename(&self.tmp, &target).map_err(|e| AtomicError::new("cannot publish", &target, e))?;
        self.file = None;
        sync_dir(&self.dir)?;
        Ok(target)
    }

    fn sync(&mut self) -> Result<(), AtomicError> {
        self.file().sync_all().map_err(|e| AtomicError::new("cannot fsync", &self.tmp, e))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write `bytes` to `path` atomically, replacing any previous content.
pub fn write_replace(path: &Path, bytes: &[u8]) -> Result<(), AtomicError> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let mut f = AtomicFile::create_in(dir, name)?;
    f.file().write_all(bytes).map_err(|e| AtomicError::new("cannot write", path, e))?;
    f.commit_replace(name)?;
    Ok(())
}

/// fsync a directory, so a rename or link in it survives a power loss.
pub fn sync_dir(dir: &Path) -> Result<(), AtomicError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| AtomicError::new("cannot fsync directory", dir, e))
}

/// Remove temp files left by killed runs under `dir` (recursively). Call only while
/// holding the lock of the step that writes there. Returns how many were removed.
pub fn remove_stale_temps(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let ty = entry.file_type()?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if ty.is_dir() {
            removed += remove_stale_temps(&entry.path())?;
        } else if ty.is_file() && name.starts_with('.') && name.contains(TEMP_MARK) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn commit_new_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = AtomicFile::create_in(dir.path(), "x").unwrap();
        a.file().write_all(b"first").unwrap();
        assert!(a.commit_new("x.txt").unwrap());
        let mut b = AtomicFile::create_in(dir.path(), "x").unwrap();
        b.file().write_all(b"second").unwrap();
        assert!(!b.commit_new("x.txt").unwrap());
        assert!(b.commit_new("y.txt").unwrap());
        assert_eq!(std::fs::read(dir.path().join("x.txt")).unwrap(), b"first");
        assert_eq!(std::fs::read(dir.path().join("y.txt")).unwrap(), b"second");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "no temp file left");
    }

    #[test]
    fn dropped_uncommitted_leaves_nothing_and_stale_temps_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        drop(AtomicFile::create_in(dir.path(), "x").unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let sub = dir.path().join("a/b");
        let f = AtomicFile::create_in(&sub, "y").unwrap();
        std::mem::forget(f); // as if killed
        std::fs::write(sub.join("keep.csv.gzip"), b"x").unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 1);
        let left: Vec<_> = std::fs::read_dir(&sub).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("keep.csv.gzip")]);
    }

    #[test]
    fn write_replace_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        write_replace(&p, b"1").unwrap();
        write_replace(&p, b"2").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"2");
    }
}
