//! Stored policies (`reaper.policies`): each runs the same pipeline as a direct call, with its
//! owner's privileges, in its own subtransaction so that one broken policy stops no other.

use std::time::Duration;

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::spi::SpiResult;

use crate::error::{raise, refuse};
use crate::pipeline::{self, Action};
use crate::report::{self, Actor, Audit, ResultRow};
use crate::signal::{self, in_subtransaction};
use crate::{compat, role};

const POLICIES_SQL: &str = "\
SELECT p.name, p.filter::pg_catalog.text, p.action, p.timeout_ms, p.grace_ms, p.owner::pg_catalog.oid,
       p.enabled
  FROM reaper.policies p
 WHERE $1::pg_catalog.text IS NULL OR p.name OPERATOR(pg_catalog.=) $1
 ORDER BY p.name";

/// One row of `reaper.policies`.
struct Policy {
    name: String,
    filter: String,
    action: String,
    timeout_ms: i64,
    grace_ms: i64,
    owner: pg_sys::Oid,
    enabled: bool,
}

/// Runs every enabled policy in name order (or only `only`), returning each result row with
/// its policy's name.
pub fn run(only: Option<&str>) -> Vec<(String, ResultRow)> {
    let policies = load(only);
    if let Some(name) = only {
        if policies.is_empty() {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                &format!("policy \"{name}\" does not exist"),
            );
        }
    }
    let caller = role::current();
    let mut rows = Vec::new();
    for policy in policies {
        if !policy.enabled {
            notice!("pg_reaper: policy \"{}\" is disabled; skipped", policy.name);
            continue;
        }
        let actor = Actor::new(caller, policy.owner, Some(policy.name.clone()));
        let sent_before = signal::delivered_so_far();
        match in_subtransaction(|| run_one(&policy, &actor)) {
            Ok(result) => rows.extend(result.into_iter().map(|r| (policy.name.clone(), r))),
            Err(e) => {
                let sent = signal::delivered_so_far() - sent_before;
                let fatal = report::is_fatal_to_the_call(&e);
                report_failure(&policy, &actor, &e, sent, !fatal);
                report::rethrow_if_fatal_to_the_call(e);
            }
        }
    }
    rows
}

fn load(only: Option<&str>) -> Vec<Policy> {
    Spi::connect(|client| -> SpiResult<Vec<Policy>> {
        let mut policies = Vec::new();
        for row in client.select(POLICIES_SQL, None, &[only.into()])? {
            policies.push(Policy {
                name: row.get(1)?.unwrap_or_default(),
                filter: row.get(2)?.unwrap_or_default(),
                action: row.get(3)?.unwrap_or_default(),
                timeout_ms: row.get(4)?.unwrap_or_default(),
                grace_ms: row.get(5)?.unwrap_or_default(),
                owner: row.get(6)?.unwrap_or(pg_sys::InvalidOid),
                enabled: row.get(7)?.unwrap_or(false),
            });
        }
        Ok(policies)
    })
    .unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            &format!("pg_reaper: could not read reaper.policies: {e}"),
        )
    })
}

/// Validates again what the table's trigger validated: the row may predate this version, or
/// its owner may have been dropped since.
fn run_one(policy: &Policy, actor: &Actor) -> Vec<ResultRow> {
    if !role::exists(policy.owner) {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            &format!(
                "its owner (role oid {}) no longer exists",
                policy.owner.to_u32()
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
    let filter = crate::api::parse_filter(&policy.filter)
        .unwrap_or_else(|e| refuse(&format!("its filter is invalid: {e}")));
    let millis = |ms: i64| Duration::from_millis(ms.max(0) as u64);
    let action = match policy.action.as_str() {
        "terminate" => Action::Terminate {
            timeout: millis(policy.timeout_ms),
        },
        "cancel" => Action::Cancel,
        "cancel_then_terminate" => Action::CancelThenTerminate {
            grace: millis(policy.grace_ms),
            timeout: millis(policy.timeout_ms),
        },
        other => refuse(&format!("its action \"{other}\" is unknown")),
    };
    role::run_as(policy.owner, true, || pipeline::run(&filter, action, actor))
}

/// A failed policy: a WARNING for whoever ran it (and the server log), and a `failed` row in
/// `reaper.log`, each saying how many signals the policy sent before it failed.
/// (`record`: false when the error is about to end the whole call, taking any row with it.)
/// The WARNING carries the error's own SQLSTATE.
fn report_failure(policy: &Policy, actor: &Actor, e: &CaughtError, sent: u64, record: bool) {
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
