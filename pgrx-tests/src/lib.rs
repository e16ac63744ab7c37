//! The harness for pg_reaper's multi-session tests: a throwaway PostgreSQL cluster run as the
//! postgres OS user, real sessions held open in chosen states, and helpers to ask the server
//! what became of them. The server is the one whose `pg_config` the `PG_CONFIG` variable names
//! (PostgreSQL 15 from Debian by default); the extension must be installed there, built with
//! the `test-hooks` feature (`make test` does both).

pub mod patroni;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use libc;
pub use postgres::{Client, NoTls};

/// Every NOTICE or WARNING a collecting client received, as "SEVERITY SQLSTATE: message".
pub type Notices = Arc<Mutex<Vec<String>>>;

/// The server's `pg_config`.
pub fn pg_config() -> String {
    std::env::var("PG_CONFIG").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin/pg_config".into())
}

/// What `pg_config --<what>` prints.
pub fn pg_config_value(what: &str) -> String {
    let out = Command::new(pg_config())
        .arg(format!("--{what}"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", pg_config()));
    assert!(out.status.success(), "pg_config --{what} failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The server's programs (initdb, pg_ctl, ...).
fn bin_dir() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| pg_config_value("bindir"))
}

/// The version of pg_reaper this tree builds (the extension's Cargo.toml, not this crate's).
pub fn pg_reaper_version() -> String {
    let manifest =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .expect("Cargo.toml");
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("a version in Cargo.toml")
        .to_string()
}

/// The server's major version (14, 15, ...).
pub fn server_major() -> u32 {
    static MAJOR: OnceLock<u32> = OnceLock::new();
    *MAJOR.get_or_init(|| {
        let version = pg_config_value("version"); // "PostgreSQL 15.10 (Debian ...)"
        version
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("cannot read a major version from {version:?}"))
    })
}

/// The postgres OS user's uid and gid: clusters run as that user.
fn postgres_user() -> (u32, u32) {
    // SAFETY: getpwnam returns NULL or a pointer to a static passwd entry, read at once.
    unsafe {
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(!pw.is_null(), "there is no postgres OS user");
        ((*pw).pw_uid, (*pw).pw_gid)
    }
}

/// How long a helper waits for a session to reach a state before failing the test.
pub const PATIENCE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct Options {
    pub max_connections: u32,
    /// Extra postgresql.conf lines.
    pub settings: Vec<String>,
    /// The server's programs; None: those of the `PG_CONFIG` server.
    pub bin_dir: Option<PathBuf>,
    /// Run `CREATE EXTENSION pg_reaper` in database postgres once the cluster is up.
    pub create_extension: bool,
    /// An existing data directory to start instead of a fresh initdb (a standby, say).
    pub data_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_connections: 100,
            settings: Vec::new(),
            bin_dir: None,
            create_extension: true,
            data_dir: None,
        }
    }
}

/// A running throwaway cluster; stopped and removed when dropped.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    /// The server's programs.
    pub bin: PathBuf,
}

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);

/// Runs one of the server's programs as the postgres OS user, with a UTF-8 locale whatever the
/// caller's environment has (cron, systemd and minimal containers often have no LANG).
pub fn as_postgres(program: &str, args: &[&str]) -> std::process::Output {
    as_postgres_from(std::path::Path::new(bin_dir()), program, args)
}

/// `as_postgres` with the programs of another installation.
pub fn as_postgres_from(
    bin: &std::path::Path,
    program: &str,
    args: &[&str],
) -> std::process::Output {
    let output = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(program))
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
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

