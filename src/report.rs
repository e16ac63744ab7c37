//! What happened, told three ways: the result rows, one `pg_reaper:` server-log line per signal
//! (the record no rollback can undo), and the `reaper.log` audit rows.

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::activity::{Backend, HIDDEN_QUERY};
use crate::breaker::Breaker;
use crate::error::{raise, raise_with_hint};
use crate::filter::Session;
use crate::guc;
use crate::role;
use crate::signal::{in_subtransaction, Signal};

/// The `outcome` column. The strings are a contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Matched,
    Cancelled,
    Signalled,
    Terminated,
    TimedOut,
    Vanished,
    Denied,
    Failed,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Matched,
        Outcome::Cancelled,
        Outcome::Signalled,
        Outcome::Terminated,
        Outcome::TimedOut,
        Outcome::Vanished,
        Outcome::Denied,
        Outcome::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Matched => "matched",
            Outcome::Cancelled => "cancelled",
            Outcome::Signalled => "signalled",
            Outcome::Terminated => "terminated",
            Outcome::TimedOut => "timed_out",
            Outcome::Vanished => "vanished",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }

    /// Whether a signal went out for this row.
    pub fn signalled(self) -> bool {
        matches!(
            self,
            Outcome::Cancelled | Outcome::Signalled | Outcome::Terminated | Outcome::TimedOut
        )
    }
}

/// One result row: the backend as last seen, and what became of it.
#[derive(Debug, Clone)]
pub struct ResultRow {
    pub backend: Backend,
    pub outcome: Outcome,
    pub waited_ms: i64,
    pub detail: Option<String>,
}

impl ResultRow {
    pub fn new(backend: Backend, outcome: Outcome, detail: Option<String>) -> ResultRow {
        ResultRow {
            backend,
            outcome,
            waited_ms: 0,
            detail,
        }
    }

    /// The query as pg_stat_activity shows it to the caller: its placeholder for a session the
    /// caller may not see (the matcher saw NULL there).
    pub fn shown_query(&self) -> Option<String> {
        if self.backend.hidden {
            Some(HIDDEN_QUERY.to_string())
        } else {
            self.backend.session.query.clone()
        }
    }
}

/// Who acts, for whom: the role that called, the role whose privileges signal, the policy.
#[derive(Debug, Clone)]
pub struct Actor {
    pub caller: pg_sys::Oid,
    pub policy: Option<String>,
    /// The two roles' names, looked up once, up front: the LOG lines are written after the
    /// signal loop even when an error stopped it, when no catalog may be read any more.
    pub caller_name: String,
    pub run_as_name: String,
}

impl Actor {
    pub fn new(caller: pg_sys::Oid, run_as: pg_sys::Oid, policy: Option<String>) -> Actor {
        Actor {
            caller,
            policy,
            caller_name: role::name(caller),
            run_as_name: role::name(run_as),
        }
    }

    /// A direct call: the caller signals with its own privileges.
    pub fn caller() -> Actor {
        let me = role::current();
        Actor::new(me, me, None)
    }

    /// The background worker running a policy: the caller is the worker itself (a superuser
    /// session), named so in reaper.log and the LOG lines.
    pub fn worker(owner: pg_sys::Oid, policy: &str) -> Actor {
        Actor {
            caller_name: crate::filter::WORKER_TYPE.to_string(),
            ..Actor::new(role::current(), owner, Some(policy.to_string()))
        }
    }
}

/// What the victims of one call are told of why they are signalled (`pg_reaper.tell_victims`):
/// by whom (the policy, or the calling role), the action, and each victim's own facts as the
/// filter saw them, e.g. `pg_reaper: terminated by policy "idle-tx": idle in transaction for
/// 00:12:03`; with `verbose`, the filter too. Worked out once per call: only the facts are
/// each victim's.
pub struct Telling {
    /// `pg_reaper: <verb> by <who>`.
    head: String,
    /// Whether the filter asks for a transaction's age (then it is a fact worth telling).
    xact_age: bool,
    /// `; filter ...` with `verbose`, cut to what a reason can hold.
    tail: String,
}

