//! The "Incidents" section: pg_reaper where it is reached for. A migration stuck behind a
//! report with thousands of sessions queued behind it (what the look at the lock manager costs,
//! and what it costs everyone else while it loops), long chains (live and replayed), a thousand
//! victims among five thousand sessions, a preview over five thousand, and the worker under a
//! pgbench load. Each figure beside what it is compared with, measured in the same run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_reaper_integration::{wait_for_within, Client, Cluster, Options};
use serde_json::{json, Value};

use super::{millis, time};

/// The cluster every incident runs on: room for 5,000 sessions, the worker loaded.
fn cluster() -> Cluster {
    let cluster = Cluster::start_with(Options {
        max_connections: 5300,
        settings: vec![
            "shared_buffers = 256MB".into(),
            "shared_preload_libraries = 'pg_reaper'".into(),
            // The writer's and pgbench's commits as a real server makes them.
            "synchronous_commit = on".into(),
            "fsync = on".into(),
        ],
        ..Options::default()
    });
    cluster.create_role("bench", "");
    cluster
}

pub fn incidents() -> Value {
    let cluster = cluster();
    let mut me = cluster.superuser();
    me.batch_execute(
        "CREATE TABLE bench_pileup (id int); ALTER TABLE bench_pileup OWNER TO bench; \
         CREATE TABLE bench_writes (id int); GRANT ALL ON bench_writes TO bench",
    )
    .unwrap();
    let pileup = pileup_scaling(&cluster, &mut me);
    let chains = chains(&cluster, &mut me);
    let victims = victims_among_many(&cluster, &mut me);
    let preview = preview_many(&cluster, &mut me);
    let pgbench = worker_under_load(&cluster, &mut me);
    json!({
        "pileup": pileup, "chains": chains, "victims": victims, "preview": preview,
        "pgbench": pgbench,
    })
}

