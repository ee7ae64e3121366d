//! A models folder: every `*.sql` model, custom audits in `audits/*.sql`, the
//! dependency graph read from the SQL, topological order, and fingerprints.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use materia_common::exit::Usage;
use sha2::{Digest as _, Sha256};

use crate::model::{self, AuditDef, Model};

/// Bumped when the engine's semantics change, so every model rebuilds once.
const ENGINE_VERSION: &str = "lake-transform/1";

/// A loaded, checked project.
#[derive(Debug)]
pub struct Project {
    /// Models in topological order (upstream first).
    pub models: Vec<Model>,
    /// Upstream model names per model.
    pub deps: HashMap<String, Vec<String>>,
    /// Fingerprint per model.
    pub fingerprints: HashMap<String, String>,
    /// Custom audits by name.
    pub audits: HashMap<String, AuditDef>,
}

impl Project {
    /// Load and check every model under `dir`. Any problem is a [`Usage`] error naming
    /// the file and line, raised before anything runs.
    pub fn load(dir: &Path) -> anyhow::Result<Project> {
        let files = sql_files(dir).with_context(|| format!("reading models folder {}", dir.display()))?;
        if files.is_empty() {
            return Err(Usage(format!("no model files (*.sql) in {}", dir.display())).into());
        }
        let mut models = Vec::new();
        for path in files {
            let src = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            models.push(model::parse_model(&src, &path).map_err(|e| Usage(e.to_string()))?);
        }
        let mut audits = HashMap::new();
        let audit_dir = dir.join("audits");
        if audit_dir.is_dir() {
            for path in sql_files(&audit_dir).with_context(|| format!("reading {}", audit_dir.display()))? {
                let src = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                let a = model::parse_audit(&src, &path).map_err(|e| Usage(e.to_string()))?;
                if let Some(prev) = audits.insert(a.name.clone(), a) {
                    return Err(Usage(format!("audit '{}' is defined twice ({})", prev.name, prev.path.display())).into());
                }
            }
        }
        Self::check(models, audits)
    }

    /// Build the graph from parsed models.
    pub fn check(models: Vec<Model>, audits: HashMap<String, AuditDef>) -> anyhow::Result<Project> {
        let mut by_name: BTreeMap<String, Model> = BTreeMap::new();
        for m in models {
            if let Some(prev) = by_name.get(&m.name) {
                return Err(Usage(format!("model {} is defined twice: {} and {}", m.name, prev.path.display(), m.path.display())).into());
            }
            by_name.insert(m.name.clone(), m);
        }
        let schemas: BTreeSet<String> = by_name.values().map(|m| m.schema().to_owned()).collect();
        let mut deps = HashMap::new();
        for m in by_name.values() {
            let mut ups = BTreeSet::new();
            for (name, line) in table_refs(&m.sql) {
                let Some((schema, _)) = name.split_once('.') else { continue };
                if !schemas.contains(schema) || name == m.name {
                    continue;
                }
                if !by_name.contains_key(&name) {
                    return Err(
                        Usage(format!("{}:{}: {} reads {name}, which is not a model", m.path.display(), m.sql_line + line - 1, m.name)).into()
                    );
                }
                ups.insert(name);
            }
            for a in &m.audits {
                if !crate::audit::is_builtin(&a.name) && !audits.contains_key(&a.name) {
                    return Err(Usage(format!("{}:{}: unknown audit '{}'", m.path.display(), a.line, a.name)).into());
                }
            }
            if let Some(up) = &m.partitions_from {
                let cols = match &m.kind {
                    model::Kind::IncrementalByPartition { partitioned_by } => partitioned_by,
                    _ => unreachable!("the parser allows partitions_from only here"),
                };
                let fits = by_name.get(up).is_some_and(|u| match &u.kind {
                    model::Kind::IncrementalByPartition { partitioned_by } => cols.iter().all(|c| partitioned_by.contains(c)),
                    _ => false,
                });
                if !ups.contains(up) || !fits {
                    return Err(Usage(format!(
                        "{}: partitions_from {up}: expected an INCREMENTAL_BY_PARTITION model that {} reads, partitioned by ({}) or more",
                        m.path.display(),
                        m.name,
                        cols.join(", ")
                    ))
                    .into());
                }
            }
            deps.insert(m.name.clone(), ups.into_iter().collect::<Vec<_>>());
        }
        let order = toposort(&deps)?;
        let mut fingerprints: HashMap<String, String> = HashMap::new();
        let mut models = Vec::new();
        for name in order {
            let m = by_name.remove(&name).expect("every name is a model");
            let fp = fingerprint(&m, &deps[&name], &fingerprints, &audits);
            fingerprints.insert(name, fp);
            models.push(m);
        }
        Ok(Project { models, deps, fingerprints, audits })
    }

    /// The model called `name`.
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == name)
    }
}

fn sql_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "sql"))
        .collect();
    out.sort();
    Ok(out)
}

/// Kahn's algorithm; ties broken by name so the order is stable.
fn toposort(deps: &HashMap<String, Vec<String>>) -> anyhow::Result<Vec<String>> {
    let mut remaining: BTreeMap<&str, BTreeSet<&str>> = deps.iter().map(|(k, v)| (k.as_str(), v.iter().map(String::as_str).collect())).collect();
    let mut order = Vec::new();
    while !remaining.is_empty() {
        let ready: Vec<&str> = remaining.iter().filter(|(_, ups)| ups.is_empty()).map(|(k, _)| *k).collect();
        if ready.is_empty() {
            let cycle: Vec<&str> = remaining.keys().copied().collect();
            return Err(Usage(format!("models depend on each other in a cycle: {}", cycle.join(", "))).into());
        }
        for r in ready {
            remaining.remove(r);
            for ups in remaining.values_mut() {
                ups.remove(r);
            }
            order.push(r.to_owned());
        }
    }
    Ok(order)
}

