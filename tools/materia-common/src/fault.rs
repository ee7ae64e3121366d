//! Tests only: what the tools break when a `*_FAULT` variable asks them to (layout.rs names
//! them), as a failing disk would, and what the tests break in their own files. Not
//! behind the `duckdb` feature: it writes bytes, and the test support uses it too.

/// Tests only (the tools' `*_FAULT` injections and the tests' own corruption): break the
/// blocks `ids` (as `pragma_storage_info` lists a table's) of the DuckDB file `path`, whose
/// blocks are `block_size` bytes (`pragma_database_size`), on disk, as a failing disk
/// would: past the file's three 4 KiB headers and each block's own checksum. DuckDB finds
/// it when a query reads one of them, not when it opens the file (the tests that use it
/// pin this layout: they fail if a DuckDB upgrade moves it).
pub fn break_duckdb_blocks(path: &std::path::Path, block_size: u64, ids: &[u64]) -> std::io::Result<()> {
    use std::io::{Seek as _, Write as _};
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    for id in ids {
        f.seek(std::io::SeekFrom::Start(3 * 4096 + id * block_size + 64))?;
        f.write_all(&[0xa5; 16])?;
    }
    f.sync_all()
}
