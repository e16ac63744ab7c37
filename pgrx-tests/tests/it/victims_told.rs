//! The victim learns why (`pg_reaper.tell_victims`, with the library preloaded): the error a
//! cancelled or terminated session's client receives carries a DETAIL saying who and why, with
//! PostgreSQL's own SQLSTATE and message. Seen by real clients, psql (its stderr) and psycopg
//! (`diag.message_detail`, or a notice for a session terminated while idle), and in the victim's
//! own server-log line; never stale: no DETAIL for a later plain cancel or termination, a
//! statement_timeout, a cancel an exception block caught, or a new backend in the same slot.

use pg_reaper_integration::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;

fn told_cluster() -> Arc<Cluster> {
    shared_cluster_with(
        "victims_told",
        || Options {
            settings: vec![
                "shared_preload_libraries = 'pg_reaper'".into(),
                "pg_reaper.worker = off".into(),
            ],
            ..Options::default()
        },
        setup,
    )
}

fn setup(cluster: &Cluster) {
    {
        cluster.create_role("app", "");
        cluster.create_role("quiet_app", "");
        cluster
            .superuser()
            .batch_execute(
                "CREATE TABLE told (id int); INSERT INTO told VALUES (1); GRANT ALL ON told TO app",
            )
            .unwrap();
    }
}

