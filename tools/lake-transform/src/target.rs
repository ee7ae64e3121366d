//! Where the lakehouse is: the local file `DATA_DIR/lakehouse.duckdb` (the default), or a
//! DuckLake (`--lakehouse ducklake:postgres:CONNINFO`: its catalog in PostgreSQL, its data
//! as Parquet under `--lake-data-path`, on S3/R2), for when the data or its readers
//! outgrow one machine. Either way a connection opens with the lakehouse as its default
//! catalog, named `lakehouse`, so the models, the engine's state (`_materia`) and the
//! audits run unchanged; a run is one transaction, which on DuckLake is one snapshot.

use std::path::PathBuf;

use anyhow::Context as _;
use duckdb::Connection;
use materia_common::duckdb_config;
use materia_common::exit::Usage;
use materia_common::layout;

use crate::DEV_EXTENSIONS;

/// The S3 (R2) endpoint and credentials of a DuckLake's data path.
#[derive(Clone)]
pub struct S3 {
    /// `http(s)://host[:port]`.
    pub endpoint: String,
    /// Key id.
    pub key_id: String,
    /// Secret (never logged, never in argv: from the environment).
    pub secret: String,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3").field("endpoint", &self.endpoint).field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// Where the lakehouse is.
#[derive(Debug, Clone)]
pub enum Target {
    /// The local DuckDB file.
    File(PathBuf),
    /// A DuckLake: a libpq connection string for its PostgreSQL catalog, and its data path.
    DuckLake {
        /// `dbname=… host=… user=…` (a password comes from PGPASSWORD, not from here).
        catalog: String,
        /// `s3://bucket/prefix/` (or a local directory).
        data_path: String,
        /// Credentials for an S3 data path.
        s3: Option<S3>,
    },
}

impl Target {
    /// From `--lakehouse` (None: the local file) and `--lake-data-path`; the S3
    /// credentials come from the environment only.
    pub fn new(url: Option<&str>, data_path: Option<&str>, file: PathBuf) -> anyhow::Result<Target> {
        let Some(url) = url.filter(|u| !u.is_empty()) else {
            return Ok(Target::File(file));
        };
        let Some(catalog) = url.strip_prefix("ducklake:postgres:") else {
            return Err(Usage(format!("--lakehouse {url:?}: expected ducklake:postgres:CONNINFO (or unset, for the local file)")).into());
        };
        if catalog.split_whitespace().any(|kv| kv.starts_with("password=")) {
            return Err(Usage("--lakehouse: a password does not belong in the URL (it would show in ps and logs): set PGPASSWORD".into()).into());
        }
        let Some(data_path) = data_path.filter(|d| !d.is_empty()) else {
            return Err(
                Usage(format!("--lakehouse {url:?} needs --lake-data-path (or {}), e.g. s3://bucket/lake/", layout::ENV_LAKE_DATA_PATH)).into()
            );
        };
        let data_path = if data_path.ends_with('/') { data_path.to_owned() } else { format!("{data_path}/") };
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let s3 = match (var(layout::ENV_LAKE_S3_ENDPOINT), var(layout::ENV_LAKE_S3_KEY_ID), var(layout::ENV_LAKE_S3_SECRET)) {
            (Some(endpoint), Some(key_id), Some(secret)) => Some(S3 { endpoint, key_id, secret }),
            (None, None, None) => None,
            _ => {
                return Err(Usage(format!(
                    "{}, {} and {} go together (the data path's S3 endpoint and credentials)",
                    layout::ENV_LAKE_S3_ENDPOINT,
                    layout::ENV_LAKE_S3_KEY_ID,
                    layout::ENV_LAKE_S3_SECRET
                ))
                .into());
            }
        };
        if data_path.starts_with("s3://") && s3.is_none() {
            return Err(Usage(format!("--lake-data-path {data_path}: set {} and its credentials", layout::ENV_LAKE_S3_ENDPOINT)).into());
        }
        Ok(Target::DuckLake { catalog: catalog.to_owned(), data_path, s3 })
    }

    /// For logs: where it is, without credentials.
    pub fn describe(&self) -> String {
        match self {
            Target::File(p) => p.display().to_string(),
            Target::DuckLake { catalog, data_path, .. } => format!("DuckLake (catalog {catalog}, data {data_path})"),
        }
    }

