//! The background worker: with `shared_preload_libraries = 'pg_reaper'`, one process that runs
//! every enabled policy with a `run_every` on its schedule, as `run_policy` would (the owner's
//! privileges, the re-check, the wait, the LOG line, the audit row where one can be written),
//! on a primary and on hot standbys alike. It is one more caller of the same pipeline.
//!
//! It connects to `pg_reaper.database`. A database that does not exist makes that connection
//! fail (FATAL, once); the postmaster restarts the worker, which, seeing in shared memory that
//! the previous one died connecting, connects to no database and waits quietly until it exists.

mod schedule;
pub mod status;

use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys::PgTryBuilder;
use pgrx::prelude::*;

use crate::filter::WORKER_TYPE;
use crate::guc;
use schedule::Schedule;
use status::{State, STATUS};

/// How long the worker sleeps at most: table changes are followed within this.
const CYCLE: Duration = Duration::from_secs(1);

/// Registers the worker and its shared memory; called from _PG_init while the postmaster
/// loads shared_preload_libraries.
pub fn register() {
    pgrx::pg_shmem_init!(STATUS = status::WorkerStatus::new());
    BackgroundWorkerBuilder::new(WORKER_TYPE)
        .set_type(WORKER_TYPE)
        .set_library("pg_reaper")
        .set_function("pg_reaper_worker_main")
        .enable_spi_access()
        // Once the server accepts read-only connections: primaries and hot standbys alike.
        // (After enable_spi_access, which sets its own start time.)
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

/// The worker process's entry point.
#[pg_guard]
// SAFETY: the name is this library's own (pg_reaper_*), so it clashes with no other symbol; the
// postmaster finds the entry point by it.
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_reaper_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SIGTERM (pg_terminate_backend, pg_ctl stop, pg_reaper.worker's restart) as a backend
    // takes it: the next CHECK_FOR_INTERRUPTS ends the process, even in the middle of a run's
    // wait. (pgrx's handler only sets a flag, which a run would not look at until its end.)
    crate::compat::terminate_on_sigterm();
    // SAFETY: registered once; runs at every exit of this process, error or not.
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0)) };
    let database = guc::database();
    let died_connecting = {
        let mut s = STATUS.exclusive();
        // SAFETY: this process's own pid and the clock.
        s.pid = unsafe { pg_sys::MyProcPid };
        // SAFETY: reads the clock.
        s.started_at = unsafe { pg_sys::GetCurrentTimestamp() };
        s.state = State::Starting;
        s.database.set(&database);
        s.message.set("");
        std::mem::replace(&mut s.connecting, true)
    };
    if died_connecting {
        wait_for_database(&database);
    }
    let name = std::ffi::CString::new(database.clone()).unwrap_or_default();
    // SAFETY: connects this worker to the database as the bootstrap superuser, once; a missing
    // database is a FATAL, after which the restarted worker waits for it (above).
    unsafe {
        pg_sys::BackgroundWorkerInitializeConnection(name.as_ptr(), std::ptr::null(), 0);
    }
    STATUS.exclusive().connecting = false;
    set_application_name();
    // Every transaction pins the settings first; this first one also says what they are.
    if let Err(e) = in_transaction("pinning the settings", test_hooks::log_settings) {
        // Nothing runs with settings the worker did not choose: exit, and let the postmaster
        // start it again.
        log!("pg_reaper worker: could not pin its settings ({e}); restarting");
        exit_to_be_restarted();
    }
    run(&database);
}

/// Leaves the status saying that no worker runs now.
// SAFETY: called by PostgreSQL's before_shmem_exit machinery with its own (unused) arguments; it
// touches only this worker's status slot, under its lock.
#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    let mut s = STATUS.exclusive();
    s.pid = 0;
    s.state = State::Restarting;
}

