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

/// The PSD CSV header, exactly.
pub const PSD_HEADER: &str = "Commodity_Code,Commodity_Description,Country_Code,Country_Name,Market_Year,\
Calendar_Year,Month,Attribute_ID,Attribute_Description,Unit_ID,Unit_Description,Value";

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

/// The longest line a release may have: real PSD lines are under 200 bytes, and DuckDB
/// refuses lines over 2 MB, which would fail every transform after the release landed.
pub const MAX_LINE: usize = 4096;

/// Streaming checks on the CSV, line by line: the first line is the PSD header; every
/// data row is one that the models can load (read_csv with the types of raw.psd):
/// UTF-8, at most [`MAX_LINE`] bytes, the header's line ending, 12 fields with sound
/// quoting, codes of letters and digits, 4-digit years, a month 0–12, a numeric (or
/// empty) `Value`. Blank lines are skipped, as DuckDB skips them. The first bad line
/// is reported with its number and why.
#[derive(Debug, Default)]
struct CsvScan {
    line: Vec<u8>,
    /// The number (1-based) of the line in `line`.
    line_no: u64,
    header_done: bool,
    /// Whether the header ended in CRLF: every line must end the same way.
    crlf: bool,
    rows: u64,
}

impl CsvScan {
    fn feed(&mut self, mut chunk: &[u8]) -> Result<(), String> {
        while !chunk.is_empty() {
            let (part, rest, ended) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], &chunk[i + 1..], true),
                None => (chunk, &chunk[chunk.len()..], false),
            };
            if self.line.len() + part.len() > MAX_LINE + 1 {
                return Err(match self.header_done {
                    true => format!("line {} is longer than {MAX_LINE} bytes", self.line_no + 1),
                    false => "no CSV header line in the first 4 KiB".into(),
                });
            }
            self.line.extend_from_slice(part);
            if ended {
                self.end_line(true)?;
            }
            chunk = rest;
        }
        Ok(())
    }

    fn end_line(&mut self, terminated: bool) -> Result<(), String> {
        self.line_no += 1;
        let n = self.line_no;
        let cr = self.line.last() == Some(&b'\r');
        let line = if cr { &self.line[..self.line.len() - 1] } else { &self.line[..] };
        if !self.header_done {
            self.crlf = cr;
            check_header(line)?;
            self.header_done = true;
        } else if !line.is_empty() {
            if terminated && cr != self.crlf {
                let (this, header) = if cr { ("CRLF", "LF") } else { ("LF", "CRLF") };
                return Err(format!("line {n} ends in {this}, the header in {header}"));
            }
            check_row(line).map_err(|why| format!("line {n}: {why}"))?;
            self.rows += 1;
        }
        self.line.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<u64, String> {
        if !self.line.is_empty() || !self.header_done {
            if !self.header_done && self.line.is_empty() {
                return Err("empty CSV: no header".into());
            }
            self.end_line(false)?;
        }
        if self.rows == 0 {
            return Err("CSV has a header but no data rows".into());
        }
        Ok(self.rows)
    }
}

fn check_header(line: &[u8]) -> Result<(), String> {
    let h = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    let h = String::from_utf8_lossy(h);
    if h == PSD_HEADER {
        return Ok(());
    }
    if h.trim().is_empty() {
        return Err("empty CSV: no header".into());
    }
    let got: Vec<&str> = h.split(',').collect();
    let want: Vec<&str> = PSD_HEADER.split(',').collect();
    for (i, w) in want.iter().enumerate() {
        match got.get(i) {
            Some(g) if g == w => {}
            Some(g) => return Err(format!("CSV header changed: column {} is {g:?}, expected {w:?}", i + 1)),
            None => return Err(format!("CSV header changed: {} columns, expected {}", got.len(), want.len())),
        }
    }
    Err(format!("CSV header changed: {} columns, expected {}", got.len(), want.len()))
}

/// The columns of a PSD row, in header order.
const COLUMNS: [&str; 12] = [
    "Commodity_Code",
    "Commodity_Description",
    "Country_Code",
    "Country_Name",
    "Market_Year",
    "Calendar_Year",
    "Month",
    "Attribute_ID",
    "Attribute_Description",
    "Unit_ID",
    "Unit_Description",
    "Value",
];

