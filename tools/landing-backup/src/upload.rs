//! Backing up one landing file: compare with the remote, upload (single or multipart,
//! conditional), confirm what the server stored.

use anyhow::anyhow;
use materia_common::landing::LandingFile;
use opendal::{ErrorKind, Operator};

use crate::etag::local_etag;
use crate::target::{Remote, remote_of};

/// One file's outcome.
pub(crate) enum Done {
    Uploaded { etag: Option<String> },
    Adopted { etag: Option<String> },
    Alert(String),
    Failed(anyhow::Error),
}

#[derive(Debug, Clone)]
pub(crate) struct Cfg {
    pub(crate) threshold: u64,
    pub(crate) part: u64,
    pub(crate) if_not_exists: bool,
}

/// Make sure `key` holds `file`: compare with what the remote has (if known), upload
/// if absent, and confirm with a HEAD.
pub(crate) async fn back_up(op: Operator, key: String, file: LandingFile, known: Option<Remote>, cfg: Cfg) -> Done {
    let (f2, cfg2) = (file.clone(), cfg.clone());
    let local = match tokio::task::spawn_blocking(move || local_etag(&f2.abs, cfg2.threshold, cfg2.part)).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return Done::Failed(e),
        Err(e) => return Done::Failed(anyhow!(e)),
    };
    let matches = |r: &Remote| r.bytes == file.bytes && r.etag.as_ref().is_none_or(|e| *e == local);
    let alert = |r: &Remote| {
        Done::Alert(format!(
            "remote {key} differs from landing/{} ({} bytes, ETag {} remote; {} bytes, ETag {local} local): not overwritten",
            file.rel,
            r.bytes,
            r.etag.as_deref().unwrap_or("?"),
            file.bytes
        ))
    };
    if let Some(r) = &known {
        return if matches(r) { Done::Adopted { etag: r.etag.clone() } } else { alert(r) };
    }
    match upload(&op, &key, &file, &cfg).await {
        // The server's ETag of what it stored is the MD5 of what we sent (or the
        // multipart form of it): when it matches, content and size are confirmed.
        Ok(meta) if meta.etag().map(|e| e.trim_matches('"')) == Some(local.as_str()) => {
            return Done::Uploaded { etag: Some(local) };
        }
        Ok(_) => {}
        // Someone (a run whose answer was lost) stored it meanwhile: check it below.
        Err(e) if e.kind() == ErrorKind::ConditionNotMatch => {}
        Err(e) => return Done::Failed(anyhow!(e).context(format!("uploading landing/{}", file.rel))),
    }
    // No ETag in the answer (a folder target, a 412): confirm with a HEAD. A folder
    // has no ETag: the one of what was written (atomically, by us) is recorded, so a
    // restore can check the copy against it.
    match op.stat(&key).await {
        Ok(meta) => {
            let r = remote_of(&meta);
            if matches(&r) { Done::Uploaded { etag: r.etag.or(Some(local)) } } else { alert(&r) }
        }
        Err(e) => Done::Failed(anyhow!(e).context(format!("confirming {key} after its upload"))),
    }
}

/// Upload `file` to `key`; returns what the server said about the stored object.
pub(crate) async fn upload(op: &Operator, key: &str, file: &LandingFile, cfg: &Cfg) -> opendal::Result<opendal::Metadata> {
    let io = |e: std::io::Error| opendal::Error::new(ErrorKind::Unexpected, "reading the landing file").set_source(e);
    if file.bytes < cfg.threshold {
        let data = tokio::fs::read(&file.abs).await.map_err(io)?;
        return op.write_with(key, data).if_not_exists(cfg.if_not_exists).await;
    }
    use tokio::io::AsyncReadExt as _;
    let mut w = op.writer_with(key).chunk(cfg.part as usize).if_not_exists(cfg.if_not_exists).await?;
    let mut f = tokio::fs::File::open(&file.abs).await.map_err(io)?;
    let mut buf = vec![0u8; cfg.part as usize];
    let result: opendal::Result<opendal::Metadata> = async {
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                let n = f.read(&mut buf[filled..]).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            w.write(buf[..filled].to_vec()).await?;
        }
        w.close().await
    }
    .await;
    if result.is_err() {
        // Leave no half upload behind (R2 and S3 keep parts until aborted).
        if let Err(e) = w.abort().await {
            log::warn!("aborting the multipart upload of {key}: {e}");
        }
    }
    result
}