/// A psql session as `app` reading its commands from a pipe: its stderr, once its input
/// ends, is what a user at the terminal would have read.
struct Psql {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Psql {
    fn start(cluster: &Cluster, tag: &str) -> Psql {
        let mut child = Command::new(cluster.bin.join("psql"))
            .args(["-X", "-h", "127.0.0.1", "-U", "app", "-d", "postgres"])
            .args(["-p", &cluster.port.to_string()])
            .env("PGAPPNAME", tag)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql");
        let stdin = child.stdin.take();
        let mut psql = Psql { child, stdin };
        psql.send("SELECT 1;");
        psql
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Ends its input (after `last`, if any) and returns its stderr.
    fn stderr(mut self, last: Option<&str>) -> String {
        // psql may have left already (a lost connection ends a script): nothing to send then.
        if let (Some(line), Some(stdin)) = (last, self.stdin.as_mut()) {
            let _ = writeln!(stdin, "{line}").and_then(|()| stdin.flush());
        }
        drop(self.stdin.take());
        let out = self.child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// A psycopg 3 client as `app`: each command line runs one statement and answers one JSON line
/// with the error it raised (sqlstate, severity, message, detail) and the notices it received
/// (the FATAL of a session terminated while idle arrives as one).
const PSYCOPG_CLIENT: &str = r#"
import json, sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
notices = []
conn.add_notice_handler(lambda d: notices.append(
    {"severity": d.severity, "sqlstate": d.sqlstate, "message": d.message_primary, "detail": d.message_detail}))
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    out = {}
    try:
        conn.execute(line)
        out["ok"] = True
    except psycopg.Error as e:
        d = e.diag
        out["error"] = {"class": type(e).__name__, "sqlstate": d.sqlstate, "severity": d.severity,
                        "message": d.message_primary, "detail": d.message_detail, "text": str(e)}
    out["notices"] = notices[:]
    notices.clear()
    print(json.dumps(out), flush=True)
    if conn.closed:
        break
"#;

struct Psycopg {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Psycopg {
    fn start(cluster: &Cluster, tag: &str) -> Psycopg {
        Psycopg::start_as(cluster, "app", tag)
    }

    fn start_as(cluster: &Cluster, user: &str, tag: &str) -> Psycopg {
        // Written once per test process, whole before anyone runs it (the tests run in
        // parallel: one writing the file while another's python reads it ran an empty script).
        static SCRIPT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| {
            let dir = std::env::temp_dir();
            let id = std::process::id();
            let path = dir.join(format!("pg_reaper_psycopg_client_{id}.py"));
            let partial = dir.join(format!("pg_reaper_psycopg_client_{id}.py.partial"));
            std::fs::write(&partial, PSYCOPG_CLIENT).unwrap();
            std::fs::rename(&partial, &path).unwrap();
            path
        });
        let dsn = format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres application_name={tag}",
            cluster.port
        );
        // Debian's python3-psycopg (`make test` installs it), with Debian's libpq.
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(dsn)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with psycopg");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut ready = String::new();
        stdout.read_line(&mut ready).unwrap();
        assert!(ready.contains("ready"), "psycopg client: {ready:?}");
        Psycopg {
            child,
            stdin,
            stdout,
        }
    }

    fn start_statement(&mut self, sql: &str) {
        writeln!(self.stdin, "{sql}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn answer(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }

    fn run(&mut self, sql: &str) -> serde_json::Value {
        self.start_statement(sql);
        self.answer()
    }
}

impl Drop for Psycopg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pid_of(su: &mut Client, tag: &str) -> i32 {
    wait_for(
        su,
        &format!("SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = '{tag}'"),
    );
    su.query_one(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
        &[&tag],
    )
    .unwrap()
    .get(0)
}

fn sleeping(su: &mut Client, tag: &str) -> i32 {
    let pid = pid_of(su, tag);
    wait_until_with(su, pid, "a.state = 'active' AND a.wait_event = 'PgSleep'");
    pid
}

fn idle(su: &mut Client, tag: &str, state: &str) -> i32 {
    let pid = pid_of(su, tag);
    wait_until_with(su, pid, &format!("a.state = '{state}'"));
    pid
}

fn filter(tag: &str) -> String {
    format!(r#"{{"application_name": "{tag}"}}"#)
}

fn one(rows: &[Row], outcome: &str) {
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].outcome, outcome, "{rows:?}");
}

/// The DETAIL line psql printed, if any.
fn psql_detail(stderr: &str) -> Option<&str> {
    stderr.lines().find_map(|l| l.strip_prefix("DETAIL:  "))
}

#[test]
fn a_cancelled_statement_says_who_and_why_to_psql_and_psycopg() {
    let cluster = told_cluster();
    let mut su = cluster.superuser();
    let tag = tag("told_cancel");
    let mut psql = Psql::start(&cluster, &format!("{tag}_psql"));
    psql.send("SELECT pg_sleep(600);");
    let mut py = Psycopg::start(&cluster, &format!("{tag}_py"));
    py.start_statement("SELECT pg_sleep(600)");
    sleeping(&mut su, &format!("{tag}_psql"));
    sleeping(&mut su, &format!("{tag}_py"));
    std::thread::sleep(std::time::Duration::from_millis(1100)); // an age of a whole second
    let rows = cancel(
        &mut su,
        &format!(r#"{{"application_name": {{"regex": "^{tag}_"}}}}"#),
    );
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r.outcome == "cancelled"), "{rows:?}");

    let answer = py.answer();
    let e = &answer["error"];
    assert_eq!(e["sqlstate"], "57014", "{answer}");
    assert_eq!(e["message"], "canceling statement due to user request");
    let detail = e["detail"].as_str().unwrap_or_default();
    assert!(
        detail
            .starts_with("pg_reaper: cancelled by role \"postgres\": running a query for 00:00:0"),
        "{answer}"
    );
    // The session lives on, and its next statement carries nothing.
    assert_eq!(py.run("SELECT 1")["ok"], true);

    let stderr = psql.stderr(None);
    assert!(
        stderr.contains("ERROR:  canceling statement due to user request"),
        "{stderr}"
    );
    let detail = psql_detail(&stderr).unwrap_or_else(|| panic!("no DETAIL in {stderr}"));
    assert!(
        detail.starts_with("pg_reaper: cancelled by role \"postgres\": running a query for"),
        "{stderr}"
    );
}

#[test]
fn a_policy_terminating_a_running_and_an_idle_session_tells_both_and_the_server_log() {
    let cluster = told_cluster();
    let mut su = cluster.superuser();
    let tag = tag("told_policy");
    su.execute(
        "INSERT INTO reaper.policies (name, filter) VALUES ($1, $2::text::jsonb)",
        &[
            &format!("{tag}-tx"),
            &format!(
                r#"{{"application_name": {{"regex": "^{tag}_"}}, "state": ["active", "idle in transaction"]}}"#
            ),
        ],
    )
    .unwrap();
    let mut psql_idle = Psql::start(&cluster, &format!("{tag}_psql_idle"));
    psql_idle.send("BEGIN; SELECT 1;");
    let mut psql_busy = Psql::start(&cluster, &format!("{tag}_psql_busy"));
    psql_busy.send("SELECT pg_sleep(600);");
    let mut py_idle = Psycopg::start(&cluster, &format!("{tag}_py_idle"));
    assert_eq!(py_idle.run("BEGIN")["ok"], true);
    let mut py_busy = Psycopg::start(&cluster, &format!("{tag}_py_busy"));
    py_busy.start_statement("SELECT pg_sleep(600)");
    idle(&mut su, &format!("{tag}_psql_idle"), "idle in transaction");
    idle(&mut su, &format!("{tag}_py_idle"), "idle in transaction");
    sleeping(&mut su, &format!("{tag}_psql_busy"));
    let busy_pid = sleeping(&mut su, &format!("{tag}_py_busy"));

    let rows = call(&mut su, &format!("reaper.run_policy('{tag}-tx')"), "").unwrap();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r.outcome == "signalled"), "{rows:?}");
    let policy = format!("pg_reaper: terminated by policy \"{tag}-tx\": ");

