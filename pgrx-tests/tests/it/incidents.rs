//! The incidents pg_reaper is reached for, on real sessions: a migration stuck behind a report
//! with hundreds of sessions queued behind it, a queue of updaters on one row, a chain headed by
//! a prepared transaction. Every lock key's answer is checked, session by session, against what
//! `pg_blocking_pids` says (and `pg_locks.waitstart` for the ages).

use pg_reaper_integration::*;
use std::collections::{BTreeMap, BTreeSet};

/// What `pg_blocking_pids` says of the sessions tagged `tag`: each one's blockers.
fn blockers(me: &mut Client, tag: &str) -> BTreeMap<i32, BTreeSet<i32>> {
    me.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
    me.query(
        "SELECT a.pid, pg_blocking_pids(a.pid) FROM pg_stat_activity a WHERE a.application_name = $1",
        &[&tag],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get::<_, Vec<i32>>(1).into_iter().collect()))
    .collect()
}

/// Who is behind each session, directly or through others, by those lists (grown until
/// nothing changes: a reference that shares no code with pg_reaper).
fn behind(lists: &BTreeMap<i32, BTreeSet<i32>>) -> BTreeMap<i32, BTreeSet<i32>> {
    let mut behind: BTreeMap<i32, BTreeSet<i32>> = BTreeMap::new();
    for (&waiter, by) in lists {
        for &b in by {
            behind.entry(b).or_default().insert(waiter);
        }
    }
    loop {
        let mut grown = false;
        let snapshot = behind.clone();
        for (b, set) in behind.iter_mut() {
            let more: Vec<i32> = set
                .iter()
                .filter_map(|w| snapshot.get(w))
                .flatten()
                .copied()
                .filter(|p| p != b)
                .collect();
            for p in more {
                grown |= set.insert(p);
            }
        }
        if !grown {
            return behind;
        }
    }
}