/// Connected to no database (shared catalogs only), waits until `database` can be connected
/// to, then exits so that the postmaster starts a worker that connects to it. One LOG line
/// says what is missing; the wait itself is quiet.
fn wait_for_database(database: &str) -> ! {
    // SAFETY: connects to no database, once.
    unsafe { pg_sys::BackgroundWorkerInitializeConnection(std::ptr::null(), std::ptr::null(), 0) };
    set_application_name();
    let name = std::ffi::CString::new(database).unwrap_or_default();
    let mut said: Option<String> = None;
    for cycle in 1u64.. {
        let missing = in_transaction("looking for the database", || {
            crate::compat::why_not_connectable(&name)
        })
        .unwrap_or_else(Some);
        match missing {
            // It can be connected to: the previous worker failed for a reason of the moment
            // (a reload, a shortage); a quiet cycle, then a new worker tries again.
            None if said.is_none() && cycle == 1 => {}
            None => {
                log!("pg_reaper worker: database \"{database}\" can be connected to now; connecting to it");
                STATUS.exclusive().connecting = false;
                exit_to_be_restarted();
            }
            Some(why) => {
                let message =
                    format!("database \"{database}\" (pg_reaper.database) {why}; the worker waits");
                if said.as_deref() != Some(message.as_str()) {
                    log!("pg_reaper worker: {message}");
                    let mut s = STATUS.exclusive();
                    s.state = State::WaitingForDatabase;
                    s.message.set(&message);
                    said = Some(message);
                }
            }
        }
        report_idle(said.as_deref().unwrap_or("connecting"), cycle);
        sleep(CYCLE);
        if said.is_none() {
            STATUS.exclusive().connecting = false;
            exit_to_be_restarted();
        }
        if reload_config(database) {
            STATUS.exclusive().connecting = false;
            exit_to_be_restarted();
        }
    }
    unreachable!("the cycles never end")
}

/// The worker's loop: each cycle reads the scheduled policies and runs those that are due; it
/// sleeps until the next one is, and at most a second.
fn run(database: &str) -> ! {
    let mut schedule = Schedule::default();
    for cycle in 1u64.. {
        let wake = if guc::WORKER.get() {
            schedule.cycle(database)
        } else {
            schedule.park();
            Instant::now() + CYCLE
        };
        let doing = match STATUS.share().message.get() {
            m if m.is_empty() => "enforcing the scheduled policies".to_string(),
            m => m,
        };
        report_idle(&doing, cycle);
        // Statistics (the audit inserts, the scans) reach pg_stat_* between cycles, outside
        // any transaction, as a backend's do between statements.
        crate::compat::report_stats();
        sleep(
            wake.saturating_duration_since(Instant::now())
                .min(CYCLE)
                .max(Duration::from_millis(1)),
        );
        if reload_config(database) {
            log!("pg_reaper worker: pg_reaper.database changed; restarting to connect to the new one");
            exit_to_be_restarted();
        }
    }
    unreachable!("the cycles never end")
}

/// Between cycles pg_stat_activity shows the worker idle, saying what it does and counting its
/// cycles: "pg_reaper worker: enforcing the scheduled policies (cycle 42)".
fn report_idle(doing: &str, cycle: u64) {
    let text = std::ffi::CString::new(format!("{WORKER_TYPE}: {doing} (cycle {cycle})"))
        .unwrap_or_default();
    // SAFETY: reports this process's own activity.
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, text.as_ptr()) };
}

