//! materia-status: for each step, its last run (result, duration, what it did), its
//! next scheduled run and a failed last start of its unit (from systemd when it runs
//! the timers: a failure no run records), the backup lag, what is
//! quarantined, and a corrupt lakehouse file a rebuild kept.
//! Reads the state DB read-only (WAL: never blocks, never waits for, a running step).

use std::io::IsTerminal as _;

use anyhow::Context as _;
use clap::Parser;
use materia_common::{CommonArgs, Outcome, StateDb};
use serde_json::{Value, json};

/// The tool's name.
pub const TOOL: &str = "materia-status";

/// Show what every Materia step last did and when it runs next.
#[derive(Debug, Parser)]
#[command(name = TOOL, version)]
pub struct Cli {
    #[command(flatten)]
    common: CommonArgs,

    /// JSON for scripts instead of a table.
    #[arg(long)]
    json: bool,
}

/// Run the tool.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    materia_common::init_logging(&cli.common);
    let layout = cli.common.layout();
    let db = if layout.state_db().exists() { Some(StateDb::open_read_only(layout.state_db())?) } else { None };
    let mut steps = Vec::new();
    for materia_common::layout::StepInfo { tool, timer } in materia_common::layout::STEPS {
        let last = match &db {
            Some(db) => last_run(db, tool)?,
            None => Value::Null,
        };
        let service = timer.replace(".timer", ".service");
        steps.push(json!({"step": tool, "last_run": last, "next_run": next_elapse(timer), "unit_failed": unit_failure(&service)}));
    }
    let backup_lag = match &db {
        Some(db) => backup_lag(db)?,
        None => Value::Null,
    };
    let quarantined = match &db {
        Some(db) => quarantined(db)?,
        None => json!([]),
    };
    // lake-transform's file (README, "lake-transform"): disk to take back once looked at.
    let kept = layout.kept_corrupt_lakehouse();
    let kept_corrupt = match std::fs::metadata(&kept) {
        Ok(m) => json!({"path": kept.display().to_string(), "bytes": m.len()}),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(e) => return Err(anyhow::Error::new(e).context(format!("reading {}", kept.display()))),
    };
    let report = json!({
        "state_db": layout.state_db().display().to_string(),
        "steps": steps,
        "backup_lag_files": backup_lag,
        "quarantined": quarantined,
        "kept_corrupt_lakehouse": kept_corrupt,
    });
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report, std::io::stdout().is_terminal());
    }
    Ok(Outcome::Changed)
}

fn last_run(db: &StateDb, tool: &str) -> anyhow::Result<Value> {
    let row = db.conn().query_row(
        "SELECT run_id, status, started_at, finished_at, duration_ms, summary, error, stats
         FROM runs WHERE tool = ?1 ORDER BY run_id DESC LIMIT 1",
        [tool],
        |r| {
            Ok(json!({
                "run_id": r.get::<_, i64>(0)?,
                "status": r.get::<_, String>(1)?,
                "started_at": r.get::<_, String>(2)?,
                "finished_at": r.get::<_, Option<String>>(3)?,
                "duration_ms": r.get::<_, Option<i64>>(4)?,
                "summary": r.get::<_, Option<String>>(5)?,
                "error": r.get::<_, Option<String>>(6)?,
                "stats": serde_json::from_str::<Value>(&r.get::<_, String>(7)?).unwrap_or(Value::Null),
            }))
        },
    );
    match row {
        Ok(v) => Ok(v),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(Value::Null),
        Err(e) => Err(db.err(e)).context("reading runs"),
    }
}

/// Landed files not yet recorded in any backup.
fn backup_lag(db: &StateDb) -> anyhow::Result<Value> {
    let n: i64 = db
        .conn()
        .query_row("SELECT count(*) FROM landed_files lf WHERE NOT EXISTS (SELECT 1 FROM backup_objects b WHERE b.path = lf.path)", [], |r| r.get(0))
        .map_err(|e| db.err(e))?;
    Ok(json!(n))
}

