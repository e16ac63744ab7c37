//! Stored policies (`reaper.policies`): each runs the same pipeline as a direct call, with its
//! owner's privileges, in its own subtransaction so that one broken policy stops no other.
//! `run_policies()` / `run_policy(name)` and the background worker are the callers.

use std::time::Duration;

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::spi::SpiResult;

use crate::breaker::Breaker;
use crate::error::{raise, refuse};
use crate::filter::Filter;
use crate::pipeline::{self, Action};
use crate::report::{self, Actor, Audit, ResultRow};
use crate::signal::{self, in_subtransaction};
use crate::{compat, role};

/// The columns of a policy, in `Policy` order. No operator is written bare: the worker runs
/// this as a superuser, and a bare `*` or `=` resolves through search_path, where an exact match
/// someone created in another schema would win over pg_catalog's (CVE-2018-1058).
const POLICY_COLUMNS: &str = "\
SELECT p.name, p.filter::pg_catalog.text, p.action, p.timeout_ms, p.grace_ms,
       CASE WHEN p.owner OPERATOR(pg_catalog.=) '' THEN 0::pg_catalog.oid
            ELSE COALESCE(pg_catalog.to_regrole(pg_catalog.quote_ident(p.owner))::pg_catalog.oid,
                          0::pg_catalog.oid) END,
       p.enabled,
       CASE WHEN pg_catalog.isfinite(p.run_every) THEN pg_catalog.date_part('epoch', p.run_every) END,
       p.run_on, p.max_signals_per_minute, p.owner, p.owner_oid
  FROM reaper.policies p";

/// The same for an extension whose SQL is older than 0.7.0 (the library was upgraded,
/// `ALTER EXTENSION pg_reaper UPDATE` not yet run): the owner is a regrole.
const POLICY_COLUMNS_BEFORE_0_7: &str = "\
SELECT p.name, p.filter::pg_catalog.text, p.action, p.timeout_ms, p.grace_ms, p.owner::pg_catalog.oid,
       p.enabled,
       CASE WHEN pg_catalog.isfinite(p.run_every) THEN pg_catalog.date_part('epoch', p.run_every) END,
       p.run_on, p.max_signals_per_minute, p.owner::pg_catalog.text, p.owner::pg_catalog.oid
  FROM reaper.policies p";

/// And older than 0.6.0: no column for the cap, the setting's.
const POLICY_COLUMNS_BEFORE_0_6: &str = "\
SELECT p.name, p.filter::pg_catalog.text, p.action, p.timeout_ms, p.grace_ms, p.owner::pg_catalog.oid,
       p.enabled,
       CASE WHEN pg_catalog.isfinite(p.run_every) THEN pg_catalog.date_part('epoch', p.run_every) END,
       p.run_on, NULL::pg_catalog.int4, p.owner::pg_catalog.text, p.owner::pg_catalog.oid
  FROM reaper.policies p";

/// And older than 0.3.0: no schedule, every policy run_policies'.
const POLICY_COLUMNS_BEFORE_0_3: &str = "\
SELECT p.name, p.filter::pg_catalog.text, p.action, p.timeout_ms, p.grace_ms, p.owner::pg_catalog.oid,
       p.enabled, NULL::pg_catalog.float8, 'any'::pg_catalog.text, NULL::pg_catalog.int4,
       p.owner::pg_catalog.text, p.owner::pg_catalog.oid
  FROM reaper.policies p";

/// The bounds of `run_every` (the table's trigger refuses others; a row may still bypass it,
/// through logical replication or a disabled trigger).
pub const RUN_EVERY_MIN: Duration = Duration::from_millis(100);
pub const RUN_EVERY_MAX: Duration = Duration::from_secs(366 * 24 * 3600);

/// Which policies to read.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    /// One, by name, scheduled or not (`run_policy`).
    Named(&'a str),
    /// Those without a `run_every` (`run_policies`: the worker runs the others).
    Unscheduled,
    /// The enabled ones with a `run_every` (the worker).
    Scheduled,
}

/// Where the worker runs a policy (`reaper.policies.run_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOn {
    Any,
    Primary,
    Standby,
}

