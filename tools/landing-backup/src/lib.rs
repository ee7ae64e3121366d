//! landing-backup: copy the landing zone to Cloudflare R2 (S3 API) or a local folder.
//!
//! The landing zone is immutable and content-addressed; so is its backup. A run walks
//! `landing/` (hidden files, i.e. the state DB and temp files, excluded) and uploads the
//! files its ledger (state DB `backup_objects`) does not list: when the ledger proves
//! nothing is new, no request is made at all; otherwise one LIST of the prefix tells
//! what the remote already has. Nothing remote is ever deleted or overwritten: single
//! uploads are conditional (`If-None-Match: *`), and a remote object that differs from
//! the local file is an integrity alert, not an upload. A file is recorded only after
//! the server confirmed what it stored: the ETag in its answer equals the one computed
//! locally (the MD5, or for multipart uploads with fixed parts the MD5 of the parts'
//! MD5s and `-N`), or, when the answer has none, a HEAD shows that size and ETag. `--verify` lists everything and checks every ledger entry and every
//! landing file, repairing what is missing. Requests are counted by kind at the HTTP
//! transport, retries included, and reported.
//!
//! The state DB is not a landing file (it changes on every run of every tool): with
//! `--state-snapshot`, the first run of each UTC day also uploads a consistent copy of
//! it (`VACUUM INTO`, gzipped) as `PREFIX.state/state-YYYY-MM-DD.sqlite.gz`, a new
//! immutable object a day, recorded in the ledger like the landing files.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use materia_common::exit::{Integrity, Usage};
use materia_common::layout;
use materia_common::{CommonArgs, Outcome, Report};

use ledger::{read_ledger, record};
use materia_common::landing::LandingFile;
use snapshot::{STATE_DIR, snapshot_state};
use target::{Counts, Remote, Target, list_remote, operator};
use upload::{Cfg, Done, back_up};

mod etag;
mod ledger;
mod restore;
mod snapshot;
mod target;
mod upload;

/// The tool's name: binary, step lock and `runs.tool`.
pub const TOOL: &str = "landing-backup";

/// Default key prefix in the bucket.
pub const DEFAULT_PREFIX: &str = "backup/materia/landing/";

/// Copy the landing zone to R2 (S3) or a local folder: copy-only, verified.
///
/// Exit codes: 0 uploaded something, 3 nothing new, 1 an upload failed (it is not
/// recorded; the next run retries), 2 bad flags or missing credentials, 4 already
/// running, 6 a remote object differs from the local file (integrity alert).
#[derive(Debug, Parser)]
#[command(name = TOOL, version)]
pub struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Where to: s3://BUCKET[/PREFIX] (R2; prefix default backup/materia/landing/) or
    /// fs:/PATH. s3 needs R2_ENDPOINT, R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY.
    #[arg(long, global = true, value_name = "URL", env = layout::ENV_BACKUP_TARGET)]
    target: Option<String>,

    #[command(subcommand)]
    command: Option<Command>,

    /// List the whole remote prefix and check every ledger entry and landing file
    /// (size and checksum), uploading what is missing.
    #[arg(long)]
    verify: bool,

    /// Uploads at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    concurrency: usize,

    /// Files of at least this many bytes go up in multipart uploads.
    #[arg(long, global = true, value_name = "BYTES", default_value_t = 64 << 20)]
    multipart_threshold: u64,

    /// Multipart part size in bytes; every part but the last has exactly this size (R2
    /// requires equal parts), 5 MiB to 5 GiB. A restore checks multipart objects with it.
    #[arg(long, global = true, value_name = "BYTES", default_value_t = 16 << 20)]
    part_size: u64,

    /// Seconds a request may take before it is abandoned (and retried).
    #[arg(long, global = true, value_name = "SECS", default_value_t = 60)]
    timeout: u64,

    /// Retries per request after errors the service reports as temporary.
    #[arg(long, global = true, value_name = "N", default_value_t = 4)]
    retries: usize,

    /// Also upload a snapshot of the state DB, once a UTC day, as
    /// PREFIX.state/state-YYYY-MM-DD.sqlite.gz (never overwritten: expire old ones with a
    /// bucket lifecycle rule on that prefix).
    #[arg(long)]
    state_snapshot: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Rebuild the landing dir (and the state DB) from the backup, into an empty data
    /// dir: every object checked as it arrives, nothing half-restored, resumable.
    Restore(restore::RestoreArgs),
}

