//! Every key and combinator of the filter language, on real sessions: each selects exactly the
//! right ones, and terminating by it leaves the others alive.

use pg_reaper_integration::*;
use std::thread::sleep;
use std::time::Duration;

/// The pids a filter previews, among the sessions tagged `tag` (every filter is narrowed to the
/// test's own sessions so that nothing else on the cluster can interfere).
fn selects(client: &mut Client, tag: &str, filter: &str) -> Vec<i32> {
    let narrowed = format!(r#"{{"application_name": "{tag}", "any": [{filter}]}}"#);
    pids(&preview(client, &narrowed))
}

#[test]
fn text_keys_in_every_form() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    cluster.create_role("batch", "");
    cluster
        .superuser()
        .batch_execute("CREATE DATABASE shop")
        .unwrap();
    let tag = tag("text");
    let app = cluster.session("app", &tag);
    let batch = cluster.session("batch", &tag).idle_in_transaction();
    let (busy, _q) = cluster.session("app", &tag).busy(&cluster);
    let mut shop_config = postgres::Config::new();
    shop_config
        .host("127.0.0.1")
        .port(cluster.port)
        .user("app")
        .dbname("shop")
        .application_name(&tag);
    let shop = Session::new(shop_config.connect(NoTls).unwrap());
    let mut me = cluster.superuser();
    let all = sorted(vec![app.pid, batch.pid, busy.pid, shop.pid]);

    assert_eq!(
        selects(&mut me, &tag, r#"{"usename": "batch"}"#),
        vec![batch.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"usename": ["batch", "nobody"]}"#),
        vec![batch.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"usename": {"regex": "^b"}}"#),
        vec![batch.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"datname": "shop"}"#),
        vec![shop.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"datname": {"regex": "^post"}}"#).len(),
        3
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"state": "active"}"#),
        vec![busy.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"state": "idle in transaction"}"#),
        vec![batch.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"state": ["idle", "active"]}"#),
        sorted(vec![app.pid, busy.pid, shop.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"wait_event": "PgSleep"}"#),
        vec![busy.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"wait_event_type": "Timeout"}"#),
        vec![busy.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"wait_event_type": "Client"}"#).len(),
        3
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"query": "SELECT pg_sleep(600)"}"#),
        vec![busy.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"query": {"regex": "(?i)PG_SLEEP"}}"#),
        vec![busy.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"backend_type": "client backend"}"#),
        all
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"backend_type": {"regex": "^client"}}"#),
        all
    );
    // log_hostname is off: client_hostname is NULL, and NULL never matches.
    assert!(selects(&mut me, &tag, r#"{"client_hostname": {"regex": ""}}"#).is_empty());
    assert_eq!(
        pids(&preview(
            &mut me,
            &format!(r#"{{"application_name": ["{tag}", "x"]}}"#)
        )),
        all
    );
    assert_eq!(
        pids(&preview(
            &mut me,
            &format!(r#"{{"application_name": {{"regex": "^{tag}$"}}}}"#)
        )),
        all
    );

    // Terminating by a key takes exactly those, and the rest live.
    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "usename": "batch"}}"#),
        5000,
    );
    assert_eq!(pids(&rows), vec![batch.pid]);
    assert!(!cluster.alive(batch.pid));
    for s in [&app, &shop] {
        assert_eq!(s.run("SELECT 1"), Ended::Ok);
    }
    assert!(cluster.alive(busy.pid));
}

