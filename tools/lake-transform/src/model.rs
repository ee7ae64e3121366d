//! Model and audit files: a SQLMesh-style header, then SQL.
//!
//! ```sql
//! MODEL (
//!   name serving.commodity_balance,
//!   kind FULL,                       -- FULL | VIEW | INCREMENTAL_BY_UNIQUE_KEY (unique_key (a, b))
//!                                    -- | INCREMENTAL_BY_PARTITION (with partitioned_by (a, b))
//!                                    -- | LANDING_INGEST (pattern 'psd/*/*/*.csv.gzip')
//!   grain (commodity_code, country_code, market_year),
//!   columns (commodity_code VARCHAR, …),   -- the result's columns; needed to read @this_model
//!   partitions_from staging.upstream,    -- INCREMENTAL_BY_PARTITION: also replace the
//!                                        -- partitions that upstream replaced in this run
//!   description 'One row per …',
//!   column_descriptions (stocks_to_use = 'ending stocks / use'),
//!   audits (not_null(columns := (commodity_code)), balance_identity(blocking := false)),
//! );
//! SELECT …
//! ```
//!
//! ```sql
//! AUDIT (name balance_identity, blocking false);
//! SELECT * FROM @this_model WHERE …
//! ```
//!
//! The supported subset: the properties above and nothing else. An unknown property,
//! kind or argument is an error naming the file and line, never ignored.
//!
//! Why this long: a model's meaning is one set of checks (kind, grain, columns, sandbox rules) that read best together; the header syntax is in header.rs.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::header::{Item, Val, as_property, header, idents};
use crate::sql::one_statement;

/// A model or audit file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {msg}", path.display())]
pub struct ModelError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

/// How a model is materialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Rebuilt as a table whenever it or its inputs change.
    Full,
    /// A view.
    View,
    /// Rows merged by key: existing rows with a key in the new result are replaced.
    IncrementalByUniqueKey {
        /// The key columns.
        unique_key: Vec<String>,
    },
    /// Partitions replaced: every partition present in the new result replaces the
    /// stored one (the model's `partitioned_by`), and with `partitions_from` every
    /// partition that upstream replaced in the run, even if the result has none of it.
    IncrementalByPartition {
        /// The partition columns.
        partitioned_by: Vec<String>,
    },
    /// Raw landing files: each file matching `pattern` (relative to the landing dir) is
    /// loaded once; the SQL reads `@landing_files`.
    LandingIngest {
        /// e.g. `psd/*/*/*.csv.gzip`.
        pattern: String,
    },
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Full => write!(f, "FULL"),
            Kind::View => write!(f, "VIEW"),
            Kind::IncrementalByUniqueKey { unique_key } => {
                write!(f, "INCREMENTAL_BY_UNIQUE_KEY (unique_key ({}))", unique_key.join(", "))
            }
            Kind::IncrementalByPartition { partitioned_by } => {
                write!(f, "INCREMENTAL_BY_PARTITION, partitioned_by ({})", partitioned_by.join(", "))
            }
            Kind::LandingIngest { pattern } => write!(f, "LANDING_INGEST (pattern '{pattern}')"),
        }
    }
}

/// A use of an audit in a model's `audits (...)`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditCall {
    /// Built-in or custom audit name.
    pub name: String,
    /// `key := value` arguments, as SQL text (tuples as `(a, b)`).
    pub args: Vec<(String, Arg)>,
    /// Line in the model file.
    pub line: usize,
}

/// An argument value.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// A bare word (column name, TRUE/FALSE).
    Ident(String),
    /// A quoted string.
    Str(String),
    /// A number, as written.
    Num(String),
    /// `(a, b, ...)`.
    Tuple(Vec<Arg>),
}

impl Arg {
    /// As a SQL expression.
    pub fn sql(&self) -> String {
        match self {
            Arg::Ident(s) | Arg::Num(s) => s.clone(),
            Arg::Str(s) => materia_common::duckdb_config::sql_string(s),
            Arg::Tuple(items) => format!("({})", items.iter().map(Arg::sql).collect::<Vec<_>>().join(", ")),
        }
    }

