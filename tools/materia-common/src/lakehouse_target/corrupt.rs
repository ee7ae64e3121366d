//! A corrupt lakehouse file: DuckDB's words for one, the [`Integrity`] failure (exit 6)
//! that names the fix, and, for a copy out of the lakehouse, whose block broke.

use duckdb::Connection;

use crate::exit::Integrity;

/// DuckDB's words for a database file it cannot read as one: not a DuckDB file at all, or
/// a block whose stored checksum does not match its contents, found when the file is
/// opened (its headers, its catalog) or when a query reads the block (pinned by tests, so
/// a DuckDB upgrade that rewords them is noticed).
const CORRUPT: &[&str] = &["is not a valid DuckDB database file", "Corrupt database file"];

/// Does DuckDB say, somewhere in `e`, that a database file is corrupt?
pub fn says_corrupt(e: &anyhow::Error) -> bool {
    e.chain().any(|c| CORRUPT.iter().any(|p| c.to_string().contains(p)))
}

/// What a run's recorded error says when DuckDB found the lakehouse file corrupt (a rebuild
/// looks for it among the earlier runs' errors to keep the file it replaces).
pub const FOUND_CORRUPT: &str = "the file is corrupt";

/// The error `e` of a copy from the lakehouse into a new file: when DuckDB found a block
/// corrupt in it, whose? The copy reads the lakehouse and may read back a block it wrote
/// (one DuckDB evicted under memory pressure), and DuckDB's message names neither file.
/// Every column of the copied `tables` (qualified, quoted names) is read again: whole,
/// `e` becomes `new_file_at_fault(&e)`; corrupt again, `e` stays the lakehouse's.
pub fn whose_corrupt_block(
    conn: &Connection,
    tables: &[String],
    e: anyhow::Error,
    new_file_at_fault: impl FnOnce(&anyhow::Error) -> anyhow::Error,
) -> anyhow::Error {
    if !says_corrupt(&e) || e.chain().any(|c| c.is::<Integrity>()) {
        return e;
    }
    for t in tables {
        if let Err(again) = conn.query_row(&format!("SELECT max(hash(COLUMNS(*))) FROM {t}"), [], |_| Ok(())) {
            log::debug!("the lakehouse read again: {t}: {}", crate::exit::one_line(&again.into()));
            return e;
        }
    }
    new_file_at_fault(&e)
}

/// `e`, or, when DuckDB says in it that the lakehouse file `path` is corrupt (whether
/// opening it or reading a block of it), an [`Integrity`] failure (exit 6, an alert) that
/// names the fix: the lakehouse is made from landing/ alone.
pub(super) fn corrupt_file(path: &std::path::Path, e: anyhow::Error) -> anyhow::Error {
    if !says_corrupt(&e) || e.chain().any(|c| c.is::<Integrity>()) {
        return e;
    }
    Integrity(format!(
        "{}: {FOUND_CORRUPT} ({}); the lakehouse is made from landing/ alone: `lake-transform run --rebuild` writes it anew",
        path.display(),
        crate::exit::one_line(&e)
    ))
    .into()
}

/// The error `e` of `doing` (opening or attaching the lakehouse file `path`), through
/// [`corrupt_file`].
pub(super) fn file_error(path: &std::path::Path, doing: String, e: duckdb::Error) -> anyhow::Error {
    corrupt_file(path, anyhow::Error::new(e).context(doing))
}
