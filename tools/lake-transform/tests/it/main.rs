//! lake-transform on real files: landing files written as psd-extract lands them, a
//! real lakehouse.duckdb, the real state DB.
//!
//! Why this long: one integration binary per tool (fast to link); its tests share the landing and lakehouse helpers at the top.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use materia_common::layout::{ENV_LAKE_S3_ENDPOINT, ENV_LAKE_S3_KEY_ID, ENV_LAKE_S3_SECRET};
use materia_test_support::Run;
use materia_test_support::moto::Moto;
use materia_test_support::postgres::Postgres;

const HEADER: &str = "Commodity_Code,Commodity_Description,Country_Code,Country_Name,Market_Year,\
Calendar_Year,Month,Attribute_ID,Attribute_Description,Unit_ID,Unit_Description,Value";

/// (country code, market year, attribute id, value) rows of coffee.
type Row = (&'static str, i32, &'static str, f64);

fn attr_name(id: &str) -> &'static str {
    match id {
        "020" => "Beginning Stocks",
        "028" => "Production",
        "057" => "Imports",
        "086" => "Total Supply",
        "088" => "Exports",
        "125" => "Domestic Consumption",
        "176" => "Ending Stocks",
        "178" => "Total Distribution",
        _ => "Other",
    }
}

fn csv(rows: &[Row]) -> Vec<u8> {
    let mut s = format!("{HEADER}\r\n");
    for (country, year, attr, value) in rows {
        s.push_str(&format!(
            "0711100,\"Coffee, Green\",{country},Country {country},{year},2024,01,{attr},{},02,\"(1000 60 KG BAGS)\",{value:.4}\r\n",
            attr_name(attr)
        ));
    }
    s.into_bytes()
}

/// `coffee` as [`csv`] makes it, plus `wheat` rows of another commodity (0410000).
fn with_wheat(coffee: &[Row], wheat: &[Row]) -> Vec<u8> {
    let mut out = csv(coffee);
    let more = String::from_utf8(csv(wheat)).unwrap().replace("0711100,\"Coffee, Green\"", "0410000,Wheat");
    out.extend_from_slice(more.split_once("\r\n").unwrap().1.as_bytes());
    out
}

/// A consistent balance for one country-year: supply = 10 + p + 5, use = 3 + 7 + rest.
fn balance(country: &'static str, year: i32, production: f64) -> Vec<Row> {
    let supply = 10.0 + production + 5.0;
    vec![
        (country, year, "020", 10.0),
        (country, year, "028", production),
        (country, year, "057", 5.0),
        (country, year, "086", supply),
        (country, year, "088", 3.0),
        (country, year, "125", 7.0),
        (country, year, "176", supply - 10.0),
        (country, year, "178", supply),
    ]
}

