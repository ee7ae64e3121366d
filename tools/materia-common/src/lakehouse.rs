//! The contract between lake-transform, which writes `lakehouse.duckdb`, and the steps
//! that read it (serve-export). Everything else in the lakehouse is lake-transform's own.
//!
//! - Schema [`SERVING_SCHEMA`]: the tables to publish, as they are (views are not).
//! - Table `_materia.models`, one row per model: `name VARCHAR`, `fingerprint VARCHAR`,
//!   `run_id BIGINT`, `rows BIGINT` (more columns may come; these stay). A model's row
//!   is rewritten in the same transaction as its table, so [`change_marker_sql`]'s
//!   result changes whenever a run changed any table, and only then.
//!
//! Reading it takes the lakehouse lock ([`crate::lock::lakehouse`]) and opens the file
//! read-only. lake-transform's tests hold it to this (`the_lakehouse_keeps_its_contract`).

/// The schema whose tables serve-export publishes.
pub const SERVING_SCHEMA: &str = "serving";

/// A query over the lakehouse attached as `catalog` (a plain SQL identifier; DuckDB
/// names a file opened directly after its stem, `lakehouse`) whose rows change exactly when a lake-transform run changed
/// something: `(name, fingerprint, run_id, rows)` of every model, ordered.
pub fn change_marker_sql(catalog: &str) -> String {
    assert!(catalog.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "catalog {catalog:?}: not a plain identifier");
    format!("SELECT name, fingerprint, coalesce(run_id, 0), coalesce(rows, -1) FROM {catalog}._materia.models ORDER BY name")
}
