//! Audits, as in SQLMesh: a query returning offending rows; none means it passed.
//!
//! Built in: `not_null(columns := (..))`, `unique_values(columns := (..))`,
//! `unique_combination_of_columns(columns := (..))`, `accepted_values(column := c,
//! is_in := (..))`, `accepted_range(column := c, min_v := x, max_v := y)`,
//! `number_of_rows(threshold := n)`. Custom audits are files in `models/audits/`.
//! Every audit blocks unless `blocking := false` (or the audit file says so).

use crate::model::{Arg, AuditCall, AuditDef};

const BUILTINS: &[&str] = &["not_null", "unique_values", "unique_combination_of_columns", "accepted_values", "accepted_range", "number_of_rows"];

/// Is `name` a built-in audit?
pub fn is_builtin(name: &str) -> bool {
    BUILTINS.contains(&name)
}

/// An audit ready to run against one table.
#[derive(Debug, Clone)]
pub struct Audit {
    /// Name as used in the model.
    pub name: String,
    /// Does a failure roll the run back?
    pub blocking: bool,
    /// Query returning offending rows.
    pub sql: String,
}

/// Resolve `call` against `table` (a quoted `schema.table`). Errors name what is wrong.
pub fn resolve(call: &AuditCall, table: &str, custom: Option<&AuditDef>) -> Result<Audit, String> {
    let mut blocking = custom.is_none_or(|d| d.blocking);
    let mut args = std::collections::HashMap::new();
    for (k, v) in &call.args {
        if k == "blocking" {
            blocking = match v {
                Arg::Ident(s) => crate::model::parse_bool(s).ok_or("blocking := expects true or false")?,
                _ => return Err("blocking := expects true or false".into()),
            };
        } else {
            args.insert(k.as_str(), v);
        }
    }
    let cols = |key: &str| -> Result<Vec<String>, String> {
        args.get(key).and_then(|a| a.idents()).filter(|c| !c.is_empty()).ok_or(format!("{} needs {key} := (col, ...)", call.name))
    };
    let one = |key: &str| -> Result<String, String> {
        match args.get(key) {
            Some(Arg::Ident(c)) => Ok(c.clone()),
            _ => Err(format!("{} needs {key} := column", call.name)),
        }
    };
    let allowed: &[&str] = match call.name.as_str() {
        "not_null" | "unique_values" | "unique_combination_of_columns" => &["columns"],
        "accepted_values" => &["column", "is_in"],
        "accepted_range" => &["column", "min_v", "max_v", "inclusive"],
        "number_of_rows" => &["threshold"],
        _ => &[],
    };
    if custom.is_none()
        && let Some(k) = args.keys().find(|k| !allowed.contains(k))
    {
        return Err(format!("{}: unknown argument '{k}' (supported: {}, blocking)", call.name, allowed.join(", ")));
    }
    let sql = match (call.name.as_str(), custom) {
        (_, Some(def)) => {
            let mut sql = def.sql.replace("@this_model", table);
            for (k, v) in &args {
                sql = sql.replace(&format!("@{k}"), &v.sql());
            }
            sql
        }
        ("not_null", _) => {
            let cond = cols("columns")?.iter().map(|c| format!("{c} IS NULL")).collect::<Vec<_>>().join(" OR ");
            format!("SELECT * FROM {table} WHERE {cond}")
        }
        ("unique_values", _) => cols("columns")?
            .iter()
            .map(|c| {
                format!("SELECT '{c}' AS column_name, CAST({c} AS VARCHAR) AS value, count(*) AS n FROM {table} GROUP BY {c} HAVING count(*) > 1")
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL "),
        ("unique_combination_of_columns", _) => {
            // A first pass sorts one 64-bit hash of the columns and keeps a hash equal to
            // the next (grouping the columns themselves took twice the time of grouping the
            // hash on a 2M-row release, and grouping the hash 1.2–1.6× the sort: a hash table
            // of every row, against a sort of 8-byte values); only the rows whose hash
            // repeats are then grouped by the columns, so a hash collision is never reported.
            let c = cols("columns")?.join(", ");
            format!(
                "SELECT {c}, count(*) AS n FROM {table} WHERE hash({c}) IN \
                 (SELECT h FROM (SELECT h, lead(h) OVER (ORDER BY h) AS next FROM (SELECT hash({c}) AS h FROM {table})) WHERE h = next) \
                 GROUP BY {c} HAVING count(*) > 1"
            )
        }
        ("accepted_values", _) => {
            let values = args.get("is_in").map(|a| a.sql()).ok_or("accepted_values needs is_in := ('a', ...)")?;
            let c = one("column")?;
            format!("SELECT * FROM {table} WHERE {c} NOT IN {values}")
        }
        ("accepted_range", _) => {
            let c = one("column")?;
            let inclusive = !matches!(args.get("inclusive"), Some(Arg::Ident(s)) if s.eq_ignore_ascii_case("false"));
            let (lt, gt) = if inclusive { ("<", ">") } else { ("<=", ">=") };
            let mut conds = Vec::new();
            if let Some(min) = args.get("min_v") {
                conds.push(format!("{c} {lt} {}", min.sql()));
            }
            if let Some(max) = args.get("max_v") {
                conds.push(format!("{c} {gt} {}", max.sql()));
            }
            if conds.is_empty() {
                return Err("accepted_range needs min_v := or max_v :=".into());
            }
            format!("SELECT * FROM {table} WHERE {}", conds.join(" OR "))
        }
        ("number_of_rows", _) => {
            let n = match args.get("threshold") {
                Some(Arg::Num(n)) => n.clone(),
                _ => return Err("number_of_rows needs threshold := N".into()),
            };
            format!("SELECT count(*) AS rows FROM {table} HAVING count(*) < {n}")
        }
        (other, None) => return Err(format!("unknown audit '{other}'")),
    };
    Ok(Audit { name: call.name.clone(), blocking, sql })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_model;
    use std::path::Path;

    fn audits(spec: &str) -> Vec<Result<Audit, String>> {
        let m = parse_model(&format!("MODEL (name s.t, kind FULL, audits ({spec})); SELECT 1"), Path::new("m.sql")).unwrap();
        m.audits.iter().map(|a| resolve(a, "s.t", None)).collect()
    }

    #[test]
    fn builtins_become_queries() {
        let a = audits("not_null(columns := (a, b)), accepted_range(column := v, min_v := 0, blocking := false), number_of_rows(threshold := 10)");
        let a: Vec<Audit> = a.into_iter().map(Result::unwrap).collect();
        assert_eq!(a[0].sql, "SELECT * FROM s.t WHERE a IS NULL OR b IS NULL");
        assert!(a[0].blocking);
        assert_eq!(a[1].sql, "SELECT * FROM s.t WHERE v < 0");
        assert!(!a[1].blocking);
        assert_eq!(a[2].sql, "SELECT count(*) AS rows FROM s.t HAVING count(*) < 10");
        assert!(audits("not_null(cols := (a))")[0].as_ref().unwrap_err().contains("unknown argument 'cols'"));
        assert!(audits("accepted_values(column := a)")[0].as_ref().unwrap_err().contains("is_in"));
    }

    #[test]
    fn unique_combination_finds_exactly_the_repeated_keys() {
        let conn = duckdb::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE SCHEMA s; CREATE TABLE s.t AS SELECT * FROM (VALUES (1, 'a'), (1, 'a'), (1, 'b'), (NULL, 'c'), (NULL, 'c'), (NULL, 'd'), (2, NULL), (3, 'z'), (3, 'z'), (3, 'z')) v(a, b);
             INSERT INTO s.t SELECT range, 'x' FROM range(10, 100000);",
        )
        .unwrap();
        let a = audits("unique_combination_of_columns(columns := (a, b))").remove(0).unwrap();
        let mut st = conn.prepare(&format!("SELECT CAST(a AS VARCHAR), b, n FROM ({}) ORDER BY ALL", a.sql)).unwrap();
        let rows: Vec<(Option<String>, Option<String>, i64)> =
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
        // NULLs group together, as in a plain GROUP BY; every other key is single.
        assert_eq!(rows, [(Some("1".into()), Some("a".into()), 2), (Some("3".into()), Some("z".into()), 3), (None, Some("c".into()), 2)]);
    }
}
