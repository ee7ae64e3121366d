//! What tag-deploy keeps in the state DB: `deploys` (every deployed, failed or refused
//! tag, once) and `deploy_seen_tags` (tags already judged), and `tag-deploy status`.

use std::collections::BTreeMap;

use materia_common::{StateDb, Step};

/// Tags that failed and were not cleared with `--clear-failed`, each with the commits it
/// failed at, oldest first: empty when every failure of it was recorded before `deploys`
/// kept the commit (schema 8).
pub fn failures(db: &StateDb) -> anyhow::Result<BTreeMap<String, Vec<git2::Oid>>> {
    let mut st =
        db.conn().prepare("SELECT tag, target FROM deploys WHERE status = 'failed' AND cleared = 0 ORDER BY rowid").map_err(|e| db.err(e))?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))).map_err(|e| db.err(e))?;
    let mut failed: BTreeMap<String, Vec<git2::Oid>> = BTreeMap::new();
    for row in rows {
        let (tag, target) = row.map_err(|e| db.err(e))?;
        let at = failed.entry(tag).or_default();
        // A target that is not an object id was not written by tag-deploy: ignored.
        if let Some(oid) = target.as_deref().and_then(|t| git2::Oid::from_str(t).ok())
            && !at.contains(&oid)
        {
            at.push(oid);
        }
    }
    Ok(failed)
}

/// Forget the recorded failures; returns how many.
pub fn clear_failed(db: &StateDb) -> anyhow::Result<usize> {
    Ok(db.conn().execute("UPDATE deploys SET cleared = 1 WHERE status = 'failed' AND cleared = 0", []).map_err(|e| db.err(e))?)
}

/// Forget the recorded failures of `tag` (once it deployed).
pub fn clear_failed_of(db: &StateDb, tag: &str) -> anyhow::Result<()> {
    db.conn().execute("UPDATE deploys SET cleared = 1 WHERE tag = ?1 AND status = 'failed' AND cleared = 0", [tag]).map_err(|e| db.err(e))?;
    Ok(())
}

/// Tags this mirror has judged already.
pub fn seen_tags(db: &StateDb) -> anyhow::Result<std::collections::HashSet<String>> {
    let mut st = db.conn().prepare("SELECT tag FROM deploy_seen_tags").map_err(|e| db.err(e))?;
    let rows = st.query_map([], |r| r.get(0)).map_err(|e| db.err(e))?;
    rows.collect::<Result<_, _>>().map_err(|e| db.err(e).into())
}

pub fn mark_seen<'a>(db: &StateDb, tags: impl Iterator<Item = &'a str>) -> anyhow::Result<()> {
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

/// One row of `deploys`: `tag` at `target` (the commit deployed or tried).
pub struct Row<'a> {
    pub tag: &'a str,
    pub target: git2::Oid,
    pub status: &'a str,
    pub previous: Option<&'a str>,
    pub web: bool,
    pub detail: Option<&'a str>,
}

/// Record one row of `deploys`.
pub fn record(step: &Step, row: &Row<'_>) -> anyhow::Result<()> {
    step.db
        .conn()
        .execute(
            &format!(
                "INSERT INTO deploys (run_id, tag, target, status, previous_tag, web_hook, detail, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, {})",
                materia_common::state::NOW
            ),
            rusqlite::params![step.run_id, row.tag, row.target.to_string(), row.status, row.previous, row.web, row.detail],
        )
        .map_err(|e| step.db.err(e))?;
    Ok(())
}

/// `tag-deploy status`: the deployed tag (with its commit, when recorded), since when, the
/// previous one, failed tags (each with the commit it last failed at, when recorded).
pub fn print_status(db: Option<&StateDb>, deployed: Option<&str>) -> anyhow::Result<()> {
    let at = |tag: &str, target: Option<&str>| match target {
        Some(t) => format!("{tag} (at {})", t.chars().take(7).collect::<String>()),
        None => tag.to_owned(),
    };
    let (mut shown, mut when, mut prev, mut failed) = (deployed.map(str::to_owned), None, None, Vec::new());
    if let Some(db) = db {
        if let Some(tag) = deployed {
            let row: Option<(String, Option<String>, Option<String>)> = db
                .conn()
                .query_row(
                    "SELECT at, previous_tag, target FROM deploys WHERE tag = ?1 AND status = 'deployed' ORDER BY rowid DESC LIMIT 1",
                    [tag],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .ok();
            if let Some((since, p, target)) = row {
                when = Some(since);
                prev = p;
                shown = Some(at(tag, target.as_deref()));
            }
        }
        failed = failures(db)?.into_iter().map(|(tag, c)| at(&tag, c.last().map(|c| c.to_string()).as_deref())).collect();
    }
    println!("deployed: {}", shown.as_deref().unwrap_or("none"));
    println!("since:    {}", when.as_deref().unwrap_or("-"));
    println!("previous: {}", prev.as_deref().unwrap_or("-"));
    println!("failed:   {}", if failed.is_empty() { "-".to_owned() } else { failed.join(" ") });
    Ok(())
}
