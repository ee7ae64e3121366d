//! tag-deploy: pull-based deploys from git release tags.
//!
//! Every poll lists the remote's tags (git2; like `git ls-remote`, nothing is fetched
//! when nothing is new), picks the highest version tag newer than the deployed one that
//! has not failed before, fetches the tags into `APP_DIR/repo.git`, checks
//! its tree out into `releases/.tmp-<tag>-<pid>`, runs the build command there with a
//! clean environment, installs the binaries into its `bin/` (and `libduckdb.so` into
//! `lib/`, where their rpath looks), renames it to `releases/<tag>` and switches the
//! `current` symlink by atomic rename. When `web/` differs from the deployed release it
//! runs the web deploy hook; then the health check. A failed build, hook or health
//! check leaves (or switches back) `current` on the previous release, records the tag
//! as failed (not retried until `--clear-failed`), and exits non-zero.
//!
//! When the release has `.env.prod.sops`, it is decrypted with `sops` (the age key in
//! the service user's default place, `~/.config/sops/age/keys.txt`) into the env file,
//! mode 0600, on every deploy so rotations take effect; its content is never logged, and
//! a deploy that switches back restores the previous secrets.
//!
//! Tag names come from a remote and are never trusted: only names of the form `v<N>`
//! or `vX.Y.Z` (digits only) are considered at all, so no other name ever reaches a
//! path or a command; the tag reaches the build and hooks only as `MATERIA_TAG`.

use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use clap::{Parser, Subcommand};
use materia_common::layout;
use materia_common::{CommonArgs, Outcome, Report, StateDb, Step};

/// The tool's name: binary, step lock and `runs.tool`.
pub const TOOL: &str = "tag-deploy";

/// Binaries installed into a release's bin/.
const TOOLS: &[&str] = &["psd-extract", "lake-transform", "serve-export", "landing-backup", "tag-deploy", "materia-status"];

/// Deploy the newest release tag from git, or show what is deployed.
///
/// Exit codes: 0 deployed, 3 no new tag, 1 the deploy failed (the previous release
/// keeps running), 2 bad flags, 4 already running.
#[derive(Debug, Parser)]
#[command(name = TOOL, version)]
pub struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// Holds repo.git, releases/, current and the shared build target dir.
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
    /// The git remote (URL or path).
    #[arg(long, value_name = "URL", env = layout::ENV_DEPLOY_REMOTE)]
    remote: Option<String>,

    /// Build command, run with `sh -c` in the release dir (see README for its environment).
    #[arg(long, value_name = "CMD", env = layout::ENV_DEPLOY_BUILD_CMD, default_value = "cargo build --release --locked")]
    build_cmd: String,

    /// Only tags matching this glob (`*` any characters) are considered; they must also
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
    /// [default: APP_DIR/.env].
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

/// A release version: `v12` or `v1.2.3`; anything else is not a release tag.
pub fn version(tag: &str) -> Option<Vec<u64>> {
    let rest = tag.strip_prefix('v')?;
    let parts: Vec<&str> = rest.split('.').collect();
    if !(parts.len() == 1 || parts.len() == 3) {
        return None;
    }
    parts
        .iter()
        .map(|p| if !p.is_empty() && p.len() <= 18 && p.bytes().all(|b| b.is_ascii_digit()) { p.parse().ok() } else { None })
        .collect()
}

fn glob(pat: &str, s: &str) -> bool {
    match pat.split_once('*') {
        None => pat == s,
        Some((head, tail)) => {
            s.starts_with(head)
                && (tail.is_empty()
                    || s.char_indices().map(|(i, _)| i).chain([s.len()]).filter(|&i| i >= head.len()).any(|i| glob(tail, &s[i..])))
        }
    }
}

struct App {
    dir: PathBuf,
}

impl App {
    fn releases(&self) -> PathBuf {
        self.dir.join("releases")
    }
    fn current(&self) -> PathBuf {
        self.dir.join("current")
    }
    fn repo(&self) -> PathBuf {
        self.dir.join("repo.git")
    }
    fn target(&self) -> PathBuf {
        self.dir.join("target")
    }

    /// The tag `current` points at, if any.
    fn deployed(&self) -> Option<String> {
        let link = std::fs::read_link(self.current()).ok()?;
        let tag = link.file_name()?.to_str()?.to_owned();
        version(&tag).map(|_| tag)
    }

