//! Protected tools and roles: sessions of `pg_reaper.protected_applications` (pg_dump and the
//! other maintenance programs by default) and `pg_reaper.protected_roles` are never victims
//! unless a filter says `"include_protected": true`; a preview says how many it left. A real
//! pg_dump of a large table survives `{"all": true}` with terminate and completes.

use pg_reaper_integration::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A real pg_dump of table `big` as `dumper`, data only, into `out`.
fn start_pg_dump(cluster: &Cluster, out: &PathBuf) -> Child {
    Command::new(PathBuf::from(pg_config_value("bindir")).join("pg_dump"))
        .args(["-h", "127.0.0.1", "-p", &cluster.port.to_string()])
        .args(["-U", "dumper", "-d", "postgres", "-t", "big", "--data-only"])
        .arg("-f")
        .arg(out)
        .env_remove("PGAPPNAME")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pg_dump")
}

/// pg_dump's pid once it waits for its lock on `big`.
fn pg_dump_waiting(me: &mut Client) -> i32 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        me.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
        let pid: Option<i32> = me
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_dump' \
                    AND wait_event_type = 'Lock'",
                &[],
            )
            .unwrap()
            .map(|r| r.get(0));
        if let Some(pid) = pid {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "pg_dump never waited for its lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit, a few minutes at most.
fn finish(mut child: Child) -> (bool, String) {
    let deadline = Instant::now() + PATIENCE * 8;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.success(), err);
        }
        assert!(Instant::now() < deadline, "pg_dump never finished");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_real_pg_dump_survives_all_true_with_terminate_and_completes() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    cluster.create_role("dumper", "");
    let table_rows: i64 = 1_000_000;
    let mut su = cluster.superuser();
    su.batch_execute(&format!(
        "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS t FROM generate_series(1, {table_rows}) g; \
         GRANT SELECT ON big TO dumper; GRANT ALL ON big TO app"
    ))
    .unwrap();
    let out = PathBuf::from(format!("/tmp/pg_reaper_dump_{}.sql", std::process::id()));
    let holder = cluster.session("app", "holder");
    assert_eq!(
        holder.run("BEGIN; LOCK TABLE big IN ACCESS EXCLUSIVE MODE"),
        Ended::Ok
    );
    // pg_dump has started and waits for the table: it is in the middle of its dump.
    let dump = start_pg_dump(&cluster, &out);
    let dump_pid = pg_dump_waiting(&mut su);
    let bystander = cluster.session("app", "psql");

    // {"all": true}: every client backend but superusers', the caller and pg_dump.
    let (mut me, notices) = cluster.collecting_client("postgres");
    let previewed = preview(&mut me, r#"{"all": true}"#);
    assert!(!pids(&previewed).contains(&dump_pid));
    assert_eq!(
        notices.lock().unwrap().clone(),
        vec!["NOTICE 00000: pg_reaper: 1 protected session(s) matched and were left alone (pg_reaper.protected_applications, pg_reaper.protected_roles); \"include_protected\": true selects them".to_string()]
    );
    let rows = terminate(&mut me, r#"{"all": true}"#, 5000);
    assert_eq!(sorted(pids(&rows)), sorted(vec![holder.pid, bystander.pid]));
    assert!(rows.iter().all(|r| r.outcome == "terminated"), "{rows:?}");

    // The holder's lock went with it: the dump runs to its end, every row in it.
    let (ok, err) = finish(dump);
    assert!(ok, "pg_dump failed: {err}");
    let text = std::fs::read_to_string(&out).unwrap();
    let copied = text
        .lines()
        .skip_while(|l| !l.starts_with("COPY public.big"))
        .skip(1)
        .take_while(|l| *l != "\\.")
        .count();
    assert_eq!(copied as i64, table_rows, "every row dumped");
    let _ = std::fs::remove_file(&out);

    // The same dump, with a filter that includes protected sessions on purpose: it dies.
    let holder = cluster.session("app", "holder");
    assert_eq!(
        holder.run("BEGIN; LOCK TABLE big IN ACCESS EXCLUSIVE MODE"),
        Ended::Ok
    );
    let dump = start_pg_dump(&cluster, &out);
    let dump_pid = pg_dump_waiting(&mut su);
    let rows = terminate(
        &mut me,
        r#"{"application_name": "pg_dump", "include_protected": true}"#,
        5000,
    );
    assert_eq!(pids(&rows), vec![dump_pid]);
    let (ok, err) = finish(dump);
    assert!(!ok, "pg_dump was terminated: {err}");
    assert!(err.contains("terminating connection"), "{err}");
    let _ = std::fs::remove_file(&out);
    drop(holder);
}

#[test]
fn protected_roles_and_who_may_change_the_lists() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    cluster.create_role("backup", "");
    cluster.create_role("ops", "IN ROLE pg_signal_backend");
    let tag = tag("protected");
    let app = cluster.session("app", &tag);
    let backup = cluster.session("backup", &tag);
    let restore = cluster.session("app", "pg_restore");
    let mut me = cluster.superuser();
    let filter = format!(r#"{{"application_name": ["{tag}", "pg_restore"]}}"#);
    // Defaults: the maintenance programs, no role.
    assert_eq!(
        sorted(pids(&preview(&mut me, &filter))),
        sorted(vec![app.pid, backup.pid])
    );
    me.batch_execute("SET pg_reaper.protected_roles = 'backup, \"Someone Else\"'")
        .unwrap();
    assert_eq!(pids(&preview(&mut me, &filter)), vec![app.pid]);
    let with = filter.replace('}', r#", "include_protected": true}"#);
    assert_eq!(
        sorted(pids(&preview(&mut me, &with))),
        sorted(vec![app.pid, backup.pid, restore.pid])
    );
    // An empty list protects nothing.
    me.batch_execute("SET pg_reaper.protected_applications = ''; RESET pg_reaper.protected_roles")
        .unwrap();
    assert_eq!(
        sorted(pids(&preview(&mut me, &filter))),
        sorted(vec![app.pid, backup.pid, restore.pid])
    );
    // Only a superuser may change them: a role that signals cannot unprotect a backup.
    let mut ops = cluster.connect_as("ops", "ops");
    ops.batch_execute("SELECT reaper.validate_filter('{\"all\": true}')")
        .unwrap();
    for sql in [
        "SET pg_reaper.protected_applications = ''",
        "SET pg_reaper.protected_roles = ''",
    ] {
        let err = ops.batch_execute(sql).unwrap_err();
        assert_eq!(sqlstate(&err), Some("42501"), "{sql}: {err}");
    }
    let shown: String = ops
        .query_one("SHOW pg_reaper.protected_applications", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        shown,
        "pg_dump, pg_dumpall, pg_restore, pg_basebackup, vacuumdb, reindexdb, clusterdb, pg_repack, pg_upgrade"
    );
    // And the role's own terminate leaves the protected session.
    let rows = terminate(&mut ops, &filter, 5000);
    assert_eq!(sorted(pids(&rows)), sorted(vec![app.pid, backup.pid]));
    assert_eq!(restore.run("SELECT 1"), Ended::Ok);
}

#[test]
fn a_list_emptied_before_the_library_is_loaded_is_refused_when_it_loads() {
    // Before pg_reaper's library is loaded in a session, PostgreSQL accepts any value for its
    // settings as a placeholder, from anyone; on load the library's SUSET lists refuse the
    // placeholder of a role that is not a superuser (a WARNING), so the defaults still protect.
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    cluster.create_role("ops", "IN ROLE pg_signal_backend");
    let tag = tag("early_unprotect");
    let dump = cluster.session("app", "pg_dump");
    let filter = format!(r#"{{"application_name": ["{tag}", "pg_dump"]}}"#);

    let (mut set_early, notices) = cluster.collecting_client("ops");
    set_early
        .batch_execute("SET pg_reaper.protected_applications = ''")
        .unwrap();
    let victim = cluster.session("app", &tag);
    let rows = terminate(&mut set_early, &filter, 5000);
    assert_eq!(pids(&rows), vec![victim.pid], "{rows:?}");
    let warned = notices.lock().unwrap().clone();
    assert!(
        warned
            .iter()
            .any(|n| n.starts_with("WARNING 42501:")
                && n.contains("pg_reaper.protected_applications")),
        "{warned:?}"
    );

    let mut config = postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(cluster.port)
        .user("ops")
        .dbname("postgres")
        .application_name("ops")
        .options("-c pg_reaper.protected_applications=");
    let mut at_startup = config
        .connect(postgres::NoTls)
        .expect("connect with options");
    let victim = cluster.session("app", &tag);
    let rows = terminate(&mut at_startup, &filter, 5000);
    assert_eq!(pids(&rows), vec![victim.pid], "{rows:?}");
    assert_eq!(dump.run("SELECT 1"), Ended::Ok);
}