/// One data row: is it a row raw.psd loads?
fn check_row(line: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("not UTF-8 (byte {})", e.valid_up_to() + 1))?;
    let mut fields = [""; 12];
    let mut n = 0;
    let mut rest = text;
    loop {
        let (field, after) = split_field(rest)?;
        if n < fields.len() {
            fields[n] = field;
        }
        n += 1;
        match after {
            Some(r) => rest = r,
            None => break,
        }
    }
    if n != COLUMNS.len() {
        return Err(format!("{n} columns, expected {}", COLUMNS.len()));
    }
    let shown = |i: usize| {
        let v = fields[i];
        if v.chars().count() > 40 { format!("{:?}…", v.chars().take(40).collect::<String>()) } else { format!("{v:?}") }
    };
    for i in [0, 2, 7, 9] {
        let v = fields[i];
        if v.is_empty() || v.len() > 16 || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("{} is {}, expected a code of letters and digits", COLUMNS[i], shown(i)));
        }
    }
    for i in [4, 5] {
        let v = fields[i];
        if v.len() != 4 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{} is {}, expected a 4-digit year", COLUMNS[i], shown(i)));
        }
    }
    let month = fields[6];
    if month.is_empty() || month.len() > 2 || !month.bytes().all(|b| b.is_ascii_digit()) || month.parse::<u8>().is_ok_and(|m| m > 12) {
        return Err(format!("Month is {}, expected 0-12", shown(6)));
    }
    if !is_number(fields[11]) {
        return Err(format!("Value is {}, expected a number", shown(11)));
    }
    Ok(())
}

