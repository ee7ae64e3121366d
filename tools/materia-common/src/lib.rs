//! What every Materia tool needs, and nothing else: the data layout, env names and the
//! list of steps ([`layout`]), the state DB ([`state`]), per-step locks and the lakehouse
//! lock ([`lock`]), atomic writes ([`atomic`]), exit codes ([`exit`]), the triggers that
//! chain the steps ([`trigger`]), the secrets file a tool reads itself ([`secrets`]), the
//! landing zone as readers list it ([`landing`]), the lakehouse's contract with its
//! readers ([`lakehouse`]), logging and progress.
//!
//! A tool's `run` parses its flags (flattening [`CommonArgs`]), then does its work
//! inside [`run_step`], which takes the step lock, opens the state DB and records the run.

pub mod atomic;
#[cfg(feature = "duckdb")]
pub mod duckdb_config;
pub mod exit;
pub mod fault;
pub mod glob;
pub mod lakehouse;
#[cfg(feature = "duckdb")]
pub mod lakehouse_target;
pub mod landing;
pub mod layout;
pub mod lock;
pub mod month;
#[cfg(feature = "reader")]
pub mod reader;
pub mod secrets;
pub mod state;
pub mod trigger;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

pub use exit::Outcome;
pub use indicatif::ProgressBar;
pub use layout::Layout;
pub use month::Month;
pub use state::StateDb;

/// Flags every tool takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Data directory: landing zone, state DB, DuckDB files, locks and triggers.
    #[arg(long, global = true, value_name = "DIR", env = layout::ENV_DATA_DIR, default_value = layout::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// State DB file [default: DATA_DIR/landing/.state.sqlite].
    #[arg(long, global = true, value_name = "FILE", env = layout::ENV_STATE_DB)]
    pub state_db: Option<PathBuf>,

    /// If another instance is running, wait up to SECS for it instead of failing at once.
    #[arg(long, global = true, value_name = "SECS", env = layout::ENV_WAIT_LOCK, default_value_t = 0)]
    pub wait_lock: u64,

    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings and errors. RUST_LOG overrides.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

impl CommonArgs {
    /// The layout these flags name.
    pub fn layout(&self) -> Layout {
        Layout::new(&self.data_dir, self.state_db.clone())
    }
}

/// Log to stderr (journald adds time and unit): `level: message`. `-v`/`-q` set the
/// level, `RUST_LOG` overrides both.
pub fn init_logging(common: &CommonArgs) {
    let level = match (common.quiet, common.verbose) {
        (true, _) => log::LevelFilter::Warn,
        (false, 0) => log::LevelFilter::Info,
        (false, 1) => log::LevelFilter::Debug,
        (false, _) => log::LevelFilter::Trace,
    };
    let mut b = env_logger::Builder::new();
    b.filter_level(level)
        .format(|buf, record| {
            use std::io::Write as _;
            writeln!(buf, "{}: {}", record.level().as_str().to_ascii_lowercase(), record.args())
        })
        .target(env_logger::Target::Stderr);
    if let Ok(filter) = std::env::var("RUST_LOG") {
        b.parse_filters(&filter);
    }
    let _ = b.try_init();
}

/// A progress bar when stderr is a terminal, a hidden one otherwise (plain logs then).
pub fn progress_bar(len: Option<u64>, template: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Read the file at `path` start to end in 64 KiB chunks, handing each to `each`: a file
/// hashed without holding it in memory. Errors name the file.
pub fn read_chunks(path: &std::path::Path, mut each: impl FnMut(&[u8])) -> anyhow::Result<()> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        each(&buf[..n]);
    }
}

/// The entries of `dir`; none when it does not exist (yet). Errors name the dir.
pub fn read_dir_or_empty(dir: &std::path::Path) -> anyhow::Result<Vec<std::fs::DirEntry>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.collect::<Result<_, _>>().with_context(|| format!("listing {}", dir.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("listing {}", dir.display()))),
    }
}

/// Lowercase hex of `bytes` (digests in file names and records).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What a step's work reports back to [`run_step`].
#[derive(Debug)]
pub struct Report {
    /// Changed or unchanged (ignored when `failure` is set).
    pub outcome: Outcome,
    /// One line for the run record and the log.
    pub summary: String,
    /// Counters for the run record.
    pub stats: serde_json::Value,
    /// Set when the run failed after doing part of its work; the run is recorded as
    /// failed, with this summary and stats, and the error is returned.
    pub failure: Option<anyhow::Error>,
}

/// A running step: its layout, the state DB and its run id, under its lock.
#[derive(Debug)]
pub struct Step {
    /// Paths.
    pub layout: Layout,
    /// The state DB.
    pub db: StateDb,
    /// This run's row in `runs`.
    pub run_id: i64,
    _lock: lock::Lock,
}

/// Take `tool`'s step lock, open the state DB, record a run, do `work`, record how it
/// ended. A second instance fails with `already running (pid N)` (exit
/// [`exit::LOCKED`]) unless `--wait-lock` lets it wait.
pub fn run_step(tool: &str, common: &CommonArgs, work: impl FnOnce(&mut Step) -> anyhow::Result<Report>) -> anyhow::Result<Outcome> {
    let layout = common.layout();
    let lock = lock::Lock::acquire(&layout.step_lock(tool), Duration::from_secs(common.wait_lock))?;
    let db = StateDb::open(layout.state_db())?;
    let run_id = db.begin_run(tool)?;
    let mut step = Step { layout, db, run_id, _lock: lock };
    let result = work(&mut step);
    let (status, code, summary, error, stats, ret) = match result {
        Ok(Report { failure: None, outcome, summary, stats }) => {
            let status = match outcome {
                Outcome::Changed => state::RunStatus::Success,
                Outcome::Unchanged => state::RunStatus::Unchanged,
            };
            (status, outcome.code(), summary, None, stats, Ok(outcome))
        }
        Ok(Report { failure: Some(err), summary, stats, .. }) => {
            let code = exit::code_for(&err);
            (state::RunStatus::Failed, code, summary, Some(exit::one_line(&err)), stats, Err(err))
        }
        Err(err) => {
            let code = exit::code_for(&err);
            let line = exit::one_line(&err);
            (state::RunStatus::Failed, code, format!("failed: {line}"), Some(line), serde_json::json!({}), Err(err))
        }
    };
    if let Err(e) = step.db.finish_run(run_id, status, code, &summary, error.as_deref(), &stats) {
        let record = anyhow::Error::new(e).context("recording the end of the run");
        return Err(match ret {
            // A run that failed keeps its own error (and exit code): the record's failure
            // (a full disk fails both) is said beside it, never in its place.
            Err(err) => {
                log::error!("{}", exit::one_line(&record));
                err
            }
            Ok(_) => record,
        });
    }
    ret
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(super::hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
        assert_eq!(super::hex(&[]), "");
    }
}
