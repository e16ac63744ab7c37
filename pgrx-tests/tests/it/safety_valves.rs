//! The safety valves of automatic kills: a policy's dry run (action `report`), the circuit
//! breaker (`max_signals_per_minute`, the `tripped` row, `worker_status().tripped_until`,
//! `reaper.reset_policy`), and `NOTIFY pg_reaper` for each call or run that signalled.

use pg_reaper_integration::*;
use postgres::fallible_iterator::FallibleIterator;
use std::time::Duration;

fn add_policy(su: &mut Client, name: &str, filter: &str, action: &str, cap: Option<i32>) {
    su.execute(
        "INSERT INTO reaper.policies (name, filter, action, max_signals_per_minute) \
         VALUES ($1, $2::text::jsonb, $3, $4)",
        &[&name, &filter, &action, &cap],
    )
    .unwrap();
}

fn run_policy(su: &mut Client, name: &str) -> Vec<Row> {
    call(su, &format!("reaper.run_policy('{name}')"), "").unwrap()
}

fn log_rows(su: &mut Client, policy: &str, outcome: &str) -> i64 {
    count(
        su,
        &format!(
            "SELECT count(*) FROM reaper.log WHERE policy = '{policy}' AND outcome = '{outcome}'"
        ),
    )
}

#[test]
fn a_report_policy_records_what_it_would_signal_and_signals_nothing() {
    let cluster = Cluster::preloaded(&[]);
    let mut su = cluster.superuser();
    let t = tag("report");
    let victims: Vec<Session> = (0..3)
        .map(|_| cluster.session("app", &t).idle_in_transaction())
        .collect();
    let filter = format!(r#"{{"application_name": "{t}", "state": "idle in transaction"}}"#);
    add_policy(&mut su, "dry-run", &filter, "report", None);
    let rows = run_policy(&mut su, "dry-run");
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r.outcome == "matched"), "{rows:?}");
    assert_eq!(
        count(
            &mut su,
            "SELECT count(*) FROM reaper.log WHERE policy = 'dry-run' AND action = 'report' AND outcome = 'matched'"
        ),
        3
    );
    for v in &victims {
        assert!(cluster.alive(v.pid));
        assert!(
            cluster.reaper_lines(v.pid).is_empty(),
            "no pg_reaper: LOG line"
        );
    }
    // The worker runs it too, and counts what it matched.
    su.batch_execute("UPDATE reaper.policies SET run_every = '200 ms' WHERE name = 'dry-run'")
        .unwrap();
    wait_for(
        &mut su,
        "SELECT (last_outcomes->>'matched')::int = 3 FROM reaper.worker_status() WHERE policy = 'dry-run'",
    );
    for v in &victims {
        assert!(cluster.alive(v.pid));
    }
    // Roll it out: the same rule as terminate ends them.
    su.batch_execute("UPDATE reaper.policies SET action = 'terminate' WHERE name = 'dry-run'")
        .unwrap();
    for v in &victims {
        assert!(cluster.wait_gone(v.pid));
    }
    // The action is checked.
    let err = su
        .batch_execute("UPDATE reaper.policies SET action = 'reports' WHERE name = 'dry-run'")
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("22023"), "{err}");
}