/// Run the tool.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    materia_common::init_logging(&cli.common);
    let url = cli.target.as_deref().ok_or_else(|| Usage(format!("no target: set --target or {}", layout::ENV_BACKUP_TARGET)))?;
    let target = Target::parse(url, |v| std::env::var(v).ok())?;
    if cli.part_size < 5 << 20 || cli.part_size > 5 << 30 {
        return Err(Usage("--part-size must be between 5 MiB and 5 GiB (R2 and S3 limits)".into()).into());
    }
    if let Some(Command::Restore(args)) = &cli.command {
        let tuning = restore::Tuning {
            threshold: cli.multipart_threshold,
            part: cli.part_size,
            timeout: Duration::from_secs(cli.timeout),
            retries: cli.retries,
        };
        return restore::restore(&cli.common, &target, args, tuning);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    materia_common::run_step(TOOL, &cli.common, |step| rt.block_on(backup(step, &cli, &target)))
}

async fn backup(step: &mut materia_common::Step, cli: &Cli, target: &Target) -> anyhow::Result<Report> {
    let counts = Arc::new(Counts::default());
    let op = operator(target, counts.clone(), Duration::from_secs(cli.timeout), cli.retries)?;
    let cfg = Cfg { threshold: cli.multipart_threshold, part: cli.part_size, if_not_exists: op.info().capability().write_with_if_not_exists };
    let target_id = target.to_string();
    let files = materia_common::landing::files(&step.layout.landing())?;
    let ledger = read_ledger(&step.db, &target_id)?;
    let key_of = |f: &LandingFile| format!("{}{}", target.prefix(), f.rel);

    // What needs a look: new files (normal run), or everything (--verify).
    let todo: Vec<&LandingFile> = files.iter().filter(|f| cli.verify || !ledger.contains_key(&key_of(f))).collect();
    let mut alerts: Vec<String> = Vec::new();
    let listed = !todo.is_empty() || cli.verify;
    // One listing pass: what the remote already has under the prefix.
    let remote: HashMap<String, Remote> = if listed { list_remote(&op, target, cfg.threshold, cfg.part).await? } else { HashMap::new() };
    if cli.verify {
        let local: HashMap<String, &LandingFile> = files.iter().map(|f| (key_of(f), f)).collect();
        for (key, entry) in &ledger {
            match remote.get(key) {
                Some(r) if r.bytes != entry.bytes || r.etag.is_some() && entry.etag.is_some() && r.etag != entry.etag => {
                    alerts.push(format!("remote {key} changed since it was backed up ({} bytes now, {} recorded)", r.bytes, entry.bytes));
                }
                Some(_) => {}
                None if local.contains_key(key) => log::warn!("{key} is missing from the backup: uploading it again"),
                None if key.starts_with(&format!("{}{STATE_DIR}", target.prefix())) => {
                    alerts.push(format!("the state DB snapshot {key} is gone from the backup"));
                }
                None => alerts.push(format!("{key} is gone from both the backup and the landing zone")),
            }
        }
    }

    let bar = materia_common::progress_bar(Some(todo.len() as u64), "[{elapsed}] {bar:30} {pos}/{len} {msg}");
    let sem = Arc::new(tokio::sync::Semaphore::new(cli.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for f in &todo {
        let key = key_of(f);
        let known = remote.get(&key).cloned();
        let (op, cfg, file, sem) = (op.clone(), cfg.clone(), (*f).clone(), sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let bytes = file.bytes;
            let rel = file.rel.clone();
            (key.clone(), rel, bytes, back_up(op, key, file, known, cfg).await)
        });
    }
    let (mut uploaded, mut adopted, mut bytes_up, mut failed) = (0u64, 0u64, 0u64, Vec::new());
    while let Some(joined) = tasks.join_next().await {
        let (key, rel, bytes, done) = joined.context("an upload task panicked")?;
        bar.inc(1);
        match done {
            Done::Uploaded { etag } => {
                uploaded += 1;
                bytes_up += bytes;
                log::info!("backed up {rel} ({bytes} bytes)");
                record(&step.db, step.run_id, &target_id, &key, &rel, bytes, etag.as_deref())?;
            }
            Done::Adopted { etag } => {
                adopted += 1;
                if !ledger.contains_key(&key) {
                    log::info!("{key} was already in the backup: recorded");
                    record(&step.db, step.run_id, &target_id, &key, &rel, bytes, etag.as_deref())?;
                }
            }
            Done::Alert(msg) => alerts.push(msg),
            Done::Failed(e) => {
                log::error!("{}", materia_common::exit::one_line(&e));
                failed.push(e);
            }
        }
    }
    bar.finish_and_clear();

    let mut snapshot = None;
    if cli.state_snapshot {
        match snapshot_state(step, &op, &cfg, target, &ledger).await? {
            Some((Done::Uploaded { etag } | Done::Adopted { etag }, file)) => {
                log::info!("backed up the state DB as {} ({} bytes)", file.rel, file.bytes);
                record(&step.db, step.run_id, &target_id, &key_of(&file), &file.rel, file.bytes, etag.as_deref())?;
                uploaded += 1;
                bytes_up += file.bytes;
                snapshot = Some(file.rel);
            }
            // The day's key holds another snapshot (a restored or copied state DB): it
            // stays; tomorrow's key is new.
            Some((Done::Alert(msg), _)) => log::warn!("{msg}"),
            Some((Done::Failed(e), _)) => {
                log::error!("{}", materia_common::exit::one_line(&e));
                failed.push(e);
            }
            None => {}
        }
    }

    let requests = counts.snapshot();
    let req_line = ["LIST", "PUT", "HEAD", "GET", "DELETE"]
        .iter()
        .map(|k| format!("{k} {}", requests.get(k).copied().unwrap_or(0)))
        .chain(std::iter::once(format!("multipart {}", requests.iter().filter(|(k, _)| k.starts_with("multipart")).map(|(_, v)| v).sum::<u64>())))
        .collect::<Vec<_>>()
        .join(", ");
    let summary = format!(
        "{} files, {} already backed up; uploaded {uploaded} ({bytes_up} bytes), recorded {} found remote, {} alerts, {} failed; requests: {req_line}",
        files.len(),
        files.len() - todo.len(),
        adopted.saturating_sub(if cli.verify { ledger.len() as u64 } else { 0 }),
        alerts.len(),
        failed.len()
    );
    log::info!("{summary}");
    let stats = serde_json::json!({
        "files": files.len(), "uploaded": uploaded, "uploaded_bytes": bytes_up, "adopted": adopted,
        "alerts": alerts.len(), "failed": failed.len(), "listed": listed, "verify": cli.verify,
        "state_snapshot": snapshot,
        "requests": requests,
    });
    for a in &alerts {
        log::error!("integrity alert: {a}");
    }
    let failure = if let Some(first) = alerts.first() {
        Some(anyhow::Error::new(Integrity(format!("{} integrity alert(s); the first: {first}", alerts.len()))))
    } else {
        failed.into_iter().next()
    };
    let outcome = if uploaded > 0 || adopted > 0 && !cli.verify { Outcome::Changed } else { Outcome::Unchanged };
    Ok(Report { outcome, summary, stats, failure })
}

#[cfg(test)]
mod cli_tests {
    #[test]
    fn the_flags_are_sound() {
        // clap checks the whole command definition (names, conflicts, defaults).
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
