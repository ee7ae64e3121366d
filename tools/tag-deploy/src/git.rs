//! Everything that talks to git: release tag names, listing and fetching the remote
//! (SSH with the deploy key and known_hosts, every call under a deadline), and
//! writing a tag's tree into a directory.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow};

/// A release version: `v12` or `v1.2.3`; anything else is not a release tag.
pub fn version(tag: &str) -> Option<Vec<u64>> {
    let rest = tag.strip_prefix('v')?;
    let parts: Vec<&str> = rest.split('.').collect();
    if !(parts.len() == 1 || parts.len() == 3) {
        return None;
    }
    parts.iter().map(|p| if !p.is_empty() && p.len() <= 18 && p.bytes().all(|b| b.is_ascii_digit()) { p.parse().ok() } else { None }).collect()
}

/// A release tag on the remote.
#[derive(Debug, Clone)]
pub struct RemoteTag {
    pub version: Vec<u64>,
    pub name: String,
    /// The commit it points at (an annotated tag's, peeled), as the remote lists it.
    pub target: git2::Oid,
}

/// An object id as a log line shows it: its first 7 hex digits, as git does.
pub fn short(oid: git2::Oid) -> String {
    oid.to_string()[..7].to_owned()
}

/// How to reach the remote: its URL, the deploy key and known_hosts for SSH, and how
/// long one listing or fetch may take.
#[derive(Debug, Clone)]
pub struct Remote {
    /// URL or path.
    pub url: String,
    /// Private key for SSH remotes.
    pub ssh_key: PathBuf,
    /// Host keys an SSH remote must match.
    pub known_hosts: PathBuf,
    /// Deadline of each listing and fetch.
    pub timeout: Duration,
}

impl Remote {
    /// The URL as safe to print: a password or token in it is replaced by `***`.
    pub fn display(&self) -> String {
        redact(&self.url)
    }

    /// The remote's release tags, by version (as `git ls-remote --tags`: nothing is fetched).
    pub fn release_tags(&self, pattern: &str) -> anyhow::Result<Vec<RemoteTag>> {
        let remote = self.clone();
        let pattern = pattern.to_owned();
        with_deadline(&format!("listing the tags of {}", self.display()), self.timeout, move || {
            let mut origin = git2::Remote::create_detached(remote.url.as_str())?;
            let (cb, why) = remote.callbacks();
            origin
                .connect_auth(git2::Direction::Fetch, Some(cb), None)
                .map_err(|e| explained(e, &why))
                .with_context(|| format!("connecting to {}", remote.display()))?;
            // An annotated tag is listed twice: the tag object, then `name^{}`, the
            // commit it peels to (what a deploy builds, and what the mirror is compared by).
            let (mut direct, mut peeled) = (BTreeMap::new(), BTreeMap::new());
            for h in origin.list()? {
                let Some(name) = h.name().strip_prefix("refs/tags/") else { continue };
                match name.strip_suffix("^{}") {
                    Some(base) => peeled.insert(base.to_owned(), h.oid()),
                    None => direct.insert(name.to_owned(), h.oid()),
                };
            }
            origin.disconnect()?;
            let mut tags: Vec<RemoteTag> = direct
                .into_iter()
                .filter(|(name, _)| materia_common::glob::wildcard(&pattern, name))
                .filter_map(|(name, oid)| {
                    let version = version(&name)?;
                    Some(RemoteTag { target: peeled.get(&name).copied().unwrap_or(oid), version, name })
                })
                .collect();
            tags.sort_by(|a, b| (&a.version, &a.name).cmp(&(&b.version, &b.name)));
            Ok(tags)
        })
    }

    /// Fetch one tag into the bare mirror at `repo`. Only that tag: another tag that is
    /// not a commit (libgit2 refuses to fetch it) must not stop this one.
    pub fn fetch_tag(&self, repo: &Path, tag: &str) -> anyhow::Result<()> {
        let remote = self.clone();
        let repo = repo.to_owned();
        let refspec = format!("+refs/tags/{tag}:refs/tags/{tag}");
        let tag = tag.to_owned();
        with_deadline(&format!("fetching {tag} from {}", self.display()), self.timeout, move || {
            let repo = git2::Repository::open_bare(&repo).with_context(|| format!("opening {}", repo.display()))?;
            // A tag that is not a commit breaks libgit2's later fetches: none is kept.
            drop_non_commit_tags(&repo)?;
            let mut fo = git2::FetchOptions::new();
            let (cb, why) = remote.callbacks();
            fo.remote_callbacks(cb);
            // No tag auto-following: only the one tag asked for.
            fo.download_tags(git2::AutotagOption::None);
            repo.remote_anonymous(&remote.url)?
                .fetch(&[refspec.as_str()], Some(&mut fo), None)
                .map_err(|e| explained(e, &why))
                .with_context(|| format!("fetching from {}", remote.display()))?;
            let fetched = repo.revparse_single(&format!("refs/tags/{tag}"));
            if fetched.and_then(|o| o.peel_to_commit()).is_err() {
                drop_non_commit_tags(&repo)?;
                anyhow::bail!("{tag} does not point at a commit");
            }
            Ok(())
        })
    }

