//! Conditional GETs with bounded retries, streamed to an unnamed temp file.
//!
//! The body goes to an `O_TMPFILE` file in the landing dir (it has no name, so a killed
//! download leaves nothing behind) and is checked against `Content-Length`. Timeouts,
//! connection errors, cut bodies, 408, 429 and 5xx are retried with exponential backoff
//! and jitter, honouring `Retry-After`, within a total time budget.

use std::fs::File;
use std::hash::{BuildHasher as _, Hasher as _};
use std::io::{self, Read as _, Seek as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, anyhow};
use materia_common::ProgressBar;
use materia_common::exit::BadInput;
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use reqwest::header::{self, HeaderMap, HeaderValue};

/// How hard to try.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// First backoff delay; doubles each retry (capped at 60 s), with jitter.
    pub base_delay: Duration,
    /// Total time one URL may take, retries included.
    pub budget: Duration,
    /// The whole run's deadline: no request starts, no body read continues and no retry
    /// waits past it, however slowly a server trickles bytes.
    pub deadline: Instant,
    /// Sizes.
    pub limits: Limits,
}

/// The message of a run stopped by its deadline (`--run-timeout`).
pub fn deadline_error() -> anyhow::Error {
    anyhow!("the run's deadline passed (--run-timeout)")
}

/// Stored validators for a conditional GET.
#[derive(Debug, Default, Clone)]
pub struct Validators {
    /// ETag last seen.
    pub etag: Option<String>,
    /// Last-Modified last seen.
    pub last_modified: Option<String>,
}

/// What the server answered.
#[derive(Debug)]
pub enum Fetched {
    /// 304: what we have is current.
    NotModified,
    /// 404.
    NotFound,
    /// 200 with a complete body in an unnamed temp file (rewound).
    Body {
        /// The body.
        file: File,
        /// Its length.
        bytes: u64,
        /// The new validators.
        validators: Validators,
    },
}

/// A fetch's result and how many attempts it took.
#[derive(Debug)]
pub struct FetchResult {
    /// Attempts made.
    pub attempts: u32,
    /// Last HTTP status seen.
    pub status: Option<u16>,
    /// What came of it.
    pub result: anyhow::Result<Fetched>,
}

/// How far this machine's clock may be off a server's `Date` before nothing is landed.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(24 * 3600);

/// What a server's answer may be.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest body accepted.
    pub max_download_bytes: u64,
    /// ETags longer than this are not kept (nor sent back).
    pub max_etag_bytes: usize,
}

