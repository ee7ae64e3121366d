//! tag-deploy: pull-based deploys from git release tags.
//!
//! Every poll lists the remote's tags ([`git`]; like `git ls-remote`, nothing is fetched
//! when nothing is new), picks the highest version tag newer than the deployed one that
//! has not failed before, fetches the tags into `APP_DIR/repo.git`, writes the tag's
//! tree into the build dir `APP_DIR/build` (only the files that changed, so the build
//! is incremental) and runs the build command there, checks the tag out into
//! `releases/.tmp-<tag>-<pid>`, installs the binaries into its `bin/` (and
//! `libduckdb.so` into `lib/`), fsyncs it, renames it to `releases/<tag>` and switches
//! the `current` symlink by atomic rename ([`release`]). When `web/` differs from the
//! deployed release it runs the web deploy hook; then the health check.
//!
//! Whatever step of a deploy fails (the tag does not peel to a commit, the checkout,
//! the build, the install, the secrets, the hook, the health check), `current` stays
//! or is switched back on the previous release, the secrets files are restored, the tag
//! is recorded as failed once and not tried again until `--clear-failed` or until the
//! tag is moved to a commit that has not failed as it (the mirror keeps those), and the
//! run exits 1. A deployed version is never deployed again: a poll that finds its tag
//! moved says so. Listing and fetching the remote, the build, the hook and the health check
//! each run under a deadline.
//!
//! When the release has `.env.prod.sops`, it is decrypted with `sops` into the secrets
//! file and, for the lake's keys, `lake.env` beside it ([`secrets`]), mode 0600, on
//! every deploy so rotations take effect; its content is never logged. The configuration (`/etc/materia/config.env`) is never touched.
//!
//! Tag names come from a remote and are never trusted: only names of the form `v<N>`
//! or `vX.Y.Z` (digits only) are considered at all, so no other name ever reaches a
//! path or a command; the tag reaches the build and hooks only as `MATERIA_TAG`.

pub mod git;
mod mirror;
mod records;
pub mod release;
mod secrets;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::{Parser, Subcommand};
use materia_common::layout;
use materia_common::{CommonArgs, Outcome, Report, StateDb, Step};

use git::{Remote, version};
use release::{App, Cmd};

/// The tool's name: binary, step lock and `runs.tool`.
pub const TOOL: &str = "tag-deploy";

/// Deploy the newest release tag from git, or show what is deployed.
///
/// Exit codes: 0 deployed, 3 no new tag, 1 the deploy failed (the previous release
/// keeps running), 2 bad flags, 4 already running.
#[derive(Debug, Parser)]
#[command(name = TOOL, version)]
pub struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Holds repo.git, build/, target/, releases/ and current.
    #[arg(long, global = true, value_name = "DIR", env = layout::ENV_APP_DIR, default_value = layout::DEFAULT_APP_DIR)]
    app_dir: PathBuf,

    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    poll: PollArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch tags and deploy the newest (the default).
    Poll,
    /// Print the deployed tag, when, the previous tag and the failed tags.
    Status,
}

#[derive(Debug, clap::Args)]
struct PollArgs {
    /// The git remote (URL or path). Credentials in it are never printed.
    #[arg(long, value_name = "URL", env = layout::ENV_DEPLOY_REMOTE)]
    remote: Option<String>,

    /// Build command, run with `sh -c` in the build dir (see README for its environment).
    #[arg(long, value_name = "CMD", env = layout::ENV_DEPLOY_BUILD_CMD, default_value = "cargo build --release --locked")]
    build_cmd: String,

    /// Seconds the build may take; then it is killed, with everything it started, and
    /// the tag fails. A cold release build of every tool takes about 10 minutes on 2 cores.
    #[arg(long, value_name = "SECS", default_value_t = 2700)]
    build_timeout: u64,

    /// Seconds listing or fetching the remote's tags may take (each).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    git_timeout: u64,

    /// Only tags matching this glob (`*` any characters, `?` one) are considered; they must also
    /// be versions, v<N> or vX.Y.Z.
    #[arg(long, value_name = "GLOB", default_value = "v*")]
    tag_pattern: String,

    /// Health check after the switch, run with `sh -c`; exit 0 means healthy.
    #[arg(long, value_name = "CMD", env = layout::ENV_DEPLOY_HEALTH_CMD)]
    health_cmd: Option<String>,

