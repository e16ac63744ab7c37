//! The harness for pg_reaper's multi-session tests: a throwaway PostgreSQL 15 cluster run as
//! the postgres OS user, real sessions held open in chosen states, and helpers to ask the
//! server what became of them. Requires the extension to be installed (`make install`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use postgres::{Client, NoTls};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// How long a helper waits for a session to reach a state before failing the test.
pub const PATIENCE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct Options {
    pub max_connections: u32,
    /// Extra postgresql.conf lines.
    pub settings: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_connections: 100,
            settings: Vec::new(),
        }
    }
}

/// A running throwaway cluster; stopped and removed when dropped.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

fn as_postgres(program: &str, args: &[&str]) -> std::process::Output {
    let output = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{BIN}/{program}")])
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Cluster {
        let n = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/pgr-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        Command::new("chown")
            .args(["postgres:postgres", dir.to_str().unwrap()])
            .status()
            .expect("chown");
        let data = dir.join("data");
        as_postgres(
            "initdb",
            &[
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-D",
                data.to_str().unwrap(),
            ],
        );
        let port = free_port();
        let mut conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             max_connections = {}\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             log_line_prefix = '%m [%p] '\nshared_buffers = 32MB\n",
            dir.display(),
            options.max_connections
        );
        for line in &options.settings {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).expect("postgresql.conf");
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).expect("write postgresql.conf");
        let cluster = Cluster { dir, port };
        cluster.pg_ctl(&[
            "-w",
            "-t",
            "60",
            "start",
            "-l",
            cluster.log_path().to_str().unwrap(),
        ]);
        cluster
            .superuser()
            .batch_execute("CREATE EXTENSION pg_reaper")
            .expect("CREATE EXTENSION");
        cluster
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data_dir();
        let mut all = vec!["-D", data.to_str().unwrap()];
        all.extend_from_slice(args);
        as_postgres("pg_ctl", &all);
    }

    /// The `pg_reaper:` lines of the server log about backend `pid`.
    pub fn reaper_lines(&self, pid: i32) -> Vec<String> {
        let needle = format!(" pid={pid} ");
        self.server_log()
            .lines()
            .filter(|l| l.contains("pg_reaper: ") && l.contains(&needle))
            .map(str::to_string)
            .collect()
    }

    /// Everything the server has logged so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A TCP client (client_addr 127.0.0.1) as `user` with `application_name`.
    pub fn connect_as(&self, user: &str, application_name: &str) -> Client {
        self.connect_with(user, application_name, "127.0.0.1")
    }

    /// A Unix-socket client (client_addr NULL, client_port -1).
    pub fn connect_local(&self, user: &str, application_name: &str) -> Client {
        let dir = self.dir.to_str().unwrap().to_string();
        self.connect_with(user, application_name, &dir)
    }

    fn connect_with(&self, user: &str, application_name: &str, host: &str) -> Client {
        let mut config = postgres::Config::new();
        config
            .host(host)
            .port(self.port)
            .user(user)
            .dbname("postgres")
            .application_name(application_name)
            .connect_timeout(Duration::from_secs(10));
        let deadline = Instant::now() + PATIENCE;
        loop {
            match config.connect(NoTls) {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot connect as {user}: {e}"),
            }
        }
    }

    pub fn connect(&self, user: &str) -> Client {
        self.connect_as(user, "pg_reaper_tests")
    }

    pub fn superuser(&self) -> Client {
        self.connect("postgres")
    }

    /// A LOGIN role with `attributes` (e.g. "IN ROLE pg_signal_backend"); idempotent.
    pub fn create_role(&self, name: &str, attributes: &str) {
        let sql = format!(
            "DO $$ BEGIN CREATE ROLE {name} LOGIN {attributes}; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        );
        self.superuser().batch_execute(&sql).expect("create role");
    }

    /// Opens a session as `user` tagged with `application_name` and leaves it idle.
    pub fn session(&self, user: &str, application_name: &str) -> Session {
        Session::new(self.connect_as(user, application_name))
    }

    /// Whether a backend with this pid is still in pg_stat_activity.
    pub fn alive(&self, pid: i32) -> bool {
        alive(&mut self.superuser(), pid)
    }

    /// Waits until `pid` has left pg_stat_activity; false if it did not within PATIENCE.
    pub fn wait_gone(&self, pid: i32) -> bool {
        let mut c = self.superuser();
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if !alive(&mut c, pid) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits until the backend `pid` satisfies `condition` (SQL over pg_stat_activity `a`).
    pub fn wait_until(&self, pid: i32, condition: &str) {
        let mut c = self.superuser();
        let sql = format!(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity a WHERE a.pid = $1 AND ({condition})"
        );
        let deadline = Instant::now() + PATIENCE;
        loop {
            c.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
            let n: i64 = c.query_one(&sql, &[&pid]).unwrap().get(0);
            if n == 1 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pid {pid} never reached: {condition}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The postmaster's start time, to prove it never restarted.
    pub fn postmaster_start(&self) -> String {
        self.superuser()
            .query_one("SELECT pg_postmaster_start_time()::text", &[])
            .unwrap()
            .get(0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!("{BIN}/pg_ctl"),
                "-D",
                data.to_str().unwrap(),
            ])
            .args(["-m", "immediate", "stop"])
            .output();
        if std::env::var_os("PG_REAPER_KEEP_CLUSTER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn alive(c: &mut Client, pid: i32) -> bool {
    c.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .unwrap()
        .get(0);
    n == 1
}

/// How a statement run in the background ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Ok,
    /// The server raised this SQLSTATE (57014: cancelled).
    Error(String),
    /// The backend was terminated under it: FATAL 57P01, or the connection just closed.
    Closed,
}

/// A real backend held open by the test. Statements run in the background on a thread that owns
/// the connection; the test keeps the pid and asks the server what became of it.
/// Dropping it closes the connection once its statement (if any) ends.
pub struct Session {
    pub pid: i32,
    tx: mpsc::Sender<Job>,
    _worker: JoinHandle<()>,
}

type Job = (String, mpsc::Sender<Ended>);

impl Session {
    pub fn new(mut client: Client) -> Session {
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .unwrap()
            .get(0);
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = thread::spawn(move || {
            for (sql, done) in rx {
                let ended = match client.batch_execute(&sql) {
                    Ok(()) => Ended::Ok,
                    Err(e) => match e.code() {
                        Some(code) if code.code() != "57P01" => {
                            Ended::Error(code.code().to_string())
                        }
                        _ => Ended::Closed,
                    },
                };
                let closed = ended == Ended::Closed || client.is_closed();
                let _ = done.send(ended);
                if closed {
                    break;
                }
            }
        });
        Session {
            pid,
            tx,
            _worker: worker,
        }
    }

    /// Starts `sql` and returns at once; `Pending::wait` tells how it ended.
    pub fn start(&self, sql: &str) -> Pending {
        let (done_tx, done_rx) = mpsc::channel();
        let _ = self.tx.send((sql.to_string(), done_tx));
        Pending(done_rx)
    }

    /// Runs `sql` to completion.
    pub fn run(&self, sql: &str) -> Ended {
        self.start(sql).wait()
    }

    /// BEGIN and a first statement, then stay: `idle in transaction`.
    pub fn idle_in_transaction(self) -> Session {
        assert_eq!(self.run("BEGIN; SELECT 1"), Ended::Ok);
        self
    }

    /// A query that runs for ten minutes unless stopped: `active`.
    pub fn busy(self, cluster: &Cluster) -> (Session, Pending) {
        let pending = self.start("SELECT pg_sleep(600)");
        cluster.wait_until(self.pid, "a.state = 'active' AND a.wait_event = 'PgSleep'");
        (self, pending)
    }
}

/// A statement running in the background.
pub struct Pending(mpsc::Receiver<Ended>);

impl Pending {
    /// How it ended (waits up to PATIENCE).
    pub fn wait(&self) -> Ended {
        self.0
            .recv_timeout(PATIENCE)
            .expect("the statement did not end in time")
    }

    /// Still running after `d`?
    pub fn still_running_after(&self, d: Duration) -> bool {
        matches!(self.0.recv_timeout(d), Err(mpsc::RecvTimeoutError::Timeout))
    }
}

/// One result row of a pg_reaper function.
#[derive(Debug, Clone)]
pub struct Row {
    pub policy: Option<String>,
    pub pid: i32,
    pub usename: Option<String>,
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    pub backend_type: Option<String>,
    pub state: Option<String>,
    pub outcome: String,
    pub waited_ms: i64,
    pub detail: Option<String>,
}

/// Runs `call` (e.g. `reaper.terminate_matching($1::text::jsonb, 5000)`, with the filter as
/// parameter $1) and returns its rows.
pub fn call(client: &mut Client, call: &str, filter: &str) -> Result<Vec<Row>, postgres::Error> {
    let policy_column = if call.contains("policies") || call.contains("run_policy") {
        "policy"
    } else {
        "NULL::text"
    };
    let sql = format!(
        "SELECT {policy_column}, pid, usename, application_name, client_addr::text, backend_type, \
         state, outcome, waited_ms, detail FROM {call}"
    );
    let rows = if call.contains("$1") {
        client.query(&sql, &[&filter])?
    } else {
        client.query(&sql, &[])?
    };
    Ok(rows
        .iter()
        .map(|r| Row {
            policy: r.get(0),
            pid: r.get(1),
            usename: r.get(2),
            application_name: r.get(3),
            client_addr: r.get(4),
            backend_type: r.get(5),
            state: r.get(6),
            outcome: r.get(7),
            waited_ms: r.get(8),
            detail: r.get(9),
        })
        .collect())
}

pub fn preview(client: &mut Client, filter: &str) -> Vec<Row> {
    call(client, "reaper.preview_matching($1::text::jsonb)", filter).expect("preview")
}

pub fn cancel(client: &mut Client, filter: &str) -> Vec<Row> {
    call(client, "reaper.cancel_matching($1::text::jsonb)", filter).expect("cancel")
}

/// reaper.cancel_then_terminate.
pub fn escalate(client: &mut Client, filter: &str, grace_ms: i64, timeout_ms: i64) -> Vec<Row> {
    let f = format!("reaper.cancel_then_terminate($1::text::jsonb, {grace_ms}, {timeout_ms})");
    call(client, &f, filter).expect("cancel_then_terminate")
}

pub fn terminate(client: &mut Client, filter: &str, timeout_ms: i64) -> Vec<Row> {
    let f = format!("reaper.terminate_matching($1::text::jsonb, {timeout_ms})");
    call(client, &f, filter).expect("terminate")
}

/// Runs `sql` (a pg_reaper call with the filter as $1) from a background superuser session
/// that pauses (the hidden `pg_reaper.recheck_delay_ms`) between choosing the victims and
/// re-checking them, runs `during` inside that window, and returns the rows.
pub fn call_in_recheck_window(
    cluster: &Cluster,
    sql: &'static str,
    filter: &str,
    during: impl FnOnce(),
) -> Vec<Row> {
    let filter = filter.to_string();
    let mut caller = cluster.superuser();
    caller
        .batch_execute("SET pg_reaper.recheck_delay_ms = 3000")
        .unwrap();
    let handle = std::thread::spawn(move || call(&mut caller, sql, &filter).expect(sql));
    std::thread::sleep(Duration::from_millis(300));
    let opened = Instant::now();
    during();
    assert!(
        opened.elapsed() < Duration::from_millis(2500),
        "the change must land inside the window"
    );
    handle.join().unwrap()
}

/// `call_in_recheck_window` for terminate_matching with a 2 s timeout.
pub fn terminate_with_window(cluster: &Cluster, filter: &str, during: impl FnOnce()) -> Vec<Row> {
    let sql = "reaper.terminate_matching($1::text::jsonb, 2000)";
    call_in_recheck_window(cluster, sql, filter, during)
}

/// Exactly one row: `pid`, vanished, for `why`.
pub fn assert_one_vanished(rows: &[Row], pid: i32, why: &str) {
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].pid, pid);
    assert_eq!(rows[0].outcome, "vanished");
    assert_eq!(
        rows[0].detail.as_deref(),
        Some(format!("{why} before it was signalled").as_str())
    );
}

/// The backend behind `client`.
pub fn backend_pid(client: &mut Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0)
}