/// A free port for a new cluster, taken below the kernel's ephemeral range (32768 and up on
/// Linux): a port the kernel hands out could become some connection's source port between this
/// check and the postmaster's bind.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const PORTS: u32 = 12_000;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let offset = std::process::id() * 7;
    (0..PORTS)
        .map(|_| FIRST + (offset + NEXT.fetch_add(1, Ordering::SeqCst) as u32) % PORTS)
        .find(|&port| TcpListener::bind(("127.0.0.1", port as u16)).is_ok())
        .expect("a free port") as u16
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
        let (uid, gid) = postgres_user();
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the cluster dir");
        let bin = options
            .bin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(bin_dir()));
        let data = dir.join("data");
        match &options.data_dir {
            Some(prepared) => {
                let status = Command::new("mv").arg(prepared).arg(&data).status();
                assert!(
                    status.is_ok_and(|s| s.success()),
                    "move {prepared:?} in place"
                );
            }
            None => {
                as_postgres_from(
                    &bin,
                    "initdb",
                    &[
                        "-A",
                        "trust",
                        "-U",
                        "postgres",
                        "--no-sync",
                        "--encoding=UTF8",
                        "--locale=C.UTF-8",
                        "-D",
                        data.to_str().unwrap(),
                    ],
                );
            }
        }
        let port = free_port();
        let mut conf = format!(
            "\n# the test harness\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
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
        let cluster = Cluster { dir, port, bin };
        cluster.start_server();
        if options.create_extension {
            cluster
                .superuser()
                .batch_execute("CREATE EXTENSION pg_reaper")
                .expect("CREATE EXTENSION");
        }
        cluster
    }

    /// A hot standby of `primary` (pg_basebackup over loopback, streaming), started with the
    /// same options; the primary needs nothing special (wal_level = replica is the default).
    pub fn standby_of(primary: &Cluster, mut options: Options) -> Cluster {
        let n = CLUSTERS.fetch_add(1, Ordering::SeqCst);
        let backup = PathBuf::from(format!("/tmp/pgr-{}-{n}-backup", std::process::id()));
        let _ = std::fs::remove_dir_all(&backup);
        as_postgres_from(
            &primary.bin,
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                backup.to_str().unwrap(),
                "-R",
                "-X",
                "stream",
            ],
        );
        options.data_dir = Some(backup);
        options.create_extension = false;
        options.bin_dir = Some(primary.bin.clone());
        options.settings.push("hot_standby = on".into());
        Cluster::start_with(options)
    }

    /// Starts the (stopped) server.
    pub fn start_server(&self) {
        self.pg_ctl(&[
            "-w",
            "-t",
            "60",
            "start",
            "-l",
            self.log_path().to_str().unwrap(),
        ]);
    }

    /// Stops the server (fast shutdown).
    pub fn stop_server(&self) {
        self.pg_ctl(&["-w", "-t", "60", "-m", "fast", "stop"]);
    }

    /// Promotes a standby and waits until it accepts writes.
    pub fn promote(&self) {
        self.pg_ctl(&["-w", "-t", "60", "promote"]);
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.data_dir();
        let mut all = vec!["-D", data.to_str().unwrap()];
        all.extend_from_slice(args);
        as_postgres_from(&self.bin, "pg_ctl", &all);
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

    /// The "Grand total: N bytes" of every memory-context dump of backend `pid` in the server
    /// log (`pg_log_backend_memory_contexts`), oldest first.
    pub fn memory_totals_logged(&self, pid: i32) -> Vec<i64> {
        self.memory_dumps_logged(pid)
            .iter()
            .map(|d| d.total)
            .collect()
    }

    /// Every complete memory-context dump of backend `pid` in the server log, oldest first.
    pub fn memory_dumps_logged(&self, pid: i32) -> Vec<MemoryDump> {
        let tag = format!("[{pid}]");
        let mut dumps = Vec::new();
        let mut contexts: Option<Vec<String>> = None;
        for line in self.server_log().lines().filter(|l| l.contains(&tag)) {
            if line.contains("logging memory contexts of PID") {
                contexts = Some(Vec::new());
            } else if let Some(total) = line.split("Grand total: ").nth(1) {
                let total = total.split(' ').next().and_then(|t| t.parse().ok());
                if let (Some(contexts), Some(total)) = (contexts.take(), total) {
                    dumps.push(MemoryDump { total, contexts });
                }
            } else if let (Some(contexts), Some(context)) =
                (contexts.as_mut(), line.split("level: ").nth(1))
            {
                contexts.push(context.to_string());
            }
        }
        dumps
    }

    /// Waits until the server log holds `needle` at least `times` times (PATIENCE at most).
    pub fn wait_for_log(&self, needle: &str, times: usize) {
        self.wait_for_log_within(needle, times, PATIENCE)
    }

    /// `wait_for_log` with a limit of its own.
    pub fn wait_for_log_within(&self, needle: &str, times: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.server_log().matches(needle).count() < times {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} x{times} in:\n{}",
                self.server_log()
            );
            thread::sleep(Duration::from_millis(50));
        }
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

    /// A TCP client as `user` to database `dbname`.
    pub fn connect_to(&self, user: &str, dbname: &str) -> Client {
        self.connect_with_db(user, "pg_reaper_tests", "127.0.0.1", dbname)
    }

    fn connect_with(&self, user: &str, application_name: &str, host: &str) -> Client {
        self.connect_with_db(user, application_name, host, "postgres")
    }

    fn connect_with_db(
        &self,
        user: &str,
        application_name: &str,
        host: &str,
        dbname: &str,
    ) -> Client {
        let mut config = postgres::Config::new();
        config
            .host(host)
            .port(self.port)
            .user(user)
            .dbname(dbname)
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

    /// A TCP client as `user` that collects every NOTICE or WARNING it receives, as
    /// "SEVERITY SQLSTATE: message".
    pub fn collecting_client(&self, user: &str) -> (Client, Notices) {
        let notices: Notices = Arc::default();
        let sink = notices.clone();
        let mut config = postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .dbname("postgres")
            .application_name("collecting_caller")
            .notice_callback(move |n| {
                sink.lock().unwrap().push(format!(
                    "{} {}: {}",
                    n.severity(),
                    n.code().code(),
                    n.message()
                ))
            });
        let mut client = config.connect(NoTls).expect("connect");
        // The default, said out loud: NOTICE and above reach the client.
        client
            .batch_execute("SET client_min_messages = notice")
            .unwrap();
        (client, notices)
    }

    pub fn connect(&self, user: &str) -> Client {
        self.connect_as(user, "pg_reaper_tests")
    }

    pub fn superuser(&self) -> Client {
        self.connect("postgres")
    }

    /// A cluster of its own with pg_reaper preloaded, `settings` added, and the LOGIN role `app`.
    pub fn preloaded(settings: &[&str]) -> Cluster {
        let mut all = vec!["shared_preload_libraries = 'pg_reaper'".to_string()];
        all.extend(settings.iter().map(|s| s.to_string()));
        let cluster = Cluster::start_with(Options {
            settings: all,
            ..Options::default()
        });
        cluster.create_role("app", "");
        cluster
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
        wait_until_with(&mut self.superuser(), pid, condition)
    }

    /// The postmaster's start time, to prove it never restarted.
    pub fn postmaster_start(&self) -> String {
        self.superuser()
            .query_one("SELECT pg_postmaster_start_time()::text", &[])
            .unwrap()
            .get(0)
    }
}

