//! The state DB (`landing/.state.sqlite`): one SQLite file, WAL mode, where every tool
//! records its runs and what it did. Schema changes are numbered migrations applied on
//! open (`PRAGMA user_version`), so any tool may be the first to open a fresh file. A
//! tool opens a DB a newer tool migrated when every newer migration only added (the DB
//! says so in `PRAGMA application_id`, from `BREAKING`), so a rolled-back release runs.
//!
//! One `runs` table serves every tool (`tool` names it); `extraction_runs` is the view
//! the extractors' operators query:
//!
//! ```sh
//! sqlite3 landing/.state.sqlite "SELECT extractor, status, finished_at FROM extraction_runs ORDER BY run_id DESC LIMIT 20"
//! ```
//!
//! Why this long: the numbered migrations are the schema's history and must stay in one ordered list beside the code that applies them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, params};

/// A state DB failure, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// SQLite failed.
    #[error("state DB {}: {source}", path.display())]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The file (or its WAL) cannot be written by this user.
    #[error(
        "state DB {} is not writable by this user ({owner}): another user made it or its WAL (root running sqlite3?); give it back (chown beanflows_service: {}*) and query it as the service user, read-only (sqlite3 -readonly)",
        path.display(),
        path.display()
    )]
    ReadOnly {
        /// The file.
        path: PathBuf,
        /// Who owns it, as `uid N`.
        owner: String,
    },
    /// The file was migrated by a newer tool, past a migration tools as old as this one
    /// cannot live with (or by one that did not say which).
    #[error("state DB {}: schema version {found} is newer than this tool knows ({known}); upgrade the tool", path.display())]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
        /// The newest this tool knows.
        known: usize,
    },
}

