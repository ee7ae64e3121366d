//! What the mirror (`APP_DIR/repo.git`) remembers of each tag, and so which tag a poll
//! deploys: the commit last fetched for a tag (only the tag being deployed is ever
//! fetched, so for the deployed one, the commit deployed). The commits a tag failed at are
//! in the state DB (`deploys.target`); releases before schema 8 kept them here, as
//! `refs/failed/<tag>/<commit>`, which are still read and cleared.

use std::collections::BTreeMap;
use std::path::Path;

use crate::git::RemoteTag;

/// Which tag a poll deploys, and what it says about the others.
pub struct Pick<'a> {
    /// The highest version newer than the deployed one that is not held back by a failure,
    /// with the commit it failed at before when it is tried again after a move.
    pub next: Option<(&'a RemoteTag, Option<git2::Oid>)>,
    /// The deployed tag, when the remote moved it since: the commit deployed.
    pub moved_deployed: Option<(&'a RemoteTag, git2::Oid)>,
}

/// Choose among the remote's `tags` (by version), given the deployed tag and the failed
/// ones with the commits each failed at (`records::failures`). A failed tag waits for
/// --clear-failed, or for the tag to be moved to a commit that has not failed as it (the
/// fix tagged again as the same version). A deployed version is never deployed again,
/// moved or not.
pub fn pick<'a>(repo: &Path, tags: &'a [RemoteTag], deployed: Option<&str>, failed: &BTreeMap<String, Vec<git2::Oid>>) -> Pick<'a> {
    let deployed_v = deployed.and_then(crate::git::version);
    let moved = |t: &RemoteTag| fetched_commit(repo, &t.name).filter(|c| *c != t.target);
    let next = tags.iter().rev().filter(|t| deployed_v.as_ref().is_none_or(|d| &t.version > d)).find_map(|t| {
        let Some(at) = failed.get(&t.name) else { return Some((t, None)) };
        if at.contains(&t.target) || failed_before(repo, &t.name, t.target) {
            return None;
        }
        // Where it failed last; for failures recorded before the state DB kept the commit,
        // the one the mirror fetched (none when nothing of it was: it waits for --clear-failed).
        let was = at.last().copied().or_else(|| moved(t))?;
        Some((t, Some(was)))
    });
    let moved_deployed = tags.iter().find(|t| Some(t.name.as_str()) == deployed).and_then(|t| Some((t, moved(t)?)));
    Pick { next, moved_deployed }
}

/// The commit the mirror at `repo` has for `tag`: the one fetched when the tag was last
/// deployed or tried (only that tag is ever fetched). None when the mirror has no such tag.
pub fn fetched_commit(repo: &Path, tag: &str) -> Option<git2::Oid> {
    let repo = git2::Repository::open_bare(repo).ok()?;
    let commit = repo.revparse_single(&format!("refs/tags/{tag}")).ok()?.peel_to_commit().ok()?;
    Some(commit.id())
}

/// Did `commit` fail as `tag` (since the last --clear-failed), as a release before schema 8
/// kept it?
pub fn failed_before(repo: &Path, tag: &str, commit: git2::Oid) -> bool {
    git2::Repository::open_bare(repo).is_ok_and(|r| r.find_reference(&format!("refs/failed/{tag}/{commit}")).is_ok())
}

/// Forget every failed commit kept in the mirror (--clear-failed); returns how many.
/// No mirror: none.
pub fn clear_failed(repo: &Path) -> anyhow::Result<usize> {
    let Ok(repo) = git2::Repository::open_bare(repo) else { return Ok(0) };
    let names: Vec<String> = repo.references_glob("refs/failed/*")?.names().map(|n| n.map(str::to_owned)).collect::<Result<_, _>>()?;
    for name in &names {
        repo.find_reference(name)?.delete()?;
    }
    Ok(names.len())
}
