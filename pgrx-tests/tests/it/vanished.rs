//! Victims that change under pg_reaper: a session that ends or stops matching after a preview is
//! simply not among the next call's rows (every call reads the activity afresh); one that ends or
//! stops matching between the choice and the signal is `vanished` and not signalled; and the
//! escalation spares a session its cancel fixed, but terminates an idle transaction that a
//! cancel cannot help.

use pg_reaper_integration::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cluster() -> Arc<Cluster> {
    shared_cluster(module_path!(), |cluster| cluster.create_role("app", ""))
}

/// The state pg_stat_activity shows for `pid` now.
fn state_of(cluster: &Cluster, pid: i32) -> Option<String> {
    cluster
        .superuser()
        .query_one(
            "SELECT state FROM pg_catalog.pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .unwrap()
        .get(0)
}

#[test]
fn a_session_gone_since_the_preview_is_not_in_the_rows() {
    let cluster = cluster();
    let tag = tag("gone_since_preview");
    let stays = cluster.session("app", &tag);
    let leaves = cluster.session("app", &tag);
    let leaves_pid = leaves.pid;
    let filter = format!(r#"{{"application_name": "{tag}"}}"#);
    let mut me = cluster.superuser();
    assert_eq!(
        pids(&preview(&mut me, &filter)),
        sorted(vec![stays.pid, leaves_pid])
    );
    drop(leaves);
    assert!(cluster.wait_gone(leaves_pid));

    let rows = terminate(&mut me, &filter, 5000);
    assert_eq!(pids(&rows), vec![stays.pid], "{rows:?}");
    assert_eq!(rows[0].outcome, "terminated");
    assert!(!cluster.alive(stays.pid));
    assert_eq!(cluster.reaper_lines(leaves_pid), Vec::<String>::new());
    assert!(!cluster
        .server_log()
        .contains("is not a PostgreSQL backend process"));
}

#[test]
fn a_session_that_stopped_matching_since_the_preview_is_spared() {
    let cluster = cluster();
    let tag = tag("stopped_since_preview");
    let idle_tx = cluster.session("app", &tag).idle_in_transaction();
    let filter = format!(r#"{{"application_name": "{tag}", "state": "idle in transaction"}}"#);
    let mut me = cluster.superuser();
    assert_eq!(pids(&preview(&mut me, &filter)), vec![idle_tx.pid]);
    assert_eq!(idle_tx.run("COMMIT"), Ended::Ok);
    cluster.wait_until(idle_tx.pid, "a.state = 'idle'");

    let rows = terminate(&mut me, &filter, 5000);
    assert!(rows.is_empty(), "{rows:?}");
    assert_eq!(idle_tx.run("SELECT 1"), Ended::Ok);
    assert_eq!(cluster.reaper_lines(idle_tx.pid), Vec::<String>::new());
}

#[test]
fn a_cancel_that_ends_the_match_spares_the_session() {
    let cluster = cluster();
    let tag = tag("cancel_spares");
    let (busy, query) = cluster.session("app", &tag).busy(&cluster);
    let filter = format!(r#"{{"application_name": "{tag}", "state": "active"}}"#);
    let started = Instant::now();
    let rows = escalate(&mut cluster.superuser(), &filter, 5000, 5000);
    let took = started.elapsed();
    assert_eq!(pids(&rows), vec![busy.pid]);
    assert_eq!(rows[0].outcome, "cancelled", "{rows:?}");
    assert_eq!(query.wait(), Ended::Error("57014".into()));
    assert_eq!(busy.run("SELECT 1"), Ended::Ok, "the session lives");
    // It stopped matching at once: the escalation does not sit out the grace period.
    assert!(took < Duration::from_millis(4000), "took {took:?}");
    let lines = cluster.reaper_lines(busy.pid);
    assert_eq!(lines.len(), 1, "a cancel, no terminate: {lines:?}");
    assert!(lines[0].contains("pg_reaper: cancel pid="), "{}", lines[0]);
}

#[test]
fn an_idle_transaction_is_not_helped_by_a_cancel_and_is_terminated() {
    let cluster = cluster();
    let tag = tag("cancel_no_help");
    let idle_tx = cluster.session("app", &tag).idle_in_transaction();
    let (busy, query) = cluster.session("app", &tag).busy(&cluster);
    let bystander = cluster.session("app", &tag).idle_in_transaction();
    let mut me = cluster.superuser();

    // A plain cancel is delivered, and changes nothing for an idle transaction.
    let only_idle_tx = format!(
        r#"{{"application_name": "{tag}", "pid": {}, "state": "idle in transaction"}}"#,
        idle_tx.pid
    );
    let rows = cancel(&mut me, &only_idle_tx);
    assert_eq!(pids(&rows), vec![idle_tx.pid]);
    assert_eq!(rows[0].outcome, "cancelled");
    // The cancel was delivered before the call returned; a transaction it had aborted would
    // refuse the next statement (25P02).
    assert_eq!(idle_tx.run("SELECT 1"), Ended::Ok);
    assert_eq!(
        state_of(&cluster, idle_tx.pid).as_deref(),
        Some("idle in transaction")
    );

    // The escalation: the busy session's cancel ends its match, the idle transaction still
    // matches when the grace period is over and is terminated.
    let filter = format!(
        r#"{{"application_name": "{tag}", "pid": [{}, {}], "state": ["active", "idle in transaction"]}}"#,
        idle_tx.pid, busy.pid
    );
    let rows = escalate(&mut me, &filter, 2000, 5000);
    assert_eq!(pids(&rows), sorted(vec![idle_tx.pid, busy.pid]));
    let row = |pid: i32| rows.iter().find(|r| r.pid == pid).unwrap().clone();
    let terminated = row(idle_tx.pid);
    assert_eq!(terminated.outcome, "terminated", "{terminated:?}");
    assert!(
        (2000..7000).contains(&terminated.waited_ms),
        "the grace period counts: {terminated:?}"
    );
    assert!(!cluster.alive(idle_tx.pid));
    assert_eq!(row(busy.pid).outcome, "cancelled");
    assert_eq!(query.wait(), Ended::Error("57014".into()));
    assert_eq!(busy.run("SELECT 1"), Ended::Ok);
    assert_eq!(bystander.run("SELECT 1"), Ended::Ok, "not named: untouched");
}

#[test]
fn a_victim_that_exits_after_the_cancel_is_not_terminated() {
    let cluster = cluster();
    let tag = tag("exits_after_cancel");
    let (busy, query) = cluster.session("app", &tag).busy(&cluster);
    let pid = busy.pid;
    // Without its handle, the session disconnects as soon as its statement ends.
    drop(busy);
    // The filter still matches after the cancel (it does not name the state), so only the
    // exit ends the match.
    let filter = format!(r#"{{"application_name": "{tag}"}}"#);
    let started = Instant::now();
    let rows = escalate(&mut cluster.superuser(), &filter, 5000, 5000);
    let took = started.elapsed();
    assert_eq!(query.wait(), Ended::Error("57014".into()));
    assert_eq!(pids(&rows), vec![pid]);
    assert_eq!(rows[0].outcome, "vanished", "{rows:?}");
    assert!(took < Duration::from_millis(4000), "took {took:?}");
    assert!(cluster.wait_gone(pid));
    let lines = cluster.reaper_lines(pid);
    assert_eq!(lines.len(), 1, "the cancel only: {lines:?}");
    assert!(lines[0].contains("pg_reaper: cancel pid="), "{}", lines[0]);
}

#[test]
fn a_cancel_victim_that_exits_before_its_signal_is_vanished() {
    let cluster = cluster();
    let tag = tag("cancel_exits_in_window");
    let (stays, stays_query) = cluster.session("app", &tag).busy(&cluster);
    let leaves = cluster.session("app", &tag);
    let leaves_pid = leaves.pid;
    let rows = call_in_window(
        &cluster,
        Window::BeforeRecheck,
        "reaper.cancel_matching($1::text::jsonb)",
        &format!(r#"{{"application_name": "{tag}"}}"#),
        |_| {
            drop(leaves);
            assert!(cluster.wait_gone(leaves_pid));
        },
    );
    assert_eq!(pids(&rows), sorted(vec![stays.pid, leaves_pid]));
    let row = |pid: i32| rows.iter().find(|r| r.pid == pid).unwrap().clone();
    let gone = row(leaves_pid);
    assert_eq!(gone.outcome, "vanished", "{gone:?}");
    assert!(
        gone.detail.as_deref().unwrap_or("").contains("exited"),
        "{gone:?}"
    );
    assert_eq!(row(stays.pid).outcome, "cancelled");
    assert_eq!(stays_query.wait(), Ended::Error("57014".into()));
    assert_eq!(cluster.reaper_lines(leaves_pid), Vec::<String>::new());
    assert_eq!(cluster.reaper_lines(stays.pid).len(), 1);
}

#[test]
fn one_vanished_victim_does_not_stop_the_others() {
    let cluster = cluster();
    let tag = tag("one_of_three");
    let first = cluster.session("app", &tag).idle_in_transaction();
    let middle = cluster.session("app", &tag).idle_in_transaction();
    let last = cluster.session("app", &tag).idle_in_transaction();
    let filter = format!(r#"{{"application_name": "{tag}", "state": "idle in transaction"}}"#);
    let rows = call_in_window(
        &cluster,
        Window::BeforeRecheck,
        "reaper.terminate_matching($1::text::jsonb, 5000)",
        &filter,
        |_| {
            assert_eq!(middle.run("COMMIT"), Ended::Ok);
        },
    );
    assert_eq!(pids(&rows), sorted(vec![first.pid, middle.pid, last.pid]));
    let row = |pid: i32| rows.iter().find(|r| r.pid == pid).unwrap().clone();
    let spared = row(middle.pid);
    assert_eq!(spared.outcome, "vanished", "{spared:?}");
    assert!(
        spared
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("no longer matched"),
        "{spared:?}"
    );
    for s in [&first, &last] {
        assert_eq!(row(s.pid).outcome, "terminated");
        assert!(!cluster.alive(s.pid));
    }
    assert_eq!(middle.run("SELECT 1"), Ended::Ok, "never signalled");
    assert_eq!(cluster.reaper_lines(middle.pid), Vec::<String>::new());
}