struct Env {
    _tmp: materia_test_support::TestDir,
    root: PathBuf,
    data: PathBuf,
    models: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = materia_test_support::temp_dir();
        let root = tmp.path().to_owned();
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        Env { data: root.join("data"), root, _tmp: tmp, models }
    }

    /// A private copy of the shipped models, to edit.
    fn own_models(&mut self) -> PathBuf {
        let dst = self.root.join("models");
        copy_dir(&self.models, &dst);
        self.models = dst.clone();
        dst
    }

    fn cmd(&self) -> Command {
        let mut c = materia_test_support::tool(env!("CARGO_BIN_EXE_lake-transform"));
        c.arg("--data-dir").arg(&self.data).arg("--models").arg(&self.models);
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd().args(args).output().unwrap())
    }

    /// psd-extract lands `csv` as the release of `month` (`YYYY-MM`), under the name it
    /// gives it: that path, relative to the landing dir.
    fn land(&self, month: &str, csv: &[u8]) -> String {
        materia_test_support::landing::land(&self.data, month, csv).unwrap_or_else(|| panic!("psd-extract had {month}'s content landed already"))
    }

    /// Write a landing file by hand, as psd-extract never would (a landed file rewritten
    /// in place): what the engine must detect.
    fn land_by_hand(&self, rel: &str, csv: &[u8]) {
        let path = self.data.join("landing").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
        gz.write_all(csv).unwrap();
        gz.finish().unwrap();
    }

    fn lakehouse(&self) -> duckdb::Connection {
        let cfg = duckdb::Config::default().access_mode(duckdb::AccessMode::ReadOnly).unwrap();
        duckdb::Connection::open_with_flags(self.data.join("lakehouse.duckdb"), cfg).unwrap()
    }

    /// Each row of `sql` as one string (columns joined by |).
    fn rows(&self, sql: &str) -> Vec<String> {
        let c = self.lakehouse();
        let mut st = c.prepare(&format!("SELECT concat_ws('|', *COLUMNS(*)) FROM ({sql})")).unwrap();
        st.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap).collect()
    }

    fn state(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.data.join("landing/.state.sqlite")).unwrap()
    }

    fn state_rows(&self, sql: &str) -> Vec<String> {
        let c = self.state();
        let mut st = c.prepare(sql).unwrap();
        let n = st.column_count();
        st.query_map([], |r| {
            Ok((0..n).map(|i| r.get::<_, rusqlite::types::Value>(i).map(|v| format!("{v:?}")).unwrap()).collect::<Vec<_>>().join("|"))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    /// A fingerprint of everything the web app and the engine can see.
    fn snapshot(&self) -> Vec<String> {
        let tables = self.rows("SELECT schema_name || '.' || table_name FROM duckdb_tables() ORDER BY ALL");
        let mut out = tables.clone();
        for t in tables {
            let mut rows = self.rows(&format!("SELECT * FROM {t}"));
            rows.sort();
            out.push(format!("{t}: {} rows, {:?}", rows.len(), rows.iter().take(3).collect::<Vec<_>>()));
            out.push(format!("{t}: {}", rows.join("\n").len()));
        }
        out
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

fn real_csv() -> Option<Vec<u8>> {
    let zip = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/psd_coffee_csv.zip");
    if !zip.exists() {
        eprintln!("SKIPPED: {} is absent; CI always has it", zip.display());
        return None;
    }
    let out = Command::new("unzip").arg("-p").arg(&zip).output().unwrap();
    assert!(out.status.success());
    Some(out.stdout)
}

/// Release 2024-01: BR and CO, 2022–2023. Release 2024-02 revises BR 2023 production,
/// adds VN, drops CO 2022 exports.
fn two_releases() -> (Vec<u8>, Vec<u8>) {
    let mut a = Vec::new();
    for c in ["BR", "CO"] {
        for y in [2022, 2023] {
            a.extend(balance(c, y, 100.0));
        }
    }
    let mut b: Vec<Row> = Vec::new();
    for c in ["BR", "CO", "VN"] {
        for y in [2022, 2023] {
            let p = if (c, y) == ("BR", 2023) { 120.0 } else { 100.0 };
            b.extend(balance(c, y, p).into_iter().filter(|r| !(r.0 == "CO" && r.1 == 2022 && r.2 == "088")));
        }
    }
    (csv(&a), csv(&b))
}

#[test]
fn the_real_release_builds_every_serving_table_with_the_contract_columns() {
    let Some(real) = real_csv() else { return };
    let env = Env::new();
    env.land("2022-12", &real);
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");

    let cols = |t: &str| {
        env.rows(&format!(
            "SELECT column_name || ' ' || data_type FROM duckdb_columns() WHERE schema_name || '.' || table_name = '{t}' ORDER BY column_index"
        ))
    };
    assert_eq!(cols("serving.releases"), ["release DATE", "commodity_code VARCHAR", "files BIGINT", "rows BIGINT", "loaded_at TIMESTAMP"]);
    let av = cols("serving.attribute_values");
    assert_eq!(
        av.iter().map(|c| c.split(' ').next().unwrap()).collect::<Vec<_>>(),
        ["commodity_code", "commodity", "country_code", "country", "market_year", "attribute_id", "attribute", "unit", "value", "release"]
    );
    assert!(av.contains(&"value DOUBLE".to_owned()) && av.contains(&"release DATE".to_owned()), "{av:?}");
    let cb = cols("serving.commodity_balance");
    assert_eq!(
        cb.iter().map(|c| c.split(' ').next().unwrap()).collect::<Vec<_>>(),
        [
            "commodity_code",
            "commodity",
            "country_code",
            "country",
            "market_year",
            "unit",
            "beginning_stocks",
            "production",
            "imports",
            "total_supply",
            "exports",
            "domestic_consumption",
            "ending_stocks",
            "total_distribution",
            "stocks_to_use",
            "release"
        ]
    );
    let wb = cols("serving.world_balance");
    assert!(wb.iter().any(|c| c == "countries BIGINT") && wb.iter().any(|c| c == "stocks_to_use DOUBLE"), "{wb:?}");
    assert_eq!(
        cols("serving.revisions").iter().map(|c| c.split(' ').next().unwrap()).collect::<Vec<_>>(),
        [
            "commodity_code",
            "country_code",
            "market_year",
            "attribute_id",
            "attribute",
            "release",
            "previous_release",
            "value",
            "previous_value",
            "change"
        ]
    );

    assert_eq!(env.rows("SELECT release, commodity_code, files, rows FROM serving.releases"), ["2022-12-01|0711100|1|77957"]);
    assert_eq!(env.rows("SELECT count(*) FROM serving.attribute_values"), ["77957"]);
    assert_eq!(env.rows("SELECT count(*), count(DISTINCT country_code) FROM serving.commodity_balance"), ["4103|85"]);
    assert_eq!(env.rows("SELECT count(*), min(market_year), max(market_year) FROM serving.world_balance"), ["64|1960|2023"]);
    // Codes keep their leading zeros.
    assert_eq!(env.rows("SELECT DISTINCT attribute_id FROM serving.attribute_values WHERE attribute = 'Beginning Stocks'"), ["020"]);
    // Non-blocking identity audits report the real release's few breaking rows and let it through.
    let audits = env.state_rows("SELECT audit, blocking, failing_rows FROM audit_results WHERE failing_rows > 0 ORDER BY audit");
    assert_eq!(audits, ["Text(\"balance_identities\")|Integer(0)|Integer(1)", "Text(\"coffee_identities\")|Integer(0)|Integer(1)"]);
    assert!(run.stderr.contains("audit balance_identities on serving.commodity_balance failed: 1 offending row"), "{}", run.stderr);

    let again = env.run(&["run"]);
    assert_eq!(again.code, 3, "{again:?}");
    assert!(env.data.join("triggers/lakehouse.updated").exists());
}

#[test]
fn a_new_release_is_ingested_incrementally_and_revisions_are_tracked() {
    let (a, b) = two_releases();
    let env = Env::new();
    let a_path = env.land("2024-01", &a);
    assert_eq!(env.run(&["run"]).code, 0);
    let before = std::fs::metadata(env.data.join("triggers/lakehouse.updated")).unwrap().modified().unwrap();

    let b_path = env.land("2024-02", &b);
    let plan = env.run(&["plan"]);
    assert_eq!(plan.code, 0);
    assert!(plan.stdout.contains(&format!("raw.psd\tappend {b_path}\t1 new landing file")), "{}", plan.stdout);
    assert!(plan.stdout.contains("serving.revisions\tmerge\tupstream staging.psd_latest changed"), "{}", plan.stdout);
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");

    // raw.psd appended only the new file; the ledger has both.
    let actions = env.state_rows("SELECT model, action FROM model_runs WHERE run_id = (SELECT max(run_id) FROM runs) ORDER BY model");
    assert!(actions.contains(&"Text(\"raw.psd\")|Text(\"append\")".to_owned()), "{actions:?}");
    assert_eq!(env.rows("SELECT path FROM _materia.landing_ledger ORDER BY path"), [a_path, b_path]);
    assert_eq!(env.rows("SELECT release, rows FROM serving.releases ORDER BY release"), ["2024-01-01|32", "2024-02-01|47"]);

    // Latest release only: VN is there, CO 2022 exports are not.
    assert_eq!(env.rows("SELECT DISTINCT release FROM serving.attribute_values"), ["2024-02-01"]);
    assert_eq!(env.rows("SELECT count(*) FROM serving.commodity_balance WHERE country_code = 'VN'"), ["2"]);
    assert_eq!(
        env.rows("SELECT exports IS NULL, stocks_to_use IS NULL FROM serving.commodity_balance WHERE country_code = 'CO' AND market_year = 2022"),
        ["true|true"]
    );
    // The one revised value, with its previous value; the dropped row is not a revision.
    assert_eq!(
        env.rows("SELECT country_code, market_year, attribute_id, release, previous_release, value, previous_value, change FROM serving.revisions ORDER BY ALL"),
        [
            "BR|2023|028|2024-02-01|2024-01-01|120.0|100.0|20.0",
            "BR|2023|086|2024-02-01|2024-01-01|135.0|115.0|20.0",
            "BR|2023|176|2024-02-01|2024-01-01|125.0|105.0|20.0",
            "BR|2023|178|2024-02-01|2024-01-01|135.0|115.0|20.0",
        ]
    );
    assert_eq!(
        env.rows("SELECT market_year, countries, production, round(stocks_to_use, 4) FROM serving.world_balance ORDER BY market_year"),
        ["2022|3|300.0|11.6667", "2023|3|320.0|11.1667"] // 315 / (21 + 6): CO 2022 exports were dropped; 335 / (21 + 9)
    );
    let after = std::fs::metadata(env.data.join("triggers/lakehouse.updated")).unwrap().modified().unwrap();
    assert!(after > before, "a changing run signals the next step");
}

#[test]
fn a_blocking_audit_failure_rolls_the_whole_run_back() {
    let (a, _) = two_releases();
    let env = Env::new();
    env.land("2024-01", &a);
    assert_eq!(env.run(&["run"]).code, 0);
    let before = env.snapshot();

    // A release with a duplicated key: raw.psd's grain audit (one value per key in a
    // file) must stop it.
    let mut rows = balance("BR", 2022, 50.0);
    rows.push(("BR", 2022, "028", 51.0));
    env.land("2024-02", &csv(&rows));
    let run = env.run(&["run"]);
    assert_eq!(run.code, 5, "{run:?}");
    let line = run.error_line();
    assert!(line.contains("audit unique_combination_of_columns on raw.psd failed: 1 offending row") && line.contains("rolled back"), "{line}");
    assert_eq!(env.snapshot(), before, "the lakehouse is exactly at the previous state");
    assert_eq!(env.state_rows("SELECT status FROM runs ORDER BY run_id DESC LIMIT 1"), ["Text(\"failed\")"]);
    assert_eq!(
        env.state_rows("SELECT model, blocking, failing_rows FROM audit_results WHERE failing_rows > 0 AND run_id = (SELECT max(run_id) FROM runs)"),
        ["Text(\"raw.psd\")|Integer(1)|Integer(1)"]
    );
    // Still failing on the next run (the bad file was not recorded as loaded).
    assert_eq!(env.run(&["run"]).code, 5);

    // A rebuild writes a new file: failing, it replaces nothing and leaves no file behind.
    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.error_line().contains("audit unique_combination_of_columns on raw.psd failed"), "{}", run.error_line());
    assert_eq!(env.snapshot(), before, "the lakehouse is exactly at the previous state");
    let names: Vec<String> = std::fs::read_dir(&env.data).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.contains("-tmp-")), "{names:?}");
}

#[test]
fn kill_9_mid_run_leaves_the_previous_state() {
    let (a, _) = two_releases();
    let env = Env::new();
    env.land("2024-01", &a);
    assert_eq!(env.run(&["run"]).code, 0);
    let before = env.snapshot();

    // A big second release, so the run is still busy when it is killed.
    let mut rows: Vec<Row> = Vec::new();
    let countries: Vec<&'static str> = (0..1000).map(|i| &*Box::leak(format!("X{i:03}").into_boxed_str())).collect();
    for c in &countries {
        for y in 1960..2024 {
            rows.extend(balance(c, y, 1.0));
        }
    }
    env.land("2024-02", &csv(&rows));
    let mut child = env.cmd().arg("run").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let finished_early = child.try_wait().unwrap().is_some();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!finished_early, "the run finished before it could be killed");
    assert_eq!(env.snapshot(), before, "a killed run leaves the last good state");

    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.rows("SELECT count(*) FROM serving.commodity_balance"), [(1000 * 64).to_string()], "the latest release only");
    assert_eq!(
        env.state_rows("SELECT status FROM runs WHERE tool = 'lake-transform' ORDER BY run_id"),
        ["Text(\"success\")", "Text(\"aborted\")", "Text(\"success\")"]
    );

    // A rebuild builds a new file beside the lakehouse: killed, it leaves the lakehouse
    // as it was, and the next run, with nothing to do, removes what it left.
    let before = env.snapshot();
    let served = serving_state(&env);
    let temps = |env: &Env| -> Vec<String> {
        std::fs::read_dir(&env.data).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.contains("-tmp-")).collect()
    };
    let mut child = env.cmd().args(["run", "--rebuild"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    materia_test_support::wait_until("the rebuild's new file", Duration::from_secs(30), || !temps(&env).is_empty());
    std::thread::sleep(Duration::from_millis(100));
    let finished_early = child.try_wait().unwrap().is_some();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!finished_early, "the rebuild finished before it could be killed");
    let left = temps(&env); // the new file, and its WAL if it had committed a model yet
    assert!(!left.is_empty() && left.iter().all(|n| n.starts_with(".lakehouse.build-tmp-")), "the killed rebuild's files: {left:?}");
    assert_eq!(env.snapshot(), before, "a killed rebuild leaves the last good state");
    let run = env.run(&["run"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("left by an interrupted run or maintain"), "{}", run.stderr);
    assert_eq!(temps(&env), Vec::<String>::new());
    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(serving_state(&env), served, "the rebuilt file holds what the runs built");
    assert_eq!(temps(&env), Vec::<String>::new());
}

#[test]
fn a_second_writer_is_refused_or_waits() {
    let (a, _) = two_releases();
    let env = Env::new();
    env.land("2024-01", &a);
    let lock = materia_common::lock::Lock::acquire(&env.data.join("lakehouse.duckdb.lock"), Duration::ZERO).unwrap();
    let run = env.run(&["run"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.error_line().contains("the lakehouse is held by another writer"), "{}", run.error_line());
    assert!(run.error_line().ends_with(&format!("already running (pid {})", std::process::id())), "{}", run.error_line());
    assert!(!env.data.join("lakehouse.duckdb").exists(), "nothing opened");

    let waiter = env.cmd().args(["--wait-lock", "30", "run"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(lock);
    assert_eq!(waiter.wait_with_output().unwrap().status.code(), Some(0));
}

#[test]
fn a_changed_or_missing_landing_file_is_an_integrity_error_until_rebuild() {
    let (a, b) = two_releases();
    let env = Env::new();
    let a_path = env.land("2024-01", &a);
    let b_path = env.land("2024-02", &b);
    assert_eq!(env.run(&["run"]).code, 0);

    env.land_by_hand(&a_path, &b); // rewritten in place
    let run = env.run(&["run"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.error_line().contains(&format!("landing file {a_path} changed after it was loaded into raw.psd")), "{}", run.error_line());

    std::fs::remove_file(env.data.join("landing").join(&a_path)).unwrap();
    let run = env.run(&["run"]);
    assert_eq!(run.code, 6);
    assert!(run.error_line().contains(&format!("landing file {a_path} was loaded into raw.psd but is gone")), "{}", run.error_line());

    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.rows("SELECT path FROM _materia.landing_ledger"), [b_path]);
    assert_eq!(env.run(&["run"]).code, 3);
}

#[test]
fn a_corrupt_lakehouse_file_is_an_integrity_error_until_rebuild() {
    let (a, b) = two_releases();
    let env = Env::new();
    env.land("2024-01", &a);
    env.land("2024-02", &b);
    assert_eq!(env.run(&["run"]).code, 0);
    let built = serving_state(&env);
    let file = env.data.join("lakehouse.duckdb");
    // Not a DuckDB file at all; then DuckDB's magic with a header whose checksum fails:
    // DuckDB's two ways of saying so (lakehouse_target::CORRUPT).
    let mut bad_checksum = vec![0x5a_u8; 16384];
    bad_checksum[8..12].copy_from_slice(b"DUCK");
    let bad_checksum_bytes = bad_checksum.clone();
    for (bytes, duckdb_says) in [(vec![0x5a_u8; 16384], "is not a valid DuckDB database file"), (bad_checksum, "Corrupt database file")] {
        std::fs::write(&file, &bytes).unwrap();
        for args in [&["run"][..], &["plan"]] {
            let run = env.run(args);
            assert_eq!(run.code, 6, "{args:?}: {run:?}");
            let line = run.error_line();
            assert!(line.contains(&format!("opening {}", file.display())) && line.contains(duckdb_says), "{line}");
            assert!(line.contains("the file is corrupt") && line.contains("`lake-transform run --rebuild` writes it anew"), "{line}");
            assert_eq!(std::fs::read(&file).unwrap(), bytes, "{args:?} left the file as it was");
        }
        // Recorded once, as the run's failure.
        let last = env.state_rows("SELECT status, exit_code, error FROM runs WHERE tool = 'lake-transform' ORDER BY run_id DESC LIMIT 1");
        assert!(last[0].starts_with("Text(\"failed\")|Integer(6)|") && last[0].contains(duckdb_says), "{last:?}");
    }

    // A rebuild does not read it: planned and run from landing/ alone; a WAL left beside
    // it, which could only be replayed onto it, is removed.
    let wal = env.data.join("lakehouse.duckdb.wal");
    std::fs::write(&wal, b"the corrupt file's WAL").unwrap();
    let plan = env.run(&["plan", "--rebuild"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(plan.stdout.contains("raw.psd\tbuild"), "{}", plan.stdout);
    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("the file is corrupt") && run.stderr.contains("this run rebuilds it"), "{}", run.stderr);
    assert!(run.stderr.contains("the corrupt file's WAL") && !wal.exists(), "{}", run.stderr);
    assert_eq!(serving_state(&env), built);
    // The corrupt bytes are kept beside it, for a look (the last ones only).
    let kept = env.data.join("lakehouse.duckdb.corrupt");
    assert_eq!(materia_common::layout::Layout::new(&env.data, None).kept_corrupt_lakehouse(), kept, "where materia-status looks");
    assert!(run.stderr.contains(&format!("kept the corrupt file as {}", kept.display())), "{}", run.stderr);
    assert_eq!(std::fs::read(&kept).unwrap(), bad_checksum_bytes);
    assert_eq!(env.run(&["run"]).code, 3);

    // Every block of table data corrupt, the headers and the catalog intact: the file
    // opens, and DuckDB finds it when a query reads a block (here the plan, reading the
    // engine's state). The same exit 6 and fix; a rebuild plans without the file.
    corrupt_table_blocks(&env, "TRUE");
    let corrupted = std::fs::read(&file).unwrap();
    let run = env.run(&["run"]);
    assert_eq!(run.code, 6, "{run:?}");
    let line = run.error_line();
    assert!(!line.contains("opening") && line.contains("Corrupt database file"), "found reading, not opening: {line}");
    assert!(line.contains("the file is corrupt") && line.contains("`lake-transform run --rebuild` writes it anew"), "{line}");
    let plan = env.run(&["plan"]);
    assert_eq!(plan.code, 6, "{plan:?}");
    assert!(plan.error_line().contains("Corrupt database file") && plan.error_line().contains("`lake-transform run --rebuild`"), "{plan:?}");
    let plan = env.run(&["plan", "--rebuild"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(plan.stdout.contains("raw.psd\tbuild") && plan.stderr.contains("the rebuild does without it"), "{plan:?}");
    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("Corrupt database file") && run.stderr.contains("the rebuild does without it"), "{}", run.stderr);
    assert_eq!(serving_state(&env), built);
    assert_eq!(std::fs::read(&kept).unwrap(), corrupted, "the older kept file replaced");

    // A corrupt block no run reads (a run with nothing to do reads none of
    // serving.revisions) goes unnoticed by the runs; the weekly `maintain` reads every
    // block as it copies the file: exit 6, the same fix, the file left as it was and no
    // half copy beside it.
    corrupt_table_blocks(&env, "schema_name = 'serving' AND table_name = 'revisions'");
    assert_eq!(env.run(&["run"]).code, 3);
    let bytes = std::fs::read(&file).unwrap();
    let run = env.run(&["maintain"]);
    assert_eq!(run.code, 6, "{run:?}");
    let line = run.error_line();
    assert!(line.contains("Corrupt database file") && line.contains("`lake-transform run --rebuild` writes it anew"), "{line}");
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "maintain left the file as it was");
    let names: Vec<String> = std::fs::read_dir(&env.data).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.contains("-tmp-")), "{names:?}");
    let last = env.state_rows("SELECT tool, status, exit_code FROM runs ORDER BY run_id DESC LIMIT 1");
    assert_eq!(last, ["Text(\"lake-maintain\")|Text(\"failed\")|Integer(6)"]);
    // The rebuild that fix names reads no block of the file, yet keeps it: `maintain`
    // found it corrupt, and nothing has written a new file since.
    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains(&format!("kept the corrupt file as {}", kept.display())), "{}", run.stderr);
    assert_eq!(std::fs::read(&kept).unwrap(), bytes, "the file maintain found corrupt kept");
    // The next rebuild replaces a file no one found corrupt: nothing kept this time.
    std::fs::remove_file(&kept).unwrap();
    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stderr.contains("kept the corrupt file") && !kept.exists(), "{}", run.stderr);
    assert_eq!(env.run(&["maintain"]).code, 0);
    assert_eq!(serving_state(&env), built);
}

/// Break the checksum of every data block of the lakehouse's tables that `filter` (on
/// duckdb_tables()) selects; the headers and the catalog stay intact.
fn corrupt_table_blocks(env: &Env, filter: &str) {
    let mut blocks = Vec::new();
    for t in env.rows(&format!("SELECT schema_name || '.' || table_name FROM duckdb_tables() WHERE {filter}")) {
        blocks.extend(env.rows(&format!("SELECT DISTINCT block_id FROM pragma_storage_info('{t}') WHERE block_id >= 0")));
    }
    assert!(!blocks.is_empty(), "no blocks where {filter}");
    let block_size: usize = env.rows("SELECT block_size FROM pragma_database_size()")[0].parse().unwrap();
    let blocks: Vec<usize> = blocks.iter().map(|b| b.parse().unwrap()).collect();
    materia_test_support::corrupt_duckdb_blocks(&env.data.join("lakehouse.duckdb"), block_size, &blocks);
}

#[test]
fn an_edited_model_rebuilds_itself_and_what_is_downstream_only() {
    let (a, _) = two_releases();
    let mut env = Env::new();
    let models = env.own_models();
    env.land("2024-01", &a);
    assert_eq!(env.run(&["run"]).code, 0);

    // A comment or whitespace is not a change.
    let path = models.join("serving_commodity_balance.sql");
    let sql = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{sql}\n-- a note\n")).unwrap();
    assert_eq!(env.run(&["run"]).code, 3);

    std::fs::write(&path, sql.replace("NULLIF(domestic_consumption + exports, 0)", "NULLIF(domestic_consumption + exports + 0, 0)")).unwrap();
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    let built: Vec<&str> = run.stdout.lines().filter(|l| !l.contains("\tskip\t")).map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(built, ["serving.commodity_balance", "serving.world_balance"]);
}

#[test]
fn bad_models_are_refused_before_anything_runs() {
    let mut env = Env::new();
    let models = env.own_models();
    let cases: Vec<(&str, &str, String)> = vec![
        ("x.sql", "MODEL (\n  name staging.x,\n  kind FULL,\n  cron '@daily'\n);\nSELECT 1", "x.sql:4: unknown MODEL property 'cron'".into()),
        (
            "x.sql",
            "MODEL (name staging.x, kind FULL);\nSELECT * FROM serving.nope",
            "x.sql:2: staging.x reads serving.nope, which is not a model".into(),
        ),
        ("x.sql", "MODEL (name staging.x, kind FULL);\nSELECT * FROM staging.y", String::new()),
        (
            "y.sql",
            "MODEL (name staging.y, kind FULL);\nSELECT * FROM staging.x",
            "models depend on each other in a cycle: staging.x, staging.y".into(),
        ),
    ];
    for (file, src, msg) in cases {
        std::fs::write(models.join(file), src).unwrap();
        if msg.is_empty() {
            continue;
        }
        let run = env.run(&["run"]);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.error_line().contains(&msg), "{} does not contain {msg}", run.error_line());
        assert!(!env.data.join("lakehouse.duckdb").exists(), "the lakehouse was not touched");
        // Recorded once, so materia-status and the operator see it.
        let last = env.state_rows("SELECT status, error FROM runs ORDER BY run_id DESC LIMIT 1");
        assert!(last[0].starts_with("Text(\"failed\")") && last[0].contains(&msg), "{last:?}");
    }
}

