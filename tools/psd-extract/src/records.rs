//! What psd-extract keeps in the state DB: each URL's outcome (`fetches`), the HTTP
//! validators for conditional GETs (`http_validators`), and which archive months are
//! landed already (never asked again).

use materia_common::StateDb;
use rusqlite::{OptionalExtension as _, params};

use crate::http;

#[derive(Debug)]
pub(crate) enum FetchOutcome {
    Landed { bytes: u64, path: String },
    Duplicate,
    NotModified,
    NotReleased,
    Failed(anyhow::Error),
}

#[derive(Debug)]
pub(crate) struct FetchRecord {
    pub(crate) outcome: FetchOutcome,
    pub(crate) status: Option<u16>,
    pub(crate) attempts: u32,
    pub(crate) bytes: Option<u64>,
    pub(crate) file_id: Option<i64>,
}

pub(crate) fn archive_done(db: &StateDb, url: &str) -> anyhow::Result<bool> {
    Ok(db
        .conn()
        .query_row("SELECT 1 FROM fetches WHERE url = ?1 AND outcome IN ('landed', 'duplicate') LIMIT 1", params![url], |_| Ok(()))
        .optional()
        .map_err(|e| db.err(e))?
        .is_some())
}

pub(crate) fn validators(db: &StateDb, url: &str) -> anyhow::Result<http::Validators> {
    Ok(db
        .conn()
        .query_row("SELECT etag, last_modified FROM http_validators WHERE url = ?1", params![url], |r| {
            Ok(http::Validators { etag: r.get(0)?, last_modified: r.get(1)? })
        })
        .optional()
        .map_err(|e| db.err(e))?
        .unwrap_or_default())
}

pub(crate) fn save_validators(db: &StateDb, url: &str, v: &http::Validators) -> anyhow::Result<()> {
    db.conn()
        .execute(
            &format!(
                "INSERT INTO http_validators (url, etag, last_modified, updated_at) VALUES (?1, ?2, ?3, {now})
                 ON CONFLICT (url) DO UPDATE SET etag = ?2, last_modified = ?3, updated_at = {now}",
                now = materia_common::state::NOW
            ),
            params![url, v.etag, v.last_modified],
        )
        .map_err(|e| db.err(e))?;
    Ok(())
}

pub(crate) fn record_fetch(db: &StateDb, run_id: i64, url: &str, rec: &FetchRecord) -> anyhow::Result<()> {
    let (outcome, detail) = match &rec.outcome {
        FetchOutcome::Landed { path, .. } => ("landed", Some(path.clone())),
        FetchOutcome::Duplicate => ("duplicate", None),
        FetchOutcome::NotModified => ("not_modified", None),
        FetchOutcome::NotReleased => ("not_released", None),
        FetchOutcome::Failed(e) => ("failed", Some(materia_common::exit::one_line(e))),
    };
    db.conn()
        .execute(
            &format!(
                "INSERT INTO fetches (run_id, url, outcome, http_status, attempts, bytes, file_id, detail, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, {})",
                materia_common::state::NOW
            ),
            params![run_id, url, outcome, rec.status, rec.attempts, rec.bytes, rec.file_id, detail],
        )
        .map_err(|e| db.err(e))?;
    Ok(())
}