impl Telling {
    /// None when victims are told nothing, or cannot be (the library is not preloaded).
    pub fn new(signal: Signal, actor: &Actor, filter: &crate::filter::Filter) -> Option<Telling> {
        let tell = guc::TELL_VICTIMS.get();
        if tell == guc::TellVictims::Off || !crate::reasons::available() {
            return None;
        }
        let who = match &actor.policy {
            Some(p) => format!("policy {p:?}"),
            None => format!("role {:?}", actor.caller_name),
        };
        let verb = match signal {
            Signal::Cancel => "cancelled",
            Signal::Terminate => "terminated",
        };
        let mut tail = String::new();
        if tell == guc::TellVictims::Verbose {
            tail = format!("; filter {}", filter.to_json());
            cut(&mut tail, crate::reasons::MAX_REASON_BYTES);
        }
        Some(Telling {
            head: format!("pg_reaper: {verb} by {who}"),
            xact_age: filter.uses_age(crate::filter::AgeField::Xact),
            tail,
        })
    }

    /// The reason of the victim `s`, its ages at `now`; at most MAX_REASON_BYTES.
    pub fn reason(&self, s: &Session, now: i64) -> Vec<u8> {
        let age = |t: Option<i64>| t.map(|t| hms(now.saturating_sub(t)));
        let mut facts = Vec::new();
        match (s.state.as_deref(), age(s.state_change)) {
            (Some("active"), _) => {
                if let Some(q) = age(s.query_start) {
                    facts.push(format!("running a query for {q}"));
                }
            }
            (Some(state), Some(a)) => facts.push(format!("{state} for {a}")),
            _ => {}
        }
        if self.xact_age {
            if let Some(x) = age(s.xact_start) {
                facts.push(format!("in a transaction for {x}"));
            }
        }
        if s.locks.blocking {
            facts.push(match s.locks.blocked_sessions {
                0 => "holding up other sessions".to_string(),
                n => format!("holding up {n} session(s)"),
            });
        }
        if s.locks.blocked {
            facts.push(match age(s.locks.wait_start) {
                Some(w) => format!("waiting for a lock for {w}"),
                None => "waiting for a lock".to_string(),
            });
        }
        let mut text = self.head.clone();
        if !facts.is_empty() {
            text += &format!(": {}", facts.join(", "));
        }
        text += &self.tail;
        cut(&mut text, crate::reasons::MAX_REASON_BYTES);
        text.into_bytes()
    }
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn cut(text: &mut String, max: usize) {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
}

/// A duration in microseconds as HH:MM:SS, as PostgreSQL prints an interval.
fn hms(micros: i64) -> String {
    let s = micros.max(0) / 1_000_000;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// The server-log line of every delivered signal among `rows`. Written after the signal loop,
/// never inside it: a LOG write can block on a full log pipe, and nothing slow may come between
/// a victim's identity check and its signal.
pub fn log_signals(signal: Signal, rows: &[ResultRow], actor: &Actor) {
    if !guc::LOG_ACTIONS.get() {
        return;
    }
    let policy = match &actor.policy {
        Some(p) => format!(" policy={p:?} as role={:?}", actor.run_as_name),
        None => String::new(),
    };
    let caller = &actor.caller_name;
    let show = |v: &Option<String>| v.clone().unwrap_or_default();
    for row in rows.iter().filter(|r| r.outcome.signalled()) {
        let s = &row.backend.session;
        log!(
            "pg_reaper: {} pid={} user={:?} database={:?} application={:?} by role={:?}{}",
            signal.verb(),
            s.pid,
            show(&s.usename),
            show(&s.datname),
            show(&s.application_name),
            caller,
            policy
        );
    }
}

/// A policy's run that reached its cap: one WARNING, and one `reaper.log` row with outcome
/// `tripped` saying how many victims were left (once per trip: the runs after it, while the
/// window is full, signal nothing and write nothing more; see `still_tripped`).
pub fn tripped(breaker: &Breaker, action: &str, actor: &Actor, audit: Option<&Audit>) {
    let resumes = breaker
        .resumes_at()
        .and_then(|t| timestamp(Some(t)))
        .map_or_else(|| "in its next run".to_string(), |t| format!("at {t}"));
    let detail = format!(
        "max_signals_per_minute ({}) reached: {} matching session(s) left unsignalled; it signals again {resumes}, or at once after reaper.reset_policy({})",
        breaker.cap,
        breaker.left(),
        quote_literal(&breaker.policy),
    );
    warning!("pg_reaper: policy {:?} tripped: {detail}", breaker.policy);
    crate::metrics::count_trip(&breaker.policy);
    if let Some(audit) = audit {
        let written = in_subtransaction(|| audit.write_event(action, "tripped", actor, &detail));
        if let Err(e) = written {
            warning!(
                "pg_reaper: the trip of policy {:?} could not be recorded in reaper.log: {}",
                breaker.policy,
                message(&e)
            );
            rethrow_if_fatal_to_the_call(e);
        }
    }
}

/// A run of a policy tripped by an earlier run: a NOTICE for whoever runs it (the WARNING and
/// the `tripped` row were written once, by the run that tripped it).
pub fn still_tripped(breaker: &Breaker) {
    let resumes = breaker
        .resumes_at()
        .and_then(|t| timestamp(Some(t)))
        .map_or_else(|| "in its next run".to_string(), |t| format!("at {t}"));
    notice!(
        "pg_reaper: policy {:?} is tripped, max_signals_per_minute ({}) reached: {} matching session(s) left unsignalled; it signals again {resumes}, or at once after reaper.reset_policy({})",
        breaker.policy,
        breaker.cap,
        breaker.left(),
        quote_literal(&breaker.policy),
    );
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `NOTIFY pg_reaper` for a call or run that signalled, on a primary: a JSON payload with the
/// policy or the caller, the action, the rows by outcome and the server's `cluster_name`. Sent
/// at the commit of the caller's transaction (lost if it rolls back); skipped with a WARNING
/// when the notification queue is more than half full; it never fails the call.
pub fn notify(rows: &[ResultRow], action: &str, actor: &Actor) {
    if !guc::NOTIFY.get() || !rows.iter().any(|r| r.outcome.signalled()) {
        return;
    }
    // SAFETY: a read of shared state PostgreSQL keeps for every backend.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return;
    }
    let mut outcomes = serde_json::Map::new();
    for row in rows {
        let n = outcomes
            .entry(row.outcome.as_str())
            .or_insert(serde_json::Value::from(0));
        *n = (n.as_u64().unwrap_or(0) + 1).into();
    }
    let payload = serde_json::json!({
        "policy": actor.policy,
        "caller": actor.caller_name,
        "run_as": actor.run_as_name,
        "action": action,
        "outcomes": outcomes,
        "cluster_name": guc::cluster_name(),
        // SAFETY: this backend's own pid.
        "pid": unsafe { pg_sys::MyProcPid },
    })
    .to_string();
    // Policy names and cluster_name have no bound, and a payload of NOTIFY_PAYLOAD_MAX_LENGTH
    // bytes or more is an ERROR (async.c's limit, from the block size PostgreSQL was built with).
    let max = (pg_sys::BLCKSZ - pg_sys::NAMEDATALEN - 128) as usize;
    if payload.len() >= max {
        warning!("pg_reaper: NOTIFY pg_reaper skipped: its payload is too long");
        return;
    }
    let usage =
        // SAFETY: PostgreSQL's SQL-callable function, without arguments: a read of the queue's
        // head and tail under NotifyQueueLock.
        unsafe { pgrx::direct_function_call::<f64>(pg_sys::pg_notification_queue_usage, &[]) }
            .unwrap_or(0.0);
    if usage > 0.5 {
        warning!(
            "pg_reaper: NOTIFY pg_reaper skipped: the notification queue is {:.0}% full (a listener is not reading)",
            usage * 100.0
        );
        return;
    }
    // SAFETY: PostgreSQL's pg_notify(text, text) with a valid channel and a short payload: it
    // only queues the notification in this transaction's memory (no subtransaction: each would
    // keep a memory block of its own until the commit), to be sent at the commit.
    unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::pg_notify,
            &["pg_reaper".into_datum(), payload.into_datum()],
        )
    };
}

