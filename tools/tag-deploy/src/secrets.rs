//! A release's `.env.prod.sops`, decrypted with `sops` and split by who needs each key:
//! the lake's secrets ([`layout::LAKE_SECRETS`]) into `lake.env`, which only the
//! lakehouse's units read, everything else into the secrets file landing-backup reads.
//! Both mode 0600, both replaced on every deploy (a key removed from `.env.prod.sops` is
//! gone from the server) and both restored by a switch-back. Never logged.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use materia_common::layout;

/// The release's encrypted dotenv file, relative to the release.
pub const SOPS_FILE: &str = ".env.prod.sops";

/// The files a deploy writes the secrets to.
#[derive(Debug, Clone)]
pub struct Files {
    /// Every key but the lake's (landing-backup's R2 credentials).
    pub general: PathBuf,
    /// The lake's keys alone, beside `general`.
    pub lake: PathBuf,
}

impl Files {
    pub fn beside(general: PathBuf) -> Self {
        let lake = general.parent().unwrap_or(Path::new(".")).join(layout::LAKE_ENV_FILE);
        Files { general, lake }
    }

    /// Both files' contents now (`None`: absent), to restore with [`Files::restore`].
    pub fn read(&self) -> [Option<Vec<u8>>; 2] {
        [std::fs::read(&self.general).ok(), std::fs::read(&self.lake).ok()]
    }

    pub fn restore(&self, before: [Option<Vec<u8>>; 2]) -> anyhow::Result<()> {
        let [general, lake] = before;
        for (path, bytes) in [(&self.general, general), (&self.lake, lake)] {
            match bytes {
                Some(b) => write(path, &b)?,
                None => {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        Ok(())
    }
}

/// Decrypt a release's dotenv secrets with sops into `files`.
pub fn decrypt(sops_file: &Path, files: &Files, tag: &str) -> anyhow::Result<()> {
    let mut c = std::process::Command::new("sops");
    c.args(["--disable-version-check", "--decrypt", "--input-type", "dotenv", "--output-type", "dotenv"]).arg(sops_file).env_clear();
    for v in ["PATH", "HOME", "XDG_CONFIG_HOME", "SOPS_AGE_KEY_FILE"] {
        if let Some(val) = std::env::var_os(v) {
            c.env(v, val);
        }
    }
    let out = match c.stdin(std::process::Stdio::null()).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("{tag} has {SOPS_FILE} but sops is not installed (not on PATH)")
        }
        Err(e) => return Err(anyhow!(e).context("running sops")),
    };
    if !out.status.success() {
        // sops' own message names the problem (no key, wrong key); it never holds the secrets.
        let why = String::from_utf8_lossy(&out.stderr).lines().find(|l| !l.trim().is_empty()).unwrap_or("").to_owned();
        anyhow::bail!("sops could not decrypt {SOPS_FILE} of {tag}: {why}");
    }
    let (general, lake) = split(&out.stdout);
    write(&files.general, &general)?;
    write(&files.lake, &lake)
}

/// The dotenv lines of the lake's keys, and all the others (comments and blank lines
/// stay with the others). Lines, not values: nothing is parsed beyond the key.
fn split(dotenv: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut general, mut lake) = (Vec::new(), Vec::new());
    for line in dotenv.split_inclusive(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(line);
        let key = text.trim_start().trim_start_matches("export ").split('=').next().unwrap_or("").trim();
        let to = if text.contains('=') && layout::LAKE_SECRETS.contains(&key) { &mut lake } else { &mut general };
        to.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            to.push(b'\n');
        }
    }
    (general, lake)
}

/// Write `bytes` to `path` atomically, readable by its owner only.
pub fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow!("bad secrets file {}", path.display()))?;
    let mut f = materia_common::atomic::AtomicFile::create_in(dir, name)?;
    f.file().set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.file().write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    f.commit_replace(name)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lake_keys_go_to_the_lake_file_and_nothing_else_does() {
        let input = b"R2_SECRET_ACCESS_KEY=r2\nPGPASSWORD=pg\n#comment\nMATERIA_LAKE_S3_SECRET=s3=x\nMATERIA_LAKE_S3_SECRET_OLD=no\nexport MATERIA_LAKE_S3_KEY_ID=id";
        let (general, lake) = super::split(input);
        assert_eq!(String::from_utf8(lake).unwrap(), "PGPASSWORD=pg\nMATERIA_LAKE_S3_SECRET=s3=x\nexport MATERIA_LAKE_S3_KEY_ID=id\n");
        assert_eq!(String::from_utf8(general).unwrap(), "R2_SECRET_ACCESS_KEY=r2\n#comment\nMATERIA_LAKE_S3_SECRET_OLD=no\n");
    }
}
