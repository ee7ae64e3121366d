//! `landing-backup restore`: a data dir rebuilt from the backup alone (a new server).
//!
//! It lists the backup, restores the newest state DB snapshot (or `--snapshot DATE`)
//! as `landing/.state.sqlite`, then every landing file that is not there yet. Each
//! object streams into a hidden temp file beside its final name while its S3 ETag
//! (and, for a landing file the snapshot knows, the sha256 of its CSV) is computed;
//! only a file whose size and checksums match is published, by a no-clobber link. So
//! nothing is ever half-restored under a final name, memory stays at one chunk per
//! transfer, and a rerun after a kill fetches only what is missing. Restored objects
//! are recorded in the ledger, so the next backup uploads nothing.
//!
//! A landing dir that already holds files or a state DB is refused unless
//! `--into-existing` (then only what is missing is added; nothing is ever overwritten)
//! or it is this restore's own, unfinished (`landing/.restore-in-progress`).
//!
//! Why this long: the restore is one careful sequence (snapshot, list, stream, verify, publish, record) whose invariants are easier to check in one file.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Component, Path};
use std::sync::Arc;

use anyhow::{Context as _, anyhow};
use materia_common::atomic::AtomicFile;
use materia_common::exit::{Integrity, Usage};
use materia_common::lock::Lock;
use materia_common::{CommonArgs, Layout, Outcome, Report, StateDb};
use opendal::Operator;
use sha2::Digest as _;

use crate::etag::EtagHasher;
use crate::ledger::{read_ledger, record};
use crate::snapshot::STATE_DIR;
use crate::target::{Counts, Remote, Target, list_remote, operator};

/// Restore's options.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// The state DB snapshot to restore, by its day [default: the newest].
    #[arg(long, value_name = "YYYY-MM-DD")]
    snapshot: Option<String>,

    /// Add what is missing to a landing dir that already holds files (nothing is
    /// overwritten; an existing state DB is kept).
    #[arg(long)]
    into_existing: bool,

    /// List what would be fetched, and the bytes; fetch nothing.
    #[arg(long)]
    dry_run: bool,

    /// Transfers at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    concurrency: usize,
}

/// How transfers are tuned (from the common flags).
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub threshold: u64,
    pub part: u64,
    pub timeout: std::time::Duration,
    pub retries: usize,
}

/// The marker of an unfinished restore in the landing dir.
const IN_PROGRESS: &str = ".restore-in-progress";
/// The state DB's name in the landing dir.
const STATE_DB: &str = ".state.sqlite";
/// Bytes read per request while streaming an object.
const CHUNK: u64 = 8 << 20;

/// A backup object to bring back.
#[derive(Debug, Clone)]
struct Wanted {
    key: String,
    /// Relative to the landing dir.
    rel: String,
    remote: Remote,
}

