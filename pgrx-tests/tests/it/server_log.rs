//! The server log: one `pg_reaper:` LOG line per signalled backend, written by the calling
//! backend, naming the action, pid, user, database, application and calling role; nothing for
//! what was not signalled; `pg_reaper.log_actions` turns it off for a superuser's session only,
//! and nobody else can turn it off.

use pg_reaper_integration::*;
use std::sync::Arc;
use std::time::Duration;

fn cluster() -> Arc<Cluster> {
    shared_cluster(module_path!(), |cluster| {
        cluster.create_role("app", "");
        cluster.create_role("weak", "");
        cluster.create_role("dba", "IN ROLE pg_signal_backend");
        cluster
            .superuser()
            .batch_execute("CREATE DATABASE shop")
            .expect("CREATE DATABASE shop");
    })
}

#[test]
fn terminate_logs_one_line_per_victim_naming_everything() {
    let cluster = cluster();
    let tag = tag("terminate_line");
    let mut config = postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(cluster.port)
        .user("app")
        .dbname("shop")
        .application_name(&tag);
    let in_shop = Session::new(config.connect(NoTls).unwrap());
    let in_postgres = cluster.session("app", &tag);
    let mut dba = cluster.connect("dba");
    let dba_pid = backend_pid(&mut dba);
    let rows = terminate(
        &mut dba,
        &format!(r#"{{"application_name": "{tag}"}}"#),
        5000,
    );
    assert_eq!(
        pids(&rows),
        sorted(vec![in_shop.pid, in_postgres.pid]),
        "{rows:?}"
    );
    assert!(rows.iter().all(|r| r.outcome == "terminated"), "{rows:?}");
    for (victim, db) in [(&in_shop, "shop"), (&in_postgres, "postgres")] {
        let lines = cluster.reaper_lines(victim.pid);
        assert_eq!(
            lines.len(),
            1,
            "exactly one line for {}: {lines:?}",
            victim.pid
        );
        // log_line_prefix is '%m [%p] ': the caller's backend wrote it, at LOG level.
        let expected = format!(
            r#"[{dba_pid}] LOG:  pg_reaper: terminate pid={} user="app" database="{db}" application="{tag}" by role="dba""#,
            victim.pid
        );
        assert!(lines[0].ends_with(&expected), "{}\n!= {expected}", lines[0]);
    }

    // Without a wait (outcome `signalled`), the line is the same.
    let victim = cluster.session("app", &tag);
    let rows = terminate(&mut dba, &format!(r#"{{"application_name": "{tag}"}}"#), 0);
    assert_eq!(pids(&rows), vec![victim.pid]);
    assert_eq!(rows[0].outcome, "signalled");
    let lines = cluster.reaper_lines(victim.pid);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains(&format!(
        r#"pg_reaper: terminate pid={} user="app" database="postgres" application="{tag}" by role="dba""#,
        victim.pid
    )));
    assert!(cluster.wait_gone(victim.pid));
}

#[test]
fn cancel_logs_a_cancel_line() {
    let cluster = cluster();
    let tag = tag("cancel_line");
    let (busy, query) = cluster.session("app", &tag).busy(&cluster);
    let mut me = cluster.superuser();
    let me_pid = backend_pid(&mut me);
    let rows = cancel(&mut me, &format!(r#"{{"application_name": "{tag}"}}"#));
    assert_eq!(pids(&rows), vec![busy.pid]);
    assert_eq!(rows[0].outcome, "cancelled");
    assert_eq!(query.wait(), Ended::Error("57014".into()));
    let lines = cluster.reaper_lines(busy.pid);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].ends_with(&format!(
            r#"[{me_pid}] LOG:  pg_reaper: cancel pid={} user="app" database="postgres" application="{tag}" by role="postgres""#,
            busy.pid
        )),
        "{}",
        lines[0]
    );
    assert_eq!(busy.run("SELECT 1"), Ended::Ok, "the session lives");
}

#[test]
fn cancel_then_terminate_logs_both_signals_in_order() {
    let cluster = cluster();
    let tag = tag("escalation_lines");
    let victim = cluster.session("app", &tag).idle_in_transaction();
    let mut me = cluster.superuser();
    let rows = call(
        &mut me,
        "reaper.cancel_then_terminate($1::text::jsonb, 100, 5000)",
        &format!(r#"{{"application_name": "{tag}"}}"#),
    )
    .unwrap();
    assert_eq!(pids(&rows), vec![victim.pid]);
    assert_eq!(rows[0].outcome, "terminated");
    let lines = cluster.reaper_lines(victim.pid);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains(&format!("pg_reaper: cancel pid={} ", victim.pid)));
    assert!(lines[1].contains(&format!("pg_reaper: terminate pid={} ", victim.pid)));
}

#[test]
fn nothing_is_logged_for_what_was_not_signalled() {
    let cluster = cluster();
    let tag = tag("no_line");
    let idle = cluster.session("app", &tag);
    let (busy, query) = cluster.session("app", &tag).busy(&cluster);
    let filter = format!(r#"{{"application_name": "{tag}"}}"#);
    let mut me = cluster.superuser();
    // A preview.
    let rows = preview(&mut me, &filter);
    assert_eq!(pids(&rows), sorted(vec![idle.pid, busy.pid]));
    // A denied terminate: `weak` has no right over app's sessions.
    let mut weak = cluster.connect("weak");
    let rows = terminate(&mut weak, &filter, 1000);
    assert_eq!(pids(&rows), sorted(vec![idle.pid, busy.pid]));
    assert!(rows.iter().all(|r| r.outcome == "denied"), "{rows:?}");
    let rows = cancel(&mut weak, &filter);
    assert!(rows.iter().all(|r| r.outcome == "denied"), "{rows:?}");
    // A refused filter.
    let err = call(
        &mut me,
        "reaper.terminate_matching($1::text::jsonb)",
        &format!(r#"{{"application_name": "{tag}", "limit": 0}}"#),
    )
    .unwrap_err();
    assert_eq!(sqlstate(&err), Some("22023"));

    assert!(query.still_running_after(Duration::from_millis(100)));
    assert_eq!(idle.run("SELECT 1"), Ended::Ok);
    for pid in [idle.pid, busy.pid] {
        assert_eq!(cluster.reaper_lines(pid), Vec::<String>::new());
    }
}

#[test]
fn log_actions_off_silences_that_superuser_session_only() {
    let cluster = cluster();
    let tag = tag("log_actions_off");
    let quiet_victim = cluster.session("app", &tag);
    let loud_victim = cluster.session("app", &tag);
    let after_reset = cluster.session("app", &tag);
    let mut quiet = cluster.superuser();
    quiet
        .batch_execute("SET pg_reaper.log_actions = off")
        .unwrap();
    let by_pid = |pid: i32| format!(r#"{{"application_name": "{tag}", "pid": {pid}}}"#);
    let rows = terminate(&mut quiet, &by_pid(quiet_victim.pid), 5000);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome, "terminated");
    assert!(
        !cluster.alive(quiet_victim.pid),
        "signalled, just not logged"
    );
    // Another session, with the default, logs.
    let rows = terminate(&mut cluster.superuser(), &by_pid(loud_victim.pid), 5000);
    assert_eq!(rows[0].outcome, "terminated");
    // And so does the quiet one once it resets the setting.
    quiet.batch_execute("RESET pg_reaper.log_actions").unwrap();
    let rows = terminate(&mut quiet, &by_pid(after_reset.pid), 5000);
    assert_eq!(rows[0].outcome, "terminated");

    assert_eq!(cluster.reaper_lines(quiet_victim.pid), Vec::<String>::new());
    assert_eq!(cluster.reaper_lines(loud_victim.pid).len(), 1);
    assert_eq!(cluster.reaper_lines(after_reset.pid).len(), 1);
}

#[test]
fn a_plain_role_cannot_turn_the_records_off() {
    let cluster = cluster();
    let tag = tag("cannot_hide");
    let mut app = cluster.connect("app");
    // The settings exist once the library is loaded: call a reaper function first.
    preview(&mut app, r#"{"pid": 1}"#);
    for sql in [
        "SET pg_reaper.log_actions = off",
        "SET pg_reaper.audit = off",
        "SET SESSION pg_reaper.log_actions = false",
        "SELECT set_config('pg_reaper.log_actions', 'off', false)",
        "SELECT set_config('pg_reaper.audit', 'off', true)",
        "ALTER ROLE app SET pg_reaper.log_actions = off",
    ] {
        let err = app.batch_execute(sql).expect_err(sql);
        assert_eq!(sqlstate(&err), Some("42501"), "{sql}: {err:?}");
    }
    let mut tx = app.transaction().unwrap();
    let err = tx
        .batch_execute("SET LOCAL pg_reaper.log_actions = off")
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"));
    drop(tx);
    for setting in ["pg_reaper.log_actions", "pg_reaper.audit"] {
        let value: String = app
            .query_one(&format!("SHOW {setting}"), &[])
            .unwrap()
            .get(0);
        assert_eq!(value, "on", "{setting}");
    }
    // The role's own sessions are its to end, and it is on the record when it does.
    let victim = cluster.session("app", &tag);
    let rows = terminate(
        &mut app,
        &format!(r#"{{"application_name": "{tag}"}}"#),
        5000,
    );
    assert_eq!(pids(&rows), vec![victim.pid]);
    assert_eq!(rows[0].outcome, "terminated");
    let lines = cluster.reaper_lines(victim.pid);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].ends_with(r#"by role="app""#), "{}", lines[0]);
}

#[test]
fn a_plain_role_cannot_turn_them_off_before_the_library_is_loaded() {
    // Set before the library defines the settings (as a placeholder, on the SET command or in
    // the startup packet), the value is refused when the library loads: the records stay on.
    let cluster = cluster();
    let tag = tag("cannot_hide_early");
    let mut set_early = cluster.connect("app");
    let _ = set_early.batch_execute("SET pg_reaper.log_actions = off; SET pg_reaper.audit = off");
    let mut config = postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(cluster.port)
        .user("app")
        .dbname("postgres")
        .application_name("pg_reaper_tests")
        .options("-c pg_reaper.log_actions=off -c pg_reaper.audit=off");
    let mut at_startup = config.connect(NoTls).expect("connect with options");
    for (i, caller) in [&mut set_early, &mut at_startup].into_iter().enumerate() {
        let victim = cluster.session("app", &tag);
        let rows = terminate(caller, &format!(r#"{{"application_name": "{tag}"}}"#), 5000);
        assert_eq!(pids(&rows), vec![victim.pid], "caller {i}");
        assert_eq!(rows[0].outcome, "terminated");
        assert_eq!(cluster.reaper_lines(victim.pid).len(), 1, "caller {i}");
        let audited = count(
            &mut cluster.superuser(),
            &format!("SELECT count(*) FROM reaper.log WHERE pid = {}", victim.pid),
        );
        assert_eq!(audited, 1, "caller {i}");
    }
}