#[test]
fn a_binary_outside_a_release_names_its_models_or_fails_clearly() {
    // A release has models/ beside bin/; target/debug has none, and no build or source
    // path is ever guessed.
    let env = Env::new();
    let mut c = materia_test_support::tool(env!("CARGO_BIN_EXE_lake-transform"));
    let run = Run::from(c.arg("--data-dir").arg(&env.data).arg("run").output().unwrap());
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.error_line().contains("no models folder:") && run.error_line().contains("pass --models DIR or set MATERIA_MODELS"),
        "{}",
        run.error_line()
    );
    assert_eq!(env.state_rows("SELECT status FROM runs"), ["Text(\"failed\")"]);

    // The same binary inside a release layout finds the release's models.
    let release = env.root.join("releases/v9");
    std::fs::create_dir_all(release.join("bin")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_lake-transform"), release.join("bin/lake-transform")).unwrap();
    copy_dir(&env.models, &release.join("models"));
    let mut c = materia_test_support::tool(release.join("bin/lake-transform"));
    let run = Run::from(c.arg("--data-dir").arg(&env.data).arg("plan").output().unwrap());
    assert!(run.code == 0 || run.code == 3, "{run:?}");
    assert!(run.stdout.contains("serving.world_balance"), "{}", run.stdout);
}