const AUDIT_SQL: &str = "\
INSERT INTO reaper.log (logged_at, caller, run_as, policy, action, outcome, pid, backend_start,
                        usename, datname, application_name, client_addr, backend_type, state,
                        query, waited_ms, detail)
SELECT pg_catalog.clock_timestamp(), $1, $2, $3, $4, u.outcome, u.pid, u.backend_start,
       u.usename, u.datname, u.application_name, u.client_addr::pg_catalog.inet,
       u.backend_type, u.state, u.query, u.waited_ms, u.detail
  FROM ROWS FROM (pg_catalog.unnest($5::pg_catalog.text[]), pg_catalog.unnest($6::pg_catalog.int4[]),
                  pg_catalog.unnest($7::pg_catalog.timestamptz[]),
                  pg_catalog.unnest($8::pg_catalog.text[]), pg_catalog.unnest($9::pg_catalog.text[]),
                  pg_catalog.unnest($10::pg_catalog.text[]), pg_catalog.unnest($11::pg_catalog.text[]),
                  pg_catalog.unnest($12::pg_catalog.text[]), pg_catalog.unnest($13::pg_catalog.text[]),
                  pg_catalog.unnest($14::pg_catalog.text[]), pg_catalog.unnest($15::pg_catalog.int8[]),
                  pg_catalog.unnest($16::pg_catalog.text[]))
       AS u(outcome, pid, backend_start, usename, datname, application_name, client_addr,
            backend_type, state, query, waited_ms, detail)";

