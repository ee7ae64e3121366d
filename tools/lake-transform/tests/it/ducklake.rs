//! The same models on a DuckLake: a PostgreSQL catalog, moto as the S3 data path.

use super::*;

#[test]
fn an_incremental_by_unique_key_model_merges_on_ducklake_too() {
    let Some(lake) = Lake::start() else { return };
    unique_key_merge(|env, args| lake.run(env, args), |_, sql| lake.rows(sql));
    assert!(lake.snapshots() >= 2, "a snapshot per run");
}

/// A DuckLake for the tests: a real PostgreSQL as its catalog (database `lake`), moto as
/// the S3 its data goes to (`s3://bkt/lake/`).
pub(super) struct Lake {
    pg: Postgres,
    moto: Moto,
}

impl Lake {
    /// None (the test skips, saying so) where no PostgreSQL server is installed.
    pub(super) fn start() -> Option<Lake> {
        let pg = Postgres::start()?;
        pg.create_db("lake");
        Some(Lake { pg, moto: Moto::start() })
    }

    /// lake-transform on this lake, with `env`'s data dir (landing, state DB, locks).
    pub(super) fn run(&self, env: &Env, args: &[&str]) -> Run {
        let mut c = env.cmd();
        c.arg("--lakehouse").arg(format!("ducklake:postgres:{}", self.pg.conninfo("lake"))).arg("--lake-data-path").arg("s3://bkt/lake/");
        c.env(ENV_LAKE_S3_ENDPOINT, self.moto.endpoint()).env(ENV_LAKE_S3_KEY_ID, "test-key-id").env(ENV_LAKE_S3_SECRET, "test-secret");
        Run::from(c.args(args).output().unwrap())
    }

    /// A query's rows, as another process reading the lake would see them.
    fn rows(&self, sql: &str) -> Vec<String> {
        let cfg = materia_common::duckdb_config::config(option_env!("MATERIA_DEV_DUCKDB_EXTENSIONS")).unwrap();
        let c = duckdb::Connection::open_in_memory_with_flags(cfg).unwrap();
        c.execute_batch(&format!(
            "CREATE SECRET (TYPE s3, KEY_ID 'test-key-id', SECRET 'test-secret', REGION 'auto', ENDPOINT '127.0.0.1:{}', URL_STYLE 'path', USE_SSL false);
             ATTACH 'ducklake:postgres:{}' AS lakehouse (READ_ONLY); USE lakehouse;",
            self.moto.port,
            self.pg.conninfo("lake")
        ))
        .unwrap();
        let mut st = c.prepare(&format!("SELECT concat_ws('|', *COLUMNS(*)) FROM ({sql})")).unwrap();
        st.query_map([], |r| r.get::<_, String>(0)).unwrap().map(Result::unwrap).collect()
    }

    /// The catalog's snapshots (one per committed transaction).
    fn snapshots(&self) -> i64 {
        self.pg.query("lake", "SELECT count(*) FROM ducklake_snapshot").parse().unwrap()
    }
}

