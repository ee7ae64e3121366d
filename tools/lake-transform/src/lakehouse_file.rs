//! A new lakehouse file, written beside `lakehouse.duckdb` under a hidden temp name and
//! renamed over it when complete: how `maintain` compacts the local file (compact.rs)
//! and how a run that builds every model writes it (lib.rs). Until the rename the old
//! file is untouched, so a failure or a `kill -9` leaves the lakehouse as it was, and
//! only a temp file behind, which the next run or `maintain` removes (they hold the
//! lakehouse lock, so no one else writes one).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use materia_common::duckdb_config::wal_path as wal;
use materia_common::exit::Integrity;

/// Temp files start with this (then what they are for, `-tmp-` and the pid; DuckDB adds
/// `.wal` to its own).
const TMP_PREFIX: &str = ".lakehouse.";
const TMP_MARK: &str = "-tmp-";

/// A new lakehouse file being written; removed on drop unless published.
#[derive(Debug)]
pub(crate) struct NewLakehouse {
    tmp: PathBuf,
    /// The path DuckDB opens the lakehouse by (its WAL is named after it).
    path: PathBuf,
    /// The file itself: where a symlink at `path` points (it stays a symlink, and the
    /// new file is written on the volume the operator put the lakehouse on).
    file: PathBuf,
    /// Keep the file it replaces under this name (beside it) instead of losing it.
    keep_old: Option<PathBuf>,
    published: bool,
}

impl NewLakehouse {
    /// Start a new file to replace `path` (`what`: `build`, `compact`, in its name),
    /// after removing what an interrupted one left.
    pub(crate) fn start(path: &Path, what: &str) -> anyhow::Result<Self> {
        let file = match std::fs::canonicalize(path) {
            Ok(real) => real,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_owned(),
            Err(e) => return Err(anyhow::Error::new(e).context(format!("resolving {}", path.display()))),
        };
        sweep(dir(&file))?;
        let tmp = dir(&file).join(format!("{TMP_PREFIX}{what}{TMP_MARK}{}", std::process::id()));
        Ok(Self { tmp, path: path.to_owned(), file, keep_old: None, published: false })
    }

    /// Where DuckDB writes it.
    pub(crate) fn tmp(&self) -> &Path {
        &self.tmp
    }

    /// At the rename, keep the file it replaces as `lakehouse.duckdb.corrupt` (replacing
    /// an older one): a hard link, no copy, made before the rename, so the lakehouse
    /// is never missing. For a file DuckDB found corrupt: the bytes stay for a look, and
    /// cost their size on disk until the operator removes them.
    pub(crate) fn keep_old_as_corrupt(&mut self) {
        self.keep_old = Some(materia_common::layout::corrupt_beside(&self.file));
    }

    /// Rename it over the lakehouse. Every connection to both files must be closed:
    /// DuckDB folds a WAL into its file on close, and a WAL left beside either would be
    /// replayed onto the new file at the next open.
    pub(crate) fn publish(mut self) -> anyhow::Result<()> {
        if let Some(w) = [wal(&self.path), wal(&self.file)].into_iter().find(|w| w.exists()) {
            return Err(Integrity(format!("{} is left after the lakehouse was closed; the lakehouse was left as it was", w.display())).into());
        }
        if wal(&self.tmp).exists() {
            return Err(Integrity(format!("the new file {} was left with a WAL after it was closed", self.tmp.display())).into());
        }
        std::fs::File::open(&self.tmp).and_then(|f| f.sync_all()).with_context(|| format!("fsync {}", self.tmp.display()))?;
        if let Some(kept) = &self.keep_old
            && self.file.exists()
        {
            // Keeping it must not stop the repair: a failure is a warning.
            let link = std::fs::remove_file(kept)
                .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                .and_then(|()| std::fs::hard_link(&self.file, kept));
            match link {
                Ok(()) => log::warn!("kept the corrupt file as {} (remove it when done with it)", kept.display()),
                Err(e) => log::warn!("could not keep the corrupt file as {}: {e}", kept.display()),
            }
        }
        std::fs::rename(&self.tmp, &self.file).with_context(|| format!("renaming {} to {}", self.tmp.display(), self.file.display()))?;
        self.published = true;
        materia_common::atomic::sync_dir(dir(&self.file))?;
        Ok(())
    }
}

impl Drop for NewLakehouse {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.tmp);
            let _ = std::fs::remove_file(wal(&self.tmp));
        }
    }
}

