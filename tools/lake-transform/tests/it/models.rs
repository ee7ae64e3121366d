//! The models themselves: edited, bad, missing, sandboxed, unit-tested; the lakehouse's
//! contract; the offline extensions.

use super::*;

#[test]
fn an_edited_model_rebuilds_itself_and_what_is_downstream_only() {
    let (a, _) = two_releases();
    let mut env = Env::new();
    let models = env.own_models();
    env.land("2024-01", &a);
    assert_eq!(env.run(&["run"]).code, 0);

    // A comment or whitespace is not a change.
    let path = models.join("serving_commodity_balance.sql");
    let sql = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{sql}\n-- a note\n")).unwrap();
    assert_eq!(env.run(&["run"]).code, 3);

    std::fs::write(&path, sql.replace("NULLIF(domestic_consumption + exports, 0)", "NULLIF(domestic_consumption + exports + 0, 0)")).unwrap();
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    let built: Vec<&str> = run.stdout.lines().filter(|l| !l.contains("\tskip\t")).map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(built, ["serving.commodity_balance", "serving.world_balance"]);
}

#[test]
fn bad_models_are_refused_before_anything_runs() {
    let mut env = Env::new();
    let models = env.own_models();
    let cases: Vec<(&str, &str, String)> = vec![
        ("x.sql", "MODEL (\n  name staging.x,\n  kind FULL,\n  cron '@daily'\n);\nSELECT 1", "x.sql:4: unknown MODEL property 'cron'".into()),
        (
            "x.sql",
            "MODEL (name staging.x, kind FULL);\nSELECT * FROM serving.nope",
            "x.sql:2: staging.x reads serving.nope, which is not a model".into(),
        ),
        ("x.sql", "MODEL (name staging.x, kind FULL);\nSELECT * FROM staging.y", String::new()),
        (
            "y.sql",
            "MODEL (name staging.y, kind FULL);\nSELECT * FROM staging.x",
            "models depend on each other in a cycle: staging.x, staging.y".into(),
        ),
    ];
    for (file, src, msg) in cases {
        std::fs::write(models.join(file), src).unwrap();
        if msg.is_empty() {
            continue;
        }
        let run = env.run(&["run"]);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.error_line().contains(&msg), "{} does not contain {msg}", run.error_line());
        assert!(!env.data.join("lakehouse.duckdb").exists(), "the lakehouse was not touched");
        // Recorded once, so materia-status and the operator see it.
        let last = env.state_rows("SELECT status, error FROM runs ORDER BY run_id DESC LIMIT 1");
        assert!(last[0].starts_with("Text(\"failed\")") && last[0].contains(&msg), "{last:?}");
    }
}

#[test]
fn a_binary_outside_a_release_names_its_models_or_fails_clearly() {
    // A release has models/ beside bin/; target/debug has none, and no build or source
    // path is ever guessed.
    let env = Env::new();
    let mut c = materia_test_support::tool(env!("CARGO_BIN_EXE_lake-transform"));
    let run = Run::from(c.arg("--data-dir").arg(&env.data).arg("run").output().unwrap());
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.error_line().contains("no models folder:") && run.error_line().contains("pass --models DIR or set MATERIA_MODELS"),
        "{}",
        run.error_line()
    );
    assert_eq!(env.state_rows("SELECT status FROM runs"), ["Text(\"failed\")"]);

    // The same binary inside a release layout finds the release's models.
    let release = env.root.join("releases/v9");
    std::fs::create_dir_all(release.join("bin")).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_lake-transform"), release.join("bin/lake-transform")).unwrap();
    copy_dir(&env.models, &release.join("models"));
    let mut c = materia_test_support::tool(release.join("bin/lake-transform"));
    let run = Run::from(c.arg("--data-dir").arg(&env.data).arg("plan").output().unwrap());
    assert!(run.code == 0 || run.code == 3, "{run:?}");
    assert!(run.stdout.contains("serving.world_balance"), "{}", run.stdout);
}

#[test]
fn self_reading_models_and_partitions_from_are_checked() {
    let mut env = Env::new();
    let models = env.own_models();
    for (src, msg) in [
        (
            "MODEL (name staging.z, kind INCREMENTAL_BY_PARTITION, partitioned_by release,\n partitions_from serving.releases);\nSELECT release FROM staging.psd_values",
            "partitions_from serving.releases: expected an INCREMENTAL_BY_PARTITION model that staging.z reads, partitioned by (release) or more",
        ),
        (
            "MODEL (name staging.z, kind INCREMENTAL_BY_PARTITION, partitioned_by release);\nSELECT * FROM @this_model",
            "z.sql:2: @this_model needs columns (name TYPE, ...) in the header",
        ),
    ] {
        std::fs::write(models.join("z.sql"), src).unwrap();
        let run = env.run(&["run"]);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.error_line().contains(msg), "{} does not contain {msg}", run.error_line());
    }
    // Declared columns are checked against what the model returns, and the run rolls back.
    std::fs::write(models.join("z.sql"), "MODEL (name staging.z, kind FULL, columns (release DATE, n BIGINT));\nSELECT release, count(*) AS rows FROM staging.psd_values GROUP BY release").unwrap();
    env.land("2024-01", &csv(&balance("BR", 2023, 1.0)));
    let run = env.run(&["run"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.error_line().contains("staging.z returned columns (release, rows) but its header declares (release, n)"), "{}", run.error_line());
    assert!(!env.data.join("lakehouse.duckdb").exists(), "a failed first build leaves no lakehouse");
}

