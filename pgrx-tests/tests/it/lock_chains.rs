//! Lock chains on real sessions: `"blocking": "root"`, `min_blocked_sessions`,
//! `min_blocking_age` and `min_blocked_age` against chains made of real lock waits, their
//! answers checked against `pg_blocking_pids` and `pg_locks.waitstart`; a real deadlock cycle
//! (the detector held off) has no root.

use pg_reaper_integration::*;

/// The pids, sorted, a preview selects with `criteria`, narrowed to the sessions tagged `tag`.
fn selects(me: &mut Client, tag: &str, criteria: &str) -> Vec<i32> {
    sorted(pids(&preview(
        me,
        &format!(r#"{{"application_name": "{tag}", {criteria}}}"#),
    )))
}

/// Waits until `pid` has waited for a lock at least `seconds` (pg_locks.waitstart): a
/// condition that, once true, stays true while the wait lasts.
fn wait_waited(me: &mut Client, pid: i32, seconds: f64) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let waited: Option<f64> = me
            .query_one(
                "SELECT extract(epoch FROM clock_timestamp() - min(waitstart))::float8 \
                   FROM pg_locks WHERE pid = $1 AND NOT granted",
                &[&pid],
            )
            .unwrap()
            .get(0);
        if waited.is_some_and(|w| w >= seconds) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pid} never waited {seconds} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn roots_depths_and_wait_ages_of_real_chains() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    su.batch_execute(
        "CREATE TABLE t1 (id int); CREATE TABLE t2 (id int); CREATE TABLE t3 (id int); \
         GRANT ALL ON t1, t2, t3 TO app",
    )
    .unwrap();
    let tag = tag("chains");
    // r holds t1; m holds t2 and waits for t1; w1 and w2 wait for t2: r <- m <- w1, w2.
    let r = cluster.session("app", &tag);
    assert_eq!(
        r.run("BEGIN; LOCK TABLE t1 IN ACCESS EXCLUSIVE MODE"),
        Ended::Ok
    );
    let m = cluster.session("app", &tag);
    assert_eq!(
        m.run("BEGIN; LOCK TABLE t2 IN ACCESS EXCLUSIVE MODE"),
        Ended::Ok
    );
    let m_waits = m.start("SELECT * FROM t1");
    cluster.wait_until(m.pid, "a.wait_event_type = 'Lock'");
    let w1 = cluster.session("app", &tag);
    let w1_waits = w1.start("SELECT * FROM t2");
    cluster.wait_until(w1.pid, "a.wait_event_type = 'Lock'");
    let w2 = cluster.session("app", &tag);
    let w2_waits = w2.start("SELECT * FROM t2");
    cluster.wait_until(w2.pid, "a.wait_event_type = 'Lock'");
    // An unrelated pair: p <- q.
    let p = cluster.session("app", &tag);
    assert_eq!(
        p.run("BEGIN; LOCK TABLE t3 IN ACCESS EXCLUSIVE MODE"),
        Ended::Ok
    );
    let q = cluster.session("app", &tag);
    let q_waits = q.start("SELECT * FROM t3");
    cluster.wait_until(q.pid, "a.wait_event_type = 'Lock'");
    let idle = cluster.session("app", &tag).idle_in_transaction();
    let mut me = cluster.superuser();

    // What pg_blocking_pids says, as a sanity check of the set-up.
    let blockers = |me: &mut Client, pid: i32| -> Vec<i32> {
        me.query_one("SELECT pg_blocking_pids($1)", &[&pid])
            .unwrap()
            .get(0)
    };
    assert_eq!(blockers(&mut me, m.pid), vec![r.pid]);
    assert_eq!(blockers(&mut me, w1.pid), vec![m.pid]);
    assert_eq!(blockers(&mut me, q.pid), vec![p.pid]);

    assert_eq!(
        selects(&mut me, &tag, r#""blocking": "root""#),
        sorted(vec![r.pid, p.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""blocking": true"#),
        sorted(vec![r.pid, m.pid, p.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""blocked": true"#),
        sorted(vec![m.pid, w1.pid, w2.pid, q.pid])
    );
    // Through the chain: r holds up m, w1 and w2; m holds up two; p one.
    for (n, expected) in [
        (1, sorted(vec![r.pid, m.pid, p.pid])),
        (2, sorted(vec![r.pid, m.pid])),
        (3, vec![r.pid]),
        (4, vec![]),
    ] {
        assert_eq!(
            selects(&mut me, &tag, &format!(r#""min_blocked_sessions": {n}"#)),
            expected,
            "min_blocked_sessions {n}"
        );
    }
    // Ages: a threshold nobody has reached selects nobody; once m has waited 2 s (a
    // condition that stays true), the root behind it is selected by it, p's chain not yet
    // by an hour.
    assert_eq!(
        selects(&mut me, &tag, r#""min_blocking_age": "1 hour""#),
        Vec::<i32>::new()
    );
    assert_eq!(
        selects(&mut me, &tag, r#""min_blocked_age": "1 hour""#),
        Vec::<i32>::new()
    );
    wait_waited(&mut me, m.pid, 2.0);
    assert!(selects(
        &mut me,
        &tag,
        r#""blocking": "root", "min_blocking_age": "2s""#
    )
    .contains(&r.pid));
    assert!(selects(&mut me, &tag, r#""min_blocked_age": "2 s""#).contains(&m.pid));
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#""blocking": "root", "min_blocking_age": 0"#
        ),
        sorted(vec![r.pid, p.pid])
    );

    // "Terminate the root blocker of any chain in which someone has waited 2 s": r goes, the
    // chain behind it runs, p (and its waiter) and the idle session are left.
    let rows = terminate(
        &mut me,
        &format!(
            r#"{{"application_name": "{tag}", "blocking": "root", "min_blocking_age": "2s", "min_blocked_sessions": 3}}"#
        ),
        5000,
    );
    assert_eq!(pids(&rows), vec![r.pid]);
    assert_eq!(rows[0].outcome, "terminated");
    assert_eq!(m_waits.wait(), Ended::Ok);
    assert_eq!(m.run("COMMIT"), Ended::Ok);
    assert_eq!(w1_waits.wait(), Ended::Ok);
    assert_eq!(w2_waits.wait(), Ended::Ok);
    assert!(q_waits.still_running_after(std::time::Duration::from_millis(100)));
    assert_eq!(idle.run("SELECT 1"), Ended::Ok);
    assert_eq!(p.run("COMMIT"), Ended::Ok);
    assert_eq!(q_waits.wait(), Ended::Ok);
}

#[test]
fn a_deadlock_the_detector_has_not_broken_has_no_root() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    // The detector waits ten minutes in app's sessions: the cycle stays while the test looks.
    su.batch_execute(
        "CREATE TABLE da (id int); CREATE TABLE db (id int); GRANT ALL ON da, db TO app; \
         ALTER ROLE app SET deadlock_timeout = '10min'",
    )
    .unwrap();
    let tag = tag("cycle");
    let a = cluster.session("app", &tag);
    let b = cluster.session("app", &tag);
    assert_eq!(
        a.run("BEGIN; LOCK TABLE da IN ACCESS EXCLUSIVE MODE"),
        Ended::Ok
    );
    assert_eq!(
        b.run("BEGIN; LOCK TABLE db IN ACCESS EXCLUSIVE MODE"),
        Ended::Ok
    );
    let a_waits = a.start("LOCK TABLE db IN ACCESS EXCLUSIVE MODE");
    cluster.wait_until(a.pid, "a.wait_event_type = 'Lock'");
    let b_waits = b.start("LOCK TABLE da IN ACCESS EXCLUSIVE MODE");
    cluster.wait_until(b.pid, "a.wait_event_type = 'Lock'");
    // And c behind the cycle: it waits for a.
    let c = cluster.session("app", &tag);
    let c_waits = c.start("SELECT * FROM da");
    cluster.wait_until(c.pid, "a.wait_event_type = 'Lock'");
    let mut me = cluster.superuser();
    let blockers = |me: &mut Client, pid: i32| -> Vec<i32> {
        me.query_one("SELECT pg_blocking_pids($1)", &[&pid])
            .unwrap()
            .get(0)
    };
    assert_eq!(blockers(&mut me, a.pid), vec![b.pid]);
    assert!(blockers(&mut me, b.pid).contains(&a.pid));

    // No root: every member of the cycle waits.
    assert_eq!(
        selects(&mut me, &tag, r#""blocking": "root""#),
        Vec::<i32>::new()
    );
    assert_eq!(
        selects(&mut me, &tag, r#""blocked": true"#),
        sorted(vec![a.pid, b.pid, c.pid])
    );
    // Each member holds up the other and c (a directly, b through a): two each.
    assert_eq!(
        selects(&mut me, &tag, r#""min_blocked_sessions": 2"#),
        sorted(vec![a.pid, b.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""min_blocked_sessions": 3"#),
        Vec::<i32>::new()
    );
    // A root-only policy signals nothing here; one victim out of the cycle breaks it.
    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "blocking": "root"}}"#),
        0,
    );
    assert!(rows.is_empty(), "{rows:?}");
    let rows = terminate(
        &mut me,
        &format!(
            r#"{{"application_name": "{tag}", "blocking": true, "blocked": true, "order": "newest_backend", "limit": 1}}"#
        ),
        5000,
    );
    assert_eq!(pids(&rows), vec![b.pid]);
    assert_eq!(a_waits.wait(), Ended::Ok);
    assert_eq!(b_waits.wait(), Ended::Closed, "b was terminated");
    assert_eq!(a.run("COMMIT"), Ended::Ok);
    assert_eq!(c_waits.wait(), Ended::Ok);
}