fn dir(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Remove the temp files an interrupted run or `maintain` left beside the lakehouse at
/// `path`. Only under the lakehouse lock (then no one is writing one).
pub(crate) fn sweep_beside(path: &Path) -> anyhow::Result<()> {
    match std::fs::canonicalize(path) {
        Ok(real) => sweep(dir(&real)),
        Err(_) => sweep(dir(path)),
    }
}

fn sweep(dir: &Path) -> anyhow::Result<()> {
    for e in materia_common::read_dir_or_empty(dir)? {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(TMP_PREFIX) && name.contains(TMP_MARK) {
            log::warn!("removing {name}, left by an interrupted run or maintain");
            std::fs::remove_file(e.path()).with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    Ok(())
}

/// Did any step (a run, `maintain`, an export) find the lakehouse file corrupt (its
/// recorded error says so: only `lakehouse_target` writes those words) since a whole new
/// file was last written (a first build or rebuild, a compaction)? A rebuild then keeps
/// the file it replaces, though it reads no corrupt block itself: `maintain` reads every
/// block, a run or an export only those it needs, the rebuild none.
pub(crate) fn found_corrupt_since_new_file(db: &materia_common::StateDb, run_id: i64) -> anyhow::Result<bool> {
    let found: Option<bool> = db
        .conn()
        .query_row(
            "SELECT status = 'failed' FROM runs
             WHERE run_id < ?3
               AND ((status = 'failed' AND instr(coalesce(error, ''), ?4) > 0)
                 OR (status = 'success' AND (tool = ?2 OR (tool = ?1 AND json_extract(stats, '$.new_file') = 1))))
             ORDER BY run_id DESC LIMIT 1",
            rusqlite::params![crate::TOOL, materia_common::layout::MAINTAIN_STEP, run_id, materia_common::lakehouse_target::FOUND_CORRUPT],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(db.err(e)) })?;
    Ok(found == Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new file ready to publish over `dir/lakehouse.duckdb` ("old").
    fn ready(dir: &Path) -> (PathBuf, NewLakehouse) {
        let path = dir.join("lakehouse.duckdb");
        std::fs::write(&path, "old").unwrap();
        let new = NewLakehouse::start(&path, "build").unwrap();
        std::fs::write(new.tmp(), "new").unwrap();
        (path, new)
    }

    #[test]
    fn a_wal_left_beside_either_file_stops_the_rename_and_the_lakehouse_stays() {
        let dir = tempfile::tempdir().unwrap();
        // Beside the lakehouse: replayed onto the new file at the next open.
        let (path, new) = ready(dir.path());
        std::fs::write(wal(&path), "wal").unwrap();
        let tmp = new.tmp().to_owned();
        let e = new.publish().unwrap_err();
        assert!(e.is::<Integrity>(), "{e:#}");
        assert!(e.to_string().contains(&format!("{} is left after the lakehouse was closed", wal(&path).display())), "{e:#}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert!(!tmp.exists(), "the new file is removed");
        std::fs::remove_file(wal(&path)).unwrap();

        // Beside the new file: what it holds is not all in the file renamed.
        let (path, new) = ready(dir.path());
        std::fs::write(wal(new.tmp()), "wal").unwrap();
        let tmp = new.tmp().to_owned();
        let e = new.publish().unwrap_err();
        assert!(e.is::<Integrity>() && e.to_string().contains("was left with a WAL"), "{e:#}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert!(!tmp.exists() && !wal(&tmp).exists(), "both removed");

        // Neither: renamed over it.
        let (path, new) = ready(dir.path());
        new.publish().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing else left");
    }

    /// `duckdb_config::open_lakehouse_file` is tested here, with its one caller: the
    /// materia-common test binary has no rpath to libduckdb.so (only the tools' build
    /// script sets one).
    #[test]
    fn a_lakehouse_file_is_written_in_its_storage_version_and_in_row_groups_of_its_write() {
        use materia_common::duckdb_config::{ROW_GROUP_SIZE, Write, config, open_lakehouse_file};
        let dir = tempfile::tempdir().unwrap();
        let rows = 2 * i64::from(ROW_GROUP_SIZE) + 1000;
        let table = |n: i64| format!("SELECT range AS i, 'https://apps.fas.usda.gov/psdonline/' || (range % 1000) AS s FROM range({n})");
        // (rows, row groups, the file's storage version, the string columns' compressions)
        let stored = |path: &Path| -> (i64, i64, String, String) {
            let conn = duckdb::Connection::open(path).unwrap();
            conn.query_row(
                "SELECT (SELECT count(*) FROM raw.t), (SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('raw.t')),
                        (SELECT CAST(tags AS VARCHAR) FROM duckdb_databases() WHERE database_name = current_database()),
                        (SELECT string_agg(DISTINCT compression, ',' ORDER BY compression) FROM pragma_storage_info('raw.t') WHERE segment_type = 'VARCHAR')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap()
        };
        let plain = dir.path().join("plain.duckdb");
        duckdb::Connection::open(&plain).unwrap().execute_batch(&format!("CREATE SCHEMA raw; CREATE TABLE raw.t AS {}", table(rows))).unwrap();
        assert_eq!(stored(&plain), (rows, 1, "{storage_version=v1.0.0+}".into(), "Dictionary".into()), "DuckDB's own defaults");
        for (write, groups) in [(Write::Add, 3), (Write::Whole, 1)] {
            let path = dir.path().join(format!("it's {write:?}.duckdb"));
            let conn = open_lakehouse_file(&path, config(None).unwrap(), write).unwrap();
            conn.execute_batch(&format!("CREATE SCHEMA raw; CREATE TABLE raw.t AS {}", table(rows))).unwrap();
            let db: String = conn.query_row("SELECT current_database()", [], |r| r.get(0)).unwrap();
            assert_eq!(db, "lakehouse");
            drop(conn);
            assert_eq!(stored(&path), (rows, groups, "{storage_version=v1.5.0+}".into(), "DICT_FSST".into()), "{write:?}");
        }
        // A file in the older format, as a run finds one written before: upgraded, the
        // rows it had kept as they were, the rows the run adds in the new format.
        let conn = open_lakehouse_file(&plain, config(None).unwrap(), Write::Add).unwrap();
        conn.execute_batch(&format!("INSERT INTO raw.t {}", table(rows))).unwrap();
        drop(conn);
        assert_eq!(stored(&plain), (2 * rows, 4, "{storage_version=v1.5.0+}".into(), "DICT_FSST,Dictionary".into()));
    }
}