#[test]
fn the_breaker_trips_at_its_cap_says_so_once_and_resets() {
    let cluster = Cluster::preloaded(&["pg_reaper.worker = off"]);
    let (mut su, notices) = cluster.collecting_client("postgres");
    let t = tag("breaker");
    let sessions: Vec<Session> = (0..5).map(|_| cluster.session("app", &t)).collect();
    // cancel: the idle sessions live on, and match again at every run.
    add_policy(
        &mut su,
        "capped",
        &format!(r#"{{"application_name": "{t}"}}"#),
        "cancel",
        Some(3),
    );
    let rows = run_policy(&mut su, "capped");
    assert_eq!(rows.len(), 3, "the victims it left get no row: {rows:?}");
    assert!(rows.iter().all(|r| r.outcome == "cancelled"), "{rows:?}");
    let warnings: Vec<String> = notices
        .lock()
        .unwrap()
        .iter()
        .filter(|n| n.starts_with("WARNING") && n.contains("tripped"))
        .cloned()
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("WARNING")
            && warnings[0].contains(
                "max_signals_per_minute (3) reached: 2 matching session(s) left unsignalled"
            ),
        "{warnings:?}"
    );
    assert_eq!(log_rows(&mut su, "capped", "tripped"), 1);
    let detail: String = su
        .query_one(
            "SELECT detail FROM reaper.log WHERE policy = 'capped' AND outcome = 'tripped'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        detail.contains("2 matching session(s) left unsignalled"),
        "{detail}"
    );
    assert!(detail.contains("reaper.reset_policy('capped')"), "{detail}");

    // Tripped: the next run signals nothing and writes nothing more; a NOTICE tells its caller.
    notices.lock().unwrap().clear();
    assert!(run_policy(&mut su, "capped").is_empty());
    assert_eq!(log_rows(&mut su, "capped", "tripped"), 1);
    let said: Vec<String> = notices.lock().unwrap().clone();
    assert!(!said.iter().any(|n| n.starts_with("WARNING")), "{said:?}");
    assert!(
        said.iter().any(|n| n.starts_with("NOTICE")
            && n.contains("policy \"capped\" is tripped, max_signals_per_minute (3) reached: 5 matching session(s) left unsignalled")),
        "{said:?}"
    );

    // A policy of the same name in another database has a window of its own.
    su.batch_execute("CREATE DATABASE breaker_other").unwrap();
    let mut other = cluster.connect_to("postgres", "breaker_other");
    other.batch_execute("CREATE EXTENSION pg_reaper").unwrap();
    add_policy(
        &mut other,
        "capped",
        &format!(r#"{{"application_name": "{t}"}}"#),
        "cancel",
        Some(3),
    );
    assert_eq!(
        run_policy(&mut other, "capped").len(),
        3,
        "not tripped by the other database's"
    );
    let was: bool = other
        .query_one("SELECT reaper.reset_policy('capped')", &[])
        .unwrap()
        .get(0);
    assert!(was, "its own trip");
    assert!(
        run_policy(&mut su, "capped").is_empty(),
        "still tripped here"
    );
    // Direct calls are not capped.
    assert_eq!(
        cancel(&mut su, &format!(r#"{{"application_name": "{t}"}}"#)).len(),
        5
    );

    // Reset: it signals again at once (and trips again at its cap).
    let was: bool = su
        .query_one("SELECT reaper.reset_policy('capped')", &[])
        .unwrap()
        .get(0);
    assert!(was);
    assert_eq!(run_policy(&mut su, "capped").len(), 3);
    assert_eq!(log_rows(&mut su, "capped", "tripped"), 2);
    for s in &sessions {
        assert!(cluster.alive(s.pid));
    }

    // Who may reset: whoever may UPDATE reaper.policies; a policy that exists.
    let mut app = cluster.connect("app");
    let err = app
        .query_one("SELECT reaper.reset_policy('capped')", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    let err = su
        .query_one("SELECT reaper.reset_policy('no such policy')", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42704"), "{err}");
    // UPDATE on the table is not enough: the policy's owner must be a role one may act as.
    cluster.create_role("editor", "");
    su.batch_execute(
        "GRANT USAGE ON SCHEMA reaper TO editor; GRANT SELECT, UPDATE ON reaper.policies TO editor",
    )
    .unwrap();
    let err = cluster
        .connect("editor")
        .query_one("SELECT reaper.reset_policy('capped')", &[])
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("SET ROLE to its owner"), "{message}");

    let err = su
        .batch_execute(
            "UPDATE reaper.policies SET max_signals_per_minute = -1 WHERE name = 'capped'",
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("22023"), "{err}");
    // A negative cap written past the trigger is refused at the run, not run uncapped.
    su.batch_execute(
        "SET session_replication_role = replica; \
         UPDATE reaper.policies SET max_signals_per_minute = -1 WHERE name = 'capped'; \
         RESET session_replication_role",
    )
    .unwrap();
    let rows = run_policy(&mut su, "capped");
    assert!(rows.is_empty(), "{rows:?}");
    assert_eq!(log_rows(&mut su, "capped", "failed"), 1);
    let failed: String = su
        .query_one(
            "SELECT detail FROM reaper.log WHERE policy = 'capped' AND outcome = 'failed'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        failed.contains("max_signals_per_minute is negative"),
        "{failed}"
    );
}

#[test]
fn an_escalation_counts_its_cancel_and_its_terminate() {
    let cluster = Cluster::preloaded(&["pg_reaper.worker = off"]);
    let mut su = cluster.superuser();
    let t = tag("breaker_escalation");
    // Idle in a transaction: a cancel does not help, so each is cancelled, then terminated.
    let sessions: Vec<Session> = (0..2)
        .map(|_| cluster.session("app", &t).idle_in_transaction())
        .collect();
    add_policy(
        &mut su,
        "escalating",
        &format!(r#"{{"application_name": "{t}", "state": "idle in transaction"}}"#),
        "cancel_then_terminate",
        Some(3),
    );
    su.batch_execute(
        "UPDATE reaper.policies SET grace_ms = 100, timeout_ms = 5000 WHERE name = 'escalating'",
    )
    .unwrap();
    let rows = run_policy(&mut su, "escalating");
    // Two cancels and one termination: the second victim's termination was one too many.
    let terminated = rows.iter().filter(|r| r.outcome == "terminated").count();
    assert_eq!(terminated, 1, "{rows:?}");
    assert_eq!(log_rows(&mut su, "escalating", "tripped"), 1);
    let alive = sessions.iter().filter(|s| cluster.alive(s.pid)).count();
    assert_eq!(alive, 1);
}

#[test]
fn the_setting_caps_a_policy_without_its_own_and_the_worker_shows_the_trip() {
    let cluster = Cluster::preloaded(&["pg_reaper.max_signals_per_minute = 2"]);
    let mut su = cluster.superuser();
    let t = tag("breaker_worker");
    let sessions: Vec<Session> = (0..4).map(|_| cluster.session("app", &t)).collect();
    add_policy(
        &mut su,
        "every-200ms",
        &format!(r#"{{"application_name": "{t}"}}"#),
        "cancel",
        None,
    );
    su.batch_execute("UPDATE reaper.policies SET run_every = '200 ms' WHERE name = 'every-200ms'")
        .unwrap();
    wait_for(
        &mut su,
        "SELECT tripped_until > now() FROM reaper.worker_status() WHERE policy = 'every-200ms'",
    );
    let signalled: i64 = su
        .query_one(
            "SELECT signalled FROM reaper.worker_status() WHERE policy = 'every-200ms'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(signalled, 2, "the setting's cap");
    assert_eq!(log_rows(&mut su, "every-200ms", "tripped"), 1);
    // Several runs later, still two signals and one trip.
    let runs = |su: &mut Client| -> i64 {
        su.query_one(
            "SELECT runs FROM reaper.worker_status() WHERE policy = 'every-200ms'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let before = runs(&mut su);
    wait_for(
        &mut su,
        &format!(
            "SELECT runs >= {} FROM reaper.worker_status() WHERE policy = 'every-200ms'",
            before + 3
        ),
    );
    assert_eq!(log_rows(&mut su, "every-200ms", "tripped"), 1);
    su.query_one("SELECT reaper.reset_policy('every-200ms')", &[])
        .unwrap();
    wait_for(
        &mut su,
        "SELECT signalled >= 4 FROM reaper.worker_status() WHERE policy = 'every-200ms'",
    );
    for s in &sessions {
        assert!(cluster.alive(s.pid));
    }
}

#[test]
fn a_call_that_signalled_notifies_listeners() {
    let cluster = Cluster::preloaded(&["cluster_name = 'fleet-a'", "pg_reaper.worker = off"]);
    let mut su = cluster.superuser();
    let mut listener = cluster.superuser();
    listener.batch_execute("LISTEN pg_reaper").unwrap();
    let t = tag("notify");
    let victim = cluster.session("app", &t);
    let next = |listener: &mut Client| -> Option<serde_json::Value> {
        let mut n = listener.notifications();
        let mut it = n.timeout_iter(Duration::from_secs(5));
        it.next()
            .unwrap()
            .map(|n| serde_json::from_str(n.payload()).unwrap())
    };
    // Nothing signalled: nothing sent.
    assert!(preview(&mut su, &format!(r#"{{"application_name": "{t}"}}"#)).len() == 1);
    assert!(terminate(&mut su, r#"{"application_name": "nobody at all"}"#, 0).is_empty());
    // Rolled back: lost.
    su.batch_execute("BEGIN").unwrap();
    assert_eq!(
        cancel(&mut su, &format!(r#"{{"application_name": "{t}"}}"#)).len(),
        1
    );
    su.batch_execute("ROLLBACK").unwrap();
    // Committed: sent.
    let rows = terminate(&mut su, &format!(r#"{{"application_name": "{t}"}}"#), 5000);
    assert_eq!(rows[0].outcome, "terminated");
    let payload = next(&mut listener).expect("a notification");
    assert_eq!(payload["action"], "terminate", "{payload}");
    assert_eq!(payload["caller"], "postgres");
    assert!(payload["policy"].is_null());
    assert_eq!(payload["outcomes"]["terminated"], 1, "{payload}");
    assert_eq!(payload["cluster_name"], "fleet-a");
    assert!(
        next(&mut listener).is_none(),
        "one for the committed call only"
    );
    assert!(!cluster.alive(victim.pid));

    // A policy run names its policy.
    let v2 = cluster.session("app", &t);
    add_policy(
        &mut su,
        "notifying",
        &format!(r#"{{"application_name": "{t}"}}"#),
        "terminate",
        None,
    );
    assert_eq!(run_policy(&mut su, "notifying").len(), 1);
    let payload = next(&mut listener).expect("a notification");
    assert_eq!(payload["policy"], "notifying", "{payload}");
    assert_eq!(payload["outcomes"]["signalled"], 1, "{payload}");
    assert!(cluster.wait_gone(v2.pid));
}

#[test]
fn a_full_notification_queue_skips_the_notification_with_a_warning() {
    // Only 17 lets the queue be made small enough to fill (max_notify_queue_pages).
    if server_major() < 17 {
        skip(
            "safety_valves::a_full_notification_queue_skips_the_notification_with_a_warning",
            "max_notify_queue_pages is new in 17; the 8 GB queue of earlier majors cannot be filled in a test",
        );
        return;
    }
    let cluster = Cluster::preloaded(&["max_notify_queue_pages = 64", "pg_reaper.worker = off"]);
    let mut su = cluster.superuser();
    // A listener that reads nothing, in an open transaction, holds the queue's tail.
    let mut stuck = cluster.superuser();
    // (LISTEN takes effect at its own commit: not in the transaction that holds the tail.)
    stuck.batch_execute("LISTEN pg_reaper").unwrap();
    stuck.batch_execute("BEGIN; SELECT 1").unwrap();
    let big = "x".repeat(7900);
    let mut sent = 0;
    while count(
        &mut su,
        "SELECT (pg_notification_queue_usage() <= 0.5)::int::int8",
    ) == 1
    {
        // 64 pages of 8 kB: half of them filled by some 40 notifications of 8 kB.
        assert!(
            sent < 1000,
            "the queue does not fill: is the listener holding its tail?"
        );
        su.execute("SELECT pg_notify('pg_reaper', $1)", &[&big])
            .unwrap();
        sent += 1;
    }
    let (mut caller, notices) = cluster.collecting_client("postgres");
    let t = tag("notify_full");
    let victim = cluster.session("app", &t);
    let rows = terminate(
        &mut caller,
        &format!(r#"{{"application_name": "{t}"}}"#),
        5000,
    );
    assert_eq!(rows[0].outcome, "terminated", "the call does not fail");
    let warned = notices
        .lock()
        .unwrap()
        .iter()
        .any(|n| n.starts_with("WARNING") && n.contains("NOTIFY pg_reaper skipped"));
    assert!(warned, "{:?}", notices.lock().unwrap());
    assert!(!cluster.alive(victim.pid));
}
