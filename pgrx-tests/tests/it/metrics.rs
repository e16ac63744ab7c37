//! `reaper.metrics()`: the counters count what calls and policy runs did, by policy, action and
//! outcome, on real sessions; the labels are never NULL; only monitoring roles may read them;
//! the node label is `pg_reaper.node_name`.

use pg_reaper_integration::*;

/// Preloaded, the worker off (the tests run the policies themselves).
fn preloaded(extra: &[&str]) -> Cluster {
    let mut settings = vec!["pg_reaper.worker = off"];
    settings.extend(extra);
    Cluster::preloaded(&settings)
}

/// The value of one series (0 when it is not there yet).
fn value(c: &mut Client, metric: &str, policy: &str, action: &str, outcome: &str) -> f64 {
    c.query_opt(
        "SELECT value FROM reaper.metrics() \
          WHERE metric = $1 AND policy = $2 AND action = $3 AND outcome = $4",
        &[&metric, &policy, &action, &outcome],
    )
    .unwrap()
    .map_or(0.0, |r| r.get(0))
}

#[test]
fn the_counters_count_what_calls_and_policies_did() {
    let cluster = preloaded(&["pg_reaper.node_name = 'node-a'"]);
    let mut su = cluster.superuser();
    let t = tag("metrics");
    let before = value(&mut su, "signals_total", "", "terminate", "terminated");
    let sessions: Vec<Session> = (0..3).map(|_| cluster.session("app", &t)).collect();
    let rows = terminate(&mut su, &format!(r#"{{"application_name": "{t}"}}"#), 5000);
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.outcome == "terminated"), "{rows:?}");
    assert_eq!(
        value(&mut su, "signals_total", "", "terminate", "terminated") - before,
        3.0
    );
    assert!(value(&mut su, "runs_total", "", "terminate", "") >= 1.0);
    for s in &sessions {
        assert!(!cluster.alive(s.pid));
    }

    // A policy's run: its own series; a failing one counts a failure.
    let p = format!("{t}_policy");
    let _victims: Vec<Session> = (0..2).map(|_| cluster.session("app", &p)).collect();
    su.execute(
        "INSERT INTO reaper.policies (name, filter, action) VALUES ($1, $2::text::jsonb, 'cancel')",
        &[&p, &format!(r#"{{"application_name": "{p}"}}"#)],
    )
    .unwrap();
    let rows = call(&mut su, &format!("reaper.run_policy('{p}')"), "").unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        value(&mut su, "signals_total", &p, "cancel", "cancelled"),
        2.0
    );
    assert_eq!(value(&mut su, "runs_total", &p, "cancel", ""), 1.0);
    assert_eq!(value(&mut su, "failures_total", &p, "", ""), 0.0);
    su.batch_execute(&format!(
        "SET session_replication_role = replica; \
         UPDATE reaper.policies SET filter = '{{\"no such key\": 1}}' WHERE name = '{p}'; \
         RESET session_replication_role"
    ))
    .unwrap();
    let _ = call(&mut su, &format!("reaper.run_policy('{p}')"), "");
    assert_eq!(value(&mut su, "failures_total", &p, "", ""), 1.0);

    // Labels are never NULL, the node is the setting, the reset time is in the past.
    let nulls = count(
        &mut su,
        "SELECT count(*) FROM reaper.metrics() \
          WHERE metric IS NULL OR policy IS NULL OR action IS NULL OR outcome IS NULL \
             OR node IS NULL OR value IS NULL",
    );
    assert_eq!(nulls, 0);
    let nodes: Vec<String> = su
        .query("SELECT DISTINCT node FROM reaper.metrics()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(nodes, vec!["node-a".to_string()]);
    let node: String = su.query_one("SELECT reaper.node()", &[]).unwrap().get(0);
    assert_eq!(node, "node-a");
    let reset_in_past = count(
        &mut su,
        "SELECT count(*) FROM reaper.metrics() WHERE metric = 'reset_timestamp_seconds' \
            AND value <= extract(epoch FROM clock_timestamp()) AND value > 0",
    );
    assert_eq!(reset_in_past, 1);
    // Up means its process runs: parked by pg_reaper.worker = off, it is up, as reaper.worker()
    // says.
    let pid_shown = count(
        &mut su,
        "SELECT count(*) FROM reaper.worker() WHERE pid IS NOT NULL",
    );
    assert_eq!(pid_shown, 1);
    assert_eq!(value(&mut su, "worker_up", "", "", ""), 1.0);
}

#[test]
fn only_monitoring_roles_read_the_metrics_in_read_only_transactions() {
    let cluster = preloaded(&[]);
    cluster.create_role("watcher", "IN ROLE pg_monitor");
    let err = cluster
        .connect("app")
        .query("SELECT * FROM reaper.metrics()", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    let mut watcher = cluster.connect("watcher");
    watcher
        .batch_execute("BEGIN READ ONLY; SELECT * FROM reaper.metrics(); COMMIT")
        .unwrap();
}

#[test]
fn a_standby_counts_its_own_and_the_counters_outlive_a_worker_restart() {
    let primary = preloaded(&["pg_reaper.node_name = 'primary-a'"]);
    let standby = Cluster::standby_of(
        &primary,
        Options {
            settings: vec![
                "shared_preload_libraries = 'pg_reaper'".into(),
                "pg_reaper.worker = off".into(),
                "pg_reaper.node_name = 'standby-a'".into(),
            ],
            ..Options::default()
        },
    );
    let mut s = standby.superuser();
    let t = tag("metrics_standby");
    let _victims: Vec<Session> = (0..2).map(|_| standby.session("app", &t)).collect();
    let rows = terminate(&mut s, &format!(r#"{{"application_name": "{t}"}}"#), 5000);
    assert_eq!(rows.len(), 2, "{rows:?}");
    // Read-only, as a standby is: its own counts, its own name.
    let mut tx = s.build_transaction().read_only(true).start().unwrap();
    let counted: f64 = tx
        .query_one(
            "SELECT value FROM reaper.metrics() WHERE metric = 'signals_total' \
               AND policy = '' AND action = 'terminate' AND outcome = 'terminated' AND node = 'standby-a'",
            &[],
        )
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    assert_eq!(counted, 2.0);

    // The worker's process ends; the postmaster starts it again: the counters stay.
    let mut p = primary.superuser();
    let t2 = tag("metrics_restart");
    let _v = primary.session("app", &t2);
    assert_eq!(
        terminate(&mut p, &format!(r#"{{"application_name": "{t2}"}}"#), 5000).len(),
        1
    );
    let before = value(&mut p, "signals_total", "", "terminate", "terminated");
    let worker: i32 = p
        .query_one("SELECT pid FROM reaper.worker()", &[])
        .unwrap()
        .get(0);
    p.execute("SELECT pg_terminate_backend($1)", &[&worker])
        .unwrap();
    wait_for(
        &mut p,
        &format!("SELECT pid IS NOT NULL AND pid <> {worker} FROM reaper.worker()"),
    );
    assert_eq!(
        value(&mut p, "signals_total", "", "terminate", "terminated"),
        before
    );
    assert!(before >= 1.0);
}

/// A scraper refuses a whole scrape that has one series twice: labels that come out the same
/// (a policy named '' like direct calls, one named like the overflow entry, names alike in
/// their first 256 bytes) make one series, their counts added up.
#[test]
fn no_series_comes_out_twice() {
    let cluster = preloaded(&[]);
    let mut su = cluster.superuser();
    let long = "x".repeat(300);
    let names = [
        String::new(),
        "(other)".to_string(),
        format!("{long}-a"),
        format!("{long}-b"),
    ];
    let t = tag("dup");
    let direct = cluster.session("app", &t);
    assert_eq!(
        terminate(&mut su, &format!(r#"{{"application_name": "{t}"}}"#), 5000).len(),
        1
    );
    assert!(!cluster.alive(direct.pid));
    for name in &names {
        let victim = cluster.session("app", &t);
        su.execute(
            "INSERT INTO reaper.policies (name, filter, timeout_ms) VALUES ($1, $2::text::jsonb, 5000)",
            &[name, &format!(r#"{{"application_name": "{t}"}}"#)],
        )
        .unwrap();
        let rows = call(
            &mut su,
            &format!("reaper.run_policy('{}')", name.replace('\'', "''")),
            "",
        )
        .unwrap();
        assert_eq!(rows.len(), 1, "{name}: {rows:?}");
        assert!(!cluster.alive(victim.pid));
        su.execute("DELETE FROM reaper.policies WHERE name = $1", &[name])
            .unwrap();
    }
    let twice = count(
        &mut su,
        "SELECT count(*) FROM (SELECT 1 FROM reaper.metrics() \
          GROUP BY metric, policy, action, outcome, node HAVING count(*) > 1) d",
    );
    assert_eq!(twice, 0);
    // Direct calls and the policy named '': one terminate run each.
    assert_eq!(value(&mut su, "runs_total", "", "terminate", ""), 2.0);
    assert_eq!(
        value(&mut su, "signals_total", "", "terminate", "terminated"),
        2.0
    );
    let cut = &format!("{long}-a")[..256];
    assert_eq!(
        value(&mut su, "signals_total", cut, "terminate", "terminated"),
        2.0
    );
}

/// Naming reaper.log in a publication while the node has no name of its own would let two
/// nodes' rows collide at the subscriber: refused. A publication that takes it along with every
/// table gets a WARNING; publications that do not touch it are left alone.
#[test]
fn the_log_is_not_published_without_a_node_name() {
    let cluster = preloaded(&["wal_level = logical"]);
    let (mut su, notices) = cluster.collecting_client("postgres");
    let err = su
        .batch_execute("CREATE PUBLICATION p FOR TABLE reaper.log WITH (publish = 'insert')")
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("55000"), "{err:?}");
    let message = err.as_db_error().unwrap().message();
    assert!(
        message.contains("would publish reaper.log while pg_reaper.node_name is not set"),
        "{message}"
    );
    su.batch_execute("CREATE PUBLICATION p FOR TABLE reaper.policies")
        .unwrap();
    let err = su
        .batch_execute("ALTER PUBLICATION p ADD TABLE reaper.log")
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("55000"), "{err:?}");
    let published = "SELECT count(*) FROM pg_catalog.pg_publication_tables WHERE tablename = 'log'";
    assert_eq!(count(&mut su, published), 0);
    // Along with every table (for change data capture, say): allowed, with a WARNING.
    assert!(notices.lock().unwrap().is_empty());
    su.batch_execute("CREATE PUBLICATION everything FOR ALL TABLES")
        .unwrap();
    assert_eq!(count(&mut su, published), 1);
    let said = notices.lock().unwrap().clone();
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].starts_with("WARNING 01000: publication \"everything\" publishes reaper.log"),
        "{said:?}"
    );
    // Which does not hold up changes to other publications.
    su.batch_execute(
        "ALTER PUBLICATION p RENAME TO policies_only; \
         ALTER PUBLICATION policies_only SET (publish = 'insert'); \
         ALTER PUBLICATION everything RENAME TO all_tables",
    )
    .unwrap();
    assert_eq!(notices.lock().unwrap().len(), 1);
    // Named, the node may publish its log.
    su.batch_execute("ALTER SYSTEM SET pg_reaper.node_name = 'n1'")
        .unwrap();
    su.batch_execute("SELECT pg_catalog.pg_reload_conf()")
        .unwrap();
    wait_for(&mut su, "SELECT reaper.node() = 'n1'");
    su.batch_execute("ALTER PUBLICATION policies_only ADD TABLE reaper.log")
        .unwrap();
    assert_eq!(count(&mut su, published), 2);
}

/// cancel_then_terminate of the sessions named `app`, stopped by `statement_timeout = timeout`.
fn timed_out_escalating(su: &mut Client, app: &str, timeout: &str, grace_ms: i64, timeout_ms: i64) {
    su.batch_execute(&format!("SET statement_timeout = '{timeout}'"))
        .unwrap();
    let err = call(
        su,
        &format!("reaper.cancel_then_terminate($1::text::jsonb, {grace_ms}, {timeout_ms})"),
        &format!(r#"{{"application_name": "{app}"}}"#),
    )
    .unwrap_err();
    su.batch_execute("RESET statement_timeout").unwrap();
    assert_eq!(sqlstate(&err), Some("57014"), "{err:?}");
}

/// A call stopped by an error after its signals went out (here statement_timeout during the
/// grace a cancel_then_terminate gives its victim) still counts them.
#[test]
fn signals_sent_before_an_error_are_counted() {
    let cluster = preloaded(&[]);
    let mut su = cluster.superuser();
    let t = tag("counted");
    // Idle in a transaction: a cancel does not end it, so the call waits out its grace.
    let victim = cluster.session("app", &t).idle_in_transaction();
    timed_out_escalating(&mut su, &t, "300ms", 60000, 1000);
    assert!(cluster.alive(victim.pid));
    assert_eq!(
        value(
            &mut su,
            "signals_total",
            "",
            "cancel_then_terminate",
            "signalled"
        ),
        1.0
    );
    assert_eq!(
        value(&mut su, "runs_total", "", "cancel_then_terminate", ""),
        1.0
    );
}

/// The same when the error comes while a cancel_then_terminate waits for its terminated
/// victim: two signals went to one session, which counts once. (The victim is stopped with
/// SIGSTOP, so that it cannot act on its SIGTERM until the call has failed.)
#[test]
fn a_session_signalled_twice_before_an_error_counts_once() {
    let cluster = preloaded(&[]);
    let mut su = cluster.superuser();
    let t = tag("counted_once");
    let victim = cluster.session("app", &t).idle_in_transaction();
    signal_process(victim.pid, libc::SIGSTOP);
    timed_out_escalating(&mut su, &t, "2s", 200, 60000);
    signal_process(victim.pid, libc::SIGCONT);
    // Both signals went out: the SIGTERM ends the victim once it runs again.
    assert!(cluster.wait_gone(victim.pid));
    assert_eq!(
        value(
            &mut su,
            "signals_total",
            "",
            "cancel_then_terminate",
            "signalled"
        ),
        1.0
    );
}
