//! Publishing: every serving table with its `_meta`, nothing twice, the previous export
//! kept for `rollback`, and readers that are never torn nor blocked.

use super::*;

#[test]
fn publishes_every_serving_table_with_its_meta_and_nothing_else() {
    let env = Env::new();
    env.lakehouse(1, 100);
    let run = env.run(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    let export_id = run.stdout.trim().to_owned();
    assert!(export_id.starts_with("1-"), "{export_id}");
    assert_eq!(env.read(&env.analytics()), (1, 100, 1, export_id.clone()));
    let c =
        duckdb::Connection::open_with_flags(env.analytics(), duckdb::Config::default().access_mode(duckdb::AccessMode::ReadOnly).unwrap()).unwrap();
    let mut st = c.prepare("SELECT schema_name || '.' || table_name FROM duckdb_tables() ORDER BY 1").unwrap();
    let tables: Vec<String> = st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(tables, ["main._meta", "serving.numbers", "serving.other"], "tables only: no view, no staging, no engine state");
    let views: i64 = c.query_row("SELECT count(*) FROM duckdb_views() WHERE NOT internal", [], |r| r.get(0)).unwrap();
    assert_eq!(views, 0);
    let (state, counts): (String, String) = c.query_row("SELECT lakehouse_state, row_counts FROM _meta", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!(state.len(), 64);
    assert_eq!(counts, r#"{"numbers":100,"other":1}"#);
    assert!(run.stderr.contains("serving.a_view is a view: only tables are exported"), "{}", run.stderr);
    assert!(env.strays().is_empty(), "{:?}", env.strays());
    assert_eq!(env.state("SELECT action || ' ' || export_id FROM exports"), [format!("publish {export_id}")]);
}

#[test]
fn an_unchanged_lakehouse_is_not_exported_again() {
    let env = Env::new();
    env.lakehouse(1, 10);
    let first = env.run(&[]);
    assert_eq!(first.code, 0);
    let ino = std::fs::metadata(env.analytics()).unwrap().ino();
    let again = env.run(&[]);
    assert_eq!(again.code, 3, "{again:?}");
    assert!(again.stderr.contains("the lakehouse is unchanged since export"), "{}", again.stderr);
    assert_eq!(again.stdout, first.stdout, "the published export id");
    assert_eq!(std::fs::metadata(env.analytics()).unwrap().ino(), ino, "the file was not touched");
    assert!(!env.data.join("analytics.duckdb.prev").exists());
}

#[test]
fn a_new_export_keeps_the_previous_one_and_rollback_swaps_them() {
    let env = Env::new();
    env.lakehouse(1, 10);
    let one = env.run(&[]).stdout.trim().to_owned();
    env.lakehouse(2, 20);
    let run = env.run(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    let two = run.stdout.trim().to_owned();
    let prev = env.data.join("analytics.duckdb.prev");
    assert_eq!(env.read(&env.analytics()), (2, 20, 2, two.clone()));
    assert_eq!(env.read(&prev), (1, 10, 1, one.clone()));

    let run = env.run(&["--rollback"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.trim(), one);
    assert_eq!(env.read(&env.analytics()), (1, 10, 1, one.clone()));
    assert_eq!(env.read(&prev), (2, 20, 2, two.clone()));
    // After a rollback the published file no longer matches the lakehouse: export again.
    let run = env.run(&[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(env.read(&env.analytics()).0, 2);
    assert_eq!(env.state("SELECT action FROM exports ORDER BY rowid"), ["publish", "publish", "rollback", "publish"]);
}

#[test]
fn rollback_without_a_previous_export_is_a_clear_error() {
    let env = Env::new();
    let run = env.run(&["--rollback"]);
    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("nothing to roll back to"), "{}", run.error_line());
}

#[test]
fn readers_are_never_torn_never_blocked_and_see_each_new_export_at_once() {
    const READERS: usize = 8;
    const EXPORTS: i64 = 100;
    const ROWS: i64 = 5_000;
    let env = Env::new();
    env.lakehouse(0, ROWS);
    assert_eq!(env.run(&[]).code, 0);

    let published = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (published, stop, seen, path) = (published.clone(), stop.clone(), seen.clone(), env.analytics());
            std::thread::spawn(move || {
                let mut reader = AnalyticsReader::new(path);
                let (mut queries, mut errors, mut stale) = (0u64, Vec::new(), 0u64);
                while !stop.load(Ordering::SeqCst) {
                    let newest = published.load(Ordering::SeqCst);
                    let result = reader.connection().map_err(|e| e.to_string()).and_then(|c| {
                        c.query_row(
                            "SELECT min(generation), max(generation), count(*), (SELECT generation FROM serving.other), (SELECT export_id FROM _meta) FROM serving.numbers",
                            [],
                            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?, r.get::<_, String>(4)?)),
                        )
                        .map_err(|e| e.to_string())
                    });
                    queries += 1;
                    match result {
                        Ok((lo, hi, n, other, id)) => {
                            if lo != hi || n != ROWS || other != lo {
                                errors.push(format!("torn: {lo}..{hi}, {n} rows, other {other}"));
                            }
                            if lo < newest {
                                stale += 1;
                            }
                            seen.lock().unwrap().push((id, lo));
                        }
                        Err(e) => errors.push(e),
                    }
                    // Query continuously, but leave the 2 cores some room for the exports.
                    std::thread::sleep(Duration::from_millis(2));
                }
                (queries, errors, stale, reader.opens())
            })
        })
        .collect();

    let mut ids = std::collections::HashMap::new();
    for generation in 1..=EXPORTS {
        env.lakehouse(generation, ROWS);
        let run = env.run(&[]);
        assert_eq!(run.code, 0, "{run:?}");
        ids.insert(run.stdout.trim().to_owned(), generation);
        published.store(generation, Ordering::SeqCst);
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for r in readers {
        let (queries, errors, stale, opens) = r.join().unwrap();
        assert!(errors.is_empty(), "reader errors: {:?}", &errors[..errors.len().min(5)]);
        assert_eq!(stale, 0, "a query after a publish saw an older export");
        assert!(opens > 1, "the reader followed the swaps ({opens} opens)");
        total += queries;
    }
    assert!(total > EXPORTS as u64 * READERS as u64, "readers kept querying during the exports ({total} queries)");
    // Every result matched exactly one export: its _meta id and its data agree.
    for (id, generation) in seen.lock().unwrap().iter() {
        if *generation > 0 {
            assert_eq!(ids.get(id), Some(generation), "export {id} served generation {generation}");
        }
    }
}
