//! Runs: a first build of the real release, incremental releases, one writer, model
//! kinds (failed runs: failures.rs; the memory bound: memory.rs).

use super::*;

#[test]
fn the_real_release_builds_every_serving_table_with_the_contract_columns() {
    let Some(real) = real_csv() else { return };
    let env = Env::new();
    env.land("2022-12", &real);
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");

    let cols = |t: &str| {
        env.rows(&format!(
            "SELECT column_name || ' ' || data_type FROM duckdb_columns() WHERE schema_name || '.' || table_name = '{t}' ORDER BY column_index"
        ))
    };
    assert_eq!(cols("serving.releases"), ["release DATE", "commodity_code VARCHAR", "files BIGINT", "rows BIGINT", "loaded_at TIMESTAMP"]);
    let av = cols("serving.attribute_values");
    assert_eq!(
        av.iter().map(|c| c.split(' ').next().unwrap()).collect::<Vec<_>>(),
        ["commodity_code", "commodity", "country_code", "country", "market_year", "attribute_id", "attribute", "unit", "value", "release"]
    );
    assert!(av.contains(&"value DOUBLE".to_owned()) && av.contains(&"release DATE".to_owned()), "{av:?}");
    let cb = cols("serving.commodity_balance");
    assert_eq!(
        cb.iter().map(|c| c.split(' ').next().unwrap()).collect::<Vec<_>>(),
        [
            "commodity_code",
            "commodity",
            "country_code",
            "country",
            "market_year",
            "unit",
            "beginning_stocks",
            "production",
            "imports",
            "total_supply",
            "exports",
            "domestic_consumption",
            "ending_stocks",
            "total_distribution",
            "stocks_to_use",
            "release"
        ]
    );
    let wb = cols("serving.world_balance");
    assert!(wb.iter().any(|c| c == "countries BIGINT") && wb.iter().any(|c| c == "stocks_to_use DOUBLE"), "{wb:?}");
    assert_eq!(
        cols("serving.revisions").iter().map(|c| c.split(' ').next().unwrap()).collect::<Vec<_>>(),
        [
            "commodity_code",
            "country_code",
            "market_year",
            "attribute_id",
            "attribute",
            "release",
            "previous_release",
            "value",
            "previous_value",
            "change"
        ]
    );

    assert_eq!(env.rows("SELECT release, commodity_code, files, rows FROM serving.releases"), ["2022-12-01|0711100|1|77957"]);
    assert_eq!(env.rows("SELECT count(*) FROM serving.attribute_values"), ["77957"]);
    assert_eq!(env.rows("SELECT count(*), count(DISTINCT country_code) FROM serving.commodity_balance"), ["4103|85"]);
    assert_eq!(env.rows("SELECT count(*), min(market_year), max(market_year) FROM serving.world_balance"), ["64|1960|2023"]);
    // Codes keep their leading zeros.
    assert_eq!(env.rows("SELECT DISTINCT attribute_id FROM serving.attribute_values WHERE attribute = 'Beginning Stocks'"), ["020"]);
    // Non-blocking identity audits report the real release's few breaking rows and let it through.
    let audits = env.state_rows("SELECT audit, blocking, failing_rows FROM audit_results WHERE failing_rows > 0 ORDER BY audit");
    assert_eq!(audits, ["Text(\"balance_identities\")|Integer(0)|Integer(1)", "Text(\"coffee_identities\")|Integer(0)|Integer(1)"]);
    assert!(run.stderr.contains("audit balance_identities on serving.commodity_balance failed: 1 offending row"), "{}", run.stderr);

    let again = env.run(&["run"]);
    assert_eq!(again.code, 3, "{again:?}");
    assert!(env.data.join("triggers/lakehouse.updated").exists());
}