    /// Column names: a bare word or a tuple of them.
    pub fn idents(&self) -> Option<Vec<String>> {
        match self {
            Arg::Ident(s) => Some(vec![s.clone()]),
            Arg::Tuple(items) => items
                .iter()
                .map(|a| match a {
                    Arg::Ident(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }
}

/// A parsed model file.
#[derive(Debug, Clone)]
pub struct Model {
    /// `schema.table`.
    pub name: String,
    /// Materialisation.
    pub kind: Kind,
    /// The columns that identify a row.
    pub grain: Vec<String>,
    /// Free text.
    pub description: Option<String>,
    /// Column → text.
    pub column_descriptions: Vec<(String, String)>,
    /// Audits to run after each build.
    pub audits: Vec<AuditCall>,
    /// DuckDB settings for this model's statements (`SET k = v`, reset after).
    pub session_properties: Vec<(String, Arg)>,
    /// Declared result columns (name, DuckDB type), as SQLMesh's `columns`: the first
    /// build of a model that reads its own previous state (`@this_model`) reads an empty
    /// table of these columns, and every build and merge must return exactly them.
    pub columns: Vec<(String, String)>,
    /// `partitions_from upstream` (INCREMENTAL_BY_PARTITION): a merge replaces every
    /// partition the upstream model replaced in this run, even one for which the query
    /// returns no rows (a filter over the upstream partition that became empty).
    pub partitions_from: Option<String>,
    /// The SQL after the header.
    pub sql: String,
    /// The file.
    pub path: PathBuf,
    /// Line where the SQL starts.
    pub sql_line: usize,
}

/// A custom audit file.
#[derive(Debug, Clone)]
pub struct AuditDef {
    /// Its name.
    pub name: String,
    /// Blocking unless `blocking false` (a use may override).
    pub blocking: bool,
    /// SQL returning offending rows; `@this_model` names the audited table.
    pub sql: String,
    /// The file.
    pub path: PathBuf,
}

impl Model {
    /// Schema part of the name.
    pub fn schema(&self) -> &str {
        self.name.split_once('.').map_or("", |(s, _)| s)
    }

    /// Does the SQL read the model's own stored rows?
    pub fn reads_itself(&self) -> bool {
        self.sql.contains(THIS_MODEL)
    }

    /// The SQL with the engine's macros filled in: `@run_id`, `@is_incremental`, and
    /// `@this_model` (the stored table in a merge, [`EMPTY_THIS`] in a build). An
    /// ingest model's `@landing_files` is left to the caller.
    pub fn render(&self, run_id: i64, incremental: bool) -> String {
        self.sql
            .replace("@run_id", &run_id.to_string())
            .replace("@is_incremental", if incremental { "TRUE" } else { "FALSE" })
            .replace(THIS_MODEL, if incremental { &self.name } else { EMPTY_THIS })
    }

    /// DDL for the empty table a build reads as `@this_model` (None if the SQL does
    /// not read itself).
    pub fn empty_this_ddl(&self) -> Option<String> {
        self.reads_itself().then(|| {
            let cols = self.columns.iter().map(|(n, t)| format!("{n} {t}")).collect::<Vec<_>>().join(", ");
            format!("CREATE OR REPLACE TEMP TABLE {EMPTY_THIS} ({cols})")
        })
    }
}

/// The macro naming the model's own table in its SQL (and an audit's table).
pub const THIS_MODEL: &str = "@this_model";

/// What `@this_model` reads in a build: an empty temp table of the declared columns.
pub const EMPTY_THIS: &str = "__materia_this";

const MODEL_PROPS: &str = "name, kind, partitioned_by, partitions_from, grain, columns, description, column_descriptions, audits, session_properties";

/// Parse a model file.
pub fn parse_model(src: &str, path: &Path) -> Result<Model, ModelError> {
    let err = |line, msg: String| ModelError { path: path.to_owned(), line, msg };
    let (props, offset, sql_line) = header(src, "MODEL", path)?;
    let mut name = None;
    let mut kind = None;
    let mut grain = Vec::new();
    let mut partitioned_by = None;
    let mut description = None;
    let mut column_descriptions = Vec::new();
    let mut audits = Vec::new();
    let mut session_properties = Vec::new();
    let mut columns = Vec::new();
    let mut partitions_from = None;
    for item in props.into_iter().map(as_property) {
        let line = item.line;
        let Some(key) = item.key.as_deref() else {
            return Err(err(line, format!("expected a property ({MODEL_PROPS})")));
        };
        match (key.to_ascii_lowercase().as_str(), item.val) {
            ("name", Val::Word(w)) => {
                let parts: Vec<&str> = w.split('.').collect();
                if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                    return Err(err(line, format!("model name '{w}': expected schema.table")));
                }
                name = Some(w.to_ascii_lowercase());
            }
            ("kind", v) => kind = Some(parse_kind(v, line, path)?),
            ("grain", v) => grain = idents(&v).ok_or_else(|| err(line, "grain: expected a column or (a, b, ...)".into()))?,
            ("partitioned_by", v) => {
                partitioned_by = Some(idents(&v).ok_or_else(|| err(line, "partitioned_by: expected a column or (a, b, ...)".into()))?)
            }
            ("partitions_from", Val::Word(w)) if w.split('.').count() == 2 => partitions_from = Some(w.to_ascii_lowercase()),
            ("partitions_from", _) => return Err(err(line, "partitions_from: expected an upstream model, schema.table".into())),
            ("columns", Val::Tuple(items)) => {
                for i in items {
                    let ty = match &i.val {
                        Val::Word(t) => Some(t.clone()),
                        Val::Call(t, args) => args
                            .iter()
                            .map(|a| match (&a.key, &a.val) {
                                (None, Val::Num(n)) => Some(n.clone()),
                                _ => None,
                            })
                            .collect::<Option<Vec<_>>>()
                            .map(|a| format!("{t}({})", a.join(", "))),
                        _ => None,
                    };
                    match (i.key, ty) {
                        (Some(k), Some(t)) => columns.push((k.to_ascii_lowercase(), t.to_ascii_uppercase())),
                        _ => return Err(err(i.line, "columns: expected (name TYPE, ...)".into())),
                    }
                }
            }
            ("description", Val::Str(s)) => description = Some(s),
            ("column_descriptions", Val::Tuple(items)) => {
                for i in items {
                    match (i.key, i.val) {
                        (Some(k), Val::Str(s)) => column_descriptions.push((k, s)),
                        _ => return Err(err(i.line, "column_descriptions: expected (column = 'text', ...)".into())),
                    }
                }
            }
            ("audits", Val::Tuple(items)) => {
                for i in items {
                    audits.push(audit_call(i, path)?);
                }
            }
            ("session_properties", Val::Tuple(items)) => {
                for i in items {
                    let ok = i.key.as_deref().is_some_and(|k| k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
                    match (i.key, i.val) {
                        (Some(k), _) if ok && !SESSION_PROPERTIES.contains(&k.to_ascii_lowercase().as_str()) => {
                            return Err(err(
                                i.line,
                                format!(
                                    "session_properties: {k} is not a tuning setting a model may change (allowed: {})",
                                    SESSION_PROPERTIES.join(", ")
                                ),
                            ));
                        }
                        (Some(k), v @ (Val::Str(_) | Val::Num(_) | Val::Word(_))) if ok => {
                            session_properties.push((k.to_ascii_lowercase(), to_arg(v, i.line, path)?));
                        }
                        _ => return Err(err(i.line, "session_properties: expected (setting = value, ...)".into())),
                    }
                }
            }
            ("audits", v @ (Val::Call(..) | Val::Word(_))) => audits.push(audit_call(Item { key: None, val: v, line }, path)?),
            (k @ ("name" | "description" | "column_descriptions" | "audits" | "session_properties" | "columns"), _) => {
                return Err(err(line, format!("property '{k}' has a value of the wrong form")));
            }
            (other, _) => {
                return Err(err(line, format!("unknown MODEL property '{other}' (supported: {MODEL_PROPS})")));
            }
        }
    }
    let name = name.ok_or_else(|| err(1, "MODEL has no name".into()))?;
    let mut kind = kind.ok_or_else(|| err(1, "MODEL has no kind".into()))?;
    match (&mut kind, partitioned_by) {
        (Kind::IncrementalByPartition { partitioned_by }, Some(cols)) if !cols.is_empty() => *partitioned_by = cols,
        (Kind::IncrementalByPartition { .. }, _) => {
            return Err(err(1, "INCREMENTAL_BY_PARTITION needs partitioned_by (col, ...)".into()));
        }
        (_, Some(_)) => return Err(err(1, "partitioned_by goes with kind INCREMENTAL_BY_PARTITION".into())),
        (_, None) => {}
    }
    let sql = one_statement(&src[offset..], sql_line).map_err(|(line, msg)| err(line, msg))?;
    if sql.is_empty() {
        return Err(err(sql_line, "no SQL after the MODEL header".into()));
    }
    if partitions_from.is_some() && !matches!(kind, Kind::IncrementalByPartition { .. }) {
        return Err(err(1, "partitions_from goes with kind INCREMENTAL_BY_PARTITION".into()));
    }
    if sql.contains(THIS_MODEL) {
        if !matches!(kind, Kind::IncrementalByPartition { .. } | Kind::IncrementalByUniqueKey { .. }) {
            return Err(err(sql_line, format!("{THIS_MODEL}: only an incremental model can read its own rows")));
        }
        if columns.is_empty() {
            return Err(err(
                sql_line,
                format!("{THIS_MODEL} needs columns (name TYPE, ...) in the header: a first build reads it as an empty table of those columns"),
            ));
        }
    }
    Ok(Model {
        name,
        kind,
        grain,
        description,
        column_descriptions,
        audits,
        session_properties,
        columns,
        partitions_from,
        sql,
        path: path.to_owned(),
        sql_line,
    })
}

/// Parse a custom audit file.
pub fn parse_audit(src: &str, path: &Path) -> Result<AuditDef, ModelError> {
    let err = |line, msg: String| ModelError { path: path.to_owned(), line, msg };
    let (props, offset, sql_line) = header(src, "AUDIT", path)?;
    let mut name = None;
    let mut blocking = true;
    for item in props.into_iter().map(as_property) {
        match (item.key.as_deref().map(str::to_ascii_lowercase).as_deref(), item.val) {
            (Some("name"), Val::Word(w)) => name = Some(w.to_ascii_lowercase()),
            (Some("blocking"), Val::Word(w)) => blocking = parse_bool(&w).ok_or_else(|| err(item.line, "blocking: expected true or false".into()))?,
            (Some(k), _) => return Err(err(item.line, format!("unknown AUDIT property '{k}' (supported: name, blocking)"))),
            (None, _) => return Err(err(item.line, "expected a property (name, blocking)".into())),
        }
    }
    let sql = one_statement(&src[offset..], sql_line).map_err(|(line, msg)| err(line, msg))?;
    if sql.is_empty() {
        return Err(err(sql_line, "no SQL after the AUDIT header".into()));
    }
    Ok(AuditDef { name: name.ok_or_else(|| err(1, "AUDIT has no name".into()))?, blocking, sql, path: path.to_owned() })
}

/// The DuckDB settings a model's `session_properties` may set: tuning only. The run's
/// sandbox (external access, allowed directories, extensions) is not a model's to change.
pub const SESSION_PROPERTIES: &[&str] = &[
    "threads",
    "memory_limit",
    "max_memory",
    "preserve_insertion_order",
    "disabled_optimizers",
    "default_order",
    "default_null_order",
    "ordered_aggregate_threshold",
    "perfect_ht_threshold",
    "max_expression_depth",
];

/// `true`/`false`, any case.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn parse_kind(v: Val, line: usize, path: &Path) -> Result<Kind, ModelError> {
    let err = |line, msg: String| ModelError { path: path.to_owned(), line, msg };
    const KINDS: &str = "FULL, VIEW, INCREMENTAL_BY_UNIQUE_KEY (unique_key (...)), INCREMENTAL_BY_PARTITION, LANDING_INGEST (pattern '...')";
    let (name, args) = match v {
        Val::Word(w) => (w, Vec::new()),
        Val::Call(w, args) => (w, args),
        _ => return Err(err(line, format!("kind: expected one of {KINDS}"))),
    };
    let arg = |key: &str| -> Option<Val> {
        args.iter().find_map(|i| match (&i.key, &i.val) {
            (Some(k), v) if k.eq_ignore_ascii_case(key) => Some(v.clone()),
            (None, Val::Call(k, items)) if k.eq_ignore_ascii_case(key) => Some(Val::Tuple(items.clone())),
            _ => None,
        })
    };
    let known = |keys: &[&str]| -> Result<(), ModelError> {
        for i in &args {
            let k = match (&i.key, &i.val) {
                (Some(k), _) => k.clone(),
                (None, Val::Call(k, _)) => k.clone(),
                _ => return Err(err(i.line, format!("kind {name}: expected key value arguments"))),
            };
            if !keys.iter().any(|x| x.eq_ignore_ascii_case(&k)) {
                return Err(err(i.line, format!("kind {name}: unknown argument '{k}' (supported: {})", keys.join(", "))));
            }
        }
        Ok(())
    };
    match name.to_ascii_uppercase().as_str() {
        "FULL" => {
            known(&[])?;
            Ok(Kind::Full)
        }
        "VIEW" => {
            known(&[])?;
            Ok(Kind::View)
        }
        "INCREMENTAL_BY_UNIQUE_KEY" => {
            known(&["unique_key"])?;
            let key = arg("unique_key").and_then(|v| idents(&v));
            let unique_key =
                key.filter(|k| !k.is_empty()).ok_or_else(|| err(line, "INCREMENTAL_BY_UNIQUE_KEY needs unique_key (col, ...)".into()))?;
            Ok(Kind::IncrementalByUniqueKey { unique_key })
        }
        "INCREMENTAL_BY_PARTITION" => {
            known(&[])?;
            Ok(Kind::IncrementalByPartition { partitioned_by: Vec::new() })
        }
        "LANDING_INGEST" => {
            known(&["pattern"])?;
            match arg("pattern") {
                Some(Val::Str(p)) if !p.starts_with('/') && !p.split('/').any(|s| s == ".." || s.is_empty()) => {
                    Ok(Kind::LandingIngest { pattern: p })
                }
                _ => Err(err(line, "LANDING_INGEST needs pattern 'dir/*/file*.ext', relative to the landing dir".into())),
            }
        }
        other => Err(err(line, format!("unknown kind '{other}' (supported: {KINDS})"))),
    }
}

fn audit_call(item: Item, path: &Path) -> Result<AuditCall, ModelError> {
    let err = |line, msg: String| ModelError { path: path.to_owned(), line, msg };
    let (name, args) = match item.val {
        Val::Word(w) => (w, Vec::new()),
        Val::Call(w, args) => (w, args),
        _ => return Err(err(item.line, "audits: expected audit_name(arg := value, ...)".into())),
    };
    let mut out = Vec::new();
    for a in args {
        let key = a.key.clone().ok_or_else(|| err(a.line, format!("audit {name}: arguments are key := value")))?;
        out.push((key.to_ascii_lowercase(), to_arg(a.val, a.line, path)?));
    }
    Ok(AuditCall { name: name.to_ascii_lowercase(), args: out, line: item.line })
}

fn to_arg(v: Val, line: usize, path: &Path) -> Result<Arg, ModelError> {
    Ok(match v {
        Val::Word(w) => Arg::Ident(w),
        Val::Str(s) => Arg::Str(s),
        Val::Num(n) => Arg::Num(n),
        Val::Tuple(items) => Arg::Tuple(items.into_iter().map(|i| to_arg(i.val, i.line, path)).collect::<Result<_, _>>()?),
        Val::Call(..) => {
            return Err(ModelError { path: path.to_owned(), line, msg: "audit arguments cannot be calls".into() });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(src: &str) -> Result<Model, String> {
        parse_model(src, Path::new("m.sql")).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_the_supported_header() {
        let m = p("-- leading comment\nMODEL (\n  name Serving.X,\n  kind INCREMENTAL_BY_UNIQUE_KEY (unique_key (a, b)),\n  grain (a, b),\n  description 'it''s',\n  column_descriptions (a = 'the a'),\n  audits (not_null(columns := (a, b)), number_of_rows(threshold := 1), custom(blocking := false)),\n);\nSELECT 1 AS a, 2 AS b;\n").unwrap();
        assert_eq!(m.name, "serving.x");
        assert_eq!(m.kind, Kind::IncrementalByUniqueKey { unique_key: vec!["a".into(), "b".into()] });
        assert_eq!(m.grain, ["a", "b"]);
        assert_eq!(m.description.as_deref(), Some("it's"));
        assert_eq!(m.column_descriptions, [("a".to_owned(), "the a".to_owned())]);
        assert_eq!(m.audits.len(), 3);
        assert_eq!(m.audits[0].args[0].1.idents().unwrap(), ["a", "b"]);
        assert_eq!(m.sql, "SELECT 1 AS a, 2 AS b");
        assert_eq!(m.sql_line, 10);
        let m = p("MODEL (name raw.psd, kind LANDING_INGEST (pattern 'psd/*/*/*.csv.gzip')); SELECT 1").unwrap();
        assert_eq!(m.kind, Kind::LandingIngest { pattern: "psd/*/*/*.csv.gzip".into() });
        let m = p("MODEL (name a.b, kind INCREMENTAL_BY_UNIQUE_KEY (unique_key := id)); SELECT 1").unwrap();
        assert_eq!(m.kind, Kind::IncrementalByUniqueKey { unique_key: vec!["id".into()] });
        let m = p("MODEL (name a.b, kind INCREMENTAL_BY_PARTITION, partitioned_by (r, c)); SELECT 1").unwrap();
        assert_eq!(m.kind, Kind::IncrementalByPartition { partitioned_by: vec!["r".into(), "c".into()] });
        assert!(p("MODEL (name a.b, kind INCREMENTAL_BY_PARTITION); SELECT 1").unwrap_err().contains("needs partitioned_by"));
        assert!(p("MODEL (name a.b, kind FULL, partitioned_by r); SELECT 1").unwrap_err().contains("goes with kind INCREMENTAL_BY_PARTITION"));
        let m = p("MODEL (name a.b, kind FULL, session_properties (disabled_optimizers = 'join_order', threads = 2)); SELECT 1").unwrap();
        assert_eq!(m.session_properties, [("disabled_optimizers".into(), Arg::Str("join_order".into())), ("threads".into(), Arg::Num("2".into()))]);
        assert!(p("MODEL (name a.b, kind FULL, session_properties (x)); SELECT 1").unwrap_err().contains("expected (setting = value"));
    }

    #[test]
    fn this_model_columns_and_partitions_from() {
        let m = p("MODEL (name a.b, kind INCREMENTAL_BY_PARTITION, partitioned_by k, partitions_from A.Up,\n columns (k VARCHAR, n DECIMAL(18, 3), d date));\nSELECT k, n, d FROM a.up WHERE @is_incremental AND k NOT IN (SELECT k FROM @this_model) AND _run_id = @run_id").unwrap();
        assert_eq!(m.columns, [("k".into(), "VARCHAR".into()), ("n".into(), "DECIMAL(18, 3)".into()), ("d".into(), "DATE".into())]);
        assert_eq!(m.partitions_from.as_deref(), Some("a.up"));
        assert!(m.reads_itself());
        assert_eq!(m.render(7, true), "SELECT k, n, d FROM a.up WHERE TRUE AND k NOT IN (SELECT k FROM a.b) AND _run_id = 7");
        assert_eq!(m.render(7, false), "SELECT k, n, d FROM a.up WHERE FALSE AND k NOT IN (SELECT k FROM __materia_this) AND _run_id = 7");
        assert_eq!(m.empty_this_ddl().unwrap(), "CREATE OR REPLACE TEMP TABLE __materia_this (k VARCHAR, n DECIMAL(18, 3), d DATE)");
        assert!(
            p("MODEL (name a.b, kind INCREMENTAL_BY_PARTITION, partitioned_by k);\nSELECT * FROM @this_model")
                .unwrap_err()
                .starts_with("m.sql:2: @this_model needs columns")
        );
        assert!(p("MODEL (name a.b, kind FULL, columns (k INT));\nSELECT * FROM @this_model").unwrap_err().contains("only an incremental model"));
        assert!(p("MODEL (name a.b, kind FULL, partitions_from a.c); SELECT 1").unwrap_err().contains("goes with kind INCREMENTAL_BY_PARTITION"));
        assert!(p("MODEL (name a.b, kind FULL, columns (k)); SELECT 1").unwrap_err().contains("columns: expected (name TYPE"));
    }

    #[test]
    fn errors_name_the_file_and_line() {
        assert_eq!(
            p("MODEL (\n name a.b,\n kind FULL,\n cron '@daily'\n);\nSELECT 1").unwrap_err(),
            "m.sql:4: unknown MODEL property 'cron' (supported: name, kind, partitioned_by, partitions_from, grain, columns, description, column_descriptions, audits, session_properties)"
        );
        assert_eq!(
            p("MODEL (name a.b,\n kind SCD_TYPE_2); SELECT 1").unwrap_err().split(" (supported").next().unwrap(),
            "m.sql:2: unknown kind 'SCD_TYPE_2'"
        );
        assert!(p("MODEL (name ab, kind FULL); SELECT 1").unwrap_err().contains("expected schema.table"));
        assert!(p("MODEL (name a.b, kind FULL);").unwrap_err().contains("no SQL after the MODEL header"));
        assert!(p("MODEL (name a.b, kind FULL").unwrap_err().contains("unclosed"));
        assert!(p("SELECT 1").unwrap_err().starts_with("m.sql:1: expected the file to start with MODEL"));
        assert!(p("MODEL (name a.b, kind LANDING_INGEST (pattern '../x/*')); SELECT 1").unwrap_err().contains("relative to the landing dir"));
        assert!(p("MODEL (name a.b, kind FULL (x 1)); SELECT 1").unwrap_err().contains("unknown argument 'x'"));
    }

    #[test]
    fn audit_files() {
        let a = parse_audit("AUDIT (name Bal, blocking false);\nSELECT * FROM @this_model WHERE x < 0;", Path::new("a.sql")).unwrap();
        assert_eq!((a.name.as_str(), a.blocking, a.sql.as_str()), ("bal", false, "SELECT * FROM @this_model WHERE x < 0"));
        assert!(
            parse_audit("AUDIT (name x, severity 1); SELECT 1", Path::new("a.sql"))
                .unwrap_err()
                .to_string()
                .contains("unknown AUDIT property 'severity'")
        );
    }
}
