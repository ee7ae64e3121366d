//! Model unit tests, as in SQLMesh: input rows for upstream tables, the rows a model
//! must return. Files `models/tests/*.toml`, one table per test:
//!
//! ```toml
//! [test_stocks_to_use]
//! model = "serving.commodity_balance"
//! inputs."serving.attribute_values" = [
//!   { commodity_code = "0711100", country_code = "BR", market_year = 2023, attribute_id = "176", value = 10.0, release = 2024-01-01 },
//! ]
//! outputs = [ { country_code = "BR", ending_stocks = 10.0 } ]
//! ```
//!
//! `incremental = true` (with `run_id = N`) tests the batch a merge would compute
//! (`@is_incremental` TRUE, `@run_id` N) instead of a build; a model that reads its own
//! rows (`@this_model`) takes them from `inputs."<the model>"` then (an empty table of its
//! declared columns in a build). An ingest model takes
//! `landing_csv = """..."""` (the CSV of one landed file,
//! landed as `psd/2024/01/test.csv.gzip`, first in landing order) instead of `inputs`. Each test runs in its own
//! in-memory DuckDB. Outputs are compared as a multiset of rows on the columns the
//! expected rows name; floats within 1e-9 (relative); TOML dates are DATEs.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use duckdb::Connection;
use materia_common::duckdb_config::sql_string as quote;
use materia_common::exit::Usage;

use crate::model::Kind;
use crate::project::Project;

/// `lake-transform test [FILTER] [--ducklake URL]`: run the model unit tests whose name
/// contains FILTER, one line each, and fail when any fails.
pub(crate) fn command(models: &Path, filter: Option<&str>, ducklake: Option<&str>) -> anyhow::Result<materia_common::Outcome> {
    // Parsed here, not by clap: its error would echo the value, password and all.
    let ducklake = ducklake.map(|d| d.parse::<TestLake>().map_err(|e| materia_common::exit::Usage(format!("--ducklake: {e}")))).transpose()?;
    let ducklake = ducklake.as_ref();
    let project = Project::load(models)?;
    let cases = load(models, &project)?;
    let cases: Vec<_> = cases.iter().filter(|c| filter.is_none_or(|f| c.name.contains(f))).collect();
    if cases.is_empty() {
        return Err(materia_common::exit::Usage(format!("no model tests in {}/tests match", models.display())).into());
    }
    let scratch = tempfile::tempdir().context("creating a scratch dir")?;
    let mut failed = 0;
    for case in &cases {
        match run_case(&project, case, scratch.path(), ducklake) {
            Ok(()) => println!("ok\t{}", case.name),
            Err(e) => {
                failed += 1;
                println!("FAILED\t{}\t{}: {}", case.name, case.path.display(), materia_common::exit::one_line(&e));
            }
        }
    }
    println!("{} passed, {failed} failed", cases.len() - failed);
    if failed > 0 {
        anyhow::bail!("{failed} of {} model tests failed", cases.len());
    }
    Ok(materia_common::Outcome::Changed)
}

/// One test case.
#[derive(Debug)]
pub struct Case {
    /// Test name.
    pub name: String,
    /// The file it is in.
    pub path: PathBuf,
    model: String,
    inputs: Vec<(String, Vec<toml::Table>)>,
    landing_csv: Option<String>,
    outputs: Vec<toml::Table>,
    /// `@is_incremental`: test the merge batch instead of a build.
    incremental: bool,
    /// `@run_id`.
    run_id: i64,
}

/// Every test case in `dir/tests/*.toml`, sorted by file and name.
pub fn load(dir: &Path, project: &Project) -> anyhow::Result<Vec<Case>> {
    let tests = dir.join("tests");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&tests) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "toml")).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(anyhow!(e).context(format!("reading {}", tests.display()))),
    };
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let src = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let doc: toml::Table =
            src.parse().map_err(|e: toml::de::Error| Usage(format!("{}: {}", path.display(), e.to_string().lines().next().unwrap_or(""))))?;
        for (name, body) in doc {
            let bad = |msg: &str| Usage(format!("{}: test {name}: {msg}", path.display()));
            let body = body.as_table().ok_or_else(|| bad("expected a table"))?;
            for key in body.keys() {
                if !["model", "inputs", "outputs", "landing_csv", "description", "incremental", "run_id"].contains(&key.as_str()) {
                    return Err(bad(&format!(
                        "unknown key '{key}' (supported: model, inputs, outputs, landing_csv, description, incremental, run_id)"
                    ))
                    .into());
                }
            }
            let model = body.get("model").and_then(|v| v.as_str()).ok_or_else(|| bad("needs model = \"schema.table\""))?.to_ascii_lowercase();
            if project.model(&model).is_none() {
                return Err(bad(&format!("model {model} does not exist")).into());
            }
            let rows = |v: &toml::Value, what: &str| -> anyhow::Result<Vec<toml::Table>> {
                v.as_array()
                    .ok_or_else(|| bad(&format!("{what}: expected an array of rows")))?
                    .iter()
                    .map(|r| r.as_table().cloned().ok_or_else(|| bad(&format!("{what}: each row is a {{ column = value }} table")).into()))
                    .collect()
            };
            let mut inputs = Vec::new();
            if let Some(t) = body.get("inputs") {
                for (table, v) in t.as_table().ok_or_else(|| bad("inputs: expected a table of upstream tables"))? {
                    inputs.push((table.to_ascii_lowercase(), rows(v, table)?));
                }
            }
            let outputs = rows(body.get("outputs").ok_or_else(|| bad("needs outputs = [ ... ]"))?, "outputs")?;
            let landing_csv = body.get("landing_csv").and_then(|v| v.as_str()).map(str::to_owned);
            let incremental = body.get("incremental").and_then(|v| v.as_bool()).unwrap_or(false);
            let run_id = body.get("run_id").and_then(|v| v.as_integer()).unwrap_or(0);
            cases.push(Case { name, path: path.clone(), model, inputs, landing_csv, outputs, incremental, run_id });
        }
    }
    Ok(cases)
}