#[test]
fn a_new_release_is_ingested_incrementally_and_revisions_are_tracked() {
    let (a, b) = two_releases();
    let env = Env::new();
    let a_path = env.land("2024-01", &a);
    assert_eq!(env.run(&["run"]).code, 0);
    let before = std::fs::metadata(env.data.join("triggers/lakehouse.updated")).unwrap().modified().unwrap();

    let b_path = env.land("2024-02", &b);
    let plan = env.run(&["plan"]);
    assert_eq!(plan.code, 0);
    assert!(plan.stdout.contains(&format!("raw.psd\tappend {b_path}\t1 new landing file")), "{}", plan.stdout);
    assert!(plan.stdout.contains("serving.revisions\tmerge\tupstream staging.psd_latest changed"), "{}", plan.stdout);
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");

    // raw.psd appended only the new file; the ledger has both.
    let actions = env.state_rows("SELECT model, action FROM model_runs WHERE run_id = (SELECT max(run_id) FROM runs) ORDER BY model");
    assert!(actions.contains(&"Text(\"raw.psd\")|Text(\"append\")".to_owned()), "{actions:?}");
    assert_eq!(env.rows("SELECT path FROM _materia.landing_ledger ORDER BY path"), [a_path, b_path]);
    assert_eq!(env.rows("SELECT release, rows FROM serving.releases ORDER BY release"), ["2024-01-01|32", "2024-02-01|47"]);

    // Latest release only: VN is there, CO 2022 exports are not.
    assert_eq!(env.rows("SELECT DISTINCT release FROM serving.attribute_values"), ["2024-02-01"]);
    assert_eq!(env.rows("SELECT count(*) FROM serving.commodity_balance WHERE country_code = 'VN'"), ["2"]);
    assert_eq!(
        env.rows("SELECT exports IS NULL, stocks_to_use IS NULL FROM serving.commodity_balance WHERE country_code = 'CO' AND market_year = 2022"),
        ["true|true"]
    );
    // The one revised value, with its previous value; the dropped row is not a revision.
    assert_eq!(
        env.rows("SELECT country_code, market_year, attribute_id, release, previous_release, value, previous_value, change FROM serving.revisions ORDER BY ALL"),
        [
            "BR|2023|028|2024-02-01|2024-01-01|120.0|100.0|20.0",
            "BR|2023|086|2024-02-01|2024-01-01|135.0|115.0|20.0",
            "BR|2023|176|2024-02-01|2024-01-01|125.0|105.0|20.0",
            "BR|2023|178|2024-02-01|2024-01-01|135.0|115.0|20.0",
        ]
    );
    assert_eq!(
        env.rows("SELECT market_year, countries, production, round(stocks_to_use, 4) FROM serving.world_balance ORDER BY market_year"),
        ["2022|3|300.0|11.6667", "2023|3|320.0|11.1667"] // 315 / (21 + 6): CO 2022 exports were dropped; 335 / (21 + 9)
    );
    let after = std::fs::metadata(env.data.join("triggers/lakehouse.updated")).unwrap().modified().unwrap();
    assert!(after > before, "a changing run signals the next step");
}