/// Result alias for state DB calls.
pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// Numbered migrations; entry `i` moves `user_version` from `i` to `i + 1`.
/// Never edit a shipped entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: runs of every tool, and psd-extract's records.
    r#"
    CREATE TABLE runs (
        run_id      INTEGER PRIMARY KEY AUTOINCREMENT,
        tool        TEXT    NOT NULL,            -- psd-extract, lake-transform, ...
        status      TEXT    NOT NULL CHECK (status IN ('running', 'success', 'unchanged', 'failed', 'aborted')),
        started_at  TEXT    NOT NULL,            -- UTC, ISO 8601 with milliseconds
        finished_at TEXT,
        duration_ms INTEGER,
        exit_code   INTEGER,
        pid         INTEGER NOT NULL,
        summary     TEXT,                        -- one line: what the run did
        error       TEXT,                        -- one line: why it failed
        stats       TEXT    NOT NULL DEFAULT '{}' -- JSON object of counters, per tool
    );
    CREATE INDEX runs_by_tool ON runs (tool, run_id);

    CREATE VIEW extraction_runs AS
        SELECT run_id, tool AS extractor, status, started_at, finished_at, duration_ms,
               exit_code, summary, error, stats
        FROM runs WHERE tool LIKE '%-extract';

    -- One row per file in the landing zone. Landing is immutable: rows are only added.
    CREATE TABLE landed_files (
        file_id       INTEGER PRIMARY KEY,
        path          TEXT    NOT NULL UNIQUE,   -- relative to landing/, e.g. psd/2024/03/x.csv.gzip
        source        TEXT    NOT NULL,          -- the upstream file name, e.g. psd_coffee_csv.zip
        source_url    TEXT    NOT NULL,
        release_month TEXT    NOT NULL,          -- YYYY-MM
        etag          TEXT,                      -- as the server sent it
        last_modified TEXT,
        sha256        TEXT    NOT NULL UNIQUE,   -- of the CSV content (uncompressed)
        bytes         INTEGER NOT NULL,          -- of the landed .csv.gzip
        csv_bytes     INTEGER NOT NULL,
        rows          INTEGER NOT NULL,          -- data rows, header excluded
        run_id        INTEGER NOT NULL REFERENCES runs (run_id),
        landed_at     TEXT    NOT NULL
    );

    -- The validators last seen per URL, for conditional GETs.
    CREATE TABLE http_validators (
        url           TEXT PRIMARY KEY,
        etag          TEXT,
        last_modified TEXT,
        sha256        TEXT,                      -- content behind these validators
        updated_at    TEXT NOT NULL
    );

    -- What each run did with each URL.
    CREATE TABLE fetches (
        run_id      INTEGER NOT NULL REFERENCES runs (run_id),
        url         TEXT    NOT NULL,
        outcome     TEXT    NOT NULL CHECK (outcome IN
                        ('landed', 'duplicate', 'not_modified', 'not_released', 'failed')),
        http_status INTEGER,
        attempts    INTEGER NOT NULL,
        bytes       INTEGER,                     -- downloaded
        file_id     INTEGER REFERENCES landed_files (file_id),
        detail      TEXT,
        at          TEXT    NOT NULL
    );
    CREATE INDEX fetches_by_url ON fetches (url, outcome);
    "#,
    // 2: lake-transform's per-model and per-audit results.
    r#"
    CREATE TABLE model_runs (
        run_id      INTEGER NOT NULL REFERENCES runs (run_id),
        model       TEXT    NOT NULL,
        action      TEXT    NOT NULL CHECK (action IN ('build', 'append', 'merge', 'skip')),
        reason      TEXT,
        rows        INTEGER,                     -- after the step; NULL for views and skips
        duration_ms INTEGER NOT NULL
    );
    CREATE TABLE audit_results (
        run_id       INTEGER NOT NULL REFERENCES runs (run_id),
        model        TEXT    NOT NULL,
        audit        TEXT    NOT NULL,
        blocking     INTEGER NOT NULL,
        failing_rows INTEGER NOT NULL,           -- 0: passed
        sample       TEXT                        -- JSON array of up to 5 offending rows
    );
    "#,
    // 3: serve-export's publications and rollbacks.
    r#"
    CREATE TABLE exports (
        run_id          INTEGER NOT NULL REFERENCES runs (run_id),
        action          TEXT    NOT NULL CHECK (action IN ('publish', 'rollback')),
        export_id       TEXT    NOT NULL,          -- what analytics.duckdb holds afterwards
        lakehouse_state TEXT    NOT NULL,          -- fingerprint of the lakehouse it came from
        tables          INTEGER,
        rows            INTEGER,
        bytes           INTEGER,
        at              TEXT    NOT NULL
    );
    "#,
    // 4: landing-backup's ledger of objects known to be in a backup.
    r#"
    CREATE TABLE backup_objects (
        target       TEXT    NOT NULL,             -- s3://bucket/prefix/ or fs:/path (no secrets)
        key          TEXT    NOT NULL,             -- object key
        path         TEXT    NOT NULL,             -- relative to landing/
        bytes        INTEGER NOT NULL,
        etag         TEXT,                         -- as the remote reported it (S3: MD5 or multipart)
        run_id       INTEGER NOT NULL REFERENCES runs (run_id),
        backed_up_at TEXT    NOT NULL,
        PRIMARY KEY (target, key)
    );
    "#,
    // 5: tag-deploy's deploys.
    r#"
    CREATE TABLE deploys (
        run_id       INTEGER NOT NULL REFERENCES runs (run_id),
        tag          TEXT    NOT NULL,
        status       TEXT    NOT NULL CHECK (status IN ('deployed', 'failed', 'refused')),
        previous_tag TEXT,                         -- what `current` pointed at before
        web_hook     INTEGER NOT NULL DEFAULT 0,   -- 1 when web/ changed and the hook ran
        detail       TEXT,                         -- why it failed or was refused
        cleared      INTEGER NOT NULL DEFAULT 0,   -- a failure an operator cleared (--clear-failed)
        at           TEXT    NOT NULL
    );
    -- Release tags tag-deploy has already seen on the remote (each is judged once).
    CREATE TABLE deploy_seen_tags (
        tag     TEXT PRIMARY KEY,
        seen_at TEXT NOT NULL
    );
    "#,
    // 6: landed files an operator set aside (lake-transform quarantine): every run and
    // rebuild leaves them out until released. Written by lake-transform, read by
    // materia-status (a documented contract: README, "lake-transform").
    r#"
    CREATE TABLE quarantine (
        path           TEXT    NOT NULL,     -- relative to landing/
        reason         TEXT    NOT NULL,
        quarantined_by TEXT    NOT NULL,
        quarantined_at TEXT    NOT NULL,
        run_id         INTEGER NOT NULL REFERENCES runs (run_id),
        released_by    TEXT,
        released_at    TEXT,
        release_reason TEXT
    );
    CREATE UNIQUE INDEX quarantine_active ON quarantine (path) WHERE released_at IS NULL;
    "#,
    // 7: lake-transform drops the table of a model whose file is gone: 'drop' joins the
    // actions of model_runs (SQLite cannot alter a CHECK: the table is copied).
    r#"
    CREATE TABLE model_runs_7 (
        run_id      INTEGER NOT NULL REFERENCES runs (run_id),
        model       TEXT    NOT NULL,
        action      TEXT    NOT NULL CHECK (action IN ('build', 'append', 'merge', 'skip', 'drop')),
        reason      TEXT,
        rows        INTEGER,                     -- after the step; NULL for views, skips and drops
        duration_ms INTEGER NOT NULL
    );
    INSERT INTO model_runs_7 SELECT run_id, model, action, reason, rows, duration_ms FROM model_runs;
    DROP TABLE model_runs;
    ALTER TABLE model_runs_7 RENAME TO model_runs;
    "#,
    // 8: the object a deploy was of: the commit the remote's tag pointed at (an annotated
    // tag's, peeled), as hex, so a failed tag moved elsewhere is known moved even when
    // nothing of it was fetched. NULL in rows recorded before.
    r#"
    ALTER TABLE deploys ADD COLUMN target TEXT;
    "#,
];