/// The first CSV field of `s` (quotes removed; a quoted field keeps its `""`), and what
/// follows its comma (`None` at the end of the line).
fn split_field(s: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(q) = s.strip_prefix('"') {
        let bytes = q.as_bytes();
        let mut i = 0;
        loop {
            match bytes.get(i) {
                None => return Err("a quoted field is not closed".into()),
                Some(b'"') if bytes.get(i + 1) == Some(&b'"') => i += 2,
                Some(b'"') => break,
                Some(_) => i += 1,
            }
        }
        let field = &q[..i];
        match bytes.get(i + 1) {
            None => Ok((field, None)),
            Some(b',') => Ok((field, Some(&q[i + 2..]))),
            Some(_) => Err("text after a closing quote".into()),
        }
    } else {
        let (field, after) = match s.find(',') {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        if field.contains('"') {
            return Err("a quote inside an unquoted field".into());
        }
        Ok((field, after))
    }
}

/// A number DuckDB reads as DOUBLE (`-1`, `60500.0000`, `1.5e3`), or empty (NULL).
fn is_number(v: &str) -> bool {
    if v.is_empty() {
        return true;
    }
    let v = v.strip_prefix(['-', '+']).unwrap_or(v);
    let (mantissa, exp) = match v.find(['e', 'E']) {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = digits(int) && digits(frac) && !(int.is_empty() && frac.is_empty());
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.len() <= 3 && digits(e)
    });
    mantissa_ok && exp_ok && v.len() <= 40
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

    fn scan(parts: &[&[u8]]) -> Result<u64, String> {
        let mut s = CsvScan::default();
        for p in parts {
            s.feed(p)?;
        }
        s.finish()
    }

    const ROW: &str = "0711100,\"Coffee, Green\",AG,\"Algeria\",2003,2012,06,029,\"Arabica Production\",02,\"(1000 60 KG BAGS)\",1800.0000";

    fn csv(rows: &[&str], eol: &str) -> String {
        let mut s = format!("{PSD_HEADER}{eol}");
        for r in rows {
            s.push_str(r);
            s.push_str(eol);
        }
        s
    }

    #[test]
    fn csv_scan_checks_header_and_counts_rows_across_chunks() {
        let h = PSD_HEADER.as_bytes();
        let two = csv(&[ROW, ROW], "\r\n");
        let b = two.as_bytes();
        assert_eq!(scan(&[&b[..7], &b[7..200], &b[200..]]), Ok(2));
        assert_eq!(scan(&[&h[..10], &h[10..], format!("\n{ROW}\n\n").as_bytes()]), Ok(1));
        assert_eq!(scan(&[b"\xEF\xBB\xBF", h, format!("\n{ROW}").as_bytes()]), Ok(1), "no final newline");
        assert_eq!(scan(&[h, b"\r\n"]), Err("CSV has a header but no data rows".into()));
        assert_eq!(scan(&[h]), Err("CSV has a header but no data rows".into()));
        assert_eq!(scan(&[]), Err("empty CSV: no header".into()));
        let changed = PSD_HEADER.replace("Value", "Amount");
        assert_eq!(scan(&[changed.as_bytes(), b"\n1\n"]), Err("CSV header changed: column 12 is \"Amount\", expected \"Value\"".into()));
        let more = format!("{PSD_HEADER},Extra\n1\n");
        assert!(scan(&[more.as_bytes()]).unwrap_err().contains("13 columns, expected 12"));
    }

    #[test]
    fn every_row_is_checked_and_the_first_bad_line_is_named() {
        // Rows the models load: quoted or not, negative, exponent, empty value, month 00.
        let good = [
            ROW.to_owned(),
            ROW.replace("1800.0000", "-3.5"),
            ROW.replace("1800.0000", "1.5e3"),
            ROW.replace("1800.0000", ""),
            ROW.replace(",06,", ",00,"),
            ROW.replace("\"Algeria\"", "\"Al \"\"x\"\", geria\"").replace("0711100", "\"0711100\""),
        ];
        let good: Vec<&str> = good.iter().map(String::as_str).collect();
        assert_eq!(scan(&[csv(&good, "\n").as_bytes()]), Ok(6));
        let bad = [
            (ROW.replace("1800.0000", "n/a"), "line 3: Value is \"n/a\", expected a number"),
            (ROW.replace("1800.0000", "1,800"), "line 3: 13 columns, expected 12"),
            (ROW.replace(",2003,", ",03,"), "line 3: Market_Year is \"03\", expected a 4-digit year"),
            (ROW.replace(",2012,", ",2O12,"), "line 3: Calendar_Year is \"2O12\", expected a 4-digit year"),
            (ROW.replace(",06,", ",13,"), "line 3: Month is \"13\", expected 0-12"),
            (ROW.replace("0711100", ""), "line 3: Commodity_Code is \"\", expected a code of letters and digits"),
            (ROW.replace(",AG,", ",A G,"), "line 3: Country_Code is \"A G\", expected a code of letters and digits"),
            (ROW.replace("\"Algeria\"", "\"Algeria"), "line 3: text after a closing quote"),
            (ROW.replace("BAGS)\"", "BAGS)"), "line 3: a quoted field is not closed"),
            (ROW.replace("\"Algeria\"", "Alg\"eria"), "line 3: a quote inside an unquoted field"),
            (ROW.replace("\"Algeria\"", "\"Alg\"eria"), "line 3: text after a closing quote"),
            (ROW.replace(",029,", ",029,x,"), "line 3: 13 columns, expected 12"),
        ];
        for (row, want) in bad {
            assert_eq!(scan(&[csv(&[ROW, &row, ROW], "\n").as_bytes()]), Err(want.to_owned()), "{row}");
        }
        let long = ROW.replace("Algeria", &"x".repeat(MAX_LINE));
        assert_eq!(scan(&[csv(&[ROW, &long], "\n").as_bytes()]), Err(format!("line 3 is longer than {MAX_LINE} bytes")));
        let mut latin1 = csv(&[ROW], "\n").into_bytes();
        latin1.extend_from_slice(b"0711100,x,AG,Alg\xe9ria,2003,2012,06,029,x,02,x,1\n");
        assert_eq!(scan(&[&latin1]), Err("line 3: not UTF-8 (byte 17)".into()));
        let mixed = format!("{PSD_HEADER}\r\n{ROW}\r\n{ROW}\n{ROW}\r\n");
        assert_eq!(scan(&[mixed.as_bytes()]), Err("line 3 ends in LF, the header in CRLF".into()));
    }
}
