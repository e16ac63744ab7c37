//! `"holding_up": {filter}` on real lock chains: whoever holds up, directly or through a chain,
//! a session the sub-filter matches — in `pg_blocking_pids`' sense (a holder of a conflicting
//! lock, or a conflicting waiter ahead in the queue) — and only them; with `"blocking": "root"`
//! only the chain's head; nothing when nobody the sub-filter protects waits.

use pg_reaper_integration::*;
use std::collections::BTreeSet;
use std::sync::Arc;

fn cluster() -> Arc<Cluster> {
    shared_cluster("holding_up", |cluster| {
        cluster.create_role("app", "");
    })
}

fn table(su: &mut Client, name: &str) {
    su.batch_execute(&format!(
        "CREATE TABLE {name} (id int); INSERT INTO {name} VALUES (1); ALTER TABLE {name} OWNER TO app"
    ))
    .unwrap();
}

/// The pids `pid` waits behind, directly or through others, by `pg_blocking_pids` (grown
/// until nothing changes: the reference shares no code with pg_reaper).
fn ahead_of(su: &mut Client, pid: i32) -> BTreeSet<i32> {
    su.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
    let mut ahead = BTreeSet::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        let by: Vec<i32> = su
            .query_one("SELECT pg_blocking_pids($1)", &[&p])
            .unwrap()
            .get(0);
        for b in by {
            if b != pid && ahead.insert(b) {
                frontier.push(b);
            }
        }
    }
    ahead
}

fn selected(su: &mut Client, filter: &str) -> BTreeSet<i32> {
    preview(su, filter).iter().map(|r| r.pid).collect()
}

fn waiting(su: &mut Client, pid: i32) {
    wait_until_with(su, pid, "a.wait_event_type = 'Lock'");
}

