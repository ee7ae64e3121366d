//! A release's `.env.prod.sops`, decrypted with `sops` into the secrets file (mode 0600),
//! which every deploy replaces and a switch-back restores. Never logged.

use std::path::Path;

use anyhow::{Context as _, anyhow};

/// The release's encrypted dotenv file, relative to the release.
pub const SOPS_FILE: &str = ".env.prod.sops";

/// Decrypt a release's dotenv secrets with sops into `env_file`.
pub fn decrypt(sops_file: &Path, env_file: &Path, tag: &str) -> anyhow::Result<()> {
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
    write(env_file, &out.stdout)
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
