//! The background worker (`shared_preload_libraries = 'pg_reaper'`): policies with a
//! `run_every` enforced without any call, the table followed within a second, its status from
//! shared memory, never a victim itself, and its faults: a failing or panicking policy, a missing
//! extension or database, SIGTERM — none of which takes the server down.

use pg_reaper_integration::*;
use std::time::{Duration, Instant};

/// A cluster whose postmaster loads pg_reaper, so that it starts the worker.
pub(crate) fn worker_cluster(extra: &[&str], create_extension: bool) -> Cluster {
    let mut settings = vec!["shared_preload_libraries = 'pg_reaper'".to_string()];
    settings.extend(extra.iter().map(|s| s.to_string()));
    Cluster::start_with(Options {
        settings,
        create_extension,
        ..Options::default()
    })
}

pub(crate) fn worker_pid(client: &mut Client) -> Option<i32> {
    client
        .query_one("SELECT pid FROM reaper.worker()", &[])
        .unwrap()
        .get(0)
}

fn worker_state(client: &mut Client) -> String {
    client
        .query_one("SELECT state FROM reaper.worker()", &[])
        .unwrap()
        .get(0)
}

/// A running worker's pid, once it has one (and runs).
pub(crate) fn running_worker(client: &mut Client) -> i32 {
    wait_for(
        client,
        "SELECT state = 'running' AND pid IS NOT NULL FROM reaper.worker()",
    );
    worker_pid(client).unwrap()
}

fn count_in_log(cluster: &Cluster, needle: &str) -> usize {
    cluster.server_log().matches(needle).count()
}

#[test]
fn a_scheduled_policy_is_enforced_without_any_call() {
    let cluster = worker_cluster(&[], true);
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    let worker = running_worker(&mut su);
    let tag = tag("scheduled");
    su.batch_execute(&format!(
        "INSERT INTO reaper.policies (name, filter, run_every) VALUES \
           ('idle-tx', '{{\"application_name\": \"{tag}\", \"state\": \"idle in transaction\"}}', '200 ms')"
    ))
    .unwrap();
    let bystander = cluster.session("app", &tag);
    let victim = cluster.session("app", &tag).idle_in_transaction();
    let opened = Instant::now();
    assert!(cluster.wait_gone(victim.pid), "the worker terminated it");
    println!(
        "terminated {:?} after it became idle in transaction",
        opened.elapsed()
    );
    assert_eq!(
        bystander.run("SELECT 1"),
        Ended::Ok,
        "an idle session is not a match"
    );

    // The records: an audit row with the worker as the caller, the LOG line, the status. The
    // victim leaves before the run commits; the status is published after the commit.
    wait_for(
        &mut su,
        "SELECT runs > 0 AND signalled = 1 AND last_error IS NULL AND run_on = 'any' \
            AND run_every = interval '200 ms' AND next_run_at IS NOT NULL \
           FROM reaper.worker_status() WHERE policy = 'idle-tx'",
    );
    let logged = su
        .query_one(
            "SELECT caller, run_as, policy, action, outcome FROM reaper.log WHERE pid = $1",
            &[&victim.pid],
        )
        .unwrap();
    assert_eq!(logged.get::<_, String>(0), "pg_reaper worker");
    assert_eq!(logged.get::<_, String>(1), "postgres");
    assert_eq!(logged.get::<_, String>(2), "idle-tx");
    assert_eq!(logged.get::<_, String>(3), "terminate");
    assert_eq!(logged.get::<_, String>(4), "signalled");
    let lines = cluster.reaper_lines(victim.pid);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(r#"by role="pg_reaper worker" policy="idle-tx" as role="postgres""#),
        "{}",
        lines[0]
    );
    // The worker in pg_stat_activity: its own backend_type and application_name.
    let row = su
        .query_one(
            "SELECT backend_type, application_name FROM pg_stat_activity WHERE pid = $1",
            &[&worker],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pg_reaper worker");
    assert_eq!(row.get::<_, String>(1), "pg_reaper worker");
    assert_eq!(
        worker_pid(&mut su),
        Some(worker),
        "the same worker throughout"
    );
}

#[test]
fn run_policies_leaves_scheduled_policies_to_the_worker() {
    let cluster = worker_cluster(&[], true);
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    running_worker(&mut su);
    let tag = tag("no_double_runs");
    let by_worker = cluster.session("app", &format!("{tag}_w"));
    let by_call = cluster.session("app", &format!("{tag}_c"));
    su.batch_execute(&format!(
        "INSERT INTO reaper.policies (name, filter, action, run_every) VALUES \
           ('scheduled', '{{\"application_name\": \"{tag}_w\"}}', 'cancel', '1 hour'), \
           ('called', '{{\"application_name\": \"{tag}_c\"}}', 'cancel', NULL)"
    ))
    .unwrap();
    // The worker runs the scheduled one once at once, then hourly; run_policies() the other.
    wait_for(
        &mut su,
        "SELECT runs = 1 FROM reaper.worker_status() WHERE policy = 'scheduled'",
    );
    let rows = call(&mut su, "reaper.run_policies()", "").unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r.policy.clone().unwrap())
            .collect::<Vec<_>>(),
        vec!["called".to_string()]
    );
    assert_eq!(rows[0].pid, by_call.pid);
    let statuses: Vec<String> = su
        .query("SELECT policy FROM reaper.worker_status()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(statuses, vec!["scheduled".to_string()]);
    // run_policy(name) runs any policy, scheduled or not.
    let rows = call(&mut su, "reaper.run_policy('scheduled')", "").unwrap();
    assert_eq!(pids(&rows), vec![by_worker.pid]);
}

