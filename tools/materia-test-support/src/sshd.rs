//! A real sshd on 127.0.0.1 (Debian's openssh-server) for tests, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running sshd.
pub struct Sshd {
    child: Child,
    dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An ed25519 key pair without passphrase at `path` (and `path.pub`).
pub fn keygen(path: &Path) {
    let o = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(path).output().expect("running ssh-keygen");
    assert!(o.status.success(), "{o:?}");
}

impl Sshd {
    /// Start one with its files in `dir`, letting in the public keys in `authorized_keys`
    /// (any user, root included). `None`, after a SKIPPED line, when this machine has no
    /// sshd or it does not start.
    pub fn start(dir: &Path, authorized_keys: &str) -> Option<Sshd> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.exists() || std::fs::create_dir_all("/run/sshd").is_err() {
            eprintln!("SKIPPED: no sshd here (needs root and openssh-server, as scripts/setup-dev.sh --tests installs)");
            return None;
        }
        std::fs::create_dir_all(dir).expect("creating the sshd dir");
        keygen(&dir.join("host_key"));
        std::fs::write(dir.join("authorized_keys"), authorized_keys).expect("writing authorized_keys");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\nPidFile {d}/sshd.pid\n\
             StrictModes no\nPermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n",
            d = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).expect("writing sshd_config");
        let child =
            Command::new(sshd).arg("-D").arg("-e").arg("-f").arg(dir.join("sshd_config")).stderr(Stdio::null()).spawn().expect("starting sshd");
        let server = Sshd { child, dir: dir.to_owned(), port }; // killed on every way out
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                eprintln!("SKIPPED: sshd did not start");
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    /// Its host key as a known_hosts line: `[127.0.0.1]:PORT TYPE KEY`.
    pub fn known_hosts_line(&self) -> String {
        let host_pub = std::fs::read_to_string(self.dir.join("host_key.pub")).expect("reading the host key");
        let mut f = host_pub.split_whitespace();
        format!("[127.0.0.1]:{} {} {}", self.port, f.next().unwrap_or_default(), f.next().unwrap_or_default())
    }
}