    // Running: the statement's error is the FATAL, with the reason.
    let answer = py_busy.answer();
    let detail = termination(&answer).unwrap_or_default();
    assert!(
        detail.starts_with(&format!("{policy}running a query for")),
        "{answer}"
    );

    // Idle: the FATAL arrives while no statement runs. The next statement finds it: as its
    // error, or (libpq reads it before the statement is sent) as a notice, before the
    // connection is found closed. Either way the DETAIL is there.
    cluster_wait_gone(&mut su, &format!("{tag}_py_idle"));
    let answer = py_idle.run("SELECT 1");
    assert!(answer["error"].is_object(), "{answer}");
    let detail = termination(&answer).unwrap_or_default();
    assert!(
        detail.starts_with(&format!("{policy}idle in transaction for")),
        "{answer}"
    );

    for (psql, state) in [
        (psql_busy, "running a query for"),
        (psql_idle, "idle in transaction for"),
    ] {
        let stderr = psql.stderr(Some("SELECT 2;"));
        assert!(
            stderr.contains("FATAL:  terminating connection due to administrator command"),
            "{stderr}"
        );
        let detail = psql_detail(&stderr).unwrap_or_else(|| panic!("no DETAIL in {stderr}"));
        assert!(detail.starts_with(&format!("{policy}{state}")), "{stderr}");
    }

