//! The audit trail: reaper.log rows, the server-log lines, the settings that govern them, and
//! pg_dump keeping the configuration.

use pg_reaper_integration::*;

#[test]
fn direct_calls_are_logged_row_for_row_and_previews_are_not() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    cluster.create_role("dba", "IN ROLE pg_signal_backend, pg_read_all_stats");
    let tag = tag("audited");
    let victims: Vec<Session> = (0..3).map(|_| cluster.session("app", &tag)).collect();
    let mut dba = cluster.connect("dba");
    let filter = format!(r#"{{"application_name": "{tag}"}}"#);
    assert_eq!(preview(&mut dba, &filter).len(), 3);
    let rows = terminate(&mut dba, &filter, 3000);
    assert_eq!(rows.len(), 3);

    let mut su = cluster.superuser();
    let logged = su
        .query(
            "SELECT caller, run_as, policy, action, outcome, pid, usename, application_name, waited_ms \
               FROM reaper.log ORDER BY pid",
            &[],
        )
        .unwrap();
    assert_eq!(
        logged.len(),
        3,
        "one row per result row; the preview wrote none"
    );
    let mut expected: Vec<i32> = victims.iter().map(|s| s.pid).collect();
    expected.sort();
    for (row, pid) in logged.iter().zip(expected) {
        assert_eq!(row.get::<_, String>(0), "dba");
        assert_eq!(row.get::<_, String>(1), "dba");
        assert_eq!(row.get::<_, Option<String>>(2), None);
        assert_eq!(row.get::<_, String>(3), "terminate");
        assert_eq!(row.get::<_, String>(4), "terminated");
        assert_eq!(row.get::<_, i32>(5), pid);
        assert_eq!(row.get::<_, String>(6), "app");
        assert_eq!(row.get::<_, String>(7), tag);
        let waited = rows.iter().find(|r| r.pid == pid).unwrap().waited_ms;
        assert_eq!(row.get::<_, i64>(8), waited);
    }
    // Each signal has its server-log line, naming the caller.
    let log = cluster.server_log();
    for s in &victims {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("pg_reaper: terminate pid={} ", s.pid)))
            .unwrap_or_else(|| panic!("no log line for {}", s.pid));
        assert!(
            line.contains(r#"user="app""#) && line.contains(r#"by role="dba""#),
            "{line}"
        );
        assert!(line.contains(&format!(r#"application="{tag}""#)), "{line}");
    }
    assert_eq!(
        log.matches("pg_reaper: ").count(),
        3,
        "the preview logged nothing"
    );
}

#[test]
fn callers_need_no_rights_on_the_log_and_cannot_read_or_forge_it() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("self_service");
    let mine = cluster.session("app", &tag);
    let mut app = cluster.connect("app");
    let rows = terminate(
        &mut app,
        &format!(r#"{{"application_name": "{tag}"}}"#),
        2000,
    );
    assert_eq!(
        rows[0].outcome, "terminated",
        "a role may end its own sessions"
    );
    assert!(!cluster.alive(mine.pid));
    for sql in [
        "SELECT * FROM reaper.log",
        "INSERT INTO reaper.log (logged_at, caller, run_as, action, outcome) VALUES (now(), 'x', 'x', 'x', 'x')",
        "DELETE FROM reaper.log",
    ] {
        let err = app.batch_execute(sql).unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{sql}");
    }
    let n: i64 = count(
        &mut cluster.superuser(),
        "SELECT count(*) FROM reaper.log WHERE caller = 'app'",
    );
    assert_eq!(n, 1);
}

#[test]
fn a_rollback_removes_the_rows_but_not_the_signal_nor_the_server_log_line() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("rolled_back");
    let victim = cluster.session("app", &tag);
    let mut su = cluster.superuser();
    let mut tx = su.transaction().unwrap();
    let filter = format!(r#"{{"application_name": "{tag}"}}"#);
    let n = tx
        .query(
            "SELECT * FROM reaper.terminate_matching($1::text::jsonb, 2000)",
            &[&filter],
        )
        .unwrap()
        .len();
    assert_eq!(n, 1);
    tx.rollback().unwrap();
    assert!(!cluster.alive(victim.pid), "a signal cannot be rolled back");
    let logged: i64 = count(&mut su, "SELECT count(*) FROM reaper.log");
    assert_eq!(logged, 0);
    assert!(cluster
        .server_log()
        .contains(&format!("pg_reaper: terminate pid={} ", victim.pid)));
}

#[test]
fn the_settings_turn_the_records_off_and_only_superusers_may() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("quiet");
    let victim = cluster.session("app", &tag);
    let mut su = cluster.superuser();
    su.batch_execute("SET pg_reaper.audit = off; SET pg_reaper.log_actions = off")
        .unwrap();
    let rows = terminate(
        &mut su,
        &format!(r#"{{"application_name": "{tag}"}}"#),
        2000,
    );
    assert_eq!(rows[0].outcome, "terminated");
    su.batch_execute("RESET pg_reaper.audit").unwrap();
    let logged: i64 = count(&mut su, "SELECT count(*) FROM reaper.log");
    assert_eq!(logged, 0);
    assert!(!cluster
        .server_log()
        .contains(&format!("pid={}", victim.pid)));

    let mut app = cluster.connect("app");
    preview(&mut app, r#"{"pid": 1}"#); // loads the library, and with it the settings
    for setting in [
        "pg_reaper.audit",
        "pg_reaper.log_actions",
        "pg_reaper.recheck_delay_ms",
    ] {
        let err = app
            .batch_execute(&format!("SET {setting} = 0"))
            .unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{setting}");
    }
}

#[test]
fn a_read_only_transaction_is_refused_before_anything_is_signalled() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("read_only");
    let victim = cluster.session("app", &tag);
    let mut su = cluster.superuser();
    su.batch_execute("SET default_transaction_read_only = on")
        .unwrap();
    let err = call(
        &mut su,
        "reaper.terminate_matching($1::text::jsonb, 2000)",
        &format!(r#"{{"application_name": "{tag}"}}"#),
    )
    .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("25006"));
    assert_eq!(victim.run("SELECT 1"), Ended::Ok);
    // A preview writes nothing and is fine.
    assert_eq!(
        preview(&mut su, &format!(r#"{{"application_name": "{tag}"}}"#)).len(),
        1
    );
}

#[test]
fn purge_log_deletes_older_rows_and_counts_them() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("purge");
    let _victims: Vec<Session> = (0..4).map(|_| cluster.session("app", &tag)).collect();
    let mut su = cluster.superuser();
    terminate(
        &mut su,
        &format!(r#"{{"application_name": "{tag}"}}"#),
        2000,
    );
    let none: i64 = su
        .query_one("SELECT reaper.purge_log('1 day')", &[])
        .unwrap()
        .get(0);
    assert_eq!(none, 0);
    let all: i64 = su
        .query_one("SELECT reaper.purge_log('0 seconds')", &[])
        .unwrap()
        .get(0);
    assert_eq!(all, 4);
    let left: i64 = count(&mut su, "SELECT count(*) FROM reaper.log");
    assert_eq!(left, 0);
}

#[test]
fn pg_dump_keeps_the_policies() {
    let cluster = Cluster::start();
    let mut su = cluster.superuser();
    su.batch_execute(
        "INSERT INTO reaper.policies (name, filter, action, timeout_ms, note) \
         VALUES ('keep-me', '{\"usename\": \"batch\"}', 'cancel', 0, 'survives a dump')",
    )
    .unwrap();
    // The server's own pg_dump (as_postgres asserts that it succeeds).
    let out = as_postgres(
        "pg_dump",
        &[
            "-h",
            cluster.dir.to_str().unwrap(),
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ],
    );
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        dump.contains("COPY reaper.policies"),
        "no policies in the dump"
    );
    assert!(dump.contains("keep-me") && dump.contains("survives a dump"));
}

#[test]
fn a_locked_audit_table_stops_the_call_before_any_signal() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("locked_log");
    let victim = cluster.session("app", &tag);
    let mut locker = cluster.superuser();
    locker
        .batch_execute("BEGIN; LOCK TABLE reaper.log IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    // No lock_timeout: pg_reaper does not wait for the lock at all (the session holding it may
    // be the very one it is asked to terminate).
    let mut me = cluster.superuser();
    for f in [
        "reaper.cancel_matching($1::text::jsonb)",
        "reaper.terminate_matching($1::text::jsonb, 1000)",
        "reaper.cancel_then_terminate($1::text::jsonb, 100, 1000)",
    ] {
        let err = call(&mut me, f, &format!(r#"{{"application_name": "{tag}"}}"#)).unwrap_err();
        assert_eq!(sqlstate(&err), Some("55P03"), "{f}: {err}");
        let message = err.as_db_error().unwrap().message().to_string();
        assert_eq!(
            message,
            "pg_reaper: table reaper.log is locked by another session; nothing was signalled"
        );
    }
    // Policies fail one by one, each with its WARNING (the failure cannot be recorded either),
    // and the call goes on to the end.
    me.batch_execute(&format!(
        "INSERT INTO reaper.policies (name, filter) VALUES \
           ('a', '{{\"application_name\": \"{tag}\"}}'), ('b', '{{\"application_name\": \"{tag}\"}}')"
    ))
    .unwrap();
    let (mut runner, notices) = cluster.collecting_client("postgres");
    let rows = call(&mut runner, "reaper.run_policies()", "").unwrap();
    assert!(rows.is_empty(), "{rows:?}");
    let notices = notices.lock().unwrap().clone();
    let failed: Vec<&String> = notices
        .iter()
        .filter(|n| n.starts_with("WARNING 55P03: pg_reaper: policy "))
        .collect();
    assert_eq!(failed.len(), 2, "{notices:?}");
    me.batch_execute("DELETE FROM reaper.policies").unwrap();
    assert_eq!(victim.run("SELECT 1"), Ended::Ok, "nothing was signalled");
    assert!(cluster.reaper_lines(victim.pid).is_empty());
    locker.batch_execute("COMMIT").unwrap();
    // The lock gone, the same call goes through.
    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}"}}"#),
        5000,
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome, "terminated");
}

#[test]
fn audit_rows_that_cannot_be_written_leave_the_results_and_say_how_many_were_signalled() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("unwritable_log");
    let victims: Vec<Session> = (0..2).map(|_| cluster.session("app", &tag)).collect();
    let mut su = cluster.superuser();
    su.batch_execute("ALTER TABLE reaper.log ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
        .unwrap();
    let (mut me, notices) = cluster.collecting_client("postgres");
    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}"}}"#),
        5000,
    );
    assert_eq!(
        pids(&rows),
        sorted(victims.iter().map(|s| s.pid).collect()),
        "the caller keeps its rows"
    );
    assert!(rows.iter().all(|r| r.outcome == "terminated"), "{rows:?}");
    let notices = notices.lock().unwrap().clone();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(
        notices[0].starts_with(
            "WARNING 01000: pg_reaper: 2 of 2 backends were signalled, but their reaper.log rows \
             could not be written: new row for relation \"log\" violates check constraint \"refuse_all\""
        ),
        "{notices:?}"
    );
    for s in &victims {
        assert_eq!(
            cluster.reaper_lines(s.pid).len(),
            1,
            "the LOG line is the record"
        );
    }
    assert_eq!(count(&mut su, "SELECT count(*) FROM reaper.log"), 0);
}

#[test]
fn a_statement_timeout_while_writing_audit_rows_says_what_was_signalled() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("slow_log");
    let victim = cluster.session("app", &tag);
    let mut su = cluster.superuser();
    su.batch_execute(
        "CREATE FUNCTION public.slow_log() RETURNS trigger LANGUAGE plpgsql \
           AS $$BEGIN PERFORM pg_catalog.pg_sleep(60); RETURN NULL; END$$; \
         CREATE TRIGGER slow_log BEFORE INSERT ON reaper.log \
           FOR EACH STATEMENT EXECUTE FUNCTION public.slow_log()",
    )
    .unwrap();
    let (mut me, notices) = cluster.collecting_client("postgres");
    me.batch_execute("SET statement_timeout = '3s'").unwrap();
    let err = call(
        &mut me,
        "reaper.terminate_matching($1::text::jsonb, 2000)",
        &format!(r#"{{"application_name": "{tag}"}}"#),
    )
    .unwrap_err();
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    assert!(cluster.wait_gone(victim.pid), "the signal went out");
    let notices = notices.lock().unwrap().clone();
    assert!(
        notices.iter().any(|n| n.starts_with(
            "WARNING 01000: pg_reaper: 1 of 1 backends were signalled, but their reaper.log rows \
             could not be written: canceling statement due to statement timeout"
        )),
        "{notices:?}"
    );
    assert_eq!(cluster.reaper_lines(victim.pid).len(), 1);
}
