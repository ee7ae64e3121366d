//! The landing zone as the steps that read it see it: every regular file under
//! `landing/` except hidden ones (the state DB, temp files of a landing in progress),
//! by path relative to `landing/`, and `*`/`?` patterns over those paths.
//!
//! lake-transform reads the files an ingest model's pattern names; landing-backup backs
//! up all of them. One walk, so both see the same files.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// A file in the landing zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandingFile {
    /// Relative to the landing dir, `/`-separated.
    pub rel: String,
    /// Absolute (the landing dir joined with `rel`).
    pub abs: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
}

/// A file's modification time in ns since the epoch.
pub fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

/// Every non-hidden regular file under `landing` (at any depth, not inside a hidden
/// directory), sorted by relative path. Symlinks are not followed; names that are not
/// UTF-8 are skipped with a warning. A missing landing dir holds no files.
pub fn files(landing: &Path) -> anyhow::Result<Vec<LandingFile>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<LandingFile>) -> anyhow::Result<()> {
        for entry in crate::read_dir_or_empty(dir)? {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                log::warn!("skipping {}: not UTF-8", entry.path().display());
                continue;
            };
            if name.starts_with('.') {
                continue; // the state DB, temp files
            }
            let path = entry.path();
            let meta = entry.metadata()?;
            if meta.is_dir() {
                walk(root, &path, out)?;
            } else if meta.is_file() {
                let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
                out.push(LandingFile { rel, abs: path, bytes: meta.len(), mtime_ns: mtime_ns(&meta) });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(landing, landing, &mut out)?;
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// The landing files whose relative path matches `pattern` segment by segment (`*` and
/// `?` within one segment, as in [`crate::glob::wildcard`]), sorted.
pub fn glob(landing: &Path, pattern: &str) -> anyhow::Result<Vec<LandingFile>> {
    let segs: Vec<&str> = pattern.split('/').collect();
    let mut out = files(landing)?;
    out.retain(|f| {
        let parts: Vec<&str> = f.rel.split('/').collect();
        parts.len() == segs.len() && segs.iter().zip(&parts).all(|(p, s)| crate::glob::wildcard(p, s))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(paths: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for p in paths {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        d
    }

    #[test]
    fn glob_skips_hidden_files_and_other_depths() {
        let d = tree(&["psd/2024/01/a.csv.gzip", "psd/2024/01/.a.tmp-1", "psd/2024/b.csv.gzip", "psd/2024/02/c.csv.gzip", "other/x.csv.gzip"]);
        let got: Vec<String> = glob(d.path(), "psd/*/*/*.csv.gzip").unwrap().into_iter().map(|f| f.rel).collect();
        assert_eq!(got, ["psd/2024/01/a.csv.gzip", "psd/2024/02/c.csv.gzip"]);
    }

    #[test]
    fn files_are_every_visible_regular_file() {
        let d = tree(&[".state.sqlite", "psd/2024/01/a.csv.gzip", "psd/.hidden/x", "psd/2024/01/.a.tmp-1", "b"]);
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("psd/link")).unwrap();
        let got: Vec<String> = files(d.path()).unwrap().into_iter().map(|f| f.rel).collect();
        assert_eq!(got, ["b", "psd/2024/01/a.csv.gzip"]);
        assert!(files(&d.path().join("missing")).unwrap().is_empty());
    }
}
