//! Escalation: ask nicely, then insist.

use pg_reaper_integration::*;

#[test]
fn a_cancel_that_ends_the_match_spares_the_session() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("spared");
    let (busy, query) = cluster.session("app", &tag).busy(&cluster);
    let filter = format!(r#"{{"application_name": "{tag}", "state": "active"}}"#);
    let rows = call(
        &mut cluster.superuser(),
        "reaper.cancel_then_terminate($1::text::jsonb, 2000, 5000)",
        &filter,
    )
    .unwrap();
    assert_eq!(pids(&rows), vec![busy.pid]);
    assert_eq!(rows[0].outcome, "cancelled", "{rows:?}");
    assert_eq!(query.wait(), Ended::Error("57014".into()));
    assert_eq!(busy.run("SELECT 1"), Ended::Ok, "the session lives");
}

#[test]
fn an_idle_transaction_is_not_helped_by_a_cancel_and_is_terminated() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("insist");
    let idle_tx: Vec<Session> = (0..3)
        .map(|_| cluster.session("app", &tag).idle_in_transaction())
        .collect();
    let (busy, query) = cluster.session("app", &tag).busy(&cluster);
    let keeper = cluster.session("app", "keeper").idle_in_transaction();
    // The cancelled query leaves the session `idle`, which stops matching; the idle
    // transactions keep matching through the grace period.
    let filter =
        format!(r#"{{"application_name": "{tag}", "state": ["active", "idle in transaction"]}}"#);
    let rows = call(
        &mut cluster.superuser(),
        "reaper.cancel_then_terminate($1::text::jsonb, 2000, 5000)",
        &filter,
    )
    .unwrap();
    assert_eq!(rows.len(), 4);
    for s in &idle_tx {
        let row = rows.iter().find(|r| r.pid == s.pid).unwrap();
        assert_eq!(row.outcome, "terminated", "{row:?}");
        assert!(row.waited_ms >= 2000, "the grace period counts: {row:?}");
        assert!(!cluster.alive(s.pid));
    }
    let spared = rows.iter().find(|r| r.pid == busy.pid).unwrap();
    assert_eq!(spared.outcome, "cancelled");
    assert_eq!(query.wait(), Ended::Error("57014".into()));
    assert!(cluster.alive(busy.pid));
    assert!(cluster.alive(keeper.pid));
}

#[test]
fn without_a_timeout_the_escalation_only_signals() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("no_wait");
    let victim = cluster.session("app", &tag).idle_in_transaction();
    let filter = format!(r#"{{"application_name": "{tag}"}}"#);
    let rows = call(
        &mut cluster.superuser(),
        "reaper.cancel_then_terminate($1::text::jsonb, 0)",
        &filter,
    )
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome, "signalled");
    assert!(cluster.wait_gone(victim.pid));
}

#[test]
fn a_denied_cancel_is_not_escalated() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    cluster.create_role("weak", "");
    let tag = tag("denied_escalation");
    let victim = cluster.session("app", &tag).idle_in_transaction();
    let mut weak = cluster.connect("weak");
    let rows = call(
        &mut weak,
        "reaper.cancel_then_terminate($1::text::jsonb, 100, 1000)",
        &format!(r#"{{"application_name": "{tag}"}}"#),
    )
    .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome, "denied");
    assert!(rows[0]
        .detail
        .as_deref()
        .unwrap_or("")
        .contains("pg_signal_backend"));
    assert_eq!(victim.run("SELECT 1"), Ended::Ok);
}
