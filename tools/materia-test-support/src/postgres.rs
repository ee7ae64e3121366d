//! A real PostgreSQL (Debian's `postgresql` package, as `scripts/setup-dev.sh --tests`
//! installs it) for the DuckLake catalog: `initdb` into a directory of its own (a test's
//! directory is root's alone), trust authentication (or, with a password, scram over TCP),
//! listening on 127.0.0.1 at a free
//! port, stopped and removed on drop. The package starts no server of its own here; as
//! root, the server runs as the `postgres` user (PostgreSQL refuses root).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// A running PostgreSQL, stopped (immediately) on drop.
pub struct Postgres {
    _dir: tempfile::TempDir,
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    /// The `postgres` user's password over TCP, when it has one (else trust).
    password: Option<String>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// The newest installed server's bin dir (`/usr/lib/postgresql/<major>/bin`).
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin): &(u32, PathBuf)| bin.join("pg_ctl").exists() && bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

impl Postgres {
    /// Start one, trusting every connection; None, with a SKIPPED line, when no server
    /// is installed.
    pub fn start() -> Option<Postgres> {
        Postgres::start_with(None)
    }

    /// Start one whose TCP connections must give `password` (scram-sha-256), as a real
    /// catalog's would: what proves a client got its password.
    pub fn start_with_password(password: &str) -> Option<Postgres> {
        Postgres::start_with(Some(password))
    }

    fn start_with(password: Option<&str>) -> Option<Postgres> {
        let Some(bin) = server_bin() else {
            eprintln!("SKIPPED: no PostgreSQL server here (/usr/lib/postgresql/*/bin; scripts/setup-dev.sh --tests installs it)");
            return None;
        };
        let as_postgres = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let tmp = tempfile::Builder::new().prefix("materia-postgres-").tempdir().expect("a dir for PostgreSQL");
        let dir = tmp.path().to_owned();
        if as_postgres {
            let ok = Command::new("chown").arg("postgres:").arg(&dir).status().is_ok_and(|s| s.success());
            assert!(ok, "chown postgres {}", dir.display());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let pg = Postgres { _dir: tmp, bin, data: dir.join("data"), as_postgres, password: password.map(str::to_owned), port }; // stopped on every way out
        let mut initdb = vec!["-D".to_owned(), pg.data.display().to_string(), "-U".into(), "postgres".into(), "--no-sync".into()];
        if let Some(pw) = password {
            let file = dir.join("pwfile");
            std::fs::write(&file, pw).unwrap();
            if as_postgres {
                assert!(Command::new("chown").arg("postgres:").arg(&file).status().is_ok_and(|s| s.success()));
            }
            initdb.extend(["--auth-local=trust".into(), "--auth-host=scram-sha-256".into(), format!("--pwfile={}", file.display())]);
        } else {
            initdb.push("--auth=trust".into());
        }
        let out = pg.run("initdb", &initdb.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let options = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", dir.display());
        let log = dir.join("server.log").display().to_string();
        let out = pg.run("pg_ctl", &["-D", &pg.data.display().to_string(), "-o", &options, "-l", &log, "-w", "-t", "60", "start"]);
        assert!(out.status.success(), "pg_ctl start: {}{}", String::from_utf8_lossy(&out.stderr), std::fs::read_to_string(&log).unwrap_or_default());
        crate::wait_until("PostgreSQL to listen", Duration::from_secs(30), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        Some(pg)
    }

    /// A program of the server's bin dir, as the user that owns the data dir.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        if let Some(pw) = &self.password {
            c.env("PGPASSWORD", pw);
        }
        c.args(args).current_dir("/").output().unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Create a database.
    pub fn create_db(&self, name: &str) {
        let out = self.run("createdb", &["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name]);
        assert!(out.status.success(), "createdb {name}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A libpq connection string for `db`.
    pub fn conninfo(&self, db: &str) -> String {
        format!("dbname={db} host=127.0.0.1 port={} user=postgres", self.port)
    }

    /// `psql -At -c sql` against `db`: its output.
    pub fn query(&self, db: &str, sql: &str) -> String {
        let out = self.run("psql", &["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", db, "-At", "-c", sql]);
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run("pg_ctl", &["-D", &self.data.display().to_string(), "-m", "immediate", "-w", "stop"]);
    }
}
