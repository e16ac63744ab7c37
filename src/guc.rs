//! pg_reaper's settings. The two about records are SUSET: a role that signals backends cannot
//! hide that it did; so are the protected lists: a role cannot unprotect a backup. The worker's are read from the server's configuration (SIGHUP). The
//! `pg_reaper.` prefix is reserved, so a misspelt setting is an error, as a misspelt filter key
//! is.

use std::ffi::{CStr, CString};

use pgrx::{pg_sys, GucContext, GucFlags, GucRegistry, GucSetting};

use crate::filter::{name_list, role_list, Protected};

/// One `pg_reaper:` LOG line per signalled backend.
pub static LOG_ACTIONS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// One `reaper.log` row per non-preview result row.
pub static AUDIT: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `pg_reaper.node_name`: this node's name in the audit rows and the metrics ("" : derived).
pub static NODE_NAME: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Whether a call or policy run that signalled sends `NOTIFY pg_reaper`.
pub static NOTIFY: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Whether the background worker enforces the scheduled policies (off: it waits, parked).
pub static WORKER: GucSetting<bool> = GucSetting::<bool>::new(true);

/// The version of this library: `pg_reaper.library_version` (read-only). With the library in
/// shared_preload_libraries, every backend keeps the one the server loaded at start, whatever
/// files were installed since; the update scripts check it.
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");
static LIBRARY_VERSION_SETTING: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => panic!("a version without NUL"),
        },
    ));

/// What a victim is told of why it was signalled.
#[derive(pgrx::PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum TellVictims {
    /// Nothing: PostgreSQL's own message only.
    #[name = c"off"]
    Off,
    /// Who signalled it (the policy, or the calling role), the action, and its own facts.
    #[name = c"on"]
    On,
    /// The same, and the filter.
    #[name = c"verbose"]
    Verbose,
}

/// `pg_reaper.tell_victims`: the signaller's value at the signal decides.
pub static TELL_VICTIMS: GucSetting<TellVictims> = GucSetting::<TellVictims>::new(TellVictims::On);

/// `pg_reaper.max_signals_per_minute`: a policy's cap when its own column is NULL; 0: none.
pub static MAX_SIGNALS_PER_MINUTE: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// The database the worker connects to, where the extension is installed.
pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// The tools no filter selects unless it says `include_protected`: backups, restores, the
/// maintenance programs and upgrades, whose loss mid-way costs far more than they hold up.
pub const DEFAULT_PROTECTED_APPLICATIONS: &CStr = c"pg_dump, pg_dumpall, pg_restore, pg_basebackup, vacuumdb, reindexdb, clusterdb, pg_repack, pg_upgrade";

/// `application_name`s that are never victims unless a filter says `include_protected`.
pub static PROTECTED_APPLICATIONS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(DEFAULT_PROTECTED_APPLICATIONS));

