//! pg_reaper's settings. Both are SUSET: a role that signals backends cannot hide that it did.
//! The `pg_reaper.` prefix is reserved, so a misspelt setting is an error, as a misspelt filter
//! key is.

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
    #[cfg(feature = "test-hooks")]
    test_hooks::register();
    crate::compat::reserve_guc_prefix(c"pg_reaper");
}

/// Settings that exist only in builds for the test suite (`--features test-hooks`): pauses at
/// the two moments a test must reach, to change a victim there. Release builds have neither, so
/// `SET pg_reaper.recheck_delay_ms` is an error in what users install.
#[cfg(feature = "test-hooks")]
pub mod test_hooks {
    use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

    /// A pause between choosing the victims and re-checking them.
    pub static RECHECK_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(0);

    /// A pause between the re-check and the first victim's pinned check.
    pub static CHECK_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(0);

    /// A pause between a victim's identity check and its signal (first victim only), with the
    /// victim pinned as it is during that step.
    pub static SIGNAL_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(0);

    pub fn register() {
        GucRegistry::define_int_guc(
            c"pg_reaper.recheck_delay_ms",
            c"For tests: pause this long between choosing victims and re-checking them.",
            c"Lets a test make a victim exit or stop matching before its re-check.",
            &RECHECK_DELAY_MS,
            0,
            60_000,
            GucContext::Suset,
            GucFlags::NO_SHOW_ALL | GucFlags::UNIT_MS,
        );
        GucRegistry::define_int_guc(
            c"pg_reaper.check_delay_ms",
            c"For tests: pause this long between the re-check and the first victim's pinned check.",
            c"Lets a test change what the first victim is doing after the re-check.",
            &CHECK_DELAY_MS,
            0,
            60_000,
            GucContext::Suset,
            GucFlags::NO_SHOW_ALL | GucFlags::UNIT_MS,
        );
        GucRegistry::define_int_guc(
            c"pg_reaper.signal_delay_ms",
            c"For tests: pause this long between the first victim's identity check and its signal.",
            c"Lets a test try to have the victim's pid reused inside that window.",
            &SIGNAL_DELAY_MS,
            0,
            60_000,
            GucContext::Suset,
            GucFlags::NO_SHOW_ALL | GucFlags::UNIT_MS,
        );
    }
}
