//! Landed files an operator set aside: `lake-transform quarantine FILE --reason …`
//! leaves a file out of every run and rebuild (landing stays immutable: the file stays
//! where it is), `--undo` takes it back. Kept in the state DB table `quarantine`, with
//! who, when and why; materia-status reads it too.

use std::collections::BTreeMap;
use std::path::Path;

use materia_common::exit::Usage;
use materia_common::layout::Layout;
use materia_common::{CommonArgs, Outcome, Report, StateDb};

/// `lake-transform quarantine [FILE --reason TEXT | --undo FILE]`: list the files set
/// aside, or set one aside or take it back (recorded as a run of the tool).
pub(crate) fn command(common: &CommonArgs, file: Option<&str>, reason: Option<&str>, undo: bool) -> anyhow::Result<Outcome> {
    let layout = common.layout();
    let Some(file) = file else {
        if !layout.state_db().exists() {
            return Ok(Outcome::Unchanged);
        }
        let db = StateDb::open_read_only(layout.state_db())?;
        for (path, e) in active(&db)? {
            println!("{path}\t{}\t{}\t{}", e.at, e.by, e.reason);
        }
        return Ok(Outcome::Changed);
    };
    if !undo && reason.is_none_or(|r| r.trim().is_empty()) {
        return Err(Usage("quarantine FILE needs --reason TEXT (recorded with who and when)".into()).into());
    }
    let landing = std::path::absolute(layout.landing())?;
    let rel = landing_path(&landing, file)?;
    if !undo && !landing.join(&rel).is_file() {
        return Err(Usage(format!("{rel} is not a file in {}", landing.display())).into());
    }
    let by = who();
    let reason = reason.unwrap_or("").to_owned();
    // Under the transform's lock: a run sees the file in or out, never half.
    materia_common::run_step(crate::TOOL, common, |step| {
        let (done, summary) = if undo {
            let done = release(&step.db, &rel, &reason, &by)?;
            (done, if done { format!("{rel} taken back by {by}: the next run loads it") } else { format!("{rel} was not quarantined") })
        } else {
            let done = add(&step.db, &rel, &reason, &by, step.run_id)?;
            (done, if done { format!("{rel} quarantined by {by}: {reason}") } else { format!("{rel} is quarantined already") })
        };
        log::info!("{summary}");
        let outcome = if done { Outcome::Changed } else { Outcome::Unchanged };
        Ok(Report { outcome, summary, stats: serde_json::json!({"file": rel, "undo": undo}), failure: None })
    })
}

/// The files set aside, from the state DB (none when it does not exist yet).
pub(crate) fn listed(layout: &Layout) -> anyhow::Result<BTreeMap<String, Entry>> {
    if !layout.state_db().exists() {
        return Ok(Default::default());
    }
    active(&StateDb::open_read_only(layout.state_db())?)
}

/// A file set aside.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Why.
    pub reason: String,
    /// Who (the operator's login name).
    pub by: String,
    /// When (UTC).
    pub at: String,
}

/// The files set aside now, by path relative to the landing dir.
pub fn active(db: &StateDb) -> anyhow::Result<BTreeMap<String, Entry>> {
    // A state DB that no tool of this version has opened yet has no such table: none.
    let exists: bool = db
        .conn()
        .query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'quarantine'", [], |r| r.get(0))
        .map_err(|e| db.err(e))?;
    if !exists {
        return Ok(BTreeMap::new());
    }
    let mut st = db
        .conn()
        .prepare("SELECT path, reason, quarantined_by, quarantined_at FROM quarantine WHERE released_at IS NULL ORDER BY path")
        .map_err(|e| db.err(e))?;
    let rows =
        st.query_map([], |r| Ok((r.get::<_, String>(0)?, Entry { reason: r.get(1)?, by: r.get(2)?, at: r.get(3)? }))).map_err(|e| db.err(e))?;
    Ok(rows.collect::<Result<_, _>>().map_err(|e| db.err(e))?)
}

/// `file` as a path relative to `landing`: given relative to it or as an absolute path
/// inside it; it must be a landed file (not hidden, no `..`).
pub fn landing_path(landing: &Path, file: &str) -> anyhow::Result<String> {
    let p = Path::new(file);
    let rel = match p.strip_prefix(landing) {
        Ok(r) => r,
        Err(_) if p.is_absolute() => return Err(Usage(format!("{file} is not in the landing dir {}", landing.display())).into()),
        Err(_) => p,
    };
    let ok = rel.components().all(|c| matches!(c, std::path::Component::Normal(n) if !n.to_string_lossy().starts_with('.')));
    let rel = rel.to_str().filter(|_| ok).ok_or_else(|| Usage(format!("{file}: expected a landed file such as psd/2024/01/x.csv.gzip")))?;
    Ok(rel.to_owned())
}

/// Who runs this: the operator behind sudo, else the login name.
pub fn who() -> String {
    ["SUDO_USER", "USER", "LOGNAME"].iter().find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty())).unwrap_or_else(|| "unknown".into())
}

/// Set `path` aside.
pub fn add(db: &StateDb, path: &str, reason: &str, by: &str, run_id: i64) -> anyhow::Result<bool> {
    let n = db
        .conn()
        .execute(
            &format!(
                "INSERT INTO quarantine (path, reason, quarantined_by, quarantined_at, run_id) VALUES (?1, ?2, ?3, {}, ?4)
                 ON CONFLICT DO NOTHING",
                materia_common::state::NOW
            ),
            rusqlite::params![path, reason, by, run_id],
        )
        .map_err(|e| db.err(e))?;
    Ok(n > 0)
}

/// Take `path` back; false if it was not set aside.
pub fn release(db: &StateDb, path: &str, reason: &str, by: &str) -> anyhow::Result<bool> {
    let n = db
        .conn()
        .execute(
            &format!(
                "UPDATE quarantine SET released_by = ?2, released_at = {}, release_reason = ?3 WHERE path = ?1 AND released_at IS NULL",
                materia_common::state::NOW
            ),
            rusqlite::params![path, by, reason],
        )
        .map_err(|e| db.err(e))?;
    Ok(n > 0)
}