/// The error's SQLSTATE.
pub fn sqlstate(e: &postgres::Error) -> Option<&str> {
    e.code().map(|c| c.code())
}

/// Sends `sig` ("-STOP", "-CONT", ...) to a process, as root: a stopped backend cannot act on
/// a signal until it is continued.
pub fn signal_process(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// A process's private memory (RssAnon, kB, so shared buffers do not count), as root.
pub fn rss_anon_kb(pid: i32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The single number a `SELECT count(*) ...` returns.
pub fn count(client: &mut Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).expect(sql).get(0)
}

/// The pids of `rows`, sorted.
pub fn pids(rows: &[Row]) -> Vec<i32> {
    let mut p: Vec<i32> = rows.iter().map(|r| r.pid).collect();
    p.sort();
    p
}

/// `pids` sorted, for comparing with `pids(rows)`.
pub fn sorted(mut pids: Vec<i32>) -> Vec<i32> {
    pids.sort();
    pids
}

/// A unique tag for this test's sessions, so that tests sharing a cluster never touch each
/// other's sessions.
pub fn tag(test: &str) -> String {
    format!("t_{test}")
}

/// A cluster shared by the tests of one test file (one binary) while they run: the first caller
/// starts it and runs `setup` on it (roles, databases); it is stopped when the last test holding
/// it ends, and a caller that then finds none running starts a new one. Only a `Weak` is kept in
/// the static, because a static is never dropped: holding the cluster there would leave its
/// postmaster running after the binary exits. Each test must tag its sessions (`tag`) and name
/// its tag in every filter, so that no test sees or signals another's sessions.
pub fn shared_cluster(setup: fn(&Cluster)) -> std::sync::Arc<Cluster> {
    use std::sync::{Arc, Mutex, Weak};
    static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let cluster = Arc::new(Cluster::start());
    setup(&cluster);
    *shared = Arc::downgrade(&cluster);
    cluster
}

/// Appends a section of figures to the reliability report (assembled into RELIABILITY.md by
/// `make test`); `name` orders and names the section.
pub fn record_figures(name: &str, markdown: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/reliability");
    std::fs::create_dir_all(&dir).expect("reliability dir");
    std::fs::write(dir.join(format!("{name}.md")), markdown).expect("write figures");
}
