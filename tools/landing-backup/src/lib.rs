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

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::Parser;
use materia_common::exit::{Integrity, Usage};
use materia_common::layout;
use materia_common::{CommonArgs, Outcome, Report, StateDb};
use md5::{Digest as _, Md5};
use opendal::{ErrorKind, Operator};

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
    #[arg(long, value_name = "URL", env = layout::ENV_BACKUP_TARGET)]
    target: String,

    /// List the whole remote prefix and check every ledger entry and landing file
    /// (size and checksum), uploading what is missing.
    #[arg(long)]
    verify: bool,

    /// Uploads at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    concurrency: usize,

    /// Files of at least this many bytes go up in multipart uploads.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    multipart_threshold: u64,

    /// Multipart part size in bytes; every part but the last has exactly this size (R2
    /// requires equal parts), 5 MiB to 5 GiB.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    part_size: u64,

    /// Seconds a request may take before it is abandoned (and retried).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,

    /// Retries per request after errors the service reports as temporary.
    #[arg(long, value_name = "N", default_value_t = 4)]
    retries: usize,

    /// Also upload a snapshot of the state DB, once a UTC day, as
    /// PREFIX.state/state-YYYY-MM-DD.sqlite.gz (never overwritten: expire old ones with a
    /// bucket lifecycle rule on that prefix).
    #[arg(long)]
    state_snapshot: bool,
}

/// Where backups go (no secret in its Display).
#[derive(Clone)]
enum Target {
    Fs { root: PathBuf },
    S3 { bucket: String, prefix: String, endpoint: String, key_id: String, secret: String },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Fs { root } => write!(f, "fs:{}", root.display()),
            Target::S3 { bucket, prefix, .. } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

impl Target {
    /// Parse `--target`, taking credentials from the environment. Every missing
    /// variable is named; no secret is ever put in a message.
    fn parse(url: &str, env: impl Fn(&str) -> Option<String>) -> Result<Target, Usage> {
        if let Some(path) = url.strip_prefix("fs:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if !path.starts_with('/') {
                return Err(Usage(format!("--target {url}: expected fs:/absolute/path")));
            }
            return Ok(Target::Fs { root: PathBuf::from(path) });
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(Usage(format!("--target {url:?}: expected s3://BUCKET[/PREFIX] or fs:/PATH")));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || !bucket.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
            return Err(Usage(format!("--target {url:?}: invalid bucket name")));
        }
        let prefix = match prefix.trim_matches('/') {
            "" => DEFAULT_PREFIX.to_owned(),
            p => format!("{p}/"),
        };
        let vars = [layout::ENV_R2_ENDPOINT, layout::ENV_R2_ACCESS_KEY_ID, layout::ENV_R2_SECRET_ACCESS_KEY];
        let values: Vec<Option<String>> = vars.iter().map(|v| env(v).filter(|s| !s.is_empty())).collect();
        let missing: Vec<&str> = vars.iter().zip(&values).filter(|(_, v)| v.is_none()).map(|(n, _)| *n).collect();
        if !missing.is_empty() {
            return Err(Usage(format!("missing {} for target s3://{bucket}/{prefix}", missing.join(", "))));
        }
        let [endpoint, key_id, secret] = [0, 1, 2].map(|i| values[i].clone().unwrap_or_default());
        Ok(Target::S3 { bucket: bucket.to_owned(), prefix, endpoint, key_id, secret })
    }

    fn prefix(&self) -> &str {
        match self {
            Target::Fs { .. } => "",
            Target::S3 { prefix, .. } => prefix,
        }
    }
}