/// What identifies a model's definition: the engine version, its kind, grain, audits
/// (custom audit SQL included), normalised SQL, and its upstream fingerprints.
/// Descriptions are metadata and do not count.
fn fingerprint(m: &Model, ups: &[String], fps: &HashMap<String, String>, audits: &HashMap<String, AuditDef>) -> String {
    let mut h = Sha256::new();
    let mut put = |s: &str| {
        h.update(s.as_bytes());
        h.update([0]);
    };
    put(ENGINE_VERSION);
    put(&m.name);
    put(&m.kind.to_string());
    put(&m.grain.join(","));
    if !m.columns.is_empty() || m.partitions_from.is_some() {
        put(&format!("{:?}{:?}", m.columns, m.partitions_from));
    }
    for a in &m.audits {
        put(&format!("{a:?}").replace(&format!("line: {}", a.line), ""));
        if let Some(def) = audits.get(&a.name) {
            put(&format!("{}{}", def.blocking, normalize_sql(&def.sql)));
        }
    }
    put(&normalize_sql(&m.sql));
    for u in ups {
        put(u);
        put(&fps[u]);
    }
    materia_common::hex(&h.finalize())
}

/// SQL without comments, whitespace runs folded to one space (strings kept as-is).
pub fn normalize_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let b = sql.as_bytes();
    let mut i = 0;
    let mut space = false;
    while i < b.len() {
        match b[i] {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                space = true;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !b[i..].starts_with(b"*/") {
                    i += 1;
                }
                i += 2;
                space = true;
            }
            c @ (b'\'' | b'"') => {
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                let start = i;
                i += 1;
                while i < b.len() && b[i] != c {
                    i += 1;
                }
                i += 1;
                out.push_str(&sql[start..i.min(b.len())]);
                continue;
            }
            c if c.is_ascii_whitespace() => {
                space = true;
                i += 1;
            }
            _ => {
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                let ch = sql[i..].chars().next().expect("in bounds");
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

/// Every `a.b` name in the SQL outside strings and comments (lowercased), with the
/// 1-based line within the SQL. Three-part names and `x.y` after a dot are skipped.
pub fn table_refs(sql: &str) -> Vec<(String, usize)> {
    let code = crate::sql::mask(sql);
    let b = code.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < b.len() {
        match b[i] {
            b'\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (word(b[i]) || b[i] == b'.') {
                    i += 1;
                }
                let preceded_by_dot = start > 0 && b[start - 1] == b'.';
                let name = &code[start..i];
                let parts: Vec<&str> = name.split('.').collect();
                if !preceded_by_dot && parts.len() == 2 && parts.iter().all(|p| !p.is_empty()) {
                    out.push((name.to_ascii_lowercase(), line));
                }
            }
            _ => i += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, sql: &str) -> Model {
        model::parse_model(&format!("MODEL (name {name}, kind FULL);\n{sql}"), Path::new(&format!("{name}.sql"))).unwrap()
    }

    #[test]
    fn order_follows_the_sql() {
        let p = Project::check(
            vec![
                m("serving.b", "SELECT * FROM staging.a JOIN raw.x USING (k)"),
                m("staging.a", "SELECT x.k FROM raw.x AS x -- not serving.zzz\nWHERE x.v <> 'serving.nope'"),
                m("raw.x", "SELECT 1 AS k"),
            ],
            HashMap::new(),
        )
        .unwrap();
        let names: Vec<&str> = p.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["raw.x", "staging.a", "serving.b"]);
        assert_eq!(p.deps["serving.b"], ["raw.x", "staging.a"]);
    }

    #[test]
    fn missing_models_and_cycles_are_errors() {
        let e = Project::check(vec![m("staging.a", "SELECT 1\nFROM staging.nope")], HashMap::new()).unwrap_err();
        assert_eq!(e.to_string(), "staging.a.sql:3: staging.a reads staging.nope, which is not a model");
        let e = Project::check(
            vec![m("s.a", "SELECT * FROM s.b"), m("s.b", "SELECT * FROM s.c"), m("s.c", "SELECT * FROM s.a"), m("s.d", "SELECT 1")],
            HashMap::new(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "models depend on each other in a cycle: s.a, s.b, s.c");
    }

    #[test]
    fn fingerprints_change_with_sql_and_upstream_but_not_with_whitespace() {
        let fp = |a: &str, b: &str| {
            let p = Project::check(vec![m("s.a", a), m("s.b", b)], HashMap::new()).unwrap();
            (p.fingerprints["s.a"].clone(), p.fingerprints["s.b"].clone())
        };
        let base = fp("SELECT 1 AS x", "SELECT * FROM s.a");
        assert_eq!(fp("SELECT   1 AS x -- comment", "SELECT *\n  FROM s.a"), base);
        let changed = fp("SELECT 2 AS x", "SELECT * FROM s.a");
        assert_ne!(changed.0, base.0);
        assert_ne!(changed.1, base.1, "downstream changes with upstream");
        assert_ne!(fp("SELECT 1 AS x", "SELECT x FROM s.a").1, base.1);
        assert_eq!(normalize_sql("a  'x  y'\n -- c\n b"), "a 'x  y' b");
    }
}
