//! The soak: pgbench load, 20 reconnecting targets, 10 idle keepers, and terminate_matching on
//! the targets every 100 ms. Nothing but the targets dies, nothing crashes, memory stays flat.
//! `PG_REAPER_SOAK_SECS` sets the length (`make test`: 15 s; `make soak`: 60 s).

use pg_reaper_integration::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TARGETS: usize = 20;
const KEEPERS: usize = 10;
const BENCH_CLIENTS: u32 = 16;
const MEMORY_CALLS: usize = 10_000;
/// Idle sessions the memory loop cancels on every other call (a cancel leaves them alone).
const CANCELLED: usize = 5;

/// The caller backend's private memory: RssAnon from /proc (shared buffers excluded), and the
/// total of its memory contexts.
fn memory(caller: &mut Client, pid: i32) -> (i64, i64) {
    let contexts = count(
        caller,
        "SELECT sum(total_bytes)::bigint FROM pg_backend_memory_contexts",
    );
    (rss_anon_kb(pid), contexts)
}

fn pgbench(cluster: &Cluster, args: &[&str]) -> std::process::Child {
    Command::new("/usr/lib/postgresql/15/bin/pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "bench",
        ])
        .args(args)
        .arg("postgres")
        .env("PGAPPNAME", "pgbench")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("pgbench")
}