/// The audit of one signalling call, prepared before anything is signalled: whether rows are
/// written at all, a refusal of a read-only transaction, and the table's lock, taken now, so
/// that a locked or missing `reaper.log` stops the call before its signals rather than after.
pub struct Audit {
    owner: pg_sys::Oid,
}

impl Audit {
    /// None when no rows are written: `pg_reaper.audit` is off, or this is a standby, where
    /// nothing can be written and the server-log line is the only record.
    pub fn prepare() -> Option<Audit> {
        // SAFETY: reads of backend-local state.
        if !guc::AUDIT.get() || unsafe { pg_sys::RecoveryInProgress() } {
            return None;
        }
        // SAFETY: as above.
        if unsafe { pg_sys::XactReadOnly } {
            raise_with_hint(
                PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
                "pg_reaper cannot write its audit rows in a read-only transaction; nothing was signalled",
                "Run it in a read-write transaction, or have a superuser turn pg_reaper.audit off.",
            );
        }
        let owner = lock_log_table();
        Some(Audit { owner })
    }

    /// Writes one `reaper.log` row per result row, in the caller's transaction. If the rows
    /// cannot be written, a WARNING says how many backends were signalled (their `pg_reaper:`
    /// LOG lines are written already) and the call goes on to return its rows; a cancel or a
    /// shutdown still ends the call, after that WARNING.
    pub fn write(&self, rows: &[ResultRow], action: &str, actor: &Actor) {
        if rows.is_empty() {
            return;
        }
        let written = in_subtransaction(|| self.insert(rows, action, actor));
        if let Err(e) = written {
            let signalled = rows.iter().filter(|r| r.outcome.signalled()).count();
            warning!(
                "pg_reaper: {signalled} of {} backends were signalled, but their reaper.log rows could not be written: {}",
                rows.len(),
                message(&e)
            );
            rethrow_if_fatal_to_the_call(e);
        }
    }

