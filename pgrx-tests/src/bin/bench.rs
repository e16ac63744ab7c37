//! `make bench`: pg_reaper against the hand-written SQL it replaces, side by side in one run,
//! on one throwaway cluster. Writes the figures to the Markdown file named by the first
//! argument (default BENCHMARKS.md).

use std::time::{Duration, Instant};

use pg_reaper_integration::{Client, Cluster, Options};

const APP: &str = "bench_idle";
const FILTER: &str = r#"{"application_name": "bench_idle"}"#;

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "BENCHMARKS.md".into());
    let cluster = Cluster::start_with(Options {
        max_connections: 2200,
        settings: vec!["shared_buffers = 128MB".into()],
    });
    // The sessions belong to an ordinary role: pg_reaper leaves superusers' sessions alone.
    cluster.create_role("bench", "");
    let mut me = cluster.superuser();

    let mut terminate_rows = Vec::new();
    for n in [100usize, 200, 500] {
        let plain = {
            let _sessions = open(&cluster, n);
            time(|| {
                let killed: i64 = me
                    .query_one(
                        "SELECT count(*) FILTER (WHERE t) FROM (SELECT pg_terminate_backend(pid, 5000) AS t \
                         FROM pg_stat_activity WHERE application_name = $1) s",
                        &[&APP],
                    )
                    .unwrap()
                    .get(0);
                assert_eq!(killed as usize, n, "plain SQL terminated {killed} of {n}");
            })
        };
        wait_none_left(&mut me);
        let ours = {
            let _sessions = open(&cluster, n);
            time(|| {
                let terminated: i64 = me
                    .query_one(
                        "SELECT count(*) FILTER (WHERE outcome = 'terminated') \
                         FROM reaper.terminate_matching($1::text::jsonb, 5000)",
                        &[&FILTER],
                    )
                    .unwrap()
                    .get(0);
                assert_eq!(
                    terminated as usize, n,
                    "pg_reaper terminated {terminated} of {n}"
                );
            })
        };
        wait_none_left(&mut me);
        println!("terminate N={n}: plain {plain:?}, pg_reaper {ours:?}");
        terminate_rows.push((n, plain, ours));
    }

    let n = 1000;
    let _sessions = open(&cluster, n);
    let plain_sql = "SELECT pid, backend_start, usename, datname, application_name, client_addr, backend_type, \
                     state, query, wait_event_type, wait_event, xact_start, query_start, state_change \
                     FROM pg_stat_activity WHERE application_name = 'bench_idle'";
    let ours_sql =
        "SELECT * FROM reaper.preview_matching('{\"application_name\": \"bench_idle\"}')";
    let (mut plain, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        me.query(plain_sql, &[]).unwrap();
        me.query(ours_sql, &[]).unwrap();
    }
    for _ in 0..60 {
        plain.push(time(|| {
            assert_eq!(me.query(plain_sql, &[]).unwrap().len(), n)
        }));
        ours.push(time(|| {
            assert_eq!(me.query(ours_sql, &[]).unwrap().len(), n)
        }));
    }
    plain.sort();
    ours.sort();
    println!(
        "preview N={n}: plain median {:?}, pg_reaper median {:?}",
        plain[30], ours[30]
    );

    drop(_sessions);
    wait_none_left(&mut me);
    let scaling = preview_scaling(&cluster, &mut me);

    let version: String = me.query_one("SELECT version()", &[]).unwrap().get(0);
    let mut md = String::from("# Benchmarks\n\nWritten by `make bench` (`pgrx-tests/src/bin/bench.rs`): one throwaway cluster, \
         both sides measured in the same run, from a client on the same machine. Numbers are wall-clock time \
         of the whole statement as the client sees it.\n\n");
    md += &format!(
        "- Machine: {} cores, {}\n- Server: {version}\n- Date: {}\n\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        meminfo(),
        today()
    );
    md += "## Terminate N idle sessions and confirm they are gone (timeout 5000 ms)\n\n\
           Plain SQL: `SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = 'bench_idle'` \
           — each call waits for its backend before the next is signalled.\n\
           pg_reaper: `SELECT * FROM reaper.terminate_matching('{\"application_name\": \"bench_idle\"}', 5000)` \
           — all signalled first, then all confirmed against one deadline (audit rows included).\n\n\
           | N | plain SQL | pg_reaper | speed-up |\n| ---: | ---: | ---: | ---: |\n";
    for (n, plain, ours) in &terminate_rows {
        md += &format!(
            "| {n} | {} | {} | {:.0}x |\n",
            ms(*plain),
            ms(*ours),
            plain.as_secs_f64() / ours.as_secs_f64()
        );
    }
    md += &format!(
        "\n## Preview {n} idle sessions (60 runs each, interleaved)\n\n\
         Plain SQL: the same columns from `pg_stat_activity WHERE application_name = 'bench_idle'`.\n\
         pg_reaper: `SELECT * FROM reaper.preview_matching('{{\"application_name\": \"bench_idle\"}}')`.\n\n\
         | | min | median | max |\n| --- | ---: | ---: | ---: |\n\
         | plain SQL | {} | {} | {} |\n| pg_reaper | {} | {} | {} |\n",
        ms(plain[0]),
        ms(plain[30]),
        ms(plain[59]),
        ms(ours[0]),
        ms(ours[30]),
        ms(ours[59])
    );
    md += &scaling;
    std::fs::write(&out, md).expect("write benchmarks");
    println!("wrote {out}");
}

