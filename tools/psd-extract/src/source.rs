//! One URL checked: the conditional GET with the stored validators, the landing of
//! what changed, and the record of what happened to it.

use std::path::Path;

use materia_common::{Month, Step};

use crate::records::{FetchOutcome, FetchRecord, save_validators, validators};
use crate::{http, land};

/// One URL to check.
#[derive(Debug)]
pub(crate) struct Source {
    pub file: String,
    pub url: String,
    pub month: Month,
    pub archive: bool,
}

/// The fetch outcome of a landing, and the landed file it concerns.
pub(crate) fn outcome_of(result: anyhow::Result<land::Landed>) -> (FetchOutcome, Option<i64>) {
    match result {
        Ok(land::Landed::New { file_id, path, bytes, rows }) => {
            log::info!("landed {path} ({rows} rows, {bytes} bytes)");
            (FetchOutcome::Landed { bytes, path }, Some(file_id))
        }
        Ok(land::Landed::Duplicate { file_id, path }) => {
            log::info!("same content as {path}: not landed again");
            (FetchOutcome::Duplicate, Some(file_id))
        }
        Err(e) => (FetchOutcome::Failed(e), None),
    }
}

pub(crate) fn fetch_one(
    step: &Step,
    landing: &Path,
    client: &reqwest::blocking::Client,
    policy: &http::RetryPolicy,
    src: &Source,
    bar: &materia_common::ProgressBar,
    max_csv_bytes: u64,
) -> FetchRecord {
    let known = match validators(&step.db, &src.url) {
        Ok(v) => v,
        Err(e) => {
            let outcome = FetchOutcome::Failed(e);
            return FetchRecord { outcome, status: None, attempts: 0, bytes: None, file_id: None };
        }
    };
    let res = http::fetch(client, &src.url, &known, policy, landing, bar);
    let mut rec = FetchRecord { outcome: FetchOutcome::NotModified, status: res.status, attempts: res.attempts, bytes: None, file_id: None };
    rec.outcome = match res.result {
        Err(e) => FetchOutcome::Failed(e),
        Ok(http::Fetched::NotModified) => {
            log::info!("{}: not modified", src.url);
            if let Err(e) = save_validators(&step.db, &src.url, &known) { FetchOutcome::Failed(e) } else { FetchOutcome::NotModified }
        }
        Ok(http::Fetched::NotFound) if src.archive => {
            log::debug!("{}: not released (404)", src.url);
            FetchOutcome::NotReleased
        }
        Ok(http::Fetched::NotFound) => FetchOutcome::Failed(anyhow::anyhow!("server answered HTTP 404 Not Found")),
        Ok(http::Fetched::Body { file, bytes, validators }) => {
            rec.bytes = Some(bytes);
            let origin = land::Origin {
                source: &src.file,
                source_url: &src.url,
                month: src.month,
                etag: validators.etag.as_deref(),
                last_modified: validators.last_modified.as_deref(),
            };
            let (outcome, file_id) = outcome_of(land::land_zip(&step.db, landing, step.run_id, file, &origin, max_csv_bytes));
            rec.file_id = file_id;
            match outcome {
                FetchOutcome::Failed(_) => outcome,
                ok => match save_validators(&step.db, &src.url, &validators) {
                    Ok(()) => ok,
                    Err(e) => FetchOutcome::Failed(e),
                },
            }
        }
    };
    rec
}