#[test]
fn whoever_holds_up_checkout_through_a_waiter_ahead_of_it() {
    let cluster = cluster();
    let mut su = cluster.superuser();
    let t = tag("hu_chain");
    table(&mut su, &t);
    // A report holds the table; a migration waits for it; checkout queues behind the
    // migration (its AccessShareLock conflicts with the migration's, not with the report's).
    let report = cluster.session("app", &format!("{t}_report"));
    assert_eq!(
        report.run(&format!("BEGIN; LOCK TABLE {t} IN ACCESS SHARE MODE")),
        Ended::Ok
    );
    let migration = cluster.session("app", &format!("{t}_migration"));
    let altering = migration.start(&format!("ALTER TABLE {t} ADD COLUMN x int"));
    waiting(&mut su, migration.pid);
    let checkout = cluster.session("app", &format!("{t}_checkout"));
    let reading = checkout.start(&format!("SELECT count(*) FROM {t}"));
    waiting(&mut su, checkout.pid);
    // A bystander chain on another table that holds up nobody protected.
    let other = format!("{t}_other");
    table(&mut su, &other);
    let holder = cluster.session("app", &format!("{t}_holder"));
    assert_eq!(holder.run(&format!("BEGIN; LOCK TABLE {other}")), Ended::Ok);
    let stuck = cluster.session("app", &format!("{t}_stuck"));
    let _stuck_reading = stuck.start(&format!("SELECT count(*) FROM {other}"));
    waiting(&mut su, stuck.pid);

    let mine = format!(r#""application_name": {{"regex": "^{t}_"}}"#);
    let held = format!(r#"{{"application_name": "{t}_checkout"}}"#);
    let all = selected(&mut su, &format!(r#"{{{mine}, "holding_up": {held}}}"#));
    assert_eq!(all, ahead_of(&mut su, checkout.pid));
    assert_eq!(all, BTreeSet::from([report.pid, migration.pid]));
    let root = selected(
        &mut su,
        &format!(r#"{{{mine}, "holding_up": {held}, "blocking": "root"}}"#),
    );
    assert_eq!(root, BTreeSet::from([report.pid]));
    // The sub-filter's own lock keys: checkout has waited a moment, not an hour.
    let an_hour = selected(
        &mut su,
        &format!(
            r#"{{{mine}, "holding_up": {{"application_name": "{t}_checkout", "min_blocked_age": "1 hour"}}}}"#
        ),
    );
    assert!(an_hour.is_empty(), "{an_hour:?}");
    wait_for(
        &mut su,
        &format!(
            "SELECT now() - waitstart >= interval '1 second' FROM pg_locks WHERE pid = {} AND NOT granted",
            checkout.pid
        ),
    );
    let a_second = selected(
        &mut su,
        &format!(
            r#"{{{mine}, "holding_up": {{"application_name": "{t}_checkout", "min_blocked_age": "1s"}}}}"#
        ),
    );
    assert_eq!(a_second, all);

    // Ending the head frees the chain: the migration runs, then checkout.
    let rows = terminate(
        &mut su,
        &format!(r#"{{{mine}, "holding_up": {held}, "blocking": "root"}}"#),
        5000,
    );
    assert_eq!(pids(&rows), vec![report.pid], "{rows:?}");
    assert_eq!(rows[0].outcome, "terminated");
    assert_eq!(altering.wait(), Ended::Ok);
    assert_eq!(reading.wait(), Ended::Ok);
    assert!(cluster.alive(holder.pid) && cluster.alive(stuck.pid));
    drop(holder);
}

#[test]
fn nobody_protected_waits_so_nobody_is_selected() {
    let cluster = cluster();
    let mut su = cluster.superuser();
    let t = tag("hu_none");
    table(&mut su, &t);
    let holder = cluster.session("app", &format!("{t}_holder"));
    assert_eq!(holder.run(&format!("BEGIN; LOCK TABLE {t}")), Ended::Ok);
    let waiter = cluster.session("app", &format!("{t}_waiter"));
    let _reading = waiter.start(&format!("SELECT count(*) FROM {t}"));
    waiting(&mut su, waiter.pid);
    // Checkout is connected, idle, waiting for nothing.
    let _checkout = cluster.session("app", &format!("{t}_checkout"));
    let filter = format!(
        r#"{{"application_name": {{"regex": "^{t}_"}}, "holding_up": {{"application_name": "{t}_checkout"}}}}"#
    );
    assert!(preview(&mut su, &filter).is_empty());
    assert!(terminate(&mut su, &filter, 1000).is_empty());
    assert!(cluster.alive(holder.pid) && cluster.alive(waiter.pid));
    // The same chain, held up for the waiter: the holder.
    let filter = format!(
        r#"{{"application_name": {{"regex": "^{t}_"}}, "holding_up": {{"application_name": "{t}_waiter"}}}}"#
    );
    assert_eq!(selected(&mut su, &filter), BTreeSet::from([holder.pid]));
}

#[test]
fn the_safe_defaults_apply_to_whom_it_selects() {
    // A superuser's session holding up checkout is left alone unless the filter says
    // include_superusers; the sub-filter itself may match anyone.
    let cluster = cluster();
    let mut su = cluster.superuser();
    let t = tag("hu_super");
    table(&mut su, &t);
    let admin = cluster.session("postgres", &format!("{t}_admin"));
    assert_eq!(admin.run(&format!("BEGIN; LOCK TABLE {t}")), Ended::Ok);
    let checkout = cluster.session("app", &format!("{t}_checkout"));
    let _reading = checkout.start(&format!("SELECT count(*) FROM {t}"));
    waiting(&mut su, checkout.pid);
    let filter = |extra: &str| {
        format!(
            r#"{{"application_name": {{"regex": "^{t}_"}}, "holding_up": {{"application_name": "{t}_checkout"}}{extra}}}"#
        )
    };
    assert!(selected(&mut su, &filter("")).is_empty());
    assert_eq!(
        selected(&mut su, &filter(r#", "include_superusers": true"#)),
        BTreeSet::from([admin.pid])
    );
}
