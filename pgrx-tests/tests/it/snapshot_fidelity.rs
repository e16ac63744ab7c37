//! pg_reaper reads the backend status array itself instead of going through the
//! pg_stat_activity view; these tests prove it shows exactly what the view shows, to every kind
//! of caller, for every column the two have in common.

use pg_reaper_integration::*;

const COLUMNS: &str = "pid, backend_start, usename, datname, application_name, client_addr, backend_type, \
                       state, query, wait_event_type, wait_event, xact_start, query_start, state_change";

/// Rows in one and not the other, both ways, and how many rows pg_reaper returned. The view is
/// read in the same statement, after pg_reaper (CTEs are evaluated in order of use).
fn compare(client: &mut Client, filter: &str, view_where: &str) -> (i64, i64, i64) {
    let sql = format!(
        "WITH ours AS MATERIALIZED (SELECT {COLUMNS} FROM reaper.preview_matching($1::text::jsonb)), \
              n AS MATERIALIZED (SELECT count(*) AS n FROM ours), \
              theirs AS MATERIALIZED (SELECT {COLUMNS} FROM pg_catalog.pg_stat_activity \
                                       WHERE pid <> pg_backend_pid() AND ({view_where})) \
         SELECT (SELECT n FROM n), \
                (SELECT count(*) FROM (SELECT * FROM ours EXCEPT ALL SELECT * FROM theirs) a), \
                (SELECT count(*) FROM (SELECT * FROM theirs EXCEPT ALL SELECT * FROM ours) b)"
    );
    // Sessions here are stable, but a background process may change its wait event between
    // the two reads; the comparison is retried a few times before it counts as a failure.
    let mut last = (0, 0, 0);
    for _ in 0..5 {
        let row = client.query_one(&sql, &[&filter]).unwrap();
        last = (row.get(0), row.get(1), row.get(2));
        if last.1 == 0 && last.2 == 0 {
            return last;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    last
}

#[test]
fn preview_shows_what_pg_stat_activity_shows() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    cluster.create_role("other", "");
    cluster.create_role("reader", "IN ROLE pg_read_all_stats");
    let _tcp = cluster.session("app", "fidelity");
    let _local = Session::new(cluster.connect_local("app", "fidelity"));
    let _tx = cluster.session("other", "fidelity").idle_in_transaction();
    let (_busy, _query) = cluster.session("other", "fidelity").busy(&cluster);
    let _su = cluster.session("postgres", "fidelity");

    // A superuser sees everything, background processes included.
    let mut su = cluster.superuser();
    let all = r#"{"backend_type": {"regex": ""}, "include_superusers": true}"#;
    let (n, ours_only, theirs_only) = compare(&mut su, all, "backend_type IS NOT NULL");
    assert!(
        n >= 9,
        "expected the 5 sessions and the background processes, got {n}"
    );
    assert_eq!((ours_only, theirs_only), (0, 0), "superuser view differs");

    // A plain role sees its own sessions whole and only names for the others.
    let mut app = cluster.connect("app");
    let filter = r#"{"application_name": "fidelity"}"#;
    let (n, ours_only, theirs_only) = compare(
        &mut app,
        filter,
        "application_name = 'fidelity' AND usename <> 'postgres'",
    );
    assert_eq!(n, 4);
    assert_eq!((ours_only, theirs_only), (0, 0), "plain role view differs");
    let hidden: i64 = app
        .query_one(
            "SELECT count(*) FROM reaper.preview_matching('{\"application_name\": \"fidelity\"}') \
              WHERE query = '<insufficient privilege>' AND state IS NULL AND backend_start IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(hidden, 2, "other's two sessions are hidden from app");

    // pg_read_all_stats sees every session whole.
    let mut reader = cluster.connect("reader");
    let (n, ours_only, theirs_only) = compare(
        &mut reader,
        filter,
        "application_name = 'fidelity' AND usename <> 'postgres'",
    );
    assert_eq!(n, 4);
    assert_eq!(
        (ours_only, theirs_only),
        (0, 0),
        "pg_read_all_stats view differs"
    );
}

#[test]
fn the_callers_statistics_snapshot_survives_a_call() {
    // With stats_fetch_consistency = snapshot, a transaction's cumulative statistics are one
    // snapshot until it ends; pg_reaper refreshes only the activity part. (14 has neither the
    // setting nor pg_stat_get_snapshot_timestamp: its statistics came from the collector.)
    if server_major() < 15 {
        return skip(
            "snapshot_fidelity::the_callers_statistics_snapshot_survives_a_call",
            "PostgreSQL 14 has no stats_fetch_consistency",
        );
    }
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("stats_snapshot");
    let victim = cluster.session("app", &tag);
    let mut me = cluster.superuser();
    me.batch_execute(
        "BEGIN; SET LOCAL stats_fetch_consistency = snapshot; \
         SELECT pg_catalog.pg_stat_get_numscans('pg_catalog.pg_class'::pg_catalog.regclass)",
    )
    .unwrap();
    let stamp = "SELECT pg_catalog.pg_stat_get_snapshot_timestamp()::text";
    let before: Option<String> = me.query_one(stamp, &[]).unwrap().get(0);
    assert!(before.is_some(), "a statistics snapshot was taken");
    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}"}}"#),
        5000,
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].pid, victim.pid);
    let after: Option<String> = me.query_one(stamp, &[]).unwrap().get(0);
    assert_eq!(
        before, after,
        "the caller's statistics snapshot was thrown away"
    );
    me.batch_execute("COMMIT").unwrap();
}
