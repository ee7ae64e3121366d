//! The one place that names Materia's files, directories and environment variables.
//!
//! Every tool takes `--data-dir` (env [`ENV_DATA_DIR`]) and derives everything else from
//! it through [`Layout`], so the tools agree on paths without depending on each other.
//!
//! ```text
//! DATA_DIR/                          MATERIA_DATA_DIR, default /data/materia
//!   landing/                         immutable landing zone (psd-extract writes, others read)
//!     .state.sqlite                  state DB: runs of every tool (MATERIA_STATE_DB overrides)
//!     psd/{year}/{month}/{etag}.csv.gzip
//!   lakehouse.duckdb                 lake-transform's database (its exclusive writer)
//!   lakehouse.duckdb.lock            lock shared by lake-transform and serve-export
//!   lakehouse.duckdb.corrupt         the corrupt file a `run --rebuild` replaced, kept for a look (materia-status shows it)
//!   spill/lake-transform/            where DuckDB spills past its memory limit (stale spill files removed each run)
//!   analytics.duckdb                 what the web app reads (serve-export publishes it)
//!   analytics.duckdb.prev            the export before it (serve-export --rollback swaps them)
//!   locks/{tool}.lock                one exclusive lock per step
//!   triggers/landing.updated         written when new files landed (a systemd path unit watches it)
//!   triggers/lakehouse.updated       written when a transform changed the lakehouse
//! ```
//!
//! The environment variables, all in one table (README.md repeats it):
//!
//! | variable | used by | meaning |
//! |---|---|---|
//! | `MATERIA_DATA_DIR` | every tool | the data directory (default `/data/materia`) |
//! | `MATERIA_STATE_DB` | every tool | the state DB (default `DATA_DIR/landing/.state.sqlite`) |
//! | `MATERIA_WAIT_LOCK` | every tool | seconds to wait for the step lock (default 0: fail at once) |
//! | `RUST_LOG` | every tool | log filter; overrides `-v`/`-q` |
//! | `MATERIA_SECRETS_FILE` | every tool | a dotenv file of secrets the tool reads itself, as its user, before its flags (the units: `APP_DIR/secrets.env` for landing-backup, `APP_DIR/lake.env` for the lakehouse's steps on a DuckLake); absent: none |
//! | `PSD_BASE_URL` | psd-extract | PSD Online base URL (default `https://apps.fas.usda.gov/psdonline`) |
//! | `PSD_FILES` | psd-extract | comma-separated PSD file names (default `psd_coffee_csv.zip`) |
//! | `MATERIA_MODELS` | lake-transform | the models folder (default: the release's `models/`) |
//! | `MATERIA_MEMORY_LIMIT` | lake-transform | DuckDB's memory limit, past which it spills to disk (default `4GB`, or 3/4 of the cgroup's memory when less) |
//! | `MATERIA_SPILL_DIR` | lake-transform | where DuckDB spills (default `DATA_DIR/spill/lake-transform`) |
//! | `MATERIA_PROFILE_DIR` | lake-transform run | profile every statement into this dir (`--profile`) |
//! | `MATERIA_LAKEHOUSE` | lake-transform | where the lakehouse is: unset, the local `DATA_DIR/lakehouse.duckdb`; `ducklake:postgres:CONNINFO`, a DuckLake |
//! | `MATERIA_LAKE_DATA_PATH` | lake-transform | a DuckLake's data files, e.g. `s3://BUCKET/PREFIX/` |
//! | `MATERIA_LAKE_S3_ENDPOINT`, `MATERIA_LAKE_S3_KEY_ID`, `MATERIA_LAKE_S3_SECRET` | lake-transform | the S3 (R2) endpoint URL and credentials of the DuckLake's data path (the secret is never logged) |
//! | `PGPASSWORD` | lake-transform | the DuckLake catalog's PostgreSQL password (libpq reads it; never in the URL) |
//! | `BACKUP_TARGET` | landing-backup | `s3://BUCKET[/PREFIX]` (R2) or `fs:/PATH` |
//! | `R2_ENDPOINT` | landing-backup | R2 (S3) endpoint URL, e.g. `https://ACCOUNT.r2.cloudflarestorage.com` |
//! | `R2_ACCESS_KEY_ID` | landing-backup | R2 access key id |
//! | `R2_SECRET_ACCESS_KEY` | landing-backup | R2 secret access key (never logged) |
//! | `DEPLOY_REMOTE` | tag-deploy | the git remote to poll (URL or path) |
//! | `MATERIA_APP_DIR` | tag-deploy | releases/, current, the shared build target (default `/opt/materia`) |
//! | `DEPLOY_BUILD_CMD` | tag-deploy | build command, run with `sh -c` in the release (default `cargo build --release --locked`) |
//! | `DEPLOY_HEALTH_CMD` | tag-deploy | health check after a switch, `sh -c`, exit 0 = healthy |
//! | `DEPLOY_SSH_KEY` | tag-deploy | private key for an SSH remote (default `~/.ssh/materia_deploy`) |
//! | `DEPLOY_KNOWN_HOSTS` | tag-deploy | the SSH remote's host key must be in this file (default `~/.ssh/known_hosts`) |
//! | `DEPLOY_ENV_FILE` | tag-deploy | where `.env.prod.sops` is decrypted to (default `APP_DIR/secrets.env`); its lake secrets (`MATERIA_LAKE_S3_KEY_ID`, `MATERIA_LAKE_S3_SECRET`, `PGPASSWORD`) go to `lake.env` beside it |
//! | `DUCKDB_LIB_DIR` | builds, tag-deploy | the prebuilt `libduckdb.so` to link, and to ship in a release's `lib/` (with its `extensions/`) |
//! | `MATERIA_DUCKDB_EXTENSIONS` | lake-transform, serve-export | DuckDB's offline extension directory (default: the release's `lib/extensions`) |
//! | `MATERIA_TAG`, `MATERIA_RELEASE_DIR` | tag-deploy → build, hooks | the tag being deployed and its release dir |
//! | `MATERIA_RELEASE_BUILD` | tag-deploy, bootstrap.sh → build | `1`: binaries record no build-machine path (rpath `$ORIGIN/../lib` only) |
//! | `SERVE_EXPORT_FAULT` | serve-export | tests only: `alter-copy` makes the copy differ, `corrupt-copy` breaks a block of it on disk before its check, `corrupt-copy-midway` one the copy reads back, to exercise verification and blame |
//! | `LAKE_TRANSFORM_FAULT` | lake-transform maintain | tests only: `alter-compact` makes the compacted copy differ, `corrupt-compact-midway` breaks a block the copy reads back, to exercise its check and blame |
//! | `MATERIA_BIN_DIR`, `MATERIA_IMPORT`, `MATERIA_RELEASE`, `MATERIA_DOTENV` | scripts/run-all.sh | prebuilt tools; offline import; the dotenv file it reads (default `.env`) |
//! | `MATERIA_NOTIFY_URL` | scripts/notify-failure.sh (materia-notify@) | webhook for a failed unit's journal lines |
//! | `MATERIA_NOTIFY_REPEAT_HOURS` | scripts/notify-failure.sh (materia-notify@) | hours before a failure repeating is reported again (default 24) |
//! | `MATERIA_PING_URL` | scripts/ping.sh (materia-ping@) | healthchecks.io-style base URL: `/STEP/start`, `/STEP`, `/STEP/fail` |
//! | `MATERIA_TEST_VENV` | setup-dev.sh, tests | where the test tools (moto, sops) are installed (default `~/.cache/materia-test-venv`) |

