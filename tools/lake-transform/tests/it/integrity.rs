//! What no run goes on past: a changed or missing landing file, a corrupt lakehouse file;
//! a quarantined landing file; `maintain`'s checked compaction.

use super::*;

#[test]
fn a_changed_or_missing_landing_file_is_an_integrity_error_until_rebuild() {
    let (a, b) = two_releases();
    let env = Env::new();
    let a_path = env.land("2024-01", &a);
    let b_path = env.land("2024-02", &b);
    assert_eq!(env.run(&["run"]).code, 0);

    env.land_by_hand(&a_path, &b); // rewritten in place
    let run = env.run(&["run"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.error_line().contains(&format!("landing file {a_path} changed after it was loaded into raw.psd")), "{}", run.error_line());

    std::fs::remove_file(env.data.join("landing").join(&a_path)).unwrap();
    let run = env.run(&["run"]);
    assert_eq!(run.code, 6);
    assert!(run.error_line().contains(&format!("landing file {a_path} was loaded into raw.psd but is gone")), "{}", run.error_line());

    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.rows("SELECT path FROM _materia.landing_ledger"), [b_path]);
    assert_eq!(env.run(&["run"]).code, 3);
}

#[test]
fn a_corrupt_lakehouse_file_is_an_integrity_error_until_rebuild() {
    let (a, b) = two_releases();
    let env = Env::new();
    env.land("2024-01", &a);
    env.land("2024-02", &b);
    assert_eq!(env.run(&["run"]).code, 0);
    let built = serving_state(&env);
    let file = env.data.join("lakehouse.duckdb");
    // Not a DuckDB file at all; then DuckDB's magic with a header whose checksum fails:
    // DuckDB's two ways of saying so (lakehouse_target::corrupt::CORRUPT).
    let mut bad_checksum = vec![0x5a_u8; 16384];
    bad_checksum[8..12].copy_from_slice(b"DUCK");
    let bad_checksum_bytes = bad_checksum.clone();
    for (bytes, duckdb_says) in [(vec![0x5a_u8; 16384], "is not a valid DuckDB database file"), (bad_checksum, "Corrupt database file")] {
        std::fs::write(&file, &bytes).unwrap();
        for args in [&["run"][..], &["plan"]] {
            let run = env.run(args);
            assert_eq!(run.code, 6, "{args:?}: {run:?}");
            let line = run.error_line();
            assert!(line.contains(&format!("opening {}", file.display())) && line.contains(duckdb_says), "{line}");
            assert!(line.contains("the file is corrupt") && line.contains("`lake-transform run --rebuild` writes it anew"), "{line}");
            assert_eq!(std::fs::read(&file).unwrap(), bytes, "{args:?} left the file as it was");
        }
        // Recorded once, as the run's failure.
        let last = env.state_rows("SELECT status, exit_code, error FROM runs WHERE tool = 'lake-transform' ORDER BY run_id DESC LIMIT 1");
        assert!(last[0].starts_with("Text(\"failed\")|Integer(6)|") && last[0].contains(duckdb_says), "{last:?}");
    }

    // A rebuild does not read it: planned and run from landing/ alone; a WAL left beside
    // it, which could only be replayed onto it, is removed.
    let wal = env.data.join("lakehouse.duckdb.wal");
    std::fs::write(&wal, b"the corrupt file's WAL").unwrap();
    let plan = env.run(&["plan", "--rebuild"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(plan.stdout.contains("raw.psd\tbuild"), "{}", plan.stdout);
    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("the file is corrupt") && run.stderr.contains("this run rebuilds it"), "{}", run.stderr);
    assert!(run.stderr.contains("the corrupt file's WAL") && !wal.exists(), "{}", run.stderr);
    assert_eq!(serving_state(&env), built);
    // The corrupt bytes are kept beside it, for a look (the last ones only).
    let kept = env.data.join("lakehouse.duckdb.corrupt");
    assert_eq!(materia_common::layout::Layout::new(&env.data, None).kept_corrupt_lakehouse(), kept, "where materia-status looks");
    assert!(run.stderr.contains(&format!("kept the corrupt file as {}", kept.display())), "{}", run.stderr);
    assert_eq!(std::fs::read(&kept).unwrap(), bad_checksum_bytes);
    assert_eq!(env.run(&["run"]).code, 3);

    // Every block of table data corrupt, the headers and the catalog intact: the file
    // opens, and DuckDB finds it when a query reads a block (here the plan, reading the
    // engine's state). The same exit 6 and fix; a rebuild plans without the file.
    corrupt_table_blocks(&env, "TRUE");
    let corrupted = std::fs::read(&file).unwrap();
    let run = env.run(&["run"]);
    assert_eq!(run.code, 6, "{run:?}");
    let line = run.error_line();
    assert!(!line.contains("opening") && line.contains("Corrupt database file"), "found reading, not opening: {line}");
    assert!(line.contains("the file is corrupt") && line.contains("`lake-transform run --rebuild` writes it anew"), "{line}");
    let plan = env.run(&["plan"]);
    assert_eq!(plan.code, 6, "{plan:?}");
    assert!(plan.error_line().contains("Corrupt database file") && plan.error_line().contains("`lake-transform run --rebuild`"), "{plan:?}");
    let plan = env.run(&["plan", "--rebuild"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(plan.stdout.contains("raw.psd\tbuild") && plan.stderr.contains("the rebuild does without it"), "{plan:?}");
    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("Corrupt database file") && run.stderr.contains("the rebuild does without it"), "{}", run.stderr);
    assert_eq!(serving_state(&env), built);
    assert_eq!(std::fs::read(&kept).unwrap(), corrupted, "the older kept file replaced");

    // A corrupt block no run reads (a run with nothing to do reads none of
    // serving.revisions) goes unnoticed by the runs; the weekly `maintain` reads every
    // block as it copies the file: exit 6, the same fix, the file left as it was and no
    // half copy beside it.
    corrupt_table_blocks(&env, "schema_name = 'serving' AND table_name = 'revisions'");
    assert_eq!(env.run(&["run"]).code, 3);
    let bytes = std::fs::read(&file).unwrap();
    let run = env.run(&["maintain"]);
    assert_eq!(run.code, 6, "{run:?}");
    let line = run.error_line();
    assert!(line.contains("Corrupt database file") && line.contains("`lake-transform run --rebuild` writes it anew"), "{line}");
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "maintain left the file as it was");
    let names: Vec<String> = std::fs::read_dir(&env.data).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.contains("-tmp-")), "{names:?}");
    let last = env.state_rows("SELECT tool, status, exit_code FROM runs ORDER BY run_id DESC LIMIT 1");
    assert_eq!(last, ["Text(\"lake-maintain\")|Text(\"failed\")|Integer(6)"]);
    // The rebuild that fix names reads no block of the file, yet keeps it: `maintain`
    // found it corrupt, and nothing has written a new file since.
    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains(&format!("kept the corrupt file as {}", kept.display())), "{}", run.stderr);
    assert_eq!(std::fs::read(&kept).unwrap(), bytes, "the file maintain found corrupt kept");
    // The next rebuild replaces a file no one found corrupt: nothing kept this time.
    std::fs::remove_file(&kept).unwrap();
    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!run.stderr.contains("kept the corrupt file") && !kept.exists(), "{}", run.stderr);
    assert_eq!(env.run(&["maintain"]).code, 0);
    assert_eq!(serving_state(&env), built);
}

