//! pg_reaper's settings. Both are SUSET: a role that signals backends cannot hide that it did.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// One `pg_reaper:` LOG line per signalled backend.
pub static LOG_ACTIONS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// One `reaper.log` row per non-preview result row.
pub static AUDIT: GucSetting<bool> = GucSetting::<bool>::new(true);

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
}