#[test]
fn self_reading_models_and_partitions_from_are_checked() {
    let mut env = Env::new();
    let models = env.own_models();
    for (src, msg) in [
        (
            "MODEL (name staging.z, kind INCREMENTAL_BY_PARTITION, partitioned_by release,\n partitions_from serving.releases);\nSELECT release FROM staging.psd_values",
            "partitions_from serving.releases: expected an INCREMENTAL_BY_PARTITION model that staging.z reads, partitioned by (release) or more",
        ),
        (
            "MODEL (name staging.z, kind INCREMENTAL_BY_PARTITION, partitioned_by release);\nSELECT * FROM @this_model",
            "z.sql:2: @this_model needs columns (name TYPE, ...) in the header",
        ),
    ] {
        std::fs::write(models.join("z.sql"), src).unwrap();
        let run = env.run(&["run"]);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.error_line().contains(msg), "{} does not contain {msg}", run.error_line());
    }
    // Declared columns are checked against what the model returns, and the run rolls back.
    std::fs::write(models.join("z.sql"), "MODEL (name staging.z, kind FULL, columns (release DATE, n BIGINT));\nSELECT release, count(*) AS rows FROM staging.psd_values GROUP BY release").unwrap();
    env.land("2024-01", &csv(&balance("BR", 2023, 1.0)));
    let run = env.run(&["run"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.error_line().contains("staging.z returned columns (release, rows) but its header declares (release, n)"), "{}", run.error_line());
    assert_eq!(env.rows("SELECT count(*) FROM duckdb_tables() WHERE schema_name <> '_materia'"), ["0"], "rolled back");
}

#[test]
fn plan_touches_nothing_and_no_landing_files_means_nothing_to_do() {
    let env = Env::new();
    let plan = env.run(&["plan"]);
    assert_eq!(plan.code, 3, "{plan:?}");
    assert!(plan.stdout.contains("raw.psd\tskip\tno landing files match psd/*/*/*.csv.gzip yet"), "{}", plan.stdout);
    assert!(plan.stdout.contains("serving.world_balance\tskip\twaiting for"), "{}", plan.stdout);
    assert!(!env.data.join("lakehouse.duckdb").exists());
    assert_eq!(env.run(&["run"]).code, 3);
}

#[test]
fn every_shipped_model_has_a_passing_unit_test() {
    let env = Env::new();
    let run = env.run(&["test"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.ends_with("18 passed, 0 failed\n"), "{}", run.stdout);
    let tests = std::fs::read_to_string(env.models.join("tests/psd.toml")).unwrap();
    let mut models = 0;
    for f in std::fs::read_dir(&env.models).unwrap() {
        let src = std::fs::read_to_string(f.unwrap().path()).unwrap_or_default();
        if let Some(name) = src.lines().find_map(|l| l.trim().strip_prefix("name ")) {
            let name = name.trim_end_matches(',');
            models += 1;
            assert!(tests.contains(&format!("model = \"{name}\"")), "no unit test for {name}");
        }
    }
    assert_eq!(models, 10);
    // And on a DuckLake catalog: the models' SQL on the lake's tables.
    let run = env.run(&["test", "--ducklake"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.ends_with("18 passed, 0 failed\n"), "{}", run.stdout);
    assert!(!env.data.exists(), "unit tests never touch the data dir");
}

#[test]
fn the_unit_tests_run_on_a_postgresql_catalog_each_in_a_schema_dropped_after_it() {
    // A catalog that wants its password: the tests get it from PGPASSWORD alone.
    let Some(pg) = Postgres::start_with_password("pg-test-s3cret") else { return };
    pg.create_db("tests");
    let mut env = Env::new();
    let models = env.own_models();
    let catalog = format!("--ducklake=postgres:{}", pg.conninfo("tests"));
    let leftovers = || pg.query("tests", "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'materia_test_%'");
    let run = Run::from(env.cmd().args(["test", &catalog]).env("PGPASSWORD", "pg-test-s3cret").output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.ends_with("18 passed, 0 failed\n"), "{}", run.stdout);
    assert_eq!(leftovers(), "0", "every test's metadata schema is dropped");
    // A failing test fails there too, and leaves nothing either.
    let path = models.join("tests/psd.toml");
    let src = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, src.replace("change = 1.5 }", "change = 1.25 }")).unwrap();
    let run = Run::from(env.cmd().args(["test", "revisions_build", &catalog]).env("PGPASSWORD", "pg-test-s3cret").output().unwrap());
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("change = 1.25") && run.stdout.contains("0 passed, 1 failed"), "{}", run.stdout);
    assert_eq!(leftovers(), "0");
    // Without the password the catalog refuses, and says so; with one in the URL, refused.
    let run = env.run(&["test", "revisions_build", &catalog]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("password"), "{}", run.stdout);
    let run = env.run(&["test", &format!("{catalog} password=x")]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("set PGPASSWORD") && !run.stderr.contains("password=x"), "{}", run.stderr);
}

#[test]
fn a_failing_unit_test_says_which_row_and_exits_non_zero() {
    let mut env = Env::new();
    let models = env.own_models();
    let path = models.join("tests/psd.toml");
    let src = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, src.replace("change = 1.5 }", "change = 1.25 }")).unwrap();
    let run = env.run(&["test", "revisions_build"]);
    assert_eq!(run.code, 1, "{run:?}");
    let line = run.stdout.lines().find(|l| l.starts_with("FAILED\t")).unwrap();
    assert!(
        line.contains("revisions_build_pairs_each_value_with_the_previous_release_that_had_it_and_keeps_the_changed")
            && line.contains("change = 1.25"),
        "{line}"
    );
    assert!(run.stdout.contains("0 passed, 1 failed"), "{}", run.stdout);
    assert!(run.error_line().ends_with("1 of 1 model tests failed"), "{}", run.error_line());

    std::fs::write(&path, format!("{src}\n[x]\nmodel = \"serving.releases\"\nrows = []\noutputs = []\n")).unwrap();
    let run = env.run(&["test"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.error_line().contains("test x: unknown key 'rows'"), "{}", run.error_line());
}

#[test]
fn an_incremental_by_unique_key_model_merges_new_rows_by_key() {
    unique_key_merge(|env, args| env.run(args), |env, sql| env.rows(sql));
}

#[test]
fn an_incremental_by_unique_key_model_merges_on_ducklake_too() {
    let Some(lake) = Lake::start() else { return };
    unique_key_merge(|env, args| lake.run(env, args), |_, sql| lake.rows(sql));
    assert!(lake.snapshots() >= 2, "a snapshot per run");
}

