//! The systemd units in units/: `systemd-analyze verify` clean, and the house rules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("units")
}

/// name -> text of every unit file (services, timers, path units).
fn units() -> BTreeMap<String, String> {
    std::fs::read_dir(units_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| ["service", "timer", "path"].contains(&p.extension().and_then(|e| e.to_str()).unwrap_or("")))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect()
}

/// Values of `key=` in a unit (every occurrence).
fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines().filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('='))).collect()
}

/// A root with systemd's own units, ours in /etc/systemd/system, and stand-ins for the
/// release's executables, readable by an unprivileged user.
fn verify_root(tmp: &Path, units: &BTreeMap<String, String>) -> PathBuf {
    let root = tmp.join("root");
    let sys = root.join("usr/lib/systemd");
    std::fs::create_dir_all(&sys).unwrap();
    assert!(Command::new("cp").arg("-r").arg("/usr/lib/systemd/system").arg(&sys).status().unwrap().success());
    let etc = root.join("etc/systemd/system");
    std::fs::create_dir_all(&etc).unwrap();
    for (name, text) in units {
        std::fs::write(etc.join(name), text).unwrap();
    }
    let current = root.join("opt/materia/current");
    std::fs::create_dir_all(current.join("bin")).unwrap();
    std::fs::create_dir_all(current.join("scripts")).unwrap();
    for t in materia_common::layout::TOOLS {
        std::fs::copy("/bin/true", current.join("bin").join(t)).unwrap();
    }
    for script in ["notify-failure.sh", "ping.sh"] {
        std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts").join(script), current.join("scripts").join(script)).unwrap();
    }
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/rm", root.join("bin/rm")).unwrap(); // ExecStartPre= of the path-started steps
    assert!(Command::new("chmod").args(["-R", "a+rX"]).arg(tmp).status().unwrap().success());
    root
}