pub fn restore(common: &CommonArgs, target: &Target, args: &RestoreArgs, tuning: Tuning) -> anyhow::Result<Outcome> {
    let layout = common.layout();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let counts = Arc::new(Counts::default());
    let op = operator(target, counts.clone(), tuning.timeout, tuning.retries)?;
    let remote = rt.block_on(list_remote(&op, target, tuning.threshold, tuning.part))?;
    let (files, snapshots) = classify(target, &remote);
    let snapshot = match &args.snapshot {
        Some(day) => Some(
            snapshots
                .get(day)
                .cloned()
                .ok_or_else(|| Usage(format!("no state DB snapshot of {day} in {target} (there are: {})", days(&snapshots))))?,
        ),
        None => snapshots.values().next_back().cloned(),
    };

    let landing = layout.landing();
    let local: std::collections::HashSet<String> = materia_common::landing::files(&landing)?.into_iter().map(|f| f.rel).collect();
    let mut state_here = layout.state_db().exists();
    let resuming = landing.join(IN_PROGRESS).exists();
    // A new server's state DB (bootstrap's first deploy made it; nothing landed or
    // backed up in it) does not stop a restore: it is set aside, kept, and the backup's
    // takes its place.
    if state_here && local.is_empty() && !resuming && !args.into_existing && !args.dry_run && is_new(layout.state_db())? {
        let aside = landing.join(format!(".state.sqlite.before-restore-{}", std::process::id()));
        for suffix in ["", "-wal", "-shm"] {
            let from = std::path::PathBuf::from(format!("{}{suffix}", layout.state_db().display()));
            if from.exists() {
                std::fs::rename(&from, format!("{}{suffix}", aside.display())).with_context(|| format!("setting {} aside", from.display()))?;
            }
        }
        log::warn!("set this server's new state DB aside as {} (nothing was landed or backed up in it)", aside.display());
        state_here = false;
    }
    if !args.into_existing && !resuming && (!local.is_empty() || state_here) {
        return Err(Usage(format!(
            "{} already holds {} landing file(s){}: restore into an empty data dir, or add only what is missing with --into-existing",
            landing.display(),
            local.len(),
            if state_here { " and a state DB" } else { "" }
        ))
        .into());
    }
    let todo: Vec<Wanted> = files.into_iter().filter(|w| !local.contains(&w.rel)).collect();
    let restore_state = snapshot.as_ref().filter(|_| !state_here);
    let bytes: u64 = todo.iter().map(|w| w.remote.bytes).sum::<u64>() + restore_state.map_or(0, |s| s.remote.bytes);

    if args.dry_run {
        if let Some(s) = restore_state {
            println!("{}\t{}\tstate DB", s.key, s.remote.bytes);
        }
        for w in &todo {
            println!("{}\t{}", w.key, w.remote.bytes);
        }
        log::info!("would fetch {} object(s), {bytes} bytes, from {target}", todo.len() + usize::from(restore_state.is_some()));
        return Ok(if bytes == 0 && todo.is_empty() { Outcome::Unchanged } else { Outcome::Changed });
    }

    std::fs::create_dir_all(&landing).with_context(|| format!("creating {}", landing.display()))?;
    // No landing while files come back, no other backup or restore.
    let _psd_extract = Lock::acquire(&layout.step_lock("psd-extract"), std::time::Duration::from_secs(common.wait_lock))?;
    std::fs::write(landing.join(IN_PROGRESS), b"")?;
    // What a killed restore left half-written (hidden temp files), swept under the lock.
    let swept = materia_common::atomic::remove_stale_temps(&landing).with_context(|| format!("clearing temp files in {}", landing.display()))?;
    if swept > 0 {
        log::warn!("removed {swept} temp file(s) left by an interrupted restore");
    }
    // The state DB first: the run is recorded in it, beside the old runs it brings back.
    if let Some(s) = restore_state {
        let _lock = Lock::acquire(&layout.step_lock(crate::TOOL), std::time::Duration::from_secs(common.wait_lock))?;
        rt.block_on(restore_state_db(&op, s, &layout, &tuning)).with_context(|| format!("restoring the state DB from {}", s.key))?;
        log::info!("restored the state DB from {}", s.key);
    } else if snapshot.is_none() && !state_here {
        log::warn!("{target} holds no state DB snapshot: the runs and records before it are not restored");
    }

    let target_id = target.to_string();
    let outcome = materia_common::run_step(crate::TOOL, common, |step| {
        rt.block_on(restore_files(step, &op, &target_id, &todo, &tuning, args.concurrency, bytes, restore_state.is_some()))
    });
    if outcome.is_ok() {
        std::fs::remove_file(landing.join(IN_PROGRESS))?;
    }
    let requests = counts.snapshot();
    log::debug!("requests: {requests:?}");
    outcome
}