/// Applies a SIGHUP, if one came; true when pg_reaper.database no longer names `database`.
fn reload_config(database: &str) -> bool {
    if BackgroundWorker::sighup_received() {
        // SAFETY: what PostgreSQL's own processes do on SIGHUP.
        unsafe {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
    guc::database() != database
}

/// Ends the process with exit code 1, which the postmaster answers by starting the worker
/// again a second later (exit code 0 would unregister it until the server restarts). The
/// postmaster's own shutdown stops it for good.
#[allow(unreachable_code)] // proc_exit is `-> !` in some majors' bindings, not in 18's
fn exit_to_be_restarted() -> ! {
    // SAFETY: the normal way out of a background worker (on_exit updates the status).
    unsafe { pg_sys::proc_exit(1) };
    unreachable!("proc_exit does not return")
}

/// Sleeps on the latch for at most `duration`. A SIGTERM ends the process here; a cancel
/// (SIGINT) means nothing to an idle worker and is dropped, rather than becoming an ERROR
/// with no transaction to catch it, which would end the process.
fn sleep(duration: Duration) {
    // SAFETY: MyLatch is this process's own latch; the flags are this process's own.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            duration.as_millis().max(1) as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        pg_sys::QueryCancelPending = 0;
    }
    check_for_interrupts!();
}

/// Pins the settings that could change what a run does or how long it may take, whatever
/// postgresql.conf, `ALTER DATABASE` or `ALTER ROLE` say (the worker connects as the bootstrap
/// superuser, and InitPostgres applies the database's and that role's defaults to it). Set as
/// the session's own settings, which those sources and a reload cannot override, before every
/// transaction (a transaction takes its isolation and read-only state from them as it starts),
/// so that nothing a run calls (a trigger on reaper.log that runs SET) changes the next one; a
/// function's own SET clause still applies inside it, as in any session. The README lists
/// them, with why.
fn pin_settings() {
    for (name, value) in PINNED_SETTINGS
        .iter()
        .chain(crate::compat::worker_settings())
    {
        // SAFETY: sets a setting of this session, outside a transaction (none of these reads
        // the catalogs).
        unsafe {
            pg_sys::SetConfigOption(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_SESSION,
            );
        }
    }
}

/// Back to the role the worker connected as (the bootstrap superuser), if something made it
/// another: `session_authorization`, then `role` to none. In a transaction (the checks read the
/// catalogs); the name is looked up each time, since a superuser may rename that role.
fn pin_identity() {
    let me = pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID);
    // SAFETY: reads this session's user ids.
    let (session, current) = unsafe { (pg_sys::GetSessionUserId(), pg_sys::GetUserId()) };
    if session == me && current == me {
        return;
    }
    let name = std::ffi::CString::new(crate::role::name(me)).unwrap_or_default();
    for (setting, value) in [
        (c"session_authorization", name.as_c_str()),
        (c"role", c"none"),
    ] {
        // SAFETY: sets a setting of this session, in a transaction.
        unsafe {
            pg_sys::SetConfigOption(
                setting.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_SESSION,
            );
        }
    }
}

/// The settings every major has, and the value the worker runs with (README: "Its settings are
/// its own").
pub const PINNED_SETTINGS: &[(&std::ffi::CStr, &std::ffi::CStr)] = &[
    // No object someone created in a schema on the path runs with the worker's rights.
    (c"search_path", c"pg_catalog, pg_temp"),
    // Enforcement and its audit rows need read-write transactions of the usual kind.
    (c"default_transaction_read_only", c"off"),
    (c"default_transaction_isolation", c"read committed"),
    (c"default_transaction_deferrable", c"off"),
    // A run waits as long as its policy says (grace and timeout), never less. The last two
    // are not armed in a background worker anyway.
    (c"statement_timeout", c"0"),
    (c"idle_in_transaction_session_timeout", c"0"),
    // A lock held on reaper.policies cannot stall the worker: it runs the policies as last
    // read.
    (c"lock_timeout", c"500"),
    // Enforcement never waits for a standby to confirm an audit row.
    (c"synchronous_commit", c"local"),
    // Triggers on reaper.log fire as for any insert.
    (c"session_replication_role", c"origin"),
    // An error in one run costs that run, not the process (and every run after it).
    (c"exit_on_error", c"off"),
];