    /// SSH authentication with the deploy key, and host key verification against known_hosts.
    fn callbacks(&self) -> (git2::RemoteCallbacks<'static>, Why) {
        let key = self.ssh_key.clone();
        let known = self.known_hosts.clone();
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
}

/// Delete the mirror's tag refs that do not lead to a commit.
fn drop_non_commit_tags(repo: &git2::Repository) -> anyhow::Result<()> {
    for r in repo.references_glob("refs/tags/*")? {
        let mut r = r?;
        if r.peel_to_commit().is_err() {
            log::warn!("removing {} from the mirror: not a commit", r.name().unwrap_or("?"));
            r.delete()?;
        }
    }
    Ok(())
}

/// `url` without the password or token in its user part (`https://user:TOKEN@host/…`
/// → `https://user:***@host/…`; over HTTP a lone user part is a token too:
/// `https://TOKEN@host/…` → `https://***@host/…`), so it can be logged, recorded and
/// sent to a webhook. SSH user names (`git@host`) are kept.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return url.to_owned() };
    match userinfo.split_once(':') {
        Some((user, _secret)) => format!("{scheme}://{user}:***@{host}{path}"),
        None if scheme.starts_with("http") => format!("{scheme}://***@{host}{path}"),
        None => url.to_owned(),
    }
}

/// The remote could not be reached or refused us (network, SSH, deadline): the poll
/// fails and the next one tries again; no tag is blamed for it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// Is this error the remote's or the network's, not the tag's?
pub fn is_unreachable(e: &anyhow::Error) -> bool {
    use git2::ErrorClass as C;
    e.chain().any(|c| {
        c.is::<Unreachable>()
            || c.downcast_ref::<git2::Error>().is_some_and(|g| matches!(g.class(), C::Net | C::Ssh | C::Http | C::Ssl | C::Os | C::Callback))
    })
}

/// Run `f` on its own thread and wait at most `timeout` for it. libgit2 has no deadline
/// of its own that covers SSH; when this one passes, the run fails and the process ends
/// with the stuck thread (the next run sweeps any git lock file it left).
fn with_deadline<T: Send + 'static>(what: &str, timeout: Duration, f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("git".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .context("starting the git thread")?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            Err(Unreachable(format!("{what} did not finish within {} s (--git-timeout)", timeout.as_secs())).into())
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(anyhow!("{what} stopped without an answer")),
    }
}

/// Why a callback refused, which libgit2's own error message would hide.
type Why = std::sync::Arc<std::sync::Mutex<Option<String>>>;

