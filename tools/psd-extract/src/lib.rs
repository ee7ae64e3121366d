//! psd-extract: USDA FAS PSD Online bulk files into Materia's immutable landing zone.
//!
//! `psd-extract` checks each configured file at the current endpoint (and, with
//! `--since`, every monthly archive up to `--until`) with a conditional GET, validates
//! what changed, and lands it as `landing/psd/{yyyy}/{mm}/{etag}.csv.gzip`. Every run,
//! every URL's outcome and every landed file is recorded in the state DB. As each file
//! lands it rewrites `DATA_DIR/triggers/landing.updated` for the next step. A run is
//! bounded by `--run-timeout`, however slowly a server sends.
//!
//! stdout gets the path of each landed file, one per line; logs go to stderr.

mod csv;
mod http;
mod land;
mod records;
mod source;
mod tally;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use materia_common::exit::Usage;
use materia_common::layout::{self, Layout};
use materia_common::{CommonArgs, Month, Outcome, StateDb};
use records::{FetchOutcome, FetchRecord, archive_done, record_fetch};
use source::{Source, fetch_one, outcome_of};
use tally::Tally;

pub use land::{PSD_HEADER, etag_file_name};

/// The tool's name: binary, step lock and `runs.tool`.
pub const TOOL: &str = "psd-extract";

/// Download USDA FAS PSD Online releases into the landing zone.
///
/// Without a subcommand: checks the current file of each --file (and, with --since, the
/// monthly archives) with conditional GETs and lands what is new. Exit codes: 0 something landed,
/// 3 nothing new, 1 failed, 2 usage, 4 already running, 5 input rejected.
#[derive(Debug, Parser)]
#[command(name = TOOL, version)]
pub struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    #[command(flatten)]
    fetch: FetchArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Land a zip fetched by hand (an offline machine), with the same validation.
    Import(ImportArgs),
}

#[derive(Debug, Clone, Args)]
struct FetchArgs {
    /// PSD Online base URL: files are fetched from {URL}/downloads/{file} and
    /// {URL}/downloads/archives/{yyyy}/{mm}/{file}.
    #[arg(long, value_name = "URL", env = layout::ENV_PSD_BASE_URL, default_value = layout::DEFAULT_PSD_BASE_URL)]
    base_url: String,

    /// A PSD bulk file to fetch (repeatable, or comma-separated in the env).
    #[arg(long = "file", value_name = "NAME", env = layout::ENV_PSD_FILES, value_delimiter = ',',
          default_value = layout::DEFAULT_PSD_FILE)]
    files: Vec<String>,

    /// Backfill the monthly archives from this month on; months already landed are not
    /// requested again, months not released (404) are skipped.
    #[arg(long, value_name = "YYYY-MM")]
    since: Option<Month>,

    /// Last archive month to backfill [default: the current month].
    #[arg(long, value_name = "YYYY-MM", requires = "since")]
    until: Option<Month>,

    /// Seconds a connect, or a wait for the next bytes, may take.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,

    /// Retries per URL after timeouts, connection errors, 408, 429 and 5xx.
    #[arg(long, value_name = "N", default_value_t = 5)]
    retries: u32,

    /// First retry delay in milliseconds; it doubles each retry (at most 60 s), with jitter.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    retry_delay_ms: u64,

    /// Total seconds one URL may take, retries and Retry-After waits included.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    retry_budget: u64,

    /// Seconds the whole run may take once it holds its lock: past it no request starts
    /// and a download in progress stops (nothing of it lands); the run fails, recorded.
    /// The unit's TimeoutStartSec= is set above this and --wait-lock together.
    #[arg(long, value_name = "SECS", default_value_t = 3000)]
    run_timeout: u64,

    /// The largest download accepted, in MiB (the all-commodities zip is about 30 MiB).
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    max_download_mib: u64,

    /// The largest CSV accepted once decompressed, in MiB (the all-commodities CSV is
    /// about 300 MiB): a zip bomb is refused before it fills the disk.
    #[arg(long, global = true, value_name = "MIB", default_value_t = 4096)]
    max_csv_mib: u64,

    /// ETags longer than this are neither kept nor sent back (Last-Modified, or the
    /// content's hash, stands in).
    #[arg(long, value_name = "BYTES", default_value_t = 256)]
    max_etag_bytes: usize,

    /// Another host a redirect may lead to (repeatable). Redirects are followed only to
    /// the base URL's host and these, and never from https to http.
    #[arg(long, value_name = "HOST")]
    allow_redirect_host: Vec<String>,
}