impl RunOn {
    pub fn name(self) -> &'static str {
        match self {
            RunOn::Any => "any",
            RunOn::Primary => "primary",
            RunOn::Standby => "standby",
        }
    }

    /// Whether a policy with this `run_on` runs on this node now.
    pub fn here(self, standby: bool) -> bool {
        match self {
            RunOn::Any => true,
            RunOn::Primary => !standby,
            RunOn::Standby => standby,
        }
    }
}

/// One row of `reaper.policies`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub filter: String,
    pub action: String,
    pub timeout_ms: i64,
    pub grace_ms: i64,
    /// The owner's role here; InvalidOid when no role of that name exists on this node.
    pub owner: pg_sys::Oid,
    /// The owner as the row names it (a role name, which replicates; a role's oid would not).
    pub owner_name: String,
    /// The role that name gave when the row was written here (None: no role had it then).
    pub owner_written: Option<pg_sys::Oid>,
    pub enabled: bool,
    pub run_every: Option<Duration>,
    pub run_on: RunOn,
    /// Its own cap on signals a minute; None: `pg_reaper.max_signals_per_minute`'s.
    pub max_signals_per_minute: Option<i32>,
}

impl Policy {
    /// The breaker of one run of this policy, with the cap in force now; None: no cap.
    pub fn breaker(&self) -> Option<Breaker> {
        let cap = self
            .max_signals_per_minute
            .unwrap_or_else(|| crate::guc::MAX_SIGNALS_PER_MINUTE.get());
        Breaker::new(&self.name, u32::try_from(cap).unwrap_or(0))
    }
}

/// A policy's filter and action, validated: what the worker keeps between runs, so that a
/// filter is parsed (and its regexes compiled) once per change of the policy.
pub struct Prepared {
    pub filter: Filter,
    pub action: Action,
}

/// Runs every enabled policy without a `run_every`, in name order (or only `name`, scheduled
/// or not), returning each result row with its policy's name.
pub fn run(name: Option<&str>) -> Vec<(String, ResultRow)> {
    let which = name.map_or(Which::Unscheduled, Which::Named);
    let policies = load(which);
    if let Some(name) = name {
        if policies.is_empty() {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                &format!("policy \"{name}\" does not exist"),
            );
        }
    }
    if name.is_none() {
        say_if_scheduled_run_nowhere();
    }
    let caller = role::current();
    let mut rows = Vec::new();
    for policy in policies {
        if !policy.enabled {
            notice!("pg_reaper: policy \"{}\" is disabled; skipped", policy.name);
            continue;
        }
        let actor = Actor::new(caller, policy.owner, Some(policy.name.clone()));
        if let Ok(result) = run_guarded(&policy, &actor, None) {
            rows.extend(result.into_iter().map(|r| (policy.name.clone(), r)));
        }
    }
    rows
}

/// `reaper.reset_policy(name)`: forgets the policy's signals of the last minute, so that a
/// tripped policy signals again at once. Needs UPDATE on `reaper.policies` (whoever may change
/// a policy may let it run again). Whether it was tripped.
pub fn reset(name: &str) -> bool {
    // Read-only, as a hot standby needs (each node keeps its own windows).
    let may: Option<bool> = read_one(
        "SELECT pg_catalog.has_table_privilege('reaper.policies'::pg_catalog.regclass, 'UPDATE')",
    );
    if may != Some(true) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to reset a policy: it takes UPDATE on reaper.policies",
        );
    }
    let Some(policy) = load(Which::Named(name)).into_iter().next() else {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            &format!("policy \"{name}\" does not exist"),
        );
    };
    // As the table's trigger asks of whoever changes a policy: that they may act as its owner.
    // SAFETY: reads this backend's current user.
    let me = unsafe { pg_sys::GetUserId() };
    if role::exists(policy.owner) && !compat::may_act_as(me, policy.owner) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            &format!(
                "permission denied to reset policy \"{name}\" owned by role \"{}\": only roles that may SET ROLE to its owner may",
                role::name(policy.owner)
            ),
        );
    }
    crate::breaker::reset(name)
}