/// A unique-key model (the shipped ones have none) over two releases, on a lakehouse
/// `run` and `rows` reach.
fn unique_key_merge(run: impl Fn(&Env, &[&str]) -> Run, rows: impl Fn(&Env, &str) -> Vec<String>) {
    let mut env = Env::new();
    let models = env.own_models();
    std::fs::write(
        models.join("staging_last_production.sql"),
        "MODEL (\n  name staging.last_production,\n  kind INCREMENTAL_BY_UNIQUE_KEY (unique_key (country_code)),\n  grain (country_code),\n  audits (unique_values(columns := (country_code)))\n);\n\
         SELECT country_code, value AS production, release FROM staging.psd_values\n\
         WHERE attribute_id = '028' AND market_year = 2023 AND release = (SELECT max(release) FROM staging.psd_values)",
    )
    .unwrap();
    env.land("2024-01", &csv(&[balance("BR", 2023, 100.0), balance("CO", 2023, 50.0)].concat()));
    let first = run(&env, &["run"]);
    assert_eq!(first.code, 0, "{first:?}");
    // The next release revises BR, adds VN and has no CO at all.
    env.land("2024-02", &csv(&[balance("BR", 2023, 120.0), balance("VN", 2023, 80.0)].concat()));
    let out = run(&env, &["run"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("staging.last_production\tmerge\t3\tupstream staging.psd_values changed"), "{}", out.stdout);
    assert_eq!(
        rows(&env, "SELECT country_code, production, release FROM staging.last_production ORDER BY ALL"),
        ["BR|120.0|2024-02-01", "CO|50.0|2024-01-01", "VN|80.0|2024-02-01"],
        "BR replaced, VN added, CO kept: a merge, not a rebuild"
    );
    // A rebuild computes it afresh from its query, as SQLMesh's kind does: the keys only
    // earlier merges kept are gone.
    let rebuilt = run(&env, &["run", "--rebuild"]);
    assert_eq!(rebuilt.code, 0, "{rebuilt:?}");
    assert_eq!(
        rows(&env, "SELECT country_code, production, release FROM staging.last_production ORDER BY ALL"),
        ["BR|120.0|2024-02-01", "VN|80.0|2024-02-01"],
        "a rebuild sees only the latest release: CO was kept by the merge alone"
    );
}

/// Every serving table and the incremental staging state, without load times and run ids.
fn serving_state(env: &Env) -> Vec<String> {
    state_of(|sql| env.rows(sql))
}

/// [`serving_state`] of any lakehouse, given how to query it.
fn state_of(rows: impl Fn(&str) -> Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    for t in [
        "serving.releases",
        "serving.attribute_values",
        "serving.commodity_balance",
        "serving.world_balance",
        "serving.revisions",
        "staging.psd_latest",
        "staging.psd_months",
    ] {
        let cols = match t {
            "serving.releases" => "release, commodity_code, files, rows",
            "staging.psd_months" => "* EXCLUDE (_run_id)",
            _ => "*",
        };
        out.push(format!("-- {t}"));
        out.extend(rows(&format!("SELECT {cols} FROM {t} ORDER BY ALL")));
    }
    out
}

#[test]
fn incremental_runs_match_a_full_rebuild_even_with_backfills_and_relandings() {
    let env = Env::new();
    let coffee = |p: f64, extra: &'static str| [balance("BR", 2023, p), balance(extra, 2023, p / 2.0), balance("CO", 2022, 7.0)].concat();
    let rel = |p: f64, extra: &'static str| csv(&coffee(p, extra));
    // Wheat is in January and March only: the coffee months after never touch it.
    env.land("2024-01", &with_wheat(&coffee(100.0, "VN"), &balance("US", 2023, 50.0)));
    assert_eq!(env.run(&["run"]).code, 0);
    env.land("2024-03", &with_wheat(&coffee(130.0, "VN"), &balance("US", 2023, 55.0)));
    assert_eq!(env.run(&["run"]).code, 0);
    // A backfilled month between the two: its successor's revisions change.
    env.land("2024-02", &rel(120.0, "ET"));
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("staging.psd_months\tmerge"), "{}", run.stdout);
    assert!(run.stdout.contains("serving.revisions\tmerge"), "{}", run.stdout);
    assert_eq!(
        env.rows("SELECT release, previous_release, value, previous_value FROM serving.revisions WHERE country_code = 'BR' AND attribute_id = '028' ORDER BY release"),
        ["2024-02-01|2024-01-01|120.0|100.0", "2024-03-01|2024-02-01|130.0|120.0"]
    );
    // March landed again the same month, without CO: the later file replaces the earlier.
    env.land("2024-03", &csv(&[balance("BR", 2023, 140.0), balance("VN", 2023, 65.0)].concat()));
    assert_eq!(env.run(&["run"]).code, 0);
    assert_eq!(env.rows("SELECT count(*) FROM serving.commodity_balance WHERE country_code = 'CO'"), ["0"]);
    assert_eq!(env.rows("SELECT value FROM serving.attribute_values WHERE country_code = 'BR' AND attribute_id = '028'"), ["140.0"]);
    // Two newer months in one run.
    env.land("2024-04", &rel(150.0, "VN"));
    env.land("2024-05", &rel(160.0, "ET"));
    assert_eq!(env.run(&["run"]).code, 0);
    assert_eq!(
        env.rows("SELECT release, previous_release, previous_value FROM serving.revisions WHERE country_code = 'BR' AND attribute_id = '028' AND release >= '2024-04-01' ORDER BY release"),
        ["2024-04-01|2024-03-01|140.0", "2024-05-01|2024-04-01|150.0"]
    );
    // May landed again, now April's values (and one new row: psd-extract lands no content
    // twice) and without ET: May has no revisions left, and ET's latest value goes back to
    // February's.
    env.land("2024-05", &csv(&[coffee(150.0, "VN"), balance("KE", 2023, 1.0)].concat()));
    assert_eq!(env.run(&["run"]).code, 0);
    assert_eq!(env.rows("SELECT count(*) FROM serving.revisions WHERE release = '2024-05-01'"), ["0"]);
    assert_eq!(env.rows("SELECT release FROM staging.psd_latest WHERE country_code = 'ET' AND attribute_id = '028'"), ["2024-02-01"]);
    // Wheat keeps March (the re-landing replaced coffee's March only) and its revision.
    assert_eq!(env.rows("SELECT DISTINCT release FROM serving.attribute_values WHERE commodity_code = '0410000'"), ["2024-03-01"]);
    assert_eq!(
        env.rows("SELECT release, previous_release, change FROM serving.revisions WHERE commodity_code = '0410000' AND attribute_id = '028'"),
        ["2024-03-01|2024-01-01|5.0"]
    );
    // Wheat's February backfilled with March's values: February has the revision now, and
    // March, recomputed, has none left (a month replaced although no rows replace it).
    env.land("2024-02", &with_wheat(&[], &balance("US", 2023, 55.0)));
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("staging.psd_months\tmerge"), "{}", run.stdout);
    assert_eq!(
        env.rows("SELECT release, previous_release, change FROM serving.revisions WHERE commodity_code = '0410000' AND attribute_id = '028'"),
        ["2024-02-01|2024-01-01|5.0"]
    );
    assert_eq!(env.rows("SELECT count(*) FROM serving.revisions WHERE commodity_code = '0410000' AND release = '2024-03-01'"), ["0"]);

    let incremental = serving_state(&env);
    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(serving_state(&env), incremental, "a full rebuild gives what the incremental runs built");
}

