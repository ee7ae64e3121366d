//! A full disk, for real: a tmpfs of a chosen size mounted over a test's directory (root
//! only, as in CI; a test without it skips, saying so).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted for one test, unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount a tmpfs of `size` (`mount`'s syntax: `256m`) at `path`, made if missing;
    /// None where this process may not mount, having said the test skips.
    pub fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).status().is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (needs root, as in CI)");
        }
        ok.then(|| Tmpfs(path.to_owned()))
    }

    /// Make it `size` large (never below what it holds).
    pub fn resize(&self, size: &str) {
        let s = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).status().unwrap();
        assert!(s.success(), "resizing the tmpfs at {} to {size}", self.0.display());
    }

    /// Shrink it to what it holds plus `kib` KiB: the next write past that fails with
    /// ENOSPC, as on a disk that filled up.
    pub fn leave_free(&self, kib: u64) {
        let out = Command::new("df").args(["--output=used", "-k"]).arg(&self.0).output().unwrap();
        let used: u64 = String::from_utf8(out.stdout).unwrap().lines().nth(1).unwrap().trim().parse().unwrap();
        self.resize(&format!("{}k", used + kib));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