/// The cost of one preview per session as the number of sessions grows: it must stay flat
/// (one pass over the PGPROC array, one look at the lock manager, per snapshot). Three filters:
/// plain; with a lock key while nobody waits for a lock (no lock-manager look at all); with a
/// lock key while 20 sessions wait for a lock held by one more.
fn preview_scaling(cluster: &Cluster, me: &mut Client) -> String {
    const RUNS: usize = 30;
    let plain = r#"{"application_name": "bench_idle"}"#;
    let locks = r#"{"application_name": "bench_idle", "blocked": false}"#;
    let waiting =
        r#"{"any": [{"application_name": "bench_idle", "blocked": false}, {"blocked": true}]}"#;
    me.batch_execute(
        "CREATE TABLE IF NOT EXISTS bench_lock (id int); GRANT ALL ON bench_lock TO bench",
    )
    .unwrap();
    let mut md = format!(
        "\n## Preview cost per session as sessions grow ({RUNS} runs each, median)\n\n\
         `reaper.preview_matching` over N idle sessions: one pass over the PGPROC array and one look at the \
         lock manager per snapshot, so the cost per session stays flat as N grows. \
         Filters: plain `{plain}`; lock key, nobody waiting `{locks}`; lock key with 20 sessions waiting \
         for a lock one more holds `{waiting}`.\n\n\
         | N sessions | plain | per session | lock key | per session | lock key, 20 waiting | per session |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    );
    for n in [250usize, 1000, 2000] {
        let _sessions = open(cluster, n);
        let median = |me: &mut Client, filter: &str| -> Duration {
            let sql = "SELECT count(*) FROM reaper.preview_matching($1::text::jsonb)";
            for _ in 0..3 {
                me.query_one(sql, &[&filter]).unwrap();
            }
            let mut t: Vec<Duration> = (0..RUNS)
                .map(|_| time(|| drop(me.query_one(sql, &[&filter]).unwrap())))
                .collect();
            t.sort();
            t[RUNS / 2]
        };
        let plain_t = median(me, plain);
        let locks_t = median(me, locks);
        // One holder and 20 waiters (sessions of their own, not among the N).
        let mut holder = cluster.connect_as("bench", "bench_holder");
        holder
            .batch_execute("BEGIN; LOCK TABLE bench_lock IN ACCESS EXCLUSIVE MODE")
            .unwrap();
        let waiters: Vec<_> = (0..20)
            .map(|_| {
                let mut c = cluster.connect_as("bench", "bench_waiter");
                std::thread::spawn(move || {
                    let _ = c.batch_execute("SELECT count(*) FROM bench_lock");
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while me
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'bench_lock'::regclass",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
            < 20
        {
            assert!(Instant::now() < deadline, "the waiters never queued");
            std::thread::sleep(Duration::from_millis(20));
        }
        let waiting_t = median(me, waiting);
        holder.batch_execute("COMMIT").unwrap();
        for w in waiters {
            w.join().unwrap();
        }
        let per = |d: Duration| format!("{:.2} µs", d.as_secs_f64() * 1e6 / n as f64);
        println!("preview scaling N={n}: plain {plain_t:?}, lock key {locks_t:?}, 20 waiting {waiting_t:?}");
        md += &format!(
            "| {n} | {} | {} | {} | {} | {} | {} |\n",
            ms(plain_t),
            per(plain_t),
            ms(locks_t),
            per(locks_t),
            ms(waiting_t),
            per(waiting_t)
        );
        drop(_sessions);
        wait_none_left(me);
    }
    md
}

/// N idle sessions tagged `bench_idle`, opened from a few threads.
fn open(cluster: &Cluster, n: usize) -> Vec<Client> {
    let threads = 8;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (0..n)
                        .filter(|i| i % threads == t)
                        .map(|_| cluster.connect_as("bench", APP))
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

fn wait_none_left(me: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        me.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
        let left: i64 = me
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&APP],
            )
            .unwrap()
            .get(0);
        if left == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{left} sessions never went away");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn time(f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn meminfo() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{} GiB RAM", kb / 1024 / 1024))
        .unwrap_or_default()
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