/// Break the checksum of every data block of the lakehouse's tables that `filter` (on
/// duckdb_tables()) selects; the headers and the catalog stay intact.
fn corrupt_table_blocks(env: &Env, filter: &str) {
    let mut blocks = Vec::new();
    for t in env.rows(&format!("SELECT schema_name || '.' || table_name FROM duckdb_tables() WHERE {filter}")) {
        blocks.extend(env.rows(&format!("SELECT DISTINCT block_id FROM pragma_storage_info('{t}') WHERE block_id >= 0")));
    }
    assert!(!blocks.is_empty(), "no blocks where {filter}");
    let block_size: usize = env.rows("SELECT block_size FROM pragma_database_size()")[0].parse().unwrap();
    let blocks: Vec<usize> = blocks.iter().map(|b| b.parse().unwrap()).collect();
    materia_test_support::corrupt_duckdb_blocks(&env.data.join("lakehouse.duckdb"), block_size, &blocks);
}

#[test]
fn a_quarantined_file_is_left_out_of_every_run_until_taken_back() {
    let (a, b) = two_releases();
    let env = Env::new();
    let a_path = env.land("2024-01", &a);
    assert_eq!(env.run(&["run"]).code, 0);
    // USDA ships duplicate keys: a blocking audit fails and names the file to set aside.
    let text = String::from_utf8(a.clone()).unwrap();
    let last = text.trim_end().lines().last().unwrap().to_owned();
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let bad = format!("{}{eol}{last}{eol}", text.trim_end());
    let bad_path = env.land("2024-02", bad.as_bytes());
    let run = env.run(&["run"]);
    assert_eq!(run.code, 5, "{run:?}");
    let line = run.error_line();
    assert!(line.contains(&format!("its rows come from {bad_path} (set it aside: lake-transform quarantine {bad_path}")), "{line}");
    // A newer, good release queues behind it.
    let b_path = env.land("2024-03", &b);
    assert_eq!(env.run(&["run"]).code, 5);

    // Set aside, with a reason: the next run proceeds with the rest.
    let no_reason = env.run(&["quarantine", &bad_path]);
    assert_eq!(no_reason.code, 2, "{no_reason:?}");
    assert_eq!(env.run(&["quarantine", "../outside.csv.gzip", "--reason", "x"]).code, 2);
    let q = env.run(&["quarantine", &bad_path, "--reason", "USDA shipped duplicate keys"]);
    assert_eq!(q.code, 0, "{q:?}");
    let plan = env.run(&["plan"]);
    assert!(plan.stdout.contains(&format!("quarantined\t{bad_path}\tUSDA shipped duplicate keys by ")), "{}", plan.stdout);
    assert!(plan.stdout.contains(&format!("raw.psd\tappend {b_path}\t1 new landing file (1 quarantined)")), "{}", plan.stdout);
    assert_eq!(env.run(&["run"]).code, 0);
    assert_eq!(env.rows("SELECT DISTINCT file FROM raw.psd ORDER BY 1"), [a_path.as_str(), b_path.as_str()]);
    assert!(env.data.join("landing").join(&bad_path).exists(), "landing stays immutable");
    let listed = env.run(&["quarantine"]);
    assert!(listed.stdout.starts_with(&format!("{bad_path}\t")) && listed.stdout.contains("USDA shipped duplicate keys"), "{}", listed.stdout);

    // A file loaded before and set aside after: the next run rebuilds without it, and
    // equals a rebuild from the files left.
    assert_eq!(env.run(&["quarantine", &b_path, "--reason", "revised by mistake"]).code, 0);
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains(&format!("quarantined since loaded: {b_path}")), "{}", run.stdout);
    assert_eq!(env.rows("SELECT DISTINCT file FROM raw.psd ORDER BY 1"), [a_path.as_str()]);
    let incremental = serving_state(&env);
    assert_eq!(env.run(&["run", "--rebuild"]).code, 0);
    assert_eq!(serving_state(&env), incremental, "the same as a rebuild");

    // Taken back: the next run loads it again.
    let undo = env.run(&["quarantine", "--undo", &b_path]);
    assert_eq!(undo.code, 0, "{undo:?}");
    assert_eq!(env.run(&["run"]).code, 0);
    assert_eq!(env.rows("SELECT DISTINCT file FROM raw.psd ORDER BY 1"), [a_path.as_str(), b_path.as_str()]);
    let recorded = env.state_rows("SELECT path, reason, released_at IS NOT NULL FROM quarantine ORDER BY rowid");
    assert_eq!(recorded.len(), 2);
    assert!(recorded[0].contains(&bad_path) && recorded[0].ends_with("Integer(0)"), "{recorded:?}");
    assert!(recorded[1].contains(&b_path) && recorded[1].ends_with("Integer(1)"), "{recorded:?}");
}