#[test]
fn the_models_run_on_ducklake_as_on_the_local_file_one_snapshot_a_run() {
    let Some(lake) = Lake::start() else { return };
    let (local, on_lake) = (Env::new(), Env::new());
    let coffee = |p: f64, extra: &'static str| [balance("BR", 2023, p), balance(extra, 2023, p / 2.0), balance("CO", 2022, 7.0)].concat();
    let releases = [
        ("2024-01", with_wheat(&coffee(100.0, "VN"), &balance("US", 2023, 50.0))),
        ("2024-03", with_wheat(&coffee(130.0, "VN"), &balance("US", 2023, 55.0))),
        // A backfilled month between the two.
        ("2024-02", csv(&coffee(120.0, "ET"))),
    ];
    for (i, (rel, data)) in releases.iter().enumerate() {
        local.land(rel, data);
        on_lake.land(rel, data);
        if i == 0 {
            let plan = lake.run(&on_lake, &["plan"]);
            assert!(plan.code == 0 && plan.stdout.contains("raw.psd\tbuild\tnew model: loading 1 file"), "a plan on a new lake: {plan:?}");
            // maintain never creates a lake: a missing one is an error, no catalog made.
            let maintain = lake.run(&on_lake, &["maintain"]);
            assert!(maintain.code != 0 && maintain.error_line().contains("does not exist yet: run lake-transform first"), "{maintain:?}");
            let catalog = "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE 'ducklake%'";
            assert_eq!(lake.pg.query("lake", catalog), "0", "neither plan nor maintain created the catalog");
        }
        assert_eq!(local.run(&["run"]).code, 0);
        let before = if i == 0 { None } else { Some(lake.snapshots()) };
        let run = lake.run(&on_lake, &["run"]);
        assert_eq!(run.code, 0, "{run:?}");
        if let Some(before) = before {
            assert_eq!(lake.snapshots(), before + 1, "one run, one snapshot");
        }
        assert_eq!(state_of(|sql| lake.rows(sql)), serving_state(&local), "after {rel}");
    }
    assert!(lake.moto.objects().iter().any(|(k, _, _)| k.starts_with("lake/") && k.ends_with(".parquet")), "data files on S3");
    let before = lake.snapshots();
    assert_eq!(lake.run(&on_lake, &["run"]).code, 3, "nothing to do");
    assert_eq!(lake.snapshots(), before);

    // A failing blocking audit leaves the catalog at its last good snapshot.
    let good = state_of(|sql| lake.rows(sql));
    let text = String::from_utf8(releases[1].1.clone()).unwrap();
    let last = text.trim_end().lines().last().unwrap().to_owned();
    let bad = on_lake.land("2024-04", format!("{}\r\n{last}\r\n", text.trim_end()).as_bytes());
    let plan = lake.run(&on_lake, &["plan"]);
    assert!(plan.stdout.contains(&format!("raw.psd\tappend {bad}")), "{plan:?}");
    let run = lake.run(&on_lake, &["run"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert_eq!(lake.snapshots(), before, "rolled back: no snapshot");
    assert_eq!(state_of(|sql| lake.rows(sql)), good);

    // Set aside, and a --rebuild on the lake equals the incremental runs.
    assert_eq!(lake.run(&on_lake, &["quarantine", &bad, "--reason", "test"]).code, 0);
    assert_eq!(lake.run(&on_lake, &["run"]).code, 3);
    let run = lake.run(&on_lake, &["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(state_of(|sql| lake.rows(sql)), good, "a rebuild on DuckLake gives what the incremental runs built");
    assert!(!run.stderr.contains("test-secret"), "the S3 secret is never logged");

    // Maintenance keeps the lake small and every vintage in it.
    let vintages = lake.rows("SELECT DISTINCT file FROM raw.psd ORDER BY 1");
    let (objects, snapshots) = (lake.moto.objects().len(), lake.snapshots());
    let run = lake.run(&on_lake, &["maintain", "--keep-days", "0"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("expired_snapshots\t") && run.stdout.contains("removed_files\t"), "{}", run.stdout);
    assert_eq!(lake.snapshots(), 1, "from {snapshots}, only the current snapshot kept");
    assert!(lake.moto.objects().len() < objects, "files of expired snapshots removed: {objects} before");
    assert_eq!(lake.rows("SELECT DISTINCT file FROM raw.psd ORDER BY 1"), vintages, "every landed vintage kept");
    assert_eq!(state_of(|sql| lake.rows(sql)), good);
    // And the lake goes on: a new release, incrementally.
    let later = with_wheat(&coffee(140.0, "VN"), &balance("US", 2023, 60.0));
    on_lake.land("2024-05", &later);
    local.land("2024-05", &later);
    // Profiled (EXPLAIN ANALYZE on the lake's tables), with the same result.
    let profiles = on_lake.root.join("profiles");
    let run = lake.run(&on_lake, &["run", "--profile", profiles.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("raw.psd\tappend"), "{}", run.stdout);
    let run_dir = std::fs::read_dir(&profiles).unwrap().next().unwrap().unwrap().path();
    let tsv = std::fs::read_to_string(run_dir.join("profile.tsv")).unwrap();
    assert!(tsv.lines().any(|l| l.starts_with("1\traw.psd\tinsert\t")), "{tsv}");
    assert_eq!(local.run(&["run"]).code, 0);
    assert_eq!(state_of(|sql| lake.rows(sql)), serving_state(&local));
    // On the local file, maintain compacts it (tested on its own below).
    let run = local.run(&["maintain"]);
    assert_eq!(run.code, 0, "{run:?}");
    // Each recorded as a step of its own: the transform's last run stays the transform's.
    assert_eq!(local.state_rows("SELECT tool, status FROM runs ORDER BY run_id DESC LIMIT 1"), ["Text(\"lake-maintain\")|Text(\"success\")"]);
    // (The first, before the lake existed, failed.)
    assert_eq!(on_lake.state_rows("SELECT status FROM runs WHERE tool = 'lake-maintain' ORDER BY run_id"), ["Text(\"failed\")", "Text(\"success\")"]);
}

#[test]
fn a_second_writer_on_another_machine_is_refused_or_waits_for_the_lakes_lock() {
    let Some(lake) = Lake::start() else { return };
    let machine_b = Env::new(); // its own data dir: the local lock file does not meet ours
    machine_b.land("2024-01", &csv(&balance("BR", 2023, 1.0)));
    // Machine A's writer lock, taken as lake-transform takes it.
    let url = format!("ducklake:postgres:{}", lake.pg.conninfo("lake"));
    let a = materia_common::lakehouse_target::Lakehouse::new(
        Some(&url),
        Some("/unused/"),
        PathBuf::from("/unused"),
        option_env!("MATERIA_DEV_DUCKDB_EXTENSIONS"),
    )
    .unwrap();
    let held = a.writer_lock(Duration::ZERO).unwrap().expect("a DuckLake has a writer lock");
    let run = lake.run(&machine_b, &["run"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.error_line().contains("the DuckLake's writer lock (PostgreSQL advisory lock"), "{}", run.error_line());
    // Waiting: the other writer finishes a moment later.
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(held);
    });
    let run = lake.run(&machine_b, &["--wait-lock", "30", "run"]);
    assert_eq!(run.code, 0, "{run:?}");
    release.join().unwrap();
    assert_eq!(lake.rows("SELECT count(*) FROM raw.psd"), ["8"]);
}

#[test]
fn kill_9_mid_run_on_ducklake_leaves_the_last_snapshot_and_frees_the_lock() {
    let Some(lake) = Lake::start() else { return };
    let (a, _) = two_releases();
    let env = Env::new();
    env.land("2024-01", &a);
    assert_eq!(lake.run(&env, &["run"]).code, 0);
    let (before, snapshots) = (state_of(|sql| lake.rows(sql)), lake.snapshots());
    let objects = lake.moto.objects().len();
    let before_keys: std::collections::BTreeSet<String> = lake.moto.objects().into_iter().map(|(k, _, _)| k).collect();

    // A big second release; the run is killed once it has written data files (uncommitted).
    let mut rows: Vec<Row> = Vec::new();
    for i in 0..1000 {
        let c: &'static str = Box::leak(format!("X{i:03}").into_boxed_str());
        for y in 1960..2024 {
            rows.extend(balance(c, y, 1.0));
        }
    }
    env.land("2024-02", &csv(&rows));
    let mut c = env.cmd();
    c.arg("--lakehouse").arg(format!("ducklake:postgres:{}", lake.pg.conninfo("lake"))).arg("--lake-data-path").arg("s3://bkt/lake/");
    c.env(ENV_LAKE_S3_ENDPOINT, lake.moto.endpoint()).env(ENV_LAKE_S3_KEY_ID, "test-key-id").env(ENV_LAKE_S3_SECRET, "test-secret");
    let mut child = c.arg("run").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    materia_test_support::wait_until("the run to write data files", Duration::from_secs(60), || lake.moto.objects().len() > objects);
    assert!(child.try_wait().unwrap().is_none(), "the run finished before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(lake.snapshots(), snapshots, "no snapshot from a killed run");
    assert_eq!(state_of(|sql| lake.rows(sql)), before, "the catalog at its last good snapshot");
    let keys = |lake: &Lake| -> std::collections::BTreeSet<String> { lake.moto.objects().into_iter().map(|(k, _, _)| k).collect() };
    let orphans: Vec<String> = keys(&lake).into_iter().filter(|k| !before_keys.contains(k)).collect();
    assert!(!orphans.is_empty());

    // PostgreSQL ended the dead run's session, and its lock: the next run proceeds.
    let run = lake.run(&env, &["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(lake.rows("SELECT count(*) FROM serving.commodity_balance"), [(1000 * 64).to_string()]);
    // maintain removes what the killed run left.
    let run = lake.run(&env, &["maintain", "--keep-days", "0"]);
    assert_eq!(run.code, 0, "{run:?}");
    let left = keys(&lake);
    assert!(orphans.iter().all(|k| !left.contains(k)), "the killed run's files are removed: {orphans:?} / {}", run.stdout);
    assert_eq!(lake.rows("SELECT count(*) FROM serving.commodity_balance"), [(1000 * 64).to_string()]);
}
