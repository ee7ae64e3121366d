//! The memory bound: DuckDB's limit applied and its spill dir swept, and the limit
//! checked against the memory the process's cgroup allows (the unit's `MemoryMax=`).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

#[test]
fn a_run_is_bounded_by_its_memory_limit_and_removes_what_a_killed_run_spilled() {
    let Some(real) = real_csv() else { return };
    let env = Env::new();
    let real = String::from_utf8(real).unwrap();
    for (i, month) in ["2023-01", "2023-02", "2023-03", "2023-04"].into_iter().enumerate() {
        // Each month revises a few values (psd-extract lands no content twice).
        env.land(month, real.replacen(".0000\r\n", ".5000\r\n", i + 1).as_bytes());
    }
    // A limit DuckDB does not take is a usage error, before any model runs.
    let run = env.run(&["--memory-limit", "lots", "run"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.error_line().contains("--memory-limit \"lots\""), "{}", run.error_line());
    assert!(!env.data.join("lakehouse.duckdb").exists(), "a first run that fails before it builds creates no lakehouse");

    // What a killed run spilled is garbage: the next run removes it (only it).
    let spill = env.data.join("spill/lake-transform");
    std::fs::create_dir_all(&spill).unwrap();
    std::fs::write(spill.join("duckdb_temp_storage_S32K-0.tmp"), vec![0u8; 4096]).unwrap();
    std::fs::write(spill.join("notes.txt"), "an operator's file").unwrap();

    // The limit is applied: 20 MB cannot hold the reader's buffers, so the run fails
    // cleanly (rolled back, one line naming the memory), instead of growing.
    let run = env.run(&["--memory-limit", "20MB", "run"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().contains("Out of Memory"), "{}", run.error_line());
    assert!(!spill.join("duckdb_temp_storage_S32K-0.tmp").exists(), "the stale spill file is removed");
    assert_eq!(std::fs::read_to_string(spill.join("notes.txt")).unwrap(), "an operator's file");
    assert!(!env.data.join("lakehouse.duckdb").exists(), "nothing half-written");
    assert_eq!(
        std::fs::read_dir(&env.data).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".lakehouse.")).count(),
        0
    );

    // From the environment, as the unit's configuration sets it: a workable limit builds.
    let run =
        Run::from(env.cmd().env("MATERIA_MEMORY_LIMIT", "1GB").env("MATERIA_SPILL_DIR", env.root.join("elsewhere")).arg("run").output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(env.root.join("elsewhere").is_dir(), "the spill dir from MATERIA_SPILL_DIR is made");
    assert_eq!(env.rows("SELECT count(*) FROM raw.psd"), [(4 * 77_957).to_string()]);
}

/// A real memory cgroup made by the test (v1's memory controller on a hybrid host, v2's
/// where the memory controller is enabled for the root's children); needs root, as CI
/// has. Removed when dropped (the processes in it have exited).
struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    fn new(limit: u64) -> Option<Self> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("materia-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let (v1, v2) = (Path::new("/sys/fs/cgroup/memory"), Path::new("/sys/fs/cgroup"));
        let (dir, file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.join(&name), "memory.limit_in_bytes")
        } else if std::fs::read_to_string(v2.join("cgroup.subtree_control")).is_ok_and(|s| s.split_whitespace().any(|c| c == "memory")) {
            (v2.join(&name), "memory.max")
        } else {
            eprintln!("skipped: this host has no memory cgroup controller to make a cgroup with");
            return None;
        };
        if let Err(e) = std::fs::create_dir(&dir) {
            eprintln!("skipped: cannot make the cgroup {} ({e}): needs root, as CI has", dir.display());
            return None;
        }
        let cgroup = Self { dir };
        std::fs::write(cgroup.dir.join(file), limit.to_string()).unwrap();
        Some(cgroup)
    }

    /// `cmd` started inside the cgroup: a shell moves itself in, then execs it.
    fn wrap(&self, cmd: &Command) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(r#"echo $$ > "$0" && exec "$@""#).arg(self.dir.join("cgroup.procs")).arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Under a unit's `MemoryMax=` the kernel kills a process that outgrows it before DuckDB
/// would spill; so a limit given over 3/4 of the memory the cgroup allows is refused
/// before any model runs, naming both settings, and the default is lowered to fit.
#[test]
fn a_memory_limit_the_cgroup_cannot_hold_is_refused_and_the_default_fits_it() {
    let Some(cgroup) = MemoryCgroup::new(4 << 30) else { return };
    let env = Env::new();
    env.land("2024-01", &csv(&balance("BR", 2023, 1.0)));
    // 4GB (3.7 GiB), the default outside, is over 3/4 of 4 GiB.
    let mut cmd = env.cmd();
    cmd.args(["--memory-limit", "4GB", "run"]);
    let run = Run::from(cgroup.wrap(&cmd).output().unwrap());
    assert_eq!(run.code, 2, "{run:?}");
    let line = run.error_line();
    assert!(line.contains(r#"--memory-limit "4GB" (3.7 GiB)"#) && line.contains("4.0 GiB") && line.contains("MemoryMax="), "{line}");
    assert!(!env.data.join("lakehouse.duckdb").exists(), "nothing built, nor an empty lakehouse created");
    // With none given, the default is 3/4 of the cgroup's memory, and the run builds.
    let mut cmd = env.cmd();
    cmd.arg("run");
    let run = Run::from(cgroup.wrap(&cmd).output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("memory limit 3072MiB: 3/4 of the 4.0 GiB this process may use"), "{}", run.stderr);
    assert_eq!(env.rows("SELECT count(*) > 0 FROM raw.psd"), ["true"]);
    // One that fits, from the environment as a unit's configuration sets it.
    env.land("2024-02", &csv(&balance("BR", 2023, 2.0)));
    let mut cmd = env.cmd();
    cmd.env("MATERIA_MEMORY_LIMIT", "2GB").arg("run");
    let run = Run::from(cgroup.wrap(&cmd).output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stderr.contains("memory limit"), "{}", run.stderr);
    // Outside the cgroup the default runs as before.
    env.land("2024-03", &csv(&balance("BR", 2023, 3.0)));
    assert_eq!(env.run(&["run"]).code, 0);
}