/// `Cluster::wait_until` on a connection the test already holds (no new connection is opened,
/// which matters while a test pause keeps new backends from joining).
pub fn wait_until_with(c: &mut Client, pid: i32, condition: &str) {
    wait_for(
        c,
        &format!(
            "SELECT count(*) = 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid = {pid} AND ({condition})"
        ),
    );
}

/// Waits until `sql` (a query of one boolean) is true, PATIENCE at most; each look takes a new
/// statistics snapshot.
pub fn wait_for(c: &mut Client, sql: &str) {
    wait_for_within(c, sql, PATIENCE)
}

/// How long a test waits for logical replication to start: PostgreSQL 14 and 15 start the
/// workers of a server's subscriptions at most once per `wal_retrieve_retry_interval` (5 s),
/// and a table's first copy waits for a free worker slot the same way.
pub const REPLICATION_PATIENCE: Duration = Duration::from_secs(90);

/// Waits until the `tables` subscribed tables of the database `c` is connected to have been
/// copied and stream (each `ready` in pg_subscription_rel), REPLICATION_PATIENCE at most.
pub fn wait_subscriptions_ready(c: &mut Client, tables: i64) {
    wait_replicated(
        c,
        &format!(
            "SELECT count(*) = {tables} AND bool_and(srsubstate = 'r') \
               FROM pg_catalog.pg_subscription_rel"
        ),
    )
}

/// `wait_for` a condition that waits on logical replication (an apply worker that lost its
/// connection, or failed, starts again a `wal_retrieve_retry_interval` later).
pub fn wait_replicated(c: &mut Client, sql: &str) {
    wait_for_within(c, sql, REPLICATION_PATIENCE)
}