    /// Seconds the health check may take.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    health_timeout: u64,

    /// The web deploy hook, relative to the release; it runs when web/ changed.
    #[arg(long, value_name = "PATH", default_value = "web/deploy.sh")]
    web_hook: String,

    /// Seconds the web deploy hook may take.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    hook_timeout: u64,

    /// Releases to keep besides the current and the previous one.
    #[arg(long, value_name = "N", default_value_t = 3)]
    keep: usize,

    /// Forget the recorded failures, so failed tags are tried again.
    #[arg(long)]
    clear_failed: bool,

    /// Private key for an SSH remote (ssh://… or user@host:path) [default: ~/.ssh/materia_deploy].
    #[arg(long, value_name = "FILE", env = layout::ENV_DEPLOY_SSH_KEY)]
    ssh_key: Option<PathBuf>,

    /// An SSH remote's host key must be listed here [default: ~/.ssh/known_hosts].
    #[arg(long, value_name = "FILE", env = layout::ENV_DEPLOY_KNOWN_HOSTS)]
    known_hosts: Option<PathBuf>,

    /// Where a release's `.env.prod.sops` is decrypted to (mode 0600) on every deploy
    /// [default: APP_DIR/secrets.env]; its lake secrets (MATERIA_LAKE_S3_KEY_ID,
    /// MATERIA_LAKE_S3_SECRET, PGPASSWORD) go to lake.env beside it instead.
    #[arg(long, value_name = "FILE", env = layout::ENV_DEPLOY_ENV_FILE)]
    env_file: Option<PathBuf>,
}