#[test]
fn plan_touches_nothing_and_no_landing_files_means_nothing_to_do() {
    let env = Env::new();
    let plan = env.run(&["plan"]);
    assert_eq!(plan.code, 3, "{plan:?}");
    assert!(plan.stdout.contains("raw.psd\tskip\tno landing files match psd/*/*/*.csv.gzip yet"), "{}", plan.stdout);
    assert!(plan.stdout.contains("serving.world_balance\tskip\twaiting for"), "{}", plan.stdout);
    assert!(!env.data.join("lakehouse.duckdb").exists());
    assert_eq!(env.run(&["run"]).code, 3);
}

#[test]
fn every_shipped_model_has_a_passing_unit_test() {
    let env = Env::new();
    let run = env.run(&["test"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.ends_with("19 passed, 0 failed\n"), "{}", run.stdout);
    let tests = std::fs::read_to_string(env.models.join("tests/psd.toml")).unwrap();
    let mut models = 0;
    for f in std::fs::read_dir(&env.models).unwrap() {
        let src = std::fs::read_to_string(f.unwrap().path()).unwrap_or_default();
        if let Some(name) = src.lines().find_map(|l| l.trim().strip_prefix("name ")) {
            let name = name.trim_end_matches(',');
            models += 1;
            assert!(tests.contains(&format!("model = \"{name}\"")), "no unit test for {name}");
        }
    }
    assert_eq!(models, 10);
    // And on a DuckLake catalog: the models' SQL on the lake's tables.
    let run = env.run(&["test", "--ducklake"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.ends_with("19 passed, 0 failed\n"), "{}", run.stdout);
    assert!(!env.data.exists(), "unit tests never touch the data dir");
}

#[test]
fn the_unit_tests_run_on_a_postgresql_catalog_each_in_a_schema_dropped_after_it() {
    // A catalog that wants its password: the tests get it from PGPASSWORD alone.
    let Some(pg) = Postgres::start_with_password("pg-test-s3cret") else { return };
    pg.create_db("tests");
    let mut env = Env::new();
    let models = env.own_models();
    let catalog = format!("--ducklake=postgres:{}", pg.conninfo("tests"));
    let leftovers = || pg.query("tests", "SELECT count(*) FROM information_schema.schemata WHERE schema_name LIKE 'materia_test_%'");
    let run = Run::from(env.cmd().args(["test", &catalog]).env("PGPASSWORD", "pg-test-s3cret").output().unwrap());
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.ends_with("19 passed, 0 failed\n"), "{}", run.stdout);
    assert_eq!(leftovers(), "0", "every test's metadata schema is dropped");
    // A failing test fails there too, and leaves nothing either.
    let path = models.join("tests/psd.toml");
    let src = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, src.replace("change = 1.5 }", "change = 1.25 }")).unwrap();
    let run = Run::from(env.cmd().args(["test", "revisions_build", &catalog]).env("PGPASSWORD", "pg-test-s3cret").output().unwrap());
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("change = 1.25") && run.stdout.contains("0 passed, 1 failed"), "{}", run.stdout);
    assert_eq!(leftovers(), "0");
    // Without the password the catalog refuses, and says so; with one in the URL, refused.
    let run = env.run(&["test", "revisions_build", &catalog]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("password"), "{}", run.stdout);
    let run = env.run(&["test", &format!("{catalog} password=x")]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("set PGPASSWORD") && !run.stderr.contains("password=x"), "{}", run.stderr);
}

#[test]
fn a_failing_unit_test_says_which_row_and_exits_non_zero() {
    let mut env = Env::new();
    let models = env.own_models();
    let path = models.join("tests/psd.toml");
    let src = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, src.replace("change = 1.5 }", "change = 1.25 }")).unwrap();
    let run = env.run(&["test", "revisions_build"]);
    assert_eq!(run.code, 1, "{run:?}");
    let line = run.stdout.lines().find(|l| l.starts_with("FAILED\t")).unwrap();
    assert!(
        line.contains("revisions_build_pairs_each_value_with_the_previous_release_that_had_it_and_keeps_the_changed")
            && line.contains("change = 1.25"),
        "{line}"
    );
    assert!(run.stdout.contains("0 passed, 1 failed"), "{}", run.stdout);
    assert!(run.error_line().ends_with("1 of 1 model tests failed"), "{}", run.error_line());

    std::fs::write(&path, format!("{src}\n[x]\nmodel = \"serving.releases\"\nrows = []\noutputs = []\n")).unwrap();
    let run = env.run(&["test"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.error_line().contains("test x: unknown key 'rows'"), "{}", run.error_line());
}