    // The victim's own server-log line says the same.
    let log = cluster.server_log();
    let at = log
        .find(&format!(
            "[{busy_pid}] FATAL:  terminating connection due to administrator command"
        ))
        .or_else(|| {
            log.lines()
                .position(|l| {
                    l.contains(&busy_pid.to_string()) && l.contains("FATAL:  terminating")
                })
                .map(|_| 0)
        });
    assert!(at.is_some(), "no FATAL of {busy_pid} in the log");
    assert!(
        log.contains(&format!("DETAIL:  {policy}running a query for")),
        "no DETAIL in the server log"
    );
}

/// The DETAIL of the termination psycopg reports in `answer`, wherever it shows it: as the
/// statement's error or as a notice, with libpq's fields (sqlstate 57P01, severity FATAL); or,
/// when the server closed the connection while libpq read the result, only in the error's text
/// ("consuming input failed: terminating connection due to administrator command\nDETAIL:  ...").
/// Panics when there is no termination in `answer` at all.
fn termination(answer: &serde_json::Value) -> Option<String> {
    const MESSAGE: &str = "terminating connection due to administrator command";
    let error = &answer["error"];
    let fielded = std::iter::once(error)
        .chain(answer["notices"].as_array().into_iter().flatten())
        .find(|e| e["sqlstate"] == "57P01");
    if let Some(fatal) = fielded {
        assert_eq!(fatal["severity"], "FATAL", "{answer}");
        assert_eq!(fatal["message"], MESSAGE, "{answer}");
        return fatal["detail"].as_str().map(str::to_string);
    }
    let text = error["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(&format!("{MESSAGE}\n")),
        "no termination, as an error or a notice: {answer}"
    );
    text.lines()
        .skip_while(|l| !l.ends_with(MESSAGE))
        .nth(1)
        .and_then(|l| l.strip_prefix("DETAIL:  "))
        .map(str::to_string)
}

fn cluster_wait_gone(su: &mut Client, tag: &str) {
    wait_for(
        su,
        &format!("SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = '{tag}'"),
    );
}

#[test]
fn verbose_adds_the_filter_and_off_tells_nothing() {
    let cluster = told_cluster();
    let mut su = cluster.superuser();
    for (setting, want) in [("verbose", true), ("off", false)] {
        let tag = tag(&format!("told_{setting}"));
        let mut py = Psycopg::start(&cluster, &tag);
        py.start_statement("SELECT pg_sleep(600)");
        sleeping(&mut su, &tag);
        su.batch_execute(&format!("SET pg_reaper.tell_victims = {setting}"))
            .unwrap();
        one(&cancel(&mut su, &filter(&tag)), "cancelled");
        su.batch_execute("RESET pg_reaper.tell_victims").unwrap();
        let answer = py.answer();
        assert_eq!(answer["error"]["sqlstate"], "57014", "{answer}");
        let detail = answer["error"]["detail"].as_str();
        if want {
            let detail = detail.unwrap_or_default();
            assert!(
                detail.starts_with("pg_reaper: cancelled by role \"postgres\""),
                "{answer}"
            );
            assert!(
                detail.contains(&format!(r#"filter {{"application_name":"{tag}","#)),
                "{answer}"
            );
        } else {
            assert!(detail.is_none(), "{answer}");
        }
    }
    // Only a superuser may change it.
    let mut app = cluster.connect("app");
    let err = app
        .batch_execute("SET pg_reaper.tell_victims = off")
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
}

#[test]
fn nothing_stale_reaches_a_later_signal() {
    let cluster = told_cluster();
    let mut su = cluster.superuser();
    let tag = tag("told_stale");
    let mut py = Psycopg::start(&cluster, &tag);

    // A cancel pg_reaper sends to an idle session raises nothing there, and tells nothing
    // to a later plain cancel.
    let pid = idle(&mut su, &tag, "idle");
    one(&cancel(&mut su, &filter(&tag)), "cancelled");
    assert_eq!(py.run("SELECT 1")["ok"], true);
    py.start_statement("SELECT pg_sleep(600)");
    sleeping(&mut su, &tag);
    su.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
    let answer = py.answer();
    assert_eq!(answer["error"]["sqlstate"], "57014", "{answer}");
    assert!(answer["error"]["detail"].is_null(), "{answer}");

    // A reason left for a statement that then ended (the test build withholds the signal, so
    // it waits in the victim's slot) tells nothing to a plain cancel of the next statement.
    su.batch_execute("SELECT pg_advisory_lock(4243)").unwrap();
    py.start_statement("SELECT pg_advisory_lock(4243)");
    wait_until_with(
        &mut su,
        pid,
        "a.state = 'active' AND a.wait_event = 'advisory'",
    );
    let started = query_start(&mut su, pid);
    withheld(&mut su, |su| cancel(su, &filter(&tag)));
    assert_eq!(
        query_start(&mut su, pid),
        started,
        "the reason is for the waiting statement"
    );
    su.batch_execute("SELECT pg_advisory_unlock(4243)").unwrap();
    assert_eq!(py.answer()["ok"], true, "the statement ended");
    assert_eq!(py.run("SELECT pg_advisory_unlock(4243)")["ok"], true);
    py.start_statement("SELECT pg_sleep(600)");
    sleeping(&mut su, &tag);
    su.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
    let answer = py.answer();
    assert_eq!(answer["error"]["sqlstate"], "57014", "{answer}");
    assert!(answer["error"]["detail"].is_null(), "{answer}");

    // A cancel of pg_reaper's that an exception block caught tells nothing to a plain cancel
    // later in the same statement (the same statement start), nor to a plain termination.
    for (plain, sqlstate) in [
        ("pg_cancel_backend", "57014"),
        ("pg_terminate_backend", "57P01"),
    ] {
        su.batch_execute("SELECT pg_advisory_lock(4242)").unwrap();
        py.start_statement(
            "DO $$ BEGIN \
               BEGIN PERFORM pg_sleep(600); EXCEPTION WHEN query_canceled THEN NULL; END; \
               PERFORM pg_advisory_lock(4242); END $$",
        );
        sleeping(&mut su, &tag);
        one(&cancel(&mut su, &filter(&tag)), "cancelled");
        // Caught: it goes on, in the same statement, to wait for the lock.
        wait_until_with(
            &mut su,
            pid,
            "a.state = 'active' AND a.wait_event = 'advisory'",
        );
        su.execute(&format!("SELECT {plain}($1)"), &[&pid]).unwrap();
        su.batch_execute("SELECT pg_advisory_unlock(4242)").unwrap();
        let answer = py.answer();
        if plain == "pg_terminate_backend" {
            assert_eq!(termination(&answer), None, "{plain}: {answer}");
        } else {
            assert_eq!(answer["error"]["sqlstate"], sqlstate, "{answer}");
            assert!(answer["error"]["detail"].is_null(), "{plain}: {answer}");
        }
    }
}

#[test]
fn a_statement_timeout_is_told_nothing() {
    let cluster = told_cluster();
    let mut su = cluster.superuser();
    let tag = tag("told_timeout");
    let mut py = Psycopg::start(&cluster, &tag);
    let pid = pid_of(&mut su, &tag);
    // A reason waits for the running statement (the test build withholds the signal), then the
    // statement_timeout cancels that statement: PostgreSQL's message, nothing added.
    assert_eq!(py.run("SET statement_timeout = '5s'")["ok"], true);
    py.start_statement("SELECT pg_sleep(600)");
    sleeping(&mut su, &tag);
    let started = query_start(&mut su, pid);
    let rows = withheld(&mut su, |su| cancel(su, &filter(&tag)));
    assert_eq!(rows.len(), 1, "{rows:?}");
    // The reason was left for this very statement: it still ran when it was left.
    assert_eq!(query_start(&mut su, pid), started, "the timeout came first");
    let answer = py.answer();
    assert_eq!(answer["error"]["sqlstate"], "57014", "{answer}");
    assert_eq!(
        answer["error"]["message"],
        "canceling statement due to statement timeout"
    );
    assert!(answer["error"]["detail"].is_null(), "{answer}");

    // The control: a reason left the same way is found by a cancel of its own statement.
    assert_eq!(py.run("SET statement_timeout = 0")["ok"], true);
    py.start_statement("SELECT pg_sleep(600)");
    sleeping(&mut su, &tag);
    withheld(&mut su, |su| cancel(su, &filter(&tag)));
    su.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
    let answer = py.answer();
    assert_eq!(
        answer["error"]["message"],
        "canceling statement due to user request"
    );
    let detail = answer["error"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("pg_reaper: cancelled by role \"postgres\""),
        "{answer}"
    );
}

/// The start of the statement `pid` runs, if it runs one (a fresh statistics snapshot).
fn query_start(su: &mut Client, pid: i32) -> Option<String> {
    su.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
    su.query_one(
        "SELECT CASE WHEN state = 'active' THEN query_start::text END FROM pg_stat_activity WHERE pid = $1",
        &[&pid],
    )
    .unwrap()
    .get(0)
}

/// Runs `call` with `pg_reaper.test_withhold_signal` on in `su`'s session: the reasons are
/// left, no signal is sent.
fn withheld<T>(su: &mut Client, call: impl FnOnce(&mut Client) -> T) -> T {
    su.batch_execute("SET pg_reaper.test_withhold_signal = on")
        .unwrap();
    let out = call(su);
    su.batch_execute("RESET pg_reaper.test_withhold_signal")
        .unwrap();
    out
}

#[test]
fn a_new_backend_in_a_victims_slot_is_told_nothing() {
    // Four backend slots, all taken but the victim's: the session that connects after it
    // left takes its slot, where a reason it never took is still kept.
    let cluster = Cluster::start_with(Options {
        max_connections: 4,
        settings: vec![
            "shared_preload_libraries = 'pg_reaper'".into(),
            "superuser_reserved_connections = 0".into(),
            "pg_reaper.worker = off".into(),
        ],
        ..Options::default()
    });
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    let tag = tag("told_slot");
    let _fill = [cluster.connect("app"), cluster.connect("app")];
    let mut victim = Psycopg::start(&cluster, &tag);
    // A termination's reason waits in the victim's slot (the test build withholds the
    // signal); the victim then leaves on its own.
    assert_eq!(victim.run("SELECT 1")["ok"], true);
    let rows = withheld(&mut su, |su| terminate(su, &filter(&tag), 0));
    assert_eq!(rows.len(), 1, "{rows:?}");
    drop(victim);
    cluster_wait_gone(&mut su, &tag);
    // The next session takes the slot (the only free one): a plain termination of it finds
    // a reason in its slot, for another process.
    let tag2 = format!("{tag}_next");
    let mut next = Psycopg::start(&cluster, &tag2);
    let pid = pid_of(&mut su, &tag2);
    next.start_statement("SELECT pg_sleep(600)");
    sleeping(&mut su, &tag2);
    su.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    let answer = next.answer();
    assert_eq!(termination(&answer), None, "{answer}");
}

#[test]
fn without_the_preload_the_victim_sees_postgresqls_message_only() {
    let cluster = Cluster::start();
    cluster.create_role("app", "");
    let mut su = cluster.superuser();
    let tag = tag("told_not_loaded");
    let mut py = Psycopg::start(&cluster, &tag);
    py.start_statement("SELECT pg_sleep(600)");
    sleeping(&mut su, &tag);
    one(&cancel(&mut su, &filter(&tag)), "cancelled");
    let answer = py.answer();
    assert_eq!(answer["error"]["sqlstate"], "57014", "{answer}");
    assert!(answer["error"]["detail"].is_null(), "{answer}");
}

#[test]
fn a_victim_that_logs_no_errors_gets_no_detail() {
    // emit_log_hook runs only for what goes to the server log: with log_min_messages above
    // ERROR in the victim's session, a cancel's error is not logged, and nothing is added.
    let cluster = told_cluster();
    let mut su = cluster.superuser();
    let tag = tag("told_unlogged");
    // Only a superuser may set it; for this test's own role.
    su.batch_execute("ALTER ROLE quiet_app SET log_min_messages = fatal")
        .unwrap();
    let mut py = Psycopg::start_as(&cluster, "quiet_app", &tag);
    py.start_statement("SELECT pg_sleep(600)");
    sleeping(&mut su, &tag);
    one(&cancel(&mut su, &filter(&tag)), "cancelled");
    let answer = py.answer();
    assert_eq!(answer["error"]["sqlstate"], "57014", "{answer}");
    assert!(answer["error"]["detail"].is_null(), "{answer}");
}
