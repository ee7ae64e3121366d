//! The plans DuckDB runs, read from `run --profile`: what the benchmarks measure in time
//! (scripts/bench/lake-transform.sh), held here as shapes. A first build reads the
//! releases once in each model (no second read, no copy of them materialised; on a
//! DuckLake too), and a run that lands a release reads no older release of raw.psd.

use super::*;

/// The real release with every 50th value (from the `k`th) revised: another release, as
/// USDA's monthly ones revise a small share.
fn revised(csv: &[u8], k: usize) -> Vec<u8> {
    let text = String::from_utf8(csv.to_vec()).unwrap();
    let mut out = String::new();
    for (n, line) in text.split_terminator("\r\n").enumerate() {
        match line.rsplit_once(',') {
            Some((head, value)) if n > 0 && n % 50 == k => {
                let v: f64 = value.parse().unwrap();
                out.push_str(&format!("{head},{:.4}\r\n", v * 1.01 + 1.0));
            }
            _ => out.push_str(&format!("{line}\r\n")),
        }
    }
    out.into_bytes()
}

/// The profiles of the run whose profile dir is `run`: (file name, JSON), by name.
fn profiles(run: &Path) -> Vec<(String, serde_json::Value)> {
    let mut out: Vec<_> = std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| (p.file_name().unwrap().to_str().unwrap().to_owned(), serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn operators(profile: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    lake_transform::profile::operators_of(profile, &mut out);
    out
}

/// The scans of raw.psd in a plan (or a part of one): of the local file's table, or of
/// a DuckLake's (which DuckDB names by the table alone).
fn raw_scans(node: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut all = vec![node];
    all.extend(operators(node));
    all.into_iter()
        .filter(|o| o["operator_type"] == "TABLE_SCAN" && (o["extra_info"]["Table"] == "lakehouse.raw.psd" || o["extra_info"]["Table"] == "psd"))
        .collect()
}

/// The models of a build's profiles that hold every release of raw.psd in a CTE (as
/// DuckDB's common-subplan optimizer makes of two equal reads, one of them in a merge
/// branch dead in a build): more than half of raw.psd's `total` rows under one.
fn materialising_every_release(profiles: &[(String, serde_json::Value)], total: u64) -> Vec<String> {
    let mut out = Vec::new();
    for (name, profile) in profiles.iter().filter(|(n, _)| n.ends_with(".build.json")) {
        let ctes = operators(profile).into_iter().filter(|o| o["operator_type"] == "CTE");
        // A DuckLake scan reports no rows scanned: its rows out, then.
        let held = ctes
            .flat_map(|cte| raw_scans(&cte["children"][0]))
            .filter(|s| s["operator_rows_scanned"].as_u64().filter(|&n| n > 0).or(s["operator_cardinality"].as_u64()).unwrap() > total / 2)
            .count();
        if held > 0 {
            out.push(name.clone());
        }
    }
    out
}

/// Lands three releases of `real`, each revising another fiftieth of its values;
/// returns raw.psd's rows after they load.
fn land_three_revisions(env: &Env, real: &[u8]) -> u64 {
    for (k, month) in ["2024-01", "2024-02", "2024-03"].into_iter().enumerate() {
        env.land(month, &revised(real, k));
    }
    3 * (real.iter().filter(|&&b| b == b'\n').count() as u64 - 1)
}

/// The run dir `profile --dir` made for the latest run.
fn latest_run(dir: &Path) -> PathBuf {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    runs.sort_by_key(|p| p.file_name().unwrap().to_str().unwrap().trim_start_matches("run-").parse::<i64>().unwrap());
    runs.pop().unwrap()
}

#[test]
fn a_build_reads_the_releases_once_per_model_and_a_new_release_reads_no_older_one() {
    let Some(real) = real_csv() else { return };
    let env = Env::new();
    let total = land_three_revisions(&env, &real);
    let dir = env.root.join("profiles");
    let run = env.run(&["run", "--profile", dir.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    let build = latest_run(&dir);
    let tsv = std::fs::read_to_string(build.join("profile.tsv")).unwrap();
    assert!(tsv.lines().any(|l| l.starts_with("1\traw.psd\tbuild\t")), "{tsv}");

    // How many rows a scan of raw.psd read (row groups its filters left).
    let scanned = |scan: &serde_json::Value| scan["operator_rows_scanned"].as_u64().unwrap();
    let mut readers = Vec::new();
    for (name, profile) in profiles(&build).iter().filter(|(n, _)| n.ends_with(".build.json")) {
        // A merge branch, dead in a build, may start its read and stop after the first
        // vectors: a read of more than half the releases is a read of them all.
        let whole: Vec<_> = raw_scans(profile).into_iter().filter(|s| scanned(s) > total / 2).collect();
        assert!(whole.len() <= 1, "{name} reads every release {} times in a build:\n{profile:#}", whole.len());
        if !whole.is_empty() {
            readers.push(name.split_once('-').unwrap().1.trim_end_matches(".build.json").to_owned());
        }
    }
    // Nor once into memory: a CTE holding every release.
    let held = materialising_every_release(&profiles(&build), total);
    assert!(held.is_empty(), "these materialise every release of raw.psd: {held:?}");
    // The shapes above are checked where they matter: each model that reads every release.
    for model in ["serving.releases", "staging.psd_picks", "staging.psd_latest", "serving.revisions"] {
        assert!(readers.iter().any(|r| r == model), "{model} does not read raw.psd in a build? readers: {readers:?}");
    }
    // serving.revisions' build sorts only the rows of keys whose value differed between
    // releases (staging.psd_latest's `revised`): here 3 keys in 50.
    let (_, revisions) =
        profiles(&build).into_iter().find(|(n, _)| n.ends_with("-serving.revisions.build.json")).expect("serving.revisions' build profiled");
    let windowed =
        operators(&revisions).into_iter().filter(|o| o["operator_type"] == "WINDOW").filter_map(|o| o["operator_cardinality"].as_u64()).max();
    assert!(windowed.is_some_and(|w| w > 0 && w <= total / 10), "serving.revisions' build sorts {windowed:?} of {total} rows:\n{revisions:#}");

    // A new release: each raw.psd read of a model's statements prunes every older
    // release's row groups by their min/max (a run's cost follows the new data, not the
    // history). Audits read the new rows by row id, which DuckDB counts as the whole table.
    env.land("2024-04", &revised(&real, 3));
    let run = env.run(&["run", "--profile", dir.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    let release = total / 3;
    let mut checked = 0;
    for (name, profile) in profiles(&latest_run(&dir)).iter().filter(|(n, _)| !n.contains(".audit-")) {
        for scan in raw_scans(profile) {
            let rows = scanned(scan);
            // The new release's rows, and at most one row group of a run's appends besides.
            let most = release + u64::from(materia_common::duckdb_config::ROW_GROUP_SIZE);
            assert!(rows <= most, "{name} reads {rows} rows of raw.psd for a release of {release}:\n{profile:#}");
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} reads of raw.psd were checked");
    // A run that loads one release gives each key one new row: staging.psd_latest's merge
    // takes it as the key's latest without a window over the new rows (at 2M rows the
    // window was a third of that merge; a run of several releases still has it).
    let (_, latest) =
        profiles(&latest_run(&dir)).into_iter().find(|(n, _)| n.ends_with("-staging.psd_latest.insert.json")).expect("psd_latest's merge profiled");
    let windowed: u64 =
        operators(&latest).into_iter().filter(|o| o["operator_type"] == "WINDOW").map(|o| o["operator_cardinality"].as_u64().unwrap()).sum();
    assert_eq!(windowed, 0, "staging.psd_latest's merge of one release puts its new rows through a window:\n{latest:#}");
}

#[test]
fn a_build_on_ducklake_holds_no_copy_of_the_releases() {
    // DuckDB plans a DuckLake's scans otherwise than the local file's: there, a merge
    // branch's read of staging.psd_values that a build leaves dead (its filter a join with
    // an empty CTE, not a constant) was materialised with the build branch's, every
    // release in memory (1.9 GiB at 100 coffee releases, against 0.7 GiB on the file).
    let Some(real) = real_csv() else { return };
    let Some(lake) = super::ducklake::Lake::start() else { return };
    let env = Env::new();
    let total = land_three_revisions(&env, &real);
    let dir = env.root.join("profiles");
    let run = lake.run(&env, &["run", "--profile", dir.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    let build = profiles(&latest_run(&dir));
    // The check sees the lake's scans of raw.psd at all: a model reads every release.
    let whole =
        build.iter().filter(|(n, p)| n.ends_with(".build.json") && raw_scans(p).iter().any(|s| s["operator_cardinality"].as_u64() == Some(total)));
    assert!(whole.count() >= 2, "no build reads raw.psd's {total} rows on the lake? {:?}", build.iter().map(|(n, _)| n).collect::<Vec<_>>());
    let held = materialising_every_release(&build, total);
    assert!(held.is_empty(), "on the lake, these materialise every release of raw.psd: {held:?}");
}

#[test]
fn a_profile_dir_that_cannot_be_made_is_a_bad_flag_and_the_lakehouse_is_untouched() {
    let env = Env::new();
    let (a, _) = two_releases();
    env.land("2024-01", &a);
    let not_a_dir = env.root.join("profiles");
    std::fs::write(&not_a_dir, "a file").unwrap();
    let run = env.run(&["run", "--profile", not_a_dir.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.error_line().contains("--profile: creating the profile dir"), "{run:?}");
    assert_eq!(run.stderr.lines().filter(|l| l.contains("error")).count(), 1, "one error line: {}", run.stderr);
    assert!(!env.data.join("lakehouse.duckdb").exists(), "nothing built");
    assert_eq!(env.state_rows("SELECT status FROM runs WHERE tool = 'lake-transform'"), ["Text(\"failed\")"], "recorded once");
    // Without it, the same landing builds.
    assert_eq!(env.run(&["run"]).code, 0);
}