/// A NOTICE when enabled policies have a `run_every` but no worker runs them here: they would
/// otherwise be silently enforced by nobody.
fn say_if_scheduled_run_nowhere() {
    let Some(why) = why_not_enforcing_here() else {
        return;
    };
    let scheduled = load(Which::Scheduled);
    if scheduled.is_empty() {
        return;
    }
    let names: Vec<&str> = scheduled.iter().map(|p| p.name.as_str()).collect();
    notice!(
        "pg_reaper: {} enabled polic{} with a run_every ({}) run{} only in the background worker, and none runs them here: {why}; reaper.run_policy(name) runs one",
        names.len(),
        if names.len() == 1 { "y" } else { "ies" },
        names.join(", "),
        if names.len() == 1 { "s" } else { "" },
    );
}

/// Why no worker enforces the scheduled policies of the current database, if none does: the
/// scheduled ones run nowhere then, and `run_policies()` says so.
fn why_not_enforcing_here() -> Option<String> {
    if !crate::guc::preloaded() {
        return Some("pg_reaper is not in shared_preload_libraries".into());
    }
    if !crate::guc::WORKER.get() {
        return Some("pg_reaper.worker is off".into());
    }
    // SAFETY: this session's own database, looked up in the syscache.
    let here = unsafe {
        let name = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        (!name.is_null()).then(|| {
            std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned()
        })
    };
    let database = crate::guc::database();
    if here.as_deref() != Some(database.as_str()) {
        return Some(format!(
            "the worker runs the policies of database \"{database}\" (pg_reaper.database)"
        ));
    }
    None
}

/// Runs one policy in a subtransaction of its own. A failure a policy can cause is reported
/// (a WARNING with its SQLSTATE, a `failed` row saying what it had signalled) and returned as
/// its message; anything else (a cancel, a shutdown, an internal error) ends the call.
/// `prepared`: the filter and action validated earlier, if the caller keeps them.
pub fn run_guarded(
    policy: &Policy,
    actor: &Actor,
    prepared: Option<&Prepared>,
) -> Result<Vec<ResultRow>, String> {
    run_guarded_quietly(policy, actor, prepared, None)
}

/// `run_guarded`, except that a failure with the message `quiet` (the same as last time) is
/// not reported again: the worker runs a policy every few hundred milliseconds, and a policy
/// that keeps failing the same way must not flood the log and the audit trail.
pub fn run_guarded_quietly(
    policy: &Policy,
    actor: &Actor,
    prepared: Option<&Prepared>,
    quiet: Option<&str>,
) -> Result<Vec<ResultRow>, String> {
    let sent_before = signal::delivered_so_far();
    let ran = in_subtransaction(|| match prepared {
        Some(p) => run_prepared(policy, p, actor),
        None => run_prepared(policy, &prepare(policy), actor),
    });
    ran.map_err(|e| {
        // Every failure counts, the ones not reported again too.
        crate::metrics::count_failure(&policy.name);
        let sent = signal::delivered_so_far() - sent_before;
        let fatal = report::is_fatal_to_the_call(&e);
        let message = report::message(&e);
        if sent > 0 || quiet != Some(message.as_str()) {
            report_failure(policy, actor, &e, sent, !fatal);
        }
        report::rethrow_if_fatal_to_the_call(e);
        message
    })
}

/// Reads policies for `run_policies` / `run_policy`, whose library may be newer than the
/// extension's SQL (between a package upgrade and `ALTER EXTENSION pg_reaper UPDATE`).
pub fn load(which: Which) -> Vec<Policy> {
    let version = installed_version()
        .and_then(|v| parse_version(&v))
        .unwrap_or((u32::MAX, 0, 0));
    let columns = match version {
        v if v < (0, 3, 0) => POLICY_COLUMNS_BEFORE_0_3,
        v if v < (0, 6, 0) => POLICY_COLUMNS_BEFORE_0_6,
        v if v < (0, 7, 0) => POLICY_COLUMNS_BEFORE_0_7,
        _ => POLICY_COLUMNS,
    };
    load_from(which, columns)
}