/// Where `test --ducklake` puts each test's DuckLake catalog.
#[derive(Debug, Clone)]
pub enum TestLake {
    /// In a DuckDB file in the scratch dir.
    DuckDb,
    /// In a PostgreSQL database (a libpq conninfo; the password from PGPASSWORD), each
    /// test in a metadata schema of its own, dropped after it.
    Postgres(String),
}

impl std::str::FromStr for TestLake {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("postgres:") {
            None if s == "duckdb" => Ok(TestLake::DuckDb),
            None => Err(format!("expected duckdb or postgres:CONNINFO, not {s:?}")),
            Some(c) if c.split_whitespace().any(|kv| kv.starts_with("password=")) => {
                Err("a password does not belong on the command line (it would show in ps): set PGPASSWORD".into())
            }
            Some(c) => Ok(TestLake::Postgres(c.to_owned())),
        }
    }
}

/// Run one case; `Err` says why it failed. With `lake`, in a DuckLake catalog of its own
/// (data as Parquet under `scratch`).
pub fn run_case(project: &Project, case: &Case, scratch: &Path, lake: Option<&TestLake>) -> anyhow::Result<()> {
    static CASES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let Some(TestLake::Postgres(conninfo)) = lake else { return run_in(project, case, scratch, lake, None) };
    let schema = format!("materia_test_{}_{}", std::process::id(), CASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let result = run_in(project, case, scratch, lake, Some(&schema));
    // Dropped whatever the test did: by a connection of its own (the test's is sandboxed).
    let drop = || -> anyhow::Result<()> {
        let conn = Connection::open_in_memory_with_flags(materia_common::duckdb_config::config(crate::DEV_EXTENSIONS)?)?;
        materia_common::duckdb_config::load(&conn, "postgres_scanner", crate::DEV_EXTENSIONS)?;
        conn.execute_batch(&format!(
            "ATTACH {} AS catalog (TYPE postgres); CALL postgres_execute('catalog', 'DROP SCHEMA IF EXISTS {schema} CASCADE')",
            quote(conninfo)
        ))?;
        Ok(())
    };
    let dropped = drop().with_context(|| format!("dropping the test's metadata schema {schema}"));
    result.and(dropped)
}

fn run_in(project: &Project, case: &Case, scratch: &Path, lake: Option<&TestLake>, schema: Option<&str>) -> anyhow::Result<()> {
    let m = project.model(&case.model).ok_or_else(|| anyhow!("no model {}", case.model))?;
    let conn = Connection::open_in_memory_with_flags(materia_common::duckdb_config::config(crate::DEV_EXTENSIONS)?)?;
    let scratch = std::path::absolute(scratch)?;
    if let Some(lake) = lake {
        materia_common::duckdb_config::load(&conn, "ducklake", crate::DEV_EXTENSIONS)?;
        let data = quote(&scratch.join(format!("{}.data/", case.name)).display().to_string());
        let attach = match (lake, schema) {
            (TestLake::Postgres(conninfo), Some(schema)) => {
                materia_common::duckdb_config::load(&conn, "postgres_scanner", crate::DEV_EXTENSIONS)?;
                format!("ATTACH {} AS lakehouse (DATA_PATH {data}, METADATA_SCHEMA '{schema}')", quote(&format!("ducklake:postgres:{conninfo}")))
            }
            _ => format!(
                "ATTACH {} AS lakehouse (DATA_PATH {data})",
                quote(&format!("ducklake:{}", scratch.join(format!("{}.ducklake", case.name)).display()))
            ),
        };
        conn.execute_batch(&format!("{attach}; USE lakehouse;")).context("creating the test's DuckLake")?;
    }
    crate::run::sandbox(&conn, &scratch, &[])?;
    for (table, rows) in &case.inputs {
        let (schema, _) = table.split_once('.').ok_or_else(|| anyhow!("input {table}: expected schema.table"))?;
        conn.execute_batch(&format!("CREATE SCHEMA IF NOT EXISTS {schema}; CREATE TABLE {table} AS {}", values_sql(rows)?))
            .with_context(|| format!("creating input {table}"))?;
    }
    let mut sql = m.render(case.run_id, case.incremental);
    if !case.incremental
        && let Some(ddl) = m.empty_this_ddl()
    {
        conn.execute_batch(&ddl).context("creating the empty @this_model")?;
    }
    if let Kind::LandingIngest { .. } = m.kind {
        let csv = case.landing_csv.as_deref().ok_or_else(|| anyhow!("an ingest model's test needs landing_csv"))?;
        let file = scratch.join(format!("{}/psd/2024/01/test.csv.gzip", case.name));
        std::fs::create_dir_all(file.parent().unwrap_or(&scratch))?;
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&file)?, flate2::Compression::fast());
        gz.write_all(csv.as_bytes())?;
        gz.finish()?;
        sql = sql.replace("@landing_files", &format!("[{}]", quote(&file.display().to_string()))).replace("@landing_order", "[1]::BIGINT[]");
    }
    let mut st = conn.prepare(&format!("SELECT to_json(sub)::VARCHAR FROM ({sql}) sub")).context("running the model")?;
    let actual: Vec<serde_json::Map<String, serde_json::Value>> = st
        .query_map([], |r| r.get::<_, String>(0))?
        .map(|s| -> anyhow::Result<_> { Ok(serde_json::from_str(&s?)?) })
        .collect::<anyhow::Result<_>>()?;
    compare(&case.outputs, &actual)
}

