//! The daily state DB snapshot: a consistent copy (`VACUUM INTO`), gzipped, uploaded
//! once a UTC day as `PREFIX.state/state-YYYY-MM-DD.sqlite.gz`.

use std::collections::HashMap;

use anyhow::Context as _;
use opendal::Operator;

use crate::ledger::LedgerEntry;
use crate::target::Target;
use materia_common::landing::LandingFile;

use crate::upload::{Cfg, Done, back_up};

/// Where state DB snapshots go, under the prefix (hidden, as the state DB is in landing/).
pub(crate) const STATE_DIR: &str = ".state/";

/// Upload today's state DB snapshot unless the ledger has it: what happened and the
/// file (its `rel` relative to the prefix). `None`: nothing to do.
pub(crate) async fn snapshot_state(
    step: &materia_common::Step,
    op: &Operator,
    cfg: &Cfg,
    target: &Target,
    ledger: &HashMap<String, LedgerEntry>,
) -> anyhow::Result<Option<(Done, LandingFile)>> {
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
    // In the copy, this run is over as far as the copy goes: restored, it reads as the
    // run that took the snapshot, not as one that died mid-way.
    rusqlite::Connection::open(&copy)
        .and_then(|c| {
            c.execute(
                &format!(
                    "UPDATE runs SET status = 'success', finished_at = {now}, summary = 'took the state DB snapshot {rel} (what the run did after it is not in the snapshot)'
                     WHERE run_id = ?1 AND status = 'running'",
                    now = materia_common::state::NOW
                ),
                [step.run_id],
            )
        })
        .with_context(|| format!("finishing this run in {}", copy.display()))?;
    {
        let mut input = std::fs::File::open(&copy).with_context(|| format!("reading {}", copy.display()))?;
        let out = std::fs::File::create(&gz).with_context(|| format!("writing {}", gz.display()))?;
        let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
        std::io::copy(&mut input, &mut enc).with_context(|| format!("writing {}", gz.display()))?;
        enc.finish().with_context(|| format!("writing {}", gz.display()))?;
    }
    let meta = std::fs::metadata(&gz)?;
    let file = LandingFile { rel, abs: gz, bytes: meta.len(), mtime_ns: materia_common::landing::mtime_ns(&meta) };
    let done = back_up(op.clone(), key, file.clone(), None, cfg.clone()).await;
    Ok(Some((done, file)))
}