#[test]
fn client_addr_and_pid() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("addr");
    let tcp = cluster.session("app", &tag);
    let local = Session::new(cluster.connect_local("app", &tag));
    let other = cluster.session("app", &tag);
    let mut me = cluster.superuser();
    assert_eq!(
        selects(&mut me, &tag, r#"{"client_addr": "local"}"#),
        vec![local.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"client_addr": "127.0.0.0/8"}"#),
        sorted(vec![tcp.pid, other.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"client_addr": "127.0.0.1"}"#).len(),
        2
    );
    assert!(selects(&mut me, &tag, r#"{"client_addr": "::1"}"#).is_empty());
    assert!(selects(&mut me, &tag, r#"{"client_addr": "10.0.0.0/8"}"#).is_empty());
    assert_eq!(
        selects(&mut me, &tag, r#"{"client_addr": ["local", "10.0.0.0/8"]}"#),
        vec![local.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, &format!(r#"{{"pid": {}}}"#, tcp.pid)),
        vec![tcp.pid]
    );
    assert_eq!(
        selects(
            &mut me,
            &tag,
            &format!(r#"{{"pid": [{}, {}, 1]}}"#, tcp.pid, local.pid)
        ),
        sorted(vec![tcp.pid, local.pid])
    );
    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "client_addr": "local"}}"#),
        5000,
    );
    assert_eq!(pids(&rows), vec![local.pid]);
    assert_eq!(tcp.run("SELECT 1"), Ended::Ok);
    assert_eq!(other.run("SELECT 1"), Ended::Ok);
}

#[test]
fn ages_in_milliseconds_and_intervals() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("ages");
    let old_tx = cluster.session("app", &tag).idle_in_transaction();
    sleep(Duration::from_millis(1200));
    let young_tx = cluster.session("app", &tag).idle_in_transaction();
    let idle = cluster.session("app", &tag);
    let mut me = cluster.superuser();
    assert_eq!(
        selects(&mut me, &tag, r#"{"min_xact_age": 1000}"#),
        vec![old_tx.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"min_xact_age": "1 second"}"#),
        vec![old_tx.pid]
    );
    // NULL xact_start (no transaction) never matches, not even an age of 0.
    assert_eq!(
        selects(&mut me, &tag, r#"{"min_xact_age": 0}"#),
        sorted(vec![old_tx.pid, young_tx.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"min_backend_age": "00:00:01"}"#),
        vec![old_tx.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"min_state_age": "1s"}"#),
        vec![old_tx.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"min_query_age": 1000}"#),
        vec![old_tx.pid]
    );
    assert!(selects(&mut me, &tag, r#"{"min_backend_age": "1 hour"}"#).is_empty());
    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "min_xact_age": "1s"}}"#),
        5000,
    );
    assert_eq!(pids(&rows), vec![old_tx.pid]);
    assert_eq!(young_tx.run("SELECT 1"), Ended::Ok);
    assert_eq!(idle.run("SELECT 1"), Ended::Ok);
}

#[test]
fn blocking_and_blocked() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("locks");
    let mut su = cluster.superuser();
    su.batch_execute("CREATE TABLE locked (id int); GRANT ALL ON locked TO app")
        .unwrap();
    let holder = cluster.session("app", &tag);
    assert_eq!(
        holder.run("BEGIN; LOCK TABLE locked IN ACCESS EXCLUSIVE MODE"),
        Ended::Ok
    );
    let waiter = cluster.session("app", &tag);
    let waiting = waiter.start("SELECT * FROM locked");
    cluster.wait_until(waiter.pid, "a.wait_event_type = 'Lock'");
    let bystander = cluster.session("app", &tag);
    assert_eq!(
        selects(&mut su, &tag, r#"{"blocking": true}"#),
        vec![holder.pid]
    );
    assert_eq!(
        selects(&mut su, &tag, r#"{"blocked": true}"#),
        vec![waiter.pid]
    );
    assert_eq!(
        selects(&mut su, &tag, r#"{"blocking": false, "blocked": false}"#),
        vec![bystander.pid]
    );
    // Terminating the blocker frees the waiter.
    let rows = terminate(
        &mut su,
        &format!(r#"{{"application_name": "{tag}", "blocking": true}}"#),
        5000,
    );
    assert_eq!(pids(&rows), vec![holder.pid]);
    assert_eq!(waiting.wait(), Ended::Ok);
    assert_eq!(bystander.run("SELECT 1"), Ended::Ok);
}

#[test]
fn any_exclude_all_and_include_superusers() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    cluster.create_role("batch", "");
    let tag = tag("combinators");
    let app = cluster.session("app", &tag);
    let batch = cluster.session("batch", &tag).idle_in_transaction();
    let su_session = cluster.session("postgres", &tag);
    let mut me = cluster.superuser();
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#"{"any": [{"usename": "app"}, {"state": "idle in transaction"}]}"#
        ),
        sorted(vec![app.pid, batch.pid])
    );
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#"{"all": true, "exclude": {"usename": "app"}}"#
        ),
        vec![batch.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#"{"all": true}"#),
        sorted(vec![app.pid, batch.pid])
    );
    let everyone = format!(r#"{{"application_name": "{tag}", "include_superusers": true}}"#);
    assert_eq!(
        pids(&preview(&mut me, &everyone)),
        sorted(vec![app.pid, batch.pid, su_session.pid])
    );
    let rows = terminate(
        &mut me,
        &format!(
            r#"{{"application_name": "{tag}", "exclude": {{"usename": "batch"}}, "include_superusers": true}}"#
        ),
        5000,
    );
    assert_eq!(pids(&rows), sorted(vec![app.pid, su_session.pid]));
    assert_eq!(batch.run("SELECT 1"), Ended::Ok);
}

#[test]
fn limit_with_every_order() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let tag = tag("limit");
    // Sessions opened in turn, each with a transaction and a query started in turn, so that
    // every timestamp orders them the same way: s[0] oldest.
    let mut s = Vec::new();
    for _ in 0..4 {
        s.push(cluster.session("app", &tag));
        sleep(Duration::from_millis(30));
    }
    for session in s.iter().rev() {
        // Reverse order: the newest backend has the oldest transaction and query.
        assert_eq!(session.run("BEGIN; SELECT 1"), Ended::Ok);
        sleep(Duration::from_millis(30));
    }
    let mut me = cluster.superuser();
    let pick = |me: &mut Client, order: &str| -> Vec<i32> {
        let f = format!(r#"{{"application_name": "{tag}", "limit": 2, "order": "{order}"}}"#);
        preview(me, &f).iter().map(|r| r.pid).collect()
    };
    assert_eq!(pick(&mut me, "oldest_backend"), vec![s[0].pid, s[1].pid]);
    assert_eq!(pick(&mut me, "newest_backend"), vec![s[3].pid, s[2].pid]);
    assert_eq!(pick(&mut me, "oldest_xact"), vec![s[3].pid, s[2].pid]);
    assert_eq!(pick(&mut me, "oldest_query"), vec![s[3].pid, s[2].pid]);
    assert_eq!(pick(&mut me, "oldest_state"), vec![s[3].pid, s[2].pid]);
    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "limit": 2}}"#),
        5000,
    );
    assert_eq!(pids(&rows), sorted(vec![s[0].pid, s[1].pid]));
    assert!(!cluster.alive(s[0].pid) && !cluster.alive(s[1].pid));
    assert_eq!(s[2].run("SELECT 1"), Ended::Ok);
    assert_eq!(s[3].run("SELECT 1"), Ended::Ok);
}

#[test]
fn only_client_backends_unless_named() {
    let cluster = Cluster::start();
    let mut me = cluster.superuser();
    let types: Vec<String> = preview(&mut me, r#"{"all": true, "include_superusers": true}"#)
        .into_iter()
        .filter_map(|r| r.backend_type)
        .collect();
    assert!(types.iter().all(|t| t == "client backend"), "{types:?}");
    let launcher = preview(
        &mut me,
        r#"{"backend_type": "autovacuum launcher", "include_superusers": true}"#,
    );
    assert_eq!(launcher.len(), 1);
    // A process with no role counts as a superuser's.
    assert!(preview(&mut me, r#"{"backend_type": "autovacuum launcher"}"#).is_empty());
    let me_pid: i32 = me.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let everything = preview(
        &mut me,
        r#"{"backend_type": {"regex": ""}, "include_superusers": true}"#,
    );
    assert!(
        everything.len() >= 4,
        "the background processes: {everything:?}"
    );
    assert!(
        everything.iter().all(|r| r.pid != me_pid),
        "never the caller"
    );
}