    fn insert(&self, rows: &[ResultRow], action: &str, actor: &Actor) {
        let col = |f: &dyn Fn(&ResultRow) -> Option<String>| -> Vec<Option<String>> {
            rows.iter().map(f).collect()
        };
        let outcome = col(&|r| Some(r.outcome.as_str().to_string()));
        let pid: Vec<i32> = rows.iter().map(|r| r.backend.session.pid).collect();
        let backend_start: Vec<Option<TimestampWithTimeZone>> = rows
            .iter()
            .map(|r| timestamp(r.backend.session.backend_start))
            .collect();
        let usename = col(&|r| r.backend.session.usename.clone());
        let datname = col(&|r| r.backend.session.datname.clone());
        let application_name = col(&|r| r.backend.session.application_name.clone());
        let client_addr = col(&|r| r.backend.client_addr_text.clone());
        let backend_type = col(&|r| r.backend.session.backend_type.clone());
        let state = col(&|r| r.backend.session.state.clone());
        let query = col(&ResultRow::shown_query);
        let waited_ms: Vec<i64> = rows.iter().map(|r| r.waited_ms).collect();
        let detail = col(&|r| r.detail.clone());

        self.run(
            AUDIT_SQL,
            &[
                actor.caller_name.clone().into(),
                actor.run_as_name.clone().into(),
                actor.policy.clone().into(),
                action.into(),
                outcome.into(),
                pid.into(),
                backend_start.into(),
                usename.into(),
                datname.into(),
                application_name.into(),
                client_addr.into(),
                backend_type.into(),
                state.into(),
                query.into(),
                waited_ms.into(),
                detail.into(),
            ],
        );
    }

    /// A `failed` row for a policy that could not run (or stopped), saying what it signalled.
    /// (The caller runs this in a subtransaction and reports a failure to write it.)
    pub fn write_failure(&self, action: &str, actor: &Actor, detail: &str) {
        self.run(
            "INSERT INTO reaper.log (logged_at, caller, run_as, policy, action, outcome, detail) \
             VALUES (pg_catalog.clock_timestamp(), $1, $2, $3, $4, 'failed', $5)",
            &[
                actor.caller_name.clone().into(),
                actor.run_as_name.clone().into(),
                actor.policy.clone().into(),
                action.into(),
                detail.into(),
            ],
        )
    }

    /// A row that is about the run, not a backend (outcome `tripped`).
    pub fn write_event(&self, action: &str, outcome: &str, actor: &Actor, detail: &str) {
        self.run(
            "INSERT INTO reaper.log (logged_at, caller, run_as, policy, action, outcome, detail) \
             VALUES (pg_catalog.clock_timestamp(), $1, $2, $3, $4, $5, $6)",
            &[
                actor.caller_name.clone().into(),
                actor.run_as_name.clone().into(),
                actor.policy.clone().into(),
                action.into(),
                outcome.into(),
                detail.into(),
            ],
        )
    }

    /// Runs an INSERT into `reaper.log` as the table's owner: callers need no right on the
    /// table and cannot forge its rows.
    fn run(&self, sql: &str, args: &[pgrx::datum::DatumWithOid]) {
        role::run_as(self.owner, true, || {
            crate::compat::with_snapshot(|| Spi::run_with_args(sql, args)).unwrap_or_else(|e| {
                raise(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    &format!("pg_reaper: could not write reaper.log: {e}"),
                )
            })
        });
    }
}

/// Takes the lock an INSERT into reaper.log takes, without waiting: a table locked by someone
/// else (a LOCK TABLE left open, a VACUUM FULL) must not make pg_reaper wait for the very
/// session it may be about to terminate. Returns the table's owner. Looked up by name after the
/// lock is taken (RangeVarGetRelidExtended re-checks against a concurrent DROP), never with SQL.
fn lock_log_table() -> pg_sys::Oid {
    // SAFETY: builds a RangeVar of two static names and looks it up under the given lock
    // mode; SKIP_LOCKED returns InvalidOid instead of waiting, MISSING_OK instead of raising.
    let relation = unsafe {
        let range_var = pg_sys::makeRangeVar(
            c"reaper".as_ptr().cast_mut(),
            c"log".as_ptr().cast_mut(),
            -1,
        );
        pg_sys::RangeVarGetRelidExtended(
            range_var,
            pg_sys::RowExclusiveLock as pg_sys::LOCKMODE,
            pg_sys::RVROption::RVR_MISSING_OK | pg_sys::RVROption::RVR_SKIP_LOCKED,
            None,
            std::ptr::null_mut(),
        )
    };
    if relation == pg_sys::InvalidOid {
        // SAFETY: syscache lookups by name.
        let exists = unsafe {
            let schema = pg_sys::get_namespace_oid(c"reaper".as_ptr(), true);
            schema != pg_sys::InvalidOid
                && pg_sys::get_relname_relid(c"log".as_ptr(), schema) != pg_sys::InvalidOid
        };
        if exists {
            raise_with_hint(
                PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
                "pg_reaper: table reaper.log is locked by another session; nothing was signalled",
                "Its audit rows could not be written. End the session that holds the lock (see pg_locks), or have a superuser turn pg_reaper.audit off.",
            );
        }
        raise_with_hint(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            "pg_reaper: table reaper.log is missing; nothing was signalled",
            "Recreate the extension, or have a superuser turn pg_reaper.audit off.",
        );
    }
    // SAFETY: a syscache lookup by oid; the tuple is released before returning.
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::RELOID as i32,
            relation.into_datum().unwrap(),
        );
        if tuple.is_null() {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                "pg_reaper: table reaper.log is missing; nothing was signalled",
            );
        }
        let class = pg_sys::GETSTRUCT(tuple).cast::<pg_sys::FormData_pg_class>();
        let owner = (*class).relowner;
        pg_sys::ReleaseSysCache(tuple);
        owner
    }
}

