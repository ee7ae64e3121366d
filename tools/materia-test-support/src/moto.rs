//! moto, the S3 server the tests run against (from the test venv scripts/setup-dev.sh
//! makes), on 127.0.0.1 with one bucket `bkt`, killed on drop.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A moto S3 server on 127.0.0.1 with one bucket, killed on drop.
pub struct Moto {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Moto::start_on(port)
    }

    /// Kill it (losing everything it held) and start an empty one on the same port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        *self = Moto::start_on(self.port);
    }

    pub fn start_on(port: u16) -> Moto {
        // Where scripts/setup-dev.sh installs it.
        let bin = crate::test_venv().join("bin/moto_server");
        assert!(bin.exists(), "moto is not installed at {}: run scripts/setup-dev.sh", bin.display());
        let child = Command::new(bin).args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let m = Moto { child, port };
        crate::wait_until("moto to start", Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        // Unsigned CreateBucket (a signed one with region auto is refused by moto).
        assert_eq!(m.http("PUT", "/bkt", b"").0, 200);
        m
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A raw, unsigned request (moto does not check signatures): the test's own view.
    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let (status, body) = self.http_bytes(method, path, body);
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Status and raw body.
    pub fn http_bytes(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        // moto does not check signatures, but objects the tool wrote belong to its key:
        // present a (dummy) credential, except for the unsigned CreateBucket.
        let auth = if path == "/bkt" {
            ""
        } else {
            "Authorization: AWS4-HMAC-SHA256 Credential=test-key-id/20260101/auto/s3/aws4_request, SignedHeaders=host, Signature=0\r\n"
        };
        write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
        s.write_all(body).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").map_or(out.len(), |p| p + 4);
        let head = String::from_utf8_lossy(&out[..end]).into_owned();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, out[end..].to_vec())
    }

    /// (key, size, etag) of every object.
    pub fn objects(&self) -> Vec<(String, u64, String)> {
        let (_, body) = self.http("GET", "/bkt?list-type=2", b"");
        body.split("<Contents>")
            .skip(1)
            .map(|c| {
                let tag = |t: &str| c.split(&format!("<{t}>")).nth(1).unwrap().split(&format!("</{t}>")).next().unwrap().to_owned();
                let key = tag("Key").replace("&amp;", "&");
                (key, tag("Size").parse().unwrap(), tag("ETag").replace("&#34;", "").replace('"', ""))
            })
            .collect()
    }

    pub fn object(&self, key: &str) -> Vec<u8> {
        let (status, body) = self.http_bytes("GET", &format!("/bkt/{}", encode(key)), b"");
        assert_eq!(status, 200, "{key}");
        body
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A key as it goes in a URL path.
pub fn encode(key: &str) -> String {
    key.bytes().map(|b| if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}
