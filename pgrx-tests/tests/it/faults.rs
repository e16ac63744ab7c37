//! Fault cases: victims that exit on their own before their signal, callers cancelled or
//! terminated while they wait, victims slower than the timeout, and a long wait that must not
//! grow the caller's memory. No WARNING reaches the client, nothing is left half-done, and the
//! server never restarts.

use pg_reaper_integration::*;
use std::time::{Duration, Instant};

#[test]
fn a_closed_victim_named_by_pid_gives_no_row_no_error_and_no_warning() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("closed");
    let gone = cluster.session("app", &tag);
    let gone_pid = gone.pid;
    let live = cluster.session("app", &tag);
    drop(gone);
    assert!(cluster.wait_gone(gone_pid));
    let (mut me, notices) = cluster.collecting_client("postgres");
    for f in [
        "reaper.preview_matching($1::text::jsonb)",
        "reaper.cancel_matching($1::text::jsonb)",
        "reaper.terminate_matching($1::text::jsonb)",
        "reaper.terminate_matching($1::text::jsonb, 1000)",
        "reaper.cancel_then_terminate($1::text::jsonb, 100, 1000)",
    ] {
        let rows = call(&mut me, f, &format!(r#"{{"pid": {gone_pid}}}"#)).expect(f);
        assert!(rows.is_empty(), "{f}: {rows:?}");
    }
    // The closed pid next to a live one: only the live one is a row.
    let rows = terminate(
        &mut me,
        &format!(r#"{{"pid": [{gone_pid}, {}]}}"#, live.pid),
        5000,
    );
    assert_eq!(pids(&rows), vec![live.pid]);
    assert_eq!(rows[0].outcome, "terminated");
    assert!(
        notices.lock().unwrap().is_empty(),
        "{:?}",
        notices.lock().unwrap()
    );
    assert!(!cluster
        .server_log()
        .contains("is not a PostgreSQL backend process"));
}

#[test]
fn a_victim_exiting_before_its_signal_is_vanished_without_warnings() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    for (n, f) in [
        "reaper.cancel_matching($1::text::jsonb)",
        "reaper.terminate_matching($1::text::jsonb)",
        "reaper.terminate_matching($1::text::jsonb, 2000)",
        "reaper.cancel_then_terminate($1::text::jsonb, 100, 2000)",
    ]
    .into_iter()
    .enumerate()
    {
        let tag = tag(&format!("exits_{n}"));
        let victim = cluster.session("app", &tag);
        let bystander = cluster.session("app", "bystander");
        let pid = victim.pid;
        let (me, notices) = cluster.collecting_client("postgres");
        let filter = format!(r#"{{"application_name": "{tag}"}}"#);
        let rows = call_in_window_as(&cluster, me, Window::BeforeRecheck, f, &filter, |_| {
            drop(victim);
            assert!(cluster.wait_gone(pid));
        });
        let rows = rows.unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(pids(&rows), vec![pid], "{f}");
        assert_eq!(rows[0].outcome, "vanished", "{f}: {rows:?}");
        assert_eq!(
            rows[0].detail.as_deref(),
            Some("exited before it was signalled"),
            "{f}"
        );
        assert!(
            notices.lock().unwrap().is_empty(),
            "{f}: {:?}",
            notices.lock().unwrap()
        );
        assert_eq!(bystander.run("SELECT 1"), Ended::Ok, "{f}");
    }
    let log = cluster.server_log();
    assert!(!log.contains("is not a PostgreSQL backend process"));
    assert!(!log.contains("pg_reaper: "), "nothing was signalled");
}

#[test]
fn a_caller_cancelled_in_the_grace_period_stops_promptly_and_escalates_nothing() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    for how in ["statement_timeout", "pg_cancel_backend"] {
        let tag = tag(&format!("grace_cancelled_{how}"));
        // An idle transaction ignores the cancel and keeps matching through the grace period.
        let victim = cluster.session("app", &tag).idle_in_transaction();
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
        let started = Instant::now();
        let waiting = caller.start(&format!(
            "SELECT * FROM reaper.cancel_then_terminate('{{\"application_name\": \"{tag}\"}}', 60000, 0)"
        ));
        if how == "pg_cancel_backend" {
            cluster.wait_until(caller.pid, "a.wait_event = 'Extension'");
            cluster
                .superuser()
                .query_one("SELECT pg_cancel_backend($1)", &[&caller.pid])
                .unwrap();
        }
        assert_eq!(waiting.wait(), Ended::Error("57014".into()), "{how}");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "{how}: {took:?}");
        // The caller is usable; the cancel was sent (the log says so) but the terminate never
        // was: the victim and its transaction live on; the audit rows went with the statement.
        assert_eq!(caller.run("SELECT 1"), Ended::Ok, "{how}");
        assert_eq!(victim.run("SELECT 1"), Ended::Ok, "{how}");
        assert_eq!(victim.run("COMMIT"), Ended::Ok, "{how}");
        let log = cluster.server_log();
        assert!(log.contains(&format!("pg_reaper: cancel pid={} ", victim.pid)));
        assert!(!log.contains(&format!("pg_reaper: terminate pid={} ", victim.pid)));
        assert_eq!(
            count(&mut cluster.superuser(), "SELECT count(*) FROM reaper.log"),
            0,
            "{how}"
        );
    }
}