#[derive(Debug, Clone, Args)]
struct ImportArgs {
    /// The zip, as PSD Online serves it.
    #[arg(value_name = "FILE.zip")]
    zip: PathBuf,

    /// The release month it belongs to.
    #[arg(long, value_name = "YYYY-MM")]
    release: Month,

    /// Upstream file name to record [default: the zip's file name].
    #[arg(long, value_name = "NAME")]
    source: Option<String>,
}

/// Run the tool.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    materia_common::init_logging(&cli.common);
    match cli.command {
        Some(Command::Import(args)) => import(&cli.common, &args, cli.fetch.max_csv_mib << 20),
        None => fetch(&cli.common, &cli.fetch),
    }
}

fn fetch(common: &CommonArgs, args: &FetchArgs) -> anyhow::Result<Outcome> {
    for f in &args.files {
        let ok = f.len() <= 200 && f.ends_with(".zip") && f.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) && !f.starts_with('.');
        if !ok {
            return Err(Usage(format!("--file {f:?}: expected a PSD file name such as psd_coffee_csv.zip")).into());
        }
    }
    let base = args.base_url.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(Usage(format!("--base-url {base:?}: expected an http:// or https:// URL")).into());
    }
    let now = Month::current_utc();
    let until = args.until.unwrap_or(now);
    if let Some(since) = args.since
        && since > until
    {
        return Err(Usage(format!("--since {since} is after --until {until}")).into());
    }
    materia_common::run_step(TOOL, common, |step| {
        let policy = http::RetryPolicy {
            retries: args.retries,
            base_delay: Duration::from_millis(args.retry_delay_ms),
            budget: Duration::from_secs(args.retry_budget),
            deadline: Instant::now() + Duration::from_secs(args.run_timeout),
            limits: http::Limits { max_download_bytes: args.max_download_mib << 20, max_etag_bytes: args.max_etag_bytes },
        };
        let landing = prepare_landing(&step.layout)?;
        check_clock(&step.db, now)?;
        let mut hosts = args.allow_redirect_host.clone();
        hosts.extend(reqwest::Url::parse(base).ok().and_then(|u| u.host_str().map(str::to_owned)));
        let client = http::client(Duration::from_secs(args.timeout), hosts)?;
        let mut sources = Vec::new();
        for file in &args.files {
            if let Some(since) = args.since {
                for m in since.through(until) {
                    let url = format!("{base}/downloads/archives/{:04}/{:02}/{file}", m.year(), m.month());
                    sources.push(Source { file: file.clone(), url, month: m, archive: true });
                }
            }
            sources.push(Source { file: file.clone(), url: format!("{base}/downloads/{file}"), month: now, archive: false });
        }

        let mut tally = Tally::default();
        let mut errors = Vec::new();
        // One bar at a time on a terminal: sources for a backfill, bytes for a single file.
        let hidden = materia_common::ProgressBar::hidden;
        let (bar, download_bar) = if sources.len() > 1 {
            let bar = materia_common::progress_bar(Some(sources.len() as u64), "[{elapsed}] {bar:30} {pos}/{len} {msg}");
            (bar, hidden())
        } else {
            (hidden(), materia_common::progress_bar(None, "[{elapsed}] {bytes}/{total_bytes} {bytes_per_sec} {msg}"))
        };
        for (i, src) in sources.iter().enumerate() {
            if Instant::now() >= policy.deadline {
                let left = sources.len() - i;
                log::error!("the run's deadline passed: {left} of {} sources not checked", sources.len());
                tally.not_checked = left as u64;
                // The run's failure is the deadline, whatever else failed before it.
                errors.insert(0, http::deadline_error().context(format!("{left} of {} sources not checked", sources.len())));
                break;
            }
            bar.set_message(src.url.clone());
            if src.archive && archive_done(&step.db, &src.url)? {
                log::debug!("{}: already landed, not requested again", src.url);
                tally.skipped += 1;
                bar.inc(1);
                continue;
            }
            tally.checked += 1;
            let rec = fetch_one(step, &landing, &client, &policy, src, &download_bar, args.max_csv_mib << 20);
            bar.inc(1);
            record_fetch(&step.db, step.run_id, &src.url, &rec)?;
            match rec.outcome {
                FetchOutcome::Landed { bytes, ref path } => {
                    tally.landed += 1;
                    tally.landed_bytes += bytes;
                    println!("{}", landing.join(path).display());
                    // Each landing is signalled as it lands: a run killed later loses none.
                    materia_common::trigger::signal(&step.layout, layout::TRIGGER_LANDING_UPDATED, step.run_id)?;
                }
                FetchOutcome::Duplicate | FetchOutcome::NotModified => tally.unchanged += 1,
                FetchOutcome::NotReleased => tally.not_released += 1,
                FetchOutcome::Failed(_) => tally.failed += 1,
            }
            tally.downloaded += rec.bytes.unwrap_or(0);
            if let FetchOutcome::Failed(err) = rec.outcome {
                log::error!("{}: {}", src.url, materia_common::exit::one_line(&err));
                errors.push(err.context(src.url.clone()));
            }
        }
        bar.finish_and_clear();
        download_bar.finish_and_clear();
        Ok(tally.report(errors))
    })
}

