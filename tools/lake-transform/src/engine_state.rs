//! The engine's own state inside the lakehouse, schema `_materia`: each model's
//! fingerprint, rows and run (`models`, whose rows are also the lakehouse's change
//! marker for serve-export: the contract in `materia_common::lakehouse`) and the landing
//! files each ingest model has loaded (`landing_ledger`), checked on every run (landing
//! is immutable).

use std::collections::HashMap;
use std::path::Path;

use anyhow::anyhow;
use duckdb::Connection;
use materia_common::exit::Integrity;
use sha2::{Digest as _, Sha256};

use crate::model::Model;
use materia_common::landing::{LandingFile, mtime_ns};

#[derive(Debug)]
pub(crate) struct ModelState {
    pub(crate) fingerprint: String,
}

#[derive(Debug)]
pub(crate) struct LoadedFile {
    pub(crate) path: String,
    pub(crate) bytes: u64,
    pub(crate) mtime_ns: i64,
    pub(crate) sha256: String,
}

pub(crate) const STATE_DDL: &str = "
CREATE SCHEMA IF NOT EXISTS _materia;
CREATE TABLE IF NOT EXISTS _materia.models (
    name VARCHAR NOT NULL, fingerprint VARCHAR NOT NULL, kind VARCHAR NOT NULL,
    rows BIGINT, run_id BIGINT, built_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS _materia.landing_ledger (
    model VARCHAR NOT NULL, path VARCHAR NOT NULL, bytes BIGINT NOT NULL, mtime_ns BIGINT NOT NULL,
    sha256 VARCHAR NOT NULL, run_id BIGINT NOT NULL, loaded_at TIMESTAMP NOT NULL);
";

pub(crate) fn has_state(conn: &Connection) -> anyhow::Result<bool> {
    let n: i64 = conn.query_row("SELECT count(*) FROM duckdb_tables() WHERE schema_name = '_materia' AND table_name = 'models'", [], |r| r.get(0))?;
    Ok(n > 0)
}

/// Fingerprints by model, and loaded landing files by ingest model.
pub(crate) type EngineState = (HashMap<String, ModelState>, HashMap<String, Vec<LoadedFile>>);

pub(crate) fn read_state(conn: &Connection) -> anyhow::Result<EngineState> {
    let mut models = HashMap::new();
    let mut loaded: HashMap<String, Vec<LoadedFile>> = HashMap::new();
    if !has_state(conn)? {
        return Ok((models, loaded));
    }
    let mut st = conn.prepare("SELECT name, fingerprint FROM _materia.models")?;
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (name, fingerprint) = row?;
        models.insert(name, ModelState { fingerprint });
    }
    let mut st = conn.prepare("SELECT model, path, bytes, mtime_ns, sha256 FROM _materia.landing_ledger ORDER BY path")?;
    for row in
        st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?, r.get::<_, String>(4)?)))?
    {
        let (model, path, bytes, mtime_ns, sha256) = row?;
        loaded.entry(model).or_default().push(LoadedFile { path, bytes: bytes as u64, mtime_ns, sha256 });
    }
    Ok((models, loaded))
}

/// Landing is immutable: every file an ingest model loaded must still be there,
/// unchanged. Size and mtime are checked for all; the content is hashed only when
/// they differ, so this stays cheap as history grows.
pub(crate) fn check_loaded_files(loaded: &HashMap<String, Vec<LoadedFile>>, landing: &Path) -> anyhow::Result<()> {
    for (model, entries) in loaded {
        for e in entries {
            let abs = landing.join(&e.path);
            let meta = match std::fs::metadata(&abs) {
                Ok(m) => m,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Integrity(format!(
                        "landing file {} was loaded into {model} but is gone; landing is immutable: restore it, or run with --rebuild",
                        e.path
                    ))
                    .into());
                }
                Err(err) => return Err(anyhow!(err).context(format!("checking {}", abs.display()))),
            };
            if meta.len() != e.bytes || mtime_ns(&meta) != e.mtime_ns {
                let sha = sha256_file(&abs)?;
                if sha != e.sha256 {
                    return Err(Integrity(format!(
                        "landing file {} changed after it was loaded into {model}; landing is immutable: restore it, or run with --rebuild",
                        e.path
                    ))
                    .into());
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    materia_common::read_chunks(path, |chunk| h.update(chunk))?;
    Ok(materia_common::hex(&h.finalize()))
}

pub(crate) fn record_model(
    conn: &Connection,
    m: &Model,
    fp: &str,
    rows: Option<i64>,
    run_id: i64,
    loaded: &[(LandingFile, String)],
) -> anyhow::Result<()> {
    conn.execute("DELETE FROM _materia.models WHERE name = ?", [&m.name])?;
    conn.execute(
        "INSERT INTO _materia.models VALUES (?, ?, ?, ?, ?, now()::TIMESTAMP)",
        duckdb::params![m.name, fp, m.kind.to_string(), rows, run_id],
    )?;
    let mut ins = conn.prepare("INSERT INTO _materia.landing_ledger VALUES (?, ?, ?, ?, ?, ?, now()::TIMESTAMP)")?;
    for (f, sha) in loaded {
        ins.execute(duckdb::params![m.name, f.rel, f.bytes as i64, f.mtime_ns, sha, run_id])?;
    }
    Ok(())
}