use std::path::{Path, PathBuf};

/// The data directory every tool works in.
pub const ENV_DATA_DIR: &str = "MATERIA_DATA_DIR";
/// Default for [`ENV_DATA_DIR`].
pub const DEFAULT_DATA_DIR: &str = "/data/materia";
/// Overrides the state DB path (default `DATA_DIR/landing/.state.sqlite`).
pub const ENV_STATE_DB: &str = "MATERIA_STATE_DB";
/// Seconds a tool waits for its step lock before giving up (default 0).
pub const ENV_WAIT_LOCK: &str = "MATERIA_WAIT_LOCK";
/// A dotenv file of secrets the tool reads itself ([`crate::secrets`]).
pub const ENV_SECRETS_FILE: &str = "MATERIA_SECRETS_FILE";
/// psd-extract: PSD Online base URL.
pub const ENV_PSD_BASE_URL: &str = "PSD_BASE_URL";
/// Default for [`ENV_PSD_BASE_URL`].
pub const DEFAULT_PSD_BASE_URL: &str = "https://apps.fas.usda.gov/psdonline";
/// psd-extract: comma-separated list of PSD bulk files to fetch.
pub const ENV_PSD_FILES: &str = "PSD_FILES";
/// Default for [`ENV_PSD_FILES`].
pub const DEFAULT_PSD_FILE: &str = "psd_coffee_csv.zip";

