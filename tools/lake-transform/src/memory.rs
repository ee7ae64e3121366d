//! How much memory a run's DuckDB may use, where it spills past that, and the check that
//! the limit fits under the memory the kernel allows the process (the unit's
//! `MemoryMax=`): a limit above it would have the run killed before DuckDB spilled.

use std::path::{Component, Path, PathBuf};

use duckdb::Connection;
use materia_common::exit::Usage;
use materia_common::layout::{DEFAULT_MEMORY_LIMIT, Layout};

/// The share of the cgroup's memory DuckDB's limit may take: the rest is the process's
/// own (DuckDB's limit covers its buffer pool, not every allocation: a 24-release
/// first build peaked at 4.0–4.5 GiB under a 3.7 GiB limit, README "At the
/// all-commodities size").
const SHARE_OF_CGROUP: (u64, u64) = (3, 4);

/// How much memory a run's DuckDB may use, and where it spills past that.
pub(crate) struct Memory {
    /// As given (`--memory-limit`, `MATERIA_MEMORY_LIMIT`); None: [`default_limit`].
    pub(crate) limit: Option<String>,
    pub(crate) spill_dir: Option<PathBuf>,
}

impl Memory {
    /// Bound `conn` by the limit, spilling to --spill-dir (default `DATA_DIR/spill/lake-transform`).
    pub(crate) fn bound(&self, conn: &Connection, layout: &Layout) -> anyhow::Result<()> {
        let spill_dir = self.spill_dir.clone().unwrap_or_else(|| layout.spill_dir(crate::TOOL));
        bound_memory(conn, self.limit.as_deref(), &std::path::absolute(spill_dir)?)
    }
}

/// The limit when none is given: [`DEFAULT_MEMORY_LIMIT`], or the share of the memory
/// the cgroup allows (`allowed`, bytes) when that is less (in whole MiB, rounded down),
/// so a unit given a smaller `MemoryMax=` runs without its limit set as well.
fn default_limit(allowed: Option<u64>) -> String {
    let (num, den) = SHARE_OF_CGROUP;
    match allowed.map(|a| a / den * num) {
        Some(most) if most < DEFAULT_MEMORY_LIMIT_BYTES => format!("{}MiB", most >> 20),
        _ => DEFAULT_MEMORY_LIMIT.to_owned(),
    }
}

/// [`DEFAULT_MEMORY_LIMIT`] in bytes (DuckDB's GB: 10^9 bytes; a unit test checks it).
const DEFAULT_MEMORY_LIMIT_BYTES: u64 = 4_000_000_000;

/// Bound DuckDB's memory to `limit` (None: [`default_limit`]) and let it spill to
/// `spill_dir` (`duckdb_config::spill_to`: what a killed run spilled is removed first; no
/// other run spills there, as this one holds the lakehouse lock). A limit DuckDB does not
/// accept, or one given over the share of the process's cgroup limit, is a usage error
/// (exit 2), found before any model runs.
fn bound_memory(conn: &Connection, limit: Option<&str>, spill_dir: &Path) -> anyhow::Result<()> {
    let allowed = cgroup_memory_max(Path::new("/sys/fs/cgroup"), &std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default());
    let explicit = limit.is_some();
    let limit = match limit {
        Some(given) => given.to_owned(),
        None => {
            let limit = default_limit(allowed);
            if limit != DEFAULT_MEMORY_LIMIT {
                log::info!(
                    "memory limit {limit}: 3/4 of the {} this process may use, less than the default {DEFAULT_MEMORY_LIMIT}",
                    size(allowed.unwrap_or(0))
                );
            }
            limit
        }
    };
    conn.execute_batch(&format!("SET memory_limit = {}", materia_common::duckdb_config::sql_string(&limit)))
        .map_err(|e| Usage(format!("--memory-limit {limit:?}: {}", e.to_string().lines().next().unwrap_or_default())))?;
    // The default fits by its making (DuckDB prints sizes rounded: not compared again).
    if let Some(allowed) = allowed.filter(|_| explicit) {
        let set: String = conn.query_row("SELECT current_setting('memory_limit')", [], |r| r.get(0))?;
        check_fits(&limit, &set, allowed)?;
    }
    materia_common::duckdb_config::spill_to(conn, spill_dir)
}