/// Reads policies for the worker, which runs only once the extension's SQL is this version.
pub fn load_current(which: Which) -> Vec<Policy> {
    load_from(which, POLICY_COLUMNS)
}

/// `pg_extension.extversion` of pg_reaper in this database, through a read-only query (a hot
/// standby refuses a transaction id, which pgrx's Spi::get_one would assign).
pub fn installed_version() -> Option<String> {
    read_one(
        "SELECT e.extversion FROM pg_catalog.pg_extension e \
          WHERE e.extname OPERATOR(pg_catalog.=) 'pg_reaper'",
    )
}

/// The one value `sql` returns, read without a transaction id (pgrx's Spi::get_one would
/// assign one, which a hot standby refuses); None if it returns no row, NULL or an error.
fn read_one<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(sql: &str) -> Option<T> {
    compat::with_snapshot(|| {
        Spi::connect(|client| client.select(sql, Some(1), &[])?.first().get_one())
            .ok()
            .flatten()
    })
}

pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

fn load_from(which: Which, columns: &str) -> Vec<Policy> {
    let scheduling = columns != POLICY_COLUMNS_BEFORE_0_3;
    let (sql, name) = match which {
        Which::Named(name) => (
            format!("{columns} WHERE p.name OPERATOR(pg_catalog.=) $1"),
            Some(name),
        ),
        Which::Unscheduled if scheduling => (
            format!("{columns} WHERE p.run_every IS NULL ORDER BY p.name"),
            None,
        ),
        Which::Unscheduled => (format!("{columns} ORDER BY p.name"), None),
        Which::Scheduled if scheduling => (
            format!("{columns} WHERE p.enabled AND p.run_every IS NOT NULL ORDER BY p.name"),
            None,
        ),
        Which::Scheduled => return Vec::new(),
    };
    let args: Vec<pgrx::datum::DatumWithOid> = name.into_iter().map(Into::into).collect();
    let read = compat::with_snapshot(|| {
        Spi::connect(|client| -> SpiResult<Vec<Policy>> {
            let mut policies = Vec::new();
            for row in client.select(&sql, None, &args)? {
                let run_every: Option<f64> = row.get(8)?;
                let run_on: Option<String> = row.get(9)?;
                policies.push(Policy {
                    name: row.get(1)?.unwrap_or_default(),
                    filter: row.get(2)?.unwrap_or_default(),
                    action: row.get(3)?.unwrap_or_default(),
                    timeout_ms: row.get(4)?.unwrap_or_default(),
                    grace_ms: row.get(5)?.unwrap_or_default(),
                    owner: row.get(6)?.unwrap_or(pg_sys::InvalidOid),
                    enabled: row.get(7)?.unwrap_or(false),
                    run_every: run_every.map(run_every_from_seconds),
                    run_on: match run_on.as_deref() {
                        Some("primary") => RunOn::Primary,
                        Some("standby") => RunOn::Standby,
                        _ => RunOn::Any,
                    },
                    max_signals_per_minute: row.get(10)?,
                    owner_name: row.get(11)?.unwrap_or_default(),
                    owner_written: row.get(12)?,
                });
            }
            Ok(policies)
        })
    });
    read.unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            &format!("pg_reaper: could not read reaper.policies: {e}"),
        )
    })
}

/// A `run_every` in seconds (NaN or infinite where the interval was), within the bounds.
fn run_every_from_seconds(seconds: f64) -> Duration {
    if seconds.is_nan() || seconds >= RUN_EVERY_MAX.as_secs_f64() {
        return RUN_EVERY_MAX;
    }
    Duration::from_secs_f64(seconds.max(0.0)).max(RUN_EVERY_MIN)
}

