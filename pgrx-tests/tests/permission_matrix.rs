//! For every caller and every kind of target, pg_reaper signals exactly when PostgreSQL's own
//! pg_cancel_backend would, and nobody gains a right through it.

use pg_reaper_integration::*;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    SuperuserSession,
    OtherRoleSession,
    OwnRoleSession,
    AutovacuumLauncher,
    LogicalReplicationLauncher,
}

const TARGETS: [Target; 5] = [
    Target::SuperuserSession,
    Target::OtherRoleSession,
    Target::OwnRoleSession,
    Target::AutovacuumLauncher,
    Target::LogicalReplicationLauncher,
];

/// (description, role the caller logs in as)
const CALLERS: [(&str, &str); 4] = [
    ("superuser", "postgres"),
    ("plain role", "plain"),
    ("pg_signal_backend", "signaller"),
    ("victim's own role", "victim"),
];

impl Target {
    fn backend_type(self) -> Option<&'static str> {
        match self {
            Target::AutovacuumLauncher => Some("autovacuum launcher"),
            Target::LogicalReplicationLauncher => Some("logical replication launcher"),
            _ => None,
        }
    }

    fn role(self) -> &'static str {
        match self {
            Target::SuperuserSession => "postgres",
            Target::OtherRoleSession => "other",
            _ => "victim",
        }
    }
}