/// The schema versions whose migration older tools cannot live with: it drops or
/// renames a table or column, adds a NOT NULL column without a default, or a CHECK that
/// refuses what they write. Every other migration only adds (a table, an index, a
/// nullable column, a value a CHECK allows), and a tool keeps using a DB migrated past
/// it: a release rolled back to the code before a migration still runs.
/// (Versions 2–8 only add. Tools built before this list was kept refuse any newer DB.)
const BREAKING: &[usize] = &[1];

/// `PRAGMA application_id` of a state DB: these high 16 bits, "MT", say it is one, and
/// the low 16 bits the oldest schema version whose tools can use it
/// ([`readers_from`]), written by the tool that migrated it.
const APPLICATION_ID: i64 = 0x4D54_0000;

/// The oldest schema version whose tools can use a DB at `version`: the last breaking
/// migration up to it.
fn readers_from(version: usize) -> usize {
    BREAKING.iter().copied().filter(|&b| b <= version).max().unwrap_or(1)
}

/// SQL for "now" as stored everywhere: UTC, ISO 8601, milliseconds.
pub const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// Runs that changed nothing (status `unchanged`) are kept this many days, then dropped
/// unless another table refers to them.
pub const NOOP_RUNS_KEPT_DAYS: u32 = 30;

/// (table, column) of every foreign key to `runs`.
fn referencing_tables(conn: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    let mut st = conn.prepare(
        "SELECT m.name, f.\"from\" FROM sqlite_master m, pragma_foreign_key_list(m.name) f
         WHERE m.type = 'table' AND f.\"table\" = 'runs' ORDER BY m.name",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// An open state DB.
#[derive(Debug)]
pub struct StateDb {
    conn: Connection,
    path: PathBuf,
}

/// Final status of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// Did work.
    Success,
    /// Nothing to do.
    Unchanged,
    /// Failed.
    Failed,
}

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            RunStatus::Success => "success",
            RunStatus::Unchanged => "unchanged",
            RunStatus::Failed => "failed",
        }
    }
}