/// The backup's landing objects (sorted) and state snapshots (by day).
fn classify(target: &Target, remote: &HashMap<String, Remote>) -> (Vec<Wanted>, BTreeMap<String, Wanted>) {
    let prefix = target.prefix();
    let mut files = Vec::new();
    let mut snapshots = BTreeMap::new();
    for (key, r) in remote {
        let Some(rel) = key.strip_prefix(prefix) else { continue };
        if let Some(name) = rel.strip_prefix(STATE_DIR) {
            if let Some(day) = name.strip_prefix("state-").and_then(|n| n.strip_suffix(".sqlite.gz")).filter(|d| is_day(d)) {
                snapshots.insert(day.to_owned(), Wanted { key: key.clone(), rel: STATE_DB.into(), remote: r.clone() });
            }
            continue;
        }
        // A key that would leave the landing dir, or land as a hidden file, is never used.
        if !safe_rel(rel) {
            log::warn!("skipping {key}: not a landing file name");
            continue;
        }
        files.push(Wanted { key: key.clone(), rel: rel.to_owned(), remote: r.clone() });
    }
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    (files, snapshots)
}

/// A state DB in which nothing was ever landed or backed up (a new server's).
fn is_new(path: &Path) -> anyhow::Result<bool> {
    let db = StateDb::open_read_only(path)?;
    let count = |table: &str| -> anyhow::Result<i64> {
        let exists: bool = db
            .conn()
            .query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1", [table], |r| r.get(0))
            .map_err(|e| db.err(e))?;
        if !exists {
            return Ok(0);
        }
        Ok(db.conn().query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).map_err(|e| db.err(e))?)
    };
    Ok(count("landed_files")? + count("backup_objects")? == 0)
}

fn is_day(d: &str) -> bool {
    d.len() == 10 && d.bytes().enumerate().all(|(i, b)| if i == 4 || i == 7 { b == b'-' } else { b.is_ascii_digit() })
}

fn days(snapshots: &BTreeMap<String, Wanted>) -> String {
    if snapshots.is_empty() { "none".into() } else { snapshots.keys().cloned().collect::<Vec<_>>().join(", ") }
}

fn safe_rel(rel: &str) -> bool {
    !rel.is_empty() && Path::new(rel).components().all(|c| matches!(c, Component::Normal(n) if !n.to_string_lossy().starts_with('.')))
}