#[test]
fn soak_under_load() {
    let secs: u64 = std::env::var("PG_REAPER_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let cluster = Cluster::start_with(Options {
        max_connections: 200,
        ..Options::default()
    });
    cluster.create_role("app", "");
    cluster.create_role("bench", "");
    cluster
        .superuser()
        .batch_execute("GRANT CREATE ON SCHEMA public TO bench")
        .unwrap();
    let init = pgbench(&cluster, &["-i", "-s", "2", "-q"])
        .wait_with_output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let postmaster_start = cluster.postmaster_start();

    let keepers: Vec<Session> = (0..KEEPERS)
        .map(|_| cluster.session("app", "soak_keeper"))
        .collect();
    let cancelled: Vec<Session> = (0..CANCELLED)
        .map(|_| cluster.session("app", "soak_cancelled"))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let reconnects = Arc::new(AtomicU64::new(0));
    let targets: Vec<_> = (0..TARGETS)
        .map(|_| {
            let (stop, reconnects) = (stop.clone(), reconnects.clone());
            let port = cluster.port;
            std::thread::spawn(move || {
                let connect = || {
                    let mut config = postgres::Config::new();
                    config
                        .host("127.0.0.1")
                        .port(port)
                        .user("app")
                        .dbname("postgres")
                        .application_name("soak_target");
                    config.connect(NoTls)
                };
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut c) = connect() else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    while !stop.load(Ordering::Relaxed)
                        && c.batch_execute("SELECT pg_sleep(0.01)").is_ok()
                    {}
                    reconnects.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let bench = pgbench(
        &cluster,
        &[
            "-c",
            &BENCH_CLIENTS.to_string(),
            "-j",
            "2",
            "-T",
            &secs.to_string(),
            "-n",
        ],
    );

    let mut caller = cluster.superuser();
    let caller_pid: i32 = caller
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let filter = r#"{"application_name": "soak_target"}"#;
    terminate(&mut caller, filter, 1000); // warm up before measuring
    let before = memory(&mut caller, caller_pid);
    let (mut calls, mut rows_seen, mut terminated) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        let rows = terminate(&mut caller, filter, 1000);
        calls += 1;
        for row in &rows {
            assert_eq!(
                row.application_name.as_deref(),
                Some("soak_target"),
                "{row:?}"
            );
            assert_eq!(row.usename.as_deref(), Some("app"), "{row:?}");
            assert!(
                ["terminated", "vanished", "timed_out"].contains(&row.outcome.as_str()),
                "{row:?}"
            );
            terminated += u64::from(row.outcome == "terminated");
        }
        rows_seen += rows.len() as u64;
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let bench = bench.wait_with_output().unwrap();
    for t in targets {
        t.join().unwrap();
    }
    // Then many calls back to back, each doing the work: a preview of the idle sessions, then
    // a cancel of each of them (delivered, with its subtransaction, LOG line and audit row),
    // to see whether memory creeps.
    let idle = r#"{"application_name": "soak_cancelled"}"#;
    for i in 0..MEMORY_CALLS {
        if i % 2 == 0 {
            assert_eq!(preview(&mut caller, idle).len(), CANCELLED);
        } else {
            let rows = cancel(&mut caller, idle);
            assert_eq!(rows.len(), CANCELLED);
            assert!(rows.iter().all(|r| r.outcome == "cancelled"), "{rows:?}");
        }
    }
    let after = memory(&mut caller, caller_pid);
    for s in &cancelled {
        assert_eq!(
            s.run("SELECT 1"),
            Ended::Ok,
            "a cancelled idle session lives"
        );
    }

    let bench_out = format!(
        "{}{}",
        String::from_utf8_lossy(&bench.stdout),
        String::from_utf8_lossy(&bench.stderr)
    );
    assert!(bench.status.success(), "pgbench failed:\n{bench_out}");
    for sign in [
        "aborted",
        "terminat",
        "connection to server",
        "server closed the connection",
        "FATAL",
    ] {
        assert!(
            !bench_out.contains(sign),
            "a pgbench client was killed ({sign}):\n{bench_out}"
        );
    }
    let tps = bench_out
        .lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or("tps = ?")
        .to_string();
    for k in &keepers {
        assert_eq!(k.run("SELECT 1"), Ended::Ok, "keeper {} was killed", k.pid);
    }
    // The same keeper backends, all there, and no other soak_keeper (none reconnected).
    let mut keeper_pids: Vec<i32> = caller
        .query(
            "SELECT pid FROM pg_catalog.pg_stat_activity WHERE application_name = 'soak_keeper'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    keeper_pids.sort();
    assert_eq!(keeper_pids, sorted(keepers.iter().map(|k| k.pid).collect()));
    assert_eq!(
        cluster.postmaster_start(),
        postmaster_start,
        "the postmaster restarted"
    );
    let log = cluster.server_log();
    assert!(!log.contains("terminated by signal"), "a backend crashed");
    assert!(!log.contains("was terminated by"), "a backend crashed");
    assert!(!log.contains("server process (PID"), "a backend crashed");
    // Every backend pg_reaper terminated was a target, and every one it cancelled one of the
    // idle sessions of the memory loop: their own log lines say so.
    let signalled: Vec<&str> = log.lines().filter(|l| l.contains("pg_reaper: ")).collect();
    assert!(!signalled.is_empty());
    for line in &signalled {
        let target =
            line.contains("pg_reaper: terminate ") && line.contains(r#"application="soak_target""#);
        let idle =
            line.contains("pg_reaper: cancel ") && line.contains(r#"application="soak_cancelled""#);
        assert!(
            line.contains(r#"user="app""#) && (target || idle),
            "pg_reaper signalled something else: {line}"
        );
    }
    assert!(terminated > 0 && calls > 0);
    let growth_kb = after.0 - before.0;
    let context_growth = after.1 - before.1;
    assert!(growth_kb < 2048, "caller RssAnon grew {growth_kb} kB");
    assert!(
        context_growth < 1 << 20,
        "caller memory contexts grew {context_growth} bytes"
    );

    // `make test` runs the short soak, `make soak` the long one; the report keeps both.
    let (section, run_by) = match std::env::var_os("PG_REAPER_SOAK_SECS") {
        Some(_) => ("41-soak-long", "make soak"),
        None => ("40-soak", "make test"),
    };
    record_figures(
        section,
        &format!(
            "## Soak (`{run_by}`)\n\n{secs} s of pgbench ({BENCH_CLIENTS} clients, {tps}), {TARGETS} reconnecting target \
             sessions and {KEEPERS} idle keepers, with `terminate_matching` on the targets every 100 ms:\n\n\
             | | |\n| --- | ---: |\n\
             | calls | {calls} |\n| result rows | {rows_seen} |\n| targets terminated | {terminated} |\n\
             | target reconnections | {} |\n| keepers alive at the end | {}/{KEEPERS} |\n\
             | pgbench clients killed | 0 |\n| postmaster restarts, crashes | 0 |\n\n\
             Every result row named a target session, and every `pg_reaper:` line of the server log ({} of them) \
             a target or one of the idle sessions of the memory loop; \
             the keepers were the same {KEEPERS} backends at the end; pgbench reported no aborted client and no \
             connection error. Memory of the calling backend, before the soak and \
             after it plus {MEMORY_CALLS} more calls (alternately a preview of {CANCELLED} idle sessions \
             and a cancel of each of them, {} signals in all):\n\n\
             | | before | after |\n| --- | ---: | ---: |\n\
             | RssAnon | {} kB | {} kB |\n| memory contexts | {} kB | {} kB |\n",
            reconnects.load(Ordering::Relaxed),
            keepers.len(),
            signalled.len(),
            MEMORY_CALLS / 2 * CANCELLED,
            before.0,
            after.0,
            before.1 / 1024,
            after.1 / 1024
        ),
    );
}
