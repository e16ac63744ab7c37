//! The SQL functions, each a thin call into the pipeline. Argument checks that are not about
//! the filter (NULLs, negative durations) live here; everything else is in `filter`.

use std::time::Duration;

use pgrx::prelude::*;

use crate::error::refuse;
use crate::filter::{Filter, FilterError};
use crate::jsonb_arg::JsonbText;
use crate::pipeline::{self, Action};
use crate::policy;
use crate::report::{Actor, Columns, PolicyColumns, ResultRow};
use crate::worker;

/// The result columns every signalling function returns, in the contract's order.
/// `$prefix` names columns that come before them (`policy` for the policy functions); the
/// body yields rows already converted to the tuple.
macro_rules! result_table {
    ($(#[$meta:meta])* fn $name:ident($($args:tt)*) $([$($prefix:tt)*])? $body:block) => {
        $(#[$meta])*
        #[pg_extern(volatile, parallel_unsafe)]
        fn $name($($args)*) -> TableIterator<
            'static,
            (
                $($($prefix)*)?
                name!(pid, i32),
                name!(backend_start, Option<TimestampWithTimeZone>),
                name!(usename, Option<String>),
                name!(datname, Option<String>),
                name!(application_name, Option<String>),
                name!(client_addr, Option<pgrx::Inet>),
                name!(backend_type, Option<String>),
                name!(state, Option<String>),
                name!(query, Option<String>),
                name!(outcome, String),
                name!(waited_ms, i64),
                name!(detail, Option<String>),
                name!(wait_event_type, Option<String>),
                name!(wait_event, Option<String>),
                name!(xact_start, Option<TimestampWithTimeZone>),
                name!(query_start, Option<TimestampWithTimeZone>),
                name!(state_change, Option<TimestampWithTimeZone>),
            ),
        > {
            TableIterator::new($body)
        }
    };
}

result_table! {
    /// Every backend the filter selects, signalling none.
    fn preview_matching(filter: Option<JsonbText>) {
        columns(pipeline::run(&parse(filter), Action::Preview, &Actor::caller(), None))
    }
}

result_table! {
    /// pg_cancel_backend for every backend the filter selects.
    fn cancel_matching(filter: Option<JsonbText>) {
        columns(pipeline::run(&parse(filter), Action::Cancel, &Actor::caller(), None))
    }
}

result_table! {
    /// pg_terminate_backend for every backend the filter selects; with timeout_ms > 0, waits
    /// for all of them together until that deadline.
    fn terminate_matching(filter: Option<JsonbText>, timeout_ms: default!(Option<i64>, 0)) {
        let filter = parse(filter);
        let timeout = duration("timeout_ms", timeout_ms);
        columns(pipeline::run(&filter, Action::Terminate { timeout }, &Actor::caller(), None))
    }
}

result_table! {
    /// Cancel every match, wait up to grace_ms for them to stop matching, terminate the rest.
    fn cancel_then_terminate(
        filter: Option<JsonbText>,
        grace_ms: Option<i64>,
        timeout_ms: default!(Option<i64>, 0),
    ) {
        let filter = parse(filter);
        let grace = duration("grace_ms", grace_ms);
        let timeout = duration("timeout_ms", timeout_ms);
        let action = Action::CancelThenTerminate { grace, timeout };
        columns(pipeline::run(&filter, action, &Actor::caller(), None))
    }
}

result_table! {
    /// Every enabled policy in name order, each with its owner's privileges.
    fn run_policies() [name!(policy, String),] {
        policy_columns(policy::run(None))
    }
}

result_table! {
    /// One policy, by name.
    fn run_policy(name: Option<String>) [name!(policy, String),] {
        let name = name.unwrap_or_else(|| refuse("policy name must not be NULL"));
        policy_columns(policy::run(Some(&name)))
    }
}

fn columns(rows: Vec<ResultRow>) -> impl Iterator<Item = Columns> {
    rows.into_iter().map(ResultRow::into_columns)
}

fn policy_columns(rows: Vec<(String, ResultRow)>) -> impl Iterator<Item = PolicyColumns> {
    rows.into_iter()
        .map(|(policy, row)| row.into_policy_columns(policy))
}

/// The normalized filter, or the error the signalling functions would raise for it.
#[pg_extern(stable, parallel_safe)]
fn validate_filter(filter: Option<JsonbText>) -> pgrx::JsonB {
    pgrx::JsonB(parse(filter).to_json())
}

/// The filter against sessions given as JSON (pg_stat_activity rows, as `jsonb_agg` of the
/// view gives them), at `now` or the rows' own `"now"`: for each row in order, whether the
/// filter would select it. Signals nothing and reads no server state but the protected-tools
/// settings; the matching is the live path's own code.
#[pg_extern(stable, parallel_safe)]
fn test_filter(
    filter: Option<JsonbText>,
    sessions: Option<JsonbText>,
    now: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(ordinality, i32),
        name!(pid, i32),
        name!(matched, bool),
    ),
> {
    let filter = parse(filter);
    let Some(JsonbText(sessions)) = sessions else {
        refuse("sessions must not be NULL")
    };
    crate::filter::replay::check_size(&sessions).unwrap_or_else(|e| refuse(&e.to_string()));
    let sessions: serde_json::Value = serde_json::from_str(&sessions)
        .unwrap_or_else(|e| refuse(&format!("sessions is not valid JSON: {e}")));
    let now = now.map(pg_sys::TimestampTz::from);
    let rows = crate::filter::replay::replay(
        &filter,
        &sessions,
        now,
        &crate::guc::protected(),
        pipeline::interrupt,
    )
    .unwrap_or_else(|e| refuse(&e.to_string()));
    TableIterator::new(
        rows.into_iter()
            .enumerate()
            .map(|(i, (pid, matched))| (i as i32 + 1, pid, matched)),
    )
}

fn parse(filter: Option<JsonbText>) -> Filter {
    let parsed = match filter {
        None => Err(FilterError::Null),
        Some(JsonbText(text)) => pipeline::parse_filter(&text),
    };
    parsed.unwrap_or_else(|e| refuse(&e.to_string()))
}

fn duration(name: &str, ms: Option<i64>) -> Duration {
    match ms {
        None => refuse(&format!("{name} must not be NULL")),
        Some(ms) if ms < 0 => refuse(&format!("{name} must not be negative, got {ms}")),
        Some(ms) => Duration::from_millis(ms as u64),
    }
}

/// One row per scheduled policy the background worker knows, from shared memory (so a hot
/// standby answers too). No rows without `shared_preload_libraries = 'pg_reaper'`.
#[pg_extern(volatile, parallel_safe)]
#[allow(clippy::type_complexity)] // the columns are the contract
fn worker_status() -> TableIterator<
    'static,
    (
        name!(policy, String),
        name!(run_on, String),
        name!(run_every, Option<pgrx::datum::Interval>),
        name!(last_run_at, Option<TimestampWithTimeZone>),
        name!(last_duration_ms, Option<f64>),
        name!(runs, i64),
        name!(signalled, i64),
        name!(last_outcomes, pgrx::JsonB),
        name!(last_error, Option<String>),
        name!(next_run_at, Option<TimestampWithTimeZone>),
        name!(tripped_until, Option<TimestampWithTimeZone>),
    ),
> {
    TableIterator::new(worker::status::policy_rows())
}

/// Resets a tripped policy's circuit breaker: it may signal again at once. For whoever may
/// UPDATE `reaper.policies`. Whether it was tripped.
#[pg_extern(volatile, parallel_unsafe)]
fn reset_policy(name: Option<String>) -> bool {
    let name = name.unwrap_or_else(|| refuse("policy name must not be NULL"));
    policy::reset(&name)
}

/// The worker itself: its pid (NULL while it restarts), what it is doing and why, from shared
/// memory.
#[pg_extern(volatile, parallel_safe)]
#[allow(clippy::type_complexity)]
fn worker() -> TableIterator<
    'static,
    (
        name!(pid, Option<i32>),
        name!(state, String),
        name!(database, Option<String>),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(cycles, i64),
        name!(message, Option<String>),
    ),
> {
    TableIterator::once(worker::status::worker_row())
}

/// One row per series for Prometheus-style scrapers: counters since `reset_timestamp_seconds`
/// (`signals_total`, `runs_total`, `failures_total`, `trips_total`) and the worker's gauges
/// (`worker_up`, `last_run_age_seconds`, `tripped`). Labels are never NULL: `''` where one does
/// not apply (a direct call has no policy). For `pg_monitor`.
#[pg_extern(volatile, parallel_safe)]
#[allow(clippy::type_complexity)]
fn metrics() -> TableIterator<
    'static,
    (
        name!(metric, String),
        name!(policy, String),
        name!(action, String),
        name!(outcome, String),
        name!(node, String),
        name!(value, f64),
    ),
> {
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let node = crate::guc::node_name();
    let mut series = crate::metrics::counter_series();
    series.extend(worker::status::gauge_series(now));
    TableIterator::new(crate::metrics::merge_duplicates(series).into_iter().map(
        move |(metric, policy, action, outcome, value)| {
            (
                metric.to_string(),
                policy,
                action.to_string(),
                outcome.to_string(),
                node.clone(),
                value,
            )
        },
    ))
}

/// This node's name in a fleet: `pg_reaper.node_name`, else `cluster_name`, else the system
/// identifier.
#[pg_extern(stable, parallel_safe)]
fn node() -> String {
    crate::guc::node_name()
}
