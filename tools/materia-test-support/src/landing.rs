//! Landed files made by their real producer: a test that needs a release in the landing
//! zone has psd-extract land it (`psd-extract import`), with every check psd-extract
//! makes, under the name psd-extract gives it, recorded in the state DB as on a server.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tool the workspace builds, from the target dir this test binary is in
/// (`target/debug/NAME`): `cargo test --workspace` builds every tool before any test runs.
pub fn workspace_tool(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join(name);
    assert!(bin.exists(), "{} is not built: run the tests with cargo test --workspace", bin.display());
    bin
}

/// A zip as PSD Online serves it: one CSV entry, `psd_coffee.csv`, deflated.
pub fn psd_zip(csv: &[u8], out: &Path) {
    let tmp = out.with_extension("csv");
    std::fs::write(&tmp, csv).unwrap();
    let script = "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[2], 'w', zipfile.ZIP_DEFLATED) as z: z.write(sys.argv[1], 'psd_coffee.csv')";
    let ok = Command::new("python3").args(["-c", script]).arg(&tmp).arg(out).status().unwrap().success();
    assert!(ok, "zipping {}", out.display());
    std::fs::remove_file(&tmp).unwrap();
}

/// psd-extract lands `csv` as release `month` (`YYYY-MM`) in `data_dir`: the landed file's
/// path relative to `landing/` (`psd/YYYY/MM/….csv.gzip`), or None when psd-extract found
/// that content landed already (it lands no file twice).
pub fn land(data_dir: &Path, month: &str, csv: &[u8]) -> Option<String> {
    let zip = tempfile::Builder::new().suffix(".zip").tempfile().unwrap();
    psd_zip(csv, zip.path());
    let out = crate::tool(workspace_tool("psd-extract"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("import")
        .arg(zip.path())
        .args(["--release", month, "--source", "psd_coffee_csv.zip"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {
            let landed = String::from_utf8(out.stdout).unwrap();
            let landing = std::path::absolute(data_dir.join("landing")).unwrap();
            let path = Path::new(landed.trim()).strip_prefix(&landing).unwrap_or_else(|_| panic!("{landed} not under {}", landing.display()));
            Some(path.to_str().unwrap().to_owned())
        }
        Some(3) => None,
        _ => panic!("psd-extract import ({month}): {stderr}"),
    }
}