#[test]
fn model_sql_is_sandboxed() {
    let (a, _) = two_releases();
    let mut env = Env::new();
    env.land("2024-01", &a);
    let models = env.own_models();
    assert_eq!(env.run(&["run"]).code, 0);
    let before = env.snapshot();
    let secret = env.root.join("secret.duckdb");
    std::fs::write(env.root.join("secret.txt"), "s3cret").unwrap();
    let landing = env.data.join("landing");
    let evil = models.join("staging_evil.sql");

    // A model is one query: a second statement is refused before anything runs.
    for second in [
        "COMMIT".to_owned(),
        format!("COPY (SELECT 1) TO '{}/psd/2024/01/evil.csv.gzip'", landing.display()),
        format!("ATTACH '{}' AS s", secret.display()),
        "SET enable_external_access = true".to_owned(),
    ] {
        std::fs::write(&evil, format!("MODEL (name staging.evil, kind FULL);\nSELECT 1 AS x;\n{second}")).unwrap();
        let run = env.run(&["run"]);
        assert_eq!(run.code, 2, "{second}: {run:?}");
        assert!(run.error_line().contains("staging_evil.sql:3: a model or audit is one SQL query"), "{}", run.error_line());
    }
    // Nor may its settings open the sandbox.
    std::fs::write(&evil, "MODEL (name staging.evil, kind FULL, session_properties (enable_external_access = true));\nSELECT 1 AS x").unwrap();
    let run = env.run(&["run"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.error_line().contains("enable_external_access is not a tuning setting a model may change"), "{}", run.error_line());

    // One query that reads outside the landing dir fails the run, named, rolled back.
    for read in [
        format!("SELECT * FROM read_text('{}')", env.root.join("secret.txt").display()),
        format!("SELECT * FROM read_csv('{}/../secret.txt')", landing.display()),
        "SELECT count(*) AS n FROM read_blob('/etc/hostname')".to_owned(),
    ] {
        std::fs::write(&evil, format!("MODEL (name staging.evil, kind FULL);\n{read}")).unwrap();
        let run = env.run(&["run"]);
        assert_eq!(run.code, 1, "{read}: {run:?}");
        let line = run.error_line();
        assert!(line.contains("building staging.evil") && line.contains("file system operations are disabled"), "{line}");
    }
    std::fs::remove_file(&evil).unwrap();
    assert_eq!(env.snapshot(), before, "nothing changed");
    assert!(!landing.join("psd/2024/01/evil.csv.gzip").exists() && !secret.exists());
    assert_eq!(env.run(&["run"]).code, 3, "the landing dir is still readable: nothing new");
}

#[test]
fn the_lakehouse_keeps_its_contract() {
    // What serve-export may rely on (materia_common::lakehouse): serving tables, and a
    // change marker that moves exactly when a run changed something.
    let (a, b) = two_releases();
    let env = Env::new();
    env.land("2024-01", &a);
    assert_eq!(env.run(&["run"]).code, 0);
    let marker = || env.rows(&materia_common::lakehouse::change_marker_sql("lakehouse"));
    let first = marker();
    assert!(first.iter().any(|r| r.starts_with("serving.commodity_balance|")), "{first:?}");
    let serving =
        env.rows(&format!("SELECT table_name FROM duckdb_tables() WHERE schema_name = '{}' ORDER BY 1", materia_common::lakehouse::SERVING_SCHEMA));
    assert!(serving.contains(&"commodity_balance".to_owned()), "{serving:?}");

    assert_eq!(env.run(&["run"]).code, 3, "nothing new");
    assert_eq!(marker(), first, "a run that changed nothing leaves the marker");

    env.land("2024-02", &b);
    assert_eq!(env.run(&["run"]).code, 0);
    assert_ne!(marker(), first, "a run that changed tables moves the marker");
}

#[test]
fn duckdb_extensions_load_offline_and_a_missing_one_names_the_fix() {
    let env = Env::new();
    let run = env.run(&["extensions"]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.iter().map(|l| l.split('\t').next().unwrap()).collect::<Vec<_>>(), ["ducklake", "postgres_scanner", "httpfs"]);
    // From the build's own copy (scripts/duckdb-lib.sh laid it out): nothing downloaded.
    assert!(lines.iter().all(|l| l.contains("/.duckdb/") && l.ends_with(".duckdb_extension")), "{}", run.stdout);

    let empty = env.root.join("no-extensions");
    std::fs::create_dir_all(&empty).unwrap();
    let run = Run::from(env.cmd().arg("extensions").env(materia_common::layout::ENV_DUCKDB_EXTENSIONS, &empty).output().unwrap());
    assert_eq!(run.code, 1, "{run:?}");
    let version = duckdb::Connection::open_in_memory()
        .unwrap()
        .query_row("SELECT library_version FROM pragma_version()", [], |r| r.get::<_, String>(0))
        .unwrap();
    let want = format!(
        "DuckDB extension ducklake is not in {}/{version}/linux_amd64 (no tool downloads extensions): run scripts/setup-dev.sh",
        empty.display()
    );
    assert!(run.error_line().contains(&want), "{}", run.error_line());
}

#[test]
fn a_model_whose_file_is_gone_is_dropped_with_its_state() {
    // A release that removes a model (as one removed staging.psd_changes) must not leave its
    // table behind: space, and a serving table the export would still publish.
    let mut env = Env::new();
    let models = env.own_models();
    std::fs::write(models.join("staging_extra.sql"), "MODEL (name staging.extra, kind FULL);\nSELECT count(*) AS n FROM raw.psd").unwrap();
    env.land("2024-01", &csv(&balance("BR", 2023, 1.0)));
    assert_eq!(env.run(&["run"]).code, 0);
    let stored = |env: &Env| {
        env.rows("SELECT schema_name || '.' || table_name FROM duckdb_tables() WHERE table_name IN ('world_balance', 'extra') ORDER BY 1")
    };
    assert_eq!(stored(&env), ["serving.world_balance", "staging.extra"]);

    std::fs::remove_file(models.join("serving_world_balance.sql")).unwrap();
    std::fs::remove_file(models.join("staging_extra.sql")).unwrap();
    let plan = env.run(&["plan"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(plan.stdout.starts_with("serving.world_balance\tdrop\tits model file is gone\nstaging.extra\tdrop\t"), "{}", plan.stdout);
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("serving.world_balance\tdrop\t\tits model file is gone"), "{}", run.stdout);
    assert!(stored(&env).is_empty());
    assert_eq!(env.rows("SELECT count(*) FROM _materia.models WHERE name IN ('serving.world_balance', 'staging.extra')"), ["0"]);
    assert_eq!(env.run(&["run"]).code, 3, "nothing left to do");

    // A model that still reads a dropped one fails the run, named, and the drop is rolled back.
    std::fs::write(models.join("staging_extra.sql"), "MODEL (name staging.extra, kind FULL);\nSELECT count(*) AS n FROM raw.psd").unwrap();
    std::fs::write(models.join("serving_reader.sql"), "MODEL (name serving.reader, kind FULL);\nSELECT n FROM staging.extra").unwrap();
    assert_eq!(env.run(&["run"]).code, 0);
    std::fs::remove_file(models.join("staging_extra.sql")).unwrap();
    std::fs::write(models.join("serving_reader.sql"), "MODEL (name serving.reader, kind FULL);\nSELECT n + 0 AS n FROM staging.extra").unwrap();
    let run = env.run(&["run"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.error_line().contains("extra"), "{}", run.error_line());
    assert_eq!(stored(&env), ["staging.extra"], "rolled back");
}

#[test]
fn a_model_turned_from_a_table_into_a_view_and_back_rebuilds_in_place() {
    // A lakehouse built by a release where staging.psd_values was a table, then a release
    // where it is a view (and back): DuckDB does not replace one type by the other.
    let mut env = Env::new();
    let models = env.own_models();
    let view = std::fs::read_to_string(models.join("staging_psd_values.sql")).unwrap();
    let table = view.replace("kind VIEW", "kind FULL");
    assert_ne!(table, view);
    env.land("2024-01", &csv(&balance("BR", 2023, 1.0)));
    std::fs::write(models.join("staging_psd_values.sql"), &table).unwrap();
    assert_eq!(env.run(&["run"]).code, 0);
    let kind = |env: &Env| env.rows("SELECT table_type FROM information_schema.tables WHERE table_schema = 'staging' AND table_name = 'psd_values'");
    assert_eq!(kind(&env), ["BASE TABLE"]);
    let before = serving_state(&env);

    std::fs::write(models.join("staging_psd_values.sql"), &view).unwrap();
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(kind(&env), ["VIEW"]);
    assert_eq!(serving_state(&env), before, "the same data either way");

    std::fs::write(models.join("staging_psd_values.sql"), &table).unwrap();
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(kind(&env), ["BASE TABLE"]);
    assert_eq!(serving_state(&env), before);
}
