//! Validate a PSD zip and land its CSV as `psd/{yyyy}/{mm}/{etag}.csv.gzip`.
//!
//! One streaming pass over the zip entry does everything: the zip crate checks the CRC
//! as the entry is read to its end, the header and rows are checked on the fly, the
//! bytes are hashed (sha256 of the CSV) and gzip'ed into a temp file beside the target.
//! Memory stays at a few buffers whatever the file size. Only a file that passed every
//! check is published, under a name nothing else has (never overwritten).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write as _};
use std::path::Path;

use anyhow::Context as _;
use flate2::Compression;
use flate2::write::GzEncoder;
use materia_common::atomic::AtomicFile;
use materia_common::exit::BadInput;
use materia_common::{Month, StateDb, hex};
use rusqlite::{OptionalExtension as _, params};
use sha2::{Digest as _, Sha256};

use crate::csv::CsvScan;
pub use crate::csv::PSD_HEADER;

/// The longest name component taken from an ETag.
const MAX_ETAG_NAME: usize = 64;

/// Where a zip came from.
#[derive(Debug)]
pub struct Origin<'a> {
    /// Upstream file name, e.g. `psd_coffee_csv.zip`.
    pub source: &'a str,
    /// The URL (or `file://` path for imports).
    pub source_url: &'a str,
    /// The release month: the archive's month, or the month of extraction.
    pub month: Month,
    /// The server's ETag, if any.
    pub etag: Option<&'a str>,
    /// The server's Last-Modified, if any.
    pub last_modified: Option<&'a str>,
}

/// What landing did.
#[derive(Debug)]
pub enum Landed {
    /// A new file, recorded in `landed_files`.
    New {
        /// Row id in `landed_files`.
        file_id: i64,
        /// Path relative to the landing dir.
        path: String,
        /// Data rows.
        rows: u64,
        /// Size of the landed gzip.
        bytes: u64,
    },
    /// The same CSV content is already landed at `path`; nothing written.
    Duplicate {
        /// Row id of the existing file.
        file_id: i64,
        /// The existing file, relative to the landing dir.
        path: String,
    },
}

/// Validate `zip` and land it under `landing`, recording it in the state DB. A CSV
/// larger than `max_csv_bytes` once decompressed is refused (a zip bomb never fills the
/// disk). Errors that are the input's fault are [`BadInput`]; nothing is left behind on error.
pub fn land_zip(db: &StateDb, landing: &Path, run_id: i64, zip: File, origin: &Origin<'_>, max_csv_bytes: u64) -> anyhow::Result<Landed> {
    let mut archive = zip::ZipArchive::new(zip).map_err(|e| BadInput(format!("not a valid zip archive: {e}")))?;
    let names: Result<Vec<String>, _> = archive.file_names().map(|n| n.map(|n| n.into_owned())).collect();
    let names = names.map_err(|e| BadInput(format!("unreadable zip entry name: {e}")))?;
    let files: Vec<String> = names.into_iter().filter(|n| !n.ends_with('/')).collect();
    let [name] = files.as_slice() else {
        return Err(BadInput(format!("expected exactly one CSV in the zip, found {} files: {files:?}", files.len())).into());
    };
    if !name.to_ascii_lowercase().ends_with(".csv") {
        return Err(BadInput(format!("expected a CSV in the zip, found {name:?}")).into());
    }
    let mut entry = archive.by_name(name).map_err(|e| BadInput(format!("cannot read {name:?} in the zip: {e}")))?;

    let rel_dir = format!("psd/{:04}/{:02}", origin.month.year(), origin.month.month());
    let dir = landing.join(&rel_dir);
    if entry.size() > max_csv_bytes {
        return Err(BadInput(format!("{name:?} is {} bytes uncompressed, over the limit of {max_csv_bytes} (--max-csv-mib)", entry.size())).into());
    }
    let result = write_and_publish(db, run_id, origin, &mut entry, name, &dir, &rel_dir, max_csv_bytes);
    if !matches!(result, Ok(Landed::New { .. })) {
        // A rejected or duplicate release leaves no empty folder behind: month, year,
        // psd/ (remove_dir removes only empty ones; the step lock keeps other writers out).
        for d in dir.ancestors().take(3) {
            let _ = std::fs::remove_dir(d);
        }
    }
    result
}