/// Trigger written by psd-extract when at least one new file landed.
pub const TRIGGER_LANDING_UPDATED: &str = "landing.updated";
/// Trigger written by lake-transform when a run changed the lakehouse.
pub const TRIGGER_LAKEHOUSE_UPDATED: &str = "lakehouse.updated";
/// landing-backup: where the backup goes.
pub const ENV_BACKUP_TARGET: &str = "BACKUP_TARGET";
/// landing-backup: the R2 (S3) endpoint.
pub const ENV_R2_ENDPOINT: &str = "R2_ENDPOINT";
/// landing-backup: the R2 access key id.
pub const ENV_R2_ACCESS_KEY_ID: &str = "R2_ACCESS_KEY_ID";
/// landing-backup: the R2 secret access key.
pub const ENV_R2_SECRET_ACCESS_KEY: &str = "R2_SECRET_ACCESS_KEY";
/// tag-deploy: the git remote.
pub const ENV_DEPLOY_REMOTE: &str = "DEPLOY_REMOTE";
/// tag-deploy: the app dir.
pub const ENV_APP_DIR: &str = "MATERIA_APP_DIR";
/// Default for [`ENV_APP_DIR`].
pub const DEFAULT_APP_DIR: &str = "/opt/materia";
/// tag-deploy: the build command.
pub const ENV_DEPLOY_BUILD_CMD: &str = "DEPLOY_BUILD_CMD";
/// tag-deploy: the SSH deploy key.
pub const ENV_DEPLOY_SSH_KEY: &str = "DEPLOY_SSH_KEY";
/// tag-deploy: known hosts for the SSH remote.
pub const ENV_DEPLOY_KNOWN_HOSTS: &str = "DEPLOY_KNOWN_HOSTS";
/// tag-deploy: where decrypted secrets go.
pub const ENV_DEPLOY_ENV_FILE: &str = "DEPLOY_ENV_FILE";
/// tag-deploy: the health check command.
pub const ENV_DEPLOY_HEALTH_CMD: &str = "DEPLOY_HEALTH_CMD";
/// serve-export, tests only: inject a fault (`alter-copy`).
pub const ENV_SERVE_EXPORT_FAULT: &str = "SERVE_EXPORT_FAULT";
/// lake-transform maintain, tests only: inject a fault (`alter-compact`).
pub const ENV_LAKE_TRANSFORM_FAULT: &str = "LAKE_TRANSFORM_FAULT";
/// lake-transform: the models folder.
pub const ENV_MODELS: &str = "MATERIA_MODELS";
/// lake-transform: DuckDB's memory limit.
pub const ENV_MEMORY_LIMIT: &str = "MATERIA_MEMORY_LIMIT";
/// lake-transform: DuckDB's memory limit when [`ENV_MEMORY_LIMIT`] is unset, in DuckDB's
/// syntax (GB: 10^9 bytes), unless 3/4 of the process's cgroup memory is less. The units'
/// `MemoryMax=` leaves room above it (tests/it/units.rs).
pub const DEFAULT_MEMORY_LIMIT: &str = "4GB";
/// lake-transform: where DuckDB spills past its memory limit.
pub const ENV_SPILL_DIR: &str = "MATERIA_SPILL_DIR";
/// lake-transform run: profile every statement into this directory.
pub const ENV_PROFILE_DIR: &str = "MATERIA_PROFILE_DIR";
/// lake-transform: where the lakehouse is (unset: the local file).
pub const ENV_LAKEHOUSE: &str = "MATERIA_LAKEHOUSE";
/// lake-transform: a DuckLake's data path.
pub const ENV_LAKE_DATA_PATH: &str = "MATERIA_LAKE_DATA_PATH";
/// lake-transform: the S3 endpoint of a DuckLake's data path.
pub const ENV_LAKE_S3_ENDPOINT: &str = "MATERIA_LAKE_S3_ENDPOINT";
/// lake-transform: the S3 key id of a DuckLake's data path.
pub const ENV_LAKE_S3_KEY_ID: &str = "MATERIA_LAKE_S3_KEY_ID";
/// lake-transform: the S3 secret of a DuckLake's data path.
pub const ENV_LAKE_S3_SECRET: &str = "MATERIA_LAKE_S3_SECRET";
/// The secrets only the lakehouse's readers and writer get (lake-transform, serve-export
/// and their maintenance): tag-deploy puts these keys of `.env.prod.sops` in
/// [`LAKE_ENV_FILE`], every other key in the secrets file landing-backup reads.
pub const LAKE_SECRETS: &[&str] = &[ENV_LAKE_S3_KEY_ID, ENV_LAKE_S3_SECRET, "PGPASSWORD"];
/// The file, beside the secrets file (`APP_DIR/secrets.env`), with [`LAKE_SECRETS`].
pub const LAKE_ENV_FILE: &str = "lake.env";
/// The tools that link DuckDB: its offline extension directory.
pub const ENV_DUCKDB_EXTENSIONS: &str = "MATERIA_DUCKDB_EXTENSIONS";

