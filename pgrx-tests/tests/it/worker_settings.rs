//! The worker's settings are its own: whatever postgresql.conf, `ALTER DATABASE` or `ALTER ROLE`
//! say about timeouts, the role, commit waits, triggers, errors and defaults, a run does what
//! its policy says, as long as its policy says, and the worker survives it. Each pinned setting
//! is set to a hostile value both ways; the worker's own report of its settings (a test-build
//! LOG line) shows every one pinned, and a real run shows the consequences: a grace period
//! longer than every timeout, an audit row committed without a standby, a trigger on reaper.log
//! that fires, a failing policy that costs only its run.

use super::worker::{running_worker, wait_cycles, worker_cluster, worker_pid};
use pg_reaper_integration::*;

/// What every pinned setting must read in the worker, as its LOG line shows them.
fn pinned() -> Vec<&'static str> {
    let mut values = vec![
        "search_path=pg_catalog, pg_temp",
        "default_transaction_read_only=off",
        "default_transaction_isolation=read committed",
        "default_transaction_deferrable=off",
        "statement_timeout=0",
        "idle_in_transaction_session_timeout=0",
        "lock_timeout=500",
        "synchronous_commit=local",
        "session_replication_role=origin",
        "exit_on_error=off",
        "role=none",
        "current_user=postgres",
        "session_user=postgres",
    ];
    if server_major() >= 17 {
        values.push("transaction_timeout=0");
    }
    values
}

/// The hostile values, as `name = value` pairs (those a configuration file may hold).
fn hostile() -> Vec<(&'static str, &'static str)> {
    let mut settings = vec![
        ("search_path", "'public'"),
        ("default_transaction_read_only", "on"),
        ("default_transaction_isolation", "'serializable'"),
        ("default_transaction_deferrable", "on"),
        ("statement_timeout", "'1s'"),
        ("idle_in_transaction_session_timeout", "'1s'"),
        ("lock_timeout", "'1ms'"),
        // No standby will ever confirm: a commit that waits for one waits forever.
        ("synchronous_commit", "'remote_apply'"),
        ("session_replication_role", "'replica'"),
        ("exit_on_error", "on"),
    ];
    if server_major() >= 17 {
        settings.push(("transaction_timeout", "'1s'"));
    }
    settings
}

/// Sets every hostile setting back to a sane value in this session only (a session's own SET
/// wins over every default), so that the test's own connections work.
fn immune(c: &mut Client) {
    let mut sql = String::from("SET role = none; ");
    for (name, _) in hostile() {
        let sane = match name {
            "search_path" => "'\"$user\", public'",
            "default_transaction_isolation" => "'read committed'",
            "synchronous_commit" => "'local'",
            "session_replication_role" => "'origin'",
            "default_transaction_read_only"
            | "default_transaction_deferrable"
            | "exit_on_error" => "off",
            _ => "0",
        };
        sql.push_str(&format!("SET {name} = {sane}; "));
    }
    c.batch_execute(&sql).unwrap();
}

/// Roles, a table the trigger copies audit rows into, the trigger (whose own `SET search_path`
/// clause must apply inside it, as in any session), and the policies: one that gives its victim
/// a grace period longer than every timeout, one whose owner is gone.
fn prepare(cluster: &Cluster, su: &mut Client, tag: &str) {
    cluster.create_role("app", "");
    cluster.create_role("gone", "");
    su.batch_execute(&format!(
        "CREATE TABLE public.audit_copy (pid int, outcome text);
         CREATE FUNCTION public.copy_audit() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS
           $$ BEGIN INSERT INTO audit_copy VALUES (NEW.pid, NEW.outcome); RETURN NEW; END $$;
         CREATE TRIGGER copy_audit AFTER INSERT ON reaper.log
           FOR EACH ROW EXECUTE FUNCTION public.copy_audit();
         INSERT INTO reaper.policies (name, filter, action, grace_ms, timeout_ms, run_every) VALUES
           ('slow', '{{\"application_name\": \"{tag}\", \"state\": \"idle in transaction\"}}',
            'cancel_then_terminate', 2500, 2000, '1 second');
         INSERT INTO reaper.policies (name, filter, action, owner, run_every) VALUES
           ('orphan', '{{\"usename\": \"nobody\"}}', 'cancel', 'gone', '1 second');
         DROP ROLE gone;"
    ))
    .unwrap();
}