/// Validates again what the table's trigger validated (the row may predate this version):
/// the filter against the running server, and the action.
pub fn prepare(policy: &Policy) -> Prepared {
    let filter = pipeline::parse_filter(&policy.filter)
        .unwrap_or_else(|e| refuse(&format!("its filter is invalid: {e}")));
    // A negative cap would mean none: refused, not run uncapped.
    if let Some(cap) = policy.max_signals_per_minute.filter(|&n| n < 0) {
        refuse(&format!(
            "its max_signals_per_minute is negative ({cap}); NULL takes pg_reaper.max_signals_per_minute, 0 means no cap"
        ));
    }
    let millis = |ms: i64| Duration::from_millis(ms.max(0) as u64);
    let action = match policy.action.as_str() {
        "terminate" => Action::Terminate {
            timeout: millis(policy.timeout_ms),
        },
        "cancel" => Action::Cancel,
        "report" => Action::Report,
        "cancel_then_terminate" => Action::CancelThenTerminate {
            grace: millis(policy.grace_ms),
            timeout: millis(policy.timeout_ms),
        },
        other => refuse(&format!("its action \"{other}\" is unknown")),
    };
    Prepared { filter, action }
}

/// Checks that the owner still exists and that the caller may act as it, then runs the
/// pipeline with the owner's privileges.
fn run_prepared(policy: &Policy, prepared: &Prepared, actor: &Actor) -> Vec<ResultRow> {
    signal::test_hooks::panic_if_asked(&policy.name);
    if policy.owner == pg_sys::InvalidOid || !role::exists(policy.owner) {
        let renamed = policy
            .owner_written
            .filter(|&o| role::exists(o))
            .map(|o| {
                format!(
                    " (the role it was written for is now named \"{}\")",
                    role::name(o)
                )
            })
            .unwrap_or_default();
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            &format!(
                "its owner, role {:?}, does not exist on this node{renamed}",
                policy.owner_name
            ),
        );
    }
    // The name is another role's now: dropped and created again, or another renamed to it.
    if policy.owner_written.is_some_and(|o| o != policy.owner) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            &format!(
                "its owner, role {:?}, is not the role the policy was written for on this node (that role was renamed, or dropped and another took its name); to give it to the role of that name now: UPDATE reaper.policies SET owner_oid = NULL WHERE name = '{}' (on a member of a fleet, as a superuser after SET session_replication_role = replica)",
                policy.owner_name,
                policy.name.replace('\'', "''")
            ),
        );
    }
    // Running a policy acts with its owner's privileges: only who could SET ROLE to the owner
    // may run it.
    if !compat::may_act_as(actor.caller, policy.owner) {
        raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            &format!(
                "role \"{}\" may not run it: only roles that may SET ROLE to its owner \"{}\" may",
                actor.caller_name,
                role::name(policy.owner)
            ),
        );
    }
    let breaker = policy.breaker();
    role::run_as(policy.owner, true, || {
        pipeline::run(&prepared.filter, prepared.action, actor, breaker.as_ref())
    })
}

/// A failed policy: a WARNING for whoever ran it (and the server log), and a `failed` row in
/// `reaper.log`, each saying how many signals the policy sent before it failed.
/// (`record`: false when the error is about to end the whole call, taking any row with it.)
/// The WARNING carries the error's own SQLSTATE.
pub fn report_failure(policy: &Policy, actor: &Actor, e: &CaughtError, sent: u64, record: bool) {
    let what = match sent {
        0 => "it signalled nothing".to_string(),
        n => format!("it had sent {n} signal(s) first; the pg_reaper: LOG lines name them"),
    };
    let message = report::message(e);
    ereport!(
        PgLogLevel::WARNING,
        report::error_code(e),
        format!(
            "pg_reaper: policy \"{}\" failed ({what}): {message}",
            policy.name
        )
    );
    if !record {
        return;
    }
    // In a subtransaction of its own: the failure may have been the audit table itself (locked,
    // missing, a read-only transaction), and recording it must not stop the other policies.
    let recorded = in_subtransaction(|| {
        if let Some(audit) = Audit::prepare() {
            audit.write_failure(
                &policy.action,
                actor,
                &format!("policy failed ({what}): {message}"),
            );
        }
    });
    if let Err(e) = recorded {
        warning!(
            "pg_reaper: the failure of policy \"{}\" could not be recorded in reaper.log: {}",
            policy.name,
            report::message(&e)
        );
        report::rethrow_if_fatal_to_the_call(e);
    }
}