/// `wait_for` with a limit of its own.
pub fn wait_for_within(c: &mut Client, sql: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        c.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
        let done: Option<bool> = c.query_opt(sql, &[]).unwrap().and_then(|row| row.get(0));
        if done == Some(true) {
            return;
        }
        assert!(Instant::now() < deadline, "never true: {sql}");
        thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", data.to_str().unwrap()])
            .args(["-m", "immediate", "stop"])
            .output();
        if std::env::var_os("PG_REAPER_KEEP_CLUSTER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn alive(c: &mut Client, pid: i32) -> bool {
    c.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
    // Not the asking backend itself: a pid freed a moment ago may be the one it was given.
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = $1 AND pid <> pg_backend_pid()",
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

/// A pause the test-only settings put inside a signalling call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Between choosing the victims and re-checking them (`pg_reaper.recheck_delay_ms`).
    BeforeRecheck,
    /// Between the re-check and the first victim's pinned check (`pg_reaper.check_delay_ms`).
    BeforeCheck,
    /// Between the first victim's identity check and its signal, with the victim pinned
    /// (`pg_reaper.signal_delay_ms`).
    BeforeSignal,
}

/// How long a window stays open: long enough for any change a test makes in it.
pub const WINDOW_MS: u64 = 3000;

/// Runs `sql` (a pg_reaper call with the filter as $1) from a background superuser session
/// that pauses in `window`, runs `during` once the caller is seen waiting there, checks that
/// the caller was still waiting when `during` was done (so the change landed inside the
/// window), and returns the rows. `during` gets a connection opened before the window, for
/// what it must ask the server meanwhile.
pub fn call_in_window(
    cluster: &Cluster,
    window: Window,
    sql: &'static str,
    filter: &str,
    during: impl FnOnce(&mut Client),
) -> Vec<Row> {
    call_in_window_as(cluster, cluster.superuser(), window, sql, filter, during)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `call_in_window` from the given caller's connection, returning the call's result.
pub fn call_in_window_as(
    cluster: &Cluster,
    caller: Client,
    window: Window,
    sql: &'static str,
    filter: &str,
    during: impl FnOnce(&mut Client),
) -> Result<Vec<Row>, postgres::Error> {
    call_in_window_with(cluster, caller, None, window, sql, filter, during)
}

/// `call_in_window` as `role` (a superuser's session sets the pause, which only a superuser
/// may, then becomes `role` with SET ROLE), returning the call's result.
pub fn call_in_window_as_role(
    cluster: &Cluster,
    role: &str,
    window: Window,
    sql: &'static str,
    filter: &str,
    during: impl FnOnce(&mut Client),
) -> Result<Vec<Row>, postgres::Error> {
    let caller = cluster.superuser();
    call_in_window_with(cluster, caller, Some(role), window, sql, filter, during)
}

fn call_in_window_with(
    cluster: &Cluster,
    mut caller: Client,
    role: Option<&str>,
    window: Window,
    sql: &'static str,
    filter: &str,
    during: impl FnOnce(&mut Client),
) -> Result<Vec<Row>, postgres::Error> {
    let filter = filter.to_string();
    let setting = match window {
        Window::BeforeRecheck => "pg_reaper.recheck_delay_ms",
        Window::BeforeCheck => "pg_reaper.check_delay_ms",
        Window::BeforeSignal => "pg_reaper.signal_delay_ms",
    };
    let mut observer = cluster.superuser();
    let caller_pid = backend_pid(&mut caller);
    caller
        .batch_execute(&format!("SET {setting} = {WINDOW_MS}"))
        .unwrap();
    if let Some(role) = role {
        caller.batch_execute(&format!("SET ROLE {role}")).unwrap();
    }
    let handle = std::thread::spawn(move || call(&mut caller, sql, &filter));
    let waiting = "a.wait_event_type = 'Extension' AND a.wait_event = 'Extension'";
    wait_until_with(&mut observer, caller_pid, waiting);
    during(&mut observer);
    let still: i64 = observer
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_catalog.pg_stat_activity a WHERE a.pid = $1 AND {waiting}"
            ),
            &[&caller_pid],
        )
        .unwrap()
        .get(0);
    assert_eq!(still, 1, "the change must land inside the window");
    handle.join().unwrap()
}

