//! Preview signals nothing; cancel stops the query and the session lives; terminate signals,
//! and with a timeout confirms every victim gone.

use pg_reaper_integration::*;
use std::time::Duration;

#[test]
fn preview_signals_nothing() {
    let cluster = Cluster::start();
    let tag = tag("preview");
    let idle = cluster.session("postgres", &tag);
    let (busy, query) = cluster.session("postgres", &tag).busy(&cluster);
    let mut me = cluster.superuser();
    let filter = format!(r#"{{"application_name": "{tag}", "include_superusers": true}}"#);
    let rows = preview(&mut me, &filter);
    assert_eq!(pids(&rows), sorted(vec![idle.pid, busy.pid]));
    assert!(rows
        .iter()
        .all(|r| r.outcome == "matched" && r.waited_ms == 0 && r.detail.is_none()));
    assert!(
        query.still_running_after(Duration::from_millis(300)),
        "preview must not cancel"
    );
    assert!(cluster.alive(idle.pid) && cluster.alive(busy.pid));
    assert_eq!(idle.run("SELECT 1"), Ended::Ok);
}

#[test]
fn cancel_stops_the_query_and_the_session_lives() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("cancel");
    let (busy, query) = cluster.session("app", &tag).busy(&cluster);
    let bystander_query = cluster.session("app", "bystander").busy(&cluster);
    let rows = cancel(
        &mut cluster.superuser(),
        &format!(r#"{{"application_name": "{tag}"}}"#),
    );
    assert_eq!(pids(&rows), vec![busy.pid]);
    assert_eq!(rows[0].outcome, "cancelled");
    assert_eq!(query.wait(), Ended::Error("57014".into()));
    assert_eq!(
        busy.run("SELECT 1"),
        Ended::Ok,
        "the cancelled session lives on"
    );
    assert!(bystander_query
        .1
        .still_running_after(Duration::from_millis(100)));
}

#[test]
fn terminate_without_wait_signals() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("signalled");
    let victim = cluster.session("app", &tag);
    let keeper = cluster.session("app", "keeper");
    let rows = terminate(
        &mut cluster.superuser(),
        &format!(r#"{{"application_name": "{tag}"}}"#),
        0,
    );
    assert_eq!(pids(&rows), vec![victim.pid]);
    assert_eq!(rows[0].outcome, "signalled");
    assert_eq!(rows[0].waited_ms, 0);
    assert!(cluster.wait_gone(victim.pid));
    assert!(cluster.alive(keeper.pid));
}

#[test]
fn terminate_with_timeout_confirms_every_victim() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("confirm");
    let victims: Vec<Session> = (0..8).map(|_| cluster.session("app", &tag)).collect();
    let (busy, query) = cluster.session("app", &tag).busy(&cluster);
    let keeper = cluster.session("app", "keeper");
    let rows = terminate(
        &mut cluster.superuser(),
        &format!(r#"{{"application_name": "{tag}"}}"#),
        5000,
    );
    let mut expected: Vec<i32> = victims.iter().map(|s| s.pid).collect();
    expected.push(busy.pid);
    assert_eq!(pids(&rows), sorted(expected));
    for row in &rows {
        assert_eq!(row.outcome, "terminated", "{row:?}");
        assert!((0..5000).contains(&row.waited_ms), "{row:?}");
        // Confirmed means gone by the time the call returns.
        assert!(!cluster.alive(row.pid), "{row:?}");
    }
    assert_eq!(query.wait(), Ended::Closed);
    assert!(cluster.alive(keeper.pid));
}

#[test]
fn a_victim_slower_than_the_timeout_is_timed_out() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("timed_out");
    let slow = cluster.session("app", &tag);
    let quick = cluster.session("app", &tag);
    // A stopped process cannot act on SIGTERM until it is continued.
    signal_process(slow.pid, libc::SIGSTOP);
    let rows = terminate(
        &mut cluster.superuser(),
        &format!(r#"{{"application_name": "{tag}"}}"#),
        2000,
    );
    signal_process(slow.pid, libc::SIGCONT);
    let outcome = |pid: i32| rows.iter().find(|r| r.pid == pid).expect("a row").clone();
    let slow_row = outcome(slow.pid);
    assert_eq!(slow_row.outcome, "timed_out");
    assert_eq!(slow_row.waited_ms, 2000);
    assert_eq!(outcome(quick.pid).outcome, "terminated");
    // Continued, it acts on the signal it was sent.
    assert!(cluster.wait_gone(slow.pid));
}

#[test]
fn a_caller_cancelled_while_waiting_stops_promptly() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    for how in ["statement_timeout", "pg_cancel_backend"] {
        let tag = tag(&format!("wait_cancelled_{how}"));
        let slow = cluster.session("app", &tag);
        signal_process(slow.pid, libc::SIGSTOP);
        let caller = cluster.session("postgres", "caller");
        // The caller's first call loads the library: done before, so the timeout counts the
        // wait only.
        assert_eq!(
            caller.run("SELECT reaper.validate_filter('{\"all\": true}')"),
            Ended::Ok
        );
        if how == "statement_timeout" {
            assert_eq!(caller.run("SET statement_timeout = '1s'"), Ended::Ok);
        }
        let started = std::time::Instant::now();
        let waiting = caller.start(&format!(
            "SELECT * FROM reaper.terminate_matching('{{\"application_name\": \"{tag}\"}}', 60000)"
        ));
        if how == "pg_cancel_backend" {
            cluster.wait_until(caller.pid, "a.wait_event = 'Extension'");
            let mut other = cluster.superuser();
            other
                .query_one("SELECT pg_cancel_backend($1)", &[&caller.pid])
                .unwrap();
        }
        assert_eq!(waiting.wait(), Ended::Error("57014".into()), "{how}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{how}: {:?}",
            started.elapsed()
        );
        // The signal was sent (it cannot be taken back, and the server log says so); the
        // transaction, with its audit rows, is gone; the caller is usable.
        assert_eq!(caller.run("SELECT 1"), Ended::Ok);
        assert_eq!(
            count(&mut cluster.superuser(), "SELECT count(*) FROM reaper.log"),
            0
        );
        assert!(cluster
            .server_log()
            .contains(&format!("pg_reaper: terminate pid={} ", slow.pid)));
        signal_process(slow.pid, libc::SIGCONT);
        assert!(cluster.wait_gone(slow.pid), "{how}");
    }
}