/// Restarts the worker so that it connects anew (and reads the settings now in force), and
/// checks what it logged of them.
fn restarted_worker_pins_everything(cluster: &Cluster, su: &mut Client) -> i32 {
    let old = running_worker(su);
    let before = cluster
        .server_log()
        .matches("pg_reaper worker settings:")
        .count();
    su.query_one("SELECT pg_terminate_backend($1)", &[&old])
        .unwrap();
    cluster.wait_for_log("pg_reaper worker settings:", before + 1);
    let worker = running_worker(su);
    assert_ne!(worker, old, "a new worker");
    let log = cluster.server_log();
    let line = log
        .lines()
        .rfind(|l| l.contains("pg_reaper worker settings:"))
        .unwrap();
    for value in pinned() {
        assert!(line.contains(value), "{value} not pinned: {line}");
    }
    worker
}

/// A real run under those settings: its victim gets the whole grace period and is terminated,
/// its audit row is committed (and copied by the trigger), the failing policy fails alone, and
/// the worker is the same process throughout.
fn a_run_does_what_its_policy_says(cluster: &Cluster, su: &mut Client, worker: i32, tag: &str) {
    let victim = cluster.session("app", tag);
    let mut setup = String::from("SET idle_in_transaction_session_timeout = 0; ");
    if server_major() >= 17 {
        setup.push_str("SET transaction_timeout = 0; ");
    }
    setup.push_str("SET default_transaction_read_only = off; BEGIN; SELECT 1");
    assert_eq!(victim.run(&setup), Ended::Ok);
    assert!(cluster.wait_gone(victim.pid), "the worker terminated it");
    wait_for(
        su,
        &format!(
            "SELECT count(*) = 1 FROM reaper.log WHERE pid = {} AND policy = 'slow' \
               AND outcome = 'terminated' AND waited_ms >= 2500",
            victim.pid
        ),
    );
    assert_eq!(
        count(
            su,
            &format!(
                "SELECT count(*) FROM public.audit_copy WHERE pid = {} AND outcome = 'terminated'",
                victim.pid
            )
        ),
        1,
        "the trigger on reaper.log fired in the worker"
    );
    wait_for(
        su,
        "SELECT last_error LIKE '%does not exist on this node%' FROM reaper.worker_status() WHERE policy = 'orphan'",
    );
    wait_cycles(su, worker, 2);
    assert_eq!(worker_pid(su), Some(worker), "the same worker throughout");
    // Only the restart the test asked for: no timeout or error ended the worker.
    let log = cluster.server_log();
    assert_eq!(
        log.matches("background worker \"pg_reaper worker\" (PID")
            .count(),
        1,
        "{log}"
    );
}

#[test]
fn the_worker_runs_with_its_own_settings_whatever_the_configuration_file_says() {
    let cluster = worker_cluster(&["pg_reaper.log_worker_settings = on"], true);
    let mut su = cluster.superuser();
    let tag = tag("conf_settings");
    prepare(&cluster, &mut su, &tag);
    // Into postgresql.conf itself, once the setup is done (the test's own sessions then
    // override them, each for itself).
    let mut conf = String::from("\nsynchronous_standby_names = 'nowhere'\n");
    for (name, value) in hostile() {
        conf.push_str(&format!("{name} = {value}\n"));
    }
    let path = cluster.data_dir().join("postgresql.conf");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&conf);
    std::fs::write(&path, text).unwrap();
    su.batch_execute("SELECT pg_reload_conf()").unwrap();
    immune(&mut su);
    let worker = restarted_worker_pins_everything(&cluster, &mut su);
    a_run_does_what_its_policy_says(&cluster, &mut su, worker, &tag);
}

