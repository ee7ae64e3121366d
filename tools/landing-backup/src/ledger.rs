//! The ledger: `backup_objects` in the state DB, what is known to be backed up where.

use std::collections::HashMap;

use materia_common::StateDb;

#[derive(Debug)]
pub(crate) struct LedgerEntry {
    pub(crate) bytes: u64,
    pub(crate) etag: Option<String>,
}

pub(crate) fn read_ledger(db: &StateDb, target: &str) -> anyhow::Result<HashMap<String, LedgerEntry>> {
    let mut st = db.conn().prepare("SELECT key, bytes, etag FROM backup_objects WHERE target = ?1").map_err(|e| db.err(e))?;
    let rows = st
        .query_map([target], |r| Ok((r.get::<_, String>(0)?, LedgerEntry { bytes: r.get::<_, i64>(1)? as u64, etag: r.get(2)? })))
        .map_err(|e| db.err(e))?;
    rows.collect::<Result<HashMap<_, _>, _>>().map_err(|e| db.err(e).into())
}

pub(crate) fn record(db: &StateDb, run_id: i64, target: &str, key: &str, rel: &str, bytes: u64, etag: Option<&str>) -> anyhow::Result<()> {
    db.conn()
        .execute(
            &format!(
                "INSERT INTO backup_objects (target, key, path, bytes, etag, run_id, backed_up_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, {})
                 ON CONFLICT (target, key) DO NOTHING",
                materia_common::state::NOW
            ),
            rusqlite::params![target, key, rel, bytes, etag, run_id],
        )
        .map_err(|e| db.err(e))?;
    Ok(())
}