    /// Point `current` at `releases/<tag>` (or remove it) by an atomic rename.
    fn switch(&self, tag: Option<&str>) -> anyhow::Result<()> {
        let current = self.current();
        match tag {
            Some(tag) => {
                let tmp = self.dir.join(format!(".current.tmp-{}", std::process::id()));
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(Path::new("releases").join(tag), &tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                std::fs::rename(&tmp, &current).with_context(|| format!("switching {}", current.display()))?;
            }
            None => {
                let _ = std::fs::remove_file(&current);
            }
        }
        materia_common::atomic::sync_dir(&self.dir)?;
        Ok(())
    }
}

fn poll(cli: &Cli) -> anyhow::Result<Outcome> {
    let args = &cli.poll;
    let remote = args.remote.clone().ok_or_else(|| materia_common::exit::Usage("no remote: set --remote or DEPLOY_REMOTE".into()))?;
    let app = App { dir: std::path::absolute(&cli.app_dir)? };
    materia_common::run_step(TOOL, &cli.common, |step| {
        std::fs::create_dir_all(app.releases()).with_context(|| format!("creating {}", app.releases().display()))?;
        sweep(&app)?;
        if args.clear_failed {
            let n = step.db.conn().execute("UPDATE deploys SET cleared = 1 WHERE status = 'failed' AND cleared = 0", []).map_err(|e| step.db.err(e))?;
            log::info!("cleared {n} recorded failure(s)");
        }
        let repo = match git2::Repository::open_bare(app.repo()) {
            Ok(r) => r,
            Err(_) => git2::Repository::init_bare(app.repo()).with_context(|| format!("creating {}", app.repo().display()))?,
        };
        // Ask the remote which tags it has (as ls-remote does); fetch only when there is
        // something to deploy, so a poll with no new tag transfers nothing.
        let mut origin = repo.remote_anonymous(&remote)?;
        let (cb, why) = callbacks(args);
        origin
            .connect_auth(git2::Direction::Fetch, Some(cb), None)
            .map_err(|e| explained(e, &why))
            .with_context(|| format!("connecting to {remote}"))?;
        let mut tags: Vec<(Vec<u64>, String)> = origin
            .list()?
            .iter()
            .filter_map(|h| h.name().strip_prefix("refs/tags/"))
            .filter(|t| !t.ends_with("^{}") && glob(&args.tag_pattern, t))
            .filter_map(|t| version(t).map(|v| (v, t.to_owned())))
            .collect();
        origin.disconnect()?;
        tags.sort();
        tags.dedup();
        let deployed = app.deployed();
        let deployed_v = deployed.as_deref().and_then(version);
        let failed = failed_tags(&step.db)?;
        // Tags this mirror has not seen yet: fetched now, so each is judged once. One
        // that is older than the deployed release is refused (we never move back).
        let known = seen_tags(&step.db)?;
        let new: Vec<&(Vec<u64>, String)> = tags.iter().filter(|(_, t)| !known.contains(t)).collect();
        for (v, t) in &new {
            if deployed_v.as_ref().is_some_and(|d| v < d) {
                log::warn!("tag {t} is older than the deployed {}: refused", deployed.as_deref().unwrap_or("?"));
                record(step, t, "refused", deployed.as_deref(), false, Some("older than the deployed release"))?;
            }
        }
        let fetch = |repo: &git2::Repository| -> anyhow::Result<()> {
            let mut fo = git2::FetchOptions::new();
            let (cb, why) = callbacks(args);
            fo.remote_callbacks(cb);
            repo.remote_anonymous(&remote)?
                .fetch(&["+refs/tags/*:refs/tags/*"], Some(&mut fo), None)
                .map_err(|e| explained(e, &why))
                .with_context(|| format!("fetching tags from {remote}"))?;
            mark_seen(&step.db, new.iter().map(|(_, t)| t.as_str()))
        };
        let next = tags
            .iter()
            .rev()
            .find(|(v, t)| deployed_v.as_ref().is_none_or(|d| v > d) && !failed.contains(t));
        let Some((_, tag)) = next else {
            if !new.is_empty() {
                fetch(&repo)?;
            }
            let summary = match &deployed {
                Some(d) => format!("no new release tag; {d} is deployed"),
                None => "no release tag to deploy".to_owned(),
            };
            log::info!("{summary}");
            return Ok(Report { outcome: Outcome::Unchanged, summary, stats: serde_json::json!({}), failure: None });
        };
        fetch(&repo)?;
        deploy(step, &app, &repo, tag, deployed.as_deref(), args)
    })
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

/// Why a callback refused, which libgit2's own error message would hide.
type Why = std::sync::Arc<std::sync::Mutex<Option<String>>>;

fn explained(e: git2::Error, why: &Why) -> anyhow::Error {
    match why.lock().ok().and_then(|w| w.clone()) {
        Some(reason) => anyhow!(reason),
        None => anyhow!(e),
    }
}

/// SSH authentication with the deploy key, and host key verification against known_hosts.
fn callbacks(args: &PollArgs) -> (git2::RemoteCallbacks<'static>, Why) {
    let key = args.ssh_key.clone().unwrap_or_else(|| home().join(".ssh/materia_deploy"));
    let known = args.known_hosts.clone().unwrap_or_else(|| home().join(".ssh/known_hosts"));
    let why: Why = Default::default();
    let mut cb = git2::RemoteCallbacks::new();
    let mut tried = false;
    let w = why.clone();
    cb.credentials(move |_url, user, allowed| {
        // libgit2 asks again after a refusal: one try with the deploy key, then give up.
        if tried || !allowed.contains(git2::CredentialType::SSH_KEY) {
            let reason = format!("the remote refused the deploy key {}", key.display());
            *w.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
            return Err(git2::Error::from_str(&reason));
        }
        tried = true;
        git2::Cred::ssh_key(user.unwrap_or("git"), None, &key, None)
    });
    let w = why.clone();
    cb.certificate_check(move |cert, host| {
        let Some(hostkey) = cert.as_hostkey().and_then(|h| h.hostkey()) else {
            return Ok(git2::CertificateCheckStatus::CertificatePassthrough); // not SSH
        };
        if known_host(&known, host, hostkey) {
            Ok(git2::CertificateCheckStatus::CertificateOk)
        } else {
            let reason = format!("the host key of {host} is not in {} (add it with ssh-keyscan)", known.display());
            *w.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
            Err(git2::Error::from_str(&reason))
        }
    });
    (cb, why)
}

/// Is `key` listed for `host` in the known_hosts file? (Plain entries: `host`,
/// `[host]:port`, comma-separated; hashed entries are not supported.)
fn known_host(file: &Path, host: &str, key: &[u8]) -> bool {
    use base64::Engine as _;
    let Ok(text) = std::fs::read_to_string(file) else { return false };
    text.lines().filter(|l| !l.trim_start().starts_with('#')).any(|line| {
        let mut f = line.split_whitespace();
        let (Some(hosts), Some(_kind), Some(b64)) = (f.next(), f.next(), f.next()) else { return false };
        let matches = hosts.split(',').any(|h| h == host || h.strip_prefix('[').and_then(|h| h.split_once("]:")).is_some_and(|(h, _)| h == host));
        matches && base64::engine::general_purpose::STANDARD.decode(b64).is_ok_and(|k| k == key)
    })
}

/// Remove release dirs a killed deploy left, and git lock files a killed fetch or
/// checkout left in the mirror (we hold the step lock: no live process owns them).
fn sweep(app: &App) -> anyhow::Result<()> {
    fn locks(dir: &Path) -> anyhow::Result<()> {
        for e in materia_common::read_dir_or_empty(dir)? {
            let path = e.path();
            if e.file_type()?.is_dir() {
                locks(&path)?;
            } else if path.extension().is_some_and(|x| x == "lock") {
                log::warn!("removing {}, left by an interrupted git operation", path.display());
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
    locks(&app.repo())?;
    for e in std::fs::read_dir(app.releases())? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            log::warn!("removing {}, left by an interrupted deploy", e.path().display());
            std::fs::remove_dir_all(e.path())?;
        }
    }
    Ok(())
}

fn deploy(step: &Step, app: &App, repo: &git2::Repository, tag: &str, previous: Option<&str>, args: &PollArgs) -> anyhow::Result<Report> {
    log::info!("deploying {tag} (deployed: {})", previous.unwrap_or("none"));
    let commit = repo.revparse_single(&format!("refs/tags/{tag}"))?.peel_to_commit()?;
    let fail = |detail: String| -> anyhow::Result<Report> {
        record(step, tag, "failed", previous, false, Some(&detail))?;
        let summary = format!("deploy of {tag} failed; {} stays deployed", previous.unwrap_or("nothing"));
        log::error!("{summary}: {detail}");
        Ok(Report { outcome: Outcome::Changed, summary, stats: serde_json::json!({"tag": tag}), failure: Some(anyhow!("{detail}")) })
    };

    let tmp = app.releases().join(format!(".tmp-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let mut co = git2::build::CheckoutBuilder::new();
    // Into its own dir; the mirror's index is not ours to touch.
    co.target_dir(&tmp).force().update_index(false);
    repo.checkout_tree(commit.as_object(), Some(&mut co)).with_context(|| format!("checking out {tag}"))?;

    if let Err(e) = run_cmd(&args.build_cmd, &tmp, app, tag, None) {
        let _ = std::fs::remove_dir_all(&tmp);
        return fail(format!("build failed: {e:#}"));
    }
    install(app, &tmp)?;
    let dir = app.releases().join(tag);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&tmp, &dir).with_context(|| format!("renaming to {}", dir.display()))?;
    materia_common::atomic::sync_dir(&app.releases())?;

    let env_file = args.env_file.clone().unwrap_or_else(|| app.dir.join(".env"));
    let old_secrets = std::fs::read(&env_file).ok();
    let sops_file = dir.join(".env.prod.sops");
    if sops_file.exists() {
        if let Err(e) = decrypt(&sops_file, &env_file, tag) {
            std::fs::remove_dir_all(&dir)?;
            return fail(format!("{e:#}"));
        }
        log::info!("secrets decrypted to {}", env_file.display());
    }
    let web_changed = web_changed(repo, previous, &commit)?;
    app.switch(Some(tag))?;
    let after = (|| -> anyhow::Result<()> {
        if web_changed {
            let hook = dir.join(&args.web_hook);
            log::info!("web/ changed: running {}", hook.display());
            run_cmd(&format!("\"./{}\"", args.web_hook.replace('"', "")), &dir, app, tag, None).context("web deploy hook failed")?;
        }
        if let Some(h) = &args.health_cmd {
            run_cmd(h, &dir, app, tag, Some(Duration::from_secs(args.health_timeout))).context("health check failed")?;
        }
        Ok(())
    })();
    if let Err(e) = after {
        app.switch(previous)?;
        if sops_file.exists() {
            match &old_secrets {
                Some(bytes) => write_secret(&env_file, bytes)?,
                None => {
                    let _ = std::fs::remove_file(&env_file);
                }
            }
        }
        return fail(format!("{e:#}; switched back"));
    }
    record(step, tag, "deployed", previous, web_changed, None)?;
    prune(app, tag, previous, args.keep)?;
    println!("{tag}");
    let summary = format!("deployed {tag} (was {}){}", previous.unwrap_or("nothing"), if web_changed { "; web hook ran" } else { "" });
    log::info!("{summary}");
    Ok(Report { outcome: Outcome::Changed, summary, stats: serde_json::json!({"tag": tag, "web_hook": web_changed}), failure: None })
}

/// Run `cmd` with `sh -c` in `dir`, with a clean environment: PATH, HOME, LANG, the
/// toolchain's CARGO_HOME/RUSTUP_HOME and DUCKDB_LIB_DIR if set, the shared
/// CARGO_TARGET_DIR, MATERIA_TAG and MATERIA_RELEASE_DIR. Nothing else leaks in.
fn run_cmd(cmd: &str, dir: &Path, app: &App, tag: &str, timeout: Option<Duration>) -> anyhow::Result<()> {
    let mut c = std::process::Command::new("sh");
    c.arg("-c").arg(cmd).current_dir(dir).env_clear();
    for v in ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "DUCKDB_LIB_DIR"] {
        if let Some(val) = std::env::var_os(v) {
            c.env(v, val);
        }
    }
    c.env("LANG", "C.UTF-8")
        .env("CARGO_TARGET_DIR", app.target())
        .env("MATERIA_TAG", tag)
        .env("MATERIA_RELEASE_DIR", dir)
        .stdin(std::process::Stdio::null());
    let mut child = c.spawn().with_context(|| format!("starting `{cmd}`"))?;
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        if let Some(status) = child.try_wait()? {
            return if status.success() { Ok(()) } else { Err(anyhow!("`{cmd}` exited with {status}")) };
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(anyhow!("`{cmd}` did not finish within {} s", timeout.unwrap_or_default().as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Decrypt a release's dotenv secrets with sops into `env_file`.
fn decrypt(sops_file: &Path, env_file: &Path, tag: &str) -> anyhow::Result<()> {
    let mut c = std::process::Command::new("sops");
    c.args(["--disable-version-check", "--decrypt", "--input-type", "dotenv", "--output-type", "dotenv"])
        .arg(sops_file)
        .env_clear();
    for v in ["PATH", "HOME", "XDG_CONFIG_HOME", "SOPS_AGE_KEY_FILE"] {
        if let Some(val) = std::env::var_os(v) {
            c.env(v, val);
        }
    }
    let out = match c.stdin(std::process::Stdio::null()).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("{tag} has .env.prod.sops but sops is not installed (not on PATH)")
        }
        Err(e) => return Err(anyhow!(e).context("running sops")),
    };
    if !out.status.success() {
        // sops' own message names the problem (no key, wrong key); it never holds the secrets.
        let why = String::from_utf8_lossy(&out.stderr).lines().find(|l| !l.trim().is_empty()).unwrap_or("").to_owned();
        anyhow::bail!("sops could not decrypt .env.prod.sops of {tag}: {why}");
    }
    write_secret(env_file, &out.stdout)
}

/// Write `bytes` to `path` atomically, readable by its owner only.
fn write_secret(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow!("bad env file {}", path.display()))?;
    let mut f = materia_common::atomic::AtomicFile::create_in(dir, name)?;
    f.file().set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.file().write_all(bytes)?;
    f.commit_replace(name)?;
    Ok(())
}

/// Copy the built binaries (and libduckdb.so) into the release.
fn install(app: &App, release: &Path) -> anyhow::Result<()> {
    let bin = release.join("bin");
    std::fs::create_dir_all(&bin)?;
    let mut n = 0;
    for t in TOOLS {
        let src = app.target().join("release").join(t);
        if src.is_file() {
            std::fs::copy(&src, bin.join(t)).with_context(|| format!("installing {}", src.display()))?;
            n += 1;
        }
    }
    if n == 0 {
        anyhow::bail!("the build produced none of the tools in {}", app.target().join("release").display());
    }
    if let Some(lib) = std::env::var_os("DUCKDB_LIB_DIR").map(|d| PathBuf::from(d).join("libduckdb.so")).filter(|p| p.is_file()) {
        std::fs::create_dir_all(release.join("lib"))?;
        std::fs::copy(&lib, release.join("lib/libduckdb.so"))?;
    }
    Ok(())
}

/// Did anything under web/ change between the deployed release and `new`?
fn web_changed(repo: &git2::Repository, previous: Option<&str>, new: &git2::Commit<'_>) -> anyhow::Result<bool> {
    let new_tree = new.tree()?;
    let old_tree = match previous.map(|p| repo.revparse_single(&format!("refs/tags/{p}")).and_then(|o| o.peel_to_tree())) {
        Some(Ok(t)) => Some(t),
        _ => None,
    };
    let mut opts = git2::DiffOptions::new();
    opts.pathspec("web/");
    let diff = repo.diff_tree_to_tree(old_tree.as_ref(), Some(&new_tree), Some(&mut opts))?;
    Ok(diff.deltas().len() > 0)
}

/// Keep the current, the previous and the `keep` newest other releases.
fn prune(app: &App, current: &str, previous: Option<&str>, keep: usize) -> anyhow::Result<()> {
    let mut others: Vec<(Vec<u64>, String)> = std::fs::read_dir(app.releases())?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n != current && Some(n.as_str()) != previous)
        .filter_map(|n| version(&n).map(|v| (v, n)))
        .collect();
    others.sort();
    let excess = others.len().saturating_sub(keep);
    for (_, n) in others.into_iter().take(excess) {
        log::info!("pruning release {n}");
        std::fs::remove_dir_all(app.releases().join(&n))?;
    }
    Ok(())
}

fn failed_tags(db: &StateDb) -> anyhow::Result<Vec<String>> {
    let mut st = db.conn().prepare("SELECT DISTINCT tag FROM deploys WHERE status = 'failed' AND cleared = 0").map_err(|e| db.err(e))?;
    let rows = st.query_map([], |r| r.get(0)).map_err(|e| db.err(e))?;
    rows.collect::<Result<_, _>>().map_err(|e| db.err(e).into())
}

fn seen_tags(db: &StateDb) -> anyhow::Result<std::collections::HashSet<String>> {
    let mut st = db.conn().prepare("SELECT tag FROM deploy_seen_tags").map_err(|e| db.err(e))?;
    let rows = st.query_map([], |r| r.get(0)).map_err(|e| db.err(e))?;
    rows.collect::<Result<_, _>>().map_err(|e| db.err(e).into())
}

fn mark_seen<'a>(db: &StateDb, tags: impl Iterator<Item = &'a str>) -> anyhow::Result<()> {
    let tx = db.conn().unchecked_transaction().map_err(|e| db.err(e))?;
    {
        let mut st = tx
            .prepare(&format!("INSERT OR IGNORE INTO deploy_seen_tags (tag, seen_at) VALUES (?1, {})", materia_common::state::NOW))
            .map_err(|e| db.err(e))?;
        for t in tags {
            st.execute([t]).map_err(|e| db.err(e))?;
        }
    }
    tx.commit().map_err(|e| db.err(e))?;
    Ok(())
}

fn record(step: &Step, tag: &str, status: &str, previous: Option<&str>, web: bool, detail: Option<&str>) -> anyhow::Result<()> {
    step.db
        .conn()
        .execute(
            &format!(
                "INSERT INTO deploys (run_id, tag, status, previous_tag, web_hook, detail, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, {})",
                materia_common::state::NOW
            ),
            rusqlite::params![step.run_id, tag, status, previous, web, detail],
        )
        .map_err(|e| step.db.err(e))?;
    Ok(())
}

fn status(cli: &Cli) -> anyhow::Result<Outcome> {
    let app = App { dir: cli.app_dir.clone() };
    let layout = cli.common.layout();
    let deployed = app.deployed();
    let (mut when, mut prev, mut failed) = (None, None, Vec::new());
    if layout.state_db().exists() {
        let db = StateDb::open_read_only(layout.state_db())?;
        if let Some(tag) = &deployed {
            let row: Option<(String, Option<String>)> = db
                .conn()
                .query_row(
                    "SELECT at, previous_tag FROM deploys WHERE tag = ?1 AND status = 'deployed' ORDER BY rowid DESC LIMIT 1",
                    [tag],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .ok();
            if let Some((at, p)) = row {
                when = Some(at);
                prev = p;
            }
        }
        failed = failed_tags(&db)?;
    }
    println!("deployed: {}", deployed.as_deref().unwrap_or("none"));
    println!("since:    {}", when.as_deref().unwrap_or("-"));
    println!("previous: {}", prev.as_deref().unwrap_or("-"));
    println!("failed:   {}", if failed.is_empty() { "-".to_owned() } else { failed.join(" ") });
    Ok(Outcome::Changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_version_tags_are_release_tags() {
        assert_eq!(version("v12"), Some(vec![12]));
        assert_eq!(version("v1.2.3"), Some(vec![1, 2, 3]));
        for bad in ["v1.2", "v1.2.3-rc1", "1.2.3", "v", "v1;rm -rf", "../x", "v1 2", "v1\n2", "v1.2.3.4", "vx", "v01a"] {
            assert_eq!(version(bad), None, "{bad:?}");
        }
        let mut v = vec![version("v10").unwrap(), version("v9").unwrap(), version("v1.2.10").unwrap(), version("v1.2.9").unwrap()];
        v.sort();
        assert_eq!(v, [vec![1, 2, 9], vec![1, 2, 10], vec![9], vec![10]]);
        assert!(glob("v*", "v12") && glob("v1.*", "v1.2.3") && !glob("v1.*", "v2.0.0") && glob("*", "x"));
        assert!(glob("v*.0", "v1.0.0") && !glob("v*.0", "v1.0.1") && !glob("v*", "é") && glob("*é", "xé"));
    }
}
