//! The background worker (`shared_preload_libraries = 'pg_reaper'`): policies with a
//! `run_every` enforced without any call, the table followed within a second, its status from
//! shared memory, never a victim itself, and its faults: a failing or panicking policy, a missing
//! extension or database, SIGTERM — none of which takes the server down.

use pg_reaper_integration::*;
use std::time::{Duration, Instant};

/// A cluster whose postmaster loads pg_reaper, so that it starts the worker.
fn worker_cluster(extra: &[&str], create_extension: bool) -> Cluster {
    let mut settings = vec!["shared_preload_libraries = 'pg_reaper'".to_string()];
    settings.extend(extra.iter().map(|s| s.to_string()));
    Cluster::start_with(Options {
        settings,
        create_extension,
        ..Options::default()
    })
}

/// Waits until `sql` (a boolean query) is true, PATIENCE at most (the worker follows changes
/// within a second; the rest is slack for a loaded machine).
fn wait_for(client: &mut Client, sql: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        client
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .unwrap();
        let done: Option<bool> = client
            .query_opt(sql, &[])
            .unwrap()
            .and_then(|row| row.get(0));
        if done == Some(true) {
            return;
        }
        assert!(Instant::now() < deadline, "never true: {sql}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn worker_pid(client: &mut Client) -> Option<i32> {
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
fn running_worker(client: &mut Client) -> i32 {
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

    // The records: an audit row with the worker as the caller, the LOG line, the status.
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
    wait_for(
        &mut su,
        "SELECT runs > 0 AND signalled = 1 AND last_error IS NULL AND run_on = 'any' \
            AND run_every = interval '200 ms' AND next_run_at IS NOT NULL \
           FROM reaper.worker_status() WHERE policy = 'idle-tx'",
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
        "SELECT last_error LIKE 'its owner (role oid % no longer exists' AND runs > 3 \
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
    let deadline = Instant::now() + PATIENCE;
    while count_in_log(&cluster, waiting) == 0 {
        assert!(Instant::now() < deadline, "{}", cluster.server_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Three more cycles, and still the one line.
    let worker = worker_pid_in_activity(&mut su);
    wait_cycles(&mut su, worker, 3);
    assert_eq!(count_in_log(&cluster, waiting), 1, "no log flood");
    su.batch_execute("CREATE EXTENSION pg_reaper").unwrap();
    assert_eq!(worker_state(&mut su), "waiting for the extension");
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
    let deadline = Instant::now() + PATIENCE;
    while count_in_log(&cluster, waiting) < 2 {
        assert!(Instant::now() < deadline, "{}", cluster.server_log());
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let waiting =
        r#"database "reaper_db" (pg_reaper.database) does not exist; the worker waits for it"#;
    let deadline = Instant::now() + PATIENCE;
    while count_in_log(&cluster, waiting) == 0 {
        assert!(Instant::now() < deadline, "{}", cluster.server_log());
        std::thread::sleep(Duration::from_millis(50));
    }
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
fn wait_cycles(su: &mut Client, worker: i32, n: u64) {
    let target = worker_cycle(su, worker) + n;
    let deadline = Instant::now() + PATIENCE;
    while worker_cycle(su, worker) < target {
        assert!(Instant::now() < deadline, "the worker stopped cycling");
        std::thread::sleep(Duration::from_millis(50));
    }
}
