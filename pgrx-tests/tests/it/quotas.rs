//! Quotas on real sessions: `keep` with `per` spares the first N of each group in the filter's
//! order and makes the rest victims; `limit` comes after `keep`; and a victim that a quota no
//! longer makes excess by the time it is re-checked is left alone.

use pg_reaper_integration::*;

/// Sessions tagged `app`, opened one after another (so their backend_start order is theirs).
fn open(cluster: &Cluster, user: &str, app: &str, n: usize) -> Vec<Session> {
    (0..n).map(|_| cluster.session(user, app)).collect()
}

fn pids_of(sessions: &[Session]) -> Vec<i32> {
    sessions.iter().map(|s| s.pid).collect()
}

#[test]
fn keep_the_newest_n_of_each_application_and_end_the_rest() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("quota");
    let (a, b) = (format!("{tag}_a"), format!("{tag}_b"));
    let sa = open(&cluster, "app", &a, 5);
    let sb = open(&cluster, "app", &b, 3);
    let mut me = cluster.superuser();
    let filter = format!(
        r#"{{"application_name": {{"regex": "^{tag}_"}}, "state": "idle", "per": ["application_name"], "keep": 2, "order": "newest_backend"}}"#
    );
    // a keeps its two newest, b its two newest; the victims newest first.
    let expected = vec![sa[2].pid, sa[1].pid, sa[0].pid, sb[0].pid];
    // In the filter's order (newest backend first): b's victim is newer than a's.
    let previewed: Vec<i32> = preview(&mut me, &filter).iter().map(|r| r.pid).collect();
    assert_eq!(previewed, vec![sb[0].pid, sa[2].pid, sa[1].pid, sa[0].pid]);
    // limit comes after keep: the newest victim only.
    let limited = filter.replace(r#""keep": 2"#, r#""keep": 2, "limit": 1"#);
    assert_eq!(pids(&preview(&mut me, &limited)), vec![sb[0].pid]);
    // Per role and application at once: a second role's sessions are groups of their own.
    cluster.create_role("other", "");
    let so = open(&cluster, "other", &a, 2);
    let per_both = filter.replace(
        r#"["application_name"]"#,
        r#"["usename", "application_name"]"#,
    );
    assert_eq!(
        sorted(pids(&preview(&mut me, &per_both))),
        sorted(expected.clone())
    );
    let gone = pids_of(&so);
    drop(so);
    for pid in gone {
        assert!(cluster.wait_gone(pid));
    }

    let rows = terminate(&mut me, &filter, 5000);
    assert_eq!(sorted(pids(&rows)), sorted(expected));
    assert!(rows.iter().all(|r| r.outcome == "terminated"), "{rows:?}");
    for s in [&sa[3], &sa[4], &sb[1], &sb[2]] {
        assert_eq!(
            s.run("SELECT 1"),
            Ended::Ok,
            "{} is within the quota",
            s.pid
        );
    }
    // Within the quota now: nothing more to do.
    assert!(preview(&mut me, &filter).is_empty());
}

#[test]
fn a_victim_the_quota_spares_by_the_time_of_its_signal_is_left_alone() {
    // Three sessions, keep 2, the oldest is the excess. Between the choice and the re-check,
    // one of the kept sessions leaves: the oldest is now within the quota and is not signalled.
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("quota_recheck");
    let mut sessions = open(&cluster, "app", &tag, 3);
    let leaving = sessions.pop().unwrap();
    let leaving_pid = leaving.pid;
    let filter =
        format!(r#"{{"application_name": "{tag}", "keep": 2, "order": "newest_backend"}}"#);
    let rows = terminate_with_window(&cluster, &filter, || {
        drop(leaving);
        assert!(cluster.wait_gone(leaving_pid));
    });
    assert_eq!(pids(&rows), vec![sessions[0].pid]);
    assert_eq!(rows[0].outcome, "vanished", "{rows:?}");
    assert_eq!(
        rows[0].detail.as_deref(),
        Some("was within its group's \"keep\" quota before it was signalled")
    );
    for s in &sessions {
        assert_eq!(s.run("SELECT 1"), Ended::Ok);
    }
}

#[test]
fn sessions_the_caller_may_not_see_are_left_out_of_a_quota_and_spared() {
    // A caller without pg_read_all_stats sees another role's sessions with their timestamps
    // hidden: "keep" cannot rank them, so it spares them (and says so) rather than guess.
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    cluster.create_role("watcher", "IN ROLE pg_signal_backend");
    let tag = tag("quota_hidden");
    let sessions = open(&cluster, "app", &tag, 3);
    let all = r#"{"usename": "app"}"#;
    let kept = r#"{"usename": "app", "keep": 1, "order": "newest_backend"}"#;
    // Without a quota the hidden sessions are victims like any other (usename is visible).
    let (mut watcher, notices) = cluster.collecting_client("watcher");
    assert_eq!(
        sorted(pids(&preview(&mut watcher, all))),
        sorted(pids_of(&sessions))
    );
    assert!(notices.lock().unwrap().is_empty());
    // With one, none of them is, and the NOTICE counts them.
    let rows = terminate(&mut watcher, kept, 5000);
    assert!(rows.is_empty(), "{rows:?}");
    assert_eq!(
        notices.lock().unwrap().clone(),
        vec!["NOTICE 00000: pg_reaper: 3 matching session(s) you may not see were left out of the quota and spared (\"keep\" cannot rank a session whose timestamps and address are hidden); membership in pg_read_all_stats shows them".to_string()]
    );
    for s in &sessions {
        assert_eq!(s.run("SELECT 1"), Ended::Ok);
    }
    // A caller who sees them keeps the newest and ends the other two.
    let rows = terminate(&mut cluster.superuser(), kept, 5000);
    assert_eq!(
        sorted(pids(&rows)),
        sorted(vec![sessions[0].pid, sessions[1].pid])
    );
    assert!(rows.iter().all(|r| r.outcome == "terminated"), "{rows:?}");
    assert_eq!(sessions[2].run("SELECT 1"), Ended::Ok);
}