/// Run the tool.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    materia_common::init_logging(&cli.common);
    match cli.command {
        Some(Command::Status) => status(&cli),
        Some(Command::Poll) | None => poll(&cli),
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

fn poll(cli: &Cli) -> anyhow::Result<Outcome> {
    let args = &cli.poll;
    let url = args.remote.clone().ok_or_else(|| materia_common::exit::Usage("no remote: set --remote or DEPLOY_REMOTE".into()))?;
    let remote = Remote {
        url,
        ssh_key: args.ssh_key.clone().unwrap_or_else(|| home().join(".ssh/materia_deploy")),
        known_hosts: args.known_hosts.clone().unwrap_or_else(|| home().join(".ssh/known_hosts")),
        timeout: Duration::from_secs(args.git_timeout),
    };
    let app = App { dir: std::path::absolute(&cli.app_dir)? };
    materia_common::run_step(TOOL, &cli.common, |step| {
        std::fs::create_dir_all(app.releases()).with_context(|| format!("creating {}", app.releases().display()))?;
        app.sweep()?;
        if args.clear_failed {
            let n = records::clear_failed(&step.db)?;
            mirror::clear_failed(&app.repo())?;
            log::info!("cleared {n} recorded failure(s)");
        }
        if git2::Repository::open_bare(app.repo()).is_err() {
            git2::Repository::init_bare(app.repo()).with_context(|| format!("creating {}", app.repo().display()))?;
        }
        // Ask the remote which tags it has (as ls-remote does); fetch only when there is
        // something to deploy, so a poll with no new tag transfers nothing.
        let tags = remote.release_tags(&args.tag_pattern)?;
        let deployed = app.deployed();
        let deployed_v = deployed.as_deref().and_then(version);
        let failed = records::failures(&step.db)?;
        // Tags this mirror has not seen yet: fetched now, so each is judged once. One
        // that is older than the deployed release is refused (we never move back).
        let known = records::seen_tags(&step.db)?;
        let new: Vec<&git::RemoteTag> = tags.iter().filter(|t| !known.contains(&t.name)).collect();
        for t in &new {
            if deployed_v.as_ref().is_some_and(|d| &t.version < d) {
                log::warn!("tag {} is older than the deployed {}: refused", t.name, deployed.as_deref().unwrap_or("?"));
                let row = records::Row {
                    tag: &t.name,
                    target: t.target,
                    status: "refused",
                    previous: deployed.as_deref(),
                    web: false,
                    detail: Some("older than the deployed release"),
                };
                records::record(step, &row)?;
            }
        }
        records::mark_seen(&step.db, new.iter().map(|t| t.name.as_str()))?;
        let pick = mirror::pick(&app.repo(), &tags, deployed.as_deref(), &failed);
        let Some((next, failed_at)) = pick.next else {
            let summary = match &deployed {
                Some(d) => format!("no new release tag; {d} is deployed"),
                None => "no release tag to deploy".to_owned(),
            };
            // Said on every poll until a newer version is tagged (or the tag put back).
            match pick.moved_deployed {
                Some((t, was)) => log::warn!(
                    "{summary}, but the remote's {} now points at {}, not the deployed {}: a version deploys once; tag the change as a newer version",
                    t.name,
                    git::short(t.target),
                    git::short(was)
                ),
                None => log::info!("{summary}"),
            }
            return Ok(Report { outcome: Outcome::Unchanged, summary, stats: serde_json::json!({}), failure: None });
        };
        if let Some(was) = failed_at {
            log::info!("{} now points at {}, not {} where it failed: trying it again", next.name, git::short(next.target), git::short(was));
        }
        deploy(step, &app, &remote, next, deployed.as_deref(), args)
    })
}

/// What a deploy changed so far, to undo when a later step fails.
#[derive(Default)]
struct Done {
    /// The temp release dir, until renamed.
    tmp: Option<PathBuf>,
    /// `releases/<tag>`, once renamed.
    release: Option<PathBuf>,
    /// The secrets files before this deploy wrote them (`None` in one: there was none).
    secrets_before: Option<[Option<Vec<u8>>; 2]>,
    /// `current` before the switch (`Some(None)`: there was none).
    switched_from: Option<Option<PathBuf>>,
}

fn deploy(step: &Step, app: &App, remote: &Remote, next: &git::RemoteTag, previous: Option<&str>, args: &PollArgs) -> anyhow::Result<Report> {
    let tag = next.name.as_str();
    log::info!("deploying {tag} at {} (deployed: {})", git::short(next.target), previous.unwrap_or("none"));
    let mut done = Done::default();
    // The commit this deploy is of: the one fetched (the remote may have moved the tag
    // since it listed it), or the one listed when the fetch failed.
    let (result, target) = match remote.fetch_tag(&app.repo(), tag) {
        // The network's or the remote's fault, not the tag's: the next poll tries again.
        Err(e) if git::is_unreachable(&e) => return Err(e),
        Err(e) => (Err(e.context(format!("fetching {tag}"))), next.target),
        Ok(()) => (attempt(app, tag, previous, args, &mut done), mirror::fetched_commit(&app.repo(), tag).unwrap_or(next.target)),
    };
    let row = |status, web, detail| records::Row { tag, target, status, previous, web, detail };
    match result {
        Ok(web_changed) => {
            records::record(step, &row("deployed", web_changed, None))?;
            // Its earlier failures (at commits the tag no longer points at) are history.
            records::clear_failed_of(&step.db, tag)?;
            app.prune(tag, previous, args.keep)?;
            println!("{tag}");
            let summary = format!("deployed {tag} (was {}){}", previous.unwrap_or("nothing"), if web_changed { "; web hook ran" } else { "" });
            log::info!("{summary}");
            Ok(Report { outcome: Outcome::Changed, summary, stats: serde_json::json!({"tag": tag, "web_hook": web_changed}), failure: None })
        }
        Err(e) => {
            let mut detail = materia_common::exit::one_line(&e);
            match undo(app, args, done) {
                Ok(Some(back)) => detail = format!("{detail}; switched back to {back}"),
                Ok(None) => {}
                Err(undo_err) => detail = format!("{detail}; undoing it also failed: {}", materia_common::exit::one_line(&undo_err)),
            }
            if let Some(hint) = release::low_disk(&app.dir) {
                detail = format!("{detail}; {hint}");
            }
            let summary = format!("deploy of {tag} failed; {} stays deployed", previous.unwrap_or("nothing"));
            // Said before it is recorded: a full disk can fail the record too.
            log::error!("{summary}: {detail}");
            // Recorded once, with its commit: the tag is not tried again there until
            // --clear-failed, only once moved to a commit that has not failed as it.
            records::record(step, &row("failed", false, Some(&detail)))?;
            Ok(Report { outcome: Outcome::Changed, summary, stats: serde_json::json!({"tag": tag}), failure: Some(anyhow!(detail)) })
        }
    }
}

/// Every step of a deploy; returns whether the web hook ran.
fn attempt(app: &App, tag: &str, previous: Option<&str>, args: &PollArgs, done: &mut Done) -> anyhow::Result<bool> {
    let repo = git2::Repository::open_bare(app.repo()).with_context(|| format!("opening {}", app.repo().display()))?;
    let commit = repo
        .revparse_single(&format!("refs/tags/{tag}"))
        .and_then(|o| o.peel_to_commit())
        .with_context(|| format!("{tag} does not point at a commit"))?;

    // The build: in the long-lived build dir, where only changed files are rewritten.
    let written = git::sync_tree(&repo, &commit.tree()?, &app.build())?;
    log::info!("{} files changed in {} since the last build", written, app.build().display());

    let tmp = app.releases().join(format!(".tmp-{tag}-{}", std::process::id()));
    done.tmp = Some(tmp.clone());
    std::fs::create_dir_all(&tmp)?;
    let mut co = git2::build::CheckoutBuilder::new();
    // Into its own dir; the mirror's index is not ours to touch.
    co.target_dir(&tmp).force().update_index(false);
    repo.checkout_tree(commit.as_object(), Some(&mut co)).with_context(|| format!("checking out {tag}"))?;

    app.clear_built()?;
    let build = Cmd {
        cmd: &args.build_cmd,
        dir: &app.build(),
        release: &tmp,
        tag,
        timeout: Duration::from_secs(args.build_timeout),
        flag: "--build-timeout",
    };
    release::run(app, &build).context("build failed")?;
    app.install(&tmp)?;
    release::sync_tree(&tmp)?;
    let dir = app.releases().join(tag);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("renaming to {}", dir.display()))?;
    done.tmp = None;
    done.release = Some(dir.clone());
    materia_common::atomic::sync_dir(&app.releases())?;

    let sops_file = dir.join(secrets::SOPS_FILE);
    if sops_file.exists() {
        let files = secret_files(app, args);
        done.secrets_before = Some(files.read());
        secrets::decrypt(&sops_file, &files, tag)?;
        log::info!("secrets decrypted to {} (the lake's to {})", files.general.display(), files.lake.display());
    }
    let web_changed = git::changed(&repo, previous, &commit, "web/")?;
    if previous.is_some() && git::changed(&repo, previous, &commit, "units/")? {
        log::warn!("units/ changed in {tag}: tag-deploy cannot install units; run infra/bootstrap.sh as root from a checkout of {tag}");
    }
    done.switched_from = Some(app.current_link());
    app.switch(Some(&Path::new("releases").join(tag)))?;
    if web_changed {
        log::info!("web/ changed: running {}", dir.join(&args.web_hook).display());
        let hook = format!("\"./{}\"", args.web_hook.replace('"', ""));
        let c = Cmd { cmd: &hook, dir: &dir, release: &dir, tag, timeout: Duration::from_secs(args.hook_timeout), flag: "--hook-timeout" };
        release::run(app, &c).context("web deploy hook failed")?;
    }
    if let Some(h) = &args.health_cmd {
        let c = Cmd { cmd: h, dir: &dir, release: &dir, tag, timeout: Duration::from_secs(args.health_timeout), flag: "--health-timeout" };
        release::run(app, &c).context("health check failed")?;
    }
    Ok(web_changed)
}