/// Requests by kind, counted at the HTTP transport (every attempt).
#[derive(Debug, Default)]
struct Counts(Mutex<BTreeMap<&'static str, u64>>);

impl Counts {
    fn add(&self, kind: &'static str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The S3 request kinds.
fn kind(req: &http::Request<opendal::Buffer>) -> &'static str {
    let q = req.uri().query().unwrap_or("");
    match *req.method() {
        http::Method::HEAD => "HEAD",
        http::Method::GET if q.contains("list-type") || q.contains("prefix=") => "LIST",
        http::Method::GET => "GET",
        http::Method::PUT if q.contains("uploadId") => "multipart-part",
        http::Method::PUT => "PUT",
        http::Method::POST if q.contains("uploadId") => "multipart-complete",
        http::Method::POST if q.contains("uploads") => "multipart-create",
        http::Method::DELETE if q.contains("uploadId") => "multipart-abort",
        http::Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

struct CountingTransport {
    inner: opendal::HttpTransporter,
    counts: Arc<Counts>,
}

impl opendal::HttpTransport for CountingTransport {
    async fn fetch(&self, req: http::Request<opendal::Buffer>) -> opendal::Result<http::Response<opendal::HttpBody>> {
        self.counts.add(kind(&req));
        self.inner.fetch(req).await
    }
}

/// The fs target's temp dir for objects being written (never listed as an object).
const FS_TMP: &str = ".materia-tmp";

fn operator(target: &Target, counts: Arc<Counts>, timeout: Duration, retries: usize) -> anyhow::Result<Operator> {
    let op = match target {
        Target::Fs { root } => {
            std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
            // Every object is written to a temp file in FS_TMP (inside the root: the same
            // file system), fsynced and renamed into place: a kill or a full disk leaves
            // no short object under a final name. What a killed run left there is swept.
            let tmp = root.join(FS_TMP);
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).with_context(|| format!("clearing {}", tmp.display()))?;
            }
            Operator::new(opendal::services::Fs::default().root(&root.display().to_string()).atomic_write_dir(&tmp.display().to_string()))?
        }
        Target::S3 { bucket, endpoint, key_id, secret, .. } => {
            let builder = opendal::services::S3::default()
                .bucket(bucket)
                .endpoint(endpoint)
                .region("auto")
                .access_key_id(key_id)
                .secret_access_key(secret)
                // These machines (and CI) set AWS_* variables that must not leak in.
                .disable_config_load()
                .disable_ec2_metadata();
            let op = Operator::new(builder)?;
            let inner = opendal::HttpTransporter::new(opendal_http_transport_reqwest::ReqwestTransport::default());
            let transport = CountingTransport { inner, counts };
            let ctx = op.base_context().with_http_transport(opendal::HttpTransporter::new(transport));
            op.with_context(ctx)
        }
    };
    Ok(op
        .layer(opendal::layers::TimeoutLayer::new().with_timeout(timeout).with_io_timeout(timeout))
        .layer(opendal::layers::RetryLayer::new().with_max_times(retries).with_jitter().with_min_delay(Duration::from_millis(200))))
}

/// A landing file to back up.
#[derive(Debug, Clone)]
struct LocalFile {
    rel: String,
    abs: PathBuf,
    bytes: u64,
}

/// Every non-hidden file under `landing`, sorted.
fn landing_files(landing: &Path) -> anyhow::Result<Vec<LocalFile>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<LocalFile>) -> anyhow::Result<()> {
        for e in materia_common::read_dir_or_empty(dir)? {
            let name = e.file_name();
            let Some(name) = name.to_str() else {
                log::warn!("skipping {}: not UTF-8", e.path().display());
                continue;
            };
            if name.starts_with('.') {
                continue; // the state DB, temp files
            }
            let meta = e.metadata()?;
            if meta.is_dir() {
                walk(root, &e.path(), out)?;
            } else if meta.is_file() {
                let rel = e.path().strip_prefix(root).unwrap_or(&e.path()).to_string_lossy().into_owned();
                out.push(LocalFile { rel, abs: e.path(), bytes: meta.len() });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(landing, landing, &mut out)?;
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// The S3 ETag of a file as it will be uploaded: the MD5, or for a multipart upload
/// with `part` sized parts, the MD5 of the parts' MD5s followed by `-N`.
fn local_etag(path: &Path, bytes: u64, threshold: u64, part: u64) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 16];
    if bytes < threshold {
        let mut h = Md5::new();
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        return Ok(materia_common::hex(&h.finalize()));
    }
    let mut parts = Vec::new();
    let mut h = Md5::new();
    let mut in_part = 0u64;
    loop {
        let want = buf.len().min((part - in_part) as usize);
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        in_part += n as u64;
        if in_part == part {
            parts.extend_from_slice(&std::mem::take(&mut h).finalize());
            in_part = 0;
        }
    }
    if in_part > 0 {
        parts.extend_from_slice(&h.finalize());
    }
    let n = parts.len() / 16;
    Ok(format!("{}-{n}", materia_common::hex(&Md5::digest(&parts))))
}

/// What a remote object is.
#[derive(Debug, Clone)]
struct Remote {
    bytes: u64,
    etag: Option<String>,
}

fn remote_of(meta: &opendal::Metadata) -> Remote {
    Remote { bytes: meta.content_length(), etag: meta.etag().map(|e| e.trim_matches('"').to_owned()) }
}

/// One file's outcome.
enum Done {
    Uploaded { etag: Option<String> },
    Adopted { etag: Option<String> },
    Alert(String),
    Failed(anyhow::Error),
}

#[derive(Debug, Clone)]
struct Cfg {
    threshold: u64,
    part: u64,
    if_not_exists: bool,
}

/// Make sure `key` holds `file`: compare with what the remote has (if known), upload
/// if absent, and confirm with a HEAD.
async fn back_up(op: Operator, key: String, file: LocalFile, known: Option<Remote>, cfg: Cfg) -> Done {
    let (f2, cfg2) = (file.clone(), cfg.clone());
    let local = match tokio::task::spawn_blocking(move || local_etag(&f2.abs, f2.bytes, cfg2.threshold, cfg2.part)).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return Done::Failed(e),
        Err(e) => return Done::Failed(anyhow!(e)),
    };
    let matches = |r: &Remote| r.bytes == file.bytes && r.etag.as_ref().is_none_or(|e| *e == local);
    let alert = |r: &Remote| {
        Done::Alert(format!(
            "remote {key} differs from landing/{} ({} bytes, ETag {} remote; {} bytes, ETag {local} local): not overwritten",
            file.rel,
            r.bytes,
            r.etag.as_deref().unwrap_or("?"),
            file.bytes
        ))
    };
    if let Some(r) = &known {
        return if matches(r) { Done::Adopted { etag: r.etag.clone() } } else { alert(r) };
    }
    match upload(&op, &key, &file, &cfg).await {
        // The server's ETag of what it stored is the MD5 of what we sent (or the
        // multipart form of it): when it matches, content and size are confirmed.
        Ok(meta) if meta.etag().map(|e| e.trim_matches('"')) == Some(local.as_str()) => {
            return Done::Uploaded { etag: Some(local) };
        }
        Ok(_) => {}
        // Someone (a run whose answer was lost) stored it meanwhile: check it below.
        Err(e) if e.kind() == ErrorKind::ConditionNotMatch => {}
        Err(e) => return Done::Failed(anyhow!(e).context(format!("uploading landing/{}", file.rel))),
    }
    // No ETag in the answer (a folder target, a 412): confirm with a HEAD.
    match op.stat(&key).await {
        Ok(meta) => {
            let r = remote_of(&meta);
            if matches(&r) { Done::Uploaded { etag: r.etag } } else { alert(&r) }
        }
        Err(e) => Done::Failed(anyhow!(e).context(format!("confirming {key} after its upload"))),
    }
}

/// Upload `file` to `key`; returns what the server said about the stored object.
async fn upload(op: &Operator, key: &str, file: &LocalFile, cfg: &Cfg) -> opendal::Result<opendal::Metadata> {
    let io = |e: std::io::Error| opendal::Error::new(ErrorKind::Unexpected, "reading the landing file").set_source(e);
    if file.bytes < cfg.threshold {
        let data = tokio::fs::read(&file.abs).await.map_err(io)?;
        return op.write_with(key, data).if_not_exists(cfg.if_not_exists).await;
    }
    use tokio::io::AsyncReadExt as _;
    let mut w = op.writer_with(key).chunk(cfg.part as usize).if_not_exists(cfg.if_not_exists).await?;
    let mut f = tokio::fs::File::open(&file.abs).await.map_err(io)?;
    let mut buf = vec![0u8; cfg.part as usize];
    let result: opendal::Result<opendal::Metadata> = async {
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                let n = f.read(&mut buf[filled..]).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            w.write(buf[..filled].to_vec()).await?;
        }
        w.close().await
    }
    .await;
    if result.is_err() {
        // Leave no half upload behind (R2 and S3 keep parts until aborted).
        if let Err(e) = w.abort().await {
            log::warn!("aborting the multipart upload of {key}: {e}");
        }
    }
    result
}

