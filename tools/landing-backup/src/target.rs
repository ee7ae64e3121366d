//! Where backups go: the target (`s3://BUCKET[/PREFIX]` on R2, or `fs:/PATH`), its
//! opendal operator (timeouts, retries, atomic writes on a folder), the HTTP transport
//! that counts requests by kind, and what a listing says about remote objects.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use materia_common::exit::Usage;
use materia_common::layout;
use opendal::Operator;

use crate::DEFAULT_PREFIX;
use crate::etag::local_etag;

/// Where backups go (no secret in its Display).
#[derive(Clone)]
pub(crate) enum Target {
    Fs { root: PathBuf },
    S3 { bucket: String, prefix: String, endpoint: String, key_id: String, secret: String },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Fs { root } => write!(f, "fs:{}", root.display()),
            Target::S3 { bucket, prefix, .. } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

impl Target {
    /// Parse `--target`, taking credentials from the environment. Every missing
    /// variable is named; no secret is ever put in a message.
    pub(crate) fn parse(url: &str, env: impl Fn(&str) -> Option<String>) -> Result<Target, Usage> {
        if let Some(path) = url.strip_prefix("fs:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if !path.starts_with('/') {
                return Err(Usage(format!("--target {url}: expected fs:/absolute/path")));
            }
            return Ok(Target::Fs { root: PathBuf::from(path) });
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(Usage(format!("--target {url:?}: expected s3://BUCKET[/PREFIX] or fs:/PATH")));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || !bucket.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
            return Err(Usage(format!("--target {url:?}: invalid bucket name")));
        }
        let prefix = match prefix.trim_matches('/') {
            "" => DEFAULT_PREFIX.to_owned(),
            p => format!("{p}/"),
        };
        let vars = [layout::ENV_R2_ENDPOINT, layout::ENV_R2_ACCESS_KEY_ID, layout::ENV_R2_SECRET_ACCESS_KEY];
        let values: Vec<Option<String>> = vars.iter().map(|v| env(v).filter(|s| !s.is_empty())).collect();
        let missing: Vec<&str> = vars.iter().zip(&values).filter(|(_, v)| v.is_none()).map(|(n, _)| *n).collect();
        if !missing.is_empty() {
            return Err(Usage(format!("missing {} for target s3://{bucket}/{prefix}", missing.join(", "))));
        }
        let [endpoint, key_id, secret] = [0, 1, 2].map(|i| values[i].clone().unwrap_or_default());
        Ok(Target::S3 { bucket: bucket.to_owned(), prefix, endpoint, key_id, secret })
    }

    pub(crate) fn prefix(&self) -> &str {
        match self {
            Target::Fs { .. } => "",
            Target::S3 { prefix, .. } => prefix,
        }
    }
}