#[test]
fn the_worker_follows_the_table_within_a_second() {
    let cluster = worker_cluster(&[], true);
    let mut su = cluster.superuser();
    running_worker(&mut su);
    let has = |s: &str| format!("SELECT count(*) = 1 FROM reaper.worker_status() WHERE {s}");
    su.batch_execute(
        "INSERT INTO reaper.policies (name, filter, action, run_every) \
         VALUES ('p', '{\"usename\": \"nobody\"}', 'cancel', '5 s')",
    )
    .unwrap();
    wait_for(&mut su, &has("policy = 'p' AND run_every = '5 s'"));
    su.batch_execute("UPDATE reaper.policies SET run_every = '300 ms', run_on = 'standby'")
        .unwrap();
    // On a primary, a standby-only policy is known but not scheduled here.
    wait_for(
        &mut su,
        &has(
            "policy = 'p' AND run_every = '300 ms' AND run_on = 'standby' AND next_run_at IS NULL",
        ),
    );
    su.batch_execute("UPDATE reaper.policies SET enabled = false")
        .unwrap();
    wait_for(&mut su, "SELECT count(*) = 0 FROM reaper.worker_status()");
    su.batch_execute("UPDATE reaper.policies SET enabled = true, run_on = 'primary'")
        .unwrap();
    wait_for(&mut su, &has("policy = 'p' AND next_run_at IS NOT NULL"));
    su.batch_execute("DELETE FROM reaper.policies").unwrap();
    wait_for(&mut su, "SELECT count(*) = 0 FROM reaper.worker_status()");
    // The schedule's own validation.
    let err = su
        .batch_execute(
            "INSERT INTO reaper.policies (name, filter, run_every) VALUES ('fast', '{\"all\": true}', '10 ms')",
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("22023"), "{err}");
    let err = su
        .batch_execute(
            "INSERT INTO reaper.policies (name, filter, run_on) VALUES ('where', '{\"all\": true}', 'replica')",
        )
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("22023"), "{err}");
}