#[test]
fn a_caller_terminated_while_waiting_exits_promptly_and_the_server_lives() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let postmaster = cluster.postmaster_start();
    for (n, (f, stop_victim)) in [
        // Waiting for a victim that cannot act on its SIGTERM (stopped).
        ("terminate_matching('{}', 60000)", true),
        // Waiting in the grace period for an idle transaction to stop matching.
        ("cancel_then_terminate('{}', 60000, 1000)", false),
    ]
    .into_iter()
    .enumerate()
    {
        let tag = tag(&format!("caller_killed_{n}"));
        let victim = cluster.session("app", &tag).idle_in_transaction();
        if stop_victim {
            signal_process(victim.pid, libc::SIGSTOP);
        }
        let caller = cluster.session("postgres", "caller");
        let filter = format!(r#"{{"application_name": "{tag}"}}"#);
        let started = Instant::now();
        let waiting = caller.start(&format!(
            "SELECT * FROM reaper.{}",
            f.replace("'{}'", &format!("'{filter}'"))
        ));
        cluster.wait_until(caller.pid, "a.wait_event = 'Extension'");
        cluster
            .superuser()
            .query_one("SELECT pg_terminate_backend($1)", &[&caller.pid])
            .unwrap();
        assert_eq!(waiting.wait(), Ended::Closed, "{f}");
        assert!(cluster.wait_gone(caller.pid), "{f}");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "{f}: {took:?}");
        if stop_victim {
            // It was signalled before the caller died; continued, it acts on it.
            signal_process(victim.pid, libc::SIGCONT);
            assert!(cluster.wait_gone(victim.pid), "{f}");
        } else {
            // Only cancelled (a no-op for an idle transaction): never terminated.
            assert_eq!(victim.run("SELECT 1"), Ended::Ok, "{f}");
            assert_eq!(victim.run("COMMIT"), Ended::Ok, "{f}");
        }
    }
    assert_eq!(
        cluster.postmaster_start(),
        postmaster,
        "the server restarted"
    );
    let log = cluster.server_log();
    assert!(!log.contains("terminated by signal"), "{log}");
    assert!(!log.contains("terminating any other active server processes"));
}