fn compare(expected: &[toml::Table], actual: &[serde_json::Map<String, serde_json::Value>]) -> anyhow::Result<()> {
    if expected.len() != actual.len() {
        return Err(anyhow!("expected {} rows, got {}: {}", expected.len(), actual.len(), preview(actual)));
    }
    let mut used = vec![false; actual.len()];
    for want in expected {
        for col in want.keys() {
            if actual.first().is_some_and(|a| !a.contains_key(col)) {
                return Err(anyhow!("the model has no column {col}"));
            }
        }
        let hit = actual.iter().enumerate().find(|(i, got)| !used[*i] && want.iter().all(|(k, v)| same(v, got.get(k))));
        match hit {
            Some((i, _)) => used[i] = true,
            None => return Err(anyhow!("expected row {} not in the output: {}", toml_row(want), preview(actual))),
        }
    }
    Ok(())
}

fn same(want: &toml::Value, got: Option<&serde_json::Value>) -> bool {
    use serde_json::Value as J;
    use toml::Value as T;
    let Some(got) = got else { return false };
    match (want, got) {
        (T::String(s), J::String(g)) => s == g,
        (T::String(s), J::Null) => s == "NULL",
        (T::Integer(i), J::Number(n)) => n.as_f64() == Some(*i as f64),
        (T::Float(f), J::Number(n)) => n.as_f64().is_some_and(|g| (g - f).abs() <= 1e-9 * f.abs().max(1.0)),
        (T::Boolean(b), J::Bool(g)) => b == g,
        // DuckDB writes timestamps with a space where TOML has a T.
        (T::Datetime(d), J::String(g)) => d.to_string().replace('T', " ") == *g,
        _ => false,
    }
}

fn toml_row(t: &toml::Table) -> String {
    toml::Value::Table(t.clone()).to_string().replace('\n', ", ").trim_end_matches(", ").to_owned()
}

fn preview(rows: &[serde_json::Map<String, serde_json::Value>]) -> String {
    let shown: Vec<String> = rows.iter().take(3).map(|r| serde_json::Value::Object(r.clone()).to_string()).collect();
    format!("[{}{}]", shown.join(", "), if rows.len() > 3 { ", ..." } else { "" })
}

/// `SELECT * FROM (VALUES ...) t(cols)` for TOML rows; a key missing from a row is NULL.
fn values_sql(rows: &[toml::Table]) -> anyhow::Result<String> {
    let mut cols: Vec<String> = Vec::new();
    for r in rows {
        for k in r.keys() {
            if !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    if rows.is_empty() || cols.is_empty() {
        return Err(anyhow!("an input needs at least one row with columns"));
    }
    let tuples = rows
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| r.get(c).map_or(Ok("NULL".to_owned()), literal))
                .collect::<anyhow::Result<Vec<_>>>()
                .map(|v| format!("({})", v.join(", ")))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(format!("SELECT * FROM (VALUES {}) t({})", tuples.join(", "), cols.join(", ")))
}

fn literal(v: &toml::Value) -> anyhow::Result<String> {
    Ok(match v {
        toml::Value::String(s) => quote(s),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => format!("CAST({f:?} AS DOUBLE)"),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) if d.time.is_none() => format!("DATE '{d}'"),
        toml::Value::Datetime(d) => format!("TIMESTAMP '{d}'"),
        other => return Err(anyhow!("unsupported input value {other}")),
    })
}