#[test]
fn the_worker_is_never_a_victim_and_comes_back_when_stopped() {
    let cluster = worker_cluster(&[], true);
    cluster.create_role("app", "");
    let postmaster = cluster.postmaster_start();
    let client = cluster.session("app", "keeps_running");
    let mut su = cluster.superuser();
    let first = running_worker(&mut su);
    // No regex selects it, whatever else the filter says.
    for filter in [
        r#"{"all": true, "include_superusers": true, "backend_type": {"regex": ""}}"#,
        r#"{"backend_type": {"regex": "pg_reaper"}, "include_superusers": true}"#,
        r#"{"application_name": "pg_reaper worker", "include_superusers": true}"#,
    ] {
        let rows = preview(&mut su, filter);
        assert!(rows.iter().all(|r| r.pid != first), "{filter}: {rows:?}");
    }
    // Named exactly, it is a victim like any other; the postmaster starts it again.
    let rows = terminate(
        &mut su,
        r#"{"backend_type": "pg_reaper worker", "include_superusers": true}"#,
        5000,
    );
    assert_eq!(pids(&rows), vec![first]);
    assert_eq!(rows[0].outcome, "terminated");
    let second = {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match worker_pid(&mut su) {
                Some(pid) if pid != first && worker_state(&mut su) == "running" => break pid,
                _ => {}
            }
            assert!(Instant::now() < deadline, "the worker never came back");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // And after a plain SIGTERM too.
    signal_process(second, libc::SIGTERM);
    let deadline = Instant::now() + PATIENCE;
    while !matches!(worker_pid(&mut su), Some(pid) if pid != second) {
        assert!(
            Instant::now() < deadline,
            "the worker never came back after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(cluster.postmaster_start(), postmaster, "no server restart");
    assert_eq!(client.run("SELECT 1"), Ended::Ok, "client sessions live");
    let log = cluster.server_log();
    assert!(
        !log.contains("terminating any other active server processes"),
        "{log}"
    );
}

#[test]
fn a_failing_policy_is_reported_and_the_others_go_on() {
    let cluster = worker_cluster(&[], true);
    cluster.create_role("app", "");
    cluster.create_role("doomed", "");
    let mut su = cluster.superuser();
    let worker = running_worker(&mut su);
    let tag = tag("others_go_on");
    su.batch_execute(&format!(
        "INSERT INTO reaper.policies (name, filter, action, owner, run_every) VALUES \
           ('a-orphaned', '{{\"usename\": \"nobody\"}}', 'cancel', 'doomed', '100 ms'), \
           ('b-working', '{{\"application_name\": \"{tag}\", \"state\": \"idle in transaction\"}}', \
            'terminate', 'postgres', '100 ms'); \
         DROP ROLE doomed"
    ))
    .unwrap();
    wait_for(
        &mut su,
        "SELECT last_error LIKE 'its owner, role %, does not exist on this node' AND runs > 3 \
           FROM reaper.worker_status() WHERE policy = 'a-orphaned'",
    );
    let victim = cluster.session("app", &tag).idle_in_transaction();
    assert!(cluster.wait_gone(victim.pid), "the other policy still runs");
    assert_eq!(worker_pid(&mut su), Some(worker), "the worker lives");
    // One WARNING (and one failed row) for the failure, however often it repeats.
    let warned = count_in_log(&cluster, r#"pg_reaper: policy "a-orphaned" failed"#);
    assert_eq!(warned, 1, "{}", cluster.server_log());
    let failed = count(
        &mut su,
        "SELECT count(*) FROM reaper.log WHERE policy = 'a-orphaned' AND outcome = 'failed'",
    );
    assert_eq!(failed, 1);
}

#[test]
fn a_panic_inside_a_run_costs_that_run_only() {
    let cluster = worker_cluster(&["pg_reaper.test_panic_policy = 'boom'"], true);
    cluster.create_role("app", "");
    let postmaster = cluster.postmaster_start();
    let mut su = cluster.superuser();
    let worker = running_worker(&mut su);
    let tag = tag("after_panic");
    su.batch_execute(&format!(
        "INSERT INTO reaper.policies (name, filter, action, run_every) VALUES \
           ('boom', '{{\"usename\": \"nobody\"}}', 'cancel', '100 ms'), \
           ('works', '{{\"application_name\": \"{tag}\", \"state\": \"idle in transaction\"}}', 'terminate', '100 ms')"
    ))
    .unwrap();
    // It panics at every run; the worker says so once, records it, and goes on.
    wait_for(
        &mut su,
        r#"SELECT runs >= 3 AND last_error = 'pg_reaper test hook: policy "boom" panics, as asked'
             FROM reaper.worker_status() WHERE policy = 'boom'"#,
    );
    let said = count_in_log(&cluster, r#"policy "boom" panics, as asked"#);
    assert!(
        (1..=2).contains(&said),
        "said {said} times:\n{}",
        cluster.server_log()
    );
    let victim = cluster.session("app", &tag).idle_in_transaction();
    assert!(cluster.wait_gone(victim.pid), "the other policy still runs");
    assert_eq!(
        worker_pid(&mut su),
        Some(worker),
        "the same worker: a panic ended no process"
    );
    assert_eq!(cluster.postmaster_start(), postmaster);
}

#[test]
fn without_the_extension_the_worker_waits_quietly_and_then_enforces() {
    let cluster = worker_cluster(&[], false);
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    let waiting = "waits for CREATE EXTENSION pg_reaper";
    cluster.wait_for_log(waiting, 1);
    // Three more cycles, and still the one line.
    let worker = worker_pid_in_activity(&mut su);
    wait_cycles(&mut su, worker, 3);
    assert_eq!(count_in_log(&cluster, waiting), 1, "no log flood");
    su.batch_execute("CREATE EXTENSION pg_reaper").unwrap();
    let tag = tag("created_later");
    su.batch_execute(&format!(
        "INSERT INTO reaper.policies (name, filter, run_every) VALUES \
           ('idle-tx', '{{\"application_name\": \"{tag}\", \"state\": \"idle in transaction\"}}', '100 ms')"
    ))
    .unwrap();
    let victim = cluster.session("app", &tag).idle_in_transaction();
    assert!(
        cluster.wait_gone(victim.pid),
        "enforcing once the extension is there"
    );
    // DROP EXTENSION while it runs: it waits again, saying so once; CREATE again, it enforces.
    su.batch_execute("DROP EXTENSION pg_reaper").unwrap();
    cluster.wait_for_log(waiting, 2);
    wait_cycles(&mut su, worker, 3);
    assert_eq!(count_in_log(&cluster, waiting), 2, "no log flood");
    su.batch_execute(&format!(
        "CREATE EXTENSION pg_reaper; INSERT INTO reaper.policies (name, filter, run_every) VALUES \
           ('idle-tx', '{{\"application_name\": \"{tag}\", \"state\": \"idle in transaction\"}}', '100 ms')"
    ))
    .unwrap();
    let victim = cluster.session("app", &tag).idle_in_transaction();
    assert!(cluster.wait_gone(victim.pid));
    assert_eq!(
        worker_pid_in_activity(&mut su),
        worker,
        "the same worker throughout"
    );
}

#[test]
fn without_its_database_the_worker_waits_quietly_and_then_enforces() {
    let cluster = worker_cluster(&["pg_reaper.database = 'reaper_db'"], false);
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    let waiting = r#"database "reaper_db" (pg_reaper.database) does not exist; the worker waits"#;
    cluster.wait_for_log(waiting, 1);
    let worker = worker_pid_in_activity(&mut su);
    wait_cycles(&mut su, worker, 3);
    // One failed connection, one line saying what is missing, then quiet: no crash loop.
    assert_eq!(count_in_log(&cluster, waiting), 1, "no log flood");
    assert_eq!(
        count_in_log(&cluster, r#"database "reaper_db" does not exist"#),
        1
    );
    assert_eq!(worker_pid_in_activity(&mut su), worker, "no crash loop");
    su.batch_execute("CREATE DATABASE reaper_db").unwrap();
    let mut db = {
        let deadline = Instant::now() + PATIENCE;
        loop {
            // The worker connects to it (a new process) and waits for the extension.
            if count_in_log(&cluster, "is not installed in database \"reaper_db\"") > 0 {
                break cluster.connect_to("postgres", "reaper_db");
            }
            assert!(Instant::now() < deadline, "{}", cluster.server_log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let tag = tag("database_later");
    db.batch_execute(&format!(
        "CREATE EXTENSION pg_reaper; INSERT INTO reaper.policies (name, filter, run_every) VALUES \
           ('idle-tx', '{{\"application_name\": \"{tag}\", \"state\": \"idle in transaction\"}}', '100 ms')"
    ))
    .unwrap();
    let victim = cluster.session("app", &tag).idle_in_transaction();
    assert!(
        cluster.wait_gone(victim.pid),
        "enforcing once the database is there"
    );
}

#[test]
fn worker_off_parks_it_and_on_resumes() {
    let cluster = worker_cluster(&[], true);
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    let worker = running_worker(&mut su);
    su.batch_execute("ALTER SYSTEM SET pg_reaper.worker = off")
        .unwrap();
    su.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for(&mut su, "SELECT state = 'off' FROM reaper.worker()");
    let tag = tag("parked");
    su.batch_execute(&format!(
        "INSERT INTO reaper.policies (name, filter, run_every) VALUES \
           ('idle-tx', '{{\"application_name\": \"{tag}\", \"state\": \"idle in transaction\"}}', '100 ms')"
    ))
    .unwrap();
    let victim = cluster.session("app", &tag).idle_in_transaction();
    // Parked: three more cycles, and the victim is still there, the policy unknown.
    wait_cycles(&mut su, worker, 3);
    assert_eq!(victim.run("SELECT 1"), Ended::Ok);
    assert_eq!(
        count(&mut su, "SELECT count(*) FROM reaper.worker_status()"),
        0
    );
    su.batch_execute("ALTER SYSTEM SET pg_reaper.worker = on")
        .unwrap();
    su.batch_execute("SELECT pg_reload_conf()").unwrap();
    assert!(cluster.wait_gone(victim.pid), "enforcing again");
    assert_eq!(worker_pid(&mut su), Some(worker), "parked, not restarted");
}

/// The worker's pid from pg_stat_activity (while it waits it has no status row to trust).
fn worker_pid_in_activity(su: &mut Client) -> i32 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        su.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
        if let Some(row) = su
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_reaper worker'",
                &[],
            )
            .unwrap()
        {
            return row.get(0);
        }
        assert!(Instant::now() < deadline, "no worker in pg_stat_activity");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The worker's cycle count, from what pg_stat_activity shows it doing between cycles
/// ("pg_reaper worker: ... (cycle 42)"); 0 while it runs a policy.
fn worker_cycle(su: &mut Client, worker: i32) -> u64 {
    su.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
    let query: Option<String> = su
        .query_opt(
            "SELECT query FROM pg_stat_activity WHERE pid = $1",
            &[&worker],
        )
        .unwrap()
        .and_then(|r| r.get(0));
    query
        .as_deref()
        .and_then(|q| q.rsplit_once("(cycle "))
        .and_then(|(_, n)| n.trim_end_matches(')').parse().ok())
        .unwrap_or(0)
}

/// Waits until the worker has gone round its loop `n` more times (it wakes at least every
/// second): what a check that something did not happen needs.
pub(crate) fn wait_cycles(su: &mut Client, worker: i32, n: u64) {
    let deadline = Instant::now() + PATIENCE;
    // Inside a run the worker shows no cycle (0): count from one it shows.
    let target = loop {
        match worker_cycle(su, worker) {
            0 => assert!(Instant::now() < deadline, "the worker shows no cycle"),
            cycle => break cycle + n,
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    while worker_cycle(su, worker) < target {
        assert!(Instant::now() < deadline, "the worker stopped cycling");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_primary_and_its_hot_standby_each_enforce_their_own_policies_and_promotion_goes_on() {
    let primary = worker_cluster(&[], true);
    primary.create_role("app", "");
    let mut p = primary.superuser();
    p.batch_execute(
        "INSERT INTO reaper.policies (name, filter, run_every, run_on) VALUES \
           ('primary-only', '{\"application_name\": \"on_primary\", \"state\": \"idle in transaction\"}', '200 ms', 'primary'), \
           ('standby-only', '{\"application_name\": \"on_standby\", \"state\": \"idle in transaction\"}', '200 ms', 'standby')",
    )
    .unwrap();
    let primary_worker = running_worker(&mut p);
    let standby = Cluster::standby_of(
        &primary,
        Options {
            settings: vec!["shared_preload_libraries = 'pg_reaper'".into()],
            ..Options::default()
        },
    );
    let mut s = standby.superuser();
    assert!(
        s.query_one("SELECT pg_is_in_recovery()", &[])
            .unwrap()
            .get::<_, bool>(0),
        "a hot standby"
    );
    let standby_worker = running_worker(&mut s);
    wait_for(
        &mut s,
        "SELECT count(*) = 2 FROM reaper.worker_status() WHERE runs > 0 OR next_run_at IS NULL",
    );

    // Each node terminates its own kind of session and leaves the other.
    let on_primary = primary.session("app", "on_primary").idle_in_transaction();
    let left_on_primary = primary.session("app", "on_standby").idle_in_transaction();
    let on_standby = standby.session("app", "on_standby").idle_in_transaction();
    let left_on_standby = standby.session("app", "on_primary").idle_in_transaction();
    assert!(primary.wait_gone(on_primary.pid));
    assert!(standby.wait_gone(on_standby.pid));
    wait_cycles(&mut p, primary_worker, 3);
    wait_cycles(&mut s, standby_worker, 3);
    assert_eq!(left_on_primary.run("SELECT 1"), Ended::Ok);
    assert_eq!(left_on_standby.run("SELECT 1"), Ended::Ok);
    // On the standby nothing can be written: its LOG line is the record.
    let line = standby.reaper_lines(on_standby.pid);
    assert_eq!(line.len(), 1, "{line:?}");
    assert!(line[0].contains(r#"policy="standby-only""#), "{}", line[0]);
    assert_eq!(
        count(
            &mut p,
            "SELECT count(*) FROM reaper.log WHERE policy = 'primary-only'"
        ),
        1
    );
    assert_eq!(
        count(
            &mut p,
            "SELECT count(*) FROM reaper.log WHERE policy = 'standby-only'"
        ),
        0
    );
    // The standby's status, from shared memory: the primary-only policy is not scheduled there.
    wait_for(
        &mut s,
        "SELECT bool_and(CASE policy WHEN 'standby-only' THEN runs > 0 AND next_run_at IS NOT NULL \
                                     ELSE runs = 0 AND next_run_at IS NULL END) \
           FROM reaper.worker_status()",
    );
    drop(left_on_standby);

    // Promotion: the same worker goes on, now as a primary's, and writes audit rows.
    standby.promote();
    wait_for(&mut s, "SELECT NOT pg_is_in_recovery()");
    let promoted_victim = standby.session("app", "on_primary").idle_in_transaction();
    assert!(standby.wait_gone(promoted_victim.pid));
    wait_for(
        &mut s,
        &format!(
            "SELECT count(*) = 1 FROM reaper.log WHERE pid = {} AND caller = 'pg_reaper worker' \
               AND policy = 'primary-only'",
            promoted_victim.pid
        ),
    );
    assert_eq!(
        worker_pid(&mut s),
        Some(standby_worker),
        "the same worker after promotion"
    );
    // Promotion cost no run: no failure recorded, no WARNING (a run whose transaction began
    // during recovery waits for the next one, which can write).
    assert_eq!(
        count(
            &mut s,
            "SELECT count(*) FROM reaper.log WHERE outcome = 'failed'"
        ),
        0
    );
    let log = standby.server_log();
    assert!(!log.contains("WARNING"), "{log}");
    wait_for(
        &mut s,
        "SELECT bool_and(last_error IS NULL) FROM reaper.worker_status()",
    );
    drop(left_on_primary);
}

#[test]
fn the_workers_memory_stays_flat_over_10000_runs() {
    // 50 policies with a regex and a lock key, every 100 ms, each run cancelling three idle
    // sessions (delivered, and harmless to them): every run does the whole work.
    let cluster = worker_cluster(&[], true);
    cluster.create_role("app", "");
    let idle: Vec<Session> = (0..3).map(|_| cluster.session("app", "mem")).collect();
    let mut su = cluster.superuser();
    let worker = running_worker(&mut su);
    let values: Vec<String> = (0..50)
        .map(|i| {
            format!(
                "('m{i:02}', '{{\"application_name\": {{\"regex\": \"^mem$\"}}, \"blocking\": false}}', 'cancel', '100 ms')"
            )
        })
        .collect();
    su.batch_execute(&format!(
        "INSERT INTO reaper.policies (name, filter, action, run_every) VALUES {}",
        values.join(", ")
    ))
    .unwrap();
    // And one that fails at every run (its filter is invalid: written past the table's
    // trigger): the error path, with its rolled-back subtransaction, every 100 ms too.
    su.batch_execute(
        "SET session_replication_role = replica; \
         INSERT INTO reaper.policies (name, filter, action, run_every) \
           VALUES ('m-fails', '{\"usenme\": \"x\"}', 'cancel', '100 ms'); \
         RESET session_replication_role",
    )
    .unwrap();
    // The worker writes a dump at its next interrupt check, which may fall inside a run: its
    // backend status snapshot (some 350 kB here), a policy's subtransaction, SPI and executor
    // are then counted, and all are gone at the run's end. Only a dump taken between runs
    // measures what stays; ask again until one is.
    const IN_A_RUN: [&str; 4] = [
        "Backend Status Snapshot",
        "CurTransactionContext",
        "SPI Proc",
        "ExecutorState",
    ];
    let measure = |su: &mut Client, runs: i64| -> (i64, i64) {
        wait_for_runs(su, runs);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let before = cluster.memory_dumps_logged(worker).len();
            su.query_one("SELECT pg_log_backend_memory_contexts($1)", &[&worker])
                .unwrap();
            let dump = loop {
                if let Some(dump) = cluster.memory_dumps_logged(worker).get(before) {
                    break dump.clone();
                }
                assert!(Instant::now() < deadline, "no memory context dump");
                std::thread::sleep(Duration::from_millis(20));
            };
            if !IN_A_RUN.iter().any(|c| dump.has_context(c)) {
                return (rss_anon_kb(worker), dump.total);
            }
            assert!(Instant::now() < deadline, "no dump between runs: {dump:?}");
        }
    };
    let early = measure(&mut su, 1_000);
    let late = measure(&mut su, 10_000);
    println!(
        "worker memory: RssAnon {} -> {} kB, contexts {} -> {} bytes",
        early.0, late.0, early.1, late.1
    );
    let cancels = count(
        &mut su,
        "SELECT count(*) FROM reaper.log WHERE application_name = 'mem' AND outcome = 'cancelled'",
    );
    assert!(cancels >= 27_000, "{cancels} cancels audited");
    let failures: i64 = su
        .query_one(
            "SELECT runs FROM reaper.worker_status() WHERE policy = 'm-fails' AND last_error LIKE 'its filter is invalid%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(failures >= 150, "{failures} failed runs");
    assert_eq!(worker_pid(&mut su), Some(worker));
    // The cancels were harmless: once the worker has let go of the policies (a query run while
    // they still fire is cancelled, as it should be), every idle session still answers.
    su.batch_execute("DELETE FROM reaper.policies").unwrap();
    wait_for(&mut su, "SELECT count(*) = 0 FROM reaper.worker_status()");
    for s in &idle {
        assert_eq!(s.run("SELECT 1"), Ended::Ok);
    }
    assert!(
        late.0 - early.0 < 1024,
        "RssAnon grew {} kB",
        late.0 - early.0
    );
    assert!(
        late.1 - early.1 < 256 * 1024,
        "memory contexts grew {} bytes",
        late.1 - early.1
    );
    record_figures(
        "50-worker-memory",
        &format!(
            "## The worker's memory\n\n50 policies with a regex and a lock key, run every 100 ms by the worker, each run \
             cancelling three idle sessions ({cancels} cancels audited), and one policy failing at every run \
             ({failures} failed runs): after 1,000 runs and after 10,000 runs the \
             worker's RssAnon was {} kB and {} kB, its memory contexts {} and {} bytes.\n",
            early.0, late.0, early.1, late.1
        ),
    );
}

/// Waits until the worker's policies have run `runs` times in all.
fn wait_for_runs(su: &mut Client, runs: i64) {
    let deadline = Instant::now() + PATIENCE * 12;
    loop {
        let done: i64 = su
            .query_one(
                "SELECT coalesce(sum(runs), 0)::bigint FROM reaper.worker_status()",
                &[],
            )
            .unwrap()
            .get(0);
        if done >= runs {
            return;
        }
        assert!(Instant::now() < deadline, "only {done} runs");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_ends_even_a_long_run_and_a_cancel_of_the_idle_worker_means_nothing() {
    let cluster = worker_cluster(&[], true);
    cluster.create_role("app", "");
    let postmaster = cluster.postmaster_start();
    let mut su = cluster.superuser();
    let first = running_worker(&mut su);
    // A cancel while it sleeps between cycles: dropped, the same worker goes on.
    su.query_one("SELECT pg_cancel_backend($1)", &[&first])
        .unwrap();
    wait_cycles(&mut su, first, 3);
    assert_eq!(worker_pid(&mut su), Some(first), "a cancel ended no worker");

    // A run that waits ten minutes: the cancel does nothing to an idle-in-transaction
    // session, which goes on matching through the whole grace period.
    let tag = tag("long_run");
    let victim = cluster.session("app", &tag).idle_in_transaction();
    su.batch_execute(&format!(
        "INSERT INTO reaper.policies (name, filter, action, grace_ms, run_every) VALUES \
           ('slow', '{{\"application_name\": \"{tag}\", \"state\": \"idle in transaction\"}}', \
            'cancel_then_terminate', 600000, '1 s')"
    ))
    .unwrap();
    let in_the_run = format!(
        "SELECT state = 'active' AND query = 'pg_reaper worker: running policy slow' \
           FROM pg_stat_activity WHERE pid = {first}"
    );
    wait_for(&mut su, &in_the_run);
    su.query_one("SELECT pg_terminate_backend($1)", &[&first])
        .unwrap();
    assert!(cluster.wait_gone(first), "SIGTERM ended the run at once");
    let second = {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match worker_pid(&mut su) {
                Some(pid) if pid != first => break pid,
                _ => {}
            }
            assert!(Instant::now() < deadline, "the worker never came back");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(cluster.postmaster_start(), postmaster, "no server restart");
    // The run was cut short: its victim lives (looked at from outside: the new worker's run
    // cancels it again, which would cancel a statement run in it now).
    assert!(cluster.alive(victim.pid), "the run was cut short");
    // A fast shutdown in the middle of such a run completes (pg_ctl waits 60 s at most).
    let in_the_run = in_the_run.replace(&first.to_string(), &second.to_string());
    wait_for(&mut su, &in_the_run);
    drop(su);
    cluster.stop_server();
}

#[test]
fn a_repeated_long_failure_is_said_once() {
    // An error message longer than what the status keeps (256 bytes): still recognised as the
    // same failure, so one WARNING and one failed row, however often it repeats.
    let cluster = worker_cluster(&[], true);
    let mut su = cluster.superuser();
    running_worker(&mut su);
    let key = "k".repeat(300);
    su.batch_execute(&format!(
        "SET session_replication_role = replica; \
         INSERT INTO reaper.policies (name, filter, action, run_every) \
           VALUES ('long-error', '{{\"{key}\": 1}}', 'cancel', '100 ms'); \
         RESET session_replication_role"
    ))
    .unwrap();
    wait_for(
        &mut su,
        "SELECT runs >= 10 AND last_error LIKE 'its filter is invalid%' \
           FROM reaper.worker_status() WHERE policy = 'long-error'",
    );
    let warned = count_in_log(
        &cluster,
        r#"WARNING:  pg_reaper: policy "long-error" failed"#,
    );
    assert_eq!(warned, 1, "{}", cluster.server_log());
    let failed = count(
        &mut su,
        "SELECT count(*) FROM reaper.log WHERE policy = 'long-error' AND outcome = 'failed'",
    );
    assert_eq!(failed, 1, "the failure is recorded once");
}

#[test]
fn run_every_is_bounded_and_a_row_past_the_bounds_stops_no_other_policy() {
    let cluster = worker_cluster(&[], true);
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    let worker = running_worker(&mut su);
    let mut refused = vec!["'2 years'", "'50 ms'"];
    if server_major() >= 17 {
        // 17 has infinite intervals.
        refused.push("'infinity'");
    }
    for every in refused {
        let err = su
            .batch_execute(&format!(
                "INSERT INTO reaper.policies (name, filter, run_every) VALUES ('x', '{{\"all\": true}}', {every})"
            ))
            .unwrap_err();
        assert_eq!(sqlstate(&err), Some("22023"), "{every}: {err}");
    }
    // Rows written past the trigger (replication, a disabled trigger): clamped, not fatal.
    let tag = tag("bounds");
    su.batch_execute(&format!(
        "SET session_replication_role = replica; \
         INSERT INTO reaper.policies (name, filter, action, run_every) VALUES \
           ('a-huge', '{{\"usename\": \"nobody\"}}', 'cancel', '300000 years'), \
           ('b-zero', '{{\"usename\": \"nobody\"}}', 'cancel', '0'); \
         RESET session_replication_role; \
         INSERT INTO reaper.policies (name, filter, run_every) VALUES \
           ('c-works', '{{\"application_name\": \"{tag}\", \"state\": \"idle in transaction\"}}', '100 ms')"
    ))
    .unwrap();
    let victim = cluster.session("app", &tag).idle_in_transaction();
    assert!(cluster.wait_gone(victim.pid), "the other policies run");
    wait_for(
        &mut su,
        "SELECT count(*) = 3 FROM reaper.worker_status() \
          WHERE (policy = 'a-huge' AND run_every = interval '366 days' AND runs = 1) \
             OR (policy = 'b-zero' AND run_every = interval '100 ms' AND runs > 1) \
             OR (policy = 'c-works' AND runs > 1)",
    );
    assert_eq!(worker_pid(&mut su), Some(worker));
}

#[test]
fn a_database_that_refuses_connections_is_waited_for_without_a_restart_loop() {
    let cluster = worker_cluster(&[], true);
    let mut su = cluster.superuser();
    running_worker(&mut su);
    for sql in [
        "CREATE DATABASE closed",
        "ALTER DATABASE closed ALLOW_CONNECTIONS false",
        "ALTER SYSTEM SET pg_reaper.database = 'closed'",
        "SELECT pg_reload_conf()",
    ] {
        su.batch_execute(sql).unwrap();
    }
    let waiting = r#"database "closed" (pg_reaper.database) does not allow connections (datallowconn is false); the worker waits"#;
    cluster.wait_for_log(waiting, 1);
    let worker = worker_pid_in_activity(&mut su);
    wait_cycles(&mut su, worker, 3);
    assert_eq!(count_in_log(&cluster, waiting), 1, "no log flood");
    assert_eq!(worker_pid_in_activity(&mut su), worker, "no restart loop");
    assert_eq!(
        count_in_log(&cluster, r#"database "closed" does not exist"#),
        0,
        "no false reason"
    );
    su.batch_execute("ALTER DATABASE closed ALLOW_CONNECTIONS true")
        .unwrap();
    cluster.wait_for_log("is not installed in database \"closed\"", 1);
}

#[test]
fn a_hostile_operator_or_search_path_never_runs_as_the_worker() {
    // CVE-2018-1058: an operator an exact match for the worker's arguments, in a schema on the
    // search path, would win over pg_catalog's. The database's search_path puts it first.
    let cluster = worker_cluster(&["pg_reaper.database = 'trap'"], false);
    cluster.create_role("mallory", "");
    let mut su = cluster.superuser();
    su.batch_execute("CREATE DATABASE trap OWNER mallory")
        .unwrap();
    let mut db = cluster.connect_to("postgres", "trap");
    db.batch_execute("CREATE EXTENSION pg_reaper").unwrap();
    let mut mallory = cluster.connect_to("mallory", "trap");
    mallory
        .batch_execute(
            "CREATE SCHEMA evil; \
             CREATE FUNCTION evil.escalate_f(float8, int4) RETURNS float8 LANGUAGE plpgsql AS \
               $$BEGIN ALTER ROLE mallory SUPERUSER; RETURN 0; END$$; \
             CREATE FUNCTION evil.escalate_i(int4, int4) RETURNS bool LANGUAGE plpgsql AS \
               $$BEGIN ALTER ROLE mallory SUPERUSER; RETURN false; END$$; \
             CREATE FUNCTION evil.escalate_t(text, text) RETURNS bool LANGUAGE plpgsql AS \
               $$BEGIN ALTER ROLE mallory SUPERUSER; RETURN false; END$$; \
             CREATE OPERATOR evil.* (LEFTARG = float8, RIGHTARG = int4, FUNCTION = evil.escalate_f); \
             CREATE OPERATOR evil.= (LEFTARG = int4, RIGHTARG = int4, FUNCTION = evil.escalate_i); \
             CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.escalate_t); \
             ALTER DATABASE trap SET search_path = evil, public",
        )
        .unwrap();
    drop(mallory);
    // This test's own queries must not trip the trap either: pg_catalog only.
    db.batch_execute("SET search_path = pg_catalog").unwrap();
    // A new connection takes the database's search_path: the worker's restart after a
    // terminate, here; then a policy it schedules and runs many times.
    let first = running_worker(&mut db);
    db.query_one("SELECT pg_terminate_backend($1)", &[&first])
        .unwrap();
    assert!(cluster.wait_gone(first));
    db.batch_execute("INSERT INTO reaper.policies (name, filter, action, run_every) VALUES ('p', '{\"usename\": \"nobody\"}', 'cancel', '100 ms')")
        .unwrap();
    wait_for(
        &mut db,
        "SELECT runs >= 10 AND last_error IS NULL FROM reaper.worker_status() WHERE policy = 'p'",
    );
    assert_ne!(worker_pid(&mut db), Some(first));
    let escalated: bool = su
        .query_one(
            "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'mallory'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!escalated, "mallory's operator ran as the worker");
}

#[test]
fn a_lock_held_on_the_policies_cannot_stop_the_worker() {
    // The session holding the lock is the very one an idle-in-transaction policy ends.
    let cluster = worker_cluster(&[], true);
    let mut su = cluster.superuser();
    running_worker(&mut su);
    let tag = tag("locker");
    // The locker is a superuser session (reaper.policies is not PUBLIC's): the policy says so.
    su.batch_execute(&format!(
        "INSERT INTO reaper.policies (name, filter, run_every) VALUES \
           ('idle-tx', '{{\"application_name\": \"{tag}\", \"state\": \"idle in transaction\", \
                          \"include_superusers\": true}}', '100 ms')"
    ))
    .unwrap();
    wait_for(
        &mut su,
        "SELECT runs > 0 FROM reaper.worker_status() WHERE policy = 'idle-tx'",
    );
    let locker = cluster.session("postgres", &tag);
    assert_eq!(
        locker.run("BEGIN; LOCK TABLE reaper.policies IN ACCESS EXCLUSIVE MODE"),
        Ended::Ok
    );
    assert!(cluster.wait_gone(locker.pid), "the worker ended the locker");
}

#[test]
fn function_privileges_and_run_policies_says_when_no_worker_runs_the_scheduled() {
    // No preload: no worker.
    let cluster = Cluster::start();
    cluster.create_role("plain", "");
    cluster.create_role("monitor", "IN ROLE pg_monitor");
    let mut su = cluster.superuser();
    su.batch_execute(
        "INSERT INTO reaper.policies (name, filter, action, run_every) VALUES \
           ('every-second', '{\"usename\": \"nobody\"}', 'cancel', '1 s')",
    )
    .unwrap();
    let (mut client, notices) = cluster.collecting_client("postgres");
    client
        .batch_execute("SELECT * FROM reaper.run_policies()")
        .unwrap();
    assert_eq!(
        notices.lock().unwrap().clone(),
        vec![
            "NOTICE 00000: pg_reaper: 1 enabled policy with a run_every (every-second) runs only in the background worker, and none runs them here: pg_reaper is not in shared_preload_libraries; reaper.run_policy(name) runs one"
                .to_string()
        ]
    );
    // The status names policies and their errors: for monitoring roles, not PUBLIC.
    let mut plain = cluster.connect_as("plain", "plain");
    let err = plain
        .batch_execute("SELECT * FROM reaper.worker_status()")
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    let err = plain
        .batch_execute("SELECT * FROM reaper.worker()")
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    let mut monitor = cluster.connect_as("monitor", "monitor");
    let state: String = monitor
        .query_one("SELECT state FROM reaper.worker()", &[])
        .unwrap()
        .get(0);
    assert_eq!(state, "not loaded");
    monitor
        .batch_execute("SELECT * FROM reaper.worker_status()")
        .unwrap();
}

#[test]
fn a_run_holds_no_snapshot_while_it_waits_on_a_primary_and_on_a_standby() {
    // A grace period of 4 s: throughout it, the worker holds no xmin (it would hold back vacuum,
    // and through hot_standby_feedback the primary's) and no transaction id.
    let primary = worker_cluster(&[], true);
    primary.create_role("app", "");
    let mut p = primary.superuser();
    p.batch_execute(
        "INSERT INTO reaper.policies (name, filter, action, grace_ms, timeout_ms, run_every, run_on) VALUES \
           ('grace-p', '{\"application_name\": \"xmin_p\", \"state\": \"idle in transaction\"}', \
            'cancel_then_terminate', 4000, 2000, '1 second', 'primary'), \
           ('grace-s', '{\"application_name\": \"xmin_s\", \"state\": \"idle in transaction\"}', \
            'cancel_then_terminate', 4000, 2000, '1 second', 'standby')",
    )
    .unwrap();
    let standby = Cluster::standby_of(
        &primary,
        Options {
            settings: vec![
                "shared_preload_libraries = 'pg_reaper'".into(),
                "hot_standby_feedback = on".into(),
            ],
            ..Options::default()
        },
    );
    for (cluster, tag, policy) in [
        (&primary, "xmin_p", "grace-p"),
        (&standby, "xmin_s", "grace-s"),
    ] {
        let mut su = cluster.superuser();
        let worker = running_worker(&mut su);
        let victim = cluster.session("app", tag).idle_in_transaction();
        let running = format!("pg_reaper worker: running policy {policy}");
        wait_until_with(&mut su, worker, &format!("a.query = '{running}'"));
        // Its grace period has begun once the cancel is logged (what the run read before it,
        // with a catalog snapshot, is behind it).
        cluster.wait_for_log(&format!("pg_reaper: cancel pid={} ", victim.pid), 1);
        let mut samples = 0;
        loop {
            su.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
            let row = su
                .query_one(
                    "SELECT a.backend_xmin::text, a.backend_xid::text, a.query, \
                            EXISTS (SELECT 1 FROM pg_stat_activity v WHERE v.pid = $2) \
                       FROM pg_stat_activity a WHERE a.pid = $1",
                    &[&worker, &victim.pid],
                )
                .unwrap();
            let (xmin, xid, query, victim_there): (Option<String>, Option<String>, String, bool) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            if !victim_there {
                break;
            }
            if query == running {
                assert_eq!(
                    xmin, None,
                    "{policy}: the worker holds an xmin in its grace period"
                );
                assert_eq!(
                    xid, None,
                    "{policy}: the worker has a transaction id while it waits"
                );
                samples += 1;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            samples >= 10,
            "{policy}: {samples} looks inside the grace period"
        );
    }
    // The runs were whole: the primary's victim has its audit row.
    wait_for(
        &mut p,
        "SELECT count(*) = 1 FROM reaper.log WHERE policy = 'grace-p' AND outcome = 'terminated' \
            AND waited_ms >= 4000",
    );
}

#[test]
fn an_extension_newer_than_the_loaded_library_waits_for_a_restart() {
    // As after ALTER EXTENSION UPDATE with new files installed but the old library still loaded
    // (the update scripts refuse that; a hand-made catalog does not).
    let cluster = worker_cluster(&[], true);
    let mut su = cluster.superuser();
    running_worker(&mut su);
    su.batch_execute("UPDATE pg_extension SET extversion = '99.0.0' WHERE extname = 'pg_reaper'")
        .unwrap();
    cluster.wait_for_log("is version 99.0.0, newer than the library", 1);
    let log = cluster.server_log();
    assert!(
        log.contains("the worker waits for a server restart, which loads the new library"),
        "{log}"
    );
    assert!(
        !log.contains("99.0.0, the library"),
        "not told to update: {log}"
    );
}
