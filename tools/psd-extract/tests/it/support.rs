//! Fixtures (hand-made PSD zips, the real release from ../shared) and a runner for the
//! psd-extract binary in its own temp data dir.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const HEADER: &str = "Commodity_Code,Commodity_Description,Country_Code,Country_Name,Market_Year,\
Calendar_Year,Month,Attribute_ID,Attribute_Description,Unit_ID,Unit_Description,Value";

/// A PSD-shaped CSV with `rows` rows; `seed` makes the content distinct.
pub fn psd_csv(rows: usize, seed: &str) -> Vec<u8> {
    let mut s = format!("{HEADER}\r\n");
    for i in 0..rows {
        s.push_str(&format!(
            "0711100,\"Coffee, Green\",BR,Brazil,{},2022,12,028,Production,02,\"(1000 60 KG BAGS)\",{}.{:04}\r\n",
            1960 + i % 64,
            i,
            seed.len() * 7 + i % 10
        ));
    }
    s.push_str(&format!("0711100,\"Coffee, Green\",XX,{seed},2023,2022,12,057,\"Rst,Ground Dom. Consum\",02,\"(1000 60 KG BAGS)\",1.0000\r\n"));
    s.into_bytes()
}

/// A zip holding `entries`, deflated, as USDA serves it.
pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    zip_with(entries, zip::CompressionMethod::Deflated)
}

fn zip_with(entries: &[(&str, &[u8])], method: zip::CompressionMethod) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, body) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(body).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A valid PSD zip of `rows` rows.
pub fn psd_zip(rows: usize, seed: &str) -> Vec<u8> {
    zip_of(&[("psd_coffee.csv", &psd_csv(rows, seed))])
}

/// A zip whose entry fails its CRC check: stored (not deflated), one body byte flipped.
pub fn corrupt_zip() -> Vec<u8> {
    let name = "psd_coffee.csv";
    let mut z = zip_with(&[(name, &psd_csv(50, "corrupt"))], zip::CompressionMethod::Stored);
    let offset = 30 + name.len() + 500; // local header + name, then into the data
    z[offset] ^= 0x55;
    z
}

/// The real USDA release, or `None` (with a note on stderr) when ../shared is absent.
pub fn real_release() -> Option<Vec<u8>> {
    let path = shared_fixture();
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("SKIPPED: the real PSD release is not available at {} ({e}); CI always has it", path.display());
            None
        }
    }
}

pub fn shared_fixture() -> PathBuf {
    match std::env::var_os("MATERIA_SHARED") {
        Some(dir) => PathBuf::from(dir).join("fixtures/psd_coffee_csv.zip"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/psd_coffee_csv.zip"),
    }
}

/// The current UTC month as `YYYY/MM`, as psd-extract names the current file's dir.
pub fn current_month_dir() -> String {
    let out = Command::new("date").args(["-u", "+%Y/%m"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// One test's data dir and a way to run the binary in it.
pub struct Env {
    _tmp: materia_test_support::TestDir,
    pub root: PathBuf,
    pub data: PathBuf,
}

pub use materia_test_support::Run;

impl Env {
    pub fn new() -> Env {
        let tmp = materia_test_support::temp_dir();
        let root = tmp.path().to_owned();
        let data = root.join("data");
        Env { _tmp: tmp, root, data }
    }

    /// The binary, with this env's data dir and a clean environment.
    pub fn cmd(&self) -> Command {
        self.command(env!("CARGO_BIN_EXE_psd-extract"))
    }

    /// `program` with this env's data dir and none of the tools' variables from outside.
    pub fn command(&self, program: &str) -> Command {
        let mut c = materia_test_support::tool(program);
        c.env("MATERIA_DATA_DIR", &self.data);
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd().args(args).output().unwrap().into()
    }

    /// Fetch from `base` with fast retries, plus `extra` flags.
    pub fn fetch(&self, base: &str, extra: &[&str]) -> Run {
        self.run(&self.fetch_args(base, extra).iter().map(String::as_str).collect::<Vec<_>>())
    }

    pub fn fetch_args(&self, base: &str, extra: &[&str]) -> Vec<String> {
        let defaults = [("--retries", "3"), ("--retry-delay-ms", "20"), ("--timeout", "5")];
        let mut a = vec!["--base-url".to_owned(), base.to_owned()];
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                a.extend([flag.to_owned(), value.to_owned()]);
            }
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.data.join("landing/.state.sqlite")).unwrap()
    }

    pub fn landing(&self) -> PathBuf {
        self.data.join("landing")
    }

    /// Every file under landing/ except the state DB, relative, sorted.
    pub fn landed(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.landing(), &self.landing(), &mut out);
        out.retain(|p| !p.starts_with(".state.sqlite"));
        out.sort();
        out
    }

    /// (status, error) of the newest run.
    pub fn last_run(&self) -> (String, Option<String>) {
        self.db().query_row("SELECT status, error FROM runs ORDER BY run_id DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap()
    }

    pub fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// Decompress a landed file.
pub fn gunzip(path: &Path) -> Vec<u8> {
    let out = Command::new("gzip").arg("-dc").arg(path).output().unwrap();
    assert!(out.status.success(), "gzip -dc {}", path.display());
    out.stdout
}