    /// Open it read-only, if there is one yet (a plan touches nothing: it does not create
    /// a file, nor a DuckLake's catalog tables).
    pub fn open_existing(&self) -> anyhow::Result<Option<Connection>> {
        match self {
            Target::File(p) if !p.exists() => Ok(None),
            Target::File(_) => self.open(true).map(Some),
            Target::DuckLake { .. } => match self.open(true) {
                Err(e) if e.to_string().contains("creating a new DuckLake is explicitly disabled") => Ok(None),
                other => other.map(Some),
            },
        }
    }

    /// Is it a DuckLake?
    pub fn is_ducklake(&self) -> bool {
        matches!(self, Target::DuckLake { .. })
    }

    /// Open it as the default catalog `lakehouse` (creating a new one on first use).
    pub fn open(&self, read_only: bool) -> anyhow::Result<Connection> {
        let cfg = duckdb_config::config(DEV_EXTENSIONS)?;
        match self {
            Target::File(path) => {
                let cfg = if read_only { cfg.access_mode(duckdb::AccessMode::ReadOnly)? } else { cfg };
                Connection::open_with_flags(path, cfg)
                    .with_context(|| format!("opening {}{}", path.display(), if read_only { " read-only" } else { "" }))
            }
            Target::DuckLake { catalog, data_path, s3 } => {
                let conn = Connection::open_in_memory_with_flags(cfg)?;
                for ext in duckdb_config::EXTENSIONS {
                    duckdb_config::load(&conn, ext, DEV_EXTENSIONS)?;
                }
                if let Some(s3) = s3 {
                    let (ssl, host) = match s3.endpoint.split_once("://") {
                        Some(("http", host)) => (false, host),
                        Some((_, host)) => (true, host),
                        None => (true, s3.endpoint.as_str()),
                    };
                    // The statement holds the secret: it is never logged (nor its error's text).
                    conn.execute_batch(&format!(
                        "CREATE SECRET lake_data (TYPE s3, KEY_ID {}, SECRET {}, REGION 'auto', ENDPOINT {}, URL_STYLE 'path', USE_SSL {ssl}, SCOPE {})",
                        quote(&s3.key_id),
                        quote(&s3.secret),
                        quote(host.trim_end_matches('/')),
                        quote(data_path)
                    ))
                    .map_err(|_| anyhow::anyhow!("the S3 credentials of {data_path} were refused by DuckDB"))?;
                }
                let mode = if read_only { ", READ_ONLY" } else { "" };
                conn.execute_batch(&format!(
                    "ATTACH {} AS lakehouse (DATA_PATH {}{mode}); USE lakehouse;",
                    quote(&format!("ducklake:postgres:{catalog}")),
                    quote(data_path)
                ))
                .map_err(|e| {
                    anyhow::anyhow!(
                        "attaching the DuckLake (catalog {catalog}, data {data_path}): {}",
                        e.to_string().lines().next().unwrap_or_default()
                    )
                })?;
                Ok(conn)
            }
        }
    }

    /// What a model's SQL may read besides the landing dir: a DuckLake's data path (its
    /// own Parquet files, which DuckDB reads and writes for it).
    pub fn data_paths(&self) -> Vec<String> {
        match self {
            Target::File(_) => Vec::new(),
            Target::DuckLake { data_path, .. } => vec![data_path.clone()],
        }
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let file = PathBuf::from("/d/lakehouse.duckdb");
        assert!(matches!(Target::new(None, None, file.clone()).unwrap(), Target::File(_)));
        let t = Target::new(Some("ducklake:postgres:dbname=lake host=db"), Some("/srv/lake"), file.clone()).unwrap();
        assert!(matches!(&t, Target::DuckLake { data_path, .. } if data_path == "/srv/lake/"));
        let err = |url: &str, data: Option<&str>| Target::new(Some(url), data, file.clone()).unwrap_err().to_string();
        assert!(err("postgres://x", Some("/l")).contains("expected ducklake:postgres:CONNINFO"));
        assert!(err("ducklake:postgres:dbname=x password=hunter2", Some("/l")).contains("set PGPASSWORD"));
        assert!(err("ducklake:postgres:dbname=x", None).contains("needs --lake-data-path"));
    }
}