/// Run the tool.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    materia_common::init_logging(&cli.common);
    let target = Target::parse(&cli.target, |v| std::env::var(v).ok())?;
    if cli.part_size < 5 << 20 || cli.part_size > 5 << 30 {
        return Err(Usage("--part-size must be between 5 MiB and 5 GiB (R2 and S3 limits)".into()).into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    materia_common::run_step(TOOL, &cli.common, |step| rt.block_on(backup(step, &cli, &target)))
}

async fn backup(step: &mut materia_common::Step, cli: &Cli, target: &Target) -> anyhow::Result<Report> {
    let counts = Arc::new(Counts::default());
    let op = operator(target, counts.clone(), Duration::from_secs(cli.timeout), cli.retries)?;
    let cfg = Cfg { threshold: cli.multipart_threshold, part: cli.part_size, if_not_exists: op.info().capability().write_with_if_not_exists };
    let target_id = target.to_string();
    let files = landing_files(&step.layout.landing())?;
    let ledger = read_ledger(&step.db, &target_id)?;
    let key_of = |f: &LocalFile| format!("{}{}", target.prefix(), f.rel);

    // What needs a look: new files (normal run), or everything (--verify).
    let todo: Vec<&LocalFile> = files.iter().filter(|f| cli.verify || !ledger.contains_key(&key_of(f))).collect();
    let mut alerts: Vec<String> = Vec::new();
    let mut remote: HashMap<String, Remote> = HashMap::new();
    let listed = !todo.is_empty() || cli.verify;
    if listed {
        // One listing pass: what the remote already has under the prefix.
        for entry in op.list_with(target.prefix()).recursive(true).await.context("listing the backup")? {
            if !entry.metadata().is_dir() && !entry.path().starts_with(FS_TMP) {
                let mut r = remote_of(entry.metadata());
                if let (Target::Fs { root }, None) = (target, &r.etag) {
                    // A folder reports no ETag; its files are local, so compute one.
                    r.etag = Some(local_etag(&root.join(entry.path()), r.bytes, cfg.threshold, cfg.part)?);
                }
                remote.insert(entry.path().to_owned(), r);
            }
        }
    }
    if cli.verify {
        let local: HashMap<String, &LocalFile> = files.iter().map(|f| (key_of(f), f)).collect();
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

/// Where state DB snapshots go, under the prefix (hidden, as the state DB is in landing/).
const STATE_DIR: &str = ".state/";

/// Upload today's state DB snapshot unless the ledger has it: what happened and the
/// file (its `rel` relative to the prefix). `None`: nothing to do.
async fn snapshot_state(
    step: &materia_common::Step,
    op: &Operator,
    cfg: &Cfg,
    target: &Target,
    ledger: &HashMap<String, LedgerEntry>,
) -> anyhow::Result<Option<(Done, LocalFile)>> {
    let day: String = step.db.conn().query_row("SELECT date('now')", [], |r| r.get(0)).map_err(|e| step.db.err(e))?;
    let rel = format!("{STATE_DIR}state-{day}.sqlite.gz");
    let key = format!("{}{rel}", target.prefix());
    if ledger.contains_key(&key) {
        return Ok(None);
    }
    // A consistent copy while other steps may write (SQLite's own VACUUM INTO), gzipped
    // in a private temp dir.
    let tmp = tempfile::tempdir().context("creating a temp dir for the state DB snapshot")?;
    let copy = tmp.path().join("state.sqlite");
    let gz = tmp.path().join("state.sqlite.gz");
    step.db.conn().execute("VACUUM INTO ?1", [copy.to_string_lossy()]).map_err(|e| step.db.err(e)).context("snapshotting the state DB")?;
    {
        let mut input = std::fs::File::open(&copy).with_context(|| format!("reading {}", copy.display()))?;
        let out = std::fs::File::create(&gz).with_context(|| format!("writing {}", gz.display()))?;
        let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        std::io::copy(&mut input, &mut enc).with_context(|| format!("writing {}", gz.display()))?;
        enc.finish().with_context(|| format!("writing {}", gz.display()))?;
    }
    let bytes = std::fs::metadata(&gz)?.len();
    let file = LocalFile { rel, abs: gz, bytes };
    let done = back_up(op.clone(), key, file.clone(), None, cfg.clone()).await;
    Ok(Some((done, file)))
}

#[derive(Debug)]
struct LedgerEntry {
    bytes: u64,
    etag: Option<String>,
}

fn read_ledger(db: &StateDb, target: &str) -> anyhow::Result<HashMap<String, LedgerEntry>> {
    let mut st = db.conn().prepare("SELECT key, bytes, etag FROM backup_objects WHERE target = ?1").map_err(|e| db.err(e))?;
    let rows = st
        .query_map([target], |r| Ok((r.get::<_, String>(0)?, LedgerEntry { bytes: r.get::<_, i64>(1)? as u64, etag: r.get(2)? })))
        .map_err(|e| db.err(e))?;
    rows.collect::<Result<HashMap<_, _>, _>>().map_err(|e| db.err(e).into())
}

fn record(db: &StateDb, run_id: i64, target: &str, key: &str, rel: &str, bytes: u64, etag: Option<&str>) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| vars.get(k).cloned()
    }

    #[test]
    fn targets_and_missing_credentials() {
        let all = [("R2_ENDPOINT", "http://x"), ("R2_ACCESS_KEY_ID", "id"), ("R2_SECRET_ACCESS_KEY", "s3cr3t")];
        let t = Target::parse("s3://bucket", env(&all)).unwrap();
        assert_eq!(t.to_string(), "s3://bucket/backup/materia/landing/");
        assert_eq!(Target::parse("s3://b/x/y/", env(&all)).unwrap().prefix(), "x/y/");
        assert_eq!(Target::parse("fs:/tmp/b", env(&[])).unwrap().to_string(), "fs:/tmp/b");
        let e = Target::parse("s3://bucket", env(&[("R2_ACCESS_KEY_ID", "id")])).err().unwrap();
        assert_eq!(e.0, "missing R2_ENDPOINT, R2_SECRET_ACCESS_KEY for target s3://bucket/backup/materia/landing/");
        assert!(Target::parse("ftp://x", env(&all)).is_err());
        assert!(Target::parse("fs:relative", env(&all)).is_err());
        let debug = format!("{}", Target::parse("s3://bucket", env(&all)).unwrap());
        assert!(!debug.contains("s3cr3t"));
    }

    #[test]
    fn local_etags_follow_s3() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(local_etag(&p, 5, 100, 5 << 20).unwrap(), "5d41402abc4b2a76b9719d911017c592");
        // Multipart with 2-byte parts: md5(md5("he") + md5("ll") + md5("o")) + "-3".
        let parts: Vec<u8> = [&b"he"[..], b"ll", b"o"].iter().flat_map(|p| Md5::digest(p).to_vec()).collect();
        let want = format!("{}-3", materia_common::hex(&Md5::digest(&parts)));
        assert_eq!(local_etag(&p, 5, 1, 2).unwrap(), want);
    }
}