/// DuckDB's limit as it reports it (`set`, e.g. `3.7 GiB`) against the bytes the cgroup
/// allows: over the share, a [`Usage`] error naming both fixes.
fn check_fits(limit: &str, set: &str, allowed: u64) -> anyhow::Result<()> {
    let Some(bytes) = parse_duckdb_size(set) else {
        log::debug!("DuckDB's memory limit {set:?} is not in a form this check reads; not compared with the cgroup's {allowed} bytes");
        return Ok(());
    };
    let (num, den) = SHARE_OF_CGROUP;
    let most = allowed / den * num;
    log::debug!("DuckDB's memory limit {set} ({bytes} bytes); the cgroup allows {allowed} bytes");
    if bytes > most {
        return Err(Usage(format!(
            "--memory-limit {limit:?} ({set}) is over {num}/{den} of the {} this process may use (its cgroup's limit: the unit's MemoryMax=): the run would be killed before DuckDB spilled; lower MATERIA_MEMORY_LIMIT or raise MemoryMax= in a drop-in",
            size(allowed)
        ))
        .into());
    }
    Ok(())
}

/// `bytes` for a log line: `4.0 GiB`, or whole MiB under a GiB (`192 MiB`, not `0.2 GiB`).
fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 { format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64) } else { format!("{} MiB", bytes >> 20) }
}

/// The lowest memory limit on the way from the process's cgroups (from the
/// `/proc/self/cgroup` text) up to the hierarchy's root under `root`: v2's `memory.max`
/// (the server's unified hierarchy), v1's `memory.limit_in_bytes` (under `root/memory`,
/// a hybrid host's). None without one: no limit, or no memory controller.
fn cgroup_memory_max(root: &Path, proc_self_cgroup: &str) -> Option<u64> {
    let mut lowest: Option<u64> = None;
    for line in proc_self_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let (hierarchy, file) = match controllers {
            "" => (root.to_path_buf(), "memory.max"),
            c if c.split(',').any(|c| c == "memory") => (root.join("memory"), "memory.limit_in_bytes"),
            _ => continue,
        };
        if let Some(max) = lowest_on_the_way_up(&hierarchy, Path::new(path.trim()), file) {
            lowest = Some(lowest.map_or(max, |l| l.min(max)));
        }
    }
    lowest
}

/// The lowest limit in `file` from `hierarchy/path` up to `hierarchy`.
fn lowest_on_the_way_up(hierarchy: &Path, path: &Path, file: &str) -> Option<u64> {
    // The kernel's own text, but never followed out of the hierarchy.
    if !path.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))) {
        return None;
    }
    let mut dir = hierarchy.join(path.strip_prefix("/").unwrap_or(path));
    let mut lowest: Option<u64> = None;
    loop {
        // v2 says `max`, v1 a number near 2^63, for no limit.
        let limit = std::fs::read_to_string(dir.join(file)).ok().and_then(|s| s.trim().parse::<u64>().ok()).filter(|&b| b < 1 << 60);
        if let Some(max) = limit {
            lowest = Some(lowest.map_or(max, |l| l.min(max)));
        }
        if dir == hierarchy || !dir.pop() || !dir.starts_with(hierarchy) {
            break;
        }
    }
    lowest
}