/// A target of this kind: its pid, and for sessions the session and its running query (so a
/// cancel can be seen).
fn make_target(cluster: &Cluster, kind: Target) -> (i32, Option<(Session, Pending)>) {
    match kind.backend_type() {
        Some(t) => {
            let mut su = cluster.superuser();
            let sql = "SELECT pid FROM pg_stat_activity WHERE backend_type = $1";
            let deadline = std::time::Instant::now() + PATIENCE;
            loop {
                // After a terminate the postmaster starts a new one; wait for it.
                su.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
                if let Some(row) = su.query_opt(sql, &[&t]).unwrap() {
                    return (row.get(0), None);
                }
                assert!(std::time::Instant::now() < deadline, "no {t}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        None => {
            let (s, q) = cluster.session(kind.role(), "matrix_target").busy(cluster);
            (s.pid, Some((s, q)))
        }
    }
}

/// PostgreSQL's own verdict: may `caller` signal `pid`? Asked with pg_cancel_backend on a twin
/// (a harmless SIGINT for the launchers), inside a transaction rolled back.
fn postgres_allows(cluster: &Cluster, caller: &str, kind: Target) -> bool {
    let (pid, _twin) = make_target(cluster, kind);
    let mut c = cluster.connect(caller);
    let result = c.query_one("SELECT pg_catalog.pg_cancel_backend($1)", &[&pid]);
    match result {
        Ok(row) => {
            assert!(row.get::<_, bool>(0), "{caller} -> {kind:?}: not signalled");
            true
        }
        Err(e) => {
            assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}");
            false
        }
    }
}

#[test]
fn pg_reaper_allows_exactly_what_postgres_allows() {
    let cluster = Cluster::start();
    cluster.create_role("plain", "");
    cluster.create_role("signaller", "IN ROLE pg_signal_backend");
    cluster.create_role("victim", "");
    cluster.create_role("other", "");
    let start = cluster.postmaster_start();

    let mut pairs = 0;
    let mut table = String::from("| caller \\ target | superuser session | other role's session | own role's session | autovacuum launcher | logical replication launcher |\n| --- | --- | --- | --- | --- | --- |\n");
    for (caller_name, caller) in CALLERS {
        table += &format!("| {caller_name} |");
        for kind in TARGETS {
            let allowed = postgres_allows(&cluster, caller, kind);
            for function in ["cancel", "terminate"] {
                let (pid, session) = make_target(&cluster, kind);
                let mut filter = format!(r#"{{"pid": {pid}, "include_superusers": true"#);
                if let Some(t) = kind.backend_type() {
                    filter += &format!(r#", "backend_type": "{t}""#);
                }
                filter += "}";
                let mut c = cluster.connect(caller);
                let rows = match function {
                    "cancel" => cancel(&mut c, &filter),
                    _ => terminate(&mut c, &filter, 5000),
                };
                let what = format!("{caller_name} {function} {kind:?}: {rows:?}");
                if allowed {
                    assert_eq!(rows.len(), 1, "{what}");
                    let expected = if function == "cancel" {
                        "cancelled"
                    } else {
                        "terminated"
                    };
                    assert_eq!(rows[0].outcome, expected, "{what}");
                    match (&session, function) {
                        (Some((_, q)), "cancel") => {
                            assert_eq!(q.wait(), Ended::Error("57014".into()), "{what}")
                        }
                        (Some((_, q)), _) => assert_eq!(q.wait(), Ended::Closed, "{what}"),
                        // A cancel's effect on a launcher is its own business (the logical
                        // replication launcher exits on one, as with pg_cancel_backend).
                        (None, "cancel") => {}
                        (None, _) => assert!(!cluster.alive(pid), "{what}"),
                    }
                } else {
                    // Denied — or, for a process the caller may not even see the type of, not
                    // selectable at all. Either way nothing was signalled.
                    match rows.as_slice() {
                        [] => assert!(kind.backend_type().is_some(), "{what}"),
                        [row] => {
                            assert_eq!(row.outcome, "denied", "{what}");
                            assert!(!row.detail.as_deref().unwrap_or("").is_empty(), "{what}");
                        }
                        _ => panic!("{what}"),
                    }
                    if let Some((_, q)) = &session {
                        assert!(q.still_running_after(Duration::from_millis(50)), "{what}");
                    }
                    assert!(cluster.alive(pid), "{what}");
                }
                pairs += 1;
            }
            table += if allowed { " signalled |" } else { " denied |" };
        }
        table += "\n";
    }
    assert_eq!(
        cluster.postmaster_start(),
        start,
        "the postmaster never restarted"
    );
    let log = cluster.server_log();
    assert!(
        !log.contains("terminated by signal"),
        "a backend crashed:\n{log}"
    );
    record_figures(
        "20-permission-matrix",
        &format!(
            "## Permission matrix\n\n{} callers x {} targets x 2 functions (cancel_matching, terminate_matching) = \
             {pairs} cases, each compared with PostgreSQL's own pg_cancel_backend verdict for the same caller \
             and target, and each checked on the target itself (query cancelled, backend gone, or untouched). \
             All {pairs} agreed; the postmaster never restarted. (The launchers run with no role or as the bootstrap \
             superuser: a caller that may not see their backend_type cannot select them at all, and PostgreSQL \
             would deny it anyway.)\n\n{table}",
            CALLERS.len(),
            TARGETS.len()
        ),
    );
}

#[test]
fn a_denied_row_never_aborts_the_set() {
    let cluster = Cluster::start();
    cluster.create_role("signaller", "IN ROLE pg_signal_backend");
    cluster.create_role("other", "");
    let tag = tag("mixed");
    let allowed: Vec<Session> = (0..3).map(|_| cluster.session("other", &tag)).collect();
    let protected = cluster.session("postgres", &tag);
    let mut c = cluster.connect("signaller");
    let rows = terminate(
        &mut c,
        &format!(r#"{{"application_name": "{tag}", "include_superusers": true}}"#),
        5000,
    );
    assert_eq!(rows.len(), 4);
    for s in &allowed {
        assert_eq!(
            rows.iter().find(|r| r.pid == s.pid).unwrap().outcome,
            "terminated"
        );
        assert!(!cluster.alive(s.pid));
    }
    let denied = rows.iter().find(|r| r.pid == protected.pid).unwrap();
    assert_eq!(denied.outcome, "denied");
    assert!(denied.detail.as_deref().unwrap().contains("superuser"));
    assert_eq!(protected.run("SELECT 1"), Ended::Ok);
}

#[test]
fn nobody_gains_a_right_through_the_extension() {
    let cluster = Cluster::start();
    cluster.create_role("mallory", "");
    let mut su = cluster.superuser();
    let definers: i64 = count(&mut su, "SELECT count(*) FROM pg_catalog.pg_proc p \
               JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = p.oid \
               JOIN pg_catalog.pg_extension e ON d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.refobjid = e.oid \
              WHERE e.extname = 'pg_reaper' AND p.prosecdef");
    assert_eq!(definers, 0, "no SECURITY DEFINER function");

    // Mallory's own pg_stat_activity and signal functions, first in her search_path.
    su.batch_execute("CREATE SCHEMA evil AUTHORIZATION mallory")
        .unwrap();
    let mut mallory = cluster.connect("mallory");
    mallory
        .batch_execute(
            "CREATE TABLE evil.calls (what text);
             CREATE VIEW evil.pg_stat_activity AS SELECT * FROM pg_catalog.pg_stat_activity;
             CREATE FUNCTION evil.pg_terminate_backend(integer, bigint DEFAULT 0) RETURNS boolean
                 LANGUAGE sql AS $$ INSERT INTO evil.calls VALUES ('terminate') RETURNING true $$;
             CREATE FUNCTION evil.pg_cancel_backend(integer) RETURNS boolean
                 LANGUAGE sql AS $$ INSERT INTO evil.calls VALUES ('cancel') RETURNING true $$;
             CREATE FUNCTION evil.pg_blocking_pids(integer) RETURNS integer[]
                 LANGUAGE sql AS $$ INSERT INTO evil.calls VALUES ('blocking') RETURNING '{}'::integer[] $$;
             SET search_path = evil, pg_catalog;",
        )
        .unwrap();
    let target = cluster.session("postgres", "evil_target");
    for call_sql in [
        "reaper.terminate_matching($1::text::jsonb, 1000)",
        "reaper.cancel_matching($1::text::jsonb)",
        "reaper.cancel_then_terminate($1::text::jsonb, 10, 1000)",
    ] {
        let rows = call(
            &mut mallory,
            call_sql,
            r#"{"application_name": "evil_target", "include_superusers": true, "blocked": false}"#,
        )
        .unwrap();
        assert_eq!(rows.len(), 1, "{call_sql}");
        assert_eq!(rows[0].outcome, "denied", "{call_sql}");
    }
    assert_eq!(target.run("SELECT 1"), Ended::Ok);
    let calls: i64 = count(&mut mallory, "SELECT count(*) FROM evil.calls");
    assert_eq!(calls, 0, "none of mallory's functions ran");
}