impl StateDb {
    /// Open (creating if needed) and migrate the state DB at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let err = |source: rusqlite::Error| {
            if source.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly) {
                use std::os::unix::fs::MetadataExt as _;
                let owner = std::fs::metadata(path).map(|m| format!("the file belongs to uid {}", m.uid())).unwrap_or_default();
                return StateError::ReadOnly { path: path.to_owned(), owner };
            }
            StateError::Sqlite { path: path.to_owned(), source }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        }
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(err)?;
        let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(err)?;
        if found > MIGRATIONS.len() as i64 {
            // Migrated by a newer tool: used as it is when every migration past this
            // tool's only added (the DB says so), refused otherwise.
            let id: i64 = conn.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(err)?;
            if !usable_by(id, MIGRATIONS.len()) {
                return Err(StateError::TooNew { path: path.to_owned(), found, known: MIGRATIONS.len() });
            }
            log::debug!(
                "state DB {}: schema version {found}, newer than this tool's {}; its newer migrations only add, so it is used as it is",
                path.display(),
                MIGRATIONS.len()
            );
        }
        migrate(&mut conn).map_err(err)?;
        Ok(Self { conn, path: path.to_owned() })
    }

    /// Open an existing state DB read-only (status readers; never migrates or creates).
    pub fn open_read_only(path: &Path) -> Result<Self> {
        let err = |source| StateError::Sqlite { path: path.to_owned(), source };
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(err)?;
        Ok(Self { conn, path: path.to_owned() })
    }

    /// The underlying connection, for a tool's own tables.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wrap a rusqlite error with this DB's path.
    pub fn err(&self, source: rusqlite::Error) -> StateError {
        StateError::Sqlite { path: self.path.clone(), source }
    }

    /// Record the start of a run of `tool`. Call while holding the tool's step lock: any
    /// row of this tool still `running` belongs to a process that died, and is marked
    /// `aborted`.
    pub fn begin_run(&self, tool: &str) -> Result<i64> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        tx.execute(
            &format!(
                "UPDATE runs SET status = 'aborted', finished_at = {NOW},
                    error = 'the run''s end was never recorded: its process was killed, or could not write the state DB (the journal says which)'
                 WHERE tool = ?1 AND status = 'running'"
            ),
            params![tool],
        )
        .map_err(|e| self.err(e))?;
        // No-op runs pile up (tag-deploy polls every minute: ~1,440 a day): those older
        // than NOOP_RUNS_KEPT_DAYS that no other table refers to are dropped.
        let unreferenced = referencing_tables(&tx)
            .map_err(|e| self.err(e))?
            .iter()
            .map(|(table, column)| format!("NOT EXISTS (SELECT 1 FROM \"{table}\" c WHERE c.\"{column}\" = runs.run_id)"))
            .collect::<Vec<_>>();
        tx.execute(
            &format!(
                "DELETE FROM runs WHERE tool = ?1 AND status = 'unchanged'
                   AND started_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-{NOOP_RUNS_KEPT_DAYS} days'){}",
                unreferenced.iter().map(|c| format!(" AND {c}")).collect::<String>()
            ),
            params![tool],
        )
        .map_err(|e| self.err(e))?;
        tx.execute(&format!("INSERT INTO runs (tool, status, started_at, pid) VALUES (?1, 'running', {NOW}, ?2)"), params![tool, std::process::id()])
            .map_err(|e| self.err(e))?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(|e| self.err(e))?;
        Ok(id)
    }

    /// Record how a run ended.
    pub fn finish_run(
        &self,
        run_id: i64,
        status: RunStatus,
        exit_code: u8,
        summary: &str,
        error: Option<&str>,
        stats: &serde_json::Value,
    ) -> Result<()> {
        self.conn
            .execute(
                &format!(
                    "UPDATE runs SET status = ?2, finished_at = {NOW}, exit_code = ?3, summary = ?4,
                        error = ?5, stats = ?6,
                        duration_ms = CAST(ROUND((julianday({NOW}) - julianday(started_at)) * 86400000) AS INTEGER)
                     WHERE run_id = ?1"
                ),
                params![run_id, status.as_str(), exit_code, summary, error, stats.to_string()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Status of one run (for tests and status readers).
    pub fn run_status(&self, run_id: i64) -> Result<Option<String>> {
        self.conn.query_row("SELECT status FROM runs WHERE run_id = ?1", params![run_id], |r| r.get(0)).optional().map_err(|e| self.err(e))
    }
}

/// Can a tool that knows `known` migrations use a newer DB whose `PRAGMA application_id`
/// is `id`? Only when the DB says tools that old can (see [`APPLICATION_ID`]).
fn usable_by(id: i64, known: usize) -> bool {
    id & !0xFFFF == APPLICATION_ID && (1..=known as i64).contains(&(id & 0xFFFF))
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Read again inside the transaction: another tool may have migrated meanwhile.
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
    }
    // Which tools can use it, said by the newest that knows (never by an older one
    // using a newer DB).
    if version <= MIGRATIONS.len() {
        let id = APPLICATION_ID | readers_from(MIGRATIONS.len()) as i64;
        let now: i64 = tx.query_row("PRAGMA application_id", [], |r| r.get(0))?;
        if now != id {
            tx.pragma_update(None, "application_id", id)?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_recorded_and_dead_ones_marked_aborted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("landing/.state.sqlite");
        let db = StateDb::open(&path).unwrap();
        let dead = db.begin_run("psd-extract").unwrap();
        let run = db.begin_run("psd-extract").unwrap();
        assert_eq!(db.run_status(dead).unwrap().as_deref(), Some("aborted"));
        db.finish_run(run, RunStatus::Unchanged, 3, "nothing new", None, &serde_json::json!({"checked": 1})).unwrap();
        drop(db);
        // reopening migrates nothing twice
        let db = StateDb::open(&path).unwrap();
        let rows: Vec<(String, String)> = db
            .conn()
            .prepare("SELECT extractor, status FROM extraction_runs ORDER BY run_id DESC LIMIT 20")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, vec![("psd-extract".into(), "unchanged".into()), ("psd-extract".into(), "aborted".into())]);
        let mode: String = db.conn().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn old_noop_runs_nothing_refers_to_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("s.sqlite")).unwrap();
        let add = |tool: &str, status: &str, days_ago: u32| -> i64 {
            db.conn()
                .execute(
                    &format!("INSERT INTO runs (tool, status, started_at, pid) VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-{days_ago} days'), 1)"),
                    params![tool, status],
                )
                .unwrap();
            db.conn().last_insert_rowid()
        };
        let old = add("tag-deploy", "unchanged", 40);
        let recent = add("tag-deploy", "unchanged", 3);
        let failed = add("tag-deploy", "failed", 40);
        let other_tool = add("psd-extract", "unchanged", 40);
        let referred = add("tag-deploy", "unchanged", 40);
        db.conn()
            .execute(
                "INSERT INTO fetches (run_id, url, outcome, http_status, attempts, at) VALUES (?1, 'u', 'not_modified', 304, 1, 'x')",
                [referred],
            )
            .unwrap();
        let run = db.begin_run("tag-deploy").unwrap();
        let left: Vec<i64> =
            db.conn().prepare("SELECT run_id FROM runs ORDER BY run_id").unwrap().query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        assert_eq!(left, [recent, failed, other_tool, referred, run], "only {old} goes");
    }

    #[test]
    fn a_newer_schema_that_only_added_is_used_and_one_past_a_breaking_migration_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        drop(StateDb::open(&path).unwrap());
        let id = |p: &Path| Connection::open(p).unwrap().query_row("PRAGMA application_id", [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(id(&path), APPLICATION_ID | readers_from(MIGRATIONS.len()) as i64, "said by the tool that migrated it");

        // A newer tool's migration that only added: a table and a nullable column.
        let known = MIGRATIONS.len() as i64;
        let newer = Connection::open(&path).unwrap();
        newer.execute_batch("CREATE TABLE later (x INTEGER); ALTER TABLE runs ADD COLUMN later TEXT;").unwrap();
        newer.pragma_update(None, "user_version", known + 1).unwrap();
        newer.pragma_update(None, "application_id", APPLICATION_ID | 2).unwrap(); // its own floor, within ours
        drop(newer);
        let db = StateDb::open(&path).expect("a newer DB whose newer migrations only add is used");
        let run = db.begin_run("psd-extract").unwrap();
        db.finish_run(run, RunStatus::Success, 0, "landed", None, &serde_json::json!({})).unwrap();
        drop(db);
        assert_eq!(id(&path), APPLICATION_ID | 2, "an older tool leaves what the newer one said");
        let version: i64 = Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, known + 1, "nor moves its version back");

        // One past a migration tools this old cannot live with.
        Connection::open(&path).unwrap().pragma_update(None, "application_id", APPLICATION_ID | (known + 1)).unwrap();
        let err = StateDb::open(&path).unwrap_err();
        assert!(err.to_string().contains(&format!("schema version {} is newer than this tool knows", known + 1)), "{err}");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        drop(StateDb::open(&path).unwrap());
        let newer = Connection::open(&path).unwrap();
        newer.pragma_update(None, "user_version", 999).unwrap();
        newer.pragma_update(None, "application_id", 0).unwrap();
        drop(newer);
        let err = StateDb::open(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("state DB {}: schema version 999 is newer than this tool knows ({}); upgrade the tool", path.display(), MIGRATIONS.len()),
            "without the DB saying older tools can use it"
        );
    }

    /// A state DB at `path` as a tool that knew `version` migrations left it (the
    /// record of its readers included from 7 on, when tools began writing it), with `rows`.
    fn left_by_a_tool_of(path: &Path, version: usize, rows: &[&str]) {
        let mut conn = Connection::open(path).unwrap();
        let tx = conn.transaction().unwrap();
        for sql in &MIGRATIONS[..version] {
            tx.execute_batch(sql).unwrap();
        }
        tx.pragma_update(None, "user_version", version as i64).unwrap();
        if version >= 7 {
            tx.pragma_update(None, "application_id", APPLICATION_ID | 1).unwrap();
        }
        for sql in rows {
            tx.execute(sql, []).unwrap();
        }
        tx.commit().unwrap();
    }

    #[test]
    fn migration_8_leaves_a_db_the_tools_of_7_still_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        // A state DB as a tool of schema 7 left it, with a failed deploy recorded in the
        // words a tool of 7 writes it.
        let older_insert =
            "INSERT INTO deploys (run_id, tag, status, previous_tag, web_hook, detail, at) VALUES (1, 'v2', 'failed', 'v1', 0, 'build failed', 'x')";
        left_by_a_tool_of(&path, 7, &["INSERT INTO runs (tool, status, started_at, pid) VALUES ('tag-deploy', 'failed', 'x', 1)", older_insert]);

        let db = StateDb::open(&path).unwrap();
        let version: i64 = db.conn().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, 8);
        let target: Option<String> = db.conn().query_row("SELECT target FROM deploys", [], |r| r.get(0)).unwrap();
        assert_eq!(target, None, "a row from before says nothing of its commit");
        // A tool of 7 (the previous release, after a rollback) uses the DB and still writes.
        let id: i64 = db.conn().query_row("PRAGMA application_id", [], |r| r.get(0)).unwrap();
        assert!(usable_by(id, 7), "migration 8 only adds: {id:#x}");
        db.conn().execute(older_insert, []).unwrap();
        assert!(!usable_by(id & !0xFFFF | 8, 7), "a DB that said 8 was breaking would be refused");
    }

    #[test]
    fn migration_7_keeps_the_model_runs_and_allows_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        // A state DB as a tool of schema 6 left it, with a recorded model run.
        left_by_a_tool_of(
            &path,
            6,
            &[
                "INSERT INTO runs (tool, status, started_at, pid) VALUES ('lake-transform', 'success', 'x', 1)",
                "INSERT INTO model_runs VALUES (1, 'staging.psd_changes', 'build', 'new model', 5, 7)",
            ],
        );
        let db = StateDb::open(&path).unwrap();
        db.conn().execute("INSERT INTO model_runs VALUES (1, 'staging.psd_changes', 'drop', 'its model file is gone', NULL, 1)", []).unwrap();
        let rows: Vec<(String, String)> = db
            .conn()
            .prepare("SELECT model, action FROM model_runs ORDER BY action")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [("staging.psd_changes".into(), "build".into()), ("staging.psd_changes".into(), "drop".into())]);
        assert!(db.conn().execute("INSERT INTO model_runs VALUES (1, 'm', 'explode', NULL, NULL, 1)", []).is_err(), "still checked");
    }
}