/// Every environment variable in the table above: what a hermetic test clears, so that
/// nothing from the caller's environment reaches a tool under test.
pub const ENV_VARS: &[&str] = &[
    ENV_DATA_DIR,
    ENV_STATE_DB,
    ENV_WAIT_LOCK,
    ENV_SECRETS_FILE,
    "RUST_LOG",
    ENV_PSD_BASE_URL,
    ENV_PSD_FILES,
    ENV_MODELS,
    ENV_MEMORY_LIMIT,
    ENV_SPILL_DIR,
    ENV_PROFILE_DIR,
    ENV_LAKEHOUSE,
    ENV_LAKE_DATA_PATH,
    ENV_LAKE_S3_ENDPOINT,
    ENV_LAKE_S3_KEY_ID,
    ENV_LAKE_S3_SECRET,
    "PGPASSWORD",
    ENV_BACKUP_TARGET,
    ENV_R2_ENDPOINT,
    ENV_R2_ACCESS_KEY_ID,
    ENV_R2_SECRET_ACCESS_KEY,
    ENV_DEPLOY_REMOTE,
    ENV_APP_DIR,
    ENV_DEPLOY_BUILD_CMD,
    ENV_DEPLOY_HEALTH_CMD,
    ENV_DEPLOY_SSH_KEY,
    ENV_DEPLOY_KNOWN_HOSTS,
    ENV_DEPLOY_ENV_FILE,
    "DUCKDB_LIB_DIR",
    ENV_DUCKDB_EXTENSIONS,
    "MATERIA_TAG",
    "MATERIA_RELEASE_DIR",
    "MATERIA_RELEASE_BUILD",
    ENV_SERVE_EXPORT_FAULT,
    ENV_LAKE_TRANSFORM_FAULT,
    "MATERIA_BIN_DIR",
    "MATERIA_IMPORT",
    "MATERIA_RELEASE",
    "MATERIA_DOTENV",
    "MATERIA_NOTIFY_URL",
    "MATERIA_NOTIFY_REPEAT_HOURS",
    "MATERIA_PING_URL",
    "MATERIA_TEST_VENV",
];

/// A step of the pipeline: its tool and the systemd timer that schedules it (the
/// transform's and the export's are catch-up timers; path units start them on triggers).
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// The step's name: its `runs.tool`, its step lock and, but for `lake-maintain`
    /// (which is `lake-transform maintain`), its binary.
    pub tool: &'static str,
    /// Its timer unit.
    pub timer: &'static str,
}

/// The steps, in pipeline order: the one list (materia-status reports these, the units
/// in `units/` run them, tests check both against it).
pub const STEPS: &[StepInfo] = &[
    StepInfo { tool: "psd-extract", timer: "psd-extract.timer" },
    StepInfo { tool: "lake-transform", timer: "lake-transform.timer" },
    StepInfo { tool: "serve-export", timer: "serve-export.timer" },
    StepInfo { tool: MAINTAIN_STEP, timer: "lake-maintain.timer" },
    StepInfo { tool: "landing-backup", timer: "landing-backup.timer" },
    StepInfo { tool: "tag-deploy", timer: "tag-deploy.timer" },
];