/// Landed files an operator set aside (`lake-transform quarantine`): lake-transform's
/// `quarantine` table, read as its documented contract (README, "lake-transform").
fn quarantined(db: &StateDb) -> anyhow::Result<Value> {
    let exists: bool = db
        .conn()
        .query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'quarantine'", [], |r| r.get(0))
        .map_err(|e| db.err(e))?;
    if !exists {
        return Ok(json!([]));
    }
    let mut st = db
        .conn()
        .prepare("SELECT path, reason, quarantined_by, quarantined_at FROM quarantine WHERE released_at IS NULL ORDER BY path")
        .map_err(|e| db.err(e))?;
    let rows = st
        .query_map([], |r| {
            Ok(json!({"path": r.get::<_, String>(0)?, "reason": r.get::<_, String>(1)?, "by": r.get::<_, String>(2)?, "at": r.get::<_, String>(3)?}))
        })
        .map_err(|e| db.err(e))?;
    Ok(Value::Array(rows.collect::<Result<_, _>>().map_err(|e| db.err(e))?))
}

/// When systemd next fires `timer`, if systemd runs the timers here.
fn next_elapse(timer: &str) -> Option<String> {
    let out = std::process::Command::new("systemctl")
        .args(["show", timer, "--property=NextElapseUSecRealtime", "--value"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !v.is_empty() && v != "n/a").then_some(v)
}

/// How systemd's last start of `service` ended, if it failed: it also sees the failures
/// no run records (a usage error or an unreadable secrets file, found before the tool
/// opens its state DB; a run systemd ended at its timeout). None when it succeeded, or
/// systemd does not run the units here.
fn unit_failure(service: &str) -> Option<Value> {
    let out = std::process::Command::new("systemctl")
        .args(["show", service, "--property=Result,ExecMainStatus,ExecMainExitTimestamp"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let prop = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix('=')).unwrap_or_default().to_owned();
    let result = prop("Result");
    if result.is_empty() || result == "success" {
        return None;
    }
    Some(json!({"unit": service, "result": result, "exit_status": prop("ExecMainStatus").parse::<i64>().ok(), "at": prop("ExecMainExitTimestamp")}))
}

fn print_table(report: &Value, tty: bool) {
    let rows: Vec<[String; 6]> = report["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let last = &s["last_run"];
            let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
            let duration = last["duration_ms"].as_i64().map(|ms| format!("{:.1} s", ms as f64 / 1000.0)).unwrap_or("-".into());
            let what = if last["error"].is_string() { text(&last["error"]) } else { text(&last["summary"]) };
            [text(&s["step"]), text(&last["status"]), text(&last["finished_at"]), duration, text(&s["next_run"]), what]
        })
        .collect();
    let head = ["step", "result", "finished", "took", "next run", "what it did"];
    let width: Vec<usize> = (0..5).map(|i| rows.iter().map(|r| r[i].len()).chain([head[i].len()]).max().unwrap_or(0)).collect();
    let line = |cells: [&str; 6]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate().take(5) {
            s.push_str(&format!("{c:<w$}  ", w = width[i]));
        }
        let last = cells[5];
        // On a terminal, keep the table one line per step.
        if tty && last.chars().count() > 80 { s + &last.chars().take(77).collect::<String>() + "..." } else { s + last }
    };
    println!("{}", line(head));
    for r in &rows {
        println!("{}", line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]));
    }
    for s in report["steps"].as_array().into_iter().flatten() {
        let f = &s["unit_failed"];
        if f.is_object() {
            let status = f["exit_status"].as_i64().map(|n| format!(", exit status {n}")).unwrap_or_default();
            println!(
                "{}: systemd's last start failed ({}{status}, at {}): journalctl -u {}",
                s["step"].as_str().unwrap_or("?"),
                f["result"].as_str().unwrap_or("?"),
                f["at"].as_str().unwrap_or("?"),
                f["unit"].as_str().unwrap_or("?")
            );
        }
    }
    for q in report["quarantined"].as_array().into_iter().flatten() {
        let t = |k: &str| q[k].as_str().unwrap_or("?").to_owned();
        println!("quarantined: {} ({}, by {} at {})", t("path"), t("reason"), t("by"), t("at"));
    }
    if let Some(path) = report["kept_corrupt_lakehouse"]["path"].as_str() {
        let mib = report["kept_corrupt_lakehouse"]["bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0;
        println!("kept: {path} ({mib:.1} MiB), the corrupt lakehouse a rebuild replaced: remove it when done with it");
    }
    match report["backup_lag_files"].as_i64() {
        Some(n) => println!("backup lag: {n} landed file(s) not yet backed up"),
        None => println!("no state DB yet at {}", report["state_db"].as_str().unwrap_or("?")),
    }
}

#[cfg(test)]
mod cli_tests {
    #[test]
    fn the_flags_are_sound() {
        // clap checks the whole command definition (names, conflicts, defaults).
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
