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
const CALLERS: [(&str, &str); 5] = [
    ("superuser", "postgres"),
    ("plain role", "plain"),
    ("pg_signal_backend", "signaller"),
    ("victim's own role", "victim"),
    // Sees every backend's type (so a launcher can be selected), may signal none of them.
    ("pg_signal_backend + pg_read_all_stats", "seer"),
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
            let sql = "SELECT pid FROM pg_stat_activity WHERE backend_type = $1";
            // After a terminate (or, for the logical replication launcher, a cancel) the
            // postmaster starts a new one after its restart interval; wait for it. Each look is
            // a new connection: a postmaster before 16 may otherwise sleep in its server loop up
            // to a minute before it restarts a background worker.
            let deadline = std::time::Instant::now() + 6 * PATIENCE;
            loop {
                if let Some(row) = cluster.superuser().query_opt(sql, &[&t]).unwrap() {
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

/// PostgreSQL's own verdict: may `caller` signal a target of this kind? Asked on a twin (a
/// harmless SIGINT for the launchers).
fn postgres_allows(cluster: &Cluster, caller: &str, kind: Target) -> bool {
    let (pid, _twin) = make_target(cluster, kind);
    verdict_in_savepoint(&mut cluster.connect(caller), pid)
}

/// The callers' roles.
fn create_roles(cluster: &Cluster) {
    cluster.create_role("plain", "");
    cluster.create_role("signaller", "IN ROLE pg_signal_backend");
    cluster.create_role("victim", "");
    cluster.create_role("other", "");
    cluster.create_role("seer", "IN ROLE pg_signal_backend, pg_read_all_stats");
}

#[test]
fn pg_reaper_allows_exactly_what_postgres_allows() {
    let cluster = Cluster::start();
    create_roles(&cluster);
    let start = cluster.postmaster_start();

    let mut pairs = 0;
    let mut table = String::from("| caller \\ target | superuser session | other role's session | own role's session | autovacuum launcher | logical replication launcher |\n| --- | --- | --- | --- | --- | --- |\n");
    for (caller_name, caller) in CALLERS {
        table += &format!("| {caller_name} |");
        for kind in TARGETS {
            let allowed = postgres_allows(&cluster, caller, kind);
            for function in ["cancel", "terminate"] {
                // A launcher may be on its way out when it is picked (a cancel ends the logical
                // replication launcher, and PostgreSQL's own probe above is one): when the
                // target turns out gone and nothing was signalled, the case is tried again on
                // the launcher the postmaster starts next.
                let mut attempts = 0;
                'attempt: loop {
                    attempts += 1;
                    let (pid, session) = make_target(&cluster, kind);
                    let mut filter = format!(r#"{{"pid": {pid}, "include_superusers": true"#);
                    if let Some(t) = kind.backend_type() {
                        filter += &format!(r#", "backend_type": "{t}""#);
                    }
                    filter += "}";
                    let mut c = cluster.connect(caller);
                    // Whether this caller's pg_stat_activity shows the target's backend_type.
                    let type_visible: bool = c
                        .query_one(
                            "SELECT count(*) = 1 FROM pg_catalog.pg_stat_activity \
                          WHERE pid = $1 AND backend_type IS NOT NULL",
                            &[&pid],
                        )
                        .unwrap()
                        .get(0);
                    let rows = match function {
                        "cancel" => cancel(&mut c, &filter),
                        _ => terminate(&mut c, &filter, 5000),
                    };
                    let what = format!("{caller_name} {function} {kind:?}: {rows:?}");
                    let signalled = rows
                        .iter()
                        .any(|r| r.outcome != "denied" && r.outcome != "vanished");
                    if kind.backend_type().is_some() && !signalled && !cluster.alive(pid) {
                        assert!(attempts < 5, "{what}: the launcher kept exiting by itself");
                        continue 'attempt;
                    }
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
                            // Only a launcher whose type the caller cannot see goes unselected.
                            [] => assert!(kind.backend_type().is_some() && !type_visible, "{what}"),
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
                    break;
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
             would deny it anyway; a caller with pg_read_all_stats sees them and gets `denied` rows.)\n\n{table}",
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
    // PostgreSQL's own words (16 says "SUPERUSER attribute" in a DETAIL, which pg_reaper keeps).
    let why = denied.detail.as_deref().unwrap().to_lowercase();
    assert!(why.contains("superuser"), "{why}");
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

/// PostgreSQL's verdict for `caller` on `pid`, asked with pg_cancel_backend inside a
/// transaction and a savepoint (a cancel is a no-op for an idle session, so nothing changes).
fn verdict_in_savepoint(c: &mut Client, pid: i32) -> bool {
    verdict_unless_gone(c, pid).unwrap_or_else(|| panic!("pid {pid} not signalled"))
}

/// PostgreSQL's verdict for the caller on `pid`, or None when `pid` had already exited (the
/// cancel then returns false with a WARNING).
fn verdict_unless_gone(c: &mut Client, pid: i32) -> Option<bool> {
    let mut tx = c.transaction().unwrap();
    let mut sp = tx.savepoint("probe").unwrap();
    let allowed = match sp.query_one("SELECT pg_catalog.pg_cancel_backend($1)", &[&pid]) {
        Ok(row) => row.get::<_, bool>(0).then_some(true),
        Err(e) => {
            assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}");
            Some(false)
        }
    };
    sp.rollback().unwrap();
    tx.rollback().unwrap();
    allowed
}

#[test]
fn in_one_call_every_row_gets_postgres_verdict_and_denied_rows_abort_nothing() {
    let cluster = Cluster::start();
    create_roles(&cluster);
    let start = cluster.postmaster_start();
    let launchers = r#"{"backend_type": ["autovacuum launcher", "logical replication launcher"]}"#;
    let (mut rows_checked, mut calls, mut denied_rows) = (0, 0, 0);
    for (caller_name, caller) in CALLERS {
        for function in ["cancel", "terminate"] {
            let tag = tag(&format!("mixed_{caller}_{function}"));
            // A superuser's session, another role's, the victim role's, and one of the
            // caller's own role (a second session of the caller's role); all idle.
            let mut targets: Vec<(String, Session)> = Vec::new();
            for role in ["postgres", "other", "victim", caller] {
                if !targets.iter().any(|(r, _)| r == role) {
                    targets.push((role.to_string(), cluster.session(role, &tag)));
                }
            }
            let mut c = cluster.connect(caller);
            let expected: Vec<(i32, bool)> = targets
                .iter()
                .map(|(_, s)| (s.pid, verdict_in_savepoint(&mut c, s.pid)))
                .collect();
            // Sessions by tag (cancel) or by user name (terminate), and, for callers that are
            // not superusers, the launchers too (PostgreSQL denies them every such caller; a
            // superuser's launcher verdicts are in the matrix and the test below).
            let roles: Vec<String> = targets.iter().map(|(r, _)| format!(r#""{r}""#)).collect();
            let sessions = match function {
                "cancel" => format!(r#"{{"application_name": "{tag}"}}"#),
                _ => format!(
                    r#"{{"usename": [{}], "application_name": "{tag}"}}"#,
                    roles.join(", ")
                ),
            };
            let with_launchers = caller != "postgres";
            let filter = if with_launchers {
                format!(r#"{{"any": [{sessions}, {launchers}], "include_superusers": true}}"#)
            } else {
                format!(r#"{{"any": [{sessions}], "include_superusers": true}}"#)
            };
            let rows = match function {
                "cancel" => cancel(&mut c, &filter),
                _ => terminate(&mut c, &filter, 5000),
            };
            calls += 1;
            let what = format!("{caller_name} {function}: {rows:?}");
            for (pid, allowed) in &expected {
                let row = rows
                    .iter()
                    .find(|r| r.pid == *pid)
                    .unwrap_or_else(|| panic!("no row for {pid}: {what}"));
                if *allowed {
                    let want = if function == "cancel" {
                        "cancelled"
                    } else {
                        "terminated"
                    };
                    assert_eq!(row.outcome, want, "{what}");
                    if function == "terminate" {
                        assert!(!cluster.alive(*pid), "{what}");
                    }
                } else {
                    assert_eq!(row.outcome, "denied", "{what}");
                    assert!(!row.detail.as_deref().unwrap_or("").is_empty(), "{what}");
                    assert!(cluster.alive(*pid), "{what}");
                    denied_rows += 1;
                }
                rows_checked += 1;
            }
            // The launchers: denied when the caller sees their type, absent when it does not;
            // never signalled.
            for row in rows
                .iter()
                .filter(|r| !expected.iter().any(|(p, _)| *p == r.pid))
            {
                assert!(with_launchers, "{what}");
                assert_eq!(row.outcome, "denied", "{what}");
                assert!(cluster.alive(row.pid), "{what}");
                denied_rows += 1;
                rows_checked += 1;
            }
            let seen_launchers = rows.len() - expected.len();
            if with_launchers {
                let visible = if caller == "seer" { 2 } else { 0 };
                assert_eq!(seen_launchers, visible, "{what}");
            }
            // Every session that PostgreSQL protected is untouched and usable.
            for (_, s) in &targets {
                if expected.iter().any(|(p, a)| *p == s.pid && !a) {
                    assert_eq!(s.run("SELECT 1"), Ended::Ok, "{what}");
                }
            }
        }
    }
    assert_eq!(cluster.postmaster_start(), start);
    record_figures(
        "21-permission-mixed",
        &format!(
            "## Permission verdicts within one call\n\nFor each of the {} callers and both cancel_matching and \
             terminate_matching, one call selected a superuser's session, another role's, the victim role's and one \
             of the caller's own role (and, for callers that are not superusers, both launchers): {calls} calls, \
             {rows_checked} rows, each outcome equal to PostgreSQL's own pg_cancel_backend verdict for that caller \
             and target (asked inside a savepoint); {denied_rows} rows were `denied` and none of them stopped the \
             rest of its set (the allowed victims of the same call were cancelled or gone, the denied ones alive).\n",
            CALLERS.len()
        ),
    );
}

#[test]
fn terminating_the_launchers_as_superuser_never_restarts_the_postmaster() {
    // A cluster of its own: the launchers come back, but nothing else must notice.
    let cluster = Cluster::start();
    let start = cluster.postmaster_start();
    let keeper = cluster.session("postgres", "keeper");
    let mut su = cluster.superuser();
    let filter = r#"{"backend_type": ["autovacuum launcher", "logical replication launcher"], "include_superusers": true}"#;
    let rows = terminate(&mut su, filter, 5000);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in &rows {
        assert_eq!(r.outcome, "terminated", "{r:?}");
    }
    // Both come back (the logical replication launcher after its 5 s restart interval; the
    // wait is generous, as the timing is the postmaster's business, not pg_reaper's). Each look
    // is a new connection: a postmaster before 16 may otherwise sleep in its server loop up to
    // a minute before it restarts a background worker.
    let deadline = std::time::Instant::now() + 6 * PATIENCE;
    loop {
        let back = preview(&mut cluster.superuser(), filter);
        if back.len() == 2 && back.iter().all(|b| !rows.iter().any(|r| r.pid == b.pid)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "launchers not back: {back:?}\n{}",
            cluster.server_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        cluster.postmaster_start(),
        start,
        "the postmaster restarted"
    );
    assert_eq!(keeper.run("SELECT 1"), Ended::Ok);
    let log = cluster.server_log();
    assert!(!log.contains("terminated by signal"), "{log}");
    assert!(
        !log.contains("terminating any other active server processes"),
        "{log}"
    );
    assert!(!log.contains("all server processes terminated"), "{log}");
}

#[test]
fn search_path_operators_and_functions_of_the_caller_never_run() {
    let cluster = Cluster::start();
    cluster.create_role("mallory", "");
    let su_target = cluster.session("postgres", "sp_target");
    let own_target = cluster.session("mallory", "sp_target");
    let mut su = cluster.superuser();
    su.batch_execute("CREATE SCHEMA evil AUTHORIZATION mallory")
        .unwrap();
    let mut mallory = cluster.connect("mallory");
    // Everything pg_reaper could look up by name, shadowed in mallory's schema, each recording
    // that it ran: a pg_stat_activity table with a forged row, the signal functions, the
    // catalog functions it uses, and the equality operators its SQL could use unqualified.
    let forged_pid = su_target.pid;
    mallory
        .batch_execute(&format!(
            "CREATE TABLE evil.calls (what text);
             CREATE TABLE evil.pg_stat_activity AS SELECT * FROM pg_catalog.pg_stat_activity LIMIT 0;
             INSERT INTO evil.pg_stat_activity (pid, usename, application_name, state, backend_type)
                  VALUES ({forged_pid}, 'mallory', 'sp_target', 'idle', 'client backend');
             CREATE FUNCTION evil.pg_terminate_backend(integer, bigint) RETURNS boolean
                 LANGUAGE sql AS $$ INSERT INTO evil.calls VALUES ('pg_terminate_backend') RETURNING true $$;
             CREATE FUNCTION evil.pg_terminate_backend(integer) RETURNS boolean
                 LANGUAGE sql AS $$ INSERT INTO evil.calls VALUES ('pg_terminate_backend/1') RETURNING true $$;
             CREATE FUNCTION evil.pg_cancel_backend(integer) RETURNS boolean
                 LANGUAGE sql AS $$ INSERT INTO evil.calls VALUES ('pg_cancel_backend') RETURNING true $$;
             CREATE FUNCTION evil.pg_blocking_pids(integer) RETURNS integer[]
                 LANGUAGE sql AS $$ INSERT INTO evil.calls VALUES ('pg_blocking_pids') RETURNING '{{}}'::integer[] $$;
             CREATE FUNCTION evil.pg_backend_pid() RETURNS integer
                 LANGUAGE sql AS $$ INSERT INTO evil.calls VALUES ('pg_backend_pid') RETURNING 1 $$;
             CREATE FUNCTION evil.now() RETURNS timestamptz
                 LANGUAGE sql AS $$ INSERT INTO evil.calls VALUES ('now') RETURNING pg_catalog.now() $$;
             CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz
                 LANGUAGE sql AS $$ INSERT INTO evil.calls VALUES ('clock_timestamp') RETURNING pg_catalog.now() $$;
             CREATE FUNCTION evil.eq_oid_regclass(oid, regclass) RETURNS boolean LANGUAGE sql
                 AS $$ INSERT INTO evil.calls VALUES ('=(oid,regclass)') RETURNING $1 OPERATOR(pg_catalog.=) $2::oid $$;
             CREATE OPERATOR evil.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = evil.eq_oid_regclass);
             CREATE FUNCTION evil.eq_oid(oid, oid) RETURNS boolean LANGUAGE sql
                 AS $$ INSERT INTO evil.calls VALUES ('=(oid,oid)') RETURNING $1 OPERATOR(pg_catalog.=) $2 $$;
             CREATE OPERATOR evil.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = evil.eq_oid);
             CREATE FUNCTION evil.eq_int(integer, integer) RETURNS boolean LANGUAGE sql
                 AS $$ INSERT INTO evil.calls VALUES ('=(int4,int4)') RETURNING $1 OPERATOR(pg_catalog.=) $2 $$;
             CREATE OPERATOR evil.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = evil.eq_int);
             CREATE FUNCTION evil.eq_text(text, text) RETURNS boolean LANGUAGE sql
                 AS $$ INSERT INTO evil.calls VALUES ('=(text,text)') RETURNING $1 OPERATOR(pg_catalog.=) $2 $$;
             CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.eq_text);
             SET search_path = evil, pg_catalog;"
        ))
        .unwrap();
    // The superuser's session is denied (and not, as the forged row says, mallory's); her own
    // session is hers to cancel, which also writes audit rows.
    for call_sql in [
        "reaper.cancel_matching($1::text::jsonb)",
        "reaper.terminate_matching($1::text::jsonb, 1000)",
    ] {
        let rows = call(
            &mut mallory,
            call_sql,
            r#"{"application_name": "sp_target", "include_superusers": true, "blocked": false}"#,
        );
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => panic!("{call_sql} failed under mallory's search_path: {e}"),
        };
        let su_row = rows.iter().find(|r| r.pid == su_target.pid).expect("a row");
        assert_eq!(su_row.outcome, "denied", "{call_sql}: {rows:?}");
        assert_eq!(su_row.usename.as_deref(), Some("postgres"), "{call_sql}");
        if call_sql.contains("cancel") {
            let own = rows
                .iter()
                .find(|r| r.pid == own_target.pid)
                .expect("a row");
            assert_eq!(own.outcome, "cancelled", "{call_sql}: {rows:?}");
        }
    }
    assert_eq!(su_target.run("SELECT 1"), Ended::Ok);
    assert!(cluster.wait_gone(own_target.pid), "mallory's own session");
    let ran: Vec<String> = mallory
        .query(
            "SELECT what || ' x' || count(*) FROM evil.calls GROUP BY what ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        ran.is_empty(),
        "mallory's objects ran inside pg_reaper's calls: {ran:?}"
    );
    // The audit rows were written as the log's owner, complete.
    let logged = count(&mut su, "SELECT count(*) FROM reaper.log");
    assert_eq!(logged, 4, "one audit row per result row");
}

/// The pid of the autovacuum worker vacuuming av_target, waiting for one (the cluster keeps
/// one busy; the workers the launcher starts for the other databases end at once).
fn autovacuum_worker(su: &mut Client) -> i32 {
    let deadline = std::time::Instant::now() + PATIENCE * 4;
    loop {
        su.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
        let row = su
            .query_opt(
                "SELECT pid FROM pg_catalog.pg_stat_activity \
                  WHERE backend_type = 'autovacuum worker' AND query LIKE '%av_target%' LIMIT 1",
                &[],
            )
            .unwrap();
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(std::time::Instant::now() < deadline, "no autovacuum worker");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn autovacuum_workers_follow_postgres_own_rules_on_every_major() {
    // An autovacuum worker has no role: only a superuser may signal it, and from PostgreSQL 18
    // also members of pg_signal_autovacuum_worker. A slow vacuum of a large table keeps one
    // running (and the launcher starts another after each one that is signalled away).
    let cluster = Cluster::start_with(Options {
        settings: vec![
            "autovacuum_naptime = 1".into(),
            "autovacuum_vacuum_cost_delay = 100".into(),
            "autovacuum_vacuum_cost_limit = 1".into(),
        ],
        ..Options::default()
    });
    let mut su = cluster.superuser();
    su.batch_execute(
        "CREATE TABLE av_target (id int, pad text) \
           WITH (autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0); \
         INSERT INTO av_target SELECT g, repeat('x', 200) FROM generate_series(1, 200000) g; \
         DELETE FROM av_target",
    )
    .unwrap();
    cluster.create_role("seer", "IN ROLE pg_signal_backend, pg_read_all_stats");
    let av_role = if server_major() >= 18 {
        "IN ROLE pg_signal_autovacuum_worker, pg_read_all_stats"
    } else {
        "IN ROLE pg_read_all_stats"
    };
    cluster.create_role("av_signaller", av_role);
    let filter = r#"{"backend_type": "autovacuum worker", "include_superusers": true}"#;
    let mut table = String::new();
    for (name, caller) in [
        ("superuser", "postgres"),
        ("pg_signal_backend + pg_read_all_stats", "seer"),
        (
            "pg_signal_autovacuum_worker (18) + pg_read_all_stats",
            "av_signaller",
        ),
    ] {
        // A worker ends by itself when its table is done, and the probe's own cancel (which
        // PostgreSQL does not roll back) may end it: a worker seen a moment ago may be gone by
        // the time it is signalled, or after a denial. Such a worker is looked for again; one
        // still alive but missing from the rows, or gone after a denial every time, is a failure.
        let deadline = std::time::Instant::now() + PATIENCE * 8;
        let allowed = loop {
            let pid = autovacuum_worker(&mut su);
            if let Some(allowed) = verdict_unless_gone(&mut cluster.connect(caller), pid) {
                break allowed;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name}: no worker stayed"
            );
        };
        for function in ["cancel", "terminate"] {
            let (row, what) = loop {
                let pid = autovacuum_worker(&mut su);
                let mut c = cluster.connect(caller);
                let rows = match function {
                    "cancel" => cancel(&mut c, filter),
                    _ => terminate(&mut c, filter, 5000),
                };
                let what = format!("{name} {function}: {rows:?}");
                match rows.into_iter().find(|r| r.pid == pid) {
                    Some(row) if row.outcome == "vanished" => {}
                    Some(row) if row.outcome != "denied" || cluster.alive(pid) => {
                        break (row, what)
                    }
                    Some(_) => {}
                    None => assert!(!cluster.alive(pid), "alive but not in the rows: {what}"),
                }
                assert!(std::time::Instant::now() < deadline, "{what}");
            };
            let expected = match (allowed, function) {
                (false, _) => "denied",
                (true, "cancel") => "cancelled",
                (true, _) => "terminated",
            };
            // (A denied worker was seen alive after the call, above.)
            assert_eq!(row.outcome, expected, "{what}");
        }
        table += &format!(
            "| {name} | {} |\n",
            if allowed { "signalled" } else { "denied" }
        );
    }
    record_figures_per_major(
        "22-autovacuum-workers",
        &format!(
            "## Autovacuum workers (PostgreSQL {})\n\nA running autovacuum worker (kept busy by a slow vacuum), \
             cancelled and terminated through pg_reaper by each caller; every outcome equal to PostgreSQL's own \
             pg_cancel_backend verdict for that caller.\n\n| caller | autovacuum worker |\n| --- | --- |\n{table}",
            server_major()
        ),
    );
}

#[test]
fn after_a_denied_row_the_callers_own_session_still_obeys_cancels_and_timeouts() {
    // PostgreSQL's refusal is an ERROR raised while pg_reaper pins the victim; the pin must be
    // let go so that the caller's interrupt hold-off count is what it was (a count taken below
    // zero would leave the session deaf to statement_timeout, cancels and terminates).
    let cluster = Cluster::start();
    create_roles(&cluster);
    let (protected, protected_query) = cluster.session("postgres", "protected").busy(&cluster);
    let mut plain = cluster.connect("plain");
    for f in [
        "reaper.cancel_matching($1::text::jsonb)",
        "reaper.terminate_matching($1::text::jsonb, 1000)",
    ] {
        let rows = call(
            &mut plain,
            f,
            &format!(
                r#"{{"pid": {}, "include_superusers": true}}"#,
                protected.pid
            ),
        )
        .unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].outcome, "denied", "{rows:?}");
    }
    plain
        .batch_execute("SET statement_timeout = '300ms'")
        .unwrap();
    let err = plain.batch_execute("SELECT pg_sleep(10)").unwrap_err();
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    plain.batch_execute("RESET statement_timeout").unwrap();
    // A cancel from outside reaches it too.
    let (plain, pending) = Session::new(plain).busy(&cluster);
    cluster
        .superuser()
        .query_one("SELECT pg_cancel_backend($1)", &[&plain.pid])
        .unwrap();
    assert_eq!(pending.wait(), Ended::Error("57014".into()));
    assert!(protected_query.still_running_after(Duration::from_millis(50)));
}