/// Put back what a failed deploy changed: `current`, the secrets, the release dirs.
/// Returns what `current` was switched back to, if it had been switched.
fn undo(app: &App, args: &PollArgs, done: Done) -> anyhow::Result<Option<String>> {
    let mut back = None;
    if let Some(before) = done.switched_from {
        app.switch(before.as_deref())?;
        back = Some(before.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "nothing".into()));
    }
    if let Some(before) = done.secrets_before {
        secret_files(app, args).restore(before)?;
    }
    for dir in [done.tmp, done.release].into_iter().flatten() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(back)
}

fn secret_files(app: &App, args: &PollArgs) -> secrets::Files {
    secrets::Files::beside(args.env_file.clone().unwrap_or_else(|| app.dir.join("secrets.env")))
}

fn status(cli: &Cli) -> anyhow::Result<Outcome> {
    let app = App { dir: cli.app_dir.clone() };
    let layout = cli.common.layout();
    let deployed = app.deployed();
    let db = if layout.state_db().exists() { Some(StateDb::open_read_only(layout.state_db())?) } else { None };
    records::print_status(db.as_ref(), deployed.as_deref())?;
    Ok(Outcome::Changed)
}

#[cfg(test)]
mod cli_tests {
    #[test]
    fn the_flags_are_sound() {
        // clap checks the whole command definition (names, conflicts, defaults).
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
