//! The app dir and what lives in it: releases, the `current` link, the build dir and
//! target dir, and the commands a deploy runs (build, hook, health check), each in its
//! own process group under a deadline; and how much room is left under it.
//!
//! ```text
//! APP_DIR/repo.git            bare mirror of the fetched tags and the commits that failed (mirror.rs)
//! APP_DIR/build/              the tag being built, kept file by file from tag to tag
//! APP_DIR/target/             cargo's target dir, shared by every build
//! APP_DIR/releases/<tag>/     a release: the tag's tree, bin/, lib/ (see README, "A server")
//! APP_DIR/current             -> releases/<tag>
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};

use crate::git::version;

/// Binaries installed into a release's bin/.
pub use materia_common::layout::TOOLS;

/// The app dir's paths.
pub struct App {
    pub dir: PathBuf,
}

impl App {
    pub fn releases(&self) -> PathBuf {
        self.dir.join("releases")
    }
    pub fn current(&self) -> PathBuf {
        self.dir.join("current")
    }
    pub fn repo(&self) -> PathBuf {
        self.dir.join("repo.git")
    }
    pub fn build(&self) -> PathBuf {
        self.dir.join("build")
    }
    pub fn target(&self) -> PathBuf {
        self.dir.join("target")
    }

    /// The tag `current` points at, if it points at a release.
    pub fn deployed(&self) -> Option<String> {
        let link = std::fs::read_link(self.current()).ok()?;
        let tag = link.file_name()?.to_str()?.to_owned();
        version(&tag).map(|_| tag)
    }

    /// What `current` points at now, whatever it is (a release, bootstrap.sh's deployer).
    pub fn current_link(&self) -> Option<PathBuf> {
        std::fs::read_link(self.current()).ok()
    }

    /// Point `current` at `target` (relative to the app dir), or remove it, by an atomic
    /// rename; the app dir is fsynced so the switch survives a power loss.
    pub fn switch(&self, target: Option<&Path>) -> anyhow::Result<()> {
        let current = self.current();
        match target {
            Some(target) => {
                let tmp = self.dir.join(format!(".current.tmp-{}", std::process::id()));
                let _ = std::fs::remove_file(&tmp);
                std::os::unix::fs::symlink(target, &tmp).with_context(|| format!("creating {}", tmp.display()))?;
                std::fs::rename(&tmp, &current).with_context(|| format!("switching {}", current.display()))?;
            }
            None => {
                let _ = std::fs::remove_file(&current);
            }
        }
        materia_common::atomic::sync_dir(&self.dir)?;
        Ok(())
    }

    /// Remove release dirs a killed deploy left, and git lock files a killed fetch or
    /// checkout left in the mirror (we hold the step lock: no live process owns them).
    pub fn sweep(&self) -> anyhow::Result<()> {
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
        locks(&self.repo())?;
        for e in std::fs::read_dir(self.releases())? {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                log::warn!("removing {}, left by an interrupted deploy", e.path().display());
                std::fs::remove_dir_all(e.path())?;
            }
        }
        Ok(())
    }

    /// Remove the tools a previous build left in the target dir, so that what
    /// [`App::install`] finds was made by this build (cargo puts them back even when
    /// nothing needs recompiling).
    pub fn clear_built(&self) -> anyhow::Result<()> {
        for t in TOOLS {
            let path = self.target().join("release").join(t);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(anyhow::Error::new(e).context(format!("removing {}", path.display())));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Copy the built binaries into the release's bin/, and libduckdb.so from
    /// DUCKDB_LIB_DIR into its lib/ (where their rpath, `$ORIGIN/../lib`, looks), with
    /// DuckDB's extensions from DUCKDB_LIB_DIR/extensions into lib/extensions. A build
    /// that did not produce every tool is refused: a release is complete.
    pub fn install(&self, release: &Path) -> anyhow::Result<()> {
        let built = self.target().join("release");
        let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !built.join(t).is_file()).collect();
        if missing.len() == TOOLS.len() {
            anyhow::bail!("the build produced none of the tools in {}", built.display());
        }
        if !missing.is_empty() {
            anyhow::bail!("the build did not produce {} in {}", missing.join(", "), built.display());
        }
        let bin = release.join("bin");
        std::fs::create_dir_all(&bin)?;
        for t in TOOLS {
            let src = built.join(t);
            std::fs::copy(&src, bin.join(t)).with_context(|| format!("installing {}", src.display()))?;
        }
        if let Some(dir) = std::env::var_os("DUCKDB_LIB_DIR").map(PathBuf::from) {
            let lib = dir.join("libduckdb.so");
            if lib.is_file() {
                std::fs::create_dir_all(release.join("lib"))?;
                std::fs::copy(&lib, release.join("lib/libduckdb.so")).with_context(|| format!("installing {}", lib.display()))?;
            }
            // DuckDB's extensions (the tools load them from here, never download them).
            let extensions = dir.join("extensions");
            if extensions.is_dir() {
                link_tree(&extensions, &release.join("lib/extensions"))?;
            }
        }
        Ok(())
    }

    /// Keep the current, the previous and the `keep` newest other releases.
    pub fn prune(&self, current: &str, previous: Option<&str>, keep: usize) -> anyhow::Result<()> {
        let mut others: Vec<(Vec<u64>, String)> = std::fs::read_dir(self.releases())?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| n != current && Some(n.as_str()) != previous)
            .filter_map(|n| version(&n).map(|v| (v, n)))
            .collect();
        others.sort();
        let excess = others.len().saturating_sub(keep);
        for (_, n) in others.into_iter().take(excess) {
            log::info!("pruning release {n}");
            std::fs::remove_dir_all(self.releases().join(&n))?;
        }
        Ok(())
    }
}