/// The HTTP client every fetch uses: `timeout` bounds connecting and each read, so a
/// stalled server is detected without limiting the size of a download. Redirects are
/// followed (at most 5) only to `hosts` (the base URL's host and `--allow-redirect-host`),
/// and never from https to http.
pub fn client(timeout: Duration, hosts: Vec<String>) -> anyhow::Result<Client> {
    let policy = reqwest::redirect::Policy::custom(move |attempt| match redirect_refusal(attempt.previous(), attempt.url(), &hosts) {
        Some(why) => attempt.error(why),
        None => attempt.follow(),
    });
    Client::builder()
        .user_agent(concat!("materia-psd-extract/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(timeout)
        .timeout(timeout)
        .redirect(policy)
        .build()
        .context("building the HTTP client")
}

/// Why a redirect from `previous` (the URLs so far) to `next` is refused, if it is: more
/// than 5, from https to anything else, or to a host not in `hosts`.
fn redirect_refusal(previous: &[reqwest::Url], next: &reqwest::Url, hosts: &[String]) -> Option<String> {
    let host = next.host_str().unwrap_or("");
    if previous.len() > 5 {
        Some("more than 5 redirects".into())
    } else if previous.last().is_some_and(|u| u.scheme() == "https") && next.scheme() != "https" {
        Some(format!("a redirect from https to {next} is refused"))
    } else if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        Some(format!("a redirect to another host ({host}) is refused; allow it with --allow-redirect-host"))
    } else {
        None
    }
}

enum Failure {
    Retry { err: anyhow::Error, retry_after: Option<Duration> },
    Fatal(anyhow::Error),
}

/// GET `url` conditionally, retrying transient failures under `policy`.
pub fn fetch(client: &Client, url: &str, known: &Validators, policy: &RetryPolicy, tmp_dir: &Path, bar: &ProgressBar) -> FetchResult {
    let start = Instant::now();
    let mut status = None;
    for attempt in 1.. {
        let failure = match attempt_once(client, url, known, policy, tmp_dir, bar, &mut status) {
            Ok(fetched) => return FetchResult { attempts: attempt, status, result: Ok(fetched) },
            Err(f) => f,
        };
        let (err, retry_after) = match failure {
            Failure::Fatal(err) => return FetchResult { attempts: attempt, status, result: Err(err) },
            Failure::Retry { err, retry_after } => (err, retry_after),
        };
        if attempt > policy.retries {
            let err = err.context(format!("giving up after {attempt} attempts"));
            return FetchResult { attempts: attempt, status, result: Err(err) };
        }
        let delay = retry_after.unwrap_or_else(|| backoff(policy.base_delay, attempt));
        if start.elapsed() + delay > policy.budget {
            let err = err.context(format!(
                "giving up after {attempt} attempts: the next retry (in {} s) would exceed the retry budget of {} s",
                delay.as_secs_f32().ceil(),
                policy.budget.as_secs()
            ));
            return FetchResult { attempts: attempt, status, result: Err(err) };
        }
        if Instant::now() + delay > policy.deadline {
            let err = err.context(format!("giving up after {attempt} attempts: the next retry would pass the run's deadline (--run-timeout)"));
            return FetchResult { attempts: attempt, status, result: Err(err) };
        }
        log::warn!("{url}: {}; retry {attempt}/{} in {:.1} s", materia_common::exit::one_line(&err), policy.retries, delay.as_secs_f32());
        std::thread::sleep(delay);
    }
    unreachable!("the loop returns")
}

fn attempt_once(
    client: &Client,
    url: &str,
    known: &Validators,
    policy: &RetryPolicy,
    tmp_dir: &Path,
    bar: &ProgressBar,
    status_out: &mut Option<u16>,
) -> Result<Fetched, Failure> {
    let (deadline, limits) = (policy.deadline, &policy.limits);
    if Instant::now() >= deadline {
        return Err(Failure::Fatal(deadline_error()));
    }
    let mut req = client.get(url);
    let etag = known.etag.as_deref().filter(|e| e.len() <= limits.max_etag_bytes);
    if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
        req = req.header(header::IF_NONE_MATCH, etag);
    } else if let Some(lm) = known.last_modified.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
        req = req.header(header::IF_MODIFIED_SINCE, lm);
    }
    let resp = req.send().map_err(|e| {
        if e.is_redirect() {
            Failure::Fatal(anyhow::Error::new(e).context("redirect refused"))
        } else {
            Failure::Retry { err: transport(e), retry_after: None }
        }
    })?;
    let status = resp.status();
    *status_out = Some(status.as_u16());
    match status {
        StatusCode::OK => {}
        StatusCode::NOT_MODIFIED => return Ok(Fetched::NotModified),
        StatusCode::NOT_FOUND => return Ok(Fetched::NotFound),
        s if s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT || s.is_server_error() => {
            let retry_after = retry_after(resp.headers());
            return Err(Failure::Retry { err: anyhow!("server answered HTTP {s}"), retry_after });
        }
        s => return Err(Failure::Fatal(anyhow!("server answered HTTP {s}"))),
    }
    // A release's month comes from this machine's clock: a clock far off the server's
    // would file it under the wrong month, for good (landing is immutable).
    if let Some(server) = resp.headers().get(header::DATE).and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok()) {
        let skew = SystemTime::now().duration_since(server).or_else(|e| Ok::<_, ()>(e.duration())).unwrap_or_default();
        if skew > MAX_CLOCK_SKEW {
            let err = anyhow!(
                "this machine's clock is {} hours off the server's (Date: {}): a release would be filed under the wrong month; fix the clock (timedatectl)",
                skew.as_secs() / 3600,
                httpdate::fmt_http_date(server)
            );
            return Err(Failure::Fatal(err));
        }
    }
    let mut validators =
        Validators { etag: header_text(resp.headers(), header::ETAG), last_modified: header_text(resp.headers(), header::LAST_MODIFIED) };
    if let Some(e) = validators.etag.take_if(|e| e.len() > limits.max_etag_bytes) {
        // Not kept: sent back, it could make a proxy refuse every later request.
        log::warn!(
            "{url}: an ETag of {} bytes is not kept (--max-etag-bytes {}); Last-Modified or the content's hash stand in",
            e.len(),
            limits.max_etag_bytes
        );
    }
    let expected = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(n) = expected.filter(|&n| n > limits.max_download_bytes) {
        let err = BadInput(format!("the server announces {n} bytes, over the limit of {} (--max-download-mib)", limits.max_download_bytes));
        return Err(Failure::Fatal(err.into()));
    }
    let mut file =
        tempfile::tempfile_in(tmp_dir).with_context(|| format!("creating a temp file in {}", tmp_dir.display())).map_err(Failure::Fatal)?;
    bar.reset();
    if let Some(n) = expected {
        bar.set_length(n);
    }
    let bytes = copy_body(resp, &mut file, deadline, limits.max_download_bytes, bar)?;
    if let Some(expected) = expected
        && bytes != expected
    {
        return Err(Failure::Retry { err: anyhow!("download truncated: got {bytes} of {expected} bytes (Content-Length)"), retry_after: None });
    }
    file.rewind().context("rewinding the download").map_err(Failure::Fatal)?;
    Ok(Fetched::Body { file, bytes, validators })
}