/// The real release with every 50th value revised by `pct` percent (as USDA's monthly
/// releases revise a small share).
fn revised(real: &[u8], pct: f64) -> Vec<u8> {
    let text = String::from_utf8(real.to_vec()).unwrap();
    let mut out = String::new();
    for (n, line) in text.split_inclusive('\n').enumerate() {
        match line.trim_end().rsplit_once(',') {
            Some((head, value)) if n > 0 && n % 50 == 0 => {
                let v: f64 = value.parse().unwrap();
                out.push_str(&format!("{head},{:.4}\r\n", v * (1.0 + pct / 100.0)));
            }
            _ => out.push_str(line),
        }
    }
    out.into_bytes()
}

#[test]
fn maintain_compacts_the_local_file_checked_and_the_runs_go_on() {
    let Some(real) = real_csv() else { return };
    let env = Env::new();
    let lakehouse = env.data.join("lakehouse.duckdb");
    // Before any run there is nothing to compact, and maintain creates no file.
    let run = env.run(&["maintain"]);
    assert!(run.code != 0 && run.error_line().contains("lakehouse.duckdb does not exist yet: run lake-transform first"), "{run:?}");
    assert!(!lakehouse.exists());
    for (i, month) in ["2023-01", "2023-02", "2023-03"].into_iter().enumerate() {
        env.land(month, &revised(&real, i as f64));
        assert_eq!(env.run(&["run"]).code, 0);
    }
    let before = env.snapshot();
    let size = || std::fs::metadata(&lakehouse).unwrap().len();
    let grown = size();

    // A copy that does not verify replaces nothing, and leaves no temp file.
    let mut cmd = env.cmd();
    cmd.env(materia_common::layout::ENV_LAKE_TRANSFORM_FAULT, "alter-compact").arg("maintain");
    let run = Run::from(cmd.output().unwrap());
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.stderr.contains("did not verify") && run.stderr.contains("rows raw.psd"), "{}", run.stderr);
    let left = |env: &Env| -> Vec<String> {
        std::fs::read_dir(&env.data)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("compact"))
            .collect()
    };
    assert_eq!(left(&env), Vec::<String>::new());
    assert_eq!(env.snapshot(), before, "the lakehouse was left as it was");

    // A block of the copy read back corrupt as it is written (DuckDB's message names no
    // file): the lakehouse, read again, is whole, so the copy's disk is named, not a
    // rebuild; the same exit 6, nothing replaced, nothing left.
    let mut cmd = env.cmd();
    cmd.env(materia_common::layout::ENV_LAKE_TRANSFORM_FAULT, "corrupt-compact-midway").arg("maintain");
    let run = Run::from(cmd.output().unwrap());
    assert_eq!(run.code, 6, "{run:?}");
    let line = run.error_line();
    assert!(line.contains("the compacted copy reads back corrupt as it is written (") && line.contains("Corrupt database file"), "{line}");
    assert!(line.contains("it is not at fault") && !line.contains("--rebuild"), "{line}");
    assert_eq!(left(&env), Vec::<String>::new());
    assert_eq!(env.snapshot(), before, "the lakehouse was left as it was");

    // What a killed maintain left is removed by the next, which compacts.
    std::fs::write(env.data.join(".lakehouse.compact-tmp-999999"), b"half a copy").unwrap();
    let run = env.run(&["maintain"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("left by an interrupted run or maintain"), "{}", run.stderr);
    assert_eq!(left(&env), Vec::<String>::new());
    let line = run.stdout.lines().find(|l| l.starts_with("compacted\t")).unwrap_or_else(|| panic!("{}", run.stdout));
    let sizes: Vec<u64> = line.split('\t').skip(1).map(|n| n.parse().unwrap()).collect();
    assert_eq!(sizes[0], grown, "{line}");
    assert_eq!(sizes[1], size(), "{line}");
    assert!(sizes[1] < sizes[0], "the copy holds only the contents: {line}");
    assert_eq!(env.snapshot(), before, "every table, row for row, and the engine's state");
    assert_eq!(
        env.rows("SELECT count(*) FROM staging.psd_values"),
        env.rows("SELECT count(*) FROM raw.psd WHERE release = DATE '2023-03-01'")
            .iter()
            .map(|n| (n.parse::<i64>().unwrap() * 3).to_string())
            .collect::<Vec<_>>(),
        "the view reads the copy's tables"
    );
    assert_eq!(
        env.rows("SELECT CAST(tags AS VARCHAR) FROM duckdb_databases() WHERE database_name = current_database()"),
        [format!("{{storage_version={}+}}", materia_common::duckdb_config::STORAGE_VERSION)],
        "the copy is written in the lakehouse's storage version"
    );

    // The engine carries on from the copy: nothing to do, then a new release appended,
    // equal to a rebuild.
    assert_eq!(env.run(&["run"]).code, 3);
    env.land("2023-04", &revised(&real, 3.0));
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("raw.psd\tappend"), "{}", run.stdout);
    // The release went into row groups of its own, of the run's size (the compacted
    // file's are DuckDB's default, 122,880 rows): the insert wrote and compressed them,
    // not the commit's checkpoint (duckdb_config::ROW_GROUP_SIZE).
    let small = env.rows(&format!(
        "SELECT count(*) FROM (SELECT row_group_id, sum(count) AS n FROM pragma_storage_info('raw.psd') WHERE column_path = '[0]' GROUP BY 1) WHERE n <= {}",
        materia_common::duckdb_config::ROW_GROUP_SIZE
    ));
    assert!(small[0].parse::<i64>().unwrap() >= 5, "{small:?}: 77,957 rows in row groups of 16,384");
    // (serving.world_balance left out: its sums of the real doubles differ in the last
    // bits between any two builds, DuckDB's parallel sums being unordered.)
    let exact = |env: &Env| -> std::collections::HashSet<String> {
        let mut table = String::new();
        let mut out = std::collections::HashSet::new();
        for line in serving_state(env) {
            if let Some(t) = line.strip_prefix("-- ") {
                table = t.to_owned();
            }
            if table != "serving.world_balance" {
                out.insert(line);
            }
        }
        out
    };
    let incremental = exact(&env);
    assert_eq!(env.run(&["run", "--rebuild"]).code, 0);
    let rebuilt = exact(&env);
    let only = |a: &std::collections::HashSet<String>, b: &std::collections::HashSet<String>| a.difference(b).take(5).cloned().collect::<Vec<_>>();
    assert_eq!((only(&incremental, &rebuilt), only(&rebuilt, &incremental)), (vec![], vec![]), "incremental (left) and rebuild (right) differ");
    assert_eq!(
        env.state_rows("SELECT tool, status, exit_code FROM runs WHERE tool = 'lake-maintain' ORDER BY run_id"),
        [
            "Text(\"lake-maintain\")|Text(\"failed\")|Integer(1)",
            "Text(\"lake-maintain\")|Text(\"failed\")|Integer(6)",
            "Text(\"lake-maintain\")|Text(\"failed\")|Integer(6)",
            "Text(\"lake-maintain\")|Text(\"success\")|Integer(0)"
        ]
    );

    // A lakehouse the operator moved to another volume and linked back stays there: a
    // compaction or a full build writes beside the real file and renames over it.
    let volume = env.root.join("volume");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::rename(&lakehouse, volume.join("lakehouse.duckdb")).unwrap();
    std::os::unix::fs::symlink(volume.join("lakehouse.duckdb"), &lakehouse).unwrap();
    let before = env.snapshot();
    let linked = || std::fs::symlink_metadata(&lakehouse).unwrap().file_type().is_symlink();
    let run = env.run(&["maintain"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(linked(), "the link is kept");
    assert_eq!(env.snapshot(), before);
    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(linked(), "the link is kept");
    assert_eq!(exact(&env), rebuilt);
    for dir in [&env.data, &volume] {
        let names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(!names.iter().any(|n| n.contains("-tmp-")), "{}: {names:?}", dir.display());
    }
}
