//! The order in which files landed, which decides the file that counts when a release
//! month holds several for a commodity (USDA re-published it): the one landed last.
//! File names cannot say it (psd-extract names a file by its ETag or its content's
//! hash), so it comes from psd-extract's record of every landing, the state DB table
//! `landed_files` (a documented contract: `file_id` increases with each landing, and a
//! restore from R2 brings the table back with the files). An ingest model reads it as
//! `@landing_order`, a list in the order of `@landing_files`: each file's `file_id`, NULL
//! for a file the state DB has no record of. After a restore that is a file landed after
//! the newest state snapshot, so `staging.psd_picks` counts it after every recorded one.

use std::collections::HashMap;

use materia_common::StateDb;

/// `file_id` by path relative to the landing dir.
pub type LandingOrder = HashMap<String, i64>;

/// Every landed file's place in landing order.
pub fn read(db: &StateDb) -> anyhow::Result<LandingOrder> {
    let mut st = db.conn().prepare("SELECT path, file_id FROM landed_files").map_err(|e| db.err(e))?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).map_err(|e| db.err(e))?;
    Ok(rows.collect::<Result<_, _>>().map_err(|e| db.err(e))?)
}

/// The SQL list `@landing_order` stands for, for `files` (relative paths) in that order.
pub fn sql_list<'a>(order: &LandingOrder, files: impl IntoIterator<Item = &'a str>) -> String {
    let items: Vec<String> = files.into_iter().map(|f| order.get(f).map_or_else(|| "NULL".to_owned(), i64::to_string)).collect();
    format!("[{}]::BIGINT[]", items.join(", "))
}