/// Stream the CSV through the checks into a gzip temp file in `dir`, then publish it
/// under its ETag name (or find its content already landed). The temp file is removed
/// on every error.
#[allow(clippy::too_many_arguments)]
fn write_and_publish(
    db: &StateDb,
    run_id: i64,
    origin: &Origin<'_>,
    entry: &mut impl Read,
    name: &str,
    dir: &Path,
    rel_dir: &str,
    max_csv_bytes: u64,
) -> anyhow::Result<Landed> {
    let mut out = AtomicFile::create_in(dir, "landing")?;
    let mut gz = GzEncoder::new(BufWriter::with_capacity(1 << 16, out.file()), Compression::default());
    let mut hasher = Sha256::new();
    let mut scan = CsvScan::default();
    let mut csv_bytes = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The zip crate reports CRC mismatches and broken deflate streams here.
            Err(e) => return Err(BadInput(format!("corrupt zip entry {name:?}: {e}")).into()),
        };
        let chunk = &buf[..n];
        csv_bytes += n as u64;
        if csv_bytes > max_csv_bytes {
            // The zip's declared size can lie: the bytes themselves are counted.
            return Err(BadInput(format!("{name:?} is over {max_csv_bytes} bytes uncompressed (--max-csv-mib)")).into());
        }
        scan.feed(chunk).map_err(|m| BadInput(format!("{name:?}: {m}")))?;
        hasher.update(chunk);
        gz.write_all(chunk).with_context(|| format!("writing {}", dir.display()))?;
    }
    let rows = scan.finish().map_err(|m| BadInput(format!("{name:?}: {m}")))?;
    gz.finish().and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error)).with_context(|| format!("writing {}", dir.display()))?;
    let sha256 = hex(&hasher.finalize());

    if let Some((file_id, path)) = find_by_sha(db, &sha256)? {
        return Ok(Landed::Duplicate { file_id, path });
    }

    let base = origin.etag.and_then(etag_file_name).unwrap_or_else(|| format!("sha256-{}", &sha256[..16]));
    let candidates = [format!("{base}.csv.gzip"), format!("{base}-{}.csv.gzip", &sha256[..12])];
    for file_name in &candidates {
        if out.commit_new(file_name)? || same_content(&dir.join(file_name), &sha256)? {
            // New, or the same content left by a run killed before it was recorded.
            let path = format!("{rel_dir}/{file_name}");
            let bytes = std::fs::metadata(dir.join(file_name))?.len();
            let file_id = record(db, run_id, origin, &path, &sha256, bytes, csv_bytes, rows)?;
            return Ok(Landed::New { file_id, path, rows, bytes });
        }
    }
    anyhow::bail!("cannot find a free file name in {} for {base}", dir.display())
}

/// A safe file-name component from a server's ETag: weak prefix and quotes dropped,
/// only `[A-Za-z0-9._-]` kept (others become `_`), no leading dot or dash, at most 64
/// characters. `None` when nothing usable is left. It can never contain `/`, `..` at
/// the start, NUL, or be empty, so it never escapes or breaks the landing dir; two
/// ETags that map to one name are told apart when the file is published.
pub fn etag_file_name(etag: &str) -> Option<String> {
    let e = etag.trim();
    let e = e.strip_prefix("W/").unwrap_or(e);
    let e = e.trim_matches('"');
    let cleaned: String = e.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' { c } else { '_' }).collect();
    let name: String = cleaned.trim_start_matches(['.', '-']).chars().take(MAX_ETAG_NAME).collect();
    name.bytes().any(|b| b.is_ascii_alphanumeric()).then_some(name)
}

fn find_by_sha(db: &StateDb, sha256: &str) -> anyhow::Result<Option<(i64, String)>> {
    Ok(db
        .conn()
        .query_row("SELECT file_id, path FROM landed_files WHERE sha256 = ?1", params![sha256], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(|e| db.err(e))?)
}

/// Does the landed gzip at `path` hold CSV content with this sha256?
fn same_content(path: &Path, sha256: &str) -> anyhow::Result<bool> {
    let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut gz = flate2::read::GzDecoder::new(io::BufReader::new(file));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match gz.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(_) => return Ok(false), // not a complete gzip: not ours
        }
    }
    Ok(hex(&hasher.finalize()) == sha256)
}

#[allow(clippy::too_many_arguments)]
fn record(db: &StateDb, run_id: i64, o: &Origin<'_>, path: &str, sha256: &str, bytes: u64, csv_bytes: u64, rows: u64) -> anyhow::Result<i64> {
    db.conn()
        .execute(
            &format!(
                "INSERT INTO landed_files (path, source, source_url, release_month, etag, last_modified,
                     sha256, bytes, csv_bytes, rows, run_id, landed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, {})",
                materia_common::state::NOW
            ),
            params![path, o.source, o.source_url, o.month.to_string(), o.etag, o.last_modified, sha256, bytes, csv_bytes, rows, run_id],
        )
        .map_err(|e| db.err(e))?;
    Ok(db.conn().last_insert_rowid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_etags_become_safe_names() {
        let cases = [
            ("\"80f5a5b0f5e8d81:0\"", Some("80f5a5b0f5e8d81_0")),
            ("W/\"abc\"", Some("abc")),
            ("\"../../x\"", Some("_.._x")),
            ("\"a/b\\c\"", Some("a_b_c")),
            ("\"x\0y\"", Some("x_y")),
            ("\"..\"", None),
            ("\"\"", None),
            ("\"...-\"", None),
            ("\"-rf\"", Some("rf")),
            ("\"é\"", None),
        ];
        for (etag, want) in cases {
            assert_eq!(etag_file_name(etag).as_deref(), want, "{etag:?}");
        }
        let long = format!("\"{}\"", "A".repeat(300));
        assert_eq!(etag_file_name(&long).map(|s| s.len()), Some(MAX_ETAG_NAME));
        for s in ["../../x", "/etc/passwd", "a/../../b", ".hidden", "x\ny"] {
            let n = etag_file_name(s).unwrap_or_default();
            assert!(!n.contains('/') && !n.starts_with('.') && !n.contains('\n') && !n.contains('\0'), "{n}");
        }
    }
}
