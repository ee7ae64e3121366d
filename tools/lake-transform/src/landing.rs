//! The landing files an ingest model reads: the files under the landing dir that match
//! its pattern, hidden ones (temp files, the state DB) left out.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// A file in the landing zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandingFile {
    /// Relative to the landing dir.
    pub rel: String,
    /// Absolute.
    pub abs: PathBuf,
    /// Size.
    pub bytes: u64,
    /// Modification time, ns.
    pub mtime_ns: i64,
}

pub fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

/// Files under `landing` matching `pattern` (`*` and `?` within one path segment),
/// hidden files (temp files) excluded, sorted.
pub fn glob(landing: &Path, pattern: &str) -> anyhow::Result<Vec<LandingFile>> {
    let segs: Vec<&str> = pattern.split('/').collect();
    let mut out = Vec::new();
    walk(landing, landing, &segs, &mut out)?;
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

fn walk(root: &Path, dir: &Path, segs: &[&str], out: &mut Vec<LandingFile>) -> anyhow::Result<()> {
    let Some((seg, rest)) = segs.split_first() else { return Ok(()) };
    for entry in materia_common::read_dir_or_empty(dir)? {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !wildcard(seg, name) {
            continue;
        }
        let path = entry.path();
        let meta = entry.metadata()?;
        if rest.is_empty() {
            if meta.is_file() {
                let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
                out.push(LandingFile { rel, abs: path.clone(), bytes: meta.len(), mtime_ns: mtime_ns(&meta) });
            }
        } else if meta.is_dir() {
            walk(root, &path, rest, out)?;
        }
    }
    Ok(())
}

fn wildcard(pat: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pat.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_within_a_segment() {
        assert!(wildcard("*.csv.gzip", "a_0.csv.gzip"));
        assert!(wildcard("20??", "2024"));
        assert!(!wildcard("*.csv.gzip", "a.csv.gzip.tmp"));
        assert!(wildcard("*", ""));
        assert!(!wildcard("a*b", "acbd"));
    }

    #[test]
    fn glob_skips_hidden_files_and_other_depths() {
        let d = tempfile::tempdir().unwrap();
        for p in ["psd/2024/01/a.csv.gzip", "psd/2024/01/.a.tmp-1", "psd/2024/b.csv.gzip", "psd/2024/02/c.csv.gzip", "other/x.csv.gzip"] {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let got: Vec<String> = glob(d.path(), "psd/*/*/*.csv.gzip").unwrap().into_iter().map(|f| f.rel).collect();
        assert_eq!(got, ["psd/2024/01/a.csv.gzip", "psd/2024/02/c.csv.gzip"]);
    }
}