#[test]
fn the_worker_runs_with_its_own_settings_whatever_alter_database_and_alter_role_say() {
    let cluster = worker_cluster(
        &[
            "pg_reaper.log_worker_settings = on",
            "synchronous_standby_names = 'nowhere'",
            "synchronous_commit = local",
        ],
        true,
    );
    let mut su = cluster.superuser();
    let tag = tag("db_settings");
    prepare(&cluster, &mut su, &tag);
    let mut sql = String::from(
        "ALTER DATABASE postgres SET role = app; \
         ALTER ROLE postgres IN DATABASE postgres SET session_authorization = app; ",
    );
    for (name, value) in hostile() {
        sql.push_str(&format!("ALTER DATABASE postgres SET {name} = {value}; "));
    }
    su.batch_execute(&sql).unwrap();
    immune(&mut su);
    let worker = restarted_worker_pins_everything(&cluster, &mut su);
    a_run_does_what_its_policy_says(&cluster, &mut su, worker, &tag);
}

#[test]
fn what_a_run_calls_does_not_change_the_next_run_nor_does_renaming_the_superuser() {
    // A trigger on reaper.log sets default_transaction_read_only for the session (as a careless
    // audit forwarder might): the next run still starts read-write. The bootstrap superuser,
    // which the worker connects as, is renamed, with a database default role the worker must
    // leave: it goes on enforcing.
    let cluster = worker_cluster(&[], true);
    cluster.create_role("app", "");
    cluster.create_role("admin", "SUPERUSER");
    let mut su = cluster.connect("admin");
    let tag = tag("next_run");
    su.batch_execute(&format!(
        "CREATE FUNCTION public.make_read_only() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_catalog.set_config('default_transaction_read_only', 'on', false); RETURN NEW; END $$;
         CREATE TRIGGER make_read_only AFTER INSERT ON reaper.log
           FOR EACH ROW EXECUTE FUNCTION public.make_read_only();
         INSERT INTO reaper.policies (name, filter, run_every) VALUES
           ('idle-tx', '{{\"application_name\": \"{tag}\", \"state\": \"idle in transaction\"}}', '200 ms')"
    ))
    .unwrap();
    let worker = running_worker(&mut su);
    // (Waited for on the admin's connection: once the bootstrap superuser is renamed, the
    // harness's own connections as postgres are refused.)
    let terminated = |su: &mut Client| {
        let victim = cluster.session("app", &tag).idle_in_transaction();
        wait_for(
            su,
            &format!(
                "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = {}",
                victim.pid
            ),
        );
        wait_for(
            su,
            &format!(
                "SELECT count(*) = 1 FROM reaper.log WHERE pid = {} AND outcome = 'signalled'",
                victim.pid
            ),
        );
    };
    terminated(&mut su);
    terminated(&mut su);
    su.batch_execute(
        "ALTER ROLE postgres RENAME TO bootstrap; ALTER DATABASE postgres SET role = app",
    )
    .unwrap();
    su.query_one("SELECT pg_terminate_backend($1)", &[&worker])
        .unwrap();
    // Until the old worker has exited, reaper.worker() may still name it.
    wait_for(
        &mut su,
        &format!("SELECT pid IS DISTINCT FROM {worker} FROM reaper.worker()"),
    );
    let restarted = running_worker(&mut su);
    assert_ne!(restarted, worker);
    terminated(&mut su);
    wait_cycles(&mut su, restarted, 2);
    assert_eq!(worker_pid(&mut su), Some(restarted));
    let failures = count(
        &mut su,
        "SELECT count(*) FROM reaper.log WHERE outcome = 'failed'",
    );
    assert_eq!(failures, 0);
}
