//! Every key and combinator of the filter language, on real sessions: each selects exactly the
//! right ones (reaper.preview_matching), and signalling by it touches those and leaves the others
//! alive. Every string key is tried in its three forms: exact, array, `{"regex": ...}`.
//!
//! The tests share one cluster (`shared_cluster`); each tags its sessions with its own
//! application_name and names that tag in every filter, so that no test sees another's sessions.

use pg_reaper_integration::*;
use std::sync::Arc;
use std::time::Duration;

/// The cluster the tests of this file share (see `shared_cluster`).
fn cluster() -> Arc<Cluster> {
    shared_cluster(module_path!(), |cluster| {
        cluster.create_role("app", "");
        cluster.create_role("batch", "");
        cluster.create_role("boss", "SUPERUSER");
        cluster
            .superuser()
            .batch_execute("CREATE DATABASE shop")
            .expect("CREATE DATABASE shop");
    })
}

/// The pids, sorted, that a preview selects with `criteria` (the inside of a JSON object, e.g.
/// `"usename": "app"`), narrowed to the sessions tagged `tag`.
fn selects(me: &mut Client, tag: &str, criteria: &str) -> Vec<i32> {
    let rows = preview(
        me,
        &format!(r#"{{"application_name": "{tag}", {criteria}}}"#),
    );
    assert!(rows.iter().all(|r| r.outcome == "matched"), "{rows:?}");
    pids(&rows)
}

/// A session as `user` in database `db` over TCP, tagged `tag`.
fn session_in(cluster: &Cluster, user: &str, db: &str, tag: &str) -> Session {
    let mut config = postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(cluster.port)
        .user(user)
        .dbname(db)
        .application_name(tag)
        .connect_timeout(Duration::from_secs(10));
    Session::new(config.connect(NoTls).expect("connect"))
}

/// Every session in `gone` has left, every one in `alive` still answers.
fn assert_gone_and_alive(cluster: &Cluster, gone: &[&Session], alive: &[&Session]) {
    for s in gone {
        assert!(!cluster.alive(s.pid), "{} should be gone", s.pid);
    }
    for s in alive {
        assert_eq!(s.run("SELECT 1"), Ended::Ok, "{} should be alive", s.pid);
    }
}

#[test]
fn usename_and_datname() {
    let cluster = cluster();
    let tag = tag("usename_datname");
    let app = session_in(&cluster, "app", "postgres", &tag);
    let batch = session_in(&cluster, "batch", "postgres", &tag);
    let app_shop = session_in(&cluster, "app", "shop", &tag);
    let batch_shop = session_in(&cluster, "batch", "shop", &tag);
    let mut me = cluster.superuser();

    assert_eq!(
        selects(&mut me, &tag, r#""usename": "batch""#),
        sorted(vec![batch.pid, batch_shop.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""usename": ["app", "nobody"]"#),
        sorted(vec![app.pid, app_shop.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""usename": {"regex": "^ba"}"#),
        sorted(vec![batch.pid, batch_shop.pid])
    );
    assert!(selects(&mut me, &tag, r#""usename": "App""#).is_empty());
    assert_eq!(
        selects(&mut me, &tag, r#""datname": "shop""#),
        sorted(vec![app_shop.pid, batch_shop.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""datname": ["postgres", "nowhere"]"#),
        sorted(vec![app.pid, batch.pid])
    );
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#""datname": {"regex": "^(shop|postgres)$"}"#
        ),
        sorted(vec![app.pid, batch.pid, app_shop.pid, batch_shop.pid])
    );
    assert!(selects(&mut me, &tag, r#""datname": {"regex": "^sho$"}"#).is_empty());
    assert_eq!(
        selects(&mut me, &tag, r#""usename": "app", "datname": "shop""#),
        vec![app_shop.pid]
    );

    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "usename": "batch", "datname": "shop"}}"#),
        5000,
    );
    assert_eq!(pids(&rows), vec![batch_shop.pid]);
    assert_eq!(rows[0].outcome, "terminated");
    assert_gone_and_alive(&cluster, &[&batch_shop], &[&app, &batch, &app_shop]);
}

#[test]
fn application_name() {
    let cluster = cluster();
    let a = tag("appname_a");
    let b = tag("appname_b");
    let a1 = cluster.session("app", &a);
    let a2 = cluster.session("app", &a);
    let b1 = cluster.session("app", &b);
    let mut me = cluster.superuser();
    let select = |me: &mut Client, filter: String| pids(&preview(me, &filter));

    assert_eq!(
        select(&mut me, format!(r#"{{"application_name": "{a}"}}"#)),
        sorted(vec![a1.pid, a2.pid])
    );
    assert_eq!(
        select(&mut me, format!(r#"{{"application_name": ["{b}", "x"]}}"#)),
        vec![b1.pid]
    );
    assert_eq!(
        select(
            &mut me,
            format!(r#"{{"application_name": ["{a}", "{b}"]}}"#)
        ),
        sorted(vec![a1.pid, a2.pid, b1.pid])
    );
    assert_eq!(
        select(
            &mut me,
            r#"{"application_name": {"regex": "^t_appname_(a|b)$"}}"#.to_string()
        ),
        sorted(vec![a1.pid, a2.pid, b1.pid])
    );
    assert_eq!(
        select(
            &mut me,
            r#"{"application_name": {"regex": "(?i)^T_APPNAME_B$"}}"#.to_string()
        ),
        vec![b1.pid]
    );
    // Exact means exact: a prefix is not the name.
    assert!(select(&mut me, r#"{"application_name": "t_appname_"}"#.to_string()).is_empty());

    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": ["{b}"]}}"#),
        5000,
    );
    assert_eq!(pids(&rows), vec![b1.pid]);
    assert_gone_and_alive(&cluster, &[&b1], &[&a1, &a2]);
}

#[test]
fn client_hostname_is_null_without_log_hostname_and_never_matches() {
    let cluster = cluster();
    let tag = tag("hostname_null");
    let tcp = cluster.session("app", &tag);
    let local = Session::new(cluster.connect_local("app", &tag));
    let mut me = cluster.superuser();
    let log_hostname: String = me.query_one("SHOW log_hostname", &[]).unwrap().get(0);
    assert_eq!(log_hostname, "off");
    let nulls = count(
        &mut me,
        &format!(
            "SELECT count(*) FROM pg_stat_activity \
              WHERE application_name = '{tag}' AND client_hostname IS NULL"
        ),
    );
    assert_eq!(nulls, 2, "client_hostname is NULL for both");
    // The sessions are there to be matched by anything else...
    assert_eq!(
        selects(&mut me, &tag, r#""usename": "app""#),
        sorted(vec![tcp.pid, local.pid])
    );
    // ...but a NULL client_hostname matches no form, not even an empty regex.
    for criteria in [
        r#""client_hostname": {"regex": ""}"#,
        r#""client_hostname": "localhost""#,
        r#""client_hostname": ["localhost", "", "127.0.0.1"]"#,
    ] {
        assert!(selects(&mut me, &tag, criteria).is_empty(), "{criteria}");
    }
    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "client_hostname": {{"regex": ""}}}}"#),
        5000,
    );
    assert!(rows.is_empty(), "{rows:?}");
    assert_gone_and_alive(&cluster, &[], &[&tcp, &local]);
}

#[test]
fn client_hostname_with_log_hostname_on() {
    // Its own cluster: log_hostname is a server-wide setting.
    let cluster = Cluster::start_with(Options {
        settings: vec!["log_hostname = on".into()],
        ..Options::default()
    });
    cluster.create_role("app", "");
    let tag = tag("hostname_on");
    let tcp = cluster.session("app", &tag);
    let local = Session::new(cluster.connect_local("app", &tag));
    let mut me = cluster.superuser();
    let hostname: Option<String> = me
        .query_one(
            "SELECT client_hostname FROM pg_stat_activity WHERE pid = $1",
            &[&tcp.pid],
        )
        .unwrap()
        .get(0);
    let hostname = hostname.expect("127.0.0.1 resolves (/etc/hosts), so client_hostname is set");
    assert_eq!(
        selects(
            &mut me,
            &tag,
            &format!(r#""client_hostname": "{hostname}""#)
        ),
        vec![tcp.pid]
    );
    assert_eq!(
        selects(
            &mut me,
            &tag,
            &format!(r#""client_hostname": ["no.such.host", "{hostname}"]"#)
        ),
        vec![tcp.pid]
    );
    // Any name at all: the Unix-socket session has none (NULL), so it is not selected.
    assert_eq!(
        selects(&mut me, &tag, r#""client_hostname": {"regex": "."}"#),
        vec![tcp.pid]
    );
    assert!(selects(&mut me, &tag, r#""client_hostname": "no.such.host""#).is_empty());
    assert_eq!(local.run("SELECT 1"), Ended::Ok);
}

#[test]
fn state() {
    let cluster = cluster();
    let tag = tag("state");
    let idle = cluster.session("app", &tag);
    let idle_tx = cluster.session("app", &tag).idle_in_transaction();
    let aborted = cluster.session("app", &tag);
    assert_eq!(
        aborted.run("BEGIN; SELECT 1/0"),
        Ended::Error("22012".into())
    );
    cluster.wait_until(aborted.pid, "a.state = 'idle in transaction (aborted)'");
    let (busy, query) = cluster.session("app", &tag).busy(&cluster);
    let mut me = cluster.superuser();

    assert_eq!(selects(&mut me, &tag, r#""state": "idle""#), vec![idle.pid]);
    assert_eq!(
        selects(&mut me, &tag, r#""state": "active""#),
        vec![busy.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#""state": "idle in transaction""#),
        vec![idle_tx.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#""state": "idle in transaction (aborted)""#),
        vec![aborted.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#""state": ["idle", "active"]"#),
        sorted(vec![idle.pid, busy.pid])
    );
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#""state": {"regex": "^idle in transaction"}"#
        ),
        sorted(vec![idle_tx.pid, aborted.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""state": {"regex": "^idle$"}"#),
        vec![idle.pid]
    );

    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "state": "idle in transaction (aborted)"}}"#),
        5000,
    );
    assert_eq!(pids(&rows), vec![aborted.pid]);
    assert_gone_and_alive(&cluster, &[&aborted], &[&idle, &idle_tx]);
    assert!(query.still_running_after(Duration::from_millis(50)));
}

#[test]
fn backend_type() {
    let cluster = cluster();
    let tag = tag("backend_type");
    let one = cluster.session("app", &tag);
    let two = Session::new(cluster.connect_local("app", &tag));
    let mut me = cluster.superuser();
    let both = sorted(vec![one.pid, two.pid]);
    assert_eq!(
        selects(&mut me, &tag, r#""backend_type": "client backend""#),
        both
    );
    assert_eq!(
        selects(&mut me, &tag, r#""backend_type": {"regex": "^client"}"#),
        both
    );
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#""backend_type": ["walsender", "client backend"]"#
        ),
        both
    );
    assert!(selects(&mut me, &tag, r#""backend_type": "walsender""#).is_empty());

    // Background processes, named by their type (previews only: the cluster is shared).
    let pids_of = |me: &mut Client, condition: &str| -> Vec<i32> {
        let sql = format!("SELECT pid FROM pg_stat_activity WHERE {condition} ORDER BY pid");
        me.query(&sql, &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let launcher = pids_of(&mut me, "backend_type = 'autovacuum launcher'");
    assert_eq!(launcher.len(), 1);
    let rows = preview(
        &mut me,
        r#"{"backend_type": "autovacuum launcher", "include_superusers": true}"#,
    );
    assert_eq!(pids(&rows), launcher);
    assert_eq!(rows[0].backend_type.as_deref(), Some("autovacuum launcher"));
    // A process with no role counts as a superuser's.
    assert!(preview(&mut me, r#"{"backend_type": "autovacuum launcher"}"#).is_empty());
    assert_eq!(
        pids(&preview(
            &mut me,
            r#"{"backend_type": {"regex": "^autovacuum launcher$"}, "include_superusers": true}"#
        )),
        launcher
    );
    let writers = pids_of(&mut me, "backend_type IN ('checkpointer', 'walwriter')");
    assert_eq!(writers.len(), 2);
    assert_eq!(
        pids(&preview(
            &mut me,
            r#"{"backend_type": ["checkpointer", "walwriter"], "include_superusers": true}"#
        )),
        writers
    );
    let by_regex = pids_of(&mut me, "backend_type ~ 'writer$'");
    assert_eq!(by_regex.len(), 2, "background writer and walwriter");
    assert_eq!(
        pids(&preview(
            &mut me,
            r#"{"backend_type": {"regex": "writer$"}, "include_superusers": true}"#
        )),
        by_regex
    );
    assert_gone_and_alive(&cluster, &[], &[&one, &two]);
}

#[test]
fn wait_event_and_wait_event_type() {
    let cluster = cluster();
    let tag = tag("wait_event");
    let mut su = cluster.superuser();
    su.batch_execute("CREATE TABLE wait_event_t (id int); GRANT ALL ON wait_event_t TO app")
        .unwrap();
    let idle = cluster.session("app", &tag);
    let (busy, busy_query) = cluster.session("app", &tag).busy(&cluster);
    let holder = cluster.session("app", &tag);
    assert_eq!(
        holder.run("BEGIN; LOCK TABLE wait_event_t IN ACCESS EXCLUSIVE MODE"),
        Ended::Ok
    );
    let waiter = cluster.session("app", &tag);
    let waiting = waiter.start("SELECT * FROM wait_event_t");
    cluster.wait_until(waiter.pid, "a.wait_event_type = 'Lock'");
    let mut me = cluster.superuser();

    assert_eq!(
        selects(&mut me, &tag, r#""wait_event": "PgSleep""#),
        vec![busy.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#""wait_event_type": "Timeout""#),
        vec![busy.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#""wait_event_type": "Client""#),
        sorted(vec![idle.pid, holder.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""wait_event": "ClientRead""#),
        sorted(vec![idle.pid, holder.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""wait_event_type": "Lock""#),
        vec![waiter.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#""wait_event_type": ["Lock", "Timeout"]"#),
        sorted(vec![waiter.pid, busy.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""wait_event": ["PgSleep", "relation"]"#),
        sorted(vec![busy.pid, waiter.pid])
    );
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#""wait_event_type": {"regex": "^(Lock|Timeout)$"}"#
        ),
        sorted(vec![waiter.pid, busy.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""wait_event": {"regex": "^Pg"}"#),
        vec![busy.pid]
    );
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#""wait_event_type": "Client", "wait_event": "PgSleep""#
        ),
        Vec::<i32>::new()
    );

    // Cancelling by wait event stops exactly the sleeper; the lock waiter keeps waiting.
    let rows = cancel(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "wait_event": "PgSleep"}}"#),
    );
    assert_eq!(pids(&rows), vec![busy.pid]);
    assert_eq!(rows[0].outcome, "cancelled");
    assert_eq!(busy_query.wait(), Ended::Error("57014".into()));
    assert!(waiting.still_running_after(Duration::from_millis(100)));
    assert_eq!(holder.run("COMMIT"), Ended::Ok);
    assert_eq!(waiting.wait(), Ended::Ok);
    assert_gone_and_alive(&cluster, &[], &[&idle, &busy, &waiter]);
}

#[test]
fn query() {
    let cluster = cluster();
    let tag = tag("query");
    let alpha = cluster.session("app", &tag);
    assert_eq!(alpha.run("SELECT 'alpha'"), Ended::Ok);
    let beta = cluster.session("app", &tag);
    assert_eq!(beta.run("SELECT 'beta'"), Ended::Ok);
    let (busy, busy_query) = cluster.session("app", &tag).busy(&cluster);
    let mut me = cluster.superuser();

    assert_eq!(
        selects(&mut me, &tag, r#""query": "SELECT pg_sleep(600)""#),
        vec![busy.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#""query": "SELECT 'alpha'""#),
        vec![alpha.pid]
    );
    assert!(selects(&mut me, &tag, r#""query": "SELECT 'alpha' ""#).is_empty());
    assert!(selects(&mut me, &tag, r#""query": "select 'alpha'""#).is_empty());
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#""query": ["SELECT 'alpha'", "SELECT 'beta'"]"#
        ),
        sorted(vec![alpha.pid, beta.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""query": {"regex": "^SELECT '"}"#),
        sorted(vec![alpha.pid, beta.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""query": {"regex": "(?i)PG_SLEEP\\("}"#),
        vec![busy.pid]
    );
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#""query": {"regex": "pg_sleep"}, "state": "idle""#
        ),
        Vec::<i32>::new()
    );

    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "query": "SELECT 'beta'"}}"#),
        5000,
    );
    assert_eq!(pids(&rows), vec![beta.pid]);
    assert_gone_and_alive(&cluster, &[&beta], &[&alpha]);
    assert!(busy_query.still_running_after(Duration::from_millis(50)));
}

#[test]
fn client_addr() {
    let cluster = cluster();
    let tag = tag("client_addr");
    let tcp = cluster.session("app", &tag);
    let local = Session::new(cluster.connect_local("app", &tag));
    let tcp2 = cluster.session("app", &tag);
    let mut me = cluster.superuser();
    let tcps = sorted(vec![tcp.pid, tcp2.pid]);
    let everyone = sorted(vec![tcp.pid, tcp2.pid, local.pid]);

    assert_eq!(
        selects(&mut me, &tag, r#""client_addr": "local""#),
        vec![local.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#""client_addr": "127.0.0.0/8""#),
        tcps
    );
    assert_eq!(
        selects(&mut me, &tag, r#""client_addr": "127.0.0.1""#),
        tcps
    );
    assert_eq!(
        selects(&mut me, &tag, r#""client_addr": "127.0.0.1/32""#),
        tcps
    );
    assert!(selects(&mut me, &tag, r#""client_addr": "::1""#).is_empty());
    assert!(selects(&mut me, &tag, r#""client_addr": "127.0.0.2""#).is_empty());
    assert!(selects(&mut me, &tag, r#""client_addr": "10.0.0.0/8""#).is_empty());
    assert_eq!(
        selects(&mut me, &tag, r#""client_addr": ["10.0.0.0/8", "local"]"#),
        vec![local.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#""client_addr": ["::1", "127.0.0.0/8"]"#),
        tcps
    );
    assert_eq!(
        selects(&mut me, &tag, r#""client_addr": ["local", "127.0.0.1"]"#),
        everyone
    );

    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "client_addr": "local"}}"#),
        5000,
    );
    assert_eq!(pids(&rows), vec![local.pid]);
    assert_eq!(rows[0].client_addr, None);
    assert_gone_and_alive(&cluster, &[&local], &[&tcp, &tcp2]);
}

#[test]
fn pid() {
    let cluster = cluster();
    let tag = tag("pid");
    let one = cluster.session("app", &tag);
    let two = cluster.session("app", &tag);
    let three = cluster.session("app", &tag);
    // Another test's session: a pid outside the tag is not selected, filters are ANDed.
    let outsider = cluster.session("app", &tag_outsider());
    let mut me = cluster.superuser();

    assert_eq!(
        selects(&mut me, &tag, &format!(r#""pid": {}"#, two.pid)),
        vec![two.pid]
    );
    assert_eq!(
        selects(
            &mut me,
            &tag,
            &format!(r#""pid": [{}, {}, {}]"#, one.pid, three.pid, outsider.pid)
        ),
        sorted(vec![one.pid, three.pid])
    );
    assert!(selects(&mut me, &tag, &format!(r#""pid": {}"#, outsider.pid)).is_empty());
    assert!(selects(&mut me, &tag, r#""pid": [1]"#).is_empty());

    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "pid": {}}}"#, two.pid),
        5000,
    );
    assert_eq!(pids(&rows), vec![two.pid]);
    let rows = terminate(
        &mut me,
        &format!(
            r#"{{"application_name": "{tag}", "pid": [{}, {}]}}"#,
            three.pid, outsider.pid
        ),
        5000,
    );
    assert_eq!(pids(&rows), vec![three.pid]);
    assert_gone_and_alive(&cluster, &[&two, &three], &[&one, &outsider]);
}

fn tag_outsider() -> String {
    tag("pid_outsider")
}

#[test]
fn ages_in_milliseconds_and_intervals() {
    let cluster = cluster();
    let tag = tag("ages");
    // At t0: `all_old` starts a transaction; `backend_only` just connects; `xact_old` begins a
    // transaction it will use again at t1; `query_old` starts a query that runs until t1.
    let all_old = cluster.session("app", &tag).idle_in_transaction();
    let backend_only = cluster.session("app", &tag);
    let xact_old = cluster.session("app", &tag);
    assert_eq!(xact_old.run("BEGIN"), Ended::Ok);
    let query_old = cluster.session("app", &tag);
    let long_query = query_old.start("SELECT pg_sleep(600)");
    // t1: once that query has run for more than three seconds, it is cancelled (the sessions of
    // t1 then have three seconds, ample on a loaded machine, to stay younger than the ages asked).
    cluster.wait_until(
        query_old.pid,
        "a.state = 'active' AND pg_catalog.clock_timestamp() - a.query_start > interval '3.1 s'",
    );
    cancel(
        &mut cluster.superuser(),
        &format!(r#"{{"pid": {}}}"#, query_old.pid),
    );
    assert_eq!(long_query.wait(), Ended::Error("57014".into()));
    assert_eq!(backend_only.run("SELECT 1"), Ended::Ok);
    assert_eq!(xact_old.run("SELECT 1"), Ended::Ok);
    let fresh = cluster.session("app", &tag);
    let mut me = cluster.superuser();

    let (a, b, x, q, f) = (
        all_old.pid,
        backend_only.pid,
        xact_old.pid,
        query_old.pid,
        fresh.pid,
    );
    assert_eq!(
        selects(&mut me, &tag, r#""min_backend_age": 3000"#),
        sorted(vec![a, b, x, q])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""min_backend_age": "00:00:03""#),
        sorted(vec![a, b, x, q])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""min_xact_age": 3000"#),
        sorted(vec![a, x])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""min_xact_age": "3 seconds""#),
        sorted(vec![a, x])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""min_query_age": 3000"#),
        sorted(vec![a, q])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""min_query_age": "3000 milliseconds""#),
        sorted(vec![a, q])
    );
    assert_eq!(selects(&mut me, &tag, r#""min_state_age": 3000"#), vec![a]);
    assert_eq!(selects(&mut me, &tag, r#""min_state_age": "3s""#), vec![a]);
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#""min_xact_age": 3000, "min_query_age": "3 sec""#
        ),
        vec![a]
    );
    // A NULL xact_start (no transaction open) never matches, not even an age of 0.
    assert_eq!(
        selects(&mut me, &tag, r#""min_xact_age": 0"#),
        sorted(vec![a, x])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""min_backend_age": 0"#),
        sorted(vec![a, b, x, q, f])
    );
    assert!(selects(&mut me, &tag, r#""min_backend_age": "1 hour""#).is_empty());
    assert!(selects(&mut me, &tag, r#""min_xact_age": 3600000"#).is_empty());

    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "min_xact_age": "3 second"}}"#),
        5000,
    );
    assert_eq!(pids(&rows), sorted(vec![a, x]));
    assert_gone_and_alive(
        &cluster,
        &[&all_old, &xact_old],
        &[&backend_only, &query_old, &fresh],
    );
}

#[test]
fn blocking_and_blocked() {
    let cluster = cluster();
    let tag = tag("locks");
    let mut su = cluster.superuser();
    su.batch_execute("CREATE TABLE locks_t (id int); GRANT ALL ON locks_t TO app")
        .unwrap();
    let holder = cluster.session("app", &tag);
    assert_eq!(
        holder.run("BEGIN; LOCK TABLE locks_t IN ACCESS EXCLUSIVE MODE"),
        Ended::Ok
    );
    let waiter = cluster.session("app", &tag);
    let waiting = waiter.start("SELECT * FROM locks_t");
    cluster.wait_until(waiter.pid, "a.wait_event_type = 'Lock'");
    let waiter2 = cluster.session("app", &tag);
    let waiting2 = waiter2.start("SELECT * FROM locks_t");
    cluster.wait_until(waiter2.pid, "a.wait_event_type = 'Lock'");
    let bystander = cluster.session("app", &tag).idle_in_transaction();
    let mut me = cluster.superuser();

    assert_eq!(
        selects(&mut me, &tag, r#""blocking": true"#),
        vec![holder.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#""blocked": true"#),
        sorted(vec![waiter.pid, waiter2.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""blocking": false"#),
        sorted(vec![waiter.pid, waiter2.pid, bystander.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""blocked": false"#),
        sorted(vec![holder.pid, bystander.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""blocking": false, "blocked": false"#),
        vec![bystander.pid]
    );
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#""any": [{"blocking": true}, {"blocked": true}], "limit": 10"#
        ),
        sorted(vec![holder.pid, waiter.pid, waiter2.pid])
    );

    // Terminating the blocker frees the waiters; nobody else is touched.
    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "blocking": true}}"#),
        5000,
    );
    assert_eq!(pids(&rows), vec![holder.pid]);
    assert_eq!(rows[0].outcome, "terminated");
    assert_eq!(waiting.wait(), Ended::Ok);
    assert_eq!(waiting2.wait(), Ended::Ok);
    assert_gone_and_alive(&cluster, &[&holder], &[&waiter, &waiter2, &bystander]);
    assert!(selects(&mut me, &tag, r#""blocked": true"#).is_empty());
}

#[test]
fn any_exclude_and_all() {
    let cluster = cluster();
    let tag = tag("combinators");
    let app = cluster.session("app", &tag);
    let app_tx = cluster.session("app", &tag).idle_in_transaction();
    let batch = cluster.session("batch", &tag).idle_in_transaction();
    let batch_idle = cluster.session("batch", &tag);
    let mut me = cluster.superuser();

    assert_eq!(
        selects(&mut me, &tag, r#""all": true"#),
        sorted(vec![app.pid, app_tx.pid, batch.pid, batch_idle.pid])
    );
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#""any": [{"usename": "app", "state": "idle"}, {"usename": "batch", "state": "idle in transaction"}]"#
        ),
        sorted(vec![app.pid, batch.pid])
    );
    assert_eq!(
        selects(&mut me, &tag, r#""any": [{"usename": "nobody"}]"#),
        Vec::<i32>::new()
    );
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#""all": true, "exclude": {"usename": "app"}"#
        ),
        sorted(vec![batch.pid, batch_idle.pid])
    );
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#""state": "idle in transaction", "exclude": {"usename": "batch"}"#
        ),
        vec![app_tx.pid]
    );
    // `exclude` inside an `any` branch narrows that branch only.
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#""any": [{"usename": "app", "exclude": {"state": "idle"}}, {"usename": "batch", "state": "idle"}]"#
        ),
        sorted(vec![app_tx.pid, batch_idle.pid])
    );
    // `any` inside `exclude`.
    assert_eq!(
        selects(
            &mut me,
            &tag,
            r#""all": true, "exclude": {"any": [{"usename": "app", "state": "idle"}, {"usename": "batch", "state": "idle"}]}"#
        ),
        sorted(vec![app_tx.pid, batch.pid])
    );

    let rows = terminate(
        &mut me,
        &format!(
            r#"{{"application_name": "{tag}", "all": true, "exclude": {{"usename": "batch"}}}}"#
        ),
        5000,
    );
    assert_eq!(pids(&rows), sorted(vec![app.pid, app_tx.pid]));
    assert_gone_and_alive(&cluster, &[&app, &app_tx], &[&batch, &batch_idle]);
}

#[test]
fn limit_with_every_order() {
    let cluster = cluster();
    let tag = tag("limit");
    // Opened in turn (each connection completes before the next begins): s[0] is the oldest
    // backend, s[3] the newest.
    let mut s = Vec::new();
    for _ in 0..4 {
        s.push(cluster.session("app", &tag));
    }
    // Then, in this order: s[1] starts a query that outlasts the rest (oldest query, newest
    // state); s[3] runs a query (oldest state); s[2] and then s[0] open transactions.
    let long_query = s[1].start("SELECT pg_sleep(600)");
    cluster.wait_until(s[1].pid, "a.state = 'active'");
    assert_eq!(s[3].run("SELECT 1"), Ended::Ok);
    assert_eq!(s[2].run("BEGIN; SELECT 1"), Ended::Ok);
    assert_eq!(s[0].run("BEGIN; SELECT 1"), Ended::Ok);
    // The long query ends last (cancelled), so its state_change is the newest.
    let mut me = cluster.superuser();
    cancel(&mut me, &format!(r#"{{"pid": {}}}"#, s[1].pid));
    assert_eq!(long_query.wait(), Ended::Error("57014".into()));
    let pick = |me: &mut Client, limit: u32, order: &str| -> Vec<i32> {
        let f = format!(r#"{{"application_name": "{tag}", "limit": {limit}, "order": "{order}"}}"#);
        preview(me, &f).iter().map(|r| r.pid).collect()
    };
    let p: Vec<i32> = s.iter().map(|x| x.pid).collect();
    assert_eq!(pick(&mut me, 2, "oldest_backend"), vec![p[0], p[1]]);
    assert_eq!(pick(&mut me, 2, "newest_backend"), vec![p[3], p[2]]);
    assert_eq!(pick(&mut me, 2, "oldest_xact"), vec![p[2], p[0]]);
    assert_eq!(pick(&mut me, 2, "oldest_query"), vec![p[1], p[3]]);
    assert_eq!(pick(&mut me, 2, "oldest_state"), vec![p[3], p[2]]);
    assert_eq!(pick(&mut me, 1, "oldest_state"), vec![p[3]]);
    assert_eq!(pick(&mut me, 10, "oldest_backend"), p);
    assert_eq!(
        pick(&mut me, 10, "newest_backend"),
        vec![p[3], p[2], p[1], p[0]]
    );
    // Without a limit, the default order is oldest_backend.
    let all: Vec<i32> = preview(&mut me, &format!(r#"{{"application_name": "{tag}"}}"#))
        .iter()
        .map(|r| r.pid)
        .collect();
    assert_eq!(all, p);

    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "limit": 2, "order": "oldest_query"}}"#),
        5000,
    );
    assert_eq!(
        rows.iter().map(|r| r.pid).collect::<Vec<_>>(),
        vec![p[1], p[3]]
    );
    assert_gone_and_alive(&cluster, &[&s[1], &s[3]], &[&s[0], &s[2]]);
}

#[test]
fn include_superusers() {
    let cluster = cluster();
    let tag = tag("superusers");
    let app = cluster.session("app", &tag);
    let postgres = cluster.session("postgres", &tag);
    let boss = cluster.session("boss", &tag);
    let mut me = cluster.superuser();

    assert_eq!(selects(&mut me, &tag, r#""all": true"#), vec![app.pid]);
    assert_eq!(
        selects(&mut me, &tag, r#""usename": ["postgres", "boss"]"#),
        Vec::<i32>::new()
    );
    assert_eq!(
        selects(&mut me, &tag, r#""all": true, "include_superusers": false"#),
        vec![app.pid]
    );
    assert_eq!(
        selects(&mut me, &tag, r#""all": true, "include_superusers": true"#),
        sorted(vec![app.pid, postgres.pid, boss.pid])
    );

    // Without it, a superuser's session is never signalled, even when named.
    let rows = terminate(
        &mut me,
        &format!(r#"{{"application_name": "{tag}", "usename": ["app", "boss"]}}"#),
        5000,
    );
    assert_eq!(pids(&rows), vec![app.pid]);
    assert_gone_and_alive(&cluster, &[&app], &[&postgres, &boss]);
    let rows = terminate(
        &mut me,
        &format!(
            r#"{{"application_name": "{tag}", "usename": "boss", "include_superusers": true}}"#
        ),
        5000,
    );
    assert_eq!(pids(&rows), vec![boss.pid]);
    assert_gone_and_alive(&cluster, &[&boss], &[&postgres]);
}

#[test]
fn a_parallel_leader_whose_worker_waits_is_blocked_as_pg_blocking_pids_says() {
    // pg_blocking_pids of a lock group member describes the whole group: a parallel query's
    // leader is blocked when one of its workers waits for a lock.
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    su.batch_execute(
        "CREATE TABLE big AS SELECT g FROM generate_series(1, 20000) g; ANALYZE big; \
         CREATE TABLE guarded (x int); \
         CREATE FUNCTION peek() RETURNS bigint LANGUAGE plpgsql PARALLEL SAFE \
           AS $$BEGIN RETURN (SELECT count(*) FROM guarded); END$$; \
         GRANT SELECT ON big, guarded TO app",
    )
    .unwrap();
    let holder = cluster.session("app", "holder");
    su.batch_execute("GRANT ALL ON guarded TO app").unwrap();
    assert_eq!(
        holder.run("BEGIN; LOCK TABLE guarded IN ACCESS EXCLUSIVE MODE"),
        Ended::Ok
    );
    let leader = cluster.session("app", "leader");
    // A forced parallel plan (the setting was renamed in 16) without the leader's
    // participation: only the worker runs the scan, and so only it waits for the lock, while
    // the leader waits for the worker.
    let force = if server_major() >= 16 {
        "debug_parallel_query"
    } else {
        "force_parallel_mode"
    };
    let query = leader.start(&format!(
        "SET parallel_leader_participation = off; SET {force} = on; \
         SELECT count(*) FROM big WHERE peek() >= 0"
    ));
    let mut me = cluster.superuser();
    let worker: i32 = {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            me.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
            let row = me
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE leader_pid = $1 AND pid <> $1 \
                       AND wait_event_type = 'Lock'",
                    &[&leader.pid],
                )
                .unwrap();
            if let Some(row) = row {
                break row.get(0);
            }
            assert!(std::time::Instant::now() < deadline, "no waiting worker");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // PostgreSQL's own answer, and pg_reaper's, for each of the three.
    for pid in [holder.pid, leader.pid, worker] {
        let theirs: (bool, bool) = {
            let row = me
                .query_one(
                    "SELECT cardinality(pg_blocking_pids($1)) > 0, \
                            EXISTS (SELECT 1 FROM pg_stat_activity a \
                                     WHERE $1 = ANY (pg_blocking_pids(a.pid)))",
                    &[&pid],
                )
                .unwrap();
            (row.get(0), row.get(1))
        };
        let mut ours = |key: &str| {
            let f = format!(r#"{{"pid": {pid}, "{key}": true, "backend_type": {{"regex": ""}}}}"#);
            preview(&mut me, &f).len() == 1
        };
        assert_eq!((ours("blocked"), ours("blocking")), theirs, "pid {pid}");
    }
    assert!(
        preview(
            &mut me,
            &format!(r#"{{"pid": {}, "blocked": true}}"#, leader.pid)
        )
        .len()
            == 1,
        "the leader is blocked through its worker"
    );
    assert_eq!(holder.run("COMMIT"), Ended::Ok);
    assert_eq!(query.wait(), Ended::Ok);
}

#[test]
fn an_exact_state_or_backend_type_must_be_one_the_running_server_has() {
    let cluster = cluster();
    let mut me = cluster.superuser();
    let major = server_major();
    let validate = |me: &mut Client, filter: &str| -> Result<(), String> {
        me.query_one("SELECT reaper.validate_filter($1::text::jsonb)", &[&filter])
            .map(|_| ())
            .map_err(|e| {
                assert_eq!(sqlstate(&e), Some("22023"), "{e}");
                e.as_db_error().unwrap().message().to_string()
            })
    };
    // Types that came with a major: accepted from it on, refused before, saying which server.
    for (backend_type, since) in [
        ("standalone backend", 16),
        ("slotsync worker", 17),
        ("walsummarizer", 17),
        ("io worker", 18),
    ] {
        let result = validate(&mut me, &format!(r#"{{"backend_type": "{backend_type}"}}"#));
        if major >= since {
            assert_eq!(result, Ok(()), "{backend_type} on {major}");
        } else {
            assert_eq!(
                result.unwrap_err(),
                format!(
                    r#"filter key "backend_type": PostgreSQL {major} has no backend type "{backend_type}""#
                ),
                "{backend_type} on {major}"
            );
        }
    }
    let typo = validate(
        &mut me,
        r#"{"backend_type": ["client backend", "walsnder"]}"#,
    );
    assert_eq!(
        typo.unwrap_err(),
        format!(
            r#"filter key "backend_type": PostgreSQL {major} has no backend type "walsnder" (did you mean "walsender"?)"#
        )
    );
    // 18 shows a backend that is still authenticating as `starting`.
    let starting = validate(&mut me, r#"{"state": "starting"}"#);
    assert_eq!(starting.is_ok(), major >= 18, "{starting:?}");
    // Background workers: PostgreSQL's own and those running now are known; a regex is free.
    for ok in [
        r#"{"backend_type": "logical replication launcher", "include_superusers": true}"#,
        r#"{"backend_type": "parallel worker"}"#,
        r#"{"backend_type": {"regex": "anything at all"}}"#,
    ] {
        assert_eq!(validate(&mut me, ok), Ok(()), "{ok}");
    }
}
