//! pg_reaper's settings. Both are SUSET: a role that signals backends cannot hide that it did.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// One `pg_reaper:` LOG line per signalled backend.
pub static LOG_ACTIONS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// One `reaper.log` row per non-preview result row.
pub static AUDIT: GucSetting<bool> = GucSetting::<bool>::new(true);

/// For tests only: a pause between choosing the victims and re-checking them, so that a test
/// can make a victim exit or stop matching in that window.
pub static RECHECK_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(0);

pub fn register() {
    GucRegistry::define_bool_guc(
        c"pg_reaper.log_actions",
        c"Write a pg_reaper: LOG line for every backend pg_reaper signals.",
        c"The server log is the record of a signal that no rollback can undo.",
        &LOG_ACTIONS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_reaper.audit",
        c"Record every signalling result row in the reaper.log table.",
        c"The rows are written in the caller's transaction, so a rollback removes them.",
        &AUDIT,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_reaper.recheck_delay_ms",
        c"For tests: pause this long between choosing victims and re-checking them.",
        c"Lets a test make a victim exit or stop matching before its signal.",
        &RECHECK_DELAY_MS,
        0,
        60_000,
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL | GucFlags::UNIT_MS,
    );
}