/// `application_name = 'pg_reaper worker'`, as pg_stat_activity and log_line_prefix show it.
fn set_application_name() {
    let name = std::ffi::CString::new(WORKER_TYPE).unwrap();
    // SAFETY: sets a user-settable GUC for this session; its assign hook reports it to
    // pg_stat_activity.
    unsafe {
        pg_sys::SetConfigOption(
            c"application_name".as_ptr(),
            name.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
        );
    }
}

thread_local! {
    /// The last error said in the server log for each thing the worker does.
    static SAID: std::cell::RefCell<std::collections::HashMap<String, String>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Runs `f` in a transaction of its own; an error (or a panic) is logged and rolled back, and
/// the worker goes on. Returns the error's message on error. No snapshot is taken for the
/// whole of `f`: each read takes its own (`compat::with_snapshot`), and none is held while a
/// run waits (a snapshot held through a grace period would hold back vacuum, and on a standby
/// with hot_standby_feedback the primary's too).
fn in_transaction<R>(what: &str, f: impl FnOnce() -> R) -> Result<R, String> {
    // SAFETY: the worker's memory context outlives every transaction; restored after an abort.
    let context = unsafe { pg_sys::CurrentMemoryContext };
    PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        // The settings first, outside the transaction, which takes its state from them.
        pin_settings();
        // SAFETY: starts and commits a transaction, as PostgreSQL's own workers do; an error
        // inside is caught below and aborts it.
        unsafe {
            pg_sys::SetCurrentStatementStartTimestamp();
            pg_sys::StartTransactionCommand();
        }
        pin_identity();
        let result = f();
        // SAFETY: as above.
        unsafe { pg_sys::CommitTransactionCommand() };
        // Succeeded: the next failure is news again.
        SAID.with(|said| said.borrow_mut().remove(what));
        Ok(result)
    }))
    .catch_others(|e| {
        // SAFETY: the error is already copied and flushed; this rolls the transaction back, as
        // PostgreSQL's own workers do after an error, and puts the memory context back.
        unsafe {
            pg_sys::AbortCurrentTransaction();
            pg_sys::CurrentMemoryContext = context;
        }
        let error = crate::report::message(&e);
        let message = format!("{what} failed: {error}");
        // Said once while the same thing keeps failing the same way: cycles come every second,
        // runs every 100 ms.
        let new = SAID.with(|said| {
            said.borrow_mut()
                .insert(what.to_string(), error.clone())
                .as_deref()
                != Some(&error)
        });
        if new {
            log!("pg_reaper worker: {message}");
        }
        STATUS.exclusive().message.set(&message);
        Err(error)
    })
    .execute()
}

/// What the test suite reads of the worker: with `pg_reaper.log_worker_settings` (test builds
/// only), one LOG line at start with the value of every pinned setting and the roles it runs as.
mod test_hooks {
    pub fn log_settings() {
        #[cfg(feature = "test-hooks")]
        if crate::guc::test_hooks::LOG_WORKER_SETTINGS.get() {
            let names = super::PINNED_SETTINGS
                .iter()
                .map(|(n, _)| *n)
                .chain(crate::compat::worker_settings().iter().map(|(n, _)| *n))
                .chain([c"session_authorization", c"role"]);
            let mut shown = Vec::new();
            for name in names {
                // SAFETY: reads a setting by name; the result is a string the GUC machinery
                // keeps (or NULL), copied at once.
                let value = unsafe {
                    let v = pgrx::pg_sys::GetConfigOption(name.as_ptr(), true, false);
                    (!v.is_null())
                        .then(|| std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned())
                };
                shown.push(format!(
                    "{}={}",
                    name.to_string_lossy(),
                    value.unwrap_or_default()
                ));
            }
            let (current, session) =
                // SAFETY: reads this process's user ids.
                unsafe { (pgrx::pg_sys::GetUserId(), pgrx::pg_sys::GetSessionUserId()) };
            pgrx::log!(
                "pg_reaper worker settings: {}; current_user={}; session_user={}",
                shown.join("; "),
                crate::role::name(current),
                crate::role::name(session)
            );
        }
    }
}