fn import(common: &CommonArgs, args: &ImportArgs, max_csv_bytes: u64) -> anyhow::Result<Outcome> {
    let zip = std::fs::File::open(&args.zip).with_context(|| format!("cannot open {}", args.zip.display()))?;
    let abs = std::path::absolute(&args.zip).unwrap_or_else(|_| args.zip.clone());
    let source = match &args.source {
        Some(s) => s.clone(),
        None => abs.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    let url = format!("file://{}", abs.display());
    materia_common::run_step(TOOL, common, |step| {
        let landing = prepare_landing(&step.layout)?;
        let origin = land::Origin { source: &source, source_url: &url, month: args.release, etag: None, last_modified: None };
        let mut tally = Tally { checked: 1, downloaded: 0, ..Tally::default() };
        let result =
            land::land_zip(&step.db, &landing, step.run_id, zip, &origin, max_csv_bytes).with_context(|| format!("importing {}", args.zip.display()));
        let (outcome, file_id) = outcome_of(result);
        let rec = FetchRecord { outcome, status: None, attempts: 1, bytes: None, file_id };
        record_fetch(&step.db, step.run_id, &url, &rec)?;
        let mut errors = Vec::new();
        match rec.outcome {
            FetchOutcome::Landed { bytes, path } => {
                tally.landed = 1;
                tally.landed_bytes = bytes;
                println!("{}", landing.join(path).display());
                materia_common::trigger::signal(&step.layout, layout::TRIGGER_LANDING_UPDATED, step.run_id)?;
            }
            FetchOutcome::Failed(err) => {
                tally.failed = 1;
                errors.push(err);
            }
            _ => tally.unchanged = 1,
        }
        Ok(tally.report(errors))
    })
}

/// Refuse to run on a clock that says it is earlier than the newest landed release: it
/// would file the current release under a past month, for good.
fn check_clock(db: &StateDb, now: Month) -> anyhow::Result<()> {
    let newest: Option<String> = db.conn().query_row("SELECT max(release_month) FROM landed_files", [], |r| r.get(0)).map_err(|e| db.err(e))?;
    if let Some(newest) = newest.and_then(|m| m.parse::<Month>().ok())
        && now < newest
    {
        anyhow::bail!(
            "the system clock says {now}, before the newest landed release ({newest}): fix the clock (timedatectl) before psd-extract runs; nothing was fetched"
        );
    }
    Ok(())
}

/// Create the landing dir and clear temp files a killed run left (we hold the lock).
fn prepare_landing(layout: &Layout) -> anyhow::Result<PathBuf> {
    let landing = layout.landing();
    std::fs::create_dir_all(&landing).with_context(|| format!("cannot create {}", landing.display()))?;
    let swept =
        materia_common::atomic::remove_stale_temps(&landing.join("psd")).with_context(|| format!("clearing temp files in {}", landing.display()))?;
    if swept > 0 {
        log::warn!("removed {swept} temp file(s) left by an interrupted run");
    }
    Ok(landing)
}

#[cfg(test)]
mod cli_tests {
    #[test]
    fn the_flags_are_sound() {
        // clap checks the whole command definition (names, conflicts, defaults).
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