/// A size as DuckDB prints one (`476.8 MiB`, `3.7 GiB`, `1000 bytes`) in bytes.
fn parse_duckdb_size(s: &str) -> Option<u64> {
    let (number, unit) = s.trim().split_once(' ')?;
    let number: f64 = number.parse().ok()?;
    let power = match unit {
        "byte" | "bytes" => 0,
        "KiB" => 1,
        "MiB" => 2,
        "GiB" => 3,
        "TiB" => 4,
        "PiB" => 5,
        _ => return None,
    };
    Some((number * 1024f64.powi(power)) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duckdb_sizes_read_back_as_set() {
        // DuckDB's own printing, not a copy of it: each limit set, then read back.
        let conn = Connection::open_in_memory().unwrap();
        for (limit, bytes) in [("4GB", 4_000_000_000u64), ("500MB", 500_000_000), ("12GiB", 12 << 30), ("2TB", 2_000_000_000_000)] {
            conn.execute_batch(&format!("SET memory_limit = '{limit}'")).unwrap();
            let set: String = conn.query_row("SELECT current_setting('memory_limit')", [], |r| r.get(0)).unwrap();
            let read = parse_duckdb_size(&set).unwrap_or_else(|| panic!("{set:?}"));
            // DuckDB prints one decimal.
            assert!(read.abs_diff(bytes) < bytes / 50, "{limit}: {set} read as {read}");
        }
        assert_eq!(parse_duckdb_size("1000 bytes"), Some(1000));
        assert_eq!(parse_duckdb_size("3.7 GB"), None);
    }

    #[test]
    fn the_default_limit_is_lowered_to_what_the_cgroup_allows() {
        assert_eq!(DEFAULT_MEMORY_LIMIT.strip_suffix("GB").and_then(|n| n.parse::<u64>().ok()), Some(DEFAULT_MEMORY_LIMIT_BYTES / 1_000_000_000));
        assert_eq!(default_limit(None), DEFAULT_MEMORY_LIMIT);
        assert_eq!(default_limit(Some(8 << 30)), DEFAULT_MEMORY_LIMIT);
        assert_eq!(default_limit(Some(4 << 30)), "3072MiB");
        assert_eq!(default_limit(Some(1000 << 20)), "750MiB");
        // DuckDB takes it, at 3/4 of the cgroup or less.
        let conn = Connection::open_in_memory().unwrap();
        for allowed in [4u64 << 30, 1000 << 20, (5 << 30) + 12345] {
            let limit = default_limit(Some(allowed));
            conn.execute_batch(&format!("SET memory_limit = '{limit}'")).unwrap();
            let set: String = conn.query_row("SELECT current_setting('memory_limit')", [], |r| r.get(0)).unwrap();
            let bytes = parse_duckdb_size(&set).unwrap();
            assert!(bytes <= allowed / 4 * 3 + (64 << 20), "{limit} is {set}, for {allowed}"); // DuckDB prints one decimal
        }
    }

    #[test]
    fn the_lowest_memory_max_on_the_way_up_counts() {
        let root = tempfile::tempdir().unwrap();
        let unit = root.path().join("system.slice/lake-transform.service");
        std::fs::create_dir_all(&unit).unwrap();
        let cgroup = "0::/system.slice/lake-transform.service\n";
        assert_eq!(cgroup_memory_max(root.path(), cgroup), None, "no memory.max anywhere");
        std::fs::write(unit.join("memory.max"), "max\n").unwrap();
        std::fs::write(root.path().join("system.slice/memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_memory_max(root.path(), cgroup), None, "no limit");
        std::fs::write(unit.join("memory.max"), "8589934592\n").unwrap();
        assert_eq!(cgroup_memory_max(root.path(), cgroup), Some(8 << 30));
        std::fs::write(root.path().join("system.slice/memory.max"), "4294967296\n").unwrap();
        assert_eq!(cgroup_memory_max(root.path(), cgroup), Some(4 << 30), "the slice's is lower");
        // A path that climbs out of the root is not followed.
        assert_eq!(cgroup_memory_max(&unit, "0::/../../memory.max\n"), None);
        // v1 (a hybrid host): memory.limit_in_bytes under memory/, "unlimited" a number near 2^63.
        let v1 = root.path().join("memory/process_api/x");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        let hybrid = "4:memory:/process_api/x\n2:cpuacct,cpu:/\n0::/\n";
        assert_eq!(cgroup_memory_max(root.path(), hybrid), None);
        std::fs::write(v1.join("memory.limit_in_bytes"), "2147483648\n").unwrap();
        assert_eq!(cgroup_memory_max(root.path(), hybrid), Some(2 << 30));
        // Both: the lower counts.
        assert_eq!(cgroup_memory_max(root.path(), &format!("{hybrid}{cgroup}")), Some(2 << 30));
    }

    #[test]
    fn a_limit_over_three_quarters_of_the_cgroup_is_refused() {
        let eight = 8u64 << 30;
        assert!(check_fits("4GB", "3.7 GiB", eight).is_ok());
        assert!(check_fits("6GiB", "6.0 GiB", eight).is_ok());
        let err = check_fits("7GB", "6.5 GiB", eight).unwrap_err();
        assert!(err.is::<Usage>(), "exit 2");
        let msg = err.to_string();
        assert!(msg.contains("\"7GB\" (6.5 GiB)") && msg.contains("8.0 GiB") && msg.contains("MemoryMax="), "{msg}");
        assert!(check_fits("7GB", "something else", eight).is_ok(), "an unreadable size is not compared");
        let msg = check_fits("200MB", "190.7 MiB", 192 << 20).unwrap_err().to_string();
        assert!(msg.contains("of the 192 MiB this process"), "under a GiB in MiB, not 0.2 GiB: {msg}");
        assert_eq!(size((1 << 30) - 1), "1023 MiB");
        assert_eq!(size(1 << 30), "1.0 GiB");
    }
}