fn copy_body(mut resp: Response, file: &mut File, deadline: Instant, max: u64, bar: &ProgressBar) -> Result<u64, Failure> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        // Each read is bounded by the client's timeout; a server that trickles a byte
        // at a time is bounded by the run's deadline.
        if Instant::now() >= deadline {
            return Err(Failure::Fatal(deadline_error().context(format!("download stopped after {total} bytes"))));
        }
        let n = match resp.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let err = anyhow!("connection lost after {total} bytes of the body: {}", io_chain(&e));
                return Err(Failure::Retry { err, retry_after: None });
            }
        };
        total += n as u64;
        if total > max {
            let err = BadInput(format!("the download is over the limit of {max} bytes (--max-download-mib)"));
            return Err(Failure::Fatal(err.into()));
        }
        file.write_all(&buf[..n]).context("writing the download to a temp file").map_err(Failure::Fatal)?;
        bar.set_position(total);
    }
}

fn io_chain(e: &io::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        let m = cause.to_string();
        if !s.contains(&m) {
            s = format!("{s}: {m}");
        }
        src = cause.source();
    }
    s
}

fn transport(e: reqwest::Error) -> anyhow::Error {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // reqwest's Display omits the cause; the chain shows it on one line.
    anyhow::Error::new(e).context(kind)
}

fn header_text(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

/// `base * 2^(attempt-1)`, capped at 60 s, scaled by a random factor in [0.5, 1).
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << (attempt - 1).min(16)).min(Duration::from_secs(60));
    let random = std::hash::RandomState::new().build_hasher().finish();
    let factor = 0.5 + (random % 1000) as f64 / 2000.0;
    exp.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_stay_on_the_allowed_hosts_and_never_leave_https() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        let hosts = vec!["apps.fas.usda.gov".to_owned()];
        let from = [url("https://apps.fas.usda.gov/psdonline/downloads/x.zip")];
        assert_eq!(redirect_refusal(&from, &url("https://APPS.fas.usda.gov/other/x.zip"), &hosts), None);
        assert_eq!(
            redirect_refusal(&from, &url("http://apps.fas.usda.gov/x.zip"), &hosts).as_deref(),
            Some("a redirect from https to http://apps.fas.usda.gov/x.zip is refused")
        );
        assert!(redirect_refusal(&from, &url("https://evil.example/x.zip"), &hosts).unwrap().contains("another host (evil.example)"));
        let plain = [url("http://127.0.0.1:8000/x.zip")];
        assert_eq!(redirect_refusal(&plain, &url("http://127.0.0.1:8000/y.zip"), &["127.0.0.1".into()]), None);
        assert_eq!(redirect_refusal(&vec![from[0].clone(); 6], &from[0], &hosts).as_deref(), Some("more than 5 redirects"));
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        for attempt in 1..6 {
            let d = backoff(base, attempt);
            let full = base * (1 << (attempt - 1));
            assert!(d >= full / 2 && d < full, "{attempt}: {d:?}");
        }
        assert!(backoff(base, 30) <= Duration::from_secs(60));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        h.insert(header::RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120), "{d:?}");
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
