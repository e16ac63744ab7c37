//! High availability under Patroni: etcd and three Patroni nodes of PostgreSQL 15 on loopback,
//! pg_reaper preloaded through Patroni's `postgresql.parameters` and each node named by
//! `pg_reaper.node_name` (the README's recipe: `pgrx-tests/patroni/`). Policies with `run_on`
//! `primary`, `standby` and `any` enforce on the right nodes; a switchover and a failover (the
//! leader's postmaster killed) each move enforcement to the new roles within 5 s of the new
//! leader accepting writes; the audit rows committed before stay on the surviving timeline.

use pg_reaper_integration::patroni::Patroni;
use pg_reaper_integration::*;
use std::time::{Duration, Instant};

/// Whether a session of `app` on node n is ended within `limit`.
/// Ended by pg_reaper, that is: its error carries the DETAIL a policy's termination gives (a
/// node that Patroni restarts ends its sessions too, with the same SQLSTATE and no DETAIL).
fn ended_within(p: &Patroni, n: u8, app: &str, limit: Duration) -> bool {
    let mut victim = p.connect_as(n, "app", app);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Err(e) = victim.batch_execute("SELECT 1") {
            let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or_default();
            assert!(
                detail.starts_with("pg_reaper: terminated by policy"),
                "node{n}: {app} ended otherwise: {e:?}"
            );
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Enforcement by role: on the leader, `ha-primary` and `ha-any` sessions end and `ha-standby`
/// ones live; on each replica the other way round.
fn enforcement_follows_roles(p: &Patroni, leader: u8, limit: Duration) {
    for n in 1..=3u8 {
        let (ends, lives) = if n == leader {
            ("ha-primary", "ha-standby")
        } else {
            ("ha-standby", "ha-primary")
        };
        let mut alive = p.connect_as(n, "app", lives);
        assert!(
            ended_within(p, n, ends, limit),
            "node{n} (leader node{leader}): {ends} lives on"
        );
        assert!(
            ended_within(p, n, "ha-any", limit),
            "node{n}: ha-any lives on"
        );
        alive
            .batch_execute("SELECT 1")
            .unwrap_or_else(|e| panic!("node{n} (leader node{leader}) ended {lives}: {e}"));
    }
}

#[test]
fn policies_follow_the_leader_across_a_switchover_and_a_failover() {
    if server_major() != 15 || !pg_reaper_integration::patroni::available() {
        skip(
            "patroni::policies_follow_the_leader_across_a_switchover_and_a_failover",
            "runs on PostgreSQL 15 (Debian's, which Patroni runs) with Debian's patroni and etcd-server",
        );
        return;
    }
    let p = Patroni::start();
    let leader = p.leader(None);
    let mut su = p.connect(leader, "setup");
    su.batch_execute(
        "CREATE ROLE app LOGIN; CREATE EXTENSION pg_reaper; \
         INSERT INTO reaper.policies (name, filter, action, run_every, run_on) VALUES \
           ('on-primary', '{\"application_name\": \"ha-primary\"}', 'terminate', '100 ms', 'primary'), \
           ('on-standby', '{\"application_name\": \"ha-standby\"}', 'terminate', '100 ms', 'standby'), \
           ('anywhere', '{\"application_name\": \"ha-any\"}', 'terminate', '100 ms', 'any')",
    )
    .unwrap();
    drop(su);
    // The policies reach the replicas by physical replication; each worker takes them up.
    enforcement_follows_roles(&p, leader, Duration::from_secs(10));
    let mut su = p.connect(leader, "setup");
    let (before, last_before): (i64, i64) = {
        let r = su
            .query_one("SELECT count(*), max(id) FROM reaper.log", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(before >= 2, "the leader's rows");
    let nodes: Vec<String> = su
        .query("SELECT DISTINCT node FROM reaper.log", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        nodes,
        vec![format!("node{leader}")],
        "only the primary writes rows"
    );
    drop(su);

    // A switchover: enforcement follows within 5 s of the new leader accepting writes.
    let candidate = (1..=3u8).find(|n| *n != leader).unwrap();
    let status = p.rest(
        leader,
        "POST",
        "/switchover",
        &format!(r#"{{"leader": "node{leader}", "candidate": "node{candidate}"}}"#),
    );
    assert_eq!(status, 200, "switchover refused");
    let new_leader = p.leader(Some(leader));
    assert_eq!(new_leader, candidate);
    enforcement_follows_roles(&p, new_leader, Duration::from_secs(5));
    let mut su = p.connect(new_leader, "check");
    let rows: i64 = su
        .query_one("SELECT count(*) FROM reaper.log", &[])
        .unwrap()
        .get(0);
    assert!(
        rows > before,
        "the new leader writes its rows after the old one's"
    );
    let written_by_new: i64 = su
        .query_one(
            "SELECT count(*) FROM reaper.log WHERE node = $1",
            &[&format!("node{new_leader}")],
        )
        .unwrap()
        .get(0);
    assert!(written_by_new > 0);
    drop(su);

    // A failover: the leader's postmaster killed.
    let pid = p.postmaster_pid(new_leader);
    // SAFETY: a signal to a process this test started (through Patroni).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let third = p.leader(Some(new_leader));
    enforcement_follows_roles(&p, third, Duration::from_secs(5));
    let mut su = p.connect(third, "check");
    // Asynchronous replication may lose the last rows of a killed primary; the first leader's,
    // committed before the switchover, are all here (node and id: the third leader may be the
    // first one again, writing new rows under its name).
    let kept: i64 = su
        .query_one(
            "SELECT count(*) FROM reaper.log WHERE node = $1 AND id <= $2",
            &[&format!("node{leader}"), &last_before],
        )
        .unwrap()
        .get(0);
    assert_eq!(kept, before, "the first leader's rows after the failover");
}
