//! pg_reaper as a scheduled guardian, with the real pg_cron (Debian's postgresql-15-cron).

use pg_reaper_integration::*;
use std::time::{Duration, Instant};

/// A cluster with pg_cron loaded, or None (the test reports itself skipped) where this machine
/// has no pg_cron for the server's major: Debian ships it for 15 only.
fn cron_cluster(test: &str) -> Option<Cluster> {
    let library = std::path::Path::new(&pg_config_value("pkglibdir")).join("pg_cron.so");
    if !library.exists() {
        skip(
            test,
            &format!(
                "no pg_cron for PostgreSQL {} on this machine",
                server_major()
            ),
        );
        return None;
    }
    let cluster = Cluster::start_with(Options {
        settings: vec![
            "shared_preload_libraries = 'pg_cron'".into(),
            "cron.database_name = 'postgres'".into(),
        ],
        ..Options::default()
    });
    cluster
        .superuser()
        .batch_execute("CREATE EXTENSION pg_cron")
        .unwrap();
    Some(cluster)
}

fn launcher_pid(client: &mut Client) -> i32 {
    client
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher'",
            &[],
        )
        .expect("the pg_cron launcher runs")
        .get(0)
}

#[test]
fn a_scheduled_run_policies_kills_the_match_and_spares_the_rest() {
    let Some(cluster) =
        cron_cluster("cron_schedule::a_scheduled_run_policies_kills_the_match_and_spares_the_rest")
    else {
        return;
    };
    cluster.create_role("app", "");
    let doomed = cluster.session("app", "cron_doomed").idle_in_transaction();
    let bystander = cluster
        .session("app", "cron_bystander")
        .idle_in_transaction();
    let mut su = cluster.superuser();
    let launcher = launcher_pid(&mut su);
    su.batch_execute(
        "INSERT INTO reaper.policies (name, filter, timeout_ms) \
         VALUES ('cron-idle-tx', '{\"application_name\": \"cron_doomed\", \"state\": \"idle in transaction\"}', 5000);
         SELECT cron.schedule('reaper', '* * * * *', 'SELECT count(*) FROM reaper.run_policies()');",
    )
    .unwrap();
    // Minute schedules: the first run comes within about a minute.
    let deadline = Instant::now() + Duration::from_secs(150);
    let status = loop {
        let row = su
            .query_opt(
                "SELECT status, return_message FROM cron.job_run_details \
                  WHERE status IN ('succeeded', 'failed') ORDER BY end_time LIMIT 1",
                &[],
            )
            .unwrap();
        if let Some(row) = row {
            break (row.get::<_, String>(0), row.get::<_, Option<String>>(1));
        }
        assert!(Instant::now() < deadline, "pg_cron never ran the job");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(status.0, "succeeded", "{status:?}");
    assert!(
        cluster.wait_gone(doomed.pid),
        "the matching session was killed"
    );
    assert_eq!(bystander.run("SELECT 1"), Ended::Ok, "the other one lives");
    assert!(cluster.alive(launcher), "the pg_cron scheduler lives");
    let logged: (String, String) = {
        let r = su
            .query_one(
                "SELECT policy, outcome FROM reaper.log WHERE pid = $1",
                &[&doomed.pid],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(logged, ("cron-idle-tx".into(), "terminated".into()));
    su.batch_execute("SELECT cron.unschedule('reaper')")
        .unwrap();
}

#[test]
fn the_pg_cron_scheduler_is_only_selected_by_its_exact_name() {
    let Some(cluster) =
        cron_cluster("cron_schedule::the_pg_cron_scheduler_is_only_selected_by_its_exact_name")
    else {
        return;
    };
    let mut su = cluster.superuser();
    let launcher = launcher_pid(&mut su);
    for filter in [
        r#"{"all": true, "include_superusers": true}"#,
        r#"{"backend_type": {"regex": "."}, "include_superusers": true}"#,
        r#"{"backend_type": {"regex": "^pg_cron"}, "include_superusers": true}"#,
        r#"{"application_name": "pg_cron scheduler", "include_superusers": true}"#,
    ] {
        assert!(
            !pids(&preview(&mut su, filter)).contains(&launcher),
            "{filter}"
        );
    }
    let named = preview(
        &mut su,
        r#"{"backend_type": "pg_cron launcher", "include_superusers": true}"#,
    );
    assert_eq!(pids(&named), vec![launcher]);
    // And without include_superusers, not even then: it runs as the bootstrap superuser.
    assert!(preview(&mut su, r#"{"backend_type": "pg_cron launcher"}"#).is_empty());
}