/// The median of `runs` timings of `f` (after two warm-up runs).
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    f();
    f();
    let mut t: Vec<Duration> = (0..runs).map(|_| time(&mut f)).collect();
    t.sort();
    t[runs / 2]
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Sessions of role bench with `application_name`, connected in parallel.
fn connect(cluster: &Cluster, n: usize, application_name: &str) -> Vec<Client> {
    let threads = 8;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (0..n)
                        .filter(|i| i % threads == t)
                        .map(|_| cluster.connect_as("bench", application_name))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// An idle session held by nothing but its socket: a client library's connection holds its own
/// runtime's descriptors besides (about four in all), and five thousand of them would pass the
/// limit of open files. The startup is the protocol's own, with the cluster's trust auth.
struct IdleSession(std::net::TcpStream);

impl IdleSession {
    fn connect(cluster: &Cluster, user: &str, application_name: &str) -> IdleSession {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", cluster.port)).unwrap();
        let mut body = Vec::new();
        body.extend_from_slice(&196_608u32.to_be_bytes()); // protocol 3.0
        for (k, v) in [
            ("user", user),
            ("database", "postgres"),
            ("application_name", application_name),
        ] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        message.extend_from_slice(&body);
        stream.write_all(&message).unwrap();
        // Until ReadyForQuery: AuthenticationOk, parameters, the backend key.
        loop {
            let mut head = [0u8; 5];
            stream.read_exact(&mut head).unwrap();
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut payload = vec![0u8; len - 4];
            stream.read_exact(&mut payload).unwrap();
            match head[0] {
                b'Z' => return IdleSession(stream),
                b'R' => assert_eq!(&payload[..4], &[0, 0, 0, 0], "the bench needs trust auth"),
                b'E' => panic!("{}", String::from_utf8_lossy(&payload)),
                _ => {}
            }
        }
    }
}

impl Drop for IdleSession {
    fn drop(&mut self) {
        use std::io::Write;
        // Terminate; the server may have closed the connection already.
        let _ = self.0.write_all(&[b'X', 0, 0, 0, 4]);
    }
}

/// Idle sessions of role bench with `application_name`, connected in parallel.
fn idle_sessions(cluster: &Cluster, n: usize, application_name: &str) -> Vec<IdleSession> {
    let threads = 8;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (0..n)
                        .filter(|i| i % threads == t)
                        .map(|_| IdleSession::connect(cluster, "bench", application_name))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

fn wait_gone(me: &mut Client, application_name: &str) {
    wait_for_within(
        me,
        &format!(
            "SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = '{application_name}'"
        ),
        Duration::from_secs(120),
    );
}

/// A migration pileup: a report holds AccessShareLock on bench_pileup, ALTER TABLE waits for
/// AccessExclusiveLock, `k` readers queue behind it. Ended (the report commits) on drop.
struct Pileup {
    report: Client,
    waiting: Vec<std::thread::JoinHandle<()>>,
}

impl Pileup {
    fn start(cluster: &Cluster, me: &mut Client, k: usize) -> Pileup {
        let mut report = cluster.connect_as("bench", "bench_report");
        report
            .batch_execute("BEGIN; SELECT count(*) FROM bench_pileup")
            .unwrap();
        let mut waiting = Vec::new();
        let mut alter = cluster.connect_as("bench", "bench_alter");
        waiting.push(std::thread::spawn(move || {
            alter
                .batch_execute("ALTER TABLE bench_pileup ADD COLUMN c int; ALTER TABLE bench_pileup DROP COLUMN c")
                .unwrap();
        }));
        wait_for_within(
            me,
            "SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'bench_alter' AND wait_event_type = 'Lock'",
            Duration::from_secs(60),
        );
        for mut c in connect(cluster, k, "bench_reader") {
            waiting.push(std::thread::spawn(move || {
                c.batch_execute("SELECT count(*) FROM bench_pileup")
                    .unwrap();
            }));
        }
        wait_for_within(
            me,
            &format!(
                "SELECT count(*) = {} FROM pg_stat_activity WHERE application_name IN ('bench_alter', 'bench_reader') \
                   AND wait_event_type = 'Lock'",
                k + 1
            ),
            Duration::from_secs(120),
        );
        Pileup { report, waiting }
    }

    fn end(mut self) {
        self.report.batch_execute("COMMIT").unwrap();
        for w in self.waiting.drain(..) {
            w.join().unwrap();
        }
    }
}

const ROOT: &str = r#"{"blocking": "root", "application_name": "bench_report"}"#;
const PREVIEW: &str = "SELECT count(*) FROM reaper.preview_matching($1::text::jsonb)";
const BLOCKING_PIDS: &str = "SELECT count(*) FROM pg_stat_activity a, \
                             LATERAL unnest(pg_blocking_pids(a.pid)) b WHERE a.wait_event_type = 'Lock'";

/// How long the look at the lock manager held its partition locks, in µs: pg_reaper says so
/// at DEBUG1, which this session asks to receive.
fn look_hold_us(cluster: &Cluster) -> Vec<f64> {
    let (mut c, notices) = cluster.collecting_client("postgres");
    c.batch_execute("SET client_min_messages = debug1").unwrap();
    for _ in 0..10 {
        c.query_one(PREVIEW, &[&ROOT]).unwrap();
    }
    let said = notices.lock().unwrap().clone();
    said.iter()
        .filter_map(|n| n.split("held its partition locks ").nth(1))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

/// Goals 1 and 2: the root preview of a pileup at K = 250 .. 2,000 against the plain
/// pg_blocking_pids of every waiter, the look's hold of the partition locks; and at 2,000, a
/// writer's inserts while each loops back to back.
fn pileup_scaling(cluster: &Cluster, me: &mut Client) -> Value {
    let mut rows = Vec::new();
    let mut stall = Value::Null;
    for k in [250usize, 500, 1000, 2000] {
        let pileup = Pileup::start(cluster, me, k);
        let ours = median(15, || {
            let n: i64 = me.query_one(PREVIEW, &[&ROOT]).unwrap().get(0);
            assert_eq!(n, 1);
        });
        let plain = median(15, || {
            me.query_one(BLOCKING_PIDS, &[]).unwrap();
        });
        let holds = look_hold_us(cluster);
        let hold = median_f(holds.clone());
        let count = median(5, || {
            let n: i64 = me
                .query_one(
                    PREVIEW,
                    &[&format!(
                        r#"{{"min_blocked_sessions": {}, "application_name": "bench_report"}}"#,
                        k + 1
                    )],
                )
                .unwrap()
                .get(0);
            assert_eq!(n, 1);
        });
        println!(
            "pileup K={k}: root preview {ours:?} ({:.1} us per waiter), min_blocked_sessions {count:?}, pg_blocking_pids {plain:?}, look holds {hold} us",
            ours.as_secs_f64() * 1e6 / k as f64
        );
        rows.push(json!({
            "k": k, "pg_reaper_root_ms": millis(ours), "pg_reaper_count_ms": millis(count),
            "pg_blocking_pids_ms": millis(plain), "look_hold_us": hold,
            "look_hold_max_us": holds.iter().copied().fold(0.0, f64::max),
            "per_waiter_us": ours.as_secs_f64() * 1e6 / k as f64,
        }));
        if k == 2000 {
            stall = writer_stall(cluster);
        }
        pileup.end();
    }
    json!({"rows": rows, "stall": stall})
}

/// A writer's autocommit INSERTs for `seconds`: (count, p99 ms, worst ms).
fn writer(cluster: &Cluster, seconds: u64) -> (usize, f64, f64) {
    let mut c = cluster.connect_as("bench", "bench_writer");
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut lat = Vec::new();
    while Instant::now() < until {
        let t = Instant::now();
        c.batch_execute("INSERT INTO bench_writes VALUES (1)")
            .unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let p99 = lat[lat.len() * 99 / 100];
    (lat.len(), p99, *lat.last().unwrap())
}

/// A statement looped beside the writer, with its one text argument if it takes one.
type Looped<'a> = Option<(&'a str, Option<&'a str>)>;

/// Goal 2: the writer alone, beside a loop of the root preview, beside a loop of the
/// pg_blocking_pids query: 5 s each, alternated three times, medians.
fn writer_stall(cluster: &Cluster) -> Value {
    let configs: [(&str, Looped); 3] = [
        ("alone", None),
        ("preview loop", Some((PREVIEW, Some(ROOT)))),
        ("pg_blocking_pids loop", Some((BLOCKING_PIDS, None))),
    ];
    let mut results: Vec<Vec<(usize, f64, f64)>> = vec![Vec::new(); configs.len()];
    for _ in 0..3 {
        for (i, (_, looping)) in configs.iter().enumerate() {
            let stop = Arc::new(AtomicBool::new(false));
            let looper = looping.map(|(sql, arg)| {
                let mut c = cluster.superuser();
                let stop = stop.clone();
                let (sql, arg) = (sql.to_string(), arg.map(str::to_string));
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        match &arg {
                            Some(a) => drop(c.query_one(sql.as_str(), &[a]).unwrap()),
                            None => drop(c.query_one(sql.as_str(), &[]).unwrap()),
                        }
                        n += 1;
                    }
                    n
                })
            });
            results[i].push(writer(cluster, 5));
            stop.store(true, Ordering::Relaxed);
            if let Some(l) = looper {
                l.join().unwrap();
            }
        }
    }
    let rows: Vec<Value> = configs
        .iter()
        .zip(&results)
        .map(|((name, _), r)| {
            let inserts = median_f(r.iter().map(|x| x.0 as f64).collect());
            let p99 = median_f(r.iter().map(|x| x.1).collect());
            let worst = median_f(r.iter().map(|x| x.2).collect());
            println!("writer during {name}: {inserts} inserts in 5 s, p99 {p99:.2} ms, worst {worst:.1} ms");
            json!({"while": name, "inserts": inserts, "p99_ms": p99, "worst_ms": worst})
        })
        .collect();
    json!(rows)
}

/// A replayed capture: the chain (each session waits for the one before) or the dense queue
/// (each waits for the holder and the one ahead), `n` sessions.
fn capture(n: usize, dense: bool) -> String {
    let rows: Vec<Value> = (1..=n as i64)
        .map(|pid| {
            let by: Vec<i64> = match (pid, dense) {
                (1, _) => vec![],
                (2, _) | (_, false) => vec![pid - 1],
                (_, true) => vec![1, pid - 1],
            };
            json!({
                "pid": pid, "usename": "app", "datname": "shop", "application_name": "web",
                "backend_type": "client backend", "state": "active", "superuser": false,
                "blocking_pids": by,
                "waitstart": if pid == 1 { Value::Null } else { json!("2026-11-25T17:55:55.123456+00:00") },
                "now": "2026-11-25T18:00:00+00:00",
            })
        })
        .collect();
    Value::Array(rows).to_string()
}

/// Goal 3: min_blocked_sessions against root, in the replay (16,384-session chain, 4,000-waiter
/// dense queue) and live (a chain of 500; the 2,000 pileup is in `pileup_scaling`).
fn chains(cluster: &Cluster, me: &mut Client) -> Value {
    let mut rows = Vec::new();
    let replay = "SELECT count(*) FILTER (WHERE matched) FROM reaper.test_filter($1::text::jsonb, $2::text::jsonb)";
    for (what, n, dense) in [
        ("16,384-session chain", 16_384usize, false),
        ("4,000-waiter dense queue", 4_001, true),
    ] {
        let sessions = capture(n, dense);
        let count = format!(r#"{{"min_blocked_sessions": {}}}"#, n - 1);
        let root = r#"{"blocking": "root"}"#;
        let t_root = median(5, || {
            let k: i64 = me.query_one(replay, &[&root, &sessions]).unwrap().get(0);
            assert_eq!(k, 1);
        });
        let t_count = median(5, || {
            let k: i64 = me.query_one(replay, &[&count, &sessions]).unwrap().get(0);
            assert_eq!(k, 1);
        });
        println!("replay {what}: root {t_root:?}, min_blocked_sessions {t_count:?}");
        rows.push(json!({"what": format!("replay: {what}"), "root_ms": millis(t_root), "count_ms": millis(t_count)}));
    }
    // A live chain of 500: session i holds chain_i and waits for chain_(i-1).
    let length = 500;
    let mut ddl = String::new();
    for i in 0..length {
        ddl += &format!(
            "CREATE TABLE bench_chain_{i} (id int); ALTER TABLE bench_chain_{i} OWNER TO bench; "
        );
    }
    me.batch_execute(&ddl).unwrap();
    let mut head = cluster.connect_as("bench", "bench_chain");
    head.batch_execute("BEGIN; LOCK TABLE bench_chain_0 IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let mut waiting = Vec::new();
    for i in 1..length {
        let mut c = cluster.connect_as("bench", "bench_chain");
        c.batch_execute(&format!(
            "BEGIN; LOCK TABLE bench_chain_{i} IN ACCESS EXCLUSIVE MODE"
        ))
        .unwrap();
        waiting.push(std::thread::spawn(move || {
            let _ = c.batch_execute(&format!(
                "LOCK TABLE bench_chain_{} IN ACCESS EXCLUSIVE MODE; COMMIT",
                i - 1
            ));
        }));
        wait_for_within(
            me,
            &format!("SELECT count(*) = {i} FROM pg_stat_activity WHERE application_name = 'bench_chain' AND wait_event_type = 'Lock'"),
            Duration::from_secs(60),
        );
    }
    let root = r#"{"blocking": "root", "application_name": "bench_chain"}"#;
    let count = format!(
        r#"{{"min_blocked_sessions": {}, "application_name": "bench_chain"}}"#,
        length - 1
    );
    let t_root = median(15, || {
        let k: i64 = me.query_one(PREVIEW, &[&root]).unwrap().get(0);
        assert_eq!(k, 1);
    });
    let t_count = median(15, || {
        let k: i64 = me.query_one(PREVIEW, &[&count]).unwrap().get(0);
        assert_eq!(k, 1);
    });
    println!("live chain of {length}: root {t_root:?}, min_blocked_sessions {t_count:?}");
    rows.push(json!({"what": format!("live: chain of {length}"), "root_ms": millis(t_root), "count_ms": millis(t_count)}));
    head.batch_execute("COMMIT").unwrap();
    for w in waiting {
        w.join().unwrap();
    }
    drop(head);
    wait_gone(me, "bench_chain");
    json!(rows)
}

/// Goal 4: 1,000 victims among 5,000 sessions, terminated and confirmed gone: pg_reaper as
/// shipped against a client that signals them all in one statement and polls pg_stat_activity
/// every 2 ms; alternated three times, medians; then where pg_reaper's time goes.
fn victims_among_many(cluster: &Cluster, me: &mut Client) -> Value {
    let _bystanders = idle_sessions(cluster, 4000, "bench_bystander");
    let ours = || -> String { r#"{"application_name": "bench_victim"}"#.to_string() };
    let pg_reaper = |me: &mut Client, timeout: i64| -> Duration {
        let _victims = idle_sessions(cluster, 1000, "bench_victim");
        let t = time(|| {
            let n: i64 = me
                .query_one(
                    &format!("SELECT count(*) FROM reaper.terminate_matching($1::text::jsonb, {timeout})"),
                    &[&ours()],
                )
                .unwrap()
                .get(0);
            assert_eq!(n, 1000);
        });
        wait_gone(me, "bench_victim");
        t
    };
    let client = |me: &mut Client| -> Duration {
        let _victims = idle_sessions(cluster, 1000, "bench_victim");
        let t = time(|| {
            me.query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'bench_victim'",
                &[],
            )
            .unwrap();
            loop {
                let left: i64 = me
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bench_victim'",
                        &[],
                    )
                    .unwrap()
                    .get(0);
                if left == 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        wait_gone(me, "bench_victim");
        t
    };
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        a.push(pg_reaper(me, 5000).as_secs_f64() * 1000.0);
        b.push(client(me).as_secs_f64() * 1000.0);
    }
    let (ours_ms, client_ms) = (median_f(a), median_f(b));
    // Where the time goes: the signals alone (no wait), then without the audit rows and LOG
    // lines.
    let signals_only = pg_reaper(me, 0).as_secs_f64() * 1000.0;
    me.batch_execute("SET pg_reaper.audit = off; SET pg_reaper.log_actions = off")
        .unwrap();
    let bare = pg_reaper(me, 5000).as_secs_f64() * 1000.0;
    let bare_signals = pg_reaper(me, 0).as_secs_f64() * 1000.0;
    me.batch_execute("RESET pg_reaper.audit; RESET pg_reaper.log_actions")
        .unwrap();
    println!(
        "1000 victims among 5000: pg_reaper {ours_ms:.0} ms, client {client_ms:.0} ms; signals only {signals_only:.0} ms; \
         no audit/log {bare:.0} ms, signals only {bare_signals:.0} ms"
    );
    json!({
        "pg_reaper_ms": ours_ms, "client_ms": client_ms, "signals_only_ms": signals_only,
        "no_audit_no_log_ms": bare, "no_audit_no_log_signals_only_ms": bare_signals,
    })
}

/// Goal 5: a preview over 1,000 and 5,000 sessions against the plain SELECT of the same
/// columns.
fn preview_many(cluster: &Cluster, me: &mut Client) -> Value {
    let plain = "SELECT pid, backend_start, usename, datname, application_name, client_addr, backend_type, \
                 state, query, wait_event_type, wait_event, xact_start, query_start, state_change \
                 FROM pg_stat_activity WHERE application_name = 'bench_idle'";
    let filter = r#"{"application_name": "bench_idle"}"#;
    let mut rows = Vec::new();
    let mut sessions = Vec::new();
    for n in [1000usize, 5000] {
        sessions.extend(idle_sessions(cluster, n - sessions.len(), "bench_idle"));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..17 {
            a.push(
                time(|| assert_eq!(me.query(plain, &[]).unwrap().len(), n)).as_secs_f64() * 1000.0,
            );
            b.push(
                time(|| {
                    let k: i64 = me.query_one(PREVIEW, &[&filter]).unwrap().get(0);
                    assert_eq!(k as usize, n);
                })
                .as_secs_f64()
                    * 1000.0,
            );
        }
        let (p, o) = (median_f(a), median_f(b));
        println!("preview over {n}: plain {p:.1} ms, pg_reaper {o:.1} ms");
        rows.push(json!({"n": n, "plain_ms": p, "pg_reaper_ms": o, "per_session_us": o * 1000.0 / n as f64}));
    }
    drop(sessions);
    wait_gone(me, "bench_idle");
    json!(rows)
}

/// pgbench TPC-B, 20 clients, `seconds`: (tps, p99 latency ms), from its per-transaction log.
fn pgbench(cluster: &Cluster, seconds: u64) -> (f64, f64) {
    let dir = cluster.dir.join("pgbench_log");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = dir.join("tx");
    let out = std::process::Command::new(cluster.bin.join("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "-n",
        ])
        .args(["-c", "20", "-j", "2", "-T", &seconds.to_string(), "-l"])
        .arg(format!("--log-prefix={}", prefix.display()))
        .arg("postgres")
        .output()
        .expect("pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .expect("tps");
    let mut lat: Vec<f64> = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let log = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        lat.extend(
            log.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok())
                .map(|us| us / 1000.0),
        );
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    (tps, lat[lat.len() * 99 / 100])
}

/// Goal 6: pgbench with and without 20 policies each second over 1,000 idle sessions; with one
/// lock-key policy every 100 ms during a 1,000-waiter pileup against the pg_blocking_pids query
/// ten times a second. Each configuration three alternating 60 s runs, medians.
fn worker_under_load(cluster: &Cluster, me: &mut Client) -> Value {
    let out = std::process::Command::new(cluster.bin.join("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "-i",
            "-s",
            "20",
            "-q",
        ])
        .arg("postgres")
        .output()
        .expect("pgbench -i");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    const SECONDS: u64 = 60;
    let idle = idle_sessions(cluster, 1000, "bench_idle");
    let policies: String = (0..20)
        .map(|i| format!(
            "('idle-{i:02}', '{{\"application_name\": \"bench_idle\", \"min_state_age\": \"1 day\"}}', 'cancel', '1 second')"
        ))
        .collect::<Vec<_>>()
        .join(", ");
    let no_policies = |me: &mut Client| {
        me.batch_execute("DELETE FROM reaper.policies").unwrap();
    };
    let twenty = |me: &mut Client| {
        me.batch_execute(&format!(
            "DELETE FROM reaper.policies; INSERT INTO reaper.policies (name, filter, action, run_every) VALUES {policies}"
        ))
        .unwrap();
    };
    let mut plain = Vec::new();
    let mut with = Vec::new();
    for _ in 0..3 {
        no_policies(me);
        plain.push(pgbench(cluster, SECONDS));
        twenty(me);
        with.push(pgbench(cluster, SECONDS));
    }
    no_policies(me);
    drop(idle);
    wait_gone(me, "bench_idle");
    // The pileup, and the lock-key policy against the query.
    let pileup = Pileup::start(cluster, me, 1000);
    let mut policy = Vec::new();
    let mut query = Vec::new();
    for _ in 0..3 {
        me.batch_execute(
            "INSERT INTO reaper.policies (name, filter, action, run_every) VALUES \
               ('roots', '{\"blocking\": \"root\", \"application_name\": \"nobody\"}', 'cancel', '100 ms')",
        )
        .unwrap();
        policy.push(pgbench(cluster, SECONDS));
        no_policies(me);
        let stop = Arc::new(AtomicBool::new(false));
        let looper = {
            let mut c = cluster.superuser();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    c.query_one(BLOCKING_PIDS, &[]).unwrap();
                    std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
                }
            })
        };
        query.push(pgbench(cluster, SECONDS));
        stop.store(true, Ordering::Relaxed);
        looper.join().unwrap();
    }
    pileup.end();
    let summary = |name: &str, runs: &[(f64, f64)]| {
        let tps = median_f(runs.iter().map(|r| r.0).collect());
        let p99 = median_f(runs.iter().map(|r| r.1).collect());
        println!("pgbench {name}: {tps:.0} tps, p99 {p99:.2} ms");
        json!({"config": name, "tps": tps, "p99_ms": p99})
    };
    json!([
        summary("no policies", &plain),
        summary("20 policies each second over 1,000 idle sessions", &with),
        summary(
            "a lock-key policy every 100 ms, 1,000-waiter pileup",
            &policy
        ),
        summary(
            "pg_blocking_pids query 10 times a second, 1,000-waiter pileup",
            &query
        ),
    ])
}