#[test]
fn session_properties_apply_to_their_model_only() {
    let mut env = Env::new();
    let models = env.own_models();
    std::fs::write(
        models.join("staging_one_thread.sql"),
        "MODEL (name staging.one_thread, kind FULL, session_properties (threads = 7, memory_limit = '1GB'));\nSELECT current_setting('threads') AS threads, current_setting('memory_limit') AS mem, count(*) AS n FROM raw.psd",
    )
    .unwrap();
    std::fs::write(
        models.join("staging_after.sql"),
        "MODEL (name staging.after, kind FULL);\nSELECT current_setting('threads') AS threads, current_setting('memory_limit') AS mem FROM staging.one_thread",
    )
    .unwrap();
    env.land("2024-01", &csv(&balance("BR", 2023, 1.0)));
    let run = env.run(&["--memory-limit", "300MB", "run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.rows("SELECT threads FROM staging.one_thread"), ["7"]);
    let after = env.rows("SELECT threads FROM staging.after");
    assert_ne!(after, ["7"], "reset after the model that set it");
    // The model's memory limit is its own; the run's --memory-limit comes back after it
    // (DuckDB's default, 80 % of RAM, would not).
    assert_eq!(env.rows("SELECT mem FROM staging.one_thread"), ["953.6 MiB"]);
    // 300 MB is 286.1 MiB; DuckDB shows it to 0.1 MiB, so the value put back can be 0.1 lower.
    let after = env.rows("SELECT mem FROM staging.after");
    assert!(after == ["286.1 MiB"] || after == ["286.0 MiB"], "the run's limit, put back: {after:?}");
}

#[test]
fn model_sql_is_sandboxed() {
    let (a, _) = two_releases();
    let mut env = Env::new();
    env.land("2024-01", &a);
    let models = env.own_models();
    assert_eq!(env.run(&["run"]).code, 0);
    let before = env.snapshot();
    let secret = env.root.join("secret.duckdb");
    std::fs::write(env.root.join("secret.txt"), "s3cret").unwrap();
    let landing = env.data.join("landing");
    let evil = models.join("staging_evil.sql");

    // A model is one query: a second statement is refused before anything runs.
    for second in [
        "COMMIT".to_owned(),
        format!("COPY (SELECT 1) TO '{}/psd/2024/01/evil.csv.gzip'", landing.display()),
        format!("ATTACH '{}' AS s", secret.display()),
        "SET enable_external_access = true".to_owned(),
    ] {
        std::fs::write(&evil, format!("MODEL (name staging.evil, kind FULL);\nSELECT 1 AS x;\n{second}")).unwrap();
        let run = env.run(&["run"]);
        assert_eq!(run.code, 2, "{second}: {run:?}");
        assert!(run.error_line().contains("staging_evil.sql:3: a model or audit is one SQL query"), "{}", run.error_line());
    }
    // Nor may its settings open the sandbox.
    std::fs::write(&evil, "MODEL (name staging.evil, kind FULL, session_properties (enable_external_access = true));\nSELECT 1 AS x").unwrap();
    let run = env.run(&["run"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.error_line().contains("enable_external_access is not a tuning setting a model may change"), "{}", run.error_line());

    // One query that reads outside the landing dir fails the run, named, rolled back.
    for read in [
        format!("SELECT * FROM read_text('{}')", env.root.join("secret.txt").display()),
        format!("SELECT * FROM read_csv('{}/../secret.txt')", landing.display()),
        "SELECT count(*) AS n FROM read_blob('/etc/hostname')".to_owned(),
    ] {
        std::fs::write(&evil, format!("MODEL (name staging.evil, kind FULL);\n{read}")).unwrap();
        let run = env.run(&["run"]);
        assert_eq!(run.code, 1, "{read}: {run:?}");
        let line = run.error_line();
        assert!(line.contains("building staging.evil") && line.contains("file system operations are disabled"), "{line}");
    }
    std::fs::remove_file(&evil).unwrap();
    assert_eq!(env.snapshot(), before, "nothing changed");
    assert!(!landing.join("psd/2024/01/evil.csv.gzip").exists() && !secret.exists());
    assert_eq!(env.run(&["run"]).code, 3, "the landing dir is still readable: nothing new");
}

#[test]
fn a_quarantined_file_is_left_out_of_every_run_until_taken_back() {
    let (a, b) = two_releases();
    let env = Env::new();
    let a_path = env.land("2024-01", &a);
    assert_eq!(env.run(&["run"]).code, 0);
    // USDA ships duplicate keys: a blocking audit fails and names the file to set aside.
    let text = String::from_utf8(a.clone()).unwrap();
    let last = text.trim_end().lines().last().unwrap().to_owned();
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let bad = format!("{}{eol}{last}{eol}", text.trim_end());
    let bad_path = env.land("2024-02", bad.as_bytes());
    let run = env.run(&["run"]);
    assert_eq!(run.code, 5, "{run:?}");
    let line = run.error_line();
    assert!(line.contains(&format!("its rows come from {bad_path} (set it aside: lake-transform quarantine {bad_path}")), "{line}");
    // A newer, good release queues behind it.
    let b_path = env.land("2024-03", &b);
    assert_eq!(env.run(&["run"]).code, 5);

    // Set aside, with a reason: the next run proceeds with the rest.
    let no_reason = env.run(&["quarantine", &bad_path]);
    assert_eq!(no_reason.code, 2, "{no_reason:?}");
    assert_eq!(env.run(&["quarantine", "../outside.csv.gzip", "--reason", "x"]).code, 2);
    let q = env.run(&["quarantine", &bad_path, "--reason", "USDA shipped duplicate keys"]);
    assert_eq!(q.code, 0, "{q:?}");
    let plan = env.run(&["plan"]);
    assert!(plan.stdout.contains(&format!("quarantined\t{bad_path}\tUSDA shipped duplicate keys by ")), "{}", plan.stdout);
    assert!(plan.stdout.contains(&format!("raw.psd\tappend {b_path}\t1 new landing file (1 quarantined)")), "{}", plan.stdout);
    assert_eq!(env.run(&["run"]).code, 0);
    assert_eq!(env.rows("SELECT DISTINCT file FROM raw.psd ORDER BY 1"), [a_path.as_str(), b_path.as_str()]);
    assert!(env.data.join("landing").join(&bad_path).exists(), "landing stays immutable");
    let listed = env.run(&["quarantine"]);
    assert!(listed.stdout.starts_with(&format!("{bad_path}\t")) && listed.stdout.contains("USDA shipped duplicate keys"), "{}", listed.stdout);

    // A file loaded before and set aside after: the next run rebuilds without it, and
    // equals a rebuild from the files left.
    assert_eq!(env.run(&["quarantine", &b_path, "--reason", "revised by mistake"]).code, 0);
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains(&format!("quarantined since loaded: {b_path}")), "{}", run.stdout);
    assert_eq!(env.rows("SELECT DISTINCT file FROM raw.psd ORDER BY 1"), [a_path.as_str()]);
    let incremental = serving_state(&env);
    assert_eq!(env.run(&["run", "--rebuild"]).code, 0);
    assert_eq!(serving_state(&env), incremental, "the same as a rebuild");

    // Taken back: the next run loads it again.
    let undo = env.run(&["quarantine", "--undo", &b_path]);
    assert_eq!(undo.code, 0, "{undo:?}");
    assert_eq!(env.run(&["run"]).code, 0);
    assert_eq!(env.rows("SELECT DISTINCT file FROM raw.psd ORDER BY 1"), [a_path.as_str(), b_path.as_str()]);
    let recorded = env.state_rows("SELECT path, reason, released_at IS NOT NULL FROM quarantine ORDER BY rowid");
    assert_eq!(recorded.len(), 2);
    assert!(recorded[0].contains(&bad_path) && recorded[0].ends_with("Integer(0)"), "{recorded:?}");
    assert!(recorded[1].contains(&b_path) && recorded[1].ends_with("Integer(1)"), "{recorded:?}");
}

#[test]
fn the_lakehouse_keeps_its_contract() {
    // What serve-export may rely on (materia_common::lakehouse): serving tables, and a
    // change marker that moves exactly when a run changed something.
    let (a, b) = two_releases();
    let env = Env::new();
    env.land("2024-01", &a);
    assert_eq!(env.run(&["run"]).code, 0);
    let marker = || env.rows(&materia_common::lakehouse::change_marker_sql("lakehouse"));
    let first = marker();
    assert!(first.iter().any(|r| r.starts_with("serving.commodity_balance|")), "{first:?}");
    let serving =
        env.rows(&format!("SELECT table_name FROM duckdb_tables() WHERE schema_name = '{}' ORDER BY 1", materia_common::lakehouse::SERVING_SCHEMA));
    assert!(serving.contains(&"commodity_balance".to_owned()), "{serving:?}");

    assert_eq!(env.run(&["run"]).code, 3, "nothing new");
    assert_eq!(marker(), first, "a run that changed nothing leaves the marker");

    env.land("2024-02", &b);
    assert_eq!(env.run(&["run"]).code, 0);
    assert_ne!(marker(), first, "a run that changed tables moves the marker");
}

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
    assert!(!env.data.join("lakehouse.duckdb").exists() || env.rows("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'raw'").is_empty());

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
    assert!(env.rows("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'raw'").is_empty(), "nothing half-written");

    // From the environment, as the unit's configuration sets it: a workable limit builds.
    let run =
        Run::from(env.cmd().env("MATERIA_MEMORY_LIMIT", "1GB").env("MATERIA_SPILL_DIR", env.root.join("elsewhere")).arg("run").output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(env.root.join("elsewhere").is_dir(), "the spill dir from MATERIA_SPILL_DIR is made");
    assert_eq!(env.rows("SELECT count(*) FROM raw.psd"), [(4 * 77_957).to_string()]);
}

#[test]
fn duckdb_extensions_load_offline_and_a_missing_one_names_the_fix() {
    let env = Env::new();
    let run = env.run(&["extensions"]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.iter().map(|l| l.split('\t').next().unwrap()).collect::<Vec<_>>(), ["ducklake", "postgres_scanner", "httpfs"]);
    // From the build's own copy (scripts/duckdb-lib.sh laid it out): nothing downloaded.
    assert!(lines.iter().all(|l| l.contains("/.duckdb/") && l.ends_with(".duckdb_extension")), "{}", run.stdout);

    let empty = env.root.join("no-extensions");
    std::fs::create_dir_all(&empty).unwrap();
    let run = Run::from(env.cmd().arg("extensions").env(materia_common::layout::ENV_DUCKDB_EXTENSIONS, &empty).output().unwrap());
    assert_eq!(run.code, 1, "{run:?}");
    let version = duckdb::Connection::open_in_memory()
        .unwrap()
        .query_row("SELECT library_version FROM pragma_version()", [], |r| r.get::<_, String>(0))
        .unwrap();
    let want = format!(
        "DuckDB extension ducklake is not in {}/{version}/linux_amd64 (no tool downloads extensions): run scripts/setup-dev.sh",
        empty.display()
    );
    assert!(run.error_line().contains(&want), "{}", run.error_line());
}

#[test]
fn a_model_whose_file_is_gone_is_dropped_with_its_state() {
    // A release that removes a model (as one removed staging.psd_changes) must not leave its
    // table behind: space, and a serving table the export would still publish.
    let mut env = Env::new();
    let models = env.own_models();
    std::fs::write(models.join("staging_extra.sql"), "MODEL (name staging.extra, kind FULL);\nSELECT count(*) AS n FROM raw.psd").unwrap();
    env.land("2024-01", &csv(&balance("BR", 2023, 1.0)));
    assert_eq!(env.run(&["run"]).code, 0);
    let stored = |env: &Env| {
        env.rows("SELECT schema_name || '.' || table_name FROM duckdb_tables() WHERE table_name IN ('world_balance', 'extra') ORDER BY 1")
    };
    assert_eq!(stored(&env), ["serving.world_balance", "staging.extra"]);

    std::fs::remove_file(models.join("serving_world_balance.sql")).unwrap();
    std::fs::remove_file(models.join("staging_extra.sql")).unwrap();
    let plan = env.run(&["plan"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(plan.stdout.starts_with("serving.world_balance\tdrop\tits model file is gone\nstaging.extra\tdrop\t"), "{}", plan.stdout);
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("serving.world_balance\tdrop\t\tits model file is gone"), "{}", run.stdout);
    assert!(stored(&env).is_empty());
    assert_eq!(env.rows("SELECT count(*) FROM _materia.models WHERE name IN ('serving.world_balance', 'staging.extra')"), ["0"]);
    assert_eq!(env.run(&["run"]).code, 3, "nothing left to do");

    // A model that still reads a dropped one fails the run, named, and the drop is rolled back.
    std::fs::write(models.join("staging_extra.sql"), "MODEL (name staging.extra, kind FULL);\nSELECT count(*) AS n FROM raw.psd").unwrap();
    std::fs::write(models.join("serving_reader.sql"), "MODEL (name serving.reader, kind FULL);\nSELECT n FROM staging.extra").unwrap();
    assert_eq!(env.run(&["run"]).code, 0);
    std::fs::remove_file(models.join("staging_extra.sql")).unwrap();
    std::fs::write(models.join("serving_reader.sql"), "MODEL (name serving.reader, kind FULL);\nSELECT n + 0 AS n FROM staging.extra").unwrap();
    let run = env.run(&["run"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.error_line().contains("extra"), "{}", run.error_line());
    assert_eq!(stored(&env), ["staging.extra"], "rolled back");
}

#[test]
fn a_model_turned_from_a_table_into_a_view_and_back_rebuilds_in_place() {
    // A lakehouse built by a release where staging.psd_values was a table, then a release
    // where it is a view (and back): DuckDB does not replace one type by the other.
    let mut env = Env::new();
    let models = env.own_models();
    let view = std::fs::read_to_string(models.join("staging_psd_values.sql")).unwrap();
    let table = view.replace("kind VIEW", "kind FULL");
    assert_ne!(table, view);
    env.land("2024-01", &csv(&balance("BR", 2023, 1.0)));
    std::fs::write(models.join("staging_psd_values.sql"), &table).unwrap();
    assert_eq!(env.run(&["run"]).code, 0);
    let kind = |env: &Env| env.rows("SELECT table_type FROM information_schema.tables WHERE table_schema = 'staging' AND table_name = 'psd_values'");
    assert_eq!(kind(&env), ["BASE TABLE"]);
    let before = serving_state(&env);

    std::fs::write(models.join("staging_psd_values.sql"), &view).unwrap();
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(kind(&env), ["VIEW"]);
    assert_eq!(serving_state(&env), before, "the same data either way");

    std::fs::write(models.join("staging_psd_values.sql"), &table).unwrap();
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(kind(&env), ["BASE TABLE"]);
    assert_eq!(serving_state(&env), before);
}

/// A DuckLake for the tests: a real PostgreSQL as its catalog (database `lake`), moto as
/// the S3 its data goes to (`s3://bkt/lake/`).
struct Lake {
    pg: Postgres,
    moto: Moto,
}

impl Lake {
    /// None (the test skips, saying so) where no PostgreSQL server is installed.
    fn start() -> Option<Lake> {
        let pg = Postgres::start()?;
        pg.create_db("lake");
        Some(Lake { pg, moto: Moto::start() })
    }

    /// lake-transform on this lake, with `env`'s data dir (landing, state DB, locks).
    fn run(&self, env: &Env, args: &[&str]) -> Run {
        let mut c = env.cmd();
        c.arg("--lakehouse").arg(format!("ducklake:postgres:{}", self.pg.conninfo("lake"))).arg("--lake-data-path").arg("s3://bkt/lake/");
        c.env(ENV_LAKE_S3_ENDPOINT, self.moto.endpoint()).env(ENV_LAKE_S3_KEY_ID, "test-key-id").env(ENV_LAKE_S3_SECRET, "test-secret");
        Run::from(c.args(args).output().unwrap())
    }

    /// A query's rows, as another process reading the lake would see them.
    fn rows(&self, sql: &str) -> Vec<String> {
        let cfg = materia_common::duckdb_config::config(option_env!("MATERIA_DEV_DUCKDB_EXTENSIONS")).unwrap();
        let c = duckdb::Connection::open_in_memory_with_flags(cfg).unwrap();
        c.execute_batch(&format!(
            "CREATE SECRET (TYPE s3, KEY_ID 'test-key-id', SECRET 'test-secret', REGION 'auto', ENDPOINT '127.0.0.1:{}', URL_STYLE 'path', USE_SSL false);
             ATTACH 'ducklake:postgres:{}' AS lakehouse (READ_ONLY); USE lakehouse;",
            self.moto.port,
            self.pg.conninfo("lake")
        ))
        .unwrap();
        let mut st = c.prepare(&format!("SELECT concat_ws('|', *COLUMNS(*)) FROM ({sql})")).unwrap();
        st.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap).collect()
    }

    /// The catalog's snapshots (one per committed transaction).
    fn snapshots(&self) -> i64 {
        self.pg.query("lake", "SELECT count(*) FROM ducklake_snapshot").parse().unwrap()
    }
}

#[test]
fn the_models_run_on_ducklake_as_on_the_local_file_one_snapshot_a_run() {
    let Some(lake) = Lake::start() else { return };
    let (local, on_lake) = (Env::new(), Env::new());
    let coffee = |p: f64, extra: &'static str| [balance("BR", 2023, p), balance(extra, 2023, p / 2.0), balance("CO", 2022, 7.0)].concat();
    let releases = [
        ("2024-01", with_wheat(&coffee(100.0, "VN"), &balance("US", 2023, 50.0))),
        ("2024-03", with_wheat(&coffee(130.0, "VN"), &balance("US", 2023, 55.0))),
        // A backfilled month between the two.
        ("2024-02", csv(&coffee(120.0, "ET"))),
    ];
    for (i, (rel, data)) in releases.iter().enumerate() {
        local.land(rel, data);
        on_lake.land(rel, data);
        if i == 0 {
            let plan = lake.run(&on_lake, &["plan"]);
            assert!(plan.code == 0 && plan.stdout.contains("raw.psd\tbuild\tnew model: loading 1 file"), "a plan on a new lake: {plan:?}");
        }
        assert_eq!(local.run(&["run"]).code, 0);
        let before = if i == 0 { None } else { Some(lake.snapshots()) };
        let run = lake.run(&on_lake, &["run"]);
        assert_eq!(run.code, 0, "{run:?}");
        if let Some(before) = before {
            assert_eq!(lake.snapshots(), before + 1, "one run, one snapshot");
        }
        assert_eq!(state_of(|sql| lake.rows(sql)), serving_state(&local), "after {rel}");
    }
    assert!(lake.moto.objects().iter().any(|(k, _, _)| k.starts_with("lake/") && k.ends_with(".parquet")), "data files on S3");
    let before = lake.snapshots();
    assert_eq!(lake.run(&on_lake, &["run"]).code, 3, "nothing to do");
    assert_eq!(lake.snapshots(), before);

    // A failing blocking audit leaves the catalog at its last good snapshot.
    let good = state_of(|sql| lake.rows(sql));
    let text = String::from_utf8(releases[1].1.clone()).unwrap();
    let last = text.trim_end().lines().last().unwrap().to_owned();
    let bad = on_lake.land("2024-04", format!("{}\r\n{last}\r\n", text.trim_end()).as_bytes());
    let plan = lake.run(&on_lake, &["plan"]);
    assert!(plan.stdout.contains(&format!("raw.psd\tappend {bad}")), "{plan:?}");
    let run = lake.run(&on_lake, &["run"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert_eq!(lake.snapshots(), before, "rolled back: no snapshot");
    assert_eq!(state_of(|sql| lake.rows(sql)), good);

    // Set aside, and a --rebuild on the lake equals the incremental runs.
    assert_eq!(lake.run(&on_lake, &["quarantine", &bad, "--reason", "test"]).code, 0);
    assert_eq!(lake.run(&on_lake, &["run"]).code, 3);
    let run = lake.run(&on_lake, &["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(state_of(|sql| lake.rows(sql)), good, "a rebuild on DuckLake gives what the incremental runs built");
    assert!(!run.stderr.contains("test-secret"), "the S3 secret is never logged");

    // Maintenance keeps the lake small and every vintage in it.
    let vintages = lake.rows("SELECT DISTINCT file FROM raw.psd ORDER BY 1");
    let (objects, snapshots) = (lake.moto.objects().len(), lake.snapshots());
    let run = lake.run(&on_lake, &["maintain", "--keep-days", "0"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("expired_snapshots\t") && run.stdout.contains("removed_files\t"), "{}", run.stdout);
    assert_eq!(lake.snapshots(), 1, "from {snapshots}, only the current snapshot kept");
    assert!(lake.moto.objects().len() < objects, "files of expired snapshots removed: {objects} before");
    assert_eq!(lake.rows("SELECT DISTINCT file FROM raw.psd ORDER BY 1"), vintages, "every landed vintage kept");
    assert_eq!(state_of(|sql| lake.rows(sql)), good);
    // And the lake goes on: a new release, incrementally.
    let later = with_wheat(&coffee(140.0, "VN"), &balance("US", 2023, 60.0));
    on_lake.land("2024-05", &later);
    local.land("2024-05", &later);
    let run = lake.run(&on_lake, &["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("raw.psd\tappend"), "{}", run.stdout);
    assert_eq!(local.run(&["run"]).code, 0);
    assert_eq!(state_of(|sql| lake.rows(sql)), serving_state(&local));
    // On the local file, maintain compacts it (tested on its own below).
    let run = local.run(&["maintain"]);
    assert_eq!(run.code, 0, "{run:?}");
    // Each recorded as a step of its own: the transform's last run stays the transform's.
    assert_eq!(local.state_rows("SELECT tool, status FROM runs ORDER BY run_id DESC LIMIT 1"), ["Text(\"lake-maintain\")|Text(\"success\")"]);
    assert_eq!(on_lake.state_rows("SELECT status FROM runs WHERE tool = 'lake-maintain'"), ["Text(\"success\")"]);
}

#[test]
fn a_second_writer_on_another_machine_is_refused_or_waits_for_the_lakes_lock() {
    let Some(lake) = Lake::start() else { return };
    let machine_b = Env::new(); // its own data dir: the local lock file does not meet ours
    machine_b.land("2024-01", &csv(&balance("BR", 2023, 1.0)));
    // Machine A's writer lock, taken as lake-transform takes it.
    let url = format!("ducklake:postgres:{}", lake.pg.conninfo("lake"));
    let a = materia_common::lakehouse_target::Lakehouse::new(
        Some(&url),
        Some("/unused/"),
        PathBuf::from("/unused"),
        option_env!("MATERIA_DEV_DUCKDB_EXTENSIONS"),
    )
    .unwrap();
    let held = a.writer_lock(Duration::ZERO).unwrap().expect("a DuckLake has a writer lock");
    let run = lake.run(&machine_b, &["run"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.error_line().contains("the DuckLake's writer lock (PostgreSQL advisory lock"), "{}", run.error_line());
    // Waiting: the other writer finishes a moment later.
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(held);
    });
    let run = lake.run(&machine_b, &["--wait-lock", "30", "run"]);
    assert_eq!(run.code, 0, "{run:?}");
    release.join().unwrap();
    assert_eq!(lake.rows("SELECT count(*) FROM raw.psd"), ["8"]);
}

#[test]
fn kill_9_mid_run_on_ducklake_leaves_the_last_snapshot_and_frees_the_lock() {
    let Some(lake) = Lake::start() else { return };
    let (a, _) = two_releases();
    let env = Env::new();
    env.land("2024-01", &a);
    assert_eq!(lake.run(&env, &["run"]).code, 0);
    let (before, snapshots) = (state_of(|sql| lake.rows(sql)), lake.snapshots());
    let objects = lake.moto.objects().len();
    let before_keys: std::collections::BTreeSet<String> = lake.moto.objects().into_iter().map(|(k, _, _)| k).collect();

    // A big second release; the run is killed once it has written data files (uncommitted).
    let mut rows: Vec<Row> = Vec::new();
    for i in 0..1000 {
        let c: &'static str = Box::leak(format!("X{i:03}").into_boxed_str());
        for y in 1960..2024 {
            rows.extend(balance(c, y, 1.0));
        }
    }
    env.land("2024-02", &csv(&rows));
    let mut c = env.cmd();
    c.arg("--lakehouse").arg(format!("ducklake:postgres:{}", lake.pg.conninfo("lake"))).arg("--lake-data-path").arg("s3://bkt/lake/");
    c.env(ENV_LAKE_S3_ENDPOINT, lake.moto.endpoint()).env(ENV_LAKE_S3_KEY_ID, "test-key-id").env(ENV_LAKE_S3_SECRET, "test-secret");
    let mut child = c.arg("run").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    materia_test_support::wait_until("the run to write data files", Duration::from_secs(60), || lake.moto.objects().len() > objects);
    assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(lake.snapshots(), snapshots, "no snapshot from a killed run");
    assert_eq!(state_of(|sql| lake.rows(sql)), before, "the catalog at its last good snapshot");
    let keys = |lake: &Lake| -> std::collections::BTreeSet<String> { lake.moto.objects().into_iter().map(|(k, _, _)| k).collect() };
    let orphans: Vec<String> = keys(&lake).into_iter().filter(|k| !before_keys.contains(k)).collect();
    assert!(!orphans.is_empty());

    // PostgreSQL ended the dead run's session, and its lock: the next run proceeds.
    let run = lake.run(&env, &["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(lake.rows("SELECT count(*) FROM serving.commodity_balance"), [(1000 * 64).to_string()]);
    // maintain removes what the killed run left.
    let run = lake.run(&env, &["maintain", "--keep-days", "0"]);
    assert_eq!(run.code, 0, "{run:?}");
    let left = keys(&lake);
    assert!(orphans.iter().all(|k| !left.contains(k)), "the killed run's files are removed: {orphans:?} / {}", run.stdout);
    assert_eq!(lake.rows("SELECT count(*) FROM serving.commodity_balance"), [(1000 * 64).to_string()]);
}

/// The real release with every 50th value revised by `pct` percent (as USDA's monthly
/// releases revise a small share).
fn revised(real: &[u8], pct: f64) -> Vec<u8> {
    let text = String::from_utf8(real.to_vec()).unwrap();
    let mut out = String::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        match line.trim_end().rsplit_once(',') {
            Some((head, value)) if n > 0 && n % 50 == 0 => {
                let v: f64 = value.parse().unwrap();
                out.push_str(&format!("{head},{:.4}\r\n", v * (1.0 + pct / 100.0)));
            }
            _ => out.push_str(line),
        }
    }
    out.into_bytes()
}

#[test]
fn maintain_compacts_the_local_file_checked_and_the_runs_go_on() {
    let Some(real) = real_csv() else { return };
    let env = Env::new();
    let lakehouse = env.data.join("lakehouse.duckdb");
    for (i, month) in ["2023-01", "2023-02", "2023-03"].into_iter().enumerate() {
        env.land(month, &revised(&real, i as f64));
        assert_eq!(env.run(&["run"]).code, 0);
    }
    let before = env.snapshot();
    let size = || std::fs::metadata(&lakehouse).unwrap().len();
    let grown = size();

    // A copy that does not verify replaces nothing, and leaves no temp file.
    let mut cmd = env.cmd();
    cmd.env(materia_common::layout::ENV_LAKE_TRANSFORM_FAULT, "alter-compact").arg("maintain");
    let run = Run::from(cmd.output().unwrap());
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.stderr.contains("did not verify") && run.stderr.contains("rows raw.psd"), "{}", run.stderr);
    let left = |env: &Env| -> Vec<String> {
        std::fs::read_dir(&env.data)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("compact"))
            .collect()
    };
    assert_eq!(left(&env), Vec::<String>::new());
    assert_eq!(env.snapshot(), before, "the lakehouse was left as it was");

    // What a killed maintain left is removed by the next, which compacts.
    std::fs::write(env.data.join(".lakehouse.compact-tmp-999999"), b"half a copy").unwrap();
    let run = env.run(&["maintain"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("left by an interrupted run or maintain"), "{}", run.stderr);
    assert_eq!(left(&env), Vec::<String>::new());
    let line = run.stdout.lines().find(|l| l.starts_with("compacted\t")).unwrap_or_else(|| panic!("{}", run.stdout));
    let sizes: Vec<u64> = line.split('\t').skip(1).map(|n| n.parse().unwrap()).collect();
    assert_eq!(sizes[0], grown, "{line}");
    assert_eq!(sizes[1], size(), "{line}");
    assert!(sizes[1] < sizes[0], "the copy holds only the contents: {line}");
    assert_eq!(env.snapshot(), before, "every table, row for row, and the engine's state");
    assert_eq!(
        env.rows("SELECT count(*) FROM staging.psd_values"),
        env.rows("SELECT count(*) FROM raw.psd WHERE release = DATE '2023-03-01'")
            .iter()
            .map(|n| (n.parse::<i64>().unwrap() * 3).to_string())
            .collect::<Vec<_>>(),
        "the view reads the copy's tables"
    );
    assert_eq!(
        env.rows("SELECT CAST(tags AS VARCHAR) FROM duckdb_databases() WHERE database_name = current_database()"),
        [format!("{{storage_version={}+}}", materia_common::duckdb_config::STORAGE_VERSION)],
        "the copy is written in the lakehouse's storage version"
    );

    // The engine carries on from the copy: nothing to do, then a new release appended,
    // equal to a rebuild.
    assert_eq!(env.run(&["run"]).code, 3);
    env.land("2023-04", &revised(&real, 3.0));
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("raw.psd\tappend"), "{}", run.stdout);
    // The release went into row groups of its own, of the run's size (the compacted
    // file's are DuckDB's default, 122,880 rows): the insert wrote and compressed them,
    // not the commit's checkpoint (duckdb_config::ROW_GROUP_SIZE).
    let small = env.rows(&format!(
        "SELECT count(*) FROM (SELECT row_group_id, sum(count) AS n FROM pragma_storage_info('raw.psd') WHERE column_path = '[0]' GROUP BY 1) WHERE n <= {}",
        materia_common::duckdb_config::ROW_GROUP_SIZE
    ));
    assert!(small[0].parse::<i64>().unwrap() >= 5, "{small:?}: 77,957 rows in row groups of 16,384");
    // (serving.world_balance left out: its sums of the real doubles differ in the last
    // bits between any two builds, DuckDB's parallel sums being unordered.)
    let exact = |env: &Env| -> std::collections::HashSet<String> {
        let mut table = String::new();
        let mut out = std::collections::HashSet::new();
        for line in serving_state(env) {
            if let Some(t) = line.strip_prefix("-- ") {
                table = t.to_owned();
            }
            if table != "serving.world_balance" {
                out.insert(line);
            }
        }
        out
    };
    let incremental = exact(&env);
    assert_eq!(env.run(&["run", "--rebuild"]).code, 0);
    let rebuilt = exact(&env);
    let only = |a: &std::collections::HashSet<String>, b: &std::collections::HashSet<String>| a.difference(b).take(5).cloned().collect::<Vec<_>>();
    assert_eq!((only(&incremental, &rebuilt), only(&rebuilt, &incremental)), (vec![], vec![]), "incremental (left) and rebuild (right) differ");
    assert_eq!(
        env.state_rows("SELECT tool, status, exit_code FROM runs WHERE tool = 'lake-maintain' ORDER BY run_id"),
        ["Text(\"lake-maintain\")|Text(\"failed\")|Integer(6)", "Text(\"lake-maintain\")|Text(\"success\")|Integer(0)"]
    );

    // A lakehouse the operator moved to another volume and linked back stays there: a
    // compaction or a full build writes beside the real file and renames over it.
    let volume = env.root.join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::rename(&lakehouse, volume.join("lakehouse.duckdb")).unwrap();
    std::os::unix::fs::symlink(volume.join("lakehouse.duckdb"), &lakehouse).unwrap();
    let before = env.snapshot();
    let linked = || std::fs::symlink_metadata(&lakehouse).unwrap().file_type().is_symlink();
    let run = env.run(&["maintain"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(linked(), "the link is kept");
    assert_eq!(env.snapshot(), before);
    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(linked(), "the link is kept");
    assert_eq!(exact(&env), rebuilt);
    for dir in [&env.data, &volume] {
        let names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(!names.iter().any(|n| n.contains("-tmp-")), "{}: {names:?}", dir.display());
    }
}
