//! The run's tally: how many URLs were checked and what became of them, for the log
//! line, the run's stats in the state DB and the exit code.

use materia_common::{Outcome, Report};

#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub checked: u64,
    pub landed: u64,
    pub unchanged: u64,
    pub not_released: u64,
    pub skipped: u64,
    pub failed: u64,
    pub not_checked: u64,
    pub downloaded: u64,
    pub landed_bytes: u64,
}

impl Tally {
    fn summary(&self) -> String {
        format!(
            "checked {}, landed {}, unchanged {}, not released {}, already landed {}, failed {}{}; downloaded {} bytes, landed {} bytes",
            self.checked,
            self.landed,
            self.unchanged,
            self.not_released,
            self.skipped,
            self.failed,
            if self.not_checked > 0 { format!(", not checked {} (deadline)", self.not_checked) } else { String::new() },
            self.downloaded,
            self.landed_bytes
        )
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "checked": self.checked, "landed": self.landed, "unchanged": self.unchanged,
            "not_released": self.not_released, "skipped": self.skipped, "failed": self.failed, "not_checked": self.not_checked,
            "downloaded_bytes": self.downloaded, "landed_bytes": self.landed_bytes,
        })
    }

    /// The report for `run_step`: failed if any source failed, changed if anything landed.
    pub fn report(self, errors: Vec<anyhow::Error>) -> Report {
        let summary = self.summary();
        log::info!("{summary}");
        let failure = errors.into_iter().next().map(|first| {
            if self.failed > 1 && self.not_checked == 0 {
                first.context(format!("{} of {} sources failed; the first", self.failed, self.checked))
            } else {
                first
            }
        });
        let outcome = if self.landed > 0 { Outcome::Changed } else { Outcome::Unchanged };
        Report { outcome, summary, stats: self.stats(), failure }
    }
}