/// Recreate the tree `src` at `dst`, hard-linking each file (the extensions are ~100 MB
/// and never change under their version's name), or copying it where a link is refused
/// (another file system, another owner).
fn link_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    for e in std::fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
        let e = e?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        if e.file_type()?.is_dir() {
            link_tree(&from, &to)?;
        } else if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).with_context(|| format!("installing {}", from.display()))?;
        }
    }
    Ok(())
}

/// fsync every file and directory under `dir` (the release, before `current` may point
/// at it: after a power loss it is complete or was never switched to).
pub fn sync_tree(dir: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        let ty = e.file_type()?;
        if ty.is_dir() {
            sync_tree(&e.path())?;
        } else if ty.is_file() {
            std::fs::File::open(e.path()).and_then(|f| f.sync_all()).with_context(|| format!("fsync {}", e.path().display()))?;
        }
    }
    materia_common::atomic::sync_dir(dir)?;
    Ok(())
}

/// What a command run by a deploy gets: its directory, the release it is for and how
/// long it may take.
pub struct Cmd<'a> {
    pub cmd: &'a str,
    /// Working directory.
    pub dir: &'a Path,
    /// `MATERIA_RELEASE_DIR`.
    pub release: &'a Path,
    pub tag: &'a str,
    pub timeout: Duration,
    /// The flag that sets `timeout`, named in the error.
    pub flag: &'a str,
}

/// Run `c.cmd` with `sh -c`, with a clean environment: PATH, HOME, LANG, the toolchain's
/// CARGO_HOME/RUSTUP_HOME and DUCKDB_LIB_DIR if set, the shared CARGO_TARGET_DIR,
/// MATERIA_TAG, MATERIA_RELEASE_DIR and MATERIA_RELEASE_BUILD=1 (a release records no
/// build path). Nothing else leaks in. It runs in its own process group, which is
/// killed whole when the deadline passes (a build's cargo and rustc included).
pub fn run(app: &App, c: &Cmd<'_>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let mut command = std::process::Command::new("sh");
    command.arg("-c").arg(c.cmd).current_dir(c.dir).env_clear();
    for v in ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME", "DUCKDB_LIB_DIR"] {
        if let Some(val) = std::env::var_os(v) {
            command.env(v, val);
        }
    }
    command
        .env("LANG", "C.UTF-8")
        .env("CARGO_TARGET_DIR", app.target())
        .env("MATERIA_TAG", c.tag)
        .env("MATERIA_RELEASE_DIR", c.release)
        .env("MATERIA_RELEASE_BUILD", "1")
        .stdin(std::process::Stdio::null())
        .process_group(0);
    let mut child = command.spawn().with_context(|| format!("starting `{}`", c.cmd))?;
    let deadline = Instant::now() + c.timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return if status.success() { Ok(()) } else { Err(anyhow!("`{}` exited with {status}", c.cmd)) };
        }
        if Instant::now() > deadline {
            let _ = rustix::process::kill_process_group(rustix::process::Pid::from_child(&child), rustix::process::Signal::KILL);
            let _ = child.kill();
            let _ = child.wait();
            return Err(anyhow!("`{}` did not finish within {} s ({}); killed", c.cmd, c.timeout.as_secs(), c.flag));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Free space under which a failed deploy says so: a release build's artifacts take
/// about that much (a disk that filled fails the build, and the tag is recorded failed
/// like any other, so the operator needs to know to free space, then --clear-failed).
const LOW_DISK_BYTES: u64 = 1 << 30;

/// A note for a failed deploy's record when the disk under `dir` is nearly full.
pub fn low_disk(dir: &Path) -> Option<String> {
    let st = rustix::fs::statvfs(dir).ok()?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    (free < LOW_DISK_BYTES).then(|| {
        format!("the disk under {} has only {} MiB free: if that is why, free some, then run tag-deploy --clear-failed", dir.display(), free >> 20)
    })
}
