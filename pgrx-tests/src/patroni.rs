//! etcd and three Patroni nodes of PostgreSQL 15 on loopback, pg_reaper preloaded and each node
//! named `nodeN` (the scripts in `pgrx-tests/patroni/`, the README's recipe), for the HA test and
//! the bench's failover figures.

use postgres::Client;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Patroni {
    pub dir: PathBuf,
    base: u16,
}

impl Patroni {
    fn scripts() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("patroni")
    }

    pub fn start() -> Patroni {
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

    pub fn pg_port(&self, n: u8) -> u16 {
        self.base * 100 + 10 + u16::from(n)
    }

    pub fn rest_port(&self, n: u8) -> u16 {
        self.base * 100 + 20 + u16::from(n)
    }

    /// A session on node n, waiting (60 s at most) while Patroni restarts it in a new role.
    pub fn connect(&self, n: u8, application_name: &str) -> Client {
        self.connect_as(n, "postgres", application_name)
    }

    /// The same as `user` (the victims are an ordinary role's: superusers are left alone).
    pub fn connect_as(&self, n: u8, user: &str, application_name: &str) -> Client {
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
    pub fn rest(&self, n: u8, method: &str, path: &str, body: &str) -> u16 {
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
    pub fn leader(&self, not: Option<u8>) -> u8 {
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

    /// Waits (120 s at most) until one node is the leader and the two others are replicas.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let primaries = (1..=3u8)
                .filter(|n| self.rest(*n, "GET", "/primary", "") == 200)
                .count();
            let replicas = (1..=3u8)
                .filter(|n| self.rest(*n, "GET", "/replica", "") == 200)
                .count();
            if primaries == 1 && replicas == 2 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Patroni cluster does not heal"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn postmaster_pid(&self, n: u8) -> i32 {
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

/// Whether Patroni and etcd are here (Debian's packages, which the Makefile installs).
pub fn available() -> bool {
    std::path::Path::new("/usr/bin/patroni").exists()
        && std::path::Path::new("/usr/bin/etcd").exists()
}