/// `lake-transform maintain`'s step: recorded under its own name, so the weekly upkeep
/// neither hides nor is hidden by the transform's last run (materia-status shows both).
pub const MAINTAIN_STEP: &str = "lake-maintain";

/// Every binary a release ships in `bin/`: the steps' tools and materia-status.
pub const TOOLS: &[&str] = &["psd-extract", "lake-transform", "serve-export", "landing-backup", "tag-deploy", "materia-status"];

/// Paths derived from the data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    data_dir: PathBuf,
    state_db: PathBuf,
}

/// `FILE.corrupt`, beside the lakehouse file `file` (its real path): where a rebuild
/// keeps the corrupt file it replaced ([`Layout::kept_corrupt_lakehouse`]).
pub fn corrupt_beside(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_owned();
    name.push(".corrupt");
    file.with_file_name(name)
}

impl Layout {
    /// A layout rooted at `data_dir`; `state_db` overrides the default state DB path.
    pub fn new(data_dir: impl Into<PathBuf>, state_db: Option<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        let state_db = state_db.unwrap_or_else(|| data_dir.join("landing").join(".state.sqlite"));
        Self { data_dir, state_db }
    }

    /// `DATA_DIR`.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `DATA_DIR/landing`: the immutable landing zone.
    pub fn landing(&self) -> PathBuf {
        self.data_dir.join("landing")
    }

    /// The SQLite state DB.
    pub fn state_db(&self) -> &Path {
        &self.state_db
    }

    /// `DATA_DIR/lakehouse.duckdb`.
    pub fn lakehouse(&self) -> PathBuf {
        self.data_dir.join("lakehouse.duckdb")
    }

    /// `DATA_DIR/lakehouse.duckdb.lock`: held by whoever opens the lakehouse.
    pub fn lakehouse_lock(&self) -> PathBuf {
        self.data_dir.join("lakehouse.duckdb.lock")
    }

    /// Where a `lake-transform run --rebuild` keeps the corrupt lakehouse file it
    /// replaced: `lakehouse.duckdb.corrupt` beside the file itself (beside where a
    /// symlink at [`Self::lakehouse`] points).
    pub fn kept_corrupt_lakehouse(&self) -> PathBuf {
        corrupt_beside(&std::fs::canonicalize(self.lakehouse()).unwrap_or_else(|_| self.lakehouse()))
    }

    /// `DATA_DIR/spill/{tool}`: where the tool's DuckDB spills past its memory limit.
    pub fn spill_dir(&self, tool: &str) -> PathBuf {
        self.data_dir.join("spill").join(tool)
    }

    /// `DATA_DIR/analytics.duckdb`.
    pub fn analytics(&self) -> PathBuf {
        self.data_dir.join("analytics.duckdb")
    }

    /// `DATA_DIR/analytics.duckdb.prev`: the export before the current one.
    pub fn analytics_prev(&self) -> PathBuf {
        self.data_dir.join("analytics.duckdb.prev")
    }

    /// `DATA_DIR/locks/{step}.lock`: one exclusive lock per step.
    pub fn step_lock(&self, step: &str) -> PathBuf {
        self.data_dir.join("locks").join(format!("{step}.lock"))
    }

    /// `DATA_DIR/triggers/{name}`: files the next step's path unit watches.
    pub fn trigger(&self, name: &str) -> PathBuf {
        self.data_dir.join("triggers").join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_derive_from_the_data_dir() {
        let l = Layout::new("/d", None);
        assert_eq!(l.landing(), Path::new("/d/landing"));
        assert_eq!(l.state_db(), Path::new("/d/landing/.state.sqlite"));
        assert_eq!(l.lakehouse(), Path::new("/d/lakehouse.duckdb"));
        assert_eq!(l.analytics(), Path::new("/d/analytics.duckdb"));
        assert_eq!(l.step_lock("psd-extract"), Path::new("/d/locks/psd-extract.lock"));
        let l = Layout::new("/d", Some("/s.sqlite".into()));
        assert_eq!(l.state_db(), Path::new("/s.sqlite"));
    }
}