/// `systemd-analyze verify`, as an unprivileged user (as root it leaves state behind);
/// any output is a failure (some errors only warn and still exit 0).
fn verify(root: &Path, names: &[&String]) -> String {
    let files: Vec<String> = names.iter().map(|n| format!("/etc/systemd/system/{n}")).collect();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "systemd-analyze", "verify", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .args(&files)
        .current_dir("/")
        .output()
        .unwrap();
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn systemd_analyze_verify_is_clean() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let tmp = materia_test_support::temp_dir();
    let units = units();
    let root = verify_root(tmp.path(), &units);
    let names: Vec<&String> = units.keys().collect();
    let out = verify(&root, &names);
    assert!(out.trim().is_empty(), "systemd-analyze verify:\n{out}");
    // With the DuckLake drop-in, as bootstrap.sh installs it.
    let dropin = std::fs::read_to_string(units_dir().join("ducklake.conf")).unwrap();
    for u in ["lake-transform.service", "serve-export.service", "lake-maintain.service"] {
        let dir = root.join(format!("etc/systemd/system/{u}.d"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ducklake.conf"), &dropin).unwrap();
    }
    assert!(Command::new("chmod").args(["-R", "a+rX"]).arg(tmp.path()).status().unwrap().success());
    let out = verify(&root, &names);
    assert!(out.trim().is_empty(), "systemd-analyze verify with ducklake.conf:\n{out}");

    // And it would say so: a broken copy is reported.
    let broken = units["psd-extract.service"].replace("Type=oneshot", "Type=sometimes");
    std::fs::write(root.join("etc/systemd/system/broken.service"), broken).unwrap();
    let out = verify(&root, &[&"broken.service".to_owned()]);
    assert!(out.contains("Failed to parse service type"), "{out}");
}

/// Hardening (and the memory cap) every service has, or explains with `# no X: reason`.
const HARDENING: &[&str] = &[
    "MemoryMax",
    "ProtectSystem",
    "ReadWritePaths",
    "NoNewPrivileges",
    "PrivateTmp",
    "ProtectHome",
    "PrivateDevices",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
    "RestrictSUIDSGID",
    "RestrictRealtime",
    "RestrictNamespaces",
    "LockPersonality",
    "SystemCallArchitectures",
    "MemoryDenyWriteExecute",
    "RestrictAddressFamilies",
    "PrivateNetwork",
    "PrivateUsers",
];

/// A size as systemd reads one (`8G`: 1024-based), in bytes.
fn systemd_bytes(v: &str) -> u64 {
    let (n, power) = match v.char_indices().last() {
        Some((i, u @ ('K' | 'M' | 'G' | 'T'))) => (&v[..i], "KMGT".find(u).unwrap() as u32 + 1),
        _ => (v, 0),
    };
    n.parse::<u64>().unwrap_or_else(|_| panic!("{v}")) * 1024u64.pow(power)
}

/// The lakehouse's DuckDB steps are capped in memory, with room above DuckDB's default
/// limit: lake-transform refuses a limit over 3/4 of its cgroup's memory.max
/// (tools/lake-transform/src/memory.rs), so a cap below that would fail every run.
#[test]
fn the_duckdb_steps_memory_cap_leaves_room_above_the_default_limit() {
    let units = units();
    let limit = materia_common::layout::DEFAULT_MEMORY_LIMIT;
    let limit_bytes: u64 = limit.strip_suffix("GB").and_then(|n| n.parse::<u64>().ok()).expect(limit) * 1_000_000_000;
    for name in ["lake-transform.service", "lake-maintain.service"] {
        let max = values(&units[name], "MemoryMax");
        assert_eq!(max.len(), 1, "{name}: one MemoryMax=");
        let cap = systemd_bytes(max[0]);
        assert!(limit_bytes <= cap / 4 * 3, "{name}: MemoryMax={} leaves DuckDB's default {limit} no room", max[0]);
    }
    assert_eq!(systemd_bytes("8G"), 8 << 30);
    assert_eq!(systemd_bytes("512M"), 512 << 20);
}

#[test]
fn units_follow_the_house_rules() {
    let units = units();
    for (name, text) in &units {
        assert!(!values(text, "Documentation").is_empty(), "{name}: Documentation=");
        if name.ends_with(".timer") && (!values(text, "OnUnitActiveSec").is_empty() || !values(text, "OnUnitInactiveSec").is_empty()) {
            // Relative to the service's last run, these never fire until the timer fired
            // once: a timer enabled long after boot (bootstrap.sh) would stay `elapsed`.
            assert!(!values(text, "OnBootSec").is_empty() || !values(text, "OnActiveSec").is_empty(), "{name}: a first trigger (OnBootSec=)");
        }
        if let Some(stem) = name.strip_suffix(".timer").or_else(|| name.strip_suffix(".path")) {
            let target = values(text, "Unit").first().map(|s| s.to_string()).unwrap_or(format!("{stem}.service"));
            assert!(units.contains_key(&target), "{name} starts {target}, which is not in units/");
            continue;
        }
        assert_eq!(values(text, "Type"), ["oneshot"], "{name}");
        // Every run is bounded: a hung step fails (and alerts) instead of blocking its timer.
        assert_eq!(values(text, "TimeoutStartSec").len(), 1, "{name}: TimeoutStartSec=");
        // Least privilege: each step reads only the files holding what it needs. systemd
        // reads an EnvironmentFile= as root, so each is root's (/etc/materia); the
        // secrets tag-deploy writes where the service user writes are read by the tool
        // itself, as that user (MATERIA_SECRETS_FILE).
        let env: &[&str] = match name.as_str() {
            "tag-deploy.service" => &["-/etc/materia/config.env", "-/etc/materia/deploy.env"],
            "materia-notify@.service" | "materia-ping@.service" => &["-/etc/materia/monitoring.env"],
            _ => &["-/etc/materia/config.env"],
        };
        assert_eq!(values(text, "EnvironmentFile"), env, "{name}: the environment files it needs, no more");
        let secrets: Vec<&str> = values(text, "Environment").into_iter().filter(|e| e.starts_with("MATERIA_SECRETS_FILE=")).collect();
        let want: &[&str] = if name == "landing-backup.service" { &["MATERIA_SECRETS_FILE=/opt/materia/secrets.env"] } else { &[] };
        assert_eq!(secrets, want, "{name}: the secrets it reads itself");
        assert_eq!(values(text, "User"), ["beanflows_service"], "{name}");
        let exec = values(text, "ExecStart");
        assert!(exec.len() == 1 && exec[0].starts_with("/opt/materia/current/"), "{name}: runs the release through `current`: {exec:?}");
        assert_eq!(values(text, "ProtectSystem"), ["strict"], "{name}");
        for h in HARDENING {
            let set = !values(text, h).is_empty();
            let why = text.lines().any(|l| l.starts_with(&format!("# no {h}: ")) && l.len() > format!("# no {h}: ").len() + 5);
            assert!(set || why, "{name}: {h}= is neither set nor explained with `# no {h}: reason`");
            assert!(!(set && why), "{name}: {h}= is set and explained away");
        }
        if !name.starts_with("materia-notify@") && !name.starts_with("materia-ping@") {
            // Failures reach the notifier; start, success and failure the monitoring pings.
            assert_eq!(values(text, "OnFailure"), ["materia-notify@%n.service materia-ping@%N:fail.service"], "{name}");
            assert_eq!(values(text, "OnSuccess"), ["materia-ping@%N:success.service"], "{name}");
            for dep in ["Wants", "After"] {
                assert!(values(text, dep).contains(&"materia-ping@%N:start.service"), "{name}: {dep}=materia-ping@%N:start.service");
            }
            assert!(
                values(text, "SuccessExitStatus").first().is_some_and(|v| v.split(' ').any(|c| c == "3")),
                "{name}: exit 3 (nothing to do) is success"
            );
            assert!(values(text, "ReadWritePaths").first().is_some_and(|v| v.contains("/data/materia")), "{name}: records its runs in the state DB");
        }
    }
    // The path units watch the triggers the tools write; the service they start takes
    // its trigger before anything can fail, is never start-limited (a path unit whose
    // service hits its start limit stops watching), and has a catch-up timer for the runs
    // that fail or are killed after taking it. A path unit that fails alerts.
    use materia_common::layout::{TRIGGER_LAKEHOUSE_UPDATED, TRIGGER_LANDING_UPDATED};
    for (path, trigger) in [("lake-transform.path", TRIGGER_LANDING_UPDATED), ("serve-export.path", TRIGGER_LAKEHOUSE_UPDATED)] {
        let file = format!("/data/materia/triggers/{trigger}");
        assert_eq!(values(&units[path], "PathExists"), [file.as_str()], "{path}");
        assert_eq!(values(&units[path], "OnFailure"), ["materia-notify@%n.service"], "{path}");
        let service = values(&units[path], "Unit")[0];
        assert_eq!(values(&units[service], "ExecStartPre"), [format!("/bin/rm -f {file}")], "{service}");
        assert_eq!(values(&units[service], "StartLimitIntervalSec"), ["0"], "{service}");
        let catch_up: Vec<&String> = units.iter().filter(|(n, t)| n.ends_with(".timer") && values(t, "Unit") == [service]).map(|(n, _)| n).collect();
        assert_eq!(catch_up.len(), 1, "{service}: a catch-up timer");
        assert!(!values(&units[catch_up[0]], "OnUnitInactiveSec").is_empty(), "{}", catch_up[0]);
    }
    // Every step of the one list has its service, and its timer starts it.
    for step in materia_common::layout::STEPS {
        let service = format!("{}.service", step.tool);
        assert!(units.contains_key(&service), "{service} is not in units/");
        let timer = units.get(step.timer).unwrap_or_else(|| panic!("{} is not in units/", step.timer));
        let starts = values(timer, "Unit").first().map(|s| s.to_string()).unwrap_or_else(|| step.timer.replace(".timer", ".service"));
        assert_eq!(starts, service, "{}", step.timer);
    }
    // tag-deploy builds with the service user's toolchain, which systemd's PATH lacks.
    assert!(values(&units["tag-deploy.service"], "Environment").iter().any(|e| e.starts_with("PATH=/opt/materia/.cargo/bin:")));
    // Steps that need no network have none: the lakehouse's, until a DuckLake's drop-in
    // (which bootstrap.sh installs for exactly these) opens it and adds the lake's
    // secrets, and nothing else.
    let dropin = std::fs::read_to_string(units_dir().join("ducklake.conf")).unwrap();
    let bootstrap = std::fs::read_to_string(units_dir().join("../infra/bootstrap.sh")).unwrap();
    let lake_units = ["lake-transform.service", "serve-export.service", "lake-maintain.service"];
    assert!(bootstrap.contains(&format!("for u in {}; do", lake_units.join(" "))), "bootstrap.sh installs the drop-in for {lake_units:?}");
    for s in lake_units {
        assert_eq!(values(&units[s], "PrivateNetwork"), ["yes"], "{s}");
        assert_eq!(values(&units[s], "RestrictAddressFamilies"), ["AF_UNIX"], "{s}");
    }
    assert_eq!(values(&dropin, "EnvironmentFile"), Vec::<&str>::new(), "root reads no file the service user writes");
    assert_eq!(values(&dropin, "Environment"), [format!("MATERIA_SECRETS_FILE=/opt/materia/{}", materia_common::layout::LAKE_ENV_FILE)]);
    assert_eq!(values(&dropin, "PrivateNetwork"), ["no"]);
    assert_eq!(values(&dropin, "RestrictAddressFamilies"), ["", "AF_UNIX AF_INET AF_INET6"], "replaces the list");
    let keys: Vec<&str> = dropin.lines().filter(|l| !l.starts_with('#') && l.contains('=')).map(|l| l.split('=').next().unwrap()).collect();
    assert_eq!(keys, ["Wants", "After", "Environment", "PrivateNetwork", "RestrictAddressFamilies", "RestrictAddressFamilies"], "nothing else");
    for secret in materia_common::layout::LAKE_SECRETS {
        assert!(dropin.contains(secret), "the drop-in names {secret}");
    }
    // Every directory the units write is created by tmpfiles.d.
    let tmpfiles = std::fs::read_to_string(units_dir().join("materia.tmpfiles.conf")).unwrap();
    for (name, text) in &units {
        for dir in values(text, "ReadWritePaths").iter().flat_map(|v| v.split(' ')) {
            assert!(tmpfiles.lines().any(|l| l.split_whitespace().nth(1) == Some(dir)), "{name}: {dir} is not in materia.tmpfiles.conf");
        }
    }
}