/// The pids a preview selects with `criteria`, narrowed to the sessions tagged `tag`.
fn selects(me: &mut Client, tag: &str, criteria: &str) -> BTreeSet<i32> {
    preview(
        me,
        &format!(r#"{{"application_name": "{tag}", {criteria}}}"#),
    )
    .iter()
    .map(|r| r.pid)
    .collect()
}

/// Every lock key's answer, session by session, against pg_blocking_pids: blocked, blocking,
/// root, and the counts behind each at every threshold that tells them apart.
fn keys_agree_with_pg_blocking_pids(me: &mut Client, tag: &str) {
    let lists = blockers(me, tag);
    let behind = behind(&lists);
    let tagged: BTreeSet<i32> = lists.keys().copied().collect();
    let blocked: BTreeSet<i32> = lists
        .iter()
        .filter(|(_, by)| !by.is_empty())
        .map(|(p, _)| *p)
        .collect();
    let blocking: BTreeSet<i32> = behind
        .iter()
        .filter(|(p, set)| tagged.contains(p) && !set.is_empty())
        .map(|(p, _)| *p)
        .collect();
    let root: BTreeSet<i32> = blocking.difference(&blocked).copied().collect();
    assert_eq!(selects(me, tag, r#""blocked": true"#), blocked);
    assert_eq!(selects(me, tag, r#""blocking": true"#), blocking);
    assert_eq!(selects(me, tag, r#""blocking": "root""#), root);
    let counts: BTreeSet<usize> = behind.values().map(BTreeSet::len).collect();
    for n in counts.iter().flat_map(|&n| [n, n + 1]).filter(|&n| n > 0) {
        let expected: BTreeSet<i32> = behind
            .iter()
            .filter(|(p, set)| tagged.contains(p) && set.len() >= n)
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(
            selects(me, tag, &format!(r#""min_blocked_sessions": {n}"#)),
            expected,
            "min_blocked_sessions {n}"
        );
    }
}

/// Waits until `n` sessions tagged `tag` wait for a heavyweight lock.
fn wait_waiting(me: &mut Client, tag: &str, n: usize) {
    wait_for(
        me,
        &format!(
            "SELECT count(*) = {n} FROM pg_stat_activity WHERE application_name = '{tag}' \
               AND wait_event_type = 'Lock'"
        ),
    );
}

#[test]
fn a_migration_pileup_of_500_sessions_agrees_with_pg_blocking_pids() {
    // A report holds AccessShareLock on a table in an open transaction; ALTER TABLE waits for
    // AccessExclusiveLock; 500 readers queue behind the ALTER.
    let cluster = Cluster::start_with(Options {
        max_connections: 560,
        ..Options::default()
    });
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    su.batch_execute("CREATE TABLE pileup (id int); ALTER TABLE pileup OWNER TO app")
        .unwrap();
    let tag = tag("pileup");
    let report = cluster.session("app", &tag);
    assert_eq!(report.run("BEGIN; SELECT count(*) FROM pileup"), Ended::Ok);
    let alter = cluster.session("app", &tag);
    let _alter_waits = alter.start("ALTER TABLE pileup ADD COLUMN c int");
    let mut me = cluster.superuser();
    wait_waiting(&mut me, &tag, 1);
    let readers: Vec<(Session, Pending)> = (0..500)
        .map(|_| {
            let s = cluster.session("app", &tag);
            let p = s.start("SELECT count(*) FROM pileup");
            (s, p)
        })
        .collect();
    wait_waiting(&mut me, &tag, 501);
    keys_agree_with_pg_blocking_pids(&mut me, &tag);
    // The report is the one root, 501 sessions behind it; the ALTER has the 500 readers.
    assert_eq!(
        selects(&mut me, &tag, r#""blocking": "root""#),
        BTreeSet::from([report.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""min_blocked_sessions": 501"#),
        BTreeSet::from([report.pid])
    );
    // Ages: the ALTER has waited longest; the report holds up someone who has.
    let started: f64 = me
        .query_one(
            "SELECT extract(epoch FROM clock_timestamp() - min(waitstart))::float8 FROM pg_locks \
              WHERE NOT granted AND pid = $1",
            &[&alter.pid],
        )
        .unwrap()
        .get(0);
    assert!(started > 0.0);
    let old = format!(
        r#""min_blocking_age": "{}ms""#,
        (started * 1000.0) as i64 - 1
    );
    assert!(selects(&mut me, &tag, &old).contains(&report.pid));
    // The readers are untouched: a preview signals nothing.
    for (s, pending) in readers.iter().take(3) {
        assert!(pending.still_running_after(std::time::Duration::from_millis(1)));
        assert!(cluster.reaper_lines(s.pid).is_empty());
    }
    // Ending the root ends the pileup.
    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "blocking": "root"}}"#),
        5000,
    );
    assert_eq!(pids(&rows), vec![report.pid]);
    assert_eq!(rows[0].outcome, "terminated");
    for (_, pending) in &readers {
        assert_eq!(pending.wait(), Ended::Ok);
    }
}

#[test]
fn a_queue_of_200_updaters_on_one_row_agrees_with_pg_blocking_pids() {
    // One transaction has updated a row; 200 more update it: the first waits for the first's
    // transaction, the others queue for the row's tuple lock, each behind every one ahead.
    let cluster = Cluster::start_with(Options {
        max_connections: 260,
        ..Options::default()
    });
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    su.batch_execute(
        "CREATE TABLE hot (id int PRIMARY KEY, v int); INSERT INTO hot VALUES (1, 0); \
         GRANT ALL ON hot TO app",
    )
    .unwrap();
    let tag = tag("hot_row");
    let holder = cluster.session("app", &tag);
    assert_eq!(
        holder.run("BEGIN; UPDATE hot SET v = v + 1 WHERE id = 1"),
        Ended::Ok
    );
    let mut me = cluster.superuser();
    let updaters: Vec<(Session, Pending)> = (0..200)
        .map(|_| {
            let s = cluster.session("app", &tag);
            let p = s.start("UPDATE hot SET v = v + 1 WHERE id = 1");
            (s, p)
        })
        .collect();
    wait_waiting(&mut me, &tag, 200);
    keys_agree_with_pg_blocking_pids(&mut me, &tag);
    assert_eq!(
        selects(&mut me, &tag, r#""blocking": "root""#),
        BTreeSet::from([holder.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""min_blocked_sessions": 200"#),
        BTreeSet::from([holder.pid])
    );
    assert_eq!(holder.run("COMMIT"), Ended::Ok);
    for (_, pending) in &updaters {
        assert_eq!(pending.wait(), Ended::Ok);
    }
}

#[test]
fn a_chain_headed_by_a_prepared_transaction_has_no_session_for_root() {
    // A prepared transaction holds an exclusive lock: it has no backend, and pg_blocking_pids
    // names it 0. The first session waiting for it is blocked, so never taken for the root;
    // a direct call says which prepared transaction holds the chain up.
    let cluster = Cluster::start_with(Options {
        settings: vec!["max_prepared_transactions = 5".into()],
        ..Options::default()
    });
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    su.batch_execute("CREATE TABLE held (id int); GRANT ALL ON held TO app")
        .unwrap();
    su.batch_execute(
        "BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE; PREPARE TRANSACTION 'reaper-held'",
    )
    .unwrap();
    let tag = tag("prepared");
    let first = cluster.session("app", &tag);
    let first_waits = first.start("SELECT * FROM held");
    let mut me = cluster.superuser();
    wait_waiting(&mut me, &tag, 1);
    let second = cluster.session("app", &tag);
    let second_waits = second.start("BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE; COMMIT");
    wait_waiting(&mut me, &tag, 2);
    let lists = blockers(&mut me, &tag);
    assert_eq!(lists[&first.pid], BTreeSet::from([0]));
    keys_agree_with_pg_blocking_pids(&mut me, &tag);
    assert!(selects(&mut me, &tag, r#""blocking": "root""#).is_empty());
    assert_eq!(
        selects(&mut me, &tag, r#""blocking": true"#),
        BTreeSet::from([first.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""blocked": true"#),
        BTreeSet::from([first.pid, second.pid])
    );
    let (mut caller, notices) = cluster.collecting_client("postgres");
    let rows = preview(
        &mut caller,
        &format!(r#"{{"application_name": "{tag}", "blocked": true}}"#),
    );
    assert_eq!(rows.len(), 2);
    let said = notices.lock().unwrap().join("\n");
    assert!(
        said.contains("prepared transaction(s) 'reaper-held'") && said.contains("COMMIT PREPARED"),
        "{said}"
    );
    su.batch_execute("ROLLBACK PREPARED 'reaper-held'").unwrap();
    assert_eq!(first_waits.wait(), Ended::Ok);
    assert_eq!(second_waits.wait(), Ended::Ok);
}
