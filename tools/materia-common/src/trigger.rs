//! The triggers that chain the steps (`DATA_DIR/triggers/`, names in [`crate::layout`]).
//!
//! A step that changed something writes its trigger ([`signal`]): psd-extract after a
//! file landed, lake-transform after a run changed the lakehouse. A systemd path unit
//! watches the file and starts the next step, whose unit takes the trigger (its
//! `ExecStartPre=` removes it) before the step runs; so an update that comes during
//! the run writes it again and starts the step once more, and none is lost.

use anyhow::Context as _;

use crate::Layout;

/// Write the trigger `name` (replacing it atomically), saying which run wrote it.
pub fn signal(layout: &Layout, name: &str, run_id: i64) -> anyhow::Result<()> {
    let trigger = layout.trigger(name);
    if let Some(dir) = trigger.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::atomic::write_replace(&trigger, format!("run_id={run_id}\n").as_bytes())
        .with_context(|| format!("writing the trigger {}", trigger.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_signal_replaces_the_trigger() {
        let d = tempfile::tempdir().unwrap();
        let layout = crate::Layout::new(d.path(), None);
        super::signal(&layout, crate::layout::TRIGGER_LANDING_UPDATED, 7).unwrap();
        super::signal(&layout, crate::layout::TRIGGER_LANDING_UPDATED, 8).unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("triggers/landing.updated")).unwrap(), "run_id=8\n");
    }
}
