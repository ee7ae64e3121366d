//! Restores: every file and the state DB brought back and checked, a killed restore
//! resumed, one that filled the disk resumed, a changed object refused.

use super::*;

#[test]
fn a_restore_brings_back_every_file_and_the_state_db_checked() {
    let old = Env::new();
    three_files(&old);
    let dest = old.root.join("backup");
    let target = format!("fs:{}", dest.display());
    assert_eq!(old.run(&target, None, &["--state-snapshot"]).code, 0);
    let old_runs = runs(&old);

    // --dry-run: what would come back, and the bytes; nothing is written.
    let new = Env::new();
    let dry = new.run(&target, None, &["restore", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    let listed: Vec<&str> = dry.stdout.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(listed.len(), 4, "{}", dry.stdout);
    assert!(listed[0].starts_with(".state/state-") && listed[1..] == ["psd/2024/01/a.csv.gzip", "psd/2024/02/b.csv.gzip", "psd/2024/03/c.csv.gzip"]);
    assert!(dry.stderr.contains("would fetch 4 object(s)"), "{}", dry.stderr);
    assert!(!new.data.exists(), "a dry run writes nothing");

    // The restore: the landing files as they were, the state DB with its old runs.
    let run = new.run(&target, None, &["restore"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(tree(&new.data.join("landing")), tree(&old.data.join("landing")));
    let restored_runs = runs(&new);
    assert_eq!(restored_runs[..old_runs.len()], old_runs[..], "the old runs are kept");
    assert!(restored_runs.last().unwrap().ends_with("landing-backup success"), "{restored_runs:?}");
    assert!(!new.data.join("landing/.restore-in-progress").exists());
    // The ledger knows every object: the next backup uploads nothing.
    let next = new.run(&target, None, &[]);
    assert_eq!(next.code, 3, "{next:?}");
    assert!(next.stderr.contains("uploaded 0"), "{}", next.stderr);

    // A new server's state DB (runs, but nothing landed or backed up) is set aside.
    let fresh = Env::new();
    assert_eq!(fresh.run(&format!("fs:{}", fresh.root.join("elsewhere").display()), None, &[]).code, 3);
    let run = fresh.run(&target, None, &["restore"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("set this server's new state DB aside"), "{}", run.stderr);
    assert_eq!(runs(&fresh)[..old_runs.len()], old_runs[..], "the backup's state DB took its place");

    // A landing dir that holds files is refused; --into-existing adds only what is
    // missing and never overwrites.
    let again = new.run(&target, None, &["restore"]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(again.error_line().contains("already holds 3 landing file(s) and a state DB"), "{}", again.error_line());
    let other = Env::new();
    other.land("psd/2024/01/a.csv.gzip", b"a local one");
    let run = other.run(&target, None, &["restore", "--into-existing"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(std::fs::read(other.data.join("landing/psd/2024/01/a.csv.gzip")).unwrap(), b"a local one");
    assert_eq!(std::fs::read(other.data.join("landing/psd/2024/02/b.csv.gzip")).unwrap(), b"bravo bravo");
    assert_eq!(other.run(&target, None, &["restore", "--into-existing"]).code, 3, "nothing left to fetch");
}

#[test]
fn a_killed_restore_resumes_and_a_changed_object_is_refused() {
    let old = Env::new();
    for i in 0..24 {
        let body: Vec<u8> = (0..(2u32 << 20)).map(|b| (b.wrapping_mul(31).wrapping_add(i)) as u8).collect();
        old.land(&format!("psd/2024/{:02}/f{i}.csv.gzip", i % 12 + 1), &body);
    }
    let dest = old.root.join("backup");
    let target = format!("fs:{}", dest.display());
    assert_eq!(old.run(&target, None, &["--state-snapshot"]).code, 0);

    // Killed mid-way: whatever has a final name is complete.
    let new = Env::new();
    let mut c = materia_test_support::tool(env!("CARGO_BIN_EXE_landing-backup"));
    let mut child =
        c.arg("--data-dir").arg(&new.data).args(["--target", &target, "restore", "--concurrency", "1"]).stderr(Stdio::null()).spawn().unwrap();
    materia_test_support::wait_until("the restore to progress", Duration::from_secs(60), || {
        tree(&new.data.join("landing")).len() >= 3 || child.try_wait().unwrap().is_some()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let original: std::collections::HashMap<String, Vec<u8>> = tree(&old.data.join("landing")).into_iter().collect();
    let partial = tree(&new.data.join("landing"));
    assert!(partial.len() < original.len(), "killed before the end: {}", partial.len());
    for (rel, bytes) in &partial {
        assert_eq!(Some(bytes), original.get(rel), "{rel} is complete under its final name");
    }
    assert!(new.data.join("landing/.restore-in-progress").exists());
    // The rerun (no flag: it is this restore's own landing dir) fetches the rest.
    let run = new.run(&target, None, &["restore"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(tree(&new.data.join("landing")), tree(&old.data.join("landing")));
    assert!(run.stderr.contains(&format!("restored {} landing file(s)", original.len() - partial.len())), "{}", run.stderr);
    let leftovers = Command::new("find").arg(new.data.join("landing")).args(["-name", "*.tmp-*"]).output().unwrap().stdout;
    assert!(leftovers.is_empty(), "no temp file left: {}", String::from_utf8_lossy(&leftovers));

    // An object altered in the backup (same size): an integrity error naming it, and
    // nothing of it under its final name; the others come back.
    let victim = "psd/2024/05/f4.csv.gzip";
    let mut bytes = std::fs::read(dest.join(victim)).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(dest.join(victim), bytes).unwrap();
    let third = Env::new();
    let run = third.run(&target, None, &["restore"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.error_line().contains(&format!("{victim}: its content does not match its record")), "{}", run.error_line());
    assert!(!third.data.join("landing").join(victim).exists());
    assert_eq!(tree(&third.data.join("landing")).len(), original.len() - 1);
}

#[test]
fn a_restore_that_fills_the_disk_fails_cleanly_and_resumes_with_room() {
    let old = Env::new();
    for i in 0..12 {
        let body: Vec<u8> = (0..(2u32 << 20)).map(|b| (b.wrapping_mul(29).wrapping_add(i)) as u8).collect();
        old.land(&format!("psd/2024/{:02}/f{i}.csv.gzip", i + 1), &body);
    }
    let target = format!("fs:{}", old.root.join("backup").display());
    assert_eq!(old.run(&target, None, &["--state-snapshot"]).code, 0);

    // A new server's disk with room for about half of the 24 MiB.
    let new = Env::new();
    let Some(disk) = materia_test_support::tmpfs::Tmpfs::mount(&new.data, "12m") else { return };
    let run = new.run(&target, None, &["restore"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.error_line().contains("No space left on device"), "{}", run.error_line());
    let original: std::collections::HashMap<String, Vec<u8>> = tree(&old.data.join("landing")).into_iter().collect();
    let partial = tree(&new.data.join("landing"));
    assert!(!partial.is_empty() && partial.len() < original.len(), "{} of {}", partial.len(), original.len());
    for (rel, bytes) in &partial {
        assert_eq!(Some(bytes), original.get(rel), "{rel} is complete under its final name");
    }
    assert!(new.data.join("landing/.restore-in-progress").exists());
    let leftovers = Command::new("find").arg(new.data.join("landing")).args(["-name", "*.tmp-*"]).output().unwrap().stdout;
    assert!(leftovers.is_empty(), "no temp file left: {}", String::from_utf8_lossy(&leftovers));

    // With room, the same command fetches the rest.
    disk.resize("64m");
    let run = new.run(&target, None, &["restore"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(tree(&new.data.join("landing")), tree(&old.data.join("landing")));
    assert!(!new.data.join("landing/.restore-in-progress").exists());
}

#[test]
fn a_restore_from_s3_checks_each_object_against_the_ledger() {
    let moto = Moto::start();
    let old = Env::new();
    three_files(&old);
    assert_eq!(old.s3(&moto, &["--state-snapshot"]).code, 0);
    let new = Env::new();
    let run = new.s3(&moto, &["restore"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(tree(&new.data.join("landing")), tree(&old.data.join("landing")));
    assert_eq!(new.s3(&moto, &[]).code, 3, "recorded: nothing to upload");
    assert_eq!(new.requests()["PUT"], serde_json::Value::Null, "no PUT");

    // Someone overwrote an object in the bucket: its ETag is now the new content's,
    // but the ledger recorded the original's.
    let key = format!("{PREFIX}psd/2024/02/b.csv.gzip");
    assert_eq!(moto.http("PUT", &format!("/bkt/{key}"), b"bravo BRAVO").0, 200);
    let third = Env::new();
    let run = third.s3(&moto, &["restore"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.error_line().contains(&format!("{key}: its content does not match its record")), "{}", run.error_line());
}