/// `call_in_window` before the re-check, for terminate_matching with a 2 s timeout.
pub fn terminate_with_window(cluster: &Cluster, filter: &str, during: impl FnOnce()) -> Vec<Row> {
    let sql = "reaper.terminate_matching($1::text::jsonb, 2000)";
    call_in_window(cluster, Window::BeforeRecheck, sql, filter, |_| during())
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

/// Sends `sig` (libc::SIGSTOP, libc::SIGCONT, ...) to a process, as root: a stopped backend
/// cannot act on a signal until it is continued.
pub fn signal_process(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid and a signal number.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
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

/// A process's peak resident memory so far (VmHWM, kB), as root.
pub fn peak_memory_kb(pid: i32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// What one statement cost a fresh backend of `user`: how long it took, how far it raised the
/// backend's peak resident memory above what the connection itself had reached (kB), and its
/// result (the rows' count, or the error). The backend loads pg_reaper first, so that the
/// library's own size is part of the baseline.
pub fn cost_in_fresh_backend(
    cluster: &Cluster,
    user: &str,
    sql: &str,
) -> (Duration, i64, Result<usize, postgres::Error>) {
    let mut c = cluster.connect(user);
    let pid = backend_pid(&mut c);
    c.batch_execute("SELECT reaper.validate_filter('{\"all\": true}')")
        .unwrap();
    let before = peak_memory_kb(pid);
    let started = Instant::now();
    let result = c.query(sql, &[]).map(|rows| rows.len());
    let took = started.elapsed();
    (took, peak_memory_kb(pid) - before, result)
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

/// A cluster shared by the tests of one module (`key`: its `module_path!()`) while they run: the first caller
/// starts it and runs `setup` on it (roles, databases); it is stopped when the last test holding
/// it ends, and a caller that then finds none running starts a new one. Only a `Weak` is kept in
/// the static, because a static is never dropped: holding the cluster there would leave its
/// postmaster running after the binary exits. Each test must tag its sessions (`tag`) and name
/// its tag in every filter, so that no test sees or signals another's sessions.
pub fn shared_cluster(key: &'static str, setup: fn(&Cluster)) -> std::sync::Arc<Cluster> {
    shared_cluster_with(key, Options::default, setup)
}

/// `shared_cluster`, started with `options()`.
pub fn shared_cluster_with(
    key: &'static str,
    options: fn() -> Options,
    setup: fn(&Cluster),
) -> std::sync::Arc<Cluster> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, Weak};
    static SHARED: Mutex<Option<HashMap<&'static str, Weak<Cluster>>>> = Mutex::new(None);
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let clusters = shared.get_or_insert_with(HashMap::new);
    if let Some(cluster) = clusters.get(key).and_then(Weak::upgrade) {
        return cluster;
    }
    let cluster = Arc::new(Cluster::start_with(options()));
    setup(&cluster);
    clusters.insert(key, Arc::downgrade(&cluster));
    cluster
}

/// Adds a section of figures to the reliability report (assembled into target/RELIABILITY.md by
/// `make test`); `name` orders and names the section. The report describes the run on
/// PostgreSQL 15 (`make test`); on other majors only `record_figures_per_major` sections count.
pub fn record_figures(name: &str, markdown: &str) {
    if server_major() == 15 {
        write_figures(name, markdown);
    }
}

/// A section recorded on every major, one file per major (its title should name the major).
pub fn record_figures_per_major(name: &str, markdown: &str) {
    write_figures(&format!("{name}-pg{}", server_major()), markdown);
}

fn write_figures(name: &str, markdown: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/reliability");
    std::fs::create_dir_all(&dir).expect("reliability dir");
    std::fs::write(dir.join(format!("{name}.md")), markdown).expect("write figures");
}

/// Reports `test` as skipped on this server, with the reason, and returns: the test runner
/// counts it as passed, so the skip is also written to `target/skipped/pg<major>.txt`, which
/// the closing count of `make test` subtracts and lists by name.
pub fn skip(test: &str, reason: &str) {
    let major = server_major();
    let line = format!("{test}: {reason}");
    println!("SKIPPED {line}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/skipped");
    std::fs::create_dir_all(&dir).expect("skipped dir");
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("pg{major}.txt")))
        .expect("skipped file");
    writeln!(file, "{line}").expect("write skipped");
}

/// One `pg_log_backend_memory_contexts` dump: its grand total in bytes and its context lines
/// ("1; TopTransactionContext: 8192 total in 1 blocks; ...").
#[derive(Debug, Clone)]
pub struct MemoryDump {
    pub total: i64,
    pub contexts: Vec<String>,
}

impl MemoryDump {
    /// Whether the dump lists a context of this name.
    pub fn has_context(&self, name: &str) -> bool {
        let needle = format!("; {name}:");
        self.contexts.iter().any(|c| c.contains(&needle))
    }
}
