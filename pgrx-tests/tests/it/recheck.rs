//! The identity re-check between choosing the victims and signalling them. The hidden setting
//! `pg_reaper.recheck_delay_ms` widens that window so that a test can change a victim in it.

use pg_reaper_integration::*;
use std::time::{Duration, Instant};

#[test]
fn a_victim_that_exits_first_is_vanished_without_warning() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("exits");
    let victim = cluster.session("app", &tag);
    let pid = victim.pid;
    let rows = terminate_with_window(
        &cluster,
        &format!(r#"{{"application_name": "{tag}"}}"#),
        || {
            drop(victim);
            assert!(cluster.wait_gone(pid));
        },
    );
    assert_one_vanished(&rows, pid, "exited");
    let log = cluster.server_log();
    assert!(
        !log.contains("is not a PostgreSQL backend process"),
        "{log}"
    );
    assert!(!log.contains(&format!("pg_reaper: terminate pid={pid}")));
}

#[test]
fn a_victim_that_stops_matching_is_spared() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("stops");
    let victim = cluster.session("app", &tag).idle_in_transaction();
    let filter = format!(r#"{{"application_name": "{tag}", "state": "idle in transaction"}}"#);
    let rows = terminate_with_window(&cluster, &filter, || {
        assert_eq!(victim.run("COMMIT"), Ended::Ok);
    });
    assert_one_vanished(&rows, victim.pid, "no longer matched the filter");
    assert_eq!(
        victim.run("SELECT 1"),
        Ended::Ok,
        "the session was not signalled"
    );
}

#[test]
fn a_cancelled_caller_stops_promptly_and_signals_nothing() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("cancelled_caller");
    let victim = cluster.session("app", &tag);
    let mut caller = cluster.superuser();
    caller
        .batch_execute("SET pg_reaper.recheck_delay_ms = 60000; SET statement_timeout = '300ms'")
        .unwrap();
    let started = Instant::now();
    let err = call(
        &mut caller,
        "reaper.terminate_matching($1::text::jsonb, 5000)",
        &format!(r#"{{"application_name": "{tag}"}}"#),
    )
    .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(victim.run("SELECT 1"), Ended::Ok, "nothing was signalled");
    caller.batch_execute("RESET statement_timeout").unwrap();
    let logged: i64 = count(&mut caller, "SELECT count(*) FROM reaper.log");
    assert_eq!(logged, 0);
}

#[test]
fn a_victim_that_moves_on_after_the_recheck_is_matched_again_before_its_signal() {
    // The victim runs the matching query at the re-check, then finishes it and starts another
    // before its pinned check: on its live values it no longer matches, so the cancel meant for
    // the first query never reaches the second.
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("moves_on");
    let (victim, first) = cluster.session("app", &tag).busy(&cluster);
    let filter = format!(
        r#"{{"application_name": "{tag}", "query": "SELECT pg_sleep(600)", "state": "active"}}"#
    );
    let mut second = None;
    let rows = call_in_window(
        &cluster,
        Window::BeforeCheck,
        "reaper.cancel_matching($1::text::jsonb)",
        &filter,
        |observer| {
            observer
                .query_one("SELECT pg_cancel_backend($1)", &[&victim.pid])
                .unwrap();
            assert_eq!(first.wait(), Ended::Error("57014".into()));
            second = Some(victim.start("SELECT pg_sleep(601)"));
            wait_until_with(
                observer,
                victim.pid,
                "a.query = 'SELECT pg_sleep(601)' AND a.state = 'active'",
            );
        },
    );
    assert_one_vanished(&rows, victim.pid, "no longer matched the filter");
    let second = second.unwrap();
    assert!(
        second.still_running_after(std::time::Duration::from_millis(50)),
        "the second query was cancelled"
    );
    assert!(cluster.reaper_lines(victim.pid).is_empty());
}

#[test]
fn a_victim_that_becomes_a_protected_tool_after_the_recheck_is_spared() {
    // At the re-check it is `app_<tag>`; before its pinned check it calls itself pg_dump, one of
    // the protected tools: judged on its live application_name, it is no victim any more.
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("becomes_protected");
    let victim = cluster.session("app", &tag).idle_in_transaction();
    let filter = r#"{"usename": "app", "state": "idle in transaction"}"#;
    let rows = call_in_window(
        &cluster,
        Window::BeforeCheck,
        "reaper.terminate_matching($1::text::jsonb, 2000)",
        filter,
        |observer| {
            assert_eq!(victim.run("SET application_name = 'pg_dump'"), Ended::Ok);
            wait_until_with(observer, victim.pid, "a.application_name = 'pg_dump'");
        },
    );
    assert_one_vanished(
        &rows,
        victim.pid,
        "had become a protected session (pg_reaper.protected_applications, pg_reaper.protected_roles)",
    );
    assert_eq!(victim.run("SELECT 1"), Ended::Ok, "not signalled");
    assert!(cluster.reaper_lines(victim.pid).is_empty());
}

