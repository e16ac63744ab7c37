//! What happened, told three ways: the result rows, one `pg_reaper:` server-log line per signal
//! (the record no rollback can undo), and the `reaper.log` audit rows.

use pgrx::prelude::*;

use crate::activity::Backend;
use crate::guc;
use crate::role;
use crate::signal::Signal;

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
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Matched => "matched",
            Outcome::Cancelled => "cancelled",
            Outcome::Signalled => "signalled",
            Outcome::Terminated => "terminated",
            Outcome::TimedOut => "timed_out",
            Outcome::Vanished => "vanished",
            Outcome::Denied => "denied",
        }
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
}

/// Who acts, for whom: the role that called, the role whose privileges signal, the policy.
#[derive(Debug, Clone)]
pub struct Actor {
    pub caller: pg_sys::Oid,
    pub run_as: pg_sys::Oid,
    pub policy: Option<String>,
}

impl Actor {
    /// A direct call: the caller signals with its own privileges.
    pub fn caller() -> Actor {
        let me = role::current();
        Actor {
            caller: me,
            run_as: me,
            policy: None,
        }
    }
}

/// The server-log line for one delivered signal.
pub fn log_signal(signal: Signal, backend: &Backend, actor: &Actor) {
    if !guc::LOG_ACTIONS.get() {
        return;
    }
    let s = &backend.session;
    let show = |v: &Option<String>| v.clone().unwrap_or_default();
    let policy = match &actor.policy {
        Some(p) => format!(" policy={p:?} as role={:?}", role::name(actor.run_as)),
        None => String::new(),
    };
    log!(
        "pg_reaper: {} pid={} user={:?} database={:?} application={:?} by role={:?}{}",
        signal.verb(),
        s.pid,
        show(&s.usename),
        show(&s.datname),
        show(&s.application_name),
        role::name(actor.caller),
        policy
    );
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

/// Whether this call writes audit rows. Asked before anything is signalled, so that a
/// read-only transaction fails up front rather than after its signals; on a standby there is
/// no writing at all, and the server-log line is the only record.
pub fn audit_enabled() -> bool {
    if !guc::AUDIT.get() || unsafe { pg_sys::RecoveryInProgress() } {
        return false;
    }
    if unsafe { pg_sys::XactReadOnly } {
        ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            "pg_reaper cannot write its audit rows in a read-only transaction; nothing was signalled",
            "Run it in a read-write transaction, or have a superuser turn pg_reaper.audit off."
        );
    }
    true
}

/// Writes one `reaper.log` row per result row, in the caller's transaction.
pub fn audit(rows: &[ResultRow], action: &str, actor: &Actor) {
    if rows.is_empty() {
        return;
    }
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
    let query = col(&|r| r.backend.session.query.clone());
    let waited_ms: Vec<i64> = rows.iter().map(|r| r.waited_ms).collect();
    let detail = col(&|r| r.detail.clone());

    write_log(
        AUDIT_SQL,
        &[
            role::name(actor.caller).into(),
            role::name(actor.run_as).into(),
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

/// A `failed` row for something that signalled nothing (a policy that could not run).
pub fn audit_failure(action: &str, actor: &Actor, detail: &str) {
    if !audit_enabled() {
        return;
    }
    write_log(
        "INSERT INTO reaper.log (logged_at, caller, run_as, policy, action, outcome, detail) \
         VALUES (pg_catalog.clock_timestamp(), $1, $2, $3, $4, 'failed', $5)",
        &[
            role::name(actor.caller).into(),
            role::name(actor.run_as).into(),
            actor.policy.clone().into(),
            action.into(),
            detail.into(),
        ],
    );
}

/// Runs an INSERT into `reaper.log` as the table's owner: callers need no right on the table
/// and cannot forge its rows.
fn write_log(sql: &str, args: &[pgrx::datum::DatumWithOid]) {
    role::run_as(log_owner(), true, || {
        Spi::run_with_args(sql, args)
            .unwrap_or_else(|e| error!("pg_reaper: could not write reaper.log: {e}"))
    });
}

fn log_owner() -> pg_sys::Oid {
    Spi::get_one::<pg_sys::Oid>(
        "SELECT c.relowner FROM pg_catalog.pg_class c \
          WHERE c.oid OPERATOR(pg_catalog.=) 'reaper.log'::pg_catalog.regclass",
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| error!("pg_reaper: table reaper.log is missing"))
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
            s.query,
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