#[test]
fn victims_slower_than_the_timeout_are_timed_out() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");

    // Deterministic: a stopped victim cannot act on its signals; the escalation cancels it,
    // it still matches after the grace period, it is terminated and outlives the timeout.
    let tag_stopped = tag("escalation_timed_out");
    let stopped = cluster.session("app", &tag_stopped).idle_in_transaction();
    let quick = cluster.session("app", &tag_stopped).idle_in_transaction();
    signal_process(stopped.pid, libc::SIGSTOP);
    let rows = call(
        &mut cluster.superuser(),
        "reaper.cancel_then_terminate($1::text::jsonb, 200, 2000)",
        &format!(r#"{{"application_name": "{tag_stopped}"}}"#),
    )
    .unwrap();
    signal_process(stopped.pid, libc::SIGCONT);
    let row = |pid: i32| rows.iter().find(|r| r.pid == pid).expect("a row").clone();
    let slow = row(stopped.pid);
    assert_eq!(slow.outcome, "timed_out", "{rows:?}");
    assert!(slow.waited_ms >= 2000, "{slow:?}");
    assert!(!slow.detail.as_deref().unwrap_or("").is_empty());
    assert_eq!(row(quick.pid).outcome, "terminated", "{rows:?}");
    assert!(cluster.wait_gone(stopped.pid));

    // One deadline for many victims: 20 stopped ones cannot exit before it and are timed_out
    // with exactly the timeout; 20 running ones exit and are terminated within it.
    let tag_many = tag("many_one_deadline");
    let stopped: Vec<Session> = (0..20).map(|_| cluster.session("app", &tag_many)).collect();
    let running: Vec<Session> = (0..20).map(|_| cluster.session("app", &tag_many)).collect();
    let keeper = cluster.session("app", "keeper");
    for s in &stopped {
        signal_process(s.pid, libc::SIGSTOP);
    }
    let rows = terminate(
        &mut cluster.superuser(),
        &format!(r#"{{"application_name": "{tag_many}"}}"#),
        3000,
    );
    for s in &stopped {
        signal_process(s.pid, libc::SIGCONT);
    }
    let outcome = |pid: i32| rows.iter().find(|r| r.pid == pid).expect("a row").clone();
    for s in &stopped {
        let r = outcome(s.pid);
        assert_eq!(r.outcome, "timed_out", "{r:?}");
        assert_eq!(r.waited_ms, 3000, "{r:?}");
        assert_eq!(
            r.detail.as_deref(),
            Some("still running 3000 ms after the signal")
        );
    }
    for s in &running {
        let r = outcome(s.pid);
        assert_eq!(r.outcome, "terminated", "{r:?}");
        assert!(r.waited_ms <= 3000, "{r:?}");
    }
    assert_eq!(rows.len(), 40);
    // Continued, the stopped ones act on the signal they got.
    for s in stopped.iter().chain(&running) {
        assert!(cluster.wait_gone(s.pid));
    }
    assert_eq!(keeper.run("SELECT 1"), Ended::Ok);
}

#[test]
fn a_long_grace_period_keeps_the_callers_memory_flat() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("long_grace");
    let victims: Vec<Session> = (0..5)
        .map(|_| cluster.session("app", &tag).idle_in_transaction())
        .collect();
    let caller = cluster.session("postgres", "caller");
    // Every poll (every 10 ms) re-reads the activity and, for "blocked", pg_blocking_pids.
    let waiting = caller.start(&format!(
        "SELECT * FROM reaper.cancel_then_terminate('{{\"application_name\": \"{tag}\", \"blocked\": false}}', 6000, 5000)"
    ));
    cluster.wait_until(caller.pid, "a.wait_event = 'Extension'");
    let mut su = cluster.superuser();
    let mut measure = || {
        su.query_one("SELECT pg_log_backend_memory_contexts($1)", &[&caller.pid])
            .unwrap();
        rss_anon_kb(caller.pid)
    };
    std::thread::sleep(Duration::from_millis(1000));
    let rss_early = measure();
    std::thread::sleep(Duration::from_millis(4000));
    let rss_late = measure();
    assert_eq!(waiting.wait(), Ended::Ok);
    for s in &victims {
        assert!(!cluster.alive(s.pid), "idle transactions are terminated");
    }
    // The two memory-context dumps in the server log, "Grand total: N bytes ..." (the server
    // writes them when the caller next checks for interrupts).
    let dumps = || cluster.memory_totals_logged(caller.pid);
    let deadline = Instant::now() + PATIENCE;
    let totals = loop {
        let totals = dumps();
        if totals.len() >= 2 || Instant::now() > deadline {
            break totals;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(totals.len(), 2, "{totals:?}");
    let rss_growth = rss_late - rss_early;
    let context_growth = totals[1] - totals[0];
    println!(
        "400 polls: RssAnon {rss_early} -> {rss_late} kB, contexts {} -> {} bytes",
        totals[0], totals[1]
    );
    assert!(rss_growth < 512, "RssAnon grew {rss_growth} kB in 4 s");
    assert!(
        context_growth < 64 * 1024,
        "memory contexts grew {context_growth} bytes in 4 s"
    );
}

#[test]
fn many_signalling_calls_in_one_transaction_keep_the_callers_memory_flat() {
    // Every call signals: a cancel of an idle session is delivered (and ignored by it), so each
    // call runs the whole path: two snapshots, a subtransaction and a pinned identity check per
    // victim, the LOG lines and the audit rows. The lock-key filters add the lock graph.
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("memory");
    let victims: Vec<Session> = (0..5).map(|_| cluster.session("app", &tag)).collect();
    let mut me = cluster.superuser();
    let total = |me: &mut Client| -> i64 {
        me.query_one(
            "SELECT sum(total_bytes)::bigint FROM pg_catalog.pg_backend_memory_contexts",
            &[],
        )
        .unwrap()
        .get(0)
    };
    const CALLS: i32 = 1000;
    let mut report = Vec::new();
    for filter in [
        format!(r#"{{"application_name": "{tag}"}}"#),
        format!(r#"{{"application_name": "{tag}", "blocked": false}}"#),
        format!(r#"{{"application_name": "{tag}", "blocking": false}}"#),
    ] {
        me.batch_execute("BEGIN").unwrap();
        // Each call must cancel all five, or the loop raises.
        let body = |n: i32| {
            format!(
                "DO $$ DECLARE n bigint; BEGIN FOR i IN 1..{n} LOOP \
                   SELECT count(*) INTO n FROM reaper.cancel_matching('{filter}') \
                    WHERE outcome = 'cancelled'; \
                   IF n <> 5 THEN RAISE EXCEPTION 'call % cancelled % sessions', i, n; END IF; \
                 END LOOP; END $$"
            )
        };
        me.batch_execute(&body(10)).unwrap();
        let before = total(&mut me);
        me.batch_execute(&body(CALLS)).unwrap();
        let after = total(&mut me);
        me.batch_execute("COMMIT").unwrap();
        report.push((filter, before, after));
    }
    println!("{report:?}");
    let logged = count(
        &mut me,
        &format!("SELECT count(*) FROM reaper.log WHERE application_name = '{tag}'"),
    );
    assert_eq!(
        logged,
        3 * 5 * (i64::from(CALLS) + 10),
        "every signal has its audit row"
    );
    for v in &victims {
        assert_eq!(
            v.run("SELECT 1"),
            Ended::Ok,
            "a cancel leaves an idle session alone"
        );
    }
    for (filter, before, after) in report {
        assert!(
            after - before < 256 * 1024,
            "{CALLS} calls with {filter} (5 signals each) in one transaction: memory contexts \
             {before} -> {after} bytes"
        );
    }
}