#[test]
fn a_victim_that_renames_itself_after_the_recheck_is_matched_on_its_new_name() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("renames");
    let victim = cluster.session("app", &tag).idle_in_transaction();
    let filter = format!(r#"{{"application_name": "{tag}"}}"#);
    let rows = call_in_window(
        &cluster,
        Window::BeforeCheck,
        "reaper.terminate_matching($1::text::jsonb, 2000)",
        &filter,
        |observer| {
            assert_eq!(victim.run("SET application_name = 'renamed'"), Ended::Ok);
            wait_until_with(observer, victim.pid, "a.application_name = 'renamed'");
        },
    );
    assert_one_vanished(&rows, victim.pid, "no longer matched the filter");
    assert_eq!(victim.run("SELECT 1"), Ended::Ok, "not signalled");
}

#[test]
fn a_blocker_that_stops_blocking_after_the_recheck_is_judged_on_a_fresh_look() {
    // The victim holds a lock that a waiter wants at the re-check; before its pinned check the
    // waiter gives up and the victim starts other work: on a look at the lock manager taken
    // then, it blocks nobody, so the cancel meant for a blocker never reaches its new query.
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    su.batch_execute("CREATE TABLE stale_locks (id int); GRANT ALL ON stale_locks TO app")
        .unwrap();
    let tag = tag("stops_blocking");
    let holder = cluster.session("app", &tag);
    assert_eq!(
        holder.run("BEGIN; LOCK TABLE stale_locks IN ACCESS EXCLUSIVE MODE"),
        Ended::Ok
    );
    let waiter = cluster.session("app", &format!("{tag}_waiter"));
    let waiting = waiter.start("SELECT count(*) FROM stale_locks");
    cluster.wait_until(waiter.pid, "a.wait_event_type = 'Lock'");
    let filter = format!(r#"{{"application_name": "{tag}", "blocking": true}}"#);
    let mut second = None;
    let rows = call_in_window(
        &cluster,
        Window::BeforeCheck,
        "reaper.cancel_matching($1::text::jsonb)",
        &filter,
        |observer| {
            observer
                .query_one("SELECT pg_cancel_backend($1)", &[&waiter.pid])
                .unwrap();
            assert_eq!(waiting.wait(), Ended::Error("57014".into()));
            second = Some(holder.start("SELECT pg_sleep(600)"));
            wait_until_with(
                observer,
                holder.pid,
                "a.query = 'SELECT pg_sleep(600)' AND a.state = 'active'",
            );
        },
    );
    assert_one_vanished(&rows, holder.pid, "no longer matched the filter");
    assert!(
        second
            .unwrap()
            .still_running_after(Duration::from_millis(50)),
        "the holder's new query was cancelled"
    );
    assert!(cluster.reaper_lines(holder.pid).is_empty());
}

#[test]
fn a_session_the_caller_may_not_see_is_judged_on_its_live_application_name() {
    // The caller (pg_signal_backend, without pg_read_all_stats) sees only the victim's pid,
    // role, database and application_name: its final check judges the live application_name
    // too, so a victim that became pg_dump after the re-check is spared.
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    cluster.create_role("signaller", "IN ROLE pg_signal_backend");
    let victim = cluster.session("app", &tag("hidden_rename"));
    let rows = call_in_window_as_role(
        &cluster,
        "signaller",
        Window::BeforeCheck,
        "reaper.terminate_matching($1::text::jsonb, 2000)",
        r#"{"usename": "app"}"#,
        |observer| {
            assert_eq!(victim.run("SET application_name = 'pg_dump'"), Ended::Ok);
            wait_until_with(observer, victim.pid, "a.application_name = 'pg_dump'");
        },
    )
    .unwrap();
    assert_one_vanished(
        &rows,
        victim.pid,
        "had become a protected session (pg_reaper.protected_applications, pg_reaper.protected_roles)",
    );
    assert_eq!(victim.run("SELECT 1"), Ended::Ok, "not signalled");
}