/// Requests by kind, counted at the HTTP transport (every attempt).
#[derive(Debug, Default)]
pub(crate) struct Counts(Mutex<BTreeMap<&'static str, u64>>);

impl Counts {
    pub(crate) fn add(&self, kind: &'static str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default() += 1;
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The S3 request kinds.
pub(crate) fn kind(req: &http::Request<opendal::Buffer>) -> &'static str {
    let q = req.uri().query().unwrap_or("");
    match *req.method() {
        http::Method::HEAD => "HEAD",
        http::Method::GET if q.contains("list-type") || q.contains("prefix=") => "LIST",
        http::Method::GET => "GET",
        http::Method::PUT if q.contains("uploadId") => "multipart-part",
        http::Method::PUT => "PUT",
        http::Method::POST if q.contains("uploadId") => "multipart-complete",
        http::Method::POST if q.contains("uploads") => "multipart-create",
        http::Method::DELETE if q.contains("uploadId") => "multipart-abort",
        http::Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

pub(crate) struct CountingTransport {
    inner: opendal::HttpTransporter,
    counts: Arc<Counts>,
}

impl opendal::HttpTransport for CountingTransport {
    async fn fetch(&self, req: http::Request<opendal::Buffer>) -> opendal::Result<http::Response<opendal::HttpBody>> {
        self.counts.add(kind(&req));
        self.inner.fetch(req).await
    }
}

/// The fs target's temp dir for objects being written (never listed as an object).
pub(crate) const FS_TMP: &str = ".materia-tmp";

pub(crate) fn operator(target: &Target, counts: Arc<Counts>, timeout: Duration, retries: usize) -> anyhow::Result<Operator> {
    let op = match target {
        Target::Fs { root } => {
            std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
            // Every object is written to a temp file in FS_TMP (inside the root: the same
            // file system), fsynced and renamed into place: a kill or a full disk leaves
            // no short object under a final name. What a killed run left there is swept.
            let tmp = root.join(FS_TMP);
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).with_context(|| format!("clearing {}", tmp.display()))?;
            }
            Operator::new(opendal::services::Fs::default().root(&root.display().to_string()).atomic_write_dir(&tmp.display().to_string()))?
        }
        Target::S3 { bucket, endpoint, key_id, secret, .. } => {
            let builder = opendal::services::S3::default()
                .bucket(bucket)
                .endpoint(endpoint)
                .region("auto")
                .access_key_id(key_id)
                .secret_access_key(secret)
                // These machines (and CI) set AWS_* variables that must not leak in.
                .disable_config_load()
                .disable_ec2_metadata();
            let op = Operator::new(builder)?;
            let inner = opendal::HttpTransporter::new(opendal_http_transport_reqwest::ReqwestTransport::default());
            let transport = CountingTransport { inner, counts };
            let ctx = op.base_context().with_http_transport(opendal::HttpTransporter::new(transport));
            op.with_context(ctx)
        }
    };
    Ok(op
        .layer(opendal::layers::TimeoutLayer::new().with_timeout(timeout).with_io_timeout(timeout))
        .layer(opendal::layers::RetryLayer::new().with_max_times(retries).with_jitter().with_min_delay(Duration::from_millis(200))))
}

/// What a remote object is.
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    pub(crate) bytes: u64,
    pub(crate) etag: Option<String>,
}

pub(crate) fn remote_of(meta: &opendal::Metadata) -> Remote {
    Remote { bytes: meta.content_length(), etag: meta.etag().map(|e| e.trim_matches('"').to_owned()) }
}

/// Every object under the target's prefix, by key (the fs target's temp dir left out;
/// a folder reports no ETag, so its files' are computed as S3 would).
pub(crate) async fn list_remote(op: &Operator, target: &Target, threshold: u64, part: u64) -> anyhow::Result<HashMap<String, Remote>> {
    let mut remote = HashMap::new();
    for entry in op.list_with(target.prefix()).recursive(true).await.context("listing the backup")? {
        if !entry.metadata().is_dir() && !entry.path().starts_with(FS_TMP) {
            let mut r = remote_of(entry.metadata());
            if let (Target::Fs { root }, None) = (target, &r.etag) {
                r.etag = Some(local_etag(&root.join(entry.path()), threshold, part)?);
            }
            remote.insert(entry.path().to_owned(), r);
        }
    }
    Ok(remote)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| vars.get(k).cloned()
    }

    #[test]
    fn targets_and_missing_credentials() {
        let all = [("R2_ENDPOINT", "http://x"), ("R2_ACCESS_KEY_ID", "id"), ("R2_SECRET_ACCESS_KEY", "s3cr3t")];
        let t = Target::parse("s3://bucket", env(&all)).unwrap();
        assert_eq!(t.to_string(), "s3://bucket/backup/materia/landing/");
        assert_eq!(Target::parse("s3://b/x/y/", env(&all)).unwrap().prefix(), "x/y/");
        assert_eq!(Target::parse("fs:/tmp/b", env(&[])).unwrap().to_string(), "fs:/tmp/b");
        let e = Target::parse("s3://bucket", env(&[("R2_ACCESS_KEY_ID", "id")])).err().unwrap();
        assert_eq!(e.0, "missing R2_ENDPOINT, R2_SECRET_ACCESS_KEY for target s3://bucket/backup/materia/landing/");
        assert!(Target::parse("ftp://x", env(&all)).is_err());
        assert!(Target::parse("fs:relative", env(&all)).is_err());
        let debug = format!("{}", Target::parse("s3://bucket", env(&all)).unwrap());
        assert!(!debug.contains("s3cr3t"));
    }
}