#[test]
fn an_auxiliary_process_is_a_failed_row_not_a_vanished_one() {
    // PostgreSQL's signal functions refuse processes outside the proc array (checkpointer,
    // background writer, ...): that is a failed delivery, said so, not a session that left.
    let cluster = Cluster::start();
    let (mut me, notices) = cluster.collecting_client("postgres");
    let filter = r#"{"backend_type": "checkpointer", "include_superusers": true}"#;
    let checkpointer = preview(&mut me, filter);
    assert_eq!(checkpointer.len(), 1, "{checkpointer:?}");
    let pid = checkpointer[0].pid;
    for f in [
        "reaper.cancel_matching($1::text::jsonb)",
        "reaper.terminate_matching($1::text::jsonb, 1000)",
    ] {
        let rows = call(&mut me, f, filter).unwrap();
        assert_eq!(rows.len(), 1, "{f}: {rows:?}");
        assert_eq!(rows[0].pid, pid);
        assert_eq!(rows[0].outcome, "failed", "{f}: {rows:?}");
        assert_eq!(
            rows[0].detail.as_deref(),
            Some(
                format!(
                    "PID {pid} is not a PostgreSQL backend process: pg_cancel_backend and \
                     pg_terminate_backend cannot signal it"
                )
                .as_str()
            ),
            "{f}"
        );
    }
    assert_eq!(pids(&preview(&mut me, filter)), vec![pid], "still running");
    assert!(
        notices.lock().unwrap().is_empty(),
        "{:?}",
        notices.lock().unwrap()
    );
    assert!(
        cluster.reaper_lines(pid).is_empty(),
        "nothing was signalled"
    );
    let failed = count(
        &mut me,
        &format!("SELECT count(*) FROM reaper.log WHERE pid = {pid} AND outcome = 'failed'"),
    );
    assert_eq!(failed, 2);
}