/// Roles whose sessions are never victims unless a filter says `include_protected`.
pub static PROTECTED_ROLES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Whether this server loaded pg_reaper at start (shared_preload_libraries), and so has a
/// worker and its status; set by _PG_init in the postmaster, inherited by every backend.
static PRELOADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_preloaded() {
    PRELOADED.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub fn preloaded() -> bool {
    PRELOADED.load(std::sync::atomic::Ordering::Relaxed)
}

/// This node's name in a fleet: `pg_reaper.node_name`, else `cluster_name`, else the system
/// identifier (which a primary and its physical replicas share: name each node where they
/// must be told apart).
pub fn node_name() -> String {
    if let Some(name) = NODE_NAME.get() {
        let name = name.to_string_lossy();
        if !name.is_empty() {
            return name.into_owned();
        }
    }
    let cluster = cluster_name();
    if !cluster.is_empty() {
        return cluster;
    }
    // SAFETY: read from the control file at startup, constant after.
    unsafe { pg_sys::GetSystemIdentifier() }.to_string()
}

/// The server's `cluster_name` ("" when unset).
pub fn cluster_name() -> String {
    // SAFETY: a string setting of PostgreSQL's own, NULL or NUL-terminated.
    unsafe {
        let name = pg_sys::cluster_name;
        if name.is_null() {
            String::new()
        } else {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        }
    }
}

/// The protected tools and roles, as set now.
pub fn protected() -> Protected {
    let list = |setting: &GucSetting<Option<CString>>, parse: fn(&str) -> Vec<String>| {
        setting
            .get()
            .map(|c| parse(&c.to_string_lossy()))
            .unwrap_or_default()
    };
    Protected {
        applications: list(&PROTECTED_APPLICATIONS, name_list),
        roles: list(&PROTECTED_ROLES, role_list),
    }
}

/// The database the worker is to connect to.
pub fn database() -> String {
    DATABASE
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|| "postgres".into())
}

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
    GucRegistry::define_string_guc(
        c"pg_reaper.node_name",
        c"This node's name in reaper.log rows and reaper.metrics() (empty: cluster_name, else the system identifier).",
        c"Name every node of a fleet or of a Patroni cluster, whose members share cluster_name and system identifier.",
        &NODE_NAME,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_reaper.notify",
        c"Send NOTIFY pg_reaper for every call or policy run that signalled, on a primary.",
        c"Sent at the commit of the caller's transaction; a transaction that sent one cannot PREPARE TRANSACTION.",
        &NOTIFY,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_reaper.library_version",
        c"The version of the pg_reaper library this session runs.",
        c"With pg_reaper in shared_preload_libraries, the one the server loaded at start: installing new files takes a restart.",
        &LIBRARY_VERSION_SETTING,
        GucContext::Internal,
        GucFlags::DISALLOW_IN_FILE | GucFlags::DISALLOW_IN_AUTO_FILE,
    );
    GucRegistry::define_enum_guc(
        c"pg_reaper.tell_victims",
        c"What a session pg_reaper cancels or terminates is told of why, in its error's DETAIL.",
        c"off, on (who and why, from the victim's own facts) or verbose (and the filter). Needs pg_reaper in shared_preload_libraries. Only a superuser may change it.",
        &TELL_VICTIMS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"pg_reaper.worker",
        c"Whether the pg_reaper background worker enforces the scheduled policies.",
        c"Off parks the worker without a restart; it needs shared_preload_libraries = 'pg_reaper'.",
        &WORKER,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_reaper.database",
        c"The database the pg_reaper background worker connects to.",
        c"The one where pg_reaper is installed; pg_stat_activity is cluster-wide, so one database covers every session.",
        &DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_reaper.max_signals_per_minute",
        c"How many signals a policy may send over a sliding minute, unless its max_signals_per_minute says.",
        c"A run that reaches the cap signals no more and trips the policy until the minute allows again or reaper.reset_policy(name). 0: no cap. Direct calls are never capped.",
        &MAX_SIGNALS_PER_MINUTE,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_reaper.protected_applications",
        c"application_names whose sessions pg_reaper never signals unless a filter says include_protected.",
        c"A comma-separated list; names with commas or spaces in double quotes. Only a superuser may change it.",
        &PROTECTED_APPLICATIONS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_reaper.protected_roles",
        c"Roles whose sessions pg_reaper never signals unless a filter says include_protected.",
        c"A comma-separated list of role names, folded to lower case unless double-quoted. Only a superuser may change it.",
        &PROTECTED_ROLES,
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

    /// A policy whose runs panic (a Rust panic inside the run), to prove that nothing but the
    /// run is lost.
    pub static PANIC_POLICY: GucSetting<Option<std::ffi::CString>> =
        GucSetting::<Option<std::ffi::CString>>::new(None);

    /// A pause between the re-check and the first victim's pinned check.
    pub static CHECK_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(0);

    /// A pause between a victim's identity check and its signal (first victim only), with the
    /// victim pinned as it is during that step.
    pub static SIGNAL_DELAY_MS: GucSetting<i32> = GucSetting::<i32>::new(0);

    /// A LOG line when the worker starts, with the settings it pinned.
    pub static LOG_WORKER_SETTINGS: GucSetting<bool> = GucSetting::<bool>::new(false);

    /// A LOG line after each signalling loop with the longest hold of ProcArrayLock in it.
    pub static LOG_PIN_HOLD: GucSetting<bool> = GucSetting::<bool>::new(false);

    /// The victim's reason is left, but its signal withheld: a reason waiting in the victim's
    /// slot, to prove that no other error of the victim takes it.
    pub static WITHHOLD_SIGNAL: GucSetting<bool> = GucSetting::<bool>::new(false);

    pub fn register() {
        GucRegistry::define_bool_guc(
            c"pg_reaper.log_worker_settings",
            c"For tests: the worker logs the settings it pinned when it starts.",
            c"Proves that no configuration changes what the worker runs with.",
            &LOG_WORKER_SETTINGS,
            GucContext::Sighup,
            GucFlags::NO_SHOW_ALL,
        );
        GucRegistry::define_bool_guc(
            c"pg_reaper.test_withhold_signal",
            c"For tests: leave the victim's reason, but send no signal.",
            c"Proves that a reason reaches only the error it was left for.",
            &WITHHOLD_SIGNAL,
            GucContext::Suset,
            GucFlags::NO_SHOW_ALL,
        );
        GucRegistry::define_bool_guc(
            c"pg_reaper.log_pin_hold",
            c"For tests: log the longest hold of ProcArrayLock after each signalling loop.",
            c"Measures what the pin costs everyone else.",
            &LOG_PIN_HOLD,
            GucContext::Suset,
            GucFlags::NO_SHOW_ALL,
        );
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
        GucRegistry::define_string_guc(
            c"pg_reaper.test_panic_policy",
            c"For tests: every run of the policy of this name panics.",
            c"Proves that a panic inside a run costs that run only.",
            &PANIC_POLICY,
            GucContext::Sighup,
            GucFlags::NO_SHOW_ALL,
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
