//! lake-transform on real files: landing files written as psd-extract lands them, a
//! real lakehouse.duckdb, the real state DB.
//!
//! The helpers every test shares are here; the tests are in the modules, by topic.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use materia_common::layout::{ENV_LAKE_S3_ENDPOINT, ENV_LAKE_S3_KEY_ID, ENV_LAKE_S3_SECRET};
use materia_test_support::Run;
use materia_test_support::moto::Moto;
use materia_test_support::postgres::Postgres;

mod ducklake;
mod failures;
mod integrity;
mod memory;
mod models;
mod plans;
mod runs;

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
