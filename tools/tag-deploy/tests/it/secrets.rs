//! `.env.prod.sops` decrypted on every deploy, owner-only, never logged; sops needed only
//! when a release has secrets.

use super::*;

/// sops and age as setup-dev.sh installs them, and a home with an age key where sops
/// looks by default. Returns (PATH with sops first, HOME, the key's public part).
fn secrets_setup(env: &Env) -> (String, PathBuf, String) {
    let venv = materia_test_support::test_venv();
    assert!(venv.join("bin/sops").exists(), "sops is not installed in {}: run scripts/setup-dev.sh", venv.display());
    let home = env._tmp.path().join("home");
    let keys = home.join(".config/sops/age/keys.txt");
    std::fs::create_dir_all(keys.parent().unwrap()).unwrap();
    let o = Command::new("age-keygen").arg("-o").arg(&keys).output().expect("age-keygen (Debian package age): run scripts/setup-dev.sh");
    assert!(o.status.success());
    let public = std::fs::read_to_string(&keys).unwrap().lines().find_map(|l| l.strip_prefix("# public key: ")).unwrap().to_owned();
    let path = format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap());
    (path, home, public)
}

fn encrypt(env: &Env, path: &str, public: &str, plain: &str) {
    let plain_file = env._tmp.path().join("plain.env");
    std::fs::write(&plain_file, plain).unwrap();
    let o = Command::new("sops")
        .env("PATH", path)
        .args(["--disable-version-check", "--encrypt", "--age", public, "--input-type", "dotenv", "--output-type", "dotenv"])
        .arg(&plain_file)
        .current_dir(env._tmp.path()) // not under this repository's .sops.yaml
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(env.src.join(".env.prod.sops"), o.stdout).unwrap();
}

#[test]
fn secrets_are_decrypted_on_every_deploy_owner_only_and_never_logged() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = Env::new();
    let (path, home, public) = secrets_setup(&env);
    encrypt(&env, &path, &public, "API_KEY=first-s3cret\n");
    env.commit("secrets");
    env.tag("v1");
    let src = env.src.display().to_string();
    let poll = || env.cmd(&["--remote", &src, "--build-cmd", "sh build.sh"]).env("PATH", &path).env("HOME", &home).output().unwrap();
    let o = poll();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let env_file = env.app.join("secrets.env");
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), "API_KEY=first-s3cret\n");
    assert_eq!(std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("s3cret") && !String::from_utf8_lossy(&o.stdout).contains("s3cret"));

    // A rotation in the next release takes effect.
    encrypt(&env, &path, &public, "API_KEY=second-s3cret\n");
    env.commit("rotate");
    env.tag("v2");
    assert_eq!(poll().status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), "API_KEY=second-s3cret\n");

    // The lake's secrets go to lake.env beside it, which only the lakehouse's units
    // read; the backup's stay in secrets.env.
    let lake_file = env.app.join("lake.env");
    assert_eq!(std::fs::read_to_string(&lake_file).unwrap(), "", "no lake secret yet");
    encrypt(&env, &path, &public, "API_KEY=second-s3cret\nPGPASSWORD=pg-s3cret\nMATERIA_LAKE_S3_SECRET=lake-s3cret\n");
    env.commit("lake");
    env.tag("v3");
    assert_eq!(poll().status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), "API_KEY=second-s3cret\n");
    assert_eq!(std::fs::read_to_string(&lake_file).unwrap(), "PGPASSWORD=pg-s3cret\nMATERIA_LAKE_S3_SECRET=lake-s3cret\n");
    assert_eq!(std::fs::metadata(&lake_file).unwrap().permissions().mode() & 0o777, 0o600);

    // A release whose health check fails gets its secrets taken back with it, both files.
    encrypt(&env, &path, &public, "API_KEY=third-s3cret\n");
    env.commit("bad");
    env.tag("v4");
    let o =
        env.cmd(&["--remote", &src, "--build-cmd", "sh build.sh", "--health-cmd", "false"]).env("PATH", &path).env("HOME", &home).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&env_file).unwrap(), "API_KEY=second-s3cret\n");
    assert_eq!(std::fs::read_to_string(&lake_file).unwrap(), "PGPASSWORD=pg-s3cret\nMATERIA_LAKE_S3_SECRET=lake-s3cret\n");
    assert_eq!(env.deployed_binary(), "v3");
}

#[test]
fn a_missing_sops_is_an_error_only_when_a_release_has_secrets() {
    let env = Env::new();
    let (path, _home, public) = secrets_setup(&env);
    let no_sops = "/usr/local/bin:/usr/bin:/bin";
    env.tag("v1");
    let src = env.src.display().to_string();
    let poll = || env.cmd(&["--remote", &src, "--build-cmd", "sh build.sh"]).env("PATH", no_sops).output().unwrap();
    assert_eq!(poll().status.code(), Some(0), "no .env.prod.sops: sops is not needed");
    encrypt(&env, &path, &public, "API_KEY=x\n");
    env.commit("secrets");
    env.tag("v2");
    let o = poll();
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("tag-deploy: error: v2 has .env.prod.sops but sops is not installed (not on PATH)"), "{stderr}");
    assert_eq!(env.deployed_binary(), "v1");
    assert_eq!(env.releases(), ["v1"]);
}
