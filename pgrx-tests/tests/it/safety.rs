//! The safe defaults, on real sessions: the calling backend is never a victim; only client
//! backends unless `backend_type` is named; superusers' sessions are left alone unless asked;
//! `{}` is refused before anything is signalled; `exclude` protects; `limit` caps the victims.
//!
//! Tests that signal `{"all": true, "include_superusers": true}` get a cluster of their own;
//! the others share one and name their own tag in every filter.

use pg_reaper_integration::*;
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

const EVERYTHING: &str = r#"{"all": true, "include_superusers": true}"#;

fn cluster() -> Arc<Cluster> {
    shared_cluster(module_path!(), |cluster| {
        cluster.create_role("app", "");
        cluster.create_role("batch", "");
        cluster.create_role("boss", "SUPERUSER");
    })
}

/// Waits until the client backends other than the caller are exactly `expected` (connections
/// the harness closed may take a moment to leave).
fn settle(me: &mut Client, expected: &[i32]) {
    let expected = sorted(expected.to_vec());
    let deadline = Instant::now() + PATIENCE;
    loop {
        me.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
        let others: Vec<i32> = me
            .query(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' \
                   AND pid <> pg_backend_pid() ORDER BY pid",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if others == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{others:?} != {expected:?}");
        sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_caller_is_never_a_victim() {
    // Own cluster: this test signals everything.
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("never_self");
    let app = cluster.session("app", &tag);
    let other_su = cluster.session("postgres", &tag);
    let mut me = cluster.superuser();
    let me_pid = backend_pid(&mut me);
    settle(&mut me, &[app.pid, other_su.pid]);

    let rows = preview(&mut me, EVERYTHING);
    assert_eq!(pids(&rows), sorted(vec![app.pid, other_su.pid]));
    assert!(rows.iter().all(|r| r.pid != me_pid));
    // Naming the caller every way there is selects nothing.
    for filter in [
        format!(r#"{{"pid": {me_pid}, "include_superusers": true}}"#),
        format!(r#"{{"pid": [{me_pid}], "include_superusers": true}}"#),
        r#"{"application_name": "pg_reaper_tests", "include_superusers": true}"#.to_string(),
        r#"{"state": "active", "include_superusers": true}"#.to_string(),
        r#"{"query": {"regex": "preview_matching"}, "include_superusers": true}"#.to_string(),
    ] {
        assert!(preview(&mut me, &filter).is_empty(), "{filter}");
        assert!(terminate(&mut me, &filter, 1000).is_empty(), "{filter}");
    }
    // A cancel of everything: had the caller cancelled itself, this statement would fail 57014.
    let rows = cancel(&mut me, EVERYTHING);
    assert_eq!(pids(&rows), sorted(vec![app.pid, other_su.pid]));
    // And terminating everything takes everyone else, and the caller goes on.
    let rows = terminate(&mut me, EVERYTHING, 5000);
    assert_eq!(pids(&rows), sorted(vec![app.pid, other_su.pid]));
    assert!(rows.iter().all(|r| r.outcome == "terminated"), "{rows:?}");
    assert_eq!(
        backend_pid(&mut me),
        me_pid,
        "the caller lives, on the same backend"
    );
    assert!(!cluster.alive(app.pid) && !cluster.alive(other_su.pid));
    let rows = call(
        &mut me,
        "reaper.cancel_then_terminate($1::text::jsonb, 100, 1000)",
        EVERYTHING,
    )
    .unwrap();
    assert!(rows.iter().all(|r| r.pid != me_pid), "{rows:?}");
    assert_eq!(backend_pid(&mut me), me_pid);
}

#[test]
fn a_role_ending_its_own_sessions_spares_the_caller() {
    // The classic `WHERE usename = current_user` loop, which kills itself.
    let cluster = cluster();
    let tag = tag("own_sessions");
    let mine: Vec<Session> = (0..3).map(|_| cluster.session("app", &tag)).collect();
    let mut caller = cluster.connect_as("app", &tag);
    let caller_pid = backend_pid(&mut caller);
    let filter = format!(r#"{{"application_name": "{tag}", "usename": "app"}}"#);
    let expected = sorted(mine.iter().map(|s| s.pid).collect());
    assert_eq!(pids(&preview(&mut caller, &filter)), expected);
    let rows = terminate(&mut caller, &filter, 5000);
    assert_eq!(pids(&rows), expected);
    assert!(rows.iter().all(|r| r.outcome == "terminated"), "{rows:?}");
    assert_eq!(backend_pid(&mut caller), caller_pid);
    for s in &mine {
        assert!(!cluster.alive(s.pid));
    }
}

#[test]
fn only_client_backends_unless_the_type_is_named() {
    // Own cluster: this test signals everything.
    let cluster = Cluster::start();
    let mut me = cluster.superuser();
    settle(&mut me, &[]);
    let background = |me: &mut Client| -> Vec<(i32, String)> {
        me.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
        me.query(
            "SELECT pid, backend_type FROM pg_stat_activity \
              WHERE backend_type <> 'client backend' ORDER BY pid",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    };
    let before = background(&mut me);
    let types: Vec<&str> = before.iter().map(|(_, t)| t.as_str()).collect();
    for t in [
        "autovacuum launcher",
        "checkpointer",
        "walwriter",
        "logical replication launcher",
        "background writer",
    ] {
        assert!(types.contains(&t), "{t} runs: {before:?}");
    }
    let postmaster = cluster.postmaster_start();
    let tag = tag("client_only");
    let app = cluster.session("postgres", &tag);
    // No helper connects from here on: the client backends are exactly the caller and `app`.
    settle(&mut me, &[app.pid]);

    // Filters that would match the background processes' columns select only client backends.
    for filter in [
        EVERYTHING,
        r#"{"application_name": "", "include_superusers": true}"#,
        r#"{"min_backend_age": 0, "include_superusers": true}"#,
        r#"{"client_addr": "local", "include_superusers": true}"#,
        r#"{"any": [{"all": true}], "include_superusers": true}"#,
    ] {
        let rows = preview(&mut me, filter);
        assert!(
            rows.iter()
                .all(|r| r.backend_type.as_deref() == Some("client backend")),
            "{filter}: {rows:?}"
        );
    }
    assert_eq!(pids(&preview(&mut me, EVERYTHING)), vec![app.pid]);
    // Only the branch that names a type can select a process of that type.
    let launcher: Vec<i32> = before
        .iter()
        .filter(|(_, t)| t == "autovacuum launcher")
        .map(|(p, _)| *p)
        .collect();
    let rows = preview(
        &mut me,
        &format!(
            r#"{{"any": [{{"backend_type": "autovacuum launcher"}}, {{"application_name": ["", "{tag}"]}}], "include_superusers": true}}"#
        ),
    );
    assert_eq!(pids(&rows), sorted(vec![launcher[0], app.pid]));

    let rows = terminate(&mut me, EVERYTHING, 5000);
    assert_eq!(pids(&rows), vec![app.pid]);
    assert_eq!(rows[0].outcome, "terminated");
    let rows = terminate(
        &mut me,
        r#"{"application_name": "", "include_superusers": true}"#,
        1000,
    );
    assert!(rows.is_empty(), "{rows:?}");
    // Every background process is still there, the same process, and nothing restarted.
    assert_eq!(background(&mut me), before);
    assert_eq!(cluster.postmaster_start(), postmaster);
}

#[test]
fn superusers_sessions_are_left_alone_unless_asked() {
    let cluster = cluster();
    let tag = tag("superusers");
    let (app, app_query) = cluster.session("app", &tag).busy(&cluster);
    let (su, su_query) = cluster.session("postgres", &tag).busy(&cluster);
    let boss = cluster.session("boss", &tag).idle_in_transaction();
    let mut me = cluster.superuser();
    let base = format!(r#""application_name": "{tag}""#);

    assert_eq!(
        pids(&preview(&mut me, &format!("{{{base}, \"all\": true}}"))),
        vec![app.pid]
    );
    // Even named by pid or user, a superuser's session is skipped.
    let named = format!(
        r#"{{{base}, "pid": [{}, {}], "usename": ["postgres", "boss"]}}"#,
        su.pid, boss.pid
    );
    assert!(preview(&mut me, &named).is_empty());
    assert!(terminate(&mut me, &named, 1000).is_empty());
    let rows = cancel(&mut me, &format!("{{{base}, \"state\": \"active\"}}"));
    assert_eq!(pids(&rows), vec![app.pid]);
    assert_eq!(app_query.wait(), Ended::Error("57014".into()));
    assert!(su_query.still_running_after(Duration::from_millis(200)));
    assert!(cluster.alive(boss.pid));

    // Asked, they are signalled like anyone.
    let rows = terminate(
        &mut me,
        &format!("{{{base}, \"all\": true, \"include_superusers\": true}}"),
        5000,
    );
    assert_eq!(pids(&rows), sorted(vec![app.pid, su.pid, boss.pid]));
    assert!(rows.iter().all(|r| r.outcome == "terminated"), "{rows:?}");
    assert_eq!(su_query.wait(), Ended::Closed);
}

#[test]
fn an_empty_filter_is_refused_and_nothing_is_signalled() {
    let cluster = cluster();
    let tag = tag("empty");
    let idle = cluster.session("app", &tag);
    let idle_tx = cluster.session("batch", &tag).idle_in_transaction();
    let (busy, busy_query) = cluster.session("app", &tag).busy(&cluster);
    let mut me = cluster.superuser();
    // `{}`, and filters whose keys only narrow or order: none names a criterion.
    let filters = [
        r#"{}"#,
        r#"{"include_superusers": true}"#,
        r#"{"limit": 5, "order": "newest_backend"}"#,
        r#"{"exclude": {"usename": "nobody"}}"#,
    ];
    let calls = [
        "reaper.preview_matching($1::text::jsonb)",
        "reaper.cancel_matching($1::text::jsonb)",
        "reaper.terminate_matching($1::text::jsonb)",
        "reaper.terminate_matching($1::text::jsonb, 5000)",
        "reaper.cancel_then_terminate($1::text::jsonb, 100, 1000)",
    ];
    for filter in filters {
        for f in calls {
            let err = call(&mut me, f, filter).expect_err(&format!("{f} {filter}"));
            assert_eq!(sqlstate(&err), Some("22023"), "{f} {filter}: {err:?}");
        }
    }
    assert!(busy_query.still_running_after(Duration::from_millis(100)));
    for s in [&idle, &idle_tx] {
        assert_eq!(s.run("SELECT 1"), Ended::Ok);
    }
    assert!(cluster.alive(busy.pid));
    let logged = count(
        &mut me,
        &format!("SELECT count(*) FROM reaper.log WHERE application_name = '{tag}'"),
    );
    assert_eq!(logged, 0);
}

#[test]
fn exclude_protects() {
    let cluster = cluster();
    let tag = tag("exclude");
    let a = cluster.session("app", &tag);
    let b = cluster.session("app", &tag);
    let c = cluster.session("batch", &tag).idle_in_transaction();
    let (busy, busy_query) = cluster.session("batch", &tag).busy(&cluster);
    let (busy_kept, kept_query) = cluster.session("app", &tag).busy(&cluster);
    let mut me = cluster.superuser();
    let base = format!(r#""application_name": "{tag}""#);

    // Named by pid and excluded by pid: exclude wins.
    let rows = terminate(
        &mut me,
        &format!(
            r#"{{{base}, "pid": [{}, {}], "exclude": {{"pid": {}}}}}"#,
            a.pid, b.pid, a.pid
        ),
        0,
    );
    assert_eq!(pids(&rows), vec![b.pid]);
    assert!(cluster.wait_gone(b.pid));
    assert_eq!(a.run("SELECT 1"), Ended::Ok);

    // Exclude applies before limit: the oldest (a) is excluded, so the limit takes the next.
    let limited = format!(
        r#"{{{base}, "all": true, "limit": 1, "exclude": {{"pid": {}}}}}"#,
        a.pid
    );
    assert_eq!(pids(&preview(&mut me, &limited)), vec![c.pid]);

    // A cancel of everything active but the app's.
    let rows = cancel(
        &mut me,
        &format!(r#"{{{base}, "state": "active", "exclude": {{"usename": "app"}}}}"#),
    );
    assert_eq!(pids(&rows), vec![busy.pid]);
    assert_eq!(busy_query.wait(), Ended::Error("57014".into()));
    assert!(kept_query.still_running_after(Duration::from_millis(200)));

    // An exclude that covers everything: nothing is signalled.
    let rows = terminate(
        &mut me,
        &format!(
            r#"{{{base}, "all": true, "include_superusers": true, "exclude": {{"any": [{{"usename": "app"}}, {{"usename": "batch"}}]}}}}"#
        ),
        1000,
    );
    assert!(rows.is_empty(), "{rows:?}");
    assert_eq!(a.run("SELECT 1"), Ended::Ok);
    assert_eq!(c.run("SELECT 1"), Ended::Ok);
    assert_eq!(busy.run("SELECT 1"), Ended::Ok);
    assert!(kept_query.still_running_after(Duration::ZERO));
    assert!(cluster.alive(busy_kept.pid));
}

#[test]
fn limit_caps_the_victims() {
    let cluster = cluster();
    let tag = tag("limit");
    let mut sessions = Vec::new();
    // Opened in turn (each connection completes before the next begins): the first is the
    // oldest backend.
    for _ in 0..5 {
        sessions.push(cluster.session("app", &tag));
    }
    let mut me = cluster.superuser();
    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "limit": 2}}"#),
        5000,
    );
    // The two oldest backends, in that order, confirmed gone; the other three live.
    assert_eq!(
        rows.iter().map(|r| r.pid).collect::<Vec<_>>(),
        vec![sessions[0].pid, sessions[1].pid]
    );
    assert!(rows.iter().all(|r| r.outcome == "terminated"), "{rows:?}");
    for s in &sessions[..2] {
        assert!(!cluster.alive(s.pid));
    }
    for s in &sessions[2..] {
        assert_eq!(s.run("SELECT 1"), Ended::Ok);
    }

    // The cap holds for cancels too: the newest of three busy sessions, only.
    let tag = format!("{tag}_busy");
    let busy: Vec<(Session, Pending)> = (0..3)
        .map(|_| cluster.session("app", &tag).busy(&cluster))
        .collect();
    let rows = cancel(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "limit": 1, "order": "newest_backend"}}"#),
    );
    assert_eq!(pids(&rows), vec![busy[2].0.pid]);
    assert_eq!(busy[2].1.wait(), Ended::Error("57014".into()));
    assert!(busy[0].1.still_running_after(Duration::from_millis(200)));
    assert!(busy[1].1.still_running_after(Duration::ZERO));
}