#[test]
fn a_second_writer_is_refused_or_waits() {
    let (a, _) = two_releases();
    let env = Env::new();
    env.land("2024-01", &a);
    let lock = materia_common::lock::Lock::acquire(&env.data.join("lakehouse.duckdb.lock"), Duration::ZERO).unwrap();
    let run = env.run(&["run"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.error_line().contains("the lakehouse is held by another writer"), "{}", run.error_line());
    assert!(run.error_line().ends_with(&format!("already running (pid {})", std::process::id())), "{}", run.error_line());
    assert!(!env.data.join("lakehouse.duckdb").exists(), "nothing opened");

    let waiter = env.cmd().args(["--wait-lock", "30", "run"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(lock);
    assert_eq!(waiter.wait_with_output().unwrap().status.code(), Some(0));
}

#[test]
fn an_incremental_by_unique_key_model_merges_new_rows_by_key() {
    unique_key_merge(|env, args| env.run(args), |env, sql| env.rows(sql));
}

#[test]
fn incremental_runs_match_a_full_rebuild_even_with_backfills_and_relandings() {
    let env = Env::new();
    let coffee = |p: f64, extra: &'static str| [balance("BR", 2023, p), balance(extra, 2023, p / 2.0), balance("CO", 2022, 7.0)].concat();
    let rel = |p: f64, extra: &'static str| csv(&coffee(p, extra));
    // Wheat is in January and March only: the coffee months after never touch it.
    env.land("2024-01", &with_wheat(&coffee(100.0, "VN"), &balance("US", 2023, 50.0)));
    assert_eq!(env.run(&["run"]).code, 0);
    env.land("2024-03", &with_wheat(&coffee(130.0, "VN"), &balance("US", 2023, 55.0)));
    assert_eq!(env.run(&["run"]).code, 0);
    // A backfilled month between the two: its successor's revisions change.
    env.land("2024-02", &rel(120.0, "ET"));
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("staging.psd_months\tmerge"), "{}", run.stdout);
    assert!(run.stdout.contains("serving.revisions\tmerge"), "{}", run.stdout);
    assert_eq!(
        env.rows("SELECT release, previous_release, value, previous_value FROM serving.revisions WHERE country_code = 'BR' AND attribute_id = '028' ORDER BY release"),
        ["2024-02-01|2024-01-01|120.0|100.0", "2024-03-01|2024-02-01|130.0|120.0"]
    );
    // March landed again the same month, without CO: the later file replaces the earlier.
    env.land("2024-03", &csv(&[balance("BR", 2023, 140.0), balance("VN", 2023, 65.0)].concat()));
    assert_eq!(env.run(&["run"]).code, 0);
    assert_eq!(env.rows("SELECT count(*) FROM serving.commodity_balance WHERE country_code = 'CO'"), ["0"]);
    assert_eq!(env.rows("SELECT value FROM serving.attribute_values WHERE country_code = 'BR' AND attribute_id = '028'"), ["140.0"]);
    // Two newer months in one run.
    env.land("2024-04", &rel(150.0, "VN"));
    env.land("2024-05", &rel(160.0, "ET"));
    assert_eq!(env.run(&["run"]).code, 0);
    assert_eq!(
        env.rows("SELECT release, previous_release, previous_value FROM serving.revisions WHERE country_code = 'BR' AND attribute_id = '028' AND release >= '2024-04-01' ORDER BY release"),
        ["2024-04-01|2024-03-01|140.0", "2024-05-01|2024-04-01|150.0"]
    );
    // May landed again, now April's values (and one new row: psd-extract lands no content
    // twice) and without ET: May has no revisions left, and ET's latest value goes back to
    // February's.
    env.land("2024-05", &csv(&[coffee(150.0, "VN"), balance("KE", 2023, 1.0)].concat()));
    assert_eq!(env.run(&["run"]).code, 0);
    assert_eq!(env.rows("SELECT count(*) FROM serving.revisions WHERE release = '2024-05-01'"), ["0"]);
    assert_eq!(env.rows("SELECT release FROM staging.psd_latest WHERE country_code = 'ET' AND attribute_id = '028'"), ["2024-02-01"]);
    // Wheat keeps March (the re-landing replaced coffee's March only) and its revision.
    assert_eq!(env.rows("SELECT DISTINCT release FROM serving.attribute_values WHERE commodity_code = '0410000'"), ["2024-03-01"]);
    assert_eq!(
        env.rows("SELECT release, previous_release, change FROM serving.revisions WHERE commodity_code = '0410000' AND attribute_id = '028'"),
        ["2024-03-01|2024-01-01|5.0"]
    );
    // Wheat's February backfilled with March's values: February has the revision now, and
    // March, recomputed, has none left (a month replaced although no rows replace it).
    env.land("2024-02", &with_wheat(&[], &balance("US", 2023, 55.0)));
    let run = env.run(&["run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("staging.psd_months\tmerge"), "{}", run.stdout);
    assert_eq!(
        env.rows("SELECT release, previous_release, change FROM serving.revisions WHERE commodity_code = '0410000' AND attribute_id = '028'"),
        ["2024-02-01|2024-01-01|5.0"]
    );
    assert_eq!(env.rows("SELECT count(*) FROM serving.revisions WHERE commodity_code = '0410000' AND release = '2024-03-01'"), ["0"]);

    let incremental = serving_state(&env);
    let run = env.run(&["run", "--rebuild"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(serving_state(&env), incremental, "a full rebuild gives what the incremental runs built");
}

#[test]
fn session_properties_apply_to_their_model_only() {
    let mut env = Env::new();
    let models = env.own_models();
    std::fs::write(
        models.join("staging_one_thread.sql"),
        "MODEL (name staging.one_thread, kind FULL, session_properties (threads = 7, memory_limit = '1GB'));\nSELECT current_setting('threads') AS threads, current_setting('memory_limit') AS mem, count(*) AS n FROM raw.psd",
    )
    .unwrap();
    std::fs::write(
        models.join("staging_after.sql"),
        "MODEL (name staging.after, kind FULL);\nSELECT current_setting('threads') AS threads, current_setting('memory_limit') AS mem FROM staging.one_thread",
    )
    .unwrap();
    env.land("2024-01", &csv(&balance("BR", 2023, 1.0)));
    let run = env.run(&["--memory-limit", "300MB", "run"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.rows("SELECT threads FROM staging.one_thread"), ["7"]);
    let after = env.rows("SELECT threads FROM staging.after");
    assert_ne!(after, ["7"], "reset after the model that set it");
    // The model's memory limit is its own; the run's --memory-limit comes back after it
    // (DuckDB's default, 80 % of RAM, would not).
    assert_eq!(env.rows("SELECT mem FROM staging.one_thread"), ["953.6 MiB"]);
    // 300 MB is 286.1 MiB; DuckDB shows it to 0.1 MiB, so the value put back can be 0.1 lower.
    let after = env.rows("SELECT mem FROM staging.after");
    assert!(after == ["286.1 MiB"] || after == ["286.0 MiB"], "the run's limit, put back: {after:?}");
}
