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

    /// The most memory the cgroup's processes were charged at once since it was made
    /// (v1's `memory.max_usage_in_bytes`, v2's `memory.peak`; None on a v2 kernel older
    /// than 5.19, which has no peak).
    fn peak(&self) -> Option<u64> {
        ["memory.max_usage_in_bytes", "memory.peak"].iter().find_map(|f| std::fs::read_to_string(self.dir.join(f)).ok()?.trim().parse().ok())
    }

    /// How many of its processes the kernel killed for outgrowing the limit (v1's
    /// `memory.oom_control`, v2's `memory.events`: their `oom_kill` line).
    fn oom_kills(&self) -> u64 {
        ["memory.oom_control", "memory.events"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.dir.join(f)).ok())
            .find_map(|s| s.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok()))
            .expect("the cgroup counts its OOM kills")
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

/// The point of the bound, under the kernel's enforcement: a first build that takes more
/// memory than the unit's `MemoryMax=` allows, run inside a cgroup that small with the
/// default limit, completes within it (DuckDB holds itself to 3/4 of it, spilling where it
/// must) instead of being killed; in one too small for the build, DuckDB fails the run cleanly first (exit 1,
/// rolled back), the kernel kills nothing, and the next run builds.
#[test]
fn a_build_larger_than_its_cgroup_completes_within_it_and_one_too_small_fails_cleanly() {
    let Some(real) = real_csv() else { return };
    let Some(roomy) = MemoryCgroup::new(4 << 30) else { return };
    let env = Env::new();
    let real = String::from_utf8(real).unwrap();
    for i in 0..12 {
        env.land(&format!("{}-{:02}", 2023 + i / 12, i % 12 + 1), real.replacen(".0000\r\n", ".5000\r\n", i + 1).as_bytes());
    }
    let results = || {
        env.rows("SELECT (SELECT count(*) FROM raw.psd), (SELECT count(*) FROM staging.psd_latest), (SELECT count(*) FROM serving.revisions), (SELECT sum(value) FROM serving.attribute_values)")
    };
    let build = |cgroup: &MemoryCgroup| {
        let _ = std::fs::remove_file(env.data.join("lakehouse.duckdb"));
        let mut cmd = env.cmd();
        cmd.arg("run");
        Run::from(cgroup.wrap(&cmd).output().unwrap())
    };

    // Unbounded by its cgroup (4 GiB: DuckDB's default 3 GiB), the build takes more than
    // the small cgroup below allows, so that cgroup is a real constraint.
    let run = build(&roomy);
    assert_eq!(run.code, 0, "{run:?}");
    let expected = results();
    assert_eq!(expected[0].split('|').next(), Some((12 * 77_957).to_string().as_str()));
    let Some(unbounded) = roomy.peak() else {
        eprintln!("skipped: this kernel's cgroup keeps no peak memory to compare with");
        return;
    };
    const SMALL: u64 = 192 << 20;
    assert!(unbounded > SMALL * 5 / 4, "the build took {} MiB, not enough more than the cgroup's {} MiB to test it", unbounded >> 20, SMALL >> 20);
    assert_eq!(roomy.oom_kills(), 0);

    // Too small even for the build's bounded working set: DuckDB refuses an allocation
    // before the kernel kills anything; nothing is left, and the next run builds.
    let tiny = MemoryCgroup::new(128 << 20).unwrap();
    let run = build(&tiny);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().contains("Out of Memory"), "{}", run.error_line());
    assert!(run.stderr.contains("memory limit 96MiB: 3/4 of the 128 MiB this process may use"), "{}", run.stderr);
    assert_eq!(tiny.oom_kills(), 0, "DuckDB failed the run, the kernel killed nothing");
    assert!(!env.data.join("lakehouse.duckdb").exists(), "nothing half-written");

    let small = MemoryCgroup::new(SMALL).unwrap();
    let run = build(&small);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("memory limit 144MiB: 3/4 of the 192 MiB this process may use"), "{}", run.stderr);
    assert_eq!(small.oom_kills(), 0, "not killed");
    assert!(small.peak().unwrap() <= SMALL);
    assert_eq!(results(), expected, "the same lakehouse as the unbounded build");
}