fn explained(e: git2::Error, why: &Why) -> anyhow::Error {
    match why.lock().ok().and_then(|w| w.clone()) {
        Some(reason) => Unreachable(reason).into(),
        None => anyhow!(e),
    }
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

/// Did anything under `prefix` (e.g. `web/`) change between the tag `previous` and `new`?
/// With no previous release, everything is new.
pub fn changed(repo: &git2::Repository, previous: Option<&str>, new: &git2::Commit<'_>, prefix: &str) -> anyhow::Result<bool> {
    let new_tree = new.tree()?;
    let old_tree = match previous.map(|p| repo.revparse_single(&format!("refs/tags/{p}")).and_then(|o| o.peel_to_tree())) {
        Some(Ok(t)) => Some(t),
        _ => None,
    };
    let mut opts = git2::DiffOptions::new();
    opts.pathspec(prefix);
    let diff = repo.diff_tree_to_tree(old_tree.as_ref(), Some(&new_tree), Some(&mut opts))?;
    Ok(diff.deltas().len() > 0)
}

/// Make `dir` hold exactly the files of `tree`, writing only those whose content or
/// mode differs and removing the rest. The build dir is kept this way from tag to tag,
/// so cargo (which compares mtimes) rebuilds only what changed. Returns how many files
/// were written.
pub fn sync_tree(repo: &git2::Repository, tree: &git2::Tree<'_>, dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut wanted: HashSet<PathBuf> = HashSet::new();
    let mut written = 0;
    let mut failed = None;
    tree.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
        let result = (|| -> anyhow::Result<()> {
            let name = entry.name().map_err(|_| anyhow!("a file name in the tree is not UTF-8"))?;
            let rel = Path::new(root).join(name);
            let path = dir.join(&rel);
            match entry.kind() {
                Some(git2::ObjectType::Tree) => ensure_dir(&path)?,
                Some(git2::ObjectType::Blob) => {
                    let blob = repo.find_blob(entry.id())?;
                    if put_file(&path, blob.content(), entry.filemode())? {
                        written += 1;
                    }
                }
                _ => return Ok(()), // submodules are not part of a release
            }
            wanted.insert(rel);
            Ok(())
        })();
        match result {
            Ok(()) => git2::TreeWalkResult::Ok,
            Err(e) => {
                failed = Some(e);
                git2::TreeWalkResult::Abort
            }
        }
    })
    .or_else(|e| if failed.is_some() { Ok(()) } else { Err(e) })?;
    if let Some(e) = failed {
        return Err(e.context(format!("writing the tree into {}", dir.display())));
    }
    remove_unwanted(dir, dir, &wanted)?;
    Ok(written)
}

fn ensure_dir(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => std::fs::remove_file(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    std::fs::create_dir(path).with_context(|| format!("creating {}", path.display()))
}

/// Write `content` at `path` with git's `mode` unless it is there already; true if written.
fn put_file(path: &Path, content: &[u8], mode: i32) -> anyhow::Result<bool> {
    use std::os::unix::fs::PermissionsExt as _;
    let existing = std::fs::symlink_metadata(path).ok();
    if mode == 0o120000 {
        let target = Path::new(std::str::from_utf8(content).context("a symlink target is not UTF-8")?);
        if existing.as_ref().is_some_and(|m| m.file_type().is_symlink()) && std::fs::read_link(path)? == target {
            return Ok(false);
        }
        remove_any(path, existing.as_ref())?;
        std::os::unix::fs::symlink(target, path).with_context(|| format!("creating {}", path.display()))?;
        return Ok(true);
    }
    let exec = mode & 0o111 != 0;
    if let Some(m) = &existing
        && m.is_file()
        && m.len() == content.len() as u64
        && (m.permissions().mode() & 0o111 != 0) == exec
        && std::fs::read(path)? == content
    {
        return Ok(false);
    }
    if existing.as_ref().is_some_and(|m| m.is_dir()) {
        std::fs::remove_dir_all(path)?;
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let mut f = materia_common::atomic::AtomicFile::create_in(dir, name)?;
    std::io::Write::write_all(f.file(), content).with_context(|| format!("writing {}", path.display()))?;
    f.file().set_permissions(std::fs::Permissions::from_mode(if exec { 0o755 } else { 0o644 }))?;
    f.commit_replace(name)?;
    Ok(true)
}

fn remove_any(path: &Path, meta: Option<&std::fs::Metadata>) -> anyhow::Result<()> {
    match meta {
        Some(m) if m.is_dir() => std::fs::remove_dir_all(path)?,
        Some(_) => std::fs::remove_file(path)?,
        None => {}
    }
    Ok(())
}

fn remove_unwanted(root: &Path, dir: &Path, wanted: &HashSet<PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_owned();
        let ty = e.file_type()?;
        if !wanted.contains(&rel) {
            remove_any(&path, Some(&std::fs::symlink_metadata(&path)?))?;
        } else if ty.is_dir() {
            remove_unwanted(root, &path, wanted)?;
        }
    }
    Ok(())
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
    }

    #[test]
    fn credentials_in_a_remote_url_are_never_shown() {
        assert_eq!(redact("https://deploy:glpat-s3cret@gitlab.example/materia.git"), "https://deploy:***@gitlab.example/materia.git");
        assert_eq!(redact("https://oauth2:t@k:en@host/x"), "https://oauth2:***@host/x");
        assert_eq!(redact("https://ghp_s3cret@github.com/o/materia.git"), "https://***@github.com/o/materia.git");
        assert_eq!(redact("ssh://git@host:22/materia.git"), "ssh://git@host:22/materia.git");
        assert_eq!(redact("git@gitlab.example:materia.git"), "git@gitlab.example:materia.git");
        assert_eq!(redact("/srv/git/materia.git"), "/srv/git/materia.git");
    }
}