/// The message of a caught error.
pub fn message(e: &CaughtError) -> String {
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.message().to_string(),
        CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
    }
}

/// The SQLSTATE of a caught error (XX000 for a Rust panic).
pub fn error_code(e: &CaughtError) -> PgSqlErrorCode {
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.sql_error_code(),
        CaughtError::RustPanic { .. } => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
    }
}

/// Errors after which a call must not go on: a cancel, a shutdown, running out of a resource,
/// an internal error or a panic. Re-raised; anything else is returned to be reported.
pub fn rethrow_if_fatal_to_the_call(e: CaughtError) {
    if is_fatal_to_the_call(&e) {
        e.rethrow()
    }
}

pub fn is_fatal_to_the_call(e: &CaughtError) -> bool {
    let (CaughtError::PostgresError(r) | CaughtError::ErrorReport(r)) = e else {
        return true; // a Rust panic is a bug: never swallowed
    };
    // SQLSTATE classes: 57 operator intervention (cancel, shutdown), 53 insufficient resources,
    // 58 system error, XX internal error.
    let class = sqlstate(r.sql_error_code()).get(..2).map(str::to_string);
    matches!(class.as_deref(), Some("57" | "53" | "58" | "XX"))
}

/// The five-character SQLSTATE of an error code.
pub fn sqlstate(code: PgSqlErrorCode) -> String {
    let mut n = code as i32;
    (0..5)
        .map(|_| {
            let c = (n & 0x3F) as u8 + b'0';
            n >>= 6;
            c as char
        })
        .collect()
}

pub fn timestamp(micros: Option<i64>) -> Option<TimestampWithTimeZone> {
    micros.and_then(|m| TimestampWithTimeZone::try_from(m).ok())
}

/// The Rust side of the SQL result columns, in the order `api` declares them, after `$prefix`.
macro_rules! columns {
    ($($prefix:ty,)*) => {
        (
            $($prefix,)*
            i32,
            Option<TimestampWithTimeZone>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<pgrx::Inet>,
            Option<String>,
            Option<String>,
            Option<String>,
            String,
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<TimestampWithTimeZone>,
            Option<TimestampWithTimeZone>,
            Option<TimestampWithTimeZone>,
        )
    };
}

pub type Columns = columns!();

/// `policy` and then the same columns, for the policy functions.
pub type PolicyColumns = columns!(String,);

impl ResultRow {
    pub fn into_policy_columns(self, policy: String) -> PolicyColumns {
        let (a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q) = self.into_columns();
        (policy, a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q)
    }

    pub fn into_columns(self) -> Columns {
        let query = self.shown_query();
        let s = self.backend.session;
        (
            s.pid,
            timestamp(s.backend_start),
            s.usename,
            s.datname,
            s.application_name,
            self.backend.client_addr_text.map(pgrx::Inet),
            s.backend_type,
            s.state,
            query,
            self.outcome.as_str().to_string(),
            self.waited_ms,
            self.detail,
            s.wait_event_type,
            s.wait_event,
            timestamp(s.xact_start),
            timestamp(s.query_start),
            timestamp(s.state_change),
        )
    }
}
