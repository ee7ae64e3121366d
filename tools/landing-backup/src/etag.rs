//! S3 ETags computed locally: what R2 answers for an object, so an upload or a restore is
//! confirmed without trusting the transfer.

use std::path::Path;

use md5::{Digest as _, Md5};

/// The S3 ETag of bytes fed in order, as R2 reports it for an object uploaded whole
/// (the MD5) or, from `threshold` bytes on, in `part` sized parts (the MD5 of the
/// parts' MD5s, then `-N`). Streams: memory is two digests and one per part.
pub(crate) struct EtagHasher {
    threshold: u64,
    part: u64,
    whole: Md5,
    current: Md5,
    in_part: u64,
    parts: Vec<u8>,
    bytes: u64,
}

impl EtagHasher {
    pub(crate) fn new(threshold: u64, part: u64) -> Self {
        EtagHasher { threshold, part: part.max(1), whole: Md5::new(), current: Md5::new(), in_part: 0, parts: Vec::new(), bytes: 0 }
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        self.whole.update(data);
        self.bytes += data.len() as u64;
        while !data.is_empty() {
            let take = data.len().min((self.part - self.in_part) as usize);
            self.current.update(&data[..take]);
            self.in_part += take as u64;
            data = &data[take..];
            if self.in_part == self.part {
                self.parts.extend_from_slice(&std::mem::take(&mut self.current).finalize());
                self.in_part = 0;
            }
        }
    }

    pub(crate) fn finish(mut self) -> String {
        if self.bytes < self.threshold {
            return materia_common::hex(&self.whole.finalize());
        }
        if self.in_part > 0 {
            self.parts.extend_from_slice(&self.current.finalize());
        }
        let n = self.parts.len() / 16;
        format!("{}-{n}", materia_common::hex(&Md5::digest(&self.parts)))
    }
}

/// The S3 ETag of a file as it will be uploaded (see [`EtagHasher`]).
pub(crate) fn local_etag(path: &Path, threshold: u64, part: u64) -> anyhow::Result<String> {
    let mut h = EtagHasher::new(threshold, part);
    materia_common::read_chunks(path, |chunk| h.update(chunk))?;
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_etags_follow_s3() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(local_etag(&p, 100, 5 << 20).unwrap(), "5d41402abc4b2a76b9719d911017c592");
        // Multipart with 2-byte parts: md5(md5("he") + md5("ll") + md5("o")) + "-3".
        let parts: Vec<u8> = [&b"he"[..], b"ll", b"o"].iter().flat_map(|p| Md5::digest(p).to_vec()).collect();
        let want = format!("{}-3", materia_common::hex(&Md5::digest(&parts)));
        assert_eq!(local_etag(&p, 1, 2).unwrap(), want);
    }
}
