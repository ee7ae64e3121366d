//! Whole-system tests, one binary: the tools chained through files as
//! `scripts/run-all.sh` runs them (`pipeline`), the systemd units as shipped (`units`)
//! and under a real systemd, the release lifecycle (`systemd`), the scripts as they run
//! (`scripts`), and the rules every file in the repository follows (`house`).
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod house;
mod pipeline;
mod scripts;
mod systemd;
mod units;

use std::path::{Path, PathBuf};

/// The repository's top (this crate is its `tests/` folder).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}