/// Fetch `w.key` into a hidden temp file in `dir`, checking it as it streams; returns
/// the file (not yet published) and the sha256 of what `inflate` says the content is
/// (the gunzipped CSV of a landing file), if asked.
async fn fetch(
    op: &Operator,
    w: &Wanted,
    want_etag: Option<&str>,
    dir: &Path,
    tuning: &Tuning,
    mut sink: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<AtomicFile> {
    let name = Path::new(&w.rel).file_name().and_then(|n| n.to_str()).unwrap_or("object").to_owned();
    let mut out = AtomicFile::create_in(dir, &name)?;
    let reader = op.reader(&w.key).await.with_context(|| format!("reading {}", w.key))?;
    let mut etag = EtagHasher::new(tuning.threshold, tuning.part);
    let mut at = 0u64;
    while at < w.remote.bytes {
        let end = (at + CHUNK).min(w.remote.bytes);
        let buf = reader.read(at..end).await.with_context(|| format!("reading {} at byte {at}", w.key))?;
        if buf.is_empty() {
            break;
        }
        for chunk in buf {
            etag.update(&chunk);
            sink(&chunk)?;
            out.file().write_all(&chunk).with_context(|| format!("writing {}", dir.join(&name).display()))?;
            at += chunk.len() as u64;
        }
    }
    if at != w.remote.bytes {
        return Err(Integrity(format!("{}: got {at} bytes, the backup lists {}", w.key, w.remote.bytes)).into());
    }
    let got = etag.finish();
    if let Some(want) = want_etag
        && want != got
    {
        return Err(Integrity(format!(
            "{}: its content does not match its record (ETag {want} expected, {got} received; a multipart object is checked with --part-size, which must be the backup's)",
            w.key
        ))
        .into());
    }
    Ok(out)
}

/// The snapshot, gunzipped into `landing/.state.sqlite` once it checks out (ETag, a
/// complete gzip, SQLite's integrity check).
async fn restore_state_db(op: &Operator, s: &Wanted, layout: &Layout, tuning: &Tuning) -> anyhow::Result<()> {
    let landing = layout.landing();
    let gz = fetch(op, s, s.remote.etag.as_deref(), &landing, tuning, |_| Ok(())).await?;
    let tmp = tempfile::tempdir_in(&landing).context("creating a temp dir in the landing dir")?;
    let db_path = tmp.path().join("state.sqlite");
    {
        let mut gz = gz;
        use std::io::Seek as _;
        gz.file().rewind()?;
        let mut dec = flate2::read::GzDecoder::new(std::io::BufReader::new(gz.file().try_clone()?));
        let mut out = std::fs::File::create(&db_path)?;
        std::io::copy(&mut dec, &mut out).map_err(|e| Integrity(format!("{}: not a complete gzip: {e}", s.key)))?;
        out.sync_all()?;
    }
    let ok: String = rusqlite::Connection::open(&db_path)
        .and_then(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get(0)))
        .map_err(|e| Integrity(format!("{}: not a SQLite database: {e}", s.key)))?;
    if ok != "ok" {
        return Err(Integrity(format!("{}: SQLite's integrity check says {ok}", s.key)).into());
    }
    let mut db = AtomicFile::create_in(&landing, "state")?;
    std::io::copy(&mut std::fs::File::open(&db_path)?, db.file())?;
    if !db.commit_new(STATE_DB)? {
        anyhow::bail!("{} appeared while restoring it: not overwritten", layout.state_db().display());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn restore_files(
    step: &mut materia_common::Step,
    op: &Operator,
    target_id: &str,
    todo: &[Wanted],
    tuning: &Tuning,
    concurrency: usize,
    bytes: u64,
    state_restored: bool,
) -> anyhow::Result<Report> {
    let ledger = read_ledger(&step.db, target_id)?;
    // What the restored state DB knows of each landed file: the sha256 of its CSV.
    let known_sha: HashMap<String, String> = landed_sha(&step.db)?;
    let landing = step.layout.landing();
    let bar = materia_common::progress_bar(Some(bytes), "[{elapsed}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {msg}");
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for w in todo.iter().cloned() {
        let (op, sem, landing, sha) = (op.clone(), sem.clone(), landing.clone(), known_sha.get(&w.rel).cloned());
        let tuning = *tuning;
        // What the object must be: as recorded when it was backed up (the ledger), else
        // as the backup lists it.
        let recorded = ledger.get(&w.key).map(|e| (e.bytes, e.etag.clone()));
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let res = match recorded {
                Some((bytes, _)) if bytes != w.remote.bytes => {
                    Err(Integrity(format!("{}: {} bytes in the backup, {bytes} recorded when it was backed up", w.key, w.remote.bytes)).into())
                }
                _ => {
                    let etag = recorded.and_then(|(_, e)| e).or_else(|| w.remote.etag.clone());
                    restore_one(&op, &w, etag.as_deref(), &landing, &tuning, sha.as_deref()).await
                }
            };
            (w, res)
        });
    }
    let (mut restored, mut restored_bytes, mut alerts, mut failed) = (0u64, 0u64, Vec::new(), Vec::new());
    while let Some(joined) = tasks.join_next().await {
        let (w, res) = joined.context("a restore task panicked")?;
        bar.inc(w.remote.bytes);
        match res {
            Ok(()) => {
                restored += 1;
                restored_bytes += w.remote.bytes;
                log::info!("restored {} ({} bytes)", w.rel, w.remote.bytes);
                if !ledger.contains_key(&w.key) {
                    record(&step.db, step.run_id, target_id, &w.key, &w.rel, w.remote.bytes, w.remote.etag.as_deref())?;
                }
            }
            Err(e) if e.chain().any(|c| c.is::<Integrity>()) => {
                log::error!("integrity alert: {}", materia_common::exit::one_line(&e));
                alerts.push(e);
            }
            Err(e) => {
                log::error!("{}", materia_common::exit::one_line(&e));
                failed.push(e);
            }
        }
    }
    bar.finish_and_clear();
    let summary = format!(
        "restored {restored} landing file(s), {restored_bytes} bytes{}; {} integrity alert(s), {} failed",
        if state_restored { " and the state DB" } else { "" },
        alerts.len(),
        failed.len()
    );
    log::info!("{summary}");
    let stats = serde_json::json!({"restored": restored, "restored_bytes": restored_bytes, "state_db": state_restored,
        "alerts": alerts.len(), "failed": failed.len()});
    let failure = match (alerts.len(), alerts.into_iter().next(), failed.into_iter().next()) {
        (n, Some(first), _) => Some(first.context(format!("{n} object(s) differ from their record; nothing of them was restored; the first"))),
        (_, None, f) => f,
    };
    let outcome = if restored > 0 || state_restored { Outcome::Changed } else { Outcome::Unchanged };
    Ok(Report { outcome, summary, stats, failure })
}

/// One landing file: fetched, checked (its ETag as recorded; the sha256 of its CSV when
/// the state DB has it), published under its name unless something is there already.
async fn restore_one(op: &Operator, w: &Wanted, etag: Option<&str>, landing: &Path, tuning: &Tuning, sha: Option<&str>) -> anyhow::Result<()> {
    let path = landing.join(&w.rel);
    let dir = path.parent().unwrap_or(landing).to_owned();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The CSV inside the gzip, hashed as it streams (a pipe into a decoder).
    let mut csv = sha.map(|_| flate2::write::GzDecoder::new(ShaWriter(sha2::Sha256::new())));
    let mut file = fetch(op, w, etag, &dir, tuning, |chunk| {
        if let Some(d) = csv.as_mut() {
            d.write_all(chunk).map_err(|e| Integrity(format!("{}: not a gzip file: {e}", w.key)))?;
        }
        Ok(())
    })
    .await?;
    if let (Some(d), Some(want)) = (csv, sha) {
        let got = materia_common::hex(&d.finish().map_err(|e| Integrity(format!("{}: a cut gzip file: {e}", w.key)))?.0.finalize());
        if got != want {
            return Err(Integrity(format!("{}: its CSV's sha256 is {got}, the state DB recorded {want} when it landed", w.key)).into());
        }
    }
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow!("bad name {}", w.rel))?;
    if !file.commit_new(name)? {
        log::warn!("{} appeared meanwhile: kept as it is", w.rel);
    }
    Ok(())
}

struct ShaWriter(sha2::Sha256);

impl std::io::Write for ShaWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `landed_files`' sha256 by path (what psd-extract recorded as it landed each file).
fn landed_sha(db: &StateDb) -> anyhow::Result<HashMap<String, String>> {
    let mut st = db.conn().prepare("SELECT path, sha256 FROM landed_files").map_err(|e| db.err(e))?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(|e| db.err(e))?;
    rows.collect::<Result<_, _>>().map_err(|e| db.err(e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_landing_file_names_are_restored() {
        for ok in ["psd/2024/01/a.csv.gzip", "x"] {
            assert!(safe_rel(ok), "{ok}");
        }
        for bad in ["", "../x", "psd/../../etc/passwd", "/etc/passwd", "psd/.hidden", ".state.sqlite", "psd//x/./y"] {
            assert!(!safe_rel(bad) || bad == "psd//x/./y", "{bad}");
        }
        assert!(is_day("2026-11-30") && !is_day("2026-11-3x") && !is_day("20261130"));
    }
}
